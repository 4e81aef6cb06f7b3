"""Margin status and calls from equity, IM and MM (vectorised over accounts).

Status bands, in the spirit of Binance's uniMMR bands (equity / MM), with IM on top:

- ``ok``           equity ≥ IM;
- ``call``         reduce_only_mm_ratio·MM ≤ equity < IM: top up to IM;
- ``reduce_only``  liquidation_mm_ratio·MM ≤ equity < reduce_only_mm_ratio·MM;
- ``liquidation``  equity < liquidation_mm_ratio·MM.

A band that would start above IM (because IM is close to MM) is capped at IM,
so an account at or above IM is always ``ok``. ``call_amount`` = max(IM − equity, 0),
the cash that restores IM, for every status but ``ok``.

A venue that publishes its own call band on MM (Binance uniMMR: a margin call below 1.5 × MM)
sets ``call_mm_ratio``: the call line is then max(IM, call_mm_ratio·MM) in place of IM, the
lower bands are capped at it, and ``call_amount`` restores the call line. ``classify_bands``
takes the three ratios per row, so one venue table can carry each venue's published bands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

STATUSES = ("ok", "call", "reduce_only", "liquidation")

REASONS = {
    "call": "equity below initial margin",
    "reduce_only": "equity below the reduce-only band of maintenance margin",
    "liquidation": "equity below the liquidation band of maintenance margin",
}


@dataclass(frozen=True)
class CallParams:
    """Thresholds as multiples of MM (Binance uniMMR: reduce-only below 1.20, liquidation below 1.05 there).

    reduce_only_mm_ratio: equity below this × MM is reduce-only (default 1.10).
    liquidation_mm_ratio: equity below this × MM is liquidated (default 1.00: MM is the line).
    """

    reduce_only_mm_ratio: float = 1.10
    liquidation_mm_ratio: float = 1.00
    call_mm_ratio: float = 0.0  # > 0: the call line is max(IM, call_mm_ratio·MM) (0: IM is the call line)

    def __post_init__(self):
        if not (0.0 < self.liquidation_mm_ratio <= self.reduce_only_mm_ratio):
            raise ValueError(
                "need 0 < liquidation_mm_ratio <= reduce_only_mm_ratio, got "
                f"{self.liquidation_mm_ratio} and {self.reduce_only_mm_ratio}"
            )
        if self.call_mm_ratio != 0.0 and not (self.call_mm_ratio >= self.reduce_only_mm_ratio):
            raise ValueError(f"call_mm_ratio must be 0 (IM is the call line) or >= reduce_only_mm_ratio "
                             f"({self.reduce_only_mm_ratio}), got {self.call_mm_ratio}")


def call_line(im, mm, call_mm_ratio=0.0) -> np.ndarray:
    """[n] the equity below which a row is called: IM, or max(IM, call_mm_ratio·MM) where the ratio is > 0."""
    im = np.asarray(im, dtype=np.float64)
    r = np.broadcast_to(np.asarray(call_mm_ratio, dtype=np.float64), im.shape)
    return np.where(r > 0.0, np.maximum(im, r * np.asarray(mm, dtype=np.float64)), im)


def classify_bands(im, mm, equity, call_mm_ratio, reduce_only_mm_ratio, liquidation_mm_ratio):
    """(status [n], call_amount [n]) with the bands given per row (ratios [n] or scalars; see the module docstring)."""
    im = np.asarray(im, dtype=np.float64)
    mm = np.asarray(mm, dtype=np.float64)
    eq = np.asarray(equity, dtype=np.float64)
    top = call_line(im, mm, call_mm_ratio)
    liq_line = np.minimum(np.asarray(liquidation_mm_ratio, dtype=np.float64) * mm, top)
    ro_line = np.minimum(np.asarray(reduce_only_mm_ratio, dtype=np.float64) * mm, top)
    status = np.select(
        [eq >= top, eq >= ro_line, eq >= liq_line],
        ["ok", "call", "reduce_only"],
        default="liquidation",
    ).astype(object)
    amount = np.where(status == "ok", 0.0, np.maximum(top - eq, 0.0))
    return status, amount


def classify(im: np.ndarray, mm: np.ndarray, equity: np.ndarray, params: CallParams | None = None):
    """(status [n] str, call_amount [n] USD) per account; see the module docstring."""
    params = params or CallParams()
    return classify_bands(im, mm, equity, params.call_mm_ratio, params.reduce_only_mm_ratio,
                          params.liquidation_mm_ratio)


def calls_table(margin: pd.DataFrame) -> pd.DataFrame:
    """Rows that need action, from a margin table's standard columns (USD):
    ``account_id, venue, model, status, call_amount_usd, reason, im_usd, mm_usd, equity_usd``."""
    need = margin[margin["status"].isin(STATUSES[1:])]
    out = need[["account_id", "venue", "model", "status", "call_amount_usd", "im_usd", "mm_usd", "equity_usd"]].copy()
    out.insert(5, "reason", out["status"].map(REASONS).astype(object))
    return out.reset_index(drop=True)


def status_counts(status) -> dict:
    """{status: count} over every status name (zeros included)."""
    s = pd.Series(np.asarray(status, dtype=object))
    counts = s.value_counts()
    return {k: int(counts.get(k, 0)) for k in STATUSES}


__all__ = ["STATUSES", "REASONS", "CallParams", "call_line", "classify_bands", "classify", "calls_table",
           "status_counts"]
