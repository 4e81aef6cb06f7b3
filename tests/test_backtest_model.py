"""The house-model fixes the backtest asked for, each checked against an independent computation: the FHS
volatility floor and ratio cap, the point-in-time squeezes and the rally in the stress set, the per-coin APC
release, the Art. 28(1)(c) floor, and the GARCH-t / adaptive filters of the historical scenarios."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gpurisk import margin as gm
from gpurisk.book import Book
from gpurisk.margin import components, house
from gpurisk.market import MarketStore, shipped_dir
from gpurisk.scenarios import historical_scenarios, volfilter

STORE = MarketStore(shipped_dir())


def raw_close(coin):
    return pd.read_csv(shipped_dir() / "market" / "daily" / f"{coin}USDT_1d.csv", index_col="timestamp",
                       parse_dates=True)["close"]


def ewma_loop(r, lam):
    v = [float(np.mean(r[:30] ** 2))]
    for x in r:
        v.append(lam * v[-1] + (1 - lam) * x * x)
    return np.sqrt(v)


# --------------------------------------------------------------------------- FHS floor and cap


def test_vol_floor_bounds_a_calm_day_jump():
    # XRP's 2023-07-13 court-ruling jump came on a calm day: the plain filter blows it up by σ_now / σ_then
    as_of = "2024-12-20"
    plain = historical_scenarios(as_of, coins=("XRP",), horizon_days=1, lookback_days=600, ewma_lambda=0.97,
                                 include_periods=(), market=STORE)
    floored = historical_scenarios(as_of, coins=("XRP",), horizon_days=1, lookback_days=600, ewma_lambda=0.97,
                                   include_periods=(), market=STORE, vol_floor=1.0)
    c = raw_close("XRP").loc[:"2024-12-19"]
    r = np.diff(np.log(c.to_numpy()))
    sig = ewma_loop(r, 0.97)  # sig[t]: the forecast for r[t]
    rms = np.sqrt(np.cumsum(np.concatenate([[0.0], r * r])) / np.maximum(np.arange(len(r) + 1), 30))
    rms[:30] = np.sqrt(np.mean(r[:30] ** 2))
    t = c.index.get_loc(pd.Timestamp("2023-07-13")) - 1  # the return into 2023-07-13
    row = list(plain.scenario_id).index("2023-07-13")
    assert plain.price_shock[row, 0] == pytest.approx(math.expm1(r[t] * sig[-1] / sig[t]), rel=1e-9)
    want = math.expm1(r[t] * sig[-1] / max(sig[t], rms[t]))
    assert floored.price_shock[row, 0] == pytest.approx(want, rel=1e-9)
    assert floored.price_shock[row, 0] < plain.price_shock[row, 0]
    assert floored.metadata["vol_floor"] == 1.0 and "floored" in floored.source
    # a floor of 0 is the plain filter, and a cap bounds every ratio
    zero = historical_scenarios(as_of, coins=("XRP",), horizon_days=1, lookback_days=600, ewma_lambda=0.97,
                                include_periods=(), market=STORE, vol_floor=0.0)
    np.testing.assert_array_equal(zero.price_shock, plain.price_shock)
    capped = historical_scenarios(as_of, coins=("XRP",), horizon_days=1, lookback_days=600, ewma_lambda=0.97,
                                  include_periods=(), market=STORE, ratio_cap=1.5)
    ids = pd.to_datetime(list(capped.scenario_id))
    rr = np.log(c / c.shift(1)).reindex(ids).to_numpy()
    assert np.all(np.abs(np.log1p(capped.price_shock[:, 0])) <= 1.5 * np.abs(rr) + 1e-12)


@pytest.mark.parametrize("kw,match", [(dict(vol_floor=-1.0), "vol_floor"), (dict(ratio_cap=0.0), "ratio_cap"),
                                      (dict(vol_filter="arima"), "vol_filter")])
def test_bad_filter_bounds(kw, match):
    from gpurisk.errors import ScenarioError

    with pytest.raises(ScenarioError, match=match):
        historical_scenarios("2023-01-01", market=STORE, **kw)


# --------------------------------------------------------------------------- squeezes and the rally


def _stress(as_of, **kw):
    p = components.ComponentParams(horizon_days=2.0, squeezes="coin", squeeze_cap=1.0, rally_shock=0.3, **kw)
    return components.stress_component(("BTC", "DOGE", "XRP"), p, STORE, pd.Timestamp(as_of))


def test_squeezes_are_point_in_time_and_capped():
    before = _stress("2021-01-20")
    after = _stress("2021-02-10")
    ids_b, ids_a = list(before.scenario_id), list(after.scenario_id)
    doge_b = [i for i in ids_b if i.startswith("squeeze_DOGE")]
    doge_a = [i for i in ids_a if i.startswith("squeeze_DOGE")]
    assert doge_b and doge_a and doge_b != doge_a
    assert doge_a[0] == "squeeze_DOGE_2d_2021-01-29"  # DOGE +519 % over 2021-01-27..29, known from 2021-01-30
    row = ids_a.index(doge_a[0])
    u = list(after.underlyings)
    c = STORE.daily_closes(("BTC", "DOGE", "XRP"))
    move = c.loc["2021-01-29"] / c.loc["2021-01-27"] - 1.0
    assert after.price_shock[row, u.index("DOGE")] == pytest.approx(1.0)  # capped at +100 %
    assert after.price_shock[row, u.index("BTC")] == pytest.approx(move["BTC"], rel=1e-12)
    assert after.price_shock[row, u.index("XRP")] == pytest.approx(min(move["XRP"], 1.0), rel=1e-12)
    rally = ids_a.index("rally_30")
    assert np.allclose(after.price_shock[rally, [u.index(x) for x in ("BTC", "DOGE", "XRP")]], 0.3)
    assert after.price_shock[rally, u.index("USDT")] == 0.0
    # nothing after the as-of: the largest BTC rise known at 2021-01-20 is the one that was largest then
    a, b, rise = components.largest_rise(STORE, "BTC", 2, pd.Timestamp("2021-01-20"))
    lr = np.log(raw_close("BTC").loc[:"2021-01-19"]).diff(2)
    assert b == lr.idxmax() and rise == pytest.approx(math.expm1(lr.max()))


def test_shorts_pay_a_stress_charge_now():
    ins = pd.DataFrame([("P", "binance", "BTC", "perpetual", "linear", 1.0, None, None, None)],
                       columns=["instrument_id", "venue", "underlying", "kind", "settlement", "contract_size", "expiry",
                                "strike", "option_type"])
    tabs = dict(instruments=ins, market=pd.DataFrame({"instrument_id": ["P"], "underlying_price": [50_000.0],
                                                      "implied_vol": [None]}),
                index=pd.DataFrame({"underlying": ["BTC"], "price": [50_000.0]}),
                positions=pd.DataFrame({"account_id": ["short", "long"], "instrument_id": ["P", "P"],
                                        "quantity": [-1.0, 1.0]}),
                balances=pd.DataFrame(columns=["account_id", "venue", "asset", "amount"]))
    book = Book.from_frames("2024-06-01T00:00:00Z", **tabs)
    p = house.Params(cross_venue=False, mc_scenarios=0)
    m = gm.compute(book, "house", params=p, backend="reference").margin.set_index("account_id")
    assert m.loc["short", "stress_charge"] >= 0.33 * 0.30 * 50_000.0 - 1e-6  # the rally at least
    old = gm.compute(book, "house", params=house.Params(cross_venue=False, mc_scenarios=0, squeezes="none",
                                                        rally_shock=0.0), backend="reference").margin
    assert old.set_index("account_id").loc["short", "stress_charge"] <= 0.0  # every named scenario was a fall


# --------------------------------------------------------------------------- the APC release per coin


def test_own_apc_release_weights_each_coin_by_gross_delta():
    ins = pd.DataFrame([(f"{c}-P", "binance", c, "perpetual", "linear", 1.0, None, None, None)
                        for c in ("BTC", "DOGE")],
                       columns=["instrument_id", "venue", "underlying", "kind", "settlement", "contract_size", "expiry",
                                "strike", "option_type"])
    px = {"BTC": 30_000.0, "DOGE": 0.3}
    tabs = dict(instruments=ins,
                market=pd.DataFrame({"instrument_id": ["BTC-P", "DOGE-P"], "underlying_price": [px["BTC"], px["DOGE"]],
                                     "implied_vol": [None, None]}),
                index=pd.DataFrame({"underlying": ["BTC", "DOGE"], "price": [px["BTC"], px["DOGE"]]}),
                positions=pd.DataFrame({"account_id": ["a", "a", "b"], "instrument_id": ["BTC-P", "DOGE-P", "BTC-P"],
                                        "quantity": [1.0 / px["BTC"] * 3, -1.0 / px["DOGE"], 1.0 / px["BTC"]]}),
                balances=pd.DataFrame(columns=["account_id", "venue", "asset", "amount"]))
    date = "2021-01-29"  # DOGE in its squeeze, BTC calm
    book = Book.from_frames(pd.Timestamp(date) + pd.Timedelta(days=1), **tabs)
    p = house.Params(cross_venue=False, mc_scenarios=0)
    m = gm.compute(book, "house", params=p, backend="reference").margin.set_index("account_id")
    btc = house.apc_state(pd.Timestamp(date), p, STORE, coin="BTC")["buffer_rate"]
    doge = house.apc_state(pd.Timestamp(date), p, STORE, coin="DOGE")["buffer_rate"]
    assert doge < btc  # DOGE's own vol releases its buffer
    assert m.loc["b", "apc_buffer"] == pytest.approx(btc * m.loc["b", "base"], rel=1e-9)
    assert m.loc["a", "apc_buffer"] == pytest.approx((3 * btc + doge) / 4 * m.loc["a", "base"], rel=1e-6)
    # with one indicator coin, every portfolio has that coin's rate
    q = house.Params(cross_venue=False, mc_scenarios=0, apc_indicator="BTC")
    n = gm.compute(book, "house", params=q, backend="reference").margin.set_index("account_id")
    assert n.loc["a", "apc_buffer"] == pytest.approx(btc * n.loc["a", "base"], rel=1e-12)


# --------------------------------------------------------------------------- the Art. 28(1)(c) floor


def test_apc_floor_is_the_unfiltered_long_lookback_es():
    from gpurisk.backtest.portfolios import standard_book, subset
    from gpurisk.backends import reference
    from gpurisk.margin.common import map_scenarios
    from gpurisk.tail import spec_for

    book = standard_book()
    keep = np.isin(book.accounts, ["long_BTC", "short_ETH"])
    book = subset(book, keep)
    book = house_book_asof(book, "2024-06-02T00:00:00Z")
    p = house.Params(cross_venue=False, mc_scenarios=0, apc_floor=1.0)
    res = gm.compute(book, "house", params=p, backend="reference").margin.set_index("account_id")
    fset = historical_scenarios(pd.Timestamp("2024-06-02"), coins=("BTC", "ETH"), horizon_days=2, lookback_days=3650,
                                filtered=False, include_periods=(), market=STORE)
    idx, s = map_scenarios(book, fset)
    from gpurisk.pricing import pricing_inputs

    P = reference.revalue(pricing_inputs(book, idx), s)
    es = reference.tail_stats(book.portfolios("account"), P, spec_for(s, (0.99,))).es[:, 0]
    want = pd.Series(es, index=book.accounts)
    for a in ("long_BTC", "short_ETH"):
        assert res.loc[a, "apc_floor"] == pytest.approx(want[a], rel=1e-9)
        assert res.loc[a, "base"] >= want[a] - 1e-12


def house_book_asof(book: Book, as_of) -> Book:
    from dataclasses import replace

    from gpurisk.book import to_utc_seconds

    return replace(book, as_of=to_utc_seconds(as_of), instruments=replace(
        book.instruments, expiry=np.where(np.isnat(book.instruments.expiry), book.instruments.expiry,
                                          book.instruments.expiry - np.timedelta64(200, "D"))))


# --------------------------------------------------------------------------- GARCH-t and the adaptive filter


def test_garch_filter_scenarios_use_a_point_in_time_fit():
    s = historical_scenarios("2023-03-15", coins=("BTC",), horizon_days=1, lookback_days=300, include_periods=(),
                             market=STORE, vol_filter="garch")
    fit = s.metadata["filter_fits"]["BTC"]
    assert fit["filter"] == "garch_t" and fit["refit_date"] <= "2023-03-14"
    c = raw_close("BTC")
    r = np.diff(np.log(c.loc[:fit["refit_date"]].to_numpy()))[-volfilter.FIT_DAYS:]
    again = volfilter.fit_garch_t(r)
    assert again.alpha == pytest.approx(fit["alpha"], rel=1e-6) and again.nu == pytest.approx(fit["nu"], rel=1e-6)
    full = np.diff(np.log(c.loc[:"2023-03-14"].to_numpy()))
    sig = volfilter.garch_sigma(full * 100, fit["omega"], fit["alpha"], fit["beta"]) / 100
    assert s.metadata["sigma_now"]["BTC"] == pytest.approx(sig[-1], rel=1e-9)


def test_adaptive_choice_is_the_best_validation_likelihood():
    c = raw_close("ETH").loc[:"2023-06-30"]
    r = np.diff(np.log(c.to_numpy()))
    name, what = volfilter.choose_filter(r, len(r), 0.97)
    lo = len(r) - volfilter.VALIDATION_DAYS
    scores = {f"ewma_{lam:g}": volfilter.gaussian_loglik(r[lo:], volfilter.ewma_sigma(r, lam)[lo:-1])
              for lam in volfilter.EWMA_GRID}
    g = volfilter.fit_through(r, lo)
    scores["garch_t"] = volfilter.gaussian_loglik(r[lo:], volfilter.forecast_path(r, "garch_t", g)[lo:-1])
    assert name == max(scores, key=scores.get)
