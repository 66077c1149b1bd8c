"""Event tokens: each event becomes one id per facet, and the facets' embeddings are summed into one token.

Facets come from the prepared data (`item`, and the categorical columns `action`, `surface`, `device`, any
extra ones, coded 0 = missing) or are derived here from `ts` and `value`:

    hour        hour of day (UTC), 24 ids
    day         day of week, Monday = 0, 7 ids
    gap         log2 bucket of seconds since the user's previous event; 0 = no previous event
    engagement  quantile bucket of `value` (rating, watch seconds) fitted on training events; 0 = missing

Gaps need the previous event, so tokenize whole (prefix) sequences first and cut windows afterwards.

Request context: the facets of an event that are known before its item is (`CONTEXT`: when, where, on what, how
long since the user's last event) can also condition the prediction of that event's item (`model.context`). The
tokenizer codes them as for the inputs; batches shift them by one, so that 0 means "not known".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DERIVED = ("hour", "day", "gap", "engagement")
CONTEXT = ("hour", "day", "gap", "surface", "device")  # never item, action or engagement: those are outcomes
_SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday


def gap_bucket(seconds: np.ndarray, buckets: int) -> np.ndarray:
    """log2 bucket (1 .. buckets - 1) of a time gap in seconds; 0 is left for "no previous event"."""
    return 1 + np.minimum(np.floor(np.log2(np.maximum(np.asarray(seconds, dtype=np.float64), 0) + 1)), buckets - 2)


@dataclass(frozen=True)
class Facet:
    name: str
    size: int  # number of ids, i.e. rows of its embedding table


@dataclass
class EventTokenizer:
    facets: list[Facet]
    gap_buckets: int = 32
    value_edges: list[float] | None = None  # engagement bucket edges (quantiles of training values)
    context: list[Facet] = field(default_factory=list)  # the request-time facets the prediction is conditioned on

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.facets]

    @property
    def context_names(self) -> list[str]:
        return [f.name for f in self.context]

    @classmethod
    def from_data(cls, wanted: list[str], n_items: int, vocab: dict[str, list], has_time: bool,
                  train_values: np.ndarray, gap_buckets: int = 32, engagement_buckets: int = 8,
                  context: list[str] = ()) -> EventTokenizer:
        """Facets for `wanted` (["all"] = every informative one) given what the data holds, and the request
        context `context` (["all"] = every facet of `CONTEXT` the data has)."""
        values = train_values[np.isfinite(train_values)]
        available = {"item": n_items}
        available |= {name: len(codes) for name, codes in vocab.items() if len(codes) > 2 or "all" not in wanted}
        if has_time:
            available |= {"hour": 24, "day": 7, "gap": gap_buckets}
        edges = None
        if len(values) and len(np.unique(values)) > 1:
            edges = np.unique(np.quantile(values, np.linspace(0, 1, engagement_buckets + 1)[1:-1])).tolist()
            available["engagement"] = len(edges) + 2  # 0 = missing, then len(edges) + 1 buckets
        names = list(available) if "all" in wanted else list(wanted)
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(f"model.facets names {missing}, which this data does not have "
                             f"(available: {', '.join(available)})")
        if "all" in context:
            context = [n for n in CONTEXT if n in available]
        wrong = [n for n in context if n not in CONTEXT or n not in available]
        if wrong:
            usable = [n for n in CONTEXT if n in available]
            raise ValueError(f"model.context names {wrong}; the request-time facets this data has are "
                             f"{', '.join(usable) or 'none'}")
        return cls([Facet(n, available[n]) for n in names], gap_buckets, edges,
                   [Facet(n, available[n]) for n in context])

    def tokenize(self, events: dict[str, np.ndarray], lengths: np.ndarray) -> dict[str, np.ndarray]:
        """Facet ids (int64) for flat per-event arrays of consecutive sequences with the given lengths."""
        out = {}
        for facet in self.facets + self.context:
            ids = getattr(self, f"_{facet.name}")(events, lengths) if facet.name in DERIVED else events[facet.name]
            out[facet.name] = np.asarray(ids, dtype=np.int64)
        return out

    def request_context(self, ts: np.ndarray, previous_ts: np.ndarray,
                        codes: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Context ids (+1; 0 = not known) of requests made at `ts` by users whose latest event was at
        `previous_ts` (-1: none). A facet given in `codes` (surface, device, or an hour the request names) is taken
        as given; the time facets are otherwise derived from `ts` as `tokenize` derives them; the rest not known."""
        ts = np.asarray(ts, dtype=np.int64)
        previous_ts = np.asarray(previous_ts, dtype=np.int64)
        codes = codes or {}
        out = {}
        for name in self.context_names:
            if name in codes:
                ids = np.asarray(codes[name], dtype=np.int64)
            elif name == "gap":
                ids = np.where(previous_ts >= 0, gap_bucket(ts - previous_ts, self.gap_buckets), 0)
            elif name in DERIVED:
                ids = getattr(self, f"_{name}")({"ts": ts}, np.ones(len(ts), dtype=np.int64))
            else:
                ids = np.full(len(ts), -1)
            out[name] = np.asarray(ids, dtype=np.int64) + 1
        return out

    def _hour(self, events: dict[str, np.ndarray], lengths: np.ndarray) -> np.ndarray:
        return (events["ts"] // 3600) % 24

    def _day(self, events: dict[str, np.ndarray], lengths: np.ndarray) -> np.ndarray:
        return (events["ts"] // _SECONDS_PER_DAY + _EPOCH_WEEKDAY) % 7

    def _gap(self, events: dict[str, np.ndarray], lengths: np.ndarray) -> np.ndarray:
        ts = events["ts"]
        buckets = gap_bucket(np.diff(ts, prepend=ts[:1]), self.gap_buckets)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        buckets[starts[lengths > 0]] = 0  # a sequence's first event has no previous one
        return buckets

    def _engagement(self, events: dict[str, np.ndarray], lengths: np.ndarray) -> np.ndarray:
        value = events["value"]
        ids = 1 + np.searchsorted(np.asarray(self.value_edges), value, side="right")
        return np.where(np.isfinite(value), ids, 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> EventTokenizer:
        return cls([Facet(**f) for f in raw["facets"]], raw["gap_buckets"], raw["value_edges"],
                   [Facet(**f) for f in raw.get("context", [])])
