"""bf16 autocast (`train.bf16`) against float32 for recfm's foundation model on Amazon Beauty, in one run.

    .venv/bin/python bench/bf16.py [--budget-min 10] [--out bench/results]

The model of `bench/peers.py` (RecBole SASRec's size, full softmax over 12,101 items, 2 Ray workers x 128
windows): training events/s of each over the same epochs (median after the first), then the bf16 model's test
NDCG@10 after the same wall-clock budget `bench/peers.py` gives both peers (its float32 figure is in
bench/results/peers.json). Writes `bf16.json` and `bf16.md`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from peers import BEAUTY, recfm_run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if not BEAUTY.exists():
        print(f"skipped: Amazon Beauty is not at {BEAUTY} (see ../shared/data/README.md)")
        return
    out = Path(args.out) / "bf16"
    same = ["train.workers=2", "train.batch_size=128"]
    throughput = ["train.max_minutes=0", f"train.epochs={args.epochs}", f"train.val_every={args.epochs}", *same]
    fp32 = recfm_run(out, "throughput-fp32", throughput)
    bf16 = recfm_run(out, "throughput-bf16", [*throughput, "train.bf16=true"])
    print(f"float32 {fp32['events_per_s']:,.0f} events/s, bf16 {bf16['events_per_s']:,.0f} "
          f"({bf16['events_per_s'] / fp32['events_per_s']:.2f}x)", flush=True)
    quality = recfm_run(out, "quality-bf16", [f"train.max_minutes={args.budget_min}", "train.epochs=1000",
                                              "train.patience=1000", *same, "train.bf16=true"])
    print(f"bf16 after {args.budget_min:g} min: test NDCG@10 {quality['test_ndcg10']:.4f} "
          f"({quality['epochs']} epochs)", flush=True)
    result = {"fp32": fp32, "bf16": bf16, "bf16_quality": quality, "budget_min": args.budget_min,
              "measured": time.strftime("%Y-%m-%d %H:%M")}
    peers = Path(args.out) / "peers.json"
    if peers.exists():
        result["fp32_quality"] = json.loads(peers.read_text()).get("recfm_quality")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bf16.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"recfm FM on Amazon Beauty, float32 vs bf16 autocast ({result['measured']}; `bench/bf16.py`)", "",
             "| | events/s | vs float32 | test NDCG@10 after the budget | test HR@10 | epochs |",
             "|---|---:|---:|---:|---:|---:|"]
    q32 = result.get("fp32_quality") or {}
    lines.append(f"| float32 | {fp32['events_per_s']:,.0f} | 1.00x | {q32.get('test_ndcg10', float('nan')):.4f} "
                 f"(bench/results/peers.json) | {q32.get('test_hr10', float('nan')):.4f} | {q32.get('epochs', '-')} |")
    ratio = bf16["events_per_s"] / fp32["events_per_s"]
    lines.append(f"| bf16 autocast | {bf16['events_per_s']:,.0f} | {ratio:.2f}x | "
                 f"{quality['test_ndcg10']:.4f} | {quality['test_hr10']:.4f} | {quality['epochs']} |")
    (Path(args.out) / "bf16.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
