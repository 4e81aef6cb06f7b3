"""Filtered historical simulation (FHS) from the daily closes of the market history store (``gpurisk.market``).

Each scenario is one historical window ``[d−h, d]`` (h = horizon in days), with the
joint moves of all coins on the same dates, so correlation is the real one.

Rules (docs/data-format.md ("Scenario sets") repeats them):

- **As-of.** A daily bar dated d closes at d+1 00:00 UTC; it is used only if that
  time is ≤ ``as_of``. Nothing after the as-of is read (the store's point-in-time reads).
- **Volatility filter.** Per coin, on its daily log returns r_t, ``vol_filter="ewma"``:
  σ²_t = λ·σ²_{t−1} + (1−λ)·r²_{t−1}, started at the mean r² of the coin's first
  30 returns; ``"garch"`` / ``"adaptive"``: a GARCH(1,1)-t or the per-coin choice of
  ``gpurisk.scenarios.volfilter`` (re-fitted on its schedule, point in time). σ_now = the
  forecast for the day after the last bar. Each return is rescaled
  r̃_t = r_t · min(σ_now/σ̃_t, ``ratio_cap``) with the *floored* historical vol
  σ̃_t = max(σ_t, ``vol_floor``·σ̄_t), σ̄_t the coin's long-run vol (root mean square of
  its returns from its listing up to r_{t−1}, at least its first 30): a jump on a calm
  day is not blown up by a tiny σ_t. ``vol_floor = 0`` and ``ratio_cap = inf`` are the
  plain filter; ``filtered=False``: r̃_t = r_t, ratio 1.
- **Horizon.** ``horizon_method="overlapping"``: the h-day log move is the sum of
  the h daily r̃ ending on d (overlapping windows, one per day; unfiltered this is
  exactly log(C_d/C_{d−h})); ``"sqrt"``: r̃_d·√h. price_shock = exp(move) − 1.
- **Dates.** The last ``lookback_days`` window ends, plus every window end inside
  ``include_periods`` (stress periods pinned in, default 2020-03 and
  2022-05..2022-11), each taken at most once.
- **Coins before listing.** A coin without a close on a date takes BTC's
  standardised move scaled to its own current vol: r̃_c = r_BTC,t·σ_c,now/σ̃_BTC,t
  (unfiltered: r_BTC,t·σ_c,now/σ_BTC,now). ``metadata["proxied_days"]`` counts them.
- **Vol shocks** (relative mode): BTC's DVOL log change over the window,
  v = exp(β_c·log(DVOL_d/DVOL_{d−h})) − 1, with β_BTC = 1 and β_c = ``vol_beta``
  (default 1.0 for every other coin: an assumption, there is no ETH/SOL DVOL in the
  data). Before DVOL exists (it starts 2021-03-24) the proxy is the coin's filter vol
  change over the window, σ_{d+1}/σ_{d−h+1} − 1 (unfloored).

The as-of-invariant work (returns, filter paths, long-run vols, DVOL on the dates, date labels) is
computed once per history folder and kept (``MarketStore.memo``): every filter is causal, so the
history known at an earlier as-of is a prefix of it, and a rolling backtest pays only the rescaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..book import to_utc_seconds
from ..errors import ScenarioError
from ..market import COINS, market_store
from .scenario_set import ScenarioSet
from .volfilter import EWMA_SEED_RETURNS, ewma_sigma, long_run_sigma, sigma_paths

#: stress periods pinned into the lookback by default (inclusive window-end dates)
DEFAULT_STRESS_PERIODS = (("2020-03-01", "2020-03-31"), ("2022-05-01", "2022-11-30"))
#: the coin whose moves stand in for a coin not yet listed
PROXY_COIN = "BTC"
#: the volatility filters of the scenarios
VOL_FILTERS = ("ewma", "garch", "adaptive")


def _closes_until(closes: pd.DataFrame, as_of) -> pd.DataFrame:
    t = pd.Timestamp(to_utc_seconds(as_of))
    return closes.loc[closes.index + pd.Timedelta(days=1) <= t]


@dataclass(frozen=True)
class _Panel:
    """The as-of-invariant history of ``need`` (the proxy coin first): dates [T] (daily), r [T−1, C]
    (r[t] is the return into dates[t+1]), first [C] (the first finite return of each coin, −1 if none),
    dvol [T] (DVOL on each date, NaN where there is none), day [T] ISO date strings."""

    need: tuple
    dates: pd.DatetimeIndex
    r: np.ndarray
    first: np.ndarray
    dvol: np.ndarray
    day: np.ndarray


def _panel(closes: pd.DataFrame, dv: pd.Series, need: tuple) -> _Panel:
    closes = closes[list(need)].sort_index()
    closes = closes.loc[closes[PROXY_COIN].first_valid_index():] if closes[PROXY_COIN].notna().any() else closes
    if len(closes) > 1 and not (closes.index.to_series().diff().dropna() == pd.Timedelta(days=1)).all():
        closes = closes.asfreq("D")  # gaps become NaN days: a coin with no close takes the proxy
    logc = np.log(closes.to_numpy(dtype=np.float64))
    r = np.diff(logc, axis=0)
    ok = np.isfinite(r)
    first = np.where(ok.any(axis=0), np.argmax(ok, axis=0), -1)
    dates = pd.DatetimeIndex(closes.index)
    dvol = dv.reindex(dates).to_numpy(dtype=np.float64) if len(dv) else np.full(len(dates), np.nan)
    day = np.datetime_as_string(dates.to_numpy(dtype="datetime64[D]"), unit="D").astype(object)
    return _Panel(need, dates, r, first, dvol, day)


def _sigma_paths(p: _Panel, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(σ [T, C] EWMA, σ̄ [T, C] long-run) from each coin's first return (NaN before); causal in time."""
    T1, C = p.r.shape
    sig = np.full((T1 + 1, C), np.nan)
    lr = np.full((T1 + 1, C), np.nan)
    for j in range(C):  # a handful of coins
        f = int(p.first[j])
        if f < 0:
            continue
        x = p.r[f:, j]
        bad = ~np.isfinite(x)
        stop = len(x) if not bad.any() else int(np.argmax(bad))  # a gap: the paths end before it (checked later)
        sig[f:f + stop + 1, j] = ewma_sigma(x[:stop], lam)
        lr[f:f + stop + 1, j] = long_run_sigma(x[:stop])
    return sig, lr


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
    market=None,
    vol_floor: float = 0.0,
    ratio_cap: float = math.inf,
    vol_filter: str = "ewma",
) -> ScenarioSet:
    """FHS scenarios [S, U] for ``coins`` at ``as_of`` (rules in the module docstring).

    History comes from ``market`` (a ``gpurisk.market.MarketStore``, a history folder, or None for the
    default store), read as known at ``as_of``; ``closes`` [dates, coins] / ``dvol_series`` (decimal)
    replace its closes / DVOL (they are cut at ``as_of`` too). ``vol_floor`` ≥ 0 (share of the long-run vol)
    and ``ratio_cap`` > 0 bound the filter ratio; ``vol_filter``: ``ewma``, ``garch`` or ``adaptive``.
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
    if not (vol_floor >= 0.0 and math.isfinite(vol_floor)):
        raise ScenarioError(f"vol_floor must be a finite number >= 0, got {vol_floor}")
    if not ratio_cap > 0.0:
        raise ScenarioError(f"ratio_cap must be > 0, got {ratio_cap}")
    if vol_filter not in VOL_FILTERS:
        raise ScenarioError(f"vol_filter must be one of {', '.join(VOL_FILTERS)}, got {vol_filter!r}")
    need = tuple(dict.fromkeys((PROXY_COIN,) + coins))
    store = market_store(market) if closes is None or dvol_series is None else None
    where = "the caller's closes" if closes is not None else store.name
    t_as_of = pd.Timestamp(to_utc_seconds(as_of))
    if closes is None:
        unknown = [c for c in need if not store.has_daily(c)]
        if unknown:
            raise ScenarioError(f"no daily history for {unknown} in {store.name}; have {list(store.coins())}")
    else:
        missing = [c for c in need if c not in closes.columns]
        if missing:
            raise ScenarioError(f"no close history for {missing}")
    if closes is None and dvol_series is None:
        # the whole folder's history, once per folder state: every later as-of reads a prefix of it
        panel = store.memo(("historical.panel", need), lambda: _panel(store.daily_closes(need), store.dvol(), need))
        paths = store.memo(("historical.sigma", need, float(ewma_lambda)), lambda: _sigma_paths(panel, ewma_lambda))
    else:
        c_in = store.daily_closes(need, as_of=as_of) if closes is None else _closes_until(closes, as_of)
        dv_in = store.dvol(as_of=as_of) if dvol_series is None else dvol_series
        dv_in = _closes_until(dv_in.to_frame("dvol"), as_of)["dvol"]
        panel = _panel(c_in, dv_in, need)
        paths = _sigma_paths(panel, ewma_lambda)
    # the dates known at the as-of: a bar dated d closes at d+1 00:00 UTC
    n = int(np.searchsorted(panel.dates.asi8 + pd.Timedelta(days=1).value, t_as_of.value, side="right"))
    if n < h + EWMA_SEED_RETURNS + 1:
        raise ScenarioError(f"too little history before as-of {as_of} ({n} daily closes)")
    r = panel.r[: n - 1]
    T1, C = r.shape
    sig_raw, sig_lr = paths[0][:n], paths[1][:n]
    for j in range(C):  # a handful of coins
        f = int(panel.first[j])
        if f < 0 or f >= T1:
            raise ScenarioError(f"{need[j]} has no returns on or before as-of {as_of}")
        if not np.isfinite(r[f:, j]).all():
            raise ScenarioError(f"{need[j]} has gaps in its close history after its listing; fill or drop them")
        if T1 - f < EWMA_SEED_RETURNS:
            raise ScenarioError(f"{need[j]} has only {T1 - f} returns before as-of {as_of}; need {EWMA_SEED_RETURNS}")
    sig = sig_raw
    fits = {}
    if vol_filter != "ewma":
        sig, fits = sigma_paths(panel, need, n, vol_filter, ewma_lambda, store)
    sig_now = sig[-1]  # [C]
    b = 0
    if filtered:
        then = np.fmax(sig[:-1], vol_floor * sig_lr[:-1]) if vol_floor > 0 else sig[:-1]
        ratio = np.minimum(sig_now[None, :] / then, ratio_cap)
        rt = r * ratio
        proxy = r[:, [b]] * np.minimum(sig_now[None, :] / then[:, [b]], ratio_cap)
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
    dates = panel.dates[:n]
    end_dates = dates[ends + 1]
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
    cols = [need.index(c) for c in coins]
    move = move[rows][:, cols]
    proxied = proxied[rows][:, cols]
    e_idx = ends[rows]  # window r[e-h+1 .. e]: from date index e+1-h to e+1

    # vol shocks
    betas = np.array([1.0 if c == "BTC" else float(vol_beta.get(c, 1.0) if isinstance(vol_beta, dict) else vol_beta)
                      for c in coins])
    d1 = panel.dvol[e_idx + 1]
    d0 = panel.dvol[e_idx + 1 - h]
    with np.errstate(divide="ignore", invalid="ignore"):
        dlog = np.log(d1 / d0)
    have_dvol = np.isfinite(dlog)
    vol_shock = np.expm1(betas[None, :] * dlog[:, None])
    # proxy: filter vol change over the window, sig index of date dates[k] is k (forecast made after bar k-1)
    sig_c = sig[:, cols]
    sig_b = sig[:, [b]]
    prox_v = sig_c[e_idx + 1] / sig_c[e_idx + 1 - h] - 1.0
    prox_b = sig_b[e_idx + 1] / sig_b[e_idx + 1 - h] - 1.0
    prox_v = np.where(np.isfinite(prox_v), prox_v, betas[None, :] * prox_b)
    vol_shock = np.where(have_dvol[:, None], vol_shock, prox_v)

    S = len(rows)
    ids = panel.day[e_idx + 1]
    labels = np.array([f"hist {a}..{e}" for a, e in zip(panel.day[e_idx + 1 - h], ids)], dtype=object)
    last_bar = str(panel.day[n - 1])
    bound = (f"; historical vol floored at {vol_floor:g} x long-run vol" if vol_floor > 0 else "") + \
        (f"; ratio capped at {ratio_cap:g}" if math.isfinite(ratio_cap) else "")
    src = (
        f"filtered historical simulation from the daily closes of {where} ({', '.join(coins)}) up to bar {last_bar} "
        f"(as-of {t_as_of}); "
        + (f"EWMA lambda {ewma_lambda:g}, " if vol_filter == "ewma" else f"{vol_filter} volatility filter, ")
        + f"{'filtered sigma_now/sigma_then' if filtered else 'unfiltered (ratio 1)'}{bound if filtered else ''}; "
        f"horizon {h}d {horizon_method}; "
        f"lookback {lookback_days} windows + pinned {', '.join(pinned) or 'none'}; "
        f"vol shocks from BTC DVOL log changes (beta {vol_beta}), "
        "filter-vol-change proxy before DVOL"
    )
    meta = {
        "as_of": str(t_as_of),
        "last_bar": last_bar,
        "ewma_lambda": float(ewma_lambda),
        "vol_filter": vol_filter,
        "filtered": bool(filtered),
        "vol_floor": float(vol_floor),
        "ratio_cap": float(ratio_cap),
        "horizon_method": horizon_method,
        "sigma_now": {c: float(sig_now[need.index(c)]) for c in coins},
        "proxied_days": {c: int(proxied[:, j].sum()) for j, c in enumerate(coins)},
        "vol_from_dvol": int(have_dvol.sum()),
        "vol_from_proxy": int((~have_dvol).sum()),
    }
    if fits:
        meta["filter_fits"] = fits
    return ScenarioSet(
        underlyings=coins,
        price_shock=np.expm1(move),
        vol_shock=vol_shock,
        vol_mode=np.zeros(S, np.int8),
        weight=np.ones(S),
        pnl_factor=np.ones(S),
        label=labels,
        scenario_id=ids.copy(),
        horizon_days=float(h),
        kind="historical",
        seed=None,
        source=src,
        metadata=meta,
    )


__all__ = ["historical_scenarios", "ewma_sigma", "long_run_sigma", "EWMA_SEED_RETURNS", "DEFAULT_STRESS_PERIODS",
           "VOL_FILTERS"]
