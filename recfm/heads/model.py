"""The task heads: thin rankers over the foundation model's user and item representations.

    context  = user vector (FM, or a learned "no user" vector) ⊕ source item embedding (FM item table)
               ⊕ query vector (hashed text encoder) ⊕ task + hour + surface + device + gap embeddings
               (gap: time since the user's last event, log2 buckets)
    h        = MLP(context)
    w        = task_weights[task] + A·h                    (per-request weights: the task's blend, modulated)
    x(i)     = the catalog signals (`recfm.heads.signals`)
               ⊕ (FM score(i) - mean) / (best - mean), floored at 0
               ⊕ cos(query vector, item text vector)     (the same encoder reads the item's text)
    score(i) = scale · ( Σ_s w_s·x_s(i) + g(x(i) ⊕ B·h) )  g: a small per-item MLP, zero at the start

The per-request weights let one model lean on lexical match for search, co-occurrence for similars and the
collaborative and FM scores for the homepage: the task embedding is just another part of the context (the
unified ranker, UniCoRn's design). `mode: separate` trains one such ranker per task instead, for comparison.
The FM is either frozen (its outputs are inputs: the embedding-consumer pattern) or fine-tuned with the heads
(the subgraph pattern: the FM score's gradient reaches its transformer and item table). Scores start as the
plain sum of the signals, so an untrained ranker is already a sensible blend; g then adds what a weighted
sum cannot express (one signal mattering only where another is high). A free per-item term (the
context projected onto item embeddings) was tried and dropped: on the few thousand requests the heads learn
from, it overfitted and ranked below its own inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import KeyedJaggedTensor

from recfm.fm.batching import SequenceBatch
from recfm.fm.model import UserFoundationModel
from recfm.heads.examples import TASKS
from recfm.heads.signals import SIGNALS
from recfm.heads.text import TextEncoder

MODES = ("unified", "separate")
FM_MODES = ("frozen", "finetune")
ITEM_CONTEXT = 8  # context features the per-item interaction layer sees
GAP_BUCKETS = 32  # of the time since the user's last event, in the ranker's context


@dataclass
class HeadsSpec:
    """What rebuilds the heads around a given foundation model."""

    mode: str = "unified"
    fm: str = "frozen"
    text_dim: int = 32
    hidden: int = 64
    dropout: float = 0.1
    word_buckets: int = 1 << 15
    trigram_buckets: int = 1 << 15
    surfaces: int = 1
    devices: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadsBatch:
    history: SequenceBatch  # the FM's input, for the rows in `has_user` only
    has_user: torch.Tensor  # bool [B]: the request has a known user with history
    source: torch.Tensor  # int64 [B], -1 = none
    query: KeyedJaggedTensor  # hashed words and trigrams of each request's query
    task: torch.Tensor  # int64 [B]
    hour: torch.Tensor
    surface: torch.Tensor
    device: torch.Tensor
    gap: torch.Tensor  # int64 [B]: log2 bucket of the time since the user's last event (`gap_bucket`), 0 = none
    signals: torch.Tensor  # float32 [B, items, len(SIGNALS)]
    exclude: torch.Tensor  # bool [B, items]: not rankable for this request (already seen, the source item)
    target: torch.Tensor  # int64 [B], -1 when serving
    fm_user: torch.Tensor | None = None  # a frozen FM's query vectors of the `has_user` rows, when computed already


class ContextualRanker(nn.Module):
    def __init__(self, fm_dim: int, spec: HeadsSpec):
        super().__init__()
        t = spec.text_dim
        self.task = nn.Embedding(len(TASKS), t)
        self.hour = nn.Embedding(24, t)
        self.surface = nn.Embedding(max(spec.surfaces, 1), t)
        self.device = nn.Embedding(max(spec.devices, 1), t)
        self.gap = nn.Embedding(GAP_BUCKETS, t)
        self.context = nn.Sequential(nn.Linear(2 * fm_dim + 2 * t, spec.hidden), nn.GELU(), nn.Dropout(spec.dropout),
                                     nn.Linear(spec.hidden, spec.hidden), nn.GELU(), nn.Dropout(spec.dropout))
        n = len(SIGNALS) + 2  # + the FM score and the text match
        # each task's own blend, read straight from the task id, plus what the rest of the context adds to it:
        # through the MLP alone, the tasks with the most requests set the blend for all
        self.task_weights = nn.Embedding(len(TASKS), n)
        nn.init.ones_(self.task_weights.weight)
        self.signal_weights = nn.Linear(spec.hidden, n)
        nn.init.zeros_(self.signal_weights.weight)
        nn.init.zeros_(self.signal_weights.bias)
        # what a weighted sum cannot say: interactions between an item's signals (a recent release the user's
        # neighbours also rate, a trending title for a user who takes trending ones), per item, given the context
        self.item_context = nn.Linear(spec.hidden, ITEM_CONTEXT)
        self.per_item = nn.Sequential(nn.Linear(n + ITEM_CONTEXT, spec.hidden // 4), nn.GELU(),
                                      nn.Linear(spec.hidden // 4, 1))
        nn.init.zeros_(self.per_item[-1].weight)
        nn.init.zeros_(self.per_item[-1].bias)
        # signals lie in [0, 1]: a softmax over the catalog needs logits an order larger to be sharp, and at
        # unit scale the weights take hundreds of steps to get there while everything else overfits
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, user: torch.Tensor, source: torch.Tensor, query: torch.Tensor, batch: HeadsBatch,
                rows: torch.Tensor, fm_scores: torch.Tensor, text_match: torch.Tensor) -> torch.Tensor:
        categorical = (self.task(batch.task[rows]) + self.hour(batch.hour[rows]) + self.surface(batch.surface[rows])
                       + self.device(batch.device[rows]) + self.gap(batch.gap[rows]))
        h = self.context(torch.cat([user, source, query, categorical], dim=-1))
        w = self.task_weights(batch.task[rows]) + self.signal_weights(h)
        signals = torch.cat([batch.signals[rows], fm_scores[:, :, None], text_match[:, :, None]], dim=-1)
        context = self.item_context(h)[:, None, :].expand(-1, signals.shape[1], -1)
        interactions = self.per_item(torch.cat([signals, context], dim=-1)).squeeze(-1)
        return self.log_scale.exp() * ((signals * w[:, None, :]).sum(-1) + interactions)


class HeadsModel(nn.Module):
    def __init__(self, fm: UserFoundationModel, spec: HeadsSpec):
        super().__init__()
        self.fm, self.spec = fm, spec
        dim = fm.cfg.dim
        if spec.fm == "frozen":
            fm.requires_grad_(False)
        self.text = TextEncoder(spec.text_dim, spec.word_buckets, spec.trigram_buckets)
        self.no_user = nn.Parameter(torch.zeros(dim))
        self.no_item = nn.Parameter(torch.zeros(dim))
        # the catalog's text vectors out of training, per set of weights in use (None: the model's own)
        self._item_cache: dict[str | None, tuple[KeyedJaggedTensor, torch.Tensor]] = {}
        self._frozen_items: torch.Tensor | None = None  # a frozen FM's item table, computed once
        self._task_states: dict[str, dict[str, torch.Tensor]] = {}  # weights chosen per task, when loaded so
        self._current: str | None = None
        names = ["unified"] if spec.mode == "unified" else list(TASKS)
        self.rankers = nn.ModuleDict({name: ContextualRanker(dim, spec) for name in names})

    def forward(self, batch: HeadsBatch, item_text: KeyedJaggedTensor) -> torch.Tensor:
        """Scores [B, items]; excluded items get -inf. With weights chosen per task (`load_head_state`), each
        request is scored with its own task's."""
        if not self._task_states:
            return self._scores(batch, item_text)
        scores = None
        for t, name in enumerate(TASKS):
            rows = batch.task == t
            if bool(rows.any()):
                self._use(name)
                part = self._scores(batch, item_text)
                scores = part if scores is None else torch.where(rows[:, None], part, scores)
        return scores

    def _use(self, task: str) -> None:
        if self._current != task:
            nn.Module.load_state_dict(self, self._task_states[task], strict=False)  # keeps each task's cache
            self._current = task

    def _scores(self, batch: HeadsBatch, item_text: KeyedJaggedTensor) -> torch.Tensor:
        items, user = self._fm(batch)
        fm_scores = user @ items.T
        # on the scale of the other signals: 0 at the request's mean score (and below), 1 at its best item.
        # exp(s - max) was tried: so peaked that the FM's top few items swamped every other signal
        mean = fm_scores.mean(1, keepdim=True)
        fm_scores = ((fm_scores - mean) / (fm_scores.max(1, keepdim=True).values - mean + 1e-6)).clamp(min=0.0)
        has_source = batch.source >= 0
        source = torch.where(has_source[:, None], items[batch.source.clamp(min=0)], self.no_item)
        query = self.text(batch.query)
        has_query = (batch.query.lengths().view(len(batch.query.keys()), -1).sum(0) > 0)[:, None]
        text_match = F.normalize(query, dim=-1) @ F.normalize(self._item_vectors(item_text), dim=-1).T
        text_match = torch.where(has_query, text_match, 0.0)
        scores = torch.empty(batch.task.shape[0], items.shape[0])
        for name, ranker in self.rankers.items():
            rows = torch.arange(len(batch.task)) if name == "unified" else torch.nonzero(
                batch.task == TASKS.index(name)).flatten()
            if len(rows) == 0:
                continue
            scores[rows] = ranker(user[rows], source[rows], query[rows], batch, rows, fm_scores[rows],
                                  text_match[rows])
        return scores.masked_fill(batch.exclude, -torch.inf)

    def _item_vectors(self, item_text: KeyedJaggedTensor) -> torch.Tensor:
        """The catalog's text vectors; out of training they are encoded once per catalog, not once per request."""
        if self.training:
            return self.text(item_text)
        cached = self._item_cache.get(self._current)
        if cached is None or cached[0] is not item_text:
            with torch.no_grad():
                cached = self._item_cache[self._current] = (item_text, self.text(item_text))
        return cached[1]

    def train(self, mode: bool = True) -> HeadsModel:
        self._item_cache = {}  # the encoder may have changed
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._item_cache, self._current, self._frozen_items = {}, None, None
        return super().load_state_dict(*args, **kwargs)

    def head_state(self) -> dict[str, torch.Tensor]:
        """The weights the heads own: everything but a frozen FM, which stays the run's own (and may be swapped
        for a newer refit of it)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if self.spec.fm == "finetune" or not k.startswith("fm.")}

    def load_head_state(self, state: dict) -> None:
        """One set of weights for every task, or {"tasks": {task: weights}}, each task's own (as `recfm heads
        train` chooses them: each from the epoch of its best holdout figure)."""
        if "tasks" in state:
            self._task_states, self._current = dict(state["tasks"]), None
            for weights in self._task_states.values():
                self.load_head_state(weights)  # checks each
            return
        missing, unexpected = self.load_state_dict(state, strict=False)
        wrong = [k for k in missing if self.spec.fm == "finetune" or not k.startswith("fm.")] + list(unexpected)
        if wrong:
            raise ValueError(f"heads weights do not match this model: {', '.join(wrong[:5])}")

    def frozen_user_vectors(self, history: SequenceBatch) -> torch.Tensor:
        """A frozen FM's next-item query vectors for `history` (they never change: computed once per request)."""
        if self.spec.fm != "frozen":
            raise ValueError("only a frozen FM's user vectors can be computed ahead")
        if not history.size:
            return torch.zeros(0, self.fm.cfg.dim)
        return self._frozen_fm(lambda: self.fm.user_vectors(history))

    def _frozen_fm(self, compute):
        """`compute()` on the frozen FM as it always runs in training and serving: without dropout or gradients."""
        training = self.fm.training
        self.fm.eval()
        with torch.no_grad():
            result = compute()
        self.fm.train(training)
        return result

    def _fm(self, batch: HeadsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The item table and each request's user vector (the FM's next-item query for users with history)."""
        frozen = self.spec.fm == "frozen"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            if not frozen:
                items = self.fm.item_table()
            elif self._frozen_items is None:
                items = self._frozen_items = self._frozen_fm(self.fm.item_table)
            else:
                items = self._frozen_items
            if not bool(batch.has_user.any()):
                vectors = None
            elif batch.fm_user is not None and frozen:
                vectors = batch.fm_user
            else:
                vectors = self.fm.user_vectors(batch.history)
        user = self.no_user.expand(len(batch.task), -1)
        if vectors is not None:
            placed = torch.zeros_like(user).index_put((torch.nonzero(batch.has_user).flatten(),), vectors)
            user = torch.where(batch.has_user[:, None], placed, user)
        return items, user
