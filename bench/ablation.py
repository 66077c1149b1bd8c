"""Ablation of the foundation model's inputs and objective: multi-token prediction (K = 1 vs K > 1) and the
event facets (item id only vs every facet, with and without the auxiliary next-action and next-gap targets).

    .venv/bin/python bench/ablation.py [CONFIG] [key=value ...] [--out bench/results]

Each variant is a full `recfm train` run (2 Ray workers, early stopping on validation NDCG@10) with the given
config; the table gives each one's test metrics beside the baselines, all on the same split. Amazon Beauty
has no timestamps, actions or values, so its only facet is the item: run the facet rows on data with facets
(the default, the bundled ml-latest-small).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recfm.platform.config import load_config
from recfm.platform.pipeline import run_pipeline
from recfm.run.files import RESULTS_JSON

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "item only, K=1": ["model.facets=[item]", "objective.mtp=1"],
    "item only, K=3": ["model.facets=[item]", "objective.mtp=3"],
    "all facets, K=1": ["model.facets=[all]", "objective.mtp=1"],
    "all facets, K=3": ["model.facets=[all]", "objective.mtp=3"],
    "all facets + next action/gap, K=3": ["model.facets=[all]", "objective.mtp=3", "objective.action_weight=0.2",
                                          "objective.gap_weight=0.2"],
}
COLUMNS = ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "MRR")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "ml-latest-small.yaml"))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--only", nargs="*", help="run only these variants (by table label)")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows, baselines = [], {}
    for label, overrides in VARIANTS.items():
        if args.only and label not in args.only:
            continue
        run_dir = Path(args.out) / "runs" / f"ablation-{stamp}" / label.replace(" ", "_").replace(",", "")
        cfg = load_config(args.config, [*args.overrides, *overrides, f"run_dir={run_dir}"])
        started = time.perf_counter()
        run_pipeline(cfg, log=lambda line, label=label: print(f"[{label}] {line}", flush=True))
        minutes = (time.perf_counter() - started) / 60
        models = {m["name"]: m for m in json.loads((run_dir / RESULTS_JSON).read_text())["models"]}
        fm = models.pop("recfm-FM")
        rows.append((label, fm["metrics"], fm["params"].get("epoch"), minutes))
        baselines = models
    name = Path(args.config).stem
    lines = [f"Ablation on {name} (`bench/ablation.py {' '.join([args.config, *args.overrides])}`), test split:", "",
             "| variant | " + " | ".join(COLUMNS) + " | best epoch | minutes |",
             "|---|" + "---:|" * (len(COLUMNS) + 2)]
    for label, metrics, epoch, minutes in rows:
        lines.append(f"| {label} | {_cells(metrics)} | {epoch} | {minutes:.1f} |")
    for label, model in baselines.items():
        lines.append(f"| {label} (baseline) | {_cells(model['metrics'])} | - | - |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out) / f"ablation-{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def _cells(metrics: dict[str, float]) -> str:
    return " | ".join(f"{metrics[c]:.4f}" for c in COLUMNS)


if __name__ == "__main__":
    main()
