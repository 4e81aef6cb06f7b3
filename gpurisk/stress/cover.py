"""Loss over margin, member groups, Cover-1 / Cover-2 and the resource thresholds: plain array functions.

For an account a in scenario s (USD): ``uncovered[s, a] = max(0, loss[s, a] − equity[a])``, the loss its
whole collateral (after haircuts) does not cover. A group's loss over margin is the sum over its accounts
(accounts are segregated: one member's surplus does not cover another's loss). Per scenario, Cover-1 is the
largest group loss over margin and Cover-2 the sum of the two largest (PFMI Principle 4; EMIR Art. 43).
Ties between groups are broken by group id, so the result does not depend on the account order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def uncovered(loss: np.ndarray, equity: np.ndarray) -> np.ndarray:
    """[S, A] max(0, loss − equity) for loss [S, A] and equity [A] (USD)."""
    return np.maximum(loss - np.asarray(equity, dtype=np.float64)[None, :], 0.0)


def group_sum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """[S, G] per-scenario sums of ``values`` [S, A] over the accounts of each group (``group`` [A] codes)."""
    S, A = values.shape
    code = (np.arange(S, dtype=np.int64)[:, None] * n_groups + np.asarray(group, dtype=np.int64)[None, :]).ravel()
    return np.bincount(code, weights=values.ravel(), minlength=S * n_groups).reshape(S, n_groups)


def rank_groups(group_uncovered: np.ndarray, group_order: np.ndarray | None = None) -> np.ndarray:
    """[S, G] order of the groups per scenario, largest loss over margin first; ties by ``group_order`` [G]
    (the position of each group's id in sorted order; default: the column order)."""
    S, G = group_uncovered.shape
    tie = np.arange(G) if group_order is None else np.asarray(group_order)
    if G == 0:
        return np.zeros((S, 0), dtype=np.int64)
    # sort by tie-breaker first, then stably by −value: equal values keep the tie order
    base = np.argsort(tie, kind="stable")
    vals = group_uncovered[:, base]
    order = np.argsort(-vals, axis=1, kind="stable")
    return base[order]


@dataclass(frozen=True)
class Cover:
    """Cover-1 and Cover-2 per scenario [S] and the groups behind them (column indices, −1 if none)."""

    cover1: np.ndarray  # [S] USD
    cover2: np.ndarray  # [S] USD
    first: np.ndarray  # [S] int64 group of the largest
    second: np.ndarray  # [S] int64 group of the second largest (−1 with fewer than two groups)

    def worst(self, which: int) -> int:
        """The scenario row with the largest Cover-``which`` (1 or 2); the first such row on ties."""
        return int(np.argmax(self.cover1 if which == 1 else self.cover2))


def cover(group_uncovered: np.ndarray, order: np.ndarray) -> Cover:
    """Cover-1/Cover-2 per scenario from [S, G] group losses over margin and their ``rank_groups`` order."""
    S, G = group_uncovered.shape
    rows = np.arange(S)
    first = order[:, 0] if G else np.full(S, -1, np.int64)
    second = order[:, 1] if G > 1 else np.full(S, -1, np.int64)
    c1 = group_uncovered[rows, first] if G else np.zeros(S)
    c2 = c1 + (group_uncovered[rows, second] if G > 1 else 0.0)
    return Cover(cover1=c1, cover2=c2, first=first.astype(np.int64), second=second.astype(np.int64))


def utilisation(amount_usd: float, resources_usd: float | None) -> float | None:
    """amount / resources in percent; None when the resources are not configured."""
    if resources_usd is None:
        return None
    return 100.0 * float(amount_usd) / float(resources_usd)


def threshold_alerts(group_ids, group_worst: np.ndarray, cover1: float, cover2: float, cover1_groups, cover2_groups,
                     resources_usd: float | None, early_warning_pct: float, group_call_pct: float,
                     two_largest_pct: float) -> list[dict]:
    """The alerts of the resource thresholds (Eurex style), each ``{level, code, message, groups}``.

    ``group_worst`` [G]: each group's largest loss over margin over the scenarios (USD).
    - ``early_warning``: a group's loss over margin above ``early_warning_pct`` % of the resources;
    - ``supplementary_margin``: Cover-2 above ``two_largest_pct`` %: margin is called from every group above
      ``group_call_pct`` %;
    - ``cover2_breach``: Cover-2 above the resources; ``cover1_breach``: Cover-1 above them.
    """
    if resources_usd is None:
        return []
    ids = np.asarray(group_ids, dtype=object)
    worst = np.asarray(group_worst, dtype=np.float64)
    out = []
    pct = 100.0 * worst / resources_usd
    warn = np.flatnonzero(pct > early_warning_pct)
    if len(warn):
        warn = warn[np.argsort(-worst[warn], kind="stable")]
        out.append({"level": "warning", "code": "early_warning", "groups": [str(g) for g in ids[warn]],
                    "message": f"{len(warn)} group(s) have a loss over margin above {early_warning_pct:g} % of the "
                               f"default resources (largest {pct[warn[0]]:.1f} %)"})
    c2 = 100.0 * cover2 / resources_usd
    if c2 > two_largest_pct:
        call = np.flatnonzero(pct > group_call_pct)
        call = call[np.argsort(-worst[call], kind="stable")]
        out.append({"level": "critical", "code": "supplementary_margin", "groups": [str(g) for g in ids[call]],
                    "message": f"Cover-2 is {c2:.1f} % of the default resources (above {two_largest_pct:g} %): "
                               f"supplementary margin from {len(call)} group(s) above {group_call_pct:g} %"})
    if cover2 > resources_usd:
        out.append({"level": "critical", "code": "cover2_breach", "groups": [str(g) for g in cover2_groups],
                    "message": f"Cover-2 ({cover2:,.0f} USD) exceeds the default resources ({resources_usd:,.0f} USD)"})
    if cover1 > resources_usd:
        out.append({"level": "critical", "code": "cover1_breach", "groups": [str(g) for g in cover1_groups],
                    "message": f"Cover-1 ({cover1:,.0f} USD) exceeds the default resources ({resources_usd:,.0f} USD)"})
    return out


__all__ = ["uncovered", "group_sum", "rank_groups", "Cover", "cover", "utilisation", "threshold_alerts"]
