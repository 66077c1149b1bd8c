"""The training loop every Ray Train worker runs.

Per epoch: train on this worker's shard, validate (collectively) every `val_every` epochs, save a sharded
checkpoint and report it. Every worker reports exactly once per epoch and takes the same stopping decision
(validation figures and elapsed time are all-reduced): Ray Train and TorchRec both hang otherwise.
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from recfm.fm.distributed.sharding import ShardedTraining, shard
from recfm.fm.model import build_model
from recfm.fm.objectives import TrainingObjective
from recfm.platform.config import RecfmConfig, config_from_dict
from recfm.platform.runtime import configure_process
from recfm.platform.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from recfm.platform.train.data import TrainingCollate, ValidationCollate
from recfm.platform.train.metrics import MetricsLogger
from recfm.platform.train.validation import validate
from recfm.run.files import METRICS_FILE, REFIT_METRICS_FILE

SELECTION = "val_ndcg10"


def train_worker(config: dict) -> None:
    """Ray Train's `train_loop_per_worker`: `config` holds the resolved config, model spec and paths."""
    configure_process(threads=1, steady_heap=True)
    cfg: RecfmConfig = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if cfg.train.use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.train.seed)  # dense weights start equal (DDP also broadcasts rank 0's)

    model = build_model(config["spec"], device=torch.device("meta"))  # DMP materialises each rank's shards
    refit = config.get("refit_from") is not None  # continue the best model on every event before the test cutoff
    if model.content is not None:
        with np.load(config["item_content"]) as f:
            model.content.load(f["vectors"], f["has_id_refit" if refit else "has_id"], f["centroids"])
    item_prob = torch.from_numpy(np.load(config["item_prob"]))
    objective = TrainingObjective(model, cfg.objective, item_prob, seed=cfg.train.seed * 1000 + rank)
    training = shard(objective, model.embeddings, model.facets, cfg.sharding, cfg.train.lr, cfg.train.weight_decay,
                     device)
    state = TrainState()
    logger = MetricsLogger(Path(config["run_dir"]), enabled=rank == 0,
                           file_name=REFIT_METRICS_FILE if refit else METRICS_FILE)
    # Ray Train hands back the latest reported checkpoint when it restarts the workers after a failure
    # (`train.max_failures`) or when `recfm train --resume` continues a run
    checkpoint = ray.train.get_checkpoint()
    resumed_from = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory), training)
        state.stopped = ""  # re-decided under this run's settings (a resume may allow more epochs)
        resumed_from = state.epoch
    elif refit:
        state = load_checkpoint(Path(config["refit_from"]), training)
        state.epoch, state.elapsed_s, state.stopped = 0, 0.0, ""
        if model.content is not None:  # the checkpoint's says which items had IDs before the validation cutoff
            with np.load(config["item_content"]) as f:
                model.content.has_id.copy_(torch.from_numpy(f["has_id_refit"]))
    logger.forget_after(state.epoch)  # what an attempt that failed logged past the checkpoint (or from scratch)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = None if refit else ray.train.get_dataset_shard("val")
    tokenizer, mcfg, t = model.tokenizer, cfg.model, cfg.train
    epochs = t.refit_epochs if refit else t.epochs
    while state.epoch < epochs and not state.stopped:
        epoch = state.epoch + 1
        started = time.perf_counter()
        collate = TrainingCollate(tokenizer, mcfg.max_len, cfg.objective.mtp)
        schedule = _Schedule(t.warmup_steps, refit and t.refit_decay, epoch, epochs, state.step,
                             config.get("steps_per_epoch"))
        sums = _train_epoch(training, train_shard.iter_torch_batches(
            batch_size=t.batch_size, collate_fn=collate, drop_last=True, local_shuffle_buffer_size=4 * t.batch_size,
            local_shuffle_seed=t.seed * 7919 + epoch), state, cfg, schedule)
        metrics = _all_mean(sums, world)
        seconds = _all_max(time.perf_counter() - started)
        metrics["train/events_per_s"] = metrics.pop("events") * world / seconds
        metrics["train/lr"] = t.lr * schedule.factor(state.step - 1)
        # the largest worker's peak resident memory so far (streamed data must keep it bounded)
        metrics["worker/peak_rss_mb"] = _all_max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        state.epoch = epoch
        validating = not refit and (epoch % t.val_every == 0 or epoch == epochs)
        if validating:
            val_batches = val_shard.iter_torch_batches(batch_size=256,
                                                       collate_fn=ValidationCollate(tokenizer, mcfg.max_len))
            metrics |= validate(training.model, val_batches, model.n_items, seed=cfg.eval.seed)
            _early_stopping(state, metrics[SELECTION], epoch, t.patience)
        state.elapsed_s += _all_max(time.perf_counter() - started)
        metrics["elapsed_min"] = state.elapsed_s / 60
        if validating and state.best_epoch == epoch:
            state.best_elapsed_s = state.elapsed_s
        if t.max_minutes and state.elapsed_s > 60 * t.max_minutes and not state.stopped and not refit:
            state.stopped = f"time budget of {t.max_minutes:g} minutes reached"
        if epoch == epochs and not state.stopped:
            state.stopped = f"all {epochs} {'refit ' if refit else ''}epochs done"
        logger.log(state.step, metrics, epoch, stopped=state.stopped, resumed_from=resumed_from)
        resumed_from = None
        report = {k.replace("/", "_"): v for k, v in metrics.items()} | {"epoch": epoch, "step": state.step}
        report |= {"best_epoch": state.best_epoch, "best_val_ndcg10": state.best_metric}
        if validating or (refit and state.stopped):  # a checkpoint carries the figure Ray ranks checkpoints by
            with tempfile.TemporaryDirectory() as directory:
                save_checkpoint(Path(directory), training, state, rank)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory),
                                 checkpoint_dir_name=f"epoch_{epoch:04d}")
        else:
            ray.train.report(report)
    logger.hparams(_hparams(cfg), {"best_val_ndcg10": state.best_metric, "best_epoch": state.best_epoch})
    logger.close()


