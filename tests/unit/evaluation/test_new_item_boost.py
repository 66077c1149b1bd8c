"""The FM's new-item prior (`eval.new_item_boosts`): the largest boost at which the FM's validation NDCG@10 on
the targets it has trained IDs for stays at or above the best baseline's there, or, with no baselines, costs at
most `eval.new_item_cost` against no boost. Checked on a scorer whose answer is known for every boost."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recfm.data.dataset import Sequences
from recfm.platform.config import EvalConfig
from recfm.platform.evaluation.fm_scorer import choose_new_item_boost
from recfm.platform.evaluation.harness import ModelResult, evaluate, evaluation_requests
from recfm.ranking.metrics import rank_metrics

BOOSTS = [0.5, 1.0, 2.0, 4.0, 8.0]


class _BoostedScores:
    """Fixed scores plus `new_item_boost` on the items without a trained ID, as FoundationScorer adds it."""

    name = "boosted"

    def __init__(self, matrix: np.ndarray, has_id: np.ndarray):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32)
        self.model = SimpleNamespace(content=SimpleNamespace(has_id=torch.as_tensor(has_id)))
        self.new_item_boost = 0.0

    def fit(self, seqs, stage):
        pass

    def score(self, users, prefixes):
        return self.matrix[torch.as_tensor(users)] + self.new_item_boost * (~self.model.content.has_id).float()

    def params(self):
        return {"new_item_boost": self.new_item_boost}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from recfm.data.prepare import prepare
    from recfm.data.synth import synthesize

    root = tmp_path_factory.mktemp("boost")
    synthesize(root / "syn", users=300, items=100, events=6000, seed=3, clusters=5)
    prepare(root / "syn", root / "prep")
    seqs = Sequences.load(root / "prep")
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(seqs.n_users, seqs.n_items))
    users, prefixes = evaluation_requests(seqs, "val")
    matrix[users, seqs.request_targets(users, prefixes)] += 2.5  # informative: targets score high
    has_id = np.ones(seqs.n_items, dtype=bool)
    has_id[rng.choice(seqs.n_items, 30, replace=False)] = False  # 30 "new" items, pushed up by the boost
    scorer = _BoostedScores(matrix, has_id)
    warm = has_id[seqs.request_targets(users, prefixes)]
    value = {}  # NDCG@10 on warm validation targets, per boost: falls as new items crowd the top 10
    for boost in [0.0, *BOOSTS]:
        scorer.new_item_boost = boost
        value[boost] = rank_metrics(evaluate(scorer, seqs, "val", [10])[1][warm], [10])["NDCG@10"]
    scorer.new_item_boost = 0.0
    return seqs, scorer, value


def _baseline_at(seqs, scorer, boost: float) -> ModelResult:
    """A baseline whose validation ranks are the scorer's own at `boost`: its NDCG@10 there is the floor."""
    scorer.new_item_boost = boost
    ranks = evaluate(scorer, seqs, "val", [10])[1]
    scorer.new_item_boost = 0.0
    return ModelResult("baseline", {}, {}, val_ranks=ranks)


def test_the_values_fall_with_the_boost(case):
    _, _, value = case
    # so that each floor has one answer
    assert all(value[a] > value[b] for a, b in zip([0.0, *BOOSTS[:-1]], BOOSTS, strict=True))


@pytest.mark.parametrize("floor_at", [1.0, 4.0])
def test_the_largest_boost_that_keeps_the_best_baselines_ndcg(case, floor_at):
    seqs, scorer, value = case
    e = EvalConfig(new_item_boosts=BOOSTS, val_targets=0)
    weaker = _baseline_at(seqs, scorer, 8.0)  # the floor is the best baseline's, not any baseline's
    assert choose_new_item_boost(scorer, seqs, e, [weaker, _baseline_at(seqs, scorer, floor_at)]) == floor_at
    assert scorer.new_item_boost == 0.0  # left as found


def test_with_no_baselines_the_boost_costs_at_most_new_item_cost(case):
    seqs, scorer, value = case
    cost = 1 - (value[2.0] + value[4.0]) / 2 / value[0.0]  # 2 costs less than this, 4 more
    e = EvalConfig(new_item_boosts=BOOSTS, new_item_cost=cost, val_targets=0)
    assert choose_new_item_boost(scorer, seqs, e) == 2.0
