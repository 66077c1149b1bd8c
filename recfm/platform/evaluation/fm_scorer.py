"""A trained foundation model as a `Scorer`, so it is evaluated exactly as the baselines are."""

from __future__ import annotations

import numpy as np
import torch

from recfm.fm.batching import SequenceBatch, inference_batch, rows_from_arrays
from recfm.fm.model import UserFoundationModel
from recfm.platform.data.dataset import Sequences


class FoundationScorer:
    """Scores every item for a request from the history it was made with (the model is not refitted)."""

    def __init__(self, model: UserFoundationModel, name: str = "recfm-FM", params: dict | None = None):
        self.model, self.name, self._params = model.eval(), name, params or {}

    def fit(self, seqs: Sequences, stage: str) -> None:
        self.seqs = seqs

    def score(self, users: np.ndarray, prefixes: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.model.score_items(self._batch(users, prefixes))

    def _batch(self, users: np.ndarray, prefixes: np.ndarray) -> SequenceBatch:
        rows = rows_from_arrays(self.seqs.offsets, self.seqs.events, users)
        return inference_batch(rows, prefixes, self.model.tokenizer, self.model.cfg.max_len)

    def params(self) -> dict:
        return self._params
