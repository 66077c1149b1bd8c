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
import torch.distributed as dist
import torch.nn.functional as F

from recfm.fm.model import build_model
from recfm.heads.batch import EXCLUDE_SEEN, EventLog, heads_batch
from recfm.heads.context import impute
from recfm.heads.evaluate import evaluate_scorer, task_baselines
from recfm.heads.examples import TASKS, HeadExamples, homepage_examples, search_examples, similars_examples
from recfm.heads.model import HeadsModel, HeadsSpec
from recfm.heads.signals import SIGNALS, CatalogSignals, SignalTimeline
from recfm.heads.text import text_features
from recfm.platform.config import HeadsConfig, RecfmConfig
from recfm.platform.evaluation.baselines import EASE
from recfm.platform.evaluation.significance import paired_difference
from recfm.platform.runtime import configure_process
from recfm.platform.train.small_jobs import EarlyStopping, fit_on_ray, report, unpack
from recfm.platform.trained import TrainedRun
from recfm.run.files import (
    BEST_LINK,
    HEADS_DIR,
    HEADS_RANKS_FILE,
    HEADS_SIGNALS_FILE,
    HEADS_SPEC_FILE,
    HEADS_WEIGHTS_FILE,
)

SELECTION = "holdout_gain"  # mean over tasks of the best holdout NDCG@10 so far / the untrained blend's


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
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"heads": asdict(hc), "rows": rows, "note": note}, indent=1) + "\n")
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
    state, best = fit_on_ray(cfg, run.directory, "heads", heads_worker,
                             {"fm_spec": run.spec, "fm_state": fm_state, "spec": spec, "log": log_events,
                              "signals": signals, "train": train_part, "holdout": holdout}, address)
    epochs = ", ".join(f"{t} {e}" for t, e in best["task_epochs"].items())
    log(f"heads: each task's weights from its best holdout epoch ({epochs}; 0 = the untrained blend); holdout "
        f"NDCG@10 relative to the untrained blend's, averaged over tasks, {best['value']:.3f} ({best['stopped']})")
    return state


def heads_worker(config: dict) -> None:
    """Ray Train's `train_loop_per_worker` for the heads (DDP over the workers)."""
    cfg, payload, rank, world = unpack(config)
    fit_heads(cfg, payload, rank, world, report)


