"""Parameter sweeps of the house model, backtested on Dask, scored on coverage, procyclicality and cost.

``parameter_sets(base, grid, sets)`` expands a grid (every combination) and/or a list of explicit changes into
house ``Params``. Sets that differ only in ``engine.VARIANT_FIELDS`` (confidence, stress factor, APC
buffer/release/floor, ...) share one backtest: the scenarios and the revaluation of each day are computed once
per *scenario group* and recombined per set (``engine._house_variants``). Every group's blocks of days go to the
Dask cluster together.

Scores of a set (``score``), from its backtest summary:

- coverage: pooled exceptions, Kupiec's one-sided p-value (too many exceptions), the pooled traffic light,
  the worst 250-day window zone and the smallest share of green windows over the portfolios;
  ``coverage_ok`` = one-sided p ≥ 0.05, no red window, every portfolio green in ≥ 90 % of its windows;
- procyclicality: the median over the portfolios of the peak-to-trough ratio and of the largest 1/5/10-day IM
  increases;
- cost: the mean IM as a share of notional (pooled), and mean IM / realised ES_q of the h-day losses over the
  single-coin portfolios (mean and max); ``cost_ok`` = that max ≤ ``COST_LIMIT``.

The frontier: the coverage_ok sets no other coverage_ok set beats on both cost (mean IM/ES) and
procyclicality (median 5-day increase). The proposal (``propose``): the coverage_ok and cost_ok set with the
lowest cost whose procyclicality is no worse than the base parameters'; failing that, the cheapest frontier set.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..market import COINS, market_store
from ..backtest import engine as _engine
from ..backtest.summary import POOLED, summarise

#: the single-coin portfolios whose cost is scored (and limited)
SINGLE_COIN = tuple(f"{side}_{c}" for c in COINS for side in ("long", "short"))
#: mean IM over realised ES of the h-day losses allowed for a single-coin portfolio
COST_LIMIT = 1.5
#: coverage criteria
MIN_KUPIEC_P = 0.05
MIN_GREEN_SHARE = 0.90


def parameter_sets(base, grid: dict | None = None, sets=None) -> list[tuple[dict, object]]:
    """[(changes, Params)]: the base itself first, then every combination of ``grid`` {field: [values]}, then every
    dict of ``sets``; duplicates dropped. A field the Params lacks, or a bad value, is a ConfigError."""
    from ..margin.params import override

    grid = dict(grid or {})
    changes = [{}]
    if grid:
        keys = list(grid)
        for k in keys:
            if not isinstance(grid[k], (list, tuple)) or not grid[k]:
                raise ConfigError(f"calibration grid: {k} must be a non-empty list of values")
        changes += [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    changes += [dict(s) for s in (sets or [])]
    out = []
    for ch in changes:
        p = override(base, ch, "calibration parameter set")
        if any(p == q for _, q in out):  # Params hold dicts (the collateral tiers): compared, not hashed
            continue
        out.append((dict(ch), p))
    return out


def scenario_key(p) -> tuple:
    """What a set's scenarios depend on: every field outside ``engine.VARIANT_FIELDS``."""
    return tuple((f.name, getattr(p, f.name)) for f in dataclasses.fields(p) if f.name not in _engine.VARIANT_FIELDS)


def groups(params_list) -> list[tuple[object, list[int]]]:
    """[(group base Params, [indices of the sets in it])]: sets sharing ``scenario_key``; the base of a group has
    the largest ``apc_floor`` of its sets (it builds the floor's leg when any set needs it)."""
    keys: list = []
    members: list[list[int]] = []
    for i, p in enumerate(params_list):
        k = scenario_key(p)
        j = next((n for n, q in enumerate(keys) if q == k), None)
        if j is None:
            keys.append(k)
            members.append([i])
        else:
            members[j].append(i)
    out = []
    for idx in members:
        base = max((params_list[i] for i in idx), key=lambda p: p.apc_floor)
        out.append((base, idx))
    return out


