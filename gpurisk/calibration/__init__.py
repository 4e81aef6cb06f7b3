"""Calibration of the house model: parameter sweeps backtested on Dask, JAX maximum-likelihood fits, and the
adaptive volatility filter's out-of-sample comparison.

``gpurisk.calibration.run(base, grid=..., sets=..., start=..., end=...)`` sweeps the parameter sets
(``sweep``), fits the Monte Carlo's Student-t law and a GARCH(1,1)-t filter per coin (``fits``) and compares the
adaptive filter with the EWMA one out of sample (``adaptive``), and returns a ``CalibrationResult``: the table
of sets with their coverage, procyclicality and cost, the frontier, the proposed parameters and the fits.
``write(folder)`` stores it, with the proposed parameter file (``proposal.proposed_toml``: a comment per changed
value naming the backtest behind it). docs/backtesting.md ("Calibration") explains the rules.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import sweep
from .sweep import SweepResult


@dataclass
class CalibrationResult:
    """sweep: the ``SweepResult``; fits: {student_t, garch, adaptive} (JSON-able; empty when not run);
    proposal_toml: the proposed parameter file's text (None when no set covers); meta."""

    sweep: SweepResult
    fits: dict = field(default_factory=dict)
    proposal_toml: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        return self.sweep.table

    def write(self, out, proposal_name: str = "house.proposed.toml") -> Path:
        """``out/calibration.parquet`` (the sets), ``summaries.parquet`` (each set's backtest summary),
        ``fits.json``, ``summary.json`` and, when a set is proposed, ``proposal_name``."""
        from ..fileio import write_json, write_parquet, write_text

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(self.sweep.table, out / "calibration.parquet")
        s = self.sweep.summaries.copy()
        for c in ("first_date", "last_date"):
            if c in s:
                s[c] = s[c].astype(str)
        write_parquet(s, out / "summaries.parquet")
        write_json(self.fits, out / "fits.json")
        prop = self.sweep.proposal
        write_json({**self.meta, **self.sweep.meta, "proposal": prop,
                    "proposal_file": proposal_name if self.proposal_toml else None,
                    "proposed_changes": (self.sweep.table.loc[prop, [c for c in self.sweep.table.columns
                                                                       if c.startswith("param.")]].dropna().to_dict()
                                         if prop is not None else {})}, out / "summary.json")
        if self.proposal_toml:
            write_text(self.proposal_toml, out / proposal_name)
        return out


def run(base=None, grid=None, sets=None, portfolios="standard", start="2020-01-01", end="2024-12-31", market=None,
        backend: str = "auto", client=None, block_days: int = 30, on_block=None, fits: bool = True,
        fit_start: str = "2021-01-01", params_text: str | None = None, label: str = "calibration") -> CalibrationResult:
    """The sweep (``sweep.run``), then, with ``fits``, the JAX fits over ``fit_start``..``end`` and the adaptive
    filter's out-of-sample comparison over ``start``..``end``; ``params_text``: the base parameter file's text,
    rewritten into the proposal (None: the changed keys only)."""
    from ..market import market_store
    from .proposal import proposed_toml

    t0 = time.perf_counter()
    store = market_store(market)
    lam = sweep._engine_params(base).ewma_lambda
    fut = None
    if fits and client is not None:  # the fits run as one more task, beside the sweep's blocks
        fut = client.submit(fit_all, str(store.root), fit_start, start, end, lam, pure=False,
                            key=f"calibration-fits-{time.time_ns()}")
    res = sweep.run(base, grid, sets, portfolios, start, end, store, backend, client, block_days, on_block)
    out = {}
    if fits:
        out = fut.result() if fut is not None else fit_all(store, fit_start, start, end, lam)
    text = None
    if res.proposal is not None:
        text = proposed_toml(res.params[0], res.params[res.proposal], res.table.loc[res.proposal], res.table.iloc[0],
                             params_text, label)
    return CalibrationResult(res, out, text, {"seconds": round(time.perf_counter() - t0, 3)})


def fit_all(market, fit_start, start, end, ewma_lambda: float) -> dict:
    """The JAX fits (``fits.fit_report`` over ``fit_start``..``end``) and the adaptive filter's out-of-sample
    comparison (``adaptive.compare_filters`` over ``start``..``end``); ``market`` a store or a folder."""
    from .adaptive import compare_filters
    from .fits import fit_report

    out = fit_report(market, fit_start, end)
    out["adaptive"] = compare_filters(market, start, end, ewma_lambda=ewma_lambda)
    return out


def load(folder) -> dict:
    """A written calibration (``CalibrationResult.write``): {table, summaries, fits, summary}."""
    folder = Path(folder)
    return {"table": pd.read_parquet(folder / "calibration.parquet"),
            "summaries": pd.read_parquet(folder / "summaries.parquet"),
            "fits": json.loads((folder / "fits.json").read_text(encoding="utf-8")),
            "summary": json.loads((folder / "summary.json").read_text(encoding="utf-8"))}


__all__ = ["run", "load", "fit_all", "CalibrationResult", "sweep"]
