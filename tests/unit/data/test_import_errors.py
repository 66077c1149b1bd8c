"""Malformed inputs: strict mode names file, row and column; lenient mode quarantines and counts.

Every case states the exact error and the exact quarantine count it expects, and every lenient import is
checked for the invariant rows in = rows kept + rows quarantined.
"""

from __future__ import annotations

import csv
import gzip
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MOVIES, RATINGS, write_movielens

from recfm.data.errors import DataError
from recfm.data.events import import_events
from recfm.data.movielens import import_movielens
from recfm.data.sequences import import_sequences

HEADER = "userId,movieId,rating,timestamp\n"


def counts(info, name: str):
    """The FileCounts of the source file called `name` (counts are keyed by the path as given)."""
    (key,) = [k for k in info.files if Path(k).name == name]
    return info.files[key]


def ratings_with(*rows: str) -> str:
    """RATINGS plus extra data rows: the first extra row is row 8 (header is row 1)."""
    return RATINGS + "".join(r + "\n" for r in rows)


# (case id, files to write, file named in the error, row, column, message fragment, quarantined rows)
ROW_CASES = [
    ("wrong-type", dict(ratings=ratings_with("1,1,abc,964982999")), "ratings.csv", 8, "rating", "not a number", 1),
    ("null-user-id", dict(ratings=ratings_with(",1,4.0,964982999")), "ratings.csv", 8, "userId", "missing value", 1),
    ("non-integer-id", dict(ratings=ratings_with("u7,1,4.0,964982999")), "ratings.csv", 8, "userId",
     "not an integer id", 1),
    ("non-numeric-ts", dict(ratings=ratings_with("1,1,4.0,yesterday")), "ratings.csv", 8, "timestamp",
     "timestamp is not a number", 1),
    ("ts-in-milliseconds", dict(ratings=ratings_with("1,1,4.0,964982999000")), "ratings.csv", 8, "timestamp",
     "out of range", 1),
    ("negative-ts", dict(ratings=ratings_with("1,1,4.0,-5")), "ratings.csv", 8, "timestamp", "out of range", 1),
    ("rating-out-of-range", dict(ratings=ratings_with("3,1,7.5,964982999")), "ratings.csv", 8, "rating",
     "out of range", 1),
    ("duplicate-event", dict(ratings=ratings_with("1,2,3.0,964982704")), "ratings.csv", 8, None,
     "duplicate event", 1),
    ("unknown-item", dict(ratings=ratings_with("1,99,4.0,964982999")), "ratings.csv", 8, "item_id",
     "unknown item", 1),
    ("truncated-row", dict(ratings=ratings_with("2,1,4.0,964982999", "3,2")), "ratings.csv", 9, None,
     "expected 4 fields, found 2", 1),
    ("bad-encoding", dict(tags=b"userId,movieId,tag,timestamp\n1,1,pixar,964982710\n2,3,caf\xe9,964982810\n"),
     "tags.csv", 3, "tag", "invalid UTF-8 bytes", 1),
    ("nul-in-title", dict(movies=MOVIES + "4,Bad\x00 Title (2001),Drama\n"), "movies.csv", 5, "title",
     "NUL byte", 1),
    ("bad-quoting", dict(ratings=ratings_with('1,3,"5.0,964982999')), "ratings.csv", 8, None,
     "malformed CSV record", 1),
    ("movie-listed-twice", dict(movies=MOVIES + "2,Heat again (1995),Action\n"), "movies.csv", 5, "movieId",
     "movie listed twice", 1),
]


