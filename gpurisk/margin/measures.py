"""Tail measures (worst, VaR, ES) per portfolio, and the ``measures`` margin model.

The definitions are those of ``gpurisk.backends.base.MeasureSpec`` (see
docs/methodologies.md): for a portfolio's scenario P&L L [S] (USD), the counted
P&L is ``pnl_factor·L`` with profits scaled by ``profit_factor``; losses x = −L'.

- worst = max_s x_s;
- VaR_q = the loss at which the cumulative scenario weight, from the worst down,
  first reaches (1−q)·Σw; with equal weights the ⌈(1−q)·S⌉-th largest loss;
- ES_q = the weighted mean of the losses down to and including VaR_q; with equal
  weights the mean of the worst ⌈(1−q)·S⌉ losses.

Losses are positive numbers; a portfolio that gains in every scenario has
negative measures. The ``measures`` model reports these per account.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..tail import TailStats, check_levels, level_name, measure_columns, spec_for, stats_frame  # noqa: F401
from ..book import Book
from ..errors import ConfigError, ScenarioError
from ..pricing import PricingInputs, pricing_inputs
from ..scenarios import ScenarioSet
from . import params as _params
from .plan import Leg, MarginResult, Plan

NAME = "measures"


def map_scenarios(book: Book, scenarios: ScenarioSet, extra_underlyings=()) -> tuple[np.ndarray, ScenarioSet]:
    """(underlying column [I + len(extra)] int32, scenario set) for the book's instruments then ``extra``.

    A ScenarioError names the underlyings the set does not cover.
    """
    names = list(book.instruments.underlying) + list(extra_underlyings)
    try:
        return scenarios.columns_for(names)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None


def book_pricing(book: Book, scenarios: ScenarioSet) -> tuple[PricingInputs, ScenarioSet]:
    """The book's instruments as PricingInputs mapped onto the (possibly widened) scenario set."""
    idx, sset = map_scenarios(book, scenarios)
    return pricing_inputs(book, idx), sset


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Params:
    """Parameters of the ``measures`` model.

    levels: confidence levels q of VaR/ES (0.99 = 99 %).
    profit_factor: share of a scenario's net profit that counts (1 = full credit).
    include_collateral: add the account's coin balances to its scenario P&L
      (collateral revalued in every scenario, see ``collateral.py``).
    """

    levels: tuple[float, ...] = (0.99,)
    profit_factor: float = 1.0
    include_collateral: bool = False

    def __post_init__(self):
        check_levels(self.levels)
        if not (0.0 <= self.profit_factor <= 1.0):
            raise ValueError(f"profit_factor must be in [0, 1], got {self.profit_factor}")


def load_params(path: str | None = None) -> Params:
    """Params from a TOML file (strict keys and types), or the defaults when ``path`` is None."""
    return _params.load(Params, path)


def plan(book: Book, params: Params | None = None, scenarios: ScenarioSet | None = None) -> Plan:
    """One leg: every account's positions (and collateral if asked) under ``scenarios``, in USD.

    Without ``scenarios`` the house model's filtered-historical component is used (pooling it with
    Monte Carlo and stress at equal weights would let the sample sizes set each part's share of the tail).
    """
    params = params or Params()
    if scenarios is None:
        from . import house

        scenarios = house.default_components(book, house.Params())["historical"]
    if params.include_collateral:
        from . import collateral

        coll = collateral.collateral_instruments(book)
        idx, sset = map_scenarios(book, scenarios, coll.assets)
        n_ins = len(book.instruments)
        pi = PricingInputs.concat([pricing_inputs(book, idx[:n_ins]), coll.pricing(idx[n_ins:])])
        ports = collateral.portfolios_with_collateral(book, coll, "account")
    else:
        pi, sset = book_pricing(book, scenarios)
        ports = book.portfolios("account")
    spec = spec_for(sset, params.levels, params.profit_factor)
    leg = Leg("account", pi, sset, "usd", ports, spec)
    return Plan(NAME, {"account": leg}, {"params": params, "book": book})


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """margin table: ``account_id, worst, var_<pct>..., es_<pct>..., model, currency`` (USD losses)."""
    params: Params = plan.context["params"]
    leg = plan.legs["account"]
    st = stats["account"]
    df = stats_frame(st, params.levels)
    df.insert(0, "account_id", np.asarray(leg.portfolios.key["account_id"], dtype=object))
    df["model"] = NAME
    df["currency"] = "USD"
    q0 = level_name(params.levels[0])
    summary = {
        "model": NAME,
        "accounts": int(len(df)),
        "levels": list(params.levels),
        "scenarios": {k: v for k, v in leg.scenarios.describe().items() if k != "metadata"},
        "total_worst": float(df["worst"].sum()),
        f"total_es_{q0}": float(df[f"es_{q0}"].sum()),
    }
    return MarginResult(NAME, {"margin": df}, summary)


__all__ = [
    "Params",
    "load_params",
    "plan",
    "finalize",
    "level_name",
    "measure_columns",
    "spec_for",
    "stats_frame",
]
