"""docs/configuration.md is generated from the config dataclasses' field docstrings and kept current."""

from __future__ import annotations

import subprocess
import sys

from paths import DOCS

from recfm.fm.config import ModelConfig
from recfm.platform.config_reference import field_docs, reference, undocumented


def test_the_reference_in_docs_is_the_generated_one():
    assert (DOCS / "configuration.md").read_text() == reference(), (
        "docs/configuration.md is stale: regenerate it with `make docs`")


def test_every_key_is_documented_and_each_row_is_its_field():
    assert undocumented() == []
    text = reference()
    assert field_docs(ModelConfig)["dim"].startswith("transformer width")
    assert "| `model.dim` | `64` | transformer width" in text
    assert "| `eval.ks` | `[10, 50, 200]` |" in text and "| `data.source` | `recfm/demo_data/ml-latest-small` |" in text
    assert "| `tune.start_with_base` | `true` |" in text


def test_the_command_prints_it_without_importing_torch():
    code = ("import sys\nfrom recfm.platform.cli import main\nmain(['config', '--reference'])\n"
            "print('heavy:', 'torch' in sys.modules or 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# Configuration") and out.stdout.rstrip().endswith("heavy: False")
