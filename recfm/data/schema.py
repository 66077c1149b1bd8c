"""The on-disk contract between importers and everything downstream.

An imported dataset is a directory:

    events/part-*.parquet   interaction events, in source order (ties on `ts` keep this order)
    items.parquet           the item catalog (may be empty when the source has none)
    dataset.json            what was imported, from where, with counts (see `DatasetInfo`)
    quarantine.csv          rows refused in lenient mode: file, row, column, reason, record

Event columns (`EVENT_FIELDS`):

    user_id   int64 or string   who acted; never null
    item_id   int64 or string   what they acted on; never null
    ts        int64             seconds since 1970-01-01 UTC (ordinal positions for sources without time)
    action    string            categorical: like, rate, dislike, tag, play, ...
    surface   string, nullable  where it happened (homepage, search, ...)
    device    string, nullable  tv, mobile, web, ...
    value     float32, nullable rating, watch seconds, ...: the engagement strength
    query     string, nullable  text typed or applied (search queries, MovieLens tags)

Any further column is an extra categorical facet: importers keep it, and the foundation model gives it a
table of its own.

Item columns (`ITEM_FIELDS`): item_id, title, genres (list<string>), year (int16, nullable), tags (list<string>).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

EVENT_FIELDS: dict[str, pa.DataType | None] = {
    "user_id": None,  # int64 or string: the source decides
    "item_id": None,
    "ts": pa.int64(),
    "action": pa.string(),
    "surface": pa.string(),
    "device": pa.string(),
    "value": pa.float32(),
    "query": pa.string(),
}
REQUIRED_EVENT_FIELDS = ("user_id", "item_id", "ts", "action")
CATEGORICAL_FACETS = ("action", "surface", "device")

ITEM_SCHEMA_FIELDS: dict[str, pa.DataType] = {
    "title": pa.string(),
    "genres": pa.list_(pa.string()),
    "year": pa.int16(),
    "tags": pa.list_(pa.string()),
}

# Timestamps outside this window are refused as absurd: before 1970 is negative, and past 2100 is almost
# always milliseconds or microseconds mistaken for seconds.
TS_MIN = 0
TS_MAX = 4_102_444_800  # 2100-01-01

EVENTS_DIR = "events"
ITEMS_FILE = "items.parquet"
INFO_FILE = "dataset.json"
QUARANTINE_FILE = "quarantine.csv"


def event_schema(id_type: pa.DataType, extra: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The Parquet schema of an events table whose ids have `id_type` (int64 or string)."""
    fields = [
        pa.field(name, id_type if dtype is None else dtype, nullable=name not in REQUIRED_EVENT_FIELDS)
        for name, dtype in EVENT_FIELDS.items()
    ]
    fields += [pa.field(name, dtype) for name, dtype in (extra or {}).items()]
    return pa.schema(fields)


def item_schema(id_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [pa.field("item_id", id_type, nullable=False)]
        + [pa.field(name, dtype) for name, dtype in ITEM_SCHEMA_FIELDS.items()]
    )


def extra_facets(schema: pa.Schema) -> list[str]:
    """Columns beyond the documented ones: extra categorical facets kept from the source."""
    return [name for name in schema.names if name not in EVENT_FIELDS]


@dataclass
class FileCounts:
    """Per source file: every row read is either kept or quarantined, never lost."""

    rows_in: int = 0
    rows_kept: int = 0
    rows_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class DatasetInfo:
    """dataset.json: the provenance and the bookkeeping of one import."""

    format: str
    source: str
    interaction_actions: list[str]
    has_time: bool = True
    mode: str = "strict"
    events: int = 0
    items: int = 0
    files: dict[str, FileCounts] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def save(self, directory: Path) -> None:
        (directory / INFO_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> DatasetInfo:
        path = directory / INFO_FILE
        if not path.exists():
            raise FileNotFoundError(f"{directory} is not an imported dataset: {INFO_FILE} is missing")
        raw = json.loads(path.read_text())
        raw["files"] = {k: FileCounts(**v) for k, v in raw.get("files", {}).items()}
        return cls(**raw)
