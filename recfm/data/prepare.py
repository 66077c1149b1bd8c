"""Turns an imported dataset into per-user, time-ordered sequences with dense ids and a split.

Output directory:

    sequences/part-*.parquet  one row per user, in dense-id order: `user` (int32) and list columns `item`
                              (int32), `ts` (int64), `value` (float32) and one int16 list per categorical facet
                              (`action`, `surface`, `device`, extras; code 0 = missing), plus the split:
                              `n_train` and `n_fit` (see below)
    users.parquet             dense user index -> source user_id
    items.parquet             dense item index -> source item_id and its catalog fields
    vocab.json                per categorical facet, the value of each code (index 0 is null/unknown)
    context_events.parquet    events that are not interactions (e.g. MovieLens tags), for search-like training
    prepared.json             what was prepared from what, and the counts (`PreparedInfo`)

Order: events are sorted by (user, ts) with a stable sort, so events with equal timestamps keep their
order in the source file; a non-stable sort silently changes which item is each user's test target.

Split, per user with sequence s of length L: s[:n_train] is training data; s[n_train] is the validation
target (when n_train < n_fit), predicted from s[:n_train]; s[n_fit] is the test target (when n_fit < L),
predicted from s[:n_fit], and models are refitted on s[:n_fit] for the test. A target needs at least one
earlier event.
  - loo (leave-one-out): n_train = L - 2, n_fit = L - 1. Users with fewer than 3 events get no targets
    (their events stay training data) and are counted.
  - time: with cutoffs val < test (timestamps, or quantiles of all event times when in (0, 1)), n_train counts
    events before `val`, n_fit events before `test`; every event at or after a cutoff (with an earlier event of
    the same user) is a target, predicted from the user's events before it (`Sequences.eval_requests`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recfm.data.errors import DataError
from recfm.data.schema import CATEGORICAL_FACETS, EVENTS_DIR, ITEMS_FILE, DatasetInfo, extra_facets

SEQUENCES_DIR = "sequences"
PREPARED_FILE = "prepared.json"
COLD_ITEMS_FILE = "cold_items.npy"  # dense ids of the items held out of training (`data.cold_items`)
SPLITS = ("loo", "time")


@dataclass
class PreparedInfo:
    source: str  # the original data (file or folder)
    dataset: str  # the imported dataset directory it was prepared from
    split: str
    val_cutoff: float | None = None  # resolved timestamps for the time split
    test_cutoff: float | None = None
    interaction_actions: list[str] = field(default_factory=list)
    facets: list[str] = field(default_factory=list)
    has_time: bool = True
    users: int = 0
    items: int = 0
    events: int = 0
    context_events: int = 0
    val_users: int = 0  # users with a validation target
    test_users: int = 0
    val_targets: int = 0  # = val_users for loo; every event of the validation period for time
    test_targets: int = 0
    users_without_targets: int = 0
    cold_items: int = 0  # items held out of training (`data.cold_items`), listed in cold_items.npy
    cold_events_removed: int = 0  # their events before the test cutoff, removed so that nothing trains on them
    min_item_events: int = 0  # `data.min_item_events`
    rare_items: int = 0  # items with fewer interactions than that in the whole file, left out
    rare_events_removed: int = 0  # their interactions
    params: dict = field(default_factory=dict)  # what `ensure_prepared` compares to reuse this output

    def save(self, directory: Path) -> None:
        (Path(directory) / PREPARED_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> PreparedInfo:
        path = Path(directory) / PREPARED_FILE
        if not path.exists():
            raise FileNotFoundError(f"{directory} is not a prepared dataset: {PREPARED_FILE} is missing")
        return cls(**json.loads(path.read_text()))


def prepare(dataset: Path, out: Path, split: str = "loo", val_cutoff: float | None = None,
            test_cutoff: float | None = None, actions: list[str] | None = None,
            users_per_shard: int = 200_000, cold_items: float = 0.0, cold_seed: int = 0,
            min_item_events: int = 0) -> PreparedInfo:
    """Builds sequences and the split from an imported dataset; `actions` defaults to its interactions.

    `min_item_events` leaves out the items with fewer interactions than that in the whole file, and their events
    (counted in the output's info), as the 5-core benchmark files do.

    `cold_items` (time split only) holds out that share of the catalog, drawn at random: every event on them
    before the test cutoff is removed, so they enter the test period as titles nobody has watched."""
    dataset, out = Path(dataset), Path(out)
    info = DatasetInfo.load(dataset)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if split == "time" and not info.has_time:
        raise DataError(str(dataset), "the time split needs real timestamps; this dataset has only event order "
                                      "(use data.split=loo)")
    actions = list(actions or info.interaction_actions)
    events = ds.dataset(dataset / EVENTS_DIR, format="parquet")
    facets = list(CATEGORICAL_FACETS) + extra_facets(events.schema)
    columns = ["user_id", "item_id", "ts", "value", "query", *facets]
    table = events.to_table(columns=columns)

    is_interaction = pc.is_in(table["action"], pa.array(actions)).to_numpy(zero_copy_only=False)
    context = table.filter(pa.array(~is_interaction))
    table = table.filter(pa.array(is_interaction)).drop_columns(["query"])
    if table.num_rows == 0:
        raise DataError(str(dataset), f"no events with an interaction action ({', '.join(actions)})")
    rare_items = rare_events = 0
    if min_item_events > 1:
        counts = pc.value_counts(table["item_id"])
        rare = pc.less(counts.field("counts"), min_item_events)
        rare_items = int(pc.sum(rare).as_py() or 0)
        frequent = pc.invert(pc.is_in(table["item_id"], counts.field("values").filter(rare)))
        rare_events = table.num_rows - int(pc.sum(frequent).as_py() or 0)
        table = table.filter(frequent)
        if table.num_rows == 0:
            raise DataError(str(dataset), f"data.min_item_events={min_item_events} leaves no interactions")

    user_ids, uidx = _dense(table["user_id"])
    item_ids, iidx = _dense(table["item_id"])
    ts = table["ts"].to_numpy()
    order = np.lexsort((ts, uidx))  # stable: equal (user, ts) keep source order
    uidx, iidx, ts = uidx[order], iidx[order], ts[order]
    val_ts = test_ts = None
    if split == "time":  # from every event, whatever is held out below
        val_ts, test_ts = _cutoffs(ts, val_cutoff, test_cutoff)
    cold = np.zeros(0, dtype=np.int64)
    removed = 0
    if cold_items > 0:
        if split != "time":
            raise DataError(str(dataset), "data.cold_items needs the time split (cold items are new in its test "
                                          "period)")
        cold = np.sort(np.random.default_rng(cold_seed).choice(len(item_ids), round(cold_items * len(item_ids)),
                                                                replace=False))
        keep = ~(np.isin(iidx, cold) & (ts < test_ts))
        removed = int((~keep).sum())
        order, uidx, iidx, ts = order[keep], uidx[keep], iidx[keep], ts[keep]
    lengths = np.bincount(uidx, minlength=len(user_ids)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])

    if split == "loo":
        has_targets = lengths >= 3
        n_train = np.where(has_targets, lengths - 2, lengths)
        n_fit = np.where(has_targets, lengths - 1, lengths)
    else:
        n_train = np.bincount(uidx, weights=ts < val_ts, minlength=len(user_ids)).astype(np.int64)
        n_fit = np.bincount(uidx, weights=ts < test_ts, minlength=len(user_ids)).astype(np.int64)

    columns = {"item": iidx.astype(np.int32), "ts": ts,
               "value": table["value"].to_numpy(zero_copy_only=False).astype(np.float32)[order]}
    vocab = {}
    for facet in facets:
        codes, vocab[facet] = _codes(facet, table[facet])
        columns[facet] = codes[order]
    del table, order

    _write_sequences(out, offsets, columns, n_train, n_fit, users_per_shard)
    pq.write_table(pa.table({"user": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids}),
                   out / "users.parquet")
    _write_items(dataset, out, item_ids)
    (out / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    _write_context(out, context, user_ids, item_ids)
    np.save(out / COLD_ITEMS_FILE, cold)

    if split == "time":  # every event after a cutoff with some history is a target (`Sequences.eval_requests`)
        val_counts = np.maximum(n_fit - np.maximum(n_train, 1), 0)
        test_counts = np.maximum(lengths - np.maximum(n_fit, 1), 0)
    else:
        val_counts = ((n_train < n_fit) & (n_train > 0)).astype(np.int64)
        test_counts = ((n_fit < lengths) & (n_fit > 0)).astype(np.int64)
    val_users, test_users = int((val_counts > 0).sum()), int((test_counts > 0).sum())
    prepared = PreparedInfo(
        source=info.source, dataset=str(dataset), split=split, val_cutoff=val_ts, test_cutoff=test_ts,
        interaction_actions=actions,
        facets=facets, has_time=info.has_time, users=len(user_ids), items=len(item_ids), events=int(offsets[-1]),
        context_events=context.num_rows, val_users=val_users, test_users=test_users,
        val_targets=int(val_counts.sum()), test_targets=int(test_counts.sum()),
        users_without_targets=len(user_ids) - test_users, cold_items=len(cold), cold_events_removed=removed,
        min_item_events=min_item_events, rare_items=rare_items, rare_events_removed=rare_events,
    )
    prepared.save(out)
    return prepared


def _dense(ids: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Sorted distinct ids, and each row's index among them (works for int and string ids)."""
    distinct = pc.unique(ids)
    distinct = distinct.take(pc.sort_indices(distinct))
    index = pc.index_in(ids, value_set=distinct)
    return distinct, index.to_numpy(zero_copy_only=False).astype(np.int32)


def _codes(name: str, values: pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    """int16 codes for a categorical facet, most frequent first; code 0 stands for null."""
    values = values.cast(pa.string())
    counts = pc.value_counts(values.drop_null())
    if len(counts) >= np.iinfo(np.int16).max:
        raise DataError("events", f"facet '{name}' has {len(counts):,} distinct values: a facet must be categorical")
    ranked = counts.take(pc.sort_indices(counts, sort_keys=[("counts", "descending"), ("values", "ascending")]))
    vocab = ranked.field("values")
    codes = pc.fill_null(pc.add(pc.index_in(values, value_set=vocab), 1), 0)
    return codes.to_numpy().astype(np.int16), [None, *vocab.to_pylist()]


def cold_items(prepared: Path) -> np.ndarray:
    """Dense ids of the items a prepared dataset held out of training (none for data prepared without)."""
    path = Path(prepared) / COLD_ITEMS_FILE
    return np.load(path) if path.exists() else np.zeros(0, dtype=np.int64)


def _cutoffs(ts: np.ndarray, val: float | None, test: float | None) -> tuple[float, float]:
    val = 0.8 if val is None else val
    test = 0.9 if test is None else test
    val_ts = float(np.quantile(ts, val)) if 0 < val < 1 else float(val)
    test_ts = float(np.quantile(ts, test)) if 0 < test < 1 else float(test)
    if not val_ts < test_ts:
        raise ValueError(f"the validation cutoff ({val_ts:.0f}) must come before the test cutoff ({test_ts:.0f})")
    return val_ts, test_ts


def _write_sequences(out: Path, offsets: np.ndarray, columns: dict[str, np.ndarray], n_train: np.ndarray,
                     n_fit: np.ndarray, users_per_shard: int) -> None:
    seq_dir = out / SEQUENCES_DIR
    seq_dir.mkdir(parents=True, exist_ok=True)
    for stale in seq_dir.glob("part-*.parquet"):
        stale.unlink()
    n_users = len(offsets) - 1
    for shard, lo in enumerate(range(0, max(n_users, 1), users_per_shard)):
        hi = min(lo + users_per_shard, n_users)
        local = offsets[lo:hi + 1] - offsets[lo]
        span = slice(offsets[lo], offsets[hi])
        arrays = {"user": pa.array(np.arange(lo, hi, dtype=np.int32))}
        for name, values in columns.items():
            arrays[name] = pa.ListArray.from_arrays(pa.array(local.astype(np.int32)), pa.array(values[span]))
        arrays["n_train"] = pa.array(n_train[lo:hi].astype(np.int32))
        arrays["n_fit"] = pa.array(n_fit[lo:hi].astype(np.int32))
        pq.write_table(pa.table(arrays), seq_dir / f"part-{shard:05d}.parquet", row_group_size=20_000,
                       compression="zstd")


def _write_items(dataset: Path, out: Path, item_ids: pa.Array) -> None:
    """The item index with catalog fields where the catalog has the item (nulls where it does not)."""
    table = pa.table({"item": np.arange(len(item_ids), dtype=np.int32), "item_id": item_ids})
    catalog_path = dataset / ITEMS_FILE
    if catalog_path.exists():
        catalog = pq.read_table(catalog_path)
        if catalog.num_rows:
            rows = pc.index_in(item_ids, value_set=catalog["item_id"].cast(item_ids.type))
            for name in catalog.column_names[1:]:  # `take` with a null index gives a null: not in the catalog
                table = table.append_column(name, catalog[name].take(rows))
    pq.write_table(table, out / ITEMS_FILE)


def _write_context(out: Path, context: pa.Table, user_ids: pa.Array, item_ids: pa.Array) -> None:
    """Non-interaction events with dense ids (-1 where the user or item has no interactions)."""
    user = pc.index_in(context["user_id"], value_set=user_ids).fill_null(-1).cast(pa.int32())
    item = pc.index_in(context["item_id"], value_set=item_ids).fill_null(-1).cast(pa.int32())
    table = context.append_column("user", user).append_column("item", item)
    pq.write_table(table, out / "context_events.parquet")


def describe(info: PreparedInfo) -> str:
    text = (f"prepared {info.events:,} interactions of {info.users:,} users on {info.items:,} items "
            f"({info.split} split): {info.val_users:,} validation and {info.test_users:,} test users")
    if info.split == "time":
        text += f" with {info.val_targets:,} and {info.test_targets:,} targets (every event after a cutoff)"
    if info.users_without_targets:
        reason = "fewer than 3 events" if info.split == "loo" else "no event after the test cutoff"
        text += f"; {info.users_without_targets:,} users have no test target ({reason}; their events train only)"
    if info.split == "time":
        text += (f"; cutoffs {time.strftime('%Y-%m-%d', time.gmtime(info.val_cutoff))} (val) and "
                 f"{time.strftime('%Y-%m-%d', time.gmtime(info.test_cutoff))} (test)")
    if info.rare_items:
        text += (f"; {info.rare_items:,} items with fewer than {info.min_item_events}"
                 f" interactions left out, with their {info.rare_events_removed:,} events")
    if info.cold_items:
        text += (f"; {info.cold_items:,} cold items held out: their {info.cold_events_removed:,} events before the "
                 f"test cutoff removed")
    return text
