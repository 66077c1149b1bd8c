"""The results table: every model beside the baselines, as markdown and JSON."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recfm.data.prepare import PreparedInfo
from recfm.platform.evaluation.harness import ModelResult
from recfm.ranking.metrics import rank_metrics
from recfm.run.files import RESULTS_JSON, RESULTS_MD


def markdown_table(results: list[ModelResult], ks: list[int]) -> str:
    columns = [f"{m}@{k}" for k in sorted(ks) for m in ("HR", "NDCG")] + ["MRR", "coverage@10", "pop_pct@10"]
    head = "| model | " + " | ".join(columns) + " | chosen on validation |"
    rule = "|---|" + "---:|" * len(columns) + "---|"
    rows = [head, rule]
    for r in results:
        values = " | ".join(_fmt(c, r.metrics[c]) for c in columns)
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.params.items())
        rows.append(f"| {r.name} | {values} | {params or '-'} |")
    return "\n".join(rows)


def cold_start_table(subsets: dict[str, dict[str, dict[str, float]]], warm: int, cold: int, items: int) -> str:
    """Each model on test targets that are warm items and on those that are held-out cold items."""
    rows = ["| model | warm HR@10 | warm NDCG@10 | cold HR@50 | cold NDCG@50 |", "|---|---:|---:|---:|---:|"]
    for name, s in subsets.items():
        w, c = s["warm"], s["cold"]
        rows.append(f"| {name} | {w['HR@10']:.4f} | {w['NDCG@10']:.4f} | {c.get('HR@50', float('nan')):.4f} | "
                    f"{c.get('NDCG@50', float('nan')):.4f} |")
    return ("\n".join(rows) + f"\n\nCold start: {items:,} items held out of training (every event on them before "
            f"the test cutoff removed); {warm:,} test targets on warm items, {cold:,} on cold ones, each ranked "
            f"over the full catalog.")


def _fmt(column: str, value: float) -> str:
    return f"{value:.1f}" if column == "pop_pct@10" else f"{value:.4f}"


def protocol_line(info: PreparedInfo, users: int) -> str:
    split = "leave-one-out" if info.split == "loo" else "global time cutoff"
    unit = "users" if info.split == "loo" else "targets (every event after the cutoff)"
    return (f"{info.source}: {split}, full ranking over {info.items:,} items (history excluded), "
            f"{users:,} test {unit}; coverage@10 = share of the catalog in any top-10, pop_pct@10 = mean "
            f"popularity percentile of recommended items (100 = most popular)")


def write_results(out: Path, results: list[ModelResult], info: PreparedInfo, ks: list[int],
                  notes: list[str] | None = None, cold: np.ndarray | None = None) -> str:
    """Writes results.json and results.md into `out`; returns the markdown. `cold` marks the test requests whose
    target is a held-out cold item: then a second table splits every model's figures into warm and cold."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    users = int(results[0].metrics["users"]) if results else 0
    text = markdown_table(results, ks) + "\n\n" + protocol_line(info, users) + "\n"
    subsets = {}
    if cold is not None:
        subsets = {r.name: {"warm": rank_metrics(r.ranks[~cold], ks), "cold": rank_metrics(r.ranks[cold], ks)}
                   for r in results}
        text += "\n" + cold_start_table(subsets, int((~cold).sum()), int(cold.sum()), info.cold_items) + "\n"
    text += "".join(f"\nNote: {n}\n" for n in notes or [])
    (out / RESULTS_MD).write_text(text)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": asdict(info) | {"params": None},
        "models": [{k: v for k, v in asdict(r).items() if k not in ("ranks", "val_ranks")} for r in results],
        "notes": notes or [],
        "warm_cold": subsets,
    }
    (out / RESULTS_JSON).write_text(json.dumps(payload, indent=2) + "\n")
    return text
