"""Run directories: one per job, holding its resolved config and everything it writes."""

from __future__ import annotations

import time
from pathlib import Path

from recfm.platform.config import RecfmConfig, to_yaml

RUNS_DIR = Path("runs")
CONFIG_FILE = "config.yaml"


def create_run_dir(cfg: RecfmConfig) -> Path:
    """`cfg.run_dir`, or runs/<name>-<time>; the resolved config is saved in it."""
    path = Path(cfg.run_dir) if cfg.run_dir else RUNS_DIR / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (path / "ray").exists():
        raise FileExistsError(f"{path} already holds a training run: continue it with --resume {path}, or pick "
                              f"another run_dir")
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(to_yaml(cfg))
    return path


def latest_run(root: Path = RUNS_DIR) -> Path | None:
    """The most recently started run directory under `root` (the one a bare --resume continues)."""
    runs = [p for p in Path(root).glob("*") if (p / CONFIG_FILE).exists()]
    return max(runs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime, default=None)
