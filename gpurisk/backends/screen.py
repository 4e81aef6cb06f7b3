"""The exact low-precision screen shared by the CPU and GPU tail kernels.

Each row i of P [I, S] is quantised once to int16, ``Q_is = rint(P_is / σ_i)`` with
``σ_i = M_i / 32767`` and ``M_i = max_s |P_is|``, so ``|P_is − σ_i·Q_is| ≤ e_i = ROW_EPS·M_i``.
A portfolio's *screened* counted losses ``y_s`` are then formed in float32 from the int16 rows
(2 bytes per position-scenario instead of 8), with coefficients ``c_j = fl32(q_j·σ_{i_j})``.
``screen_bound`` gives, per portfolio, a bound b with ``|y_s − x_s| ≤ b`` for every scenario,
where ``x_s`` is the float64 counted loss the reference computes. Hence (docs/benchmarks.md):

* the m-th largest true loss is at least ``y_(m) − b`` (the m scenarios with the largest y all
  have x ≥ y_(m) − b), so every scenario of the true top m has ``y_s ≥ y_(m) − 2b``;
* a scenario with ``y_s < θ`` has ``x_s < θ + b``.

The kernels keep every scenario whose screened loss passes such a threshold, recompute those
exactly in float64 from P (the same products and sums as the reference, so the same numbers), and
select among them: the result is exact, the screen only decides which losses are computed twice.

Bound (n positions, F = max_s |pnl_factor_s| · max(1, |profit_factor|), B = Σ_j |q_j|·(M_j + e_j),
G = max(F, 1) · max(1, |profit_factor|)):

    b = (1 + 2⁻²⁰) · [ F·Σ_j |q_j|·e_j  +  F·B·(n + 6)·2⁻²³  +  G·(n + 1)·2⁻¹³⁴ ]

The first term is the quantisation; the second covers float32 rounding of the coefficients, the
n products and sums and the loss transform (each ≤ 2⁻²⁴ relative, about (n + 5)·2⁻²⁴ in all,
doubled) and the float64 rounding of the exact loss; the third covers float32 underflow
(≤ 2⁻¹⁵⁰ per operation, 2⁻¹³⁵ for a coefficient times |Q| < 2¹⁵). A portfolio is screened only
while ``F·B ≤ SCREEN_MAX`` (no float32 overflow), n ≤ MAX_POSITIONS (so n·2⁻²⁴ ≤ 1/16 and the
doubling covers γ_n = n·u/(1 − n·u)) and every number is finite; otherwise it is computed directly.
"""

from __future__ import annotations

import numpy as np

#: largest quantised magnitude
QMAX = 32767
#: rows whose largest |P| is below this (and above 0) are not quantised: Q = 0, e = M
TINY_ROW = 2.0**-1000
#: e_i / M_i for a quantised row: σ·(½ + 2⁻³⁷)/M ≤ 2⁻¹⁶·(65536/65534)·(1 + 2⁻³⁵) < ROW_EPS
ROW_EPS = 2.0**-16 * 1.0001
#: float32 arithmetic of the screen, per (position + 6), relative to B
ARITH_EPS = 2.0**-23
#: float32 underflow of the screen, per (position + 1)
ABS_EPS = 2.0**-134
#: a portfolio is screened only while F·B stays below this (float32 holds up to 2¹²⁸)
SCREEN_MAX = 2.0**100
#: ... and while it has at most this many positions
MAX_POSITIONS = 2**20
#: slack for the rounding of the bound's own float64 evaluation
BOUND_SLACK = 1.0 + 2.0**-20


def row_error(M, xp=np):
    """e [I]: the bound on |P_is − σ_i·Q_is| of each quantised row, from its largest magnitude M [I] (NaN stays NaN)."""
    return xp.where(M < TINY_ROW, M, M * ROW_EPS)


def transform_factors(spec) -> tuple[float, float]:
    """(F, G): F = max_s |pnl_factor_s| · max(1, |pf|), the Lipschitz constant of the loss transform,
    and G = max(F, 1) · max(1, |pf|), the factor on the screen's underflow term (pf = profit_factor).
    Both NaN (no screening) unless every factor is 0 or within [2⁻¹⁰⁰, 2¹⁰⁰], so that float32 holds it
    with a relative rounding."""
    f = np.ones(1) if spec.pnl_factor is None else np.abs(np.asarray(spec.pnl_factor, dtype=np.float64))
    pf = abs(float(spec.profit_factor))
    F = float(f.max(initial=0.0)) * max(1.0, pf)
    G = max(F, 1.0) * max(1.0, pf)
    # float32 must hold the factors with a relative rounding: 0 or within [2⁻¹⁰⁰, 2¹⁰⁰]
    for v in (f, np.array([pf])):
        nz = v[v != 0.0]
        if not (np.all(np.isfinite(v)) and np.all(nz >= 1.0 / SCREEN_MAX) and np.all(nz <= SCREEN_MAX)):
            return np.nan, np.nan
    return F, G


def screen_bound(xp, indptr, idx, qty, M, err, spec):
    """(b [P] float64, ok [P] bool): the per-portfolio screen bound and whether the screen may be used.

    ``xp`` is the array namespace (NumPy or CuPy) of the inputs: ``indptr`` [P+1], ``idx`` and
    ``qty`` [nnz] (the CSR), ``M`` and ``err`` [I] per row of P; ``spec`` the MeasureSpec.
    """
    F, G = transform_factors(spec)
    n_port = int(indptr.shape[0]) - 1
    counts = xp.diff(indptr)
    aq = xp.abs(qty.astype(xp.float64))
    Mi = M[idx]
    ei = err[idx]
    with np.errstate(invalid="ignore", over="ignore"):
        qe = _segment_sum(xp, aq * ei, indptr, counts)
        B = _segment_sum(xp, aq * (Mi + ei), indptr, counts)
        n = counts.astype(xp.float64)
        b = BOUND_SLACK * (F * qe + F * B * (n + 6.0) * ARITH_EPS + G * (n + 1.0) * ABS_EPS)
        ok = xp.isfinite(b) & (F * B <= SCREEN_MAX) & (counts <= MAX_POSITIONS)
    if not (np.isfinite(F) and np.isfinite(G)):
        ok = xp.zeros(n_port, dtype=bool)
    return b, ok


def _segment_sum(xp, w, indptr, counts):
    """Σ of w over each CSR row [indptr[p], indptr[p+1]) (0 for an empty row), row by row, never by
    differences of running sums (which would lose a small row's digits)."""
    n_port = int(indptr.shape[0]) - 1
    if n_port == 0:
        return xp.zeros(0)
    if xp is np:
        out = np.zeros(n_port)
        nz = counts > 0  # the non-empty rows' starts rise strictly, so each segment ends where the next begins
        if nz.any():
            out[nz] = np.add.reduceat(w, indptr[:-1][nz])
        return out
    seg = xp.searchsorted(indptr, xp.arange(int(w.shape[0])), side="right") - 1  # the row of each position
    return xp.bincount(seg, weights=w, minlength=n_port)


def coefficients(qty, idx, scale):
    """c [nnz] float32 = fl32(q_j·σ_{i_j}) (the quantised rows' weights; 0 for unquantised rows)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (qty * scale[idx]).astype(np.float32)
