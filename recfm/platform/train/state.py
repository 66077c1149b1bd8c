"""Where a training run is: epochs and steps done, the best validation figure so far, and why training stopped.
One early stopping for every model the loop trains; saved in each checkpoint as `train_state.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from recfm.run.files import STATE_FILE


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

    def validated(self, value: float, patience: int, figure: str) -> bool:
        """Records this epoch's validation `figure` (`value`); True when it is the best so far. After `patience`
        validations without a better one, training stops."""
        if value > self.best_metric:
            self.best_metric, self.best_epoch, self.stale = value, self.epoch, 0
            self.best_elapsed_s = self.elapsed_s
            return True
        self.stale += 1
        if self.stale >= patience:
            self.stopped = f"no better {figure} for {patience} validations (best at epoch {self.best_epoch})"
        return False


def write_state(directory: Path, state: TrainState) -> None:
    (Path(directory) / STATE_FILE).write_text(json.dumps(asdict(state)) + "\n")


def read_state(directory: Path) -> TrainState:
    return TrainState(**json.loads((Path(directory) / STATE_FILE).read_text()))
