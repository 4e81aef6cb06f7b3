"""The market history store: one reader of history for every consumer, point in time.

``MarketStore`` reads a history folder (layout in ``gpurisk.market.layout``). Every reader takes
``as_of``: with it, only the rows known at ``as_of`` come back (a daily bar dated d from d+1 00:00
UTC, a 4-hour bar from its close, a daily DVOL value from the next day, a funding rate from its
time); without it, the whole table (for tools and for realised P&L in backtests, never for a
model). ``store.at(as_of)`` is a view whose readers are all cut at ``as_of``.

Tables are parsed once per store and kept; ``memo(key, fn)`` keeps derived values (EWMA vols, ...)
for the same store, so a rolling backtest over many days reads each file once. A store also carries
the staleness policy (``max_history_age_days``, ``allow_stale_history``; ``gpurisk.market.staleness``).

Which folder: ``resolve_store(cli, job)`` applies the precedence ``--market-data DIR`` > job
``[market] history`` > ``GPURISK_MARKET_DATA`` > the shipped ``datasets/``. ``market_store(market)``
turns what a model or generator was given (a store, a folder, or None for the default: the
variable, else the shipped folder) into a store. No module holds a "current" store: it is passed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..book import to_utc_seconds
from .layout import COINS, DVOL, FUNDING, OHLCV, QUOTE, MarketDataError, Table, read_table, table_for_name

#: the environment variable naming a history folder (below the CLI option and the job key)
ENV_VAR = "GPURISK_MARKET_DATA"
#: default of the staleness policy: the history may end at most this many days before the as-of date
DEFAULT_MAX_HISTORY_AGE_DAYS = 3


def shipped_dir() -> Path:
    """The shipped history folder: the installed package copy ``gpurisk/data``, else the source tree's ``datasets/``."""
    pkg = Path(__file__).resolve().parent.parent
    for cand in (pkg / "data", pkg.parent / "datasets"):
        if (cand / "market" / "daily").is_dir():
            return cand
    raise MarketDataError("the shipped market history folder is missing (expected gpurisk/data or datasets/)")


def utc_time(t) -> pd.Timestamp:
    """``t`` as a naive UTC Timestamp (ns)."""
    return pd.Timestamp(to_utc_seconds(t)).as_unit("ns")


class _Data:
    """The parsed tables and memoised values of one folder state (shared by every policy view of it)."""

    def __init__(self, root: Path, signature: tuple):
        self.root = root
        self.signature = signature
        self.tables: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}  # relpath -> (frame, known-from ns)
        self.memo: dict = {}
        self.lock = threading.RLock()


_OPEN: dict[Path, _Data] = {}
_OPEN_LOCK = threading.Lock()


def _signature(root: Path) -> tuple:
    """(relative path, size, mtime) of every CSV file under ``root``: a changed file gives a new signature."""
    out = []
    for p in sorted(root.rglob("*.csv")):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _folder_data(root: Path) -> _Data:
    """The shared parsed state of ``root`` as it is now (re-read when a file changed since)."""
    sig = _signature(root)
    with _OPEN_LOCK:
        d = _OPEN.get(root)
        if d is None or d.signature != sig:
            d = _Data(root, sig)
            _OPEN[root] = d
        return d


