"""The pipeline's mechanics in one process (no Ray: only stages that need none run here): stage order, what the
prepare stage leaves in the run, a later stage refusing to run before the one it reads from, the summary."""

from __future__ import annotations

import json

import pytest
from paths import CONFIGS

from recfm.platform.config import load_config
from recfm.platform.pipeline import run_pipeline, summary


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from recfm.data.synth import synthesize

    root = tmp_path_factory.mktemp("pipeline")
    synthesize(root / "syn", users=200, items=60, events=3000, seed=2, clusters=4)
    return root


def _cfg(root, run, *overrides):
    return load_config(CONFIGS / "smoke.yaml", [f"data.source={root / 'syn'}", f"data.cache_dir={root / 'cache'}",
                                                f"run_dir={run}", *overrides])


def test_prepare_leaves_the_model_spec_and_the_data_in_the_run(synthetic, tmp_path):
    lines = []
    run = run_pipeline(_cfg(synthetic, tmp_path / "run", "stages=[prepare]"), log=lines.append, verbose=False)
    assert json.loads((run / "model.json").read_text())["tokenizer"]
    assert (run / "item_prob.npy").exists() and (run / "data" / "sequences").is_dir()
    assert not any(p.name.startswith("baselines-") for p in (run / "data").iterdir())
    assert "[1/1] prepare done" in "\n".join(lines) and "[prepare]" in (run / "log.txt").read_text()
    assert not any(line == "[prepare]" for line in lines)  # quiet: one line per stage on the console

    # a later stage alone, before the one it reads from: one clear error, nothing half-written
    with pytest.raises(FileNotFoundError, match="has no best_checkpoint: run the fm stage first"):
        run_pipeline(_cfg(synthetic, run, "stages=[evaluate]"), resume=run, log=lambda _: None)
    assert not (run / "results.json").exists()


def test_stages_run_in_pipeline_order_whatever_order_they_are_named_in(synthetic, tmp_path):
    lines = []
    with pytest.raises(FileNotFoundError, match="run the fm stage first"):  # refit reads fm's checkpoint
        run_pipeline(_cfg(synthetic, tmp_path / "run", "stages=[refit,prepare]"), log=lines.append)
    assert lines.index("[prepare]") < lines.index("[refit]")


def test_the_summary_names_every_model_and_what_to_do_next(tmp_path):
    models = [{"name": "EASE", "metrics": {"NDCG@10": 0.0446, "HR@10": 0.0775}},
              {"name": "recfm-FM", "metrics": {"NDCG@10": 0.0631, "HR@10": 0.1033}}]
    (tmp_path / "results.json").write_text(json.dumps({"models": models}))
    (tmp_path / "heads").mkdir()
    text = summary(tmp_path, load_config(None, ["stages=[prepare,fm,refit,evaluate,heads]"]))
    assert "EASE" in text and "NDCG@10 0.0631  HR@10 0.1033" in text
    assert f"recfm recommend homepage --user 1 --run {tmp_path}" in text and f"recfm distill {tmp_path}" in text
