"""The user foundation model.

    events --EventTokenizer--> one id per facet per event
           --EmbeddingCollection (one TorchRec table per facet)--> facet embeddings
           --sum, or concat + project; LayerNorm; dropout--> one token per event
           --causal Transformer--> hidden states; the user representation is the last one
           --per-offset query heads--> scores against item embeddings (next item, item after, ...)

With `model.content`, an item's vector is its ID embedding plus what its content adds (`recfm.fm.content`),
the same for the items of the history, the candidates and the catalog scored.

With `model.context`, the query for the next item is conditioned on the request's context (`recfm.fm.context`).

The item table also serves the feature "candidate": the items a step scores are looked up through the same
(sharded) table as the history, so the output layer is tied to the input embeddings and no rank ever needs
the whole table; likewise the feature "borrowed", the ID embeddings that items without their own borrow from
their content neighbours (`recfm.fm.content`). The model knows nothing of processes: `recfm.fm.distributed`
shards it after it is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from recfm.fm.batching import SequenceBatch
from recfm.fm.config import ModelConfig
from recfm.fm.content import ItemContent
from recfm.fm.context import RequestContext
from recfm.fm.tokens import EventTokenizer
from recfm.fm.transformer import Transformer

CANDIDATE = "candidate"
BORROWED = "borrowed"  # the items whose ID embeddings items without their own borrow (`recfm.fm.content`)


def table_name(facet: str) -> str:
    return f"t_{facet}"


@dataclass
class ModelOutput:
    hidden: torch.Tensor  # [B, T, D] final hidden states, right-padded
    user: torch.Tensor  # [B, D] the user representation
    candidate_emb: torch.Tensor | None  # [C, D] embeddings of the candidate items, if any were given


class UserFoundationModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: EventTokenizer, mtp: int = 1, action_head: bool = False,
                 gap_head: bool = False, device: torch.device | None = None):
        super().__init__()
        self.cfg, self.tokenizer, self.mtp = cfg, tokenizer, mtp
        self.facets = tokenizer.names
        self.n_items = next(f.size for f in tokenizer.facets if f.name == "item")
        tables = [EmbeddingConfig(name=table_name(f.name), embedding_dim=cfg.dim, num_embeddings=f.size,
                                  feature_names=[f.name, CANDIDATE, BORROWED] if f.name == "item" else [f.name],
                                  init_fn=_normal_init(cfg.item_init_std))
                  for f in tokenizer.facets]
        self.embeddings = EmbeddingCollection(tables=tables, device=device or torch.device("cpu"))
        self.content = ItemContent(self.n_items, cfg.content_dim, cfg.dim, cfg.semantic_levels, cfg.semantic_codes,
                                   cfg.id_dropout, cfg.new_item_neighbours, cfg.new_item_temperature
                                   ) if cfg.content else None
        self.project = nn.Linear(len(self.facets) * cfg.dim, cfg.dim) if cfg.combine == "concat" else None
        self.token_norm = nn.LayerNorm(cfg.dim)
        self.token_dropout = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg.dim, cfg.layers, cfg.heads, cfg.ffn_mult, cfg.dropout, cfg.max_len,
                                       cfg.positions, cfg.window, cfg.freq_mix)
        # offset 1 scores the hidden state directly (as SASRec does); offset k > 1 adds a learned residual map
        self.offset_heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.dim) for _ in range(mtp - 1))
        for head in self.offset_heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # the next item's query also knows the request's context, where `model.context` names facets
        self.request_context = RequestContext(tokenizer.context, cfg.dim, cfg.context_dropout
                                              ) if tokenizer.context else None
        # auxiliary facet targets exist only when trained (DDP refuses parameters that get no gradient)
        sizes = {f.name: f.size for f in tokenizer.facets}
        self.action_head = nn.Linear(cfg.dim, sizes["action"]) if action_head and "action" in sizes else None
        self.gap_head = nn.Linear(cfg.dim, sizes["gap"]) if gap_head and "gap" in sizes else None

    def forward(self, batch: SequenceBatch, candidates: torch.Tensor | None = None) -> ModelOutput:
        history = batch.features["item"]
        cand = candidates if candidates is not None else history.new_zeros(0)
        # decided before the lookup: which items go without their own ID (no trained one, or dropped in training),
        # so that the IDs they borrow are looked up with the rest
        if self.content is not None:
            missing = (self.content.missing(history), self.content.missing(cand))
            lenders = (self.content.neighbour_ids(history[missing[0]]), self.content.neighbour_ids(cand[missing[1]]))
        else:
            missing, lenders = (None, None), (cand[:0], cand[:0])
        embedded = self.embeddings(self._features(batch, cand, torch.cat(lenders)))
        lent = embedded[BORROWED].values().split([len(ids) for ids in lenders])
        per_facet = [self._items(history, embedded[name].values(), missing[0], lent[0]) if name == "item"
                     else embedded[name].values() for name in self.facets]
        if self.project is not None:
            tokens = self.project(torch.cat(per_facet, dim=-1))
        else:
            tokens = torch.stack(per_facet).sum(0)
        tokens = self.token_dropout(self.token_norm(tokens))
        x = _pad(tokens, batch.lengths, max(int(batch.lengths.max()), 1) if batch.size else 1)
        hidden, layers = self.transformer(x, batch.lengths, packed=True)
        last = (batch.lengths - 1).clamp(min=0)
        rows = torch.arange(batch.size, device=hidden.device)
        if self.cfg.user_repr == "layer_mean":
            user = self.transformer.norm(torch.stack([h[rows, last] for h in layers]).mean(0))
        else:
            user = hidden[rows, last]
        out = None
        if candidates is not None:
            out = self._items(candidates, embedded[CANDIDATE].values(), missing[1], lent[1])
        return ModelOutput(hidden, user, out)

    def query(self, hidden: torch.Tensor, offset: int, context: dict[str, torch.Tensor] | None = None
              ) -> torch.Tensor:
        """The vector scored against item embeddings to predict the item `offset` steps ahead; the next item's
        in its request `context` (ids shaped as `hidden` without its last dimension, 0 = not known)."""
        if offset > 1:
            return hidden + self.offset_heads[offset - 2](hidden)
        return hidden if self.request_context is None else self.request_context(hidden, context)

    def _features(self, batch: SequenceBatch, candidates: torch.Tensor,
                  borrowed: torch.Tensor) -> KeyedJaggedTensor:
        """One KJT: every facet jagged by sequence length, plus the candidates and the borrowed IDs, each all in the
        first bag."""
        device = batch.lengths.device
        extra = [candidates, borrowed]
        extra_lengths = [torch.zeros(batch.size, dtype=torch.int64, device=device) for _ in extra]
        if batch.size:
            for lengths, values in zip(extra_lengths, extra, strict=True):
                lengths[0] = len(values)
        values = torch.cat([batch.features[name] for name in self.facets] + extra)
        lengths = torch.cat([batch.lengths.to(torch.int64)] * len(self.facets) + extra_lengths)
        return KeyedJaggedTensor(keys=[*self.facets, CANDIDATE, BORROWED], values=values, lengths=lengths)

    def _items(self, ids: torch.Tensor, id_embeddings: torch.Tensor, missing: torch.Tensor | None,
               borrowed_from: torch.Tensor | None) -> torch.Tensor:
        return id_embeddings if self.content is None else self.content(ids, id_embeddings, missing, borrowed_from)

    def items_from_content(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors of titles the model never saw, from their content vectors alone (unsharded model only)."""
        if self.content is None:
            raise ValueError("this model has no content path (model.content=false)")
        return self.content.from_content(vectors, self.embeddings.embeddings[table_name("item")].weight)

    def item_table(self) -> torch.Tensor:
        """Every catalog item's vector, for scoring the catalog (unsharded model only)."""
        weight = self.embeddings.embeddings[table_name("item")].weight
        ids = torch.arange(self.n_items, device=weight.device)
        if self.content is None:
            return weight
        missing = self.content.missing(ids)
        return self._items(ids, weight, missing, weight[self.content.neighbour_ids(ids[missing])])

    def user_vectors(self, batch: SequenceBatch, offset: int = 1) -> torch.Tensor:
        """[B, D]: what `score_items` scores the item table with, for the item `offset` steps ahead."""
        return self.query(self(batch).user, offset, batch.context)

    def score_items(self, batch: SequenceBatch, offset: int = 1) -> torch.Tensor:
        """Scores of every catalog item for each user in `batch` [B, items] (unsharded model only)."""
        return self.user_vectors(batch, offset) @ self.item_table().T


