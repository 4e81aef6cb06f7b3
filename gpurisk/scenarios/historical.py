"""Filtered historical simulation (FHS) from the real daily closes in ``datasets/``.

Each scenario is one historical window ``[d−h, d]`` (h = horizon in days), with the
joint moves of all coins on the same dates, so correlation is the real one.

Rules (docs/data-format.md ("Scenario sets") repeats them):

- **As-of.** A daily bar dated d closes at d+1 00:00 UTC; it is used only if that
  time is ≤ ``as_of``. Nothing after the as-of is read.
- **EWMA filter.** Per coin, on its daily log returns r_t:
  σ²_t = λ·σ²_{t−1} + (1−λ)·r²_{t−1}, started at the mean r² of the coin's first
  30 returns; σ_now = the forecast for the day after the last bar. Each return is
  rescaled r̃_t = r_t · σ_now/σ_t (``filtered=False``: r̃_t = r_t, ratio 1).
- **Horizon.** ``horizon_method="overlapping"``: the h-day log move is the sum of
  the h daily r̃ ending on d (overlapping windows, one per day; unfiltered this is
  exactly log(C_d/C_{d−h})); ``"sqrt"``: r̃_d·√h. price_shock = exp(move) − 1.
- **Dates.** The last ``lookback_days`` window ends, plus every window end inside
  ``include_periods`` (stress periods pinned in, default 2020-03 and
  2022-05..2022-11), each taken at most once.
- **Coins before listing.** A coin without a close on a date takes BTC's
  standardised move scaled to its own current vol: r̃_c = r_BTC,t·σ_c,now/σ_BTC,t
  (unfiltered: r_BTC,t·σ_c,now/σ_BTC,now). ``metadata["proxied_days"]`` counts them.
- **Vol shocks** (relative mode): BTC's DVOL log change over the window,
  v = exp(β_c·log(DVOL_d/DVOL_{d−h})) − 1, with β_BTC = 1 and β_c = ``vol_beta``
  (default 1.0 for every other coin: an assumption, there is no ETH/SOL DVOL in the
  data). Before DVOL exists (it starts 2021-03-24) the proxy is the coin's EWMA vol
  change over the window, σ_{d+1}/σ_{d−h+1} − 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from ..book import to_utc_seconds
from ..errors import ScenarioError
from ..marketdata import COINS, daily_closes, dvol
from .scenario_set import ScenarioSet

#: stress periods pinned into the lookback by default (inclusive window-end dates)
DEFAULT_STRESS_PERIODS = (("2020-03-01", "2020-03-31"), ("2022-05-01", "2022-11-30"))
#: returns used to start the EWMA variance
EWMA_SEED_RETURNS = 30
#: the coin whose moves stand in for a coin not yet listed
PROXY_COIN = "BTC"


def ewma_sigma(r: np.ndarray, lam: float) -> np.ndarray:
    """EWMA vol of one coin's daily log returns r [n] (no NaN): σ [n+1].

    σ[t] is the forecast for r[t] from r[:t]; σ[n] is the forecast for the next day.
    """
    r = np.asarray(r, dtype=np.float64)
    if len(r) == 0:
        return np.full(1, np.nan)
    s0 = float(np.mean(r[:EWMA_SEED_RETURNS] ** 2))
    # σ²[t+1] = λ σ²[t] + (1−λ) r²[t], σ²[0] = s0
    tail, _ = lfilter([1.0 - lam], [1.0, -lam], r**2, zi=np.array([lam * s0]))
    return np.sqrt(np.concatenate([[s0], tail]))


def _closes_until(closes: pd.DataFrame, as_of) -> pd.DataFrame:
    t = pd.Timestamp(to_utc_seconds(as_of))
    return closes.loc[closes.index + pd.Timedelta(days=1) <= t]


def historical_scenarios(
    as_of,
    coins=COINS,
    horizon_days: int = 1,
    lookback_days: int = 1000,
    ewma_lambda: float = 0.94,
    filtered: bool = True,
    horizon_method: str = "overlapping",
    include_periods=DEFAULT_STRESS_PERIODS,
    vol_beta: float | dict = 1.0,
    closes: pd.DataFrame | None = None,
    dvol_series: pd.Series | None = None,
) -> ScenarioSet:
    """FHS scenarios [S, U] for ``coins`` at ``as_of`` (rules in the module docstring).

    ``closes`` / ``dvol_series`` default to the shipped data (``daily_closes``,
    ``dvol``); pass your own to test or to use other history.
    """
    coins = tuple(str(c) for c in coins)
    if not coins or len(set(coins)) != len(coins):
        raise ScenarioError(f"coins must be a non-empty list without duplicates, got {list(coins)}")
    h = int(horizon_days)
    if h < 1 or h != horizon_days:
        raise ScenarioError(f"horizon_days must be a whole number >= 1 for historical scenarios, got {horizon_days}")
    if not (0.0 < ewma_lambda < 1.0):
        raise ScenarioError(f"ewma_lambda must be in (0, 1), got {ewma_lambda}")
    if horizon_method not in ("overlapping", "sqrt"):
        raise ScenarioError(f"horizon_method must be 'overlapping' or 'sqrt', got {horizon_method!r}")
    if lookback_days < 1:
        raise ScenarioError(f"lookback_days must be >= 1, got {lookback_days}")
    need = tuple(dict.fromkeys((PROXY_COIN,) + coins))
    if closes is None:
        unknown = [c for c in need if c not in COINS]
        if unknown:
            raise ScenarioError(f"no daily history for {unknown}; have {list(COINS)}")
        closes = daily_closes(need)
    missing = [c for c in need if c not in closes.columns]
    if missing:
        raise ScenarioError(f"no close history for {missing}")
    closes = _closes_until(closes[list(need)].sort_index(), as_of)
    closes = closes.loc[closes[PROXY_COIN].first_valid_index():] if closes[PROXY_COIN].notna().any() else closes
    if len(closes) < h + EWMA_SEED_RETURNS + 1:
        raise ScenarioError(f"too little history before as-of {as_of} ({len(closes)} daily closes)")
    dates = closes.index
    if not (closes.index.to_series().diff().dropna() == pd.Timedelta(days=1)).all():
        closes = closes.asfreq("D")  # gaps become NaN days: a coin with no close takes the proxy
        dates = closes.index
    logc = np.log(closes.to_numpy(dtype=np.float64))
    r = np.diff(logc, axis=0)  # [T-1, C]; r[t] is the return into dates[t+1]
    T1, C = r.shape
    sig = np.full((T1 + 1, C), np.nan)  # sig[t]: forecast vol for r[t]
    for j in range(C):  # a handful of coins
        ok = np.isfinite(r[:, j])
        if not ok.any():
            raise ScenarioError(f"{need[j]} has no returns on or before as-of {as_of}")
        first = int(np.argmax(ok))
        if not ok[first:].all():
            raise ScenarioError(f"{need[j]} has gaps in its close history after its listing; fill or drop them")
        if T1 - first < EWMA_SEED_RETURNS:
            raise ScenarioError(f"{need[j]} has only {T1 - first} returns before as-of {as_of}; need {EWMA_SEED_RETURNS}")
        sig[first:, j] = ewma_sigma(r[first:, j], ewma_lambda)
    sig_now = sig[-1]  # [C]
    b = 0
    if filtered:
        rt = r * (sig_now[None, :] / sig[:-1])
        proxy = r[:, [b]] * (sig_now[None, :] / sig[:-1, [b]])
    else:
        rt = r.copy()
        proxy = r[:, [b]] * (sig_now[None, :] / sig_now[b])
    absent = ~np.isfinite(rt)
    rt = np.where(absent, proxy, rt)

    # h-day moves ending at each date index e (window r[e-h+1 .. e])
    if horizon_method == "overlapping":
        cs = np.vstack([np.zeros((1, C)), np.cumsum(rt, axis=0)])
        move = cs[h:] - cs[:-h]  # [T1-h+1, C], ends e = h-1 .. T1-1
        ends = np.arange(h - 1, T1)
        absent_days = np.vstack([np.zeros((1, C)), np.cumsum(absent, axis=0)])
        proxied = (absent_days[h:] - absent_days[:-h]) > 0
    else:
        move = rt * np.sqrt(h)
        ends = np.arange(T1)
        proxied = absent
        move, proxied = move[h - 1 :], proxied[h - 1 :]
        ends = ends[h - 1 :]
    end_dates = dates[ends + 1]
    start_dates = dates[ends + 1 - h]
    ok = np.isfinite(move).all(axis=1)

    # scenario dates: lookback + pinned stress periods
    pick = np.zeros(len(ends), dtype=bool)
    valid = np.flatnonzero(ok)
    pick[valid[-int(lookback_days):]] = True
    pinned = []
    for lo, hi in include_periods or ():
        inside = (end_dates >= pd.Timestamp(lo)) & (end_dates <= pd.Timestamp(hi)) & ok
        pick |= inside
        pinned.append(f"{lo}..{hi}")
    rows = np.flatnonzero(pick)
    move = move[rows][:, [need.index(c) for c in coins]]
    proxied = proxied[rows][:, [need.index(c) for c in coins]]
    d_end, d_start = end_dates[rows], start_dates[rows]

    # vol shocks
    betas = np.array([1.0 if c == "BTC" else float(vol_beta.get(c, 1.0) if isinstance(vol_beta, dict) else vol_beta)
                      for c in coins])
    dv = dvol() if dvol_series is None else dvol_series
    dv = _closes_until(dv.to_frame("dvol"), as_of)["dvol"]
    d1 = dv.reindex(d_end).to_numpy(dtype=np.float64)
    d0 = dv.reindex(d_start).to_numpy(dtype=np.float64)
    dlog = np.log(d1 / d0)
    have_dvol = np.isfinite(dlog)
    vol_shock = np.expm1(betas[None, :] * dlog[:, None])
    # proxy: EWMA vol change over the window, sig index of date dates[k] is k (forecast made after bar k-1)
    e_idx = ends[rows]
    sig_c = sig[:, [need.index(c) for c in coins]]
    sig_b = sig[:, [b]]
    prox_v = sig_c[e_idx + 1] / sig_c[e_idx + 1 - h] - 1.0
    prox_b = sig_b[e_idx + 1] / sig_b[e_idx + 1 - h] - 1.0
    prox_v = np.where(np.isfinite(prox_v), prox_v, betas[None, :] * prox_b)
    vol_shock = np.where(have_dvol[:, None], vol_shock, prox_v)

    S = len(rows)
    ids = np.array([d.strftime("%Y-%m-%d") for d in d_end], dtype=object)
    labels = np.array([f"hist {a:%Y-%m-%d}..{e:%Y-%m-%d}" for a, e in zip(d_start, d_end)], dtype=object)
    last_bar = dates[-1].strftime("%Y-%m-%d")
    src = (
        f"filtered historical simulation from datasets/market/daily closes ({', '.join(coins)}) up to bar {last_bar} "
        f"(as-of {pd.Timestamp(to_utc_seconds(as_of))}); EWMA lambda {ewma_lambda:g}, "
        f"{'filtered sigma_now/sigma_then' if filtered else 'unfiltered (ratio 1)'}; horizon {h}d {horizon_method}; "
        f"lookback {lookback_days} windows + pinned {', '.join(pinned) or 'none'}; "
        f"vol shocks from datasets/options/deribit_btc_dvol_daily.csv log changes (beta {vol_beta}), "
        "EWMA-vol-change proxy before DVOL"
    )
    return ScenarioSet(
        underlyings=coins,
        price_shock=np.expm1(move),
        vol_shock=vol_shock,
        vol_mode=np.zeros(S, np.int8),
        weight=np.ones(S),
        pnl_factor=np.ones(S),
        label=labels,
        scenario_id=ids,
        horizon_days=float(h),
        kind="historical",
        seed=None,
        source=src,
        metadata={
            "as_of": str(pd.Timestamp(to_utc_seconds(as_of))),
            "last_bar": last_bar,
            "ewma_lambda": float(ewma_lambda),
            "filtered": bool(filtered),
            "horizon_method": horizon_method,
            "sigma_now": {c: float(sig_now[need.index(c)]) for c in coins},
            "proxied_days": {c: int(proxied[:, j].sum()) for j, c in enumerate(coins)},
            "vol_from_dvol": int(have_dvol.sum()),
            "vol_from_proxy": int((~have_dvol).sum()),
        },
    )


__all__ = ["historical_scenarios", "ewma_sigma", "DEFAULT_STRESS_PERIODS"]
