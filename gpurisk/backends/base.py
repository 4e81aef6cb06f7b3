"""What every backend shares: input checks and errors (the tail vocabulary lives in ``gpurisk.tail``).

A backend module exposes ``name``, ``available() -> (bool, reason)``,
``revalue(pi, scenarios, numeraire) -> P [I, S]`` and
``tail_stats(portfolios, P, spec) -> TailStats``.
"""

from __future__ import annotations

import numpy as np

from ..errors import GpuriskError
from ..tail import TAIL_WEIGHT_RTOL, MeasureSpec, TailStats, counted_pnl, tail_candidates  # noqa: F401 (shared vocabulary)


def check_portfolios(portfolios, n_instruments: int) -> None:
    """ValueError unless the CSR is well formed and every index is a row of P [n_instruments, S].

    Compiled kernels do not bounds-check, so the fast backends call this first.
    """
    indptr = np.asarray(portfolios.indptr)
    idx = np.asarray(portfolios.instrument_idx)
    nnz = len(idx)
    if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise ValueError(f"portfolio CSR is malformed: indptr must rise from 0 to nnz={nnz}")
    if len(portfolios.quantity) != nnz:
        raise ValueError(f"portfolio CSR has {len(portfolios.quantity)} quantities for {nnz} positions")
    if nnz and (idx.min() < 0 or idx.max() >= n_instruments):
        raise ValueError(f"portfolio instrument index out of range for P with {n_instruments} rows")


def check_underlyings(underlying_idx, n_underlyings: int) -> None:
    """ValueError unless every instrument's scenario column exists."""
    u = np.asarray(underlying_idx)
    if len(u) and (u.min() < 0 or u.max() >= n_underlyings):
        raise ValueError(f"pricing inputs reference scenario column {int(u.max())} but the set has {n_underlyings}")


class BackendUnavailable(GpuriskError, RuntimeError):
    """The named backend cannot run here; the message (one line) says why."""


class NonFinitePnL(GpuriskError):
    """Revaluation produced NaN or ±inf: an input the validator let through, or a bad scenario."""
