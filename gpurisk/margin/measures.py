"""Tail measures (worst, VaR, ES) per portfolio, and the ``measures`` margin model.

The definitions are those of ``gpurisk.tail.MeasureSpec`` (see
docs/methodologies.md): for a portfolio's scenario P&L L [S] (USD), the counted
P&L is ``pnl_factor·L`` with profits scaled by ``profit_factor``; losses x = −L'.

- worst = max_s x_s;
- VaR_q = the loss at which the cumulative scenario weight, from the worst down,
  first reaches (1−q)·Σw; with equal weights the ⌈(1−q)·S⌉-th largest loss;
- ES_q = the weighted mean of the losses down to and including VaR_q; with equal
  weights the mean of the worst ⌈(1−q)·S⌉ losses.

Losses are positive numbers; a portfolio that gains in every scenario has
negative measures. The ``measures`` model reports these per account, with the
standard margin columns taking IM = max(ES at the first level, 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..book import Book
from ..pricing import PricingInputs, pricing_inputs
from ..scenarios import ScenarioSet
from ..tail import TailStats, check_levels, level_name, spec_for, stats_frame
from . import calls as _calls
from . import collateral as _coll
from . import params as _params
from .common import book_pricing, compact, map_scenarios
from .components import ComponentParams, book_history, default_components
from .plan import ALL_VENUES, Leg, MarginResult, Plan, standard_frame

NAME = "measures"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Params:
    """Parameters of the ``measures`` model.

    levels: confidence levels q of VaR/ES (0.99 = 99 %); the first is the margin level.
    profit_factor: share of a scenario's net profit that counts (1 = full credit).
    include_collateral: add the account's coin balances to its scenario P&L
      (collateral revalued in every scenario, see ``collateral.py``).
    mm_factor: MM = mm_factor × IM.
    """

    levels: tuple[float, ...] = (0.99,)
    profit_factor: float = 1.0
    include_collateral: bool = False
    mm_factor: float = 1.0
    calls: _calls.CallParams = field(default_factory=_calls.CallParams)
    collateral: _coll.CollateralParams = field(default_factory=_coll.CollateralParams)

    def __post_init__(self):
        check_levels(self.levels)
        if not (0.0 <= self.profit_factor <= 1.0):
            raise ValueError(f"profit_factor must be in [0, 1], got {self.profit_factor}")
        if not (0.0 < self.mm_factor <= 1.0):
            raise ValueError(f"mm_factor must be in (0, 1], got {self.mm_factor}")


@dataclass(frozen=True)
class Context:
    """params, book; history: the market history read (``HistoryState.summary()``), None with a caller's set."""

    params: Params
    book: Book
    history: dict | None = None


def load_params(path: str | None = None) -> Params:
    """Params from a TOML file (strict keys and types), or the defaults when ``path`` is None."""
    return _params.load(Params, path)


def plan(book: Book, params: Params | None = None, scenarios: ScenarioSet | None = None, market=None) -> Plan:
    """One leg: every account's positions (and collateral if asked) under ``scenarios``, in USD.

    Without ``scenarios`` the house model's default filtered-historical component is used (pooling it
    with Monte Carlo and stress at equal weights would let the sample sizes set each part's share of the tail),
    read from ``market`` (a MarketStore, a folder, or None for the default store) under its staleness policy.
    """
    params = params or Params()
    history = None
    if scenarios is None:
        hist = book_history(book, market, ("BTC",))  # BTC: the FHS proxy coin
        scenarios = default_components(book, ComponentParams(mc_scenarios=0), hist.store, hist)["historical"]
        history = hist.summary()
    if params.include_collateral:
        coll = _coll.collateral_instruments(book)
        idx, sset = map_scenarios(book, scenarios, coll.assets)
        n_ins = len(book.instruments)
        pi = PricingInputs.concat([pricing_inputs(book, idx[:n_ins]), coll.pricing(idx[n_ins:])])
        ports = _coll.portfolios_with_collateral(book, coll, "account")
    else:
        pi, sset = book_pricing(book, scenarios)
        ports = book.portfolios("account")
    keep, ports = compact(len(pi), {"account": ports})  # P sized to the held instruments
    pi, ports = pi.take(keep), ports["account"]
    spec = spec_for(sset, params.levels, params.profit_factor)
    leg = Leg("account", pi, sset, "usd", ports, spec)
    return Plan(NAME, {"account": leg}, Context(params, book, history))


def coverage(plan: Plan) -> pd.DataFrame:
    """Every account of the book, cross-venue (``venue`` = ``ALL``)."""
    return pd.DataFrame({"account_id": np.asarray(plan.context.book.accounts, dtype=object), "venue": ALL_VENUES})


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """margin table: the standard columns (IM = max(ES at the first level, 0), MM = mm_factor × IM, equity =
    collateral after haircuts; USD), then ``worst, var_<pct>..., es_<pct>...`` (USD losses)."""
    ctx: Context = plan.context
    params, book = ctx.params, ctx.book
    leg = plan.legs["account"]
    st = stats["account"]
    measures = stats_frame(st, params.levels)
    q0 = level_name(params.levels[0])
    im = np.maximum(measures[f"es_{q0}"].to_numpy(), 0.0)
    eq, _ = _coll.equity(book, _coll.collateral_instruments(book), params.collateral, "account")
    acct = np.asarray(leg.portfolios.account_idx, dtype=np.int64)
    df = standard_frame(leg.portfolios.key["account_id"], ALL_VENUES, NAME, "USD", im, params.mm_factor * im,
                        eq[acct], call_params=params.calls)
    for c in measures.columns:
        df[c] = measures[c].to_numpy()
    summary = {
        "model": NAME,
        "accounts": int(len(df)),
        "levels": list(params.levels),
        "scenarios": {k: v for k, v in leg.scenarios.describe().items() if k != "metadata"},
        "total_worst": float(df["worst"].sum()),
        f"total_es_{q0}": float(df[f"es_{q0}"].sum()),
        "total_im": float(df["im_usd"].sum()),
    }
    if ctx.history is not None:
        summary["market_history"] = ctx.history
    return MarginResult(NAME, {"margin": df}, summary, {"margin": {c: "USD" for c in measures.columns}})


__all__ = ["NAME", "Params", "Context", "load_params", "plan", "finalize", "coverage"]
