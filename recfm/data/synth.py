"""Synthetic datasets with known structure, to check that models learn what is there.

`synthesize` writes an imported-dataset directory (see `schema.py`) plus the ground truth:

    events/part-*.parquet, items.parquet, dataset.json   as an importer writes them (format "synth")
    truth.parquet        one row per user: user_id, cluster, context_cluster, peak_hour, device, surface, events
    truth_items.parquet  one row per item: item_id, cluster, successor, weight, duration
    truth.json           the generator's parameters (`SynthParams`), sizes and seed

The structure (probabilities and shapes are the fields of `SynthParams`):

- Taste: items are split evenly at random into K clusters. Popularity is Zipf over a random global rank
  (weight (rank + 1) ** -zipf_a), so it is Zipf-like within each cluster as well.
- Users: each has a main cluster (uniform), a second one (uniform among the others; used with context), a peak
  hour of day (mostly evening), a preferred device (tv/mobile/web/tablet, drawn from device_mix) and a preferred
  surface (homepage/search/row/continue_watching, from surface_mix).
- Sequence: each event after a user's first is, with probability p_next, the successor of the previous item
  (the next item in a fixed random cycle through the previous item's cluster); else, with p_cluster, an item
  of the user's cluster by popularity; else an item by global popularity. A first event is a cluster draw.
- Lengths: every user has 3 events plus a lognormal (length_sigma) share of the rest; they sum to `events`.
- Time: each event starts a new session with probability 1 / session_events. Sessions fall on uniform days
  between the user's join day (in the first join_frac of the window) and the end of a `days`-long window
  from 2024-01-01 UTC, at an hour around the user's peak (normal, sd peak_hour_sd); within a session events
  are gap_min_s + exponential(gap_mean_s) seconds apart. Timestamps strictly increase per user (a session
  that would overlap the one before is pushed later).
- Device: one per session, the preferred one with probability p_device, else uniform. Surface: per event,
  the preferred one with probability p_surface, else uniform.
- Context (off unless context_share > 0): each user also has a second taste cluster, and each session is, with
  probability context_share, a "mobile morning" one (device mobile with probability p_device, hour around
  08:00) whose cluster draws come from the second cluster; the others are on the user's preferred device (never
  mobile here) near the user's peak hour, from the main cluster. A session's first event is never a successor:
  a session start is a cluster draw, a continuation may follow the chain. So what the user watches next depends
  on where, when and after how long a pause: an item-only model cannot tell, a model that knows the request's
  context can.
- Actions (`ACTIONS`) are drawn from action_in when the item is in the user's cluster, else action_out:
  completes and thumbs up are likelier in it. `value` is watch seconds: 90-100% of the item's duration for
  complete, 5-70% for play, null for the rest.

Events are written user by user (user_id 0..users-1), each user's events in time order. Users are generated
in blocks of about BLOCK_EVENTS events, each with its own random stream, so the data depend on the seed,
the sizes and the parameters only (not on `shard_rows`), and memory stays bounded whatever the size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from recfm.data.importing import prepare_output
from recfm.data.schema import ITEMS_FILE, DatasetInfo, FileCounts, event_schema, item_schema
from recfm.data.writer import EventShardWriter

ACTIONS = ["play", "complete", "thumbs_up", "thumbs_down", "add_to_list"]
DEVICES = ["tv", "mobile", "web", "tablet"]
SURFACES = ["homepage", "search", "row", "continue_watching"]
TRUTH_FILE = "truth.parquet"
TRUTH_ITEMS_FILE = "truth_items.parquet"
TRUTH_INFO_FILE = "truth.json"
START_TS = 1_704_067_200  # 2024-01-01 00:00:00 UTC
BLOCK_EVENTS = 1_000_000  # events generated at once: bounds memory (~0.2 GB a block)
MIN_EVENTS = 3


@dataclass(frozen=True)
class SynthParams:
    p_next: float = 0.3
    p_cluster: float = 0.5  # the rest, 1 - p_next - p_cluster, is drawn by global popularity
    zipf_a: float = 1.0
    length_sigma: float = 1.0
    session_events: float = 4.0  # mean events per session
    days: int = 365
    join_frac: float = 0.75
    peak_hour_sd: float = 1.5
    gap_min_s: int = 30
    gap_mean_s: float = 480.0
    p_device: float = 0.7
    p_surface: float = 0.6
    device_mix: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)  # in DEVICES order
    surface_mix: tuple[float, ...] = (0.4, 0.15, 0.25, 0.2)  # in SURFACES order
    action_in: tuple[float, ...] = (0.45, 0.35, 0.08, 0.02, 0.10)  # in ACTIONS order
    action_out: tuple[float, ...] = (0.60, 0.15, 0.03, 0.10, 0.12)
    context_share: float = 0.0  # share of sessions in the second-taste context (0: no context structure)
    context_hour: int = 8

    def __post_init__(self) -> None:
        if min(self.p_next, self.p_cluster) < 0 or self.p_next + self.p_cluster > 1:
            raise ValueError("p_next and p_cluster must be probabilities summing to at most 1")
        if not 0 <= self.context_share < 1:
            raise ValueError("context_share must be in [0, 1)")


def _peak_hour_probs() -> np.ndarray:
    hours = np.arange(24)
    w = 0.3 + 3 * np.exp(-0.5 * ((hours - 20.5) / 2) ** 2) + np.exp(-0.5 * ((hours - 8) / 1.5) ** 2)
    return w / w.sum()


class _Catalog:
    """Item clusters, popularity and successor cycles, with vectorised sampling."""

    def __init__(self, rng: np.random.Generator, items: int, k: int, params: SynthParams):
        self.cluster = rng.permutation(np.arange(items) % k)
        self.weight = (rng.permutation(items) + 1.0) ** -params.zipf_a
        self.weight /= self.weight.sum()
        self.duration = np.clip(rng.lognormal(np.log(2700), 0.5, items), 300, 10_800)
        # items by cluster, in random order within it: this order is the successor cycle
        self.order = np.lexsort((rng.random(items), self.cluster))
        self.size = np.bincount(self.cluster, minlength=k)
        self.start = np.cumsum(self.size) - self.size
        self.pos = np.empty(items, np.int64)
        self.pos[self.order] = np.arange(items) - np.repeat(self.start, self.size)
        # one CDF for all clusters: cluster c's entries rise from c to exactly c + 1, so c + u finds cluster c
        w = self.weight[self.order]
        cum = np.cumsum(w)
        before = np.repeat(cum[self.start] - w[self.start], self.size)
        total = np.repeat(np.add.reduceat(w, self.start), self.size)
        self.cluster_cdf = np.repeat(np.arange(k), self.size) + (cum - before) / total
        self.cluster_cdf[self.start + self.size - 1] = np.arange(k) + 1.0
        self.global_cdf = np.cumsum(self.weight)
        self.global_cdf[-1] = 1.0

    def draw_cluster(self, cluster: np.ndarray, u: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.cluster_cdf, cluster + u, side="right")
        return self.order[np.minimum(idx, len(self.order) - 1)]

    def draw_global(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.global_cdf, u, side="right"), len(self.weight) - 1)

    def advance(self, item: np.ndarray, steps: np.ndarray | int) -> np.ndarray:
        """The item `steps` places after `item` in its cluster's successor cycle."""
        c = self.cluster[item]
        return self.order[self.start[c] + (self.pos[item] + steps) % self.size[c]]


