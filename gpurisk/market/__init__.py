"""The market history store: one reader of history for every consumer, point in time, with a staleness
policy, and the tools that extend it (``import_files``, ``fetch_history``).

Modules: ``layout`` (the folder's tables, columns and when a row is known), ``store`` (``MarketStore``:
point-in-time reads, caching, choosing the folder), ``staleness`` (``history_state``: how old the
history may be), ``importer`` (appending CSV / CCXT OHLCV rows) and ``fetch`` (CCXT ``fetch_ohlcv``;
the optional extra ``connect``). docs/data-format.md ("Market history") describes the folder.
"""

from .layout import COINS, MarketDataError, Table
from .staleness import HistoryState, StaleHistoryError, history_state
from .store import (DEFAULT_MAX_HISTORY_AGE_DAYS, ENV_VAR, MarketSettings, MarketStore, MarketView, default_store,
                    market_store, open_store, resolve_store, shipped_dir, utc_time)


def import_files(*args, **kwargs):
    """See ``gpurisk.market.importer.import_files``."""
    from .importer import import_files as _imp

    return _imp(*args, **kwargs)


def fetch_history(*args, **kwargs):
    """See ``gpurisk.market.fetch.fetch_history`` (needs the optional ``ccxt``)."""
    from .fetch import fetch_history as _fetch

    return _fetch(*args, **kwargs)


__all__ = ["COINS", "MarketDataError", "Table", "HistoryState", "StaleHistoryError", "history_state",
           "DEFAULT_MAX_HISTORY_AGE_DAYS", "ENV_VAR", "MarketSettings", "MarketStore", "MarketView", "default_store",
           "market_store", "open_store", "resolve_store", "shipped_dir", "utc_time", "import_files", "fetch_history"]
