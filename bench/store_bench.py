"""Embedding-store benchmark: write throughput and top-10 query latency at 1M x 64, for both backends.

    .venv/bin/python bench/store_bench.py [--n 1000000] [--dim 64] [--queries 1000] [--backends lancedb,postgresql]

Each backend runs the real push path (`EmbeddingStore.stage`, chunked `write`, then `promote`, which validates
what was stored and builds the index: IVF-PQ in LanceDB, HNSW in pgvector) and then answers `--queries` top-10
queries one at a time through a `Snapshot`. PostgreSQL is a throwaway local server (`local_postgres`) on a Unix
socket. References measured in the same run: writing the same matrix to a .npy file (the disk), and an exact
top-10 by a NumPy matrix-vector product (a flat scan without any store). Recall@10 is against that exact
answer. The data are clustered (1,000 centres plus noise), as learned embeddings are; uniform random vectors
would make any approximate index look worse than it will be.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from recfm.serving_exports.backends import open_store
from recfm.serving_exports.local_postgres import local_postgres
from recfm.serving_exports.store import chunked

RESULTS = Path(__file__).parent / "results"


def data(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    draw = lambda m: centres[rng.integers(0, 1000, m)] + 0.5 * rng.standard_normal((m, dim)).astype(np.float32)  # noqa: E731
    return draw(n), draw(queries)


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> tuple[list[set[int]], np.ndarray]:
    answers, times = [], []
    for q in queries:
        start = time.perf_counter()
        scores = vectors @ q
        top = np.argpartition(-scores, 10)[:10]
        times.append(time.perf_counter() - start)
        answers.append(set(top.tolist()))
    return answers, np.array(times)


def run_backend(uri: str, vectors: np.ndarray, queries: np.ndarray, exact: list[set[int]], chunk_rows: int) -> dict:
    n, dim = vectors.shape
    ids = [str(i) for i in range(n)]
    with open_store(uri, "bench") as store:
        name = f"bench-{int(time.time())}"
        store.stage(name, dim=dim, metric="dot")
        start = time.perf_counter()
        for chunk in chunked("item", ids, vectors, chunk_rows):
            store.write(name, chunk)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        store.promote(name, {"item": n})
        promote_s = time.perf_counter() - start
        snap = store.snapshot()
        for q in queries[:20]:  # warm the index and caches
            snap.nearest("item", q, 10)
        times, recall = [], []
        for q, truth in zip(queries, exact, strict=True):
            start = time.perf_counter()
            rows = snap.nearest("item", q, 10)
            times.append(time.perf_counter() - start)
            recall.append(len(truth & {int(i) for i in rows.ids}) / 10)
    times = np.array(times) * 1e3
    return {"write_s": write_s, "vectors_per_min": n / write_s * 60, "promote_s (validate + index)": promote_s,
            "query_p50_ms": float(np.percentile(times, 50)), "query_p99_ms": float(np.percentile(times, 99)),
            "recall@10": float(np.mean(recall))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--backends", default="lancedb,postgresql")
    args = parser.parse_args()
    vectors, queries = data(args.n, args.dim, args.queries)
    results: dict = {"n": args.n, "dim": args.dim, "queries": args.queries, "chunk_rows": args.chunk_rows}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        np.save(Path(tmp) / "ref.npy", vectors)
        results["reference: np.save vectors/min"] = args.n / (time.perf_counter() - start) * 60
    exact, exact_times = exact_top10(vectors, queries)
    results["reference: exact NumPy top-10 p50_ms"] = float(np.percentile(exact_times, 50) * 1e3)
    results["reference: exact NumPy top-10 p99_ms"] = float(np.percentile(exact_times, 99) * 1e3)
    print(json.dumps(results, indent=1), flush=True)
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if backend == "lancedb":
                row = run_backend(str(Path(tmp) / "lance"), vectors, queries, exact, args.chunk_rows)
            else:
                with local_postgres(Path(tmp) / "pg") as uri:
                    row = run_backend(uri, vectors, queries, exact, args.chunk_rows)
        row["write vs np.save"] = row["vectors_per_min"] / results["reference: np.save vectors/min"]
        row["p50 vs exact NumPy"] = row["query_p50_ms"] / results["reference: exact NumPy top-10 p50_ms"]
        results[backend] = row
        print(backend, json.dumps(row, indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"store-{args.n}x{args.dim}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
