"""The foundation model of a run directory, rebuilt from its spec and gathered from its sharded checkpoint into
one process (the run layer hands out the spec and the weights; the model is built here)."""

from __future__ import annotations

from recfm.fm.config import ObjectiveConfig
from recfm.fm.model import UserFoundationModel, build_model
from recfm.fm.objectives import TrainingObjective
from recfm.run.files import FINAL_LINK
from recfm.run.run import Run


def foundation_model(run: Run, checkpoint: str = FINAL_LINK) -> UserFoundationModel:
    """A checkpoint of `run` (the final one by default) as an unsharded model, in eval mode."""
    model = build_model(run.spec)
    # the checkpoint holds the training objective (the model and its heads), as it was trained
    run.load_weights(TrainingObjective(model, run.section("objective", ObjectiveConfig)), checkpoint)
    return model.eval()
