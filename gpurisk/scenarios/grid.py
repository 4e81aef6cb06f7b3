"""Exchange-style scenario grids: the Deribit-style risk matrix and CME SPAN's 16 scenarios.

Both grids are written for one risk unit (a price move ``s`` and a vol shock
``v``). ``per_underlying=False`` moves every underlying together by the same
``(s, v)``; ``per_underlying=True`` repeats the grid once per underlying, shocking
that underlying alone (the others unchanged), which is how venues shock each risk
unit separately. Then ``metadata["groups"]`` maps each underlying to its rows
``[start, stop)`` so a margin model can take the worst case per risk unit and add.
"""

from __future__ import annotations

import numpy as np

from ..errors import ScenarioError
from ..pricing import VOL_MODE_CODES, VOL_TERM, VolTerm
from .scenario_set import ScenarioSet

#: Deribit extended-table moves (run with vol up only).
DERIBIT_EXTENDED_MOVES = (-0.66, -0.33, 0.50, 1.00, 2.00, 3.00, 4.00, 5.00)
#: Deribit BTC model_params (2024 docs example) for the term-scaled vol shock.
DERIBIT_TERM = VolTerm(ref_days=30.0, power_short=0.30, power_long=0.13, min_vol_up=0.5)


def _check_underlyings(underlyings) -> tuple[str, ...]:
    u = tuple(str(x) for x in underlyings)
    if not u:
        raise ScenarioError("a grid needs at least one underlying")
    if len(set(u)) != len(u):
        raise ScenarioError(f"duplicate underlyings in {list(u)}")
    return u


def _assemble(underlyings, move, vol, mode, factor, ids, labels, per_underlying, **meta) -> ScenarioSet:
    """Grid of n (move, vol) points [n] -> ScenarioSet, all together or per underlying."""
    U = len(underlyings)
    n = len(move)
    move, vol = np.asarray(move, float), np.asarray(vol, float)
    if not per_underlying:
        return ScenarioSet(
            underlyings=underlyings,
            price_shock=np.repeat(move[:, None], U, axis=1),
            vol_shock=np.repeat(vol[:, None], U, axis=1),
            vol_mode=np.asarray(mode, np.int8),
            weight=np.ones(n),
            pnl_factor=np.asarray(factor, float),
            label=np.asarray(labels, object),
            scenario_id=np.asarray(ids, object),
            **meta,
        )
    ps = np.zeros((U * n, U))
    vs = np.zeros((U * n, U))
    for j in range(U):  # U is a handful of risk units, not accounts
        ps[j * n : (j + 1) * n, j] = move
        vs[j * n : (j + 1) * n, j] = vol
    meta = dict(meta)
    md = dict(meta.pop("metadata", {}))
    md["groups"] = {u: [j * n, (j + 1) * n] for j, u in enumerate(underlyings)}
    md["per_underlying"] = True
    return ScenarioSet(
        underlyings=underlyings,
        price_shock=ps,
        vol_shock=vs,
        vol_mode=np.tile(np.asarray(mode, np.int8), U),
        weight=np.ones(U * n),
        pnl_factor=np.tile(np.asarray(factor, float), U),
        label=np.array([f"{u} {lab}" for u in underlyings for lab in labels], dtype=object),
        scenario_id=np.array([f"{u}:{i}" for u in underlyings for i in ids], dtype=object),
        metadata=md,
        **meta,
    )


