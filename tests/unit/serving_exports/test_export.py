"""Distillation and export parts in one process: the dense copy of an FM, the serving graph's own tokenizing,
torch.export and ONNX agreeing with eager, and the distillation objective's gradients."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from recfm.fm.batching import inference_batch, rows_from_arrays
from recfm.fm.config import ModelConfig
from recfm.fm.model import UserFoundationModel
from recfm.fm.semantic_ids import fit_residual_kmeans
from recfm.fm.tokens import EventTokenizer, Facet
from recfm.serving_exports.dense import DenseSequenceModel
from recfm.serving_exports.distill import DistillationObjective
from recfm.serving_exports.export import write_programs
from recfm.serving_exports.serving import ServingModel, serving_inputs

MAX_LEN = 8
TOKENIZER = EventTokenizer([Facet("item", 50), Facet("action", 3), Facet("hour", 24), Facet("day", 7),
                            Facet("gap", 32), Facet("engagement", 5)], gap_buckets=32, value_edges=[1.5, 2.5, 3.5])
# the same inputs, and each request's hour, day, gap and device as its context
CONTEXT_TOKENIZER = EventTokenizer(TOKENIZER.facets, 32, [1.5, 2.5, 3.5],
                                   [Facet("hour", 24), Facet("day", 7), Facet("gap", 32), Facet("device", 3)])


def _events(users: int = 40, seed: int = 0):
    """Random histories with gaps from seconds to years (every gap bucket), ratings and missing values."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 20, users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    gaps = (2.0 ** rng.uniform(0, 30, n)).astype(np.int64)
    ts = 1_500_000_000 + np.concatenate([np.cumsum(gaps[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    value = rng.choice([1.0, 1.5, 2.0, 3.5, 4.0, np.nan], n)
    events = {"item": rng.integers(0, 50, n), "action": rng.integers(0, 3, n), "ts": ts, "value": value,
              "device": rng.integers(0, 3, n)}
    return offsets, events, lengths


def _fm(content: bool = False, context: bool = False) -> UserFoundationModel:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, layers=2, heads=2, max_len=MAX_LEN, dropout=0.0, item_init_std=0.5, content=content,
                      content_dim=12, semantic_levels=2 if content else 0, semantic_codes=4)
    fm = UserFoundationModel(cfg, CONTEXT_TOKENIZER if context else TOKENIZER)
    if context:  # a trained mix: the context changes the scores (an untrained one starts at zero)
        torch.nn.init.normal_(fm.request_context.mix[-1].weight, std=0.5)
        for table in fm.request_context.tables.values():
            torch.nn.init.normal_(table.weight)
    if content:  # text vectors, semantic IDs, and a few cold items (content alone)
        vectors = np.random.default_rng(1).normal(size=(fm.n_items, 12)).astype(np.float32)
        fm.content.load(vectors, np.arange(fm.n_items) % 5 > 0, fit_residual_kmeans(vectors, 2, 4))
    return fm.eval()


def _reference(model, offsets, events, users, known):
    batch = inference_batch(rows_from_arrays(offsets, events, users), known, model.tokenizer, MAX_LEN,
                            next_context=True)
    with torch.no_grad():
        return model.score_items(batch)


@pytest.mark.parametrize(("content", "context"), [(False, False), (True, False), (False, True)])
def test_the_dense_copy_and_the_serving_graph_score_as_the_fm_does(content, context):
    fm = _fm(content, context)
    dense = DenseSequenceModel.from_foundation(fm)
    serving = ServingModel(dense)
    offsets, events, lengths = _events()
    users = np.arange(len(lengths))
    known = np.maximum(1, lengths - np.arange(len(lengths)) % 3)  # full histories and shorter prefixes
    expected = _reference(fm, offsets, events, users, known)
    assert float((_reference(dense, offsets, events, users, known) - expected).abs().max()) < 1e-5
    arrays = serving_inputs(serving.names, offsets, events, users, known, MAX_LEN, next_context=True)
    assert (arrays["prev_ts"] >= 0).any() and (arrays["prev_ts"] < 0).any()  # windows cut and whole
    if context:  # requests with a next event (its context known) and without (not known)
        assert (arrays["request_ts"] >= 0).any() and (arrays["request_ts"] < 0).any()
        blind = _reference_without_context(fm, offsets, events, users, known)  # every context not known
        assert not torch.allclose(expected[known < lengths], blind[known < lengths], atol=1e-3)
        assert torch.allclose(expected[known == lengths], blind[known == lengths], atol=1e-6)
    with torch.no_grad():
        scores, _ = serving(*(torch.from_numpy(arrays[n]) for n in serving.names))
    assert float((scores - expected).abs().max()) < 1e-5  # the in-graph tokens are recfm's tokens


def _reference_without_context(model, offsets, events, users, known):
    batch = inference_batch(rows_from_arrays(offsets, events, users), known, model.tokenizer, MAX_LEN)
    with torch.no_grad():
        return model.score_items(batch)


@pytest.mark.parametrize("context", [False, True])
def test_torch_export_and_onnx_agree_with_eager_for_any_batch_and_length(tmp_path, context):
    serving = ServingModel(DenseSequenceModel.from_foundation(_fm(context=context)))
    offsets, events, lengths = _events(seed=1)
    names = serving.names
    example = serving_inputs(names, offsets, events, np.arange(4), lengths[:4], MAX_LEN)
    write_programs(serving, tuple(torch.from_numpy(example[n]) for n in names), MAX_LEN, tmp_path)
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for users, known in ((np.array([5]), np.array([1])), (np.arange(10, 40), np.minimum(lengths[10:40], 3)),
                         (np.arange(40), lengths)):
        arrays = serving_inputs(names, offsets, events, users, known, MAX_LEN, next_context=True)
        tensors = [torch.from_numpy(arrays[n]) for n in names]
        with torch.no_grad():
            eager = serving(*tensors)[0]
            exported = program(*tensors)[0]
        onnx = torch.from_numpy(session.run(["scores"], arrays)[0])
        assert torch.equal(exported, eager)
        assert float((onnx - eager).abs().max()) <= 1e-4


@pytest.mark.parametrize("candidates", [0, 20])
def test_distillation_trains_the_student_only(candidates):
    offsets, events, lengths = _events(seed=2)
    from recfm.fm.batching import training_batch

    batch = training_batch(rows_from_arrays(offsets, events, np.arange(16)), lengths[:16], TOKENIZER, MAX_LEN, 1)
    teacher = DenseSequenceModel.from_foundation(_fm())
    student = DenseSequenceModel(ModelConfig(dim=8, layers=1, heads=1, max_len=MAX_LEN, dropout=0.0), TOKENIZER)
    objective = DistillationObjective(student, teacher, temperature=2.0, hard_weight=0.5, repr_weight=0.1,
                                      candidates=candidates)
    loss, parts = objective(batch)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"soft", "hard", "repr"} and parts["soft"] >= 0
    assert student.tables["item"].weight.grad is not None and objective.project.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # a student that is the teacher has nothing left to learn from it
    same = DistillationObjective(DenseSequenceModel.from_foundation(_fm()), teacher, 2.0, 0.0, 0.0, candidates)
    assert same(batch)[1]["soft"] < 1e-6
