"""Runs scorers through the protocol: tune on validation, refit, report full-ranking test metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from recfm.data.dataset import Sequences
from recfm.platform.evaluation.baselines import EASE, ContentKNN, ItemKNN, MostPop, Scorer
from recfm.ranking.metrics import RankingMetrics

SELECTION_METRIC = "NDCG@10"
PROTOCOL_VERSION = 2  # bumped when what a stage evaluates changes (2: every event after a time cutoff)


@dataclass
class ModelResult:
    """One row of the results table."""

    name: str
    metrics: dict[str, float]
    params: dict = field(default_factory=dict)
    val_metric: float | None = None  # SELECTION_METRIC on validation, for the chosen params
    seconds: float = 0.0  # tuning, fitting and evaluating
    ranks: np.ndarray | None = None  # per test user, for paired comparisons; not written to JSON
    val_ranks: np.ndarray | None = None  # per validation request, for the chosen params; not written to JSON


def evaluation_requests(seqs: Sequences, stage: str, seed: int = 0,
                        max_targets: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`stage`'s (users, prefixes), or a fixed random `max_targets` of them when set."""
    users, prefixes = seqs.eval_requests(stage)
    if max_targets and len(users) > max_targets:
        chosen = np.sort(np.random.default_rng(seed).choice(len(users), max_targets, replace=False))
        users, prefixes = users[chosen], prefixes[chosen]
    return users, prefixes


def evaluate(scorer: Scorer, seqs: Sequences, stage: str, ks: list[int], batch_size: int = 1024,
             seed: int = 0, max_targets: int = 0) -> tuple[dict[str, float], np.ndarray]:
    """Full-ranking metrics of a fitted scorer on `stage`'s requests (a fixed random `max_targets` of them, when
    set); each request's history is excluded."""
    users, prefixes = evaluation_requests(seqs, stage, seed, max_targets)
    if len(users) == 0:
        raise ValueError(f"no users have a {stage} target: check the split")
    metrics = RankingMetrics(seqs.n_items, ks, seqs.item_counts(stage), seed=seed)
    targets = torch.from_numpy(seqs.request_targets(users, prefixes).astype(np.int64))
    for start, scores in masked_scores(scorer, seqs, users, prefixes, batch_size):
        metrics.add(scores, targets[start:start + batch_size])
    return metrics.result(), metrics.all_ranks()


def masked_scores(scorer: Scorer, seqs: Sequences, users: np.ndarray, prefixes: np.ndarray,
                  batch_size: int = 1024) -> Iterator[tuple[int, torch.Tensor]]:
    """(first request, float32 scores [batch, items]) per batch of requests, each request's history at -inf."""
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            batch, known = users[start:start + batch_size], prefixes[start:start + batch_size]
            yield start, mask_history(scorer.score(batch, known).float().clone(), seqs, batch, known)


def mask_history(scores: torch.Tensor, seqs: Sequences, users: np.ndarray, prefixes: np.ndarray) -> torch.Tensor:
    """`scores` [requests, items] with each request's history items set to -inf, in place."""
    seen = seqs.request_history(users, prefixes).tocoo()
    scores[torch.from_numpy(seen.row.astype(np.int64)), torch.from_numpy(seen.col.astype(np.int64))] = -torch.inf
    return scores


def tune_and_test(scorer: Scorer, grid: list[dict], seqs: Sequences, ks: list[int], batch_size: int = 1024,
                  seed: int = 0, log=print, val_targets: int = 0) -> ModelResult:
    """Picks the grid point with the best validation NDCG@10, refits on the test stage, and tests."""
    start = time.perf_counter()
    best, best_value, val_ranks = {}, None, None
    for point in grid or [{}]:
        for key, value in point.items():
            setattr(scorer, key, value)
        scorer.fit(seqs, "val")
        val_metrics, point_ranks = evaluate(scorer, seqs, "val", [10], batch_size, seed, val_targets)
        value = val_metrics[SELECTION_METRIC]
        if len(grid) > 1:
            log(f"  {scorer.name} {point}: validation {SELECTION_METRIC} {value:.4f}")
        if best_value is None or value > best_value:
            best, best_value, val_ranks = point, value, point_ranks
    for key, value in best.items():
        setattr(scorer, key, value)
    scorer.fit(seqs, "test")
    metrics, ranks = evaluate(scorer, seqs, "test", ks, batch_size, seed)
    return ModelResult(scorer.name, metrics, scorer.params(), best_value, time.perf_counter() - start, ranks,
                       val_ranks)


def baseline_scorers(ease_lambdas: list[float], knn_neighbors: list[int],
                     knn_shrinks: list[float]) -> list[tuple[Scorer, list[dict]]]:
    """The baselines with their tuning grids, in table order."""
    return [
        (MostPop(), []),
        (ItemKNN(), [{"k": k, "shrink": s} for k in knn_neighbors for s in knn_shrinks]),
        (EASE(), [{"lam": lam} for lam in ease_lambdas]),
        (ContentKNN(), [{"recent": n} for n in (1, 5, 20)]),
    ]


def run_baselines(seqs: Sequences, ks: list[int], names: list[str], ease_lambdas: list[float],
                  ease_max_items: int, knn_neighbors: list[int], knn_shrinks: list[float], batch_size: int = 1024,
                  seed: int = 0, log=print, val_targets: int = 0) -> tuple[list[ModelResult], list[str]]:
    """Tunes and tests the named baselines; returns their rows and notes on anything skipped."""
    results, notes = [], []
    for scorer, grid in baseline_scorers(ease_lambdas, knn_neighbors, knn_shrinks):
        if scorer.name not in names:
            continue
        if scorer.name in ("EASE", "ItemKNN") and seqs.n_items > ease_max_items:
            notes.append(f"{scorer.name} skipped: {seqs.n_items:,} items is more than eval.ease_max_items "
                         f"({ease_max_items:,}); its dense items x items matrix would not fit")
            continue
        log(f"{scorer.name}: tuning on validation over {max(len(grid), 1)} setting(s)")
        results.append(tune_and_test(scorer, grid, seqs, ks, batch_size, seed, log, val_targets))
    return results, notes
