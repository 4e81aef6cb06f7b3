"""The tail-statistics vocabulary shared by the backends and the margin models.

``MeasureSpec`` says what each portfolio's scenario P&L vector is reduced to, ``TailStats`` holds
the per-portfolio results (worst, VaR, ES per level), and the helpers name levels (``level_name``),
check them, build a spec from a scenario set's weights (``spec_for``) and lay results out as a frame
(``stats_frame``). Backends compute; margin models consume; both import this module only.

Euler attribution (opt-in: ``tail_stats(..., attribution=True)`` on every backend). The tail set
T_l of a portfolio at level l is the first n_l scenarios of its rank order, the very scenarios its
ES_l averages: n_l = k = ⌈(1−q)·S⌉ with equal weights, else the smallest count whose weight
reaches the tail mass. **Tie rule**: the rank order is loss descending, then scenario index
ascending (the reference's stable sort), so of tied losses at the cut the lower scenario indices
are in T. With the counted-loss factor g_s (``tail_factor``: −pnl_factor_s, times profit_factor
where the portfolio gains), ES_l = Σ_{s∈T_l} w_s·x_s / Σ_{s∈T_l} w_s and x_s = g_s·Σ_j q_j·P[i_j, s],
so the marginal of position j, ``marginal[j, l]`` = Σ_{s∈T_l} w_s·g_s·P[i_j, s] / Σ_{s∈T_l} w_s,
gives contributions c_j = q_j·marginal[j, l] that sum to ES_l (to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import ConfigError, ScenarioError

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
    """Per-portfolio results; losses are positive numbers in the P&L's numeraire.

    With attribution (``tail_stats(..., attribution=True)``) four more arrays are set (None otherwise):
    ``tail_index`` [P, K] int64, each portfolio's tail scenarios in rank order (−1 pads), K the largest
    tail count the spec allows (``tail_candidates``' m); ``tail_loss`` [P, K] their counted losses (NaN
    pads); ``tail_count`` [P, L] int64, n_l (level l's tail set is the first n_l entries);
    ``marginal`` [nnz, L], the Euler marginal of each CSR position (numeraire per contract).
    """

    worst: np.ndarray  # [P] max loss
    worst_scenario: np.ndarray  # [P] int64 index of the worst scenario
    var: np.ndarray  # [P, L] VaR per level
    es: np.ndarray  # [P, L] ES per level
    tail_index: np.ndarray | None = None  # [P, K] int64
    tail_loss: np.ndarray | None = None  # [P, K] float64
    tail_count: np.ndarray | None = None  # [P, L] int64
    marginal: np.ndarray | None = None  # [nnz, L] float64

    def __len__(self) -> int:
        return len(self.worst)

    @property
    def attributed(self) -> bool:
        """True when the tail sets and the marginals are present."""
        return self.marginal is not None and self.tail_index is not None

    @staticmethod
    def concat(parts: list["TailStats"]) -> "TailStats":
        """Portfolios of consecutive chunks joined (attribution kept only when every part has it)."""
        out = TailStats(
            worst=np.concatenate([p.worst for p in parts]),
            worst_scenario=np.concatenate([p.worst_scenario for p in parts]),
            var=np.concatenate([p.var for p in parts]),
            es=np.concatenate([p.es for p in parts]),
        )
        if parts and all(p.attributed for p in parts):
            K = max(p.tail_index.shape[1] for p in parts)
            out.tail_index = np.concatenate([_pad(p.tail_index, K, -1) for p in parts])
            out.tail_loss = np.concatenate([_pad(p.tail_loss, K, np.nan) for p in parts])
            out.tail_count = np.concatenate([p.tail_count for p in parts])
            out.marginal = np.concatenate([p.marginal for p in parts])
        return out


def _pad(a: np.ndarray, K: int, fill) -> np.ndarray:
    """[P, k] → [P, K ≥ k], new columns ``fill``."""
    if a.shape[1] == K:
        return a
    out = np.full((a.shape[0], K), fill, dtype=a.dtype)
    out[:, : a.shape[1]] = a
    return out


def tail_factor(x: np.ndarray, pnl_factor: np.ndarray, profit_factor: float) -> np.ndarray:
    """g [...]: the counted-loss factor of tail entries with counted losses ``x`` and their scenarios'
    ``pnl_factor``, so that x = g·L for the portfolio's raw P&L L (and Σ_j q_j·g·P[i_j, s] = x).

    g = −f·pf where the portfolio gains (x < 0), −f where it loses (x ≥ 0), and 0 where profit_factor is 0
    and x = 0 (a gain given no credit: nothing of it counts). Every backend applies this same rule.
    """
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(pnl_factor, dtype=np.float64)
    pf = float(profit_factor)
    g = np.where(x < 0.0, -f * pf, -f)
    if pf == 0.0:
        g = np.where(x == 0.0, 0.0, g)
    return g


def tail_coefficients(spec: MeasureSpec, tail_index: np.ndarray, tail_loss: np.ndarray,
                      tail_count: np.ndarray) -> np.ndarray:
    """coef [P, L, K]: w_s·g_s / Σ_{T_l} w over each level's tail set (0 outside it), so that
    marginal[j, l] = Σ_r coef[p_j, l, r]·P[i_j, tail_index[p_j, r]] (the reference's formula)."""
    tail_index = np.asarray(tail_index, dtype=np.int64)
    n_port, K = tail_index.shape
    safe = np.where(tail_index >= 0, tail_index, 0)
    f = np.ones((n_port, K)) if spec.pnl_factor is None else np.asarray(spec.pnl_factor, dtype=np.float64)[safe]
    w = np.ones((n_port, K)) if spec.weight is None else np.asarray(spec.weight, dtype=np.float64)[safe]
    g = tail_factor(np.where(tail_index >= 0, tail_loss, 0.0), f, spec.profit_factor)
    inside = np.arange(K)[None, None, :] < np.asarray(tail_count, dtype=np.int64)[:, :, None]  # [P, L, K]
    wk = np.where(inside, w[:, None, :], 0.0)
    W = wk.sum(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inside, wk * g[:, None, :] / np.where(W > 0, W, 1.0), 0.0)


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


def level_name(q: float) -> str:
    """Column suffix of a confidence level: 0.99 -> ``99``, 0.975 -> ``97_5``, 0.999 -> ``99_9``."""
    pct = f"{100.0 * float(q):.6f}".rstrip("0").rstrip(".")
    return pct.replace(".", "_")


def measure_columns(levels) -> list[str]:
    """``worst``, then ``var_<pct>`` and ``es_<pct>`` for each level, in order."""
    return ["worst"] + [f"var_{level_name(q)}" for q in levels] + [f"es_{level_name(q)}" for q in levels]


def check_levels(levels, where: str = "levels") -> tuple[float, ...]:
    """Levels as a tuple of floats strictly inside (0, 1); ConfigError otherwise."""
    levels = tuple(float(q) for q in levels)
    if not levels or any(not (0.0 < q < 1.0) for q in levels):
        raise ConfigError(f"{where} must be confidence levels strictly between 0 and 1, got {list(levels)}")
    if len({level_name(q) for q in levels}) != len(levels):
        raise ConfigError(f"{where} has duplicate levels {list(levels)}")
    return levels


def spec_for(scenarios, levels=(0.99,), profit_factor: float = 1.0) -> MeasureSpec:
    """The MeasureSpec that honours a scenario set's weights and P&L factors (``scenarios.weight``, ``.pnl_factor`` [S]).

    Equal weights are passed as ``None`` so the plain ⌈(1−q)·S⌉ rule applies exactly;
    all-ones P&L factors likewise.
    """
    w = np.asarray(scenarios.weight, dtype=np.float64)
    f = np.asarray(scenarios.pnl_factor, dtype=np.float64)
    if len(w) == 0:
        raise ScenarioError("the scenario set is empty")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ScenarioError("scenario weights must be finite, non-negative and not all zero")
    if not np.all(np.isfinite(f)):
        raise ScenarioError("scenario pnl_factor must be finite")
    equal = bool(np.all(w == w[0]))
    ones = bool(np.all(f == 1.0))
    return MeasureSpec(
        levels=tuple(levels),
        weight=None if equal else w,
        pnl_factor=None if ones else f,
        profit_factor=float(profit_factor),
    )


def stats_frame(stats: TailStats, levels) -> pd.DataFrame:
    """TailStats [P] as a frame with ``measure_columns(levels)``."""
    cols = {"worst": stats.worst}
    for j, q in enumerate(levels):
        cols[f"var_{level_name(q)}"] = stats.var[:, j]
    for j, q in enumerate(levels):
        cols[f"es_{level_name(q)}"] = stats.es[:, j]
    return pd.DataFrame(cols)


__all__ = ["TAIL_WEIGHT_RTOL", "MeasureSpec", "TailStats", "counted_pnl", "tail_candidates", "tail_factor",
           "tail_coefficients", "level_name",
           "measure_columns", "check_levels", "spec_for", "stats_frame"]
