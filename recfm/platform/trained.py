"""A finished training run with its typed config, for the platform's stages (heads, distillation, serving)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recfm.fm.load import foundation_model
from recfm.fm.model import UserFoundationModel
from recfm.platform.config import RecfmConfig, load_config
from recfm.run.files import CONFIG_FILE, FINAL_LINK
from recfm.run.run import Run


@dataclass
class TrainedRun(Run):
    cfg: RecfmConfig = field(default_factory=RecfmConfig)

    @classmethod
    def open(cls, directory: Path | None = None) -> TrainedRun:
        """A run directory written by `recfm train` (default: the newest under runs/)."""
        run = Run.open(directory)
        return cls(run.directory, run.config, run.spec, load_config(run.directory / CONFIG_FILE, source_needed=False))

    def foundation_model(self, checkpoint: str = FINAL_LINK) -> UserFoundationModel:
        return foundation_model(self, checkpoint)
