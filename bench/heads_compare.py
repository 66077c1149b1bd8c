"""The unified contextual ranker against one ranker per task, each over a frozen and a fine-tuned FM, on one
trained run (same FM, same requests, same baselines). Writes bench/results/heads-<run name>.md.

    .venv/bin/python bench/heads_compare.py [RUN_DIR] [key=value ...]

RUN_DIR defaults to the newest run under runs/ (it must have been trained with data.split=time, as `make demo`
is). Each variant is trained on Ray and written into RUN_DIR/heads-<mode>-<fm>/.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from recfm.platform.config import load_config
from recfm.platform.train.heads import heads_table, train_heads
from recfm.run.files import CONFIG_FILE
from recfm.run.run import latest_run

VARIANTS = [("unified", "frozen"), ("separate", "frozen"), ("unified", "finetune"), ("separate", "finetune")]


def main(argv: list[str]) -> None:
    run = Path(argv[0]) if argv and "=" not in argv[0] else latest_run()
    overrides = [a for a in argv if "=" in a]
    if run is None:
        sys.exit("no run: pass a run directory trained with data.split=time (e.g. from `make demo`)")
    rows, notes, seconds = [], [], {}
    for mode, fm in VARIANTS:
        cfg = load_config(run / CONFIG_FILE, [*overrides, f"heads.mode={mode}", f"heads.fm={fm}"])
        started = time.perf_counter()
        out = train_heads(run, cfg, out_name=f"heads-{mode}-{fm}", log=lambda line: print(line, flush=True))
        seconds[f"{mode}, FM {fm}"] = time.perf_counter() - started
        result = json.loads((out / "results.json").read_text())
        rows += [r for r in result["rows"] if r["model"].startswith("recfm heads") or (mode, fm) == VARIANTS[0]]
        notes = [result["note"]]
    order = {task: i for i, task in enumerate(("search", "similars", "homepage"))}
    rows.sort(key=lambda r: order[r["task"]])
    text = (f"# Heads: unified vs separate, frozen vs fine-tuned FM\n\nRun: `{run}`; command: "
            f"`.venv/bin/python bench/heads_compare.py {' '.join(argv)}`\n\n" + heads_table(rows, notes[0])
            + "\nTraining + test time per variant (2 Ray workers): "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()) + "\n")
    out = Path(__file__).parent / "results" / f"heads-{load_config(run / CONFIG_FILE).name}.md"
    out.write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
