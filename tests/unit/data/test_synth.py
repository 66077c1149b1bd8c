"""The synthetic generator: exact sizes, the on-disk contract, determinism, and the structure it promises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfm.data import synth
from recfm.data.schema import ITEMS_FILE, DatasetInfo, event_schema, item_schema
from recfm.data.synth import DEVICES, SynthParams, synthesize

USERS, ITEMS, EVENTS, K = 2_000, 500, 40_000, 20


def _events(out: Path) -> pa.Table:
    shards = sorted((out / "events").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(s) for s in shards])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("synth")
    info = synthesize(out, USERS, ITEMS, EVENTS, seed=7, clusters=K)
    ev = _events(out)
    return {
        "out": out,
        "info": info,
        "events": ev,
        "cols": {name: ev[name].to_numpy(zero_copy_only=False) for name in ev.column_names},
        "users": pq.read_table(out / synth.TRUTH_FILE).to_pandas(),
        "items": pq.read_table(out / synth.TRUTH_ITEMS_FILE).to_pandas(),
    }


def _same_user(c: dict) -> np.ndarray:
    return c["user_id"][1:] == c["user_id"][:-1]


def test_sizes_and_dataset_info(data: dict) -> None:
    c, info = data["cols"], DatasetInfo.load(data["out"])
    assert len(c["user_id"]) == EVENTS
    per_user = np.bincount(c["user_id"], minlength=USERS)
    assert len(per_user) == USERS and per_user.min() >= 3
    assert per_user.max() > 5 * np.median(per_user)  # heavy-tailed lengths
    np.testing.assert_array_equal(per_user, data["users"]["events"].to_numpy())
    assert info == data["info"]
    assert (info.format, info.has_time, info.mode, info.events, info.items) == ("synth", True, "strict", EVENTS, ITEMS)
    assert set(info.interaction_actions) == set(c["action"])
    assert info.files["synth"].rows_in == info.files["synth"].rows_kept == EVENTS
    truth = json.loads((data["out"] / synth.TRUTH_INFO_FILE).read_text())
    assert truth["params"]["p_next"] == SynthParams().p_next and truth["seed"] == 7


def test_schema_and_order(data: dict) -> None:
    assert data["events"].schema.remove_metadata().equals(event_schema(pa.int64()))
    items = pq.read_table(data["out"] / ITEMS_FILE)
    assert items.schema.remove_metadata().equals(item_schema(pa.int64())) and items.num_rows == ITEMS
    c = data["cols"]
    assert np.all(np.diff(c["user_id"]) >= 0)  # each user's events are contiguous
    assert np.all(np.diff(c["ts"])[_same_user(c)] > 0)  # and strictly in time order
    assert c["ts"].min() >= synth.START_TS and c["ts"].max() < synth.START_TS + 370 * 86_400
    assert data["events"]["query"].null_count == EVENTS
    assert c["item_id"].min() >= 0 and c["item_id"].max() < ITEMS


def test_deterministic_per_seed(tmp_path: Path, data: dict) -> None:
    synthesize(tmp_path / "same", USERS, ITEMS, EVENTS, seed=7, clusters=K)
    assert _events(tmp_path / "same").equals(data["events"])
    for name in (synth.TRUTH_FILE, synth.TRUTH_ITEMS_FILE, ITEMS_FILE, "events/part-00000.parquet"):
        assert (tmp_path / "same" / name).read_bytes() == (data["out"] / name).read_bytes()
    synthesize(tmp_path / "other", USERS, ITEMS, EVENTS, seed=8, clusters=K)
    other = _events(tmp_path / "other")
    assert other.num_rows == EVENTS and not other.equals(data["events"])


def test_blocks_and_shards_do_not_change_the_data(tmp_path: Path, data: dict,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    synthesize(tmp_path / "a", USERS, ITEMS, EVENTS, seed=7, clusters=K, shard_rows=9_000)
    assert len(list((tmp_path / "a" / "events").glob("*.parquet"))) == 5
    assert _events(tmp_path / "a").equals(data["events"])
    monkeypatch.setattr(synth, "BLOCK_EVENTS", 3_000)  # many blocks: users still whole and in order
    synthesize(tmp_path / "b", USERS, ITEMS, EVENTS, seed=7, clusters=K, shard_rows=9_000)
    ev = _events(tmp_path / "b")
    u, ts = ev["user_id"].to_numpy(), ev["ts"].to_numpy()
    assert ev.num_rows == EVENTS and np.all(np.diff(u) >= 0) and np.all(np.diff(ts)[u[1:] == u[:-1]] > 0)
    np.testing.assert_array_equal(np.bincount(u), data["users"]["events"].to_numpy())


def test_next_item_is_often_the_successor(data: dict) -> None:
    c, same = data["cols"], _same_user(data["cols"])
    successor = data["items"]["successor"].to_numpy()
    hits = successor[c["item_id"][:-1]] == c["item_id"][1:]
    p_next = SynthParams().p_next
    assert abs(hits[same].mean() - p_next) < 0.04
    shuffled = successor[c["item_id"][:-1]] == np.random.default_rng(0).permutation(c["item_id"][1:])
    assert shuffled[same].mean() < 0.05  # popularity alone does not explain it
    # the successor stays in its item's cluster
    cluster = data["items"]["cluster"].to_numpy()
    np.testing.assert_array_equal(cluster[successor], cluster)


def test_users_stay_in_their_cluster(data: dict) -> None:
    c = data["cols"]
    user_cluster = data["users"]["cluster"].to_numpy()[c["user_id"]]
    in_cluster = data["items"]["cluster"].to_numpy()[c["item_id"]] == user_cluster
    assert in_cluster.mean() > 0.65 > 5 / K
    # completes are likelier in the user's cluster, and complete watches longer than plays
    complete, play = c["action"] == "complete", c["action"] == "play"
    assert complete[in_cluster].mean() > complete[~in_cluster].mean() + 0.1
    value = c["value"]
    assert np.isnan(value[~(complete | play)]).all() and not np.isnan(value[complete | play]).any()
    assert value[complete].mean() > 1.5 * value[play].mean()


def test_popularity_follows_the_truth(data: dict) -> None:
    counts = np.bincount(data["cols"]["item_id"], minlength=ITEMS)
    weight = data["items"]["weight"].to_numpy()
    assert np.corrcoef(np.log1p(counts), np.log(weight))[0, 1] > 0.5


def test_hours_concentrate_near_peak(data: dict) -> None:
    c = data["cols"]
    hour = (c["ts"] - synth.START_TS) % 86_400 // 3_600
    peak = data["users"]["peak_hour"].to_numpy()[c["user_id"]]
    distance = np.minimum((hour - peak) % 24, (peak - hour) % 24)
    assert (distance <= 2).mean() > 0.75  # 5 of 24 hours: ~0.21 if hours ignored the peak


def test_devices_follow_preferences(data: dict) -> None:
    c, p = data["cols"], SynthParams()
    preferred = data["users"]["device"].to_numpy(dtype=object)[c["user_id"]]
    expected = p.p_device + (1 - p.p_device) / len(DEVICES)
    assert abs((c["device"] == preferred).mean() - expected) < 0.05
    assert set(c["device"]) == set(DEVICES)


def test_too_few_events_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        synthesize(tmp_path, users=100, items=50, events=299)
    info = synthesize(tmp_path, users=100, items=50, events=300)  # exactly 3 each is enough
    assert info.events == 300 and np.all(np.bincount(_events(tmp_path)["user_id"].to_numpy()) == 3)


def test_context_sessions_draw_from_the_second_taste_and_session_starts_never_follow_the_chain(
        tmp_path: Path) -> None:
    share = 0.5
    synthesize(tmp_path, USERS, ITEMS, EVENTS, seed=7, clusters=K, params=SynthParams(context_share=share))
    c = {name: col.to_numpy(zero_copy_only=False) for name, col in zip(
        *(lambda t: (t.column_names, t.columns))(_events(tmp_path)), strict=True)}
    users = pq.read_table(tmp_path / synth.TRUTH_FILE).to_pandas()
    items = pq.read_table(tmp_path / synth.TRUTH_ITEMS_FILE).to_pandas()
    second = users["context_cluster"].to_numpy()[c["user_id"]]
    main = users["cluster"].to_numpy()[c["user_id"]]
    assert (second != main).all() and (users["device"] != "mobile").all()
    cluster = items["cluster"].to_numpy()[c["item_id"]]
    hour = (c["ts"] - synth.START_TS) % 86_400 // 3_600
    morning_mobile = (c["device"] == "mobile") & (abs(hour - 8) <= 2)
    evening_tv = (c["device"] != "mobile") & (abs(hour - 8) > 3)
    assert (cluster[morning_mobile] == second[morning_mobile]).mean() > 0.6
    assert (cluster[morning_mobile] == main[morning_mobile]).mean() < 0.1
    assert (cluster[evening_tv] == main[evening_tv]).mean() > 0.6
    # a long pause starts a session, whose first item is never its predecessor's successor
    same = _same_user(c)
    gap = np.diff(c["ts"])
    follows = items["successor"].to_numpy()[c["item_id"][:-1]] == c["item_id"][1:]
    assert follows[same & (gap > 6 * 3_600)].mean() < 0.03
    assert follows[same & (gap < 3_600)].mean() > 0.3

