"""Parallelism, applied in one place after the model is built: TorchRec shards the facet tables across
ranks and DDP replicates the dense part; sparse tables get a fused optimiser applied during backward.

Which sharding types run for an `EmbeddingCollection` on CPU (gloo), verified in tests/integration/test_sharding.py:
row_wise, table_wise and column_wise. data_parallel does not (TorchRec's EmbeddingCollection input split
fails on CPU), and fbgemm's CPU kernels offer only SGD and (row-wise or element-wise) Adagrad as fused
optimisers: Adam needs the CUDA kernels.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recfm.fm.config import ModelConfigError, ShardingConfig
from recfm.fm.model import table_name

logging.getLogger("torchrec").setLevel(logging.ERROR)


@dataclass
class ShardedTraining:
    model: DistributedModelParallel
    optimizer: CombinedOptimizer  # sparse (fused, in backward) + dense
    dense_optimizer: torch.optim.Optimizer  # whose learning rate the schedule drives


def shard(module: nn.Module, embeddings: nn.Module, facets: list[str], cfg: ShardingConfig, lr: float,
          weight_decay: float, device: torch.device, pg: dist.ProcessGroup | None = None) -> ShardedTraining:
    """Wraps `module` (which owns `embeddings`, an EmbeddingCollection) in DistributedModelParallel."""
    if cfg.sparse_optimizer == "adam" and device.type == "cpu":
        raise ModelConfigError("sharding.sparse_optimizer=adam needs CUDA: fbgemm's CPU kernels have no fused "
                               "Adam; use rowwise_adagrad")
    sparse = {"rowwise_adagrad": RowWiseAdagrad, "adagrad": torch.optim.Adagrad,
              "adam": torch.optim.Adam}[cfg.sparse_optimizer]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # apply_optimizer_in_backward is marked as private API
        _apply_optimizer_in_backward(sparse, embeddings.parameters(), {"lr": cfg.sparse_lr})
    pg = pg or dist.group.WORLD
    world = dist.get_world_size(pg)
    constraints = {
        table_name(f): ParameterConstraints(sharding_types=[cfg.item if f == "item" else cfg.other],
                                            compute_kernels=["fused"],
                                            min_partition=max(4, embeddings.embedding_dim() // world))
        for f in facets
    }
    sharders = [EmbeddingCollectionSharder()]
    topology = Topology(world_size=world, compute_device=device.type)
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(module, sharders, pg)
    model = DistributedModelParallel(module, env=ShardingEnv.from_process_group(pg), plan=plan, device=device,
                                     sharders=sharders)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(model.named_parameters())),
                                  lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))
    return ShardedTraining(model, CombinedOptimizer([("sparse", model.fused_optimizer), ("dense", dense)]), dense)


def local_rows(model: DistributedModelParallel, facet: str = "item") -> list[tuple[int, int]]:
    """(first row, row count) of each shard of `facet`'s table that this rank holds."""
    suffix = f".{table_name(facet)}.weight"
    weight = next(v for k, v in model.state_dict().items() if k.endswith(suffix))
    return [(s.metadata.shard_offsets[0], s.tensor.shape[0]) for s in weight.local_shards()]
