"""Distillation: the student's objective against a teacher's scores (Hinton et al., 2015).

    loss = T^2 · KL(softmax(teacher / T) || softmax(student / T))      over the catalog, or a shared sample
         + hard_weight · cross-entropy(student, next item)
         + repr_weight · MSE(P · student user vector, teacher user vector)

The T^2 keeps the soft term's gradients on the scale of the hard term's as T changes. With a sampled
candidate set both softmaxes run over the same candidates plus each position's target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recfm.fm.batching import SequenceBatch
from recfm.serving_exports.dense import DenseSequenceModel, padded_ids


class DistillationObjective(nn.Module):
    def __init__(self, student: DenseSequenceModel, teacher: DenseSequenceModel, temperature: float,
                 hard_weight: float, repr_weight: float, candidates: int = 0):
        super().__init__()
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        self.temperature, self.hard_weight, self.repr_weight, self.candidates = (temperature, hard_weight,
                                                                                 repr_weight, candidates)
        self.project = nn.Linear(student.cfg.dim, teacher.cfg.dim) if repr_weight > 0 else None

    def forward(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        ids = padded_ids(batch)
        target = batch.targets[:, :, 0]  # the next item after each position, -1 where there is none
        where = target >= 0
        context = {n: c[where] for n, c in batch.context.items()} if batch.context else None
        student = self.student.query(self.student.states(ids, batch.lengths)[where], context)
        with torch.no_grad():
            teacher = self.teacher.query(self.teacher.states(ids, batch.lengths)[where], context)
        target = target[where]
        s_items, t_items = self.student.item_table(), self.teacher.item_table()
        if self.candidates:
            sample = torch.randint(0, len(s_items), (self.candidates,))
            items = torch.cat([sample, target]).unique()
            target = torch.searchsorted(items, target)
            s_items, t_items = s_items[items], t_items[items]
        s_logits, t_logits = student @ s_items.T, teacher @ t_items.T
        t = self.temperature
        soft = F.kl_div(F.log_softmax(s_logits / t, -1), F.log_softmax(t_logits / t, -1), log_target=True,
                        reduction="batchmean") * t * t
        hard = F.cross_entropy(s_logits, target)
        loss = soft + self.hard_weight * hard
        parts = {"soft": float(soft.detach()), "hard": float(hard.detach())}
        if self.project is not None:
            user = F.mse_loss(self.project(student), teacher)
            loss = loss + self.repr_weight * user
            parts["repr"] = float(user.detach())
        return loss, parts
