"""A score fusion of two fitted scorers, tested like any model: z(first) + weight * z(second) per request, where
z standardises a request's scores over the catalog, and the weight is chosen on validation NDCG@10.

Used for the FM beside EASE: the FM reads order and recency, EASE the co-occurrence of whole histories, and on
files where co-occurrence carries more than order a little of EASE's evidence lifts the FM. The weights are
scored in one pass over the validation requests (each model scores each request once), then the chosen one in
one pass over the test's; weight 0 (the first model alone) is always a candidate. Both models' scores are
standardised over the whole catalog before the history is excluded, in validation and test alike.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from recfm.data.dataset import Sequences
from recfm.platform.evaluation.baselines import Scorer
from recfm.platform.evaluation.harness import SELECTION_METRIC, ModelResult, evaluate, evaluation_requests, mask_history
from recfm.ranking.metrics import RankingMetrics


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """Each row's scores as z-scores over the catalog (-inf, the excluded history, stays -inf)."""
    finite = torch.isfinite(scores)
    values = torch.where(finite, scores, 0.0)
    n = finite.sum(1, keepdim=True).clamp(min=1)
    mean = values.sum(1, keepdim=True) / n
    var = (torch.where(finite, scores - mean, 0.0) ** 2).sum(1, keepdim=True) / n
    return (scores - mean) / var.sqrt().clamp(min=1e-12)


class ScoreBlend:
    def __init__(self, first: Scorer, second: Scorer, name: str, weight: float = 0.0):
        self.first, self.second, self.name, self.weight = first, second, name, weight

    def fit(self, seqs: Sequences, stage: str) -> None:
        self.first.fit(seqs, stage)
        self.second.fit(seqs, stage)

    def score(self, users: np.ndarray, prefixes: np.ndarray) -> torch.Tensor:
        return self.combine(*self.parts(users, prefixes), self.weight)

    def parts(self, users: np.ndarray, prefixes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (standardised(self.first.score(users, prefixes).float()),
                standardised(self.second.score(users, prefixes).float()))

    @staticmethod
    def combine(first: torch.Tensor, second: torch.Tensor, weight: float) -> torch.Tensor:
        return first + weight * second if weight else first

    def params(self) -> dict:
        return {**self.first.params(), **{f"{self.second.name}.{k}": v for k, v in self.second.params().items()},
                "weight": self.weight}


def tune_and_test_blend(blend: ScoreBlend, weights: list[float], seqs: Sequences, ks: list[int],
                        batch_size: int = 1024, seed: int = 0, val_targets: int = 0, log=print) -> ModelResult:
    """The weight with the best validation NDCG@10 (ties: the smaller weight), then the test with it."""
    start = time.perf_counter()
    grid = sorted({0.0, *weights})
    blend.fit(seqs, "val")
    users, prefixes = evaluation_requests(seqs, "val", seed, val_targets)
    targets = torch.from_numpy(seqs.request_targets(users, prefixes).astype(np.int64))
    metrics = {w: RankingMetrics(seqs.n_items, [10], seqs.item_counts("val"), seed=seed) for w in grid}
    with torch.no_grad():
        for first in range(0, len(users), batch_size):
            batch, known = users[first:first + batch_size], prefixes[first:first + batch_size]
            parts = blend.parts(batch, known)
            for weight, m in metrics.items():
                scores = mask_history(blend.combine(*parts, weight), seqs, batch, known)
                m.add(scores, targets[first:first + batch_size])
    values = {w: m.result()[SELECTION_METRIC] for w, m in metrics.items()}
    log(f"  {blend.name}: validation {SELECTION_METRIC} by weight: "
        + ", ".join(f"{w:g}: {v:.4f}" for w, v in values.items()))
    blend.weight = max(grid, key=lambda w: (values[w], -w))
    blend.fit(seqs, "test")
    test_metrics, ranks = evaluate(blend, seqs, "test", ks, batch_size, seed)
    return ModelResult(blend.name, test_metrics, blend.params(), values[blend.weight], time.perf_counter() - start,
                       ranks, metrics[blend.weight].all_ranks())
