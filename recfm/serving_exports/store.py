"""The central embedding store: versioned user and item vectors that other systems read.

A version is written in steps, and readers only ever see promoted ones:

    stage(name, …)        a new version in state "staging" (or the existing one, to resume a push)
    write(name, kind, chunk, ids, vectors)
                          one chunk, atomically and at most once: re-writing a chunk that is there is a no-op
    promote(name, expected)
                          validates what was stored (row counts, unique ids, dimension, finite values, norms),
                          builds the nearest-neighbour index, then moves the "current" pointer in one step
    rollback / prune      the pointer back to an earlier version; drop all but the newest `keep` versions

`publish` runs those steps for a whole push under a per-version writer lock. Readers take a `Snapshot`: one
version, pinned, so a consumer that reads user vectors and then item neighbours never mixes two versions.
A promoted version is never written again, so a snapshot stays valid while newer versions are pushed.

Two backends implement the storage primitives, chosen by URI (`open_store`): `LanceStore`, embedded in a
directory (the default), and `PostgresStore`, PostgreSQL with pgvector for shared use.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

import numpy as np

KINDS = ("user", "item")
METRICS = ("dot", "cosine")
STAGING, PUBLISHED = "staging", "published"
# Collections become table-name prefixes, so they are kept to what every backend takes as an identifier.
COLLECTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DEFAULT_COLLECTION = "recfm"


class StoreError(ValueError):
    """A push or a read the store refuses; the message says which version, kind or id, and why."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    number: int  # the store's own sequence number: what its table names use (never the user's string)
    status: str  # staging | published
    dim: int
    metric: str  # dot | cosine: how `nearest` ranks
    normalized: bool  # the vectors have unit norm
    meta: dict = field(default_factory=dict)  # model, run_id, data_cutoff, ... as the pusher gave them
    created: str = ""
    promoted: str | None = None  # when it last became current
    stats: dict = field(default_factory=dict)  # kind -> rows, min_norm, max_norm (set by promote)

    def to_dict(self) -> dict:
        return {"name": self.name, "number": self.number, "status": self.status, "dim": self.dim,
                "metric": self.metric, "normalized": self.normalized, "meta": self.meta, "created": self.created,
                "promoted": self.promoted, "stats": self.stats}

    @classmethod
    def from_dict(cls, d: dict) -> VersionInfo:
        return cls(**d)


@dataclass(frozen=True)
class Chunk:
    """Rows `chunk` of one kind: `ids` (strings), float32 `vectors` [n, dim], optional `labels` (e.g. titles)."""

    kind: str
    chunk: int
    ids: list[str]
    vectors: np.ndarray
    labels: list[str | None] | None = None


@dataclass
class Rows:
    ids: list[str]
    labels: list[str | None]
    vectors: np.ndarray  # float32 [n, dim]
    scores: np.ndarray | None = None  # for `nearest`: similarity by the version's metric, best first
    missing: list[str] = field(default_factory=list)  # for `get`: requested ids the version does not have


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_collection(name: str) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        raise StoreError(f"collection name {name!r} is not allowed: use 1-31 of a-z, 0-9 and _, starting with a "
                         f"letter")
    return name


