"""Helpers of the adapter tests: books written out as venue responses, and recorded transports for ccxt.

A "transport" replaces a ccxt exchange object's ``fetch(url, method, headers, body)`` (its HTTP call),
so ccxt's own request building, signing and parsing run on recorded responses and no network is
touched. The responses are the venues' JSON as ``gpurisk.adapters.deribit.responses`` /
``okx.responses`` write it for a book (the same fields as the venues' published API examples).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest

from gpurisk.io import TABLES

KEYS = {"instruments": ["instrument_id"], "market": ["instrument_id"], "index": ["underlying"],
        "positions": ["account_id", "instrument_id"], "balances": ["account_id", "venue", "asset"]}


def _copy(x):
    return json.loads(json.dumps(x))


def deribit_transport(resp: dict, calls: list | None = None):
    """A ccxt ``fetch`` answering Deribit API v2 calls from ``deribit.responses(...)``."""
    tickers = {t["instrument_name"]: t for t in resp["tickers"]["result"]}
    stamp = {k: resp["tickers"][k] for k in ("usIn", "usOut")}

    def fetch(url, method="GET", headers=None, body=None):
        u = urlsplit(url)
        path = u.path.split("/api/v2/")[1]
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if calls is not None:
            calls.append((method, url, headers))
        env = {"jsonrpc": "2.0", **stamp}
        if path == "public/get_instruments":
            return _copy(resp["instruments"])
        if path == "public/get_currencies":
            coins = sorted({r["base_currency"] for r in resp["instruments"]["result"]})
            return {**env, "result": [{"currency": c, "currency_long": c, "fee_precision": 4} for c in coins]}
        if path == "private/get_positions":
            return _copy(resp["positions"])
        if path == "private/get_account_summaries":
            return _copy(resp["account_summaries"])
        if path == "public/ticker":
            return {**env, "result": _copy(tickers[q["instrument_name"]])}
        raise AssertionError(f"unexpected Deribit call {path}")

    return fetch


def okx_transport(resp: dict, index: dict[str, float], calls: list | None = None):
    """A ccxt ``fetch`` answering OKX API v5 calls from ``okx.responses(...)`` (+ USDT spot pairs at the index)."""
    ins = resp["instruments"]["data"]
    spot = [{"instType": "SPOT", "instId": f"{u}-USDT", "baseCcy": u, "quoteCcy": "USDT", "state": "live",
             "lotSz": "0.00000001", "tickSz": "0.1", "minSz": "0.00001"} for u in index]
    ts = resp["opt_summary"]["data"][0]["ts"] if resp["opt_summary"]["data"] else resp["mark_price"]["data"][0]["ts"]

    def env(d):
        return {"code": "0", "msg": "", "data": d}

    def fetch(url, method="GET", headers=None, body=None):
        u = urlsplit(url)
        path = u.path.split("/api/v5/")[1]
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if calls is not None:
            calls.append((method, url, headers))
        if path == "asset/currencies":
            return env([])
        if path == "public/instruments":
            t = q["instType"]
            rows = spot if t == "SPOT" else [r for r in ins if r["instType"] == t
                                              and ("uly" not in q or r.get("uly") == q["uly"])]
            return env(_copy(rows))
        if path == "account/positions":
            return _copy(resp["positions"])
        if path == "account/balance":
            return _copy(resp["balance"])
        if path == "public/mark-price":
            return env([r for r in resp["mark_price"]["data"] if r["instId"] == q["instId"]])
        if path == "market/ticker":
            base = q["instId"].split("-")[0]
            return env([{"instType": "SPOT", "instId": q["instId"], "last": repr(float(index[base])), "ts": ts}])
        if path == "public/opt-summary":
            return _copy(resp["opt_summary"])
        raise AssertionError(f"unexpected OKX call {path}")

    return fetch


def binance_spot_responses(tables: dict, account: str, as_of) -> dict:
    """Binance spot ``/api/v3/exchangeInfo``, ``/api/v3/account`` and 24h tickers for ``account``'s part of a book
    (spot positions on ``COINUSDT`` are the wallet's coins; USDT balances its cash)."""
    ms = int(pd.Timestamp(as_of).tz_localize("UTC").value // 1_000_000) if pd.Timestamp(as_of).tzinfo is None \
        else int(pd.Timestamp(as_of).value // 1_000_000)
    ins = tables["instruments"]
    ins = ins[(ins["venue"] == "binance") & (ins["kind"] == "spot")]
    bases = {iid: iid[:-4] for iid in ins["instrument_id"] if iid.endswith("USDT")}
    symbols = [{"symbol": iid, "status": "TRADING", "baseAsset": b, "quoteAsset": "USDT", "baseAssetPrecision": 8,
                "quotePrecision": 8, "quoteAssetPrecision": 8, "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False, "permissions": ["SPOT"], "orderTypes": ["LIMIT", "MARKET"],
                "filters": []} for iid, b in bases.items()]
    mk = tables["market"].set_index("instrument_id")["underlying_price"]
    tickers = {iid: {"symbol": iid, "lastPrice": repr(float(mk[iid])), "closeTime": ms, "openTime": ms - 86_400_000}
               for iid in bases}
    pos = tables["positions"]
    pos = pos[(pos["account_id"] == account) & pos["instrument_id"].isin(list(bases))]
    bal = tables["balances"]
    bal = bal[(bal["account_id"] == account) & (bal["venue"] == "binance")]
    balances = [{"asset": bases[i], "free": repr(float(q)), "locked": "0.0"} for i, q in
                zip(pos["instrument_id"], pos["quantity"])]
    balances += [{"asset": a, "free": repr(float(x)), "locked": "0.0"} for a, x in zip(bal["asset"], bal["amount"])]
    return {"exchangeInfo": {"timezone": "UTC", "serverTime": ms, "symbols": symbols},
            "account": {"updateTime": ms, "accountType": "SPOT", "balances": balances}, "tickers": tickers}


def binance_transport(resp: dict, calls: list | None = None):
    def fetch(url, method="GET", headers=None, body=None):
        u = urlsplit(url)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if calls is not None:
            calls.append((method, url, headers))
        if u.path == "/api/v3/exchangeInfo":
            return _copy(resp["exchangeInfo"])
        if u.path == "/api/v3/account":
            return _copy(resp["account"])
        if u.path == "/api/v3/ticker/24hr":
            return _copy(resp["tickers"][q["symbol"]])
        return []  # margin pairs, currencies, futures positions: none

    return fetch


class CcxtVenues:
    """One ccxt exchange object per venue (markets loaded once), answering from a book's responses per account."""

    def __init__(self, clean: dict, as_of, calls: list | None = None):
        self.ccxt = pytest.importorskip("ccxt", reason="the ccxt tests need the optional extra 'connect' (ccxt)")
        self.clean, self.as_of, self.calls = clean, as_of, calls
        self.exchanges: dict = {}
        self.market: dict = {}

    def responses(self, venue: str, account: str, **kw) -> dict:
        """The venue's responses for ``account`` (the market parts computed once per venue)."""
        from gpurisk.adapters import deribit, okx

        mod = {"deribit": deribit, "okx": okx}[venue]
        if venue not in self.market:
            self.market[venue] = {k: v for k, v in mod.responses(self.clean, account, self.as_of, **kw).items()
                                  if k not in ("positions", "account_summaries", "balance")}
        return {**self.market[venue], **mod.responses(self.clean, account, self.as_of, market=False, **kw)}

    def exchange(self, venue: str, account: str):
        ccxt, clean, as_of, calls = self.ccxt, self.clean, self.as_of, self.calls
        ex = self.exchanges.get(venue)
        opts = {"apiKey": "test-key", "secret": "test-secret", "enableRateLimit": False}
        if venue == "deribit":
            ex = ex or ccxt.deribit(opts)
            ex.fetch = deribit_transport(self.responses(venue, account), calls)
        elif venue == "okx":
            resp = self.responses(venue, account)
            if ex is None:
                ex = ccxt.okx({**opts, "password": "test-pass"})
                ex.options["defaultUnderlying"] = sorted({r["uly"] for r in resp["instruments"]["data"]
                                                          if r["instType"] == "OPTION"})
            index = dict(zip(clean["index"]["underlying"], clean["index"]["price"]))
            ex.fetch = okx_transport(resp, index, calls)
        elif venue == "binance":
            if ex is None:
                ex = ccxt.binance(opts)
                ex.options["fetchMarkets"] = {"types": ["spot"]}
            ex.fetch = binance_transport(binance_spot_responses(clean, account, as_of), calls)
        else:
            raise ValueError(venue)
        self.exchanges[venue] = ex
        return ex

    def structures(self, venue: str, account: str) -> dict:
        """The CCXT structures ccxt itself parses for ``account`` at ``venue`` (``live.fetch_structures``)."""
        from gpurisk.adapters import live

        return live.fetch_structures(self.exchange(venue, account))


def accounts(clean: dict) -> list[str]:
    return sorted(set(clean["positions"]["account_id"]) | set(clean["balances"]["account_id"]))


def assert_same_tables(a: dict, b: dict, rtol: float = 1e-12) -> None:
    """Two sets of book tables hold the same rows (any order): text equal, numbers to ``rtol``, times equal."""
    for t in TABLES:
        x = a[t].sort_values(KEYS[t]).reset_index(drop=True)
        y = b[t].sort_values(KEYS[t]).reset_index(drop=True)
        assert len(x) == len(y), f"{t}: {len(x)} rows vs {len(y)}"
        for c in x.columns:
            assert c in y.columns, f"{t}: column {c} missing"
            u, v = x[c], y[c]
            if pd.api.types.is_float_dtype(u.dtype):
                np.testing.assert_allclose(v.to_numpy(float), u.to_numpy(float), rtol=rtol, atol=0,
                                           err_msg=f"{t}.{c}")
            elif isinstance(u.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(u.dtype):
                assert (pd.to_datetime(u, utc=True).astype("datetime64[ns, UTC]")
                        .equals(pd.to_datetime(v, utc=True).astype("datetime64[ns, UTC]"))), f"{t}.{c}"
            else:
                assert u.astype(object).where(u.notna(), None).tolist() == \
                    v.astype(object).where(v.notna(), None).tolist(), f"{t}.{c}"


def test_assert_same_tables_sees_a_difference(tiny):
    """The comparison helper fails on a changed number (so the round trips that use it can fail)."""
    from conftest import TINY_AS_OF
    from gpurisk.validate import validate

    clean, _, _ = validate(tiny, TINY_AS_OF)
    assert_same_tables(clean, clean)
    other = {k: v.copy() for k, v in clean.items()}
    other["positions"].loc[0, "quantity"] *= 1 + 1e-9
    with pytest.raises(AssertionError):
        assert_same_tables(clean, other)
