"""The market history folder: where each table lives, its columns, its time format, when a row is known.

A history folder (the shipped ``datasets/`` is the embedded default; docs/data-format.md, "Market
history") holds CSV tables, one per series::

    market/daily/<COIN>USDT_1d.csv                   daily OHLCV bars      timestamp (date),open,high,low,close,volume
    market/<tf>/<COIN>USDT_<tf>.csv                  intraday OHLCV bars   timestamp (bar open, UTC),open,...,volume
    options/deribit_<coin>_dvol_daily.csv            DVOL, daily close     date,dvol (annualised, percent)
    funding/binance_<COIN>USDT_perp_funding_8h.csv   perpetual funding     timestamp,funding_rate (fraction per 8 h)
    options/deribit_btc_option_chain_<YYYY-MM>.csv   an option-chain snapshot (not a time series)

Times are UTC. Prices are USDT, which gpurisk counts as USD. Point in time (``Table.known_from``): an
OHLCV bar is known from its close (a daily bar dated d from d+1 00:00 UTC, a 4-hour bar from its open
+ 4 h), a daily DVOL value dated d from d+1 00:00 UTC, a funding rate from its timestamp.

``Table`` names one series; ``read_table`` reads and checks one file (a one-line ``MarketDataError``
naming the file, line and column for anything it cannot use); ``table_text`` writes the same format
back (byte-identical for the shipped files).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ScenarioError

#: the coins shipped with daily history, in the order the generators default to
COINS = ("BTC", "ETH", "SOL", "XRP", "BNB", "DOGE", "ADA")
#: the quote currency of every price series (counted as USD)
QUOTE = "USDT"
#: table kinds
OHLCV, DVOL, FUNDING = "ohlcv", "dvol", "funding"
KINDS = (OHLCV, DVOL, FUNDING)
#: the columns of each kind, time column first
COLUMNS = {
    OHLCV: ("timestamp", "open", "high", "low", "close", "volume"),
    DVOL: ("date", "dvol"),
    FUNDING: ("timestamp", "funding_rate"),
}
#: columns that must be > 0
POSITIVE = {OHLCV: ("open", "high", "low", "close"), DVOL: ("dvol",), FUNDING: ()}

_TIMEFRAME = re.compile(r"^([1-9]\d*)([mhdw])$")
_UNIT = {"m": "min", "h": "h", "d": "D", "w": "W"}
_COIN = re.compile(r"^[A-Z0-9]{1,20}$")
_OHLCV_NAME = re.compile(r"^([A-Z0-9]{1,20})USDT_([1-9]\d*[mhdw])\.(csv|json)$")
_DVOL_NAME = re.compile(r"^deribit_([a-z0-9]{1,20})_dvol_daily\.csv$")
_FUNDING_NAME = re.compile(r"^binance_([A-Z0-9]{1,20})USDT_perp_funding_8h\.csv$")


class MarketDataError(ScenarioError):
    """Market history that cannot be used: a missing folder, table or coin, or a malformed file (one line)."""


def timeframe_delta(tf: str) -> pd.Timedelta:
    """The length of a bar of timeframe ``tf`` (``1d``, ``4h``, ``15m``, ``1w``); MarketDataError otherwise."""
    m = _TIMEFRAME.match(str(tf))
    if not m:
        raise MarketDataError(f"timeframe {tf!r}: expected a number and one of m, h, d, w (e.g. 1d, 4h)")
    return pd.Timedelta(int(m.group(1)), unit=_UNIT[m.group(2)])


def check_coin(coin: str, what: str = "coin") -> str:
    """``coin`` upper-cased if it is 1-20 ASCII letters or digits (it becomes part of a file name)."""
    c = str(coin).strip().upper()
    if not _COIN.match(c):
        raise MarketDataError(f"{what} {coin!r}: expected 1-20 ASCII letters or digits, e.g. BTC")
    return c


@dataclass(frozen=True)
class Table:
    """One series of a history folder: ``kind`` (ohlcv, dvol, funding), its ``coin`` and ``timeframe``."""

    kind: str
    coin: str
    timeframe: str = "1d"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MarketDataError(f"unknown table kind {self.kind!r}; one of {', '.join(KINDS)}")
        object.__setattr__(self, "coin", check_coin(self.coin))
        timeframe_delta(self.timeframe)
        if self.kind == DVOL and self.timeframe != "1d":
            raise MarketDataError("DVOL is a daily series (timeframe 1d)")
        if self.kind == FUNDING and self.timeframe != "8h":
            raise MarketDataError("funding is an 8-hour series (timeframe 8h)")

    @property
    def relpath(self) -> str:
        """The file's path inside the history folder (POSIX)."""
        if self.kind == OHLCV:
            folder = "daily" if self.timeframe == "1d" else self.timeframe
            return f"market/{folder}/{self.coin}{QUOTE}_{self.timeframe}.csv"
        if self.kind == DVOL:
            return f"options/deribit_{self.coin.lower()}_dvol_daily.csv"
        return f"funding/binance_{self.coin}{QUOTE}_perp_funding_8h.csv"

    @property
    def columns(self) -> tuple[str, ...]:
        return COLUMNS[self.kind]

    @property
    def values(self) -> tuple[str, ...]:
        """The value columns (all but the time column)."""
        return COLUMNS[self.kind][1:]

    @property
    def period(self) -> pd.Timedelta:
        return timeframe_delta(self.timeframe)

    @property
    def label(self) -> str:
        return {OHLCV: f"{self.coin}/{QUOTE} {self.timeframe} bars", DVOL: f"{self.coin} DVOL",
                FUNDING: f"{self.coin}{QUOTE} perpetual funding"}[self.kind]

    def known_from(self, times: pd.DatetimeIndex) -> pd.DatetimeIndex:
        """When each row becomes known: a bar at its close (open + period), a daily DVOL value at the next
        00:00 UTC, a funding rate at its timestamp."""
        if self.kind == FUNDING:
            return times
        return times + self.period

    def on_grid(self, times: pd.DatetimeIndex) -> np.ndarray:
        """[n] bool: the row's time lies on its series' grid (bars of a day or less start at a multiple of
        the period from 00:00 UTC; weekly bars and funding times are not checked)."""
        if self.kind == FUNDING or self.period > pd.Timedelta(days=1):
            return np.ones(len(times), bool)
        ns = times.asi8 if times.unit == "ns" else times.as_unit("ns").asi8
        return (ns % self.period.value) == 0

    def format_times(self, times: pd.DatetimeIndex) -> np.ndarray:
        """The time column as the shipped files write it."""
        if self.kind == FUNDING:
            return np.array([s[:-3] for s in times.strftime("%Y-%m-%d %H:%M:%S.%f")], dtype=object)
        if self.kind == DVOL or self.timeframe == "1d":
            return np.asarray(times.strftime("%Y-%m-%d"), dtype=object)
        return np.asarray(times.strftime("%Y-%m-%d %H:%M:%S"), dtype=object)


