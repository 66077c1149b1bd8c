"""A finished training run, opened for use: its config, prepared data, catalog and the FM in one process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recfm.fm.model import UserFoundationModel, build_model
from recfm.fm.objectives import TrainingObjective
from recfm.platform.config import RecfmConfig, load_config
from recfm.platform.data.dataset import Sequences
from recfm.platform.data.pipeline import ensure_prepared
from recfm.platform.rundir import CONFIG_FILE, RUNS_DIR, latest_run
from recfm.platform.train.checkpoint import load_weights

MODEL_FILE = "model.json"
BEST_LINK = "best_checkpoint"  # best on validation (trained on events before the validation cutoff)
FINAL_LINK = "final_checkpoint"  # what is tested and served: the best one, refitted up to the test cutoff


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


@dataclass
class TrainedRun:
    directory: Path
    cfg: RecfmConfig
    spec: dict

    @classmethod
    def open(cls, directory: Path | None = None) -> TrainedRun:
        """A run directory written by `recfm train` (default: the newest under runs/)."""
        directory = Path(directory) if directory else latest_run(RUNS_DIR)
        if directory is None:
            raise FileNotFoundError("no trained run under runs/: run `make demo` or `recfm train` first, or pass "
                                    "--run DIR")
        if not (directory / CONFIG_FILE).exists() or not (directory / MODEL_FILE).exists():
            raise FileNotFoundError(f"{directory} is not a recfm training run (no {CONFIG_FILE} or {MODEL_FILE})")
        if not (directory / BEST_LINK).exists():
            raise FileNotFoundError(f"{directory} has no best checkpoint: its training did not finish")
        return cls(directory.resolve(), load_config(directory / CONFIG_FILE),
                   json.loads((directory / MODEL_FILE).read_text()))

    @cached_property
    def prepared(self) -> Path:
        return ensure_prepared(self.cfg.data, log=lambda _: None)

    @cached_property
    def sequences(self) -> Sequences:
        return Sequences.load(self.prepared)

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog.load(self.prepared)

    @cached_property
    def users(self) -> dict[str, int]:
        ids = pq.read_table(self.prepared / "users.parquet").column("user_id").to_pylist()
        return {str(u): n for n, u in enumerate(ids)}

    def checkpoint(self, name: str = FINAL_LINK) -> Path:
        path = self.directory / name
        if not path.exists():  # runs from before the refit step have only the best checkpoint
            path = self.directory / BEST_LINK
        return path

    def foundation_model(self, checkpoint: str = FINAL_LINK) -> UserFoundationModel:
        """A checkpoint (the final one by default) gathered into one unsharded model, in eval mode."""
        model = build_model(self.spec)
        load_weights(self.checkpoint(checkpoint), TrainingObjective(model, self.cfg.objective))
        return model.eval()
