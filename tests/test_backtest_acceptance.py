"""The acceptance backtest: the house model with its shipped parameters, point in time, every day of 2020-2024, on
the standard test portfolios, on a real two-worker Dask cluster (docs/backtesting.md records the same run)."""

from __future__ import annotations

from pathlib import Path

import pytest

import gpurisk.backtest as bt
from gpurisk.calibration.sweep import SINGLE_COIN
from gpurisk.margin import house

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result():
    from gpurisk.batch.cluster import open_client

    params = house.load_params(str(REPO / "jobs" / "params" / "house.toml"))
    assert params == house.Params()  # the shipped parameter file is the code defaults
    with open_client(workers=2) as client:
        return bt.run(model="house", params=params, start="2020-01-01", end="2024-12-31", client=client)


def test_every_day_and_portfolio_is_there(result):
    s = result.summary.set_index("portfolio")
    assert result.meta["days"] == 1825  # 2020-01-01..2024-12-29: the P&L of 2024-12-30 needs 2025-01-01
    assert len(s) == 22 and s.loc["pooled", "n_obs"] == len(result.daily)
    assert result.meta["workers"] == 2


def test_pooled_coverage_of_99_percent_is_not_rejected(result):
    p = result.pooled
    assert p["kupiec_p_one_sided"] >= 0.05


def test_every_portfolio_green_or_yellow_and_mostly_green(result):
    ports = result.summary.set_index("portfolio").drop(index="pooled")
    assert (ports["windows_red"] == 0).all(), ports.loc[ports["windows_red"] > 0, "windows_red"]
    assert (ports["windows_green_share"] >= 0.90).all(), ports["windows_green_share"].sort_values().head()
    w = result.windows
    assert set(w["zone"]) <= {"green", "yellow"} and (w["start"] % 25 == 0).sum() >= len(w) - len(ports)


def test_single_coin_cost_is_at_most_one_and_a_half_realised_es(result):
    ports = result.summary.set_index("portfolio")
    single = ports.loc[list(SINGLE_COIN), "im_over_es"]
    assert (single <= 1.5).all(), single.sort_values(ascending=False).head()
