"""The contract between margin models and the engine that runs them.

A model turns a book into a ``Plan``: one or more ``Leg``s, each a pricing
input, a scenario set, a numeraire, CSR portfolios and a measure spec, plus the
model's own typed context. The engine (in-process here, or chunked on Dask in
``gpurisk.batch``) revalues each distinct (pricing, scenarios, numeraire) once and
reduces every leg's portfolios to ``TailStats``; ``finish`` calls the model's
``finalize`` and checks its result against the output contract below.

Output contract (docs/methodologies.md, "Output contract"): every model's ``margin``
table carries ``STANDARD_COLUMNS`` with one row per margined key (the keys the
model's ``coverage(plan)`` names: ``account_id`` × ``venue``, ``venue`` = ``ALL``
for a cross-venue figure). ``im, mm, equity, excess`` are in the row's
``currency``; their ``*_usd`` twins in USD. ``status`` is one of
``calls.STATUSES`` (or ``uncovered`` for a pair no methodology margins, whose
figures are NaN). Every numeric column of every table has a unit in
``MarginResult.units`` (written into the Parquet metadata).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..book import Portfolios
from ..errors import GpuriskError
from ..pricing import PricingInputs
from ..scenarios import ScenarioSet
from ..tail import MeasureSpec, TailStats
from . import calls as _calls

#: ``venue`` of a row that margins an account across all its venues
ALL_VENUES = "ALL"
#: ``status`` of an account × venue pair that no methodology margins (figures NaN)
UNCOVERED = "uncovered"

#: the standard columns of every ``margin`` table, in order, with their units
#: (``currency``: the row's ``currency`` column; ``""``: a label)
STANDARD_COLUMNS: dict[str, str] = {
    "account_id": "",
    "venue": "",
    "model": "",
    "currency": "",
    "im": "currency",
    "mm": "currency",
    "equity": "currency",
    "excess": "currency",
    "im_usd": "USD",
    "mm_usd": "USD",
    "equity_usd": "USD",
    "excess_usd": "USD",
    "status": "",
    "call_amount_usd": "USD",
}
#: the figures checked for being finite and plausible
CHECKED = ("im", "mm", "equity", "excess", "im_usd", "mm_usd", "equity_usd", "excess_usd", "call_amount_usd")
#: a margin figure beyond this many USD cannot come from a validated book: the run fails naming the account
MAX_PLAUSIBLE_USD = 1e15


class MarginError(GpuriskError):
    """A model produced a figure that cannot be right (non-finite or absurd); names the account."""


@dataclass
class Leg:
    name: str
    pricing: PricingInputs  # [I] flat instrument arrays (positions and collateral pseudo-instruments)
    scenarios: ScenarioSet  # already mapped so pricing.underlying_idx indexes its columns
    numeraire: str  # "usd" or "settlement"
    portfolios: Portfolios  # CSR over ``pricing``
    spec: MeasureSpec

    def pnl_key(self) -> tuple:
        """Legs with equal keys share one revaluation."""
        return (id(self.pricing), id(self.scenarios), self.numeraire)


@dataclass
class Plan:
    """A model's legs and its typed context (a dataclass of the model's own; only the model reads it)."""

    model: str
    legs: dict[str, Leg]
    context: Any = None


@dataclass
class MarginResult:
    """A model's output: named tables (``margin`` always), a JSON-able summary and column units.

    ``units[table][column]`` is ``USD``, a currency code, ``currency`` (the row's
    ``currency`` column), ``coin`` (the row's settlement coin), ``1`` (a ratio) or
    ``days``; label columns are absent.
    """

    model: str
    tables: dict[str, pd.DataFrame]
    summary: dict = field(default_factory=dict)
    units: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def margin(self) -> pd.DataFrame:
        return self.tables["margin"]

    def table_units(self, table: str) -> dict[str, str]:
        """Units of ``table``'s columns (the standard ones included for ``margin``)."""
        std = {k: v for k, v in STANDARD_COLUMNS.items() if v} if table == "margin" else {}
        return {**std, **self.units.get(table, {})}

    def check(self) -> None:
        """MarginError unless ``margin`` has the standard columns and finite, plausible figures.

        NaN is allowed only on ``uncovered`` rows. The error names the first bad account.
        """
        m = self.margin
        missing = [c for c in STANDARD_COLUMNS if c not in m.columns]
        if missing:
            raise MarginError(f"model {self.model}: margin table lacks the standard column(s) {missing}")
        if m.empty:
            return
        covered = (m["status"] != UNCOVERED).to_numpy()
        for col in CHECKED:
            v = m[col].to_numpy(dtype=np.float64)
            ok = np.isfinite(v) & ((np.abs(v) <= MAX_PLAUSIBLE_USD) if col.endswith("_usd") else True)
            bad = covered & ~ok
            if bad.any():
                i = int(np.argmax(bad))
                raise MarginError(
                    f"model {self.model}: account {m['account_id'].iloc[i]} (venue {m['venue'].iloc[i]}) has "
                    f"{col} = {float(v[i])!r}, which cannot be right (non-finite or beyond "
                    f"{MAX_PLAUSIBLE_USD:.0e} USD); check that account's positions and market data"
                )
        bad_status = ~m["status"].isin(_calls.STATUSES + (UNCOVERED,)).to_numpy()
        if bad_status.any():
            raise MarginError(f"model {self.model}: unknown status {m['status'].iloc[int(np.argmax(bad_status))]!r}")

    def totals(self) -> dict:
        """Run-level figures from the standard columns (USD): by venue, status counts, calls, deficits."""
        m = self.margin
        cov = m[m["status"] != UNCOVERED] if len(m) else m
        by_venue = cov.groupby(cov["venue"].astype(str), sort=True)["im_usd"].sum() if len(cov) else pd.Series(dtype=float)
        deficit = cov["excess_usd"] < 0.0 if len(cov) else pd.Series(dtype=bool)
        return {
            "rows": int(len(m)),
            "accounts": int(m["account_id"].nunique()) if len(m) else 0,
            "im_usd": {str(k): float(v) for k, v in by_venue.items()},
            "total_im_usd": float(cov["im_usd"].sum()) if len(cov) else 0.0,
            "total_mm_usd": float(cov["mm_usd"].sum()) if len(cov) else 0.0,
            "total_equity_usd": float(cov["equity_usd"].sum()) if len(cov) else 0.0,
            "total_excess_usd": float(cov["excess_usd"].sum()) if len(cov) else 0.0,
            "status": _calls.status_counts(cov["status"]) if len(cov) else _calls.status_counts([]),
            "total_call_amount_usd": float(cov["call_amount_usd"].sum()) if len(cov) else 0.0,
            "deficits": int(deficit.sum()) if len(cov) else 0,
            "total_deficit_usd": float(-cov.loc[deficit, "excess_usd"].sum()) if len(cov) else 0.0,
            "uncovered": int(len(m) - len(cov)),
        }


def standard_frame(account_id, venue, model: str, currency, im, mm, equity, usd_per_unit=1.0,
                   call_params: _calls.CallParams | None = None) -> pd.DataFrame:
    """The standard columns for [n] rows: figures in ``currency`` and (× ``usd_per_unit``) in USD.

    status and call_amount_usd follow ``calls.classify`` on the native figures.
    """
    im = np.asarray(im, dtype=np.float64)
    mm = np.asarray(mm, dtype=np.float64)
    eq = np.asarray(equity, dtype=np.float64)
    conv = np.broadcast_to(np.asarray(usd_per_unit, dtype=np.float64), im.shape)
    status, amount = _calls.classify(im, mm, eq, call_params)
    n = len(im)

    def labels(values):  # text labels: the same dtype with or without rows (an empty object column has none)
        return pd.Series(np.broadcast_to(np.asarray(values, dtype=object), (n,)), dtype="str")

    return pd.DataFrame({
        "account_id": labels(account_id),
        "venue": labels(venue),
        "model": labels(model),
        "currency": labels(currency),
        "im": im,
        "mm": mm,
        "equity": eq,
        "excess": eq - im,
        "im_usd": im * conv,
        "mm_usd": mm * conv,
        "equity_usd": eq * conv,
        "excess_usd": (eq - im) * conv,
        "status": labels(status),
        "call_amount_usd": amount * conv,
    })


def execute(plan: Plan, engine="auto", attribution=()) -> tuple[dict[str, TailStats], dict]:
    """Run every leg of ``plan`` in-process; ({leg: TailStats}, metrics). ``engine``: an ``Engine`` or a backend name.
    ``attribution``: the legs whose TailStats also carry the tail sets and Euler marginals (``gpurisk.tail``)."""
    from ..backends import Engine

    engine = engine if isinstance(engine, Engine) else Engine(engine)
    cache: dict = {}
    stats: dict[str, TailStats] = {}
    timings = {"revalue_s": 0.0, "tail_stats_s": 0.0}
    for name, leg in plan.legs.items():
        key = leg.pnl_key()
        if key not in cache:
            t = time.perf_counter()
            cache[key] = engine.revalue(leg.pricing, leg.scenarios, leg.numeraire)
            timings["revalue_s"] += time.perf_counter() - t
        t = time.perf_counter()
        if name in attribution:
            stats[name] = engine.tail_stats(leg.portfolios, cache[key], leg.spec, attribution=True)
        else:
            stats[name] = engine.tail_stats(leg.portfolios, cache[key], leg.spec)
        timings["tail_stats_s"] += time.perf_counter() - t
    metrics = {"backend": engine.name, "backends_used": sorted(set(engine.used)), "gpu_fallbacks": engine.fallbacks,
               **timings}
    return stats, metrics


def finish(module, plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """``module.finalize(plan, stats)``, checked against the output contract (MarginError on a bad figure)."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow becomes a non-finite figure, refused below
        result = module.finalize(plan, stats)
    result.check()
    return result


__all__ = ["ALL_VENUES", "UNCOVERED", "STANDARD_COLUMNS", "MAX_PLAUSIBLE_USD", "MarginError", "Leg", "Plan",
           "MarginResult", "standard_frame", "execute", "finish"]