@pytest.mark.parametrize("case", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_strict_names_file_row_and_column(case, movielens_dir, tmp_path):
    _, files, file, row, column, fragment, _ = case
    with pytest.raises(DataError) as caught:
        import_movielens(movielens_dir(**files), tmp_path / "out", "strict")
    err = caught.value
    assert (Path(err.file).name, err.row, err.column) == (file, row, column), str(err)
    assert fragment in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("case", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_lenient_quarantines_and_counts(case, movielens_dir, tmp_path):
    _, files, file, row, column, fragment, quarantined = case
    info = import_movielens(movielens_dir(**files), tmp_path / "out", "lenient")
    file_counts = counts(info, file)
    assert file_counts.rows_quarantined == quarantined
    assert file_counts.rows_in == file_counts.rows_kept + file_counts.rows_quarantined
    assert sum(c.rows_quarantined for c in info.files.values()) == quarantined
    with open(tmp_path / "out" / "quarantine.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == quarantined
    assert (Path(rows[0]["file"]).name, int(rows[0]["row"]), rows[0]["column"]) == (file, row, column or "")
    assert fragment in rows[0]["reason"]
    kept_events = pq.read_table(tmp_path / "out" / "events").num_rows
    assert kept_events == info.events == sum(c.rows_kept for n, c in info.files.items()
                                                   if Path(n).name != "movies.csv")


FILE_CASES = [
    ("missing-column", dict(ratings="userId,movieId,rating\n1,1,4.0\n"), "missing column(s) 'timestamp'"),
    ("empty-file", dict(ratings=""), "file is empty"),
    ("header-only", dict(ratings=HEADER), "no usable rows"),
    ("no-ratings-file", dict(ratings=None), "no ratings.csv or ratings.dat"),
]


@pytest.mark.parametrize("mode", ["strict", "lenient"])
@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_whole_file_problems_fail_in_both_modes(case, mode, movielens_dir, tmp_path):
    _, files, fragment = case
    with pytest.raises(DataError) as caught:
        import_movielens(movielens_dir(**files), tmp_path / "out", mode)
    assert fragment in str(caught.value)


def test_truncated_gzip_names_the_file(tmp_path):
    root = write_movielens(tmp_path / "ml", gz=True)
    data = (root / "ratings.csv.gz").read_bytes()
    (root / "ratings.csv.gz").write_bytes(data[: len(data) - 12])
    with pytest.raises(DataError, match="truncated") as caught:
        import_movielens(root, tmp_path / "out", "lenient")
    assert caught.value.file.endswith("ratings.csv.gz")


def test_gzip_and_plain_give_the_same_events(tmp_path):
    plain = import_movielens(write_movielens(tmp_path / "a"), tmp_path / "oa")
    gz = import_movielens(write_movielens(tmp_path / "b", gz=True), tmp_path / "ob")
    assert plain.events == gz.events == 8
    assert pq.read_table(tmp_path / "oa" / "events").equals(pq.read_table(tmp_path / "ob" / "events"))


def test_movielens_dat_layout(tmp_path):
    root = tmp_path / "ml1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1::5::978300760\n1::2::3::978302109\n2::1::4::978301968\n")
    (root / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's\n2::Amélie (2001)::Comedy\n"
                                      .encode("latin-1"))
    info = import_movielens(root, tmp_path / "out")
    assert info.events == 3
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pydict()
    assert items["title"] == ["Toy Story", "Amélie"] and items["year"] == [1995, 2001]


def test_sequence_file_bad_token_and_both_layouts(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 10 11 12\n2 11 x9 13\n3 12\n3 13\n")
    with pytest.raises(DataError) as caught:
        import_sequences(path, tmp_path / "out", "strict")
    assert (caught.value.row, caught.value.column, caught.value.value) == (2, "item", "x9")
    info = import_sequences(path, tmp_path / "out", "lenient")
    assert counts(info, "seq.txt").rows_quarantined == 1 and info.events == 5
    events = pq.read_table(tmp_path / "out" / "events").to_pydict()
    # "user item" lines continue the user's sequence with the next ordinal position
    assert [(u, i, t) for u, i, t in zip(events["user_id"], events["item_id"], events["ts"], strict=True)
            if u == 3] == [(3, 12, 0), (3, 13, 1)]


def test_nul_bytes_in_ids_are_refused_with_file_row_and_column(tmp_path):
    """PostgreSQL text cannot hold NUL: an id with one is refused at import, not when a push fails later."""
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,ts,action\nu1,i1,978300760,play\nu1,i\x00 1,978300761,play\n"
                    "u2,i2,978300762,play\n")
    with pytest.raises(DataError) as caught:
        import_events(path, tmp_path / "out", "strict", id_type="str")
    assert (Path(caught.value.file).name, caught.value.row, caught.value.column) == ("log.csv", 3, "item_id")
    assert "NUL byte" in str(caught.value)
    info = import_events(path, tmp_path / "out", "lenient", id_type="str")
    assert info.events == 2 and counts(info, "log.csv").rows_quarantined == 1
    with open(tmp_path / "out" / "quarantine.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["row"], row["column"], row["reason"]) == ("3", "item_id", "NUL byte")

    seq = tmp_path / "seq.txt"  # sequence files with string ids: every token is checked
    seq.write_text("a x y\nb y z\x00z\nc x\n")
    with pytest.raises(DataError) as caught:
        import_sequences(seq, tmp_path / "seq-out", "strict", id_type="str")
    assert (caught.value.row, caught.value.column, caught.value.value) == (2, "item", "z\x00z")
    info = import_sequences(seq, tmp_path / "seq-out", "lenient", id_type="str")
    assert info.events == 3 and counts(info, "seq.txt").rows_quarantined == 1


def test_events_csv_mapping_extra_facets_and_iso_times(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("uid,sku,time,action,country\n"
                    "a,x,2024-01-01T10:00:00Z,play,SE\n"
                    "a,y,2024-01-01T11:00:00,complete,SE\n"
                    "b,x,not-a-date,play,NO\n")
    with pytest.raises(DataError) as caught:
        import_events(path, tmp_path / "out", "strict", {"user_id": "uid", "item_id": "sku", "ts": "time"}, "iso")
    assert (caught.value.row, caught.value.column) == (4, "time")
    info = import_events(path, tmp_path / "out", "lenient", {"user_id": "uid", "item_id": "sku", "ts": "time"},
                         "iso")
    assert info.events == 2 and counts(info, "log.csv").rows_quarantined == 1
    table = pq.read_table(tmp_path / "out" / "events")
    assert table["ts"].to_pylist() == [1704103200, 1704106800]
    assert table["country"].to_pylist() == ["SE", "SE"]  # unknown facets are kept


def test_events_parquet_and_unknown_items_against_a_catalog(tmp_path):
    pq.write_table(pa.table({"user_id": [1, 1, 2], "item_id": [10, 11, 12], "ts": [5, 6, 7]}),
                   tmp_path / "ev.parquet")
    pq.write_table(pa.table({"item_id": [10, 11], "title": ["a", "b"]}), tmp_path / "items.parquet")
    with pytest.raises(DataError, match="unknown item") as caught:
        import_events(tmp_path / "ev.parquet", tmp_path / "out", "strict", id_type="int",
                      items=tmp_path / "items.parquet")
    assert caught.value.row == 3
    info = import_events(tmp_path / "ev.parquet", tmp_path / "out", "lenient", id_type="int",
                         items=tmp_path / "items.parquet")
    assert info.events == 2 and counts(info, "ev.parquet").rows_quarantined == 1


def test_corrupt_parquet_is_a_clear_error(tmp_path):
    (tmp_path / "ev.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        import_events(tmp_path / "ev.parquet", tmp_path / "out")


def test_cli_strict_error_is_one_line_without_traceback(movielens_dir, tmp_path):
    root = movielens_dir(ratings=ratings_with("1,1,abc,964982999"))
    result = subprocess.run([sys.executable, "-m", "recfm", "data", "import", "movielens", str(root),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"recfm: error: {root / 'ratings.csv'}, row 8, column 'rating': not a number (got 'abc')"]
    lenient = subprocess.run([sys.executable, "-m", "recfm", "data", "import", "movielens", str(root),
                              "--out", str(tmp_path / "out"), "--lenient"], capture_output=True, text=True)
    assert lenient.returncode == 0
    assert "ratings.csv: 7 rows in = 6 kept + 1 quarantined (not a number: 1)" in lenient.stdout


def test_gzip_magic_not_extension_decides(tmp_path):
    """A gzip file without .gz (and a plain file named .gz) are both read by their content."""
    root = write_movielens(tmp_path / "ml")
    (root / "ratings.csv").write_bytes(gzip.compress(RATINGS.encode()))
    assert import_movielens(root, tmp_path / "out").events == 8
