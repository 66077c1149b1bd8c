"""`recfm heads train`: trains the task heads of a finished FM run on Ray, then tests them beside each task's
baselines. Written into the run directory:

    heads/heads.pt       the heads' weights (and the FM's, when fine-tuned)   heads/heads.json  what rebuilds them
    heads/results.md     per task: the heads and the baselines on the same test requests   heads/results.json
    heads/test_ranks.npz per task: each test request's user (source id) and its answer's rank under every model,
                         what the table was computed from (`bench/heads_backtest.py` pools them across runs)

Time protocol (data.split=time, cutoffs val < test): the best FM checkpoint learned from events before `val`.
The heads learn from requests in [val, test), which that FM never saw, so its scores on them are honest (the
stacking rule); the latest `heads.holdout` of those picks the epoch. Every request at or after `test` is a
test request, scored with the FM refitted up to `test` (`final_checkpoint`; a fine-tuned FM stays the heads'
own). Signals are fitted on events (and tags) before `test` for testing; training requests read a timeline of
`heads.signal_refits` fits, the first at `val`, each request the latest fit before it (`SignalTimeline`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from recfm.heads.batch import EXCLUDE_SEEN, EventLog, heads_batch
from recfm.heads.context import impute
from recfm.heads.evaluate import evaluate_scorer, task_baselines
from recfm.heads.examples import TASKS, HeadExamples, homepage_examples, search_examples, similars_examples
from recfm.heads.model import HeadsModel, HeadsSpec
from recfm.heads.signals import SIGNALS, CatalogSignals, SignalTimeline
from recfm.heads.text import text_features
from recfm.platform.config import HeadsConfig, RecfmConfig
from recfm.platform.evaluation.baselines import EASE
from recfm.platform.evaluation.report import markdown, write_table
from recfm.platform.evaluation.significance import paired_difference
from recfm.platform.runtime import configure_process
from recfm.platform.train.heads_job import SELECTION, HeadsJob
from recfm.platform.train.launch import launch
from recfm.platform.train.metrics import last_stop
from recfm.platform.train.state import read_state
from recfm.platform.trained import TrainedRun
from recfm.run.files import (
    BEST_LINK,
    HEADS_DIR,
    HEADS_RANKS_FILE,
    HEADS_SIGNALS_FILE,
    HEADS_SPEC_FILE,
    HEADS_WEIGHTS_FILE,
    METRICS_FILE,
)


def build_examples(run: TrainedRun, start: float, end: float, hc: HeadsConfig) -> HeadExamples:
    """Every task's requests in [start, end), imputed."""
    seqs, catalog = run.sequences, run.catalog
    item, ts = seqs.events["item"], seqs.events["ts"]
    parts = [
        search_examples(seqs.offsets, ts, catalog.tag_user, catalog.tag_item, catalog.tag_ts, catalog.tag_text,
                        start, end),
        similars_examples(seqs.offsets, item, ts, start, end),
        homepage_examples(seqs.offsets, item, ts, start, end, 60 * hc.session_gap_minutes),
    ]
    return impute(HeadExamples.concat(parts), seqs.offsets, item, catalog.text)


def _rankable(examples: HeadExamples, log: EventLog) -> np.ndarray:
    """Requests whose answer is not excluded for them (an item seen before, on tasks that exclude those)."""
    histories = log.histories(examples.user, np.where(examples.user >= 0, examples.known, 0))
    excluding = np.isin(examples.task, EXCLUDE_SEEN)  # the rule `heads_batch` applies
    return np.array([not (ex and (t in set(h.tolist()) or t == s))
                     for ex, t, h, s in zip(excluding, examples.target, histories, examples.item, strict=True)])


def _per_task_subset(examples: HeadExamples, limit: int, seed: int) -> HeadExamples:
    rng = np.random.default_rng(seed)
    keep = []
    for t in range(len(TASKS)):
        index = np.flatnonzero(examples.task == t)
        keep.append(np.sort(rng.choice(index, limit, replace=False)) if len(index) > limit else index)
    return examples.take(np.concatenate(keep))


