"""The module that is exported: raw event columns in, catalog scores and the user vector out.

A consumer should not need recfm's tokenizer, so the graph does the tokenizing (`recfm.fm.tokens` rules):

    inputs (right-padded [B, T], T <= max_len, each user's last events oldest first; lengths [B])
        item      int64   dense item index (the export's item map)
        <facet>   int64   each categorical facet's code (0 = missing; the export's vocabularies)
        ts        int64   Unix seconds                    (when the model has hour, day or gap facets)
        prev_ts   int64   [B] the event before the window, -1 when none (the first event's gap)
        value     float32 rating / watch time, NaN = none  (when the model has the engagement facet)
      the request's context, when the model has one (`model.context`; each [B], -1 = not known):
        request_ts        int64  Unix seconds of the request  (for its hour, day, or gap since the last event)
        request_<facet>   int64  the request's code of each categorical context facet (surface, device)
    outputs
        scores    float32 [B, items]   user @ item table; the caller masks what it must not recommend
        user      float32 [B, D]

Every derived facet is computed with integer remainders and comparisons against fixed steps, never a division
or a log: ONNX exporters lower int64 division through float32, which is off by minutes at Unix-time scale, and
a float log2 disagrees at powers of two. So eager, torch.export and onnxruntime agree bit for bit on the ids.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recfm.fm.tokens import DERIVED
from recfm.serving_exports.dense import DenseSequenceModel

_SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday


def input_names(model: DenseSequenceModel) -> list[str]:
    """The exported graph's inputs, in order (the last is always `lengths`)."""
    names = [n for n in model.facets if n not in DERIVED]
    context = model.tokenizer.context_names
    if {"hour", "day", "gap"} & set(model.facets) or "gap" in context:
        names += ["ts", "prev_ts"]
    if "engagement" in model.facets:
        names.append("value")
    if {"hour", "day", "gap"} & set(context):
        names.append("request_ts")
    names += [f"request_{n}" for n in context if n not in DERIVED]
    return names + ["lengths"]


def per_user(name: str) -> bool:
    """Whether input `name` is one value per user ([B]) rather than one per event ([B, T])."""
    return name in ("lengths", "prev_ts") or name.startswith("request_")


