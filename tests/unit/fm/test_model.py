"""The foundation model in one process: tokens, batches, attention masks, objectives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recfm.fm.batching import inference_batch, training_batch
from recfm.fm.config import ModelConfig, ObjectiveConfig
from recfm.fm.model import UserFoundationModel
from recfm.fm.objectives import Candidates, TrainingObjective, choose_candidates, next_item_loss
from recfm.fm.tokens import EventTokenizer, Facet

HOUR = 3600


def _tokenizer(items: int = 50) -> EventTokenizer:
    return EventTokenizer([Facet("item", items), Facet("action", 4), Facet("hour", 24), Facet("day", 7),
                           Facet("gap", 32), Facet("engagement", 4)], 32, [2.5, 4.0])


def _rows(n_users: int = 3, length: int = 12, items: int = 50, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    rows = {"item": [], "ts": [], "value": [], "action": []}
    for _ in range(n_users):
        rows["item"].append(rng.integers(0, items, length))
        rows["ts"].append(np.cumsum(rng.integers(1, 10 * HOUR, length)) + 1_600_000_000)
        rows["value"].append(rng.choice([np.nan, 1.0, 3.0, 5.0], length).astype(np.float32))
        rows["action"].append(rng.integers(1, 4, length))
    return rows


def _model(**overrides) -> UserFoundationModel:
    cfg = ModelConfig(**({"dim": 16, "heads": 2, "layers": 1, "max_len": 12, "dropout": 0.0, "content": False}
                         | overrides))
    torch.manual_seed(0)
    return UserFoundationModel(cfg, _tokenizer(), mtp=3, action_head=True, gap_head=True).eval()


def test_time_facets():
    tok = _tokenizer()
    ts = np.array([0, 1, 3 * HOUR, 3 * HOUR, 4 * 86_400], dtype=np.int64)  # 1970-01-01 was a Thursday
    ids = tok.tokenize({"item": np.zeros(5, np.int64), "action": np.ones(5, np.int64), "ts": ts,
                        "value": np.array([np.nan, 1, 3, 4, 5], np.float32)}, np.array([2, 3]))
    assert ids["hour"].tolist() == [0, 0, 3, 3, 0]
    assert ids["day"].tolist() == [3, 3, 3, 3, 0]
    # gap: 0 for each sequence's first event, then 1 + floor(log2(seconds + 1)); zero seconds -> bucket 1
    assert ids["gap"].tolist() == [0, 2, 0, 1, 1 + 18]
    assert ids["engagement"].tolist() == [0, 1, 2, 3, 3]  # 0 = missing; edges 2.5 and 4.0


def test_training_targets_are_the_next_k_items():
    rows = {k: [v[0][:6]] for k, v in _rows(1).items()}
    items = rows["item"][0]
    batch = training_batch(rows, np.array([6]), _tokenizer(), max_len=12, mtp=3)
    assert batch.lengths.tolist() == [5]  # the last event is only a target
    targets = batch.targets[0]
    for t in range(5):
        for k in range(3):
            expected = items[t + k + 1] if t + k + 1 < 6 else -1
            assert targets[t, k] == expected
    assert batch.features["item"].tolist() == items[:5].tolist()


def test_targets_stop_at_the_known_part_and_windows_keep_the_latest_events():
    """Rows longer than `known` (later events are validation or test targets) and longer than max_len: inputs are
    the window's events, every target of every offset lies in the window after its input, none at or past
    `known`. Also the auxiliary next-action labels."""
    rows = _rows(3, length=12)
    known, max_len, mtp = np.array([8, 12, 3]), 4, 3
    batch = training_batch(rows, known, _tokenizer(), max_len=max_len, mtp=mtp)
    assert batch.lengths.tolist() == [4, 4, 2]  # a window of max_len + 1 events, the last only a target
    starts = [8 - 5, 12 - 5, 0]
    offset = 0
    for u, (start, n) in enumerate(zip(starts, batch.lengths.tolist(), strict=True)):
        items, actions = rows["item"][u], rows["action"][u]
        assert batch.features["item"][offset:offset + n].tolist() == items[start:start + n].tolist()
        offset += n
        for t in range(n):
            for k in range(1, mtp + 1):
                event = start + t + k
                expected = items[event] if event < known[u] else -1
                assert batch.targets[u, t, k - 1] == expected, (u, t, k)
            assert batch.next_action[u, t] == (actions[start + t + 1] if start + t + 1 < known[u] else -1)
        assert (batch.targets[u, n:] == -1).all()  # padding positions are never targets


def test_multi_token_loss_weights_each_offset():
    """The loss is the sum over offsets k of weight_k x (cross-entropy of predicting the item k ahead), with the
    configured weights or 1, 1/2, 1/3 by default."""
    model = _model().train()
    rows = _rows(3)
    batch = training_batch(rows, np.array([12, 9, 7]), model.tokenizer, max_len=12, mtp=3)
    for weights in ([], [0.2, 3.0, 0.0]):
        cfg = ObjectiveConfig(mtp=3, mtp_weights=weights)
        torch.manual_seed(0)
        total, parts = TrainingObjective(model, cfg)(batch)
        out = model(batch, torch.arange(model.n_items))  # the full softmax: every item a candidate
        expected = 0.0
        for k, weight in enumerate(weights or [1.0, 1 / 2, 1 / 3], start=1):
            targets = batch.targets[:, :, k - 1]
            mask = targets >= 0
            logits = model.query(out.hidden[mask], k) @ out.candidate_emb.T
            ce = torch.nn.functional.cross_entropy(logits, targets[mask])
            assert parts[f"item@{k}"] == pytest.approx(float(ce), rel=1e-5)
            expected += weight * float(ce)
        assert float(total) == pytest.approx(expected, rel=1e-5)


def test_attention_is_causal_and_windowed():
    rows = _rows(2)
    for overrides, window in (({}, 0), ({"positions": "rope"}, 0), ({"window": 3}, 3), ({"freq_mix": 0.7}, 0)):
        model = _model(**overrides)
        base = model(inference_batch(rows, np.array([12, 12]), model.tokenizer, 12)).hidden
        changed = {k: [v.copy() for v in vs] for k, vs in rows.items()}
        changed["item"][0][8] = (changed["item"][0][8] + 1) % 50  # a later event of user 0
        out = model(inference_batch(changed, np.array([12, 12]), model.tokenizer, 12)).hidden
        assert torch.equal(out[0, :8], base[0, :8])  # earlier positions never see it
        assert not torch.allclose(out[0, 8], base[0, 8])
        assert torch.equal(out[1], base[1])  # nor does another user
        if window:  # one layer: position t sees only t-window+1 .. t
            assert torch.equal(out[0, 8 + window:], base[0, 8 + window:])
            assert not torch.allclose(out[0, 8 + window - 1], base[0, 8 + window - 1])


@pytest.mark.parametrize("t, window", [(10, 3), (9, 3), (50, 7), (64, 16), (5, 1)])
def test_blockwise_window_attention_equals_the_masked_dense_one(t, window):
    from torch.nn.functional import scaled_dot_product_attention

    from recfm.fm.transformer import local_attention

    q, k, v = torch.randn(3, 2, 3, t, 8, generator=torch.Generator().manual_seed(t)).unbind(0)
    distance = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    dense = scaled_dot_product_attention(q, k, v, attn_mask=(distance >= 0) & (distance < window))
    torch.testing.assert_close(local_attention(q, k, v, window), dense)


@pytest.mark.parametrize("overrides", [{}, {"positions": "rope"}, {"window": 3}, {"heads": 4}, {"freq_mix": 0.7}])
def test_packed_transformer_is_the_padded_one_on_real_tokens(overrides):
    """The FM runs the transformer packed (per-token work on real tokens only); export traces the padded path."""
    transformer = _model(**overrides).transformer.eval()
    lengths = torch.tensor([7, 1, 12, 3])
    x = torch.randn(4, 12, transformer.blocks[0].norm1.normalized_shape[0], generator=torch.Generator().manual_seed(1))
    real = torch.arange(12)[None, :] < lengths[:, None]
    padded, padded_layers = transformer(x, lengths)
    packed, packed_layers = transformer(x, lengths, packed=True)
    torch.testing.assert_close(packed[real], padded[real])
    for a, b in zip(packed_layers, padded_layers, strict=True):
        torch.testing.assert_close(a[real], b[real])
    assert not packed[~real].any()  # padded positions are never computed


def test_the_frequency_filter_is_a_causal_moving_average_plus_scaled_departures_from_it():
    from recfm.fm.transformer import CausalFrequencyFilter

    f = CausalFrequencyFilter(dim=2, max_len=6, dropout=0.0).eval()
    with torch.no_grad():
        f.decay_logit.copy_(torch.tensor([0.0, 2.0]))  # decays 0.5 and sigmoid(2) per channel
        f.beta.copy_(torch.tensor([0.0, 3.0]))
    x = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(0))
    expected = torch.empty_like(x)
    for c, decay in enumerate((0.5, float(torch.sigmoid(torch.tensor(2.0))))):
        for t in range(6):
            w = torch.tensor([decay ** (t - s) for s in range(t + 1)])
            low = (w[:, None] * x[:, :t + 1, c].T).sum(0) / w.sum()
            expected[:, t, c] = low + float(f.beta[c]) * (x[:, t, c] - low)
    torch.testing.assert_close(f(x), expected)


def test_padding_does_not_change_a_users_vector():
    rows = _rows(2)
    model = _model()
    alone = model(inference_batch({k: v[:1] for k, v in rows.items()}, np.array([5]), model.tokenizer, 12)).user
    beside_longer = model(inference_batch(rows, np.array([5, 12]), model.tokenizer, 12)).user
    assert torch.allclose(alone[0], beside_longer[0], atol=1e-6)


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_objective_backpropagates_to_every_part(combine):
    model = _model(combine=combine).train()
    objective = TrainingObjective(model, ObjectiveConfig(mtp=3, action_weight=0.5, gap_weight=0.5))
    batch = training_batch(_rows(4), np.array([12, 9, 5, 2]), model.tokenizer, 12, 3)
    loss, parts = objective(batch)
    assert set(parts) == {"item@1", "item@2", "item@3", "action", "gap"}
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_sampled_candidates_hold_every_target_and_correct_for_sampling():
    targets = torch.tensor([[3, -1], [7, 3]])
    prob = torch.full((100,), 0.01)
    cands = choose_candidates(targets, 100, "sampled", 20, prob, torch.Generator().manual_seed(0))
    assert {3, 7} <= set(cands.ids.tolist()) and torch.equal(cands.ids, cands.ids.sort().values)
    # expected occurrences: 3 in-batch positives x 1% + 20 uniform draws / 100 items
    assert torch.allclose(cands.logq, torch.log(torch.tensor(3 * 0.01 + 0.2)).expand_as(cands.logq))
    full = choose_candidates(targets, 100, "full", 20, None)
    assert full.logq is None and len(full.ids) == 100


def _hand_cross_entropy(queries, emb, ids, logq, targets, smoothing=0.0):
    """Cross-entropy computed one query at a time, over the candidate ids in the order given."""
    losses = []
    for q, target in zip(queries, targets, strict=True):
        logits = torch.stack([q @ emb[i] - (0.0 if logq is None else logq[j]) for j, i in enumerate(ids)])
        log_p = logits - torch.logsumexp(logits[torch.isfinite(logits)], 0)
        real = log_p[torch.isfinite(log_p)]
        losses.append(-(1 - smoothing) * log_p[ids.tolist().index(int(target))] - smoothing * real.mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("logq", [True, False])
def test_sampled_softmax_over_a_candidate_subset_is_the_hand_computed_cross_entropy(logq):
    torch.manual_seed(0)
    n = 40
    queries, emb = torch.randn(5, 8), torch.randn(n, 8)
    targets = torch.tensor([[31, 7, 31, 12, 38]])
    prob = torch.linspace(1, 10, n)
    prob = prob / prob.sum()  # non-uniform: popular items are sampled more, so logQ must lower their logits
    cands = choose_candidates(targets, n, "sampled", 6, prob if logq else None, torch.Generator().manual_seed(1))
    assert len(cands.ids) < n and not cands.full
    got, count = next_item_loss(queries, targets[0], emb[cands.ids], cands)
    expected = _hand_cross_entropy(queries, emb, cands.ids, cands.logq, targets[0])
    assert count == 5 and torch.allclose(got, expected, atol=1e-5)
    if logq:  # the sign: the more often an item is sampled (higher id here), the more its logit is lowered
        assert torch.all(cands.logq[1:] > cands.logq[:-1])
        assert not torch.allclose(got, _hand_cross_entropy(queries, emb, cands.ids, None, targets[0]))


def test_the_fused_cross_entropy_has_torch_s_loss_and_gradients():
    torch.manual_seed(0)
    queries, emb = torch.randn(7, 8, requires_grad=True), torch.randn(25, 8, requires_grad=True)
    targets = torch.tensor([0, 24, 3, 3, 11, 24, 9])
    got, _ = next_item_loss(queries, targets, emb, choose_candidates(targets[None], 25, "full", 1, None))
    (2 * got).backward()
    grads = queries.grad.clone(), emb.grad.clone()
    queries.grad = emb.grad = None
    expected = torch.nn.functional.cross_entropy(queries @ emb.T, targets)
    (2 * expected).backward()
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(grads[0], queries.grad, atol=1e-6) and torch.allclose(grads[1], emb.grad, atol=1e-6)


def test_label_smoothing_spreads_mass_over_real_candidates_only():
    torch.manual_seed(0)
    queries, emb = torch.randn(4, 8), torch.randn(20, 8)
    targets = torch.tensor([3, 8, 3, 17])
    full = choose_candidates(targets[None], 20, "full", 1, None)
    got, _ = next_item_loss(queries, targets, emb, full, label_smoothing=0.1)
    assert torch.allclose(got, torch.nn.functional.cross_entropy(queries @ emb.T, targets, label_smoothing=0.1))
    # items excluded with an infinite logQ (no training events) take no share of the smoothed mass
    blocked = Candidates(full.ids, torch.where(torch.arange(20) % 5 == 4, torch.inf, 0.0), full=True)
    got, _ = next_item_loss(queries, targets, emb, blocked, label_smoothing=0.1)
    assert torch.isfinite(got)
    assert torch.allclose(got, _hand_cross_entropy(queries, emb, full.ids, blocked.logq, targets, 0.1), atol=1e-5)


def test_training_windows_cover_every_target_once():
    import pyarrow as pa

    from recfm.platform.train.data import training_windows

    items = [list(range(100, 110)), [7, 8], [5]]
    table = pa.table({"user": pa.array([0, 1, 2], pa.int32()), "item": pa.array(items),
                      "n_train": pa.array([9, 2, 1], pa.int32())})
    table = pa.concat_tables([table.slice(0, 1), table.slice(1)])  # chunked, as Parquet reads give
    windows = training_windows(table, max_len=3).to_pylist()
    assert all(len(w["item"]) == w["n_train"] <= 4 for w in windows)
    targets = sorted((w["user"], i) for w in windows for i in w["item"][1:])
    # every event of the training prefix but each user's first is a target exactly once; user 2 has none
    assert targets == [(0, i) for i in range(101, 109)] + [(1, 8)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_worker_gets_as_many_batches_and_the_shares_split_the_rows(world):
    import pyarrow as pa

    from recfm.platform.train.data import epoch_batches

    table = pa.table({"row": np.arange(103)})

    def rows(batch: dict) -> list[int]:  # the collate: the row numbers as they came
        return batch["row"].tolist()

    for seed in (1, 2):  # training: a fresh permutation, full batches only, disjoint across workers
        shares = [list(epoch_batches(table, rank, world, 8, rows, seed)) for rank in range(world)]
        assert {len(s) for s in shares} == {103 // (world * 8)} and all(len(b) == 8 for s in shares for b in s)
        seen = [r for s in shares for b in s for r in b]
        assert len(seen) == len(set(seen)) == 8 * world * (103 // (world * 8))
    # each epoch its own order
    assert list(epoch_batches(table, 0, world, 8, rows, 1)) != list(epoch_batches(table, 0, world, 8, rows, 2))
    # validation: consecutive equal shares in order, the last batch partial, fewer than `world` rows left over
    shares = [list(epoch_batches(table, rank, world, 8, rows)) for rank in range(world)]
    assert len({len(s) for s in shares}) == 1
    assert [r for s in shares for b in s for r in b] == list(range(103 - 103 % world))
