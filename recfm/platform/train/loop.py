"""The one training loop: the foundation model, the task heads and the distilled student all train through it.

Each model supplies a `Job` (its model and optimiser, its batches, its loss, its validation, how its weights are
saved); the loop owns the rest, the same for all three. Per epoch: train on this worker's share, validate every
`val_every` epochs (collectively), early stopping, the time budget, a metrics.jsonl line and TensorBoard scalars
(rank 0), and a checkpoint reported to Ray Train at every validation (Ray keeps the best by the job's
selection figure). Every worker reports exactly once per epoch and takes the same stopping decision (figures and
elapsed time are all-reduced): Ray Train and the collectives hang otherwise. After a failure, or on a resume,
Ray hands back the latest kept checkpoint and the loop continues from it.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist

from recfm.platform.config import RecfmConfig, config_from_dict
from recfm.platform.runtime import configure_process
from recfm.platform.train.metrics import MetricsLogger
from recfm.platform.train.state import TrainState, read_state, write_state


@dataclass
class LoopSettings:
    epochs: int
    patience: int = 1
    val_every: int = 1  # 0: never validate (a refit): the last epoch's checkpoint is the result
    max_minutes: float = 0.0  # 0: no time budget
    selection: str = "val_ndcg10"  # the validation figure that early stopping and Ray's checkpoint ranking use
    figure: str = "validation NDCG@10"  # how the reason for stopping names it


class Job:
    """What one model brings to the loop. Subclasses set `model` (called by `loss`), `optimizer`, `settings`,
    `metrics_dir` and `metrics_file`, and override `batches`, `loss` and, where they validate, `validate`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    settings: LoopSettings
    metrics_dir: Path
    metrics_file: str
    unit = "examples"  # what `count` counts, for the throughput figure
    state: TrainState | None = None  # where training starts when no checkpoint is handed back (a refit's)

    def batches(self, epoch: int) -> Iterable:
        """This worker's batches of `epoch` (1-based); the same number on every worker."""
        raise NotImplementedError

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise, and any parts of it worth a curve."""
        raise NotImplementedError

    def count(self, batch) -> float:
        return float(len(batch))

    def before_step(self, step: int) -> None:
        """Before step `step` (0-based, over the whole run): a learning-rate schedule, for instance."""

    def validate(self) -> dict[str, float]:
        """Collective: the same figures on every worker, `settings.selection` among them."""
        return {}

    def save(self, directory: Path, rank: int) -> None:
        """Collective: this worker's part of a checkpoint into its own `directory` (rank 0's at least)."""
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        """Collective: restores what `save` wrote (Ray merges every worker's files into one directory)."""
        raise NotImplementedError

    def learning_rate(self) -> float:
        """The rate the curves show (the first parameter group's)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def hparams(self) -> dict:
        """The settings written to TensorBoard's HParams beside the best figure (none by default)."""
        return {}


JobClass = Callable[[RecfmConfig, dict, int, int], Job]  # a Job subclass: (config, job config, rank, world)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's `train_loop_per_worker` for every job: builds this worker's `Job` of `config["job_class"]`
    (from the resolved config, the job's own config with any object-store references resolved, the rank and the
    world size) and runs the loop."""
    cfg = config_from_dict(config["cfg"])
    # as many torch threads as CPUs Ray gave the worker (the heap setting assumes few threads: see its note)
    configure_process(threads=max(1, int(cfg.train.cpus_per_worker)), steady_heap=True)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    job_config = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in config["job"].items()}
    run_epochs(config["job_class"](cfg, job_config, rank, world), rank, world)


def run_epochs(job: Job, rank: int, world: int) -> None:
    s = job.settings
    logger = MetricsLogger(job.metrics_dir, enabled=rank == 0, file_name=job.metrics_file)
    checkpoint = ray.train.get_checkpoint()
    state, resumed_from = job.state or TrainState(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            job.load(Path(directory))
            state = read_state(Path(directory))
        state.stopped = ""  # re-decided under this run's settings (a resume may allow more epochs)
        resumed_from = state.epoch
    logger.forget_after(state.epoch)  # what an attempt that failed logged past the checkpoint (or from scratch)
    while state.epoch < s.epochs and not state.stopped:
        state.epoch += 1
        started = time.perf_counter()
        metrics = _train_epoch(job, state, world)
        validating = bool(s.val_every) and (state.epoch % s.val_every == 0 or state.epoch == s.epochs)
        if validating:
            metrics |= job.validate()
        state.elapsed_s += all_max(time.perf_counter() - started)
        if validating:
            state.validated(metrics[s.selection], s.patience, s.figure)
        metrics["elapsed_min"] = state.elapsed_s / 60
        if s.max_minutes and state.elapsed_s > 60 * s.max_minutes and not state.stopped:
            state.stopped = f"time budget of {s.max_minutes:g} minutes reached"
        if state.epoch == s.epochs and not state.stopped:
            state.stopped = f"all {s.epochs} epochs done"
        logger.log(state.step, metrics, state.epoch, stopped=state.stopped, resumed_from=resumed_from)
        resumed_from = None
        report = {k.replace("/", "_"): v for k, v in metrics.items()} | {"epoch": state.epoch, "step": state.step}
        report |= {"best_epoch": state.best_epoch, f"best_{s.selection}": state.best_metric}
        # a checkpoint carries the figure Ray ranks checkpoints by; a job that never validates keeps its last
        if validating or (not s.val_every and state.stopped):
            _report_checkpoint(job, state, rank, report)
        else:
            ray.train.report(report)
    if hparams := job.hparams():
        logger.hparams(hparams, {f"best_{s.selection}": state.best_metric, "best_epoch": state.best_epoch})
    logger.close()


def _train_epoch(job: Job, state: TrainState, world: int) -> dict[str, float]:
    started = time.perf_counter()
    sums: dict[str, float] = {}
    steps, count = 0, 0.0
    for batch in job.batches(state.epoch):
        job.before_step(state.step)
        job.optimizer.zero_grad()  # first: a TorchRec fused optimiser takes its learning rate here
        loss, parts = job.loss(batch)
        loss.backward()
        job.optimizer.step()
        state.step += 1
        steps += 1
        count += job.count(batch)
        values = {"loss": float(loss)} | {f"loss_{k}": float(v) for k, v in parts.items()}
        for name, value in values.items():
            sums[f"train/{name}"] = sums.get(f"train/{name}", 0.0) + value
    metrics = all_mean({k: v / max(steps, 1) for k, v in sums.items()} | {"count": count}, world)
    metrics[f"train/{job.unit}_per_s"] = metrics.pop("count") * world / all_max(time.perf_counter() - started)
    metrics["train/lr"] = job.learning_rate()
    # the largest worker's peak resident memory so far (streamed data must keep it bounded)
    metrics["worker/peak_rss_mb"] = all_max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return metrics


def _report_checkpoint(job: Job, state: TrainState, rank: int, report: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        job.save(Path(directory), rank)
        if rank == 0:
            write_state(Path(directory), state)
        if any(Path(directory).iterdir()):
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=f"epoch_{state.epoch:04d}")
        else:  # a worker with no part of the checkpoint (a dense model's weights are rank 0's)
            ray.train.report(report)


def all_mean(values: dict[str, float], world: int) -> dict[str, float]:
    """Means over workers (all-reduced: every worker gets the same)."""
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return {k: float(v) / world for k, v in zip(keys, tensor, strict=True)}


def all_max(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)
