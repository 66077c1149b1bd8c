"""Training objectives: next-item prediction over K offsets (multi-token prediction), and facet targets.

Both softmax variants score each query against a set of candidate items:
  - full: every item in the catalog (exact, for catalogs small enough to score at every step);
  - sampled: the distinct target items of the batch (in-batch negatives) plus `negatives` uniform samples,
    with each logit reduced by the log of its item's sampling probability (logQ correction, Yi et al. 2019)
    so that popular items, sampled more often as negatives, are not pushed down too far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recfm.fm.batching import SequenceBatch
from recfm.fm.config import ObjectiveConfig
from recfm.fm.model import UserFoundationModel


@dataclass
class Candidates:
    ids: torch.Tensor  # int64 [C]: item ids to look up and score, sorted
    logq: torch.Tensor | None  # [C] subtracted from the logits: log sampling probability (inf: not a candidate)
    full: bool = False  # ids is the whole catalog (0 .. n-1), so an item id is its own column


def choose_candidates(targets: torch.Tensor, n_items: int, loss: str, negatives: int,
                      item_prob: torch.Tensor | None, generator: torch.Generator | None = None) -> Candidates:
    """The items each step scores: the whole catalog, or in-batch targets plus uniform negatives."""
    if loss == "full":
        return Candidates(torch.arange(n_items, device=targets.device), None, full=True)
    positives = targets[targets >= 0]
    uniform = torch.randint(0, n_items, (negatives,), generator=generator).to(targets.device)
    ids = torch.unique(torch.cat([positives, uniform]))
    logq = None
    if item_prob is not None:
        # an item enters as an in-batch negative with probability ~ its share of targets, and uniformly
        expected = len(positives) * item_prob[ids] + negatives / n_items
        logq = torch.log(expected.clamp(min=1e-12))
    return Candidates(ids, logq)


def _without_untrained(candidates: Candidates, has_id: torch.Tensor) -> Candidates:
    """Items with no training events (cold, held out) out of the softmax: they would only ever be negatives, and
    with content the shared projection would learn to bury every item whose text resembles theirs. A title that
    arrives after training was not in the catalog either."""
    blocked = ~has_id[candidates.ids]
    if not bool(blocked.any()):
        return candidates
    penalty = torch.where(blocked, torch.inf, 0.0)
    return Candidates(candidates.ids, penalty if candidates.logq is None else candidates.logq + penalty,
                      candidates.full)


def next_item_loss(queries: torch.Tensor, targets: torch.Tensor, candidate_emb: torch.Tensor,
                   candidates: Candidates, temperature: float = 1.0,
                   label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of queries [M, D] against their target ids [M] (all >= 0) among the candidates.

    `label_smoothing` moves that share of each target's probability mass evenly onto the real candidates
    (those not excluded with an infinite logQ)."""
    if len(targets) == 0:
        return queries.sum() * 0.0, 0
    if temperature != 1.0:  # scale the [M, D] queries, not the [M, C] logits
        queries = queries / temperature
    logits = queries @ candidate_emb.T
    if candidates.logq is not None:
        logits = logits - candidates.logq[None, :]
    # a sampled set holds a subset of the catalog: a target's column is its position among the sorted ids
    labels = targets if candidates.full else torch.searchsorted(candidates.ids, targets)
    if not label_smoothing:
        return SoftmaxCrossEntropy.apply(logits.float(), labels), len(targets)
    log_p = F.log_softmax(logits.float(), dim=-1)
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)
    real = torch.isfinite(log_p[0]) if candidates.logq is not None else None
    uniform = -(log_p[:, real].mean(1) if real is not None else log_p.mean(1))
    return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean(), len(targets)


class SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits [M, C] against labels [M], as F.cross_entropy, in fewer passes over the
    [M, C] logits: forward keeps one logsumexp per row instead of a log-softmax matrix, and backward turns the
    saved logits into softmax - one-hot in place instead of allocating and zero-filling a gradient matrix. With a
    full-catalog softmax those passes were over a third of a training step. The logits must not be needed by
    anything else afterwards (they are the matmul's output, which its own backward does not keep)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, lse, labels)
        return (lse - logits.gather(1, labels[:, None]).squeeze(1)).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse, labels = ctx.saved_tensors
        probs = logits.sub_(lse[:, None]).exp_()  # in place: the saved logits are not read again
        probs[torch.arange(len(labels), device=labels.device), labels] -= 1
        return probs.mul_(grad / len(labels)), None


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over positions whose label is >= 0; zero (with a graph) when there are none."""
    keep = labels >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), labels[keep])


class TrainingObjective(nn.Module):
    """The model with its loss: `forward(batch)` returns (loss, per-objective parts) for a training batch.

    Wrapping the loss into one forward is what lets DistributedModelParallel shard the tables and
    synchronise the dense gradients around a single call. With `candidates`, forward instead returns the user
    query vectors and the candidates' embeddings, which is how a sharded model scores the catalog.
    """

    def __init__(self, model: UserFoundationModel, cfg: ObjectiveConfig, item_prob: torch.Tensor | None = None,
                 seed: int = 0):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.register_buffer("item_prob", item_prob if item_prob is not None else torch.zeros(0), persistent=False)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, batch: SequenceBatch, candidates: torch.Tensor | None = None):
        if candidates is not None:
            out = self.model(batch, candidates)
            return self.model.query(out.user, 1, batch.context), out.candidate_emb
        cfg = self.cfg
        cands = choose_candidates(batch.targets, self.model.n_items, cfg.loss, cfg.negatives,
                                  self.item_prob if cfg.logq and len(self.item_prob) else None, self.generator)
        if self.model.content is not None:
            cands = _without_untrained(cands, self.model.content.has_id)
        out = self.model(batch, cands.ids)
        total, parts = out.hidden.sum() * 0.0, {}
        for k, weight in enumerate(cfg.offset_weights(), start=1):
            targets = batch.targets[:, :, k - 1]
            mask = targets >= 0
            context = {n: ids[mask] for n, ids in batch.context.items()} if k == 1 and batch.context else None
            loss, _ = next_item_loss(self.model.query(out.hidden[mask], k, context), targets[mask],
                                     out.candidate_emb, cands, cfg.temperature, cfg.label_smoothing)
            total = total + weight * loss
            parts[f"item@{k}"] = loss.detach()
        for name, head, labels, weight in (
                ("action", self.model.action_head, batch.next_action, cfg.action_weight),
                ("gap", self.model.gap_head, batch.next_gap, cfg.gap_weight)):
            if head is not None and labels is not None and weight > 0:
                loss = classification_loss(head(out.hidden), labels)
                total = total + weight * loss
                parts[name] = loss.detach()
        return total, parts
