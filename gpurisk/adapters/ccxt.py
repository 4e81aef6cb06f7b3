"""CCXT's unified structures in: ``Position``, ``Balance``, ``Greeks``, ``Ticker`` and ``Market`` dicts.

``from_ccxt(positions=, balance=, greeks=, tickers=, markets=, venue=, account=)`` takes the
structures as ``fetch_positions``, ``fetch_balance``, ``fetch_greeks`` / ``fetch_all_greeks``,
``fetch_tickers`` and ``load_markets`` return them (lists, or dicts keyed by symbol), from JSON
files or Python objects. A CCXT structure names neither the venue nor the account: the caller does.

Symbols follow ``gpurisk.adapters.symbols`` (``BTC/USD:BTC-240628-60000-C``); an instrument enters
the book under the venue's own name (``symbols.native_id``), so the same position reaches the
same ``instrument_id`` whether it came through CCXT or the venue's own JSON.

The book holds each venue's real exposure, whatever CCXT's conventions (``VENUE_CONVENTIONS``):

- **quantity**: CCXT's ``contracts`` is a count of ``contractSize`` contracts, except on
  Deribit, where it is Deribit's ``size`` (USD for futures and perpetuals, coin for options) and
  ``contractSize`` is the USD (or coin) per contract: there the book quantity is
  |contracts| / contractSize. The sign is the ``side`` (long / short); a short may also carry a
  negative ``contracts``; a negative ``contracts`` with ``side`` long is ``side_conflict``.
- **implied vol**: ``markImpliedVolatility`` is in percent from Deribit (61.27), a decimal
  elsewhere (OKX 0.59).
- **forward**: ``underlyingPrice`` of the Greeks, or OKX's ``info.fwdPx`` (CCXT leaves
  ``underlyingPrice`` empty for OKX).
- **OKX options**: CCXT's ``contractSize`` is OKX's ``ctVal``; the contract is ``ctVal`` × ``ctMult``,
  read from the market's ``info.ctMult`` when the markets are given.
- **spot wallets**: on Binance a coin balance other than a stablecoin is a spot holding: it enters
  as a spot position on ``COINUSDT`` (the book's rule: spot holdings are positions, not balances).
- An inverse option is held as coins (book contract size 1).

Expiries come from the markets' ``expiry`` (ms) when given, else the symbol's date at the venue's
expiry time (``symbols.EXPIRY_TIME_UTC``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import symbols
from .base import (PRIORITY_MARKET, PRIORITY_SPOT, AdapterError, Mapped, Rejector,
                   check_number, key_text, ms_time, number, records_frame, source_name, text, utc)


#: per venue: contracts in the venue's size unit (Deribit), vols in percent, spot-wallet quote currency
VENUE_CONVENTIONS = {
    "deribit": {"contracts_are_size": True, "vol_percent": True, "spot_wallet": None},
    "okx": {"contracts_are_size": False, "vol_percent": False, "spot_wallet": None},
    "binance": {"contracts_are_size": False, "vol_percent": False, "spot_wallet": "USDT"},
}
_DEFAULT = {"contracts_are_size": False, "vol_percent": False, "spot_wallet": None}
#: keys of a CCXT Balance that are not currencies
BALANCE_META = {"info", "free", "used", "total", "debt", "timestamp", "datetime"}
#: the structures ``from_ccxt`` takes, by keyword
KINDS = ("positions", "balance", "greeks", "tickers", "markets")


def conventions(venue: str) -> dict:
    return VENUE_CONVENTIONS.get(str(venue).lower(), _DEFAULT)


# ----------------------------------------------------------------------------- recognising structures


def _listify(obj) -> list:
    """A structure as a list of records: lists as they are, ``{symbol: record}`` dicts as their values."""
    if obj is None:
        return []
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if not obj:
            return []
        vals = list(obj.values())
        if vals and all(isinstance(v, dict) for v in vals) and "symbol" not in obj:
            return vals
        return [obj]
    return [obj]


def classify(doc) -> dict[str, object]:
    """The CCXT structures in one JSON document: ``{kind: structure}``; a bundle ``{"positions": [...],
    "balance": {...}, ...}`` gives each. AdapterError if none is recognised."""
    if isinstance(doc, dict) and doc and set(doc) <= set(KINDS):
        return dict(doc)
    if isinstance(doc, dict) and not {"symbol", "contracts"} & set(doc) and (
            "total" in doc or "free" in doc or any(isinstance(v, dict) and {"free", "used", "total"} & set(v)
                                                   for k, v in doc.items() if k not in BALANCE_META)):
        return {"balance": doc}
    recs = _listify(doc)
    keyed = [set(r) for r in recs if isinstance(r, dict)]
    if not keyed:
        return {}
    k = max(keyed, key=len)  # the fullest record (one may lack a field: it is rejected, not misread)
    if "contracts" in k and "symbol" in k:
        return {"positions": recs}
    if "markImpliedVolatility" in k or ("delta" in k and "vega" in k and "symbol" in k):
        return {"greeks": recs}
    if "contractSize" in k and "precision" in k and "id" in k:
        return {"markets": recs}
    if "symbol" in k and k & {"bid", "ask", "last", "close", "markPrice", "indexPrice"}:
        return {"tickers": recs}
    return {}


# ----------------------------------------------------------------------------- markets


def _markets(markets, source, m: Mapped) -> pd.DataFrame:
    recs = _listify(markets)
    df = records_frame(recs, ["symbol", "contractSize", "expiry", "info.ctMult"])
    rj = Rejector("ccxt.markets", df, source)
    sym = key_text(rj, df, "symbol")
    cs, cmiss, cwrong = number(df["contractSize"])
    check_number(rj, "contractSize", cs, cmiss, cwrong, required=False)
    rj.flag(np.isfinite(cs) & (cs <= 0), "contractSize", "non_positive")
    mult, _, _ = number(df["info.ctMult"])
    ok = m.settle(rj)
    size = cs * np.where(np.isfinite(mult) & (mult > 0), mult, 1.0)
    return pd.DataFrame({"symbol": sym[ok], "m_size": size[ok], "m_expiry": utc(ms_time(df["expiry"])[ok])})


def _terms(syms, venue: str, markets: pd.DataFrame, size=None) -> pd.DataFrame:
    """Parsed symbols joined with the markets; ``m_size`` the market's contract size (coin or USD)."""
    t = symbols.parse_ccxt(syms, venue)
    t["symbol"] = pd.Series(syms, dtype=object).reset_index(drop=True)
    t = t.merge(markets.drop_duplicates("symbol"), on="symbol", how="left")
    dated = t["kind"].isin(["future", "option"])
    t["expiry"] = t["m_expiry"].where(t["m_expiry"].notna(), t["expiry"]).where(dated)
    ok = t["ok"].to_numpy(dtype=bool)
    t["instrument_id"] = pd.Series([None] * len(t), dtype=object)
    if ok.any():
        t.loc[ok, "instrument_id"] = symbols.native_id(venue, t[ok]).to_numpy()
    return t


