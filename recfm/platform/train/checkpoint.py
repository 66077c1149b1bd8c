"""Checkpoints with torch.distributed.checkpoint: sharded tables, dense weights and optimiser state.

Every rank writes its own shards into its own directory and reports it to Ray Train, which merges them
into one checkpoint directory; rank 0 adds `train_state.json` (step, epoch, early-stopping state). The same
directory loads into another world size, or into a plain unsharded model in one process for evaluation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.default_planner import create_default_local_load_plan

from recfm.fm.distributed.sharding import ShardedTraining
from recfm.run.files import STATE_FILE
from recfm.run.run import MODEL_KEY


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_metric: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # validations since the best one
    elapsed_s: float = 0.0  # training and validation time, over every attempt
    best_elapsed_s: float = 0.0  # of it, until the end of the best epoch: the time to the best model
    stopped: str = ""  # why training ended, once it has


class _RankLocalLoadPlanner(DefaultLoadPlanner):
    """Loads a checkpoint whose optimiser entries differ per rank.

    A table-wise table's fused optimiser state exists only on the rank holding the table, so each rank asks
    for a subset of the saved keys. The default planner takes that for an old flattened checkpoint and
    fails; these state dicts are flattened already, so plan them as they are.
    """

    def create_local_plan(self):
        return create_default_local_load_plan(self.state_dict, self.metadata, not self.allow_partial_load)


def save_checkpoint(directory: Path, training: ShardedTraining, state: TrainState, rank: int) -> None:
    """Collective: every rank calls it with its own `directory`."""
    directory = Path(directory)
    dcp.save({MODEL_KEY: training.model.state_dict(), "optim": training.optimizer.state_dict()},
             checkpoint_id=str(directory))
    if rank == 0:
        (directory / STATE_FILE).write_text(json.dumps(asdict(state)) + "\n")


def load_checkpoint(directory: Path, training: ShardedTraining) -> TrainState:
    """Restores a sharded model and its optimisers (collective); returns the saved training state."""
    training.optimizer.init_state()  # AdamW creates its state lazily: it must exist to be loaded in place
    state = {MODEL_KEY: training.model.state_dict(), "optim": training.optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(directory), planner=_RankLocalLoadPlanner())
    training.model.load_state_dict(state[MODEL_KEY])
    training.optimizer.load_state_dict(state["optim"])
    return read_state(directory)


def read_state(directory: Path) -> TrainState:
    return TrainState(**json.loads((Path(directory) / STATE_FILE).read_text()))
