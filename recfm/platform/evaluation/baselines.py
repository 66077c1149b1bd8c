"""The baselines every recfm figure stands beside: MostPop, EASE and item-kNN.

Each is a `Scorer`: `fit(seqs, stage)` learns from the events known at that stage (see `Sequences`), and
`score(users, prefixes)` returns a [requests, items] tensor for requests made with each user's first
`prefixes[r]` events as history. Hyperparameters are attributes that `tune` sets from a grid.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recfm.data.dataset import Sequences
from recfm.data.ragged import positions
from recfm.ranking.ease import ease_weights


class Scorer(Protocol):
    name: str

    def fit(self, seqs: Sequences, stage: str) -> None: ...

    def score(self, users: np.ndarray, prefixes: np.ndarray) -> torch.Tensor: ...

    def params(self) -> dict: ...


class MostPop:
    """Every user gets the items with the most known interactions."""

    name = "MostPop"

    def fit(self, seqs: Sequences, stage: str) -> None:
        self.counts = torch.from_numpy(seqs.item_counts(stage).astype(np.float32))

    def score(self, users: np.ndarray, prefixes: np.ndarray) -> torch.Tensor:
        return self.counts.expand(len(users), -1)

    def params(self) -> dict:
        return {}


class _ItemItem:
    """Shared by the item-item models: scores are the user's 0/1 history times an item-item matrix."""

    def _history(self, seqs: Sequences, stage: str) -> sp.csr_matrix:
        self._seqs = seqs
        key = (id(seqs), stage)
        if getattr(self, "_history_key", None) != key:
            self._history_key, self._history_x = key, seqs.history_matrix(stage)
            self._gram = None
        return self._history_x

    def _gram_matrix(self) -> torch.Tensor:
        """XᵀX as a dense float32 tensor (exact: counts below 2^24), once per stage, shared by the grid."""
        if self._gram is None:
            x = self._history_x
            # row-major matters: scipy hands back Fortran order, and a column-major weight matrix makes the
            # embedding bag in `score` 60x slower
            self._gram = torch.from_numpy(np.ascontiguousarray((x.T @ x).toarray(), dtype=np.float32))
        return self._gram

    def score(self, users: np.ndarray, prefixes: np.ndarray) -> torch.Tensor:
        """The sum of the weight rows of each request's (0/1) history items. A time split asks for every event
        after a cutoff, so one user's requests come in a run of growing histories: each such request is the one
        before it plus the rows of the items first seen in between (summed in float64), not its whole history
        again: 10x faster on ml-latest-small, whose active users have hundreds of events."""
        seqs = self._seqs
        users, prefixes = np.asarray(users, dtype=np.int64), np.asarray(prefixes, dtype=np.int64)
        follows = np.zeros(len(users), dtype=bool)
        follows[1:] = (users[1:] == users[:-1]) & (prefixes[1:] >= prefixes[:-1])
        low = np.where(follows, np.concatenate([[0], prefixes[:-1]]), 0)
        spans = prefixes - low
        events = np.repeat(seqs.offsets[users] + low, spans) + positions(spans)
        new = seqs.first_seen[events]
        items = seqs.events["item"][events[new]].astype(np.int64)
        counts = np.bincount(np.repeat(np.arange(len(users)), spans)[new], minlength=len(users))
        # an embedding bag: 4x faster than scipy's sparse product
        added = F.embedding_bag(torch.from_numpy(items), self.weights,
                                torch.from_numpy(np.cumsum(counts) - counts), mode="sum").double()
        for r in np.flatnonzero(follows):  # row by row: 5x faster than a cumsum over dim 0 at this shape
            added[r] += added[r - 1]
        return added.float()


class EASE(_ItemItem):
    """Embarrassingly Shallow Autoencoder (Steck, 2019): B = I - P diag(1/diag(P)), P = (XᵀX + λI)⁻¹."""

    name = "EASE"

    def __init__(self, lam: float = 200.0):
        self.lam = lam

    def fit(self, seqs: Sequences, stage: str) -> None:
        self._history(seqs, stage)
        self.weights = ease_weights(self._gram_matrix(), self.lam)

    def params(self) -> dict:
        return {"lambda": self.lam}


class ItemKNN(_ItemItem):
    """Item-based kNN on co-occurrence: cosine similarity with shrinkage, k nearest neighbours per item."""

    name = "ItemKNN"

    def __init__(self, k: int = 100, shrink: float = 10.0):
        self.k, self.shrink = k, shrink

    def fit(self, seqs: Sequences, stage: str) -> None:
        self._history(seqs, stage)
        gram = self._gram_matrix()
        # items no one has interacted with yet are nobody's neighbours: only the seen ones are compared
        seen = torch.nonzero(torch.diagonal(gram) > 0).squeeze(1)
        sub = gram[seen][:, seen]
        norms = torch.sqrt(torch.diagonal(sub))
        sim = sub / (norms[:, None] * norms[None, :] + self.shrink + 1e-12)
        sim.fill_diagonal_(0.0)
        k = min(self.k, sim.shape[0] - 1)
        # for each target item j, its k most similar items i (the rest count 0); sim is symmetric, so row j's
        # top k are column j's, and a top k along rows is 3x faster than along columns
        top = sim.topk(k, dim=1)
        self.weights = torch.zeros_like(gram)
        self.weights[seen[top.indices], seen[:, None].expand_as(top.indices)] = top.values

    def params(self) -> dict:
        return {"k": self.k, "shrink": self.shrink}


class ContentKNN:
    """Items whose content vector (`recfm content embed`) is nearest the mean of the user's `recent` latest items'
    vectors: the baseline that needs no interactions with the item, only its text."""

    name = "ContentKNN"
    recent: int = 5

    def fit(self, seqs: Sequences, stage: str) -> None:
        from recfm.data.content import load_content

        self._seqs = seqs
        self.vectors = torch.from_numpy(load_content(seqs.directory))

    def score(self, users: np.ndarray, prefixes: np.ndarray) -> torch.Tensor:
        items = self._seqs.events["item"]
        starts = self._seqs.offsets[users] + np.maximum(prefixes - self.recent, 0)
        counts = np.minimum(prefixes, self.recent)
        index = np.repeat(starts, counts) + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        profile = F.embedding_bag(torch.from_numpy(items[index].astype(np.int64)), self.vectors,
                                  torch.from_numpy((np.cumsum(counts) - counts).astype(np.int64)), mode="mean")
        return F.normalize(profile, dim=-1) @ self.vectors.T

    def params(self) -> dict:
        return {"recent": self.recent}
