"""Exchange grids: layout, the Deribit published worked example, term vol shocks, CME SPAN's 16."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from gpurisk.backends import MeasureSpec, reference
from gpurisk.book import Book
from gpurisk.errors import ScenarioError
from gpurisk.pricing import VOL_RELATIVE, VOL_TERM, pricing_inputs
from gpurisk.scenarios import exchange_grid, span_grid


def _book(rows, as_of="2024-06-17T08:00:00Z"):
    ins = pd.DataFrame([{
        "instrument_id": r["id"], "venue": "deribit", "underlying": r.get("underlying", "BTC"), "kind": r["kind"],
        "settlement": r.get("settlement", "inverse"), "contract_size": r["cs"], "expiry": r.get("expiry"),
        "strike": r.get("strike", np.nan), "option_type": r.get("option_type")} for r in rows])
    mkt = pd.DataFrame({"instrument_id": [r["id"] for r in rows], "underlying_price": [r["F"] for r in rows],
                        "implied_vol": [r.get("vol", np.nan) for r in rows]})
    idx = pd.DataFrame({"underlying": sorted({r.get("underlying", "BTC") for r in rows}), "price": 1.0})
    pos = pd.DataFrame({"account_id": "A", "instrument_id": [r["id"] for r in rows],
                        "quantity": [r.get("qty", 1.0) for r in rows]})
    bal = pd.DataFrame({"account_id": ["A"], "venue": ["deribit"], "asset": ["BTC"], "amount": [0.0]})
    return Book.from_frames(as_of, ins, mkt, idx, pos, bal)


def test_exchange_grid_layout():
    g = exchange_grid(["BTC", "ETH"], price_range=0.16, buckets=4, vol_up=0.5, vol_down=0.25)
    assert g.n_scenarios == 27 + 8
    core = g.pnl_factor == 1.0
    moves = np.unique(np.round(g.price_shock[:27, 0], 12))
    np.testing.assert_allclose(moves, np.arange(-4, 5) * 0.04, atol=1e-15)  # nine evenly spaced, 0 included
    assert sorted(set(g.vol_shock[:27, 0].tolist())) == [-0.25, 0.0, 0.5]
    assert np.all(g.vol_mode == VOL_TERM)
    np.testing.assert_array_equal(g.price_shock[:, 0], g.price_shock[:, 1])  # all together
    ext = g.price_shock[27:, 0]
    np.testing.assert_allclose(ext, [-0.66, -0.33, 0.5, 1, 2, 3, 4, 5])
    np.testing.assert_allclose(g.vol_shock[27:, 0], 0.5)  # vol up only
    np.testing.assert_allclose(g.pnl_factor[27:], np.minimum(1.0, 0.16 / np.abs(ext)))
    assert core.sum() == 27 + 0  # 0.16/0.33 < 1, so every extended row is scaled
    assert len(set(g.scenario_id)) == g.n_scenarios
    assert g.kind == "grid" and "range" in g.source


def test_per_underlying_grid_shocks_one_risk_unit_at_a_time():
    g = exchange_grid(["BTC", "ETH", "SOL"], extended_moves=(), per_underlying=True)
    assert g.n_scenarios == 3 * 27
    groups = g.metadata["groups"]
    for j, u in enumerate(g.underlyings):
        lo, hi = groups[u]
        block = g.price_shock[lo:hi]
        others = np.delete(block, j, axis=1)
        assert np.all(others == 0) and np.all(np.delete(g.vol_shock[lo:hi], j, axis=1) == 0)
        np.testing.assert_array_equal(block[:, j], exchange_grid(["X"], extended_moves=()).price_shock[:, 0])
        assert all(str(s).startswith(f"{u}:") for s in g.scenario_id[lo:hi])


def test_deribit_docs_example_worst_case():
    """docs.deribit.com private/pme/simulate, BTC, 2024-06-17: worst_case 0.05968587238 BTC at −16 %.

    Positions in BTC: BTC-PERPETUAL +0.314538364, BTC-28JUN24 −0.001187534; index 65,666.19.
    With 1-USD inverse contracts a position of q coins is q·F contracts.
    """
    F = 65666.19
    book = _book([
        {"id": "BTC-PERPETUAL", "kind": "perpetual", "cs": 1.0, "F": F, "qty": 0.314538364 * F},
        {"id": "BTC-28JUN24", "kind": "future", "cs": 1.0, "F": F, "qty": -0.001187534 * F,
         "expiry": "2024-06-28T08:00:00Z"},
    ])
    g = exchange_grid(["BTC"], price_range=0.16, buckets=4, extended_moves=())
    idx, g = g.columns_for(book.instruments.underlying)
    P = reference.revalue(pricing_inputs(book, idx), g, "settlement")
    ts = reference.tail_stats(book.portfolios("account"), P, MeasureSpec(levels=(0.99,)))
    assert ts.worst[0] == pytest.approx(0.05968587238, rel=1e-9)
    assert g.price_shock[ts.worst_scenario[0], 0] == pytest.approx(-0.16)


def test_grid_vol_shocks_reprice_with_term_scaling():
    """An option under 'vol up'/'vol down' is priced at σ·(1 ± v·(30/DTE)^p), up floored at 0.5."""
    nd = NormalDist()
    F, K, sig = 65000.0, 70000.0, 0.45
    book = _book([{"id": "C", "kind": "option", "settlement": "linear", "cs": 1.0, "F": F, "strike": K,
                   "option_type": "call", "vol": sig, "expiry": "2024-06-24T08:00:00Z"}])  # 7 days
    T = float(book.time_to_expiry()[0])
    dte = T * 365.0
    g = exchange_grid(["BTC"], extended_moves=())
    idx, g = g.columns_for(book.instruments.underlying)
    _, scen = reference.revalue_values(pricing_inputs(book, idx), g, "usd")

    def b76(f, s):
        st = s * math.sqrt(T)
        d1 = (math.log(f / K) + 0.5 * st * st) / st
        return f * nd.cdf(d1) - K * nd.cdf(d1 - st)

    scale = (30.0 / dte) ** 0.30  # DTE < 30 -> short-term power
    for row in range(g.n_scenarios):
        s, v = g.price_shock[row, 0], g.vol_shock[row, 0]
        sv = max(sig * (1 + v * scale), 0.5) if v > 0 else sig * (1 + v * scale)
        assert scen[0, row] == pytest.approx(b76(F * (1 + s), sv), rel=1e-10, abs=1e-9)  # NormalDist tail


def test_span_sixteen_scenarios():
    g = span_grid(["BTC"], price_scan_range=0.15, vol_scan_range=0.2)
    assert g.n_scenarios == 16
    frac = np.array([0, 0, 1, 1, -1, -1, 2, 2, -2, -2, 3, 3, -3, -3]) / 3.0
    np.testing.assert_allclose(g.price_shock[:14, 0], frac * 0.15, atol=1e-15)
    np.testing.assert_allclose(g.vol_shock[:14, 0], np.tile([0.2, -0.2], 7))
    np.testing.assert_allclose(g.price_shock[14:, 0], [0.45, -0.45])
    np.testing.assert_allclose(g.vol_shock[14:, 0], 0.0)
    np.testing.assert_allclose(g.pnl_factor, [1.0] * 14 + [0.33, 0.33])
    assert np.all(g.vol_mode == VOL_RELATIVE)
    assert list(g.scenario_id) == [f"span{k:02d}" for k in range(1, 17)]


def test_span_extreme_counts_at_factor_for_a_linear_position():
    book = _book([{"id": "P", "kind": "perpetual", "settlement": "linear", "cs": 1.0, "F": 100.0, "qty": 1.0}])
    g = span_grid(["BTC"], price_scan_range=0.1)
    idx, g = g.columns_for(book.instruments.underlying)
    P = reference.revalue(pricing_inputs(book, idx), g, "usd")
    ts = reference.tail_stats(book.portfolios(), P, MeasureSpec(pnl_factor=g.pnl_factor))
    # full −10 % move loses 10; the −30 % extreme counted at 33 % loses 9.9: the scan move is the worst
    assert ts.worst[0] == pytest.approx(10.0)
    ts2 = reference.tail_stats(book.portfolios(), P, MeasureSpec(pnl_factor=span_grid(
        ["BTC"], price_scan_range=0.1, extreme_factor=0.5).pnl_factor))
    assert ts2.worst[0] == pytest.approx(15.0)


@pytest.mark.parametrize("kw", [dict(price_range=1.2), dict(buckets=0), dict(vol_down=1.0),
                                dict(extended_moves=(-1.0,)), dict(underlyings=[])])
def test_bad_grid_parameters(kw):
    with pytest.raises(ScenarioError):
        exchange_grid(**kw)
    with pytest.raises(ScenarioError):
        span_grid(price_scan_range=0.4, extreme_multiple=3)
    with pytest.raises(ScenarioError):
        span_grid(vol_mode="sticky")