def _holdout_split(examples: HeadExamples, share: float) -> tuple[HeadExamples, HeadExamples]:
    """The latest `share` of each task's requests (by time) is the holdout."""
    holdout = np.zeros(len(examples), dtype=bool)
    for t in range(len(TASKS)):
        index = np.flatnonzero(examples.task == t)
        if len(index) >= 2:
            latest = index[np.argsort(examples.ts[index], kind="stable")][-max(1, int(share * len(index))):]
            holdout[latest] = True
    return examples.take(np.flatnonzero(~holdout)), examples.take(np.flatnonzero(holdout))


def train_heads(run_dir: Path, cfg: RecfmConfig | None = None, address: str | None = None, log=print,
                out_name: str = HEADS_DIR) -> Path:
    """Trains and tests the heads of the FM run in `run_dir` (its own config unless `cfg` is given), into
    `run_dir/out_name`."""

    run = TrainedRun.open(run_dir)
    if cfg is not None:
        run.cfg = cfg
    cfg, hc = run.cfg, run.cfg.heads
    info = run.sequences.info
    if info.split != "time":
        raise ValueError(f"the heads are trained and tested across time: {run.directory} was trained with "
                         f"data.split={info.split}; train one with data.split=time")
    configure_process(cfg.threads)
    started = time.perf_counter()
    seqs = run.sequences
    log_events = EventLog(seqs.offsets, seqs.events)
    val_cut, test_cut = float(info.val_cutoff), float(info.test_cutoff)
    train_signals = signal_timeline(run, val_cut, test_cut, hc, log)
    examples = build_examples(run, val_cut, test_cut, hc)
    examples = examples.take(np.flatnonzero(_rankable(examples, log_events)))
    examples = _per_task_subset(examples, hc.max_train_per_task, cfg.train.seed)
    train_part, holdout = _holdout_split(examples, hc.holdout)
    log(f"heads: training requests {train_part.counts()}, holdout {holdout.counts()} (from "
        f"{time.strftime('%Y-%m-%d', time.gmtime(val_cut))} to {time.strftime('%Y-%m-%d', time.gmtime(test_cut))})")
    fm = run.foundation_model(BEST_LINK)  # the FM that never saw the training requests
    spec = HeadsSpec(hc.mode, hc.fm, hc.text_dim, hc.hidden, hc.dropout, hc.word_buckets, hc.trigram_buckets,
                     len(seqs.vocab.get("surface", [None])), len(seqs.vocab.get("device", [None])))
    if len(train_part) < cfg.train.workers or len(holdout) == 0:
        raise ValueError(f"too few head training requests after the validation cutoff ({len(train_part)} for "
                         f"training, {len(holdout)} for the holdout): move data.val_cutoff earlier")
    state = _fit_on_ray(cfg, run, fm.state_dict(), spec, log_events, train_signals, train_part, holdout,
                        address, log)
    out = run.directory / out_name
    out.mkdir(exist_ok=True)
    torch.save(state, out / HEADS_WEIGHTS_FILE)
    (out / HEADS_SPEC_FILE).write_text(json.dumps({"spec": spec.to_dict(), "heads": asdict(hc)}, indent=1) + "\n")
    log(f"heads trained in {(time.perf_counter() - started) / 60:.1f} min; testing")
    model = HeadsModel(run.foundation_model() if spec.fm == "frozen" else fm, spec)  # frozen: the refitted FM
    model.load_head_state(state)
    rows, note, ranks = test_heads(run, model, hc, log)
    np.savez_compressed(out / HEADS_RANKS_FILE, **ranks)
    fit_signals(run, np.inf, hc).save(out / HEADS_SIGNALS_FILE)  # what serving reads: every event and tag
    table = heads_table(rows, note)
    write_table(out, table, {"heads": asdict(hc), "rows": rows, "note": note})
    log(table)
    return out


def fit_signals(run: TrainedRun, cutoff: float, hc: HeadsConfig, ease: EASE | None = None) -> CatalogSignals:
    """The catalog signals from the events and tags before `cutoff` (`ease`: EASE already fitted on them)."""
    seqs = run.sequences
    ts = seqs.events["ts"]
    known = ts < cutoff
    last = float(ts[known].max(initial=0)) if np.isinf(cutoff) else cutoff
    recent = known & (ts >= last - 86_400 * hc.trend_days)
    lam = _chosen_ease_lambda(run)
    return CatalogSignals.fit(run.catalog.documents(cutoff), seqs.event_user[known], seqs.events["item"][known],
                              seqs.n_items, hc.neighbours, ease_lambda=lam if lam else 100.0,
                              ease_max_items=run.cfg.eval.ease_max_items,
                              ease_weights=ease.weights if ease is not None else None,
                              recent_item=seqs.events["item"][recent], years=run.catalog.years)


