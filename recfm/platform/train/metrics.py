"""Training metrics: TensorBoard scalars (and hparams) plus a metrics.jsonl line per epoch, from rank 0."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

TB_DIR = "tb"
METRICS_FILE = "metrics.jsonl"
REFIT_METRICS_FILE = "refit_metrics.jsonl"


class MetricsLogger:
    """A no-op unless `enabled` (rank 0), so callers need not branch on rank."""

    def __init__(self, run_dir: Path, enabled: bool, file_name: str = METRICS_FILE):
        self.enabled = enabled
        self.path = Path(run_dir) / file_name
        self.writer = SummaryWriter(str(Path(run_dir) / TB_DIR)) if enabled else None

    def log(self, step: int, values: dict[str, float], epoch: int | None = None, stopped: str = "") -> None:
        """Scalars to TensorBoard; with `epoch`, a metrics.jsonl line too (with why training stopped, if it did)."""
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        if epoch is not None:
            line = {"epoch": epoch, "step": step, **values} | ({"stopped": stopped} if stopped else {})
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        if self.enabled:
            flat = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in params.items()}
            self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
