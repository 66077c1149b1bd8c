"""The packed transformer (the FM's default) against the padded one, per training step, in one process.

    .venv/bin/python bench/packing.py [--steps 12] [--threads 1] [--out bench/results]

A Ray worker's training step at the sequence recipe's shape (`configs/sequences.yaml`: dim 128, 2 layers, 256
windows of up to 50 events, full softmax): forward and backward of the unsharded model with its loss, on windows
cut from Amazon Beauty's real sequence lengths (a synthetic long-tailed length mix where the file is absent).
The two modes alternate step by step on the same batches; the figure is the ratio of median step times. Both
compute the same function (tests/unit/fm/test_model.py compares them); only the work on padded positions differs.
Writes packing.md.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEAUTY = ROOT.parent / "shared" / "data" / "amazon-beauty" / "Beauty.txt.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="a Ray worker trains on 1 thread")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    import numpy as np
    import torch

    from recfm.fm.batching import training_batch
    from recfm.fm.config import ModelConfig, ObjectiveConfig
    from recfm.fm.model import UserFoundationModel
    from recfm.fm.objectives import TrainingObjective
    from recfm.fm.tokens import EventTokenizer

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    max_len, batch_size, n_items = 50, 256, 12_101
    if BEAUTY.exists():
        with gzip.open(BEAUTY, "rt") as f:
            lengths = np.array([len(line.split()) - 1 for line in f if line.strip()])
        source = f"Amazon Beauty's {len(lengths):,} sequences"
    else:
        lengths = np.minimum(5 + rng.geometric(0.2, 22_000), 400)
        source = "synthetic lengths (Beauty is absent)"
    known = lengths - 2  # leave-one-out: the training prefix ends before the validation target
    windows = np.concatenate([np.minimum(k - 1 - max_len * np.arange(int(np.ceil((k - 1) / max_len))), max_len) + 1
                              for k in known if k > 1])

    tokenizer = EventTokenizer.from_data(["item"], n_items, {}, False, np.ones(1), 8, 8)
    model = UserFoundationModel(ModelConfig(dim=128, dropout=0.5, max_len=max_len, facets=["item"],
                                            content=False), tokenizer)
    objective = TrainingObjective(model, ObjectiveConfig(loss="full"))
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-4)
    padded_forward = model.transformer.forward

    def batch():
        sizes = rng.choice(windows, batch_size)
        rows = {"item": [rng.integers(0, n_items, n) for n in sizes], "ts": [np.arange(n, dtype=np.float64)
                                                                              for n in sizes],
                "value": [np.ones(n) for n in sizes]}
        return training_batch(rows, sizes, tokenizer, max_len, 1)

    def step(b, packed: bool) -> float:
        model.transformer.forward = (padded_forward if packed else
                                     lambda x, lengths, packed=False: padded_forward(x, lengths, packed=False))
        start = time.perf_counter()
        optimizer.zero_grad()
        loss, _ = objective(b)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {True: [], False: []}
    step(batch(), True), step(batch(), False)  # warm-up
    for i in range(args.steps):
        b = batch()
        for packed in ((True, False) if i % 2 else (False, True)):
            times[packed].append(step(b, packed))
    padded, packed = statistics.median(times[False]), statistics.median(times[True])
    real = float(np.mean(windows - 1))
    lines = [f"Packed vs padded transformer, one training step ({time.strftime('%Y-%m-%d %H:%M')}; "
             f"`bench/packing.py --steps {args.steps} --threads {args.threads}`)", "",
             f"Model: dim 128, 2 layers, full softmax over {n_items:,} items; {batch_size} windows of up to {max_len} "
             f"events drawn from {source} (mean {real:.1f} inputs per window); {args.threads} thread(s); "
             f"median of {args.steps} steps each, alternating.", "",
             "| transformer | step (s) | vs padded |", "|---|---:|---:|",
             f"| padded | {padded:.3f} | 1.00x |", f"| packed | {packed:.3f} | {padded / packed:.2f}x |"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "packing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
