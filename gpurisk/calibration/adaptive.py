"""The adaptive volatility filter against the EWMA one, out of sample.

For each coin and each refit date R from ``start`` to ``end`` (every ``volfilter.REFIT_DAYS`` days, point in
time: only the returns through R are used), the filters forecast the variance of every day of the next period
(R, R + REFIT_DAYS]:

- ``ewma``: the house model's EWMA (its ``ewma_lambda``), no parameters to fit;
- ``adaptive``: ``volfilter.choose_filter`` at R (EWMA λ grid or GARCH-t, by the likelihood of the year before R);
- ``garch_t``: GARCH(1,1)-t refitted at R.

Each filter's score is the Gaussian log-likelihood Σ −½(ln 2πσ²_t + r²_t/σ²_t) of the realised returns of those
days (QLIKE), summed over the periods, per coin and over all coins. The adaptive filter "beats" the EWMA when its
total is higher; the house model takes it as its default only then (docs/methodologies.md reports the figures).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..market import COINS, market_store
from ..scenarios import volfilter as vf


def compare_filters(market=None, start="2020-01-01", end="2024-12-31", ewma_lambda: float = 0.97,
                    coins=COINS) -> dict:
    """{per_coin: {coin: {ewma, adaptive, garch_t, days, choices: {filter: periods}}}, total: {...},
    adaptive_beats_ewma: bool, ...} (module docstring)."""
    store = market_store(market)
    a, b = pd.Timestamp(start), pd.Timestamp(end)
    per, totals = {}, {"ewma": 0.0, "adaptive": 0.0, "garch_t": 0.0, "days": 0}
    for c in coins:  # a handful of coins
        if not store.has_daily(c):
            continue
        close = store.daily_bars(c)["close"]
        r = np.diff(np.log(close.to_numpy(dtype=np.float64)))
        dates = close.index[1:]  # dates[t]: the day of return r[t]
        day = dates.asi8 // 86_400_000_000_000
        score = {"ewma": 0.0, "adaptive": 0.0, "garch_t": 0.0}
        choices: dict[str, int] = {}
        n_days = 0
        ewma = vf.forecast_path(r, f"ewma_{ewma_lambda:g}", ewma_lambda)
        for t in range(len(r)):  # refit dates only (every REFIT_DAYS days)
            if day[t] % vf.REFIT_DAYS or dates[t] < a or dates[t] > b:
                continue
            stop = t + 1  # returns through R
            hi = min(len(r), stop + vf.REFIT_DAYS, int(dates.searchsorted(b, side="right")))
            if hi <= stop:
                continue
            rr = r[stop:hi]
            score["ewma"] += vf.gaussian_loglik(rr, ewma[stop:hi])
            name, what = vf.choose_filter(r, stop, ewma_lambda)
            choices[name] = choices.get(name, 0) + 1
            score["adaptive"] += vf.gaussian_loglik(rr, vf.forecast_path(r[:hi], name, what)[stop:hi])
            g = vf.fit_through(r, stop)
            path = vf.forecast_path(r[:hi], "garch_t", g) if g is not None else ewma
            score["garch_t"] += vf.gaussian_loglik(rr, path[stop:hi])
            n_days += hi - stop
        per[c] = {**{k: float(v) for k, v in score.items()}, "days": n_days, "choices": choices,
                  "adaptive_minus_ewma": float(score["adaptive"] - score["ewma"])}
        for k in score:
            totals[k] += score[k]
        totals["days"] += n_days
    return {"start": str(a.date()), "end": str(b.date()), "ewma_lambda": float(ewma_lambda),
            "refit_days": vf.REFIT_DAYS, "validation_days": vf.VALIDATION_DAYS, "ewma_grid": list(vf.EWMA_GRID),
            "per_coin": per, "total": totals,
            "adaptive_minus_ewma": float(totals["adaptive"] - totals["ewma"]),
            "adaptive_beats_ewma": bool(totals["adaptive"] > totals["ewma"]),
            "coins_where_adaptive_beats_ewma": [c for c, v in per.items() if v["adaptive_minus_ewma"] > 0]}


__all__ = ["compare_filters"]