def _instrument_rows(t: pd.DataFrame, venue: str) -> pd.DataFrame:
    return pd.DataFrame({"instrument_id": t["instrument_id"], "venue": venue, "underlying": t["base"],
                         "kind": t["kind"], "settlement": t["settlement"], "contract_size": t["contract_size"],
                         "expiry": utc(t["expiry"]), "strike": t["strike"], "option_type": t["option_type"]})


def _book_size(t: pd.DataFrame, size) -> np.ndarray:
    """[n] the book's contract size: 1 for inverse options, else the (position's or market's) size."""
    inv_opt = (t["settlement"] == "inverse").to_numpy() & (t["kind"] == "option").to_numpy()
    return np.where(inv_opt, 1.0, size)


# ----------------------------------------------------------------------------- structures


def _positions(recs, source, venue, account, markets, m: Mapped) -> None:
    conv = conventions(venue)
    df = records_frame(_listify(recs), ["symbol", "contracts", "contractSize", "side", "markPrice", "timestamp"])
    rj = Rejector("ccxt.positions", df, source, account=account, venue=venue)
    sym = key_text(rj, df, "symbol")
    t = _terms(sym, venue, markets)
    rj.flag(~t["ok"].to_numpy(dtype=bool), "symbol", "unknown_symbol")
    rj.flag((t["kind"] == "spot").to_numpy(), "symbol", "unsupported_instrument")
    contracts, cmiss, cwrong = number(df["contracts"])
    check_number(rj, "contracts", contracts, cmiss, cwrong)
    cs, smiss, swrong = number(df["contractSize"])
    rj.flag(swrong, "contractSize", "wrong_type")
    cs = np.where(np.isfinite(cs), cs, t["m_size"].to_numpy(dtype=float))
    if str(venue).lower() == "okx":  # CCXT's contractSize is ctVal; the market knows ctMult
        cs = np.where(np.isfinite(t["m_size"].to_numpy(dtype=float)), t["m_size"].to_numpy(dtype=float), cs)
    rj.flag(~np.isfinite(cs), "contractSize", "unknown_contract_size")
    rj.flag(np.isfinite(cs) & (cs <= 0), "contractSize", "non_positive")
    side, sdmiss, sdwrong = text(df["side"])
    side = pd.Series(side, dtype=object).str.lower()
    rj.flag(sdwrong | (~sdmiss & ~side.isin(["long", "short"]).to_numpy()), "side", "wrong_type")
    rj.flag(contracts == 0, "contracts", "flat_position")
    rj.flag((side == "long").to_numpy() & (contracts < 0), "side", "side_conflict")
    sign = np.where(side == "long", 1.0, np.where(side == "short", -1.0, np.sign(contracts)))
    mark, _, _ = number(df["markPrice"])
    ts = ms_time(df["timestamp"])
    ok = m.settle(rj)
    m.seen(ts[ok])
    t = t[ok].reset_index(drop=True)
    cs, n, sign = cs[ok], np.abs(contracts[ok]), sign[ok]
    inv_opt = (t["settlement"] == "inverse").to_numpy() & (t["kind"] == "option").to_numpy()
    if conv["contracts_are_size"]:
        qty, book_cs = n / np.where(inv_opt, 1.0, cs), np.where(inv_opt, 1.0, cs)
    else:
        qty, book_cs = np.where(inv_opt, n * cs, n), np.where(inv_opt, 1.0, cs)
    t["contract_size"] = book_cs
    m.add("instruments", _instrument_rows(t, venue))
    m.add("positions", pd.DataFrame({"account_id": account, "instrument_id": t["instrument_id"], "quantity": sign * qty}))
    m.add_position_prices(t["instrument_id"], t["kind"], mark[ok])


