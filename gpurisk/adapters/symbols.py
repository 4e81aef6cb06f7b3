"""Instrument names: CCXT unified symbols and the venues' own names, parsed into book instrument terms and back.

Grammars (docs/interfaces.md, "Symbol grammar"); every parser is vectorised (``Series.str.extract``)
and returns one row per name with ``ok`` False where the name does not parse:

- **CCXT** ``BASE/QUOTE`` spot; ``BASE/QUOTE:SETTLE`` perpetual; ``...:SETTLE-YYMMDD`` future;
  ``...:SETTLE-YYMMDD-STRIKE-C|P`` option. Settlement is inverse when SETTLE is the base coin,
  linear otherwise (USDT and USDC count as USD).
- **Deribit** ``BTC-PERPETUAL``, ``BTC-27JUN25``, ``BTC-27JUN25-100000-C`` (coin-settled, inverse);
  ``BTC_USDC-PERPETUAL``, ``SOL_USDC-27JUN25-150-C`` (USDC-settled, linear); a decimal strike
  writes its point as ``d`` (``XRP_USDC-30MAY25-2d5-C``).
- **OKX** ``BTC-USDT-SWAP``, ``BTC-USD-SWAP`` (inverse: quote USD), ``BTC-USDT-250328`` future,
  ``BTC-USD-250328-100000-C`` option, ``BTC-USDT`` spot.
- **Binance** spot ``BTCUSDT`` (base + quote).

Expiries: a name carries the date only; the time of day is the venue's (``EXPIRY_TIME_UTC``:
08:00 UTC for Deribit, OKX, Binance and Bybit).

``native_id(venue, terms)`` writes the venue's own name for parsed terms, so an instrument reaches
the book under the same ``instrument_id`` whichever structure it came in (a CCXT symbol of a venue
without a grammar here stays the CCXT symbol).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..book import STABLECOINS

#: a venue's expiry time of day (UTC, ``HH:MM``) for names that carry only the date
EXPIRY_TIME_UTC = {"deribit": "08:00", "okx": "08:00", "binance": "08:00", "bybit": "08:00"}
DEFAULT_EXPIRY_TIME_UTC = "08:00"
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
#: columns of every parser's result
TERMS = ["ok", "base", "quote", "settle", "kind", "settlement", "expiry", "strike", "option_type"]

_CODE = r"[A-Z0-9]+"
_CCXT = (rf"^(?P<base>{_CODE})/(?P<quote>{_CODE})(?::(?P<settle>{_CODE})"
         rf"(?:-(?P<date>\d{{6}})(?:-(?P<strike>\d+(?:\.\d+)?)-(?P<cp>[CP]))?)?)?$")
_DERIBIT = (rf"^(?P<base>{_CODE})(?:_(?P<quote>{_CODE}))?-(?:(?P<perp>PERPETUAL)|(?P<day>\d{{1,2}})"
            rf"(?P<mon>[A-Z]{{3}})(?P<yy>\d{{2}})(?:-(?P<strike>\d+(?:d\d+)?)-(?P<cp>[CP]))?)$")
_OKX = (rf"^(?P<base>{_CODE})-(?P<quote>{_CODE})(?:-(?P<swap>SWAP)|-(?P<date>\d{{6}})"
        rf"(?:-(?P<strike>\d+(?:\.\d+)?)-(?P<cp>[CP]))?)?$")


def concat(*parts) -> pd.Series:
    """Element-wise concatenation of text Series and scalars (object dtype); None where any part is missing."""
    n = max(len(p) for p in parts if isinstance(p, pd.Series))
    cols = [pd.Series(p, dtype=object).reset_index(drop=True) if isinstance(p, pd.Series)
            else pd.Series([p] * n, dtype=object) for p in parts]
    out = cols[0].str.cat(cols[1:], sep="") if len(cols) > 1 else cols[0]
    return out.astype(object).where(out.notna(), None)


def expiry_time(venue: str) -> str:
    return EXPIRY_TIME_UTC.get(str(venue).lower(), DEFAULT_EXPIRY_TIME_UTC)


def _dates(yymmdd: pd.Series, venue: str) -> pd.Series:
    """UTC expiry times from ``YYMMDD`` strings at the venue's time of day; NaT where absent or not a date."""
    txt = concat("20", yymmdd, "T" + expiry_time(venue).replace(":", "") + "00Z")
    out = pd.to_datetime(txt, format="%Y%m%dT%H%M%SZ", utc=True, errors="coerce")
    return out.astype("datetime64[ns, UTC]")


def _settlement(base: pd.Series, quote: pd.Series, settle: pd.Series) -> pd.Series:
    inverse = settle.notna() & (settle == base)
    return pd.Series(np.where(inverse, "inverse", "linear"), index=base.index, dtype=object)


