"""Importer for generic event logs: CSV or Parquet files (or a folder of them) and a column mapping.

`mapping` names, for each schema field, the source column holding it (`{"user_id": "uid", "ts": "time"}`);
fields not mapped are looked up under their own name. `user_id`, `item_id` and `ts` are required; a missing
`action` column makes every event an `interact`. Source columns that are not part of the schema are kept
as extra categorical facets (as strings). Parquet rows are numbered from 1 in file order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfm.data.errors import DataError
from recfm.data.importing import EventPart, finish_import, prepare_output, refuse_unknown_items
from recfm.data.records import CHUNK_ROWS, RecordChunk, read_csv_chunks
from recfm.data.schema import EVENT_FIELDS, DatasetInfo
from recfm.data.validate import Batch, ImportLedger

TS_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "iso": None}
_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet")


def import_events(source: Path, out: Path, mode: str = "strict", mapping: dict[str, str] | None = None,
                  ts_unit: str = "s", id_type: str = "str", items: Path | None = None) -> DatasetInfo:
    """Imports event files into recfm's schema; see the module docstring for the mapping rules."""
    if ts_unit not in TS_UNITS:
        raise ValueError(f"ts_unit must be one of {sorted(TS_UNITS)}, not {ts_unit!r}")
    if id_type not in ("int", "str"):
        raise ValueError(f"id_type must be 'int' or 'str', not {id_type!r}")
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(EVENT_FIELDS))
    if unknown:
        raise ValueError(f"mapping names unknown field(s) {unknown}; the fields are {list(EVENT_FIELDS)}")
    column = {f: mapping.get(f, f) for f in EVENT_FIELDS}
    files = _source_files(Path(source))
    out = prepare_output(out)
    ledger = ImportLedger(out, mode)

    parts = [EventPart(str(path), _read_events(path, column, ts_unit, id_type, ledger)) for path in files]
    parts = [p for p in parts if len(p.frame)]
    catalog = None
    if items is not None:
        catalog = _read_items(Path(items), id_type, ledger)
        parts = [refuse_unknown_items(p, pd.Index(catalog["item_id"]), ledger, Path(items).name) for p in parts]
    actions = sorted({a for p in parts for a in p.frame["action"].unique()})
    info = DatasetInfo(format="events", source=str(source), interaction_actions=actions)
    return finish_import(out, parts, catalog, info, ledger, pa.int64() if id_type == "int" else pa.string())


def _source_files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.name.endswith(_SUFFIXES))
        if not files:
            raise DataError(str(source), f"no event files here (looked for {', '.join(_SUFFIXES)})")
        return files
    if not source.exists():
        raise DataError(str(source), "file not found")
    return [source]


def _chunks(path: Path, required: list[str]) -> Iterator[RecordChunk]:
    if path.name.endswith(".parquet"):
        try:
            reader = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(str(path), f"not a readable Parquet file ({err})") from None
        missing = [c for c in required if c not in reader.schema_arrow.names]
        if missing:
            raise DataError(str(path), f"missing column(s) {', '.join(map(repr, missing))}"
                            f" (file has {', '.join(reader.schema_arrow.names)})")
        start = 1
        for batch in reader.iter_batches(batch_size=CHUNK_ROWS):
            frame = batch.to_pandas().astype(object)
            yield RecordChunk(rows=np.arange(start, start + len(frame), dtype=np.int64),
                              columns={c: frame[c].tolist() for c in frame.columns})
            start += len(frame)
        return
    delimiter = "\t" if ".tsv" in path.suffixes else ","
    yield from read_csv_chunks(path, required, delimiter=delimiter)


def _read_events(path: Path, column: dict[str, str], ts_unit: str, id_type: str,
                 ledger: ImportLedger) -> pd.DataFrame:
    required = [column["user_id"], column["item_id"], column["ts"]]
    frames = []
    for chunk in _chunks(path, required):
        batch = Batch(str(path), chunk, ledger)
        present = set(batch.frame.columns)
        batch.ids(column["user_id"], id_type)
        batch.ids(column["item_id"], id_type)
        if ts_unit == "iso":
            batch.datetimes(column["ts"])
        else:
            batch.timestamps(column["ts"], TS_UNITS[ts_unit])
        for field in ("action", "surface", "device", "query"):
            if column[field] in present:
                batch.text(column[field], required=field == "action")
        if column["value"] in present:
            batch.numbers(column["value"], required=False)
        f = batch.finish()
        renamed = {column[k]: k for k in EVENT_FIELDS if column[k] in present}
        frame = f.rename(columns=renamed)
        if "action" not in frame:
            frame["action"] = "interact"
        for extra in set(frame.columns) - set(EVENT_FIELDS):  # extra facets are categorical strings
            frame[extra] = frame[extra].map(lambda v: None if v is None or v != v else str(v))
        frames.append(frame)
    if not frames:
        raise DataError(str(path), "no data rows")
    return pd.concat(frames)


def _read_items(path: Path, id_type: str, ledger: ImportLedger) -> pd.DataFrame:
    frames = []
    for chunk in _chunks(path, ["item_id"]):
        batch = Batch(str(path), chunk, ledger)
        batch.ids("item_id", id_type)
        for name in ("title", "genres", "tags"):
            if name in batch.frame:
                batch.text(name)
        if "year" in batch.frame:
            batch.numbers("year", 0, 3000, required=False)
        frames.append(batch.finish())
    items = pd.concat(frames) if frames else pd.DataFrame({"item_id": []})
    repeated = items["item_id"].duplicated().to_numpy()
    ledger.refuse(str(path), items.index.to_numpy()[repeated], "item_id", "item listed twice",
                  items["item_id"][repeated].tolist())
    items = items[~repeated].reset_index(drop=True)
    for name in ("genres", "tags"):  # lists in Parquet, `|`-separated in CSV
        if name in items:
            items[name] = items[name].map(lambda v: list(v) if isinstance(v, list | np.ndarray)
                                          else [x for x in str(v).split("|") if x] if v else [])
    if "year" in items:
        items["year"] = items["year"].round().astype("Int16")
    return items
