"""The heads' parts in one process: the unified context and its rules, text, requests from events, signals,
the ranker's gradients, and the homepage page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recfm.fm.config import ModelConfig
from recfm.fm.model import UserFoundationModel
from recfm.fm.tokens import EventTokenizer, Facet
from recfm.heads.batch import EventLog, heads_batch
from recfm.heads.context import Request, RequestError, impute, resolve
from recfm.heads.examples import TASKS, HeadExamples, homepage_examples, search_examples, similars_examples
from recfm.heads.model import HeadsModel, HeadsSpec
from recfm.heads.page import compose_page
from recfm.heads.signals import SIGNALS, CatalogSignals, SignalTimeline
from recfm.heads.text import BM25, TextEncoder, text_features

# two users; items 0..5. user 0: 0 1 | (2 h later) 2 3 ; user 1: 4 5 0
OFFSETS = np.array([0, 4, 7])
ITEMS = np.array([0, 1, 2, 3, 4, 5, 0])
TS = np.array([0, 60, 7260, 7320, 100, 160, 220])
DOCS = ["toy story animation", "heat crime", "alien sci-fi horror", "aliens sci-fi action", "amelie romance",
        "up animation"]


def _lookup():
    return {"10": 0, "11": 1}, {str(100 + i): i for i in range(6)}, np.array([4, 3])


@pytest.mark.parametrize("request_, message", [
    (Request("feed", user="10"), "unknown task 'feed'"),
    (Request("search", query="   "), "search needs a non-empty query"),
    (Request("similars", item="999"), "unknown item 999"),
    (Request("similars"), "similars needs an item"),
    (Request("homepage"), "homepage needs a user"),
    (Request("search", query="x", hour=30), "hour must be 0..23"),
])
def test_bad_requests_are_refused_with_a_reason(request_, message):
    with pytest.raises(RequestError, match=message):
        resolve(request_, *_lookup())


def test_missing_fields_are_imputed_by_the_documented_rules():
    users, items, lengths = _lookup()
    home, notes = resolve(Request("homepage", user="10", hour=5), users, items, lengths)
    assert any("latest item" in n for n in notes)
    home = impute(home, OFFSETS, ITEMS, lambda i: DOCS[i])
    assert home.item[0] == 3 and home.known[0] == 4  # user 0's latest item
    similar, notes = resolve(Request("similars", item="102", hour=5), users, items, lengths)
    similar = impute(similar, OFFSETS, ITEMS, lambda i: DOCS[i])
    assert similar.query[0] == DOCS[2] and similar.user[0] == -1 and any("query imputed" in n for n in notes)
    stranger, notes = resolve(Request("homepage", user="nobody", hour=5), users, items, lengths)
    assert stranger.user[0] == -1 and any("anonymous" in n for n in notes)
    assert impute(stranger, OFFSETS, ITEMS, lambda i: DOCS[i]).item[0] == -1  # no history: nothing to impute
    _, notes = resolve(Request("search", query="alien"), users, items, lengths)
    assert any("hour imputed" in n for n in notes)


def test_requests_from_events():
    home = homepage_examples(OFFSETS, ITEMS, TS, 0, np.inf, session_gap_s=3600)
    assert home.target.tolist() == [2] and home.known.tolist() == [2]  # the session after the 2-hour gap
    similar = similars_examples(OFFSETS, ITEMS, TS, 100, np.inf)
    assert similar.item.tolist() == [1, 2, 4, 5] and similar.target.tolist() == [2, 3, 5, 0]  # not 0->1 (ts 60)
    tags = search_examples(OFFSETS, TS, np.array([0, 0, 1, 0]), np.array([2, 2, 4, -1]),
                           np.array([7300, 7301, 50, 10]), np.array(["Aliens", "aliens ", "romance", "x"]), 0, np.inf)
    # the repeated tag counts once; the tag on an item outside the catalog is not a request
    assert tags.target.tolist() == [4, 2] and tags.query.tolist() == ["romance", "aliens"]
    assert tags.known.tolist() == [0, 3]  # user 1 had no event before ts 50; user 0 had three before 7300


def test_text_encoder_encodes_unseen_words_through_shared_trigrams():
    torch.manual_seed(0)
    encoder = TextEncoder(16, 1 << 12, 1 << 12)
    a, b, c = encoder.encode(["science fiction", "sciense fiktion", "romantic comedy"])
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(a, b, dim=0) > cosine(a, c, dim=0)  # a misspelling stays close
    first = text_features(["alien"], 97, 89).values().tolist()
    assert first == text_features(["alien"], 97, 89).values().tolist()  # stable across calls (crc32)


def test_query_bucket_ids_are_the_same_in_every_process():
    """Serving and training run in other processes than the one that built the vocabulary: Python's str hash is
    salted per process (PYTHONHASHSEED), so bucket ids must come from a fixed hash."""
    import os
    import subprocess
    import sys

    code = ("from recfm.heads.text import text_features\n"
            "print(text_features(['alien sci-fi', 'space opera'], 32768, 32768).values().tolist())")
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # another salt than this process's
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONHASHSEED": seed})
    assert done.returncode == 0, done.stderr
    assert done.stdout == str(text_features(["alien sci-fi", "space opera"], 32768, 32768).values().tolist()) + "\n"


def test_bm25_prefers_the_rare_matching_term():
    scores = BM25(DOCS).scores(["alien horror", "nothing matches"])
    assert int(np.argmax(scores[0])) == 2 and scores[1].max() == 0.0


def test_bm25_is_okapi_bm25_and_idf_outweighs_a_short_document():
    """Each document matches one query word: the short one a word most documents have, the long one a rare word.
    Term frequency and length alone rank the short one first; IDF puts the rare word's document first."""
    docs = ["space", "opera music hall evening", "space station", "space western", "drama"]
    scores = BM25(docs).scores(["space opera"])[0]
    k1, b, n = 1.2, 0.75, len(docs)
    lengths = [len(d.split()) for d in docs]
    avg = sum(lengths) / n

    def term(word: str, doc: int) -> float:  # the textbook Okapi BM25 term, with Lucene's non-negative IDF
        df = sum(word in d.split() for d in docs)
        tf = docs[doc].split().count(word)
        return np.log(1 + (n - df + 0.5) / (df + 0.5)) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[doc] / avg))

    expected = [term("space", d) + term("opera", d) for d in range(n)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert int(np.argmax(scores)) == 1 and scores[1] > scores[0] > scores[2] > 0 == scores[4]


def _fm():
    tok = EventTokenizer([Facet("item", 6)])
    return UserFoundationModel(ModelConfig(dim=8, layers=1, heads=2, max_len=8, dropout=0.0, content=False), tok)


def _batch(fm, tasks=("search", "similars", "homepage")):
    signals = CatalogSignals.fit(DOCS, np.repeat([0, 1], [4, 3]), ITEMS, 6, k=3)
    n = len(tasks)
    examples = HeadExamples(np.array([TASKS.index(t) for t in tasks]), np.array([0, 1, 0][:n]),
                            np.array([2, 3, 4][:n]), np.array([-1, 4, 3][:n]),
                            np.array(["alien", "", ""][:n], dtype=object), np.zeros(n, dtype=np.int64),
                            np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                            np.array([2, 1, 5][:n]))
    examples = impute(examples, OFFSETS, ITEMS, lambda i: DOCS[i])
    log = EventLog(OFFSETS, {"item": ITEMS, "ts": TS, "value": np.zeros(7)})
    return heads_batch(examples, log, signals, fm.tokenizer, 8, 64, 64), signals


def test_signals_and_exclusions():
    batch, signals = _batch(_fm())
    s = batch.signals
    assert s.shape == (3, 6, len(SIGNALS))
    assert s[0, 2, SIGNALS.index("lexical")] == 1.0 and s[0, 0, SIGNALS.index("lexical_any")] == 0.0
    assert s[2, :, SIGNALS.index("seen")].tolist() == [1, 1, 1, 1, 0, 0]  # user 0's four items
    # search excludes nothing; similars excludes the history and the source; homepage the history
    assert not batch.exclude[0].any()
    assert batch.exclude[1].tolist() == [True, False, False, False, True, True]  # user 1 had 4 5 0
    assert batch.exclude[2].tolist() == [True, True, True, True, False, False]


def test_trending_counts_recent_interactions_and_the_timeline_never_reads_ahead():
    early = CatalogSignals.fit(DOCS, np.array([0, 0, 1]), np.array([0, 1, 0]), 6, k=3)
    late = CatalogSignals.fit(DOCS, np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 5, 5]), 6, k=3,
                              recent_item=np.array([5, 5]))
    assert late.trend.tolist() == [0, 0, 0, 0, 0, 1] and late.log_pop[0] == 1.0  # item 5 trends, 0 stays top
    timeline = SignalTimeline([0.0, 100.0], [early, late])
    pop, trend = SIGNALS.index("popularity"), SIGNALS.index("trending")
    s = timeline.features(["", "", ""], np.array([-1, -1, -1]), [ITEMS[:0]] * 3, np.array([99, 100, 500]))
    assert s[0, 5, pop] == 0.0 and s[1, 5, pop] > 0.0 and s[2, 5, trend] == 1.0  # item 5 unknown before 100
    with pytest.raises(ValueError, match="older than the timeline's first cutoff"):
        timeline.features([""], np.array([-1]), [ITEMS[:0]], np.array([-5]))


