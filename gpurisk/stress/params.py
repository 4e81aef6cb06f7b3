"""Parameters of a stress run (the ``[stress]`` table of a job file, ``gpurisk stress`` flags).

Every amount is USD, every threshold a percentage of the default resources, every move a relative
price move (−0.2 = −20 %). docs/methodologies.md ("Stress testing") argues each default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..scenarios.stress import FAMILIES
from ..tail import check_levels


@dataclass(frozen=True)
class StressParams:
    """What a stress run computes and how it judges the result.

    families: the stress families to run (``gpurisk.scenarios.registry.FAMILIES``).
    horizon_days: P&L horizon of every scenario (0 = instant moves; options do not decay).
    default_fund_usd: the prefunded default resources Cover-1/Cover-2 are compared with (USD);
      None: not configured (utilisation, alerts and reverse stress (a) are left out, and say so).
    early_warning_pct: a group's loss over margin above this share of the resources is an early warning
      (Eurex: 40 %).
    two_largest_pct: Cover-2 above this share of the resources calls supplementary margin (Eurex: 90 %) ...
    group_call_pct: ... from each group whose loss over margin is above this share (Eurex: 45 %).
    reverse: run the reverse stress; reverse_groups: how many of the largest groups (by house IM) it follows;
    reverse_max_down / reverse_max_up: the range searched (a fall to −max_down, a rise to +max_up);
    reverse_scan_points: grid points per direction before the bisection; reverse_tolerance: the bisection
    stops when the bracket is narrower than this move.
    sensitivity: compute the house IM sensitivity; levels, MPOR days and lookback years to try.
    chunk_elements: accounts × scenarios per block of the loss computation (memory bound, float64 elements).
    """

    families: tuple[str, ...] = FAMILIES
    horizon_days: float = 0.0
    default_fund_usd: float | None = None
    early_warning_pct: float = 40.0
    group_call_pct: float = 45.0
    two_largest_pct: float = 90.0
    reverse: bool = True
    reverse_groups: int = 10
    reverse_max_down: float = 0.99
    reverse_max_up: float = 5.0
    reverse_scan_points: int = 100
    reverse_tolerance: float = 1e-7
    sensitivity: bool = True
    sensitivity_levels: tuple[float, ...] = (0.99, 0.995, 0.999)
    sensitivity_mpor_days: tuple[float, ...] = (1.0, 2.0, 5.0)
    sensitivity_lookback_years: tuple[int, ...] = (1, 3, 5, 10)
    chunk_elements: int = 4_000_000

    def __post_init__(self):
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ValueError(f"unknown stress family {bad[0]!r}; choose from {', '.join(FAMILIES)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families repeat a name: {list(self.families)}")
        checks = [
            (self.horizon_days >= 0, "horizon_days must be >= 0"),
            (self.default_fund_usd is None or (math.isfinite(self.default_fund_usd) and self.default_fund_usd > 0),
             "default_fund_usd must be a positive number of USD"),
            (0 < self.early_warning_pct <= 1000, "early_warning_pct must lie in (0, 1000]"),
            (0 < self.group_call_pct <= 1000, "group_call_pct must lie in (0, 1000]"),
            (0 < self.two_largest_pct <= 1000, "two_largest_pct must lie in (0, 1000]"),
            (self.reverse_groups >= 0, "reverse_groups must be >= 0"),
            (0 < self.reverse_max_down < 1, "reverse_max_down must lie in (0, 1)"),
            (self.reverse_max_up > 0, "reverse_max_up must be > 0"),
            (self.reverse_scan_points >= 2, "reverse_scan_points must be >= 2"),
            (0 < self.reverse_tolerance < 0.01, "reverse_tolerance must lie in (0, 0.01)"),
            (all(d > 0 for d in self.sensitivity_mpor_days), "sensitivity_mpor_days must be > 0"),
            (all(y >= 1 for y in self.sensitivity_lookback_years), "sensitivity_lookback_years must be >= 1"),
            (self.chunk_elements >= 1000, "chunk_elements must be >= 1000"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        check_levels(self.sensitivity_levels, "sensitivity_levels")


__all__ = ["StressParams"]