def score(summary: pd.DataFrame) -> dict:
    """The scores of one set from its backtest summary (module docstring)."""
    s = summary.set_index("portfolio")
    p = s.loc[POOLED]
    ports = s.drop(index=POOLED)
    single = ports.loc[[x for x in SINGLE_COIN if x in ports.index]]
    out = {
        "n_obs": int(p["n_obs"]), "n_exceptions": int(p["n_exceptions"]),
        "exception_rate": float(p["n_exceptions"]) / float(p["n_obs"]),
        "kupiec_p_one_sided": float(p["kupiec_p_one_sided"]), "zone": p["zone"],
        "windows_red": int(ports["windows_red"].sum()), "windows_yellow": int(ports["windows_yellow"].sum()),
        "min_green_share": float(ports["windows_green_share"].min()),
        "peak_to_trough": float(ports["peak_to_trough"].median()),
        "increase_1d": float(ports["increase_1d"].median()),
        "increase_5d": float(ports["increase_5d"].median()),
        "increase_10d": float(ports["increase_10d"].median()),
        "im_to_floor_mean": float(ports["im_to_floor_mean"].median()) if "im_to_floor_mean" in ports else math.nan,
        "mean_im_share": float(p["mean_im_share"]),
        "im_over_es_mean": float(single["im_over_es"].mean()) if len(single) else math.nan,
        "im_over_es_max": float(single["im_over_es"].max()) if len(single) else math.nan,
        "im_over_es_worst": str(single["im_over_es"].idxmax()) if len(single) else "",
    }
    out["coverage_ok"] = bool(out["kupiec_p_one_sided"] >= MIN_KUPIEC_P and out["windows_red"] == 0
                              and out["min_green_share"] >= MIN_GREEN_SHARE)
    out["cost_ok"] = bool(out["im_over_es_max"] <= COST_LIMIT)
    return out


def frontier(table: pd.DataFrame) -> np.ndarray:
    """[n] bool: the coverage_ok sets no other coverage_ok set beats on both ``im_over_es_mean`` and
    ``increase_5d`` (at least as good on both and better on one)."""
    ok = table["coverage_ok"].to_numpy(bool)
    c = table["im_over_es_mean"].to_numpy(float)
    q = table["increase_5d"].to_numpy(float)
    out = np.zeros(len(table), bool)
    for i in np.flatnonzero(ok):  # a few dozen sets
        dom = ok & (c <= c[i]) & (q <= q[i]) & ((c < c[i]) | (q < q[i]))
        out[i] = not dom.any()
    return out


def propose(table: pd.DataFrame) -> int | None:
    """The index of the proposed set (module docstring), or None when no set covers."""
    ok = table["coverage_ok"] & table["cost_ok"]
    base_q = float(table["increase_5d"].iloc[0])
    cand = table[ok & (table["increase_5d"] <= base_q + 1e-12)]
    if len(cand):
        return int(cand["im_over_es_mean"].idxmin())
    front = table[table["frontier"]]
    return int(front["im_over_es_mean"].idxmin()) if len(front) else None


@dataclass
class SweepResult:
    """table: one row per set (its changes, scores, frontier, proposed); summaries: every set's backtest summary
    (a ``set`` column); params: the sets' Params; proposal: the index of the proposed set (or None); meta."""

    table: pd.DataFrame
    summaries: pd.DataFrame
    params: list
    proposal: int | None
    meta: dict = field(default_factory=dict)
    daily: pd.DataFrame | None = None


