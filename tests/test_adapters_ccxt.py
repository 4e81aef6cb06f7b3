"""CCXT unified structures, as ccxt itself parses recorded Deribit and OKX responses, mapped to the book.

The recorded responses (tests/data/adapters, sources in its README) follow the venues' published API
examples; ccxt's own exchange classes parse them (their HTTP call replaced by a recorded transport),
so every convention is tested on what the real library returns: Deribit's ``contracts`` in USD with
``contractSize`` 10, shorts with a negative ``contracts``, vols in percent; OKX's decimal vols and its
forward in ``info.fwdPx``; OKX net and long/short modes. The same files through the venues' own JSON
adapters give the same book.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

ccxt = pytest.importorskip("ccxt", reason="the ccxt tests need the optional extra 'connect' (ccxt)")

from gpurisk.adapters import base, ccxt as cc, deribit, live, okx  # noqa: E402
from gpurisk.adapters import ingest as ing  # noqa: E402

DATA = Path(__file__).parent / "data" / "adapters"


def _read(name):
    return json.loads((DATA / name).read_text())


def deribit_exchange():
    """ccxt's Deribit class answering from the recorded Deribit responses."""
    tickers = {d["result"]["instrument_name"]: d for d in (_read("deribit/ticker_perpetual.json"),
                                                           _read("deribit/ticker_option.json"))}

    def fetch(url, method="GET", headers=None, body=None):
        u = urlsplit(url)
        path = u.path.split("/api/v2/")[1]
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if path == "public/get_instruments":
            return _read("deribit/instruments.json")
        if path == "public/get_currencies":
            return {"jsonrpc": "2.0", "result": [{"currency": "BTC", "currency_long": "Bitcoin", "fee_precision": 4}]}
        if path == "private/get_positions":
            return _read("deribit/positions.json")
        if path == "private/get_account_summaries":
            return _read("deribit/account_summaries.json")
        if path == "public/ticker":
            return json.loads(json.dumps(tickers[q["instrument_name"]]))
        raise AssertionError(f"unexpected call {path}")

    ex = ccxt.deribit({"apiKey": "k", "secret": "s", "enableRateLimit": False})
    ex.fetch = fetch
    return ex


def okx_exchange(positions_file: str):
    """ccxt's OKX class answering from the recorded OKX responses (USDT spot pairs priced at the index tickers)."""
    index = {d["instId"].split("-")[0]: d["idxPx"] for d in _read("okx/index_tickers.json")["data"]}
    spot = [{"instType": "SPOT", "instId": f"{c}-USDT", "baseCcy": c, "quoteCcy": "USDT", "state": "live",
             "lotSz": "0.0001", "tickSz": "0.1", "minSz": "0.0001"} for c in index]

    def env(d):
        return {"code": "0", "msg": "", "data": d}

    def fetch(url, method="GET", headers=None, body=None):
        u = urlsplit(url)
        path = u.path.split("/api/v5/")[1]
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if path == "asset/currencies":
            return env([])
        if path == "public/instruments":
            if q["instType"] == "SPOT":
                return env(spot)
            return env([d for d in _read("okx/instruments.json")["data"]
                        if d["instType"] == q["instType"] and d["uly"] == q.get("uly", d["uly"])])
        if path == "account/positions":
            return _read(f"okx/{positions_file}")
        if path == "account/balance":
            return _read("okx/balance.json")
        if path == "public/mark-price":
            return env([d for d in _read("okx/mark_price.json")["data"] if d["instId"] == q["instId"]])
        if path == "public/opt-summary":
            return _read("okx/opt_summary.json")
        if path == "market/ticker":
            c = q["instId"].split("-")[0]
            return env([{"instType": "SPOT", "instId": q["instId"], "last": index[c], "ts": "1646733631242"}])
        raise AssertionError(f"unexpected call {path}")

    ex = ccxt.okx({"apiKey": "k", "secret": "s", "password": "p", "enableRateLimit": False})
    ex.options["defaultUnderlying"] = ["BTC-USD"]
    ex.fetch = fetch
    return ex


def _combined(m):
    return ing._typed(base.combine(m))


# ----------------------------------------------------------------------------- Deribit through ccxt


