"""The unified context: one request schema for every task, and the rules that fill in what a request omits.

    field      search                 similars                          homepage
    user       optional (anonymous)   optional (anonymous)              required; unknown -> anonymous
    query      required, non-empty    imputed: the source item's text  imputed: none (lexical features are 0)
    item       optional               required (the source item)        imputed: the user's latest item
    surface    optional (0 = unknown) optional                          optional
    device     optional               optional                          optional
    hour       imputed: now (UTC)     imputed: now                      imputed: now

An anonymous request has no history: the user vector is the model's learned "no user" vector and nothing is
excluded as already seen. `resolve` applies these rules and records each imputation in `notes`, so a caller
can see what the ranker was actually given. Training examples go through the same `impute`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recfm.heads.examples import TASKS, HeadExamples


class RequestError(ValueError):
    """A request no rule can repair (unknown task, empty search query, unknown source item, ...)."""


@dataclass
class Request:
    """What a caller sends. Ids are the source data's ids (MovieLens userId / movieId), as text or numbers."""

    task: str
    user: str | int | None = None
    query: str | None = None
    item: str | int | None = None
    surface: str | None = None
    device: str | None = None
    hour: int | None = None


def resolve(request: Request, users: dict[str, int], items: dict[str, int], history_length: np.ndarray,
            surfaces: dict[str, int] | None = None, devices: dict[str, int] | None = None,
            now: int | None = None) -> tuple[HeadExamples, list[str]]:
    """Checks a request and maps it to one example row (target -1); `impute` then fills it in.

    `users`/`items` map source ids (as text) to dense ids, `history_length[u]` is how many events of user u are
    known. Returns the row and notes on what was assumed.
    """
    if request.task not in TASKS:
        raise RequestError(f"unknown task {request.task!r}: use one of {', '.join(TASKS)}")
    notes: list[str] = []
    user, known = -1, 0
    if request.user is not None and str(request.user) != "":
        user = users.get(str(request.user), -1)
        if user < 0:
            notes.append(f"unknown user {request.user}: served as an anonymous user (no history)")
        else:
            known = int(history_length[user])
    elif request.task == "homepage":
        raise RequestError("homepage needs a user (a user id from the data)")
    item = -1
    if request.item is not None and str(request.item) != "":
        item = items.get(str(request.item), -1)
        if item < 0:
            raise RequestError(f"unknown item {request.item}: not in the trained catalog")
    elif request.task == "similars":
        raise RequestError("similars needs an item (a source item id from the data)")
    elif request.task == "homepage" and known:
        notes.append("source item imputed: the user's latest item")
    query = " ".join((request.query or "").split())
    if request.task == "search" and not query:
        raise RequestError("search needs a non-empty query")
    if request.task == "similars" and not query:
        notes.append("query imputed: the source item's title and genres")
    hour = request.hour
    if hour is None:
        hour = time.gmtime(now).tm_hour
        notes.append(f"hour imputed: now ({hour:02d} UTC)")
    if not 0 <= int(hour) < 24:
        raise RequestError(f"hour must be 0..23, not {hour}")
    row = HeadExamples(np.array([TASKS.index(request.task)]), np.array([user]), np.array([known]), np.array([item]),
                       np.array([query], dtype=object), np.array([int(hour)]),
                       np.array([_code(request.surface, surfaces)]), np.array([_code(request.device, devices)]),
                       np.array([int(now or time.time())]), np.array([-1]))
    return row, notes


def impute(examples: HeadExamples, offsets: np.ndarray, event_item: np.ndarray,
           item_text: Callable[[int], str]) -> HeadExamples:
    """The imputation rules (the table above) for a batch of examples, as training and serving both apply them."""
    out = examples.take(np.arange(len(examples)))
    has_history = (out.user >= 0) & (out.known > 0)
    latest = np.where(has_history, offsets[np.maximum(out.user, 0)] + out.known - 1, 0)
    home = (out.task == TASKS.index("homepage")) & (out.item < 0) & has_history
    out.item[home] = event_item[latest[home]]
    similar = (out.task == TASKS.index("similars")) & (out.query == "") & (out.item >= 0)
    out.query[similar] = [item_text(int(i)) for i in out.item[similar]]
    return out


def _code(value: str | None, codes: dict[str, int] | None) -> int:
    """Categorical context values as the prepared data codes them; unknown or missing = 0."""
    if value is None or not codes:
        return 0
    return codes.get(value, 0)
