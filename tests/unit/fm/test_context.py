"""Request context: the facets of the predicted event known before its item, in batches and in the query."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recfm.fm.batching import inference_batch, training_batch
from recfm.fm.config import ModelConfig, ObjectiveConfig
from recfm.fm.model import UserFoundationModel
from recfm.fm.objectives import TrainingObjective
from recfm.fm.tokens import EventTokenizer, Facet

HOUR = 3600
ITEMS = 40


def _tokenizer(context: bool = True) -> EventTokenizer:
    return EventTokenizer([Facet("item", ITEMS), Facet("hour", 24)], 32, None,
                          [Facet("hour", 24), Facet("gap", 32), Facet("device", 3)] if context else [])


def _rows(users: int = 3, length: int = 10, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    rows = {"item": [], "ts": [], "value": [], "device": []}
    for _ in range(users):
        rows["item"].append(rng.integers(0, ITEMS, length))
        rows["ts"].append(np.cumsum(rng.integers(1, 30 * HOUR, length)) + 1_600_000_000)
        rows["value"].append(np.full(length, np.nan, np.float32))
        rows["device"].append(rng.integers(1, 3, length))
    return rows


def test_tokenizer_context_is_the_request_time_facets_the_data_has():
    tok = EventTokenizer.from_data(["item"], 10, {"device": ["", "tv", "mobile"], "action": ["", "a", "b"]},
                                   True, np.zeros(0), context=["all"])
    assert tok.names == ["item"]
    assert tok.context_names == ["hour", "day", "gap", "device"]  # never the action: it is an outcome
    assert EventTokenizer.from_dict(tok.to_dict()).context_names == tok.context_names
    with pytest.raises(ValueError, match="model.context names \\['action'\\]"):
        EventTokenizer.from_data(["item"], 10, {"action": ["", "a", "b"]}, True, np.zeros(0), context=["action"])
    beauty = EventTokenizer.from_data(["item"], 10, {}, False, np.zeros(0), context=["all"])
    assert beauty.context == []  # no real time and no categorical facets: nothing is known ahead


def test_each_training_position_gets_the_context_of_the_event_it_predicts():
    rows = _rows()
    tok = _tokenizer()
    known = np.array([10, 6, 2])
    batch = training_batch(rows, known, tok, max_len=12, mtp=1)
    ids = tok.tokenize({c: np.concatenate(v) for c, v in rows.items()}, np.full(3, 10))
    for u in range(3):
        for t in range(int(batch.lengths[u])):
            event = u * 10 + t + 1
            assert int(batch.context["device"][u, t]) == ids["device"][event] + 1
            assert int(batch.context["hour"][u, t]) == ids["hour"][event] + 1
            assert int(batch.context["gap"][u, t]) == ids["gap"][event] + 1
        assert (batch.context["device"][u, int(batch.lengths[u]):] == 0).all()  # no target, nothing known


def test_inference_reads_the_targets_context_only_when_asked_and_never_its_item():
    rows = _rows()
    tok = _tokenizer()
    known = np.array([4, 9, 10])  # the last user has no event after the history
    plain = inference_batch(rows, known, tok, max_len=12)
    asked = inference_batch(rows, known, tok, max_len=12, next_context=True)
    for name in ("item", "hour"):
        assert torch.equal(plain.features[name], asked.features[name])
    assert torch.equal(plain.lengths, asked.lengths) and plain.lengths.tolist() == [4, 9, 10]
    assert all((v == 0).all() for v in plain.context.values())
    ids = tok.tokenize({c: np.concatenate(v) for c, v in rows.items()}, np.full(3, 10))
    assert asked.context["device"].tolist() == [ids["device"][4] + 1, ids["device"][19] + 1, 0]
    assert asked.context["gap"].tolist() == [ids["gap"][4] + 1, ids["gap"][19] + 1, 0]


def _model(context: bool, dim: int = 16) -> UserFoundationModel:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=dim, heads=2, layers=1, max_len=12, dropout=0.0, content=False, context_dropout=0.0)
    return UserFoundationModel(cfg, _tokenizer(context))


def test_an_untrained_context_mix_is_the_context_free_model_and_context_changes_only_the_query():
    with_context, without = _model(True), _model(False)
    without.load_state_dict(with_context.state_dict(), strict=False)
    batch = inference_batch(_rows(), np.array([4, 9, 9]), with_context.tokenizer, 12, next_context=True)
    assert torch.allclose(with_context.eval().user_vectors(batch), without.eval().user_vectors(batch), atol=1e-6)
    torch.nn.init.normal_(with_context.request_context.mix[-1].weight)
    changed = with_context.user_vectors(batch)
    assert not torch.allclose(changed, without.user_vectors(batch))
    hidden = with_context(batch).user  # the history's representation does not read the context
    assert torch.allclose(hidden, without(batch).user, atol=1e-6)


def _context_data(users: int, length: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Each event's item is set by its device alone (device d -> items 10 d .. 10 d + 9), histories random."""
    rng = np.random.default_rng(seed)
    rows = _rows(users, length, seed)
    rows["device"] = [rng.integers(1, 3, length) for _ in range(users)]
    rows["item"] = [10 * (d - 1) + rng.integers(0, 10, length) for d in rows["device"]]
    return rows


def _trained_hits(context: bool) -> float:
    """Share of held-out next events whose item lies in the context's ten items' top 10 of the scores."""
    model = _model(context, dim=32).train()
    objective = TrainingObjective(model, ObjectiveConfig())
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):  # fresh users every step: nothing to memorise, only the rule to learn
        loss, _ = objective(training_batch(_context_data(64, 12, seed=step), np.full(64, 12), model.tokenizer, 12, 1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test = _context_data(200, 12, seed=10_000)
    with torch.no_grad():
        scores = model.eval().score_items(inference_batch(test, np.full(200, 11), model.tokenizer, 12, True))
    targets = np.array([items[11] for items in test["item"]])
    top = scores.topk(10).indices.numpy()
    return float(np.mean([t in row for t, row in zip(targets, top, strict=True)]))


def test_the_context_aware_model_learns_what_only_the_context_says():
    """The next item depends on the device it is watched on only: a context-free model can at best spread its top
    10 over both devices' items (about half the hits); the context-aware one puts the right ten on top."""
    assert _trained_hits(context=True) > 0.9
    assert _trained_hits(context=False) < 0.7


def test_a_requests_context_is_coded_as_the_target_events_own():
    """`request_context` (a live request: its time, the user's latest event, its device) gives the ids that
    evaluation reads from the target event itself."""
    rows = _rows()
    tok = EventTokenizer([Facet("item", ITEMS)], 32, None,
                         [Facet("hour", 24), Facet("day", 7), Facet("gap", 32), Facet("device", 3)])
    known = np.array([0, 5, 9])
    from_target = inference_batch(rows, known, tok, max_len=12, next_context=True).context
    ts = np.array([rows["ts"][u][k] for u, k in enumerate(known)])
    previous = np.array([rows["ts"][u][k - 1] if k else -1 for u, k in enumerate(known)])
    device = np.array([rows["device"][u][k] for u, k in enumerate(known)])
    live = tok.request_context(ts, previous, {"device": device})
    for name in tok.context_names:
        assert from_target[name].tolist() == live[name].tolist(), name
    assert live["gap"][0] == 1  # no previous event: bucket 0, + 1
    assert (tok.request_context(ts, previous)["device"] == 0).all()  # a code not given is not known
