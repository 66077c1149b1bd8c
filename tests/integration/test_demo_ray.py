"""The demo path end to end on a real local Ray: FM training on the bundled data's time split, its refit, the
heads trained on Ray and tested per task beside their baselines and served through the CLI, then the student
distilled on Ray, exported (torch.export, ONNX) and scored by a consumer that has no recfm, and the run's
embeddings pushed to the embedded store and read back through the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from paths import DOCS, ROOT

from recfm.data.config import DEMO_DATA
from recfm.heads.context import Request
from recfm.heads.examples import TASKS
from recfm.platform.config import load_config
from recfm.platform.pipeline import run_pipeline
from recfm.platform.trained import TrainedRun
from recfm.ranking.metrics import ndcg_at

TINY = ["stages=[prepare,fm,refit,evaluate,heads,distill,export,push]",  # the demo: every stage
        "model.dim=32", "model.layers=1", "model.max_len=20", "train.epochs=2", "train.val_every=1",
        "train.max_minutes=0", "train.refit_epochs=1", "train.val_users=2000", "eval.ease_max_items=1000",
        "eval.knn_neighbors=[50]", "eval.knn_shrinks=[10.0]", "eval.val_targets=2000", "heads.epochs=1",
        "heads.max_train_per_task=300", "heads.max_test_per_task=300",
        "distill.epochs=1", "eval.new_item_boosts=[0.0]"]  # EASE skipped (for time)


LATEST = 40  # events per user kept from the bundled data: every user, tag and title, a fifth of the events


def _latest_events(source, out, per_user: int):
    """The bundled MovieLens with each user's latest `per_user` ratings (movies and tags whole)."""
    import pandas as pd

    shutil.copytree(source, out)
    ratings = pd.read_csv(out / "ratings.csv.gz")
    ratings = ratings.sort_values(["userId", "timestamp"], kind="stable").groupby("userId").tail(per_user)
    ratings.to_csv(out / "ratings.csv.gz", index=False)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, local_ray):
    """The demo run, on the bundled data cut to each user's latest ratings (for time), with its source data, data
    cache and text-vector cache of its own (the last one test moves and deletes them: the run must serve from its
    directory alone)."""
    root = tmp_path_factory.mktemp("heads")
    source = _latest_events(DEMO_DATA, root / "ml", LATEST)
    content = root / "content"
    if (ROOT / ".cache" / "content").is_dir():  # encoded titles already: reuse them
        shutil.copytree(ROOT / ".cache" / "content", content)
    run_dir = root / "run"
    run_pipeline(load_config(None, [*TINY, f"run_dir={run_dir}", f"store.uri={root / 'store'}",
                                    f"data.source={source}", f"data.cache_dir={root / 'cache'}",
                                    f"content.cache_dir={content}"]), log=lambda _: None)
    return run_dir


def _recfm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recfm", *args], capture_output=True, text=True, timeout=300)


def test_heads_are_tested_per_task_beside_their_baselines(run):
    assert (run / "final_checkpoint" / ".metadata").exists() and (run / "refit_metrics.jsonl").exists()
    # the FM's validation figure is scored with the model from before its refit (which saw validation): with the
    # new-item prior fixed at 0 here (TINY; the rule is tested in tests/unit/evaluation/test_new_item_boost.py),
    # it is the best validation NDCG@10 of training
    fm = next(m for m in json.loads((run / "results.json").read_text())["models"] if m["name"] == "recfm-FM")
    best = max(json.loads(line)["val_ndcg10"] for line in (run / "metrics.jsonl").read_text().splitlines())
    assert fm["val_metric"] == pytest.approx(best, rel=1e-6)
    table = (run / "heads" / "results.md").read_text()
    for task, baseline in zip(TASKS, ("BM25", "ItemKNN", "MostPop"), strict=True):
        assert f"| {task} | recfm heads (unified, FM frozen) |" in table and f"| {task} | {baseline} |" in table
    # each request's rank under every model, with its user's source id: the table recomputes from them
    rows = json.loads((run / "heads" / "results.json").read_text())["rows"]
    with np.load(run / "heads" / "test_ranks.npz") as ranks:
        for row in rows:
            assert ndcg_at(ranks[f"{row['task']}:{row['model']}"], 10).mean() == pytest.approx(row["NDCG@10"])
        assert set(ranks["homepage:user"]) <= set(TrainedRun.open(run).users)


