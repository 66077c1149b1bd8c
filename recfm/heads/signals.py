"""Catalog-wide signals the ranker weighs per request, all fitted on events before one cutoff.

    lexical        BM25 of the query against the item's title, genres, year and tags (tags applied before the
                   cutoff only), divided by the request's best match
    lexical_any    1 where any query word matches
    popularity     log interactions, scaled to [0, 1]
    trending       the same over the interactions of the last `heads.trend_days` before the cutoff only (what a
                   time split's later requests favour: on ml-latest-small's homepage requests it alone beats
                   EASE, while all-time popularity trails it by half)
    source_cooc    co-occurrence cosine (top-k neighbours) of the item with the request's source item
    history_cooc   the same summed over the user's last `recent` items, divided by the request's best
    collaborative  EASE (Steck 2019) over the user's whole history, its weights cut to each item's 10·`k` strongest,
                   divided by the request's best (0 for catalogs larger than `ease_max_items`)
    seen           1 where the user already interacted with the item
    new_release    1 for a title nobody had interacted with at the cutoff whose year (the catalog's release year)
                   is the request's or the one before: what a session often starts with (on ml-latest-small a
                   third of the homepage requests in the heads' training span, a fifth in the test's, are the
                   first interaction anyone had with their title), and what no signal fitted on interactions
                   can rank
    recent_release 1 for a title released in the request's year or the one before, whether or not anyone had it
    recent_taste   recent_release times the share of the user's last `recent` items that were recent releases
                   when the user had them: users differ most in this (on ml-latest-small's homepage requests the
                   target is a recent release for 13% of the users who never take one and 70% of those who mostly
                   do), and a blend of per-item signals cannot multiply one by a trait of the user

The same code builds them for training and for test and serving (fitted before the test cutoff), so no
signal ever reads an event after the time it stands for. Training requests span years after the validation
cutoff; one fit at that cutoff would teach the ranker how signals behave when years stale (trending, above
all), so training reads a `SignalTimeline`: fits at several cutoffs, each request served by the latest one
before it, about as stale as the test requests' signals are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recfm.heads.text import BM25
from recfm.ranking.ease import ease_weights as ease_weights_from_gram

SIGNALS = ("lexical", "lexical_any", "popularity", "trending", "source_cooc", "history_cooc", "collaborative", "seen",
           "new_release", "recent_release", "recent_taste")


@dataclass
class CatalogSignals:
    bm25: BM25
    log_pop: np.ndarray  # float32 [items] in [0, 1]
    trend: np.ndarray  # float32 [items] in [0, 1]
    neighbours: sp.csr_matrix  # [items, items] cosine of each item's top-k co-occurring items
    ease: sp.csr_matrix  # [items, items] EASE weights, each row's top-k (empty when the catalog is too large)
    documents: list[str]  # each item's text as BM25 and the text encoder see it
    years: np.ndarray  # int64 [items] release year, 0 = unknown

    @classmethod
    def fit(cls, documents: list[str], user: np.ndarray, item: np.ndarray, n_items: int, k: int = 100,
            shrink: float = 10.0, ease_lambda: float = 100.0, ease_max_items: int = 40_000,
            ease_weights: torch.Tensor | None = None, recent_item: np.ndarray | None = None,
            years: np.ndarray | None = None) -> CatalogSignals:
        """From the (user, item) interactions known at the cutoff (`recent_item`: the items of the latest of
        them, for trending; all when not given); `ease_weights` when already fitted on them; `years`: each
        item's release year (0 = unknown)."""
        log_pop = _log_counts(item, n_items)
        trend = log_pop if recent_item is None else _log_counts(recent_item, n_items)
        x = sp.csr_matrix((np.ones(len(user), dtype=np.float32), (user, item)),
                          shape=(int(user.max(initial=-1)) + 1, n_items))
        x.data[:] = 1.0
        gram = (x.T @ x).tocsr().astype(np.float32)
        norms = np.sqrt(gram.diagonal())
        gram.setdiag(0.0)
        gram.eliminate_zeros()
        rows = np.repeat(np.arange(n_items), np.diff(gram.indptr))
        cosine = sp.csr_matrix((gram.data / (norms[rows] * norms[gram.indices] + shrink), gram.indices, gram.indptr),
                               shape=gram.shape)
        neighbours = _top_k_per_row(cosine, k)
        ease = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        if ease_weights is None and n_items <= ease_max_items:
            full_gram = torch.from_numpy(gram.toarray())
            full_gram.diagonal().copy_(torch.from_numpy(norms ** 2))  # restore the counts zeroed above
            ease_weights = ease_weights_from_gram(full_gram, ease_lambda)
        if ease_weights is not None:
            top = torch.topk(ease_weights, min(10 * k, n_items), dim=1)
            rows = np.repeat(np.arange(n_items), top.indices.shape[1])
            ease = sp.csr_matrix((top.values.flatten().numpy(), (rows, top.indices.flatten().numpy())),
                                 shape=(n_items, n_items))
        years = np.zeros(n_items, np.int64) if years is None else np.asarray(years, dtype=np.int64)
        return cls(BM25(documents), log_pop, trend, neighbours, ease, documents, years)

    def save(self, path: Path) -> None:
        """One .npz (no pickles): arrays, the two sparse matrices' parts, and the documents."""
        parts = {"log_pop": self.log_pop, "trend": self.trend, "documents": np.array(self.documents, dtype=np.str_),
                 "years": self.years}
        for name in ("neighbours", "ease"):
            m = getattr(self, name).tocsr()
            parts |= {f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr}
        np.savez(path, **parts)

    @classmethod
    def load(cls, path: Path) -> CatalogSignals:
        with np.load(path, allow_pickle=False) as f:
            n = len(f["log_pop"])
            sparse = {name: sp.csr_matrix((f[f"{name}_data"], f[f"{name}_indices"], f[f"{name}_indptr"]),
                                          shape=(n, n)) for name in ("neighbours", "ease")}
            documents = [str(d) for d in f["documents"]]
            years = f["years"] if "years" in f else np.zeros(n, np.int64)  # saved before the signal existed
            return cls(BM25(documents), f["log_pop"], f["trend"], sparse["neighbours"], sparse["ease"], documents,
                       years)

    def features(self, queries: list[str], source: np.ndarray, histories: list[np.ndarray],
                 ts: np.ndarray | None = None, history_ts: list[np.ndarray] | None = None,
                 recent: int = 20) -> torch.Tensor:
        """[requests, items, len(SIGNALS)] float32 (`ts`: the requests' times, for the release signals, none: no
        request has any; `history_ts`: when the user had each item of `histories`, for recent_taste)."""
        n = len(self.log_pop)
        lexical = self.bm25.scores(queries)
        best = lexical.max(1, keepdims=True)
        source_cooc = np.zeros((len(queries), n), dtype=np.float32)
        has_source = source >= 0
        source_cooc[has_source] = self.neighbours[source[has_source]].toarray()
        recent_rows = sp.csr_matrix(_rows(histories, n, recent))
        history_cooc = np.asarray((recent_rows @ self.neighbours).todense(), dtype=np.float32)
        history_cooc /= np.maximum(history_cooc.max(1, keepdims=True), 1e-9)
        seen = _rows(histories, n, None)
        collaborative = np.asarray((sp.csr_matrix(seen) @ self.ease).todense(), dtype=np.float32)
        collaborative /= np.maximum(collaborative.max(1, keepdims=True), 1e-9)
        out = np.stack([np.divide(lexical, best, out=np.zeros_like(lexical), where=best > 0),
                        (lexical > 0).astype(np.float32), np.broadcast_to(self.log_pop, lexical.shape),
                        np.broadcast_to(self.trend, lexical.shape), source_cooc, history_cooc, collaborative, seen,
                        *self._releases(ts, histories, history_ts, recent)],
                       axis=-1)
        return torch.from_numpy(out)

    def _releases(self, ts: np.ndarray | None, histories: list[np.ndarray], history_ts: list[np.ndarray] | None,
                  recent: int) -> list[np.ndarray]:
        """new_release, recent_release and recent_taste, each [requests, items]."""
        shape = (len(histories), len(self.years))
        if ts is None:
            return [np.zeros(shape, dtype=np.float32)] * 3
        released = _is_recent(self.years[None, :], _year(ts)[:, None])
        new = released & ((self.log_pop == 0) & (self.years > 0))[None, :]
        share = np.zeros(len(histories), dtype=np.float32)
        if history_ts is not None:
            for row, (items, when) in enumerate(zip(histories, history_ts, strict=True)):
                if len(items):
                    share[row] = _is_recent(self.years[items[-recent:]], _year(when[-recent:])).mean()
        released = released.astype(np.float32)
        return [new.astype(np.float32), released, released * share[:, None]]


