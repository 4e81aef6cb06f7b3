"""OKX portfolio margin replica: one risk unit per (account, underlying), in USD.

Per risk unit (all perpetuals, futures, options and spot of one underlying at the
OKX-methodology venues, whatever their settlement):

- MR1 spot shock: worst loss over the spot grid (0, ±m1, ±m2, ±m3 by asset class;
  2025-01-06 parameters) × vol {up, same, down} (term-scaled relative shocks [U]). Linear
  delta-one positions (``index_shocked_kinds``) move by the shock times the underlying's
  index price, not their own mark (perpetuals: derived from OKX's position-builder example).
- MR2 time decay: loss of the unit after ``mr2_horizon_days`` at unchanged price and vol [U].
- MR6 extreme move: loss at ±extreme (by asset class) counted at ``mr6_factor`` = 50 %.
- MR4 basis: Σ over ``mr4_kinds`` of |cash delta at the mark| · max(min move, annualised
  move · T); perpetuals (T = 0) pay the min move (derived from the example; the max form is [U]).
- MR3 vega term structure, MR5 interest rate, MR9 stablecoin: ``rate``·gross USD notional
  of the relevant instruments, all default 0 (approximations; see docs/methodologies.md (section 3)).
- MR7 minimum charge: raw = Σ|cash delta of perpetuals and futures|·class rate (derived from
  the example) + ``mr7_rate_option``·gross option notional [U], scaled by tiers: the amount
  inside tier k counts ``multiplier_k`` times.
- MMR = max{max(MR1, MR2, MR6) + MR4 + MR3 + MR5 + MR9, MR7}; IMR = ``imr_factor``·MMR (1.3).

The ``margin`` table holds one row per account × venue (the standard columns, USD: IM =
IMR and MM = MMR summed over the account's risk units, equity = holdings at the venue) with
the summed MR terms; ``risk_units`` holds the MR terms of every risk unit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..book import FUTURE, KIND_CODES, OPTION, PERPETUAL, SPOT, Book, Portfolios
from ..errors import GpuriskError
from ..pricing import VOL_MODE_CODES, PricingInputs, VolTerm, pricing_inputs
from ..scenarios import ScenarioSet
from ..tail import MeasureSpec, TailStats
from .params import load_overlay
from .plan import Leg, MarginResult, Plan, standard_frame
from .replica import check_market, covered_pairs, group_portfolios, holdings_usd, row_of_entries, venue_positions

NAME = MODEL = "okx"
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
    index_shocked_kinds: instrument kinds whose MR1/MR6 P&L is the shock × the index price
    (linear ones; inverse P&L in USD does not depend on the base).
    mr4_rates: annualised basis move (× T in years); mr4_min_moves: the least basis move of a
    position (all a perpetual pays); both × |cash delta| (USD, at the mark) of ``mr4_kinds``.
    mr7_rates: raw minimum charge per USD of |cash delta| of perpetuals and futures;
    mr7_rate_option: per USD of gross option notional.
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
    index_shocked_kinds: tuple[str, ...] = ("perpetual", "future", "spot")
    mr4_rates: dict[str, float] = field(default_factory=lambda: {"btc_eth": 0.05, "mid_caps": 0.15, OTHERS: 0.30})
    mr4_min_moves: dict[str, float] = field(default_factory=lambda: {"btc_eth": 0.002, "mid_caps": 0.008,
                                                                     OTHERS: 0.01})
    mr4_kinds: tuple[str, ...] = ("perpetual", "future")
    mr2_horizon_days: float = 1.0
    mr3_rate: float = 0.0
    mr5_rate: float = 0.0
    mr9_rate: float = 0.0
    mr7_rates: dict[str, float] = field(default_factory=lambda: {"btc_eth": 0.0045, "mid_caps": 0.007, OTHERS: 0.01})
    mr7_rate_option: float = 0.002
    mr7_tier_bounds: tuple[float, ...] = (250_000.0, 500_000.0, 1_000_000.0, 2_000_000.0, 3_000_000.0, 4_000_000.0)
    mr7_multipliers: tuple[float, ...] = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
    imr_factor: float = 1.3

    def __post_init__(self):
        if len(self.mr7_multipliers) != len(self.mr7_tier_bounds) + 1:
            raise ValueError("mr7_multipliers needs one entry more than mr7_tier_bounds")
        if any(b <= a for a, b in zip(self.mr7_tier_bounds, self.mr7_tier_bounds[1:])):
            raise ValueError("mr7_tier_bounds must increase")
        for name in ("mr1_moves", "mr6_moves", "mr4_rates", "mr4_min_moves", "mr7_rates"):
            if OTHERS not in getattr(self, name):
                raise ValueError(f"{name} needs an entry for {OTHERS!r}")
        for name in ("mr4_rates", "mr4_min_moves", "mr7_rates"):
            bad = sorted(k for k, v in getattr(self, name).items() if not v >= 0.0)
            if bad:
                raise ValueError(f"{name} must not be negative (classes {', '.join(bad)})")
        delta_one = tuple(k for k in KIND_CODES if KIND_CODES[k] != OPTION)
        for name in ("index_shocked_kinds", "mr4_kinds"):
            bad = [k for k in getattr(self, name) if k not in delta_one]
            if bad:
                raise ValueError(f"{name}: {', '.join(map(repr, bad))} is not one of {', '.join(delta_one)}")

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

    def _risk_value(self, table: dict[str, float], underlying: str) -> float:
        return table.get(self._class_of(self.risk_members, underlying), table[OTHERS])

    def basis_rate(self, underlying: str) -> float:
        """MR4 annualised basis move of ``underlying`` (× T in years)."""
        return self._risk_value(self.mr4_rates, underlying)

    def basis_min_move(self, underlying: str) -> float:
        """MR4 least basis move of one position of ``underlying`` (a perpetual's whole charge)."""
        return self._risk_value(self.mr4_min_moves, underlying)

    def min_charge_rate(self, underlying: str) -> float:
        """MR7 raw charge per USD of |cash delta| of a perpetual or future on ``underlying``."""
        return self._risk_value(self.mr7_rates, underlying)

    def vol_term(self) -> VolTerm:
        return VolTerm(ref_days=self.vega_ref_days, power_short=self.short_term_vega_power,
                       power_long=self.long_term_vega_power, min_dte_days=self.min_dte_days)


def load_params(path: str | None) -> Params:
    """Params from a TOML file (``jobs/params/okx.toml``); None gives the defaults."""
    return load_overlay(Params, path)


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


def _index_price(book: Book, underlying: str) -> float:
    """The underlying's index price in USD; GpuriskError when the book has no usable one."""
    mkt = book.market
    try:
        px = float(mkt.index_price[mkt.index_of(np.asarray([underlying]))[0]])
    except KeyError:
        px = float("nan")
    if not (np.isfinite(px) and px > 0.0):
        raise GpuriskError(f"{MODEL}: underlying {underlying} has no usable index price (MR1/MR6 shock the index)")
    return px


def _on_index(pi: PricingInputs, book: Book, underlying: str, kinds) -> PricingInputs:
    """``pi`` [I] with the forward of every instrument whose kind is in ``kinds`` set to the
    underlying's index price (USD): its scenario P&L becomes the shock × the index, not × its mark."""
    on = np.isin(pi.kind, [KIND_CODES[k] for k in kinds]) & (pi.kind != OPTION)
    if not on.any():
        return pi
    return dataclasses.replace(pi, forward=np.where(on, _index_price(book, underlying), pi.forward))


@dataclass(frozen=True)
class Context:
    """What ``finalize`` needs: the book, the parameters and one entry per (venue, underlying) group."""

    book: Book
    params: Params
    groups: list


def plan(book: Book, params: Params | None = None, scenarios: ScenarioSet | None = None) -> Plan:
    """Legs per underlying at the OKX-methodology venues: MR1 grid, MR6 extreme moves, MR2 decay.

    The venue's grids are the methodology: a caller's ``scenarios`` are refused.
    """
    if scenarios is not None:
        raise GpuriskError("okx: the OKX replica uses its own scenario grids and cannot take a scenario set")
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
        at_mark = dataclasses.replace(pi_all.take(inst), underlying_idx=np.zeros(len(inst), dtype=np.int32))
        pi = _on_index(at_mark, book, u, params.index_shocked_kinds)  # MR1/MR2/MR6 pricing
        tag = f"{v}.{u}"
        names = {"mr1": f"{tag}/mr1", "mr6": f"{tag}/mr6"}
        legs[names["mr1"]] = Leg(names["mr1"], pi, mr1_scenarios(u, params), "usd", ports, MeasureSpec())
        legs[names["mr6"]] = Leg(names["mr6"], pi, mr6_scenarios(u, params), "usd", ports,
                                 MeasureSpec(pnl_factor=np.full(2, params.mr6_factor)))
        if params.mr2_horizon_days > 0.0:
            names["mr2"] = f"{tag}/mr2"
            legs[names["mr2"]] = Leg(names["mr2"], pi, mr2_scenarios(u, params), "usd", ports, MeasureSpec())
        # USD per contract at the mark: the cash delta of delta-one (inverse: cs is USD), the
        # underlying notional of an option
        notional = np.abs(at_mark.contract_size * at_mark.forward)
        notional = np.where((at_mark.settlement == 1) & (at_mark.kind != OPTION), at_mark.contract_size, notional)
        groups.append(dict(venue=v, underlying=u, legs=names, notional=notional, kind=at_mark.kind.copy(),
                           ttm=np.where(at_mark.kind == FUTURE, np.nan_to_num(at_mark.ttm), 0.0),
                           linear=(at_mark.settlement == 0), basis_rate=params.basis_rate(u),
                           basis_min_move=params.basis_min_move(u), min_charge_rate=params.min_charge_rate(u)))
    return Plan(model=MODEL, legs=legs, context=Context(book, params, groups))


def unit_figures(g: dict, ports: Portfolios, mr1_worst: np.ndarray, mr6_worst: np.ndarray, mr2_worst, params: Params) -> dict:
    """The MR terms of one (venue, underlying) group's risk units [P], USD.

    ``mr1_worst``, ``mr6_worst``, ``mr2_worst`` [P]: the worst counted loss of each unit over its MR1,
    MR6 and MR2 legs (``mr2_worst`` None when MR2 is off). Returns ``mr1`` ... ``mr9``, ``mr7_raw``,
    ``mmr`` and ``imr``. Vectorised over risk units (``finalize`` runs it on every account, the what-if on one).
    """
    n = len(ports)
    mr1 = np.maximum(mr1_worst, 0.0)
    mr6 = np.maximum(mr6_worst, 0.0)
    mr2 = np.maximum(mr2_worst, 0.0) if mr2_worst is not None else np.zeros(n)
    r = row_of_entries(ports)
    ii = ports.instrument_idx
    gross = np.abs(ports.quantity) * g["notional"][ii]  # [nnz] USD at the mark (delta-one: |cash delta|)
    kind = g["kind"][ii]
    is_opt = kind == OPTION
    is_deriv_d1 = np.isin(kind, (FUTURE, PERPETUAL))
    pays_basis = np.isin(kind, [KIND_CODES[k] for k in params.mr4_kinds])

    def per_unit(w):
        return np.bincount(r, weights=w, minlength=n)

    basis_move = np.maximum(g["basis_min_move"], g["basis_rate"] * g["ttm"][ii])  # [nnz] fraction
    mr4 = per_unit(np.where(pays_basis, gross * basis_move, 0.0))
    mr3 = params.mr3_rate * per_unit(np.where(is_opt, gross, 0.0))
    mr5 = params.mr5_rate * per_unit(np.where(is_opt, gross, 0.0))
    mr9 = params.mr9_rate * per_unit(np.where(g["linear"][ii] & (kind != SPOT), gross, 0.0))
    mr7_raw = per_unit(np.where(is_deriv_d1, gross * g["min_charge_rate"], 0.0)
                       + np.where(is_opt, gross * params.mr7_rate_option, 0.0))
    mr7 = tiered(mr7_raw, params.mr7_tier_bounds, params.mr7_multipliers)
    mmr = np.maximum(np.maximum(np.maximum(mr1, mr2), mr6) + mr4 + mr3 + mr5 + mr9, mr7)
    return {"mr1": mr1, "mr2": mr2, "mr3": mr3, "mr4": mr4, "mr5": mr5, "mr6": mr6, "mr7_raw": mr7_raw, "mr7": mr7,
            "mr9": mr9, "mmr": mmr, "imr": params.imr_factor * mmr}


def _unit_table(g: dict, legs: dict[str, Leg], stats: dict[str, TailStats], params: Params) -> pd.DataFrame:
    """MR terms of every risk unit in one (venue, underlying) group; vectorised over accounts."""
    ports = legs[g["legs"]["mr1"]].portfolios
    mr2 = stats[g["legs"]["mr2"]].worst if "mr2" in g["legs"] else None
    f = unit_figures(g, ports, stats[g["legs"]["mr1"]].worst, stats[g["legs"]["mr6"]].worst, mr2, params)
    return pd.DataFrame({
        "account_id": ports.key["account_id"], "account_idx": ports.account_idx, "venue": g["venue"],
        "risk_unit": g["underlying"], **f,
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
    return covered_pairs(plan.context.book, plan.context.params.venues)


MR_COLUMNS = ("mr1", "mr2", "mr3", "mr4", "mr5", "mr6", "mr7_raw", "mr7", "mr9", "mmr", "imr")


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """``margin``: one row per account × venue in USD (IM = IMR, MM = MMR summed over its risk units, equity
    the holdings at the venue); ``risk_units``: the MR terms of every (account, venue, underlying) unit."""
    ctx: Context = plan.context
    params, book = ctx.params, ctx.book
    mr_cols = list(MR_COLUMNS)
    unit_cols = ["account_id", "venue", "risk_unit", *mr_cols]
    units = {"margin": {c: "USD" for c in mr_cols}, "risk_units": {c: "USD" for c in mr_cols}}
    parts = [_unit_table(g, plan.legs, stats, params) for g in ctx.groups]
    if not parts:
        empty = standard_frame([], [], MODEL, "USD", [], [], []).assign(**{c: [] for c in mr_cols})
        return MarginResult(MODEL, {"margin": empty, "risk_units": pd.DataFrame(columns=unit_cols)},
                            {"model": MODEL, "n_rows": 0, "accounts": 0, "im_usd_total": 0.0, "mm_usd_total": 0.0},
                            units)
    unit_table = pd.concat(parts, ignore_index=True)
    acct = unit_table.groupby(["account_idx", "account_id", "venue"], sort=True, as_index=False)[mr_cols].sum()
    margin = standard_frame(acct["account_id"], acct["venue"], MODEL, "USD", acct["imr"], acct["mmr"],
                            _equity_usd(book, acct, params.venues))
    for c in mr_cols:
        margin[c] = acct[c].to_numpy()
    risk_units = unit_table.sort_values(["account_id", "venue", "risk_unit"], kind="stable")[unit_cols]
    summary = {
        "model": MODEL,
        "venues": list(params.venues),
        "n_rows": int(len(margin)),
        "n_risk_units": int(len(risk_units)),
        "accounts": int(margin["account_id"].nunique()),
        "im_usd_total": float(margin["im_usd"].sum()),
        "mm_usd_total": float(margin["mm_usd"].sum()),
    }
    return MarginResult(MODEL, {"margin": margin, "risk_units": risk_units.reset_index(drop=True)}, summary, units)


__all__ = ["NAME", "Context", "MR_COLUMNS", "Params", "load_params", "plan", "finalize", "coverage", "tiered", "unit_figures", "mr1_scenarios", "mr6_scenarios",
           "mr2_scenarios"]
