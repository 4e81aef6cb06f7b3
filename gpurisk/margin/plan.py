"""The contract between margin models and the engine that runs them.

A model turns a book into a ``Plan``: one or more ``Leg``s, each a pricing
input, a scenario set, a numeraire, CSR portfolios and a measure spec. The
engine (in-process here, or chunked on Dask in ``gpurisk.batch``) revalues each
distinct (pricing, scenarios, numeraire) once and reduces every leg's
portfolios to ``TailStats``; the model's ``finalize`` turns those into tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from ..backends import Engine, MeasureSpec, TailStats
from ..book import Portfolios
from ..pricing import PricingInputs
from ..scenarios import ScenarioSet


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
    model: str
    legs: dict[str, Leg]
    context: dict = field(default_factory=dict)  # whatever finalize needs (params, book, ...)


@dataclass
class MarginResult:
    """A model's output: named tables (``margin`` always) and a JSON-able summary."""

    model: str
    tables: dict[str, pd.DataFrame]
    summary: dict = field(default_factory=dict)


def execute(plan: Plan, engine: Engine | str = "auto") -> tuple[dict[str, TailStats], dict]:
    """Run every leg of ``plan`` in-process; returns ({leg: TailStats}, metrics)."""
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
        stats[name] = engine.tail_stats(leg.portfolios, cache[key], leg.spec)
        timings["tail_stats_s"] += time.perf_counter() - t
    metrics = {"backend": engine.name, "gpu_fallbacks": engine.fallbacks, **timings}
    return stats, metrics
