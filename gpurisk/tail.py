"""The tail-statistics vocabulary shared by the backends and the margin models.

``MeasureSpec`` says what each portfolio's scenario P&L vector is reduced to, ``TailStats`` holds
the per-portfolio results (worst, VaR, ES per level), and the helpers name levels (``level_name``),
check them, build a spec from a scenario set's weights (``spec_for``) and lay results out as a frame
(``stats_frame``). Backends compute; margin models consume; both import this module only.
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


__all__ = ["TAIL_WEIGHT_RTOL", "MeasureSpec", "TailStats", "counted_pnl", "tail_candidates", "level_name",
           "measure_columns", "check_levels", "spec_for", "stats_frame"]