@dataclass(frozen=True)
class MarketStore:
    """A history folder, read point in time; carries the staleness policy of the run that uses it.

    root: the folder; source: where the choice came from (``cli``, ``job``, ``env``, ``shipped`` or
    ``explicit``); max_history_age_days, allow_stale_history: the staleness policy.
    """

    root: Path
    source: str = "explicit"
    max_history_age_days: int = DEFAULT_MAX_HISTORY_AGE_DAYS
    allow_stale_history: bool = False
    _data: _Data = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self._data is None:
            root = Path(self.root).resolve()
            object.__setattr__(self, "root", root)
            object.__setattr__(self, "_data", _folder_data(root))

    # ------------------------------------------------------------------ identity and policy

    def with_policy(self, max_history_age_days: int | None = None, allow_stale_history: bool | None = None
                    ) -> "MarketStore":
        """The same data with another staleness policy (None keeps a value)."""
        age = self.max_history_age_days if max_history_age_days is None else max_history_age_days
        if isinstance(age, bool) or not isinstance(age, (int, np.integer)) or age < 0:
            raise MarketDataError(f"max_history_age_days must be a whole number of days >= 0, got {age!r}")
        allow = self.allow_stale_history if allow_stale_history is None else bool(allow_stale_history)
        return replace(self, max_history_age_days=int(age), allow_stale_history=allow)

    @property
    def shipped(self) -> bool:
        """True when this is the shipped history folder."""
        try:
            return self.root.resolve() == shipped_dir().resolve()
        except MarketDataError:
            return False

    @property
    def name(self) -> str:
        """A short label for messages and provenance: ``shipped datasets`` or the folder."""
        return "shipped datasets" if self.shipped else str(self.root)

    def describe(self) -> dict:
        """{source, path, shipped, coins, max_history_age_days, allow_stale_history} (JSON-able)."""
        return {"source": self.source, "path": str(self.root), "shipped": self.shipped, "coins": list(self.coins()),
                "max_history_age_days": self.max_history_age_days, "allow_stale_history": self.allow_stale_history}

    def fingerprint(self) -> str:
        """SHA-256 over every CSV file of the folder (relative path and bytes): a run's history input."""
        def compute():
            h = hashlib.sha256()
            for rel, _, _ in self._data.signature:
                h.update(rel.encode() + b"\0")
                with open(self.root / rel, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                h.update(b"\0")
            return h.hexdigest()

        return self.memo(("store.fingerprint",), compute)

    def memo(self, key, compute):
        """``compute()`` once per ``key`` for this folder's data (keys name their caller: ``("house.ewma", ...)``)."""
        d = self._data
        try:
            return d.memo[key]
        except KeyError:
            pass
        with d.lock:
            if key not in d.memo:
                d.memo[key] = compute()
            return d.memo[key]

    # ------------------------------------------------------------------ tables

    def coins(self) -> tuple[str, ...]:
        """Coins with daily bars in the folder: the shipped coins in their order, then the others sorted."""
        def compute():
            have = {t.coin for t in self.series() if t.kind == OHLCV and t.timeframe == "1d"}
            return tuple(c for c in COINS if c in have) + tuple(sorted(have - set(COINS)))

        return self.memo(("store.coins",), compute)

    def series(self) -> tuple[Table, ...]:
        """Every table of the layout the folder holds (files at their layout path), in path order."""
        return tuple(t for rel, _, _ in self._data.signature
                     if (t := table_for_name(Path(rel).name)) is not None and rel == t.relpath)

    def has(self, table: Table) -> bool:
        """True when the folder holds ``table``'s file."""
        return (self.root / table.relpath).is_file()

    def has_daily(self, coin: str) -> bool:
        """True when the folder has daily bars of ``coin``."""
        return str(coin) in self.coins()

    def _load(self, table: Table) -> tuple[pd.DataFrame, np.ndarray]:
        d = self._data
        got = d.tables.get(table.relpath)
        if got is not None:
            return got
        with d.lock:
            if table.relpath not in d.tables:
                path = self.root / table.relpath
                if not path.is_file():
                    raise MarketDataError(self._missing(table))
                df = read_table(path, table)
                known = np.asarray(table.known_from(pd.DatetimeIndex(df.index)).as_unit("ns").asi8)
                d.tables[table.relpath] = (df, known)
            return d.tables[table.relpath]

    def _missing(self, table: Table) -> str:
        if table.kind == OHLCV and table.timeframe == "1d":
            have = ", ".join(self.coins()) or "none"
            return f"no daily history for {table.coin} in {self.name} (coins with daily bars: {have})"
        return f"no {table.label} in {self.name} (expected {table.relpath})"

    def table(self, table: Table, as_of=None) -> pd.DataFrame:
        """The rows of ``table`` known at ``as_of`` (all rows when None), indexed by UTC time; a copy."""
        df, known = self._load(table)
        if as_of is not None:
            n = int(np.searchsorted(known, utc_time(as_of).value, side="right"))
            df = df.iloc[:n]
        return df.copy()

    def daily_bars(self, coin: str, as_of=None) -> pd.DataFrame:
        """Daily OHLCV bars of ``coin`` known at ``as_of`` [dates, open/high/low/close/volume]; volume in coin."""
        return self.table(Table(OHLCV, coin, "1d"), as_of)

    def daily_closes(self, coins=None, as_of=None) -> pd.DataFrame:
        """Daily closes [dates, coins] known at ``as_of``, outer-joined; a coin is NaN before its listing.

        ``coins`` default to every coin of the folder.
        """
        coins = self.coins() if coins is None else tuple(str(c) for c in coins)
        if not coins:
            raise MarketDataError(f"no daily history in {self.name}")
        key = ("store.daily_closes", coins)
        panel = self.memo(key, lambda: pd.concat({c: self._load(Table(OHLCV, c, "1d"))[0]["close"] for c in coins},
                                                  axis=1).sort_index())
        if as_of is not None:  # a daily bar dated d is known from d+1 00:00 UTC
            n = int(np.searchsorted(panel.index.asi8 + pd.Timedelta(days=1).value, utc_time(as_of).value, side="right"))
            panel = panel.iloc[:n]
        return panel.copy()

    def intraday_bars(self, coin: str, timeframe: str = "4h", as_of=None) -> pd.DataFrame:
        """OHLCV bars of ``coin`` at ``timeframe`` (indexed by bar open) whose close is at or before ``as_of``."""
        return self.table(Table(OHLCV, coin, timeframe), as_of)

    def dvol(self, as_of=None, coin: str = "BTC") -> pd.Series:
        """Deribit DVOL of ``coin`` (30-day implied vol), daily, as a decimal (0.6 = 60 %), single missing
        days forward-filled; only the values known at ``as_of``. Empty when the folder has no DVOL file
        (the generators then use their documented realised-vol proxies)."""
        t = Table(DVOL, coin)
        if not self.has(t):
            return pd.Series([], index=pd.DatetimeIndex([], name="date"), dtype=np.float64, name="dvol")
        s = self.memo(("store.dvol", t.coin), lambda: (self._load(t)[0]["dvol"] / 100.0).asfreq("D").ffill())
        if as_of is not None:
            n = int(np.searchsorted(s.index.asi8 + pd.Timedelta(days=1).value, utc_time(as_of).value, side="right"))
            s = s.iloc[:n]
        return s.copy()

    def funding_rates(self, coin: str = "BTC", as_of=None) -> pd.Series:
        """Perpetual funding of ``coin`` per 8 hours (fraction), indexed by time, known at ``as_of``."""
        return self.table(Table(FUNDING, coin, "8h"), as_of)["funding_rate"]

    def option_chain(self) -> pd.DataFrame:
        """The Deribit BTC option-chain snapshot (inverse options; ``mark_price`` in BTC, ``mark_iv`` in %).

        A snapshot, not a time series (its time is not recorded): never read as of a date.
        """
        files = sorted((self.root / "options").glob("deribit_btc_option_chain_*.csv"))
        if not files:
            raise MarketDataError(f"no option-chain snapshot in {self.name} (options/deribit_btc_option_chain_*.csv)")
        df = pd.read_csv(files[-1])
        df["expiration"] = pd.to_datetime(df["expiration"], utc=True)
        return df

    def last_daily(self, coin: str, as_of=None) -> pd.Timestamp | None:
        """The date of the last daily bar of ``coin`` known at ``as_of`` (None when none is)."""
        df, known = self._load(Table(OHLCV, coin, "1d"))
        n = len(df) if as_of is None else int(np.searchsorted(known, utc_time(as_of).value, side="right"))
        return df.index[n - 1] if n else None

    def history_end(self, coins, as_of=None) -> tuple[pd.Timestamp, str]:
        """(date, coin): the earliest last daily close among ``coins`` known at ``as_of``, and whose it is.

        MarketDataError when a coin has no daily history in the folder, or none known at ``as_of``.
        """
        coins = tuple(dict.fromkeys(str(c) for c in coins))
        if not coins:
            raise MarketDataError("history_end needs at least one coin")
        ends = []
        for c in coins:  # a handful of coins
            last = self.last_daily(c, as_of)
            if last is None:
                first = self.daily_bars(c).index
                if not len(first):
                    raise MarketDataError(f"{self.name}: the daily history of {c} is empty")
                raise MarketDataError(f"no {c} daily close is known at {utc_time(as_of)} "
                                      f"({self.name}: the {c} history starts {first[0].date()})")
            ends.append((last, c))
        return min(ends)

    def at(self, as_of) -> "MarketView":
        """A view of the store whose readers only see what is known at ``as_of``."""
        return MarketView(self, utc_time(as_of))


@dataclass(frozen=True)
class MarketView:
    """``store`` as known at ``as_of``: the store's readers with ``as_of`` fixed."""

    store: MarketStore
    as_of: pd.Timestamp

    def daily_bars(self, coin: str) -> pd.DataFrame:
        return self.store.daily_bars(coin, self.as_of)

    def daily_closes(self, coins=None) -> pd.DataFrame:
        return self.store.daily_closes(coins, self.as_of)

    def intraday_bars(self, coin: str, timeframe: str = "4h") -> pd.DataFrame:
        return self.store.intraday_bars(coin, timeframe, self.as_of)

    def dvol(self, coin: str = "BTC") -> pd.Series:
        return self.store.dvol(self.as_of, coin)

    def funding_rates(self, coin: str = "BTC") -> pd.Series:
        return self.store.funding_rates(coin, self.as_of)

    def last_daily(self, coin: str) -> pd.Timestamp | None:
        return self.store.last_daily(coin, self.as_of)

    def history_end(self, coins) -> tuple[pd.Timestamp, str]:
        return self.store.history_end(coins, self.as_of)


# --------------------------------------------------------------------------- opening and choosing a folder


def open_store(root, source: str = "explicit", what: str | None = None) -> MarketStore:
    """The store of folder ``root`` (default policy). MarketDataError, naming ``what`` (e.g. ``--market-data``),
    when the folder is missing or holds no daily bars (``market/daily/<COIN>USDT_1d.csv``)."""
    label = f"{what} {root}" if what else str(root)
    path = Path(os.path.expanduser(str(root)))
    if not path.exists():
        raise MarketDataError(f"{label}: market history folder not found")
    if not path.is_dir():
        raise MarketDataError(f"{label}: not a folder")
    path = path.resolve()
    daily = path / "market" / "daily"
    if not daily.is_dir() or not any(daily.glob(f"*{QUOTE}_1d.csv")):
        raise MarketDataError(f"{label}: not a market history folder (no market/daily/<COIN>{QUOTE}_1d.csv; "
                              "see docs/data-format.md, \"Market history\")")
    return MarketStore(path, source)


@dataclass(frozen=True)
class MarketSettings:
    """One level of the market settings (command line, job file): None = not set at this level."""

    history: Path | str | None = None
    max_history_age_days: int | None = None
    allow_stale_history: bool | None = None


def _settings(x) -> MarketSettings:
    if x is None:
        return MarketSettings()
    if isinstance(x, MarketSettings):
        return x
    if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__"):
        return MarketSettings(history=os.fsdecode(x))
    raise TypeError(f"market settings must be MarketSettings, a folder or None, got {type(x).__name__}")


def resolve_store(cli=None, job=None, *, environ=None) -> MarketStore:
    """The store a run uses, resolved once: folder ``--market-data`` > job ``[market] history`` >
    ``GPURISK_MARKET_DATA`` > shipped; policy values command line > job > defaults (3 days, not allowed).

    cli, job: ``MarketSettings``, a folder, or None. environ: the environment (default ``os.environ``).
    """
    c, j = _settings(cli), _settings(job)
    env = os.environ if environ is None else environ
    if c.history:
        store = open_store(c.history, "cli", "--market-data")
    elif j.history:
        store = open_store(j.history, "job", "[market] history")
    elif env.get(ENV_VAR):
        store = open_store(env[ENV_VAR], "env", ENV_VAR)
    else:
        store = open_store(shipped_dir(), "shipped")
    age = next((v for v in (c.max_history_age_days, j.max_history_age_days) if v is not None),
               DEFAULT_MAX_HISTORY_AGE_DAYS)
    allow = next((v for v in (c.allow_stale_history, j.allow_stale_history) if v is not None), False)
    return store.with_policy(age, allow)


def default_store() -> MarketStore:
    """The store a caller that chose none gets: ``GPURISK_MARKET_DATA`` if set, else the shipped folder."""
    return resolve_store()


def market_store(market=None) -> MarketStore:
    """A store from what a model or generator was given: a ``MarketStore``, a folder, or None (``default_store``)."""
    if market is None:
        return default_store()
    if isinstance(market, MarketStore):
        return market
    if isinstance(market, MarketView):
        raise TypeError("pass the MarketStore, not a view: models cut the history at the book's as-of themselves")
    if isinstance(market, (str, bytes)) or hasattr(market, "__fspath__"):
        return open_store(os.fsdecode(market))
    raise TypeError(f"market must be a MarketStore, a history folder or None, got {type(market).__name__}")


__all__ = ["ENV_VAR", "DEFAULT_MAX_HISTORY_AGE_DAYS", "MarketStore", "MarketView", "MarketSettings", "shipped_dir",
           "open_store", "resolve_store", "default_store", "market_store"]
