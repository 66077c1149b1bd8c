"""Item content: the offline text encoder and its cache, semantic IDs, and the FM's content-aware item vectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from recfm.data.content import DIM, ContentCache, item_texts
from recfm.fm.batching import inference_batch, training_batch
from recfm.fm.config import ModelConfig
from recfm.fm.model import UserFoundationModel
from recfm.fm.semantic_ids import assign_codes, fit_residual_kmeans
from recfm.fm.tokens import EventTokenizer, Facet

# Encodes with every socket connection refused and an empty Hugging Face home: if loading the encoder or
# encoding reached for the network (or a hub download cache), it would fail here.
_OFFLINE_SCRIPT = """
import json, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network access attempted")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
from recfm.data.content import ContentCache
texts = ["Toy Story (1995). Adventure, Animation, Children, Comedy",
         "Toy Story 2 (1999). Adventure, Animation, Children, Comedy",
         "Heat (1995). Action, Crime, Thriller"]
vectors, encoded = ContentCache(sys.argv[1]).encode(texts, progress=False, log=lambda _: None)
print(json.dumps({"shape": list(vectors.shape), "encoded": encoded, "norms": vectors.__pow__(2).sum(1).tolist(),
                  "toy2_toy": float(vectors[0] @ vectors[1]), "toy2_heat": float(vectors[1] @ vectors[2])}))
