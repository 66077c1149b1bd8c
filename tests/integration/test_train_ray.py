"""The Ray Train job for real: 2 workers on a local Ray, sharded tables, checkpoints, a worker killed mid-run,
resume, and the 1-process test."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from paths import CONFIGS

from recfm.platform.config import load_config
from recfm.platform.pipeline import run_pipeline

EPOCHS = 4


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from recfm.data.synth import synthesize

    root = tmp_path_factory.mktemp("train")
    synthesize(root / "syn", users=1200, items=300, events=24000, seed=4, clusters=8)
    return root


def _overrides(root: Path, run: Path, *extra: str) -> list[str]:
    return [f"data.source={root / 'syn'}", f"data.cache_dir={root / 'cache'}", f"run_dir={run}",
            f"train.epochs={EPOCHS}", "eval.baselines=[MostPop]", *extra]


@pytest.fixture(scope="module")
def reference(synthetic: Path, local_ray) -> Path:
    """An uninterrupted run: the figures a run that loses a worker must reach too."""
    run = synthetic / "reference"
    run_pipeline(load_config(CONFIGS / "smoke.yaml", _overrides(synthetic, run, "train.refit_epochs=1",
                                                          "train.cooldown_epochs=1", "eval.baselines=[MostPop,EASE]")),
          log=lambda _: None)
    return run


def _epochs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_checkpoints_and_test_in_one_process(reference: Path):
    lines = _epochs(reference)
    assert [e["epoch"] for e in lines] == list(range(1, EPOCHS + 1))
    assert lines[1]["train/loss"] < lines[0]["train/loss"] - 0.1  # it learns
    assert all(0 < e["worker/peak_rss_mb"] < 4096 for e in lines)
    checkpoint = reference / "ray" / "train" / f"epoch_{EPOCHS:04d}"
    # both workers' shards were merged into one checkpoint directory
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "train_state.json"} <= {p.name for p in checkpoint.iterdir()}
    # the checkpoint written by 2 workers was loaded into this single process and tested beside MostPop
    models = {m["name"]: m for m in json.loads((reference / "results.json").read_text())["models"]}
    assert models["recfm-FM"]["metrics"]["NDCG@10"] > 2 * models["MostPop"]["metrics"]["NDCG@10"]
    assert (reference / "tb").is_dir() and any((reference / "tb").iterdir())


def test_leave_one_out_is_refitted_on_train_and_validation_and_both_rows_are_tested(reference: Path):
    models = {m["name"]: m for m in json.loads((reference / "results.json").read_text())["models"]}
    before, refit = models["recfm-FM (before refit)"], models["recfm-FM"]
    assert before["metrics"] != refit["metrics"]  # the refit's checkpoint, not the best one again, is tested
    assert refit["metrics"]["NDCG@10"] > 2 * models["MostPop"]["metrics"]["NDCG@10"]
    refit_epochs = [json.loads(line) for line in (reference / "refit_metrics.jsonl").read_text().splitlines()]
    assert len(refit_epochs) == 1 and "val_ndcg10" not in refit_epochs[0]  # validation is training data now
    # after a cooldown the refit falls to 0 too: its last step trained at a small share of train.lr (0.003 here)
    assert 0 < refit_epochs[0]["train/lr"] < 0.003 / 4
    assert (reference / "final_checkpoint").resolve() != (reference / "best_checkpoint").resolve()


def test_the_cooldown_continues_the_best_checkpoint_with_falling_rates_and_keeps_the_better_one(reference: Path):
    trained = [e for e in _epochs(reference) if "val_ndcg10" in e]
    best = max(trained, key=lambda e: e["val_ndcg10"])
    cooled = [json.loads(line) for line in (reference / "cooldown_metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in cooled] == [best["epoch"] + 1]  # from the best checkpoint, not the last one
    assert "val_ndcg10" in cooled[0] and 0 < cooled[0]["train/lr"] < 0.003 / 4  # validated; the rate fell
    chosen = json.loads((reference / "best_checkpoint" / "train_state.json").read_text())
    assert chosen["best_metric"] == pytest.approx(max(best["val_ndcg10"], cooled[0]["val_ndcg10"]))
    from_cooldown = cooled[0]["val_ndcg10"] > best["val_ndcg10"]
    assert ("cooldown" in str((reference / "best_checkpoint").resolve())) == from_cooldown


def test_the_fm_is_also_tested_blended_with_ease_at_a_weight_chosen_on_validation(reference: Path):
    models = {m["name"]: m for m in json.loads((reference / "results.json").read_text())["models"]}
    blend, fm, ease = models["recfm-FM + EASE"], models["recfm-FM"], models["EASE"]
    assert blend["params"]["weight"] in [0.0, *load_config(CONFIGS / "smoke.yaml").eval.blend_weights]
    assert blend["params"]["EASE.lambda"] == ease["params"]["lambda"]
    # weight 0 is the FM alone, so the chosen weight is at least as good on validation as the FM
    assert blend["val_metric"] >= fm["val_metric"] - 1e-9
    if blend["params"]["weight"] == 0:
        assert blend["metrics"]["NDCG@10"] == pytest.approx(fm["metrics"]["NDCG@10"])


def _training_workers(since: float) -> list[psutil.Process]:
    """This process's Ray Train workers started after `since` (Ray names their processes after the actor class;
    an earlier run's may still be exiting)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.create_time() >= since and "RayTrainWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _registered_checkpoint(storage: Path) -> int:
    """The epoch of the latest checkpoint Ray Train has registered for the run (0 = none yet)."""
    try:
        latest = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError):
        return 0
    return int(latest["metrics"]["epoch"]) if latest else 0


