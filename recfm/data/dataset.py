"""A prepared dataset in memory: flat per-event arrays with per-user offsets, and the split's stages.

A stage is what one evaluation sees. "val": fit on every user's s[:n_train]; "test": fit on s[:n_fit]. See
`prepare.py` for how n_train and n_fit are set. What a stage predicts (`eval_requests`):
  - loo: one target per user, s[n_train] (val) or s[n_fit] (test), from the events before it;
  - time: every event of the stage's period, s[p] for n_train <= p < n_fit (val) or n_fit <= p < L (test),
    each from the user's events before it, s[:p]. Models are fitted only on events before the cutoff, but a
    request's history is everything the user did before it: the user keeps using the product after the
    model was trained. Most MovieLens users are active in one period only, so one target per user would leave
    a handful of users straddling each cutoff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recfm.data.prepare import SEQUENCES_DIR, PreparedInfo
from recfm.data.ragged import positions

STAGES = ("val", "test")


@dataclass
class Sequences:
    directory: Path
    info: PreparedInfo
    offsets: np.ndarray  # int64 [users + 1]: user u's events are [offsets[u], offsets[u + 1])
    events: dict[str, np.ndarray]  # flat per-event columns: item, ts, value, action, surface, device, ...
    n_train: np.ndarray  # int64 [users]
    n_fit: np.ndarray

    @classmethod
    def load(cls, directory: Path) -> Sequences:
        directory = Path(directory)
        info = PreparedInfo.load(directory)
        table = pq.read_table(directory / SEQUENCES_DIR)
        offsets = None
        events = {}
        for name in table.column_names:
            if not pa.types.is_list(table.schema.field(name).type):
                continue
            column = table[name].combine_chunks()
            if offsets is None:
                offsets = column.offsets.to_numpy().astype(np.int64)
            events[name] = column.flatten().to_numpy()
        return cls(directory, info, offsets, events,
                   table["n_train"].to_numpy().astype(np.int64), table["n_fit"].to_numpy().astype(np.int64))

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return self.info.items

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def event_user(self) -> np.ndarray:
        """The user of every event (int32)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int32), self.lengths)

    @cached_property
    def event_position(self) -> np.ndarray:
        """Each event's position in its user's sequence."""
        return np.arange(len(self.event_user), dtype=np.int64) - self.offsets[self.event_user]

    @cached_property
    def first_seen(self) -> np.ndarray:
        """Per event: is it its user's first event with this item? (A 0/1 history grows only at these.)"""
        key = self.event_user.astype(np.int64) * max(self.n_items, 1) + self.events["item"]
        first = np.zeros(len(key), dtype=bool)
        first[np.unique(key, return_index=True)[1]] = True
        return first

    @cached_property
    def vocab(self) -> dict[str, list]:
        return json.loads((self.directory / "vocab.json").read_text())

    def prefix(self, stage: str) -> np.ndarray:
        """Per user, how many leading events are known (history and fit data) at `stage`."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
        return self.n_train if stage == "val" else self.n_fit

    def eval_users(self, stage: str) -> np.ndarray:
        """Users with a target at `stage` and at least one event before it."""
        prefix = self.prefix(stage)
        limit = self.n_fit if stage == "val" else self.lengths
        return np.flatnonzero((prefix < limit) & (prefix > 0))

    def eval_requests(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, prefixes) of `stage`'s targets: request r predicts item s_u[p] from s_u[:p], u = users[r],
        p = prefixes[r] (see the module docstring)."""
        if self.info.split != "time":
            users = self.eval_users(stage)
            return users, self.prefix(stage)[users]
        low, high = (self.n_train, self.n_fit) if stage == "val" else (self.n_fit, self.lengths)
        user, position = self.event_user, self.event_position
        chosen = (position >= low[user]) & (position < high[user]) & (position > 0)
        return user[chosen].astype(np.int64), position[chosen]

    def request_targets(self, users: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        return self.events["item"][self.offsets[users] + prefixes]

    def request_history(self, users: np.ndarray, prefixes: np.ndarray) -> sp.csr_matrix:
        """[requests, items] 0/1: the items of each request's history s_u[:p]."""
        starts = self.offsets[users]
        rows = np.repeat(np.arange(len(users)), prefixes)
        cols = self.events["item"][np.repeat(starts, prefixes) + positions(prefixes)]
        matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                               shape=(len(users), self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def targets(self, stage: str, users: np.ndarray) -> np.ndarray:
        return self.events["item"][self.offsets[users] + self.prefix(stage)[users]]

    def known_mask(self, stage: str) -> np.ndarray:
        """Per event: is it known at `stage` (part of some user's prefix)?"""
        return self.event_position < self.prefix(stage)[self.event_user]

    def history_matrix(self, stage: str, users: np.ndarray | None = None, binary: bool = True) -> sp.csr_matrix:
        """User x item counts (or 0/1) of the events known at `stage`, for `users` (all users by default)."""
        known = self.known_mask(stage)
        rows, cols = self.event_user[known], self.events["item"][known]
        matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                               shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        if binary:
            matrix.data[:] = 1.0
        return matrix if users is None else matrix[users]

    def item_counts(self, stage: str) -> np.ndarray:
        """How often each item occurs in the events known at `stage`."""
        return np.bincount(self.events["item"][self.known_mask(stage)], minlength=self.n_items)
