"""The NumPy reference backend: the readable oracle every fast backend is checked against.

It processes portfolios in chunks so that no accounts × scenarios matrix is ever
held whole; within a chunk it forms the dense [chunk, S] P&L block and sorts it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..book import Portfolios
from ..pricing import NUMERAIRE_CODES, PricingInputs, contract_values
from .base import TAIL_WEIGHT_RTOL, MeasureSpec, TailStats, counted_pnl

name = "reference"

#: bound on the dense block per chunk, in float64 elements
CHUNK_ELEMENTS = 8_000_000


def available():
    return True, "NumPy is always available"


def revalue_values(pi: PricingInputs, scenarios, numeraire: str = "usd"):
    """(base [I], scenario value [I, S]) per contract; see pricing.contract_values."""
    shock = scenarios.price_shock.T[pi.underlying_idx]  # [I, S]
    vshock = scenarios.vol_shock.T[pi.underlying_idx]
    return contract_values(
        np,
        pi,
        shock,
        vshock,
        np.asarray(scenarios.vol_mode),
        scenarios.horizon_years,
        scenarios.term,
        NUMERAIRE_CODES[numeraire],
    )


def revalue(pi: PricingInputs, scenarios, numeraire: str = "usd") -> np.ndarray:
    """P [I, S] float64: P&L per contract of every instrument under every scenario."""
    out = np.empty((len(pi), scenarios.n_scenarios))
    step = max(1, CHUNK_ELEMENTS // max(scenarios.n_scenarios, 1))
    for lo in range(0, len(pi), step):
        part = pi.take(slice(lo, lo + step))
        base, scen = revalue_values(part, scenarios, numeraire)
        out[lo : lo + step] = scen - base[:, None]
    return out


def portfolio_pnl(portfolios: Portfolios, P: np.ndarray) -> np.ndarray:
    """Dense [P, S] scenario P&L of the given (small) set of portfolios."""
    A = sp.csr_matrix(
        (portfolios.quantity, portfolios.instrument_idx, portfolios.indptr), shape=(len(portfolios), P.shape[0])
    )
    return np.asarray(A @ P)


def tail_of_block(L: np.ndarray, spec: MeasureSpec) -> TailStats:
    """Tail statistics of a dense block L [n, S] of portfolio P&L (the rule of MeasureSpec)."""
    n, S = L.shape
    x = -counted_pnl(L, spec)
    order = np.argsort(-x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    levels = spec.levels
    var = np.empty((n, len(levels)))
    es = np.empty((n, len(levels)))
    if spec.weight is None:
        ks = spec.tail_counts(S)
        csum = np.cumsum(xs, axis=1)
        for j, k in enumerate(ks):
            var[:, j] = xs[:, k - 1]
            es[:, j] = csum[:, k - 1] / k
    else:
        w = np.asarray(spec.weight, dtype=np.float64)
        ws = w[order]
        cw = np.cumsum(ws, axis=1)
        cwx = np.cumsum(ws * xs, axis=1)
        total = w.sum()
        for j, q in enumerate(levels):
            target = (1.0 - q) * total * (1.0 - TAIL_WEIGHT_RTOL)
            k = np.argmax(cw >= target, axis=1)  # first index reaching the tail mass
            rows = np.arange(n)
            var[:, j] = xs[rows, k]
            es[:, j] = cwx[rows, k] / cw[rows, k]
    return TailStats(worst=xs[:, 0].copy(), worst_scenario=order[:, 0].astype(np.int64), var=var, es=es)


def tail_stats(portfolios: Portfolios, P: np.ndarray, spec: MeasureSpec) -> TailStats:
    """Per-portfolio worst / VaR / ES over P [I, S], chunk by chunk."""
    S = P.shape[1]
    step = max(1, CHUNK_ELEMENTS // max(S, 1))
    parts = []
    for lo in range(0, len(portfolios), step):
        chunk = portfolios.slice(lo, min(lo + step, len(portfolios)))
        parts.append(tail_of_block(portfolio_pnl(chunk, P), spec))
    if not parts:
        z = np.zeros((0, len(spec.levels)))
        return TailStats(np.zeros(0), np.zeros(0, np.int64), z, z.copy())
    return TailStats.concat(parts)
