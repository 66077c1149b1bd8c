"""How sure a difference between two scorers is: a paired bootstrap over users.

Requests of one user are not independent (on ml-latest-small's homepage test, 532 requests come from 49 users),
so the resampling unit is the user: each draw takes users with replacement, with all their requests, and
recomputes the difference of the mean NDCG@k of the two scorers on the same requests.
"""

from __future__ import annotations

import numpy as np

from recfm.ranking.metrics import ndcg_at


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, users: np.ndarray, k: int = 10,
                      draws: int = 2000, level: float = 0.9, seed: int = 0) -> tuple[float, float, float]:
    """NDCG@k of a minus b on the same requests, and the `level` bootstrap interval of it over users."""
    diff = ndcg_at(ranks_a, k) - ndcg_at(ranks_b, k)
    _, group = np.unique(users, return_inverse=True)
    sums = np.bincount(group, weights=diff)
    counts = np.bincount(group).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(draws, len(sums)))
    # a draw's mean over requests: its users' summed differences over their request counts
    means = sums[picks].sum(1) / counts[picks].sum(1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)
