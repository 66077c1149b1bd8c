"""MovieLens importer: the CSV layout (latest, 20M, 25M) and the `::` layout (1M, 10M).

Ratings become interactions whose action says how the rating went (`like` at 4 stars or more, `dislike` at 2
or fewer, else `rate`) with the rating as `value`; tag applications become search-like `tag` events whose
`query` is the tag text. Only ratings are interactions for sequences and evaluation (the published figures
for MovieLens are on ratings); tag events stay in the data for models and the search head.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recfm.data.errors import DataError
from recfm.data.importing import EventPart, finish_import, prepare_output, refuse_unknown_items
from recfm.data.records import RecordChunk, read_csv_chunks, read_split_lines
from recfm.data.schema import DatasetInfo
from recfm.data.validate import Batch, ImportLedger

INTERACTIONS = ["like", "rate", "dislike"]
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")

# column names per layout; the `::` files have no header, so their names are given
_CSV = {
    "ratings": ["userId", "movieId", "rating", "timestamp"],
    "tags": ["userId", "movieId", "tag", "timestamp"],
    "movies": ["movieId", "title", "genres"],
}


def _find(source: Path, stem: str) -> Path | None:
    for suffix in (".csv", ".csv.gz", ".dat", ".dat.gz"):
        path = source / f"{stem}{suffix}"
        if path.exists():
            return path
    return None


def _chunks(path: Path, kind: str) -> Iterator[RecordChunk]:
    if ".dat" in path.suffixes:  # 1M/10M: `::`-separated, no header, Latin-1 titles
        return read_split_lines(path, _CSV[kind], "::", encoding="latin-1")
    return read_csv_chunks(path, _CSV[kind])


def import_movielens(source: Path, out: Path, mode: str = "strict") -> DatasetInfo:
    """Imports a MovieLens directory into recfm's event and catalog schema (see `schema.py`)."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(str(source), "not a directory (expected a MovieLens folder with ratings and movies files)")
    ratings_path, movies_path, tags_path = (_find(source, s) for s in ("ratings", "movies", "tags"))
    if ratings_path is None:
        raise DataError(str(source), "no ratings.csv or ratings.dat here: not a MovieLens folder")
    out = prepare_output(out)
    ledger = ImportLedger(out, mode)

    items = read_movies(movies_path, ledger) if movies_path else None
    parts = [_read_ratings(ratings_path, ledger)]
    if tags_path is not None:
        parts.append(_read_tags(tags_path, ledger))
    notes = []
    if items is None:
        notes.append("no movies file: the catalog is empty and items are not checked against it")
    else:
        known = pd.Index(items["item_id"])
        parts = [refuse_unknown_items(p, known, ledger, movies_path.name) for p in parts]
        items = _with_tags(items, parts[1].frame if len(parts) > 1 else None)
    info = DatasetInfo(format="movielens", source=str(source), interaction_actions=INTERACTIONS, notes=notes)
    return finish_import(out, parts, items, info, ledger, pa.int64())


def _read_ratings(path: Path, ledger: ImportLedger) -> EventPart:
    frames = []
    for chunk in _chunks(path, "ratings"):
        batch = Batch(str(path), chunk, ledger)
        batch.ids("userId", "int")
        batch.ids("movieId", "int")
        batch.numbers("rating", 0.5, 5.0)
        batch.timestamps("timestamp")
        f = batch.finish()
        rating = f["rating"].to_numpy(np.float32)
        frames.append(pd.DataFrame({
            "user_id": f["userId"], "item_id": f["movieId"], "ts": f["timestamp"],
            "action": np.where(rating >= 4.0, "like", np.where(rating <= 2.0, "dislike", "rate")),
            "surface": "rating", "value": rating,
        }, index=f.index))
    return EventPart(str(path), _concat(frames, path))


def _read_tags(path: Path, ledger: ImportLedger) -> EventPart:
    frames = []
    for chunk in _chunks(path, "tags"):
        batch = Batch(str(path), chunk, ledger)
        batch.ids("userId", "int")
        batch.ids("movieId", "int")
        batch.text("tag", required=True)
        batch.timestamps("timestamp")
        f = batch.finish()
        frames.append(pd.DataFrame({
            "user_id": f["userId"], "item_id": f["movieId"], "ts": f["timestamp"], "action": "tag",
            "surface": "tagging", "query": f["tag"],
        }, index=f.index))
    return EventPart(str(path), _concat(frames, path, allow_empty=True))


def read_movies(path: Path, ledger: ImportLedger) -> pd.DataFrame:
    """A movies.csv (movieId, title, genres) as item rows: id, title without its year, genre list, year."""
    frames = []
    for chunk in _chunks(path, "movies"):
        batch = Batch(str(path), chunk, ledger)
        batch.ids("movieId", "int")
        batch.text("title", required=True)
        batch.text("genres")
        frames.append(batch.finish())
    movies = _concat(frames, path)
    repeated = movies["movieId"].duplicated().to_numpy()
    ledger.refuse(str(path), movies.index.to_numpy()[repeated], "movieId", "movie listed twice",
                  movies["movieId"][repeated].tolist())
    movies = movies[~repeated]
    year = movies["title"].str.extract(_YEAR)[0]
    genres = movies["genres"].fillna("").map(
        lambda g: [x for x in g.split("|") if x and x != "(no genres listed)"])
    return pd.DataFrame({
        "item_id": movies["movieId"].to_numpy(np.int64),
        "title": movies["title"].str.replace(_YEAR, "", regex=True).to_numpy(object),
        "genres": genres.to_numpy(object),
        "year": pd.to_numeric(year, errors="coerce").astype("Int16").to_numpy(),
    })


def _with_tags(items: pd.DataFrame, tags: pd.DataFrame | None) -> pd.DataFrame:
    """Each movie's distinct tags (case-insensitive, first spelling kept), in the order applied."""
    if tags is None or tags.empty:
        items["tags"] = [[] for _ in range(len(items))]
        return items
    t = tags[["item_id", "query"]].copy()
    t["key"] = t["query"].str.lower()
    t = t.drop_duplicates(["item_id", "key"])
    by_item = t.groupby("item_id", sort=False)["query"].agg(list)
    items["tags"] = items["item_id"].map(by_item).map(lambda v: v if isinstance(v, list) else [])
    return items


def _concat(frames: list[pd.DataFrame], path: Path, allow_empty: bool = False) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        if allow_empty:
            return pd.DataFrame(columns=["user_id", "item_id", "ts", "action", "query"])
        raise DataError(str(path), "no usable rows: the file has no data rows or every row was refused")
    return pd.concat(frames)
