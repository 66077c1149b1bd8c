"""`recfm tune` for real, at seconds scale: config errors, then one search from the command line, SIGKILLed
(with its Ray) while its first trial trains and resumed with `recfm tune --resume`, whose outputs the other tests
check: trials (ASHA stopping the weak one), report, best.yaml, TensorBoard HParams, the one test, and the data
the trials read (train + validation only)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from paths import CONFIGS

from recfm.platform.cli import main
from recfm.platform.config import check_tune_space, load_config, tuned_values

RECFM = Path(sys.executable).parent / "recfm"
EPOCHS = 6
TRIALS = 2
# seed 1 samples (dropout, lr) (0.0, 6.3e-3) then (0.3, 3.8e-6): the first trial learns, the second hardly does, so
# ASHA (rungs at 2 and 4 epochs) stops it
SPACE = "tune.space={model.dropout: [0.0, 0.3], train.lr: {low: 1.0e-6, high: 1.0e-2, log: true}}"
KEYS = {"model.dropout", "train.lr"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from recfm.data.synth import synthesize

    root = tmp_path_factory.mktemp("tune")
    synthesize(root / "syn", users=400, items=120, events=8000, seed=4, clusters=6)
    return root


def _overrides(root: Path, run: Path, *extra: str) -> list[str]:
    return [f"data.source={root / 'syn'}", f"data.cache_dir={root / 'cache'}", f"run_dir={run}",
            f"train.epochs={EPOCHS}", "train.workers=1", "eval.baselines=[MostPop]", f"tune.trials={TRIALS}",
            "tune.grace_epochs=2", "tune.seed=1", "tune.start_with_base=false", SPACE, *extra]


def test_config_errors_are_one_line_and_help_needs_no_torch(capsys):
    smoke = str(CONFIGS / "smoke.yaml")
    for override, message in (("tune.space={model.bogus: [1, 2]}", "tune.space.model.bogus: Key 'bogus' not in"),
                              ("tune.space={bogus.dropout: [1, 2]}", "tune.space.bogus.dropout: only settings of"),
                              ("tune.space={train.lr: {low: 0.1, high: 0.01}}", "a range needs numbers low < high"),
                              ("tune.space={model.dropout: [0.2, 1.5]}", "tune.space.model.dropout: model: "),
                              ("tune.space={train.workers: [1, 2]}", "every trial takes the same resources")):
        assert main(["tune", smoke, override]) == 2
        err = capsys.readouterr().err
        assert err.startswith("recfm: error: ") and message in err and err.count("\n") == 1, err
    assert main(["tune", smoke]) == 2  # no space: nothing to tune
    assert "tune.space is empty" in capsys.readouterr().err

    code = ("import sys\nfrom recfm.platform.cli import main\ntry:\n    main(['tune', '--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "print('heavy:', 'torch' in sys.modules or 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--resume" in out.stdout and "heavy: False" in out.stdout

    # the shipped Beauty search is valid (every key exists, every choice and both ends of each range load)
    beauty = load_config(CONFIGS / "tune-beauty.yaml", [f"data.source={CONFIGS / 'smoke.yaml'}"])
    check_tune_space(beauty)
    assert {"model.dropout", "train.lr", "model.dim"} <= set(beauty.tune.space)
    assert beauty.tune.scheduler == "asha" and beauty.tune.max_minutes == 110
    # its first trial is the hand-set recipe (beauty.yaml's own values), so the search is measured against it
    first = tuned_values(beauty)
    assert set(first) == set(beauty.tune.space)
    hand_set = load_config(CONFIGS / "beauty.yaml", source_needed=False)  # Beauty itself may be absent
    assert first["model.dropout"] == hand_set.model.dropout == 0.5 and first["model.dim"] == hand_set.model.dim == 128
    assert first["train.lr"] == hand_set.train.lr and first["sharding.sparse_lr"] == hand_set.sharding.sparse_lr


def _registered_epoch(run_dir: Path) -> int:
    """The epoch of the latest checkpoint Ray Train registered for a trial's run (0 = none yet)."""
    try:
        snapshot = json.loads((run_dir / "ray" / "train" / "checkpoint_manager_snapshot.json").read_text())
        latest = snapshot["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError):
        return 0
    return int(latest["metrics"]["epoch"]) if latest else 0


def _kill_tree(pid: int) -> None:
    """SIGKILLs the process and everything it started (its local Ray included), by pid."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


@pytest.fixture(scope="module")
def searched(synthetic: Path):
    """`recfm tune` SIGKILLed, with its Ray, once its first trial has a registered checkpoint; then `recfm tune
    --resume DIR` to the end. Returns the tune directory, (trial id, checkpoint epoch) at the kill, and the
    resumed process."""
    run = synthetic / "search"
    log = synthetic / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(RECFM), "tune", str(CONFIGS / "smoke.yaml"), *_overrides(synthetic, run)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    killed_at = None
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None and not killed_at:
            trials = sorted((run / "trials").glob("*")) if (run / "trials").exists() else []
            state = list((run / "tune").glob("experiment_state*.json")) if (run / "tune").exists() else []
            if trials and state and _registered_epoch(trials[0]):
                killed_at = (trials[0].name, _registered_epoch(trials[0]))
            time.sleep(0.05)
    finally:
        _kill_tree(proc.pid)
    assert killed_at, f"no trial checkpoint to interrupt after; log:\n{log.read_text()[-3000:]}"
    assert killed_at[1] < EPOCHS, "the first trial had finished: nothing left to resume"
    assert not (run / "trials.json").exists()
    resumed = subprocess.run([str(RECFM), "tune", "--resume", str(run)], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return run, killed_at, resumed


def test_a_killed_search_resumes_from_the_command_line(searched):
    run, (trial_id, epoch), resumed = searched
    assert "resuming the search" in resumed.stdout
    trials = {t["trial_id"]: t for t in json.loads((run / "trials.json").read_text())}
    assert len(trials) == TRIALS and trial_id in trials
    interrupted = trials[trial_id]
    assert interrupted["status"] == "completed" and interrupted["epochs"] == EPOCHS
    # every epoch once, and the restart continued from the registered checkpoint instead of from scratch
    assert [c["epoch"] for c in interrupted["curve"]] == list(range(1, EPOCHS + 1))
    lines = [json.loads(line) for line in (Path(interrupted["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    restarts = [line["resumed_from"] for line in lines if "resumed_from" in line]
    assert len(restarts) == 1 and epoch <= restarts[0] < EPOCHS


def test_a_search_writes_its_report_best_config_and_one_test(searched):
    searched = searched[0]
    trials = json.loads((searched / "trials.json").read_text())
    assert len(trials) == TRIALS
    for t in trials:
        assert set(t["settings"]) == KEYS
        assert t["settings"]["model.dropout"] in (0.0, 0.3) and 1e-6 <= t["settings"]["train.lr"] <= 1e-2
        assert t["status"] in ("completed", "stopped early"), t
        assert [c["epoch"] for c in t["curve"]] == list(range(1, t["epochs"] + 1))  # val_every=1: each validated
        assert t["best_val_ndcg10"] == max(c["val_ndcg10"] for c in t["curve"]) > 0
        assert {"config.yaml", "model.json", "metrics.jsonl", "trial.json"} <= {p.name for p in
                                                                                Path(t["run_dir"]).iterdir()}
    assert len({json.dumps(t["settings"], sort_keys=True) for t in trials}) == TRIALS  # sampled, not repeated
    assert {t["settings"]["model.dropout"] for t in trials} == {0.0, 0.3}
    # ASHA let the trial that learns finish, and stopped one that hardly learns: its Train run was aborted
    # (the search went on, so its workers released their CPUs)
    assert any(t["status"] == "completed" and t["epochs"] == EPOCHS for t in trials)
    assert any(t["status"] == "stopped early" and t["epochs"] < EPOCHS for t in trials)

    # the best trial by validation NDCG@10, as a config `recfm train` takes
    best = max(trials, key=lambda t: t["checkpoint_val_ndcg10"])
    assert best["checkpoint_val_ndcg10"] == pytest.approx(max(t["best_val_ndcg10"] for t in trials))
    text = (searched / "best.yaml").read_text()
    assert "run_dir" not in text
    cfg = load_config(searched / "best.yaml")
    assert cfg.model.dropout == best["settings"]["model.dropout"]
    assert cfg.train.lr == pytest.approx(best["settings"]["train.lr"])
    assert cfg.train.workers == 1 and cfg.run_dir is None

    # tested once, that checkpoint, beside the baselines
    models = {m["name"]: m for m in json.loads((searched / "results.json").read_text())["models"]}
    assert set(models) == {"MostPop", "recfm-FM"}
    assert models["recfm-FM"]["params"]["epoch"] == best["checkpoint_epoch"]
    assert models["recfm-FM"]["metrics"]["NDCG@10"] > 0

    report = (searched / "report.md").read_text()
    ranked = sorted(trials, key=lambda t: t["best_val_ndcg10"], reverse=True)
    positions = [report.index(f"| {rank} | {t['trial_id']} |") for rank, t in enumerate(ranked, 1)]
    assert positions == sorted(positions) and "| model.dropout | train.lr |" in report and "recfm-FM" in report
    assert (searched / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for t in trials:  # one HParams run per trial
        events = list((searched / "tb" / t["trial_id"]).glob("events.out.tfevents.*"))
        assert events and any(b"hparams" in e.read_bytes() for e in events)


def test_trials_see_only_train_and_validation(searched, synthetic: Path):
    from recfm.data.dataset import Sequences
    from recfm.data.pipeline import ensure_prepared
    from recfm.platform.tune import check_fit_only

    searched = searched[0]
    cfg = load_config(searched / "config.yaml")
    real = Sequences.load(ensure_prepared(cfg.data, log=lambda _: None))
    copy = Sequences.load(searched / "fit_data")
    assert real.info.test_targets > 0 and copy.info.test_targets == 0
    # every user's sequence ends where its test target would be: no test target, nothing after one
    np.testing.assert_array_equal(copy.lengths, real.n_fit)
    assert (real.lengths > real.n_fit).sum() == real.info.test_targets
    known = real.known_mask("test")
    for column in ("item", "ts"):
        np.testing.assert_array_equal(copy.events[column], real.events[column][known])
    assert len(copy.eval_requests("test")[0]) == 0
    # training and validation are those of the real data
    np.testing.assert_array_equal(copy.n_train, real.n_train)
    for a, b in zip(copy.eval_requests("val"), real.eval_requests("val"), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(copy.request_targets(*copy.eval_requests("val")),
                                  real.request_targets(*real.eval_requests("val")))
    # the baselines' cache (with test ranks) sits beside the real data, not in the copy
    assert list(real.directory.glob("baselines-*.json")) and not list(copy.directory.glob("baselines-*"))

    # every trial trained on the copy, and a trial refuses data with test targets
    for trial in (searched / "trials").iterdir():
        assert json.loads((trial / "trial.json").read_text())["prepared"] == str(searched / "fit_data")
    check_fit_only(copy.directory)
    with pytest.raises(RuntimeError, match="test targets"):
        check_fit_only(real.directory)
    assert os.path.samefile(load_config(searched / "best.yaml").data.source, synthetic / "syn")
