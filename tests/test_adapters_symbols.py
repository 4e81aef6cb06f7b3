"""Symbol grammar (CCXT, Deribit, OKX, Binance) and combining sources (ranks, conflicts, stablecoins)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gpurisk.adapters import base, symbols


def test_ccxt_symbols_parse_into_book_terms():
    t = symbols.parse_ccxt(["BTC/USDT:USDT", "BTC/USD:BTC", "BTC/USD:BTC-240628", "BTC/USD:BTC-240628-60000-C",
                            "ETH/USDT:USDT-211225-40000-P", "BTC/USDT", "BTC-PERPETUAL", None, 7,
                            "BTC/USD:BTC-241399"], "deribit")
    assert t["ok"].tolist() == [True] * 6 + [False] * 4
    assert t["kind"][:6].tolist() == ["perpetual", "perpetual", "future", "option", "option", "spot"]
    assert t["settlement"][:6].tolist() == ["linear", "inverse", "inverse", "inverse", "linear", "linear"]
    assert str(t["expiry"][2]) == "2024-06-28 08:00:00+00:00"  # Deribit expires at 08:00 UTC
    assert t.loc[3, ["strike", "option_type"]].tolist() == [60000.0, "call"]
    assert t.loc[4, "option_type"] == "put"


@pytest.mark.parametrize("venue, symbol, native", [
    ("deribit", "BTC/USD:BTC", "BTC-PERPETUAL"),
    ("deribit", "BTC/USD:BTC-250103", "BTC-3JAN25"),
    ("deribit", "BTC/USD:BTC-250627-100000-C", "BTC-27JUN25-100000-C"),
    ("deribit", "BTC/USDC:USDC", "BTC_USDC-PERPETUAL"),
    ("deribit", "XRP/USDC:USDC-250530-2.5-C", "XRP_USDC-30MAY25-2d5-C"),
    ("okx", "BTC/USDT:USDT", "BTC-USDT-SWAP"),
    ("okx", "BTC/USD:BTC", "BTC-USD-SWAP"),
    ("okx", "BTC/USD:BTC-250328-100000-C", "BTC-USD-250328-100000-C"),
    ("okx", "BTC/USDT:USDT-250328", "BTC-USDT-250328"),
    ("binance", "BTC/USDT", "BTCUSDT"),
    ("binance", "BTC/USDT:USDT", "BTC/USDT:USDT"),
    ("bybit", "BTC/USDT:USDT", "BTC/USDT:USDT"),
])
def test_native_names_and_their_inverse(venue, symbol, native):
    t = symbols.parse_ccxt([symbol], venue)
    assert symbols.native_id(venue, t).tolist() == [native]
    back = {"deribit": symbols.parse_deribit, "okx": symbols.parse_okx}.get(venue)
    if back is not None:
        n = back([native])
        cols = ["kind", "settlement", "expiry", "strike", "option_type", "base"]
        assert n[cols].astype(object).where(n[cols].notna(), None).values.tolist() == \
            t[cols].astype(object).where(t[cols].notna(), None).values.tolist()
        assert symbols.ccxt_symbol(n).tolist() == [symbol]


def test_bad_venue_names_do_not_parse():
    assert not symbols.parse_deribit(["BTC-31FOO25", "BTC-FS-27JUN25_PERP", "BTC", ""])["ok"].any()
    assert not symbols.parse_okx(["GARBAGE", "BTC-USDT-XYZ", None])["ok"].any()


def _mapped(**tables):
    m = base.Mapped()
    for t, rows in tables.items():
        m.add(t, pd.DataFrame(rows))
    return m


def test_combine_keeps_the_best_ranked_price_and_reports_conflicts():
    ins = {"instrument_id": "X", "venue": "v", "underlying": "BTC", "kind": "perpetual", "settlement": "linear",
           "contract_size": 1.0}
    m = _mapped(instruments=[ins, dict(ins), dict(ins, contract_size=2.0)],
                market=[{"instrument_id": "X", "underlying_price": 2.0, "implied_vol": np.nan, "priority": 2},
                        {"instrument_id": "X", "underlying_price": 1.0, "implied_vol": np.nan, "priority": 0}],
                index=[{"underlying": "BTC", "price": 10.0, "priority": 0},
                       {"underlying": "BTC", "price": 11.0, "priority": 0},
                       {"underlying": "BTC", "price": 99.0, "priority": 2}],
                positions=[{"account_id": "A", "instrument_id": "X", "quantity": 1.0}],
                balances=[{"account_id": "A", "venue": "v", "asset": "USDC", "amount": 5.0}])
    c = base.combine(m)
    assert c.tables["market"]["underlying_price"].tolist() == [1.0]
    assert dict(zip(c.tables["index"]["underlying"], c.tables["index"]["price"])) == {"BTC": 10.0, "USDC": 1.0}
    assert sorted(c.rejects["reason"]) == ["conflicting_index", "conflicting_instrument"]
    assert c.tables["instruments"]["contract_size"].tolist() == [1.0]


def test_rejects_carry_a_one_line_message_with_the_source():
    df = pd.DataFrame({"size": ["x", 1]})
    rj = base.Rejector("deribit.positions", df, "positions.json", account="A", venue="deribit")
    rj.flag(np.array([True, False]), "size", "wrong_type")
    r = rj.rejects()
    assert r["message"].tolist() == ["positions.json: deribit.positions row 1, column size: value is not of the "
                                     "expected type (wrong_type; value 'x')"]
    assert r[["account_id", "venue"]].values.tolist() == [["A", "deribit"]]
    with pytest.raises(KeyError):
        rj.flag(np.array([True, True]), "size", "no_such_reason")
