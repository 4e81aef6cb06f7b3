"""What every backend shares: the measure spec, the result type and the tail rule.

A backend module exposes ``name``, ``available() -> (bool, reason)``,
``revalue(pi, scenarios, numeraire) -> P [I, S]`` and
``tail_stats(portfolios, P, spec) -> TailStats``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GpuriskError

#: relative tolerance on the cumulative tail weight (so 1−0.99 = 0.010000000000000009 picks k = 100 of 10,000)
TAIL_WEIGHT_RTOL = 1e-12


@dataclass(frozen=True)
class MeasureSpec:
    """What to reduce each portfolio's scenario P&L vector L [S] to.

    The counted P&L is ``L'[s] = pnl_factor[s]·L[s]``, then positive values are
    multiplied by ``profit_factor`` (1 = full credit, 0 = no credit for profits).
    Losses are ``x = −L'``. With tail mass α = 1−q and probability weights w
    (equal when None), sort x descending and take the smallest k whose cumulative
    weight reaches α·Σw (within TAIL_WEIGHT_RTOL): VaR_q = x_(k) and ES_q is the
    w-weighted mean of x_(1..k). With equal weights k = ⌈α·S⌉, so ES is the mean
    of the worst ⌈(1−q)·S⌉ scenarios. ``worst`` = max_s x_s.
    """

    levels: tuple[float, ...] = (0.99,)
    weight: np.ndarray | None = None  # [S] probability weights ≥ 0
    pnl_factor: np.ndarray | None = None  # [S]
    profit_factor: float = 1.0

    def tail_counts(self, n_scenarios: int) -> np.ndarray:
        """k per level for equal weights: ⌈(1−q)·S⌉ computed robustly, at least 1."""
        alpha = 1.0 - np.asarray(self.levels, dtype=np.float64)
        k = np.ceil(alpha * n_scenarios * (1.0 - TAIL_WEIGHT_RTOL))
        return np.clip(k, 1, n_scenarios).astype(np.int64)


@dataclass
class TailStats:
    """Per-portfolio results; losses are positive numbers in the P&L's numeraire."""

    worst: np.ndarray  # [P] max loss
    worst_scenario: np.ndarray  # [P] int64 index of the worst scenario
    var: np.ndarray  # [P, L] VaR per level
    es: np.ndarray  # [P, L] ES per level

    def __len__(self) -> int:
        return len(self.worst)

    @staticmethod
    def concat(parts: list["TailStats"]) -> "TailStats":
        return TailStats(
            worst=np.concatenate([p.worst for p in parts]),
            worst_scenario=np.concatenate([p.worst_scenario for p in parts]),
            var=np.concatenate([p.var for p in parts]),
            es=np.concatenate([p.es for p in parts]),
        )


def counted_pnl(L: np.ndarray, spec: MeasureSpec) -> np.ndarray:
    """Apply pnl_factor and profit scaling to L [..., S]."""
    if spec.pnl_factor is not None:
        L = L * spec.pnl_factor
    if spec.profit_factor != 1.0:
        L = np.where(L > 0.0, L * spec.profit_factor, L)
    return L


def tail_candidates(spec: MeasureSpec, n_scenarios: int):
    """How many of a portfolio's largest losses a selection-based backend must keep.

    Returns (weighted, m, ks [L] int64, targets [L]). Equal weights: m = max k over the
    levels (targets unused). Probability weights: targets = α·Σw·(1−TAIL_WEIGHT_RTOL) per
    level and m = 2 + the smallest count whose *lightest* weights reach the largest target;
    any m scenarios weigh at least that much, so the top-m losses contain every level's tail.
    """
    S = int(n_scenarios)
    n_lev = len(spec.levels)
    if spec.weight is None:
        ks = spec.tail_counts(S)
        return False, int(ks.max()) if n_lev else 1, ks, np.zeros(n_lev)
    w = np.asarray(spec.weight, dtype=np.float64)
    targets = (1.0 - np.asarray(spec.levels, dtype=np.float64)) * w.sum() * (1.0 - TAIL_WEIGHT_RTOL)
    lightest = np.cumsum(np.sort(w))
    need = int(np.searchsorted(lightest, (targets.max() if n_lev else 0.0) * (1.0 - 1e-9), side="left")) + 2
    return True, int(min(max(need, 1), S)), np.ones(n_lev, dtype=np.int64), targets


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
