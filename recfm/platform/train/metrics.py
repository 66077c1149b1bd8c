"""Training metrics: TensorBoard scalars (and hparams) plus a metrics.jsonl line per epoch, from rank 0, into a run's
directory (the FM's) or a stage's own (heads/, distill/)."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from recfm.run.files import METRICS_FILE, TB_DIR


def last_stop(path: Path) -> str:
    """Why training ended, from the last epoch's line of a metrics file (the kept checkpoint may precede it)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]).get("stopped", "?") if lines else "?"


class MetricsLogger:
    """A no-op unless `enabled` (rank 0), so callers need not branch on rank."""

    def __init__(self, run_dir: Path, enabled: bool, file_name: str = METRICS_FILE):
        self.enabled = enabled
        self.path = Path(run_dir) / file_name
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(Path(run_dir) / TB_DIR)) if enabled else None

    def log(self, step: int, values: dict[str, float], epoch: int | None = None, stopped: str = "",
            resumed_from: int | None = None) -> None:
        """Scalars to TensorBoard; with `epoch`, a metrics.jsonl line too (with why training stopped, if it did,
        and the checkpoint's epoch on the first epoch after a restart from one)."""
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        if epoch is not None:
            line = {"epoch": epoch, "step": step, **values} | ({"stopped": stopped} if stopped else {})
            line |= {"resumed_from": resumed_from} if resumed_from is not None else {}
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")

    def forget_after(self, epoch: int) -> None:
        """Drops metrics.jsonl lines past `epoch`: after a worker failure the run restarts from the checkpoint
        of `epoch`, and the epochs the failed attempt logged after it are trained again."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["epoch"] <= epoch]
        if len(kept) < len(lines):
            self.path.write_text("".join(kept))

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        if self.enabled:
            flat = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in params.items()}
            self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
