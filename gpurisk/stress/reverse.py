"""Reverse stress: the smallest price move at which the default resources or a group's margin give out.

For each driver (one coin alone, or every coin of the book together: ``all``) and direction (a fall or a
rise), the engine revalues the book at a grid of moves (``reverse_scan_points`` per direction, from 0 to
−``reverse_max_down`` or +``reverse_max_up``), finds the first grid move where a condition holds, and then
bisects between that move and the one before it until the bracket is narrower than ``reverse_tolerance``.
Every step is a plain scenario run through the same loss computation as the stress run (collateral
revalued, vols unchanged). Conditions, USD:

- ``cover2``: Cover-2 > the default resources;
- ``im_exhausted``: a group's loss > its house IM;
- ``collateral_exhausted``: a group's loss > its collateral after haircuts (equity);

for each of the ``reverse_groups`` groups with the largest house IM. The result row gives the move where the
condition first holds (``move``), the largest move before it where it does not (``move_safe``, within the
tolerance), and the figures at both. The search assumes no crossing and re-crossing inside one grid step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..scenarios import make_scenario_set
from .cover import cover, group_sum, rank_groups, uncovered
from .losses import Exposure, account_losses

DRIVER_ALL = "all"


@dataclass
class Evaluator:
    """Evaluates Cover-2 and the followed groups' losses at a batch of (driver, move) points."""

    exposure: Exposure
    engine: object
    coins: tuple[str, ...]
    equity: np.ndarray  # [A] USD
    group: np.ndarray  # [A] group code
    n_groups: int
    group_rank: np.ndarray  # [G] position of each group id in sorted order (tie-break)
    followed: np.ndarray  # [F] group codes
    horizon_days: float = 0.0
    chunk_elements: int = 4_000_000
    evaluations: int = 0

    def scenarios(self, drivers, moves):
        """A ScenarioSet with one scenario per (driver, move)."""
        U = len(self.coins)
        P = np.zeros((len(moves), U))
        col = {c: j for j, c in enumerate(self.coins)}
        drv = np.asarray(drivers, dtype=object)
        allrows = drv == DRIVER_ALL
        P[allrows, :] = np.asarray(moves, dtype=np.float64)[allrows, None]
        for c, j in col.items():  # a handful of coins
            rows = drv == c
            P[rows, j] = np.asarray(moves, dtype=np.float64)[rows]
        ids = [f"reverse:{d}{m:+.9f}" for d, m in zip(drivers, moves)]
        return make_scenario_set(self.coins, P, scenario_id=np.asarray(ids, dtype=object),
                                 label=np.asarray(ids, dtype=object), horizon_days=float(self.horizon_days),
                                 kind="stress", source="reverse stress")

    def __call__(self, drivers, moves) -> tuple[np.ndarray, np.ndarray]:
        """(Cover-2 [n], followed groups' losses [n, F]) at each (driver, move) point."""
        self.evaluations += len(moves)
        P = self.exposure.pnl(self.scenarios(drivers, moves), self.engine)
        loss = account_losses(self.exposure, P, self.chunk_elements)  # [n, A]
        gunc = group_sum(uncovered(loss, self.equity), self.group, self.n_groups)
        c2 = cover(gunc, rank_groups(gunc, self.group_rank)).cover2
        gloss = group_sum(loss, self.group, self.n_groups)[:, self.followed]
        return c2, gloss


def _targets(resources, followed_ids, group_im, group_eq):
    """[(target, group_id, column or None, threshold)]."""
    out = []
    if resources is not None:
        out.append(("cover2", "", None, float(resources)))
    for j, g in enumerate(followed_ids):
        out.append(("im_exhausted", str(g), j, float(group_im[j])))
        out.append(("collateral_exhausted", str(g), j, float(group_eq[j])))
    return out


def _values(target_col, c2, gloss):
    return c2 if target_col is None else gloss[:, target_col]


def reverse_stress(ev: Evaluator, resources_usd: float | None, followed_ids, group_im, group_eq, *,
                   max_down: float = 0.99, max_up: float = 5.0, scan_points: int = 100,
                   tolerance: float = 1e-7) -> pd.DataFrame:
    """The reverse-stress table: one row per (target, group, driver, direction); see the module docstring."""
    targets = _targets(resources_usd, followed_ids, group_im, group_eq)
    drivers = tuple(ev.coins) + ((DRIVER_ALL,) if len(ev.coins) > 1 else ())
    directions = (("down", -float(max_down)), ("up", float(max_up)))
    grid = np.linspace(0.0, 1.0, int(scan_points) + 1)
    # ---- scan: one revaluation of every driver × direction × grid point
    pts_d, pts_m, pts_key = [], [], []
    for d in drivers:
        for name, end in directions:
            pts_d += [d] * len(grid)
            pts_m += list(grid * end)
            pts_key += [(d, name)] * len(grid)
    c2, gloss = ev(pts_d, np.asarray(pts_m))
    rows, open_ = [], []
    n = len(grid)
    for bi, (d, name) in enumerate((d, nm) for d in drivers for nm, _ in directions):
        sl = slice(bi * n, (bi + 1) * n)
        moves = np.asarray(pts_m[sl])
        for tgt, gid, col, thr in targets:
            v = _values(col, c2[sl], gloss[sl])
            hit = np.flatnonzero(v > thr)
            row = {"target": tgt, "group_id": gid, "driver": d, "direction": name, "threshold_usd": thr,
                   "move": np.nan, "move_safe": np.nan, "value_usd": np.nan, "value_safe_usd": np.nan,
                   "found": False, "note": ""}
            if len(hit) == 0:
                row.update(move_safe=float(moves[-1]), value_safe_usd=float(v[-1]),
                           note=f"not reached within {moves[-1]:+.0%}")
            elif hit[0] == 0:
                row.update(move=0.0, value_usd=float(v[0]), found=True, note="already exceeded without a move")
            else:
                k = int(hit[0])
                row.update(move=float(moves[k]), move_safe=float(moves[k - 1]), value_usd=float(v[k]),
                           value_safe_usd=float(v[k - 1]), found=True)
                open_.append((len(rows), col, thr, d))
            rows.append(row)
    # ---- bisection, every open bracket at once
    while open_:
        widths = [abs(rows[i]["move"] - rows[i]["move_safe"]) for i, *_ in open_]
        open_ = [o for o, w in zip(open_, widths) if w > tolerance]
        if not open_:
            break
        mids = np.array([0.5 * (rows[i]["move"] + rows[i]["move_safe"]) for i, *_ in open_])
        c2m, glm = ev([o[3] for o in open_], mids)
        for j, (i, col, thr, _) in enumerate(open_):
            v = float(c2m[j] if col is None else glm[j, col])
            if v > thr:
                rows[i].update(move=float(mids[j]), value_usd=v)
            else:
                rows[i].update(move_safe=float(mids[j]), value_safe_usd=v)
    out = pd.DataFrame(rows, columns=["target", "group_id", "driver", "direction", "move", "move_safe",
                                      "threshold_usd", "value_usd", "value_safe_usd", "found", "note"])
    out["tolerance"] = float(tolerance)
    return out


__all__ = ["DRIVER_ALL", "Evaluator", "reverse_stress"]
