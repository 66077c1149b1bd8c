"""The Ray Train job for real: 2 workers on a local Ray, sharded tables, checkpoints, resume, 1-process test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recfm.platform.config import load_config
from recfm.platform.train.job import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from recfm.platform.data.synth import synthesize

    root = tmp_path_factory.mktemp("train")
    synthesize(root / "syn", users=1200, items=300, events=24000, seed=4, clusters=8)
    return root


def _epochs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_stop_resume_and_test_in_one_process(synthetic: Path):
    run = synthetic / "run"
    overrides = [f"data.source={synthetic / 'syn'}", f"data.cache_dir={synthetic / 'cache'}", f"run_dir={run}",
                 "train.epochs=2", "eval.baselines=[MostPop]"]
    train(load_config(CONFIGS / "smoke.yaml", overrides), log=lambda _: None)

    first = _epochs(run)
    assert [e["epoch"] for e in first] == [1, 2]
    assert first[1]["train/loss"] < first[0]["train/loss"] - 0.1  # it learns
    steps_per_epoch = first[0]["step"]
    checkpoint = run / "ray" / "train" / "epoch_0002"
    # both workers' shards were merged into one checkpoint directory
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "train_state.json"} <= {p.name for p in checkpoint.iterdir()}

    # resume the same run for one more epoch: it continues from the checkpoint, not from scratch
    train(load_config(run / "config.yaml", ["train.epochs=3"]), resume=run, log=lambda _: None)
    resumed = _epochs(run)
    assert [e["epoch"] for e in resumed] == [1, 2, 3]
    assert resumed[2]["step"] == 3 * steps_per_epoch  # the step count an uninterrupted 3-epoch run reaches

    # the checkpoint written by 2 workers was loaded into this single process and tested beside MostPop
    models = {m["name"]: m for m in json.loads((run / "results.json").read_text())["models"]}
    assert models["recfm-FM"]["metrics"]["NDCG@10"] > 2 * models["MostPop"]["metrics"]["NDCG@10"]
    assert (run / "tb").is_dir() and any((run / "tb").iterdir())