def _known_instruments(t: pd.DataFrame, venue: str, m: Mapped) -> None:
    """Instrument rows for market records whose contract size is known (markets, or inverse options)."""
    size = _book_size(t, t["m_size"].to_numpy(dtype=float))
    known = np.isfinite(size)
    if known.any():
        k = t[known].assign(contract_size=size[known])
        m.add("instruments", _instrument_rows(k, venue))


def _greeks(recs, source, venue, markets, m: Mapped) -> None:
    conv = conventions(venue)
    df = records_frame(_listify(recs), ["symbol", "markImpliedVolatility", "underlyingPrice", "timestamp",
                                        "info.fwdPx", "info.underlying_price"])
    rj = Rejector("ccxt.greeks", df, source, venue=venue)
    sym = key_text(rj, df, "symbol")
    t = _terms(sym, venue, markets)
    rj.flag(~t["ok"].to_numpy(dtype=bool) | (t["kind"] != "option").to_numpy(), "symbol", "unknown_symbol")
    fwd, fmiss, fwrong = number(df["underlyingPrice"])
    for alt in ("info.fwdPx", "info.underlying_price"):
        v, _, _ = number(df[alt])
        fwd = np.where(np.isfinite(fwd), fwd, v)
        fmiss = fmiss & ~np.isfinite(v)
    check_number(rj, "underlyingPrice", fwd, fmiss, fwrong & ~np.isfinite(fwd), positive=True)
    vol, vmiss, vwrong = number(df["markImpliedVolatility"])
    check_number(rj, "markImpliedVolatility", vol, vmiss, vwrong)
    ts = ms_time(df["timestamp"])
    ok = m.settle(rj)
    m.seen(ts[ok])
    t = t[ok].reset_index(drop=True)
    vol = vol[ok] / (100.0 if conv["vol_percent"] else 1.0)
    _known_instruments(t, venue, m)
    m.add("market", pd.DataFrame({"instrument_id": t["instrument_id"], "underlying_price": fwd[ok],
                                  "implied_vol": vol, "priority": PRIORITY_MARKET}))


