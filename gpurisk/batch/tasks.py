"""The functions that run on Dask workers. They are small and import only the backends."""

from __future__ import annotations

import os
import socket
import time

import numpy as np


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
    check_stats(stats, len(portfolios), P.shape[1], len(spec.levels), engine.name)
    return {
        "stats": stats,
        "backend": engine.used[-1] if engine.used else engine.name,
        "fallbacks": fallbacks + engine.fallbacks,
        "seconds": time.perf_counter() - t0,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


class BadChunkResult(RuntimeError):
    """A backend returned tail statistics that cannot be right (shape or index); the task is retried."""


def check_stats(stats, n: int, n_scenarios: int, n_levels: int, backend: str) -> None:
    """Cheap sanity checks of one chunk's TailStats: shapes and worst_scenario in [0, S).

    (NaN is not checked: a NaN input propagates the same way on every backend.)
    """
    ws = np.asarray(stats.worst_scenario)
    problems = []
    if stats.worst.shape != (n,) or ws.shape != (n,) or stats.var.shape != (n, n_levels) or stats.es.shape != (n, n_levels):
        problems.append("wrong shapes")
    elif n:
        bad = (ws < 0) | (ws >= n_scenarios)
        if bad.any():
            problems.append(f"worst_scenario outside [0, {n_scenarios}) for {int(bad.sum())} portfolio(s)")
    if problems:
        raise BadChunkResult(f"backend {backend} returned bad tail statistics for a chunk of {n} portfolios: "
                             + "; ".join(problems))


def noop(x=None):
    """An empty task (for measuring the per-task overhead)."""
    return x
