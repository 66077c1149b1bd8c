"""Rolling-origin backtest of the task heads: the demo's time split repeated at earlier origins, so that the
heads meet several disjoint test windows instead of one. Writes bench/results/heads-backtest.md.

    .venv/bin/python bench/heads_backtest.py [--folds 4] [--window 0.1] [--span 0.2] [--reuse] [key=value ...]

Fold k (0 = the latest) tests on the events in the quantiles [1 - (k+1)·window, 1 - k·window) of the bundled
ml-latest-small's interaction times; its heads learn from the `span` before that, its FM from everything before
that. Each fold is an ordinary `recfm train` (FM, refit, baselines, heads) on a copy of the data cut at the
window's end, so no fold sees an event after its own window; fold 0 is the demo's own split (0.7 / 0.9). Why:
the demo's test window holds 532 homepage requests from 49 users, too few to tell two homepage rankers apart
(a user-bootstrap interval of about ±0.01 NDCG@10); pooling the windows' requests narrows it.

The pooled comparison resamples users with all their requests from every fold together (a user active in two
windows is one unit). `--reuse` keeps fold runs already finished under runs/backtest/ (their heads are trained
only when `--heads`/test_ranks.npz is missing: `--reuse --heads heads-x heads.some_key=...` tests a variant of the
heads on the same FMs).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recfm.data.config import DEMO_DATA
from recfm.heads.examples import TASKS
from recfm.platform.evaluation.significance import paired_difference
from recfm.ranking.metrics import ndcg_at
from recfm.run.files import HEADS_DIR, HEADS_RANKS_FILE

ROOT = Path(__file__).resolve().parent.parent
HEAD = "recfm heads (unified, FM frozen)"


def cut_copy(source: Path, out: Path, end: float) -> None:
    """The MovieLens folder with the ratings and tags at or after `end` left out (the catalog files as they are)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name.startswith(("ratings.", "tags.")):
            table = pd.read_csv(path)
            table[table["timestamp"] < end].to_csv(out / path.name, index=False)
        elif path.is_file():
            shutil.copy(path, out / path.name)


def run_fold(k: int, cuts: tuple[float, float, float | None], source: Path, work: Path, overrides: list[str],
             reuse: bool, heads: str) -> Path:
    """The fold's run directory, with its heads' test ranks in `heads`/ (trained here unless reused)."""
    val, test, end = cuts
    run_dir = work / f"fold{k}"
    if reuse and (run_dir / heads / HEADS_RANKS_FILE).exists():
        return run_dir
    started = time.perf_counter()
    if not (reuse and (run_dir / "final_checkpoint").exists()):
        data = source
        if end is not None:
            data = work / f"data-fold{k}"
            cut_copy(source, data, end)
        shutil.rmtree(run_dir, ignore_errors=True)
        _recfm("train", f"run_dir={run_dir}", f"data.source={data}", f"data.val_cutoff={val}",
               f"data.test_cutoff={test}", *overrides)
    if not (run_dir / heads / HEADS_RANKS_FILE).exists():
        _recfm("heads", "train", str(run_dir), "--out", heads, *overrides)
    print(f"fold {k}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return run_dir


def _recfm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "recfm", *args], check=True, cwd=ROOT)


def fold_cuts(ts: np.ndarray, folds: int, window: float, span: float) -> list[tuple[float, float, float | None]]:
    """(validation cutoff, test cutoff, end) per fold as timestamps; fold 0 runs to the end of the data."""
    cuts = []
    for k in range(folds):
        end_q = 1.0 - k * window
        test_q, val_q = end_q - window, end_q - window - span
        if val_q <= 0:
            raise SystemExit(f"fold {k} would start its heads' span at quantile {val_q:.2f}: fewer folds or a "
                             "smaller window")
        end = None if k == 0 else float(np.quantile(ts, end_q))
        cuts.append((float(np.quantile(ts, val_q)), float(np.quantile(ts, test_q)), end))
    return cuts


def pooled_rows(fold_ranks: list[dict[str, np.ndarray]], level: float = 0.9) -> list[dict]:
    """Per task and model: NDCG@10 over every fold's requests, and the head minus it with its user interval."""
    rows = []
    for task in TASKS:
        present = [r for r in fold_ranks if f"{task}:user" in r]
        if not present:
            continue
        models = [key.split(":", 1)[1] for key in present[0] if key.startswith(f"{task}:") and key != f"{task}:user"]
        users = np.concatenate([r[f"{task}:user"] for r in present])
        head = np.concatenate([r[f"{task}:{HEAD}"] for r in present])
        for model in models:
            ranks = np.concatenate([r[f"{task}:{model}"] for r in present])
            row = {"task": task, "model": model, "NDCG@10": float(ndcg_at(ranks, 10).mean()),
                   "HR@10": float((ranks < 10).mean()), "requests": len(ranks), "users": len(np.unique(users))}
            if model != HEAD:
                diff, low, high = paired_difference(head, ranks, users, 10, level=level)
                row |= {"diff": diff, "low": low, "high": high}
            rows.append(row)
    return rows


