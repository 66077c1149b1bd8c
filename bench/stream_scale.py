"""Training on data larger than memory: 10M synthetic events, streamed from the Parquet shards through Ray Data
(`train.stream_data=true`), against the same job reading one in-memory table (the reference, same run).

    .venv/bin/python bench/stream_scale.py [--events 10000000] [--users 200000] [--items 50000] [--epochs 1]
                                           [--work /tmp/recfm-stream] [--modes in-memory,streamed]

Each mode runs the real `recfm train` command (smoke model with the sampled softmax, as a 50,000-item catalog
calls for; 2 Ray workers; MostPop beside it) in a process of its own, while this script samples the resident
memory of every process under it twice a second: the driver, the Ray Train workers and the Ray Data tasks
that read and cut the shards. A worker's peak is also its own `ru_maxrss` (metrics.jsonl,
`worker/peak_rss_mb`), which catches spikes between samples.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
RECFM = Path(sys.executable).parent / "recfm"


def role(process: psutil.Process) -> str:
    """What a process under the job is, by the title Ray gives it."""
    title = " ".join(process.cmdline())
    if "RayTrainWorker" in title:
        return "train worker"
    if title.startswith("ray::") and any(k in title for k in ("Read", "Map", "split", "Split")):
        return "data task"
    if title.startswith("ray::"):
        return "other ray worker"
    return "ray system" if any(k in title for k in ("raylet", "gcs_server", "dashboard", "log_monitor")) else "other"


def sample(root: int, peaks: dict, stop: threading.Event) -> None:
    """Peak RSS (MB) per role and per process, and of the driver, until `stop`."""
    while not stop.wait(0.5):
        try:
            driver = psutil.Process(root)
            procs = driver.children(recursive=True)
            peaks["driver"] = max(peaks["driver"], driver.memory_info().rss / 2**20)
        except psutil.Error:
            continue
        for p in procs:
            try:
                rss = p.memory_info().rss / 2**20
                peaks[role(p)] = max(peaks[role(p)], rss)
            except psutil.Error:
                continue


def run(mode: str, args, data: Path) -> dict:
    run_dir = args.work / f"run-{mode}"
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    command = [str(RECFM), "train", str(ROOT / "configs" / "smoke.yaml"), f"data.source={data}",
               "data.format=imported", "data.split=loo", f"data.cache_dir={args.work / 'cache'}", f"run_dir={run_dir}",
               f"train.epochs={args.epochs}", f"train.val_every={args.epochs}", "train.val_users=5000",
               "eval.val_targets=5000", "eval.baselines=[MostPop]", "objective.loss=sampled",
               f"train.stream_data={'true' if mode == 'streamed' else 'false'}"]
    print(" ".join(command), flush=True)
    peaks: dict = defaultdict(float)
    stop = threading.Event()
    started = time.perf_counter()
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = threading.Thread(target=sample, args=(job.pid, peaks, stop), daemon=True)
    sampler.start()
    log = job.stdout.read()
    code = job.wait()
    stop.set()
    sampler.join()
    (args.work / f"{mode}.log").write_text(log)
    if code:
        raise SystemExit(f"{mode} run failed ({code}); see {args.work / f'{mode}.log'}\n{log[-3000:]}")
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    models = {m["name"]: m for m in json.loads((run_dir / "results.json").read_text())["models"]}
    return {"mode": mode, "wall_s": time.perf_counter() - started,
            "events_per_s": sum(e["train/events_per_s"] for e in epochs) / len(epochs),
            "worker_peak_rss_mb": max(e["worker/peak_rss_mb"] for e in epochs),
            "sampled_peak_rss_mb": dict(peaks), "test_ndcg10": models["recfm-FM"]["metrics"]["NDCG@10"],
            "mostpop_ndcg10": models["MostPop"]["metrics"]["NDCG@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recfm-stream"))
    parser.add_argument("--modes", default="in-memory,streamed")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / f"synth-{args.events}"
    if not (data / "dataset.json").exists():
        subprocess.run([str(RECFM), "data", "synth", "--users", str(args.users), "--items", str(args.items),
                        "--events", str(args.events), "--seed", "1", "--out", str(data)], check=True)
    rows = [run(mode, args, data) for mode in args.modes.split(",")]
    reference = rows[0]
    print(f"\n{args.events:,} events, {args.users:,} users, {args.items:,} items; {args.epochs} epoch(s), 2 workers")
    print("| mode | wall | events/s | worker peak RSS (ru_maxrss) | sampled peaks: driver / train worker / data task |"
          " FM NDCG@10 (MostPop) |")
    print("|---|---:|---:|---:|---|---:|")
    for r in rows:
        s = r["sampled_peak_rss_mb"]
        print(f"| {r['mode']} | {r['wall_s'] / 60:.1f} min | {r['events_per_s']:,.0f} "
              f"({r['events_per_s'] / reference['events_per_s']:.2f}x) | {r['worker_peak_rss_mb']:,.0f} MB "
              f"({r['worker_peak_rss_mb'] / reference['worker_peak_rss_mb']:.2f}x) | {s.get('driver', 0):,.0f} / "
              f"{s.get('train worker', 0):,.0f} / {s.get('data task', 0):,.0f} MB | {r['test_ndcg10']:.4f} "
              f"({r['mostpop_ndcg10']:.4f}) |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"stream-{args.events}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
