"""Where events come from and how they are split: the `data:` section of a run's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data" / "ml-latest-small"
FORMATS = ("movielens", "sequences", "events", "imported")
MODES = ("strict", "lenient")


class DataConfigError(ValueError):
    """An invalid data setting; the message names the key."""


@dataclass
class DataConfig:
    source: str = str(DEMO_DATA)
    """a MovieLens folder, a sequence file, or event file(s)"""
    format: str = "movielens"
    """movielens | sequences | events | imported (a `recfm data import`/`synth` output, prepared as it is)"""
    mode: str = "strict"
    """strict: stop at the first bad row, naming file, row and field; lenient: quarantine bad rows and count them"""
    id_type: str = "int"
    """sequences and events: int or str ids"""
    mapping: dict[str, str] = field(default_factory=dict)
    """events: schema field -> source column"""
    ts_unit: str = "s"
    """events: s | ms | us | ns | iso"""
    items: str | None = None
    """events: an item catalog file (CSV or Parquet)"""
    split: str = "time"
    """loo (leave-one-out: each user's last event is the test target, the one before it the validation target) | time
    (the demo: every event after a cutoff is a target)"""
    val_cutoff: float | None = 0.7
    """time split: a timestamp, or a quantile of event times in (0, 1)"""
    test_cutoff: float | None = 0.9
    """time split: a timestamp, or a quantile of event times in (0, 1)"""
    actions: list[str] | None = None
    """which actions are interactions; default: the importer's choice"""
    min_item_events: int = 0
    """leave out items with fewer interactions than this in the whole file, and their events (counted, reported), as
    the 5-core benchmark files do; 0 = keep every item"""
    cold_items: float = 0.0
    """time split: hold out this share of items, drawn at random, from everything before the test cutoff (the cold-start
    evaluation); their test events stay"""
    cold_seed: int = 0
    """the draw of the held-out items"""
    cache_dir: str = ".cache/data"
    """imported and prepared data, reused while source and settings match"""

    def validate(self, source_needed: bool = True) -> None:
        """`source_needed`: False for a finished run's config (the run has its own copy of the data, data/)."""
        for key, value, allowed in (("data.format", self.format, FORMATS), ("data.mode", self.mode, MODES),
                                    ("data.split", self.split, ("loo", "time")), ("data.id_type", self.id_type,
                                                                                ("int", "str")),
                                    ("data.ts_unit", self.ts_unit, ("s", "ms", "us", "ns", "iso"))):
            if value not in allowed:
                raise DataConfigError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")
        if self.min_item_events < 0:
            raise DataConfigError("data.min_item_events must be >= 0")
        if not 0 <= self.cold_items < 1:
            raise DataConfigError("data.cold_items must be in [0, 1)")
        if source_needed and not Path(self.source).exists():
            raise DataConfigError(f"data.source: {self.source} does not exist")
        # absolute, so that processes started elsewhere (Ray workers) read the same files
        self.source = str(Path(self.source).resolve())
        self.cache_dir = str(Path(self.cache_dir).resolve())
        if self.items:
            self.items = str(Path(self.items).resolve())