def table_for_name(name: str) -> Table | None:
    """The table a file name of the shipped layout names (``BTCUSDT_1d.csv``, ``ETHUSDT_4h.json``,
    ``deribit_btc_dvol_daily.csv``, ``binance_BTCUSDT_perp_funding_8h.csv``), else None."""
    m = _OHLCV_NAME.match(name)
    if m:
        return Table(OHLCV, m.group(1), m.group(2))
    m = _DVOL_NAME.match(name)
    if m:
        return Table(DVOL, m.group(1).upper())
    m = _FUNDING_NAME.match(name)
    if m:
        return Table(FUNDING, m.group(1), "8h")
    return None


def kind_for_header(columns) -> str | None:
    """The table kind whose columns are exactly ``columns`` (in any order), else None."""
    cols = set(map(str, columns))
    return next((k for k, c in COLUMNS.items() if set(c) == cols), None)


def parse_times(text: pd.Series) -> pd.DatetimeIndex:
    """UTC times from text (``2024-12-31``, ``2024-12-31 04:00:00``, ISO-8601 with ``Z``); NaT where unreadable."""
    t = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    return pd.DatetimeIndex(t).tz_localize(None).as_unit("ns")


def read_csv_cells(path: Path) -> pd.DataFrame:
    """Every cell of CSV file ``path`` as text (header row → column names); ``MarketDataError`` naming the file if
    it cannot be read as CSV."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise MarketDataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MarketDataError(f"{path}: cannot read it as CSV ({' '.join(str(exc).split())[:200]})") from None


def read_table(path: Path, table: Table) -> pd.DataFrame:
    """The rows of ``path`` (a ``table`` file) indexed by naive UTC time, sorted, as float64 columns.

    MarketDataError, naming the file, line and column, for a missing column, an unreadable time or
    number, a value that must be positive and is not, or a time that appears twice.
    """
    path = Path(path)
    raw = read_csv_cells(path)
    missing = [c for c in table.columns if c not in raw.columns]
    if missing:
        raise MarketDataError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(table.columns)})")
    tcol = table.columns[0]
    times = parse_times(raw[tcol])
    bad = np.flatnonzero(np.asarray(times.isna()))
    if len(bad):
        i = int(bad[0])
        raise MarketDataError(f"{path}: line {i + 2}, column {tcol}: cannot read {raw[tcol].iloc[i]!r} as a UTC time")
    out = {}
    for c in table.values:
        v = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(v) & ((v > 0) if c in POSITIVE[table.kind] else True)
        if not ok.all():
            i = int(np.argmin(ok))
            want = "a number > 0" if c in POSITIVE[table.kind] else "a finite number"
            raise MarketDataError(f"{path}: line {i + 2}, column {c}: {raw[c].iloc[i]!r} is not {want}")
        out[c] = v
    df = pd.DataFrame(out, index=pd.DatetimeIndex(times, name=tcol))
    dup = np.flatnonzero(df.index.duplicated())
    if len(dup):
        i = int(dup[0])
        raise MarketDataError(f"{path}: line {i + 2}, column {tcol}: time {raw[tcol].iloc[i]} appears twice")
    if not df.index.is_monotonic_increasing:
        df = df.sort_index(kind="stable")
    return df


def table_text(table: Table, df: pd.DataFrame) -> str:
    """``df`` (indexed by time, the table's value columns) as the CSV text of the shipped format."""
    out = pd.DataFrame({table.columns[0]: table.format_times(pd.DatetimeIndex(df.index))})
    for c in table.values:
        out[c] = df[c].to_numpy(dtype=np.float64)
    buf = io.StringIO()
    out.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


__all__ = ["COINS", "QUOTE", "OHLCV", "DVOL", "FUNDING", "KINDS", "COLUMNS", "MarketDataError", "Table",
           "timeframe_delta", "check_coin", "table_for_name", "kind_for_header", "parse_times", "read_csv_cells", "read_table",
           "table_text"]
