"""Training input: Parquet sequences -> per-worker shares -> model batches.

Two sources, the same rows: `in_memory_training_windows` (small data: the driver reads one table and hands
its windows to Ray's object store; each worker batches its share with `epoch_batches`), or
`streamed_training_windows` (`train.stream_data`), which reads the sequence shards block by block in Ray Data
tasks and cuts windows as they stream past, every epoch, so neither the driver nor a worker ever holds the whole
dataset (each worker iterates its Ray Data shard with `iter_torch_batches`).

The collate functions below turn numpy batches (list columns as object arrays of per-user arrays, as Ray Data
gives them) into `SequenceBatch`es, whose flat ids and lengths become the KeyedJaggedTensor inside the model.
Every worker runs the same number of steps (equal shares, the last partial training batch dropped): TorchRec's
and DDP's collectives pair up across workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from recfm.data.prepare import SEQUENCES_DIR, PreparedInfo
from recfm.data.ragged import positions
from recfm.fm.batching import SequenceBatch, inference_batch, training_batch
from recfm.fm.tokens import EventTokenizer


def _rows(batch: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    return {name: list(col) for name, col in batch.items() if col.dtype == object}


def training_windows(table: pa.Table, max_len: int, seed: int = 0) -> pa.Table:
    """Each user's training prefix (`n_train` events) cut into windows of `max_len` targets, one row each, in a
    fixed random order.

    Window w of a user ends w * max_len events before the prefix's end and holds max_len + 1 events (inputs,
    and the targets shifted by one), so consecutive windows cover every training target once. Users with
    short histories give one window; a user with a single event gives none (nothing to predict).
    """
    known = table["n_train"].to_numpy().astype(np.int64)
    counts = np.ceil(np.maximum(known - 1, 0) / max_len).astype(np.int64)
    owner = np.repeat(np.arange(len(known)), counts)
    end = known[owner] - positions(counts) * max_len
    start = np.maximum(end - max_len - 1, 0)
    size = end - start
    new_offsets = pa.array(np.concatenate([[0], np.cumsum(size)]).astype(np.int32))
    columns = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if pa.types.is_list(column.type):
            first = column.offsets.to_numpy()[owner] + start  # offsets index the (unsliced) child values
            take = pa.array(np.repeat(first, size) + positions(size))
            columns[name] = pa.ListArray.from_arrays(new_offsets, column.values.take(take))
        else:
            columns[name] = column.take(pa.array(owner))
    columns["n_train"] = pa.array(size.astype(np.int32))
    windows = pa.table(columns)
    return windows.take(pa.array(np.random.default_rng(seed).permutation(windows.num_rows)))


def in_memory_training_windows(prepared: Path, max_len: int, seed: int = 0, refit: bool = False) -> pa.Table:
    """`training_windows` over the whole sequence table, read here, for Ray's object store: on a small machine,
    Ray Data's read tasks would wait for CPUs the training workers hold, and its executor costs ~10 s before the
    first batch of every launch. `refit`: each user's events before the test cutoff instead of the validation
    cutoff."""
    table = _training_prefix(pq.read_table(Path(prepared) / SEQUENCES_DIR), refit)
    return training_windows(table, max_len, seed)


def training_steps(rows: int, world: int, batch_size: int) -> int:
    """Steps per training epoch over `rows` windows: full batches only, as many on every worker."""
    return rows // (world * batch_size)


def epoch_indices(rows: int, rank: int, world: int, batch_size: int, seed: int | None = None) -> Iterator[np.ndarray]:
    """This worker's share of `rows` row numbers as batches, as many on every worker (TorchRec's and DDP's
    collectives pair up across workers). With `seed` (training): a fresh permutation of all rows, every `world`-th
    to this worker, full batches only. Without (validation): equal consecutive shares in order, the last batch
    partial; the < `world` rows left over are not used."""
    if seed is not None:
        order = np.random.default_rng(seed).permutation(rows)[rank::world]
        steps = training_steps(rows, world, batch_size)
    else:
        share = rows // world
        order = np.arange(rank * share, (rank + 1) * share)
        steps = -(-share // batch_size)
    for step in range(steps):
        yield order[step * batch_size:(step + 1) * batch_size]


def epoch_batches(table: pa.Table, rank: int, world: int, batch_size: int, collate,
                  seed: int | None = None) -> Iterator:
    """`epoch_indices` of `table`'s rows, each batch through `collate` (numpy columns, as Ray Data gives them)."""
    for index in epoch_indices(table.num_rows, rank, world, batch_size, seed):
        rows = table.take(pa.array(index))
        yield collate({name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names})