def fit_heads(cfg: RecfmConfig, payload: dict, rank: int, world: int, report) -> None:
    """The training loop on one worker: this rank's share of every epoch, holdout NDCG@10 all-reduced, early
    stopping; rank 0 reports the weights whenever the holdout figure improves, and once more at the end."""
    hc = cfg.heads
    torch.manual_seed(cfg.train.seed)
    fm = build_model(payload["fm_spec"])
    fm.load_state_dict(payload["fm_state"])
    spec, log_events, signals = payload["spec"], payload["log"], payload["signals"]
    model = HeadsModel(fm, spec)
    trained = model
    if world > 1 and dist.is_initialized():
        trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    head_params = [p for n, p in model.named_parameters()
                   if not n.startswith(("fm.", "text.")) and p.requires_grad]
    # the text encoder learns slower: at the heads' rate it memorised the few training queries within an epoch
    groups = [{"params": head_params, "lr": hc.lr}, {"params": list(model.text.parameters()), "lr": 0.1 * hc.lr}]
    if spec.fm == "finetune":
        groups.append({"params": [p for p in model.fm.parameters() if p.requires_grad], "lr": hc.fm_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=hc.weight_decay)
    item_text = text_features(signals.documents, spec.word_buckets, spec.trigram_buckets)
    examples, holdout = payload["train"], payload["holdout"]

    def batch_of(ex: HeadExamples):
        return heads_batch(ex, log_events, signals, fm.tokenizer, fm.cfg.max_len, spec.word_buckets,
                           spec.trigram_buckets)

    counts = np.bincount(examples.task, minlength=len(TASKS)).astype(np.float64)
    # rarer tasks weigh more, by the square root of their rarity (full inverse frequency overfits the rarest)
    task_weight = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1)), 0.0)
    weight = torch.from_numpy(task_weight[examples.task] * user_weights(examples, hc.user_weighting)).float()
    mine = holdout.take(np.arange(rank, len(holdout), world))
    holdout_batches = [batch_of(mine.take(np.arange(s, min(s + 256, len(mine))))) for s in range(0, len(mine), 256)]

    def holdout_ndcg(losses: list[float]) -> tuple[torch.Tensor, float]:
        """Per-task holdout NDCG@10 over every rank, and the mean training loss."""
        model.eval()
        totals = torch.cat([_ndcg_sums(model, holdout_batches, item_text).flatten(),
                            torch.tensor([float(np.mean(losses)) if losses else 0.0], dtype=torch.float64)])
        if dist.is_initialized():
            dist.all_reduce(totals)
        per_task = totals[:-1].view(2, len(TASKS))
        return per_task[0] / per_task[1].clamp(min=1), float(totals[-1]) / world

    # selection, per task: each task keeps the weights of the epoch with its best holdout NDCG@10 (the untrained
    # blend's to begin with). One epoch for all let search, which overfits its few hundred queries within an
    # epoch or two, stop the homepage, which needs four or five, before it had learnt anything
    start, _ = holdout_ndcg([])
    present = start > 0
    task_best, task_epoch = start.clone(), [0] * len(TASKS)
    untrained = model.head_state()
    task_states = dict.fromkeys(TASKS, untrained)
    stopping = EarlyStopping(hc.patience, hc.epochs, "holdout NDCG@10 on any task")
    stopping.value = 0.0  # counts the epochs on which some task improved: it rises exactly when one does
    size = min(hc.batch_size, len(examples) // world)
    steps = len(examples) // (world * size)  # equal on every rank: DDP's collectives must pair up
    for epoch in range(1, hc.epochs + 1):
        model.train()
        if spec.fm == "frozen":
            model.fm.eval()
        order = np.random.default_rng(cfg.train.seed + epoch).permutation(len(examples))[rank::world]
        losses = []
        for step in range(steps):
            index = order[step * size:(step + 1) * size]
            batch = batch_of(examples.take(index))
            losses_per_request = F.cross_entropy(trained(batch, item_text), batch.target, reduction="none")
            loss = (losses_per_request * weight[index]).sum() / weight[index].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        per_task, mean_loss = holdout_ndcg(losses)
        better = [i for i in range(len(TASKS)) if present[i] and per_task[i] > task_best[i]]
        if better or not bool(present.any()):
            state = model.head_state()
            for i in better if better else range(len(TASKS)):
                task_best[i], task_epoch[i], task_states[TASKS[i]] = per_task[i], epoch, state
        improved = stopping.update(stopping.value + 1 if better else stopping.value, epoch)
        value = float((task_best[present] / start[present]).mean()) if bool(present.any()) else 0.0
        metrics = {SELECTION: value, "epoch": epoch, "loss": mean_loss}
        metrics |= {f"holdout_ndcg10_{t}": float(per_task[i]) for i, t in enumerate(TASKS) if present[i]}
        best = stopping.best() | {"value": value, "task_epochs": dict(zip(TASKS, task_epoch, strict=True))}
        report(metrics, {"tasks": task_states} if rank == 0 and (improved or stopping.stopped) else None, best)
        if stopping.stopped:
            break


def user_weights(examples: HeadExamples, power: float) -> np.ndarray:
    """Each request's weight within its task: n^-power for a user with n of the task's requests (anonymous
    requests count as users of their own), scaled so the task's weights average 1. Why: the few most active users
    make most requests (on ml-latest-small's homepage training span, 5 of 77 users make 63% of them, one 29%), and
    unweighted they set the ranker for everyone; weighing users more equally is what YouTube's recommender does
    for the same reason (Covington et al. 2016). 0 weighs every request alike, 1 every user alike."""
    weights = np.ones(len(examples))
    for t in range(len(TASKS)):
        index = np.flatnonzero(examples.task == t)
        if len(index) == 0:
            continue
        users = np.where(examples.user[index] >= 0, examples.user[index], -1 - np.arange(len(index)))
        _, group, n = np.unique(users, return_inverse=True, return_counts=True)
        w = n[group].astype(np.float64) ** -power
        weights[index] = w * len(index) / w.sum()
    return weights


def _ndcg_sums(model: HeadsModel, batches: list, item_text) -> torch.Tensor:
    """[2, tasks]: the holdout's NDCG@10 sums and request counts per task."""
    sums = torch.zeros(2, len(TASKS), dtype=torch.float64)
    with torch.no_grad():
        for batch in batches:
            scores = model(batch, item_text)
            target = scores.gather(1, batch.target[:, None])
            rank = (scores > target).sum(1).double()  # optimistic on ties: selection only, never reported
            gain = torch.where(rank < 10, 1.0 / torch.log2(rank + 2), 0.0)
            sums[0].index_add_(0, batch.task, gain)
            sums[1].index_add_(0, batch.task, torch.ones_like(gain))
    return sums


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
            scores[batch.has_user] = fm.query(fm(batch.history).user, 1) @ fm.item_table().T
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
    lines = ["| task | model | HR@10 | NDCG@10 | NDCG@50 | MRR | requests (users) | the head's NDCG@10 minus this "
             "(90% interval) |", "|---|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['task']} | {r['model']} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['NDCG@50']:.4f} | "
              f"{r['MRR']:.4f} | {int(r['users']):,}{_users(r)} | {_versus(r)} |" for r in rows]
    return "\n".join(lines) + (f"\n\n{note}\n" if note else "\n")


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