def _tickers(recs, source, venue, markets, m: Mapped) -> None:
    df = records_frame(_listify(recs), ["symbol", "markPrice", "indexPrice", "last", "close", "timestamp"])
    rj = Rejector("ccxt.tickers", df, source, venue=venue)
    sym = key_text(rj, df, "symbol")
    t = _terms(sym, venue, markets)
    rj.flag(~t["ok"].to_numpy(dtype=bool), "symbol", "unknown_symbol")
    mark, _, mwrong = number(df["markPrice"])
    index, _, iwrong = number(df["indexPrice"])
    last, _, lwrong = number(df["last"])
    close, _, _ = number(df["close"])
    last = np.where(np.isfinite(last), last, close)
    rj.flag(mwrong, "markPrice", "wrong_type")
    rj.flag(iwrong, "indexPrice", "wrong_type")
    rj.flag(lwrong, "last", "wrong_type")
    spot = (t["kind"] == "spot").to_numpy()
    opt = (t["kind"] == "option").to_numpy()
    price = np.where(spot & ~np.isfinite(mark), last, mark)
    has = (np.isfinite(price) & (price > 0) & ~opt) | (np.isfinite(index) & (index > 0))
    rj.flag(~has, "markPrice", "missing_value")
    ts = ms_time(df["timestamp"])
    ok = m.settle(rj)
    m.seen(ts[ok])
    t = t[ok].reset_index(drop=True)
    price, index, spot, opt = price[ok], index[ok], spot[ok], opt[ok]
    good = np.isfinite(price) & (price > 0) & ~opt
    # a spot ticker prices a spot holding (made by the balance) and the coin's index; it makes no instrument
    _known_instruments(t[good & ~spot].reset_index(drop=True), venue, m)
    m.add("market", pd.DataFrame({"instrument_id": t["instrument_id"][good], "underlying_price": price[good],
                                  "implied_vol": np.nan, "priority": PRIORITY_MARKET}))
    gi = np.isfinite(index) & (index > 0)
    m.add("index", pd.DataFrame({"underlying": t["base"][gi], "price": index[gi], "priority": PRIORITY_MARKET}))
    gs = spot & np.isfinite(last[ok]) & (last[ok] > 0) & symbols.is_stable(t["quote"])
    m.add("index", pd.DataFrame({"underlying": t["base"][gs], "price": last[ok][gs], "priority": PRIORITY_SPOT}))