"""


def test_the_encoder_runs_with_no_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, str(tmp_path / "cache")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["shape"] == [3, DIM] and out["encoded"] == 3
    assert np.allclose(out["norms"], 1.0, atol=1e-4)
    assert out["toy2_toy"] > out["toy2_heat"] + 0.2  # the text's meaning, not noise
    assert not (tmp_path / "hf-home" / "hub").exists()  # nothing was fetched into a hub cache


def test_vectors_are_cached_by_text(tmp_path):
    texts = ["Alien (1979). Horror, Sci-Fi", "Aliens (1986). Action, Horror, Sci-Fi"]
    first, encoded = ContentCache(tmp_path).encode(texts, progress=False, log=lambda _: None)
    assert encoded == 2
    again, encoded = ContentCache(tmp_path).encode(texts[::-1] + ["Alien 3 (1992). Horror"], progress=False,
                                                   log=lambda _: None)
    assert encoded == 1  # only the new text, from a fresh cache object reading the file
    assert np.array_equal(again[:2], first[::-1])


def test_item_text_reads_title_year_genres_and_tags():
    texts = item_texts(["Heat", "Untitled"], np.array([1995, 0]), [["Action", "Crime"], []],
                       [["pacino", "de niro", "pacino"], []])
    assert texts == ["Heat (1995). Action, Crime. pacino, de niro", "Untitled"]


def test_residual_kmeans_codes_share_prefixes_within_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 5
    vectors = (centres[np.repeat(np.arange(4), 50)] + rng.normal(size=(200, 16))).astype(np.float32)
    centroids = fit_residual_kmeans(vectors, levels=3, codes=4)
    codes = assign_codes(vectors, centroids)
    assert centroids.shape == (3, 4, 16) and codes.shape == (200, 3)
    first = codes[:, 0].reshape(4, 50)
    assert all(len(set(row)) == 1 for row in first) and len(set(first[:, 0])) == 4  # level 1 finds the clusters
    # each level leaves less: reconstructing from more levels is closer
    errors = [np.linalg.norm(vectors - sum(centroids[k][codes[:, k]] for k in range(n + 1)), axis=1).mean()
              for n in range(3)]
    assert errors[0] > errors[1] > errors[2]


HOUR = 3600


def _content_model(id_dropout: float = 0.5, levels: int = 2, neighbours: int = 10,
                   vectors: np.ndarray | None = None) -> UserFoundationModel:
    tokenizer = EventTokenizer([Facet("item", 30), Facet("hour", 24)], 32, None)
    cfg = ModelConfig(dim=16, heads=2, layers=1, max_len=8, dropout=0.0, content=True, content_dim=12,
                      id_dropout=id_dropout, semantic_levels=levels, semantic_codes=4,
                      new_item_neighbours=neighbours)
    torch.manual_seed(0)
    model = UserFoundationModel(cfg, tokenizer)
    if vectors is None:
        vectors = np.random.default_rng(0).normal(size=(30, 12)).astype(np.float32)
    has_id = np.arange(30) < 25  # items 25..29 are cold: no training events
    model.content.load(vectors, has_id, fit_residual_kmeans(vectors, levels, 4) if levels else None)
    return model


def _rows(items: list[int]) -> dict[str, list[np.ndarray]]:
    return {"item": [np.array(items)], "ts": [np.arange(len(items)) * HOUR + 1_600_000_000],
            "value": [np.full(len(items), np.nan, np.float32)]}


def test_a_cold_item_borrows_an_id_and_a_warm_one_has_its_own():
    model = _content_model().eval()
    ids = model.embeddings.embeddings["t_item"].weight
    with torch.no_grad():
        table = model.item_table()
        new_titles = model.items_from_content(model.content.vectors)
        own = model.content(torch.arange(25), ids[:25], torch.zeros(25, dtype=torch.bool), None)
    assert torch.allclose(table[25:], new_titles[25:], atol=1e-6)  # cold: what a title added later would get
    assert torch.allclose(table[:25], own, atol=1e-6)
    # the history reads the same vectors as the catalog scored
    with torch.no_grad():
        a = model(inference_batch(_rows([3, 27, 5]), np.array([3]), model.tokenizer, 8)).user
        model.content.vectors[27] += 1.0  # change the cold item's text: the user vector follows
        b = model(inference_batch(_rows([3, 27, 5]), np.array([3]), model.tokenizer, 8)).user
    assert not torch.allclose(a, b)


def test_the_id_is_borrowed_from_the_items_with_the_nearest_text():
    vectors = np.random.default_rng(0).normal(size=(30, 12)).astype(np.float32)
    vectors[27] = vectors[3]  # a cold title that reads exactly like warm item 3
    model = _content_model(neighbours=1, levels=0, vectors=vectors).eval()
    ids = model.embeddings.embeddings["t_item"].weight
    with torch.no_grad():
        table = model.item_table()
    torch.testing.assert_close(table[27], table[3])  # same text, and item 3's ID
    # with more neighbours, a softmax over their cosines: the identical text dominates at a low temperature
    model = _content_model(neighbours=5, levels=0, vectors=vectors).eval()
    with torch.no_grad():
        table, ids = model.item_table(), model.embeddings.embeddings["t_item"].weight
        warm = torch.nn.functional.normalize(model.content.vectors[:25], dim=-1)
        cosine = warm @ torch.nn.functional.normalize(model.content.vectors[27], dim=-1)
        top = cosine.topk(5)
        expected = (torch.softmax(top.values / 0.05, 0)[:, None] * ids[top.indices]).sum(0)
    torch.testing.assert_close(table[27] - model.content.project(model.content.vectors[27]), expected)
    # and with borrowing off, every cold item gets the one learned "no ID" vector
    model = _content_model(neighbours=0, levels=0, vectors=vectors).eval()
    with torch.no_grad():
        table = model.item_table()
        content = model.content.project(model.content.vectors)
    torch.testing.assert_close(table[25:] - content[25:], model.content.no_id.expand(5, -1))


def test_a_dropped_id_is_borrowed_in_training_and_its_lender_learns():
    vectors = np.random.default_rng(0).normal(size=(30, 12)).astype(np.float32)
    vectors[4] = vectors[3]  # warm items 3 and 4 read alike: each other's nearest
    model = _content_model(id_dropout=0.99, neighbours=1, levels=0, vectors=vectors).train()
    ids = model.embeddings.embeddings["t_item"].weight
    batch = training_batch(_rows([1, 2, 3, 5, 6, 7, 8, 9]), np.array([8]), model.tokenizer, 8, 1)
    torch.manual_seed(0)
    out = model(batch, torch.tensor([3]))
    with torch.no_grad():
        expected = ids[4] + model.content.project(model.content.vectors[3])
    torch.testing.assert_close(out.candidate_emb[0], expected)  # item 3 dropped (p=0.99), item 4's ID in its place
    (out.hidden[0, :-1] @ out.candidate_emb.T).sum().backward()
    grad = ids.grad.to_dense() if ids.grad.is_sparse else ids.grad
    assert grad[4].abs().sum() > 0


def test_id_dropout_acts_in_training_only():
    model = _content_model(id_dropout=0.5)
    batch = training_batch(_rows([1, 2, 3, 4, 5, 6, 7, 8]), np.array([8]), model.tokenizer, 8, 1)
    torch.manual_seed(1)
    model.train()
    train_a, train_b = model(batch).hidden, model(batch).hidden
    model.eval()
    eval_a, eval_b = model(batch).hidden, model(batch).hidden
    assert not torch.allclose(train_a, train_b)  # different IDs dropped each time
    assert torch.equal(eval_a, eval_b)


@pytest.mark.parametrize("levels", [0, 2])
def test_content_parts_learn(levels):
    model = _content_model(levels=levels).train()
    batch = training_batch(_rows([1, 2, 26, 4, 5, 28, 7, 8]), np.array([8]), model.tokenizer, 8, 1)
    out = model(batch, torch.arange(30))
    loss = (out.hidden[0, :-1] @ out.candidate_emb.T).logsumexp(-1).mean()
    loss.backward()
    assert model.content.project.weight.grad.abs().sum() > 0
    ids = model.embeddings.embeddings["t_item"].weight
    lenders = model.content.neighbour_ids(torch.tensor([26, 28]))  # cold items 26 and 28 are in the batch
    grad = ids.grad.to_dense() if ids.grad.is_sparse else ids.grad
    assert grad[lenders].abs().sum() > 0
    if levels:
        assert model.content.semantic.weight.grad.abs().sum() > 0


def test_items_without_training_events_are_not_trained_against():
    """A cold item is never a negative: training does not read its content at all (a title added after training
    was not in the catalog either), with the full and with the sampled softmax."""
    from recfm.fm.config import ObjectiveConfig
    from recfm.fm.objectives import TrainingObjective

    for loss in ("full", "sampled"):
        model = _content_model(id_dropout=0.0).train()
        objective = TrainingObjective(model, ObjectiveConfig(loss=loss, negatives=200))
        batch = training_batch(_rows([1, 2, 3, 4, 5, 6, 7, 8]), np.array([8]), model.tokenizer, 8, 1)
        torch.manual_seed(0)
        objective.generator.manual_seed(0)
        before, _ = objective(batch)
        with torch.no_grad():
            model.content.vectors[25:] += 5.0  # the cold items' text changes
        torch.manual_seed(0)
        objective.generator.manual_seed(0)
        after, _ = objective(batch)
        assert torch.allclose(before, after), loss
        with torch.no_grad():
            model.content.vectors[10] += 5.0  # a warm item's does matter
        torch.manual_seed(0)
        objective.generator.manual_seed(0)
        changed, _ = objective(batch)
        assert not torch.allclose(before, changed), loss