def _kill_a_worker_after_a_checkpoint(storage: Path, killed: list, timeout: float = 600.0) -> None:
    """Once Ray Train has registered a checkpoint, SIGKILLs one training worker; records (pid, that epoch)."""
    started = time.time()
    deadline = started + timeout
    while time.time() < deadline and not killed:
        epoch = _registered_checkpoint(storage)
        workers = _training_workers(started) if epoch else []
        if workers:
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed.append((workers[-1].pid, epoch))
            return
        time.sleep(0.05)


def test_a_killed_worker_is_replaced_and_training_continues_from_the_checkpoint(synthetic: Path, reference: Path,
                                                                               local_ray):
    """Streaming its data from the Parquet shards (`train.stream_data`), as a cluster job on big data would."""
    run = synthetic / "killed"
    killed: list[tuple[int, int]] = []
    killer = threading.Thread(target=_kill_a_worker_after_a_checkpoint, args=(run / "ray" / "train", killed),
                              daemon=True)
    killer.start()
    run_pipeline(load_config(CONFIGS / "smoke.yaml", _overrides(synthetic, run, "train.max_failures=1",
                                                                     "train.stream_data=true")),
          log=lambda _: None)
    killer.join(timeout=5)
    assert killed, "no training worker was found to kill"
    pid, checkpoint_epoch = killed[0]
    assert checkpoint_epoch < EPOCHS, "the worker was killed after the last epoch: nothing left to continue"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    lines, expected = _epochs(run), _epochs(reference)
    steps_per_epoch = expected[0]["step"]
    # every epoch once (the failed attempt's later lines were dropped), and the restart continued the step
    # counter from the checkpoint instead of starting again at 0
    assert [e["epoch"] for e in lines] == list(range(1, EPOCHS + 1))
    assert [e["step"] for e in lines] == [e * steps_per_epoch for e in range(1, EPOCHS + 1)]
    resumed = [e["resumed_from"] for e in lines if "resumed_from" in e]
    assert len(resumed) == 1 and resumed[0] >= checkpoint_epoch
    # the same figures as the uninterrupted run, up to the sampling and data order a restart re-draws
    assert lines[-1]["val_ndcg10"] == pytest.approx(expected[-1]["val_ndcg10"], rel=0.05)
    assert (run / "results.json").exists()


def test_resume_continues_a_finished_run(reference: Path, local_ray):
    """`recfm train --resume RUN` with more epochs continues from the latest checkpoint, not from scratch (here
    under bf16 autocast, `train.bf16`, which a resume may switch on)."""
    before = _epochs(reference)
    run_pipeline(load_config(reference / "config.yaml", [f"train.epochs={EPOCHS + 1}", "train.bf16=true",
                                                  "train.refit_epochs=0"]),
          resume=reference, log=lambda _: None)
    after = _epochs(reference)
    # the bf16 epoch trained: a finite loss no worse than a little above the float32 epoch before it
    assert 0 < after[-1]["train/loss"] < before[-1]["train/loss"] * 1.05
    assert [e["epoch"] for e in after] == list(range(1, EPOCHS + 2))
    # the step count an uninterrupted run of one more epoch reaches
    assert after[-1]["step"] == (EPOCHS + 1) * before[0]["step"]
    assert after[-1]["resumed_from"] == EPOCHS


def test_streamed_windows_are_the_in_memory_windows(synthetic: Path, reference: Path, local_ray):
    """`train.stream_data` reads the shards through Ray Data: the same training rows as the in-memory table,
    for the training and the refit prefixes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from recfm.data.pipeline import ensure_prepared
    from recfm.data.prepare import SEQUENCES_DIR
    from recfm.platform.train.data import streamed_training_windows, training_windows

    cfg = load_config(reference / "config.yaml")
    prepared = ensure_prepared(cfg.data, lambda _: None)
    table = pq.read_table(prepared / SEQUENCES_DIR)

    def rows(t) -> list[tuple]:
        return sorted((u, n, tuple(items)) for u, n, items in zip(t["user"].to_pylist(), t["n_train"].to_pylist(),
                                                                 t["item"].to_pylist(), strict=True))

    for refit in (False, True):
        source = table.set_column(table.schema.get_field_index("n_train"), "n_train", table["n_fit"]) \
            if refit else table
        expected = rows(training_windows(source, cfg.model.max_len))
        streamed = streamed_training_windows(prepared, cfg.model.max_len, refit=refit).to_arrow_refs()
        got = rows(pa.concat_tables(ray.get(streamed)))
        assert len(expected) > 1000 and got == expected

