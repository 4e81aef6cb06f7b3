"""The point-in-time backtest: no look-ahead, the same rows for any worker count and block size, the standard
portfolios, the realised P&L by hand, and ``gpurisk backtest`` on a synthetic history with a known answer."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import gpurisk.backtest as bt
from gpurisk.backtest import engine, portfolios as pf
from gpurisk.book import Book
from gpurisk.margin import house
from gpurisk.market import MarketStore, shipped_dir

#: a cheap house model for tests: FHS only (no Monte Carlo), as the shipped defaults otherwise
FAST = dict(cross_venue=False, mc_scenarios=0)


def synthetic_history(folder, coins=("BTC", "ETH"), days=900, vol=0.03, seed=11, start="2019-01-01"):
    """A history folder of i.i.d. normal daily log returns (``vol`` per day) for ``coins``: the known answer."""
    rng = np.random.default_rng(seed)
    d = folder / "market" / "daily"
    d.mkdir(parents=True)
    dates = pd.date_range(start, periods=days, freq="D")
    for i, c in enumerate(coins):
        r = rng.normal(0.0, vol, days)
        close = 100.0 * (i + 1) * np.exp(np.cumsum(r))
        df = pd.DataFrame({"timestamp": dates.strftime("%Y-%m-%d"), "open": close, "high": close * 1.01,
                           "low": close * 0.99, "close": close, "volume": 1e9})
        df.to_csv(d / f"{c}USDT_1d.csv", index=False)
    return folder


def perp_book(folder, coins=("BTC", "ETH"), as_of="2021-06-01T00:00:00Z"):
    """A book folder of long and short 1-USD linear perpetuals on ``coins`` (prices of the template: 100, 200)."""
    from gpurisk.io import write_book

    ins = pd.DataFrame([(f"{c}-PERP", "binance", c, "perpetual", "linear", 1.0, None, None, None) for c in coins],
                       columns=["instrument_id", "venue", "underlying", "kind", "settlement", "contract_size",
                                "expiry", "strike", "option_type"])
    px = {c: 100.0 * (i + 1) for i, c in enumerate(coins)}
    tables = {
        "instruments": ins,
        "market": pd.DataFrame([(f"{c}-PERP", px[c], None) for c in coins],
                               columns=["instrument_id", "underlying_price", "implied_vol"]),
        "index": pd.DataFrame([(c, px[c]) for c in coins] + [("USDT", 1.0)], columns=["underlying", "price"]),
        "positions": pd.DataFrame([(f"{s}_{c}", f"{c}-PERP", sgn / px[c]) for c in coins
                                   for s, sgn in (("long", 1.0), ("short", -1.0))],
                                  columns=["account_id", "instrument_id", "quantity"]),
        "balances": pd.DataFrame([("long_BTC", "binance", "USDT", 10.0)],
                                 columns=["account_id", "venue", "asset", "amount"]),
    }
    return write_book(folder, tables, {"as_of": as_of}, fmt="csv")


def _setup(store, params=None, book=None, h=None):
    book = book if book is not None else bt.standard_portfolios()
    params = params or house.Params(**FAST)
    return engine.make_setup("house", params, pf.hold_constant(book, store), store, h, "reference")


# --------------------------------------------------------------------------- the standard portfolios


def test_shipped_standard_portfolios_are_the_generator_s():
    from gpurisk.io import load_book

    shipped = load_book(shipped_dir() / "backtest" / "standard_portfolios")
    assert len(shipped.rejects) == 0
    tables, meta = pf.standard_tables()
    gen = Book.from_frames(meta["as_of"], **tables)
    b = shipped.book
    assert list(b.accounts) == list(gen.accounts)
    np.testing.assert_allclose(b.positions.quantity, gen.positions.quantity, rtol=1e-12)
    np.testing.assert_allclose(b.market.underlying_price, gen.market.underlying_price, rtol=1e-12)
    np.testing.assert_allclose(np.nan_to_num(b.instruments.strike), np.nan_to_num(gen.instruments.strike), rtol=1e-9)
    names = set(b.accounts)
    for c in ("BTC", "ETH", "SOL", "XRP", "BNB", "DOGE", "ADA"):
        assert {f"long_{c}", f"short_{c}"} <= names
    assert {"long_BTC_short_ETH", "long_ETH_short_SOL", "basis_BTC", "short_straddle_BTC", "short_strangle_BTC",
            "long_call_spread_BTC", "long_BTC_inverse_BTC_collateral"} <= names


def test_every_leg_is_one_usd_of_notional():
    b = bt.standard_portfolios()
    n = pd.Series(pf.portfolio_notional(b), index=b.accounts)
    for c in ("BTC", "ETH", "SOL", "XRP", "BNB", "DOGE", "ADA"):
        assert n[f"long_{c}"] == pytest.approx(1.0) and n[f"short_{c}"] == pytest.approx(1.0)
    assert n["short_straddle_BTC"] == pytest.approx(2.0) and n["long_BTC_inverse_BTC_collateral"] == pytest.approx(1.0)


def test_strangle_strikes_are_25_delta():
    from scipy.stats import norm

    b = bt.standard_portfolios()
    ins, m = b.instruments, b.market
    T = 30.0 / 365.0
    for i in np.flatnonzero(ins.kind == 3):
        F, K, s = m.underlying_price[i], ins.strike[i], m.implied_vol[i]
        d1 = (math.log(F / K) + 0.5 * s * s * T) / (s * math.sqrt(T))
        delta = norm.cdf(d1) if ins.option_type[i] == 1 else norm.cdf(d1) - 1.0
        assert K == pytest.approx(F, abs=0.01) or abs(delta) == pytest.approx(0.25, abs=1e-4)  # ATM or 25-delta
    wings = [i for i in np.flatnonzero(ins.kind == 3) if abs(ins.strike[i] - m.underlying_price[i]) > 1]
    assert len(wings) == 2


def test_day_book_keeps_notional_moneyness_and_tenor():
    store = MarketStore(shipped_dir())
    cb = pf.hold_constant(bt.standard_portfolios(), store)
    day = pf.day_book(cb, "2022-06-15", store)
    assert pd.Timestamp(day.as_of) == pd.Timestamp("2022-06-16")
    np.testing.assert_allclose(pf.portfolio_notional(day), pf.portfolio_notional(cb.book), rtol=1e-12)
    opt = np.flatnonzero(day.instruments.kind == 3)
    np.testing.assert_allclose(day.instruments.strike[opt] / day.market.underlying_price[opt],
                               cb.book.instruments.strike[opt] / cb.book.market.underlying_price[opt], rtol=1e-12)
    np.testing.assert_allclose(day.time_to_expiry()[opt], 30.0 / 365.0, rtol=1e-12)
    dv = store.dvol().loc["2022-06-15"]
    np.testing.assert_allclose(day.market.implied_vol[opt], dv, rtol=1e-12)  # the ATM level of that day


# --------------------------------------------------------------------------- point in time


def test_planting_an_extreme_move_after_d_leaves_the_im_as_of_d(tmp_path):
    src = shipped_dir()
    dst = tmp_path / "hist"
    shutil.copytree(src / "market", dst / "market")
    shutil.copytree(src / "options", dst / "options")
    d = pd.Timestamp("2022-03-10")
    for f in (dst / "market" / "daily").glob("*.csv"):  # every coin x10 from d + 3 on (after the 2-day P&L)
        df = pd.read_csv(f)
        after = pd.to_datetime(df["timestamp"]) > d + pd.Timedelta(days=2)
        for c in ("open", "high", "low", "close"):
            df.loc[after, c] = df.loc[after, c] * 10.0
        df.to_csv(f, index=False)
    dv = pd.read_csv(dst / "options" / "deribit_btc_dvol_daily.csv")
    dv.loc[pd.to_datetime(dv["date"]) > d + pd.Timedelta(days=2), "dvol"] = 400.0
    dv.to_csv(dst / "options" / "deribit_btc_dvol_daily.csv", index=False)
    params = house.Params(cross_venue=False, mc_scenarios=2000, squeezes="coin", apc_floor=0.5)
    a = engine.day_rows(_setup(MarketStore(src), params), d, MarketStore(src))
    b = engine.day_rows(_setup(MarketStore(dst), params), d, MarketStore(dst))
    assert len(a) == 21
    pd.testing.assert_frame_equal(a, b)
    # and the plant is seen from the day it is known: the IM of d + 3 differs
    a3 = engine.day_rows(_setup(MarketStore(src), params), d + pd.Timedelta(days=3), MarketStore(src))
    b3 = engine.day_rows(_setup(MarketStore(dst), params), d + pd.Timedelta(days=3), MarketStore(dst))
    assert not np.allclose(a3["im"], b3["im"])


def test_realised_pnl_by_hand():
    store = MarketStore(shipped_dir())
    rows = engine.day_rows(_setup(store), "2021-05-17", store).set_index("portfolio")
    c = store.daily_closes()
    move = c.loc["2021-05-19"] / c.loc["2021-05-17"] - 1.0
    assert rows.loc["long_ETH", "pnl"] == pytest.approx(move["ETH"], rel=1e-12)
    assert rows.loc["short_DOGE", "pnl"] == pytest.approx(-move["DOGE"], rel=1e-12)
    assert rows.loc["long_BTC_short_ETH", "pnl"] == pytest.approx(move["BTC"] - move["ETH"], rel=1e-12)
    # inverse perpetual (1 USD) + 1 USD of BTC collateral: twice the BTC move
    assert rows.loc["long_BTC_inverse_BTC_collateral", "pnl"] == pytest.approx(2 * move["BTC"], rel=1e-12)
    # the short straddle: Black-76 at the closes, the ATM vol level (DVOL) of each day, 2 days of decay
    from gpurisk.pricing import black76

    dv = store.dvol()
    S0, S1 = c.loc["2021-05-17", "BTC"], c.loc["2021-05-19", "BTC"]
    T0, T1 = 30 / 365, 28 / 365
    v0 = sum(black76(np, S0, S0, T0, dv.loc["2021-05-17"], w) for w in (1, -1)) / S0
    v1 = sum(black76(np, S1, S0, T1, dv.loc["2021-05-19"], w) for w in (1, -1)) / S0
    assert rows.loc["short_straddle_BTC", "pnl"] == pytest.approx(-(v1 - v0), rel=1e-9)
    assert rows["exception"].equals(-rows["pnl"] > rows["im"])


def test_a_portfolio_takes_part_only_with_enough_history():
    store = MarketStore(shipped_dir())
    cb = pf.hold_constant(bt.standard_portfolios(), store)
    act = dict(zip(cb.accounts, pf.active_accounts(cb, "2020-09-01", 2, store)))
    assert not act["long_SOL"] and not act["long_ETH_short_SOL"] and act["long_BTC"]  # SOL lists 2020-08-11
    act = dict(zip(cb.accounts, pf.active_accounts(cb, "2024-12-30", 2, store)))
    assert not any(act.values())  # no close two days later
    assert all(pf.active_accounts(cb, "2024-12-29", 2, store))


# --------------------------------------------------------------------------- Dask


def test_rows_do_not_depend_on_workers_or_blocks():
    from gpurisk.batch.cluster import open_client

    store = MarketStore(shipped_dir())
    setup = _setup(store)
    days = engine.check_range("2021-05-10", "2021-05-21")
    serial = engine.compute(setup, days, None, block_days=12)
    with open_client(workers=1) as c1:
        one = engine.compute(setup, days, c1, block_days=5)
    with open_client(workers=2) as c2:
        two = engine.compute(setup, days, c2, block_days=3)
    pd.testing.assert_frame_equal(serial, one)
    pd.testing.assert_frame_equal(serial, two)
    assert len(serial) == 12 * 21


def test_variants_equal_their_own_backtests():
    store = MarketStore(shipped_dir())
    base = house.Params(**FAST, apc_floor=0.8)
    variants = (dataclasses.replace(base, apc_floor=0.0), dataclasses.replace(base, stress_factor=0.2,
                                                                               confidence=0.975, apc_buffer=0.1))
    cb = pf.hold_constant(bt.standard_portfolios(), store)
    days = engine.check_range("2022-11-07", "2022-11-10")
    many = engine.compute(engine.make_setup("house", base, cb, store, None, "reference", variants), days)
    for k, v in enumerate(variants):
        alone = engine.compute(engine.make_setup("house", v, cb, store, None, "reference"), days)
        got = many[many["variant"] == k].drop(columns="variant").reset_index(drop=True)
        pd.testing.assert_frame_equal(got.drop(columns=["im_floor_10y"]), alone.drop(columns=["im_floor_10y"]),
                                      rtol=1e-12)
    with pytest.raises(Exception, match="variant may change only"):
        engine.make_setup("house", base, cb, store, None, "reference", (dataclasses.replace(base, vol_floor=0.5),))


# --------------------------------------------------------------------------- the summary


def test_summary_has_the_issue_s_columns_and_a_pooled_row():
    store = MarketStore(shipped_dir())
    res = bt.run(params=house.Params(**FAST), start="2022-05-01", end="2022-05-20", market=store,
                 backend="reference")
    s = res.summary.set_index("portfolio")
    for c in ("n_obs", "n_exceptions", "kupiec_lr", "kupiec_p", "kupiec_p_one_sided", "cci_lr", "cci_p", "cc_lr",
              "cc_p", "zone", "zone_probability", "coverage", "mean_im", "max_exceedance", "peak_to_trough",
              "increase_1d", "increase_5d", "increase_10d", "im_to_floor_min"):
        assert c in s.columns, c
    assert s.loc["pooled", "n_obs"] == len(res.daily) == 20 * 21
    assert s.loc["pooled", "n_exceptions"] == int(res.daily["exception"].sum())
    assert s.drop(index="pooled")["n_obs"].sum() == s.loc["pooled", "n_obs"]


# --------------------------------------------------------------------------- the command on another history


def _fast_params(tmp_path):
    """House parameters whose IM is a plain FHS quantile: ES 97.5 % of a normal law is its 99 % VaR, and with no
    add-on, stress, APC or volatility floor (which on i.i.d. returns only shrinks the scenarios of calm days) the
    exceptions of i.i.d. normal returns are ~1 %."""
    p = tmp_path / "fast.toml"
    p.write_text("confidence = 0.975\nhorizon_days = 1.0\nmc_scenarios = 0\nstress_factor = 0.0\napc_buffer = 0.0\n"
                 "liquidity_coefficient = 0.0\nfloor_gross_rate = 0.0\nlookback_days = 500\ncross_venue = false\n"
                 "vol_floor = 0.0\n")
    return p


def test_gpurisk_backtest_on_a_synthetic_history(tmp_path):
    hist = synthetic_history(tmp_path / "hist", days=1100)
    book = perp_book(tmp_path / "book")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gpurisk.cli", "backtest", "--model", "house", "--params", str(_fast_params(tmp_path)),
           "--portfolios", str(book), "--start", "2019-06-01", "--end", "2021-12-31", "--market-data", str(hist),
           "--out", str(out), "--workers", "2", "--backend", "reference", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    daily = pd.read_parquet(out / "daily.parquet")
    summ = pd.read_parquet(out / "summary.parquet").set_index("portfolio")
    assert set(daily["portfolio"]) == {"long_BTC", "short_BTC", "long_ETH", "short_ETH"}
    rate = daily["exception"].mean()
    assert 0.004 < rate < 0.02, rate  # i.i.d. normal returns, IM = ES 97.5 % = VaR 99 %: ~1 % exceptions
    assert summ.loc["pooled", "kupiec_p"] > 0.01
    assert (out / "windows.parquet").is_file() and (out / "report.html").is_file()
    meta = json.loads((out / "summary.json").read_text())
    assert meta["market"]["path"] == str(hist.resolve()) and meta["horizon_days"] == 1
    assert "pooled:" in r.stdout and "Kupiec" in r.stdout


def test_bad_options_are_one_line_errors(tmp_path):
    from gpurisk.cli import main

    assert main(["backtest", "--start", "2021-01-02", "--end", "2021-01-01", "--out", str(tmp_path / "o")]) == 2
    assert main(["backtest", "--start", "2021-01-01", "--end", "2021-01-02", "--out", str(tmp_path / "x" / "o")]) == 2
    assert main(["backtest", "--start", "2021-01-01", "--end", "2021-01-02", "--portfolios", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o"), "--workers", "1"]) != 0


def test_the_report_shows_the_apc_buffer(tmp_path):
    import re

    from gpurisk.reports import write_report

    store = MarketStore(shipped_dir())
    res = bt.run(params=house.Params(**FAST), start="2022-06-10", end="2022-06-25", market=store, backend="reference")
    res.write(tmp_path / "bt")
    html = write_report(tmp_path / "bt", tmp_path / "r.html").read_text()
    d = res.daily
    rate = (d["apc_buffer"] / d["base"]).where(d["base"] > 0)
    got = float(re.search(r'data-key="apc_rate_mean" data-value="([^"]+)"', html).group(1))
    assert got == pytest.approx(rate.mean(), rel=1e-12)
    assert 'id="apc-portfolios"' in html or "apc-portfolios" in html
    assert rate.min() < 0.25  # June 2022: the buffer of the coins in their crash is being released


def test_a_venue_replica_backtests_what_it_covers():
    res = bt.run(model="deribit", start="2022-06-10", end="2022-06-12", backend="reference")
    deribit_portfolios = {"long_BTC_inverse_BTC_collateral", "long_call_spread_BTC", "short_straddle_BTC",
                          "short_strangle_BTC"}
    assert set(res.daily["portfolio"]) == deribit_portfolios  # the Deribit-listed instruments
    assert res.meta["uncovered_rows"] == 3 * 21 - len(res.daily)
    assert np.isfinite(res.daily["im"]).all() and (res.daily["im"] > 0).all()
