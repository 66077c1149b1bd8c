"""A trained foundation model as a `Scorer`, so it is evaluated exactly as the baselines are."""

from __future__ import annotations

import numpy as np
import torch

from recfm.data.dataset import Sequences
from recfm.fm.batching import SequenceBatch, inference_batch, rows_from_arrays
from recfm.fm.model import UserFoundationModel
from recfm.platform.config import EvalConfig
from recfm.platform.evaluation.harness import ModelResult, evaluate, evaluation_requests
from recfm.ranking.metrics import rank_metrics


class FoundationScorer:
    """Scores every item for a request from the history it was made with.

    With `val_model` (a time split's best checkpoint, trained before the validation cutoff), validation is scored
    by it and the test by `model` (its refit on every event before the test cutoff), as a baseline is fitted
    once per stage. `new_item_boost` is added to the score of every item the scoring model has no trained ID
    for: items nobody had watched when it was trained, placed by their content alone. It is the log-odds prior
    of a new title, tuned on validation like a baseline's parameter (there, the titles first seen after the
    validation cutoff are the new ones)."""

    def __init__(self, model: UserFoundationModel, name: str = "recfm-FM", params: dict | None = None,
                 val_model: UserFoundationModel | None = None):
        self.name, self._params = name, params or {}
        self._models = {"test": model.eval(), "val": (val_model or model).eval()}
        self.model, self.stage = model, "test"
        self.new_item_boost = 0.0
        # the evaluation scores the same requests again and again (each new-item boost, the blend's weights):
        # each request's user vector and the catalog's item vectors are computed once per stage
        self._queries: dict[tuple, torch.Tensor] = {}
        self._items: dict[str, torch.Tensor] = {}

    def fit(self, seqs: Sequences, stage: str) -> None:
        self.seqs, self.model, self.stage = seqs, self._models[stage], stage

    def score(self, users: np.ndarray, prefixes: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            key = (self.stage, np.asarray(users).tobytes(), np.asarray(prefixes).tobytes())
            if key not in self._queries:
                self._queries[key] = self.model.user_vectors(self._batch(users, prefixes))
            if self.stage not in self._items:
                self._items[self.stage] = self.model.item_table().T.contiguous()
            scores = self._queries[key] @ self._items[self.stage]  # = model.score_items(batch)
            content = getattr(self.model, "content", None)  # a distilled student has none
            if self.new_item_boost and content is not None:
                scores = scores + self.new_item_boost * (~content.has_id).to(scores.dtype)
            return scores

    def _batch(self, users: np.ndarray, prefixes: np.ndarray) -> SequenceBatch:
        rows = rows_from_arrays(self.seqs.offsets, self.seqs.events, users)
        # a request's context (its target's hour, device, gap...) is known when it is made; its item is not
        return inference_batch(rows, prefixes, self.model.tokenizer, self.model.cfg.max_len, next_context=True)

    def params(self) -> dict:
        if getattr(self.model, "content", None) is None:
            return self._params
        return {**self._params, "new_item_boost": self.new_item_boost}


def choose_new_item_boost(scorer: FoundationScorer, seqs: Sequences, e: EvalConfig,
                          baselines: list[ModelResult] = ()) -> float:
    """The largest of `eval.new_item_boosts` at which the FM, on the validation targets it had trained IDs for,
    still ranks at least as well as the best baseline there (NDCG@10, same requests): new titles get all the
    exposure the FM's lead over the baselines buys, never at the price of falling below one. With no baseline
    ranks to compare with, those costing at most `eval.new_item_cost` (relative) on those targets. (Overall
    NDCG@10 would always answer "no boost": new titles are a minority of targets, and each one lifted into a
    top 10 pushes out a better-known item.)"""
    scorer.fit(seqs, "val")
    users, prefixes = evaluation_requests(seqs, "val", e.seed, e.val_targets)
    warm = scorer.model.content.has_id.numpy()[seqs.request_targets(users, prefixes)]
    floors = [rank_metrics(b.val_ranks[warm], [10])["NDCG@10"] for b in baselines if b.val_ranks is not None]
    chosen, floor = 0.0, max(floors) if floors else None
    for boost in sorted({0.0, *e.new_item_boosts}):  # 0 first: with no baseline, the cost is against it
        scorer.new_item_boost = boost
        ranks = evaluate(scorer, seqs, "val", [10], e.batch_size, e.seed, e.val_targets)[1]
        value = rank_metrics(ranks[warm], [10])["NDCG@10"]
        floor = (1 - e.new_item_cost) * value if floor is None else floor
        if value >= floor:
            chosen = boost
    scorer.new_item_boost = 0.0
    return chosen
