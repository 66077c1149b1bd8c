"""Results tables: every model beside the baselines, as markdown and JSON. `write_table` writes every table recfm
keeps (the FM's, the heads', the student's), `markdown` lays each out."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recfm.data.prepare import PreparedInfo
from recfm.platform.evaluation.harness import ModelResult
from recfm.ranking.metrics import rank_metrics
from recfm.run.files import RESULTS_JSON, RESULTS_MD, TEST_RANKS_FILE


def markdown(head: list[str], rows: list[list[str]], align: str) -> str:
    """A markdown table; `align` has one letter per column, l or r."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(head) + " |", rule] + ["| " + " | ".join(row) + " |" for row in rows])


def write_table(out: Path, text: str, payload: dict) -> str:
    """Writes a table's results.md (`text`) and results.json (`payload`, stamped with the time) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_MD).write_text(text)
    (out / RESULTS_JSON).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")} | payload,
                                               indent=2) + "\n")
    return text


def markdown_table(results: list[ModelResult], ks: list[int]) -> str:
    columns = [f"{m}@{k}" for k in sorted(ks) for m in ("HR", "NDCG")] + ["MRR", "coverage@10", "pop_pct@10"]
    rows = []
    for r in results:
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.params.items())
        rows.append([r.name] + [_fmt(c, r.metrics[c]) for c in columns] + [params or "-"])
    return markdown(["model", *columns, "chosen on validation"], rows, "l" + "r" * len(columns) + "l")


def cold_start_table(subsets: dict[str, dict[str, dict[str, float]]], warm: int, cold: int, items: int) -> str:
    """Each model on test targets that are warm items and on those that are held-out cold items."""
    rows = [[name, f"{s['warm']['HR@10']:.4f}", f"{s['warm']['NDCG@10']:.4f}",
             f"{s['cold'].get('HR@50', float('nan')):.4f}", f"{s['cold'].get('NDCG@50', float('nan')):.4f}"]
            for name, s in subsets.items()]
    head = ["model", "warm HR@10", "warm NDCG@10", "cold HR@50", "cold NDCG@50"]
    return (markdown(head, rows, "lrrrr") + f"\n\nCold start: {items:,} items held out of training (every event on "
            f"them before the test cutoff removed); {warm:,} test targets on warm items, {cold:,} on cold ones, each "
            f"ranked over the full catalog.")


def _fmt(column: str, value: float) -> str:
    return f"{value:.1f}" if column == "pop_pct@10" else f"{value:.4f}"


def protocol_line(info: PreparedInfo, users: int) -> str:
    split = "leave-one-out" if info.split == "loo" else "global time cutoff"
    unit = "users" if info.split == "loo" else "targets (every event after the cutoff)"
    return (f"{info.source}: {split}, full ranking over {info.items:,} items (history excluded), "
            f"{users:,} test {unit}; coverage@10 = share of the catalog in any top-10, pop_pct@10 = mean "
            f"popularity percentile of recommended items (100 = most popular)")


def write_results(out: Path, results: list[ModelResult], info: PreparedInfo, ks: list[int],
                  notes: list[str] | None = None, cold: np.ndarray | None = None,
                  request_users: np.ndarray | None = None) -> str:
    """Writes results.json and results.md into `out`; returns the markdown. `cold` marks the test requests whose
    target is a held-out cold item: then a second table splits every model's figures into warm and cold. With
    `request_users` (each test request's user), every row's ranks go to test_ranks.npz as well, so that runs on
    the same split can be compared user by user (`recfm.platform.evaluation.significance`)."""
    if request_users is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(Path(out) / TEST_RANKS_FILE, users=np.asarray(request_users),
                            **{r.name: r.ranks for r in results if r.ranks is not None})
    users = int(results[0].metrics["users"]) if results else 0
    text = markdown_table(results, ks) + "\n\n" + protocol_line(info, users) + "\n"
    subsets = {}
    if cold is not None:
        subsets = {r.name: {"warm": rank_metrics(r.ranks[~cold], ks), "cold": rank_metrics(r.ranks[cold], ks)}
                   for r in results}
        text += "\n" + cold_start_table(subsets, int((~cold).sum()), int(cold.sum()), info.cold_items) + "\n"
    text += "".join(f"\nNote: {n}\n" for n in notes or [])
    return write_table(out, text, {
        "data": asdict(info) | {"params": None},
        "models": [{k: v for k, v in asdict(r).items() if k not in ("ranks", "val_ranks")} for r in results],
        "notes": notes or [],
        "warm_cold": subsets,
    })
