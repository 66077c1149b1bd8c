"""Process-level settings every recfm process applies once at start."""

from __future__ import annotations

import ctypes
import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from recfm.platform.config import TrainConfig

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


# Ray Train's defaults for a small cluster: no print patching (recfm's workers log themselves), room for slow
# starts and long collectives on 2-core machines, quick health checks (a killed worker is noticed at once)
RAY_ENV = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_COLLECTIVE_TIMEOUT_S": "900",
    "RAY_DEDUP_LOGS": "0",
}


def start_ray(t: TrainConfig, address: str | None, concurrent_trials: int = 0) -> None:
    """Joins the cluster at `address` (or the job's, under `ray job submit`), or starts a local Ray with the CPUs
    of `t`'s workers (a TrainConfig) and one more for Ray Data; for a search, that for each of
    `concurrent_trials` trials, each with its own 1-CPU driver."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    # "Token authentication is enabled" on every start: a local Ray's token is its own, nothing to act on
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Inside a Ray job (`ray job submit -- recfm train …`) RAY_ADDRESS names the job's cluster: join it.
    address = address or os.environ.get("RAY_ADDRESS")
    local = address in (None, "local")
    if not ray.is_initialized():
        workers = math.ceil(t.workers * t.cpus_per_worker)
        cpus = concurrent_trials * (workers + 1) + 1 if concurrent_trials else workers + 1
        ray.init(address="local" if local else address, include_dashboard=False, log_to_driver=False,
                 num_cpus=cpus if local else None, logging_level="WARNING", configure_logging=True)