def test_new_releases_are_titles_nobody_had_seen_from_the_request_year_or_the_one_before(tmp_path):
    years = np.array([1999, 2016, 2017, 2017, 0, 2018])
    # items 0 and 1 were interacted with before the cutoff; 2..5 were not (4 has no year)
    signals = CatalogSignals.fit(DOCS, np.array([0, 1]), np.array([0, 1]), 6, k=3, years=years)
    new = SIGNALS.index("new_release")
    at = np.array([np.datetime64("2017-07-01"), np.datetime64("2018-03-01")]).astype("datetime64[s]").astype(np.int64)
    s = signals.features(["", ""], np.array([-1, -1]), [ITEMS[:0]] * 2, at)
    assert s[0, :, new].tolist() == [0, 0, 1, 1, 0, 0]  # 2016's item 1 was seen; 2018's is not out yet
    assert s[1, :, new].tolist() == [0, 0, 1, 1, 0, 1]
    assert not signals.features([""], np.array([-1]), [ITEMS[:0]])[:, :, new].any()  # no request time, none
    signals.save(tmp_path / "signals.npz")  # what serving reads
    assert CatalogSignals.load(tmp_path / "signals.npz").years.tolist() == years.tolist()


def test_recent_taste_is_recent_releases_weighted_by_the_users_share_of_them():
    years = np.array([1999, 2016, 2017, 2017, 0, 2018])
    signals = CatalogSignals.fit(DOCS, np.array([0, 1]), np.array([0, 1]), 6, k=3, years=years)
    release, taste = SIGNALS.index("recent_release"), SIGNALS.index("recent_taste")

    def when(*days):
        return np.array([np.datetime64(d) for d in days]).astype("datetime64[s]").astype(np.int64)

    # user a had 1999's item in 2000 (recent then) and 2016's in 2018 (not recent then); user b only 1999's, late
    histories, times = [np.array([0, 1]), np.array([0])], [when("2000-05-01", "2018-01-01"), when("2015-01-01")]
    s = signals.features(["", ""], np.array([-1, -1]), histories, when("2017-07-01", "2017-07-01"), times)
    assert s[0, :, release].tolist() == [0, 1, 1, 1, 0, 0]  # seen or not; item 4 has no year
    assert s[0, :, taste].tolist() == [0, 0.5, 0.5, 0.5, 0, 0] and not s[1, :, taste].any()
    assert not signals.features(["", ""], np.array([-1, -1]), histories, when("2017-07-01", "2017-07-01"))[
        :, :, taste].any()  # no history times, no taste


