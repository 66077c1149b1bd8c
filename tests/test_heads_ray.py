"""The demo path end to end on a real local Ray: FM training on the bundled data's time split, its refit, the
heads trained on Ray and tested per task beside their baselines, then served through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recfm.heads.context import Request
from recfm.heads.examples import TASKS
from recfm.platform.config import load_config
from recfm.platform.train.job import train

TINY = ["model.dim=32", "model.layers=1", "model.max_len=20", "train.epochs=2", "train.val_every=1",
        "train.max_minutes=0", "train.refit_epochs=1", "train.val_users=2000", "eval.ease_max_items=5000",
        "eval.knn_neighbors=[50]", "eval.knn_shrinks=[10.0]", "eval.val_targets=2000", "heads.epochs=2",
        "heads.max_train_per_task=300", "heads.max_test_per_task=300"]  # EASE skipped: its 9,724² inverse is slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("heads") / "run"
    train(load_config(None, [*TINY, f"run_dir={run_dir}"]), log=lambda _: None)
    return run_dir


def _recfm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recfm", *args], capture_output=True, text=True, timeout=300)


def test_heads_are_tested_per_task_beside_their_baselines(run):
    assert (run / "final_checkpoint" / ".metadata").exists() and (run / "refit_metrics.jsonl").exists()
    table = (run / "heads" / "results.md").read_text()
    for task, baseline in zip(TASKS, ("BM25", "ItemKNN", "MostPop"), strict=True):
        assert f"| {task} | recfm heads (unified, FM frozen) |" in table and f"| {task} | {baseline} |" in table


def test_recommendations_from_the_trained_heads(run):
    from recfm.platform.recommend import Recommender

    rec = Recommender(run)
    page = rec.homepage("1", hour=20)
    placed = [it["item_id"] for row in page.rows for it in row["items"]]
    assert page.rows and len(placed) == len(set(placed))
    seqs = rec.run.sequences
    watched = {int(rec.run.catalog.item_ids[i]) for i in seqs.events["item"][seqs.offsets[0]:seqs.offsets[1]]}
    assert not set(placed) & watched  # user "1" is dense user 0: nothing already watched is on the page
    similar = rec.recommend(Request("similars", item="1", hour=3), k=5)
    assert len(similar.items) == 5 and 1 not in [it["item_id"] for it in similar.items]
    assert any("query imputed" in n for n in similar.notes)
    stranger = rec.homepage("no-such-user", hour=3)
    assert stranger.rows and any("anonymous" in n for n in stranger.notes)


def test_recommend_cli_json_and_clear_errors(run):
    done = _recfm("recommend", "search", "--query", "pixar animation", "--user", "1", "--run", str(run), "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["task"] == "search" and len(payload["items"]) == 10
    for args, message in ((["similars", "--item", "99999999"], "unknown item 99999999"),
                          (["search", "--query", "  "], "search needs a non-empty query"),
                          (["homepage", "--user", "1", "--hour", "25"], "hour must be 0..23")):
        bad = _recfm("recommend", *args, "--run", str(run))
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
