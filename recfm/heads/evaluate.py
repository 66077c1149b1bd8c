"""Per-task full-ranking evaluation of the heads and of each task's baselines, on the same requests.

Every scorer maps a `HeadsBatch` to [requests, items] scores; items a request excludes (already seen on the
homepage and in similars, the source item) get -inf for every scorer alike, and ties break in one fixed
random order (`RankingMetrics`), so a scorer that cannot tell items apart ranks like chance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from recfm.heads.model import HeadsBatch
from recfm.heads.signals import SIGNALS
from recfm.ranking.metrics import RankingMetrics

BatchScorer = Callable[[HeadsBatch], torch.Tensor]


def _signal(name: str) -> BatchScorer:
    index = SIGNALS.index(name)
    return lambda batch: batch.signals[:, :, index]


def lexical_popularity(batch: HeadsBatch) -> torch.Tensor:
    """Popularity among lexical matches: every matching item above every other, each group by popularity."""
    s = batch.signals
    return 2.0 * s[:, :, SIGNALS.index("lexical_any")] + s[:, :, SIGNALS.index("popularity")]


def task_baselines(fm_scores: BatchScorer, ease_scores: BatchScorer) -> dict[str, dict[str, BatchScorer]]:
    """Each task's baselines; the strongest of them is the one a head must beat."""
    return {
        "search": {"BM25": _signal("lexical"), "LexicalPop": lexical_popularity},
        "similars": {"ItemKNN": _signal("source_cooc")},
        "homepage": {"recfm-FM (next item)": fm_scores, "EASE": ease_scores, "MostPop": _signal("popularity"),
                     "Trending": _signal("trending")},
    }


def evaluate_scorer(scorer: BatchScorer, batches: Iterable[HeadsBatch], n_items: int, ks: list[int],
                    item_counts: np.ndarray, seed: int = 0) -> tuple[dict[str, float], np.ndarray]:
    """The metrics, and each request's 0-based target rank (for paired comparisons)."""
    metrics = RankingMetrics(n_items, ks, item_counts, seed=seed)
    with torch.no_grad():
        for batch in batches:
            scores = scorer(batch).float().masked_fill(batch.exclude, -torch.inf)
            metrics.add(scores, batch.target)
    return metrics.result(), metrics.all_ranks()
