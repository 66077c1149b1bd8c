"""How the foundation model's training step grows with the work, and how close it runs to this machine's peak.

    .venv/bin/python bench/scale.py [--quick] [--device cpu|cuda] [--out bench/results]

1. Catalog: step time of the model (dim 64, 2 layers, 50-event windows, batch 128 per rank) with the sampled
   softmax (1,024 uniform negatives + in-batch targets, logQ-corrected) as the item table grows from 10^4 to
   10^7 rows, the table sharded row-wise by TorchRec across 2 processes (gloo on CPU, NCCL on CUDA).
   Reference: the 10^4 catalog in the same run.
2. Sequence: step time of one process as windows grow from 50 to 2,000 events (batch 8; 64 on a GPU; a full softmax over
   1,000 items, so the output's work is linear in length), full causal attention vs the blockwise sliding
   window (window 50). Reference: length 50.
3. FLOP/s: the transformer's forward + backward FLOPs (counted by torch.utils.flop_counter) per second, at the
   Beauty training shape and at a wider one, as a share of the matmul peak measured in the same run (fp32 and,
   where the processor has it, bf16 under autocast).

Times are medians over timed steps after warm-up steps. Writes `scale-<device>.json`, `.md` and two PNG plots, and
prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
DIM, LAYERS, HEADS, MAX_LEN, NEGATIVES = 64, 2, 2, 50, 1024


def _model(n_items: int, max_len: int, window: int = 0, device: torch.device | None = None, loss: str = "sampled"):
    from recfm.fm.config import ModelConfig, ObjectiveConfig
    from recfm.fm.model import build_model, model_spec
    from recfm.fm.objectives import TrainingObjective
    from recfm.fm.tokens import EventTokenizer, Facet

    tokenizer = EventTokenizer([Facet("item", n_items)])
    cfg = ModelConfig(dim=DIM, layers=LAYERS, heads=HEADS, max_len=max_len, window=window, dropout=0.1,
                      facets=["item"], content=False)
    model = build_model(model_spec(cfg, tokenizer, 1, False, False), device=device)
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    prob = torch.from_numpy((1 / ranks) / (1 / ranks).sum()).float()  # Zipf, as real catalogs are
    objective = TrainingObjective(model, ObjectiveConfig(loss=loss, negatives=NEGATIVES), prob, seed=0)
    return model, objective, tokenizer, prob.numpy()


def _batch(tokenizer, prob: np.ndarray, rows: int, length: int, rng: np.random.Generator):
    from recfm.fm.batching import training_batch

    n = len(prob)
    # Zipf-distributed items; sampling by inverse CDF keeps 10^7-row catalogs cheap
    items = np.minimum(np.searchsorted(np.cumsum(prob), rng.random((rows, length + 1))), n - 1).astype(np.int64)
    ts = np.cumsum(rng.integers(60, 86_400, (rows, length + 1)), axis=1)
    data = {"item": list(items), "ts": list(ts), "value": list(np.full((rows, length + 1), np.nan)),
            "action": list(np.zeros((rows, length + 1), np.int64))}
    return training_batch(data, np.full(rows, length + 1), tokenizer, length, 1)


def _timed(step, warmup: int, steps: int, sync=lambda: None) -> float:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# 1. catalog -------------------------------------------------------------------------------------------------

def _catalog_worker(rank: int, world: int, port: int, n_items: int, steps: int, device_kind: str, out: str) -> None:
    from recfm.fm.config import ShardingConfig
    from recfm.fm.distributed.sharding import shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = device_kind == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    torch.set_num_threads(1 if not cuda else 4)
    device = torch.device(f"cuda:{rank % max(torch.cuda.device_count(), 1)}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    model, objective, tokenizer, prob = _model(n_items, MAX_LEN, device=torch.device("meta"))
    objective.item_prob = objective.item_prob.to(device)
    training = shard(objective, model.embeddings, model.facets,
                     ShardingConfig(item="row_wise", sparse_optimizer="rowwise_adagrad"), 1e-3, 0.0, device)
    rng = np.random.default_rng(rank)
    batches = [_batch(tokenizer, prob, 128, MAX_LEN, rng).to(device) for _ in range(4)]
    counter = iter(range(10**9))

    def step() -> None:
        training.optimizer.zero_grad()
        loss, _ = training.model(batches[next(counter) % len(batches)])
        loss.backward()
        training.optimizer.step()

    seconds = _timed(step, 3, steps, torch.cuda.synchronize if cuda else lambda: None)
    times = [None] * world
    dist.all_gather_object(times, seconds)
    rss = [None] * world
    dist.all_gather_object(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if rank == 0:
        Path(out).write_text(json.dumps({"items": n_items, "step_s": max(times), "peak_rss_mb": max(rss)}))
    dist.barrier()
    dist.destroy_process_group()


def catalog_sweep(sizes: list[int], steps: int, device_kind: str) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "r.json")
            for attempt in (1, 2):
                try:
                    mp.spawn(_catalog_worker, args=(2, _free_port(), n, steps, device_kind, out), nprocs=2,
                             join=True)
                    break
                except mp.ProcessExitedException as e:
                    # seen once in five 10^6 runs on CPU: a gloo thread aborted the process ("terminate called
                    # without an active exception"); said here, and the size measured again
                    print(f"  catalog {n:>12,}: a worker died ({e}); attempt {attempt} of 2", flush=True)
                    if attempt == 2:
                        raise
            rows.append(json.loads(Path(out).read_text()))
        rows[-1]["ratio"] = rows[-1]["step_s"] / rows[0]["step_s"]
        print(f"  catalog {n:>12,}: {rows[-1]['step_s'] * 1e3:8.1f} ms/step ({rows[-1]['ratio']:.2f}x), "
              f"worker peak {rows[-1]['peak_rss_mb']:,.0f} MB", flush=True)
    return rows


# 2. sequence length -----------------------------------------------------------------------------------------

def sequence_sweep(lengths: list[int], window: int, steps: int, device: torch.device) -> list[dict]:
    rows, out = (8, []) if device.type == "cpu" else (64, [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for length in lengths:
        row = {"length": length}
        for label, w in (("full", 0), ("window", window)):
            torch.manual_seed(0)
            # a full softmax over a small catalog: output work linear in length, so attention shows
            model, objective, tokenizer, prob = _model(1_000, length, w, loss="full")
            objective.to(device)
            optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
            batch = _batch(tokenizer, prob, rows, length, np.random.default_rng(0)).to(device)

            def step(objective=objective, optimizer=optimizer, batch=batch) -> None:
                optimizer.zero_grad()
                objective(batch)[0].backward()
                optimizer.step()

            row[f"{label}_s"] = _timed(step, 2, steps, sync)
        out.append(row)
        base = out[0]
        row["full_ratio"], row["window_ratio"] = row["full_s"] / base["full_s"], row["window_s"] / base["window_s"]
        print(f"  length {length:>5}: full {row['full_s'] * 1e3:8.1f} ms ({row['full_ratio']:5.1f}x)   window "
              f"{window}: {row['window_s'] * 1e3:8.1f} ms ({row['window_ratio']:5.1f}x)", flush=True)
    return out


# 3. FLOP/s against the measured peak -------------------------------------------------------------------------

def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return 2 * n**3 / _timed(lambda: a @ b, 2, 5, sync)


def transformer_flops(device: torch.device, shapes: list[tuple[int, int, int]], bf16: bool) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from recfm.fm.transformer import Transformer

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for batch, length, dim in shapes:
        net = Transformer(dim, LAYERS, HEADS if dim == DIM else dim // 64, 4, 0.0, length).to(device)
        x = torch.randn(batch, length, dim, device=device, requires_grad=True)
        lengths = torch.full((batch,), length, device=device)
        for label, cast in (("fp32", False), ("bf16 autocast", True)):
            if cast and not bf16:
                continue

            def step(cast=cast, net=net, x=x, lengths=lengths) -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cast):
                    out = net(x, lengths)[0]
                out.float().sum().backward()

            counter = FlopCounterMode(display=False)
            with counter:
                step()
            seconds = _timed(step, 2, 8, sync)
            rows.append({"batch": batch, "length": length, "dim": dim, "precision": label,
                         "flops": counter.get_total_flops(), "seconds": seconds,
                         "flop_per_s": counter.get_total_flops() / seconds})
    return rows


# ------------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (part of `make bench-quick`)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", default="catalog,sequence,flops", help="which of catalog,sequence,flops")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'CPU'} " \
        f"({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    quick = args.quick
    catalog = [10**4, 10**5] if quick else [10**4, 10**5, 10**6, 10**7]
    lengths = [50, 200, 500] if quick else [50, 100, 200, 500, 1000, 2000]
    bf16 = device.type == "cuda" or "avx512_bf16" in _cpu_flags()
    peak_n = 1024 if quick else 4096 if device.type == "cpu" else 8192
    print(f"scale benchmark on {name}; torch {torch.__version__}", flush=True)

    cat_rows, seq_rows, flop_rows, peaks = [], [], [], {}
    if "catalog" in parts:
        print("1. catalog (sampled softmax, item table sharded row-wise over 2 processes):", flush=True)
        cat_rows = catalog_sweep(catalog, 5 if quick else 10, device.type)
    if "sequence" in parts:
        print(f"2. sequence length (full vs window {MAX_LEN}):", flush=True)
        seq_rows = sequence_sweep(lengths, MAX_LEN, 3 if quick else 5, device)
    if "flops" in parts:
        print("3. achieved FLOP/s vs the measured matmul peak:", flush=True)
        peaks = {"fp32": matmul_peak(device, torch.float32, peak_n)}
        if bf16:
            peaks["bf16 autocast"] = matmul_peak(device, torch.bfloat16, peak_n)
        shapes = [(256, MAX_LEN, DIM)] + ([] if quick else [(64, 200, 256)])
        shapes += [(64, 512, 1024)] if device.type == "cuda" else []  # a size that can fill a GPU
        flop_rows = transformer_flops(device, shapes, bf16)
    for r in flop_rows:
        r["peak_flop_per_s"] = peaks[r["precision"]]
        r["share_of_peak"] = r["flop_per_s"] / peaks[r["precision"]]
        print(f"  batch {r['batch']} x {r['length']} x dim {r['dim']} {r['precision']}: "
              f"{r['flop_per_s'] / 1e9:,.1f} GFLOP/s = {r['share_of_peak']:.1%} of the {peak_n}^3 matmul peak "
              f"{r['peak_flop_per_s'] / 1e9:,.1f} GFLOP/s", flush=True)

    result = {"device": name, "torch": torch.__version__, "quick": quick, "catalog": cat_rows,
              "sequence": seq_rows, "flops": flop_rows, "peaks": peaks, "peak_matmul_n": peak_n,
              "measured": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"scale-{device.type}{'-quick' if quick else ''}{'' if len(parts) == 3 else '-' + '-'.join(sorted(parts))}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    _plots(result, out / stem)
    (out / f"{stem}.md").write_text(summary(result) + "\n")
    print(summary(result))
    if cat_rows:
        print(f"catalog {catalog[0]:.0e} -> {catalog[-1]:.0e} items: step time x{cat_rows[-1]['ratio']:.2f}")
    if seq_rows:
        print(f"sequence {lengths[0]} -> {lengths[-1]}: full x{seq_rows[-1]['full_ratio']:.1f}, window "
              f"x{seq_rows[-1]['window_ratio']:.1f} (work x{lengths[-1] / lengths[0]:.0f})")


def summary(r: dict) -> str:
    lines = [f"Scale on {r['device']} (torch {r['torch']}, {r['measured']}):", "",
             "| catalog items | ms/step | vs 10^4 | worker peak MB |", "|---:|---:|---:|---:|"]
    lines += [f"| {c['items']:,} | {c['step_s'] * 1e3:.1f} | {c['ratio']:.2f}x | {c['peak_rss_mb']:,.0f} |"
              for c in r["catalog"]]
    lines += ["", "| window length | full ms | vs 50 | sliding-window ms | vs 50 |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['length']} | {s['full_s'] * 1e3:.1f} | {s['full_ratio']:.1f}x | {s['window_s'] * 1e3:.1f} | "
              f"{s['window_ratio']:.1f}x |" for s in r["sequence"]]
    lines += ["", "| transformer shape (batch x length x dim) | precision | GFLOP/s | share of matmul peak |",
              "|---|---|---:|---:|"]
    lines += [f"| {f['batch']} x {f['length']} x {f['dim']} | {f['precision']} | {f['flop_per_s'] / 1e9:,.1f} | "
              f"{f['share_of_peak']:.1%} of {f['peak_flop_per_s'] / 1e9:,.1f} |" for f in r["flops"]]
    return "\n".join(lines)


def _plots(r: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not r["catalog"] or not r["sequence"]:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot([c["items"] for c in r["catalog"]], [c["step_s"] * 1e3 for c in r["catalog"]], "o-")
    ax[0].set(xscale="log", xlabel="catalog items (sharded over 2 ranks)", ylabel="ms / step",
              title="step time vs catalog (sampled softmax)")
    ax[0].set_ylim(bottom=0)
    ax[1].plot([s["length"] for s in r["sequence"]], [s["full_s"] * 1e3 for s in r["sequence"]], "o-", label="full")
    ax[1].plot([s["length"] for s in r["sequence"]], [s["window_s"] * 1e3 for s in r["sequence"]], "o-",
               label=f"sliding window {MAX_LEN}")
    ax[1].set(xlabel="events per window", ylabel="ms / step", title="step time vs sequence length")
    ax[1].legend()
    fig.suptitle(r["device"])
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=100)
    plt.close(fig)


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
