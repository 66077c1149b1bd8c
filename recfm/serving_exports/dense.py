"""The foundation model's architecture with plain `nn.Embedding` tables: what distillation trains as the student
and what export traces, for a student or for a (gathered) teacher.

    facet ids [B, T] per facet (right-padded)
        --one nn.Embedding per facet--> sum, or concat + project; LayerNorm --> causal Transformer
        --the last real position (or its mean over layers)--> user vector [B, D]
        --with `model.context`: mixed with the request's context (`recfm.fm.context`)--> query --@ item table--> scores

It computes what `recfm.fm.model.UserFoundationModel` computes (its TorchRec tables, copied by
`from_foundation`), on padded ids instead of a KeyedJaggedTensor: torch.export and ONNX take dense tensors.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from recfm.data.ragged import positions
from recfm.fm.batching import SequenceBatch
from recfm.fm.config import ModelConfig
from recfm.fm.context import RequestContext
from recfm.fm.model import UserFoundationModel, table_name
from recfm.fm.tokens import EventTokenizer
from recfm.fm.transformer import Transformer


class DenseSequenceModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: EventTokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.facets = tokenizer.names
        self.tables = nn.ModuleDict({f.name: nn.Embedding(f.size, cfg.dim) for f in tokenizer.facets})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=cfg.item_init_std)
        self.project = nn.Linear(len(self.facets) * cfg.dim, cfg.dim) if cfg.combine == "concat" else None
        self.token_norm = nn.LayerNorm(cfg.dim)
        self.token_dropout = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg.dim, cfg.layers, cfg.heads, cfg.ffn_mult, cfg.dropout, cfg.max_len,
                                       cfg.positions, cfg.window, cfg.freq_mix)
        self.request_context = RequestContext(tokenizer.context, cfg.dim, cfg.context_dropout
                                              ) if tokenizer.context else None

    @classmethod
    def from_foundation(cls, fm: UserFoundationModel) -> DenseSequenceModel:
        """The same function as an unsharded FM: its tables copied into plain embeddings, the rest as is."""
        dense = cls(fm.cfg, fm.tokenizer)
        state = {k: v for k, v in fm.state_dict().items() if not k.startswith("embeddings.")}
        state |= {f"tables.{name}.weight": fm.embeddings.embeddings[table_name(name)].weight.detach()
                  for name in fm.facets}
        with torch.no_grad():  # an item's vector with what its content adds, as the FM scores it
            state["tables.item.weight"] = fm.eval().item_table().detach()
        dense.load_state_dict(state, strict=False)  # the FM's offset and auxiliary heads are not served
        return dense.eval()

    def states(self, ids: dict[str, torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        """The user representation after every position [B, T, D], from right-padded facet ids [B, T] (padding
        ids must be valid, e.g. 0): the last hidden state, or the layers' mean (`model.user_repr`)."""
        per_facet = [self.tables[name](ids[name]) for name in self.facets]
        tokens = self.project(torch.cat(per_facet, -1)) if self.project is not None else torch.stack(per_facet).sum(0)
        hidden, layers = self.transformer(self.token_dropout(self.token_norm(tokens)), lengths)
        if self.cfg.user_repr == "layer_mean":
            return self.transformer.norm(torch.stack(layers).mean(0))
        return hidden

    def encode(self, ids: dict[str, torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        """User vectors [B, D]: the representation at each sequence's last real position."""
        states = self.states(ids, lengths)
        last = (lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, states.shape[-1])
        return states.gather(1, last)[:, 0]

    def query(self, states: torch.Tensor, context: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """The next item's query from user representations [.., D] in their request `context` (ids shaped [..],
        0 = not known; None: nothing known); the representations themselves without `model.context`."""
        return states if self.request_context is None else self.request_context(states, context)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        """Next-item queries [B, D] for a (jagged) `SequenceBatch` in its context, as the FM's evaluation reads it."""
        return self.query(self.encode(padded_ids(batch), batch.lengths), batch.context)

    def item_table(self) -> torch.Tensor:
        return self.tables["item"].weight

    def user_vectors(self, batch: SequenceBatch) -> torch.Tensor:
        """[B, D]: what `score_items` scores the item table with (the `FoundationScorer` interface)."""
        return self(batch)

    def score_items(self, batch: SequenceBatch, offset: int = 1) -> torch.Tensor:
        """[B, items]: the next-item scores (the `FoundationScorer` interface)."""
        return self.user_vectors(batch) @ self.item_table().T

    def spec(self) -> dict:
        return {"model": asdict(self.cfg), "tokenizer": self.tokenizer.to_dict()}

    @classmethod
    def from_spec(cls, spec: dict) -> DenseSequenceModel:
        return cls(ModelConfig(**spec["model"]), EventTokenizer.from_dict(spec["tokenizer"]))


def padded_ids(batch: SequenceBatch) -> dict[str, torch.Tensor]:
    """The batch's jagged facet ids as right-padded [B, T] (padding 0)."""
    lengths = batch.lengths.to(torch.int64)
    width = max(int(lengths.max()), 1) if batch.size else 1
    rows = torch.repeat_interleave(torch.arange(batch.size), lengths)
    cols = torch.from_numpy(positions(lengths.numpy()))
    out = {}
    for name, flat in batch.features.items():
        ids = torch.zeros(batch.size, width, dtype=torch.int64)
        ids[rows, cols] = flat
        out[name] = ids
    return out