class ServingModel(nn.Module):
    def __init__(self, model: DenseSequenceModel):
        super().__init__()
        self.model = model.eval()
        self.names = input_names(model)
        tok = model.tokenizer
        self.register_buffer("value_edges", torch.tensor(tok.value_edges or [], dtype=torch.float32))
        self.register_buffer("gap_steps", 2 ** torch.arange(1, tok.gap_buckets - 1, dtype=torch.int64))
        self.register_buffer("hour_starts", 3600 * torch.arange(1, 24, dtype=torch.int64))
        self.register_buffer("day_starts", _SECONDS_PER_DAY * torch.arange(1, 7, dtype=torch.int64))

    def forward(self, *columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        named = dict(zip(self.names, columns, strict=True))
        lengths = named["lengths"]
        ids = {}
        for facet in self.model.facets:
            if facet not in DERIVED:
                ids[facet] = named[facet]
            elif facet == "hour":
                ids[facet] = self._hour(named["ts"])
            elif facet == "day":
                ids[facet] = self._day(named["ts"])
            elif facet == "gap":
                ids[facet] = self._gap(named["ts"], named["prev_ts"])
            else:  # engagement: 1 + the number of edges <= value, 0 for a missing value
                value = named["value"]
                ids[facet] = torch.where(torch.isnan(value), 0, 1 + _steps_reached(value, self.value_edges))
        user = self.model.encode(ids, lengths)
        if self.model.request_context is not None:
            user = self.model.query(user, self._context(named, lengths))
        return user @ self.model.item_table().T, user

    def _context(self, named: dict[str, torch.Tensor], lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """The request's context ids (+1; 0 = not known), as `EventTokenizer.request_context` codes them."""
        out = {}
        for facet in self.model.tokenizer.context_names:
            if facet not in DERIVED:
                code = named[f"request_{facet}"]
                out[facet] = torch.where(code < 0, 0, code + 1)
                continue
            ts = named["request_ts"]
            known = ts >= 0
            if facet == "hour":
                ids = self._hour(ts)
            elif facet == "day":
                ids = self._day(ts)
            else:  # the gap since the history's last event (or the one before the window), 0 with none
                last = named["ts"].gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
                last = torch.where(lengths > 0, last, named["prev_ts"])
                bucket = 1 + _steps_reached((ts - last).clamp(min=0) + 1, self.gap_steps)
                ids = torch.where(last < 0, 0, bucket)
            out[facet] = torch.where(known, ids + 1, 0)
        return out

    def _hour(self, ts: torch.Tensor) -> torch.Tensor:
        return _steps_reached(torch.remainder(ts, _SECONDS_PER_DAY), self.hour_starts)

    def _day(self, ts: torch.Tensor) -> torch.Tensor:
        weekday = _steps_reached(torch.remainder(ts, 7 * _SECONDS_PER_DAY), self.day_starts)
        return torch.remainder(weekday + _EPOCH_WEEKDAY, 7)

    def _gap(self, ts: torch.Tensor, prev_ts: torch.Tensor) -> torch.Tensor:
        """1 + min(floor(log2(seconds since the previous event + 1)), buckets - 2); 0 with no previous event."""
        first = torch.arange(ts.shape[1], device=ts.device)[None, :] == 0
        # roll, not a slice: a slice of length events - 1 makes torch.export guard against 2-event histories
        previous = torch.where(first, prev_ts[:, None], torch.roll(ts, 1, dims=1))
        bucket = 1 + _steps_reached((ts - previous).clamp(min=0) + 1, self.gap_steps)
        first_without = first & (prev_ts[:, None] < 0)
        return torch.where(first_without, 0, bucket)


def _steps_reached(x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """How many of the ascending `steps` each element of `x` has reached (x >= step)."""
    return (x[..., None] >= steps).sum(-1)


def serving_inputs(names: list[str], offsets: np.ndarray, events: dict[str, np.ndarray], users: np.ndarray,
                   known: np.ndarray, max_len: int, next_context: bool = False) -> dict[str, np.ndarray]:
    """The graph's inputs for each user's last `max_len` of their first `known` events (numpy, padded with 0);
    the request's context not known, or with `next_context` that of the user's next event where there is one
    (as `recfm.fm.batching.inference_batch` reads it)."""
    b = len(users)
    width = max(int(np.minimum(known, max_len).max(initial=1)), 1)
    out = {n: np.zeros((b, width), dtype=np.float32 if n == "value" else np.int64)
           for n in names if not per_user(n)}
    out["prev_ts"] = np.full(b, -1, dtype=np.int64)
    for name in names:
        if name.startswith("request_"):
            column = events["ts" if name == "request_ts" else name.removeprefix("request_")]
            nxt = np.asarray(offsets[users], dtype=np.int64) + np.asarray(known, dtype=np.int64)
            has_next = next_context & (nxt < offsets[np.asarray(users) + 1])
            out[name] = np.where(has_next, column[np.minimum(nxt, len(column) - 1)], -1).astype(np.int64)
    lengths = np.zeros(b, dtype=np.int64)
    for row, (u, k) in enumerate(zip(users, known, strict=True)):
        end = int(offsets[u]) + int(k)
        start = max(int(offsets[u]), end - max_len)
        lengths[row] = end - start
        for name in out:
            if not per_user(name):
                out[name][row, :end - start] = events[name][start:end]
        if start > offsets[u] and "ts" in events:
            out["prev_ts"][row] = events["ts"][start - 1]
    out["lengths"] = lengths
    return {n: out[n] for n in names}
