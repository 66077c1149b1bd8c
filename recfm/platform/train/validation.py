"""Validation during training: full-ranking NDCG@10 and HR@10 over the whole catalog, across workers.

Each worker ranks its shard of the validation users; the catalog's embeddings come through the sharded
item table (the "candidate" feature), and the sums are all-reduced so every worker sees the same figure
and takes the same early-stopping decision.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from recfm.ranking.metrics import target_ranks

K = 10


def validate(model: torch.nn.Module, batches, n_items: int, seed: int = 0) -> dict[str, float]:
    """`batches` yields `ValidationBatch`es; `model` is the (sharded) TrainingObjective."""
    tie_order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed))
    catalog = torch.arange(n_items)
    sums = torch.zeros(3, dtype=torch.float64)  # NDCG@10, HR@10, users
    model.eval()
    with torch.no_grad():
        for vb in batches:
            queries, items = model(vb.batch, catalog)
            scores = (queries @ items.T).float()
            scores[vb.history_rows, vb.history_items] = -torch.inf
            ranks = target_ranks(scores, vb.targets, tie_order).double()
            hit = ranks < K
            sums += torch.stack([(hit / torch.log2(ranks + 2)).sum(), hit.sum(), torch.tensor(len(ranks))])
    model.train()
    if dist.is_initialized():
        dist.all_reduce(sums)
    users = max(float(sums[2]), 1.0)
    return {"val_ndcg10": float(sums[0]) / users, "val_hr10": float(sums[1]) / users, "val_users": float(sums[2])}
