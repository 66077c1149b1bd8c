"""From examples (or one served request) to a `HeadsBatch`: the FM's input, hashed query text, the catalog
signals and what each request must not rank."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recfm.fm.batching import inference_batch, rows_from_arrays
from recfm.fm.tokens import EventTokenizer
from recfm.heads.examples import TASKS, HeadExamples
from recfm.heads.model import HeadsBatch
from recfm.heads.signals import CatalogSignals, SignalTimeline
from recfm.heads.text import text_features

EXCLUDE_SEEN = (TASKS.index("similars"), TASKS.index("homepage"))  # search may re-find a watched title


@dataclass
class EventLog:
    """Every user's events in time order: flat columns with per-user offsets (the prepared sequences)."""

    offsets: np.ndarray
    events: dict[str, np.ndarray]

    def histories(self, user: np.ndarray, known: np.ndarray) -> list[np.ndarray]:
        """The items each request's user had interacted with before it (empty for anonymous requests)."""
        items = self.events["item"]
        return [items[self.offsets[u]:self.offsets[u] + k] if u >= 0 else items[:0]
                for u, k in zip(user, known, strict=True)]


def heads_batch(examples: HeadExamples, log: EventLog, signals: CatalogSignals | SignalTimeline,
                tokenizer: EventTokenizer, max_len: int, word_buckets: int, trigram_buckets: int) -> HeadsBatch:
    """Examples must already be imputed (`recfm.heads.context.impute`)."""
    has_user = (examples.user >= 0) & (examples.known > 0)
    users = examples.user[has_user]
    history = inference_batch(rows_from_arrays(log.offsets, log.events, users), examples.known[has_user],
                              tokenizer, max_len)
    histories = log.histories(examples.user, np.where(has_user, examples.known, 0))
    features = signals.features(list(examples.query), examples.item, histories, examples.ts)
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
                      long(examples.hour), long(examples.surface), long(examples.device), features,
                      torch.from_numpy(exclude), long(examples.target))
