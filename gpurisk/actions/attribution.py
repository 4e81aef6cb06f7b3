"""Euler attribution of expected shortfall: each position's contribution to each ES column of a margin table.

The tail kernels (every backend, ``tail_stats(..., attribution=True)``) return each portfolio's tail
set and every position's Euler marginal (``gpurisk.tail``: the same k, weights and tie rule the ES
uses). This module maps them onto the margin table a user reads:

* ``house``: ``es_<q>_<component>`` of every ES component the run had (historical, montecarlo, user),
  from the ``account/<component>`` legs, and ``es_<q>`` (the largest component) from the component
  that binds for that account (the first in the run's order on a tie);
* ``measures``: ``es_<q>`` for every level of the ``account`` leg.

The table ``attribution`` (``attribution.parquet``) has one row per account × measure × position:
``account_id, measure, instrument_id`` (collateral as ``collateral:ASSET``: coin balances are revalued
in the scenarios), ``quantity`` (contracts; units of the asset for collateral), ``contribution_usd``
(quantity × marginal) and ``marginal_per_unit`` (USD per contract). Over the rows of an account and a
measure the contributions sum to that measure's value in ``margin.parquet`` (the summary records the
largest gap found). The venue replicas (worst loss over a grid, not ES) are not attributed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..margin.plan import MarginResult, Plan
from ..tail import TailStats, level_name

#: models whose margin columns are expected shortfalls the tail kernels can attribute
ATTRIBUTED_MODELS = ("house", "measures")
#: units of the attribution table's numeric columns
UNITS = {"quantity": "contracts", "contribution_usd": "USD", "marginal_per_unit": "USD"}
COLUMNS = ["account_id", "measure", "instrument_id", "quantity", "contribution_usd", "marginal_per_unit"]
#: prefix of a collateral pseudo-instrument's id
COLLATERAL_PREFIX = "collateral:"


def attributable(model: str) -> bool:
    return model in ATTRIBUTED_MODELS


def attribution_legs(model: str, plan: Plan) -> frozenset:
    """The legs whose tail statistics must carry the Euler marginals (empty for other models)."""
    if model == "measures":
        return frozenset({"account"})
    if model == "house":
        return frozenset(f"account/{c}" for c in plan.context.components if c != "stress")
    return frozenset()


def row_labels(model: str, plan: Plan) -> np.ndarray:
    """[K] the instrument id of each row of the attributed legs' pricing (``collateral:ASSET`` for collateral).

    The models size P to the rows their portfolios hold (``margin.common.compact``); the same call on
    the same portfolios gives the same kept rows, so they are re-derived here rather than stored.
    """
    from ..margin import collateral as _coll
    from ..margin.common import compact

    ctx = plan.context
    book = ctx.book
    ids = np.asarray(book.instruments.instrument_id, dtype=object).astype(str)
    if model == "house":
        coll = ctx.collateral
        ports = {g: _coll.portfolios_with_collateral(book, coll, g) for g in ctx.groupings}
        names = np.concatenate([ids, np.char.add(COLLATERAL_PREFIX, np.asarray(coll.assets, dtype=str))])
        keep, _ = compact(len(names), ports)
        leg = plan.legs[f"account/{ctx.components[0]}"]
    elif model == "measures":
        if ctx.params.include_collateral:
            coll = _coll.collateral_instruments(book)
            ports = {"account": _coll.portfolios_with_collateral(book, coll, "account")}
            names = np.concatenate([ids, np.char.add(COLLATERAL_PREFIX, np.asarray(coll.assets, dtype=str))])
        else:
            ports = {"account": book.portfolios("account")}
            names = ids
        keep, _ = compact(len(names), ports)
        leg = plan.legs["account"]
    else:
        raise ConfigError(f"attribution applies to the {' and '.join(ATTRIBUTED_MODELS)} models, not {model!r}")
    if len(keep) != len(leg.pricing):
        raise RuntimeError(f"{model}: {len(keep)} attributed rows for {len(leg.pricing)} priced rows")
    return np.asarray(names, dtype=object)[keep]


def _leg_rows(leg, st: TailStats, level: int, labels: np.ndarray) -> dict:
    """The columns of one leg × level: account of each position, instrument, quantity, marginal."""
    ports = leg.portfolios
    port = np.repeat(np.arange(len(ports)), np.diff(ports.indptr))
    acct = np.asarray(ports.key["account_id"], dtype=object)
    qty = np.asarray(ports.quantity, dtype=np.float64)
    marg = st.marginal[:, level]
    return {"port": port, "account_id": acct[port], "instrument_id": labels[ports.instrument_idx],
            "quantity": qty, "marginal_per_unit": marg}


def attribution_table(model: str, plan: Plan, stats: dict[str, TailStats]) -> pd.DataFrame:
    """The ``attribution`` table of a house or measures result (module docstring), from attributed stats."""
    labels = row_labels(model, plan)
    parts = []

    def add(cols, measure, take=None):
        sel = slice(None) if take is None else take
        parts.append(pd.DataFrame({
            "account_id": cols["account_id"][sel], "measure": measure,
            "instrument_id": cols["instrument_id"][sel], "quantity": cols["quantity"][sel],
            "contribution_usd": (cols["quantity"] * cols["marginal_per_unit"])[sel],
            "marginal_per_unit": cols["marginal_per_unit"][sel],
        }))

    if model == "measures":
        leg, st = plan.legs["account"], stats["account"]
        _need(st, "account")
        for j, q in enumerate(leg.spec.levels):
            add(_leg_rows(leg, st, j, labels), f"es_{level_name(q)}")
    else:
        ctx = plan.context
        q = level_name(ctx.params.confidence)
        comps = [c for c in ctx.components if c != "stress"]
        cols = {}
        for c in comps:
            name = f"account/{c}"
            _need(stats[name], name)
            cols[c] = _leg_rows(plan.legs[name], stats[name], 0, labels)
            add(cols[c], f"es_{q}_{c}")
        if comps:  # es_<q> is the largest ES component: the binding component's contributions
            es = np.vstack([stats[f"account/{c}"].es[:, 0] for c in comps])  # [C, P]
            bind = np.argmax(es, axis=0)
            for i, c in enumerate(comps):
                add(cols[c], f"es_{q}", bind[cols[c]["port"]] == i)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("account_id", "measure", "instrument_id") else float)
                             for c in COLUMNS})
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def _need(st: TailStats, leg: str) -> None:
    if not st.attributed:
        raise RuntimeError(f"leg {leg}: tail statistics without attribution (compute with attribution=True)")


def sum_gap(table: pd.DataFrame, margin: pd.DataFrame) -> dict:
    """The largest |Σ contributions − measure| over accounts and measures, absolute (USD) and relative to the
    gross Σ|contribution| of that account and measure: the additivity the table promises, measured."""
    if table.empty:
        return {"max_abs_usd": 0.0, "max_rel": 0.0, "measures": []}
    g = table.groupby(["account_id", "measure"], sort=False, observed=True)
    s = g["contribution_usd"].sum()
    gross = table.assign(a=table["contribution_usd"].abs()).groupby(["account_id", "measure"], sort=False,
                                                                     observed=True)["a"].sum()
    m = margin.set_index("account_id")
    measures = sorted(set(s.index.get_level_values(1)))
    worst_abs, worst_rel = 0.0, 0.0
    for meas in measures:  # a few measure columns
        part = s.xs(meas, level=1)
        want = m.loc[part.index, meas].to_numpy(dtype=np.float64)
        gap = np.abs(part.to_numpy() - want)
        scale = np.maximum(np.abs(want), gross.xs(meas, level=1).to_numpy())
        worst_abs = max(worst_abs, float(gap.max(initial=0.0)))
        worst_rel = max(worst_rel, float(np.max(np.where(scale > 0, gap / np.where(scale > 0, scale, 1.0), gap),
                                                initial=0.0)))
    return {"max_abs_usd": worst_abs, "max_rel": worst_rel, "measures": measures}


def add_attribution(result: MarginResult, model: str, plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """``result`` with its ``attribution`` table, units and a summary entry (rows, measures, the sum gap)."""
    table = attribution_table(model, plan, stats)
    result.tables["attribution"] = table
    result.units["attribution"] = dict(UNITS)
    result.summary["attribution"] = {"rows": int(len(table)), **sum_gap(table, result.margin),
                                     "tie_rule": "loss descending, then scenario index ascending"}
    return result


def compute(book, model: str = "house", params=None, scenarios=None, backend="auto", market=None,
            return_plan: bool = False):
    """``gpurisk.margin.compute`` with Euler attribution: the same result plus the ``attribution`` table
    (and the model's ``Plan`` with ``return_plan``: (result, plan)).

    The tail kernels run once per leg as without it; the attributed legs also return their tail sets
    and marginals (no accounts × scenarios matrix).
    """
    from ..margin import prepare
    from ..margin.plan import execute, finish

    if not attributable(model):
        raise ConfigError(f"attribution applies to the {' and '.join(ATTRIBUTED_MODELS)} models (expected "
                          f"shortfall); model {model!r} margins on its venue's worst-case grid")
    mod, p, backend = prepare(book, model, params, scenarios, backend, market)
    stats, metrics = execute(p, backend, attribution=attribution_legs(model, p))
    result = finish(mod, p, stats)
    result.summary.update(metrics)
    add_attribution(result, model, p, stats)
    return (result, p) if return_plan else result


def position_contributions(P_rows: np.ndarray, quantity: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """(contribution [n, L], ES [L]) of one portfolio given its rows of P [n, S] and quantities [n] under
    ``spec``: the reference backend's attribution of a single portfolio, for callers that hold one
    portfolio's rows (the what-if's trades: the contribution of the rows it added)."""
    from ..backends import reference as ref
    from ..book import Portfolios

    n = len(quantity)
    ports = Portfolios(np.array([0, n], dtype=np.int64), np.arange(n, dtype=np.int32),
                       np.asarray(quantity, dtype=np.float64), np.zeros(1, dtype=np.int32))
    st = ref.tail_stats(ports, np.asarray(P_rows, dtype=np.float64), spec, attribution=True)
    return st.marginal * ports.quantity[:, None], st.es[0]


__all__ = ["ATTRIBUTED_MODELS", "UNITS", "COLUMNS", "COLLATERAL_PREFIX", "attributable", "attribution_legs",
           "row_labels", "attribution_table", "sum_gap", "add_attribution", "compute", "position_contributions"]
