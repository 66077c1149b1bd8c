"""The pipeline: named stages over one run directory, always in this order. Each stage reads what the earlier ones
wrote from the run directory (nothing is handed over in memory), so any stage can run again, or alone, on an
existing run.

    prepare   import and prepare the data (cached), fit the tokenizer: model.json, item frequencies, item content;
              the prepared data into the run (data/, hard links), so the run serves without the cache or the source
    fm        train the foundation model on Ray Train: best_checkpoint (best validation NDCG@10), metrics, tb/;
              with train.cooldown_epochs, continue it with falling learning rates and keep the better checkpoint
    refit     continue it on every event before the test target or cutoff for train.refit_epochs: final_checkpoint
    evaluate  the FM beside MostPop, ItemKNN and EASE (and the FM + EASE blend) on the test split: results.md/json
    heads     train and test the task heads (time split only)                               heads/
    distill   distil a small student from the FM and test it beside its teacher            distill/
    export    the student as torch.export and ONNX, with a manifest                        export/student/
    push      the FM's user and item vectors into the embedding store, as one version      store.uri

`recfm train CONFIG` runs the config's `stages` (by default prepare, fm, refit, evaluate); `recfm demo` runs them
all; `recfm heads train RUN`, `recfm distill RUN`, `recfm export RUN` and `recfm push-embeddings RUN` run one later
stage on an existing run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from recfm.data.dataset import Sequences
from recfm.data.pipeline import ensure_prepared
from recfm.platform.config import STAGES, RecfmConfig
from recfm.platform.rundir import create_run_dir
from recfm.platform.runtime import configure_process, shutdown_ray_if_started
from recfm.run.files import (
    BEST_LINK,
    DISTILL_DIR,
    EXPORT_DIR,
    FINAL_LINK,
    HEADS_DIR,
    LOG_FILE,
    MODEL_FILE,
    RESULTS_JSON,
    RESULTS_MD,
)
from recfm.run.run import keep_data


def run_pipeline(cfg: RecfmConfig, address: str | None = None, resume: Path | None = None, log=print,
                 verbose: bool = True) -> Path:
    """Runs `cfg.stages` in pipeline order in a new run directory (or continues the one at `resume`); returns it.

    Every stage's lines go to the run's `log.txt`; `log` gets them all when `verbose`, else one line per stage
    and, at the end, a summary (the test table, where everything is, what to try next)."""
    configure_process(cfg.threads)
    run_dir = (Path(resume) if resume else create_run_dir(cfg)).resolve()
    stages = [s for s in STAGES if s in cfg.stages]
    with open(run_dir / LOG_FILE, "a") as log_file:

        def stage_log(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()
            if verbose:
                log(line)

        log(f"run {run_dir}: {', '.join(stages)} (every line in {run_dir / LOG_FILE})")
        with shutdown_ray_if_started():
            for number, name in enumerate(stages, 1):
                started = time.perf_counter()
                stage_log(f"[{name}]")
                _STAGE[name](run_dir, cfg, address, stage_log)
                done = f"[{number}/{len(stages)}] {name} done in {(time.perf_counter() - started) / 60:.1f} min"
                stage_log(done)
                if not verbose:
                    log(done)
    if not verbose:
        log(summary(run_dir, cfg))
    return run_dir


def summary(run_dir: Path, cfg: RecfmConfig) -> str:
    """What a finished pipeline left, for the person who started it: NDCG@10 and HR@10 of every model, where the
    run, its export and its store version are, and the commands to try next."""
    lines = ["", f"run: {run_dir}"]
    if (run_dir / RESULTS_JSON).exists():
        models = json.loads((run_dir / RESULTS_JSON).read_text())["models"]
        lines += ["test (full ranking):"] + [f"  {m['name']:<28} NDCG@10 {m['metrics']['NDCG@10']:.4f}  "
                                             f"HR@10 {m['metrics']['HR@10']:.4f}" for m in models]
    for name, path in (("heads", run_dir / HEADS_DIR / RESULTS_MD), ("student", run_dir / DISTILL_DIR / RESULTS_MD),
                       ("export", run_dir / EXPORT_DIR / "student")):
        if path.exists():
            lines.append(f"{name}: {path}")
    if "push" in cfg.stages:
        lines.append(f"embedding store: {cfg.store.uri} (collection {cfg.store.collection})")
    nexts = [f"recfm recommend homepage --user 1 --run {run_dir}"] if (run_dir / HEADS_DIR).exists() else []
    if "push" in cfg.stages:
        nexts.append(f"recfm embeddings similar --item 1 --store {cfg.store.uri}")
    if "evaluate" in cfg.stages and "distill" not in cfg.stages:
        nexts.append(f"recfm distill {run_dir}")
    return "\n".join(lines + ["next:"] + [f"  {n}" for n in nexts] if nexts else lines)


def prepare(run_dir: Path, cfg: RecfmConfig, address: str | None, log) -> None:
    from recfm.platform.train.job import write_model_spec

    prepared = ensure_prepared(cfg.data, log)
    if (run_dir / MODEL_FILE).exists():  # a resumed run keeps the tokenizer it was trained with
        log(f"prepare: {run_dir / MODEL_FILE} kept")
    else:
        write_model_spec(cfg, Sequences.load(prepared), run_dir, log)
    keep_data(prepared, run_dir)  # with the content vectors the spec step may have encoded


def fm(run_dir: Path, cfg: RecfmConfig, address: str | None, log) -> None:
    from recfm.platform.train.job import run_ray_training

    prepared, spec = ensure_prepared(cfg.data, _quiet), _spec(run_dir)
    best = run_ray_training(cfg, run_dir, prepared, spec, address, log)
    if cfg.train.cooldown_epochs:
        log(f"cooldown: {cfg.train.cooldown_epochs} more epochs from the best checkpoint with the learning rates "
            f"falling to 0")
        run_ray_training(cfg, run_dir, prepared, spec, address, log, cooldown_from=best)


def refit(run_dir: Path, cfg: RecfmConfig, address: str | None, log) -> None:
    from recfm.platform.train.job import link, run_ray_training

    best = _checkpoint(run_dir, BEST_LINK, "fm")
    if not cfg.train.refit_epochs:
        log("refit: train.refit_epochs is 0: the best checkpoint is tested as it is")
        link(run_dir / FINAL_LINK, best)
        return
    prepared = ensure_prepared(cfg.data, _quiet)
    log(f"refit: {cfg.train.refit_epochs} more epochs on every event before the test "
        f"{'cutoff' if Sequences.load(prepared).info.split == 'time' else 'target (train + validation)'} (the "
        f"baselines are refitted on them too)")
    run_ray_training(cfg, run_dir, prepared, _spec(run_dir), address, log, refit_from=best)


def evaluate(run_dir: Path, cfg: RecfmConfig, address: str | None, log) -> None:
    from recfm.platform.train.job import test_run

    best = _checkpoint(run_dir, BEST_LINK, "fm")
    final = (run_dir / FINAL_LINK).resolve() if (run_dir / FINAL_LINK).exists() else best
    test_run(cfg, run_dir, Sequences.load(ensure_prepared(cfg.data, _quiet)), _spec(run_dir), best, final, log)


def heads(run_dir: Path, cfg: RecfmConfig, address: str | None, log) -> None:
    from recfm.platform.train.heads import train_heads

    if cfg.data.split != "time":
        log("heads skipped: they are trained and tested across time (data.split=time)")
        return
    train_heads(run_dir, cfg, address, log)


def distill(run_dir: Path, cfg: RecfmConfig, address: str | None, log) -> None:
    from recfm.platform.train.distill import distill as distill_run

    distill_run(run_dir, cfg, address, log)


def export(run_dir: Path, cfg: RecfmConfig, address: str | None, log) -> None:
    from recfm.serving_exports.export import export_trained

    export_trained(run_dir, "student", log=log)


def push(run_dir: Path, cfg: RecfmConfig, address: str | None, log) -> None:
    from recfm.platform.push import push_embeddings

    push_embeddings(run_dir, cfg.store, address=address, progress=False, log=log)


_STAGE: dict[str, Callable] = {"prepare": prepare, "fm": fm, "refit": refit, "evaluate": evaluate, "heads": heads,
                               "distill": distill, "export": export, "push": push}


def _spec(run_dir: Path) -> dict:
    if not (run_dir / MODEL_FILE).exists():
        raise FileNotFoundError(f"{run_dir} has no {MODEL_FILE}: run the prepare stage first")
    return json.loads((run_dir / MODEL_FILE).read_text())


def _checkpoint(run_dir: Path, name: str, stage: str) -> Path:
    if not (run_dir / name).exists():
        raise FileNotFoundError(f"{run_dir} has no {name}: run the {stage} stage first")
    return (run_dir / name).resolve()


def _quiet(_: str) -> None:
    pass
