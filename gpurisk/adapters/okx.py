"""OKX's own JSON (API v5) in and out: positions, balance, instruments, option summary, mark and index prices.

In (``from_okx``): the ``data`` of these calls, bare or inside OKX's envelope (``{"code": "0",
"msg": "", "data": [...]}``; a ``code`` other than ``"0"`` is a one-line error):

- ``/api/v5/account/positions`` -> positions. ``pos`` is in contracts; in net mode
  (``posSide`` ``net``) its sign is the side, in long/short mode ``posSide`` ``long`` / ``short``
  says it (``side_conflict`` if a negative ``pos`` says ``long``). ``markPx`` marks a future or
  swap, ``idxPx`` prices the underlying. Spot-margin positions (``MARGIN``) are
  ``unsupported_instrument``.
- ``/api/v5/account/balance`` -> balances: ``eq`` of each ``details[].ccy`` at venue ``okx``.
- ``/api/v5/public/instruments`` -> the contract: ``ctVal`` × ``ctMult`` coins (linear, options)
  or USD (inverse futures and swaps), ``ctType``, ``settleCcy``, ``expTime``. Needed: OKX's
  positions do not carry the contract size (without it a position is ``unknown_contract_size``).
- ``/api/v5/public/opt-summary`` -> an option's forward ``fwdPx`` and ``markVol`` (decimal).
- ``/api/v5/public/mark-price`` -> ``markPx`` of futures and swaps.
- ``/api/v5/market/index-tickers`` -> ``idxPx`` of an index ``BTC-USDT`` (underlying ``BTC``).

An inverse (coin-margined) option is held in the book as coins (contract size 1): the book
quantity is ``pos`` × ``ctVal`` × ``ctMult``. Out (``responses``): the same calls' data for one
account of a book, in net or long/short mode.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import symbols
from .base import (PRIORITY_MARKET, AdapterError, Mapped, Rejector, check_number, epoch_ms, key_text,
                   ms_time, number, records, records_frame, source_name, text, utc)

VENUE = "okx"

_POSITION_COLS = ["instId", "instType", "pos", "posSide", "markPx", "idxPx", "uTime"]
_INSTRUMENT_COLS = ["instId", "instType", "ctVal", "ctMult", "ctType", "settleCcy", "expTime"]
_SUMMARY_COLS = ["instId", "fwdPx", "markVol", "ts"]
_MARK_COLS = ["instId", "markPx", "ts"]
_INDEX_COLS = ["instId", "idxPx", "ts"]
_BALANCE_COLS = ["ccy", "eq", "uTime"]


def _kind(rec: dict) -> str | None:
    k = rec.keys()
    if "details" in k and ("totalEq" in k or "uTime" in k):
        return "balance"
    if "instId" not in k:
        return None
    if "pos" in k and ("posSide" in k or "mgnMode" in k):
        return "positions"
    if "ctVal" in k:
        return "instruments"
    if "fwdPx" in k or "markVol" in k:
        return "opt_summary"
    if "markPx" in k:
        return "mark_price"
    if "idxPx" in k:
        return "index_tickers"
    return None


def split(doc, source) -> dict[str, list]:
    """The records of one JSON document by kind; AdapterError for an OKX error or an unknown structure."""
    src = source_name(source)
    if isinstance(doc, dict) and "code" in doc and "data" in doc:
        if str(doc.get("code")) != "0":
            raise AdapterError(f"{src}: OKX answered code {doc.get('code')}: {doc.get('msg')}")
        doc = doc["data"]
    recs = doc if isinstance(doc, list) else [doc]
    if not recs:
        return {}
    kind = next((k for k in (_kind(r) for r in recs if isinstance(r, dict)) if k is not None), None)
    if kind is None:
        raise AdapterError(f"{src}: not an OKX positions, balance, instruments, opt-summary, mark-price or "
                           "index-tickers result")
    if kind == "balance":  # one record per currency of every account detail list
        flat = []
        for r in recs:
            details = r.get("details") if isinstance(r, dict) else None
            if isinstance(details, list):
                flat.extend({**d, "uTime": d.get("uTime", r.get("uTime"))} if isinstance(d, dict) else d
                            for d in details)
            else:
                flat.append(r)
        recs = flat
    return {kind: recs}


def _specs(recs, source, m: Mapped) -> pd.DataFrame:
    df = records_frame(recs, _INSTRUMENT_COLS)
    rj = Rejector("okx.instruments", df, source, venue=VENUE)
    ids = key_text(rj, df, "instId")
    val, miss, wrong = number(df["ctVal"])
    mult, mmiss, mwrong = number(df["ctMult"])
    spot = (pd.Series(text(df["instType"])[0], dtype=object) == "SPOT").to_numpy()
    check_number(rj, "ctVal", np.where(spot, 1.0, val), miss & ~spot, wrong & ~spot, positive=True)
    check_number(rj, "ctMult", mult, np.zeros(len(df), bool), mwrong, required=False)
    rj.flag(np.isfinite(mult) & (mult <= 0), "ctMult", "non_positive")
    ok = m.settle(rj)
    size = np.where(spot, 1.0, val) * np.where(np.isfinite(mult), mult, 1.0)
    return pd.DataFrame({"instId": ids[ok], "spec_size": size[ok],
                         "spec_type": pd.Series(text(df["ctType"])[0], dtype=object).to_numpy()[ok],
                         "spec_settle": pd.Series(text(df["settleCcy"])[0], dtype=object).to_numpy()[ok],
                         "spec_expiry": utc(ms_time(df["expTime"])[ok])})


def _terms(ids, specs: pd.DataFrame) -> pd.DataFrame:
    t = symbols.parse_okx(ids)
    t["instId"] = pd.Series(ids, dtype=object).reset_index(drop=True)
    t = t.merge(specs.drop_duplicates("instId"), on="instId", how="left")
    inv = np.where(t["spec_type"].isin(["linear", "inverse"]), t["spec_type"] == "inverse",
                   np.where(t["spec_settle"].notna() & (t["kind"] == "option"), t["spec_settle"] == t["base"],
                            t["settlement"] == "inverse"))
    t["settlement"] = np.where(t["ok"], np.where(inv, "inverse", "linear"), None)
    dated = t["kind"].isin(["future", "option"])
    t["expiry"] = t["spec_expiry"].where(t["spec_expiry"].notna(), t["expiry"]).where(dated)
    coin = t["spec_size"].to_numpy(dtype=float)
    inv_opt = (t["settlement"] == "inverse").to_numpy() & (t["kind"] == "option").to_numpy()
    t["contract_size"] = np.where(inv_opt, 1.0, coin)
    t["per_contract"] = np.where(inv_opt, coin, 1.0)  # book contracts per OKX contract
    return t


def _instrument_rows(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"instrument_id": t["instId"], "venue": VENUE, "underlying": t["base"], "kind": t["kind"],
                         "settlement": t["settlement"], "contract_size": t["contract_size"],
                         "expiry": utc(t["expiry"]), "strike": t["strike"], "option_type": t["option_type"]})


def _positions(recs, source, account, specs, m: Mapped) -> None:
    df = records_frame(recs, _POSITION_COLS)
    rj = Rejector("okx.positions", df, source, account=account, venue=VENUE)
    ids = key_text(rj, df, "instId")
    itype = pd.Series(text(df["instType"])[0], dtype=object)
    rj.flag((itype == "MARGIN").to_numpy(), "instType", "unsupported_instrument")
    t = _terms(ids, specs)
    rj.flag(~t["ok"].to_numpy(dtype=bool) | (t["kind"] == "spot").to_numpy(), "instId", "unknown_symbol")
    rj.flag(~np.isfinite(t["contract_size"].to_numpy(dtype=float)), "instId", "unknown_contract_size")
    pos, miss, wrong = number(df["pos"])
    check_number(rj, "pos", pos, miss, wrong)
    side, smiss, swrong = text(df["posSide"])
    side = pd.Series(side, dtype=object).fillna("net").str.lower()
    rj.flag(swrong | ~side.isin(["net", "long", "short"]).to_numpy(), "posSide", "wrong_type")
    rj.flag(pos == 0, "pos", "flat_position")
    sign = np.where(side == "long", 1.0, np.where(side == "short", -1.0, np.sign(pos)))
    rj.flag((side != "net").to_numpy() & (pos < 0) & (side == "long").to_numpy(), "posSide", "side_conflict")
    mark, _, _ = number(df["markPx"])
    index, _, _ = number(df["idxPx"])
    ts = ms_time(df["uTime"])
    ok = m.settle(rj)
    m.seen(ts[ok])
    t = t[ok].reset_index(drop=True)
    qty = np.abs(pos[ok]) * t["per_contract"].to_numpy(dtype=float) * sign[ok]
    m.add("instruments", _instrument_rows(t))
    m.add("positions", pd.DataFrame({"account_id": account, "instrument_id": t["instId"], "quantity": qty}))
    m.add_position_prices(t["instId"], t["kind"], mark[ok], t["base"], index[ok])


def _option_summary(recs, source, specs, m: Mapped) -> None:
    df = records_frame(recs, _SUMMARY_COLS)
    rj = Rejector("okx.opt_summary", df, source, venue=VENUE)
    ids = key_text(rj, df, "instId")
    t = _terms(ids, specs)
    rj.flag(~t["ok"].to_numpy(dtype=bool) | (t["kind"] != "option").to_numpy(), "instId", "unknown_symbol")
    rj.flag(~np.isfinite(t["contract_size"].to_numpy(dtype=float)), "instId", "unknown_contract_size")
    fwd, miss, wrong = number(df["fwdPx"])
    check_number(rj, "fwdPx", fwd, miss, wrong, positive=True)
    vol, miss, wrong = number(df["markVol"])
    check_number(rj, "markVol", vol, miss, wrong)
    ts = ms_time(df["ts"])
    ok = m.settle(rj)
    m.seen(ts[ok])
    t = t[ok].reset_index(drop=True)
    m.add("instruments", _instrument_rows(t))
    m.add("market", pd.DataFrame({"instrument_id": t["instId"], "underlying_price": fwd[ok], "implied_vol": vol[ok],
                                  "priority": PRIORITY_MARKET}))


def _mark_prices(recs, source, specs, m: Mapped) -> None:
    df = records_frame(recs, _MARK_COLS)
    rj = Rejector("okx.mark_price", df, source, venue=VENUE)
    ids = key_text(rj, df, "instId")
    t = _terms(ids, specs)
    rj.flag(~t["ok"].to_numpy(dtype=bool) | (t["kind"] == "option").to_numpy(), "instId", "unknown_symbol")
    rj.flag(~np.isfinite(t["contract_size"].to_numpy(dtype=float)), "instId", "unknown_contract_size")
    px, miss, wrong = number(df["markPx"])
    check_number(rj, "markPx", px, miss, wrong, positive=True)
    ts = ms_time(df["ts"])
    ok = m.settle(rj)
    m.seen(ts[ok])
    t = t[ok].reset_index(drop=True)
    m.add("instruments", _instrument_rows(t))
    m.add("market", pd.DataFrame({"instrument_id": t["instId"], "underlying_price": px[ok], "implied_vol": np.nan,
                                  "priority": PRIORITY_MARKET}))


def _index_tickers(recs, source, m: Mapped) -> None:
    df = records_frame(recs, _INDEX_COLS)
    rj = Rejector("okx.index_tickers", df, source, venue=VENUE)
    ids = key_text(rj, df, "instId")
    base = pd.Series(ids, dtype=object).str.extract(r"^([A-Z0-9]+)-[A-Z0-9]+$")[0]
    rj.flag(base.isna().to_numpy(), "instId", "unknown_symbol")
    px, miss, wrong = number(df["idxPx"])
    check_number(rj, "idxPx", px, miss, wrong, positive=True)
    ts = ms_time(df["ts"])
    ok = m.settle(rj)
    m.seen(ts[ok])
    m.add("index", pd.DataFrame({"underlying": base[ok].to_numpy(), "price": px[ok], "priority": PRIORITY_MARKET}))


def _balance(recs, source, account, m: Mapped) -> None:
    df = records_frame(recs, _BALANCE_COLS)
    rj = Rejector("okx.balance", df, source, account=account, venue=VENUE)
    ccy = key_text(rj, df, "ccy")
    eq, miss, wrong = number(df["eq"])
    check_number(rj, "eq", eq, miss, wrong)
    rj.flag(eq == 0, "eq", "zero_balance")
    ts = ms_time(df["uTime"])
    ok = m.settle(rj)
    m.seen(ts[ok])
    m.add("balances", pd.DataFrame({"account_id": account, "venue": VENUE, "asset": ccy[ok], "amount": eq[ok]}))


def from_okx(documents, account: str | None = None) -> Mapped:
    """Map OKX data to partial book tables; ``documents``: ``[(json_document, source[, account])]``.

    Positions and balances belong to the document's account (default ``account``); instruments, option
    summaries, mark and index prices need none and apply to every document.
    """
    m = Mapped()
    by_kind: dict[str, list] = {}
    for item in documents:
        doc, source = item[0], item[1]
        acct = item[2] if len(item) > 2 and item[2] is not None else account
        parts = split(doc, source)
        for kind, recs in parts.items():
            if kind in ("positions", "balance") and recs and (not isinstance(acct, str) or not acct.strip()):
                raise AdapterError(f"{source_name(source)}: OKX {kind} name no account: give one (--account, or "
                                   "a folder named after the account)")
            by_kind.setdefault(kind, []).append((recs, source_name(source), acct))
        m.sources.append({"path": source_name(source), "format": "okx", "kinds": sorted(parts),
                          **({"account": acct} if acct else {})})
    specs = pd.DataFrame({"instId": pd.Series([], dtype=object), "spec_size": pd.Series([], dtype=float),
                          "spec_type": pd.Series([], dtype=object), "spec_settle": pd.Series([], dtype=object),
                          "spec_expiry": pd.Series([], dtype="datetime64[ns, UTC]")})
    parts = [_specs(recs, src, m) for recs, src, _ in by_kind.get("instruments", [])]
    if parts:
        specs = pd.concat([specs] + parts, ignore_index=True)
    for recs, src, _ in by_kind.get("opt_summary", []):
        _option_summary(recs, src, specs, m)
    for recs, src, _ in by_kind.get("mark_price", []):
        _mark_prices(recs, src, specs, m)
    for recs, src, _ in by_kind.get("index_tickers", []):
        _index_tickers(recs, src, m)
    for recs, src, acct in by_kind.get("positions", []):
        _positions(recs, src, acct, specs, m)
    for recs, src, acct in by_kind.get("balance", []):
        _balance(recs, src, acct, m)
    return m


# ----------------------------------------------------------------------------- out


def _s(x) -> pd.Series:
    """Numbers as OKX writes them: strings, the shortest exact decimal (``repr``); empty for NaN."""
    v = pd.Series(x, dtype=np.float64)
    return v.map(lambda f: repr(float(f)) if np.isfinite(f) else "")


def _market_data(ins: pd.DataFrame, t: pd.DataFrame, marks: pd.DataFrame, ix: pd.Series, itype, ms: str) -> dict:
    """Instruments, option summaries, mark prices and index tickers of the book's OKX instruments (OKX's data)."""
    opt = (ins["kind"] == "option").to_numpy()
    inverse = (ins["settlement"] == "inverse").to_numpy()
    fwd = marks["underlying_price"].to_numpy(dtype=float)
    exp = epoch_ms(ins["expiry"], default=-1)
    instruments = pd.DataFrame({
        "instType": itype, "instId": ins["instrument_id"], "uly": t["base"] + "-" + t["quote"],
        "instFamily": t["base"] + "-" + t["quote"],
        "ctVal": _s(ins["contract_size"]).where(ins["kind"] != "spot", ""), "ctMult": np.where(opt, "1", ""),
        "ctType": np.where(opt | (ins["kind"] == "spot").to_numpy(), "", np.where(inverse, "inverse", "linear")),
        "settleCcy": np.where(inverse, t["base"], t["quote"]),
        "expTime": np.where(exp >= 0, exp.astype(str), ""),
        "stk": symbols.strike_text(ins["strike"]).where(opt, "").to_numpy(),
        "optType": ins["option_type"].map({"call": "C", "put": "P"}).fillna(""), "state": "live"})
    instruments.loc[instruments["instType"] != "OPTION", "ctMult"] = "1"
    instruments.loc[instruments["instType"] == "SPOT", "ctMult"] = ""
    summary = pd.DataFrame({"instType": "OPTION", "instId": ins["instrument_id"][opt], "uly": instruments["uly"][opt],
                            "fwdPx": _s(fwd[opt]).to_numpy(), "markVol": _s(marks["implied_vol"][opt]).to_numpy(),
                            "ts": ms})
    mark = pd.DataFrame({"instType": itype[~opt], "instId": ins["instrument_id"][~opt].to_numpy(),
                         "markPx": _s(fwd[~opt]).to_numpy(), "ts": ms})
    unds = sorted(set(ins["underlying"]))
    index = pd.DataFrame({"instId": [f"{u}-USDT" for u in unds], "idxPx": _s(ix.reindex(unds)).to_numpy(), "ts": ms})
    return {"instruments": records(instruments), "opt_summary": records(summary), "mark_price": records(mark),
            "index_tickers": records(index)}


def responses(tables: dict, account: str, as_of, mode: str = "net", market: bool = True) -> dict[str, dict]:
    """OKX data for ``account``'s part of a book (validated tables), each in OKX's envelope:
    ``{"positions", "balance", "instruments", "opt_summary", "mark_price", "index_tickers"}``.

    ``mode``: ``net`` (signed ``pos``) or ``long_short`` (``posSide`` long/short, ``pos`` > 0).
    Instruments, option summaries and mark prices cover every OKX instrument of the book
    (``market=False`` leaves them and the index tickers out: the same for every account).
    """
    if mode not in ("net", "long_short"):
        raise ValueError(f"mode must be net or long_short, got {mode!r}")
    ms = str(int(epoch_ms([pd.Timestamp(as_of)])[0]))
    ins = tables["instruments"]
    ins = ins[ins["venue"] == VENUE].reset_index(drop=True)
    t = symbols.parse_okx(ins["instrument_id"])
    if not t["ok"].all():
        bad = ins["instrument_id"][~t["ok"]].iloc[0]
        raise AdapterError(f"okx: instrument {bad!r} is not an OKX instrument id")
    itype = np.select([ins["kind"] == "spot", ins["kind"] == "perpetual", ins["kind"] == "future"],
                      ["SPOT", "SWAP", "FUTURES"], "OPTION")
    marks = tables["market"].drop_duplicates("instrument_id").set_index("instrument_id").reindex(ins["instrument_id"])
    fwd = marks["underlying_price"].to_numpy(dtype=float)
    ix = tables["index"].drop_duplicates("underlying").set_index("underlying")["price"]
    pos = tables["positions"]
    pos = pos[(pos["account_id"] == account) & pos["instrument_id"].isin(set(ins["instrument_id"]))]
    info = ins.assign(instType=itype, mark=fwd).set_index("instrument_id").reindex(pos["instrument_id"])
    q = pos["quantity"].to_numpy(dtype=float)
    contracts = np.where((info["kind"] == "option").to_numpy() & (info["settlement"] == "inverse").to_numpy(),
                         q / info["contract_size"].to_numpy(dtype=float), q)
    positions = pd.DataFrame({
        "instType": info["instType"].to_numpy(), "instId": pos["instrument_id"].to_numpy(), "mgnMode": "cross",
        "posSide": np.where(q > 0, "long", "short") if mode == "long_short" else "net",
        "pos": _s(np.abs(contracts) if mode == "long_short" else contracts).to_numpy(),
        "markPx": _s(np.where(info["kind"] == "option", np.nan, info["mark"].to_numpy(dtype=float))).to_numpy(),
        "idxPx": _s(info["underlying"].map(ix).to_numpy(dtype=float)).to_numpy(), "uTime": ms, "cTime": ms})
    bal = tables["balances"]
    bal = bal[(bal["account_id"] == account) & (bal["venue"] == VENUE)]
    details = pd.DataFrame({"ccy": bal["asset"].to_numpy(), "eq": _s(bal["amount"]).to_numpy(), "uTime": ms})

    def env(data):
        return {"code": "0", "msg": "", "data": data}

    out = {"positions": env(records(positions)), "balance": env([{"uTime": ms, "details": records(details)}])}
    if market:
        out.update({k: env(v) for k, v in _market_data(ins, t, marks, ix, itype, ms).items()})
    return out


__all__ = ["VENUE", "from_okx", "responses", "split"]
