"""Teacher vs student vs exported student, measured in one run: test NDCG@10, parameters, p50/p99 latency of
scoring the catalog for one user and for 64 users on the CPU, and peak memory.

    .venv/bin/python bench/distill_compare.py RUN_DIR [--requests 300] [--threads 1]

RUN_DIR is a run with `recfm distill` and `recfm export` done (`make demo` does both; on Amazon Beauty:
`recfm train configs/beauty.yaml`). Each variant runs in its own process (so peak RSS is its own) on the same
user histories, from raw events to scores: the teacher and the student eagerly (recfm's tokenizer, the teacher
through its TorchRec tables), the exported student through onnxruntime and through the `.pt2` program. Latency
ratios are against the teacher, measured in this same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = ("teacher (eager)", "student (eager)", "student (ONNX Runtime)", "student (torch.export)")


def measure(run_dir: Path, variant: str, requests: int, threads: int) -> dict:
    import torch

    from recfm.fm.batching import inference_batch, rows_from_arrays
    from recfm.platform.trained import TrainedRun
    from recfm.run.files import EXPORT_DIR
    from recfm.serving_exports.export import _parity_requests, read_manifest
    from recfm.serving_exports.serving import serving_inputs
    from recfm.serving_exports.student import load_student

    torch.set_num_threads(threads)
    run = TrainedRun.open(run_dir)
    seqs = run.sequences
    export = run.directory / EXPORT_DIR / "student"
    manifest = read_manifest(export)
    names = [i["name"] for i in manifest["inputs"]]
    users, known = _parity_requests(seqs.offsets, requests, seed=11)

    if variant.endswith("(eager)"):
        model = run.foundation_model() if variant.startswith("teacher") else load_student(run.directory)
        params = sum(p.numel() for p in model.parameters())

        def score(u, k):
            batch = inference_batch(rows_from_arrays(seqs.offsets, seqs.events, u), k, model.tokenizer,
                                    model.cfg.max_len)
            with torch.no_grad():
                return model.score_items(batch)
    elif "ONNX" in variant:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(export / "model.onnx"), options, providers=["CPUExecutionProvider"])
        params = manifest["parameters"]

        def score(u, k):
            return session.run(["scores"], serving_inputs(names, seqs.offsets, seqs.events, u, k,
                                                          manifest["max_events"]))[0]
    else:
        program = torch.export.load(str(export / "model.pt2")).module()
        params = manifest["parameters"]

        def score(u, k):
            arrays = serving_inputs(names, seqs.offsets, seqs.events, u, k, manifest["max_events"])
            with torch.no_grad():
                return program(*(torch.from_numpy(arrays[n]) for n in names))[0]

    out = {"variant": variant, "parameters": params}
    for size in (1, 64):
        for start in range(0, min(3 * size, requests), size):  # warm-up
            score(users[start:start + size], known[start:start + size])
        seconds = []
        for start in range(0, requests - size + 1, size):
            t = time.perf_counter()
            score(users[start:start + size], known[start:start + size])
            seconds.append(time.perf_counter() - t)
        out[f"p50_ms_b{size}"] = 1000 * float(np.percentile(seconds, 50))
        out[f"p99_ms_b{size}"] = 1000 * float(np.percentile(seconds, 99))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.run_dir, args.variant, args.requests, args.threads)))
        return
    rows = []
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, str(args.run_dir), "--variant", variant, "--requests",
                               str(args.requests), "--threads", str(args.threads)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    results = json.loads((args.run_dir / "distill" / "results.json").read_text())["rows"]
    ndcg = {"teacher": next(r["NDCG@10"] for r in results if r["model"].startswith("teacher (best")),
            "student": next(r["NDCG@10"] for r in results if r["model"] == "student")}
    teacher = rows[0]
    print(f"{args.run_dir.name}: {args.requests} user histories, {args.threads} thread(s), CPU")
    print("| variant | test NDCG@10 | parameters | p50 ms b1 | p99 ms b1 | p50 ms b64 | p99 ms b64 | "
          "p50 b1 speed-up vs teacher | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        who = "teacher" if r["variant"].startswith("teacher") else "student"
        print(f"| {r['variant']} | {ndcg[who]:.4f} | {r['parameters']:,} | {r['p50_ms_b1']:.3f} | "
              f"{r['p99_ms_b1']:.3f} | {r['p50_ms_b64']:.2f} | {r['p99_ms_b64']:.2f} | "
              f"{teacher['p50_ms_b1'] / r['p50_ms_b1']:.1f}× | {r['peak_rss_mb']:.0f} |")
    print(f"\nThe student keeps {ndcg['student'] / ndcg['teacher']:.1%} of the teacher's test NDCG@10 (teacher: the "
          f"best checkpoint, which the student learned from).")


if __name__ == "__main__":
    main()
