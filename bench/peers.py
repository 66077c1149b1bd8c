"""recfm's foundation model against RecBole's SASRec on Amazon Beauty, on this machine, in one run.

    .venv/bin/python bench/peers.py [--quick] [--budget-min 10] [--out bench/results]

Both models: 64 wide, 2 layers, 2 heads, feed-forward 256, 50-event windows, full-softmax cross-entropy over
all 12,101 items, 256 sequences per optimiser step (recfm: 2 Ray workers x 128 windows; RecBole: one process,
batch 256, 2 threads), the same leave-one-out split and full ranking with the history excluded.

1. Training throughput, events/s: one event is one training target. RecBole's SASRec turns each sequence into
   prefix -> next-item samples (one target per sample); recfm trains every position of a window in one pass.
   recfm's figure is its Ray Train job's own `train/events_per_s` (median over epochs after the first, which
   includes Ray Data's start-up), with TorchRec-sharded tables over 2 workers; RecBole's is timed around its
   training steps (`bench/recbole/sasrec_run.py`). Also recfm with 1 Ray worker (batch 256), and each run's
   peak resident memory per worker.
2. Quality at equal wall clock (not with --quick): each trains for the same budget (training + validation
   time), then its best-validation model is tested: NDCG@10 and HR@10.

RecBole runs in its own virtual environment (`bench/recbole/setup.sh`: it pins numpy < 2, setuptools < 81 and
asks for ray <= 2.6.3, none of which may reach recfm's). Writes `peers[-quick].json`, `.md` and a PNG; the last line
printed is the throughput ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEAUTY = ROOT.parent / "shared" / "data" / "amazon-beauty" / "Beauty.txt.gz"
RECBOLE_PY = ROOT / "bench" / ".venv-recbole" / "bin" / "python"
RECFM = [sys.executable, "-m", "recfm"]
# recfm's Beauty config at RecBole's SASRec size; validation only where the comparison needs it
SAME_SIZE = ["model.dim=64", "model.layers=2", "model.heads=2", "model.ffn_mult=4", "model.max_len=50",
             "model.dropout=0.2", "objective.loss=full", "eval.baselines=[MostPop]", ]


def recfm_run(out: Path, label: str, overrides: list[str]) -> dict:
    run = out / "runs" / label
    shutil.rmtree(run, ignore_errors=True)  # a scratch run of an earlier benchmark: recfm refuses to overwrite it
    cmd = [*RECFM, "train", str(ROOT / "configs" / "beauty.yaml"), *SAME_SIZE, *overrides, f"run_dir={run}"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [e["train/events_per_s"] for e in epochs]
    fm = next(m for m in json.loads((run / "results.json").read_text())["models"] if m["name"] == "recfm-FM")
    return {"events_per_s": statistics.median(rates[1:] or rates), "events_per_s_by_epoch": rates,
            "peak_rss_mb": max(e["worker/peak_rss_mb"] for e in epochs), "epochs": len(epochs),
            "test_ndcg10": fm["metrics"]["NDCG@10"], "test_hr10": fm["metrics"]["HR@10"],
            "val_ndcg10": fm.get("val_metric"), "wall_s": wall, "run_dir": str(run)}


def recbole_run(*args: str) -> dict:
    cmd = [str(RECBOLE_PY), str(ROOT / "bench" / "recbole" / "sasrec_run.py"), "--data", str(BEAUTY),
           "--hidden", "64", "--layers", "2", "--heads", "2", "--max-len", "50", "--batch", "256", "--threads", "2",
           *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="throughput only, one epoch (make bench-quick)")
    parser.add_argument("--budget-min", type=float, default=10.0, help="equal wall-clock budget for quality")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if not BEAUTY.exists():
        print(f"skipped: Amazon Beauty is not at {BEAUTY} (see ../shared/data/README.md)")
        return
    out = Path(args.out) / ("peers-quick" if args.quick else "peers")
    subprocess.run(["bash", str(ROOT / "bench" / "recbole" / "setup.sh")], check=True, stdout=subprocess.DEVNULL)
    epochs = 2 if args.quick else 4
    throughput = ["train.max_minutes=0", f"train.epochs={epochs}", f"train.val_every={epochs}"]
    print(f"1. training throughput on Amazon Beauty ({epochs} recfm epochs; RecBole timed steps)", flush=True)
    rb = recbole_run("--throughput-steps", "60" if args.quick else "300")
    print(f"  RecBole SASRec: {rb['events_per_s']:,.0f} events/s ({rb['n_params']:,} parameters)", flush=True)
    two = recfm_run(out, "throughput-2-workers", [*throughput, "train.workers=2", "train.batch_size=128"])
    print(f"  recfm, 2 Ray workers: {two['events_per_s']:,.0f} events/s, worker peak {two['peak_rss_mb']:,.0f} MB",
          flush=True)
    result = {"machine": _machine(), "recbole": rb, "recfm_2_workers": two, "quick": args.quick,
              "measured": time.strftime("%Y-%m-%d %H:%M")}
    if not args.quick:
        one = recfm_run(out, "throughput-1-worker", [*throughput, "train.workers=1", "train.batch_size=256"])
        print(f"  recfm, 1 Ray worker: {one['events_per_s']:,.0f} events/s, peak {one['peak_rss_mb']:,.0f} MB",
              flush=True)
        result["recfm_1_worker"] = one
        budget = args.budget_min
        print(f"2. quality after {budget:g} minutes of training each", flush=True)
        rb_q = recbole_run("--budget-s", str(budget * 60))
        print(f"  RecBole SASRec: test NDCG@10 {rb_q['test_ndcg10']:.4f} after {rb_q['epochs']:.1f} epochs",
              flush=True)
        fm_q = recfm_run(out, "quality", [f"train.max_minutes={budget}", "train.epochs=1000", "train.patience=1000",
                                          "train.workers=2", "train.batch_size=128"])
        print(f"  recfm: test NDCG@10 {fm_q['test_ndcg10']:.4f} after {fm_q['epochs']} epochs", flush=True)
        result |= {"budget_min": budget, "recbole_quality": rb_q, "recfm_quality": fm_q}
    result["throughput_ratio"] = two["events_per_s"] / rb["events_per_s"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stem = Path(args.out) / ("peers-quick" if args.quick else "peers")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result, stem)
    stem.with_suffix(".md").write_text(summary(result) + "\n")
    print(summary(result))
    print(f"throughput ratio recfm / RecBole SASRec: {result['throughput_ratio']:.2f}x "
          f"({two['events_per_s']:,.0f} vs {rb['events_per_s']:,.0f} events/s)")


def summary(r: dict) -> str:
    rb, two = r["recbole"], r["recfm_2_workers"]
    lines = [f"Peers on Amazon Beauty, {r['machine']} ({r['measured']}):", "",
             "| | events/s | vs RecBole | peak memory per worker |", "|---|---:|---:|---:|",
             f"| RecBole SASRec (1 process, 2 threads) | {rb['events_per_s']:,.0f} | 1.00x | - |",
             f"| recfm FM, 2 Ray workers | {two['events_per_s']:,.0f} | {two['events_per_s'] / rb['events_per_s']:.2f}x"
             f" | {two['peak_rss_mb']:,.0f} MB |"]
    if "recfm_1_worker" in r:
        one = r["recfm_1_worker"]
        lines.append(f"| recfm FM, 1 Ray worker | {one['events_per_s']:,.0f} | "
                     f"{one['events_per_s'] / rb['events_per_s']:.2f}x | {one['peak_rss_mb']:,.0f} MB |")
    if "recbole_quality" in r:
        q, f = r["recbole_quality"], r["recfm_quality"]
        lines += ["", f"| after {r['budget_min']:g} min of training | epochs | test HR@10 | test NDCG@10 |",
                  "|---|---:|---:|---:|",
                  f"| RecBole SASRec | {q['epochs']:.1f} | {q['test_hr10']:.4f} | {q['test_ndcg10']:.4f} |",
                  f"| recfm FM | {f['epochs']} | {f['test_hr10']:.4f} | {f['test_ndcg10']:.4f} |"]
    return "\n".join(lines)


def _plot(r: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["RecBole SASRec", "recfm, 2 workers"] + (["recfm, 1 worker"] if "recfm_1_worker" in r else [])
    rates = [r["recbole"]["events_per_s"], r["recfm_2_workers"]["events_per_s"]]
    rates += [r["recfm_1_worker"]["events_per_s"]] if "recfm_1_worker" in r else []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, rates, color=["grey", "tab:blue", "tab:cyan"][:len(names)])
    ax.set(ylabel="training events / s", title=f"Amazon Beauty, {r['machine']}")
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=100)
    plt.close(fig)


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
