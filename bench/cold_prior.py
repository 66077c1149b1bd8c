"""How a cold-start run's content-only items are best lifted against known ones, measured without retraining.

    .venv/bin/python bench/cold_prior.py RUN_DIR     # a `bench/cold_start.py` run of "recfm-FM, ID + content"

Scores every validation request with the run's best checkpoint and every test request with its refit (as
`recfm train` does), once, then ranks them again under each way of lifting the items the model has no trained
ID for:
- constant: the new-item prior `recfm` uses (`eval.new_item_boosts`), the same lift for every such item;
- content popularity: the constant plus beta times a per-item prior, a ridge regression from the text vector to
  the log popularity (all time, or the last 365 days before the cutoff) of the titles the model knows,
  standardised;
- per-user matching: each user's content-only scores mapped onto the mean and spread of their known-item
  scores, plus a constant.
Prints validation NDCG@10 on known-item targets (what `recfm train`'s rule compares with the best baseline's;
its change against no lift) and the test's warm NDCG@10 and cold HR@50 / NDCG@50, the figures of the
cold-start table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from recfm.data.dataset import Sequences
from recfm.data.pipeline import ensure_prepared
from recfm.data.prepare import cold_items
from recfm.platform.config import load_config
from recfm.platform.evaluation.fm_scorer import FoundationScorer
from recfm.platform.evaluation.harness import evaluation_requests, masked_scores
from recfm.platform.train.job import _load_model
from recfm.ranking.metrics import RankingMetrics, rank_metrics, target_ranks

CHUNK = 2048


def scored(scorer: FoundationScorer, seqs: Sequences, stage: str, seed: int, max_targets: int):
    """[requests, items] scores with each request's history at -inf, and the targets."""
    scorer.fit(seqs, stage)
    users, prefixes = evaluation_requests(seqs, stage, seed, max_targets)
    out = torch.empty(len(users), seqs.n_items)
    for start, scores in masked_scores(scorer, seqs, users, prefixes, CHUNK):
        out[start:start + len(scores)] = scores
    return out, torch.from_numpy(seqs.request_targets(users, prefixes).astype(np.int64))


def ranks(scores: torch.Tensor, targets: torch.Tensor, lift: torch.Tensor, tie_order: torch.Tensor) -> np.ndarray:
    """0-based rank of each target once `lift` [items] is added to every row (ties broken as the harness does)."""
    return torch.cat([target_ranks(scores[s:s + CHUNK] + lift, targets[s:s + CHUNK], tie_order)
                      for s in range(0, len(targets), CHUNK)]).numpy()


def matched(scores: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Each row's scores of `new` items moved onto the mean and spread of its other items' scores."""
    out = scores.clone()
    for s in range(0, len(out), CHUNK):
        x = out[s:s + CHUNK]
        finite = torch.isfinite(x)

        def moments(group: torch.Tensor, x=x, finite=finite):
            m = finite & group[None, :]
            n = m.sum(1, keepdim=True).clamp(min=1)
            mean = torch.where(m, x, 0.0).sum(1, keepdim=True) / n
            spread = (torch.where(m, (x - mean) ** 2, 0.0).sum(1, keepdim=True) / n).sqrt().clamp(min=1e-6)
            return mean, spread

        (mk, sk), (mn, sn) = moments(~new), moments(new)
        out[s:s + CHUNK] = torch.where(new[None, :], (x - mn) / sn * sk + mk, x)
    return out


def popularity_prior(seqs: Sequences, vectors: np.ndarray, known: np.ndarray, stage: str, days: float) -> np.ndarray:
    """Standardised ridge prediction of log(1 + events in the last `days` before `stage`'s cutoff) from text."""
    mask = seqs.known_mask(stage)
    ts = seqs.events["ts"]
    recent = mask & (ts > ts[mask].max() - days * 86_400)
    y = np.log1p(np.bincount(seqs.events["item"][recent], minlength=seqs.n_items))
    x = vectors[known] - vectors[known].mean(0)
    w = np.linalg.solve(x.T @ x + 10.0 * np.eye(x.shape[1]), x.T @ (y[known] - y[known].mean()))
    pred = (vectors - vectors[known].mean(0)) @ w
    return (pred - pred[known].mean()) / pred[known].std()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    run = args.run
    cfg = load_config(str(run / "config.yaml"), [])
    seqs = Sequences.load(ensure_prepared(cfg.data, lambda _: None))
    spec = json.loads((run / "model.json").read_text())
    final, best = (_load_model(run / name, spec, cfg) for name in ("final_checkpoint", "best_checkpoint"))
    scorer = FoundationScorer(final, val_model=best)
    vectors = np.load(run / "item_content.npz")["vectors"]
    val = scored(scorer, seqs, "val", cfg.eval.seed, cfg.eval.val_targets)
    test = scored(scorer, seqs, "test", cfg.eval.seed, 0)
    known = {"val": best.content.has_id.numpy(), "test": final.content.has_id.numpy()}
    warm_val = known["val"][val[1].numpy()]
    cold = np.isin(test[1].numpy(), cold_items(seqs.directory))
    new = {stage: torch.from_numpy(~k) for stage, k in known.items()}
    # the harness's tie order (a fixed random permutation of the items, seeded by eval.seed)
    tie_order = RankingMetrics(seqs.n_items, [10], np.zeros(seqs.n_items), seed=cfg.eval.seed).tie_order
    reference = rank_metrics(ranks(*val, torch.zeros(seqs.n_items), tie_order)[warm_val], [10])["NDCG@10"]
    print(f"validation NDCG@10 on known-item targets with no lift: {reference:.4f}; test: {len(cold):,} targets, "
          f"{int(cold.sum()):,} on cold items\n")
    print("| lift | validation NDCG@10, known | vs no lift | test warm NDCG@10 | test cold HR@50 | test cold NDCG@50 |")
    print("|---|---:|---:|---:|---:|---:|")

    def row(label: str, lifts: dict, val_scores=val, test_scores=test) -> None:
        rv = ranks(*val_scores, lifts["val"].float(), tie_order)
        rt = ranks(*test_scores, lifts["test"].float(), tie_order)
        v = rank_metrics(rv[warm_val], [10])["NDCG@10"]
        warm, cold_m = rank_metrics(rt[~cold], [10]), rank_metrics(rt[cold], [50])
        print(f"| {label} | {v:.4f} | {v / reference - 1:+.1%} | {warm['NDCG@10']:.4f} | "
              f"{cold_m['HR@50']:.4f} | {cold_m['NDCG@50']:.4f} |", flush=True)

    for b in (0.0, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0):
        row(f"constant {b:g}", {s: new[s] * b for s in new})
    for days, name in ((365, "last 365 days"), (1e6, "all time")):
        prior = {s: torch.from_numpy(popularity_prior(seqs, vectors, known[s], s, days)) for s in new}
        for beta in (0.25, 0.5, 1.0):
            for b in (0.0, 1.0, 1.5, 2.0):
                row(f"constant {b:g} + {beta:g} x content popularity ({name})",
                    {s: new[s] * (b + beta * prior[s]) for s in new})
    val_m, test_m = (matched(val[0], new["val"]), val[1]), (matched(test[0], new["test"]), test[1])
    for b in (-2.0, -1.0, -0.5, 0.0, 0.5):
        row(f"per-user matching {b:+g}", {s: new[s] * b for s in new}, val_m, test_m)


if __name__ == "__main__":
    main()
