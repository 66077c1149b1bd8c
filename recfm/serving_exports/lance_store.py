"""The embedded store: LanceDB in a local directory, no server.

Why LanceDB: it is an embedded columnar vector database (Apache Arrow in, Arrow out) that appends a batch as one
atomic commit (a crash mid-append leaves the table as it was), reads a million 64-d vectors in well under a
second, and builds IVF-PQ indexes in-process; it is maintained, on PyPI, and needs nothing running.

Layout in the directory, for a collection C:

    C.versions.json          the registry: every version's info and which one is current; replaced atomically
                             (write a temporary file, fsync, rename) under the lock file C.lock
    C-<number>-<kind>.lance  one LanceDB table per version and kind: id, label, chunk, vector
    C-<number>-<kind>.ids.npz
                             sorted ids and their row offsets, written before promotion, so that `get` looks ids
                             up without building a filter string from them
    C.push.<version>.lock    held (flock) by the process pushing that version

Table names use the registry's numbers, never a user's string.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recfm.serving_exports.store import STAGING, EmbeddingStore, StoreError, VersionInfo, check_version_name, now

INDEX_MIN_ROWS = 50_000  # below this an exact scan answers within a few ms
# IVF-PQ search: partitions probed, and candidates re-ranked exactly per result (recall@10 0.97 at 1M x 64)
NPROBES, REFINE = 50, 30


class LanceStore(EmbeddingStore):
    def __init__(self, path: str | Path, collection: str):
        os.environ.setdefault("LANCEDB_LOG", "error")  # its Rust side warns on stderr about routine events
        # lancedb warns at every fork; the forks here (Ray starting its processes) exec at once, which is safe
        warnings.filterwarnings("ignore", message="lancedb fork support")
        import lancedb

        self.root = Path(path).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri, self.collection = str(self.root), collection
        self.db = lancedb.connect(str(self.root))
        self._registry = self.root / f"{collection}.versions.json"
        self._tables: dict[str, object] = {}
        self._id_maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # --- registry -------------------------------------------------------------------------------------------

    def _read(self) -> dict:
        if not self._registry.exists():
            return {"current": None, "next": 1, "versions": []}
        return json.loads(self._registry.read_text())

    def _update(self, change: Callable[[dict], object]) -> object:
        with _flock(self.root / f"{self.collection}.lock", blocking=True):
            registry = self._read()
            result = change(registry)
            tmp = self._registry.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "w") as f:
                f.write(json.dumps(registry, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._registry)  # readers see the old registry or the new one, never half of one
            return result

    def versions(self) -> list[VersionInfo]:
        return [VersionInfo.from_dict(v) for v in self._read()["versions"]]

    def current(self) -> VersionInfo | None:
        registry = self._read()
        return next((VersionInfo.from_dict(v) for v in registry["versions"] if v["number"] == registry["current"]),
                    None)

    @contextmanager
    def writer(self, name: str) -> Iterator[None]:
        with _flock(self.root / f"{self.collection}.push.{check_version_name(name)}.lock", blocking=False,
                    busy=f"version {name!r} is being pushed by another process"):
            yield

    # --- writing --------------------------------------------------------------------------------------------

    def _table_name(self, info: VersionInfo, kind: str) -> str:
        return f"{self.collection}-{info.number}-{kind}"

    def _create(self, name: str, dim: int, metric: str, normalized: bool, meta: dict) -> VersionInfo:
        def add(registry: dict) -> VersionInfo:
            existing = next((v for v in registry["versions"] if v["name"] == name), None)
            if existing:  # created by another process meanwhile
                return VersionInfo.from_dict(existing)
            info = VersionInfo(name, registry["next"], STAGING, dim, metric, normalized, meta, now())
            schema = _schema(dim)
            for kind in ("user", "item"):  # tables first: a crash here leaves no registry entry to trip on
                self.db.create_table(self._table_name(info, kind), schema=schema, mode="overwrite")
            registry["next"] += 1
            registry["versions"].append(info.to_dict())
            return info

        return self._update(add)

    def _open(self, info: VersionInfo, kind: str, cached: bool = False):
        name = self._table_name(info, kind)
        if cached and name in self._tables:
            return self._tables[name]
        try:
            table = self.db.open_table(name)
        except (ValueError, FileNotFoundError) as err:
            raise StoreError(f"version {info.name!r} has lost its {kind} table {name} in {self.uri}: {err}") from None
        if cached:
            self._tables[name] = table
        return table

    def _written(self, info: VersionInfo, kind: str) -> set[int]:
        chunks = self._open(info, kind).search().select(["chunk"]).limit(None).to_arrow()["chunk"]
        return set(pc.unique(chunks).to_pylist())

    def _append(self, info: VersionInfo, kind: str, chunk: int, ids: list[str], vectors: np.ndarray,
                labels: list[str | None]) -> None:
        n, dim = vectors.shape
        rows = pa.table({"id": pa.array(ids, pa.string()), "label": pa.array(labels, pa.string()),
                         "chunk": pa.array(np.full(n, chunk, np.int32)),
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)},
                        schema=_schema(dim))
        self._open(info, kind).add(rows)  # one commit: all of the chunk's rows, with their chunk number

    def _stats(self, info: VersionInfo, kind: str) -> dict:
        table = self._open(info, kind).search().select(["id", "vector"]).limit(None).to_arrow()
        if table.num_rows == 0:
            return {"rows": 0, "distinct": 0, "min_norm": 0.0, "max_norm": 0.0}
        norms = np.linalg.norm(_vectors(table["vector"], info.dim), axis=1)
        return {"rows": table.num_rows, "distinct": pc.count_distinct(table["id"]).as_py(),
                "min_norm": float(norms.min()), "max_norm": float(norms.max())}

    def _build_index(self, info: VersionInfo, kind: str) -> None:
        from lancedb.index import IvfPq

        table = self._open(info, kind)
        rows = table.count_rows()
        if rows >= INDEX_MIN_ROWS:
            table.create_index("vector", config=IvfPq(distance_type=info.metric, num_partitions=int(np.sqrt(rows)),
                                                      num_sub_vectors=max(1, info.dim // 4)))
        ids = np.asarray(table.search().select(["id"]).limit(None).to_arrow()["id"].to_numpy(zero_copy_only=False),
                         dtype=str)
        order = np.argsort(ids, kind="stable")
        path = self._id_map_path(info, kind)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ids=ids[order], offsets=order.astype(np.int64))
        os.replace(tmp, path)

    def _id_map_path(self, info: VersionInfo, kind: str) -> Path:
        return self.root / f"{self._table_name(info, kind)}.ids.npz"

    def _set_current(self, info: VersionInfo) -> None:
        def point(registry: dict) -> None:
            registry["versions"] = [info.to_dict() if v["number"] == info.number else v
                                    for v in registry["versions"]]
            registry["current"] = info.number

        self._update(point)

    def _drop(self, info: VersionInfo) -> None:
        def remove(registry: dict) -> None:
            if registry["current"] == info.number:
                raise StoreError(f"version {info.name!r} is current and cannot be dropped")
            registry["versions"] = [v for v in registry["versions"] if v["number"] != info.number]

        self._update(remove)  # out of the registry first: no reader is pointed at what is deleted next
        for kind in ("user", "item"):
            with suppress(ValueError, FileNotFoundError):
                self.db.drop_table(self._table_name(info, kind))
            self._id_map_path(info, kind).unlink(missing_ok=True)

    # --- reading --------------------------------------------------------------------------------------------

    def _id_map(self, info: VersionInfo, kind: str) -> tuple[np.ndarray, np.ndarray]:
        key = self._table_name(info, kind)
        if key not in self._id_maps:
            with np.load(self._id_map_path(info, kind), allow_pickle=False) as f:
                self._id_maps[key] = (f["ids"], f["offsets"])
        return self._id_maps[key]

    def _take(self, info: VersionInfo, kind: str, ids: list[str]) -> tuple[list[str], list, np.ndarray]:
        sorted_ids, offsets = self._id_map(info, kind)
        wanted = np.asarray(ids, dtype=str)
        at = np.minimum(np.searchsorted(sorted_ids, wanted), max(len(sorted_ids) - 1, 0))
        hit = (sorted_ids[at] == wanted) if len(sorted_ids) else np.zeros(len(wanted), bool)
        if not hit.any():
            return [], [], np.zeros((0, info.dim), np.float32)
        rows = self._open(info, kind, cached=True).take_offsets(sorted(offsets[at[hit]].tolist()))
        return _columns(rows.select(["id", "label", "vector"]).to_arrow(), info.dim)

    def _search(self, info: VersionInfo, kind: str, vector: np.ndarray, k: int) -> tuple[list[str], list, np.ndarray]:
        query = self._open(info, kind, cached=True).search(vector).distance_type(info.metric).limit(k)
        if info.stats.get(kind, {}).get("rows", 0) >= INDEX_MIN_ROWS:
            query = query.nprobes(NPROBES).refine_factor(REFINE)
        return _columns(query.select(["id", "label", "vector"]).to_arrow(), info.dim)

    def _count(self, info: VersionInfo, kind: str) -> int:
        return self._open(info, kind, cached=True).count_rows()


def _schema(dim: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("label", pa.string()), ("chunk", pa.int32()),
                      ("vector", pa.list_(pa.float32(), dim))])


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    flat = pc.list_flatten(column) if column.num_chunks else pa.array([], pa.float32())
    return np.asarray(flat.to_numpy(), dtype=np.float32).reshape(-1, dim)


def _columns(table: pa.Table, dim: int) -> tuple[list[str], list, np.ndarray]:
    return table["id"].to_pylist(), table["label"].to_pylist(), _vectors(table["vector"], dim)


@contextmanager
def _flock(path: Path, blocking: bool, busy: str = "") -> Iterator[None]:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise StoreError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