def _train_epoch(training: ShardedTraining, batches, state: TrainState, cfg: RecfmConfig,
                 schedule: _Schedule) -> dict[str, float]:
    sums: dict[str, float] = {"events": 0.0}
    steps = 0
    for batch in batches:
        factor = schedule.factor(state.step)
        for group in training.dense_optimizer.param_groups:
            group["lr"] = cfg.train.lr * factor
        if schedule.decay:  # a cooldown lowers the sparse tables' rate too (warm-up is the dense weights' alone)
            for group in training.model.fused_optimizer.param_groups:
                group["lr"] = cfg.sharding.sparse_lr * factor
        training.optimizer.zero_grad()  # first: it also hands the fused kernels their learning rate
        with torch.autocast("cuda" if cfg.train.use_gpu else "cpu", dtype=torch.bfloat16, enabled=cfg.train.bf16):
            loss, parts = training.model(batch)
        loss.backward()
        training.optimizer.step()
        state.step += 1
        steps += 1
        sums["events"] += float(batch.lengths.sum())
        sums["train/loss"] = sums.get("train/loss", 0.0) + float(loss)
        for name, value in parts.items():
            sums[f"train/loss_{name}"] = sums.get(f"train/loss_{name}", 0.0) + float(value)
    means = {k: v / max(steps, 1) for k, v in sums.items() if k != "events"}
    return means | {"events": sums["events"]}


@dataclass
class _Schedule:
    """The learning rate of one epoch's steps. Training: linear warm-up, then constant (early stopping decides the
    length, so there is no decay horizon). A refit with `train.refit_decay`: from train.lr linearly down to 0 over
    its epochs (a cooldown), by step where the epoch's length is known, else by epoch."""

    warmup_steps: int
    decay: bool
    epoch: int  # 1-based, of `epochs`
    epochs: int
    first_step: int  # the step counter at this epoch's start (a refit continues its checkpoint's counter)
    steps_per_epoch: int | None

    def factor(self, step: int) -> float:
        """The share of the configured learning rates that `step` trains at."""
        if not self.decay:
            return min(1.0, (step + 1) / max(self.warmup_steps, 1))
        if not self.steps_per_epoch:
            return 1 - (self.epoch - 1) / self.epochs
        done = (self.epoch - 1) * self.steps_per_epoch + step - self.first_step
        return max(0.0, 1 - done / (self.epochs * self.steps_per_epoch))


def _early_stopping(state: TrainState, value: float, epoch: int, patience: int) -> None:
    if value > state.best_metric:
        state.best_metric, state.best_epoch, state.stale = value, epoch, 0
        return
    state.stale += 1
    if state.stale >= patience:
        state.stopped = f"no better validation NDCG@10 for {patience} validations (best at epoch {state.best_epoch})"


def _all_mean(values: dict[str, float], world: int) -> dict[str, float]:
    """Means over workers, except "events", which is summed then divided back (per worker)."""
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return {k: float(v) / world for k, v in zip(keys, tensor, strict=True)}


def _all_max(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def _hparams(cfg: RecfmConfig) -> dict:
    flat = {}
    for section in ("model", "objective", "sharding", "train"):
        for key, value in asdict(getattr(cfg, section)).items():
            flat[f"{section}.{key}"] = value
    return flat
