"""`recfm tune`: hyperparameter search for the foundation model on Ray Tune.

Each trial is an ordinary recfm training run of the config with the trial's sampled settings (`tune.space`): the
same TorchTrainer (`job.run_ray_training`) in its own run directory, run from a Tune function trainable as Ray's
Train + Tune guide does, its workers' epoch reports passed on to Tune (`_Trial`). Trials are compared on validation
NDCG@10 only; ASHA stops weak ones early (by epoch), aborting their Train run. They never see the test split: they
read a copy of the prepared data with every user's sequence cut at its test cutoff (`n_fit` events), so no file a
trial opens holds a test target. After the search, the best trial's best checkpoint is tested once, on the real
data, beside the baselines.

    runs/<name>-tune-<time>/
        config.yaml     the search's config                  fit_data/   the prepared data without test events
        tune/           Ray Tune's experiment (what `recfm tune --resume` restores)
        trials/<id>/    each trial's run directory: config.yaml, model.json, ray/, metrics.jsonl, tb/, trial.json
        trials.json     every trial: settings, status, validation curve, best validation NDCG@10
        report.md       the trials by best validation NDCG@10, then the test table
        best.yaml       the best trial's full config, ready for `recfm train best.yaml`
        tune.png        best validation NDCG@10 against each tuned setting, and the validation curves
        tb/             TensorBoard HParams: one run per trial
        results.md / results.json   the best trial's best checkpoint tested beside the baselines

The CLI imports this module only to run the command: Ray Tune is imported at its top.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import ray.train
import ray.tune
from ray.tune import Callback
from ray.tune.result import RESULT_DUPLICATE
from ray.tune.trainable.function_trainable import FunctionTrainable

from recfm.data.ragged import positions
from recfm.platform.config import (
    RecfmConfig,
    check_tune_space,
    config_from_dict,
    load_config,
    to_yaml,
    tuned_values,
    with_overrides,
)
from recfm.platform.rundir import create_run_dir
from recfm.run.files import CONFIG_FILE
from recfm.run.run import RUNS_DIR

EXPERIMENT_DIR = "tune"  # Ray Tune's experiment, inside the tune directory
TRIALS_DIR = "trials"
FIT_DATA_DIR = "fit_data"
TRIAL_FILE = "trial.json"  # in a trial's run directory: its settings and the data it read
TRIALS_FILE = "trials.json"
REPORT_FILE = "report.md"
BEST_FILE = "best.yaml"
PLOT_FILE = "tune.png"
TB_DIR = "tb"
METRIC = "best_val_ndcg10"  # what Tune and ASHA compare: the best validation NDCG@10 so far (reported every epoch)
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
# what the fit-only copy takes from the prepared data besides the sequences (rewritten) and the context events
# (filtered): catalog, ids and content vectors, none of which holds a test event. Baseline caches (with test
# ranks) stay behind.
_COPIED = ("users.parquet", "items.parquet", "vocab.json", "cold_items.npy", "content.npy", "content_texts.parquet")


def tune(cfg: RecfmConfig, address: str | None = None, resume: Path | None = None, log=print) -> Path:
    """Runs the search (or continues the one in `resume`), then tests the best trial; returns the tune directory."""
    check_tune_space(cfg)
    from recfm.data.pipeline import ensure_prepared
    from recfm.platform.runtime import configure_process, shutdown_ray_if_started, start_ray

    configure_process(cfg.threads)
    prepared = ensure_prepared(cfg.data, log)
    tune_dir = _tune_dir(cfg, resume)
    if cfg.model.content or cfg.tune.space.get("model.content"):  # encoded once, here, not by each trial
        from recfm.data.content import ensure_content

        ensure_content(prepared, Path(cfg.content.cache_dir), cfg.content.batch_size, log)
    fit_data = fit_only_copy(prepared, tune_dir / FIT_DATA_DIR)
    log(f"tuning in {tune_dir}: {cfg.tune.trials} trials of {', '.join(cfg.tune.space)}; trials read {fit_data} "
        f"(each user's events before its test cutoff)")
    started = time.perf_counter()
    with shutdown_ray_if_started():
        start_ray(cfg.train, address, cfg.tune.concurrent)
        trials = _search(cfg, tune_dir, fit_data, resume is not None, log)
    interrupted = [t.trial_id for t in trials if t.status in UNFINISHED]
    if interrupted:
        log(f"interrupted with {len(interrupted)} trials unfinished: continue with `recfm tune --resume {tune_dir}`")
        raise KeyboardInterrupt
    log(f"search took {(time.perf_counter() - started) / 60:.1f} min")
    records = _records(trials, tune_dir)
    (tune_dir / TRIALS_FILE).write_text(json.dumps(records, indent=1) + "\n")
    best = _best(records)
    best_cfg = load_config(Path(best["run_dir"]) / CONFIG_FILE)
    _write_best_yaml(best_cfg, best, tune_dir, len(records))
    _write_hparams(records, tune_dir)
    _plot(records, cfg.tune.space, best["trial_id"], tune_dir / PLOT_FILE)
    results_md = _test(cfg, best_cfg, best, prepared, tune_dir, len(records), log)  # the one test
    (tune_dir / REPORT_FILE).write_text(_report(cfg, records, best, results_md))
    log(f"best: trial {best['trial_id']} (validation NDCG@10 {best['checkpoint_val_ndcg10']:.4f}, "
        f"{_settings_text(best['settings'])}); {tune_dir / REPORT_FILE}, {tune_dir / BEST_FILE}")
    return tune_dir


def latest_tune_dir(root: Path = RUNS_DIR) -> Path | None:
    """The most recently started tune directory under `root` (what a bare `recfm tune --resume` continues)."""
    dirs = [p for p in Path(root).glob("*") if (p / EXPERIMENT_DIR).is_dir() and (p / CONFIG_FILE).exists()]
    return max(dirs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime, default=None)


def _tune_dir(cfg: RecfmConfig, resume: Path | None) -> Path:
    if resume is not None:
        return Path(resume).resolve()
    path = Path(cfg.run_dir) if cfg.run_dir else RUNS_DIR / f"{cfg.name}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    if (path / EXPERIMENT_DIR).exists():
        raise FileExistsError(f"{path} already holds a search: continue it with `recfm tune --resume {path}`, or "
                              f"pick another run_dir")
    return create_run_dir(replace(cfg, run_dir=str(path))).resolve()


# -- the data trials see ---------------------------------------------------------------------------------------


def fit_only_copy(prepared: Path, out: Path) -> Path:
    """A copy of the prepared data at `prepared` with every user's sequence cut at its test cutoff (`n_fit`
    events): the training prefix and the validation target stay, test targets (and every event after them) go.
    Context events at or after a user's test cutoff go too. Reused while complete; returns `out`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recfm.data.prepare import PREPARED_FILE, SEQUENCES_DIR, PreparedInfo

    prepared, out = Path(prepared).resolve(), Path(out).resolve()
    try:
        if PreparedInfo.load(out).params.get("fit_only_of") == str(prepared):
            return out
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        pass
    info = PreparedInfo.load(prepared)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / SEQUENCES_DIR).mkdir(parents=True)
    cutoff = np.full(info.users, np.inf)  # per user: the time of its test target (leave-one-out)
    events = 0
    for shard in sorted((prepared / SEQUENCES_DIR).glob("part-*.parquet")):
        table = pq.read_table(shard)
        n_fit = table["n_fit"].to_numpy().astype(np.int64)
        columns = []
        for name in table.column_names:
            column = table[name].combine_chunks()
            if pa.types.is_list(column.type):
                offsets = column.offsets.to_numpy().astype(np.int64)  # they index the (unsliced) child values
                if name == "ts":
                    has_test = n_fit < np.diff(offsets)
                    users = table["user"].to_numpy()[has_test]
                    cutoff[users] = column.values.to_numpy()[offsets[:-1][has_test] + n_fit[has_test]]
                take = np.repeat(offsets[:-1], n_fit) + positions(n_fit)
                column = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(n_fit)]).astype(np.int32)),
                                                  column.values.take(pa.array(take)))
            columns.append(column)
        events += int(n_fit.sum())
        pq.write_table(pa.Table.from_arrays(columns, schema=table.schema), tmp / SEQUENCES_DIR / shard.name,
                       row_group_size=20_000, compression="zstd")
    if (prepared / "context_events.parquet").exists():
        context = pq.read_table(prepared / "context_events.parquet")
        ts, user = context["ts"].to_numpy(), context["user"].to_numpy().astype(np.int64)
        # time split: the cutoff is one time; leave-one-out: each user's test target (a user with no interaction
        # has none)
        keep = (ts < info.test_cutoff if info.split == "time" else
                (user < 0) | (ts < cutoff[np.maximum(user, 0)]))
        pq.write_table(context.filter(pa.array(keep)), tmp / "context_events.parquet")
    for name in _COPIED:
        if (prepared / name).exists():
            shutil.copy2(prepared / name, tmp / name)
    copy = replace(info, events=events, test_users=0, test_targets=0, users_without_targets=info.users,
                   params={"fit_only_of": str(prepared)})
    (tmp / PREPARED_FILE).write_text(json.dumps(asdict(copy), indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def check_fit_only(prepared: Path) -> None:
    """Raises unless `prepared` is a fit-only copy (`fit_only_copy`): what a trial refuses to train on."""
    from recfm.data.prepare import PreparedInfo

    info = PreparedInfo.load(Path(prepared))
    if not info.params.get("fit_only_of") or info.test_targets:
        raise RuntimeError(f"{prepared} holds test targets: tuning trials train and validate on a fit-only copy")


# -- the search ----------------------------------------------------------------------------------------------------


def _search(cfg: RecfmConfig, tune_dir: Path, fit_data: Path, resume: bool, log) -> list:
    """Runs (or restores and finishes) the Tune experiment; returns its trials."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t = cfg.tune
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(_Trial, base=asdict(cfg), fit_data=str(fit_data), tune_dir=str(tune_dir)),
        {"cpu": 1})
    experiment = tune_dir / EXPERIMENT_DIR
    if resume and ray.tune.Tuner.can_restore(str(experiment)):
        log(f"resuming the search in {experiment}: finished trials are kept, unfinished ones continue from their "
            f"latest checkpoint")
        tuner = ray.tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    else:
        if resume:
            log(f"no search to restore in {experiment}: starting it")
        epochs = max([cfg.train.epochs, *_numbers(t.space.get("train.epochs"))])
        # a trial that reaches max_t ends by itself (stop_last_trials=False): only weak trials are stopped
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min(t.grace_epochs, epochs),
                                   reduction_factor=t.reduction_factor, stop_last_trials=False)
                     if t.scheduler == "asha" else FIFOScheduler())
        first = [tuned_values(cfg)] if t.start_with_base else []  # the hand-set recipe, under the same budget
        tuner = ray.tune.Tuner(
            trainable,
            param_space={key: _domain(spec) for key, spec in t.space.items()},
            tune_config=ray.tune.TuneConfig(
                metric=METRIC, mode="max",
                search_alg=BasicVariantGenerator(points_to_evaluate=first, max_concurrent=t.concurrent,
                                                 random_state=t.seed),
                scheduler=scheduler, num_samples=t.trials,
                time_budget_s=60 * t.max_minutes if t.max_minutes else None,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=ray.tune.RunConfig(name=EXPERIMENT_DIR, storage_path=str(tune_dir), verbose=0,
                                          callbacks=[_Progress(log)]))
    tuner.fit()
    return sorted(ray.tune.ExperimentAnalysis(str(experiment)).trials, key=lambda trial: trial.trial_id)


def _domain(spec):
    if isinstance(spec, list | tuple):
        return ray.tune.choice(list(spec))
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if isinstance(low, int) and isinstance(high, int):
        return ray.tune.lograndint(low, high + 1) if log else ray.tune.randint(low, high + 1)
    return ray.tune.loguniform(low, high) if log else ray.tune.uniform(low, high)


def _numbers(spec) -> list:
    if spec is None:
        return []
    return [int(v) for v in (spec if isinstance(spec, list | tuple) else [spec["low"], spec["high"]])]


def _plain(settings: dict) -> dict:
    """Sampled values as plain Python (Tune may hand out numpy scalars), for the config and for JSON."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in settings.items()}


def _trial_name(trial) -> str:
    return trial.trial_id


class _Trial(FunctionTrainable):
    """One trial, in its Tune actor: a recfm training run of the base config with the trial's settings, on the
    fit-only data, in `<tune_dir>/trials/<trial id>/` (after an interruption, its Ray Train run continues from its
    latest checkpoint: same storage path and name).

    The TorchTrainer runs in a thread; a Ray Train callback in its controller (`_Forward`) passes the controller's
    handle, then each epoch's report, back through a queue of one (training waits for Tune to take each report,
    as with Ray's `TuneReportCallback`), and this thread reports them to Tune. When Tune stops the trial (ASHA, the
    time budget, an interruption), `cleanup` aborts the Train run through that handle before the actor goes: its
    workers and their placement group are released then, not left holding the CPUs the next trial waits for (a
    trial actor that just exits leaves them behind)."""

    def setup(self, config, base=None, fit_data=None, tune_dir=None):
        self._context = base, fit_data, tune_dir
        self._controller, self._channel, self._aborting = None, None, False
        super().setup(config)

    def _trainable_func(self, config):
        from ray.util.queue import Queue

        from recfm.platform.train import job

        cfg, run_dir, prepared, spec = _start_trial(_plain(config), *self._context, self.trial_id)
        channel = self._channel = Queue(maxsize=1, actor_options={"num_cpus": 0})
        outcome = {}

        def fit():
            try:
                job.run_ray_training(cfg, run_dir, prepared, spec, None, callbacks=[_Forward(channel)],
                                     log=lambda line: print(f"[{self.trial_id}] {line}", flush=True))
            except BaseException as err:  # raised below, unless Tune stopped the trial
                outcome["error"] = err
            finally:
                with contextlib.suppress(Exception):  # after an abort, no one may take it
                    channel.put(("done", None), timeout=300)

        thread = threading.Thread(target=fit, name="recfm-trial", daemon=True)
        thread.start()
        while (item := channel.get())[0] != "done":
            if item[0] == "controller":
                self._controller = item[1]
            else:
                ray.tune.report(item[1])
        thread.join()
        if self._aborting:
            return
        if "error" in outcome:
            raise outcome["error"]
        ray.tune.report({RESULT_DUPLICATE: True})  # the function ended: as Tune's own function wrapper says it

    def cleanup(self):
        self._aborting = True
        if self._controller is not None:  # a no-op when the run has finished
            aborted = self._controller.abort.remote()  # the controller exits as it aborts
            deadline = time.monotonic() + 120
            while not ray.wait([aborted], timeout=0.5)[0] and time.monotonic() < deadline:
                with contextlib.suppress(Exception):  # a report Tune will not take may hold the controller
                    while True:
                        self._channel.get_nowait()
        super().cleanup()


class _Forward(ray.train.UserCallback):
    """In the Ray Train controller: the controller's handle once, then rank 0's metrics of every report."""

    def __init__(self, channel):
        self.channel, self.sent = channel, False

    def after_report(self, run_context, metrics, checkpoint):
        if not self.sent:
            self.channel.put(("controller", ray.get_runtime_context().current_actor))
            self.sent = True
        self.channel.put(("report", dict(metrics[0])))


def _start_trial(params: dict, base: dict, fit_data: str, tune_dir: str, trial_id: str):
    """The trial's config, run directory (config.yaml, trial.json, model.json), data and model spec."""
    from recfm.data.dataset import Sequences
    from recfm.platform.runtime import configure_process
    from recfm.platform.train import job
    from recfm.run.files import MODEL_FILE, RAY_DIR

    configure_process(1)
    run_dir = Path(tune_dir) / TRIALS_DIR / trial_id
    cfg = with_overrides(config_from_dict(base), params | {"run_dir": str(run_dir)})
    prepared = Path(fit_data)
    check_fit_only(prepared)
    if (run_dir / RAY_DIR).exists():  # a trial started again after an interruption
        (run_dir / CONFIG_FILE).write_text(to_yaml(cfg))
    else:
        create_run_dir(cfg)
    (run_dir / TRIAL_FILE).write_text(json.dumps({"trial_id": trial_id, "settings": params,
                                                  "prepared": str(prepared)}, indent=1) + "\n")
    if (run_dir / MODEL_FILE).exists():  # a resumed trial keeps its tokenizer
        spec = json.loads((run_dir / MODEL_FILE).read_text())
    else:
        spec = job.write_model_spec(cfg, Sequences.load(prepared), run_dir, log=lambda _: None)
    return cfg, run_dir, prepared, spec


class _Progress(Callback):
    """One line per trial start, validation and end, in the process running the search."""

    def __init__(self, log=print):
        self.log = log

    def __reduce__(self):  # Tune saves its callbacks with the experiment; a restored one prints
        return _Progress, ()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.log(f"trial {trial.trial_id} started: {_settings_text(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "val_ndcg10" in result:
            self.log(f"trial {trial.trial_id} epoch {result['epoch']}: validation NDCG@10 {result['val_ndcg10']:.4f} "
                     f"(best {result[METRIC]:.4f})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.log(f"trial {trial.trial_id} ended at epoch {trial.last_result.get('epoch', 0)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"trial {trial.trial_id} failed (see {trial.path})")


# -- after the search ----------------------------------------------------------------------------------------------


def _records(trials: list, tune_dir: Path) -> list[dict]:
    """What each trial did, from its run directory (metrics.jsonl, checkpoints) and Tune's status."""
    from recfm.run.files import METRICS_FILE

    records = []
    for trial in trials:
        run_dir = tune_dir / TRIALS_DIR / trial.trial_id
        path = run_dir / METRICS_FILE
        epochs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        curve = [{"epoch": e["epoch"], "train_loss": e.get("train/loss"), "val_ndcg10": e.get("val_ndcg10"),
                  "val_hr10": e.get("val_hr10")} for e in epochs]
        validated = [c for c in curve if c["val_ndcg10"] is not None]
        checkpoint, state = _best_checkpoint(run_dir)
        if trial.status == "ERROR":
            status = "error"
        elif not epochs:
            status = "not run"
        else:
            status = "completed" if epochs[-1].get("stopped") else "stopped early"
        error = trial.get_error() if trial.status == "ERROR" else None
        records.append({
            "trial_id": trial.trial_id, "settings": _plain(trial.config), "status": status,
            "stopped": epochs[-1].get("stopped") if epochs else None, "epochs": len(epochs),
            "best_val_ndcg10": max(c["val_ndcg10"] for c in validated) if validated else None,
            "best_epoch": max(validated, key=lambda c: c["val_ndcg10"])["epoch"] if validated else None,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_val_ndcg10": state.best_metric if state else None,
            "checkpoint_epoch": state.epoch if state else None,
            "run_dir": str(run_dir), "curve": curve,
            "error": str(error).strip().splitlines()[-1] if error else None,
        })
    return records


def _best_checkpoint(run_dir: Path):
    """The trial's checkpoint with the best validation NDCG@10 (of those saved at a best-so-far epoch), and its
    training state; (None, None) when it has none."""
    from recfm.platform.train.state import read_state
    from recfm.run.files import RAY_DIR, RAY_RUN_NAME, STATE_FILE

    best, best_state = None, None
    for directory in sorted((run_dir / RAY_DIR / RAY_RUN_NAME).glob("epoch_*")):
        if not ((directory / ".metadata").exists() and (directory / STATE_FILE).exists()):
            continue  # a checkpoint the trial was stopped while writing
        state = read_state(directory)
        if state.epoch == state.best_epoch and (best_state is None or state.best_metric > best_state.best_metric):
            best, best_state = directory, state
    return best, best_state


def _best(records: list[dict]) -> dict:
    scored = [r for r in records if r["checkpoint"] is not None]
    if not scored:
        raise RuntimeError("no trial saved a validated checkpoint: see the trials' logs under the tune directory")
    return max(scored, key=lambda r: r["checkpoint_val_ndcg10"])


def _write_best_yaml(best_cfg: RecfmConfig, best: dict, tune_dir: Path, n: int) -> None:
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.structured(best_cfg), resolve=True)
    raw.pop("run_dir")
    header = (f"# The best of {n} trials of `recfm tune` in {tune_dir}: trial {best['trial_id']}, validation "
              f"NDCG@10 {best['checkpoint_val_ndcg10']:.4f} at epoch {best['checkpoint_epoch']}\n"
              f"# ({_settings_text(best['settings'])}). Train it in full: recfm train best.yaml\n")
    (tune_dir / BEST_FILE).write_text(header + OmegaConf.to_yaml(OmegaConf.create(raw)))


def _test(cfg: RecfmConfig, best_cfg: RecfmConfig, best: dict, prepared: Path, tune_dir: Path, n: int,
          log) -> str:
    """The test, once: the best trial's best checkpoint beside the baselines, on the real prepared data."""
    from recfm.data.dataset import Sequences
    from recfm.platform.evaluation.report import write_results
    from recfm.platform.train import job
    from recfm.run.files import MODEL_FILE

    seqs = Sequences.load(prepared)
    results, notes = job.baselines(seqs, cfg, log)
    spec = json.loads((Path(best["run_dir"]) / MODEL_FILE).read_text())
    results.append(job.test_checkpoint(Path(best["checkpoint"]), spec, best_cfg, seqs, baselines=results))
    notes = [*notes, f"recfm-FM is the best of {n} trials of `recfm tune` by validation NDCG@10 (trial "
                     f"{best['trial_id']}: {_settings_text(best['settings'])}), tested once, as trained, without the "
                     f"refit on train + validation that `recfm train best.yaml` adds"]
    text = write_results(tune_dir, results, seqs.info, cfg.eval.ks, notes, job.cold_targets(seqs))
    log(text)
    return text


def _write_hparams(records: list[dict], tune_dir: Path) -> None:
    """One TensorBoard HParams run per trial with a validation figure, under <tune_dir>/tb/<trial id>."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(tune_dir / TB_DIR, ignore_errors=True)  # a resumed search writes every trial again
    with SummaryWriter(str(tune_dir / TB_DIR)) as writer:
        for r in records:
            if r["best_val_ndcg10"] is None:
                continue
            params = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in r["settings"].items()}
            writer.add_hparams(params, {"hparam/best_val_ndcg10": r["best_val_ndcg10"],
                                        "hparam/epochs": float(r["epochs"])}, run_name=r["trial_id"])


def _plot(records: list[dict], space: dict, best_id: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["best_val_ndcg10"] is not None]
    keys = list(space)
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        values = [r["settings"].get(key) for r in done]
        ys = [r["best_val_ndcg10"] for r in done]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            xs = values
            if isinstance(space[key], dict) and space[key].get("log"):
                ax.set_xscale("log")
        else:  # choices that are not numbers: one position each
            labels = sorted({str(v) for v in values})
            xs = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels)
        colours = ["C3" if r["trial_id"] == best_id else "C0" for r in done]
        ax.scatter(xs, ys, c=colours)
        ax.set_xlabel(key)
        ax.set_ylabel("best validation NDCG@10")
    ax = axes[0][-1]
    for r in records:
        points = [(c["epoch"], c["val_ndcg10"]) for c in r["curve"] if c["val_ndcg10"] is not None]
        if points:
            best = r["trial_id"] == best_id
            ax.plot(*zip(*points, strict=True), marker=".", lw=2.5 if best else 1, label=r["trial_id"],
                    color="C3" if best else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    if len(records) <= 12:
        ax.legend(fontsize=7)
    fig.suptitle("recfm tune: red = the best trial")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _report(cfg: RecfmConfig, records: list[dict], best: dict, results_md: str) -> str:
    t = cfg.tune
    keys = list(t.space)
    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    ranked = sorted(records, key=lambda r: -1.0 if r["best_val_ndcg10"] is None else r["best_val_ndcg10"],
                    reverse=True)
    scheduler = (f"ASHA by epoch (grace {t.grace_epochs} epochs, reduction factor {t.reduction_factor})"
                 if t.scheduler == "asha" else "FIFO (every trial runs to its own end)")
    lines = [
        f"# recfm tune: {cfg.name}", "",
        f"{len(records)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}) of {t.trials} sampled "
        f"(seed {t.seed}), {t.concurrent} at a time, within {t.max_minutes:g} minutes; scheduler {scheduler}. "
        f"Trials trained and validated on each user's events before its test cutoff (`{FIT_DATA_DIR}/`); they "
        f"were compared on validation NDCG@10 only, and only the best one was tested.", "",
        f"Best: trial `{best['trial_id']}`, validation NDCG@10 {best['checkpoint_val_ndcg10']:.4f} at epoch "
        f"{best['checkpoint_epoch']} ({_settings_text(best['settings'])}); its full config is `{BEST_FILE}` "
        f"(`recfm train {BEST_FILE}`).", "",
        "| rank | trial | " + " | ".join(keys) + " | best val NDCG@10 | best epoch | epochs | status |",
        "|---:|---|" + "---|" * len(keys) + "---:|---:|---:|---|",
    ]
    base = tuned_values(cfg) if t.start_with_base else None
    for rank, r in enumerate(ranked, 1):
        value = "-" if r["best_val_ndcg10"] is None else f"{r['best_val_ndcg10']:.4f}"
        status = r["status"] + (f": {r['stopped']}" if r["stopped"] else "") + (f": {r['error']}" if r["error"] else "")
        name = r["trial_id"] + (" (the config's own values)" if r["settings"] == base else "")
        lines.append(f"| {rank} | {name} | " + " | ".join(_value_text(r["settings"].get(k)) for k in keys)
                     + f" | {value} | {r['best_epoch'] or '-'} | {r['epochs']} | {status} |")
    lines += ["", f"![validation NDCG@10 by setting, and the curves]({PLOT_FILE})", "",
              "## Test: the best trial's best checkpoint beside the baselines (run once)", "", results_md.strip(), ""]
    return "\n".join(lines)


def _value_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in settings.items())