def test_recommendations_from_the_trained_heads(run):
    from recfm.platform.recommend import Recommender

    rec = Recommender(run)
    page = rec.homepage("1", hour=20)
    placed = [it["item_id"] for row in page.rows for it in row["items"]]
    assert page.rows and len(placed) == len(set(placed))
    seqs = rec.run.sequences
    watched = {int(rec.run.catalog.item_ids[i]) for i in seqs.events["item"][seqs.offsets[0]:seqs.offsets[1]]}
    assert not set(placed) & watched  # user "1" is dense user 0: nothing already watched is on the page
    similar = rec.recommend(Request("similars", item="1", hour=3), k=5)
    assert len(similar.items) == 5 and 1 not in [it["item_id"] for it in similar.items]
    assert any("query imputed" in n for n in similar.notes)
    stranger = rec.homepage("no-such-user", hour=3)
    assert stranger.rows and any("anonymous" in n for n in stranger.notes)


def test_recommend_cli_json_and_clear_errors(run, capsys):
    bad = _recfm("recommend", "similars", "--item", "99999999", "--run", str(run))  # the installed command, once
    assert bad.returncode == 2 and "unknown item 99999999" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    code, out, err = _cli(capsys, "recommend", "search", "--query", "pixar animation", "--user", "1", "--run",
                          str(run), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["task"] == "search" and len(payload["items"]) == 10
    for args, message in ((["search", "--query", "  "], "search needs a non-empty query"),
                          (["homepage", "--user", "1", "--hour", "25"], "hour must be 0..23")):
        code, _, err = _cli(capsys, "recommend", *args, "--run", str(run))
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_student_is_tested_beside_its_teacher_and_the_baselines(run):
    from recfm.platform.evaluation.fm_scorer import FoundationScorer
    from recfm.platform.evaluation.harness import evaluate
    from recfm.run.files import BEST_LINK
    from recfm.serving_exports.dense import DenseSequenceModel
    from recfm.serving_exports.student import load_student

    rows = {r["model"]: r for r in json.loads((run / "distill" / "results.json").read_text())["rows"]}
    assert {"student", "teacher (best checkpoint)", "MostPop"} <= set(rows)
    assert any(name.startswith("teacher (final: refitted") for name in rows)
    # each row is that model's full-ranking NDCG@10 on the run's test split, recomputed here from its ranks
    trained = TrainedRun.open(run)
    teacher = DenseSequenceModel.from_foundation(trained.foundation_model(BEST_LINK))
    for name, model in (("student", load_student(run)), ("teacher (best checkpoint)", teacher)):
        scorer = FoundationScorer(model)
        scorer.fit(trained.sequences, "test")
        ranks = evaluate(scorer, trained.sequences, "test", [10])[1]
        assert rows[name]["NDCG@10"] == pytest.approx(ndcg_at(ranks, 10).mean(), rel=1e-6), name
    assert rows["student"]["NDCG@10"] != rows["teacher (best checkpoint)"]["NDCG@10"]  # two models, not one twice
    share = rows["student"]["NDCG@10"] / rows["teacher (best checkpoint)"]["NDCG@10"]
    table = (run / "distill" / "results.md").read_text()
    assert f"The student keeps {share:.1%} of the teacher's test NDCG@10." in table


def test_export_agrees_with_eager_on_a_thousand_histories(run):
    from recfm.platform.trained import TrainedRun
    from recfm.serving_exports.export import _parity_requests, check_parity, read_manifest
    from recfm.serving_exports.serving import ServingModel
    from recfm.serving_exports.student import load_student

    export = run / "export" / "student"
    manifest = read_manifest(export)
    assert manifest["parity"]["requests"] >= 1000 and max(manifest["parity"]["max_abs_diff"].values()) <= 1e-4
    student = load_student(run)
    trained = TrainedRun.open(run)
    users, known = _parity_requests(trained.sequences.offsets, 1000, seed=7)  # not the export's own sample
    names = [i["name"] for i in manifest["inputs"]]
    worst = check_parity(export, ServingModel(student), student.score_items, trained, names, users, known,
                         manifest["max_events"])
    assert max(worst.values()) <= 1e-4, worst


CONSUMER = re.compile(r"<!-- consumer:start -->\s*```python\n(.*?)```\s*<!-- consumer:end -->", re.S)
NO_RECFM = """import importlib.abc, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("recfm", "torch", "torchrec"):
            raise ImportError(f"the consumer must not need {name}")
sys.meta_path.insert(0, _Refuse())
"""


def test_the_documented_consumer_scores_with_onnxruntime_alone(run, tmp_path):
    from recfm.serving_exports.serving import ServingModel
    from recfm.serving_exports.student import load_student

    code = CONSUMER.search((DOCS / "export.md").read_text()).group(1)
    (tmp_path / "sitecustomize.py").write_text(NO_RECFM)  # recfm, torch and torchrec cannot be imported
    env = os.environ | {"PYTHONPATH": str(tmp_path), "RECFM_EXPORT": str(run / "export" / "student")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])

    # the same events through recfm's eager module: the same ten items
    ids = json.loads((run / "export" / "student" / "id_maps.json").read_text())
    index = {item: i for i, item in enumerate(ids["item"])}
    events = printed["events"]
    serving = ServingModel(load_student(run))
    feed = {"item": [[index[e[0]] for e in events]], "ts": [[e[1] for e in events]], "prev_ts": [-1],
            "action": [[ids["vocab"]["action"].index(e[3]) for e in events]], "value": [[e[2] for e in events]],
            "lengths": [len(events)]}
    tensors = [torch.tensor(feed[n], dtype=torch.float32 if n == "value" else torch.int64) for n in serving.names]
    with torch.no_grad():
        scores = serving(*tensors)[0][0].numpy()
    scores[[index[e[0]] for e in events]] = -np.inf
    assert printed["top10"] == [ids["item"][i] for i in np.argsort(-scores, kind="stable")[:10]]


