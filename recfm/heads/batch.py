"""From examples (or one served request) to a `HeadsBatch`: the FM's input, hashed query text, the catalog
signals and what each request must not rank."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recfm.fm.batching import SequenceBatch, inference_batch, rows_from_arrays
from recfm.fm.tokens import EventTokenizer, gap_bucket
from recfm.heads.examples import TASKS, HeadExamples
from recfm.heads.model import GAP_BUCKETS, HeadsBatch
from recfm.heads.signals import CatalogSignals, SignalTimeline
from recfm.heads.text import text_features

EXCLUDE_SEEN = (TASKS.index("similars"), TASKS.index("homepage"))  # search may re-find a watched title


@dataclass
class EventLog:
    """Every user's events in time order: flat columns with per-user offsets (the prepared sequences)."""

    offsets: np.ndarray
    events: dict[str, np.ndarray]

    def histories(self, user: np.ndarray, known: np.ndarray, column: str = "item") -> list[np.ndarray]:
        """The items (or another column: "ts") of each request's user before it (empty for anonymous requests)."""
        values = self.events[column]
        return [values[self.offsets[u]:self.offsets[u] + k] if u >= 0 else values[:0]
                for u, k in zip(user, known, strict=True)]


def history_batch(examples: HeadExamples, log: EventLog, tokenizer: EventTokenizer,
                  max_len: int) -> tuple[SequenceBatch, np.ndarray]:
    """The FM's input: the histories of the examples with a known user with history (which: the bool array)."""
    has_user = (examples.user >= 0) & (examples.known > 0)
    rows = rows_from_arrays(log.offsets, log.events, examples.user[has_user])
    batch = inference_batch(rows, examples.known[has_user], tokenizer, max_len)
    if tokenizer.context:  # the request's own context: its time, surface and device, and the pause before it
        last = np.array([ts[k - 1] for ts, k in zip(rows["ts"], examples.known[has_user], strict=True)],
                        dtype=np.int64)
        # a served request may name its hour (its time is when it is served)
        ids = tokenizer.request_context(examples.ts[has_user], last, {
            name: getattr(examples, name)[has_user] for name in ("hour", "surface", "device")})
        batch.context = {name: torch.from_numpy(v) for name, v in ids.items()}
    return batch, has_user


def heads_batch(examples: HeadExamples, log: EventLog, signals: CatalogSignals | SignalTimeline,
                tokenizer: EventTokenizer, max_len: int, word_buckets: int, trigram_buckets: int) -> HeadsBatch:
    """Examples must already be imputed (`recfm.heads.context.impute`)."""
    history, has_user = history_batch(examples, log, tokenizer, max_len)
    known = np.where(has_user, examples.known, 0)
    histories, times = log.histories(examples.user, known), log.histories(examples.user, known, "ts")
    features = signals.features(list(examples.query), examples.item, histories, examples.ts, times)
    last = np.array([t[-1] if len(t) else -1 for t in times], dtype=np.int64)
    exclude = np.zeros((len(examples), features.shape[1]), dtype=bool)
    for row, (task, items, source) in enumerate(zip(examples.task, histories, examples.item, strict=True)):
        if task in EXCLUDE_SEEN:
            exclude[row, items] = True
            if source >= 0:
                exclude[row, source] = True

    def long(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return HeadsBatch(history, torch.from_numpy(has_user), long(examples.item),
                      text_features(list(examples.query), word_buckets, trigram_buckets), long(examples.task),
                      long(examples.hour), long(examples.surface), long(examples.device),
                      long(np.where(last >= 0, gap_bucket(examples.ts - last, GAP_BUCKETS), 0)), features,
                      torch.from_numpy(exclude), long(examples.target))