def _balance(balance, source, venue, account, m: Mapped) -> None:
    if not isinstance(balance, dict):
        raise AdapterError(f"{source}: a CCXT Balance is a dict of currencies, got {type(balance).__name__}")
    assets = [k for k in balance if k not in BALANCE_META]
    recs = [balance[k] for k in assets]
    df = records_frame(recs, ["total"])
    df["asset"] = pd.Series(assets, dtype=object)
    rj = Rejector("ccxt.balance", df, source, account=account, venue=venue)
    rj.flag(df["_bad"].to_numpy(), "asset", "wrong_type", value=pd.Series([str(r)[:60] for r in recs]))
    total, miss, wrong = number(df["total"])
    check_number(rj, "total", total, miss, wrong)
    rj.flag(total == 0, "total", "zero_balance")
    ok = m.settle(rj)
    ts = ms_time(pd.Series([balance.get("timestamp")], dtype=object))
    m.seen(ts)
    asset = df["asset"][ok].reset_index(drop=True)
    amount = total[ok]
    wallet = conventions(venue)["spot_wallet"]
    coin = ~symbols.is_stable(asset) if wallet else np.zeros(len(asset), bool)
    m.add("balances", pd.DataFrame({"account_id": account, "venue": venue, "asset": asset[~coin], "amount": amount[~coin]}))
    if coin.any():
        terms = pd.DataFrame({"base": asset[coin].to_numpy(), "quote": wallet, "settle": None, "kind": "spot",
                              "settlement": "linear", "expiry": pd.NaT, "strike": np.nan, "option_type": None})
        ids = symbols.native_id(venue, terms).to_numpy()
        m.add("instruments", pd.DataFrame({"instrument_id": ids, "venue": venue, "underlying": terms["base"],
                                           "kind": "spot", "settlement": "linear", "contract_size": 1.0}))
        m.add("positions", pd.DataFrame({"account_id": account, "instrument_id": ids, "quantity": amount[coin]}))


def from_ccxt(positions=None, balance=None, greeks=None, tickers=None, markets=None, *, venue: str, account: str,
              source=None) -> Mapped:
    """Map CCXT unified structures of one account at one venue to partial book tables."""
    given = {k: v for k, v in (("positions", positions), ("balance", balance), ("greeks", greeks),
                               ("tickers", tickers), ("markets", markets)) if v is not None}
    return _map([(given, source, account)], venue)


def from_documents(documents, venue: str, account: str | None = None) -> Mapped:
    """``from_ccxt`` over JSON documents ``[(document, source[, account])]``; markets, tickers and Greeks of any
    document apply to all (they need no account)."""
    items = []
    for item in documents:
        doc, source = item[0], item[1]
        acct = item[2] if len(item) > 2 and item[2] is not None else account
        found = classify(doc)
        if not found:
            raise AdapterError(f"{source_name(source)}: not a CCXT Position list, Balance, Greeks, Ticker or "
                               "Market structure")
        items.append((found, source, acct))
    return _map(items, venue)


def _map(items, venue) -> Mapped:
    if not isinstance(venue, str) or not venue.strip():
        raise AdapterError("ccxt: a CCXT structure names no venue: give one (--venue)")
    venue = venue.strip().lower()
    for found, src, acct in items:
        if ("positions" in found or "balance" in found) and (not isinstance(acct, str) or not acct.strip()):
            raise AdapterError(f"{source_name(src)}: a CCXT Position or Balance names no account: give one "
                               "(--account, or a folder named after the account)")
    m = Mapped()
    frames = [_markets(found["markets"], source_name(src), m) for found, src, _ in items if "markets" in found]
    mk = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"symbol": pd.Series([], dtype=object), "m_size": pd.Series([], dtype=float),
         "m_expiry": pd.Series([], dtype="datetime64[ns, UTC]")})
    for found, source, _ in items:
        src = source_name(source)
        if "greeks" in found:
            _greeks(found["greeks"], src, venue, mk, m)
        if "tickers" in found:
            _tickers(found["tickers"], src, venue, mk, m)
    for found, source, acct in items:
        src = source_name(source)
        if "positions" in found:
            _positions(found["positions"], src, venue, acct, mk, m)
        if "balance" in found:
            _balance(found["balance"], src, venue, acct, m)
        m.sources.append({"path": src, "format": "ccxt", "venue": venue, "kinds": sorted(found),
                          **({"account": acct} if acct else {})})
    return m


__all__ = ["VENUE_CONVENTIONS", "KINDS", "classify", "conventions", "from_ccxt", "from_documents"]
