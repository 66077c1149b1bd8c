"""Worker functions that tests run in 2 spawned processes (gloo on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def init_gloo(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def shard_and_train(rank: int, world: int, port: int, prepared: str, item_shardings: list[str], out: str) -> None:
    """For each of `item_shardings` (in one process group: the processes start once), shards a fresh model with
    that sharding for the item table, trains a few steps and writes what it saw."""
    from recfm.data.dataset import Sequences

    init_gloo(rank, world, port)
    seqs = Sequences.load(prepared)
    for item_sharding in item_shardings:
        _shard_and_train(rank, world, seqs, item_sharding, out)
    dist.barrier()
    dist.destroy_process_group()


def _shard_and_train(rank: int, world: int, seqs, item_sharding: str, out: str) -> None:
    from recfm.fm.batching import rows_from_arrays, training_batch
    from recfm.fm.config import ModelConfig, ObjectiveConfig, ShardingConfig
    from recfm.fm.distributed.sharding import local_rows, shard
    from recfm.fm.model import UserFoundationModel
    from recfm.fm.objectives import TrainingObjective
    from recfm.fm.tokens import EventTokenizer

    torch.manual_seed(0)
    tokenizer = EventTokenizer.from_data(["all"], seqs.n_items, seqs.vocab, True, seqs.events["value"])
    # with item content: IDs dropped in training are borrowed from text neighbours, looked up across the shards
    cfg = ModelConfig(dim=16, heads=2, layers=1, max_len=20, dropout=0.0, content=True, content_dim=8)
    model = UserFoundationModel(cfg, tokenizer, mtp=2)
    vectors = np.random.default_rng(0).normal(size=(seqs.n_items, 8)).astype(np.float32)
    model.content.load(vectors, np.ones(seqs.n_items, dtype=bool), None)
    objective = TrainingObjective(model, ObjectiveConfig(mtp=2), seed=rank)
    sharded = shard(objective, model.embeddings, tokenizer.names, ShardingConfig(item=item_sharding, sparse_lr=0.1),
                    lr=3e-3, weight_decay=0.0, device=torch.device("cpu"))
    rng = np.random.default_rng(rank)
    users = np.arange(rank, seqs.n_users, world)  # each rank trains on its own users
    losses = []
    for _ in range(40):
        b = rng.choice(users, 32, replace=False)
        batch = training_batch(rows_from_arrays(seqs.offsets, seqs.events, b), seqs.n_train[b], tokenizer,
                               cfg.max_len, 2)
        sharded.optimizer.zero_grad()
        loss, _ = sharded.model(batch)
        loss.backward()
        sharded.optimizer.step()
        losses.append(float(loss))
    dense = next(p for n, p in sharded.model.named_parameters() if "transformer.blocks.0.attn.qkv.weight" in n)
    Path(out, f"{item_sharding}-rank{rank}.json").write_text(json.dumps({
        "rows": local_rows(sharded.model), "losses": losses, "dense_sum": float(dense.detach().double().sum()),
        "items": seqs.n_items,
    }))