@pytest.mark.parametrize("mode", ["unified", "separate"])
def test_frozen_heads_train_only_themselves(mode):
    torch.manual_seed(0)
    fm = _fm()
    model = HeadsModel(fm, HeadsSpec(mode=mode, fm="frozen", text_dim=8, hidden=16, word_buckets=64,
                                     trigram_buckets=64))
    batch, signals = _batch(fm)
    item_text = text_features(signals.documents, 64, 64)
    scores = model(batch, item_text)
    assert scores.shape == (3, 6) and torch.isinf(scores[batch.exclude]).all()
    torch.nn.functional.cross_entropy(scores, batch.target).backward()
    assert all(p.grad is None for p in fm.parameters())
    ranker = next(iter(model.rankers.values()))
    assert ranker.signal_weights.weight.grad.abs().sum() > 0 and model.text.project.weight.grad is not None


def test_a_frozen_fms_user_vectors_computed_ahead_score_as_computed_in_the_step():
    """The heads' training computes a frozen FM's user vectors once, ahead: they must be the FM as every step runs
    it (without dropout, even when the FM was left in training mode), so the scores are the same either way."""
    torch.manual_seed(0)
    tok = EventTokenizer([Facet("item", 6)])
    fm = UserFoundationModel(ModelConfig(dim=8, layers=1, heads=2, max_len=8, dropout=0.5, content=False), tok)
    model = HeadsModel(fm, HeadsSpec(fm="frozen", text_dim=8, hidden=16, word_buckets=64, trigram_buckets=64))
    batch, signals = _batch(fm)
    item_text = text_features(signals.documents, 64, 64)
    fm.train()  # dropout on: vectors computed like this would differ from the eval-mode step's
    batch.fm_user = model.frozen_user_vectors(batch.history)
    model.eval()
    with torch.no_grad():
        ahead = model(batch, item_text)
        batch.fm_user = None
        in_step = model(batch, item_text)
    finite = torch.isfinite(in_step)
    assert torch.equal(torch.isfinite(ahead), finite) and int(batch.has_user.sum()) >= 2
    torch.testing.assert_close(ahead[finite], in_step[finite])


