"""The evaluation harness: exact ranks, fair ties, excluded history, baselines, and the reference figures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recfm.data.dataset import Sequences
from recfm.platform.evaluation.baselines import EASE, ItemKNN, MostPop
from recfm.platform.evaluation.harness import evaluate, tune_and_test
from recfm.ranking.metrics import RankingMetrics, target_ranks, top_k


def test_ranks_match_brute_force_and_ties_are_not_in_the_models_favour():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (64, 30), generator=gen).float()  # many ties
    targets = torch.randint(0, 30, (64,), generator=gen)
    tie_order = torch.randperm(30, generator=gen)
    ranks = target_ranks(scores, targets, tie_order)
    for b in range(64):
        order = sorted(range(30), key=lambda i: (-scores[b, i].item(), tie_order[i].item()))
        assert ranks[b].item() == order.index(targets[b].item())
        assert top_k(scores[b:b + 1], 5, tie_order)[0].tolist() == order[:5]


def test_constant_scores_rank_like_chance():
    n, users = 1000, 4000
    metrics = RankingMetrics(n, [10, 50], np.ones(n))
    targets = torch.randint(0, n, (users,), generator=torch.Generator().manual_seed(1))
    metrics.add(torch.zeros(users, n), targets)
    result = metrics.result()
    assert abs(result["HR@10"] - 10 / n) < 0.006 and abs(result["HR@50"] - 50 / n) < 0.012


def test_metric_formulas():
    metrics = RankingMetrics(5, [1, 3], np.arange(5))
    scores = torch.tensor([[5.0, 4, 3, 2, 1], [5.0, 4, 3, 2, 1]])
    metrics.add(scores, torch.tensor([0, 2]))  # ranks 0 and 2
    r = metrics.result()
    assert r["HR@1"] == 0.5 and r["HR@3"] == 1.0
    assert r["NDCG@3"] == pytest.approx((1 + 1 / np.log2(4)) / 2)
    assert r["MRR"] == pytest.approx((1 + 1 / 3) / 2)
    assert r["coverage@10"] == 1.0  # 5 items, all in the top-10


def test_coverage_and_popularity_of_what_is_recommended():
    """coverage@10: the share of the catalog in any top-10; pop_pct@10: the mean popularity percentile of the
    recommended items (items ranked by known interactions, 0 = least, 100 = most, ties share their mean)."""
    n = 40
    counts = np.arange(n, dtype=np.float64)  # item i has i interactions ...
    counts[20] = 9.0  # ... but 20, tied with 9 (recommended to user 0; 20 is recommended to no one)
    metrics = RankingMetrics(n, [10], counts)
    scores = torch.zeros(2, n)
    scores[0, :10] = torch.arange(10, 0, -1).float()  # user 0's top-10: items 0..9
    scores[1, 5:15] = torch.arange(10, 0, -1).float()  # user 1's: items 5..14
    metrics.add(scores, torch.tensor([0, 5]))
    r = metrics.result()
    assert r["coverage@10"] == pytest.approx(15 / n)
    # an item's percentile: the items with fewer interactions, plus half of those tied with it, over n - 1
    pct = np.array([100 * ((counts < c).sum() + ((counts == c).sum() - 1) / 2) / (n - 1) for c in counts])
    assert r["pop_pct@10"] == pytest.approx((pct[:10].sum() + pct[5:15].sum()) / 20)


class _Fixed:
    """Scores from a fixed [users, items] matrix."""

    name = "fixed"

    def __init__(self, matrix):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32)

    def fit(self, seqs, stage):
        pass

    def score(self, users, prefixes):
        return self.matrix[torch.as_tensor(users)]

    def params(self):
        return {}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from recfm.data.prepare import prepare
    from recfm.data.synth import synthesize

    root = tmp_path_factory.mktemp("small")
    synthesize(root / "syn", users=400, items=120, events=8000, seed=5, clusters=6)
    prepare(root / "syn", root / "prep")
    return Sequences.load(root / "prep")


def test_history_items_are_excluded(small):
    # score every known item far above the rest and the target just below: the target must rank first
    users = np.arange(small.n_users)
    matrix = np.zeros((small.n_users, small.n_items))
    matrix[small.history_matrix("test").nonzero()] = 100.0
    eval_users = small.eval_users("test")
    targets = small.targets("test", eval_users)
    matrix[eval_users, targets] = np.maximum(matrix[eval_users, targets], 50.0)
    repeats = small.history_matrix("test")[eval_users, targets].A1 > 0  # a target already in the history
    metrics, ranks = evaluate(_Fixed(matrix[users]), small, "test", [10])
    assert (ranks[~repeats] == 0).all() and (ranks[repeats] > 0).all()


def test_ease_matches_the_closed_form(small):
    ease = EASE(lam=25.0)
    ease.fit(small, "val")
    x = small.history_matrix("val").toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 25.0 * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(ease.weights.numpy(), b, atol=2e-5)
    users = np.arange(10)
    np.testing.assert_allclose(ease.score(users, small.n_train[users]).numpy(), x[:10] @ b, atol=1e-4)


def test_item_knn_keeps_k_cosine_neighbours(small):
    knn = ItemKNN(k=5, shrink=0.0)
    knn.fit(small, "val")
    x = small.history_matrix("val").toarray().astype(np.float64)
    norms = np.sqrt((x * x).sum(0))
    sim = (x.T @ x) / (np.outer(norms, norms) + 1e-12)
    np.fill_diagonal(sim, 0.0)
    w = knn.weights.numpy()
    assert ((w > 0).sum(0) <= 5).all()
    j = int(np.argmax(x.sum(0)))  # a popular item: its 5 largest similarities are kept exactly
    np.testing.assert_allclose(np.sort(w[:, j])[-5:], np.sort(sim[:, j])[-5:], rtol=1e-5)


def test_structure_is_found_by_ease_not_by_popularity(small):
    pop = tune_and_test(MostPop(), [], small, [10], log=lambda _: None)
    grid = [1.0, 10.0, 100.0, 3000.0]
    ease = tune_and_test(EASE(), [{"lam": lam} for lam in grid], small, [10], log=lambda _: None)
    assert ease.metrics["NDCG@10"] > 1.5 * pop.metrics["NDCG@10"]  # measured 0.176 vs 0.102
    # the chosen lambda is the argmax of validation NDCG@10 over the grid (and that maximum is its val_metric)
    on_validation = {}
    for lam in grid:
        model = EASE(lam=lam)
        model.fit(small, "val")
        on_validation[lam] = evaluate(model, small, "val", [10])[0]["NDCG@10"]
    assert len(set(on_validation.values())) == len(grid)  # the grid's points differ, so the choice means something
    assert ease.params["lambda"] == max(on_validation, key=on_validation.get)
    assert ease.val_metric == pytest.approx(max(on_validation.values()))


def test_sparse_history_rows_are_binary(small):
    m = small.history_matrix("test")
    assert isinstance(m, sp.csr_matrix) and set(np.unique(m.data)) == {1.0}


def test_content_knn_ranks_the_items_whose_text_is_nearest_the_latest_ones(small, tmp_path):
    from recfm.data.content import CONTENT_FILE
    from recfm.platform.evaluation.baselines import ContentKNN

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(small.n_items, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(small.directory / CONTENT_FILE, vectors)
    try:
        scorer = ContentKNN()
        scorer.recent = 2
        scorer.fit(small, "test")
        users, prefixes = small.eval_requests("test")
        users, prefixes = users[:5], prefixes[:5]
        scores = scorer.score(users, prefixes)
        items = small.events["item"]
        for row, (u, p) in enumerate(zip(users, prefixes, strict=True)):
            last = items[small.offsets[u] + p - 2:small.offsets[u] + p]
            profile = vectors[last].mean(0)
            expected = vectors @ (profile / np.linalg.norm(profile))
            assert np.allclose(scores[row].numpy(), expected, atol=1e-5)
    finally:
        (small.directory / CONTENT_FILE).unlink()


def test_the_warm_and_cold_table_splits_each_models_ranks(tmp_path):
    from recfm.data.prepare import PreparedInfo
    from recfm.platform.evaluation.harness import ModelResult
    from recfm.platform.evaluation.report import write_results

    ranks = np.array([0, 5, 20, 100, 3, 60])
    cold = np.array([False, False, False, True, True, True])
    metrics = {"HR@10": 0.0, "NDCG@10": 0.0, "HR@50": 0.0, "NDCG@50": 0.0, "MRR": 0.0, "coverage@10": 0.0,
               "pop_pct@10": 0.0, "users": 6}
    info = PreparedInfo(source="s", dataset="d", split="time", cold_items=2, val_cutoff=1.0, test_cutoff=2.0)
    text = write_results(tmp_path, [ModelResult("M", metrics, ranks=ranks)], info, [10, 50], cold=cold)
    # warm: ranks 0, 5, 20 -> HR@10 2/3, NDCG@10 (1 + 1/log2(7)) / 3; cold: 100, 3, 60 -> HR@50 1/3
    warm_ndcg = (1 + 1 / np.log2(7)) / 3
    cold_ndcg = (1 / np.log2(5)) / 3
    assert f"| M | {2 / 3:.4f} | {warm_ndcg:.4f} | {1 / 3:.4f} | {cold_ndcg:.4f} |" in text
    assert "3 test targets on warm items, 3 on cold ones" in text


def test_standardised_scores_have_zero_mean_and_unit_spread_over_the_items_left():
    from recfm.platform.evaluation.blend import standardised

    scores = torch.tensor([[1.0, 2.0, 3.0, -torch.inf], [5.0, 5.0, 9.0, 1.0]])
    z = standardised(scores)
    assert torch.isinf(z[0, 3]) and z[0, 3] < 0
    for row in z:
        finite = row[torch.isfinite(row)]
        assert abs(float(finite.mean())) < 1e-6 and abs(float(finite.pow(2).mean()) - 1) < 1e-5


def test_the_blend_weight_is_the_argmax_of_validation_and_is_tested_as_chosen(small):
    from recfm.platform.evaluation.blend import ScoreBlend, tune_and_test_blend

    weights = [0.1, 0.5, 2.0, 8.0]
    result = tune_and_test_blend(ScoreBlend(MostPop(), EASE(lam=10.0), "pop+ease"), weights, small, [10])
    by_weight = {}
    for weight in [0.0, *weights]:  # the same figures, one full evaluation per weight
        blend = ScoreBlend(MostPop(), EASE(lam=10.0), "pop+ease", weight)
        blend.fit(small, "val")
        by_weight[weight] = evaluate(blend, small, "val", [10])[0]["NDCG@10"]
    chosen = result.params["weight"]
    assert by_weight[chosen] == pytest.approx(max(by_weight.values())) and result.val_metric == pytest.approx(
        by_weight[chosen])
    assert chosen > 0 and by_weight[chosen] > by_weight[0.0]  # EASE's evidence lifts popularity here
    blend = ScoreBlend(MostPop(), EASE(lam=10.0), "pop+ease", chosen)
    blend.fit(small, "test")
    assert evaluate(blend, small, "test", [10])[0]["NDCG@10"] == pytest.approx(result.metrics["NDCG@10"])
    assert result.params["EASE.lambda"] == 10.0


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """A time split with 40% of the catalog held out until the test: items unseen at validation."""
    from recfm.data.prepare import prepare
    from recfm.data.synth import synthesize

    root = tmp_path_factory.mktemp("timed")
    synthesize(root / "syn", users=300, items=150, events=9000, seed=7, clusters=6)
    prepare(root / "syn", root / "prep", split="time", val_cutoff=0.6, test_cutoff=0.8, cold_items=0.4)
    return Sequences.load(root / "prep")


@pytest.mark.parametrize("model", [EASE(lam=30.0), ItemKNN(k=8, shrink=5.0)])
def test_item_item_scores_of_growing_histories_are_each_history_summed(timed, model):
    """The item-item models score a user's run of requests by adding the items first seen between them: every
    row must equal the request's own 0/1 history times the weights, in any request order, repeats included."""
    model.fit(timed, "val")
    users, prefixes = timed.eval_requests("val")
    assert (np.diff(users) == 0).sum() > len(users) // 2  # runs of one user's growing histories
    repeated = timed.history_matrix("test", binary=False).max() > 1
    assert repeated  # a user with an item twice: its second event must not count it again
    shuffled = np.random.default_rng(0).permutation(len(users))
    for order in (np.arange(len(users)), shuffled):
        u, p = users[order], prefixes[order]
        expected = timed.request_history(u, p).toarray().astype(np.float64) @ model.weights.double().numpy()
        np.testing.assert_allclose(model.score(u, p).double().numpy(), expected, atol=1e-4)