def _finish(df: pd.DataFrame, m: pd.DataFrame, kind: pd.Series, expiry: pd.Series, strike: pd.Series) -> pd.DataFrame:
    df["kind"] = kind.where(df["ok"], None)
    df["expiry"] = expiry.where(df["ok"] & kind.isin(["future", "option"]))
    df["strike"] = strike.where(df["ok"] & (kind == "option"))
    cp = m["cp"].map({"C": "call", "P": "put"})
    df["option_type"] = cp.where(df["ok"] & (kind == "option"), None).astype(object)
    bad_date = df["ok"] & kind.isin(["future", "option"]) & df["expiry"].isna()
    df.loc[bad_date, "ok"] = False
    for c in ("base", "quote", "settle", "kind", "settlement", "option_type"):
        df[c] = df[c].astype(object).where(df["ok"], None)
    return df[TERMS]


def _parse_ccxt(symbols, venue: str = "") -> pd.DataFrame:
    """Terms of CCXT unified symbols [n]; ``ok`` False where a symbol does not follow the grammar."""
    s = pd.Series(symbols, dtype=object).reset_index(drop=True)
    m = s.where(s.map(type) == str).str.extract(_CCXT).astype(object)
    df = pd.DataFrame({"ok": m["base"].notna().to_numpy()}, index=s.index)
    df["base"], df["quote"], df["settle"] = m["base"], m["quote"], m["settle"]
    kind = pd.Series(np.select([m["settle"].isna(), m["date"].isna(), m["strike"].isna()],
                               ["spot", "perpetual", "future"], "option"), index=s.index, dtype=object)
    df["settlement"] = _settlement(m["base"], m["quote"], m["settle"])
    strike = pd.to_numeric(m["strike"], errors="coerce")
    return _finish(df, m, kind, _dates(m["date"], venue), strike)


def _parse_deribit(names) -> pd.DataFrame:
    """Terms of Deribit instrument names [n] (``quote`` USD for coin-settled ones, the settle coin otherwise)."""
    s = pd.Series(names, dtype=object).reset_index(drop=True)
    m = s.where(s.map(type) == str).str.extract(_DERIBIT).astype(object)
    mon = m["mon"].map({name: f"{i + 1:02d}" for i, name in enumerate(MONTHS)})
    ok = m["base"].notna() & (m["perp"].notna() | mon.notna())
    df = pd.DataFrame({"ok": ok.to_numpy()}, index=s.index)
    linear = m["quote"].notna()
    df["base"] = m["base"]
    df["quote"] = m["quote"].where(linear, "USD")
    df["settle"] = m["quote"].where(linear, m["base"])
    df["settlement"] = np.where(linear, "linear", "inverse")
    kind = pd.Series(np.select([m["perp"].notna(), m["strike"].isna()], ["perpetual", "future"], "option"),
                     index=s.index, dtype=object)
    yymmdd = concat(m["yy"], mon, m["day"].str.zfill(2))
    strike = pd.to_numeric(m["strike"].str.replace("d", ".", regex=False), errors="coerce")
    return _finish(df, m, kind, _dates(yymmdd, "deribit"), strike)


def _parse_okx(inst_ids) -> pd.DataFrame:
    """Terms of OKX instrument ids [n] (quote USD: coin-margined, inverse; otherwise linear)."""
    s = pd.Series(inst_ids, dtype=object).reset_index(drop=True)
    m = s.where(s.map(type) == str).str.extract(_OKX).astype(object)
    df = pd.DataFrame({"ok": m["base"].notna().to_numpy()}, index=s.index)
    spot = m["swap"].isna() & m["date"].isna()
    inverse = (m["quote"] == "USD") & ~spot
    df["base"], df["quote"] = m["base"], m["quote"]
    df["settle"] = m["base"].where(inverse, m["quote"])
    df["settlement"] = np.where(inverse, "inverse", "linear")
    kind = pd.Series(np.select([spot, m["swap"].notna(), m["strike"].isna()], ["spot", "perpetual", "future"],
                               "option"), index=s.index, dtype=object)
    strike = pd.to_numeric(m["strike"], errors="coerce")
    return _finish(df, m, kind, _dates(m["date"], "okx"), strike)


def _by_unique(parse, names, *args) -> pd.DataFrame:
    """``parse`` on the distinct names only (positions repeat instruments), spread back to every row."""
    s = pd.Series(names, dtype=object).reset_index(drop=True)
    codes, uniq = pd.factorize(s, use_na_sentinel=True)
    if len(uniq) == len(s):
        return parse(s, *args)
    t = parse(pd.Series(list(uniq) + [None], dtype=object), *args)
    return t.iloc[np.where(codes < 0, len(uniq), codes)].reset_index(drop=True)


def parse_ccxt(symbols, venue: str = "") -> pd.DataFrame:
    """Terms of CCXT unified symbols [n]; ``ok`` False where a symbol does not follow the grammar."""
    return _by_unique(_parse_ccxt, symbols, venue)


