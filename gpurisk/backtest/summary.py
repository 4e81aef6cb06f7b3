"""The backtest's tables from its daily rows: one summary row per portfolio and a ``pooled`` row, and the
250-day traffic-light windows of every portfolio (``gpurisk.backtest.stats`` does the arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import chi2

from . import stats

#: the name of the summary row over every portfolio together
POOLED = "pooled"


def summarise(daily: pd.DataFrame, level: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary [portfolios + pooled], windows) of the daily rows (columns of ``engine.day_rows``)."""
    rows, wins = [], []
    counts = np.zeros(4, np.int64)
    for name, g in daily.groupby("portfolio", sort=True):  # one group per portfolio (a few dozen)
        g = g.sort_values("date")
        floor = g["im_floor_10y"].to_numpy() if "im_floor_10y" in g else None
        s = stats.portfolio_summary(g["im"].to_numpy(), g["pnl"].to_numpy(), level, floor)
        notional = g["notional"].to_numpy() if "notional" in g else np.full(len(g), np.nan)
        s["mean_notional"] = float(np.nanmean(notional))
        s["mean_im_share"] = float(np.nanmean(g["im"].to_numpy() / np.where(notional > 0, notional, np.nan)))
        s["first_date"] = g["date"].iloc[0]
        s["last_date"] = g["date"].iloc[-1]
        rows.append({"portfolio": name, **s})
        exc = g["exception"].to_numpy(bool)
        counts += np.array(stats.transition_counts(exc))
        w = stats.rolling_windows(exc, level)
        if len(w):
            dates = g["date"].to_numpy()
            w.insert(0, "portfolio", name)
            w["start_date"] = dates[w["start"].to_numpy()]
            w["end_date"] = dates[w["start"].to_numpy() + stats.WINDOW_DAYS - 1]
            wins.append(w)
    # pooled: every (day, portfolio) row as one observation; independence from the summed transitions
    n = len(daily)
    x = int(daily["exception"].sum())
    loss = -daily["pnl"].to_numpy()
    im = daily["im"].to_numpy()
    p = {"portfolio": POOLED, "n_obs": n, "n_exceptions": x}
    p["kupiec_lr"], p["kupiec_p"] = stats.kupiec_pof(n, x, level)
    p["kupiec_p_one_sided"] = stats.kupiec_one_sided(n, x, level)
    p["cci_lr"], p["cci_p"] = stats.independence_from_counts(*map(int, counts))
    p["cc_lr"] = p["kupiec_lr"] + p["cci_lr"]
    p["cc_p"] = float(chi2.sf(p["cc_lr"], 2))
    p["zone"], p["zone_probability"] = stats.traffic_light(n, x, level)
    p["coverage"] = 1.0 - x / n
    p["mean_im"] = float(im.mean())
    p["realised_es"] = stats.expected_shortfall(loss, level)
    p["im_over_es"] = p["mean_im"] / p["realised_es"] if p["realised_es"] > stats.NEGLIGIBLE * p["mean_im"] \
        else math.nan
    exc = loss > im
    over = np.where(exc, loss - im, 0.0)
    p["max_exceedance"] = float(over.max())
    p["mean_exceedance"] = float(over[exc].mean()) if x else 0.0
    share = np.where(exc, over / np.where(im > 0, im, np.nan), 0.0)
    p["max_exceedance_share"] = float(np.nanmax(share)) if len(share) else 0.0
    p["mean_exceedance_share"] = float(np.nanmean(share[exc])) if x else 0.0
    windows = pd.concat(wins, ignore_index=True) if wins else pd.DataFrame(
        columns=["portfolio", "start", "n_exceptions", "zone", "probability", "start_date", "end_date"])
    p["windows"] = int(len(windows))
    for z in ("green", "yellow", "red"):
        p[f"windows_{z}"] = int((windows["zone"] == z).sum())
    p["windows_green_share"] = float((windows["zone"] == "green").mean()) if len(windows) else math.nan
    p["worst_window_zone"] = ("red" if p["windows_red"] else "yellow" if p["windows_yellow"] else "green") \
        if len(windows) else "none"
    p["mean_notional"] = float(daily["notional"].mean()) if "notional" in daily else math.nan
    p["mean_im_share"] = float((daily["im"] / daily["notional"]).mean()) if "notional" in daily else math.nan
    p["first_date"] = daily["date"].min()
    p["last_date"] = daily["date"].max()
    rows.append(p)
    summary = pd.DataFrame(rows)
    return summary, windows


__all__ = ["summarise", "POOLED"]
