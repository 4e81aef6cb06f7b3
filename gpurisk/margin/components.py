"""The house model's default scenario components, and how a caller's scenario sets map onto components.

Components: ``historical`` (filtered historical simulation, its filter ratio bounded by ``vol_floor`` and
``ratio_cap``), ``montecarlo`` (Student-t or Gaussian copula) and ``stress`` (named episodes, hypothetical
shocks, and the upward ones of ``stress_component``: measured squeezes and a rally), each over the book's coins
(stablecoins aside), read from the market history store (``gpurisk.market``) as known at the book's as-of
time, up to the history's end (``book_history``: the staleness policy applies). ``historical``,
``montecarlo`` and ``user`` are measured by ES_q; ``stress`` by stress_factor × worst loss.

A caller's single ScenarioSet is always the ``user`` component (ES_q), whatever its ``kind``
says; a mapping ``{component: set}`` names the components explicitly (e.g. ``{"stress": set}`` to
charge a stress set as the stress term). One rule, one output schema (docs/methodologies.md §2).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..book import STABLECOINS, Book
from ..errors import ScenarioError
from ..market import HistoryState, MarketStore, history_state, market_store
from ..scenarios import ScenarioSet, historical, named_stress

log = logging.getLogger(__name__)

#: every component, in leg and column order
COMPONENTS = ("historical", "montecarlo", "user", "stress")
#: the components a model builds by itself
DEFAULT_COMPONENTS = ("historical", "montecarlo", "stress")
#: the component a caller's single scenario set becomes
USER = "user"
#: components measured by ES_q (the rest, ``stress``, by stress_factor × worst loss)
ES_COMPONENTS = ("historical", "montecarlo", USER)


#: measured squeezes of the stress component: none, each coin's own largest rise, or the market's (BTC's)
SQUEEZES = ("none", "coin", "market")


@dataclass(frozen=True)
class ComponentParams:
    """What the default components need (the house model's parameters carry them)."""

    horizon_days: float = 2.0
    lookback_days: int = 1825
    ewma_lambda: float = 0.97
    mc_scenarios: int = 10000
    mc_seed: int = 0
    mc_dist: str = "student_t"
    stress_names: tuple[str, ...] = ()
    vol_floor: float = 0.0
    ratio_cap: float = math.inf
    vol_filter: str = "ewma"
    squeezes: str = "none"
    squeeze_cap: float = math.inf
    rally_shock: float = 0.0
    mc_dof: float = 5.0


def history_date(as_of, market=None, coins=("BTC",)) -> pd.Timestamp:
    """The date of the last daily bar known at ``as_of`` (the earliest among ``coins``) in ``market`` (a store,
    a folder, or None for the default store): a bar dated d closes at d+1 00:00 UTC. No staleness check:
    that is ``book_history``'s."""
    return market_store(market).history_end(coins, as_of)[0]


def history_coins(book: Book, store: MarketStore, extra=()) -> tuple[str, ...]:
    """The coins whose history a model reads for ``book``: the book's coins that ``store`` has, plus ``extra``
    (e.g. the APC indicator, the proxy coin of the historical scenarios), in first-seen order."""
    return tuple(dict.fromkeys([c for c in book_coins(book) if store.has_daily(c)] + [str(c) for c in extra]))


def book_history(book: Book, market=None, extra=()) -> HistoryState:
    """The history a model reads for ``book`` (``gpurisk.market.history_state`` over ``history_coins``):
    its end is the earliest last daily close known at the book's as-of; StaleHistoryError when it is more
    than the store's ``max_history_age_days`` before it (unless stale history is allowed)."""
    store = market_store(market)
    return history_state(store, history_coins(book, store, extra), book.as_of)


def book_coins(book: Book) -> list[str]:
    """The book's coins (instrument underlyings and balance assets, stablecoins aside), sorted; BTC if none."""
    coins = sorted(
        (set(map(str, book.instruments.underlying)) | set(map(str, book.balances.asset))) - set(STABLECOINS)
    )
    return coins or ["BTC"]


def default_components(book: Book, params: ComponentParams | None = None, market=None,
                       history: HistoryState | None = None) -> dict[str, ScenarioSet]:
    """{historical, montecarlo (if ``mc_scenarios`` > 0), stress} over the book's coins, horizon ``horizon_days``.

    History comes from ``market`` (a MarketStore, a folder, or None for the default store), read as of
    ``history.read_as_of`` (the close of the last bar used: every coin up to the same day); ``history``
    defaults to ``book_history(book, market, ("BTC",))``, which enforces the staleness policy.
    """
    p = params or ComponentParams()
    store = market_store(market)
    hist = history or book_history(book, store, (historical.PROXY_COIN,))
    coins = book_coins(book)
    hist_as_of = hist.read_as_of
    h = p.horizon_days
    try:
        parts = {"historical": historical.historical_scenarios(
            hist_as_of, coins=coins, lookback_days=p.lookback_days, horizon_days=h, ewma_lambda=p.ewma_lambda,
            market=store, vol_floor=p.vol_floor, ratio_cap=p.ratio_cap, vol_filter=p.vol_filter)}
        if p.mc_scenarios > 0:
            from ..scenarios import montecarlo  # JAX: imported only when drawn

            parts["montecarlo"] = montecarlo.monte_carlo_scenarios(
                hist_as_of, n_scenarios=p.mc_scenarios, seed=p.mc_seed, distribution=p.mc_dist, dof=p.mc_dof,
                horizon_days=h, coins=coins, market=store)
        st = stress_component(coins, p, store, hist_as_of)
        if p.stress_names:
            keep = np.isin(np.asarray(st.scenario_id, dtype=str), list(p.stress_names))
            if not keep.any():
                raise ScenarioError(f"no stress scenario is named any of {list(p.stress_names)}")
            st = st.subset(np.flatnonzero(keep))
        parts["stress"] = st
    except (KeyError, ValueError) as exc:
        raise ScenarioError(f"cannot build the default scenario components: {exc}") from None
    # the generators agree on horizon and vol-term parameters; align the floats
    term = parts["historical"].term
    return {k: replace(v, horizon_days=float(h), term=term) for k, v in parts.items()}


def _known_closes(store: MarketStore, coins, as_of) -> dict:
    """{coin: number of daily closes known at ``as_of``} (each coin's bar dates kept once per folder)."""
    t = pd.Timestamp(as_of)
    out = {}
    for c in coins:  # a handful of coins
        idx = store.memo(("components.close_dates", c), lambda c=c: store.daily_bars(c).index)
        out[c] = int(idx.searchsorted(t - pd.Timedelta(days=1), side="right"))
    return out


def largest_rise(store: MarketStore, coin: str, days: int, as_of) -> tuple[pd.Timestamp, pd.Timestamp, float] | None:
    """(start, end, relative rise) of ``coin``'s largest close-to-close rise over ``days`` days among the bars
    known at ``as_of`` (None when there is no such window yet); the running maximum is kept once per folder."""
    def path():
        c = store.daily_bars(coin)["close"]
        lr = np.log(c).diff(days).to_numpy()
        lr = np.where(np.isfinite(lr), lr, -np.inf)
        best = np.maximum.accumulate(lr)
        at = np.zeros(len(lr), np.int64)
        if len(lr):
            new = np.concatenate([[True], best[1:] > best[:-1]])
            at = np.maximum.accumulate(np.where(new, np.arange(len(lr)), 0))
        return c.index, best, at

    idx, best, at = store.memo(("components.largest_rise", coin, int(days)), path)
    n = int(idx.searchsorted(pd.Timestamp(as_of) - pd.Timedelta(days=1), side="right"))
    if n < 1 or not np.isfinite(best[n - 1]):
        return None
    end = idx[at[n - 1]]
    return end - pd.Timedelta(days=days), end, math.expm1(float(best[n - 1]))


def stress_component(coins, p: ComponentParams, market=None, as_of=None) -> ScenarioSet:
    """The house model's stress set at ``as_of`` (point in time), horizon ``horizon_days``: the named episodes and
    hypothetical shocks (``named_stress``), then, per ``squeezes``, the measured squeezes: each coin's (``coin``) or
    BTC's (``market``) largest close-to-close rise over the horizon (whole days, at least 1) in the history known
    at ``as_of``, every coin moving as it did over that window, each rise capped at ``squeeze_cap``; and with
    ``rally_shock`` > 0 the hypothetical rally ``rally_<x>``: every coin +x (the mirror of ``crash_30``).

    Kept per folder and per what changes it (the episodes and squeeze windows known, the early history of a
    coin whose proxy ratio is still being measured), so a rolling backtest builds it a handful of times."""
    from ..scenarios.stress import PROXY_RATIO_DAYS, Episode, append_user, episode_moves
    from ..scenarios.stress import EPISODES as _EPISODES

    store = market_store(market)
    coins = tuple(str(c) for c in coins)
    h = float(p.horizon_days)
    days = max(1, int(round(h)))
    known = _known_closes(store, tuple(dict.fromkeys(("BTC",) + coins)), as_of) if as_of is not None else {}
    early = tuple((c, min(n, PROXY_RATIO_DAYS + 1)) for c, n in known.items())
    btc_dates = store.memo(("components.close_dates", "BTC"), lambda: store.daily_bars("BTC").index)
    nb = known.get("BTC", len(btc_dates))
    last = btc_dates[nb - 1] if nb else None
    eps = tuple(e.id for e in _EPISODES if last is not None and pd.Timestamp(e.end) <= last)
    which = () if p.squeezes == "none" else coins if p.squeezes == "coin" else ("BTC",)
    rises = tuple((c, largest_rise(store, c, days, as_of if as_of is not None else pd.Timestamp.max)) for c in which
                  if store.has_daily(c))
    rises = tuple((c, r) for c, r in rises if r is not None)
    key = ("components.stress", coins, h, eps, early, tuple((c, str(r[1].date())) for c, r in rises),
           float(p.squeeze_cap), float(p.rally_shock))

    def build():
        base = named_stress(coins=coins, horizon_days=h, market=store, as_of=as_of)
        unders = base.underlyings
        rows, ids, labels = [], [], []
        if rises:
            closes = store.daily_closes(tuple(dict.fromkeys(("BTC",) + coins)), as_of=as_of)
            for c, (a, b, rise) in rises:
                ep = Episode(f"squeeze_{c}_{days}d_{b.date()}", str(a.date()), str(b.date()), "")
                price, vol, _ = episode_moves(ep, coins, closes, 1.0, store)
                price = np.minimum(price, p.squeeze_cap)
                rows.append((np.append(price, 0.0), np.append(vol, 0.0)))
                ids.append(ep.id)
                labels.append(f"{c} largest {days}-day rise known ({rise:+.1%}), close {ep.start} -> close {ep.end}"
                              + (f", moves capped at {p.squeeze_cap:+.0%}" if math.isfinite(p.squeeze_cap) else ""))
        if p.rally_shock > 0:
            rows.append((np.append(np.full(len(coins), p.rally_shock), 0.0), np.zeros(len(unders))))
            ids.append(f"rally_{100 * p.rally_shock:.0f}")
            labels.append(f"uniform rally: every coin {p.rally_shock:+.0%}")
        if not rows:
            return base
        S = len(rows)
        more = ScenarioSet(underlyings=unders, price_shock=np.array([r[0] for r in rows]).reshape(S, len(unders)),
                           vol_shock=np.array([r[1] for r in rows]).reshape(S, len(unders)),
                           vol_mode=np.zeros(S, np.int8), weight=np.ones(S), pnl_factor=np.ones(S),
                           label=np.array(labels, dtype=object), scenario_id=np.array(ids, dtype=object),
                           horizon_days=h, kind="stress", source="measured squeezes and hypothetical rally",
                           term=base.term)
        out = append_user(base, more)
        return replace(out, source=base.source + "; " + "; ".join(labels), metadata=base.metadata)

    return store.memo(key, build)


def caller_components(scenarios) -> dict[str, ScenarioSet]:
    """A caller's scenarios as components: one ScenarioSet is ``{"user": set}`` whatever its kind; a
    mapping ``{component: set}`` (keys from ``COMPONENTS``) is checked and put in component order."""
    if isinstance(scenarios, ScenarioSet):
        return {USER: scenarios}
    if not isinstance(scenarios, Mapping):
        raise ScenarioError(
            f"scenarios must be a ScenarioSet or a mapping of components, got {type(scenarios).__name__}"
        )
    bad = [str(k) for k in scenarios if k not in COMPONENTS]
    if bad or not scenarios:
        raise ScenarioError(f"scenario components must be some of {list(COMPONENTS)}, got {list(scenarios)}")
    for k, v in scenarios.items():
        if not isinstance(v, ScenarioSet):
            raise ScenarioError(f"scenario component {k!r} is a {type(v).__name__}, not a ScenarioSet")
    return {k: scenarios[k] for k in COMPONENTS if k in scenarios}


__all__ = ["COMPONENTS", "DEFAULT_COMPONENTS", "ES_COMPONENTS", "USER", "SQUEEZES", "ComponentParams",
           "history_date", "history_coins", "book_history", "book_coins", "default_components", "stress_component",
           "largest_rise", "caller_components"]
