"""`ensure_prepared` imports and prepares once, then reuses the cache while the source files and the settings that
shape the output are unchanged; a changed source file or split setting rebuilds exactly what it invalidates."""

from __future__ import annotations

import os

from conftest import write_movielens

from recfm.data.config import DataConfig
from recfm.data.dataset import Sequences
from recfm.data.pipeline import ensure_prepared

RATINGS = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{m},4.0,{1_000_000 + 100 * u + m}\n" for u in range(1, 6) for m in range(1, 4))
MOVIES = "movieId,title,genres\n1,A (2000),Drama\n2,B (2001),Comedy\n3,C (2002),Drama\n"


def _prepare(cfg: DataConfig) -> tuple:
    lines = []
    path = ensure_prepared(cfg, log=lines.append)
    return path, lines


def test_the_cache_is_reused_and_rebuilt_on_a_change(tmp_path):
    source = write_movielens(tmp_path / "ml", ratings=RATINGS, movies=MOVIES, tags=None)
    cfg = DataConfig(source=str(source), split="loo", cache_dir=str(tmp_path / "cache"))
    first, lines = _prepare(cfg)
    assert any(line.startswith("importing") for line in lines)
    marker = first / "prepared.json"
    stamp = marker.stat().st_mtime_ns

    again, lines = _prepare(cfg)  # nothing changed: the same directory, nothing imported or prepared
    assert again == first and lines == [] and marker.stat().st_mtime_ns == stamp

    # another split: the import is reused, the preparation is new and sits beside the first
    cfg_time = DataConfig(source=str(source), split="time", val_cutoff=0.5, test_cutoff=0.8,
                          cache_dir=str(tmp_path / "cache"))
    timed, lines = _prepare(cfg_time)
    assert timed != first and timed.parent == first.parent and timed.exists() and first.exists()
    assert any(line.startswith("reusing the import") for line in lines)
    assert not any(line.startswith("importing") for line in lines)

    # a source file changed (one more user): imported and prepared again, and the new data is what is read
    (source / "ratings.csv").write_text(RATINGS + "6,1,4.0,1000601\n6,2,4.0,1000602\n6,3,4.0,1000603\n")
    os.utime(source / "ratings.csv", ns=(stamp + 10**9, stamp + 10**9))
    changed, lines = _prepare(cfg)
    assert changed != first and any(line.startswith("importing") for line in lines)
    assert Sequences.load(changed).n_users == 6 and Sequences.load(first).n_users == 5


def test_a_damaged_cache_is_rebuilt(tmp_path):
    source = write_movielens(tmp_path / "ml", ratings=RATINGS, movies=MOVIES, tags=None)
    cfg = DataConfig(source=str(source), split="loo", cache_dir=str(tmp_path / "cache"))
    first, _ = _prepare(cfg)
    (first / "prepared.json").write_text("{ truncated")
    again, lines = _prepare(cfg)
    assert again == first and any("prepar" in line or "users" in line for line in lines)
    assert Sequences.load(again).n_users == 5