def fold_ndcg(ranks: dict[str, np.ndarray], task: str, model: str) -> str:
    key = f"{task}:{model}"
    return f"{ndcg_at(ranks[key], 10).mean():.4f}" if key in ranks else "-"


def pooled_table(rows: list[dict], title: str, level: float) -> list[str]:
    lines = ["", f"{title} (the interval resamples users, with all their requests in every fold, 2,000 draws):", "",
             "| task | model | HR@10 | NDCG@10 | requests (users) | the head's NDCG@10 minus this "
             f"({level:.0%} interval) |", "|---|---|---:|---:|---:|---|"]
    for row in rows:
        versus = f"{row['diff']:+.4f} ({row['low']:+.4f} to {row['high']:+.4f})" if "diff" in row else ""
        lines.append(f"| {row['task']} | {row['model']} | {row['HR@10']:.4f} | {row['NDCG@10']:.4f} | "
                     f"{row['requests']:,} ({row['users']}) | {versus} |")
    return lines


def report(cuts, fold_ranks: list[dict[str, np.ndarray]], rows: list[dict], command: str, level: float,
           fresh: list[dict], fresh_from: int) -> str:
    day = lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))  # noqa: E731
    lines = ["# Heads: rolling-origin backtest on ml-latest-small", "", f"Command: `{command}`", "",
             "| fold | heads learn from | test window | search / similars / homepage requests (users) |",
             "|---|---|---|---|"]
    for k, ((val, test, end), ranks) in enumerate(zip(cuts, fold_ranks, strict=True)):
        counts = " / ".join(f"{len(ranks[f'{t}:user']):,} ({len(np.unique(ranks[f'{t}:user']))})"
                            for t in TASKS if f"{t}:user" in ranks)
        lines.append(f"| {k} | {day(val)} to {day(test)} | {day(test)} to {day(end) if end else 'the end'} | "
                     f"{counts} |")
    lines += ["", "Per fold, NDCG@10:", "", "| task | model | " + " | ".join(f"fold {k}" for k in range(len(cuts)))
              + " |", "|---|---|" + "---:|" * len(cuts)]
    for row in rows:
        lines.append(f"| {row['task']} | {row['model']} | "
                     + " | ".join(fold_ndcg(r, row["task"], row["model"]) for r in fold_ranks) + " |")
    lines += pooled_table(rows, "Pooled over the folds", level)
    if fresh:
        lines += pooled_table(fresh, f"Pooled over folds {fresh_from} to {len(cuts) - 1} alone", level)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--window", type=float, default=0.1, help="each test window, as a share of events")
    parser.add_argument("--span", type=float, default=0.2, help="the heads' training span, as a share of events")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "backtest")
    parser.add_argument("--reuse", action="store_true", help="keep finished fold runs under --work")
    parser.add_argument("--heads", default=HEADS_DIR, help="the heads' directory in each fold's run (another name "
                        "with --reuse: train a variant of the heads on the same FMs)")
    parser.add_argument("--level", type=float, default=0.9, help="the pooled bootstrap interval's coverage")
    parser.add_argument("--fresh-from", type=int, default=0, help="also pool the folds from this one on alone "
                        "(folds added to an earlier backtest, whose tests nobody has seen)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "heads-backtest.md")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every fold")
    args = parser.parse_args(argv)
    ratings = next(DEMO_DATA.glob("ratings.*"))
    cuts = fold_cuts(pd.read_csv(ratings, usecols=["timestamp"])["timestamp"].to_numpy(), args.folds, args.window,
                     args.span)
    args.work.mkdir(parents=True, exist_ok=True)
    fold_ranks = []
    for k, fold in enumerate(cuts):
        run_dir = run_fold(k, fold, DEMO_DATA, args.work, args.overrides, args.reuse, args.heads)
        with np.load(run_dir / args.heads / HEADS_RANKS_FILE) as ranks:
            fold_ranks.append(dict(ranks))
    text = report(cuts, fold_ranks, pooled_rows(fold_ranks, args.level),
                  ".venv/bin/python bench/heads_backtest.py " + " ".join(argv), args.level,
                  pooled_rows(fold_ranks[args.fresh_from:], args.level) if args.fresh_from else [], args.fresh_from)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
