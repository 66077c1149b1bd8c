"""ray_cluster.yaml is a real cluster-launcher config: Ray's own schema accepts it, and it installs recfm."""

from __future__ import annotations

import copy

import pytest
import yaml
from paths import ROOT
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = ROOT / "ray_cluster.yaml"


def _load() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_ray_accepts_the_cluster_config():
    raw = _load()
    validate_config(prepare_config(copy.deepcopy(raw)))
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"].get("GPU", 0) == 0  # a CPU head
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())  # and GPU workers
    assert any("make install" in c for c in raw["setup_commands"])  # installed as the README does
    assert (CONFIG.parent / raw["file_mounts"]["~/recfm"] / "configs").is_dir()


def test_the_schema_check_is_live():
    raw = _load()
    raw["available_node_types"]["worker_gpu"]["not_a_ray_key"] = 1
    with pytest.raises(Exception, match="not_a_ray_key"):
        validate_config(prepare_config(raw))
