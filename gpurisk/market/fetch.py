"""Fetching bars from an exchange through CCXT's ``fetch_ohlcv`` into a history folder.

``fetch_history(exchange, symbols, into)`` asks the exchange for the bars after the last one the
folder has (or from ``since``), page by page, keeps only the bars that have closed, and merges them
with the import policy (``gpurisk.market.importer``: duplicates skipped, conflicts refused or
reported, gaps reported, each table written atomically). ``exchange`` is a CCXT exchange object or
an exchange id (``binance``); ``ccxt`` is the optional extra ``connect`` (``pip install
'gpurisk[connect]'``) and is imported only here. This is the only network code of the store; it
is thin on purpose: the rows go through the same checks as an imported file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .importer import Batch, apply_rows, check_into, check_rows, ohlcv_table
from .layout import MarketDataError, Table, read_table
from .store import utc_time

#: bars asked for per request (Binance serves up to 1000 daily bars per call)
PAGE = 1000
#: requests per symbol at most (a guard against an exchange that keeps answering the same page)
MAX_REQUESTS = 10_000


def make_exchange(exchange_id: str):
    """A CCXT exchange object for ``exchange_id`` (rate limiting on, spot markets only)."""
    try:
        import ccxt
    except ModuleNotFoundError:
        raise MarketDataError("fetching needs the ccxt package: pip install 'gpurisk[connect]'") from None
    name = str(exchange_id).strip().lower()
    if name not in ccxt.exchanges:
        raise MarketDataError(f"--exchange {exchange_id!r}: not an exchange ccxt knows (e.g. binance, okx, bybit)")
    return getattr(ccxt, name)({"enableRateLimit": True, "options": {"defaultType": "spot",
                                                                     "fetchMarkets": {"types": ["spot"]}}})


def _ccxt_error(exc: Exception) -> bool:
    try:
        import ccxt
    except ModuleNotFoundError:
        return False
    return isinstance(exc, ccxt.BaseError)


def fetch_rows(exchange, symbol: str, table: Table, since: pd.Timestamp, until: pd.Timestamp,
               page: int | None = None) -> pd.DataFrame:
    """The bars of ``symbol`` from ``since`` that have closed by ``until``, as the frame of a ``Batch``
    (``page`` bars per request, default ``PAGE``)."""
    page = PAGE if page is None else int(page)
    ms = int(utc_time(since).value // 1_000_000)
    end = utc_time(until)
    step = int(table.period.value // 1_000_000)
    rows = []
    for _ in range(MAX_REQUESTS):
        try:
            got = exchange.fetch_ohlcv(symbol, table.timeframe, since=ms, limit=page)
        except Exception as exc:  # noqa: BLE001 - a ccxt error becomes one line; anything else propagates
            if _ccxt_error(exc):
                raise MarketDataError(f"{getattr(exchange, 'id', 'exchange')} fetch_ohlcv {symbol} {table.timeframe}: "
                                      f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
            raise
        got = [r for r in (got or []) if isinstance(r, list) and len(r) == 6 and isinstance(r[0], (int, float))
               and r[0] >= ms]
        if not got:
            break
        rows.extend(got)
        last = int(max(r[0] for r in got))
        ms = last + step
        if pd.Timestamp(ms, unit="ms") + table.period > end:
            break
    frame = pd.DataFrame(rows, columns=list(table.columns))
    frame["time"] = pd.to_datetime(frame.pop("timestamp").astype("int64"), unit="ms").astype("datetime64[ns]")
    for c in table.values:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    frame = frame[["time", *table.values]]
    closed = (pd.DatetimeIndex(frame["time"]) + table.period) <= end
    frame = frame[closed].drop_duplicates("time", keep="last").reset_index(drop=True)
    frame["line"] = [f"bar {t}" for t in frame["time"]]
    return frame


def fetch_history(exchange, symbols, into, *, timeframe: str = "1d", since=None, until=None, now=None,
                  on_conflict: str = "error"):
    """Fetch ``symbols`` (``BTC/USDT``, ...) at ``timeframe`` into the history folder ``into``; ImportReport.

    since: the first bar to ask for (default: the bar after the folder's last one; required for a coin
    the folder does not have). until / now: bars that close after it are left out (default: the clock).
    """
    into = check_into(Path(into))
    now = pd.Timestamp.now(tz="UTC") if now is None else now
    until = utc_time(until if until is not None else now)
    ex = make_exchange(exchange) if isinstance(exchange, str) else exchange
    syms = [s.strip() for s in (symbols.split(",") if isinstance(symbols, str) else symbols) if s.strip()]
    if not syms:
        raise MarketDataError("--symbols: give at least one symbol, e.g. BTC/USDT")
    batches, inputs, rejects = [], [], []
    for sym in syms:
        table = ohlcv_table(sym, timeframe)
        start = None if since is None else utc_time(since)
        if start is None:
            path = into / table.relpath
            if not path.is_file():
                raise MarketDataError(f"{sym}: {into} has no {table.label} yet; give --since DATE for the first bar")
            start = read_table(path, table).index[-1] + table.period
        frame = fetch_rows(ex, sym, table, start, until)
        source = f"{getattr(ex, 'id', 'exchange')} {sym}"
        before = len(rejects)
        b = check_rows(Batch(table, source, frame), now, rejects)
        inputs.append({"source": source, "table": table.relpath, "rows": int(len(frame)),
                       "rejected": len(rejects) - before})
        batches.append(b)
    return apply_rows(into, batches, on_conflict, rejects, inputs)


__all__ = ["make_exchange", "fetch_rows", "fetch_history", "PAGE", "MAX_REQUESTS"]
