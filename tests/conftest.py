"""Shared fixtures: tiny MovieLens folders written on the fly, and the shared data folder when present."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pytest
from paths import BEAUTY

MOVIES = "movieId,title,genres\n1,Toy Story (1995),Animation|Children\n2,Heat (1995),Action\n3,Up (2009),Animation\n"
RATINGS = ("userId,movieId,rating,timestamp\n"
           "1,1,4.0,964982703\n1,2,3.0,964982704\n1,3,5.0,964982705\n"
           "2,2,2.0,964982800\n2,3,4.5,964982801\n2,1,1.0,964982802\n")
TAGS = "userId,movieId,tag,timestamp\n1,1,pixar,964982710\n2,3,balloons,964982810\n"


def write_movielens(root: Path, ratings: str | bytes = RATINGS, movies: str | bytes | None = MOVIES,
                    tags: str | bytes | None = TAGS, gz: bool = False) -> Path:
    """A MovieLens-layout folder with the given file contents (None leaves a file out)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in (("ratings", ratings), ("movies", movies), ("tags", tags)):
        if content is None:
            continue
        data = content.encode() if isinstance(content, str) else content
        if gz:
            (root / f"{name}.csv.gz").write_bytes(gzip.compress(data))
        else:
            (root / f"{name}.csv").write_bytes(data)
    return root


@pytest.fixture
def movielens_dir(tmp_path: Path):
    def make(**kwargs) -> Path:
        return write_movielens(tmp_path / "ml", **kwargs)

    return make


def require_beauty() -> Path:
    if not BEAUTY.exists():
        pytest.skip(f"Amazon Beauty is not at {BEAUTY} (it is read from ../shared/data, never bundled)")
    return BEAUTY


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module that trains on it: a start costs ~10 s on 2 cores, and `train` leaves a Ray
    it did not start running. Per module, not per session: a Ray left running beside the job-submission test's
    own head kept that head's job agent from starting ("No available agent")."""
    import ray

    from recfm.platform.config import TrainConfig
    from recfm.platform.runtime import start_ray

    start_ray(TrainConfig(workers=2), None)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def unit_tests_start_no_ray(request):
    """Unit tests run in one process with no Ray and no servers (`make test-fast`): this keeps them so."""
    yield
    if "unit" in request.node.path.relative_to(Path(__file__).parent).parts[:1]:
        ray = sys.modules.get("ray")
        assert ray is None or not ray.is_initialized(), "a unit test started Ray: it belongs in tests/integration/"
