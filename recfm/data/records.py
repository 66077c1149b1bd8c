"""Reads delimited text files (plain or gzip) as chunks of raw string columns, with their line numbers.

Python's `csv` module splits the records (it is exact about quoting and reports line numbers, which
pyarrow's streaming reader does not for bad rows); each chunk's values are then checked column-wise with
numpy and pandas by `validate.py`. Rows are numbered as an editor or spreadsheet shows them: the line on
which the record starts, so a CSV header is row 1 and its first record row 2.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recfm.data.errors import DataError

CHUNK_ROWS = 500_000
# (line number, fields or None when malformed, reason, raw text)
Record = tuple[int, list | None, str, str]


@dataclass
class RecordChunk:
    """Well-formed records of one chunk as raw strings, plus the records that could not be split."""

    rows: np.ndarray  # int64 line numbers of the well-formed records
    columns: dict[str, list[str]]
    malformed: list[tuple[int, str, str]] = field(default_factory=list)  # (row, reason, raw text)


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Opens plain or gzip text. Undecodable bytes become lone surrogates, so they are found per row."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    if path.stat().st_size == 0:
        raise DataError(str(path), "file is empty (0 bytes)")
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")  # noqa: SIM115 - returned to the caller
    return io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")


def _guarded(path: Path, records: Iterator[Record], last: list[int]) -> Iterator[Record]:
    """Turns the low-level errors of a damaged file into a DataError naming it and the row reached."""
    try:
        yield from records
    except EOFError:
        raise DataError(str(path), "file is truncated: the gzip stream ends early", row=last[0] + 1) from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DataError(str(path), f"file is not valid gzip ({err})", row=last[0] + 1) from None


def read_csv_chunks(path: Path, required: list[str], delimiter: str = ",", encoding: str = "utf-8",
                    chunk_rows: int = CHUNK_ROWS) -> Iterator[RecordChunk]:
    """Yields chunks of a CSV file that has a header. Missing `required` columns are fatal."""
    path = Path(path)
    with open_text(path, encoding) as text:
        reader = csv.reader(text, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(str(path), "file has no header line") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(str(path), f"missing column(s) {', '.join(map(repr, missing))}"
                            f" (header has {', '.join(header)})", row=1)
        width = len(header)
        last = [1]

        def records() -> Iterator[Record]:
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:  # bad quoting: the record cannot be split reliably
                    last[0] = reader.line_num
                    yield start, None, f"malformed CSV record ({err})", ""
                    continue
                last[0] = reader.line_num
                if not fields:  # a blank line is not a record
                    continue
                if len(fields) != width:
                    yield start, None, f"expected {width} fields, found {len(fields)}", delimiter.join(fields)
                else:
                    yield start, fields, "", ""

        yield from _chunked(_guarded(path, records(), last), header, chunk_rows)


def read_split_lines(path: Path, columns: list[str] | None, separator: str | None, encoding: str = "utf-8",
                     chunk_rows: int = CHUNK_ROWS) -> Iterator[RecordChunk]:
    """Yields chunks of a headerless file split on `separator` (None: any whitespace).

    With `columns`, every line must have exactly that many fields. Without, each line is one record of
    variable length, returned whole under the column name "fields" (a list per record).
    """
    path = Path(path)
    names = columns or ["fields"]
    with open_text(path, encoding) as text:
        last = [0]

        def records() -> Iterator[Record]:
            for number, line in enumerate(text, start=1):
                last[0] = number
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split(separator)
                if columns is None:
                    yield number, [fields], "", ""
                elif len(fields) != len(columns):
                    yield number, None, f"expected {len(columns)} fields, found {len(fields)}", line
                else:
                    yield number, fields, "", ""

        yield from _chunked(_guarded(path, records(), last), names, chunk_rows)


def _chunked(records: Iterator[Record], names: list[str],
             chunk_rows: int) -> Iterator[RecordChunk]:
    rows: list[int] = []
    good: list[list] = []
    malformed: list[tuple[int, str, str]] = []
    for number, fields, reason, raw in records:
        if fields is None:
            malformed.append((number, reason, raw))
            continue
        rows.append(number)
        good.append(fields)
        if len(good) >= chunk_rows:
            yield _chunk(rows, good, names, malformed)
            rows, good, malformed = [], [], []
    if good or malformed:
        yield _chunk(rows, good, names, malformed)


def _chunk(rows: list[int], good: list[list], names: list[str],
           malformed: list[tuple[int, str, str]]) -> RecordChunk:
    columns = list(zip(*good, strict=True)) if good else [() for _ in names]
    return RecordChunk(
        rows=np.asarray(rows, dtype=np.int64),
        columns={name: list(col) for name, col in zip(names, columns, strict=True)},
        malformed=malformed,
    )
