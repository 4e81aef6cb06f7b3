"""Collateral: tiered haircuts by hand, collateral revalued in the scenarios, wrong-way risk, parameter files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_measures import PRICES, make_book

import gpurisk.margin as gm
from gpurisk.errors import BookError, ConfigError
from gpurisk.margin import collateral as coll
from gpurisk.margin import house, measures
from gpurisk.scenarios import make_scenario_set

REPO = Path(__file__).resolve().parents[1]


def test_tier_value_by_hand():
    p = coll.CollateralParams()
    assets = np.array(["USDT", "USDT", "BTC", "ETH", "USD", "DOGE", "BTC", "BTC", "ETH"], dtype=object)
    value = np.array([30e6, 5e6, 25e6, 60e6, 1e9, 1e6, -2e6, 300e6, 150e6])
    got = coll.tier_value(assets, value, p)
    want = [
        10e6 * 1.0 + 20e6 * 0.975,  # USDT: first 10M at 1, next 20M at 0.975
        5e6,
        1e6 * 0.995 + 9e6 * 0.99 + 15e6 * 0.98,  # BTC 25M
        1e6 * 0.99 + 9e6 * 0.98 + 40e6 * 0.96 + 10e6 * 0.92,  # ETH 60M
        1e9,
        0.0,  # DOGE: no schedule, default rate 0
        -2e6,  # a debt counts in full
        1e6 * 0.995 + 9e6 * 0.99 + 40e6 * 0.98 + 150e6 * 0.95 + 100e6 * 0.0,  # BTC beyond 200M: not accepted
        1e6 * 0.99 + 9e6 * 0.98 + 40e6 * 0.96 + 50e6 * 0.92 + 50e6 * 0.0,  # ETH beyond 100M: not accepted
    ]
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # the same holdings among many (the batch path: pandas' factorize) and few (the what-if path: a dict)
    many = coll.tier_value(np.tile(assets, 5), np.tile(value, 5), p)
    np.testing.assert_allclose(many, np.tile(want, 5), rtol=1e-14)
    assert len(np.tile(assets, 5)) > 32 >= len(assets)


def test_tier_value_is_continuous_and_monotone():
    p = coll.CollateralParams()
    v = np.linspace(0, 80e6, 4001)
    for a in ("USDT", "BTC", "ETH"):
        hv = coll.tier_value(np.full(len(v), a, dtype=object), v, p)
        assert np.all(np.diff(hv) >= -1e-6)
        assert np.all(np.abs(np.diff(hv)) <= np.diff(v) + 1e-6)  # slope = rate ≤ 1, no jumps
        assert np.all(hv <= v + 1e-6)


@pytest.mark.parametrize("coin", ["BTC", "ETH"])
def test_default_coin_haircuts_cover_the_liquidation_cost(coin):
    # The haircut prices what the scenarios do not: selling the holding. Square-root impact: selling V USD
    # costs Y·σ·V·sqrt(V/ADV), so the marginal dollar at V costs 1.5·Y·σ·sqrt(V/ADV). Independent inputs,
    # from the raw daily bars at the calibration date: σ = std of daily log returns over the whole shipped
    # history (through the 2020 and 2022 crashes), ADV = mean daily traded value over the last 365 days, Y = 1.
    bars = pd.read_csv(REPO / "datasets" / "market" / "daily" / f"{coin}USDT_1d.csv")
    bars = bars.set_index(pd.to_datetime(bars["timestamp"])).sort_index().loc[:"2024-12-31"]
    sigma = np.std(np.diff(np.log(bars["close"].to_numpy())), ddof=1)
    adv = float((bars["close"] * bars["volume"]).tail(365).mean())
    tiers = coll.CollateralParams().tiers[coin]
    bounds = [b for b, _ in tiers[:-1]]
    for (upper, rate) in tiers[:-1]:
        marginal = 1.5 * sigma * math.sqrt(upper / adv)
        assert 1.0 - rate >= 2.0 * marginal, (coin, upper)  # a margin of safety of 2 on every slice
    assert tiers[0][1] >= 0.99  # small holdings: at most 1 % haircut
    assert all(b[1] >= a[1] for a, b in zip(tiers[1:], tiers))  # progressive: rates never rise with size
    assert tiers[-1] == (math.inf, 0.0) and bounds[-1] <= 0.10 * adv  # not accepted beyond 10 % of a day's volume


def test_default_rate_applies_to_unknown_assets():
    p = coll.CollateralParams(default_rate=0.5)
    assert coll.tier_value(np.array(["XYZ"], dtype=object), np.array([100.0]), p)[0] == 50.0


@pytest.mark.parametrize("tiers", [
    {"BTC": ((1e6, 0.9), (5e5, 0.8), (math.inf, 0.0))},  # bounds not increasing
    {"BTC": ((1e6, 0.9),)},  # last bound not inf
    {"BTC": ((math.inf, 1.2),)},  # rate above 1
])
def test_bad_schedules_are_rejected(tiers):
    with pytest.raises(ValueError):
        coll.CollateralParams(tiers=tiers)


def test_equity_sums_venues_before_tiering():
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1.0]})
    bal = pd.DataFrame({"account_id": ["a", "a", "a"], "venue": ["okx", "deribit", "deribit"],
                        "asset": ["USDT", "USDT", "BTC"], "amount": [8e6, 8e6, 10.0]})
    book = make_book(pos, bal)
    ci = coll.collateral_instruments(book)
    eq, raw = coll.equity(book, ci, coll.CollateralParams(), "account")
    btc = 10 * PRICES["BTC"]
    assert raw[0] == pytest.approx(16e6 + btc)
    assert eq[0] == pytest.approx(10e6 + 6e6 * 0.975 + 0.995 * btc)  # 600,000 of BTC: first slice
    eqv, rawv = coll.equity(book, ci, coll.CollateralParams(), "account_venue")
    ports = coll.portfolios_with_collateral(book, ci, "account_venue")
    got = dict(zip(ports.key["venue"], eqv))
    assert got == pytest.approx({"deribit": 8e6 + 0.995 * btc, "okx": 8e6})


def test_collateral_pseudo_instruments_and_csr():
    pos = pd.DataFrame({"account_id": ["a", "b"], "instrument_id": ["OKX-BTC-PERP", "OKX-ETH-PERP"],
                        "quantity": [1.0, 2.0]})
    bal = pd.DataFrame({"account_id": ["a", "a", "c"], "venue": ["okx", "deribit", "okx"],
                        "asset": ["BTC", "BTC", "USDC"], "amount": [1.5, 0.5, 10.0]})
    book = make_book(pos, bal)
    ci = coll.collateral_instruments(book)
    assert list(ci.assets) == ["BTC", "USDC"]
    np.testing.assert_array_equal(ci.price_usd, [PRICES["BTC"], 1.0])
    ports = coll.portfolios_with_collateral(book, ci, "account")
    I = len(book.instruments)
    # account a: its perp and 2 BTC of collateral (two venues netted into one row)
    rows = slice(ports.indptr[0], ports.indptr[1])
    assert sorted(zip(ports.instrument_idx[rows].tolist(), ports.quantity[rows].tolist()))[-1] == (I + 0, 2.0)
    assert list(ports.key["account_id"]) == ["a", "b", "c"]
    av = coll.portfolios_with_collateral(book, ci, "account_venue")
    assert list(zip(av.key["account_id"], av.key["venue"])) == [("a", "deribit"), ("a", "okx"), ("b", "okx"),
                                                                 ("c", "okx")]
    assert av.nnz == 5


def test_collateral_pnl_in_scenarios():
    # account holds 2 BTC and 1,000,000 USDT and no positions
    bal = pd.DataFrame({"account_id": ["a", "a"], "venue": ["okx", "okx"], "asset": ["BTC", "USDT"],
                        "amount": [2.0, 1e6]})
    book = make_book(pd.DataFrame({"account_id": [], "instrument_id": [], "quantity": []}), bal)
    shocks = np.array([[-0.2, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, -0.05]])  # BTC, ETH, USDT de-peg
    sset = make_scenario_set(["BTC", "ETH", "USDT"], shocks)
    p = measures.Params(levels=(0.5,), include_collateral=True)
    row = gm.compute(book, "measures", params=p, scenarios=sset, backend="reference").tables["margin"].iloc[0]
    losses = [2 * PRICES["BTC"] * 0.2, -2 * PRICES["BTC"] * 0.1, 1e6 * 0.05]
    assert row["worst"] == pytest.approx(max(losses))
    assert row["es_50"] == pytest.approx(np.mean(sorted(losses)[-2:]))
    # without the collateral the account has no risk
    row0 = gm.compute(book, "measures", params=measures.Params(levels=(0.5,)), scenarios=sset,
                      backend="reference").tables["margin"].iloc[0]
    assert row0["worst"] == 0.0


def _wrong_way_book(asset: str):
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-FUT"], "quantity": [500.0]})  # 5 BTC long
    value = 200_000.0
    amount = value / PRICES["BTC"] if asset == "BTC" else value
    bal = pd.DataFrame({"account_id": ["a"], "venue": ["okx"], "asset": [asset], "amount": [amount]})
    return make_book(pos, bal)


def test_wrong_way_risk_btc_collateral_raises_requirement():
    rng = np.random.default_rng(5)
    sset = make_scenario_set(["BTC", "ETH"], rng.normal(0, 0.05, (2000, 2)), horizon_days=2.0)
    p = house.Params(cross_venue=False)
    res_btc = gm.compute(_wrong_way_book("BTC"), "house", params=p, scenarios=sset, backend="reference")
    res_usdt = gm.compute(_wrong_way_book("USDT"), "house", params=p, scenarios=sset, backend="reference")
    m_btc, m_usdt = res_btc.tables["margin"].iloc[0], res_usdt.tables["margin"].iloc[0]
    assert m_btc["collateral_value"] == pytest.approx(m_usdt["collateral_value"])
    assert m_btc["es_99"] > m_usdt["es_99"] * 1.05
    assert m_btc["im"] > m_usdt["im"]
    # the ES with BTC collateral is that of 5 + 200,000/60,000 BTC of long exposure (linear, same shocks)
    ratio = (5 * 61000 + 200_000) / (5 * 61000)
    assert m_btc["es_99"] == pytest.approx(ratio * m_usdt["es_99"], rel=1e-9)
    assert m_btc["equity"] < m_usdt["equity"]  # and BTC is haircut


def test_balance_asset_without_price_is_a_book_error():
    bal = pd.DataFrame({"account_id": ["a"], "venue": ["okx"], "asset": ["SOL"], "amount": [3.0]})
    book = make_book(pd.DataFrame({"account_id": [], "instrument_id": [], "quantity": []}), bal)
    with pytest.raises(BookError, match="SOL"):
        coll.collateral_instruments(book)


# --------------------------------------------------------------------------- parameter files


def test_default_parameter_file_equals_code_defaults():
    assert house.load_params(str(REPO / "jobs" / "params" / "house.toml")) == house.Params()


def test_parameter_file_overrides_nested_tables(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('mm_factor = 0.75\n[calls]\nreduce_only_mm_ratio = 1.2\n[collateral.tiers]\nSOL = [[1e6, 0.8], [inf, 0]]\n')
    p = house.load_params(str(f))
    assert p.mm_factor == 0.75 and p.calls.reduce_only_mm_ratio == 1.2
    assert p.collateral.tiers == {"SOL": ((1e6, 0.8), (math.inf, 0.0))}


@pytest.mark.parametrize("text,key", [
    ("mm_factr = 0.8\n", "mm_factr"),
    ('mm_factor = "high"\n', "mm_factor"),
    ("[calls]\nreduce_only = 1.1\n", "calls.reduce_only"),
    ("[collateral.tiers]\nBTC = [[1e6]]\n", "collateral.tiers.BTC[0]"),
    ("mc_scenarios = 1.5\n", "mc_scenarios"),
    ("cross_venue = 1\n", "cross_venue"),
])
def test_bad_parameter_files_name_file_and_key(tmp_path, text, key):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        house.load_params(str(f))
    msg = str(err.value)
    assert "bad.toml" in msg and key in msg and "\n" not in msg


def test_out_of_range_parameter_is_a_config_error(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("mm_factor = 1.5\n")
    with pytest.raises(ConfigError, match="mm_factor"):
        house.load_params(str(f))
    f.write_text("[collateral.tiers]\nBTC = [[1e6, 0.9]]\n")
    with pytest.raises(ConfigError, match="inf"):
        house.load_params(str(f))


def test_missing_or_broken_parameter_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        house.load_params(str(tmp_path / "nope.toml"))
    f = tmp_path / "broken.toml"
    f.write_text("mm_factor = = 1\n")
    with pytest.raises(ConfigError, match="TOML"):
        house.load_params(str(f))


def test_spot_positions_count_as_holdings_in_equity():
    # 3 BTC spot on binance (a position) plus 2 BTC balance on deribit: 5 BTC of holdings, tiered together
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["BIN-BTC"], "quantity": [3.0]})
    bal = pd.DataFrame({"account_id": ["a"], "venue": ["deribit"], "asset": ["BTC"], "amount": [2.0]})
    book = make_book(pos, bal)
    ci = coll.collateral_instruments(book)
    p = coll.CollateralParams(tiers={"BTC": ((150_000.0, 1.0), (math.inf, 0.5))})
    eq, raw = coll.equity(book, ci, p, "account")
    assert raw[0] == pytest.approx(5 * PRICES["BTC"])
    assert eq[0] == pytest.approx(150_000 + 0.5 * (5 * PRICES["BTC"] - 150_000))
    eqv, _ = coll.equity(book, ci, p, "account_venue")
    # per venue: 2 BTC = 120,000 inside the first slice; 3 BTC = 180,000 crosses it
    assert sorted(eqv) == pytest.approx([2 * PRICES["BTC"], 150_000 + 0.5 * (3 * PRICES["BTC"] - 150_000)])