def test_weights_chosen_per_task_score_each_task_with_its_own():
    torch.manual_seed(0)
    fm = _fm()
    spec = HeadsSpec(text_dim=8, hidden=16, word_buckets=64, trigram_buckets=64)
    batch, signals = _batch(fm)
    item_text = text_features(signals.documents, 64, 64)
    a = HeadsModel(fm, spec).eval()
    b = HeadsModel(fm, spec).eval()
    with torch.no_grad():
        b.rankers["unified"].task_weights.weight.uniform_(0, 3)
        b.text.project.weight.mul_(-1.0)
    both = HeadsModel(fm, spec).eval()
    both.load_head_state({"tasks": {"search": a.head_state(), "similars": b.head_state(), "homepage": a.head_state()}})
    with torch.no_grad():
        got, want_a, want_b = both(batch, item_text), a(batch, item_text), b(batch, item_text)
    assert not torch.allclose(want_a[1], want_b[1])
    assert torch.allclose(got[[0, 2]], want_a[[0, 2]]) and torch.allclose(got[1], want_b[1])


def test_finetuned_heads_reach_the_foundation_model():
    torch.manual_seed(0)
    fm = _fm()
    model = HeadsModel(fm, HeadsSpec(fm="finetune", text_dim=8, hidden=16, word_buckets=64, trigram_buckets=64))
    batch, signals = _batch(fm)
    scores = model(batch, text_features(signals.documents, 64, 64))
    torch.nn.functional.cross_entropy(scores, batch.target).backward()
    assert fm.item_table().grad is not None and fm.item_table().grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fm.transformer.parameters())


