"""TorchRec sharding across 2 real processes: the item table is split, training works, dense weights agree."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch.multiprocessing as mp
from dist_workers import shard_and_train

from recfm.fm.config import ModelConfigError, ShardingConfig
from recfm.fm.distributed.sharding import shard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from recfm.data.prepare import prepare
    from recfm.data.synth import synthesize

    root = tmp_path_factory.mktemp("shard")
    synthesize(root / "syn", users=400, items=300, events=12000, seed=2, clusters=6)
    prepare(root / "syn", root / "prep")
    return root / "prep"


SHARDINGS = ["row_wise", "table_wise", "column_wise"]


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """The 2 processes start once and train one model per sharding type (each start imports TorchRec)."""
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(shard_and_train, args=(2, free_port(), str(prepared), SHARDINGS, str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("item_sharding", SHARDINGS)
def test_item_table_is_sharded_and_trains(item_sharding, trained):
    ranks = [json.loads((trained / f"{item_sharding}-rank{r}.json").read_text()) for r in range(2)]
    items = ranks[0]["items"]
    rows = [r["rows"] for r in ranks]
    if item_sharding == "row_wise":  # each rank holds only its half of the rows
        assert rows == [[[0, items // 2]], [[items // 2, items - items // 2]]]
    elif item_sharding == "table_wise":  # the whole table lives on exactly one rank
        assert sorted(len(r) for r in rows) == [0, 1] and sum(r[0][1] for r in rows if r) == items
    else:  # column-wise: every rank holds all rows of its columns
        assert all(r and r[0] == [0, items] for r in rows)
    for r in ranks:
        first, last = np.mean(r["losses"][:5]), np.mean(r["losses"][-5:])
        assert last < first - 0.3, (first, last)
    assert ranks[0]["dense_sum"] == ranks[1]["dense_sum"]  # DDP kept the replicas identical


def test_adam_for_sparse_tables_is_refused_on_cpu():
    import torch

    with pytest.raises(ModelConfigError, match="needs CUDA"):
        shard(None, None, [], ShardingConfig(sparse_optimizer="adam"), 1e-3, 0.0, torch.device("cpu"))