def compute_groups(setups, days, client=None, block_days: int = 30, on_block=None) -> list[pd.DataFrame]:
    """Every setup's daily rows; with a client every block of every setup is submitted at once."""
    if client is None:
        total = len(setups)
        out = []
        for i, s in enumerate(setups):
            out.append(_engine.compute(s, days, None, block_days))
            if on_block is not None:
                on_block(i + 1, total)
        return out
    from distributed import as_completed

    parts = _engine.blocks(days, block_days)
    futs, where = [], {}
    for g, s in enumerate(setups):
        for b in parts:
            f = client.submit(_engine.run_block, s, b, pure=False, key=f"calibration-{g}-{len(futs)}-{time.time_ns()}")
            where[f.key] = g
            futs.append(f)
    got: list[list[pd.DataFrame]] = [[] for _ in setups]
    try:
        for i, f in enumerate(as_completed(futs)):
            got[where[f.key]].append(f.result())
            if on_block is not None:
                on_block(i + 1, len(futs))
    finally:
        for f in futs:
            f.cancel()
    out = []
    for s, g in zip(setups, got):
        g = [p for p in g if len(p)]
        if not g:
            raise _engine.BacktestError("no day of the range has a portfolio with history and a realised P&L")
        df = pd.concat(g, ignore_index=True)
        keys = (["variant"] if "variant" in df.columns else []) + ["date", "portfolio"]
        out.append(df.sort_values(keys, kind="stable").reset_index(drop=True))
    return out


def run(base=None, grid: dict | None = None, sets=None, portfolios="standard", start="2020-01-01",
        end="2024-12-31", market=None, backend: str = "auto", client=None, block_days: int = 30, on_block=None,
        keep_daily: bool = False) -> SweepResult:
    """Backtest every parameter set (``parameter_sets(base, grid, sets)``; base: house Params, a TOML path or None)
    on ``portfolios`` from ``start`` to ``end`` and score them (module docstring)."""
    from ..backtest import _book, _params
    from ..backtest.portfolios import hold_constant

    t0 = time.perf_counter()
    store = market_store(market)
    days = _engine.check_range(start, end)
    base = _params("house", base)
    psets = parameter_sets(base, grid, sets)
    plist = [p for _, p in psets]
    template = hold_constant(_book(portfolios, store), store)
    grouped = groups(plist)
    setups = [_engine.make_setup("house", gbase, template, store, None, backend, tuple(plist[i] for i in idx))
              for gbase, idx in grouped]
    dailies = compute_groups(setups, days, client, block_days, on_block)
    rows, summ, kept = [None] * len(plist), [], []
    for (gbase, idx), daily in zip(grouped, dailies):
        for k, i in enumerate(idx):
            d = daily[daily["variant"] == k].drop(columns="variant")
            s, _ = summarise(d, _engine.DEFAULT_LEVEL)  # every set is tested for 99 % coverage
            summ.append(s.assign(set=i))
            rows[i] = {"set": i, "group": len(kept), **{f"param.{k2}": _plain(v) for k2, v in psets[i][0].items()},
                       **score(s)}
            if keep_daily:
                kept.append(d.assign(set=i))
        if not keep_daily:
            kept.append(None)
    table = pd.DataFrame(rows)
    table["frontier"] = frontier(table)
    prop = propose(table)
    table["proposed"] = False
    if prop is not None:
        table.loc[prop, "proposed"] = True
    summaries = pd.concat(summ, ignore_index=True)
    meta = {"start": str(start), "end": str(end), "sets": len(plist), "scenario_groups": len(grouped),
            "days": len(days), "market": store.describe(), "market_fingerprint": store.fingerprint(),
            "backend": backend, "seconds": round(time.perf_counter() - t0, 3), "cost_limit": COST_LIMIT,
            "min_kupiec_p": MIN_KUPIEC_P, "min_green_share": MIN_GREEN_SHARE}
    daily = pd.concat([k for k in kept if k is not None], ignore_index=True) if keep_daily else None
    return SweepResult(table, summaries, plist, prop, meta, daily)


def _engine_params(base):
    """The house Params of ``base`` (Params, a TOML path or None), as ``run`` reads it."""
    from ..backtest import _params

    return _params("house", base)


def _plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return str(list(v))
    return v


__all__ = ["parameter_sets", "scenario_key", "groups", "score", "frontier", "propose", "run", "compute_groups",
           "SweepResult", "SINGLE_COIN", "COST_LIMIT", "MIN_KUPIEC_P", "MIN_GREEN_SHARE"]
