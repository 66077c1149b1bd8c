"""Importer for the sequence files of the sequential-recommendation literature (SASRec, S3-Rec, ICLRec).

Each line is a user id followed by one or more item ids, whitespace-separated, in time order. This reads
both common layouts the same way: `user item item ...` (one line per user) and `user item` (one line per
interaction) are lines whose items are appended, in file order, to that user's sequence. There are no
timestamps: `ts` is the event's ordinal position in its user's sequence, so order is kept and the
time-of-day facets carry no information. A line is one row: a bad token refuses its whole line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recfm.data.errors import DataError
from recfm.data.importing import EventPart, finish_import, position_in_group, prepare_output
from recfm.data.records import RecordChunk, read_split_lines
from recfm.data.schema import DatasetInfo
from recfm.data.validate import UNSTORABLE, Batch, ImportLedger

ACTION = "interact"


def import_sequences(source: Path, out: Path, mode: str = "strict", id_type: str = "int") -> DatasetInfo:
    """Imports a sequence file (plain or gzip); `id_type` "int" refuses non-integer ids, "str" keeps text."""
    source = Path(source)
    if id_type not in ("int", "str"):
        raise ValueError(f"id_type must be 'int' or 'str', not {id_type!r}")
    out = prepare_output(out)
    ledger = ImportLedger(out, mode)
    name = str(source)
    frames = []
    for chunk in read_split_lines(source, None, None):
        batch = Batch(name, _first_and_rest(chunk), ledger)
        batch.ids("user", id_type)
        batch.refuse(batch.frame["items"].map(len).to_numpy() == 0, "items", "no items after the user id")
        if id_type == "int":
            batch.frame["item"] = batch.frame["items"].map(_first_non_integer)
            batch.refuse(batch.frame["item"].notna().to_numpy(), "item", "not an integer id")
        else:
            for reason, found in UNSTORABLE:
                batch.frame["item"] = batch.frame["items"].map(lambda tokens, found=found: _first(tokens, found))
                batch.refuse(batch.frame["item"].notna().to_numpy(), "item", reason)
        f = batch.finish()
        lengths = f["items"].map(len).to_numpy()
        rows = np.repeat(f.index.to_numpy(), lengths)
        items = np.concatenate(f["items"].to_numpy()) if len(f) else np.array([], dtype=object)
        frames.append(pd.DataFrame({
            "user_id": np.repeat(f["user"].to_numpy(), lengths),
            "item_id": items.astype(np.int64) if id_type == "int" else items,
        }, index=pd.Index(rows, name="row")))
    if not frames:
        raise DataError(str(source), "no data lines")
    events = pd.concat(frames)
    events["ts"] = position_in_group(events["user_id"].to_numpy())
    events["action"] = ACTION
    info = DatasetInfo(format="sequences", source=str(source), interaction_actions=[ACTION], has_time=False,
                       notes=["no timestamps in this format: ts is each event's position in its user's sequence"])
    return finish_import(out, [EventPart(name, events)], None, info, ledger,
                         pa.int64() if id_type == "int" else pa.string())


def _first_and_rest(chunk: RecordChunk) -> RecordChunk:
    """Splits each line's tokens into the user id and the list of item ids."""
    fields = chunk.columns["fields"]
    return RecordChunk(rows=chunk.rows, columns={"user": [f[0] for f in fields], "items": [f[1:] for f in fields]},
                       malformed=chunk.malformed)


def _first(tokens: list[str], found) -> str | None:
    return next((token for token in tokens if found(token)), None)


def _first_non_integer(tokens: list[str]) -> str | None:
    for token in tokens:
        if not (token.isascii() and token.isdigit()):
            return token
    return None