def exchange_grid(
    underlyings=("BTC",),
    price_range: float = 0.16,
    buckets: int = 4,
    vol_up: float = 0.50,
    vol_down: float = 0.25,
    term: VolTerm = DERIBIT_TERM,
    extended_moves=DERIBIT_EXTENDED_MOVES,
    extended_factor=None,
    per_underlying: bool = False,
    horizon_days: float = 0.0,
) -> ScenarioSet:
    """Deribit-style risk matrix: (2·buckets+1) moves in [−range, +range] × vol up/same/down.

    Vol shocks are term-scaled (``vol_mode=term``): σ' = σ·(1 + v·(30/DTE)^p) with
    v = +vol_up, 0, −vol_down and the floors of ``term``. The extended table adds
    each move of ``extended_moves`` with vol up, counted at ``pnl_factor`` =
    ``extended_factor(move)`` (default price_range/|move|, the published Paradex
    rule; an assumption for Deribit). S = 3·(2·buckets+1) + len(extended_moves),
    times U when ``per_underlying``.
    """
    u = _check_underlyings(underlyings)
    if not (0 < price_range < 1) or buckets < 1:
        raise ScenarioError(f"price_range must be in (0, 1) and buckets >= 1, got {price_range}, {buckets}")
    if vol_up < 0 or not (0 <= vol_down < 1):
        raise ScenarioError(f"vol_up must be >= 0 and vol_down in [0, 1), got {vol_up}, {vol_down}")
    ext = tuple(float(m) for m in (extended_moves or ()))
    if any(m <= -1 or m == 0 for m in ext):
        raise ScenarioError(f"extended moves must be > -1 and non-zero, got {list(ext)}")
    factor_of = extended_factor or (lambda m: min(1.0, price_range / abs(m)))
    moves = np.linspace(-price_range, price_range, 2 * buckets + 1)
    vols = (("up", vol_up), ("same", 0.0), ("down", -vol_down))
    move, vol, fac, ids, labels = [], [], [], [], []
    for m in moves:
        for vname, v in vols:
            move.append(m)
            vol.append(v)
            fac.append(1.0)
            ids.append(f"{m:+.4f}/{vname}")
            labels.append(f"move {m:+.2%} vol {vname}")
    for m in ext:
        move.append(m)
        vol.append(vol_up)
        fac.append(float(factor_of(m)))
        ids.append(f"ext{m:+.4f}/up")
        labels.append(f"extended move {m:+.0%} vol up")
    mode = np.full(len(move), VOL_TERM, np.int8)
    src = (
        f"exchange grid: range ±{price_range:g} in {buckets} buckets per side, vol up {vol_up:g} / down {vol_down:g} "
        f"(term-scaled ref {term.ref_days:g}d, p {term.power_short:g}/{term.power_long:g}, min vol up "
        f"{term.min_vol_up:g}), extended moves {list(ext)}; "
        + ("per underlying" if per_underlying else "all underlyings together")
    )
    return _assemble(u, move, vol, mode, fac, ids, labels, per_underlying, horizon_days=float(horizon_days),
                     kind="grid", seed=None, source=src, term=term)


def span_grid(
    underlyings=("BTC",),
    price_scan_range: float = 0.16,
    vol_scan_range: float = 0.25,
    vol_mode: str = "relative",
    extreme_multiple: float = 3.0,
    extreme_factor: float = 0.33,
    per_underlying: bool = False,
    horizon_days: float = 0.0,
    term: VolTerm = VolTerm(),
) -> ScenarioSet:
    """CME SPAN's 16 risk scenarios, in CME's order.

    1–14: price 0, +1/3, −1/3, +2/3, −2/3, +1, −1 of the price scan range, each with
    vol up then vol down by ``vol_scan_range`` (read by ``vol_mode``);
    15–16: ±``extreme_multiple`` × range with vol unchanged, counted at
    ``extreme_factor`` (pnl_factor). Venues vary (2× at 35 %); both are parameters.
    """
    u = _check_underlyings(underlyings)
    if not (0 < price_scan_range) or extreme_multiple * price_scan_range >= 1:
        raise ScenarioError(
            f"price_scan_range must be > 0 with extreme_multiple × range < 1, got {price_scan_range} × {extreme_multiple}"
        )
    if vol_mode not in VOL_MODE_CODES:
        raise ScenarioError(f"unknown vol_mode {vol_mode!r}; use one of {sorted(VOL_MODE_CODES)}")
    fr = (0.0, 1 / 3, -1 / 3, 2 / 3, -2 / 3, 1.0, -1.0)
    move, vol, fac, ids, labels = [], [], [], [], []
    k = 0
    for f in fr:
        for vname, v in (("up", vol_scan_range), ("down", -vol_scan_range)):
            k += 1
            move.append(f * price_scan_range)
            vol.append(v)
            fac.append(1.0)
            ids.append(f"span{k:02d}")
            labels.append(f"SPAN {k}: price {f:+.3f} range, vol {vname}")
    for sign in (+1, -1):
        k += 1
        move.append(sign * extreme_multiple * price_scan_range)
        vol.append(0.0)
        fac.append(float(extreme_factor))
        ids.append(f"span{k:02d}")
        labels.append(f"SPAN {k}: extreme {sign * extreme_multiple:+g} range, counted {extreme_factor:g}")
    mode = np.full(len(move), VOL_MODE_CODES[vol_mode], np.int8)
    src = (
        f"CME SPAN 16 scenarios: price scan ±{price_scan_range:g}, vol scan ±{vol_scan_range:g} ({vol_mode}), "
        f"extremes ±{extreme_multiple:g}× at {extreme_factor:g}; "
        + ("per underlying" if per_underlying else "all underlyings together")
    )
    return _assemble(u, move, vol, mode, fac, ids, labels, per_underlying, horizon_days=float(horizon_days),
                     kind="span", seed=None, source=src, term=term)


__all__ = ["exchange_grid", "span_grid", "DERIBIT_EXTENDED_MOVES", "DERIBIT_TERM"]
