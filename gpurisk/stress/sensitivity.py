"""Sensitivity of the book's house IM to the model's key parameters (EMIR RTS 153/2013: sensitivity testing).

The house model (``gpurisk.margin.house``) is run with one parameter changed at a time from the run's house
parameters: the ES confidence level, the margin period of risk (the scenario horizon) and the FHS lookback.
The scenario components are built once per horizon and lookback and shared by the runs that can share them
(a confidence change reuses every component; a lookback change rebuilds only the historical one). A lookback
longer than the shipped history uses all of it; the table says how much that is.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .. import margin as _margin
from ..book import Book
from ..market import market_store
from ..margin.components import default_components, history_date
from ..tail import level_name

#: days in a year of the lookback parameter
DAYS_PER_YEAR = 365


def history_days_available(book: Book, market=None) -> int:
    """Days of daily BTC history (the longest series) before the book's history date, in ``market``."""
    first = market_store(market).daily_bars("BTC").index.min()
    return int((history_date(book.as_of, market) - first).days)


def sensitivity(book: Book, house_params, engine, levels, mpor_days, lookback_years, market=None) -> pd.DataFrame:
    """One row per run: ``parameter, value, label, total_im_usd, change_pct, confidence, mpor_days,
    lookback_days, lookback_days_used, historical_scenarios, note`` (the base run: ``parameter`` = ``base``)."""
    base_cp = house_params.components()
    comps: dict[tuple, dict] = {}

    def components(horizon: float, lookback: int) -> dict:
        key = (float(horizon), int(lookback))
        if key not in comps:
            if float(horizon) == float(base_cp.horizon_days) and (float(horizon), int(base_cp.lookback_days)) in comps:
                mc_from = comps[(float(horizon), int(base_cp.lookback_days))]
                part = default_components(book, replace(base_cp, horizon_days=horizon, lookback_days=lookback,
                                                        mc_scenarios=0), market)
                if "montecarlo" in mc_from:
                    part = {"historical": part["historical"], "montecarlo": mc_from["montecarlo"],
                            "stress": part["stress"]}
                comps[key] = part
            else:
                comps[key] = default_components(book, replace(base_cp, horizon_days=horizon, lookback_days=lookback),
                                                market)
        return comps[key]

    available = history_days_available(book, market)
    runs = [("base", "", house_params)]
    runs += [("confidence", q, replace(house_params, confidence=float(q))) for q in levels
             if float(q) != house_params.confidence]
    runs += [("mpor_days", h, replace(house_params, horizon_days=float(h))) for h in mpor_days
             if float(h) != house_params.horizon_days]
    runs += [("lookback_years", y, replace(house_params, lookback_days=int(y) * DAYS_PER_YEAR)) for y in lookback_years
             if int(y) * DAYS_PER_YEAR != house_params.lookback_days]
    rows = []
    base_im = None
    components(house_params.horizon_days, house_params.lookback_days)  # the base set first (its MC is shared)
    for parameter, value, p in runs:  # a handful of model runs
        sets = components(p.horizon_days, p.lookback_days)
        res = _margin.compute(book, model="house", params=p, scenarios=sets, backend=engine, market=market)
        total = float(res.margin["im_usd"].sum())
        base_im = total if base_im is None else base_im
        used = min(int(p.lookback_days), available)
        note = ""
        if int(p.lookback_days) > available:
            note = (f"{p.lookback_days / DAYS_PER_YEAR:g} years asked; the shipped history gives "
                    f"{available / DAYS_PER_YEAR:.1f} years ({available} days), all used")
        rows.append({
            "parameter": parameter,
            "value": "" if parameter == "base" else str(value),
            "label": (f"base (ES {level_name(p.confidence)} %, MPOR {p.horizon_days:g} d, lookback "
                      f"{p.lookback_days / DAYS_PER_YEAR:g} y)") if parameter == "base" else
                     {"confidence": f"ES at {float(value):.1%}", "mpor_days": f"MPOR {float(value):g} days",
                      "lookback_years": f"lookback {int(value)} years"}[parameter],
            "total_im_usd": total,
            "change_pct": 100.0 * (total / base_im - 1.0) if base_im else np.nan,
            "confidence": float(p.confidence),
            "mpor_days": float(p.horizon_days),
            "lookback_days": int(p.lookback_days),
            "lookback_days_used": used,
            "historical_scenarios": int(sets["historical"].n_scenarios),
            "note": note,
        })
    return pd.DataFrame(rows)


__all__ = ["sensitivity", "history_days_available"]
