"""Process-level settings every recfm process applies once at start."""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def configure_process(threads: int = 0, steady_heap: bool = False) -> None:
    """Threads for torch, glibc malloc tuned for training workers, and third-party warnings silenced.

    `steady_heap` (single-threaded training workers): glibc serves large allocations with mmap and returns them
    on free, so every step's fresh activation buffers page-fault again; keeping them in the heap made embedding
    lookups ~10x faster on this machine. Only there: a driver ranking 200,000 users in many threads, with
    buffers of changing sizes, grew to 23 GB with it (every thread's arena kept what it freed).
    """
    if threads:
        torch.set_num_threads(threads)
    if steady_heap:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(1 << 30))
            libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(1 << 30))
        except OSError:  # not glibc (macOS, musl): nothing to tune
            pass
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")
    warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
    warnings.filterwarnings("ignore", message=".*Sparse invariant checks.*")
    for name in ("torchrec", "torch.fx._symbolic_trace", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


@contextmanager
def shutdown_ray_if_started() -> Iterator[None]:
    """Shuts Ray down afterwards if it was not running before: a Ray the caller started (a notebook's, a test
    session's) is left running for its next job."""
    import ray

    running = ray.is_initialized()
    try:
        yield
    finally:
        if not running:
            ray.shutdown()
