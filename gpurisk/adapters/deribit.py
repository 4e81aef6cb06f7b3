"""Deribit's own JSON (API v2) in and out: positions, account summaries, tickers and instruments.

In (``from_deribit``): the ``result`` of these calls, bare or inside the JSON-RPC envelope
(``{"jsonrpc": "2.0", "result": ..., "usOut": ...}``), one or more per file:

- ``private/get_positions`` -> positions. ``size`` is USD for futures and perpetuals and coin
  for options, signed (short < 0) with ``direction`` buy / sell / zero; the book quantity is
  |size| / contract_size with the sign of the direction (``side_conflict`` if they disagree,
  ``flat_position`` for a zero size). ``mark_price`` marks a future or perpetual;
  ``index_price`` prices the underlying.
- ``private/get_account_summary`` (or ``get_account_summaries``: ``{"summaries": [...]}``) ->
  balances: ``equity`` of ``currency`` at venue ``deribit``.
- ``public/ticker`` and ``public/get_book_summary_by_currency`` -> market rows: a future's
  ``mark_price``; an option's forward ``underlying_price`` and ``mark_iv`` (percent: 61.27 is
  0.6127); ``index_price`` / ``estimated_delivery_price`` price the underlying.
- ``public/get_instruments`` -> contract sizes and exact expiries (optional: without it, coin-settled
  futures and perpetuals use ``CONTRACT_SIZE_USD``, coin-settled options 1 coin, and expiries
  the name's date at 08:00 UTC; a USDC-settled instrument then is ``unknown_contract_size``).

Positions name no account: the caller gives it. Out (``responses``): the same calls' results for
one account of a book, so a book can go out and come back (round trips in the tests).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import symbols
from .base import (PRIORITY_MARKET, AdapterError, Mapped, Rejector, check_number, epoch_ms, key_text,
                   ms_time, number, records, records_frame, source_name, text, utc)

VENUE = "deribit"
#: USD per contract of coin-settled futures and perpetuals (Deribit contract specifications)
CONTRACT_SIZE_USD = {"BTC": 10.0, "ETH": 1.0}

_POSITION_COLS = ["instrument_name", "size", "direction", "kind", "mark_price", "index_price"]
_SUMMARY_COLS = ["currency", "equity"]
_TICKER_COLS = ["instrument_name", "mark_price", "index_price", "estimated_delivery_price", "underlying_price",
                "mark_iv", "timestamp", "creation_timestamp"]
_INSTRUMENT_COLS = ["instrument_name", "kind", "contract_size", "expiration_timestamp", "strike", "option_type",
                    "settlement_currency", "base_currency", "counter_currency", "settlement_period"]


# ----------------------------------------------------------------------------- classification


def _kind(rec: dict) -> str | None:
    keys = rec.keys()
    if "instrument_name" in keys and "size" in keys and ("direction" in keys or "size_currency" in keys):
        return "positions"
    if "summaries" in keys:
        return "summaries"
    if "currency" in keys and ("equity" in keys or "margin_balance" in keys):
        return "account_summary"
    if "instrument_name" in keys and "contract_size" in keys and "expiration_timestamp" in keys:
        return "instruments"
    if "instrument_name" in keys and keys & {"mark_iv", "underlying_price", "index_price", "mark_price",
                                             "estimated_delivery_price"}:
        return "tickers"
    return None


def split(doc, source) -> tuple[dict[str, list], list]:
    """The records of one JSON document by kind ({kind: [record]}) and its response times (µs, ``usOut``).

    AdapterError for a JSON-RPC error or a document that holds none of the structures above.
    """
    src = source_name(source)
    docs = doc if isinstance(doc, list) and doc and all(isinstance(d, dict) and "jsonrpc" in d for d in doc) \
        else [doc]
    out: dict[str, list] = {}
    times = []
    for d in docs:
        if isinstance(d, dict) and "jsonrpc" in d:
            if "error" in d:
                err = d.get("error") or {}
                msg = err.get("message") if isinstance(err, dict) else err
                raise AdapterError(f"{src}: Deribit answered an error: {msg}")
            if "usOut" in d:
                times.append(d.get("usOut"))
            if "result" not in d:
                raise AdapterError(f"{src}: JSON-RPC response without a result")
            d = d["result"]
        records = d if isinstance(d, list) else [d]
        if not records:
            continue
        kind = next((k for k in (_kind(r) for r in records if isinstance(r, dict)) if k is not None), None)
        if kind is None:
            raise AdapterError(f"{src}: not a Deribit positions, account summary, ticker or instruments result")
        if kind == "summaries":
            records = [x for r in records if isinstance(r, dict) for x in (r.get("summaries") or [])]
            kind = "account_summary"
        out.setdefault(kind, []).extend(records)
    return out, times


# ----------------------------------------------------------------------------- in


def _specs(records: list, source: str, m: Mapped) -> pd.DataFrame:
    """Instrument list -> {instrument_name: contract_size, expiry} rows (rejects for the bad ones)."""
    df = records_frame(records, _INSTRUMENT_COLS)
    rj = Rejector("deribit.instruments", df, source, venue=VENUE)
    name = key_text(rj, df, "instrument_name")
    cs, miss, wrong = number(df["contract_size"])
    check_number(rj, "contract_size", cs, miss, wrong, positive=True)
    exp = ms_time(df["expiration_timestamp"])
    ok = m.settle(rj)
    settle = pd.Series(text(df["settlement_currency"])[0], dtype=object).str.upper()
    base = pd.Series(text(df["base_currency"])[0], dtype=object).str.upper()
    return pd.DataFrame({"instrument_name": name[ok], "spec_size": cs[ok],
                         "spec_expiry": utc(exp[ok]),
                         "spec_linear": (settle.notna() & (settle != base)).to_numpy()[ok]})


def _terms(names, specs: pd.DataFrame) -> pd.DataFrame:
    """Parsed names joined with the instrument list: terms, ``contract_size`` (book) and exact expiries."""
    t = symbols.parse_deribit(names)
    t["instrument_name"] = pd.Series(names, dtype=object).reset_index(drop=True)
    t = t.merge(specs.drop_duplicates("instrument_name"), on="instrument_name", how="left")
    inverse_fut = (t["settlement"] == "inverse") & t["kind"].isin(["future", "perpetual"])
    default = np.where(inverse_fut, t["base"].map(CONTRACT_SIZE_USD).to_numpy(dtype=float),
                       np.where((t["settlement"] == "inverse") & (t["kind"] == "option"), 1.0, np.nan))
    size = np.where(t["spec_size"].notna(), t["spec_size"].to_numpy(dtype=float), default)
    # an inverse option's book contract is 1 coin; Deribit's are 1 coin too
    t["contract_size"] = np.where((t["settlement"] == "inverse") & (t["kind"] == "option"), 1.0, size)
    t["size_unit"] = size  # what one contract of ``size`` is (USD or coin), to turn sizes into contracts
    exp = t["spec_expiry"] if "spec_expiry" in t else pd.Series(pd.NaT, index=t.index)
    t["expiry"] = exp.where(exp.notna(), t["expiry"]).where(t["kind"].isin(["future", "option"]))
    return t


def _instrument_rows(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"instrument_id": t["instrument_name"], "venue": VENUE, "underlying": t["base"],
                         "kind": t["kind"], "settlement": t["settlement"], "contract_size": t["contract_size"],
                         "expiry": utc(t["expiry"]), "strike": t["strike"],
                         "option_type": t["option_type"]})


def _positions(records, source, account, specs, m: Mapped) -> None:
    df = records_frame(records, _POSITION_COLS)
    rj = Rejector("deribit.positions", df, source, account=account, venue=VENUE)
    name = key_text(rj, df, "instrument_name")
    t = _terms(name, specs)
    rj.flag(~t["ok"].to_numpy(dtype=bool), "instrument_name", "unknown_symbol")
    rj.flag(~np.isfinite(t["contract_size"].to_numpy(dtype=float)), "instrument_name", "unknown_contract_size")
    size, miss, wrong = number(df["size"])
    check_number(rj, "size", size, miss, wrong)
    direction, dmiss, dwrong = text(df["direction"])
    direction = pd.Series(direction, dtype=object).str.lower()
    rj.flag(dwrong | (~dmiss & ~direction.isin(["buy", "sell", "zero"]).to_numpy()), "direction", "wrong_type")
    rj.flag(size == 0, "size", "flat_position")
    sign = np.where(direction == "buy", 1.0, np.where(direction == "sell", -1.0, np.sign(size)))
    rj.flag((np.sign(size) * sign < 0) | ((direction == "zero").to_numpy() & (size != 0)), "direction", "side_conflict")
    mark, mmiss, mwrong = number(df["mark_price"])
    index, imiss, iwrong = number(df["index_price"])
    ok = m.settle(rj)
    t = t[ok].reset_index(drop=True)
    qty = (np.abs(size[ok]) / t["size_unit"].to_numpy(dtype=float)) * sign[ok]
    m.add("instruments", _instrument_rows(t))
    m.add("positions", pd.DataFrame({"account_id": account, "instrument_id": t["instrument_name"], "quantity": qty}))
    m.add_position_prices(t["instrument_name"], t["kind"], mark[ok], t["base"], index[ok])


def _tickers(records, source, specs, m: Mapped) -> None:
    df = records_frame(records, _TICKER_COLS)
    rj = Rejector("deribit.tickers", df, source, venue=VENUE)
    name = key_text(rj, df, "instrument_name")
    t = _terms(name, specs)
    rj.flag(~t["ok"].to_numpy(dtype=bool), "instrument_name", "unknown_symbol")
    rj.flag(~np.isfinite(t["contract_size"].to_numpy(dtype=float)), "instrument_name", "unknown_contract_size")
    opt = (t["kind"] == "option").to_numpy()
    fwd, fmiss, fwrong = number(df["underlying_price"])
    iv, vmiss, vwrong = number(df["mark_iv"])
    mark, mmiss, mwrong = number(df["mark_price"])
    check_number(rj, "underlying_price", np.where(opt, fwd, 0.0), fmiss & opt, fwrong & opt, positive=False)
    check_number(rj, "mark_iv", np.where(opt, iv, 0.0), vmiss & opt, vwrong & opt)
    check_number(rj, "mark_price", np.where(~opt, mark, 0.0), mmiss & ~opt, mwrong & ~opt)
    index, imiss, iwrong = number(df["index_price"])
    edp, _, _ = number(df["estimated_delivery_price"])
    index = np.where(np.isfinite(index), index, edp)
    ts = ms_time(df["timestamp"])
    ts = np.where(np.isnat(ts), ms_time(df["creation_timestamp"]), ts)
    ok = m.settle(rj)
    m.seen(ts[ok])
    t = t[ok].reset_index(drop=True)
    o = opt[ok]
    m.add("instruments", _instrument_rows(t))
    m.add("market", pd.DataFrame({"instrument_id": t["instrument_name"],
                                  "underlying_price": np.where(o, fwd[ok], mark[ok]),
                                  "implied_vol": np.where(o, iv[ok] / 100.0, np.nan), "priority": PRIORITY_MARKET}))
    good = np.isfinite(index[ok]) & (index[ok] > 0)
    m.add("index", pd.DataFrame({"underlying": t["base"][good], "price": index[ok][good],
                                 "priority": PRIORITY_MARKET}))


def _summaries(records, source, account, m: Mapped) -> None:
    df = records_frame(records, _SUMMARY_COLS)
    rj = Rejector("deribit.account_summary", df, source, account=account, venue=VENUE)
    ccy = key_text(rj, df, "currency")
    eq, miss, wrong = number(df["equity"])
    check_number(rj, "equity", eq, miss, wrong)
    rj.flag(eq == 0, "equity", "zero_balance")
    ok = m.settle(rj)
    m.add("balances", pd.DataFrame({"account_id": account, "venue": VENUE,
                                    "asset": pd.Series(ccy[ok], dtype=object).str.upper(), "amount": eq[ok]}))


def from_deribit(documents, account: str | None = None) -> Mapped:
    """Map Deribit results to partial book tables.

    ``documents``: ``[(json_document, source)]`` or ``[(json_document, source, account)]`` (source: a file name
    for messages, or None); positions and account summaries belong to the document's account (default
    ``account``); tickers and instrument lists need none and apply to every document.
    """
    m = Mapped()
    by_kind: dict[str, list] = {}
    for item in documents:
        doc, source = item[0], item[1]
        acct = item[2] if len(item) > 2 and item[2] is not None else account
        parts, times = split(doc, source)
        us = np.asarray([t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)], dtype=float)
        m.seen((us // 1_000_000).astype(np.int64).astype("datetime64[s]") if len(us) else [])
        for kind, recs in parts.items():
            if kind in ("positions", "account_summary") and recs and (not isinstance(acct, str) or not acct.strip()):
                raise AdapterError(f"{source_name(source)}: Deribit {kind.replace('_', ' ')} name no account: "
                                   "give one (--account, or a folder named after the account)")
            by_kind.setdefault(kind, []).append((recs, source_name(source), acct))
        m.sources.append({"path": source_name(source), "format": "deribit", "kinds": sorted(parts),
                          **({"account": acct} if acct else {})})
    specs = pd.DataFrame({"instrument_name": pd.Series([], dtype=object), "spec_size": pd.Series([], dtype=float),
                          "spec_expiry": pd.Series([], dtype="datetime64[ns, UTC]"),
                          "spec_linear": pd.Series([], dtype=bool)})
    parts = [_specs(recs, src, m) for recs, src, _ in by_kind.get("instruments", [])]
    if parts:
        specs = pd.concat([specs] + parts, ignore_index=True)
    for recs, src, _ in by_kind.get("tickers", []):
        _tickers(recs, src, specs, m)
    for recs, src, acct in by_kind.get("positions", []):
        _positions(recs, src, acct, specs, m)
    for recs, src, acct in by_kind.get("account_summary", []):
        _summaries(recs, src, acct, m)
    return m


# ----------------------------------------------------------------------------- out


def _ms(as_of) -> int:
    """Epoch milliseconds of a UTC time (naive means UTC)."""
    ts = pd.Timestamp(as_of)
    return int((ts if ts.tzinfo is not None else ts.tz_localize("UTC")).value // 1_000_000)


def responses(tables: dict, account: str, as_of, market: bool = True) -> dict[str, dict]:
    """The Deribit results that describe ``account``'s part of a book (validated tables), as JSON-RPC responses:
    ``{"positions": ..., "account_summaries": ..., "tickers": ..., "instruments": ...}``.

    Tickers and instruments cover every Deribit instrument of the book, so the instrument list
    comes back whole (``market=False`` leaves them out: the same for every account); the response
    times are the book's as-of.
    """
    ms = _ms(as_of)
    ins = tables["instruments"]
    ins = ins[ins["venue"] == VENUE].reset_index(drop=True)
    opt = (ins["kind"] == "option").to_numpy()
    inverse = (ins["settlement"] == "inverse").to_numpy()
    unit = np.where(opt & inverse, 1.0, ins["contract_size"].to_numpy(dtype=float))
    exp_ms = epoch_ms(ins["expiry"], default=32503708800000)  # a perpetual "expires" in 3000, as Deribit says
    instruments = pd.DataFrame({
        "instrument_name": ins["instrument_id"], "kind": np.where(opt, "option", "future"), "contract_size": unit,
        "expiration_timestamp": exp_ms, "strike": ins["strike"].where(opt),
        "option_type": ins["option_type"].where(opt), "base_currency": ins["underlying"],
        "counter_currency": "USD", "settlement_currency": np.where(inverse, ins["underlying"], "USDC"),
        "settlement_period": np.where(ins["kind"] == "perpetual", "perpetual", "month"), "is_active": True})
    mk = tables["market"].drop_duplicates("instrument_id").set_index("instrument_id")
    marks = mk.reindex(ins["instrument_id"])
    index = ins["underlying"].map(tables["index"].drop_duplicates("underlying").set_index("underlying")["price"])
    fwd = marks["underlying_price"].to_numpy(dtype=float)
    tickers = pd.DataFrame({
        "instrument_name": ins["instrument_id"], "timestamp": ms, "state": "open",
        "mark_price": np.where(opt, np.nan, fwd), "underlying_price": np.where(opt, fwd, np.nan),
        "mark_iv": np.where(opt, marks["implied_vol"].to_numpy(dtype=float) * 100.0, np.nan),
        "index_price": index.to_numpy(dtype=float)})
    pos = tables["positions"]
    pos = pos[(pos["account_id"] == account) & pos["instrument_id"].isin(set(ins["instrument_id"]))]
    info = ins.assign(unit=unit, index_price=index.to_numpy(dtype=float), fwd=fwd).set_index("instrument_id")
    p = info.reindex(pos["instrument_id"])
    q = pos["quantity"].to_numpy(dtype=float)
    positions = pd.DataFrame({
        "instrument_name": pos["instrument_id"].to_numpy(), "kind": np.where(p["kind"] == "option", "option", "future"),
        "size": q * p["unit"].to_numpy(dtype=float), "direction": np.where(q > 0, "buy", "sell"),
        "mark_price": np.where(p["kind"] == "option", np.nan, p["fwd"].to_numpy(dtype=float)),
        "index_price": p["index_price"].to_numpy(dtype=float)})
    bal = tables["balances"]
    bal = bal[(bal["account_id"] == account) & (bal["venue"] == VENUE)]
    summaries = pd.DataFrame({"currency": bal["asset"].to_numpy(), "equity": bal["amount"].to_numpy(dtype=float)})

    def rpc(result):
        return {"jsonrpc": "2.0", "result": result, "usIn": ms * 1000, "usOut": ms * 1000, "testnet": False}

    out = {"positions": rpc(records(positions)), "account_summaries": rpc({"summaries": records(summaries)})}
    if market:
        out.update(tickers=rpc(records(tickers)), instruments=rpc(records(instruments)))
    return out


__all__ = ["VENUE", "CONTRACT_SIZE_USD", "from_deribit", "responses", "split"]
