"""The harness reproduces the independent reference figures of ../shared/notes/evaluation.md (full ranking,
leave-one-out, EASE at lambda 200) on the bundled MovieLens and, where present, on Amazon Beauty. Minutes, not
seconds: EASE's dense inverse over 9,724 and 12,101 items."""

from __future__ import annotations

import pytest
from conftest import require_beauty

from recfm.data.config import DEMO_DATA, DataConfig
from recfm.data.dataset import Sequences
from recfm.data.pipeline import ensure_prepared
from recfm.platform.evaluation.baselines import EASE, MostPop
from recfm.platform.evaluation.harness import tune_and_test


def _reference_run(cfg: DataConfig, tmp_path):
    cfg.cache_dir = str(tmp_path / "cache")
    seqs = Sequences.load(ensure_prepared(cfg, log=lambda _: None))
    quiet = dict(log=lambda _: None)
    return (tune_and_test(MostPop(), [], seqs, [10, 200], **quiet),
            tune_and_test(EASE(), [{"lam": 200.0}], seqs, [10, 200], **quiet))


def test_reference_figures_on_bundled_movielens(tmp_path):
    """evaluation.md: MostPop 0.0426 / 0.0194, EASE(λ=200) 0.0885 / 0.0400, EASE HR@200 0.5066."""
    pop, ease = _reference_run(DataConfig(source=str(DEMO_DATA), split="loo"), tmp_path)
    assert ease.metrics["users"] == 610
    assert ease.metrics["HR@10"] == pytest.approx(0.0885, abs=0.002)
    assert ease.metrics["NDCG@10"] == pytest.approx(0.0400, abs=0.002)
    assert ease.metrics["HR@200"] == pytest.approx(0.5066, abs=0.005)
    assert pop.metrics["HR@10"] == pytest.approx(0.0426, abs=0.005)


def test_reference_figures_on_amazon_beauty(tmp_path):
    """evaluation.md: EASE(λ=200) HR@10 0.0764 / NDCG@10 0.0418 / HR@200 0.2565. Both ways: figures well above
    the reference would mean leakage (a target in the history, a test item in the fit), not a better EASE."""
    beauty = require_beauty()
    pop, ease = _reference_run(DataConfig(source=str(beauty), format="sequences", split="loo"), tmp_path)
    assert ease.metrics["users"] == 22363
    assert ease.metrics["HR@10"] == pytest.approx(0.0764, abs=0.002)
    assert ease.metrics["NDCG@10"] == pytest.approx(0.0418, abs=0.002)
    assert ease.metrics["HR@200"] == pytest.approx(0.2565, abs=0.005)
    assert pop.metrics["HR@10"] == pytest.approx(0.0141, abs=0.002)
