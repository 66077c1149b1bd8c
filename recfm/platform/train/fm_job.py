"""The foundation model's job for the training loop: the TorchRec-sharded model and its objective, this worker's
share of the training windows (from the object store, or streamed by Ray Data), the learning-rate schedule,
full-ranking validation across workers, and sharded checkpoints. A cooldown (`cooldown_from`) continues the best
checkpoint on the same data for `train.cooldown_epochs` epochs with the learning rates falling to 0, validating each
one. A refit (`refit_from`) continues the best checkpoint on every event before the test cutoff, for
`train.refit_epochs` epochs, without validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray.train
import torch

from recfm.fm.distributed.sharding import shard
from recfm.fm.model import build_model
from recfm.fm.objectives import TrainingObjective
from recfm.platform.config import RecfmConfig
from recfm.platform.train.checkpoint import load_checkpoint, save_checkpoint
from recfm.platform.train.data import TrainingCollate, ValidationCollate, epoch_batches, training_steps
from recfm.platform.train.loop import Job, LoopSettings
from recfm.platform.train.state import read_state
from recfm.platform.train.validation import validate
from recfm.run.files import COOLDOWN_METRICS_FILE, METRICS_FILE, REFIT_METRICS_FILE

SELECTION = "val_ndcg10"


class FoundationJob(Job):
    unit = "events"

    def __init__(self, cfg: RecfmConfig, config: dict, rank: int, world: int):
        self.cfg, t = cfg, cfg.train
        ctx = ray.train.get_context()
        self.device = torch.device(f"cuda:{ctx.get_local_rank()}") if t.use_gpu else torch.device("cpu")
        torch.manual_seed(t.seed)  # dense weights start equal (DDP also broadcasts rank 0's)
        model = build_model(config["spec"], device=torch.device("meta"))  # DMP materialises each rank's shards
        self.refit = config.get("refit_from") is not None
        if model.content is not None:  # which items have trained IDs: before the validation cutoff, or the test's
            with np.load(config["item_content"]) as f:
                model.content.load(f["vectors"], f["has_id_refit" if self.refit else "has_id"], f["centroids"])
        item_prob = torch.from_numpy(np.load(config["item_prob"]))
        objective = TrainingObjective(model, cfg.objective, item_prob, seed=t.seed * 1000 + rank)
        self.training = shard(objective, model.embeddings, model.facets, cfg.sharding, t.lr, t.weight_decay,
                              self.device)
        self.model, self.optimizer = self.training.model, self.training.optimizer
        self.tokenizer, self.n_items = model.tokenizer, model.n_items
        self.metrics_dir = Path(config["run_dir"])
        cooldown = config.get("cooldown_from")
        self.metrics_file = REFIT_METRICS_FILE if self.refit else COOLDOWN_METRICS_FILE if cooldown else METRICS_FILE
        epochs = t.refit_epochs if self.refit else t.epochs
        self.settings = LoopSettings(epochs, t.patience, 0 if self.refit else t.val_every,
                                     0.0 if self.refit else t.max_minutes or 0.0, SELECTION)
        self.rank, self.world = rank, world
        self.windows, self.val_table = config.get("windows"), config.get("val")  # windows: None when streamed
        # a decay by step needs the epoch's length (unknown when streamed: then by epoch)
        steps = None if self.windows is None else training_steps(self.windows.num_rows, world, t.batch_size)
        decay = self.refit and (t.refit_decay or t.cooldown_epochs > 0)
        self.schedule = _Schedule(t.warmup_steps, decay, epochs, steps)
        self.train_shard = ray.train.get_dataset_shard("train") if self.windows is None else None
        self.epoch, self.step = 0, 0
        if cooldown:  # the best checkpoint's epochs continue, every one validated, none cut by the time budget
            self.load(Path(cooldown))
            self.state = read_state(Path(cooldown))
            self.state.stale, self.state.stopped = 0, ""
            self.settings = LoopSettings(self.state.epoch + t.cooldown_epochs, t.cooldown_epochs + 1, 1, 0.0,
                                         SELECTION)
            self.schedule = _Schedule(t.warmup_steps, True, t.cooldown_epochs, steps, self.state.step,
                                      self.state.epoch)
        if self.refit:
            self.load(Path(config["refit_from"]))
            # the refit continues the checkpoint's step counter (its schedule) and keeps its best epoch
            self.state = read_state(Path(config["refit_from"]))
            self.state.epoch, self.state.elapsed_s, self.state.stopped = 0, 0.0, ""
            if model.content is not None:  # the checkpoint's says which items had IDs before the validation cutoff
                with np.load(config["item_content"]) as f:
                    model.content.has_id.copy_(torch.from_numpy(f["has_id_refit"]))
            self.schedule.first_step = self.state.step

    def batches(self, epoch: int):
        t = self.cfg.train
        self.epoch = epoch
        collate = TrainingCollate(self.tokenizer, self.cfg.model.max_len, self.cfg.objective.mtp)
        if self.windows is not None:
            return epoch_batches(self.windows, self.rank, self.world, t.batch_size, collate, t.seed * 7919 + epoch)
        return self.train_shard.iter_torch_batches(
            batch_size=t.batch_size, collate_fn=collate, drop_last=True, local_shuffle_buffer_size=4 * t.batch_size,
            local_shuffle_seed=t.seed * 7919 + epoch)

    def before_step(self, step: int) -> None:
        self.step = step
        factor = self.schedule.factor(self.epoch, step)
        for group in self.training.dense_optimizer.param_groups:
            group["lr"] = self.cfg.train.lr * factor
        if self.schedule.decay:  # a cooldown lowers the sparse tables' rate too (warm-up is the dense weights' alone)
            for group in self.training.model.fused_optimizer.param_groups:
                group["lr"] = self.cfg.sharding.sparse_lr * factor

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        t = self.cfg.train
        with torch.autocast("cuda" if t.use_gpu else "cpu", dtype=torch.bfloat16, enabled=t.bf16):
            return self.model(batch)

    def count(self, batch) -> float:
        return float(batch.lengths.sum())

    def learning_rate(self) -> float:
        return self.cfg.train.lr * self.schedule.factor(self.epoch, self.step)

    def validate(self) -> dict[str, float]:
        batches = epoch_batches(self.val_table, self.rank, self.world, 256,
                                ValidationCollate(self.tokenizer, self.cfg.model.max_len))
        return validate(self.model, batches, self.n_items, seed=self.cfg.eval.seed)

    def save(self, directory: Path, rank: int) -> None:
        save_checkpoint(directory, self.training)

    def load(self, directory: Path) -> None:
        load_checkpoint(directory, self.training)

    def hparams(self) -> dict:
        return {f"{section}.{key}": value for section in ("model", "objective", "sharding", "train")
                for key, value in asdict(getattr(self.cfg, section)).items()}


@dataclass
class _Schedule:
    """The learning rate of each step. Training: linear warm-up, then constant (early stopping decides the
    length, so there is no decay horizon). A cooldown, and a refit with `train.refit_decay` or after a cooldown:
    from the configured rates linearly down to 0 over its epochs, by step where the epoch's length is known, else
    by epoch."""

    warmup_steps: int
    decay: bool
    epochs: int
    steps_per_epoch: int | None
    first_step: int = 0  # the step counter at the decay's start (it continues its checkpoint's)
    first_epoch: int = 0  # epochs before it (a cooldown's continue its checkpoint's count; a refit's start at 0)

    def factor(self, epoch: int, step: int) -> float:
        """The share of the configured learning rates that `step` (in `epoch`, 1-based) trains at."""
        if not self.decay:
            return min(1.0, (step + 1) / max(self.warmup_steps, 1))
        if not self.steps_per_epoch:
            return 1 - (epoch - self.first_epoch - 1) / self.epochs
        return max(0.0, 1 - (step - self.first_step) / (self.epochs * self.steps_per_epoch))