def test_ease_gives_items_nobody_has_seen_zero_weights_and_the_rest_the_closed_form(timed):
    ease = EASE(lam=30.0)
    ease.fit(timed, "val")
    x = timed.history_matrix("val").toarray().astype(np.float64)
    unseen = x.sum(0) == 0
    assert unseen.sum() > 10  # the cold items, and any other not yet seen
    p = np.linalg.inv(x.T @ x + 30.0 * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(ease.weights.numpy(), b, atol=2e-5)
    assert not ease.weights.numpy()[unseen].any() and not ease.weights.numpy()[:, unseen].any()


def test_ease_weights_of_the_same_gram_and_lambda_are_reused_and_of_any_other_solved(monkeypatch):
    from recfm.ranking import ease as ease_module

    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((40, 12)) < 0.3).astype(np.float32))
    gram = x.T @ x
    monkeypatch.setattr(ease_module, "_cache", type(ease_module._cache)())
    first = ease_module.ease_weights(gram, 10.0)
    assert ease_module.ease_weights(gram.clone(), 10.0) is first  # equal bytes: the cached tensor
    other_lambda = ease_module.ease_weights(gram, 20.0)
    changed = gram.clone()
    changed[0, 1] += 1.0
    changed[1, 0] += 1.0
    other_gram = ease_module.ease_weights(changed, 10.0)
    for weights, g, lam in ((other_lambda, gram, 20.0), (other_gram, changed, 10.0)):
        assert weights is not first
        torch.testing.assert_close(weights, ease_module._solve(g, lam))
    # bounded by bytes: room for two, the least recently used goes
    monkeypatch.setattr(ease_module, "CACHE_BYTES", 2 * first.numel() * first.element_size())
    ease_module._cache.clear()
    a, b = ease_module.ease_weights(gram, 1.0), ease_module.ease_weights(gram, 2.0)
    assert ease_module.ease_weights(gram, 1.0) is a
    ease_module.ease_weights(gram, 3.0)
    assert ease_module.ease_weights(gram, 1.0) is a and ease_module.ease_weights(gram, 2.0) is not b
