"""The foundation model's Ray Train job and its test, for the pipeline's prepare, fm, refit and evaluate stages
(`recfm.platform.pipeline`): the model spec, the TorchTrainer run (training, or the refit of its best checkpoint)
and the test of its checkpoints beside the baselines, written into the run directory (`recfm.run.files`)."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recfm.data.content import ensure_content
from recfm.data.dataset import Sequences
from recfm.data.prepare import cold_items
from recfm.fm.model import UserFoundationModel, build_model, model_spec
from recfm.fm.objectives import TrainingObjective
from recfm.fm.semantic_ids import fit_residual_kmeans
from recfm.fm.tokens import EventTokenizer
from recfm.platform.config import RecfmConfig
from recfm.platform.evaluation.baselines import EASE
from recfm.platform.evaluation.blend import ScoreBlend, tune_and_test_blend
from recfm.platform.evaluation.fm_scorer import FoundationScorer, choose_new_item_boost
from recfm.platform.evaluation.harness import (
    PROTOCOL_VERSION,
    ModelResult,
    evaluation_requests,
    run_baselines,
    tune_and_test,
)
from recfm.platform.evaluation.report import write_results
from recfm.platform.runtime import start_ray
from recfm.platform.train.fm_job import SELECTION, FoundationJob
from recfm.platform.train.launch import launch
from recfm.platform.train.metrics import last_stop
from recfm.platform.train.state import read_state
from recfm.run.files import (
    BEST_LINK,
    COOLDOWN_METRICS_FILE,
    COOLDOWN_RUN_NAME,
    FINAL_LINK,
    ITEM_CONTENT_FILE,
    ITEM_PROB_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RAY_RUN_NAME,
    REFIT_METRICS_FILE,
    REFIT_RUN_NAME,
)
from recfm.run.run import load_weights

FM_NAME = "recfm-FM"  # the final model's row (refitted when train.refit_epochs > 0)

def test_run(cfg: RecfmConfig, run_dir: Path, seqs: Sequences, spec: dict, best: Path, final: Path,
             log=print) -> list[ModelResult]:
    """The evaluate stage: the baselines, the FM (before and after its refit, on leave-one-out) and the FM + EASE
    blend on the test split, written to `run_dir`'s results.md and results.json; returns the rows."""
    refitted = final != best
    results, notes = baselines(seqs, cfg, log)
    if refitted and seqs.info.split == "loo":  # the model as trained, beside its refit
        results.append(test_checkpoint(best, spec, cfg, seqs, name=f"{FM_NAME} (before refit)"))
    fm = fm_scorer(final, spec, cfg, val_checkpoint=best if refitted else None)
    results.append(test_fm(fm, cfg, seqs, baselines=results))
    blend = blend_with_ease(results, fm, cfg, seqs, log)
    results += [blend] if blend is not None else []
    users = evaluation_requests(seqs, "test", cfg.eval.seed)[0]
    log(write_results(run_dir, results, seqs.info, cfg.eval.ks, notes, cold_targets(seqs), users))
    return results