def test_homepage_page_has_no_repeats_and_caps_genres():
    torch.manual_seed(0)
    n = 40
    genres = [["Drama"] if i % 2 else ["Comedy", "Drama"] if i % 3 == 0 else ["Action"] for i in range(n)]
    home = torch.randn(n)
    home[:3] = -torch.inf  # already seen
    because = [("X (1999)", torch.randn(n))]
    rows = compose_page(home, because, genres, rows=6, row_length=6, genre_cap=2)
    placed = [i for r in rows for i in r.items]
    assert len(placed) == len(set(placed)) and not set(placed) & {0, 1, 2}
    assert [r.engagement for r in rows] == sorted((r.engagement for r in rows), reverse=True)
    for row in rows:
        own = row.title.removeprefix("Top ") if row.title.startswith("Top ") else None
        counts = {}
        for i in row.items:
            for g in genres[i]:
                counts[g] = counts.get(g, 0) + 1
        assert all(c <= 2 for g, c in counts.items() if g != own), row
    assert {"Top picks for you", "Because you watched X (1999)"} <= {r.title for r in rows}


def test_user_weighting_evens_out_heavy_users_within_each_task():
    from recfm.heads.examples import _examples
    from recfm.platform.train.heads_job import user_weights

    def _requests(task: str, users: list[int]) -> HeadExamples:
        zeros = [0] * len(users)
        return _examples(task, users, zeros, [-1] * len(users), [""] * len(users), zeros, zeros)

    # homepage: user 0 makes 4 requests, user 1 one; search: two anonymous requests and one of user 0
    ex = HeadExamples.concat([
        _requests("homepage", [0, 0, 0, 0, 1]),
        _requests("search", [-1, -1, 0]),
    ])
    alike = user_weights(ex, 0.0)
    assert np.allclose(alike, 1.0)
    per_user = user_weights(ex, 1.0)
    home = per_user[ex.task == TASKS.index("homepage")]
    assert np.isclose(home[:4].sum(), home[4]) and np.isclose(home.mean(), 1.0)  # each user weighs alike
    assert np.allclose(per_user[ex.task == TASKS.index("search")], 1.0)  # anonymous requests are users of their own
    sqrt = user_weights(ex, 0.5)[ex.task == TASKS.index("homepage")]
    assert np.isclose(sqrt[0] / sqrt[4], 0.5)  # 4^-0.5


def test_the_fms_history_carries_each_requests_own_context():
    """With request context, the FM signal knows the request's hour, device and pause since the user's last
    event (the homepage request of user 0 at ts 9,000 comes 1,680 s after its 4th event, at 7,320)."""
    tok = EventTokenizer([Facet("item", 6)], 32, None, [Facet("hour", 24), Facet("gap", 32), Facet("device", 3)])
    examples = HeadExamples(np.array([TASKS.index("homepage"), TASKS.index("search")]), np.array([0, 1]),
                            np.array([4, 0]), np.array([-1, -1]), np.array(["", "alien"], dtype=object),
                            np.array([13, 0]), np.zeros(2, dtype=np.int64), np.array([2, 0]), np.array([9_000, 50]),
                            np.array([1, 4]))
    signals = CatalogSignals.fit(DOCS, np.repeat([0, 1], [4, 3]), ITEMS, 6, k=3)
    log = EventLog(OFFSETS, {"item": ITEMS, "ts": TS, "value": np.zeros(7), "device": np.zeros(7, np.int64)})
    batch = heads_batch(examples, log, signals, tok, 8, 64, 64)
    assert batch.has_user.tolist() == [True, False]  # user 1's request comes before any event of theirs
    context = batch.history.context
    assert context["hour"].tolist() == [14] and context["device"].tolist() == [3]  # ids + 1
    assert context["gap"].tolist() == [int(tok.request_context(np.array([9_000]), np.array([7_320]))["gap"][0])]
    assert context["gap"].tolist() == [1 + 1 + 10]  # log2 bucket of 1,680 s (+1), then + 1 for "known"
