"""A prepared dataset's catalog: item metadata by dense id, and the tag applications with their times."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


@dataclass
class Catalog:
    """Item metadata by dense id, and the tag applications with their times (for time-correct item text)."""

    item_ids: np.ndarray  # source id of each dense item
    titles: list[str]
    genres: list[list[str]]
    years: np.ndarray  # 0 = unknown
    tag_item: np.ndarray  # dense item of each tag application (-1 = not in the catalog)
    tag_user: np.ndarray
    tag_ts: np.ndarray
    tag_text: np.ndarray

    @classmethod
    def load(cls, prepared: Path) -> Catalog:
        items = pq.read_table(prepared / "items.parquet").to_pydict()
        n = len(items["item"])
        titles = items.get("title") or [""] * n
        genres = items.get("genres") or [[] for _ in range(n)]
        years = np.array([y or 0 for y in items.get("year") or [0] * n], dtype=np.int64)
        path = prepared / "context_events.parquet"
        tags = pq.read_table(path).to_pydict() if path.exists() else {}
        queries = tags.get("query", [])
        is_tag = np.array([q is not None for q in queries], dtype=bool)

        def column(name: str, dtype) -> np.ndarray:
            return np.asarray(tags.get(name, []), dtype=dtype)[is_tag] if len(is_tag) else np.zeros(0, dtype)

        return cls(np.asarray(items["item_id"]), [t or "" for t in titles], [list(g or []) for g in genres], years,
                   column("item", np.int64), column("user", np.int64), column("ts", np.int64),
                   np.asarray([q for q in queries if q is not None], dtype=object))

    def __len__(self) -> int:
        return len(self.item_ids)

    def documents(self, before: float) -> list[str]:
        """Each item's text: title, year, genres, and the tags applied before `before` (later ones would leak)."""
        tags: list[list[str]] = [[] for _ in range(len(self))]
        for item, ts, text in zip(self.tag_item, self.tag_ts, self.tag_text, strict=True):
            if item >= 0 and ts < before:
                tags[item].append(str(text))
        return [" ".join([self.titles[i], str(self.years[i] or ""), " ".join(self.genres[i]), " ".join(tags[i])])
                for i in range(len(self))]

    def text(self, item: int) -> str:
        """The text a similars request without a query uses: title and genres."""
        return f"{self.titles[item]} {' '.join(self.genres[item])}".strip()

    def label(self, item: int) -> str:
        year = f" ({self.years[item]})" if self.years[item] else ""
        return f"{self.titles[item] or self.item_ids[item]}{year}"

    def index(self) -> dict[str, int]:
        return {str(i): n for n, i in enumerate(self.item_ids)}
