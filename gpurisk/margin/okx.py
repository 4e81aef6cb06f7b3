"""OKX portfolio margin replica: one risk unit per (account, underlying), in USD.

Per risk unit (all perpetuals, futures, options and spot of one underlying at the
OKX-methodology venues, whatever their settlement):

- MR1 spot shock: worst loss over the spot grid (0, ±m1, ±m2, ±m3 by asset class;
  2025-01-06 parameters) × vol {up, same, down} (term-scaled relative shocks [U]).
- MR2 time decay: loss of the unit after ``mr2_horizon_days`` at unchanged price and vol [U].
- MR6 extreme move: loss at ±extreme (by asset class) counted at ``mr6_factor`` = 50 %.
- MR4 basis: Σ|USD notional of futures|·annualised basis move·T [U: exact formula unpublished].
- MR3 vega term structure, MR5 interest rate, MR9 stablecoin: ``rate``·gross USD notional
  of the relevant instruments, all default 0 (approximations; see docs/methodologies.md (section 3)).
- MR7 minimum charge: raw = rate·gross USD notional (delta-one and options) [U], scaled
  by tiers: the amount inside tier k counts ``multiplier_k`` times.
- MMR = max{max(MR1, MR2, MR6) + MR4 + MR3 + MR5 + MR9, MR7}; IMR = ``imr_factor``·MMR (1.3).

The ``margin`` table holds one row per risk unit (``level = "risk_unit"``) and one per
account × venue (``level = "account"``: the sum over its risk units, with equity and excess).
``im``/``mm``/``im_usd``/``mm_usd`` are set on account rows only (NaN on risk-unit rows), so
summing a column over the table counts every account once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..backends import MeasureSpec, TailStats
from ..book import FUTURE, OPTION, PERPETUAL, SPOT, Book
from ..pricing import VOL_MODE_CODES, VolTerm, pricing_inputs
from ..scenarios import ScenarioSet
from .plan import Leg, MarginResult, Plan
from .venue import (check_market, covered_pairs, group_portfolios, holdings_usd, load_params_file, row_of_entries,
                    venue_positions)

MODEL = "okx"
OTHERS = "others"


def _grid_classes() -> dict[str, tuple[str, ...]]:
    return {
        "btc_eth": ("BTC", "ETH"),
        "mid_caps": ("LTC", "BCH", "EOS", "OKB", "DOT", "BSV", "LINK", "FIL", "ADA", "TRX", "UNI", "XRP"),
    }


def _risk_classes() -> dict[str, tuple[str, ...]]:
    return {
        "btc_eth": ("BTC", "ETH"),
        "mid_caps": ("SOL", "DOGE", "PEPE", "XRP", "BNB", "SHIB", "LTC", "ORDI", "WLD", "BCH", "ADA"),
    }


@dataclass(frozen=True)
class Params:
    """OKX portfolio-margin parameters (2025-01 announcement values where published).

    Classes: ``mr1_members`` names the MR1 grid classes, ``risk_members`` the MR6/MR4/MR7
    classes; an underlying in neither list is ``others``. Moves are relative (0.04 = 4 %).
    vol_up / vol_down: relative vol shocks at ``vega_ref_days`` scaled by (ref/DTE)^power [U].
    mr7_tier_bounds: USD upper bounds of the raw-charge tiers; mr7_multipliers: one more
    entry than the bounds (the last applies above the last bound).
    """

    venues: tuple[str, ...] = ("okx",)
    mr1_moves: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "btc_eth": (0.04, 0.08, 0.12), "mid_caps": (0.06, 0.12, 0.18), OTHERS: (0.08, 0.16, 0.25)})
    mr1_members: dict[str, tuple[str, ...]] = field(default_factory=_grid_classes)
    vol_up: float = 0.50
    vol_down: float = 0.25
    short_term_vega_power: float = 0.30
    long_term_vega_power: float = 0.13
    vega_ref_days: float = 30.0
    min_dte_days: float = 1.0
    risk_members: dict[str, tuple[str, ...]] = field(default_factory=_risk_classes)
    mr6_moves: dict[str, float] = field(default_factory=lambda: {"btc_eth": 0.24, "mid_caps": 0.36, OTHERS: 0.50})
    mr6_factor: float = 0.5
    mr4_rates: dict[str, float] = field(default_factory=lambda: {"btc_eth": 0.05, "mid_caps": 0.15, OTHERS: 0.30})
    mr2_horizon_days: float = 1.0
    mr3_rate: float = 0.0
    mr5_rate: float = 0.0
    mr9_rate: float = 0.0
    mr7_rate_delta_one: float = 0.002
    mr7_rate_option: float = 0.002
    mr7_tier_bounds: tuple[float, ...] = (250_000.0, 500_000.0, 1_000_000.0, 2_000_000.0, 3_000_000.0, 4_000_000.0)
    mr7_multipliers: tuple[float, ...] = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
    imr_factor: float = 1.3

    def __post_init__(self):
        if len(self.mr7_multipliers) != len(self.mr7_tier_bounds) + 1:
            raise ValueError("mr7_multipliers needs one entry more than mr7_tier_bounds")
        if any(b <= a for a, b in zip(self.mr7_tier_bounds, self.mr7_tier_bounds[1:])):
            raise ValueError("mr7_tier_bounds must increase")
        for name in ("mr1_moves", "mr6_moves", "mr4_rates"):
            if OTHERS not in getattr(self, name):
                raise ValueError(f"{name} needs an entry for {OTHERS!r}")

    @staticmethod
    def _class_of(members: dict[str, tuple[str, ...]], underlying: str) -> str:
        for cls, names in members.items():
            if underlying in names:
                return cls
        return OTHERS

    def grid_moves(self, underlying: str) -> tuple[float, ...]:
        cls = self._class_of(self.mr1_members, underlying)
        return self.mr1_moves.get(cls, self.mr1_moves[OTHERS])

    def extreme_move(self, underlying: str) -> float:
        cls = self._class_of(self.risk_members, underlying)
        return self.mr6_moves.get(cls, self.mr6_moves[OTHERS])

    def basis_rate(self, underlying: str) -> float:
        cls = self._class_of(self.risk_members, underlying)
        return self.mr4_rates.get(cls, self.mr4_rates[OTHERS])

    def vol_term(self) -> VolTerm:
        return VolTerm(ref_days=self.vega_ref_days, power_short=self.short_term_vega_power,
                       power_long=self.long_term_vega_power, min_dte_days=self.min_dte_days)


def load_params(path: str | None) -> Params:
    """Params from a TOML file (``jobs/params/okx.toml``); None gives the defaults."""
    return load_params_file(Params, path)


def tiered(raw: np.ndarray, bounds, multipliers) -> np.ndarray:
    """[n] Σ_k multiplier_k × (the part of ``raw`` inside tier k); tiers split at ``bounds``."""
    raw = np.asarray(raw, dtype=np.float64)
    edges = np.concatenate([[0.0], np.asarray(bounds, dtype=np.float64), [np.inf]])
    inside = np.clip(raw[:, None] - edges[None, :-1], 0.0, (edges[1:] - edges[:-1])[None, :])
    return inside @ np.asarray(multipliers, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# scenario sets


def _set(underlying, ps, vs, label, sid, params: Params, horizon=0.0, pnl_factor=None, source=""):
    S = len(ps)
    return ScenarioSet(
        underlyings=(underlying,),
        price_shock=np.asarray(ps, dtype=np.float64)[:, None],
        vol_shock=np.asarray(vs, dtype=np.float64)[:, None],
        vol_mode=np.full(S, VOL_MODE_CODES["term"], dtype=np.int8),
        weight=np.ones(S),
        pnl_factor=np.ones(S) if pnl_factor is None else np.asarray(pnl_factor, dtype=np.float64),
        label=np.asarray(label, dtype=object),
        scenario_id=np.asarray(sid, dtype=object),
        horizon_days=float(horizon),
        kind="grid",
        source=source,
        term=params.vol_term(),
    )


def mr1_scenarios(underlying: str, params: Params) -> ScenarioSet:
    """MR1: spot moves (0, ±each grid move) × vol {up, same, down}."""
    m = np.asarray(params.grid_moves(underlying), dtype=np.float64)
    moves = np.concatenate([-m[::-1], [0.0], m])
    vols = np.array([params.vol_up, 0.0, -params.vol_down])
    names = ("up", "same", "down")
    label = [f"{100 * x:+.4g}% vol {n}" for x in moves for n in names]
    return _set(underlying, np.repeat(moves, 3), np.tile(vols, len(moves)), label,
                [f"mr1:{i}" for i in range(len(label))], params, source=f"okx MR1 {underlying}")


def mr6_scenarios(underlying: str, params: Params) -> ScenarioSet:
    """MR6: ±extreme move at unchanged vol [U], each counted at ``mr6_factor``."""
    e = params.extreme_move(underlying)
    return _set(underlying, [-e, e], [0.0, 0.0], [f"-{100 * e:.4g}% extreme", f"+{100 * e:.4g}% extreme"],
                ["mr6:0", "mr6:1"], params, pnl_factor=[params.mr6_factor] * 2, source=f"okx MR6 {underlying}")


def mr2_scenarios(underlying: str, params: Params) -> ScenarioSet:
    """MR2: no move, no vol change, ``mr2_horizon_days`` of time decay."""
    return _set(underlying, [0.0], [0.0], [f"{params.mr2_horizon_days:g}d decay"], ["mr2:0"], params,
                horizon=params.mr2_horizon_days, source=f"okx MR2 {underlying}")


# ---------------------------------------------------------------------------------------------
# plan and finalize


def plan(book: Book, params: Params | None = None, scenarios: ScenarioSet | None = None) -> Plan:
    """Legs per underlying at the OKX-methodology venues: MR1 grid, MR6 extreme moves, MR2 decay.

    ``scenarios`` is ignored: the venue's grids are part of the methodology.
    """
    params = params or Params()
    ins = book.instruments
    sel = venue_positions(book, params.venues)
    pi_all = pricing_inputs(book, np.zeros(len(ins), dtype=np.int32))
    pos_ins = book.positions.instrument_idx
    legs: dict[str, Leg] = {}
    groups = []
    for labels, inst, ports in group_portfolios(book, sel, {"venue": ins.venue[pos_ins],
                                                            "underlying": ins.underlying[pos_ins]}):
        v, u = labels["venue"], labels["underlying"]
        check_market(book, inst, MODEL)
        pi = dataclasses.replace(pi_all.take(inst), underlying_idx=np.zeros(len(inst), dtype=np.int32))
        tag = f"{v}.{u}"
        names = {"mr1": f"{tag}/mr1", "mr6": f"{tag}/mr6"}
        legs[names["mr1"]] = Leg(names["mr1"], pi, mr1_scenarios(u, params), "usd", ports, MeasureSpec())
        legs[names["mr6"]] = Leg(names["mr6"], pi, mr6_scenarios(u, params), "usd", ports,
                                 MeasureSpec(pnl_factor=np.full(2, params.mr6_factor)))
        if params.mr2_horizon_days > 0.0:
            names["mr2"] = f"{tag}/mr2"
            legs[names["mr2"]] = Leg(names["mr2"], pi, mr2_scenarios(u, params), "usd", ports, MeasureSpec())
        notional = np.abs(pi.contract_size * pi.forward)  # USD per contract (inverse: cs is USD)
        notional = np.where((pi.settlement == 1) & (pi.kind != OPTION), pi.contract_size, notional)
        groups.append(dict(venue=v, underlying=u, legs=names, notional=notional, kind=pi.kind.copy(),
                           ttm=pi.ttm.copy(), linear=(pi.settlement == 0), basis_rate=params.basis_rate(u)))
    return Plan(model=MODEL, legs=legs, context={"book": book, "params": params, "groups": groups})


def _unit_table(g: dict, legs: dict[str, Leg], stats: dict[str, TailStats], params: Params) -> pd.DataFrame:
    """MR terms of every risk unit in one (venue, underlying) group; vectorised over accounts."""
    ports = legs[g["legs"]["mr1"]].portfolios
    n = len(ports)
    mr1 = np.maximum(stats[g["legs"]["mr1"]].worst, 0.0)
    mr6 = np.maximum(stats[g["legs"]["mr6"]].worst, 0.0)
    mr2 = np.maximum(stats[g["legs"]["mr2"]].worst, 0.0) if "mr2" in g["legs"] else np.zeros(n)
    r = row_of_entries(ports)
    ii = ports.instrument_idx
    gross = np.abs(ports.quantity) * g["notional"][ii]  # [nnz] USD
    kind = g["kind"][ii]
    is_fut = kind == FUTURE
    is_opt = kind == OPTION
    is_d1 = np.isin(kind, (FUTURE, PERPETUAL, SPOT))

    def per_unit(w):
        return np.bincount(r, weights=w, minlength=n)

    mr4 = per_unit(np.where(is_fut, gross * g["basis_rate"] * g["ttm"][ii], 0.0))
    mr3 = params.mr3_rate * per_unit(np.where(is_opt, gross, 0.0))
    mr5 = params.mr5_rate * per_unit(np.where(is_opt, gross, 0.0))
    mr9 = params.mr9_rate * per_unit(np.where(g["linear"][ii] & (kind != SPOT), gross, 0.0))
    mr7_raw = per_unit(np.where(is_d1, gross * params.mr7_rate_delta_one, 0.0)
                       + np.where(is_opt, gross * params.mr7_rate_option, 0.0))
    mr7 = tiered(mr7_raw, params.mr7_tier_bounds, params.mr7_multipliers)
    mmr = np.maximum(np.maximum(np.maximum(mr1, mr2), mr6) + mr4 + mr3 + mr5 + mr9, mr7)
    return pd.DataFrame({
        "account_id": ports.key["account_id"], "account_idx": ports.account_idx, "venue": g["venue"],
        "risk_unit": g["underlying"], "mr1": mr1, "mr2": mr2, "mr3": mr3, "mr4": mr4, "mr5": mr5, "mr6": mr6,
        "mr7_raw": mr7_raw, "mr7": mr7, "mr9": mr9, "mmr": mmr, "imr": params.imr_factor * mmr,
    })


def _equity_usd(book: Book, rows: pd.DataFrame, venues) -> np.ndarray:
    """[R] each row's holdings at its venue in USD: balances (coins at the index, stablecoins
    at 1, no haircut) plus spot positions at their mark (``venue.holdings_usd``, which
    raises on a coin or spot position with no price)."""
    if len(rows) == 0:
        return np.zeros(0)
    bal = holdings_usd(book, venues)
    keyed = rows[["account_idx", "venue"]].merge(bal, on=["account_idx", "venue"], how="left")
    return keyed["usd"].fillna(0.0).to_numpy()


def coverage(plan: Plan) -> pd.DataFrame:
    """The (account_id, venue) pairs the ``margin`` table must hold: every account with a
    non-zero position at one of the model's venues (the batch layer checks the output)."""
    return covered_pairs(plan.context["book"], plan.context["params"].venues)


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """``margin``: risk-unit rows and account rows (level column), all in USD."""
    params: Params = plan.context["params"]
    book: Book = plan.context["book"]
    mr_cols = ["mr1", "mr2", "mr3", "mr4", "mr5", "mr6", "mr7_raw", "mr7", "mr9", "mmr", "imr"]
    cols = ["account_id", "model", "venue", "level", "risk_unit", "currency", *mr_cols, "im", "mm", "im_usd", "mm_usd",
            "equity", "excess"]
    parts = [_unit_table(g, plan.legs, stats, params) for g in plan.context["groups"]]
    if not parts:
        return MarginResult(MODEL, {"margin": pd.DataFrame(columns=cols)},
                            {"model": MODEL, "n_rows": 0, "accounts": 0, "im_usd_total": 0.0, "mm_usd_total": 0.0})
    units = pd.concat(parts, ignore_index=True)
    units["level"] = "risk_unit"
    acct = units.groupby(["account_idx", "account_id", "venue"], sort=True, as_index=False)[mr_cols].sum()
    acct["level"] = "account"
    acct["risk_unit"] = "ALL"
    acct["equity"] = _equity_usd(book, acct, params.venues)
    acct["excess"] = acct["equity"] - acct["imr"]
    units["equity"] = np.nan
    units["excess"] = np.nan
    margin = pd.concat([units, acct], ignore_index=True)
    margin["model"] = MODEL
    margin["currency"] = "USD"
    # im/mm (and their USD twins) only on account rows, so a sum over the table counts each
    # account once; risk-unit rows keep their own figures in imr/mmr
    acct_rows = margin["level"] == "account"
    for col, src in (("im", "imr"), ("mm", "mmr"), ("im_usd", "imr"), ("mm_usd", "mmr")):
        margin[col] = margin[src].where(acct_rows)
    margin["_lvl"] = (margin["level"] == "account").astype(int)
    margin = margin.sort_values(["account_id", "venue", "_lvl", "risk_unit"], kind="stable")[cols].reset_index(drop=True)
    a = margin[margin["level"] == "account"]
    summary = {
        "model": MODEL,
        "venues": list(params.venues),
        "n_rows": int(len(margin)),
        "n_risk_units": int((margin["level"] == "risk_unit").sum()),
        "accounts": int(a["account_id"].nunique()),
        "im_usd_total": float(a["im_usd"].sum()),
        "mm_usd_total": float(a["mm_usd"].sum()),
    }
    return MarginResult(MODEL, {"margin": margin}, summary)


__all__ = ["Params", "load_params", "plan", "finalize", "coverage", "tiered", "mr1_scenarios", "mr6_scenarios",
           "mr2_scenarios"]