def parse_deribit(names) -> pd.DataFrame:
    """Terms of Deribit instrument names [n] (``quote`` USD for coin-settled ones, the settle coin otherwise)."""
    return _by_unique(_parse_deribit, names)


def parse_okx(inst_ids) -> pd.DataFrame:
    """Terms of OKX instrument ids [n] (quote USD: coin-margined, inverse; otherwise linear)."""
    return _by_unique(_parse_okx, inst_ids)


# ----------------------------------------------------------------------------- writing names


def strike_text(strike, sep: str = ".") -> pd.Series:
    """Strikes as the shortest exact decimal text (``100000``, ``2.5``), the point written as ``sep``."""
    s = pd.Series(np.asarray(strike, dtype=np.float64))
    out = s.map(lambda x: np.format_float_positional(x, trim="-") if np.isfinite(x) else None).astype(object)
    return out.str.replace(".", sep, regex=False).astype(object) if sep != "." else out


def _yymmdd(expiry: pd.Series) -> pd.Series:
    out = pd.to_datetime(pd.Series(expiry).reset_index(drop=True), utc=True).dt.strftime("%y%m%d")
    return out.astype(object).where(out.notna(), None)


def _cp(option_type: pd.Series) -> pd.Series:
    return pd.Series(option_type, dtype=object).reset_index(drop=True).map({"call": "C", "put": "P"}).astype(object)


def ccxt_symbol(terms: pd.DataFrame) -> pd.Series:
    """CCXT unified symbols for terms [n] (``base, quote, settle, kind, expiry, strike, option_type``)."""
    t = terms.reset_index(drop=True)
    out = concat(t["base"], "/", t["quote"])
    deriv = t["kind"] != "spot"
    out = out.where(~deriv, concat(out, ":", t["settle"]))
    dated = t["kind"].isin(["future", "option"])
    out = out.where(~dated, concat(out, "-", _yymmdd(t["expiry"])))
    opt = t["kind"] == "option"
    return out.where(~opt, concat(out, "-", strike_text(t["strike"]), "-", _cp(t["option_type"])))


def deribit_name(terms: pd.DataFrame) -> pd.Series:
    """Deribit instrument names for terms [n]."""
    t = terms.reset_index(drop=True)
    linear = t["settlement"] == "linear"
    head = pd.Series(t["base"], dtype=object).where(~linear, concat(t["base"], "_", t["settle"]))
    exp = pd.to_datetime(t["expiry"], utc=True)
    month = exp.dt.month.map(dict(enumerate(MONTHS, start=1)))
    date = concat(exp.dt.day.astype("Int64").astype(object).where(exp.notna()).map(
        lambda d: None if d is None or d is pd.NA else str(d)), month, exp.dt.strftime("%y"))
    out = concat(head, "-", pd.Series(np.where(t["kind"] == "perpetual", "PERPETUAL", date), dtype=object))
    opt = t["kind"] == "option"
    return out.where(~opt, concat(out, "-", strike_text(t["strike"], "d"), "-", _cp(t["option_type"])))


def okx_inst_id(terms: pd.DataFrame) -> pd.Series:
    """OKX instrument ids for terms [n] (inverse contracts are quoted in USD)."""
    t = terms.reset_index(drop=True)
    quote = pd.Series(t["quote"], dtype=object).where(t["settlement"] != "inverse", "USD")
    out = concat(t["base"], "-", quote)
    out = out.where(t["kind"] != "perpetual", concat(out, "-SWAP"))
    dated = t["kind"].isin(["future", "option"])
    out = out.where(~dated, concat(out, "-", _yymmdd(t["expiry"])))
    opt = t["kind"] == "option"
    return out.where(~opt, concat(out, "-", strike_text(t["strike"]), "-", _cp(t["option_type"])))


def native_id(venue: str, terms: pd.DataFrame) -> pd.Series:
    """The venue's own instrument name for terms [n]: Deribit and OKX names, Binance spot ``BASEQUOTE``;
    the CCXT symbol for any other venue or kind."""
    v = str(venue).lower()
    if v == "deribit":
        return deribit_name(terms)
    if v == "okx":
        return okx_inst_id(terms)
    sym = ccxt_symbol(terms)
    if v == "binance":
        t = terms.reset_index(drop=True)
        return sym.where(t["kind"] != "spot", concat(t["base"], t["quote"]))
    return sym


def is_stable(assets) -> np.ndarray:
    """[n] bool: the asset counts as USD (``gpurisk.book.STABLECOINS``)."""
    return pd.Series(assets, dtype=object).isin(STABLECOINS).to_numpy()


__all__ = ["EXPIRY_TIME_UTC", "TERMS", "expiry_time", "parse_ccxt", "parse_deribit", "parse_okx", "ccxt_symbol",
           "deribit_name", "okx_inst_id", "native_id", "strike_text", "is_stable", "concat"]
