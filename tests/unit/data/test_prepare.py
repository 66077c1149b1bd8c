"""Sequences and splits: stable order on equal timestamps, leave-one-out and time cutoffs, dense ids."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_movielens

from recfm.data.dataset import Sequences
from recfm.data.errors import DataError
from recfm.data.movielens import import_movielens
from recfm.data.prepare import cold_items, describe, prepare
from recfm.data.sequences import import_sequences

# user 7 rates three movies at the same second, in file order 3, 1, 2; then one more later
TIED = ("userId,movieId,rating,timestamp\n"
        "7,3,4.0,100\n7,1,4.0,100\n5,1,3.0,50\n7,2,4.0,100\n7,1,5.0,90\n5,2,2.0,60\n5,3,1.0,70\n")
MOVIES = "movieId,title,genres\n1,A (2000),Drama\n2,B (2001),Comedy\n3,C (2002),Drama\n"


def test_ties_keep_file_order_and_ids_are_dense(tmp_path):
    root = write_movielens(tmp_path / "ml", ratings=TIED.replace("7,1,5.0,90\n", ""), movies=MOVIES, tags=None)
    import_movielens(root, tmp_path / "imp")
    info = prepare(tmp_path / "imp", tmp_path / "prep")
    seqs = Sequences.load(tmp_path / "prep")
    users = pq.read_table(tmp_path / "prep" / "users.parquet").to_pydict()
    items = pq.read_table(tmp_path / "prep" / "items.parquet").to_pydict()
    assert users["user_id"] == [5, 7] and items["item_id"] == [1, 2, 3] and items["title"] == ["A", "B", "C"]
    user7 = seqs.events["item"][seqs.offsets[1]:seqs.offsets[2]]
    assert [items["item_id"][i] for i in user7] == [3, 1, 2]  # file order among equal timestamps
    assert (info.users, info.items, info.events) == (2, 3, 6)


def test_leave_one_out_targets_and_short_users(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 10 11 12 13\n2 20 21\n3 30 31 32\n")
    import_sequences(path, tmp_path / "imp")
    info = prepare(tmp_path / "imp", tmp_path / "prep")
    seqs = Sequences.load(tmp_path / "prep")
    assert info.users_without_targets == 1  # user 2 has two events
    assert info.val_users == info.test_users == 2
    test_users = seqs.eval_users("test")
    item_ids = pq.read_table(tmp_path / "prep" / "items.parquet")["item_id"].to_pylist()
    assert [item_ids[i] for i in seqs.targets("test", test_users)] == [13, 32]
    assert [item_ids[i] for i in seqs.targets("val", seqs.eval_users("val"))] == [12, 31]
    # validation history stops before the validation target; the test history includes it
    val_hist = seqs.history_matrix("val")[test_users[0]].indices
    test_hist = seqs.history_matrix("test")[test_users[0]].indices
    assert sorted(item_ids[i] for i in val_hist) == [10, 11]
    assert sorted(item_ids[i] for i in test_hist) == [10, 11, 12]


def test_time_split_targets_every_event_after_each_cutoff(tmp_path):
    root = write_movielens(tmp_path / "ml", ratings=TIED, movies=MOVIES, tags=None)
    import_movielens(root, tmp_path / "imp")
    info = prepare(tmp_path / "imp", tmp_path / "prep", split="time", val_cutoff=65, test_cutoff=95)
    seqs = Sequences.load(tmp_path / "prep")
    # user 5 (index 0): ts 50, 60 | 70 -> its ts-70 event is a validation target (history: 2 events); none after 95
    # user 7 (index 1): ts 90 | 100, 100, 100 -> its ts-90 event has no history, so it is no validation target;
    # each ts-100 event is a test target, predicted from the events before it
    assert list(seqs.n_train) == [2, 0] and list(seqs.n_fit) == [3, 1]
    users, prefixes = seqs.eval_requests("val")
    assert list(users) == [0] and list(prefixes) == [2]
    users, prefixes = seqs.eval_requests("test")
    assert list(users) == [1, 1, 1] and list(prefixes) == [1, 2, 3]
    assert (info.val_targets, info.test_targets, info.val_users, info.test_users) == (1, 3, 1, 1)
    assert seqs.request_history(users, prefixes).sum(1).A1.tolist() == [1, 2, 2]  # items 1 | 1 3 | 1 3 1


def test_an_event_exactly_at_a_cutoff_is_a_target_of_that_period(tmp_path):
    """Cutoffs at 70 and 100, the very timestamps of events: those events are targets, never history."""
    root = write_movielens(tmp_path / "ml", ratings=TIED, movies=MOVIES, tags=None)
    import_movielens(root, tmp_path / "imp")
    info = prepare(tmp_path / "imp", tmp_path / "prep", split="time", val_cutoff=70, test_cutoff=100)
    seqs = Sequences.load(tmp_path / "prep")
    assert (info.val_cutoff, info.test_cutoff) == (70, 100)
    assert list(seqs.n_train) == [2, 0] and list(seqs.n_fit) == [3, 1]  # user 5's ts-70, user 7's ts-100 events
    assert list(seqs.eval_requests("val")[1]) == [2] and list(seqs.eval_requests("test")[1]) == [1, 2, 3]


def test_time_split_needs_timestamps(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 10 11 12\n")
    import_sequences(path, tmp_path / "imp")
    with pytest.raises(DataError, match="needs real timestamps"):
        prepare(tmp_path / "imp", tmp_path / "prep", split="time")


def test_context_events_and_facet_vocab(tmp_path):
    import_movielens(write_movielens(tmp_path / "ml"), tmp_path / "imp")
    info = prepare(tmp_path / "imp", tmp_path / "prep")
    seqs = Sequences.load(tmp_path / "prep")
    assert info.context_events == 2  # the tag applications are not interactions
    context = pq.read_table(tmp_path / "prep" / "context_events.parquet").to_pydict()
    assert context["query"] == ["pixar", "balloons"] and min(context["item"]) >= 0
    actions = [seqs.vocab["action"][c] for c in seqs.events["action"]]
    assert set(actions) == {"like", "rate", "dislike"} and seqs.vocab["action"][0] is None
    assert np.all(np.diff(seqs.events["ts"][seqs.offsets[0]:seqs.offsets[1]]) >= 0)


def test_synthetic_data_prepares_and_keeps_every_event(tmp_path):
    from recfm.data.synth import synthesize

    synthesize(tmp_path / "syn", users=300, items=100, events=6000, seed=3)
    info = prepare(tmp_path / "syn", tmp_path / "prep", users_per_shard=128)
    seqs = Sequences.load(tmp_path / "prep")
    assert info.events == 6000 and seqs.n_users == 300 and len(list((tmp_path / "prep" / "sequences").iterdir())) == 3
    assert set(info.facets) == {"action", "surface", "device"}
    assert info.test_users == 300


def test_cold_items_lose_every_event_before_the_test_cutoff_and_keep_their_test_events(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{u},{i},4.0,{t}" for u in range(1, 31) for i, t in
             zip(rng.choice(np.arange(1, 41), 12, replace=False), np.sort(rng.integers(0, 1000, 12)), strict=True)]
    movies = "movieId,title,genres\n" + "".join(f"{i},T{i} (2000),Drama\n" for i in range(1, 41))
    root = write_movielens(tmp_path / "ml", ratings="userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n",
                           movies=movies, tags=None)
    import_movielens(root, tmp_path / "imp")
    full = prepare(tmp_path / "imp", tmp_path / "full", split="time", val_cutoff=600, test_cutoff=800)
    info = prepare(tmp_path / "imp", tmp_path / "prep", split="time", val_cutoff=600, test_cutoff=800,
                   cold_items=0.25, cold_seed=3)
    cold = cold_items(tmp_path / "prep")
    assert info.cold_items == len(cold) == 10
    seqs, before = Sequences.load(tmp_path / "prep"), Sequences.load(tmp_path / "full")
    is_cold = np.isin(seqs.events["item"], cold)
    train_part = seqs.events["ts"] < 800
    assert not (is_cold & train_part).any()  # nothing before the test cutoff trains on a cold item
    removed = np.isin(before.events["item"], cold) & (before.events["ts"] < 800)
    assert info.cold_events_removed == removed.sum() > 0 and info.events == full.events - removed.sum()
    # the test period is untouched: the same targets, cold ones among them
    assert info.test_targets == full.test_targets
    assert np.isin(seqs.request_targets(*seqs.eval_requests("test")), cold).any()
    assert (info.val_cutoff, info.test_cutoff) == (full.val_cutoff, full.test_cutoff)
    with pytest.raises(DataError, match="needs the time split"):
        prepare(tmp_path / "imp", tmp_path / "loo", cold_items=0.25)


def test_min_item_events_leaves_out_rare_items_and_counts_them(tmp_path):
    # item 1: 3 interactions, item 2: 2, item 3: 1 (user 9 has only item 3, so leaves with it)
    ratings = ("userId,movieId,rating,timestamp\n5,1,3.0,50\n5,2,2.0,60\n7,1,4.0,70\n7,2,4.0,80\n8,1,4.0,90\n"
               "9,3,1.0,95\n")
    root = write_movielens(tmp_path / "ml", ratings=ratings, movies=MOVIES, tags=None)
    import_movielens(root, tmp_path / "imp")
    info = prepare(tmp_path / "imp", tmp_path / "prep", min_item_events=2)
    items = pq.read_table(tmp_path / "prep" / "items.parquet").to_pydict()
    users = pq.read_table(tmp_path / "prep" / "users.parquet").to_pydict()
    assert items["item_id"] == [1, 2] and users["user_id"] == [5, 7, 8]
    assert (info.items, info.events, info.rare_items, info.rare_events_removed) == (2, 5, 1, 1)
    assert "1 items with fewer than 2 interactions left out, with their 1 events" in describe(info)
    info = prepare(tmp_path / "imp", tmp_path / "prep3", min_item_events=3)
    assert (info.items, info.events, info.rare_items, info.rare_events_removed) == (1, 3, 2, 3)
    assert prepare(tmp_path / "imp", tmp_path / "all").items == 3
    with pytest.raises(DataError, match="leaves no interactions"):
        prepare(tmp_path / "imp", tmp_path / "none", min_item_events=4)
