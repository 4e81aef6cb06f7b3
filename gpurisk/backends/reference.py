"""The NumPy reference backend: the readable oracle every fast backend is checked against.

It processes portfolios in chunks so that no accounts × scenarios matrix is ever
held whole; within a chunk it forms the dense [chunk, S] P&L block and sorts it.
With ``attribution=True`` the sorted block also gives each portfolio's tail set (the first
entries of its stable order: ties go to the lower scenario index) and ``marginals`` gathers
P at those scenarios per position (``gpurisk.tail``, "Euler attribution").
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..book import Portfolios
from ..pricing import NUMERAIRE_CODES, PricingInputs, contract_values
from .base import TAIL_WEIGHT_RTOL, MeasureSpec, TailStats, counted_pnl, tail_candidates
from ..tail import tail_coefficients

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


def tail_of_block(L: np.ndarray, spec: MeasureSpec, tails: bool = False) -> TailStats:
    """Tail statistics of a dense block L [n, S] of portfolio P&L (the rule of MeasureSpec).

    ``tails``: also the tail sets (``tail_index``, ``tail_loss`` [n, K], ``tail_count`` [n, L]; K =
    ``tail_candidates``' m), the first entries of the stable descending order."""
    n, S = L.shape
    x = -counted_pnl(L, spec)
    order = np.argsort(-x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    levels = spec.levels
    var = np.empty((n, len(levels)))
    es = np.empty((n, len(levels)))
    count = np.empty((n, len(levels)), dtype=np.int64)
    if spec.weight is None:
        ks = spec.tail_counts(S)
        csum = np.cumsum(xs, axis=1)
        for j, k in enumerate(ks):
            var[:, j] = xs[:, k - 1]
            es[:, j] = csum[:, k - 1] / k
            count[:, j] = k
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
            count[:, j] = k + 1
    out = TailStats(worst=xs[:, 0].copy(), worst_scenario=order[:, 0].astype(np.int64), var=var, es=es)
    if tails:
        K = tail_candidates(spec, S)[1]
        if n and count.max() > K:  # cannot happen: any K scenarios weigh at least the largest tail mass
            raise ValueError(f"a tail set of {int(count.max())} scenarios exceeds the candidate bound {K}")
        out.tail_index = order[:, :K].astype(np.int64)
        out.tail_loss = xs[:, :K].copy()
        out.tail_count = count
    return out


def marginals(portfolios: Portfolios, P: np.ndarray, spec: MeasureSpec, stats: TailStats) -> np.ndarray:
    """[nnz, L] Euler marginals: Σ_{s∈T_l} w_s·g_s·P[i_j, s] / Σ_{T_l} w per CSR position j (``gpurisk.tail``);
    a gather of P at each portfolio's K tail scenarios, in chunks (never portfolios × scenarios)."""
    n_lev = len(spec.levels)
    nnz = len(portfolios.quantity)
    out = np.zeros((nnz, n_lev))
    if nnz == 0:
        return out
    coef = tail_coefficients(spec, stats.tail_index, stats.tail_loss, stats.tail_count)  # [P, L, K]
    K = coef.shape[2]
    port = np.repeat(np.arange(len(portfolios)), np.diff(portfolios.indptr))
    idx = np.asarray(portfolios.instrument_idx, dtype=np.int64)
    tail = np.where(stats.tail_index >= 0, stats.tail_index, 0)
    step = max(1, CHUNK_ELEMENTS // max(K * max(n_lev, 1), 1))
    for lo in range(0, nnz, step):
        sl = slice(lo, min(lo + step, nnz))
        G = P[idx[sl][:, None], tail[port[sl]]]  # [n, K]
        out[sl] = np.einsum("jk,jlk->jl", G, coef[port[sl]])
    return out


def tail_stats(portfolios: Portfolios, P: np.ndarray, spec: MeasureSpec, *, attribution: bool = False) -> TailStats:
    """Per-portfolio worst / VaR / ES over P [I, S], chunk by chunk; with ``attribution`` also the tail
    sets and the per-position Euler marginals (``TailStats``)."""
    S = P.shape[1]
    step = max(1, CHUNK_ELEMENTS // max(S, 1))
    parts = []
    for lo in range(0, len(portfolios), step):
        chunk = portfolios.slice(lo, min(lo + step, len(portfolios)))
        st = tail_of_block(portfolio_pnl(chunk, P), spec, tails=attribution)
        if attribution:
            st.marginal = marginals(chunk, P, spec, st)
        parts.append(st)
    if not parts:
        z = np.zeros((0, len(spec.levels)))
        out = TailStats(np.zeros(0), np.zeros(0, np.int64), z, z.copy())
        if attribution:
            K = tail_candidates(spec, S)[1] if S else 1
            out.tail_index = np.zeros((0, K), np.int64)
            out.tail_loss = np.zeros((0, K))
            out.tail_count = np.zeros((0, len(spec.levels)), np.int64)
            out.marginal = np.zeros((0, len(spec.levels)))
        return out
    return TailStats.concat(parts)
