"""Unit tests run in one process with no Ray and no servers (`make test-fast`); this keeps them so."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def no_ray():
    yield
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "a unit test started Ray: it belongs in tests/integration/"
