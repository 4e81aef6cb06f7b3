"""The house model's default scenario components, and how a caller's scenario sets map onto components.

Components: ``historical`` (filtered historical simulation), ``montecarlo`` (Student-t or Gaussian
copula) and ``stress`` (named episodes and hypothetical shocks), each over the book's coins
(stablecoins aside), read from market history known at the book's as-of time. ``historical``,
``montecarlo`` and ``user`` are measured by ES_q; ``stress`` by stress_factor × worst loss.

A caller's single ScenarioSet is always the ``user`` component (ES_q), whatever its ``kind``
says; a mapping ``{component: set}`` names the components explicitly (e.g. ``{"stress": set}`` to
charge a stress set as the stress term). One rule, one output schema (docs/methodologies.md §2).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .. import marketdata
from ..book import STABLECOINS, Book
from ..errors import ScenarioError
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


def history_date(as_of) -> pd.Timestamp:
    """The date of the last daily bar usable at ``as_of``, clamped to the last bar of the history.

    A bar dated d closes at d+1 00:00 UTC, so it is usable when d + 1 day ≤ as_of.
    """
    last = marketdata.daily_bars("BTC").index.max()
    return min(_usable_bar(as_of), last)


def _usable_bar(as_of) -> pd.Timestamp:
    return (pd.Timestamp(np.datetime64(as_of, "s")) - pd.Timedelta(days=1)).floor("D")


def history_lag_days(as_of) -> int:
    """Days between the bar the as-of time could use and the bar the model uses (0 unless clamped)."""
    return int((_usable_bar(as_of) - history_date(as_of)).days)


def book_coins(book: Book) -> list[str]:
    """The book's coins (instrument underlyings and balance assets, stablecoins aside), sorted; BTC if none."""
    coins = sorted(
        (set(map(str, book.instruments.underlying)) | set(map(str, book.balances.asset))) - set(STABLECOINS)
    )
    return coins or ["BTC"]


def default_components(book: Book, params: ComponentParams | None = None) -> dict[str, ScenarioSet]:
    """{historical, montecarlo (if ``mc_scenarios`` > 0), stress} over the book's coins, horizon ``horizon_days``.

    History is read as of ``history_date(book.as_of) + 1 day`` (the close of the last bar used).
    """
    p = params or ComponentParams()
    coins = book_coins(book)
    hist_as_of = history_date(book.as_of) + pd.Timedelta(days=1)
    h = p.horizon_days
    try:
        parts = {"historical": historical.historical_scenarios(
            hist_as_of, coins=coins, lookback_days=p.lookback_days, horizon_days=h, ewma_lambda=p.ewma_lambda)}
        if p.mc_scenarios > 0:
            from ..scenarios import montecarlo  # JAX: imported only when drawn

            parts["montecarlo"] = montecarlo.monte_carlo_scenarios(
                hist_as_of, n_scenarios=p.mc_scenarios, seed=p.mc_seed, distribution=p.mc_dist,
                horizon_days=h, coins=coins)
        st = named_stress(coins=coins, horizon_days=h)
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


__all__ = ["COMPONENTS", "DEFAULT_COMPONENTS", "ES_COMPONENTS", "USER", "ComponentParams", "history_date",
           "history_lag_days", "book_coins", "default_components", "caller_components"]
