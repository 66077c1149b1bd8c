"""Batches of user sequences for the model: training windows with their targets, or inference histories.

Input is per-user arrays (`UserRows`: one array per event column per user), which both an in-memory
dataset and Ray Data batches provide. Output keeps events jagged: flat facet ids plus per-user lengths, the
form a KeyedJaggedTensor takes. Targets are padded [users, max length, K] with -1 where there is none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recfm.data.ragged import positions
from recfm.fm.tokens import EventTokenizer

UserRows = dict[str, list[np.ndarray]]  # column -> one array per user (item, ts, value, facets...)


@dataclass
class SequenceBatch:
    features: dict[str, torch.Tensor]  # facet -> int64 ids of every event, users one after another
    lengths: torch.Tensor  # int64 [users]
    targets: torch.Tensor | None = None  # int64 [users, T, K]: item at offset k+1 after each position, or -1
    next_action: torch.Tensor | None = None  # int64 [users, T]: action id of the next event, or -1
    next_gap: torch.Tensor | None = None  # int64 [users, T]: gap bucket of the next event, or -1
    # request context (`tokenizer.context`), facet -> int64 ids + 1 (0 = not known): of the event each position
    # predicts [users, T] in training; of each request's predicted event [users] for inference
    context: dict[str, torch.Tensor] | None = None

    @property
    def size(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device) -> SequenceBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return SequenceBatch({k: v.to(device, non_blocking=True) for k, v in self.features.items()},
                             move(self.lengths), move(self.targets), move(self.next_action), move(self.next_gap),
                             None if self.context is None else {k: move(v) for k, v in self.context.items()})


def training_batch(rows: UserRows, known: np.ndarray, tokenizer: EventTokenizer, max_len: int,
                   mtp: int) -> SequenceBatch:
    """One window per row from its first `known[u]` events: the most recent `max_len` events as inputs, each
    trained to predict the next `mtp` items. Longer histories are cut into windows beforehand (one row each,
    see `recfm.platform.train.data.training_windows`), so that an epoch covers every event.
    """
    spans = [(max(0, int(n) - max_len - 1), int(n)) for n in known]
    tokens, lengths = _tokens(rows, spans, tokenizer)
    window = np.maximum(lengths - 1, 0)  # the last event of a window is only a target
    keep = _first_of_each(lengths, window)
    features = {name: torch.from_numpy(tokens[name][keep]) for name in tokenizer.names}

    users, width = len(spans), max(int(window.max(initial=0)), 1)
    items = _padded(tokens["item"], lengths, width + mtp)
    targets = np.full((users, width, mtp), -1, dtype=np.int64)
    valid = np.arange(width + mtp)[None, :] < lengths[:, None]
    in_window = np.arange(width)[None, :] < window[:, None]
    for k in range(1, mtp + 1):
        shifted = np.where(valid[:, k:k + width], items[:, k:k + width], -1)
        targets[:, :, k - 1] = np.where(in_window, shifted, -1)
    batch = SequenceBatch(features, torch.from_numpy(window), torch.from_numpy(targets))

    def next_event(name: str) -> np.ndarray:
        """[users, width]: facet `name` of the event after each position, -1 where it is no target."""
        return np.where(in_window, _padded(tokens[name], lengths, width + 1)[:, 1:width + 1], -1)

    for name, attr in (("action", "next_action"), ("gap", "next_gap")):
        if name in tokens:
            setattr(batch, attr, torch.from_numpy(next_event(name)))
    if tokenizer.context:  # + 1: 0 is "not known"
        batch.context = {name: torch.from_numpy(next_event(name) + 1) for name in tokenizer.context_names}
    return batch


def inference_batch(rows: UserRows, known: np.ndarray, tokenizer: EventTokenizer, max_len: int,
                    next_context: bool = False) -> SequenceBatch:
    """The last `max_len` of each user's first `known[u]` events (the previous one too, for its gap).

    With `tokenizer.context`, each request's context is not known, or with `next_context` that of the user's
    event after the history where there is one (an evaluation's target: its hour, device, gap..., never its item).
    """
    total = np.array([len(items) for items in rows["item"]], dtype=np.int64)
    has_next = np.asarray(known, dtype=np.int64) < total if next_context and tokenizer.context else \
        np.zeros(len(total), dtype=bool)
    spans = [(max(0, int(n) - max_len - 1), int(n) + int(h)) for n, h in zip(known, has_next, strict=True)]
    tokens, lengths = _tokens(rows, spans, tokenizer)
    history = lengths - has_next
    kept = np.minimum(history, max_len)
    keep = _last_of_each(lengths, kept + has_next) & ~_last_of_each(lengths, has_next.astype(np.int64))
    batch = SequenceBatch({name: torch.from_numpy(ids[keep]) for name, ids in tokens.items()
                           if name in tokenizer.names}, torch.from_numpy(kept))
    if tokenizer.context:
        last = np.maximum(np.cumsum(lengths) - 1, 0)
        batch.context = {name: torch.from_numpy(np.where(has_next, tokens[name][last] + 1 if len(tokens[name])
                                                         else 0, 0)) for name in tokenizer.context_names}
    return batch


def _tokens(rows: UserRows, spans: list[tuple[int, int]],
            tokenizer: EventTokenizer) -> tuple[dict[str, np.ndarray], np.ndarray]:
    lengths = np.array([b - a for a, b in spans], dtype=np.int64)
    needed = {"item", "ts", "value"} | {n for n in tokenizer.names + tokenizer.context_names if n in rows}
    events = {c: np.concatenate([rows[c][u][a:b] for u, (a, b) in enumerate(spans)]) if spans else np.zeros(0)
              for c in needed if c in rows}
    return tokenizer.tokenize(events, lengths), lengths


def _first_of_each(lengths: np.ndarray, take: np.ndarray) -> np.ndarray:
    """Mask over concatenated sequences keeping the first `take[u]` events of each."""
    return positions(lengths) < np.repeat(take, lengths)


def _last_of_each(lengths: np.ndarray, take: np.ndarray) -> np.ndarray:
    return positions(lengths) >= np.repeat(lengths - take, lengths)


def _padded(flat: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """[users, width] with each user's values from the left, -1 after."""
    out = np.full((len(lengths), width), -1, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = positions(lengths)
    inside = cols < width
    out[rows[inside], cols[inside]] = flat[inside]
    return out


def rows_from_arrays(offsets: np.ndarray, events: dict[str, np.ndarray], users: np.ndarray) -> UserRows:
    """Per-user views into flat in-memory arrays (no copies)."""
    return {name: [col[offsets[u]:offsets[u + 1]] for u in users] for name, col in events.items()}
