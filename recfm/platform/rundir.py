"""A new run directory for a job's typed config (the run layer, `recfm.run`, owns everything else about runs)."""

from __future__ import annotations

from pathlib import Path

from recfm.platform.config import RecfmConfig, to_yaml
from recfm.run.run import create_run_dir as _create
from recfm.run.run import default_run_dir


def create_run_dir(cfg: RecfmConfig) -> Path:
    """`cfg.run_dir`, or runs/<name>-<time>; the resolved config is saved in it."""
    return _create(Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg.name), to_yaml(cfg))
