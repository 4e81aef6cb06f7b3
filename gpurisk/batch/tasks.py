"""The functions that run on Dask workers. They are small and import only the backends."""

from __future__ import annotations

import os
import socket
import time


def make_engine(backend: str):
    """An ``Engine`` for ``backend``; if it is not usable on this worker, the best usable one.

    Returns (engine, fallbacks): a GPU request on a worker without a GPU falls back
    to ``auto`` (CPU, else reference) and counts one fallback.
    """
    from ..backends import BackendUnavailable, Engine

    try:
        return Engine(backend), 0
    except BackendUnavailable:
        if backend not in ("gpu", "auto"):
            raise
        fallback = Engine("auto")
        return fallback, int(backend == "gpu")


def tail_stats_chunk(portfolios, P, spec, backend: str) -> dict:
    """TailStats of one chunk of portfolios over the (scattered) P&L matrix P [I, S].

    Returns {"stats", "backend" (the one that produced it), "fallbacks", "seconds", "worker"}.
    """
    t0 = time.perf_counter()
    engine, fallbacks = make_engine(backend)
    stats = engine.tail_stats(portfolios, P, spec)
    return {
        "stats": stats,
        "backend": engine.used[-1] if engine.used else engine.name,
        "fallbacks": fallbacks + engine.fallbacks,
        "seconds": time.perf_counter() - t0,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def noop(x=None):
    """An empty task (for measuring the per-task overhead)."""
    return x