def signal_timeline(run: TrainedRun, start: float, end: float, hc: HeadsConfig, log=print) -> SignalTimeline:
    """`heads.signal_refits` fits at evenly spaced cutoffs over [start, end), the first at `start`."""
    cutoffs = [start + (end - start) * k / hc.signal_refits for k in range(hc.signal_refits)]
    log(f"heads: fitting training signals at {', '.join(time.strftime('%Y-%m-%d', time.gmtime(c)) for c in cutoffs)}")
    return SignalTimeline(cutoffs, [fit_signals(run, c, hc, _fit_ease(run, "val") if k == 0 else None)
                                    for k, c in enumerate(cutoffs)])


def _chosen_ease_lambda(run: TrainedRun) -> float | None:
    """The λ the run's baseline table chose for EASE on validation, if it has one."""
    from recfm.run.files import RESULTS_JSON

    path = run.directory / RESULTS_JSON
    rows = json.loads(path.read_text())["models"] if path.exists() else []
    return next((r["params"]["lambda"] for r in rows if r["name"] == "EASE"), None)


def _fit_on_ray(cfg: RecfmConfig, run: TrainedRun, fm_state: dict, spec: HeadsSpec, log_events: EventLog,
                signals: SignalTimeline, train_part: HeadExamples, holdout: HeadExamples, address: str | None,
                log) -> dict:
    """The heads through the training loop on Ray Train; returns every task's best weights."""
    checkpoint = launch(cfg, run.directory, HEADS_DIR, HeadsJob, {"run_dir": str(run.directory)},
                        shared={"fm_spec": run.spec, "fm_state": fm_state, "spec": spec, "log": log_events,
                                "signals": signals, "train": train_part, "holdout": holdout},
                        selection=SELECTION, address=address)
    saved = torch.load(checkpoint / HEADS_WEIGHTS_FILE, weights_only=True)
    epochs = ", ".join(f"{t} {e}" for t, e in saved["task_epochs"].items())
    log(f"heads: each task's weights from its best holdout epoch ({epochs}; 0 = the untrained blend); holdout "
        f"NDCG@10 relative to the untrained blend's, averaged over tasks, {read_state(checkpoint).best_metric:.3f} "
        f"({last_stop(run.directory / HEADS_DIR / METRICS_FILE)})")
    return {"tasks": saved["tasks"]}