def check_version_name(name: str) -> str:
    if not isinstance(name, str) or not VERSION_NAME.fullmatch(name):
        raise StoreError(f"version name {name!r} is not allowed: use 1-100 of A-Z, a-z, 0-9, '.', '_' and '-', "
                         f"starting with a letter or digit")
    return name


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise StoreError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def check_chunk(info: VersionInfo, chunk: Chunk) -> np.ndarray:
    """The chunk's vectors as C-contiguous float32, or a StoreError naming what is wrong with it."""
    check_kind(chunk.kind)
    vectors = np.asarray(chunk.vectors)
    where = f"version {info.name!r}, {chunk.kind} chunk {chunk.chunk}"
    if vectors.ndim != 2 or vectors.shape[1] != info.dim:
        raise StoreError(f"{where}: vectors have shape {tuple(vectors.shape)}, but the version's dimension is "
                         f"{info.dim}")
    if len(chunk.ids) != len(vectors) or (chunk.labels is not None and len(chunk.labels) != len(vectors)):
        raise StoreError(f"{where}: {len(chunk.ids)} ids and {len(vectors)} vectors" +
                         (f" and {len(chunk.labels)} labels" if chunk.labels is not None else ""))
    if len(set(chunk.ids)) != len(chunk.ids):
        raise StoreError(f"{where}: duplicate ids within the chunk")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise StoreError(f"{where}: {int(bad.sum())} vectors hold NaN or inf (the first is {chunk.kind} "
                         f"{chunk.ids[first]!r})")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def similarity(metric: str, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
        return (vectors @ query) / np.maximum(norms, 1e-12)
    return vectors @ query


class EmbeddingStore(ABC):
    """One collection of versions in one backend. Subclasses implement the storage primitives below."""

    collection: str
    uri: str

    # --- writing a version ---------------------------------------------------------------------------------

    def publish(self, name: str, chunks: Iterable[Chunk] | None = None, *, dim: int, metric: str = "dot",
                normalized: bool = False, meta: dict | None = None, expected: dict[str, int],
                keep: int = 3, norm_bounds: tuple[float, float] = (1e-6, 1e4), chunk_source=None,
                log=print) -> VersionInfo:
        """Stages `name`, writes the chunks not yet there, promotes it and prunes to `keep` versions.

        Re-running with the same name resumes an interrupted push (chunks already written are skipped) or,
        when the version is already published, changes nothing. `chunk_source(done)`, if given instead of
        `chunks`, yields only the chunks missing from `done` (a set of (kind, chunk)), so that a resumed push
        does not compute them again."""
        with self.writer(name):
            info = self.stage(name, dim=dim, metric=metric, normalized=normalized, meta=meta or {})
            if info.status == PUBLISHED:
                log(f"store: version {name!r} is already published in {self.uri} ({self.collection}); nothing "
                    f"to do")
                return info
            done = {(kind, c) for kind in KINDS for c in self.written(name, kind)}
            if done:
                log(f"store: resuming version {name!r}: {len(done)} chunks are already written")
            source = chunk_source(done) if chunk_source is not None else chunks
            for chunk in source:
                if (chunk.kind, chunk.chunk) not in done:  # `done` was read under the lock: no re-check per chunk
                    self._write(info, chunk)
            info = self.promote(name, expected, norm_bounds)
            self.prune(keep)
            return info

    def stage(self, name: str, *, dim: int, metric: str = "dot", normalized: bool = False,
              meta: dict | None = None) -> VersionInfo:
        """The version `name`: created in state staging, or the existing one if its settings are the same."""
        check_version_name(name)
        if metric not in METRICS:
            raise StoreError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
        if not isinstance(dim, int) or not 0 < dim <= 16000:
            raise StoreError(f"dimension must be a positive integer (at most 16,000), not {dim!r}")
        meta = json.loads(json.dumps(meta or {}))  # as it will read back
        existing = self.version(name)
        if existing is not None:
            wanted = (dim, metric, normalized, meta)
            if (existing.dim, existing.metric, existing.normalized, existing.meta) != wanted:
                raise StoreError(f"version {name!r} already exists with other settings (dim {existing.dim}, "
                                 f"metric {existing.metric}, normalized {existing.normalized}, meta "
                                 f"{existing.meta}): push under another version name")
            return existing
        return self._create(name, dim, metric, normalized, meta)

    def write(self, name: str, chunk: Chunk) -> bool:
        """Writes one chunk of a staging version atomically; False if that chunk is already there."""
        info = self._require(name)
        if info.status != STAGING:
            raise StoreError(f"version {name!r} is {info.status}: only a staging version can be written")
        check_chunk(info, chunk)
        if chunk.chunk in self.written(name, chunk.kind):
            return False
        self._write(info, chunk)
        return True

    def _write(self, info: VersionInfo, chunk: Chunk) -> None:
        vectors = check_chunk(info, chunk)
        labels = chunk.labels if chunk.labels is not None else [None] * len(vectors)
        self._append(info, chunk.kind, int(chunk.chunk), [str(i) for i in chunk.ids], vectors, list(labels))

    def written(self, name: str, kind: str) -> set[int]:
        """The chunk numbers of `kind` that version `name` holds."""
        return self._written(self._require(name), check_kind(kind))

    def promote(self, name: str, expected: dict[str, int] | None = None,
                norm_bounds: tuple[float, float] = (1e-6, 1e4)) -> VersionInfo:
        """Validates version `name` from what is stored, indexes it and makes it current in one atomic step.
        `expected` gives the row count of each kind (a kind not in it must be empty)."""
        info = self._require(name)
        if info.status == STAGING:
            stats = self.validate(info, expected or {}, norm_bounds)
            for kind in KINDS:
                if stats[kind]["rows"]:
                    self._build_index(info, kind)
            info = replace(info, status=PUBLISHED, stats=stats)
        info = replace(info, promoted=now())
        self._set_current(info)
        return info

    def validate(self, info: VersionInfo, expected: dict[str, int], norm_bounds: tuple[float, float]) -> dict:
        stats = {}
        low, high = (1 - 1e-3, 1 + 1e-3) if info.normalized else norm_bounds
        for kind in KINDS:
            s = self._stats(info, kind)
            where = f"version {info.name!r} ({kind} vectors)"
            if s["rows"] != expected.get(kind, 0):
                raise StoreError(f"{where}: {s['rows']:,} rows stored, {expected.get(kind, 0):,} expected: the push "
                                 f"is incomplete; re-run it to resume")
            if s["distinct"] != s["rows"]:
                raise StoreError(f"{where}: {s['rows'] - s['distinct']:,} duplicate ids")
            if s["rows"] and not (np.isfinite(s["min_norm"]) and np.isfinite(s["max_norm"])):
                raise StoreError(f"{where}: holds NaN or inf")
            if s["rows"] and not (low <= s["min_norm"] and s["max_norm"] <= high):
                raise StoreError(f"{where}: norms range over [{s['min_norm']:.4g}, {s['max_norm']:.4g}], outside "
                                 f"the bounds [{low:.4g}, {high:.4g}]" +
                                 (" for a normalized version" if info.normalized else ""))
            stats[kind] = {"rows": int(s["rows"]), "min_norm": float(s["min_norm"]), "max_norm": float(s["max_norm"])}
        return stats

    def rollback(self, to: str | None = None) -> VersionInfo:
        """Makes `to` (default: the version that was current before this one) current again."""
        current = self.current()
        published = [v for v in self.versions() if v.status == PUBLISHED]
        if to is None:
            earlier = [v for v in published if current and v.promoted and v.promoted <= current.promoted
                       and v.number != current.number]
            if not earlier:
                raise StoreError(f"no earlier published version to roll back to in {self.collection}")
            target = max(earlier, key=lambda v: (v.promoted, v.number))
        else:
            target = self._require(check_version_name(to))
            if target.status != PUBLISHED:
                raise StoreError(f"version {to!r} is {target.status}: only a published version can be current")
        return self.promote(target.name)

    def prune(self, keep: int) -> list[str]:
        """Drops published versions beyond the newest `keep` (by promotion) and never the current one. Staging
        versions are kept: they may be resumed. `keep` ≥ 2, so a snapshot taken just before a promotion
        stays readable."""
        if keep < 2:
            raise StoreError(f"keep must be at least 2 (the current version and the one before it), not {keep}")
        current = self.current()
        published = sorted((v for v in self.versions() if v.status == PUBLISHED),
                           key=lambda v: (v.promoted or "", v.number), reverse=True)
        dropped = [v for v in published[keep:] if not current or v.number != current.number]
        for v in dropped:
            self._drop(v)
        return [v.name for v in dropped]

    def drop(self, name: str) -> None:
        """Deletes a version that is not current (e.g. an abandoned staging one)."""
        info = self._require(name)
        current = self.current()
        if current and current.number == info.number:
            raise StoreError(f"version {name!r} is current: roll back or promote another one first")
        self._drop(info)

    # --- reading --------------------------------------------------------------------------------------------

    def version(self, name: str) -> VersionInfo | None:
        return next((v for v in self.versions() if v.name == name), None)

    def _require(self, name: str) -> VersionInfo:
        info = self.version(check_version_name(name))
        if info is None:
            raise StoreError(f"no version {name!r} in {self.uri} ({self.collection})")
        return info

    def snapshot(self, version: str | None = None) -> Snapshot:
        """One version pinned for reading: the current one, or `version` (published)."""
        if version is None:
            info = self.current()
            if info is None:
                raise StoreError(f"{self.uri} ({self.collection}) has no current version: push embeddings first "
                                 f"(`recfm push-embeddings RUN`)")
        else:
            info = self._require(version)
            if info.status != PUBLISHED:
                raise StoreError(f"version {version!r} is {info.status}: it cannot be read until it is promoted")
        return Snapshot(self, info)

    def get(self, kind: str, ids: Iterable[str]) -> Rows:
        return self.snapshot().get(kind, ids)

    def nearest(self, kind: str, vector: np.ndarray, k: int = 10) -> Rows:
        return self.snapshot().nearest(kind, vector, k)

    # --- backend primitives ---------------------------------------------------------------------------------

    @abstractmethod
    def versions(self) -> list[VersionInfo]: ...

    @abstractmethod
    def current(self) -> VersionInfo | None: ...

    @abstractmethod
    def writer(self, name: str) -> AbstractContextManager:
        """An exclusive lock on pushing version `name`, across processes; refuses at once if it is held."""

    @abstractmethod
    def _create(self, name: str, dim: int, metric: str, normalized: bool, meta: dict) -> VersionInfo: ...

    @abstractmethod
    def _written(self, info: VersionInfo, kind: str) -> set[int]: ...

    @abstractmethod
    def _append(self, info: VersionInfo, kind: str, chunk: int, ids: list[str], vectors: np.ndarray,
                labels: list[str | None]) -> None:
        """All of the chunk's rows and the record that the chunk is there, in one atomic step."""

    @abstractmethod
    def _stats(self, info: VersionInfo, kind: str) -> dict:
        """rows, distinct ids, min_norm, max_norm of what is stored."""

    @abstractmethod
    def _build_index(self, info: VersionInfo, kind: str) -> None: ...

    @abstractmethod
    def _set_current(self, info: VersionInfo) -> None:
        """Records `info` (status, stats, promoted time) and points "current" at it, atomically."""

    @abstractmethod
    def _drop(self, info: VersionInfo) -> None: ...

    @abstractmethod
    def _take(self, info: VersionInfo, kind: str, ids: list[str]) -> tuple[list[str], list, np.ndarray]:
        """(ids, labels, vectors) of the requested ids that exist, in any order."""

    @abstractmethod
    def _search(self, info: VersionInfo, kind: str, vector: np.ndarray, k: int) -> tuple[list[str], list, np.ndarray]:
        """(ids, labels, vectors) of about the `k` best by the version's metric (an index may be approximate)."""

    @abstractmethod
    def _count(self, info: VersionInfo, kind: str) -> int: ...

    def close(self) -> None:  # noqa: B027 (a backend without connections has nothing to close)
        pass

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Snapshot:
    """Reads of one version. Every call reads the same version, whatever is promoted meanwhile."""

    store: EmbeddingStore
    info: VersionInfo

    def get(self, kind: str, ids: Iterable[str]) -> Rows:
        """The vectors of `ids` in the order asked; ids the version lacks are listed in `missing`."""
        wanted = [str(i) for i in ids]
        found, labels, vectors = self.store._take(self.info, check_kind(kind), sorted(set(wanted)))
        where = {i: n for n, i in enumerate(found)}
        order = [where[i] for i in wanted if i in where]
        return Rows([found[n] for n in order], [labels[n] for n in order],
                    vectors[order] if len(order) else np.zeros((0, self.info.dim), np.float32),
                    missing=[i for i in wanted if i not in where])

    def nearest(self, kind: str, vector: np.ndarray, k: int = 10, exclude: Iterable[str] = ()) -> Rows:
        """The `k` nearest vectors of `kind` to `vector` by the version's metric, best first."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.info.dim:
            raise StoreError(f"query vector has dimension {query.shape[0]}, version {self.info.name!r} has "
                             f"{self.info.dim}")
        if not np.isfinite(query).all():
            raise StoreError("query vector holds NaN or inf")
        if k < 1:
            raise StoreError(f"k must be at least 1, not {k}")
        skip = set(map(str, exclude))
        ids, labels, vectors = self.store._search(self.info, check_kind(kind), query, k + len(skip))
        # Exact scores of what the index returned, so that both backends report the same numbers.
        scores = similarity(self.info.metric, query, vectors) if len(ids) else np.zeros(0, np.float32)
        order = [n for n in np.argsort(-scores, kind="stable") if ids[n] not in skip][:k]
        return Rows([ids[n] for n in order], [labels[n] for n in order], vectors[order], scores=scores[order])

    def similar(self, kind: str, id_: str, k: int = 10) -> Rows:
        """The `k` nearest of `kind` to the vector of `id_` (itself left out)."""
        rows = self.get(kind, [id_])
        if rows.missing:
            raise StoreError(f"version {self.info.name!r} has no {kind} {id_!r}")
        return self.nearest(kind, rows.vectors[0], k, exclude=[str(id_)])

    def count(self, kind: str) -> int:
        return self.store._count(self.info, check_kind(kind))


def chunked(kind: str, ids: list[str], vectors: np.ndarray, rows: int, labels: list | None = None,
            skip: set | frozenset = frozenset()) -> Iterator[Chunk]:
    """`ids`/`vectors` cut into chunks of `rows`, numbered from 0, leaving out (kind, chunk) pairs in `skip`."""
    for c, start in enumerate(range(0, len(ids), rows)):
        if (kind, c) not in skip:
            end = start + rows
            yield Chunk(kind, c, ids[start:end], vectors[start:end], labels[start:end] if labels else None)