def test_bad_exports_fail_with_a_clear_message(run, tmp_path, capsys):
    code, _, err = _cli(capsys, "export", str(tmp_path / "no-such-run"))
    assert code == 2 and "no training run" in err and "Traceback" not in err

    copy = tmp_path / "copy"
    shutil.copytree(run, copy, symlinks=True, ignore=shutil.ignore_patterns("export"))
    (copy / "distill" / "student.pt").write_bytes(b"not a checkpoint")
    code, _, err = _cli(capsys, "export", str(copy))
    assert code == 2 and "is not a readable student checkpoint" in err, err

    from recfm.serving_exports.export import ExportError, read_manifest

    export = tmp_path / "export"
    shutil.copytree(run / "export" / "student", export)
    manifest = json.loads((export / "manifest.json").read_text())
    (export / "manifest.json").write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(ExportError, match="format_version 99"):
        read_manifest(export)


def test_the_demo_pushes_one_models_user_and_item_vectors(run):
    from recfm.platform.trained import TrainedRun
    from recfm.serving_exports.backends import open_store
    from recfm.serving_exports.embeddings import RunEmbeddings

    trained = TrainedRun.open(run)
    seqs = trained.sequences
    with open_store(str(run.parent / "store")) as store:
        snap = store.snapshot()
        assert snap.info.name == f"run-teacher-{snap.info.meta['weights_sha256'][:8]}"
        assert snap.info.meta["model"] == "teacher"
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(seqs.info.test_cutoff)))
        assert snap.info.meta["run_id"] == "run" and snap.info.meta["data_cutoff"].startswith(cutoff)
        assert snap.count("user") == int((seqs.n_fit > 0).sum()) and snap.count("item") == seqs.n_items
        # a consumer's dot product of the stored vectors is the FM's own next-item ranking at the cutoff
        user = "1"
        u = trained.users[user]
        stored = snap.get("user", [user]).vectors[0]
        items = snap.get("item", [str(i) for i in trained.catalog.item_ids]).vectors
        fm = RunEmbeddings.load(run, "teacher")
        np.testing.assert_allclose(stored, fm.user_vectors(np.array([u]))[0], atol=1e-5)
        np.testing.assert_allclose(items, fm.model.item_table().detach().numpy(), atol=0)
        top = snap.nearest("item", stored, 10)
        exact = np.argsort(-(items @ stored), kind="stable")[:10]
        assert top.ids == [str(trained.catalog.item_ids[i]) for i in exact]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """`recfm ARGS` in this process (the same entry point as the command, without a new interpreter)."""
    from recfm.platform.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_embeddings_cli_reads_resumes_and_rolls_back(run, capsys):
    store = ["--store", str(run.parent / "store")]
    code, out, err = _cli(capsys, "embeddings", "similar", "--item", "1", "-k", "5", "--json", *store)
    assert code == 0, err
    payload = json.loads(out)
    teacher = payload["version"]
    assert teacher.startswith("run-teacher-") and len(payload["items"]) == 5
    assert all(it["title"] for it in payload["items"]) and "1" not in [it["id"] for it in payload["items"]]
    code, out, _ = _cli(capsys, "embeddings", "similar", "--item", "1", *store)
    assert code == 0 and "Toy Story (1995)" in out and out.count("\n") == 11

    code, out, _ = _cli(capsys, "embeddings", "get", "--kind", "user", "--ids", "1,nobody", "--json", *store)
    assert code == 0 and json.loads(out)["missing"] == ["nobody"] and len(json.loads(out)["vectors"]["1"]) == 32

    code, out, err = _cli(capsys, "push-embeddings", str(run), *store)  # the same version again: nothing new
    assert code == 0 and "already published" in out, err
    code, out, err = _cli(capsys, "push-embeddings", str(run), "--model", "student", "--no-progress", *store)
    assert code == 0, err
    versions = json.loads(_cli(capsys, "embeddings", "versions", "--json", *store)[1])
    assert [(v["name"][:11], v["current"]) for v in versions] == [("run-teacher", False), ("run-student", True)]
    assert versions[1]["dim"] == 32 and versions[1]["meta"]["model"] == "student"
    code, out, _ = _cli(capsys, "embeddings", "rollback", *store)
    assert code == 0 and f"'{teacher}' is current again" in out
    assert json.loads(_cli(capsys, "embeddings", "similar", "--item", "1", "--json", *store)[1])["version"] == teacher

    for args, message in ((["similar", "--item", "no-such-item"], "has no item 'no-such-item'"),
                          (["get", "--kind", "user", "--ids", "x,y"], "has none of these user ids"),
                          (["versions", "--collection", "Bad;Name"], "collection name"),
                          (["similar", "--item", "1", "--version", "no-such"], "no version 'no-such'")):
        code, _, err = _cli(capsys, "embeddings", *args, *store)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "embeddings", "versions", "--store", str(run.parent / "no-store"))
    assert code == 2 and "no embedding store" in err


