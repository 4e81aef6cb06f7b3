"""The staleness policy: how old the history may be, relative to the book's as-of, before a model refuses it.

The history's end is the earliest last daily close, known at the as-of time, among the coins the
model needs (``MarketStore.history_end``). Its age is the number of calendar days from that bar's
date to the as-of date: a book margined at 08:00 on day D with the close of D−1 in the history has
age 1. When the age is more than the store's ``max_history_age_days`` (default 3), the model fails
with ``StaleHistoryError`` (one line naming both dates), unless ``allow_stale_history`` is set: then
it runs on the history it has, logs a warning, and every output says ``stale: true``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from .layout import MarketDataError
from .store import MarketStore, utc_time

log = logging.getLogger(__name__)


class StaleHistoryError(MarketDataError):
    """The market history ends more than ``max_history_age_days`` before the book's as-of."""


@dataclass(frozen=True)
class HistoryState:
    """The history a calculation as of ``as_of`` reads.

    end: the date of the last daily bar it reads (every coin is read up to it); limiting_coin: the coin
    whose last close is ``end``; age_days: as-of date − end (calendar days); stale: age_days >
    max_age_days (possible only when the store allows stale history).
    """

    as_of: pd.Timestamp
    end: pd.Timestamp
    limiting_coin: str
    coins: tuple[str, ...]
    age_days: int
    max_age_days: int
    stale: bool
    store: MarketStore

    @property
    def read_as_of(self) -> pd.Timestamp:
        """The time the history is read at: the close of the ``end`` bar (``end`` + 1 day, ≤ as-of)."""
        return self.end + pd.Timedelta(days=1)

    def summary(self) -> dict:
        """What every summary, manifest and Parquet file records (JSON-able)."""
        return {
            "end": str(self.end.date()),
            "age_days": int(self.age_days),
            "max_age_days": int(self.max_age_days),
            "stale": bool(self.stale),
            "limiting_coin": self.limiting_coin,
            "coins": list(self.coins),
            "source": self.store.source,
            "path": str(self.store.root),
        }


def history_state(store: MarketStore, coins, as_of) -> HistoryState:
    """The history a calculation as of ``as_of`` on ``coins`` reads, checked against the store's policy.

    StaleHistoryError when it ends more than ``store.max_history_age_days`` before ``as_of`` and the
    store does not allow stale history; MarketDataError when a coin has no history known at ``as_of``.
    """
    t = utc_time(as_of)
    coins = tuple(dict.fromkeys(str(c) for c in coins))
    end, coin = store.history_end(coins, t)
    age = int((t.normalize() - end).days)
    limit = int(store.max_history_age_days)
    stale = age > limit
    if stale:
        what = (f"market history ends {end.date()} (last daily close of {coin} in {store.name}), {age} days before "
                f"the book's as-of {t.isoformat()}Z; the limit is max_history_age_days = {limit}")
        if not store.allow_stale_history:
            raise StaleHistoryError(f"{what}: extend the history (gpurisk market import / fetch) or run with "
                                    "--allow-stale-history")
        log.warning("%s: running on stale history because stale history is allowed", what)
    return HistoryState(t, end, coin, coins, age, limit, stale, store)


__all__ = ["StaleHistoryError", "HistoryState", "history_state"]
