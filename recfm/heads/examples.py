"""Training and test requests for the heads, derived from events, each with the item that answered it.

    search     a tag application: the tag text is the query, the tagged item the answer (MovieLens tags are the
               only real query text in the bundled data; no query is derived from titles or genres)
    similars   an interaction whose user had an earlier one: the earlier item is the source, this one the answer
    homepage   the first interaction of a session (after a gap of `session_gap_s`, or the user's first): the
               context at the start of the session, and the item the session began with

A request is "at" its event's time: the history it sees is the user's events strictly before it (`known`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TASKS = ("search", "similars", "homepage")


@dataclass
class HeadExamples:
    task: np.ndarray  # int64, index into TASKS
    user: np.ndarray  # int64 dense user, -1 = anonymous
    known: np.ndarray  # int64 events of the user known at the request
    item: np.ndarray  # int64 source item, -1 = none
    query: np.ndarray  # object: str ("" = none)
    hour: np.ndarray  # int64 UTC hour of the request
    surface: np.ndarray  # int64 code of the surface (0 = unknown)
    device: np.ndarray  # int64 code of the device (0 = unknown)
    ts: np.ndarray  # int64 request time
    target: np.ndarray  # int64 the item that answered the request

    def __len__(self) -> int:
        return len(self.task)

    def take(self, index: np.ndarray) -> HeadExamples:
        return HeadExamples(**{k: v[index] for k, v in vars(self).items()})

    @classmethod
    def concat(cls, parts: list[HeadExamples]) -> HeadExamples:
        return cls(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in vars(parts[0])})

    def counts(self) -> dict[str, int]:
        return {name: int((self.task == t).sum()) for t, name in enumerate(TASKS)}


def _examples(task: str, user, known, item, query, ts, target) -> HeadExamples:
    ts = np.asarray(ts, dtype=np.int64)
    zeros = np.zeros(len(ts), dtype=np.int64)
    return HeadExamples(np.full(len(ts), TASKS.index(task), dtype=np.int64), np.asarray(user, dtype=np.int64),
                        np.asarray(known, dtype=np.int64), np.asarray(item, dtype=np.int64),
                        np.asarray(query, dtype=object), (ts // 3600) % 24, zeros, zeros.copy(), ts,
                        np.asarray(target, dtype=np.int64))


def search_examples(offsets: np.ndarray, event_ts: np.ndarray, tag_user: np.ndarray, tag_item: np.ndarray,
                    tag_ts: np.ndarray, tag_text: np.ndarray, start: float, end: float) -> HeadExamples:
    """Tag applications in [start, end) on catalog items; a user's repeated (item, tag) counts once."""
    tag_text = np.array([str(t).strip().lower() for t in tag_text], dtype=object)
    keep = (tag_ts >= start) & (tag_ts < end) & (tag_item >= 0) & (tag_user >= 0) & (tag_text != "")
    index = np.flatnonzero(keep)
    seen: set[tuple[int, int, str]] = set()
    unique = []
    for i in index[np.argsort(tag_ts[index], kind="stable")]:
        key = (int(tag_user[i]), int(tag_item[i]), tag_text[i])
        if key not in seen:
            seen.add(key)
            unique.append(i)
    index = np.array(unique, dtype=np.int64)
    users = tag_user[index].astype(np.int64)
    known = np.array([np.searchsorted(event_ts[offsets[u]:offsets[u + 1]], t, side="left")
                      for u, t in zip(users, tag_ts[index], strict=True)], dtype=np.int64)
    return _examples("search", users, known, np.full(len(index), -1), tag_text[index], tag_ts[index],
                     tag_item[index])


def similars_examples(offsets: np.ndarray, event_item: np.ndarray, event_ts: np.ndarray, start: float,
                      end: float) -> HeadExamples:
    """Consecutive interaction pairs whose second event lies in [start, end)."""
    user, position = _event_user_position(offsets)
    keep = (position > 0) & (event_ts >= start) & (event_ts < end)
    index = np.flatnonzero(keep)
    return _examples("similars", user[index], position[index], event_item[index - 1],
                     np.full(len(index), "", dtype=object), event_ts[index], event_item[index])


def homepage_examples(offsets: np.ndarray, event_item: np.ndarray, event_ts: np.ndarray, start: float, end: float,
                      session_gap_s: float) -> HeadExamples:
    """First interactions of sessions starting in [start, end), from users with some history."""
    user, position = _event_user_position(offsets)
    gap = np.diff(event_ts, prepend=event_ts[:1])
    first = (position > 0) & (gap > session_gap_s)
    index = np.flatnonzero(first & (event_ts >= start) & (event_ts < end))
    return _examples("homepage", user[index], position[index], np.full(len(index), -1),
                     np.full(len(index), "", dtype=object), event_ts[index], event_item[index])


def _event_user_position(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)
    user = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return user, np.arange(int(offsets[-1]), dtype=np.int64) - offsets[user]