def test_heads(run: TrainedRun, model: HeadsModel, hc: HeadsConfig,
               log=print) -> tuple[list[dict], str, dict[str, np.ndarray]]:
    """Per task: the heads and the task's baselines on the same test requests; returns the rows, a note on the
    protocol, and the requests' ranks ("TASK:user" the source user ids, "TASK:MODEL" each model's 0-based rank
    of the answer)."""
    seqs = run.sequences
    info = seqs.info
    test_cut = float(info.test_cutoff)
    log_events = EventLog(seqs.offsets, seqs.events)
    ease = _fit_ease(run, "test")
    signals = fit_signals(run, test_cut, hc, ease)
    examples = build_examples(run, test_cut, np.inf, hc)
    rankable = _rankable(examples, log_events)
    examples = _per_task_subset(examples.take(np.flatnonzero(rankable)), hc.max_test_per_task, run.cfg.train.seed)
    known = seqs.events["ts"] < test_cut
    item_counts = np.bincount(seqs.events["item"][known], minlength=seqs.n_items)
    item_text = text_features(signals.documents, model.spec.word_buckets, model.spec.trigram_buckets)
    fm = model.fm.eval()
    model.eval()
    ks = [10, 50]

    def fm_scores(batch):
        scores = torch.full((len(batch.task), seqs.n_items), 0.0)
        if bool(batch.has_user.any()):
            scores[batch.has_user] = fm.user_vectors(batch.history) @ fm.item_table().T
        return scores

    def ease_scores(batch):
        rows = (batch.signals[:, :, SIGNALS.index("seen")] > 0).float()  # the user's history
        return rows @ ease.weights

    name = f"recfm heads ({hc.mode}, FM {hc.fm})"
    user_ids = np.array(list(run.users), dtype=object)  # dense user -> source id (the dict is in dense order)
    rows, all_ranks = [], {}
    for t, task in enumerate(TASKS):
        task_examples = examples.take(np.flatnonzero(examples.task == t))
        if len(task_examples) == 0:
            continue
        batches = [heads_batch(task_examples.take(np.arange(s, min(s + 128, len(task_examples)))), log_events,
                               signals, fm.tokenizer, fm.cfg.max_len, model.spec.word_buckets,
                               model.spec.trigram_buckets) for s in range(0, len(task_examples), 128)]
        scorers = {name: lambda b: model(b, item_text)} | task_baselines(fm_scores, ease_scores)[task]
        if ease is None:
            scorers.pop("EASE", None)
        task_rows, ranks = [], {}
        for model_name, scorer in scorers.items():
            metrics, ranks[model_name] = evaluate_scorer(scorer, batches, seqs.n_items, ks, item_counts,
                                                         run.cfg.eval.seed)
            task_rows.append({"task": task, "model": model_name} | metrics)
        # the head against each baseline, with how sure that difference is (users resampled)
        for row in task_rows[1:]:
            diff, low, high = paired_difference(ranks[name], ranks[row["model"]], task_examples.user, 10,
                                                seed=run.cfg.eval.seed)
            row |= {"head_minus": diff, "head_minus_low": low, "head_minus_high": high}
        task_rows[0]["test_users"] = int(len(np.unique(task_examples.user)))
        rows += task_rows
        all_ranks[f"{task}:user"] = np.where(task_examples.user >= 0, user_ids[task_examples.user.clip(0)],
                                             "").astype(str)
        all_ranks |= {f"{task}:{model_name}": r for model_name, r in ranks.items()}
    note = (f"Test requests at or after {time.strftime('%Y-%m-%d', time.gmtime(test_cut))} (global time cutoff), "
            f"full ranking over {seqs.n_items:,} items; similars and homepage exclude items the user already had "
            f"(and the source item), search excludes nothing. {int((~rankable).sum())} requests whose answer was "
            f"excluded are not counted. The intervals resample users (all their requests together), 2,000 draws. "
            + (f"EASE lambda {ease.lam:g}, chosen on validation." if ease else "EASE skipped: catalog too large."))
    return rows, note, all_ranks


def heads_table(rows: list[dict], note: str = "") -> str:
    head = ["task", "model", "HR@10", "NDCG@10", "NDCG@50", "MRR", "requests (users)",
            "the head's NDCG@10 minus this (90% interval)"]
    cells = [[r["task"], r["model"], *(f"{r[m]:.4f}" for m in ("HR@10", "NDCG@10", "NDCG@50", "MRR")),
              f"{int(r['users']):,}{_users(r)}", _versus(r)] for r in rows]
    return markdown(head, cells, "llrrrrrl") + (f"\n\n{note}\n" if note else "\n")


def _users(row: dict) -> str:
    return f" ({row['test_users']})" if "test_users" in row else ""


def _versus(row: dict) -> str:
    if "head_minus" not in row:
        return ""
    return f"{row['head_minus']:+.4f} ({row['head_minus_low']:+.4f} to {row['head_minus_high']:+.4f})"


def _fit_ease(run: TrainedRun, stage: str) -> EASE | None:
    """EASE on the events known at `stage`, with the λ the run's baseline table chose on validation (tuned here
    the same way when the run has no table); None for catalogs past `eval.ease_max_items`."""
    from recfm.platform.evaluation.harness import evaluate

    e, seqs = run.cfg.eval, run.sequences
    if seqs.n_items > e.ease_max_items:
        return None
    chosen = _chosen_ease_lambda(run)
    lambdas = [chosen] if chosen else list(e.ease_lambdas)
    if len(lambdas) > 1:
        values = []
        for lam in lambdas:
            scorer = EASE(lam)
            scorer.fit(seqs, "val")
            values.append(evaluate(scorer, seqs, "val", [10], e.batch_size, e.seed, e.val_targets)[0]["NDCG@10"])
        lambdas = [lambdas[int(np.argmax(values))]]
    scorer = EASE(lambdas[0])
    scorer.fit(seqs, stage)
    return scorer