def _lengths(rng: np.random.Generator, users: int, events: int, sigma: float) -> np.ndarray:
    """Heavy-tailed per-user event counts, each at least MIN_EVENTS, summing exactly to `events`."""
    spare = events - MIN_EVENTS * users
    share = rng.lognormal(0.0, sigma, users)
    share *= spare / share.sum()
    n = np.floor(share).astype(np.int64)
    short = spare - int(n.sum())  # hand out what flooring lost to the largest remainders
    n[np.argsort(n - share, kind="stable")[:short]] += 1
    return n + MIN_EVENTS


def _labels(names: list[str], idx: np.ndarray) -> pa.Array:
    return pc.take(pa.array(names, pa.string()), pa.array(idx.astype(np.int32)))


def synthesize(out: Path, users: int, items: int, events: int, seed: int = 0, clusters: int = 20,
               shard_rows: int = 2_000_000, progress: bool = False,
               params: SynthParams | None = None) -> DatasetInfo:
    """Writes a synthetic imported dataset with known structure (see the module docstring) to `out`."""
    p = params or SynthParams()
    if users < 1 or clusters < 1 or items < clusters:
        raise ValueError(f"need users >= 1 and items >= clusters >= 1 (got users={users}, items={items}, "
                         f"clusters={clusters})")
    if events < MIN_EVENTS * users:
        raise ValueError(f"events={events:,} is too few for users={users:,}: every user gets at least "
                         f"{MIN_EVENTS} events, so at least {MIN_EVENTS * users:,} are needed")
    out = prepare_output(out)
    rng = np.random.default_rng([seed, 0])
    cat = _Catalog(rng, items, clusters, p)
    user_cluster = rng.integers(0, clusters, users)
    peak = rng.choice(24, users, p=_peak_hour_probs())
    mix = np.asarray(p.device_mix, dtype=np.float64)
    if p.context_share:  # the preferred device is never the context's (mobile)
        mix[DEVICES.index("mobile")] = 0.0
    device = rng.choice(len(DEVICES), users, p=mix / mix.sum())
    surface = rng.choice(len(SURFACES), users, p=np.asarray(p.surface_mix) / sum(p.surface_mix))
    join = np.floor(rng.random(users) * p.join_frac * p.days)
    counts = _lengths(rng, users, events, p.length_sigma)
    # drawn last, so that data without context are what they were before the option existed
    second = ((user_cluster + rng.integers(1, clusters, users)) % clusters if clusters > 1 and p.context_share
              else np.full(users, -1))
    users_arr = (user_cluster, peak, device, surface, join, counts, second)

    # blocks of consecutive users holding about BLOCK_EVENTS events each
    first_event = np.cumsum(counts) - counts
    cuts = np.flatnonzero(np.diff(first_event // BLOCK_EVENTS)) + 1
    bounds = np.concatenate([[0], cuts, [users]])
    schema = event_schema(pa.int64())
    with EventShardWriter(out, schema, shard_rows) as writer, \
            tqdm(total=events, unit="ev", desc="synth", disable=not progress) as bar:
        for b, (u0, u1) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            block_rng = np.random.default_rng([seed, 1, b])
            table = _block(block_rng, cat, p, int(u0), [a[u0:u1] for a in users_arr], schema)
            writer.write(table)
            bar.update(table.num_rows)

    titles = pa.array([f"Item {i}" for i in range(items)], pa.string())
    catalog = pa.table({"item_id": pa.array(np.arange(items), pa.int64()), "title": titles})
    for name in item_schema(pa.int64()).names[2:]:
        catalog = catalog.append_column(name, pa.nulls(items))
    pq.write_table(catalog.cast(item_schema(pa.int64())), out / ITEMS_FILE, compression="zstd")
    _write_truth(out, cat, users_arr, p, dict(users=users, items=items, events=events, seed=seed,
                                              clusters=clusters))
    info = DatasetInfo(format="synth", interaction_actions=list(ACTIONS), has_time=True, mode="strict",
                       source=f"synth(users={users}, items={items}, events={events}, seed={seed}, "
                              f"clusters={clusters})",
                       events=events, items=items, files={"synth": FileCounts(rows_in=events, rows_kept=events)})
    info.save(out)
    return info


def _block(rng: np.random.Generator, cat: _Catalog, p: SynthParams, u0: int, block: list[np.ndarray],
           schema: pa.Schema) -> pa.Table:
    """The events of one block of users, user by user, each in time order."""
    user_cluster, peak, device, surface, join, counts, second = block
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(counts)), counts)  # user index within the block, per event
    first = np.zeros(total, bool)
    first[np.cumsum(counts) - counts] = True
    here = np.arange(total)

    # items: draw the cluster and global picks, then resolve successor chains from their last drawn anchor
    r = rng.random(total)
    u = rng.random(total)
    new = first | (rng.random(total) < 1.0 / p.session_events)  # session starts
    session = np.cumsum(new) - 1
    s_owner = owner[new]
    ns = len(s_owner)
    in_context = np.zeros(ns, bool)
    if p.context_share:
        in_context = rng.random(ns) < p.context_share
    taste = np.where(in_context[session], second[owner], user_cluster[owner])
    is_next = (r < p.p_next) & ~(new if p.context_share else first)
    from_cluster = ~is_next & ((r < p.p_next + p.p_cluster) | first)
    from_global = ~is_next & ~from_cluster
    item = np.empty(total, np.int64)
    item[from_cluster] = cat.draw_cluster(taste[from_cluster], u[from_cluster])
    item[from_global] = cat.draw_global(u[from_global])
    anchor = np.maximum.accumulate(np.where(is_next, 0, here))  # a user's first event is always an anchor
    item[is_next] = cat.advance(item[anchor[is_next]], (here - anchor)[is_next])

    # sessions: starts on uniform days after the user joined, near the peak hour, sorted within each user
    day = join[s_owner] + np.floor(rng.random(ns) * (p.days - join[s_owner]))
    if p.context_share:  # days in order first, so that each session keeps the hour of its own context
        day = day[np.lexsort((day, s_owner))]
    around = np.where(in_context, p.context_hour, peak[s_owner])
    hour = (around + np.rint(rng.normal(0.0, p.peak_hour_sd, ns)).astype(np.int64)) % 24
    s_start = START_TS + day.astype(np.int64) * 86_400 + hour * 3_600 + rng.integers(0, 3_600, ns)
    if not p.context_share:
        s_start = s_start[np.lexsort((s_start, s_owner))]  # sessions are exchangeable: give them in time order
    gap = np.where(new, 0, p.gap_min_s + rng.exponential(p.gap_mean_s, total).astype(np.int64))
    offset = np.cumsum(gap)
    ts = s_start[session] + offset - offset[new][session]
    # strictly increasing per user: t'_i = max(t_i, t'_{i-1} + 1), via a running max of t - i per user (with
    # context, a session drawn earlier on the day of the one before is pushed to follow it)
    shift = owner.astype(np.int64) << 36  # keeps each user's running max apart from the one before
    ts = np.maximum.accumulate(ts - here + shift) - shift + here

    usual = np.where(in_context, DEVICES.index("mobile"), device[s_owner])
    s_device = np.where(rng.random(ns) < p.p_device, usual, rng.integers(0, len(DEVICES), ns))
    ev_surface = np.where(rng.random(total) < p.p_surface, surface[owner], rng.integers(0, len(SURFACES), total))
    in_cluster = cat.cluster[item] == user_cluster[owner]
    cdf = np.cumsum([p.action_out, p.action_in], axis=1)
    cdf /= cdf[:, -1:]
    action = np.minimum((rng.random(total)[:, None] >= cdf[in_cluster.astype(np.int64)]).sum(1), len(ACTIONS) - 1)
    complete = action == ACTIONS.index("complete")
    watched = complete | (action == ACTIONS.index("play"))
    frac = np.where(complete, rng.uniform(0.9, 1.0, total), rng.uniform(0.05, 0.7, total))
    value = (cat.duration[item] * frac).astype(np.float32)

    return pa.table({
        "user_id": pa.array(u0 + owner, pa.int64()),
        "item_id": pa.array(item, pa.int64()),
        "ts": pa.array(ts, pa.int64()),
        "action": _labels(ACTIONS, action),
        "surface": _labels(SURFACES, ev_surface),
        "device": _labels(DEVICES, s_device[session]),
        "value": pa.array(value, pa.float32(), mask=~watched),
        "query": pa.nulls(total, pa.string()),
    }, schema=schema)


