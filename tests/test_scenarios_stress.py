"""Named stress: episodes match the closes in the data files; hypothetical shocks; user definitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gpurisk.errors import ScenarioError
from gpurisk.market import COINS, shipped_dir
from gpurisk.pricing import VOL_ABSOLUTE, VOL_RELATIVE
from gpurisk.scenarios import named_stress, stress_from_definition, stress_from_toml
from gpurisk.scenarios.stress import EPISODES

D = shipped_dir()
CLOSES = pd.concat({c: pd.read_csv(D / "market" / "daily" / f"{c}USDT_1d.csv", index_col="timestamp",
                                   parse_dates=True)["close"] for c in COINS}, axis=1)
DVOL = pd.read_csv(D / "options" / "deribit_btc_dvol_daily.csv", index_col="date", parse_dates=True)["dvol"]

WINDOWS = {
    "covid_2020_03_12": ("2020-03-11", "2020-03-12"),
    "crash_2021_05_19": ("2021-05-18", "2021-05-19"),
    "luna_2022_05": ("2022-05-04", "2022-05-12"),
    "ftx_2022_11": ("2022-11-06", "2022-11-09"),
}


@pytest.fixture(scope="module")
def stress():
    return named_stress()


def test_episode_windows_are_the_documented_ones():
    assert {e.id: (e.start, e.end) for e in EPISODES} == WINDOWS


@pytest.mark.parametrize("eid", list(WINDOWS))
def test_episode_moves_equal_close_to_close_in_the_data(stress, eid):
    a, b = WINDOWS[eid]
    row = list(stress.scenario_id).index(eid)
    for j, c in enumerate(stress.underlyings):
        if c == "USDT":
            assert stress.price_shock[row, j] == 0.0
            continue
        c0, c1 = CLOSES.loc[a, c], CLOSES.loc[b, c]
        if np.isfinite(c0):
            assert stress.price_shock[row, j] == pytest.approx(c1 / c0 - 1.0, rel=1e-12)
    if a in DVOL.index and b in DVOL.index:
        expect = DVOL.loc[b] / DVOL.loc[a] - 1.0
        np.testing.assert_allclose(stress.vol_shock[row, :-1], expect, rtol=1e-12)
    assert stress.vol_mode[row] == VOL_RELATIVE


def test_published_magnitudes_are_reproduced(stress):
    """Sanity against the secondary-source table: BTC daily close −39 % on 2020-03-12, FTX week about −23 %."""
    ps = dict(zip(stress.scenario_id, stress.price_shock[:, 0]))
    assert ps["covid_2020_03_12"] == pytest.approx(-0.39, abs=0.01)
    assert ps["ftx_2022_11"] == pytest.approx(-0.23, abs=0.02)
    assert ps["luna_2022_05"] == pytest.approx(-1 / 3, abs=0.07)


def test_unlisted_coin_proxy_and_pre_dvol_vol_proxy(stress):
    row = list(stress.scenario_id).index("covid_2020_03_12")
    j = stress.underlyings.index("SOL")
    r = np.log(CLOSES[["BTC", "SOL"]]).diff()
    first = r["SOL"].first_valid_index()
    win = r.loc[first:].iloc[:365]
    ratio = win["SOL"].std() / win["BTC"].std()
    btc = math.log(CLOSES.loc["2020-03-12", "BTC"] / CLOSES.loc["2020-03-11", "BTC"])
    assert stress.price_shock[row, j] == pytest.approx(math.expm1(btc * ratio), rel=1e-12)
    # vol before DVOL: 30-day realised vol at the end over the one at the start, − 1
    rb = r["BTC"]
    expect = rb.loc[:"2020-03-12"].iloc[-30:].std() / rb.loc[:"2020-03-11"].iloc[-30:].std() - 1
    assert stress.vol_shock[row, 0] == pytest.approx(expect, rel=1e-12)
    assert stress.vol_shock[row, j] == pytest.approx(expect, rel=1e-12)  # SOL takes BTC's
    assert stress.metadata["episodes"]["covid_2020_03_12"]["proxied"] == ["SOL"]


def test_hypothetical_shocks(stress):
    ids = list(stress.scenario_id)
    U = stress.underlyings
    crash = ids.index("crash_30")
    np.testing.assert_array_equal(stress.price_shock[crash], [-0.3] * len(COINS) + [0.0])
    spike = ids.index("vol_spike_50")
    assert np.all(stress.price_shock[spike] == 0) and stress.vol_mode[spike] == VOL_RELATIVE
    np.testing.assert_array_equal(stress.vol_shock[spike], [0.5] * len(COINS) + [0.0])
    ab = ids.index("vol_spike_abs_25")
    assert stress.vol_mode[ab] == VOL_ABSOLUTE and stress.vol_shock[ab, 0] == 0.25
    dp = ids.index("usdt_depeg_10")
    expect = np.zeros(len(U))
    expect[U.index("USDT")] = -0.1
    np.testing.assert_array_equal(stress.price_shock[dp], expect)
    assert stress.kind == "stress" and "2022-11-06..2022-11-09" in stress.source


def test_user_definition_dict_and_toml(tmp_path):
    d = {"horizon_days": 0, "scenario": [
        {"id": "alt_crash", "label": "alts -50 %, BTC -30 %", "price_shock": {"BTC": -0.3, "*": -0.5},
         "vol_shock": {"*": 0.4}},
        {"id": "depeg", "price_shock": {"USDT": -0.2}, "vol_mode": "absolute", "pnl_factor": 0.5, "weight": 2},
    ]}
    s = stress_from_definition(d)
    U = s.underlyings
    assert U == tuple(COINS) + ("USDT",)
    assert s.price_shock[0, U.index("BTC")] == -0.3 and s.price_shock[0, U.index("ETH")] == -0.5
    assert s.price_shock[0, U.index("USDT")] == 0.0  # '*' moves coins, not stablecoins
    assert s.vol_shock[0, U.index("SOL")] == 0.4
    assert s.vol_mode[1] == VOL_ABSOLUTE and s.pnl_factor[1] == 0.5 and s.weight[1] == 2.0
    p = tmp_path / "my.toml"
    p.write_text(
        'horizon_days = 0\n'
        '[[scenario]]\nid = "alt_crash"\nlabel = "alts -50 %, BTC -30 %"\n'
        'price_shock = { BTC = -0.3, "*" = -0.5 }\nvol_shock = { "*" = 0.4 }\n'
        '[[scenario]]\nid = "depeg"\nprice_shock = { USDT = -0.2 }\nvol_mode = "absolute"\n'
        'pnl_factor = 0.5\nweight = 2\n'
    )
    t = stress_from_toml(p)
    np.testing.assert_array_equal(t.price_shock, s.price_shock)
    np.testing.assert_array_equal(t.vol_shock, s.vol_shock)
    both = named_stress(extra=d["scenario"])
    assert list(both.scenario_id[-2:]) == ["alt_crash", "depeg"]


@pytest.mark.parametrize("scen,match", [
    ({"id": "x", "price_shock": {"LUNA": -0.9}}, "unknown underlying"),
    ({"id": "x", "price_shock": {"BTC": -1.0}}, "-100 %"),
    ({"id": "x", "price_shock": {"BTC": "lots"}}, "not a number"),
    ({"id": "x", "price_shock": {"BTC": float("nan")}}, "not a finite number"),
    ({"id": "x", "vol_mode": "sticky"}, "vol_mode"),
    ({"price_shock": {"BTC": -0.1}}, "missing 'id'"),
    ({"id": "x", "weight": -1}, "weight"),
])
def test_bad_user_definitions(scen, match):
    with pytest.raises(ScenarioError, match=match):
        stress_from_definition({"scenario": [scen]})


def test_bad_toml_and_duplicate_ids(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[[scenario]\nid = 1")
    with pytest.raises(ScenarioError, match="bad.toml: not valid TOML"):
        stress_from_toml(p)
    with pytest.raises(ScenarioError, match="defined twice"):
        stress_from_definition({"scenario": [{"id": "a"}, {"id": "a"}]})
    with pytest.raises(ScenarioError, match="defined twice"):
        named_stress(extra=[{"id": "crash_30"}])
    with pytest.raises(ScenarioError, match="not found"):
        stress_from_toml(tmp_path / "none.toml")


def test_user_scenarios_on_a_subset_with_another_stablecoin():
    s = named_stress(coins=("BTC", "ETH"), extra=[
        {"id": "usdc", "price_shock": {"USDC": -0.08}},
        {"id": "alt", "price_shock": {"*": -0.5}},
    ])
    assert s.underlyings == ("BTC", "ETH", "USDT", "USDC")
    ids = list(s.scenario_id)
    np.testing.assert_array_equal(s.price_shock[ids.index("usdc")], [0, 0, 0, -0.08])
    np.testing.assert_array_equal(s.price_shock[ids.index("alt")], [-0.5, -0.5, 0, 0])
    assert np.all(s.price_shock[: ids.index("usdc"), 3] == 0)  # USDC unshocked in the named scenarios
    with pytest.raises(ScenarioError, match="not in this set"):
        named_stress(coins=("BTC",), extra=[{"id": "x", "price_shock": {"SOL": -0.5}}])


def test_the_documented_toml_example_parses(tmp_path):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data-format.md").read_text().split("## Scenario sets", 1)[1]
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    p = tmp_path / "mine.toml"
    p.write_text(block)
    s = stress_from_toml(p)
    assert list(s.scenario_id) == ["alt_crash", "usdc_depeg"]
    assert s.price_shock[0, s.underlyings.index("BTC")] == -0.30
    assert s.price_shock[0, s.underlyings.index("SOL")] == -0.50
    assert s.price_shock[1, s.underlyings.index("USDC")] == -0.08
    assert s.source == "desk stress 2026-Q1"
