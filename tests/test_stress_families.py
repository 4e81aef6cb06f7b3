"""The stress families: ids, coverage, and each measured move against an independent read of the shipped data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gpurisk.errors import ScenarioError
from gpurisk.market import COINS as HISTORY_COINS
from gpurisk.market import default_store, shipped_dir
from gpurisk.scenarios import registry
from gpurisk.scenarios import stress as st

COINS = ("BTC", "ETH", "SOL")


@pytest.mark.parametrize("family", st.FAMILIES)
def test_every_family_is_prefixed_and_covers_the_coins_and_both_stablecoins(family):
    s = st.family_set(family, COINS)
    assert s.n_scenarios > 0 and s.kind == "stress"
    assert all(str(i).startswith(f"{family}:") for i in s.scenario_id)
    assert pd.Series(s.scenario_id).is_unique
    assert set(s.underlyings) == set(COINS) | {"USDT", "USDC"}
    assert np.all(s.price_shock > -1.0) and np.all(np.isfinite(s.price_shock))
    assert np.all(s.pnl_factor == 1.0)  # a stress loss is the whole loss
    assert list(st.family_of(s.scenario_id)) == [family] * s.n_scenarios
    assert registry.family(family).name == family


def test_the_registry_and_the_builders_list_the_same_families():
    assert tuple(registry.FAMILIES) == st.FAMILIES
    with pytest.raises(ScenarioError, match="unknown stress family 'nope'"):
        st.family_set("nope", COINS)


def test_hypothetical_moves_per_coin_and_together():
    s = st.family_set("hypothetical", COINS)
    assert s.n_scenarios == len(COINS) * 8 + 8 + 2
    row = list(s.scenario_id).index("hypothetical:ETH_-30%")
    assert s.price_shock[row].tolist() == [0.0, -0.30, 0.0, 0.0, 0.0]
    row = list(s.scenario_id).index("hypothetical:all_+50%")
    assert s.price_shock[row, :3].tolist() == [0.5] * 3 and s.price_shock[row, 3:].tolist() == [0.0, 0.0]


def test_depeg_moves_only_the_stablecoin():
    s = st.family_set("depeg", COINS)
    cols = list(s.underlyings)
    for i, sid in enumerate(s.scenario_id):
        coin, move = str(sid).split(":")[1].split("_")
        expect = np.zeros(len(cols))
        expect[cols.index(coin)] = float(move.rstrip("%")) / 100.0
        assert np.allclose(s.price_shock[i], expect)


def test_squeezes_are_each_coins_largest_rise_read_independently():
    s = st.family_set("squeeze", COINS)
    ids = list(s.scenario_id)
    for coin in COINS:
        close = default_store().daily_bars(coin)["close"]
        for days in (1, 2):
            rise = (close / close.shift(days) - 1.0)
            best = float(rise.max())
            end = rise.idxmax()
            sid = f"squeeze:{coin}_{days}d_{end.date()}"
            if sid not in ids:  # a window shared with another coin's squeeze is kept once
                continue
            assert s.price_shock[ids.index(sid), COINS.index(coin)] == pytest.approx(best, rel=1e-12)
    # every measured squeeze moves its coin up, so a short position loses in it
    measured = [i for i, x in enumerate(ids) if "_1d_" in x or "_2d_" in x]
    assert measured and all(s.price_shock[i].max() > 0.2 for i in measured)


def test_flash_wicks_are_the_largest_single_bar_ranges():
    w = st.flash_wicks()
    for coin in st.FLASH_COINS:
        raw = pd.read_csv(shipped_dir() / "market" / "4h" / f"{coin}USDT_4h.csv")
        rng = raw["low"] / raw["high"] - 1.0
        mine = w[w["coin"] == coin]
        assert len(mine) == st.FLASH_TOP
        assert mine["wick"].iloc[0] == pytest.approx(float(rng.min()), rel=1e-12)
        assert mine["wick"].is_monotonic_increasing
    s = st.family_set("flash", COINS)
    covid = list(s.scenario_id).index("flash:2020-03-13T00")
    raw = pd.read_csv(shipped_dir() / "market" / "4h" / "BTCUSDT_4h.csv", index_col="timestamp")
    bar = raw.loc["2020-03-13 00:00:00"]
    assert s.price_shock[covid, 0] == pytest.approx(bar["low"] / bar["high"] - 1.0, rel=1e-12)
    hyp = list(s.scenario_id).index("flash:wick_alt_70")
    assert s.price_shock[hyp, :3].tolist() == [-0.20, -0.20, -0.70]


def test_historical_family_matches_the_named_episodes():
    s = st.family_set("historical", COINS)
    named = st.named_stress(COINS, hypothetical=False)
    for i, sid in enumerate(named.scenario_id):
        j = list(s.scenario_id).index(f"historical:{sid}")
        assert np.allclose(s.price_shock[j, :3], named.price_shock[i, :3])
    covid = list(s.scenario_id).index("historical:covid_2020_03_12")
    c = default_store().daily_bars("BTC")["close"]
    assert s.price_shock[covid, 0] == pytest.approx(c.loc["2020-03-12"] / c.loc["2020-03-11"] - 1.0, rel=1e-12)


def test_a_coin_without_history_moves_as_btc_times_the_alts_median_ratio():
    s = st.family_set("historical", ("BTC", "LINK"))
    closes = default_store().daily_closes(HISTORY_COINS)
    ratio = st.fallback_ratio(closes)
    covid = list(s.scenario_id).index("historical:covid_2020_03_12")
    btc = math.log1p(s.price_shock[covid, 0])
    assert s.price_shock[covid, 1] == pytest.approx(math.expm1(btc * ratio), rel=1e-9)


def test_grid_family_has_the_extended_moves_together_and_alone():
    s = st.family_set("grid", COINS)
    assert s.n_scenarios == 35 * (1 + len(COINS))
    assert s.price_shock.max() == 5.0 and s.price_shock.min() == pytest.approx(-0.66)
    alone = [i for i, x in enumerate(s.scenario_id) if str(x).startswith("grid:SOL/")]
    assert len(alone) == 35 and np.all(s.price_shock[alone][:, :2] == 0.0)


def test_the_stress_generator_builds_families_for_job_files():
    s = registry.generate("stress", {"families": "squeeze, depeg", "underlyings": ["BTC", "ETH"]})
    fams = set(st.family_of(s.scenario_id))
    assert fams == {"squeeze", "depeg"}
    with pytest.raises(ScenarioError, match="grid family"):
        registry.generate("stress", {"families": "grid,squeeze"})
    # without families the generator is the named set, unchanged
    assert registry.generate("stress", {}).n_scenarios == st.named_stress().n_scenarios
