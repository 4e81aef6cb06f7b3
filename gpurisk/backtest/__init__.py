"""Point-in-time margin backtests and the regulators' statistics.

``gpurisk.backtest.run(model="house", start=..., end=...)`` margins a book held constant (the standard test
portfolios by default) on every day of a range from the history known that day, sets the IM against the P&L
of the following margin period of risk, and returns the daily rows, the per-portfolio and pooled statistics
and the 250-day traffic-light windows (``BacktestResult``; ``write(folder)`` stores them). Modules:
``engine`` (the days, on Dask), ``portfolios`` (the standard portfolios, holding a book constant), ``stats``
(each statistic, with its formula), ``summary`` (the tables). docs/backtesting.md explains all of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..market import market_store, shipped_dir
from . import stats
from .engine import DEFAULT_LEVEL, BacktestError, check_range, compute, make_setup
from .portfolios import hold_constant, standard_book
from .summary import POOLED, summarise

#: the shipped standard portfolios (a book folder beside the shipped market history)
STANDARD_FOLDER = ("backtest", "standard_portfolios")
#: days per Dask task by default
BLOCK_DAYS = 30


@dataclass
class BacktestResult:
    """daily: one row per (date, portfolio); summary: one row per portfolio and ``pooled``; windows: the
    250-day windows of every portfolio; meta: what ran (model, parameters, range, history, timings)."""

    daily: pd.DataFrame
    summary: pd.DataFrame
    windows: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def pooled(self) -> pd.Series:
        return self.summary.set_index("portfolio").loc[POOLED]

    def write(self, out) -> Path:
        """``out/daily.parquet``, ``summary.parquet``, ``windows.parquet`` and ``summary.json`` (atomic)."""
        from ..fileio import write_json, write_parquet

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(self.daily, out / "daily.parquet")
        write_parquet(self.summary, out / "summary.parquet")
        write_parquet(self.windows, out / "windows.parquet")
        pooled = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in self.pooled.to_dict().items()}
        write_json({**self.meta, "pooled": pooled}, out / "summary.json")
        return out


def standard_portfolios(market=None):
    """The standard test portfolios as a ``Book``: the shipped book folder when there is one, else generated
    (``portfolios.standard_book``; the same book, a test checks it)."""
    from ..io import load_book

    try:
        folder = shipped_dir().joinpath(*STANDARD_FOLDER)
    except Exception:  # noqa: BLE001 - no shipped folder at all: generate
        folder = None
    if folder is not None and (folder / "book.toml").is_file():
        return load_book(folder).book
    return standard_book(market)


def _book(portfolios, store):
    from ..book import Book
    from ..io import load_book

    if isinstance(portfolios, Book):
        return portfolios
    if isinstance(getattr(portfolios, "book", None), Book):
        return portfolios.book
    if portfolios in (None, "standard"):
        return standard_portfolios(store)
    return load_book(portfolios).book


def _params(model: str, params):
    from ..margin import get_model

    mod = get_model(model)
    if params is None or isinstance(params, (str, bytes)) or hasattr(params, "__fspath__"):
        params = mod.load_params(None if params is None else str(params))
    if model == "house" and getattr(params, "cross_venue", False):
        from dataclasses import replace

        params = replace(params, cross_venue=False)  # the account×venue figures do not change the IM
    return params


def run(model: str = "house", params=None, portfolios="standard", start="2020-01-01", end="2024-12-31",
        horizon_days=None, market=None, backend: str = "auto", client=None, block_days: int = BLOCK_DAYS,
        on_block=None, level: float = DEFAULT_LEVEL) -> BacktestResult:
    """Backtest ``model`` with ``params`` (its Params, a TOML file, or None for the defaults) on ``portfolios``
    (``"standard"``, a book folder, a Book) held constant, every day from ``start`` to ``end`` (ISO dates),
    the P&L over ``horizon_days`` (default the model's MPOR), history from ``market`` (a MarketStore, a folder or
    None for the default store), revaluation on ``backend``; the days in blocks of ``block_days``, as Dask tasks
    on ``client`` when one is given; ``on_block(done, total)`` after each block. ``level``: the coverage the
    statistics test (the VaR confidence of ``stats``; 0.99), whatever the model's own confidence.

    A day takes part when the history has its close and the close h days later; a portfolio when every coin it
    holds has ``portfolios.MIN_HISTORY_DAYS`` closes by then. Rows a model leaves uncovered (a venue replica and a
    portfolio on another venue: IM NaN) are left out and counted in ``meta["uncovered_rows"]``.
    """
    from ..margin import MODELS

    if model not in MODELS:
        raise ConfigError(f"unknown margin model {model!r}; choose one of {', '.join(MODELS)}")
    if isinstance(level, bool) or not 0.0 < float(level) < 1.0:
        raise ConfigError(f"the backtest level must lie in (0, 1), got {level}")
    t0 = time.perf_counter()
    store = market_store(market)
    days = check_range(start, end)
    params = _params(model, params)
    book = _book(portfolios, store)
    template = hold_constant(book, store)
    setup = make_setup(model, params, template, store, horizon_days, backend)
    daily = compute(setup, days, client=client, block_days=block_days, on_block=on_block)
    # a venue replica margins only its venue's positions: the portfolios it leaves uncovered (IM NaN) are counted,
    # not backtested
    uncovered = daily["im"].isna().to_numpy()
    left_out = sorted(set(daily.loc[uncovered, "portfolio"])) if uncovered.any() else []
    daily = daily.loc[~uncovered].reset_index(drop=True)
    if daily.empty:
        raise BacktestError(f"model {model} margins none of the portfolios (all {int(uncovered.sum())} rows uncovered)")
    summary, windows = summarise(daily, level)
    meta = {
        "model": model,
        "params": _plain(params),
        "start": str(start), "end": str(end),
        "days": int(daily["date"].nunique()),
        "portfolios": int(daily["portfolio"].nunique()),
        "horizon_days": setup.horizon_days,
        "level": level,
        "model_confidence": setup.level,
        "backend": backend,
        "market": store.describe(),
        "market_fingerprint": store.fingerprint(),
        "book_as_of": str(pd.Timestamp(book.as_of)),
        "workers": len(client.scheduler_info().get("workers", {})) if client is not None else 0,
        "block_days": int(block_days),
        "uncovered_rows": int(uncovered.sum()),
        "uncovered_portfolios": left_out,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return BacktestResult(daily, summary, windows, meta)


def _plain(params) -> dict:
    import dataclasses
    import math

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return v

    return conv(params) if dataclasses.is_dataclass(params) else {}


def load(folder) -> BacktestResult:
    """A written backtest (``BacktestResult.write``) read back."""
    folder = Path(folder)
    for f in ("daily.parquet", "summary.parquet"):
        if not (folder / f).is_file():
            raise ConfigError(f"{folder}: not a backtest folder (no {f})")
    meta = json.loads((folder / "summary.json").read_text(encoding="utf-8")) if (folder / "summary.json").is_file() \
        else {}
    wpath = folder / "windows.parquet"
    return BacktestResult(pd.read_parquet(folder / "daily.parquet"), pd.read_parquet(folder / "summary.parquet"),
                          pd.read_parquet(wpath) if wpath.is_file() else pd.DataFrame(), meta)


__all__ = ["run", "load", "BacktestResult", "BacktestError", "standard_portfolios", "stats", "POOLED",
           "BLOCK_DAYS", "STANDARD_FOLDER"]
