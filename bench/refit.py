"""The refit step measured on an existing run, without training it again: its best checkpoint continued on every
event before the test target (leave-one-out: train + validation) under other refit settings, each tested beside
the checkpoint as trained, the baselines, and the refitted FM's blend with EASE (`eval.blend_weights`).

    .venv/bin/python bench/refit.py RUN_DIR [--variant NAME KEY=VALUE ...] ...

e.g. `--variant constant train.refit_epochs=3 --variant cooldown train.refit_epochs=3 train.refit_decay=true`;
a variant with `train.cooldown_epochs` runs the training's cooldown from the best checkpoint first (validated), then
refits the better of the two.
Each variant writes RUN_DIR/refit-<NAME>/ (its checkpoints and results table); the last lines print the test
NDCG@10 and HR@10 of every row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    args = parser.parse_args()

    from recfm.data.dataset import Sequences
    from recfm.data.pipeline import ensure_prepared
    from recfm.platform.config import load_config
    from recfm.platform.runtime import configure_process, shutdown_ray_if_started
    from recfm.platform.train.job import (
        ITEM_CONTENT_FILE,
        ITEM_PROB_FILE,
        run_ray_training,
        test_run,
    )
    from recfm.run.files import BEST_LINK, MODEL_FILE

    run = Path(args.run_dir).resolve()
    best = (run / BEST_LINK).resolve()
    spec = json.loads((run / MODEL_FILE).read_text())
    summary = []
    with shutdown_ray_if_started():
        for name, *overrides in args.variant:
            cfg = load_config(run / "config.yaml", overrides)
            configure_process(cfg.threads)
            prepared = ensure_prepared(cfg.data, lambda _: None)
            seqs = Sequences.load(prepared)
            out = run / f"refit-{name}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for f in (MODEL_FILE, ITEM_PROB_FILE, ITEM_CONTENT_FILE):
                if (run / f).exists():
                    shutil.copy(run / f, out / f)
            start = best  # with train.cooldown_epochs, the cooldown runs first (from the run's best checkpoint)
            if cfg.train.cooldown_epochs:
                start = run_ray_training(cfg, out, prepared, spec, None, print, cooldown_from=best)
            final = run_ray_training(cfg, out, prepared, spec, None, print, refit_from=start)
            results = test_run(cfg, out, seqs, spec, start, final, print)
            summary += [f"{name:>12} {r.name:<26} NDCG@10 {r.metrics['NDCG@10']:.4f}  HR@10 {r.metrics['HR@10']:.4f}"
                        f"  (validation NDCG@10 {r.val_metric or 0:.4f}; {r.params})"
                        for r in results if r.name.startswith("recfm")]
    print("\n".join(summary))


if __name__ == "__main__":
    sys.exit(main())
