"""The task heads' job for the training loop: the heads over the FM (DDP across workers), this worker's share of
the training requests each epoch, a loss weighted by task and user, and holdout NDCG@10 per task.

Selection is per task: each task keeps the weights of the epoch with its best holdout NDCG@10 (the untrained
blend's to begin with). One epoch for all let search, which overfits its few hundred queries within an epoch or
two, stop the homepage, which needs four or five, before it had learnt anything. The figure the loop stops on
and ranks checkpoints by is the mean over tasks of each task's best holdout NDCG@10 relative to the untrained
blend's: it rises exactly when some task improves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from recfm.fm.model import build_model
from recfm.heads.batch import heads_batch, history_batch
from recfm.heads.examples import TASKS, HeadExamples
from recfm.heads.model import HeadsModel
from recfm.heads.text import text_features
from recfm.platform.config import RecfmConfig
from recfm.platform.train.data import epoch_indices
from recfm.platform.train.loop import Job, LoopSettings
from recfm.run.files import HEADS_DIR, HEADS_WEIGHTS_FILE, METRICS_FILE

SELECTION = "holdout_gain"


class HeadsJob(Job):
    unit = "requests"

    def __init__(self, cfg: RecfmConfig, config: dict, rank: int, world: int):
        hc = self.hc = cfg.heads
        self.seed, self.rank, self.world = cfg.train.seed, rank, world
        torch.manual_seed(cfg.train.seed)
        fm = build_model(config["fm_spec"])
        fm.load_state_dict(config["fm_state"])
        self.spec, self.log_events, self.signals = config["spec"], config["log"], config["signals"]
        self.heads = HeadsModel(fm, self.spec)
        self.model = self.heads
        if world > 1 and dist.is_initialized():
            self.model = torch.nn.parallel.DistributedDataParallel(self.heads, find_unused_parameters=True)
        head_params = [p for n, p in self.heads.named_parameters()
                       if not n.startswith(("fm.", "text.")) and p.requires_grad]
        # the text encoder learns slower: at the heads' rate it memorised the few training queries within an epoch
        groups = [{"params": head_params, "lr": hc.lr},
                  {"params": list(self.heads.text.parameters()), "lr": 0.1 * hc.lr}]
        if self.spec.fm == "finetune":
            groups.append({"params": [p for p in fm.parameters() if p.requires_grad], "lr": hc.fm_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=hc.weight_decay)
        self.item_text = text_features(self.signals.documents, self.spec.word_buckets, self.spec.trigram_buckets)
        self.examples = config["train"]
        counts = np.bincount(self.examples.task, minlength=len(TASKS)).astype(np.float64)
        # rarer tasks weigh more, by the square root of their rarity (full inverse frequency overfits the rarest)
        task_weight = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1)), 0.0)
        self.weight = torch.from_numpy(task_weight[self.examples.task]
                                       * user_weights(self.examples, hc.user_weighting)).float()
        # a frozen FM's user vector of each training request, once: not again every epoch (a third of a step)
        self.fm_vectors = self._frozen_vectors(self.examples) if self.spec.fm == "frozen" else None
        mine = config["holdout"].take(np.arange(rank, len(config["holdout"]), world))
        self.holdout = [self._batch(mine.take(np.arange(s, min(s + 256, len(mine))))) for s in range(0, len(mine), 256)]
        self.size = min(hc.batch_size, len(self.examples) // world)
        self.start = self._holdout_ndcg()
        self.present = self.start > 0
        self.task_best, self.task_epoch = self.start.clone(), [0] * len(TASKS)
        self.task_states = dict.fromkeys(TASKS, self.heads.head_state())
        self.epoch = 0
        self.metrics_dir, self.metrics_file = Path(config["run_dir"]) / HEADS_DIR, METRICS_FILE
        self.settings = LoopSettings(hc.epochs, hc.patience, 1, selection=SELECTION,
                                     figure="holdout NDCG@10 on any task")

    def _batch(self, examples: HeadExamples, index: np.ndarray | None = None):
        """The batch of `examples` (the training examples at `index`, when they are those)."""
        fm = self.heads.fm
        batch = heads_batch(examples, self.log_events, self.signals, fm.tokenizer, fm.cfg.max_len,
                            self.spec.word_buckets, self.spec.trigram_buckets)
        if self.spec.fm == "frozen":
            batch.fm_user = (self.fm_vectors[index][batch.has_user] if index is not None
                             else self.heads.frozen_user_vectors(batch.history))
        return batch

    def _frozen_vectors(self, examples: HeadExamples) -> torch.Tensor:
        """[examples, D]: the frozen FM's user vector of each example (zeros for those without a user)."""
        fm = self.heads.fm
        vectors = torch.zeros(len(examples), fm.cfg.dim)
        for start in range(0, len(examples), 256):
            part = examples.take(np.arange(start, min(start + 256, len(examples))))
            history, has_user = history_batch(part, self.log_events, fm.tokenizer, fm.cfg.max_len)
            vectors[start + np.flatnonzero(has_user)] = self.heads.frozen_user_vectors(history)
        return vectors

    def batches(self, epoch: int):
        self.epoch = epoch
        self.heads.train()
        if self.spec.fm == "frozen":
            self.heads.fm.eval()
        for index in epoch_indices(len(self.examples), self.rank, self.world, self.size, self.seed + epoch):
            yield self._batch(self.examples.take(index), index), self.weight[index]

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        batch, weight = batch
        per_request = F.cross_entropy(self.model(batch, self.item_text), batch.target, reduction="none")
        return (per_request * weight).sum() / weight.sum(), {}

    def count(self, batch) -> float:
        return float(len(batch[1]))

    def _holdout_ndcg(self) -> torch.Tensor:
        """Per-task holdout NDCG@10 over every rank."""
        self.heads.eval()
        sums = _ndcg_sums(self.heads, self.holdout, self.item_text)
        if dist.is_initialized():
            dist.all_reduce(sums)
        return sums[0] / sums[1].clamp(min=1)

    def validate(self) -> dict[str, float]:
        per_task = self._holdout_ndcg()
        better = [i for i in range(len(TASKS)) if self.present[i] and per_task[i] > self.task_best[i]]
        if better or not bool(self.present.any()):
            state = self.heads.head_state()
            for i in better if better else range(len(TASKS)):
                self.task_best[i], self.task_epoch[i], self.task_states[TASKS[i]] = per_task[i], self.epoch, state
        present = self.present
        gain = float((self.task_best[present] / self.start[present]).mean()) if bool(present.any()) else 0.0
        return {SELECTION: gain} | {f"holdout_ndcg10_{t}": float(per_task[i])
                                    for i, t in enumerate(TASKS) if present[i]}

    def save(self, directory: Path, rank: int) -> None:
        if rank == 0:  # every task's best weights so far, and where they stand (for a restart)
            torch.save({"tasks": self.task_states, "task_epochs": dict(zip(TASKS, self.task_epoch, strict=True)),
                        "task_best": self.task_best, "current": self.heads.head_state(),
                        "optimizer": self.optimizer.state_dict()}, directory / HEADS_WEIGHTS_FILE)

    def load(self, directory: Path) -> None:
        saved = torch.load(directory / HEADS_WEIGHTS_FILE, weights_only=True)
        self.heads.load_state_dict(saved["current"], strict=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.task_states, self.task_best = saved["tasks"], saved["task_best"]
        self.task_epoch = [saved["task_epochs"][t] for t in TASKS]


def user_weights(examples: HeadExamples, power: float) -> np.ndarray:
    """Each request's weight within its task: n^-power for a user with n of the task's requests (anonymous
    requests count as users of their own), scaled so the task's weights average 1. Why: the few most active users
    make most requests (on ml-latest-small's homepage training span, 5 of 77 users make 63% of them, one 29%), and
    unweighted they set the ranker for everyone; weighing users more equally is what YouTube's recommender does
    for the same reason (Covington et al. 2016). 0 weighs every request alike, 1 every user alike."""
    weights = np.ones(len(examples))
    for t in range(len(TASKS)):
        index = np.flatnonzero(examples.task == t)
        if len(index) == 0:
            continue
        users = np.where(examples.user[index] >= 0, examples.user[index], -1 - np.arange(len(index)))
        _, group, n = np.unique(users, return_inverse=True, return_counts=True)
        w = n[group].astype(np.float64) ** -power
        weights[index] = w * len(index) / w.sum()
    return weights


def _ndcg_sums(model: HeadsModel, batches: list, item_text) -> torch.Tensor:
    """[2, tasks]: the holdout's NDCG@10 sums and request counts per task."""
    sums = torch.zeros(2, len(TASKS), dtype=torch.float64)
    with torch.no_grad():
        for batch in batches:
            scores = model(batch, item_text)
            target = scores.gather(1, batch.target[:, None])
            rank = (scores > target).sum(1).double()  # optimistic on ties: selection only, never reported
            gain = torch.where(rank < 10, 1.0 / torch.log2(rank + 2), 0.0)
            sums[0].index_add_(0, batch.task, gain)
            sums[1].index_add_(0, batch.task, torch.ones_like(gain))
    return sums
