"""A run's distilled student, as `recfm distill` left it in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from recfm.run.files import DISTILL_DIR, STUDENT_FILE, STUDENT_SPEC
from recfm.serving_exports.dense import DenseSequenceModel


def load_student(run_dir: Path) -> DenseSequenceModel:
    """The run's distilled student, in eval mode (weights loaded with weights_only=True)."""
    out = Path(run_dir) / DISTILL_DIR
    if not (out / STUDENT_FILE).exists():
        raise FileNotFoundError(f"{run_dir} has no distilled student: run `recfm distill {run_dir}` first")
    student = DenseSequenceModel.from_spec(json.loads((out / STUDENT_SPEC).read_text()))
    try:
        student.load_state_dict(torch.load(out / STUDENT_FILE, weights_only=True))
    except Exception as err:  # a truncated or foreign file: say which, not a pickle traceback
        raise ValueError(f"{out / STUDENT_FILE} is not a readable student checkpoint: {err}") from None
    return student.eval()
