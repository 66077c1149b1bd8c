"""A causal pre-norm transformer over right-padded token sequences (nanoGPT-style, read top to bottom).

Right padding needs no key mask under causal attention: a real token only sees earlier positions, which
are real too; what padded positions compute is never read. With `packed`, everything but attention itself (the
projections, the feed-forward, the norms: most of the work at small widths) runs on the real tokens alone, which
matters when a few long histories pad a batch of short ones (Beauty: 50 columns, 8 real on average); export
traces the padded path, whose shapes do not depend on the data. A sliding window limits each token to the
previous `window` tokens; it is computed blockwise (each block of `window` queries against its own and the
previous block's keys), so attention costs O(T * window) rather than O(T^2) for long histories.

With `freq_mix` = a > 0 each block adds, beside attention (weight 1 - a), a causal frequency filter (weight a):
BSARec's inductive bias (Shin et al., AAAI 2024: a low-pass part plus a re-scaled high-pass part of the sequence),
made causal. BSARec filters the whole sequence by FFT, which lets position t see later positions; it trains on the
last position only. recfm trains every position at once, so the low-pass part here is a per-channel exponential
moving average of the earlier tokens (learned decay), and the high-pass part is the token minus it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RotaryPositions(nn.Module):
    """Rotary position embedding (Su et al., 2021) applied to queries and keys."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, T, D]
        t = x.shape[-2]
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, rope: RotaryPositions | None):
        super().__init__()
        self.heads, self.dropout, self.rope = heads, dropout, rope
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, window: int, packing: Packing | None = None) -> torch.Tensor:
        """x: [B, T, D], or with `packing` the real tokens [N, D] of a [B, T] batch."""
        qkv = self.qkv(x)
        if packing is not None:
            qkv = packing.pad(qkv)
        b, t, d3 = qkv.shape
        q, k, v = qkv.view(b, t, 3, self.heads, d3 // (3 * self.heads)).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        p = self.dropout if self.training else 0.0
        if window and window < t:
            y = local_attention(q, k, v, window, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, d3 // 3)
        if packing is not None:
            y = packing.unpad(y)
        return self.out_dropout(self.out(y))


class Packing:
    """Where the real tokens of a right-padded [B, T] batch sit, to move per-token tensors between the padded
    [B, T, ...] layout and the packed [N, ...] one."""

    def __init__(self, lengths: torch.Tensor, width: int):
        self.shape = (len(lengths), width)
        real = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
        self.index = real.reshape(-1).nonzero().squeeze(1)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        b, t = self.shape
        out = packed.new_zeros(b * t, packed.shape[-1]).index_copy(0, self.index, packed)
        return out.view(b, t, -1)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.reshape(-1, padded.shape[-1]).index_select(0, self.index)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention where query i sees keys i-window+1 .. i; q, k, v [B, H, T, D].

    Blocks of `window` queries attend to their own block and the one before it (2 * window keys), masked to
    the exact window, so the work is linear in T."""
    b, h, t, d = q.shape
    n = -(-t // window)
    pad = n * window - t

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, pad)).view(b, h, n, window, d)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    kk = torch.cat([F.pad(kb, (0, 0, 0, 0, 1, 0))[:, :, :-1], kb], dim=3)  # [B, H, n, 2W, D]: previous + own
    vv = torch.cat([F.pad(vb, (0, 0, 0, 0, 1, 0))[:, :, :-1], vb], dim=3)
    r = torch.arange(window, device=q.device)[:, None]  # query row in its block
    s = torch.arange(2 * window, device=q.device)[None, :]  # key column: previous block, then own
    mask = ((s > r) & (s <= r + window)).expand(n, window, 2 * window).clone()
    mask[0, :, :window] = False  # the first block has no previous one
    y = F.scaled_dot_product_attention(qb, kk, vv, attn_mask=mask, dropout_p=dropout_p)
    return y.reshape(b, h, n * window, d)[:, :, :t]


class CausalFrequencyFilter(nn.Module):
    """low + beta * (x - low), where low[t] is the exponential moving average of x[0..t] with a learned decay per
    channel: the smooth trend of a history (its low frequencies) and what departs from it, weighed apart."""

    def __init__(self, dim: int, max_len: int, dropout: float, decay: float = 0.9):
        super().__init__()
        self.decay_logit = nn.Parameter(torch.full((dim,), math.log(decay / (1 - decay))))
        self.beta = nn.Parameter(torch.ones(dim))
        self.register_buffer("lag", torch.arange(max_len)[:, None] - torch.arange(max_len)[None, :],
                             persistent=False)  # t - s
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        padded = packing.pad(x) if packing is not None else x
        t = padded.shape[1]
        lag = self.lag[:t, :t]
        log_decay = F.logsigmoid(self.decay_logit)  # [D]
        weights = torch.exp(log_decay[:, None, None] * lag.clamp(min=0)) * (lag >= 0)  # [D, T, T], causal
        weights = weights / weights.sum(-1, keepdim=True)
        low = torch.einsum("dts,bsd->btd", weights, padded)
        if packing is not None:
            low = packing.unpad(low)
        return self.dropout(low + self.beta * (x - low))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float, rope: RotaryPositions | None,
                 max_len: int, freq_mix: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout, rope)
        self.freq_mix = freq_mix
        self.freq = CausalFrequencyFilter(dim, max_len, dropout) if freq_mix else None
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, window: int, packing: Packing | None = None) -> torch.Tensor:
        h = self.norm1(x)
        if self.freq is None:
            x = x + self.attn(h, window, packing)
        else:
            x = x + (1 - self.freq_mix) * self.attn(h, window, packing) + self.freq_mix * self.freq(h, packing)
        return x + self.ffn(self.norm2(x))


class Transformer(nn.Module):
    """Returns the final normed hidden states [B, T, D], and each layer's (for a layer-mean user vector)."""

    def __init__(self, dim: int, layers: int, heads: int, ffn_mult: int, dropout: float, max_len: int,
                 positions: str = "learned", window: int = 0, freq_mix: float = 0.0):
        super().__init__()
        rope = RotaryPositions(dim // heads, max_len) if positions == "rope" else None
        self.positions = nn.Embedding(max_len, dim) if positions == "learned" else None
        self.window = window
        self.blocks = nn.ModuleList(Block(dim, heads, ffn_mult, dropout, rope, max_len, freq_mix)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.apply(_init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("out.weight", "ffn.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                packed: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, T, D] right-padded to `lengths`. `packed`: compute on the real tokens only (padded positions of
        the outputs are then zeros); the same function either way."""
        b, t, _ = x.shape
        if self.positions is not None:
            # count positions back from each sequence's last token, as left padding would: the token the user
            # vector is read from always has position 0
            recency = (lengths[:, None] - 1 - torch.arange(t, device=x.device)[None, :]).clamp(min=0)
            x = x + self.positions(recency)
        packing = Packing(lengths, t) if packed else None
        if packing is not None:
            x = packing.unpad(x)
        layers = []
        for block in self.blocks:
            x = block(x, self.window, packing)
            layers.append(x)
        x = self.norm(x)
        if packing is not None:
            x, layers = packing.pad(x), [packing.pad(h) for h in layers]
        return x, layers


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
