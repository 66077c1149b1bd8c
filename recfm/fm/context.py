"""Request context: what is known of the event being predicted before its item is (its hour and day, the device
and surface it happens on, the gap since the user's previous event), mixed into the query that scores the items.

    query [.., D], context ids [..] per facet (0 = not known)
        --one small table per facet, summed; LayerNorm--> context vector c
        --query + MLP([query; c])--> the query for this context

The MLP's last layer starts at zero, so an untrained mix is the context-free model. In training each facet's id
is hidden (set to 0) with probability `dropout`, so that "not known" is learned as the average context: it is
what a user vector means when it is computed without a request (the pushed user vectors).
"""

from __future__ import annotations

import torch
from torch import nn

from recfm.fm.tokens import Facet


class RequestContext(nn.Module):
    def __init__(self, facets: list[Facet], dim: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = dropout
        self.tables = nn.ModuleDict({f.name: nn.Embedding(f.size + 1, dim) for f in facets})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        nn.init.zeros_(self.mix[-1].weight)
        nn.init.zeros_(self.mix[-1].bias)

    def forward(self, query: torch.Tensor, ids: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """`query` [.., D] conditioned on the context `ids` (each [..], 0 = not known; None: nothing known)."""
        context = query.new_zeros(query.shape)
        for name, table in self.tables.items():
            facet = ids[name] if ids is not None and name in ids else None
            if facet is None:
                facet = torch.zeros(query.shape[:-1], dtype=torch.int64, device=query.device)
            elif self.training and self.dropout:
                facet = facet.masked_fill(torch.rand(facet.shape, device=facet.device) < self.dropout, 0)
            context = context + table(facet)
        return query + self.mix(torch.cat([query, self.norm(context)], dim=-1))
