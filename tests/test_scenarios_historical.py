"""Filtered historical simulation against the raw daily closes and an independent EWMA."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gpurisk.errors import ScenarioError
from gpurisk.market import COINS, shipped_dir
from gpurisk.scenarios import historical_scenarios
from gpurisk.scenarios.historical import ewma_sigma


def raw_closes() -> pd.DataFrame:
    """Closes read straight from the CSV files (not through the package loaders)."""
    d = shipped_dir() / "market" / "daily"
    return pd.concat(
        {c: pd.read_csv(d / f"{c}USDT_1d.csv", index_col="timestamp", parse_dates=True)["close"] for c in COINS}, axis=1
    )


def raw_dvol() -> pd.Series:
    df = pd.read_csv(shipped_dir() / "options" / "deribit_btc_dvol_daily.csv", index_col="date", parse_dates=True)
    return (df["dvol"] / 100.0).asfreq("D").ffill()


CLOSES = raw_closes()


def test_unfiltered_one_day_shocks_equal_close_ratios():
    s = historical_scenarios("2023-01-01", horizon_days=1, filtered=False, lookback_days=200)
    dates = pd.to_datetime(list(s.scenario_id))
    for j, c in enumerate(s.underlyings):
        prev = CLOSES[c].shift(1).reindex(dates).to_numpy()
        now = CLOSES[c].reindex(dates).to_numpy()
        ok = np.isfinite(prev)
        np.testing.assert_allclose(s.price_shock[ok, j], now[ok] / prev[ok] - 1.0, rtol=1e-12, atol=1e-15)
    assert s.kind == "historical" and s.horizon_days == 1.0


def test_dates_are_lookback_plus_pinned_stress_periods_and_stop_at_as_of():
    s = historical_scenarios("2023-01-01", lookback_days=200, filtered=False)
    dates = pd.to_datetime(list(s.scenario_id))
    last = pd.date_range(end="2022-12-31", periods=200, freq="D")
    covid = pd.date_range("2020-03-01", "2020-03-31", freq="D")
    luna_ftx = pd.date_range("2022-05-01", "2022-11-30", freq="D")
    assert set(dates) == set(last) | set(covid) | set(luna_ftx)
    assert dates.is_monotonic_increasing and dates.max() == pd.Timestamp("2022-12-31")
    # a bar dated d closes at d+1 00:00 UTC: an as-of at noon on 2023-01-01 still cannot use that day's bar
    s2 = historical_scenarios("2023-01-01T12:00:00Z", lookback_days=200, filtered=False)
    assert list(s2.scenario_id) == list(s.scenario_id)
    none = historical_scenarios("2023-01-01", lookback_days=200, include_periods=())
    assert len(none.scenario_id) == 200


def test_overlapping_and_sqrt_horizons():
    h = 5
    s = historical_scenarios("2022-06-01", horizon_days=h, filtered=False, lookback_days=100, include_periods=())
    dates = pd.to_datetime(list(s.scenario_id))
    for j, c in enumerate(s.underlyings):
        if c == "SOL":
            continue
        expect = (CLOSES[c] / CLOSES[c].shift(h)).reindex(dates).to_numpy() - 1.0
        np.testing.assert_allclose(s.price_shock[:, j], expect, rtol=1e-12, atol=1e-13)  # cumsum rounding
    assert s.horizon_days == 5.0
    q = historical_scenarios("2022-06-01", horizon_days=4, filtered=False, horizon_method="sqrt",
                             lookback_days=50, include_periods=())
    dq = pd.to_datetime(list(q.scenario_id))
    r1 = np.log(CLOSES["BTC"] / CLOSES["BTC"].shift(1)).reindex(dq).to_numpy()
    np.testing.assert_allclose(q.price_shock[:, 0], np.expm1(2.0 * r1), rtol=1e-12, atol=1e-14)


def independent_ewma(r: np.ndarray, lam: float) -> np.ndarray:
    """σ[t] for t = 0..n by the textbook recursion, one step at a time."""
    var = [float(np.mean(r[:30] ** 2))]
    for x in r:
        var.append(lam * var[-1] + (1 - lam) * x * x)
    return np.sqrt(np.array(var))


@pytest.mark.parametrize("lam", [0.94, 0.97])
def test_filtered_returns_rescale_by_sigma_now_over_sigma_then(lam):
    s = historical_scenarios("2024-07-01", ewma_lambda=lam, lookback_days=300, include_periods=())
    c = "ETH"
    j = s.underlyings.index(c)
    closes = CLOSES[c].loc[:"2024-06-30"].dropna()
    r = np.log(closes / closes.shift(1)).dropna()
    sig = independent_ewma(r.to_numpy(), lam)
    assert sig[-1] == pytest.approx(s.metadata["sigma_now"][c], rel=1e-10)
    np.testing.assert_allclose(ewma_sigma(r.to_numpy(), lam), sig, rtol=1e-10)
    pos = r.index.get_indexer(pd.to_datetime(list(s.scenario_id)))
    expect = np.expm1(r.to_numpy()[pos] * sig[-1] / sig[pos])
    np.testing.assert_allclose(s.price_shock[:, j], expect, rtol=1e-9)


def test_no_data_after_as_of_is_used():
    as_of = "2022-03-01"
    base = historical_scenarios(as_of, lookback_days=300, coins=("BTC", "ETH"))
    poisoned = CLOSES[["BTC", "ETH"]].copy()
    poisoned.loc["2022-03-01":] *= np.random.default_rng(0).uniform(0.1, 10.0, poisoned.loc["2022-03-01":].shape)
    dv = raw_dvol().copy()
    dv.loc["2022-03-01":] = 5.0
    again = historical_scenarios(as_of, lookback_days=300, coins=("BTC", "ETH"), closes=poisoned, dvol_series=dv)
    np.testing.assert_array_equal(base.price_shock, again.price_shock)
    np.testing.assert_array_equal(base.vol_shock, again.vol_shock)
    assert max(base.scenario_id) == "2022-02-28"


def test_coin_before_listing_takes_btc_move_scaled_to_its_vol():
    s = historical_scenarios("2021-01-01", filtered=False, lookback_days=100, coins=("BTC", "SOL"))
    row = list(s.scenario_id).index("2020-03-12")
    ratio = s.metadata["sigma_now"]["SOL"] / s.metadata["sigma_now"]["BTC"]
    r_btc = math.log(CLOSES.loc["2020-03-12", "BTC"] / CLOSES.loc["2020-03-11", "BTC"])
    assert s.price_shock[row, 1] == pytest.approx(math.expm1(r_btc * ratio), rel=1e-12)
    assert s.metadata["proxied_days"]["SOL"] == 31  # all of 2020-03 (SOL lists 2020-08-11)
    assert s.metadata["proxied_days"]["BTC"] == 0


def test_vol_shocks_from_dvol_changes_with_beta_and_proxy_before_dvol():
    dv = raw_dvol()
    s = historical_scenarios("2023-01-01", horizon_days=2, lookback_days=100, coins=("BTC", "ETH"),
                             vol_beta={"ETH": 0.5})
    dates = pd.to_datetime(list(s.scenario_id))
    recent = dates >= pd.Timestamp("2021-04-01")
    ratio = (dv / dv.shift(2)).reindex(dates[recent]).to_numpy()
    np.testing.assert_allclose(s.vol_shock[recent, 0], ratio - 1.0, rtol=1e-12)
    np.testing.assert_allclose(s.vol_shock[recent, 1], np.expm1(0.5 * np.log(ratio)), rtol=1e-12)
    # 2020-03 precedes DVOL (2021-03-24): the proxy is the EWMA vol change over the window
    covid = dates < pd.Timestamp("2021-01-01")
    assert covid.sum() == 31 and s.metadata["vol_from_proxy"] == 31
    closes = CLOSES["BTC"].loc[:"2022-12-31"].dropna()
    r = np.log(closes / closes.shift(1)).dropna()
    sig = pd.Series(independent_ewma(r.to_numpy(), 0.94)[1:], index=r.index)  # forecast made after bar d
    d = pd.Timestamp("2020-03-12")
    expect = sig.loc[d] / sig.loc[d - pd.Timedelta(days=2)] - 1.0
    assert s.vol_shock[list(s.scenario_id).index("2020-03-12"), 0] == pytest.approx(expect, rel=1e-10)


@pytest.mark.parametrize("kw,match", [
    (dict(horizon_days=0), "horizon_days"), (dict(horizon_days=1.5), "horizon_days"),
    (dict(ewma_lambda=1.0), "ewma_lambda"), (dict(coins=("LUNA",)), "LUNA"),
    (dict(horizon_method="cube"), "horizon_method"), (dict(lookback_days=0), "lookback"),
])
def test_bad_parameters(kw, match):
    with pytest.raises(ScenarioError, match=match):
        historical_scenarios("2023-01-01", **kw)


def test_as_of_before_history():
    with pytest.raises(ScenarioError, match="too little history"):
        historical_scenarios("2017-08-20")
