"""Full-ranking metrics: the target's rank among every catalog item not already in the user's history.

Ties are broken by one fixed random order of the items (seeded), the way a deployed top-k list would
break them, rather than in the model's favour: a model that scores everything equal ranks like chance.
"""

from __future__ import annotations

import numpy as np
import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, tie_order: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target; `scores` [B, N] already hold -inf for excluded items."""
    target_scores = scores.gather(1, targets[:, None])
    above = (scores > target_scores).sum(1)
    tied_before = ((scores == target_scores) & (tie_order[None, :] < tie_order[targets][:, None])).sum(1)
    return above + tied_before


def top_k(scores: torch.Tensor, k: int, tie_order: torch.Tensor) -> torch.Tensor:
    """Top-k item ids per row with the same tie-breaking as `target_ranks`."""
    # Sort a candidate set of 4k by (score desc, tie order asc): exact unless more than 3k items tie
    # with the k-th score, where the list is already arbitrary among equals.
    candidates = scores.topk(min(scores.shape[1], 4 * k), dim=1).indices
    cand_scores = scores.gather(1, candidates)
    order = torch.from_numpy(np.lexsort((tie_order[candidates].numpy(), -cand_scores.numpy()), axis=1))
    return candidates.gather(1, order[:, :k])


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-request NDCG@k (one relevant item) from 0-based target ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2), 0.0)


def rank_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """HR@K, NDCG@K (one relevant item) and MRR from 0-based target ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in sorted(ks):
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(ndcg_at(ranks, k).mean())
    out["MRR"] = float((1.0 / (ranks + 1)).mean())
    return out


class RankingMetrics:
    """Accumulates HR@K, NDCG@K, MRR, coverage@10 and the popularity of what is recommended."""

    def __init__(self, n_items: int, ks: list[int], item_counts: np.ndarray, seed: int = 0):
        self.n_items, self.ks = n_items, sorted(ks)
        generator = torch.Generator().manual_seed(seed)
        self.tie_order = torch.randperm(n_items, generator=generator)
        # popularity percentile of each item (0 = least, 100 = most known interactions), ties share the mean
        order = np.argsort(item_counts, kind="stable")
        ranks = np.empty(n_items, dtype=np.float64)
        ranks[order] = np.arange(n_items)
        for count in np.unique(item_counts):  # average the rank over equal counts
            same = item_counts == count
            ranks[same] = ranks[same].mean()
        self.popularity_pct = torch.from_numpy(100.0 * ranks / max(n_items - 1, 1))
        self.ranks: list[torch.Tensor] = []
        self.recommended = torch.zeros(n_items, dtype=torch.bool)
        self.popularity_sum = 0.0
        self.popularity_n = 0

    def add(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        scores = scores.float()
        self.ranks.append(target_ranks(scores, targets, self.tie_order))
        top = top_k(scores, 10, self.tie_order)
        self.recommended[top.flatten()] = True
        self.popularity_sum += float(self.popularity_pct[top].sum())
        self.popularity_n += top.numel()

    def all_ranks(self) -> np.ndarray:
        return torch.cat(self.ranks).numpy() if self.ranks else np.zeros(0, dtype=np.int64)

    def result(self) -> dict[str, float]:
        ranks = torch.cat(self.ranks)
        out = rank_metrics(ranks.numpy(), self.ks)
        out["coverage@10"] = float(self.recommended.float().mean())
        out["pop_pct@10"] = self.popularity_sum / max(self.popularity_n, 1)
        out["users"] = len(ranks)
        return out