def _write_truth(out: Path, cat: _Catalog, users_arr: tuple[np.ndarray, ...], p: SynthParams,
                 sizes: dict[str, int]) -> None:
    user_cluster, peak, device, surface, _, counts, second = users_arr
    n_items = len(cat.cluster)
    pq.write_table(pa.table({
        "user_id": pa.array(np.arange(len(counts)), pa.int64()),
        "cluster": pa.array(user_cluster, pa.int32()),
        "context_cluster": pa.array(second, pa.int32()),  # -1: no context structure
        "peak_hour": pa.array(peak, pa.int8()),
        "device": _labels(DEVICES, device),
        "surface": _labels(SURFACES, surface),
        "events": pa.array(counts, pa.int64()),
    }), out / TRUTH_FILE, compression="zstd")
    pq.write_table(pa.table({
        "item_id": pa.array(np.arange(n_items), pa.int64()),
        "cluster": pa.array(cat.cluster, pa.int32()),
        "successor": pa.array(cat.advance(np.arange(n_items), 1), pa.int64()),
        "weight": pa.array(cat.weight, pa.float64()),  # global popularity (probability of a global draw)
        "duration": pa.array(cat.duration, pa.float32()),
    }), out / TRUTH_ITEMS_FILE, compression="zstd")
    truth = {**sizes, "start_ts": START_TS, "actions": ACTIONS, "devices": DEVICES, "surfaces": SURFACES,
             "params": asdict(p)}
    (out / TRUTH_INFO_FILE).write_text(json.dumps(truth, indent=2) + "\n")
