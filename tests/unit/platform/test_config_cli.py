"""Configs (defaults <- YAML <- overrides, validated) and the CLI's eval path end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from paths import CONFIGS

from recfm.data.config import DEMO_DATA
from recfm.platform.config import ConfigError, load_config, to_yaml


def test_defaults_are_the_bundled_demo():
    cfg = load_config()
    assert cfg.data.source == str(DEMO_DATA) and cfg.data.format == "movielens"
    assert (DEMO_DATA / "ratings.csv.gz").exists() and (DEMO_DATA / "README.txt").exists()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\neval:\n  ks: [10, 20]\n  batch_size: 64\n")
    cfg = load_config(path, ["eval.batch_size=128", "data.split=time"])
    assert (cfg.name, cfg.eval.ks, cfg.eval.batch_size, cfg.data.split) == ("x", [10, 20], 128, "time")
    assert "batch_size: 128" in to_yaml(cfg)


def test_a_config_builds_on_the_recipe_its_base_key_names(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: recipe\nmodel:\n  dropout: 0.5\n  dim: 32\ntrain:\n  lr: 0.002\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "one.yaml").write_text("base: ../recipe.yaml\nname: one\nmodel:\n  dim: 48\n")
    cfg = load_config(tmp_path / "data" / "one.yaml", ["train.lr=0.003"])
    # the recipe's settings, the file's own over them, the overrides over both
    assert (cfg.name, cfg.model.dropout, cfg.model.dim, cfg.train.lr) == ("one", 0.5, 48, 0.003)
    (tmp_path / "recipe.yaml").write_text("base: data/one.yaml\n")
    with pytest.raises(ConfigError, match="comes back to itself"):
        load_config(tmp_path / "data" / "one.yaml")


def test_the_beauty_config_is_the_sequence_recipe_plus_its_data():

    configs = CONFIGS
    recipe = load_config(configs / "sequences.yaml", ["data.source=" + str(configs)])
    beauty_text = (configs / "beauty.yaml").read_text()
    assert "base: sequences.yaml" in beauty_text
    beauty = load_config(configs / "beauty.yaml", ["data.source=" + str(configs)])
    for section in ("model", "objective", "train"):
        assert getattr(beauty, section) == getattr(recipe, section), section


@pytest.mark.parametrize("overrides, message", [
    (["eval.batch_size=many"], "eval.batch_size"),
    (["data.split=random"], "data.split must be one of loo, time"),
    (["eval.nonsense=1"], "eval.nonsense"),
    (["eval.ks=[20]"], "eval.ks must include 10"),
    (["data.source=/no/such/place"], "does not exist"),
    (["batch_size"], "key=value"),
])
def test_bad_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as caught:
        load_config(None, overrides)
    assert "\n" not in str(caught.value)


def _recfm(*args, cwd):
    return subprocess.run([sys.executable, "-m", "recfm", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_synth_prepare_and_eval_write_the_results_table(tmp_path):
    assert _recfm("data", "synth", "--users", "300", "--items", "80", "--events", "6000", "--out", "syn",
                  cwd=tmp_path).returncode == 0
    run = _recfm("eval", "data.source=unused", cwd=tmp_path)  # a bad source is refused before any work
    assert run.returncode == 2 and "data.source" in run.stderr
    prep = _recfm("data", "prepare", "syn", "--out", "prep", cwd=tmp_path)
    assert prep.returncode == 0 and "300 test users" in prep.stdout
    run = _recfm("eval", "--data", "prep", "run_dir=run", "eval.ease_lambdas=[10,100]", "eval.knn_neighbors=[10]",
                 "eval.knn_shrinks=[0]", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "ease_lambdas" not in run.stdout  # the resolved config is saved in the run, not printed
    table = (tmp_path / "run" / "results.md").read_text()
    for name in ("MostPop", "ItemKNN", "EASE"):
        assert f"| {name} |" in table
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["MostPop", "ItemKNN", "EASE"]
    assert results["models"][2]["params"]["lambda"] in (10.0, 100.0)
    assert (tmp_path / "run" / "config.yaml").exists()


def test_cli_without_command_prints_help():
    result = subprocess.run([sys.executable, "-m", "recfm"], capture_output=True, text=True)
    assert result.returncode == 2 and "data" in result.stdout and "eval" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "configs/nonexistent.yaml"], "configs/nonexistent.yaml"),
    (["train", "configs/smoke.yaml", "train.epochs=abc"], "train.epochs"),
    (["train", "configs/smoke.yaml", "bogus.key=1"], "bogus"),
    (["demo", "stages=[prepare,fly]"], "stages: 'fly'"),
    (["tune", "configs/smoke.yaml"], "tune.space is empty"),
])
def test_argument_and_config_errors_answer_before_torch_or_ray_load(args, message):
    """A mistyped command fails in one line, in well under a second, before the heavy imports."""
    code = ("import sys\nfrom recfm.platform.cli import main\ncode = main(sys.argv[1:])\n"
            "print('heavy:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'pandas', 'pyarrow'}))\n"
            "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          cwd=CONFIGS.parent)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "heavy: []" in done.stdout


def test_a_finished_runs_config_loads_after_its_source_moved(tmp_path):
    """A run serves from its own copy of the data: reading its config must not need the source any more."""
    saved = tmp_path / "config.yaml"
    text = to_yaml(load_config(None, [f"data.source={CONFIGS}"]))
    saved.write_text(text.replace(str(CONFIGS), str(tmp_path / "gone")))
    with pytest.raises(ConfigError, match="data.source: .*gone does not exist"):
        load_config(saved)
    assert load_config(saved, source_needed=False).data.source == str(tmp_path / "gone")
