"""Cold start: the foundation model with and without item content, on items nobody trained on.

    .venv/bin/python bench/cold_start.py [CONFIG] [key=value ...] [--out bench/results]

(the time split, with early stopping, on the embedded defaults' data unless CONFIG says otherwise)

A random 10% of the catalog is held out (`data.cold_items=0.1`): every event on those items before the test
cutoff is removed, so they enter the test period as new titles. Each variant is a full `recfm train` run on
that split; ContentKNN (the user's latest items' mean text vector, nearest items) is tested beside MostPop,
ItemKNN and EASE. The table splits test targets into warm items (NDCG@10) and cold ones (HR@50 and NDCG@50,
each ranked over the full catalog).
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
SPLIT = ["data.split=time", "data.cold_items=0.1", "train.max_minutes=0",
         "eval.baselines=[MostPop,ItemKNN,EASE,ContentKNN]"]
VARIANTS = {
    "recfm-FM, ID only": ["model.content=false"],
    "recfm-FM, ID + content": ["model.content=true"],
    "recfm-FM, ID + content + semantic IDs": ["model.content=true", "model.semantic_levels=3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="a config file (default: the embedded defaults, ml-latest-small "
                        "on a time split)")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--only", nargs="*", help="run only these variants (by table label)")
    args = parser.parse_args()
    if args.config and "=" in args.config:  # no config file, only overrides
        args.overrides, args.config = [args.config, *args.overrides], None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows, baselines, note = [], {}, ""
    for label, overrides in VARIANTS.items():
        if args.only and label not in args.only:
            continue
        run_dir = Path(args.out) / "runs" / f"cold-start-{stamp}" / label.split(", ", 1)[1].replace(" ", "_")
        cfg = load_config(args.config, [*SPLIT, *args.overrides, *overrides, f"run_dir={run_dir}"])
        started = time.perf_counter()
        run_pipeline(cfg, log=lambda line, label=label: print(f"[{label}] {line}", flush=True))
        minutes = (time.perf_counter() - started) / 60
        results = json.loads((run_dir / RESULTS_JSON).read_text())
        subsets = results["warm_cold"]
        rows.append((label, subsets["recfm-FM"], minutes))
        baselines = {name: s for name, s in subsets.items() if name != "recfm-FM"}
        note = (results["data"]["cold_items"], results["data"]["cold_events_removed"])
    name = Path(args.config).stem if args.config else "ml-latest-small"
    lines = [f"Cold start on {name} (`bench/cold_start.py {' '.join([args.config or '', *args.overrides]).strip()}`): "
             f"{note[0]:,} items held out ({note[1]:,} events before the test cutoff removed)", "",
             "| model | warm HR@10 | warm NDCG@10 | cold HR@50 | cold NDCG@50 | minutes |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, s in [*((f"{n} (baseline)", s) for n, s in baselines.items())]:
        lines.append(f"| {label} | {_cells(s)} | - |")
    for label, s, minutes in rows:
        lines.append(f"| {label} | {_cells(s)} | {minutes:.1f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out) / f"cold-start-{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def _cells(s: dict[str, dict[str, float]]) -> str:
    w, c = s["warm"], s["cold"]
    return f"{w['HR@10']:.4f} | {w['NDCG@10']:.4f} | {c['HR@50']:.4f} | {c['NDCG@50']:.4f}"


if __name__ == "__main__":
    main()
