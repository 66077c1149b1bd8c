"""What an item's content adds to its ID embedding.

    item vector = (ID embedding if has_id and not dropped, else a learned "no ID" vector)
                  + W · content vector  +  Σ_level semantic-code embedding

The content vector is the item's text through the offline encoder (`recfm.platform.data.content`); the
semantic codes are residual k-means codes of it (`recfm.fm.semantic_ids`). During training each ID embedding
is dropped with probability `model.id_dropout`, so the model also learns to place an item from its content
alone, which is all a cold item (no training events: `has_id` false) or a title added after training has. The
"no ID" vector stands in for the missing ID: trained on the dropped ones, it gives content-only items the
share of the score an ID would carry (with nothing in its place, their vectors are a third of a warm item's
norm and they rank below the whole warm catalog).
The code tables are a few dozen rows per level: plain replicated embeddings, not sharded TorchRec tables.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recfm.fm.semantic_ids import assign_codes


class ItemContent(nn.Module):
    def __init__(self, n_items: int, content_dim: int, dim: int, levels: int, codes: int, id_dropout: float):
        super().__init__()
        self.id_dropout = id_dropout
        # buffers, so checkpoints carry them; training fills them with `load` before sharding
        self.register_buffer("vectors", torch.zeros(n_items, content_dim))
        self.register_buffer("has_id", torch.ones(n_items, dtype=torch.bool))
        self.register_buffer("codes", torch.zeros(n_items, levels, dtype=torch.int64))
        self.register_buffer("centroids", torch.zeros(levels, codes, content_dim))
        self.register_buffer("offsets", torch.arange(levels, dtype=torch.int64) * codes, persistent=False)
        self.project = nn.Linear(content_dim, dim)
        self.no_id = nn.Parameter(torch.zeros(dim))
        self.semantic = nn.Embedding(levels * codes, dim) if levels else None
        if self.semantic is not None:
            nn.init.normal_(self.semantic.weight, std=0.02)

    def load(self, vectors: np.ndarray, has_id: np.ndarray, centroids: np.ndarray | None) -> None:
        with torch.no_grad():
            self.vectors.copy_(torch.from_numpy(np.asarray(vectors, dtype=np.float32)))
            self.has_id.copy_(torch.from_numpy(np.asarray(has_id, dtype=bool)))
            if self.semantic is not None and centroids is not None:
                self.centroids.copy_(torch.from_numpy(np.asarray(centroids, dtype=np.float32)))
                self.codes.copy_(torch.from_numpy(assign_codes(vectors, centroids)))

    def forward(self, ids: torch.Tensor, id_embeddings: torch.Tensor) -> torch.Tensor:
        """The vectors of items `ids` [N] given their ID embeddings [N, D]."""
        keep = self.has_id[ids]
        if self.training and self.id_dropout > 0:
            keep = keep & (torch.rand(len(ids), device=ids.device) >= self.id_dropout)
        out = torch.where(keep[:, None], id_embeddings, self.no_id) + self.project(self.vectors[ids])
        if self.semantic is not None:
            out = out + self.semantic(self.codes[ids] + self.offsets).sum(1)
        return out

    def from_content(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors of items known only by their content vectors [N, content_dim] (titles added after training)."""
        out = self.project(vectors) + self.no_id
        if self.semantic is not None:
            codes = torch.from_numpy(assign_codes(vectors.numpy(), self.centroids.numpy()))
            out = out + self.semantic(codes + self.offsets).sum(1)
        return out