def write_model_spec(cfg: RecfmConfig, seqs: Sequences, run_dir: Path, log=print) -> dict:
    """The prepare stage's model files: the tokenizer fitted on training events and the model spec (model.json),
    item frequencies for logQ, and the item content arrays where the model has content."""
    known = seqs.known_mask("val")  # fit tokenizer buckets and sampling probabilities on training events only
    tokenizer = EventTokenizer.from_data(cfg.model.facets, seqs.n_items, seqs.vocab, seqs.info.has_time,
                                         seqs.events["value"][known], cfg.model.gap_buckets,
                                         cfg.model.engagement_buckets, cfg.model.context)
    spec = model_spec(cfg.model, tokenizer, cfg.objective.mtp, cfg.objective.action_weight > 0,
                      cfg.objective.gap_weight > 0)
    (run_dir / MODEL_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    counts = np.bincount(seqs.events["item"][known], minlength=seqs.n_items).astype(np.float64)
    np.save(run_dir / ITEM_PROB_FILE, (counts / max(counts.sum(), 1)).astype(np.float32))
    if cfg.model.content:
        _item_content(cfg, seqs, run_dir, counts, log)
    return spec


def _item_content(cfg: RecfmConfig, seqs: Sequences, run_dir: Path, counts: np.ndarray, log=print) -> None:
    """What the workers load into the model's content part: the catalog's text vectors (encoded now unless the
    prepared data has them), semantic-ID centroids fitted on them, and which items have trained IDs: those with
    events before the validation cutoff, or before the test cutoff for the refit."""
    vectors = ensure_content(seqs.directory, Path(cfg.content.cache_dir), cfg.content.batch_size, log)
    m = cfg.model
    centroids = (fit_residual_kmeans(vectors, m.semantic_levels, m.semantic_codes, cfg.train.seed)
                 if m.semantic_levels else np.zeros((0, m.semantic_codes, vectors.shape[1]), np.float32))
    refit_counts = np.bincount(seqs.events["item"][seqs.known_mask("test")], minlength=seqs.n_items)
    np.savez(run_dir / ITEM_CONTENT_FILE, vectors=vectors, centroids=centroids, has_id=counts > 0,
             has_id_refit=refit_counts > 0)


def run_ray_training(cfg: RecfmConfig, run_dir: Path, prepared: Path, spec: dict, address: str | None,
                     log=print, refit_from: Path | None = None, callbacks: list | None = None,
                     cooldown_from: Path | None = None) -> Path:
    """Trains the FM on Ray Train; returns the best checkpoint's directory (`callbacks`: Ray Train callbacks, e.g.
    `recfm tune`'s report to Ray Tune). With `refit_from`, continues that checkpoint on every event before the test
    cutoff for `train.refit_epochs` epochs instead (no validation), and returns the last checkpoint. With
    `cooldown_from`, continues that (best) checkpoint for `train.cooldown_epochs` epochs with the learning rates
    falling to 0, and returns the better of it and the cooldown's best checkpoint."""
    start_ray(cfg.train, address)
    import ray.data

    from recfm.platform.train.data import (
        in_memory_training_windows,
        streamed_training_windows,
        validation_table,
    )

    t = cfg.train
    refit = refit_from is not None
    shared, datasets = {}, None
    if t.stream_data:  # read by Ray Data tasks every epoch
        ray.data.DataContext.get_current().enable_progress_bars = False
        datasets = {"train": streamed_training_windows(prepared, cfg.model.max_len, t.seed, refit=refit)}
    else:  # one table through the object store
        shared["windows"] = in_memory_training_windows(prepared, cfg.model.max_len, t.seed, refit=refit)
    if not refit:
        shared["val"] = validation_table(prepared, t.val_users, cfg.eval.seed)
    job = {"spec": spec, "run_dir": str(run_dir), "item_prob": str(run_dir / ITEM_PROB_FILE),
           "item_content": str(run_dir / ITEM_CONTENT_FILE), "refit_from": str(refit_from) if refit else None,
           "cooldown_from": str(cooldown_from) if cooldown_from is not None else None}
    selection = None if refit else SELECTION
    name, metrics = ((REFIT_RUN_NAME, REFIT_METRICS_FILE) if refit else
                     (COOLDOWN_RUN_NAME, COOLDOWN_METRICS_FILE) if cooldown_from is not None else
                     (RAY_RUN_NAME, METRICS_FILE))
    with _ProgressPrinter(run_dir / metrics, log):
        checkpoint = launch(cfg, run_dir, name, FoundationJob, job, shared=shared, datasets=datasets,
                            selection=selection, use_gpu=t.use_gpu, callbacks=callbacks, address=address)
    if cooldown_from is not None and read_state(checkpoint).best_epoch == read_state(cooldown_from).best_epoch:
        checkpoint = cooldown_from  # no cooldown epoch beat the best before it
    link(run_dir / (FINAL_LINK if refit else BEST_LINK), checkpoint)
    if not refit:
        state = read_state(checkpoint)
        log(f"stopped: {last_stop(run_dir / metrics)}; best validation NDCG@10 {state.best_metric:.4f} at "
            f"epoch {state.best_epoch}")
    return checkpoint


def link(link: Path, target: Path) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def fm_scorer(checkpoint: Path, spec: dict, cfg: RecfmConfig, val_checkpoint: Path | None = None,
              name: str = FM_NAME) -> FoundationScorer:
    """The checkpoint, gathered into one process, as a scorer: validation scored with `val_checkpoint` (the model
    before its refit) where given, the test with `checkpoint`."""
    model, val_model = (_load_model(c, spec, cfg) if c is not None else None for c in (checkpoint, val_checkpoint))
    state = read_state(checkpoint)
    params = {"epoch": state.best_epoch, "dim": cfg.model.dim, "layers": cfg.model.layers, "mtp": cfg.objective.mtp,
              "facets": len(model.facets), "min_to_best": round(state.best_elapsed_s / 60, 1)}
    return FoundationScorer(model, name=name, params=params, val_model=val_model)


def test_fm(scorer: FoundationScorer, cfg: RecfmConfig, seqs: Sequences,
            baselines: list[ModelResult] = ()) -> ModelResult:
    """The FM through the same harness as the baselines (`baselines`: their rows, whose validation ranks bound the
    new-item prior)."""
    grid = []
    if scorer.model.content is not None:  # one value, chosen on validation by the rule below, then tested
        grid = [{"new_item_boost": choose_new_item_boost(scorer, seqs, cfg.eval, baselines)}]
    return tune_and_test(scorer, grid, seqs, cfg.eval.ks, cfg.eval.batch_size, cfg.eval.seed, log=lambda _: None,
                         val_targets=cfg.eval.val_targets)


def test_checkpoint(checkpoint: Path, spec: dict, cfg: RecfmConfig, seqs: Sequences,
                    val_checkpoint: Path | None = None, baselines: list[ModelResult] = (),
                    name: str = FM_NAME) -> ModelResult:
    """`test_fm` of the checkpoint (validation with `val_checkpoint` where given)."""
    return test_fm(fm_scorer(checkpoint, spec, cfg, val_checkpoint, name), cfg, seqs, baselines)


def blend_with_ease(results: list[ModelResult], scorer: FoundationScorer, cfg: RecfmConfig, seqs: Sequences,
                    log=print) -> ModelResult | None:
    """The "recfm-FM + EASE" row (`eval.blend_weights`): the tested FM's scores (`scorer`, its row in `results`)
    fused with EASE's at the lambda EASE's own row chose, the weight chosen on validation; None without an EASE row
    or weights."""
    ease = next((r for r in results if r.name == "EASE"), None)
    fm = next((r for r in results if r.name == FM_NAME), None)
    if ease is None or fm is None or not cfg.eval.blend_weights:
        return None
    scorer.new_item_boost = fm.params.get("new_item_boost", 0.0)
    blend = ScoreBlend(scorer, EASE(ease.params["lambda"]), name=f"{FM_NAME} + EASE")
    e = cfg.eval
    return tune_and_test_blend(blend, e.blend_weights, seqs, e.ks, e.batch_size, e.seed, e.val_targets, log)


def _load_model(checkpoint: Path, spec: dict, cfg: RecfmConfig) -> UserFoundationModel:
    model = build_model(spec)
    load_weights(checkpoint, TrainingObjective(model, cfg.objective))
    return model


def cold_targets(seqs: Sequences) -> np.ndarray | None:
    """Which test requests' targets are held-out cold items (`data.cold_items`), in evaluation order."""
    if not seqs.info.cold_items:
        return None
    return np.isin(seqs.request_targets(*seqs.eval_requests("test")), cold_items(seqs.directory))


def baselines(seqs: Sequences, cfg: RecfmConfig, log) -> tuple[list[ModelResult], list[str]]:
    """The baselines' rows, cached beside the prepared data per evaluation config (they do not change)."""
    e = cfg.eval
    # what the baselines depend on: not the FM's own evaluation settings
    settings = {k: v for k, v in asdict(e).items() if k not in ("new_item_boosts", "new_item_cost", "blend_weights")}
    key = json.dumps(settings | {"protocol": PROTOCOL_VERSION, "ranks": True, "val_ranks": True}, sort_keys=True)
    cache = seqs.directory / f"baselines-{hashlib.sha256(key.encode()).hexdigest()[:10]}.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            log(f"baselines reused from {cache}")
            return [ModelResult(**(r | {k: np.asarray(r[k]) for k in ("ranks", "val_ranks")}))
                    for r in cached["results"]], cached["notes"]
    if "ContentKNN" in e.baselines:
        ensure_content(seqs.directory, Path(cfg.content.cache_dir), cfg.content.batch_size, log)
    results, notes = run_baselines(seqs, e.ks, e.baselines, e.ease_lambdas, e.ease_max_items, e.knn_neighbors,
                                   e.knn_shrinks, e.batch_size, e.seed, log, val_targets=e.val_targets)
    cache.write_text(json.dumps({"key": key, "notes": notes, "results": [  # ranks too: the cold-start table's
        asdict(r) | {"ranks": r.ranks.tolist(), "val_ranks": r.val_ranks.tolist()} for r in results]}))
    return results, notes


class _ProgressPrinter:
    """Prints each epoch's line of metrics.jsonl as workers write it (Ray reports reach the driver late)."""

    def __init__(self, path: Path, log):
        self.path, self.log, self.done = path, log, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        seen = 0
        while True:
            finished = self.done.wait(2.0)
            if self.path.exists():
                lines = self.path.read_text().splitlines()
                for line in lines[seen:]:
                    self.log(_progress_line(json.loads(line)))
                seen = len(lines)
            if finished:
                return


def _progress_line(m: dict) -> str:
    text = f"epoch {m['epoch']:>3}  loss {m.get('train/loss', float('nan')):.4f}  " \
           f"{m.get('train/events_per_s', 0):,.0f} events/s"
    if "val_ndcg10" in m:
        text += f"  val NDCG@10 {m['val_ndcg10']:.4f}  HR@10 {m['val_hr10']:.4f}"
    return text