@dataclass
class SignalTimeline:
    """Signals fitted at increasing `cutoffs`; each request reads the latest fit at or before its time."""

    cutoffs: list[float]
    fits: list[CatalogSignals]

    @property
    def documents(self) -> list[str]:
        """The earliest fit's item texts: the text encoder sees one catalog, and no tag applied after any
        request it learns from."""
        return self.fits[0].documents

    def features(self, queries: list[str], source: np.ndarray, histories: list[np.ndarray],
                 ts: np.ndarray | None = None, history_ts: list[np.ndarray] | None = None) -> torch.Tensor:
        if ts is None:
            raise ValueError("a signal timeline needs each request's time")
        which = np.searchsorted(np.asarray(self.cutoffs), ts, side="right") - 1
        if (which < 0).any():
            raise ValueError("a request is older than the timeline's first cutoff")
        out = torch.empty(len(queries), len(self.fits[0].log_pop), len(SIGNALS))
        for k in np.unique(which):
            rows = np.flatnonzero(which == k)
            out[rows] = self.fits[k].features([queries[r] for r in rows], source[rows], [histories[r] for r in rows],
                                              ts[rows], None if history_ts is None else [history_ts[r] for r in rows])
        return out


def _year(ts: np.ndarray) -> np.ndarray:
    """The UTC calendar year of each unix time."""
    return np.asarray(ts, dtype="datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970


def _is_recent(years: np.ndarray, at_year: np.ndarray) -> np.ndarray:
    """Released (a known year) in `at_year` or the year before."""
    return (years > 0) & (years >= at_year - 1) & (years <= at_year)


def _log_counts(item: np.ndarray, n_items: int) -> np.ndarray:
    """log(1 + interactions) per item, scaled to [0, 1]."""
    counts = np.bincount(item, minlength=n_items).astype(np.float64)
    return (np.log1p(counts) / max(np.log1p(counts.max(initial=0)), 1e-9)).astype(np.float32)


def _rows(histories: list[np.ndarray], n: int, last: int | None) -> np.ndarray:
    """0/1 rows marking each history's items (only its `last` most recent, when given)."""
    out = np.zeros((len(histories), n), dtype=np.float32)
    for row, items in enumerate(histories):
        out[row, items if last is None else items[-last:]] = 1.0
    return out


def _top_k_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's `k` largest entries (ties: the lower column first). Row by row, only where a row has more than
    `k`: 4x faster than one sort of all entries at ml-latest-small's 26M."""
    m = matrix.tocsr()
    m.sort_indices()
    counts = np.diff(m.indptr)
    keep = np.ones(m.nnz, dtype=bool)
    for row in np.flatnonzero(counts > k):
        low, high = m.indptr[row], m.indptr[row + 1]
        keep[low + np.argsort(-m.data[low:high], kind="stable")[k:]] = False
    rows = np.repeat(np.arange(m.shape[0]), counts)
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)