def streamed_training_windows(prepared: Path, max_len: int, seed: int = 0, refit: bool = False):
    """The same rows, read lazily from the sequence shards by Ray Data tasks every epoch. Shuffling is block
    order plus the workers' local shuffle buffers: a global shuffle would materialise the dataset."""
    import ray.data

    files = sorted((Path(prepared) / SEQUENCES_DIR).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{Path(prepared) / SEQUENCES_DIR} holds no sequence shards")
    # local://: read on the driver's node, where the data were prepared (other nodes of a cluster need not see
    # the files); the blocks reach workers on any node through the object store
    dataset = ray.data.read_parquet([f"local://{f.resolve()}" for f in files], shuffle="files")
    return dataset.map_batches(_WindowCutter(max_len, seed, refit), batch_format="pyarrow",
                               batch_size=4096).randomize_block_order(seed=seed)


def _training_prefix(table: pa.Table, refit: bool) -> pa.Table:
    """With `refit`, each user's training prefix becomes the events before the test cutoff (`n_fit`)."""
    return table.set_column(table.schema.get_field_index("n_train"), "n_train", table["n_fit"]) if refit else table


@dataclass
class _WindowCutter:
    max_len: int
    seed: int
    refit: bool

    def __call__(self, table: pa.Table) -> pa.Table:
        first_user = int(table["user"][0].as_py()) if table.num_rows else 0
        return training_windows(_training_prefix(table, self.refit), self.max_len,
                                self.seed * 1_000_003 + first_user)


class TrainingCollate(NumpyBatchCollateFn):
    """Model batches from rows of `training_windows`."""

    def __init__(self, tokenizer: EventTokenizer, max_len: int, mtp: int):
        self.tokenizer, self.max_len, self.mtp = tokenizer, max_len, mtp

    def __call__(self, batch: dict[str, np.ndarray]) -> SequenceBatch:
        return training_batch(_rows(batch), batch["n_train"], self.tokenizer, self.max_len, self.mtp)


@dataclass
class ValidationBatch:
    batch: SequenceBatch  # each user's history before its validation target
    targets: torch.Tensor  # int64 [users]
    history_rows: torch.Tensor  # int64: (user-in-batch, item) pairs to exclude from ranking
    history_items: torch.Tensor


class ValidationCollate(NumpyBatchCollateFn):
    def __init__(self, tokenizer: EventTokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, batch: dict[str, np.ndarray]) -> ValidationBatch:
        known = batch["n_train"].astype(np.int64)
        rows = _rows(batch)
        targets = np.array([items[k] for items, k in zip(rows["item"], known, strict=True)], dtype=np.int64)
        history = [items[:k] for items, k in zip(rows["item"], known, strict=True)]
        return ValidationBatch(
            inference_batch(rows, known, self.tokenizer, self.max_len, next_context=True), torch.from_numpy(targets),
            torch.from_numpy(np.repeat(np.arange(len(history)), [len(h) for h in history])),
            torch.from_numpy(np.concatenate(history).astype(np.int64)))


def validation_table(prepared: Path, max_rows: int, seed: int) -> pa.Table:
    """One row per validation request (see `Sequences.eval_requests`): the user's sequence, with `n_train` set to
    the request's history length. loo: users with a target and history before it; time: every event of the
    validation period. A fixed random subset of `max_rows` when that is set."""
    table = pq.read_table(Path(prepared) / SEQUENCES_DIR)
    n_train, n_fit = table["n_train"].to_numpy().astype(np.int64), table["n_fit"].to_numpy().astype(np.int64)
    if PreparedInfo.load(Path(prepared)).split == "time":
        first = np.maximum(n_train, 1)
        count = np.maximum(n_fit - first, 0)
        rows = np.repeat(np.arange(table.num_rows), count)
        prefixes = np.repeat(first, count) + positions(count)
    else:
        lengths = pc.list_value_length(table["item"]).to_numpy()
        rows = np.flatnonzero((n_train > 0) & (n_train < n_fit) & (lengths > 0))
        prefixes = n_train[rows]
    if max_rows and len(rows) > max_rows:
        chosen = np.sort(np.random.default_rng(seed).choice(len(rows), max_rows, replace=False))
        rows, prefixes = rows[chosen], prefixes[chosen]
    table = table.take(pa.array(rows))
    column = table.schema.get_field_index("n_train")
    return table.set_column(column, "n_train", pa.array(prefixes, type=table.schema.field(column).type))
