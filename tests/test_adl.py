"""The venues' auto-deleveraging ranks, by hand on a three-account example (BitMEX and Binance formulas)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gpurisk.actions.adl import adl_ranks


def _case():
    clean = {
        "instruments": pd.DataFrame({"instrument_id": ["BTC-LIN", "BTC-INV"], "venue": ["binance", "deribit"],
                                     "underlying": ["BTC", "BTC"], "kind": ["perpetual", "perpetual"],
                                     "settlement": ["linear", "inverse"], "contract_size": [1.0, 10.0]}),
        "market": pd.DataFrame({"instrument_id": ["BTC-LIN", "BTC-INV"], "underlying_price": [110.0, 110.0]}),
        "positions": pd.DataFrame({"account_id": ["X", "Y", "Z", "X"], "instrument_id": ["BTC-LIN"] * 3 + ["BTC-INV"],
                                   "quantity": [10.0, 10.0, 10.0, -5.0]}),
    }
    vm = pd.DataFrame({"account_id": ["X", "Y", "Z", "X"], "venue": ["binance", "binance", "binance", "deribit"],
                       "equity_usd": [500.0, 500.0, 2000.0, 100.0], "mm_usd": [200.0, 200.0, 200.0, 10.0]})
    entry = pd.Series([100.0, 120.0, 100.0, 100.0], index=pd.MultiIndex.from_arrays(
        [["X", "Y", "Z", "X"], ["BTC-LIN", "BTC-LIN", "BTC-LIN", "BTC-INV"]]))
    return clean, vm, entry


def test_bitmex_and_binance_scores_by_hand():
    clean, vm, entry = _case()
    r = adl_ranks(clean, vm, entry_prices=entry).set_index(["account_id", "instrument_id"])
    x, y, z = (r.loc[(a, "BTC-LIN")] for a in "XYZ")
    # notional 10 x 1 x 110 = 1100; leverage = notional / equity behind it
    assert x["effective_leverage"] == pytest.approx(2.2) and z["effective_leverage"] == pytest.approx(0.55)
    # BitMEX: PnL% > 0: PnL% x leverage; else PnL% / leverage
    assert x["bitmex_score"] == pytest.approx(0.10 * 2.2)
    assert y["bitmex_score"] == pytest.approx((110 / 120 - 1) / 2.2)
    assert z["bitmex_score"] == pytest.approx(0.10 * 0.55)
    # 20 % lights among the three longs of BTC-LIN: Y lowest, then Z, then X first in the queue
    assert (y["bitmex_light"], z["bitmex_light"], x["bitmex_light"]) == (2, 4, 5)
    # Binance: max(0, uPnL) / max(1, wallet) x MM / (wallet + uPnL)
    assert x["upnl_usd"] == pytest.approx(100.0)
    assert x["binance_score"] == pytest.approx(100.0 / 500.0 * 200.0 / 600.0)
    assert y["binance_score"] == 0.0  # a loss never ranks on Binance
    assert x["method"] == "binance"
    # an inverse short: USD notional is the contract value; P&L fraction 1 - entry / mark, times the side
    inv = r.loc[("X", "BTC-INV")]
    assert inv["notional_usd"] == pytest.approx(50.0)
    assert inv["pnl_pct"] == pytest.approx(-(1 - 100.0 / 110.0))
    assert inv["method"].startswith("bitmex")


def test_without_entry_prices_the_queue_orders_by_leverage():
    clean, vm, _ = _case()
    r = adl_ranks(clean, vm).set_index(["account_id", "instrument_id"])
    assert not r["pnl_known"].any()
    lin = r.xs("BTC-LIN", level=1)
    np.testing.assert_allclose(lin["bitmex_score"], lin["effective_leverage"])
    assert lin.loc["Z", "bitmex_light"] < lin.loc["X", "bitmex_light"]
    assert list(adl_ranks(clean, vm, accounts=["Z"])["account_id"]) == ["Z"]
