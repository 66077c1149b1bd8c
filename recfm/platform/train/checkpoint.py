"""Checkpoints with torch.distributed.checkpoint: sharded tables, dense weights and optimiser state.

Every rank writes its own shards into its own directory and reports it to Ray Train, which merges them
into one checkpoint directory (the training loop adds `train_state.json`). The same
directory loads into another world size, or into a plain unsharded model in one process for evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.default_planner import create_default_local_load_plan

from recfm.fm.distributed.sharding import ShardedTraining
from recfm.run.run import MODEL_KEY


class _RankLocalLoadPlanner(DefaultLoadPlanner):
    """Loads a checkpoint whose optimiser entries differ per rank.

    A table-wise table's fused optimiser state exists only on the rank holding the table, so each rank asks
    for a subset of the saved keys. The default planner takes that for an old flattened checkpoint and
    fails; these state dicts are flattened already, so plan them as they are.
    """

    def create_local_plan(self):
        return create_default_local_load_plan(self.state_dict, self.metadata, not self.allow_partial_load)


def save_checkpoint(directory: Path, training: ShardedTraining) -> None:
    """Collective: every rank calls it with its own `directory`."""
    dcp.save({MODEL_KEY: training.model.state_dict(), "optim": training.optimizer.state_dict()},
             checkpoint_id=str(directory))


def load_checkpoint(directory: Path, training: ShardedTraining) -> None:
    """Restores a sharded model and its optimisers (collective)."""
    training.optimizer.init_state()  # AdamW creates its state lazily: it must exist to be loaded in place
    state = {MODEL_KEY: training.model.state_dict(), "optim": training.optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(directory), planner=_RankLocalLoadPlanner())
    training.model.load_state_dict(state[MODEL_KEY])
    training.optimizer.load_state_dict(state["optim"])