def test_deribit_conventions_on_what_ccxt_returns():
    st = live.fetch_structures(deribit_exchange())
    by = {p["symbol"]: p for p in st["positions"]}
    perp, opt = by["BTC/USD:BTC"], by["BTC/USD:BTC-240927-40000-C"]
    # what ccxt itself says: contracts is Deribit's USD size, contractSize 10; a short option is negative
    assert (perp["contracts"], perp["contractSize"], perp["side"]) == (50, 10, "long")
    assert (opt["contracts"], opt["side"]) == (-1.5, "short")
    assert st["greeks"][0]["markImpliedVolatility"] == 61.27  # percent

    m = cc.from_ccxt(**st, venue="deribit", account="D1")
    t = _combined(m)
    q = dict(zip(t["positions"]["instrument_id"], t["positions"]["quantity"]))
    assert q == {"BTC-PERPETUAL": 5.0, "BTC-27SEP24-40000-C": -1.5}  # 50 USD / 10 USD per contract
    ins = t["instruments"].set_index("instrument_id")
    assert ins.loc["BTC-PERPETUAL", "contract_size"] == 10.0
    assert ins.loc["BTC-27SEP24-40000-C", "settlement"] == "inverse"
    assert str(ins.loc["BTC-27SEP24-40000-C", "expiry"]) == "2024-09-27 08:00:00+00:00"
    mk = t["market"].set_index("instrument_id")
    assert mk.loc["BTC-27SEP24-40000-C", "implied_vol"] == pytest.approx(0.6127, rel=1e-15)
    assert mk.loc["BTC-27SEP24-40000-C", "underlying_price"] == 38992.71
    assert mk.loc["BTC-PERPETUAL", "underlying_price"] == 36560.02
    assert dict(zip(t["index"]["underlying"], t["index"]["price"]))["BTC"] == 36552.72
    bal = dict(zip(t["balances"]["asset"], t["balances"]["amount"]))
    assert bal == {"BTC": 0.81349, "USDC": 2500.0}
    # the closed future and the zero ETH summary are reported, not dropped: input = mapped + rejected
    assert set(m.rejects["reason"]) == {"flat_position", "zero_balance"}
    for kind, c in m.counts.items():
        assert c["input"] == c["mapped"] + c["rejected"], kind


def test_deribit_through_ccxt_equals_deribit_native_json():
    st = live.fetch_structures(deribit_exchange())
    via_ccxt = _combined(cc.from_ccxt(**st, venue="deribit", account="D1"))
    files = ["positions", "account_summaries", "ticker_option", "ticker_perpetual", "instruments"]
    native = _combined(deribit.from_deribit([(_read(f"deribit/{f}.json"), f) for f in files], "D1"))
    for t in ("positions", "balances", "index"):
        a = via_ccxt[t].sort_values(list(via_ccxt[t].columns[:2])).reset_index(drop=True)
        b = native[t].sort_values(list(native[t].columns[:2])).reset_index(drop=True)
        assert a.astype(object).equals(b[a.columns].astype(object)), t
    assert set(via_ccxt["instruments"]["instrument_id"]) == set(native["instruments"]["instrument_id"])
    a = via_ccxt["market"].set_index("instrument_id").sort_index()
    b = native["market"].set_index("instrument_id").sort_index()
    np.testing.assert_allclose(a["underlying_price"], b["underlying_price"], rtol=0)
    np.testing.assert_allclose(a["implied_vol"], b["implied_vol"], rtol=1e-15)


# ----------------------------------------------------------------------------- OKX through ccxt