def test_titles_added_after_training_are_pushed_through_the_content_path(run, tmp_path, capsys):
    from recfm.data.content import ContentCache, item_texts
    from recfm.platform.trained import TrainedRun
    from recfm.serving_exports.backends import open_store

    new = tmp_path / "new_movies.csv"
    new.write_text("movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
                   "900001,Toy Story 7 (2031),Adventure|Animation|Children\n900002,The Quiet Heist (2031),Crime\n")
    store = ["--store", str(tmp_path / "store")]
    code, out, err = _cli(capsys, "push-embeddings", str(run), "--new-items", str(new), "--no-progress", *store)
    assert code == 0, err
    assert "2 new titles" in out and "1 already in the catalog" in out
    trained = TrainedRun.open(run)
    fm = trained.foundation_model()
    texts = item_texts(["Toy Story 7", "The Quiet Heist"], np.array([2031, 2031]),
                       [["Adventure", "Animation", "Children"], ["Crime"]], [[], []])
    vectors, _ = ContentCache(trained.cfg.content.cache_dir).encode(texts, progress=False, log=lambda _: None)
    with torch.no_grad():
        expected = fm.items_from_content(torch.from_numpy(vectors)).numpy()
    with open_store(str(tmp_path / "store")) as s:
        snap = s.snapshot()
        assert snap.count("item") == trained.sequences.n_items + 2  # "1" keeps its trained vector, once
        np.testing.assert_allclose(snap.get("item", ["900001", "900002"]).vectors, expected, atol=1e-5)
    # a run whose model has no content path says so, in one line
    bad = tmp_path / "bad.csv"
    bad.write_text("movieId,title,genres\nabc,No Id,Drama\n")
    code, _, err = _cli(capsys, "push-embeddings", str(run), "--new-items", str(bad), *store)
    assert code == 2 and "bad.csv" in err and "movieId" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "push-embeddings", str(run), "--model", "student", "--new-items", str(new), *store)
    assert code == 2 and "content path" in err, err


def test_the_run_serves_without_its_data_cache_or_its_source(run, tmp_path, capsys):
    """A run is self-contained: with the data cache and the text-vector cache deleted and the source data moved
    away, it still recommends, exports and pushes, from its own directory (data/, the checkpoints, the heads)."""
    assert (run / "data" / "sequences").is_dir() and (run / "data" / "items.parquet").exists()
    root = run.parent
    shutil.rmtree(root / "cache")
    shutil.rmtree(root / "content", ignore_errors=True)
    (root / "ml").rename(tmp_path / "moved")
    code, out, err = _cli(capsys, "recommend", "homepage", "--user", "1", "--run", str(run), "--json")
    assert code == 0, err
    assert json.loads(out)["rows"]
    code, _, err = _cli(capsys, "export", str(run), "--out", str(tmp_path / "export"))
    assert code == 0 and (tmp_path / "export" / "manifest.json").exists(), err
    code, out, err = _cli(capsys, "push-embeddings", str(run), "--store", str(tmp_path / "store"), "--no-progress")
    assert code == 0, err
    from recfm.serving_exports.backends import open_store

    with open_store(str(tmp_path / "store")) as store, open_store(str(root / "store")) as pushed_by_the_demo:
        for kind in ("user", "item"):  # the same vectors as the demo's own push stage, with its caches in place
            assert store.snapshot().count(kind) == pushed_by_the_demo.snapshot().count(kind) > 0
    assert not (root / "cache").exists() and not (root / "ml").exists()  # nothing was rebuilt behind its back
