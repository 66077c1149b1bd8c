"""Row-level checks for imports: strict mode names the first bad row, lenient mode quarantines bad rows.

Every row read is counted once as kept or quarantined (`FileCounts`), so rows in = kept + quarantined.
Checks are column-wise over a chunk (pandas/numpy), never a Python loop per row.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recfm.data.config import MODES
from recfm.data.errors import DataError
from recfm.data.records import RecordChunk
from recfm.data.schema import QUARANTINE_FILE, TS_MAX, TS_MIN, FileCounts

_BAD_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape turns undecodable bytes into
# text no store can keep: undecodable bytes, and NUL (PostgreSQL text cannot hold it, so a push would fail far
# from the cause); each with the reason a refused row is given
UNSTORABLE = (("invalid UTF-8 bytes", _BAD_UTF8.search), ("NUL byte", re.compile("\x00").search))


class ImportLedger:
    """Counts every row per file and writes refused rows to `quarantine.csv` (lenient mode)."""

    def __init__(self, out: Path, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.files: dict[str, FileCounts] = {}
        self.path = Path(out) / QUARANTINE_FILE
        self._handle = None
        self._writer = None
        if self.path.exists():
            self.path.unlink()

    def counts(self, file: str) -> FileCounts:
        return self.files.setdefault(file, FileCounts())

    def quarantine(self, file: str, rows: np.ndarray, column: str, reason: str, values: list) -> None:
        counts = self.counts(file)
        counts.rows_quarantined += len(rows)
        counts.rows_kept -= len(rows)
        counts.reasons[reason] = counts.reasons.get(reason, 0) + len(rows)
        if self._writer is None:
            self._handle = open(self.path, "w", newline="", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["file", "row", "column", "reason", "value"])
        self._writer.writerows(
            (file, int(r), column, reason, "" if v is None else str(v)) for r, v in zip(rows, values, strict=True)
        )

    def refuse(self, file: str, rows: np.ndarray, column: str | None, reason: str, values: list) -> None:
        """Refuses rows found bad after their chunk was kept (duplicates, unknown items): strict raises."""
        if len(rows) == 0:
            return
        if self.mode == "strict":
            first = int(np.argmin(rows))
            raise DataError(file, reason, row=int(rows[first]), column=column, value=values[first])
        self.quarantine(file, rows, column or "", reason, values)

    @property
    def quarantined(self) -> int:
        return sum(c.rows_quarantined for c in self.files.values())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = self._writer = None


class Batch:
    """One chunk of one file under check: a frame of raw values, each row tagged with its line number.

    `refuse` removes rows that fail a check. In strict mode nothing is quarantined: `finish` raises a
    DataError for the earliest bad row of the chunk, so the message names the first problem in the file.
    """

    def __init__(self, file: str, chunk: RecordChunk, ledger: ImportLedger):
        self.file, self.ledger = file, ledger
        # object dtype: pandas 3 would store strings in Arrow, which refuses the surrogates of bad bytes
        self.frame = pd.DataFrame(chunk.columns, dtype=object)
        self.frame.index = pd.Index(chunk.rows, name="row")
        counts = ledger.counts(file)
        counts.rows_in += len(chunk.rows) + len(chunk.malformed)
        counts.rows_kept += len(chunk.rows) + len(chunk.malformed)
        self._first_bad: DataError | None = None
        for row, reason, raw in chunk.malformed:
            self._refused(np.array([row]), None, reason, [raw])

    def __len__(self) -> int:
        return len(self.frame)

    def refuse(self, mask: np.ndarray | pd.Series, column: str | None, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        bad = self.frame[mask]
        values = bad[column].tolist() if column in bad else [None] * len(bad)
        self._refused(bad.index.to_numpy(), column, reason, values)
        self.frame = self.frame[~mask]

    def _refused(self, rows: np.ndarray, column: str | None, reason: str, values: list) -> None:
        if self.ledger.mode == "strict":
            first = int(np.argmin(rows))
            if self._first_bad is None or rows[first] < self._first_bad.row:
                self._first_bad = DataError(self.file, reason, row=int(rows[first]), column=column,
                                            value=values[first])
            self.ledger.counts(self.file).rows_kept -= len(rows)
            return
        self.ledger.quarantine(self.file, rows, column or "", reason, values)

    def finish(self) -> pd.DataFrame:
        if self._first_bad is not None:
            raise self._first_bad
        return self.frame

    # ---- column checks: each parses a column in place and refuses the rows that fail ----

    def text(self, column: str, required: bool = False) -> None:
        """Refuses undecodable bytes and NUL; blank strings become nulls (or are refused when `required`)."""
        col = self.frame[column]
        joined = "".join(v for v in col if isinstance(v, str))
        for reason, found in UNSTORABLE:
            if found(joined):  # one C-speed scan; the per-row pass only when needed
                self.refuse(col.map(lambda v, found=found: isinstance(v, str) and bool(found(v))).to_numpy(bool),
                            column, reason)
                col = self.frame[column]
        col = col.map(lambda v: v.strip() if isinstance(v, str) else v)
        blank = col.isna() | (col == "")
        if required:
            self.refuse(blank.to_numpy(), column, "missing value")
        self.frame[column] = col.where(~blank, None)

    def ids(self, column: str, kind: str) -> None:
        """Ids must be present; `kind` "int" ones must be integers."""
        self.text(column, required=True)
        if kind == "int":
            self.integers(column, "not an integer id")

    def integers(self, column: str, reason: str = "not an integer") -> None:
        num = pd.to_numeric(self.frame[column], errors="coerce")
        self.refuse((num.isna() | ~np.isfinite(num) | (num != np.round(num)) | (num.abs() > 2**62)).to_numpy(),
                    column, reason)
        self.frame[column] = self._kept(num).round().astype(np.int64)

    def numbers(self, column: str, low: float | None = None, high: float | None = None,
                required: bool = True) -> None:
        """Finite floats within [low, high]; blanks are refused when `required`, else become NaN."""
        self.text(column, required=required)
        given = self.frame[column].notna()
        num = pd.to_numeric(self.frame[column], errors="coerce")
        self.refuse((given & (num.isna() | ~np.isfinite(num))).to_numpy(), column, "not a number")
        num = self._kept(num)
        lo = -np.inf if low is None else low
        hi = np.inf if high is None else high
        self.refuse((num.notna() & ((num < lo) | (num > hi))).to_numpy(), column, f"out of range [{low}, {high}]")
        self.frame[column] = self._kept(num).astype(np.float32)

    def timestamps(self, column: str, unit_seconds: float = 1.0) -> None:
        """Seconds since 1970 (after scaling by `unit_seconds`); absurd values are refused."""
        self.text(column, required=True)
        num = pd.to_numeric(self.frame[column], errors="coerce")
        self.refuse((num.isna() | ~np.isfinite(num)).to_numpy(), column, "timestamp is not a number")
        self._in_time_range(column, self._kept(num) * unit_seconds)

    def datetimes(self, column: str) -> None:
        """ISO-8601 date-times (naive ones are taken as UTC), stored as seconds since 1970."""
        self.text(column, required=True)
        parsed = pd.to_datetime(self.frame[column], errors="coerce", utc=True, format="ISO8601")
        self.refuse(parsed.isna().to_numpy(), column, "not an ISO-8601 date-time")
        self._in_time_range(column, (self._kept(parsed) - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1))

    def _in_time_range(self, column: str, secs: pd.Series) -> None:
        self.refuse(((secs < TS_MIN) | (secs > TS_MAX)).to_numpy(), column,
                    "timestamp out of range 1970-01-01..2100-01-01 (milliseconds given as seconds?)")
        self.frame[column] = np.floor(self._kept(secs)).astype(np.int64)

    def _kept(self, values: pd.Series) -> pd.Series:
        """`values` (computed before a refusal) for the rows still in the frame."""
        return values.loc[self.frame.index]
