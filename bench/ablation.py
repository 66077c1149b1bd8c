"""Ablation of the foundation model's inputs and objective: the event facets (item id only vs every facet), the
request context (`model.context`: the predicted event's hour, day, gap, surface and device) and multi-token
prediction (K = 1 vs K = 2).

    .venv/bin/python bench/ablation.py [CONFIG] [key=value ...] [--only LABEL ...] [--out bench/results]

Each variant is a full `recfm train` run (2 Ray workers, early stopping on validation NDCG@10) with the given
config; the table gives each one's test metrics beside the baselines, all on the same split, the training
throughput (what a variant costs per epoch), and each variant's NDCG@10 difference from the first row with its
90% user-bootstrap interval. Amazon Beauty has no timestamps, actions or values, so its only facet is the item and
it has no request context: there only the K rows mean anything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ITEM, ALL, CONTEXT, NONE = "model.facets=[item]", "model.facets=[all]", "model.context=[all]", "model.context=[]"
VARIANTS = {
    "item only, K=1": [ITEM, NONE, "objective.mtp=1"],
    "item only + context, K=1": [ITEM, CONTEXT, "objective.mtp=1"],
    "all facets, K=1": [ALL, NONE, "objective.mtp=1"],
    "all facets + context, K=1": [ALL, CONTEXT, "objective.mtp=1"],
    "all facets + context, K=2": [ALL, CONTEXT, "objective.mtp=2"],
    "item only, K=2": [ITEM, NONE, "objective.mtp=2"],
}
PAIRS = [("all facets + context, K=1", "all facets, K=1"), ("item only + context, K=1", "item only, K=1"),
         ("all facets + context, K=2", "all facets + context, K=1"), ("item only, K=2", "item only, K=1")]
COLUMNS = ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "MRR")
FM = "recfm-FM"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "ml-latest-small.yaml"))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", help="the table's name (default: the config's)")
    parser.add_argument("--only", nargs="*", help="run only these variants (by table label)")
    args = parser.parse_args()

    import numpy as np

    from recfm.platform.config import load_config
    from recfm.platform.evaluation.significance import paired_difference
    from recfm.platform.pipeline import run_pipeline
    from recfm.run.files import METRICS_FILE, RESULTS_JSON, TEST_RANKS_FILE

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = args.name or Path(args.config).stem
    rows, baselines, ranks = [], {}, {}
    for label, overrides in VARIANTS.items():
        if args.only and label not in args.only:
            continue
        run_dir = Path(args.out) / "runs" / f"ablation-{name}-{stamp}" / label.replace(" ", "_").replace(",", "")
        cfg = load_config(args.config, [*args.overrides, *overrides, f"run_dir={run_dir}"])
        started = time.perf_counter()
        run_pipeline(cfg, log=lambda line, label=label: print(f"[{label}] {line}", flush=True))
        minutes = (time.perf_counter() - started) / 60
        models = {m["name"]: m for m in json.loads((run_dir / RESULTS_JSON).read_text())["models"]}
        curve = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
        speed = float(np.median([c["train/events_per_s"] for c in curve if "train/events_per_s" in c]))
        rows.append((label, models[FM]["metrics"], models[FM]["params"].get("epoch"), speed, minutes))
        saved = np.load(run_dir / TEST_RANKS_FILE)
        ranks[label] = (saved[FM], saved["users"])
        baselines = {k: v for k, v in models.items() if not k.startswith(FM)}

    first = rows[0][0]
    lines = [f"Ablation on {name} (`bench/ablation.py {' '.join([args.config, *args.overrides])}`), test split; "
             f"the difference is NDCG@10 minus that of \"{first}\", with its 90% user-bootstrap interval:", "",
             "| variant | " + " | ".join(COLUMNS) + " | vs first row | best epoch | training events/s | minutes |",
             "|---|" + "---:|" * (len(COLUMNS) + 4)]
    for label, metrics, epoch, speed, minutes in rows:
        diff = _difference(paired_difference, ranks, label, first) if label != first else "-"
        lines.append(f"| {label} | {_cells(metrics)} | {diff} | {epoch} | {speed:,.0f} | {minutes:.1f} |")
    for label, model in baselines.items():
        lines.append(f"| {label} (baseline) | {_cells(model['metrics'])} | - | - | - | - |")
    pairs = [(a, b) for a, b in PAIRS if a in ranks and b in ranks]
    if pairs:
        lines += ["", "What each part buys (NDCG@10, the same test requests, 90% user-bootstrap interval):", ""]
        lines += [f"- {a} vs {b}: {_difference(paired_difference, ranks, a, b)}" for a, b in pairs]
    text = "\n".join(lines) + "\n"
    out = Path(args.out) / f"ablation-{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def _difference(paired_difference, ranks: dict, a: str, b: str) -> str:
    (ranks_a, users), (ranks_b, _) = ranks[a], ranks[b]
    mean, low, high = paired_difference(ranks_a, ranks_b, users)
    return f"{mean:+.4f} ({low:+.4f} to {high:+.4f})"


def _cells(metrics: dict[str, float]) -> str:
    return " | ".join(f"{metrics[c]:.4f}" for c in COLUMNS)


if __name__ == "__main__":
    main()
