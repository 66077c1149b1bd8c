"""What every importer does once its files are read: refuse duplicates and unknown items, then write."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfm.data.errors import DataError
from recfm.data.schema import (
    EVENT_FIELDS,
    ITEMS_FILE,
    QUARANTINE_FILE,
    DatasetInfo,
    event_schema,
    item_schema,
)
from recfm.data.validate import ImportLedger
from recfm.data.writer import EventShardWriter

DUPLICATE_KEY = ["user_id", "item_id", "ts", "action", "query"]


@dataclass
class EventPart:
    """Checked events of one source file, in file order, indexed by their row numbers."""

    file: str
    frame: pd.DataFrame


def prepare_output(out: Path) -> Path:
    """Creates `out`, clearing what an earlier import left there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("events", ITEMS_FILE, QUARANTINE_FILE, "dataset.json"):
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return out


def refuse_unknown_items(part: EventPart, known: pd.Index, ledger: ImportLedger, catalog_file: str) -> EventPart:
    unknown = ~part.frame["item_id"].isin(known).to_numpy()
    bad = part.frame[unknown]
    ledger.refuse(part.file, bad.index.to_numpy(), "item_id", f"unknown item (not in {catalog_file})",
                  bad["item_id"].tolist())
    return EventPart(part.file, part.frame[~unknown])


def finish_import(out: Path, parts: list[EventPart], items: pd.DataFrame | None, info: DatasetInfo,
                  ledger: ImportLedger, id_type: pa.DataType) -> DatasetInfo:
    """Refuses repeated events, writes events (source order) and the catalog, and saves dataset.json."""
    parts = _refuse_duplicates(parts, ledger)
    events = sum(len(p.frame) for p in parts)
    if events == 0:
        raise DataError(info.source, "no usable events: every row was refused or the files have no data rows")
    extra = sorted({c for p in parts for c in p.frame.columns} - set(EVENT_FIELDS))
    schema = event_schema(id_type, {name: pa.string() for name in extra})
    with EventShardWriter(out, schema) as writer:
        for part in parts:
            frame = part.frame.reset_index(drop=True)
            for name in schema.names:
                if name not in frame:
                    frame[name] = None
            writer.write(pa.Table.from_pandas(frame[schema.names], preserve_index=False).cast(schema))
    if items is None:
        items = pd.DataFrame({"item_id": pd.Series([], dtype=object)})
    catalog = item_schema(id_type)
    for name in catalog.names:
        if name not in items:
            items[name] = None
    pq.write_table(pa.Table.from_pandas(items[catalog.names], preserve_index=False).cast(catalog),
                   Path(out) / ITEMS_FILE, compression="zstd")
    ledger.close()
    info.events, info.items, info.files, info.mode = events, len(items), ledger.files, ledger.mode
    for name, counts in ledger.files.items():  # the invariant every import keeps
        assert counts.rows_in == counts.rows_kept + counts.rows_quarantined, name
    info.save(Path(out))
    return info


def _refuse_duplicates(parts: list[EventPart], ledger: ImportLedger) -> list[EventPart]:
    """An event repeated exactly (same user, item, ts, action and query) is kept once, first come."""
    if not parts:
        return parts
    keys = pd.concat([p.frame.reindex(columns=DUPLICATE_KEY) for p in parts], ignore_index=True)
    repeated = keys.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return parts
    kept, start = [], 0
    for part in parts:
        mask = repeated[start:start + len(part.frame)]
        start += len(part.frame)
        bad = part.frame[mask]
        ledger.refuse(part.file, bad.index.to_numpy(), None, "duplicate event (same user, item, ts, action, query)",
                      [f"user {u}, item {i}, ts {t}" for u, i, t in zip(bad.user_id, bad.item_id, bad.ts, strict=True)])
        kept.append(EventPart(part.file, part.frame[~mask]))
    return kept


def summary(info: DatasetInfo) -> str:
    """The lines an import prints: counts per file, with quarantine reasons."""
    lines = [f"imported {info.events:,} events and {info.items:,} items ({info.format}, {info.mode} mode)"]
    for name, c in info.files.items():
        line = f"  {name}: {c.rows_in:,} rows in = {c.rows_kept:,} kept + {c.rows_quarantined:,} quarantined"
        if c.reasons:
            line += " (" + "; ".join(f"{r}: {n:,}" for r, n in sorted(c.reasons.items(), key=lambda x: -x[1])) + ")"
        lines.append(line)
    if any(c.rows_quarantined for c in info.files.values()):
        lines.append(f"  quarantined rows are listed in {QUARANTINE_FILE}")
    lines.extend(f"  note: {n}" for n in info.notes)
    return "\n".join(lines)


def position_in_group(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal keys in `keys`' order of appearance (vectorised cumcount)."""
    return pd.Series(keys).groupby(keys, sort=False).cumcount().to_numpy(np.int64)
