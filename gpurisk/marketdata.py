"""Loaders for the real market history shipped in ``datasets/`` (see datasets/README.md).

All loaders return pandas objects indexed by UTC date; prices are USDT, which
the engine counts as USD.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

#: coins with daily history, as named in the book's ``underlying`` column
COINS = ("BTC", "ETH", "SOL", "XRP", "BNB", "DOGE", "ADA")


def datasets_dir() -> Path:
    """The datasets folder: the installed package copy, else the source tree's ``datasets/``."""
    here = Path(__file__).resolve().parent
    for cand in (here / "data", here.parent / "datasets"):
        if (cand / "market" / "daily").is_dir():
            return cand
    raise FileNotFoundError("gpurisk datasets folder not found (expected gpurisk/data or datasets/)")


@lru_cache(maxsize=None)
def _daily(coin: str) -> pd.DataFrame:
    path = datasets_dir() / "market" / "daily" / f"{coin}USDT_1d.csv"
    if not path.exists():
        raise KeyError(f"no daily history for {coin!r}; have {', '.join(COINS)}")
    df = pd.read_csv(path, parse_dates=["timestamp"])
    return df.set_index("timestamp").sort_index()


def daily_bars(coin: str) -> pd.DataFrame:
    """Daily OHLCV bars of ``coin`` (columns open, high, low, close, volume; volume in coin)."""
    return _daily(coin).copy()


def daily_closes(coins=COINS) -> pd.DataFrame:
    """Daily closes [dates, coins], outer-joined; a coin is NaN before its listing."""
    return pd.concat({c: _daily(c)["close"] for c in coins}, axis=1).sort_index()


def close_on(coin: str, date) -> float:
    """The last daily close on or before ``date``; KeyError if the history starts later."""
    s = _daily(coin)["close"]
    ts = pd.Timestamp(date)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    s = s.loc[: ts.normalize()]
    if s.empty:
        raise KeyError(f"no {coin} close on or before {ts.date()}")
    return float(s.iloc[-1])


def average_daily_volume_usd(coin: str, date, days: int = 30) -> float:
    """Mean daily traded value in USD over the ``days`` days to ``date`` (volume × close)."""
    bars = _daily(coin)
    ts = pd.Timestamp(date)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    win = bars.loc[: ts.normalize()].tail(days)
    if win.empty:
        raise KeyError(f"no {coin} volume on or before {ts.date()}")
    return float((win["volume"] * win["close"]).mean())


@lru_cache(maxsize=None)
def _dvol() -> pd.Series:
    df = pd.read_csv(datasets_dir() / "options" / "deribit_btc_dvol_daily.csv", parse_dates=["date"])
    s = df.set_index("date")["dvol"].sort_index() / 100.0
    return s.asfreq("D").ffill()  # 260 single missing days are forward-filled


def dvol() -> pd.Series:
    """Deribit BTC DVOL (30-day implied vol), daily, as a decimal (0.6 = 60 %), gaps forward-filled."""
    return _dvol().copy()


def deribit_option_chain() -> pd.DataFrame:
    """The real Deribit BTC option-chain snapshot (inverse options; mark_price in BTC, mark_iv in %)."""
    df = pd.read_csv(datasets_dir() / "options" / "deribit_btc_option_chain_2026-03.csv")
    df["expiration"] = pd.to_datetime(df["expiration"], utc=True)
    return df


def funding_rates() -> pd.Series:
    """Binance BTCUSDT perpetual funding per 8 hours (fraction), indexed by timestamp."""
    df = pd.read_csv(datasets_dir() / "funding" / "binance_BTCUSDT_perp_funding_8h.csv", parse_dates=["timestamp"])
    return df.set_index("timestamp")["funding_rate"].sort_index()


def log_returns(closes: pd.DataFrame, horizon_days: int = 1) -> pd.DataFrame:
    """Overlapping h-day log returns of a close panel."""
    return np.log(closes).diff(horizon_days)
