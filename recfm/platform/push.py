"""`recfm push-embeddings RUN`: a run's user and item vectors into the embedding store, as one version.

User vectors are computed in parallel by Ray actors (each loads the model once and encodes chunks of users);
the driver writes each chunk as it arrives, with a progress bar. The version name defaults to the run, the
model and its weights (`<run>-<model>-<weights hash>`), so re-running the same push resumes it, skipping the
chunks already stored, or does nothing once it is published. Before promotion the store checks row counts,
dimension, finiteness and norms.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from recfm.platform.config import StoreConfig
from recfm.serving_exports.backends import open_store
from recfm.serving_exports.embeddings import RunEmbeddings
from recfm.serving_exports.store import Chunk, VersionInfo, chunked


class UserEncoder:
    """A Ray actor: the run's model, loaded once, encoding chunks of users."""

    def __init__(self, run_dir: str, model_kind: str, threads: int):
        from recfm.platform.runtime import configure_process

        configure_process(threads)
        self.embeddings = RunEmbeddings.load(Path(run_dir), model_kind)

    def encode(self, chunk: int, users: np.ndarray) -> tuple[int, np.ndarray]:
        return chunk, self.embeddings.user_vectors(users)


def push_embeddings(run_dir: Path, s: StoreConfig, version: str | None = None, address: str | None = None,
                    progress: bool = True, log=print, new_items: Path | None = None,
                    content_cache: Path = Path(".cache/content")) -> VersionInfo:
    """Pushes the run's embeddings to `s.uri` (collection `s.collection`) and returns the promoted version. With
    `new_items` (a MovieLens-style movies.csv of titles added after training), their content vectors too."""
    emb = RunEmbeddings.load(run_dir, s.model)
    # The weights' hash in the name: retraining into the same run directory makes a new version, not a clash.
    name = version or f"{emb.run.directory.name}-{s.model}-{emb.fingerprint[:8]}"
    users, user_ids = emb.users()
    item_ids, item_vectors, labels = emb.items()
    if new_items is not None:
        new_ids, new_vectors, new_labels = _new_titles(emb, Path(new_items), set(item_ids), content_cache, log)
        name += f"-new{_file_tag(Path(new_items))}"
        item_ids, labels = item_ids + new_ids, labels + new_labels
        item_vectors = np.concatenate([item_vectors, new_vectors])
    rows = s.chunk_rows

    def chunks(done: set) -> Iterator[Chunk]:
        yield from chunked("item", item_ids, item_vectors, rows, labels, skip=done)
        todo = [(c, users[a:a + rows]) for c, a in enumerate(range(0, len(users), rows)) if ("user", c) not in done]
        for c, vectors in _encode_on_ray(run_dir, s, todo, address, progress):
            yield Chunk("user", c, user_ids[c * rows:(c + 1) * rows], vectors)

    with open_store(s.uri, s.collection) as store:
        log(f"push: {emb.model_kind} of {emb.run.directory.name} -> {store.uri} ({s.collection}), version {name!r}: "
            f"{len(item_ids):,} items and {len(users):,} users, dim {emb.dim}")
        info = store.publish(name, chunk_source=chunks, dim=emb.dim, metric="dot", normalized=False,
                             meta=emb.metadata(rows), expected={"user": len(users), "item": len(item_ids)},
                             keep=s.keep, log=log)
        log(f"push: version {info.name!r} is current in {store.uri} ({s.collection}); "
            f"{len([v for v in store.versions() if v.status == 'published'])} published versions kept")
        log(_example(store, emb))
    return info


def _example(store, emb: RunEmbeddings, k: int = 5) -> str:
    """The most-watched item's nearest neighbours in the current version, read back from the store."""
    counts = np.bincount(emb.run.sequences.events["item"], minlength=len(emb.run.catalog))
    item = str(emb.run.catalog.item_ids[int(counts.argmax())])
    snap = store.snapshot()
    source = snap.get("item", [item])
    rows = snap.similar("item", item, k)
    lines = [f"nearest to {source.labels[0] or item} [{item}] in {snap.info.name!r} (`recfm embeddings similar "
             f"--item {item}`):"]
    lines += [f"  {n}. {score:7.3f}  {label or i}" for n, (i, label, score) in
              enumerate(zip(rows.ids, rows.labels, rows.scores, strict=True), 1)]
    return "\n".join(lines)


def _new_titles(emb: RunEmbeddings, path: Path, known: set[str], cache_dir: Path,
                log) -> tuple[list[str], np.ndarray, list[str | None]]:
    """Ids, content-path vectors and labels of the titles in `path` that the run's catalog lacks (a bad row stops
    with its file, row and field; titles already in the catalog keep their trained vectors, and are counted)."""
    import tempfile

    from recfm.data.content import item_texts
    from recfm.data.movielens import read_movies
    from recfm.data.validate import ImportLedger

    with tempfile.TemporaryDirectory() as scratch:
        movies = read_movies(path, ImportLedger(Path(scratch), "strict"))
    ids = [str(i) for i in movies["item_id"]]
    new = [n for n, i in enumerate(ids) if i not in known]
    movies = movies.iloc[new]
    years = np.array([0 if y is None or y != y else int(y) for y in movies["year"]], dtype=np.int64)
    texts = item_texts(list(movies["title"]), years, list(movies["genres"]), [[] for _ in range(len(movies))])
    log(f"push: {len(new):,} new titles from {path} through the content path ({len(ids) - len(new):,} already "
        f"in the catalog keep their trained vectors)")
    vectors = emb.content_item_vectors(texts, cache_dir) if new else np.zeros((0, emb.dim), np.float32)
    labels = [f"{t} ({y})" if y else t for t, y in zip(movies["title"], years, strict=True)]
    return [ids[n] for n in new], vectors, labels


def _file_tag(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:6]


def _encode_on_ray(run_dir: Path, s: StoreConfig, todo: list[tuple[int, np.ndarray]], address: str | None,
                   progress: bool) -> Iterator[tuple[int, np.ndarray]]:
    """(chunk, vectors) for each (chunk, users) in `todo`, as the actors finish them."""
    if not todo:
        return
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from recfm.platform.config import TrainConfig
    from recfm.platform.runtime import start_ray

    start_ray(TrainConfig(workers=s.workers, cpus_per_worker=1), address)
    actor = ray.remote(num_cpus=1)(UserEncoder)
    actors = [actor.remote(str(Path(run_dir).resolve()), s.model, 1) for _ in range(min(s.workers, len(todo)))]
    bar = tqdm(total=len(todo), desc="user vectors", unit="chunk", disable=not progress)
    try:
        for result in ActorPool(actors).map_unordered(lambda a, job: a.encode.remote(*job), todo):
            bar.update()
            yield result
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)