@pytest.mark.parametrize("mode", ["net", "long_short"])
def test_okx_conventions_on_what_ccxt_returns(mode):
    st = live.fetch_structures(okx_exchange(f"positions_{mode}.json"))
    g = st["greeks"][0]
    assert g["markImpliedVolatility"] == pytest.approx(1.5551965233045728)  # decimal, not percent
    assert g["underlyingPrice"] is None and g["info"]["fwdPx"] == "39016.8143629068452065"
    opt = next(p for p in st["positions"] if p["symbol"] == "BTC/USD:BTC-220309-33000-C")
    assert (opt["contracts"], opt["side"], opt["contractSize"]) == (40, "short", 0.01)

    m = cc.from_ccxt(**st, venue="okx", account="O1")
    t = _combined(m)
    pos = t["positions"].groupby("instrument_id")["quantity"].sum().to_dict()
    if mode == "net":
        assert pos == {"BTC-USDT-SWAP": 25.0, "BTC-USD-220309-33000-C": -0.4, "ETH-USD-SWAP": -30.0}
    else:  # long 25 and short 10 of one swap are two rows the book nets
        assert sorted(t["positions"].loc[t["positions"]["instrument_id"] == "BTC-USDT-SWAP", "quantity"]) == [-10, 25]
        assert pos == {"BTC-USDT-SWAP": 15.0, "BTC-USD-220309-33000-C": -0.4}
    ins = t["instruments"].set_index("instrument_id")
    assert ins.loc["BTC-USD-220309-33000-C", "contract_size"] == 1.0  # an inverse option is held in coins
    mk = t["market"].set_index("instrument_id")
    assert mk.loc["BTC-USD-220309-33000-C", "underlying_price"] == 39016.8143629068452065
    assert mk.loc["BTC-USD-220309-33000-C", "implied_vol"] == 1.5551965233045728
    assert mk.loc["BTC-USDT-SWAP", "underlying_price"] == 38950.1
    if mode == "net":
        assert ins.loc["ETH-USD-SWAP", ["settlement", "contract_size"]].tolist() == ["inverse", 10.0]


@pytest.mark.parametrize("mode", ["net", "long_short"])
def test_okx_through_ccxt_equals_okx_native_json(mode):
    st = live.fetch_structures(okx_exchange(f"positions_{mode}.json"))
    via_ccxt = _combined(cc.from_ccxt(**st, venue="okx", account="O1"))
    files = [f"positions_{mode}", "balance", "instruments", "opt_summary", "mark_price", "index_tickers"]
    native = _combined(okx.from_okx([(_read(f"okx/{f}.json"), f) for f in files], "O1"))
    # the index tickers price every index; the live path asks only for the held coins'
    native["index"] = native["index"][native["index"]["underlying"].isin(via_ccxt["index"]["underlying"])]
    for t in ("positions", "balances", "index"):
        a = via_ccxt[t].sort_values(list(via_ccxt[t].columns[:3])).reset_index(drop=True)
        b = native[t].sort_values(list(native[t].columns[:3])).reset_index(drop=True)
        assert a.astype(object).equals(b[a.columns].astype(object)), t
    a = via_ccxt["market"].set_index("instrument_id").sort_index()
    b = native["market"].set_index("instrument_id").loc[a.index]
    np.testing.assert_array_equal(a["underlying_price"], b["underlying_price"])


def test_okx_ctmult_is_read_from_the_markets():
    """CCXT's contractSize is OKX's ctVal; with ctMult 0.1 the real contract is ctVal × ctMult."""
    st = live.fetch_structures(okx_exchange("positions_net.json"))
    markets = [dict(mk, info={**mk["info"], "ctMult": "0.1"}) if mk["option"] else mk for mk in st["markets"]]
    t = _combined(cc.from_ccxt(**{**st, "markets": markets}, venue="okx", account="O1"))
    q = dict(zip(t["positions"]["instrument_id"], t["positions"]["quantity"]))
    assert q["BTC-USD-220309-33000-C"] == pytest.approx(-40 * 0.01 * 0.1, rel=1e-15)


def test_ccxt_structures_from_json_files_through_the_command(tmp_path):
    """Structures saved as JSON (as fetch_positions / fetch_balance / ... return them) ingest like the objects."""
    from gpurisk.cli import main

    st = live.fetch_structures(deribit_exchange())
    src = tmp_path / "D1"
    src.mkdir()
    for k, v in st.items():
        (src / f"{k}.json").write_text(json.dumps(v, default=str))
    out = tmp_path / "book"
    assert main(["ingest", str(tmp_path / "D1"), "--format", "ccxt", "--venue", "deribit", "--account", "D1",
                 "--out", str(out)]) == 0
    from gpurisk.io import load_book

    book = load_book(out)
    assert book.summary["positions"]["accepted"] == 2 and book.summary["total_rejected"] == 0
    summary = json.loads((out / "ingest.json").read_text())
    assert summary["records"]["ccxt.positions"] == {"input": 3, "mapped": 2, "rejected": 1}