def _pad(flat: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Jagged [N, D] (users one after another) to right-padded [B, width, D]."""
    b, d = len(lengths), flat.shape[-1]
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(len(flat), device=flat.device) - torch.repeat_interleave(starts, lengths)
    index = torch.repeat_interleave(torch.arange(b, device=flat.device), lengths) * width + position
    return torch.zeros(b * width, d, dtype=flat.dtype, device=flat.device).index_copy(0, index, flat).view(b, width, d)


def _normal_init(std: float):
    def init(weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return weight.normal_(0.0, std)

    return init


def model_spec(cfg: ModelConfig, tokenizer: EventTokenizer, mtp: int, action_head: bool, gap_head: bool) -> dict:
    """Everything needed to rebuild the same model elsewhere (a worker, an evaluator, an exporter)."""
    return {"model": asdict(cfg), "tokenizer": tokenizer.to_dict(), "mtp": mtp, "action_head": action_head,
            "gap_head": gap_head}


def build_model(spec: dict, device: torch.device | None = None) -> UserFoundationModel:
    """The model a `model_spec` describes; `device` is where its tables live ("meta" before sharding)."""
    return UserFoundationModel(ModelConfig(**spec["model"]), EventTokenizer.from_dict(spec["tokenizer"]),
                               spec["mtp"], spec["action_head"], spec["gap_head"], device)
