"""The functions that run on Dask workers: revalue a P&L matrix, reduce a chunk of portfolios over it.

Both run the backend the client resolved (``TaskBackend``) on the worker's own hardware. A
``TaskBackend`` asked for as ``auto`` may fall back on a worker whose GPU is not usable (counted);
an explicit one that cannot run there is a one-line ``BackendUnavailable``.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from . import pnl


@dataclass(frozen=True)
class TaskBackend:
    """The backend every task of a run uses: ``name`` (reference | cpu | gpu), what the user asked
    (``requested``: auto may fall back on a worker), and whether P is mapped read-only."""

    name: str
    requested: str

    @property
    def read_only(self) -> bool:
        """The GPU backend caches a device copy only of a read-only host P."""
        return self.name == "gpu"


def make_engine(backend: TaskBackend):
    """(Engine, fallbacks): the run's backend on this worker; for ``auto``, the best usable one
    when it cannot run here (one fallback counted)."""
    from ..backends import BackendUnavailable, Engine

    try:
        return Engine(backend.name), 0
    except BackendUnavailable:
        if backend.requested != "auto":
            raise
        return Engine("auto"), 1


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def revalue_pnl(pricing, scenarios, numeraire: str, backend: TaskBackend, target: pnl.Target) -> dict:
    """P [I, S] of one leg's pricing inputs under its scenarios, stored as ``target`` says.

    Returns {"pnl" (ndarray or ``pnl.PnLFile``), "backend", "fallbacks", "blocks", "seconds", "worker"}.
    """
    t0 = time.perf_counter()
    engine, fallbacks = make_engine(backend)
    P, blocks = pnl.revalue_to(engine, pricing, scenarios, numeraire, target)
    return {"pnl": P, "backend": engine.used[-1] if engine.used else engine.name,
            "fallbacks": fallbacks + engine.fallbacks, "blocks": blocks, "seconds": time.perf_counter() - t0,
            "worker": _worker(), "where": target.where or "memory"}


def tail_stats_chunk(portfolios, revalued: dict, spec, backend: TaskBackend, attribution: bool = False) -> dict:
    """TailStats of one chunk of portfolios over the P a ``revalue_pnl`` task returned (with the tail sets and
    Euler marginals when ``attribution``).

    Returns {"stats", "backend" (the one that produced it), "fallbacks", "seconds", "worker",
    "revalue" (the revaluation's own figures, without P)}.
    """
    t0 = time.perf_counter()
    P = pnl.open_pnl(revalued["pnl"], backend.read_only)
    engine, fallbacks = make_engine(backend)
    stats = engine.tail_stats(portfolios, P, spec, attribution=True) if attribution else engine.tail_stats(
        portfolios, P, spec)
    check_stats(stats, len(portfolios), P.shape[1], len(spec.levels), engine.name)
    return {
        "stats": stats,
        "backend": engine.used[-1] if engine.used else engine.name,
        "fallbacks": fallbacks + engine.fallbacks,
        "seconds": time.perf_counter() - t0,
        "worker": _worker(),
        "revalue": {k: v for k, v in revalued.items() if k != "pnl"},
    }


def forget_pnl(prefix: str = "") -> int:
    """Drop the P maps this worker keeps between tasks (run on every worker when a run ends)."""
    return pnl.forget(prefix)


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
