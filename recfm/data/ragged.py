"""Ragged arrays laid end to end (users' events, one sequence after another), in numpy."""

from __future__ import annotations

import numpy as np


def positions(lengths: np.ndarray) -> np.ndarray:
    """Each element's index within its own sequence, for sequences of `lengths` laid one after another."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
