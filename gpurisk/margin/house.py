"""The house risk-based model: cross-venue portfolio margin (OCC STANS / Eurex Prisma / SPAN 2 spirit).

Per portfolio (an account across all venues, and each account×venue standalone),
with L the position P&L plus the collateral P&L in a scenario:

    base      = max(ES_q(L | FHS), ES_q(L | Monte Carlo), stress_factor · worst(L | stress), 0)
    apc       = buffer_rate · base                                 anti-procyclicality buffer (EMIR Art. 28(1)(a))
    liquidity = Σ_u Y · σ_u · |D_u| · sqrt(|D_u| / ADV_u)          square-root impact, per underlying u
    floor     = floor_gross_rate · Σ_i |q_i · δ_i|                 gross delta notional of the positions
    IM        = max(base + apc + liquidity, floor);   MM = mm_factor · IM

Each scenario component is its own leg (same CSR portfolios, its own scenario
set), so a component's weight in the IM never depends on its sample size: more
Monte Carlo draws only sharpen ES_q(MC). A caller's scenario set (``--scenarios
FILE``, a job's ``scenarios``) is one component, ``user``, measured by ES_q; a
mapping ``{"historical"|"montecarlo"|"user": set, "stress": set}`` gives the
components explicitly.

All amounts USD. D_u is the portfolio's net delta notional (USD per unit relative
move) on underlying u from its positions (collateral is left out: its liquidation
cost is the haircut, ``collateral.py``); σ_u the EWMA (λ = ``vol_lambda``) daily
volatility and ADV_u the ``adv_days``-day average daily traded value of u, both
from the shipped market history at the history date.

The history date is the book's as-of date, clamped (with a logged warning) to the
last date of the shipped history (2024-12-31) when the book is later. The APC
buffer is 25 % of the base in calm markets and is run down linearly to 0 as the
indicator coin's short-run EWMA vol rises from its long-run level to
``apc_release_ratio`` times it. Parameter rationale: docs/methodologies.md and
jobs/params/house.toml.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import pandas as pd

from .. import marketdata
from ..book import STABLECOINS, Book
from ..errors import ScenarioError
from ..pricing import NUMERAIRE_USD, PricingInputs, VolTerm, contract_values, pricing_inputs
from ..scenarios import ScenarioSet
from ..tail import TailStats, check_levels, level_name, spec_for
from . import calls as _calls
from . import collateral as _coll
from . import params as _params
from .common import compact, map_scenarios
from .components import (COMPONENTS, ES_COMPONENTS, USER, ComponentParams, caller_components, default_components,
                         history_date, history_lag_days)
from .plan import ALL_VENUES, Leg, MarginResult, Plan, standard_frame

NAME = "house"

log = logging.getLogger(__name__)

#: portfolio groupings: the cross-venue account, and each account×venue standalone
GROUPINGS = ("account", "account_venue")

#: relative price bump of the finite-difference delta
DELTA_BUMP = 1e-4


@dataclass(frozen=True)
class Params:
    """House-model parameters; every default is argued in docs/methodologies.md."""

    confidence: float = 0.99  # ES level (PFMI 6 / EMIR: ≥ 99 %)
    horizon_days: float = 2.0  # margin period of risk, calendar days (24/7 market)
    lookback_days: int = 1825  # FHS history: 5 years (2020 COVID, 2021 May, 2022 LUNA/FTX)
    ewma_lambda: float = 0.97  # FHS volatility filter (LCH PAIRS)
    mc_scenarios: int = 10000  # Monte Carlo draws
    mc_seed: int = 0
    mc_dist: str = "student_t"  # fat tails
    stress_names: tuple[str, ...] = ()  # empty = every named stress scenario
    stress_factor: float = 0.33  # share of the worst stress loss that counts (SPAN's extreme moves: 33 %)
    profit_factor: float = 1.0  # full credit for scenario profits inside a portfolio
    mm_factor: float = 0.8  # MM = 0.8·IM (Deribit 0.8; OKX IMR = 1.3·MMR)
    apc_buffer: float = 0.25  # EMIR Art. 28(1)(a): ≥ 25 % buffer, released in stress
    apc_release_ratio: float = 1.5  # buffer fully released when short vol ≥ 1.5 × long vol
    apc_indicator: str = "BTC"
    apc_long_days: int = 3650  # long-run vol window (10 years, as in Art. 28(1)(c))
    vol_lambda: float = 0.94  # RiskMetrics daily EWMA for σ_u and the APC indicator
    liquidity_coefficient: float = 1.0  # Y of the square-root impact law
    adv_days: int = 30
    fallback_adv_usd: float = 10e6  # ADV of a coin without shipped history (conservative)
    fallback_daily_vol: float = 0.10
    floor_gross_rate: float = 0.01  # 1 % of gross delta notional (legacy Deribit offsetting futures)
    cross_venue: bool = True  # also margin every account×venue standalone
    calls: _calls.CallParams = field(default_factory=_calls.CallParams)
    collateral: _coll.CollateralParams = field(default_factory=_coll.CollateralParams)

    def __post_init__(self):
        check_levels((self.confidence,), "confidence")
        checks = [
            (self.horizon_days > 0, "horizon_days must be > 0"),
            (self.lookback_days >= 365, "lookback_days must be ≥ 365 (EMIR: at least 12 months)"),
            (0 < self.ewma_lambda < 1, "ewma_lambda must lie in (0, 1)"),
            (0 < self.vol_lambda < 1, "vol_lambda must lie in (0, 1)"),
            (self.mc_scenarios >= 0, "mc_scenarios must be ≥ 0"),
            (0 <= self.stress_factor <= 1, "stress_factor must lie in [0, 1]"),
            (self.mc_dist in ("student_t", "gaussian"), "mc_dist must be student_t or gaussian"),
            (0 <= self.profit_factor <= 1, "profit_factor must lie in [0, 1]"),
            (0 < self.mm_factor <= 1, "mm_factor must lie in (0, 1]"),
            (self.apc_buffer >= 0, "apc_buffer must be ≥ 0"),
            (self.apc_release_ratio > 1, "apc_release_ratio must be > 1"),
            (self.apc_long_days >= 365, "apc_long_days must be ≥ 365"),
            (self.liquidity_coefficient >= 0, "liquidity_coefficient must be ≥ 0"),
            (self.adv_days >= 1, "adv_days must be ≥ 1"),
            (self.fallback_adv_usd > 0, "fallback_adv_usd must be > 0"),
            (self.fallback_daily_vol >= 0, "fallback_daily_vol must be ≥ 0"),
            (self.floor_gross_rate >= 0, "floor_gross_rate must be ≥ 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def components(self) -> ComponentParams:
        """The parameters of the default scenario components."""
        return ComponentParams(self.horizon_days, self.lookback_days, self.ewma_lambda, self.mc_scenarios,
                               self.mc_seed, self.mc_dist, self.stress_names)


def load_params(path: str | None = None) -> Params:
    """Params from a TOML file (strict keys and types), or the defaults when ``path`` is None."""
    return _params.load(Params, path)


# --------------------------------------------------------------------------- market inputs


@lru_cache(maxsize=64)
def _ewma_daily_vol(coin: str, date: pd.Timestamp, lam: float) -> float:
    close = marketdata.daily_bars(coin)["close"].loc[:date]
    r = np.log(close).diff().dropna()
    if len(r) < 2:
        raise KeyError(f"too little {coin} history before {date.date()}")
    return float(np.sqrt((r * r).ewm(alpha=1.0 - lam, adjust=False).mean().iloc[-1]))


@lru_cache(maxsize=64)
def _long_daily_vol(coin: str, date: pd.Timestamp, days: int) -> tuple[float, int]:
    """(daily vol over up to ``days`` days to ``date``, days of history actually used)."""
    close = marketdata.daily_bars(coin)["close"].loc[date - pd.Timedelta(days=days) : date]
    r = np.log(close).diff().dropna()
    if len(r) < 2:
        raise KeyError(f"too little {coin} history before {date.date()}")
    used = int((close.index[-1] - close.index[0]).days)
    if used < days - 1:  # a standing property of the history, reported in the summary (apc.long_window_days)
        log.info(
            "anti-procyclicality: %s history gives only %d of the %d days asked for before %s; "
            "the long-run vol uses what there is", coin, used, days, date.date(),
        )
    return float(r.std(ddof=1)), used


def apc_state(date: pd.Timestamp, params: Params) -> dict:
    """The anti-procyclicality buffer rate at ``date``: {buffer_rate, release, vol_ratio, short_vol, long_vol}."""
    try:
        short = _ewma_daily_vol(params.apc_indicator, date, params.vol_lambda)
        long, long_days = _long_daily_vol(params.apc_indicator, date, params.apc_long_days)
    except KeyError as exc:
        raise ScenarioError(f"anti-procyclicality indicator: {exc.args[0] if exc.args else exc}") from None
    ratio = short / long
    release = float(np.clip((ratio - 1.0) / (params.apc_release_ratio - 1.0), 0.0, 1.0))
    return {
        "buffer_rate": params.apc_buffer * (1.0 - release),
        "release": release,
        "vol_ratio": ratio,
        "short_daily_vol": short,
        "long_daily_vol": long,
        "long_window_days": long_days,  # may be shorter than apc_long_days where the history is
        "indicator": params.apc_indicator,
    }


def liquidity_inputs(names, date: pd.Timestamp, params: Params):
    """(σ daily [U], ADV USD [U], used_fallback [U] bool) per underlying name; 0/inf for stablecoins."""
    sig = np.zeros(len(names))
    adv = np.full(len(names), np.inf)
    fb = np.zeros(len(names), bool)
    for j, u in enumerate(names):  # distinct underlyings only
        if u in STABLECOINS:
            continue
        try:
            sig[j] = _ewma_daily_vol(u, date, params.vol_lambda)
            adv[j] = marketdata.average_daily_volume_usd(u, date, params.adv_days)
        except KeyError:
            sig[j], adv[j], fb[j] = params.fallback_daily_vol, params.fallback_adv_usd, True
    return sig, adv, fb


def delta_notional(pi: PricingInputs, term: VolTerm) -> np.ndarray:
    """[I] USD value change per unit relative move of the underlying, per contract (central difference)."""
    I = len(pi)
    if I == 0:
        return np.zeros(0)
    shock = np.tile(np.array([DELTA_BUMP, -DELTA_BUMP]), (I, 1))
    _, scen = contract_values(np, pi, shock, np.zeros((I, 2)), np.zeros(2, np.int8), 0.0, term, NUMERAIRE_USD)
    return (scen[:, 0] - scen[:, 1]) / (2.0 * DELTA_BUMP)


def scenario_components(book: Book, params: Params, scenarios=None) -> dict[str, ScenarioSet]:
    """The components of a run: the defaults (``components.default_components``) when ``scenarios``
    is None, else the caller's (``components.caller_components``: one set is ``user``, measured by ES_q)."""
    if scenarios is None:
        return default_components(book, params.components())
    return caller_components(scenarios)


# --------------------------------------------------------------------------- plan / finalize


@dataclass(frozen=True)
class Context:
    """What ``requirement`` and ``finalize`` need, fixed when the plan is made.

    The legs' instrument rows are the K held instruments then the C collateral assets (``common.compact``):
    delta [K + C] USD per unit relative move per contract; und_code [K + C] underlying column of each;
    n_positions = K; liq_sigma, liq_adv [U] per underlying.
    """

    params: Params
    book: Book
    collateral: _coll.CollateralInstruments
    components: tuple[str, ...]
    groupings: tuple[str, ...]
    history_date: pd.Timestamp
    history_lag_days: int
    apc: dict
    delta: np.ndarray
    und_code: np.ndarray
    n_positions: int
    n_underlyings: int
    liq_sigma: np.ndarray
    liq_adv: np.ndarray
    liq_fallback: tuple[str, ...]


def plan(book: Book, params: Params | None = None, scenarios=None) -> Plan:
    """Legs ``<grouping>/<component>``: groupings ``account`` (cross-venue) and, if ``cross_venue``,
    ``account_venue`` (standalone); components as ``scenario_components``.

    The legs of one component share one revaluation; the legs of one grouping share one CSR.
    """
    params = params or Params()
    date = history_date(book.as_of)
    lag = history_lag_days(book.as_of)
    if lag > 0:
        log.warning(
            "house: book as-of %s is after the market history; using history to %s (%d days stale)",
            pd.Timestamp(np.datetime64(book.as_of, "s")), date.date(), lag,
        )
    comps = scenario_components(book, params, scenarios)
    coll = _coll.collateral_instruments(book)
    n_ins = len(book.instruments)
    groupings = GROUPINGS if params.cross_venue else GROUPINGS[:1]
    # rows [held instruments, then collateral]: P is sized to what the portfolios hold
    keep, ports = compact(n_ins + len(coll), {g: _coll.portfolios_with_collateral(book, coll, g) for g in groupings})
    keep_ins = keep[keep < n_ins]
    legs = {}
    for name, comp in comps.items():  # at most four components
        idx, sset = map_scenarios(book, comp, coll.assets)
        pi = PricingInputs.concat([pricing_inputs(book, idx[:n_ins]), coll.pricing(idx[n_ins:])]).take(keep)
        spec = spec_for(sset, (params.confidence,), params.profit_factor)
        for g in groupings:
            legs[f"{g}/{name}"] = Leg(f"{g}/{name}", pi, sset, "usd", ports[g], spec)
    # liquidity inputs over the held underlyings, whatever the scenario sets cover
    names = np.concatenate([np.asarray(book.instruments.underlying[keep_ins], dtype=object).astype(str),
                            np.asarray(coll.assets, dtype=object).astype(str)])  # [K + C], as the rows
    code, und = pd.factorize(pd.Series(names, dtype=object), sort=True)
    k = len(keep_ins)
    pi0 = PricingInputs.concat([pricing_inputs(book, np.zeros(n_ins, np.int32)).take(keep_ins),
                                coll.pricing(np.zeros(len(coll), np.int32))])
    pi0 = replace(pi0, underlying_idx=code.astype(np.int32))
    sig, adv, fb = liquidity_inputs(list(und), date, params)
    held = set(map(str, book.instruments.underlying[keep_ins]))
    ctx = Context(
        params=params, book=book, collateral=coll, components=tuple(comps), groupings=tuple(groupings),
        history_date=date, history_lag_days=lag, apc=apc_state(date, params),
        delta=delta_notional(pi0, next(iter(comps.values())).term), und_code=code.astype(np.int64),
        n_positions=k, n_underlyings=len(und), liq_sigma=sig, liq_adv=adv,
        # only position underlyings count: collateral is not in the add-on's delta
        liq_fallback=tuple(str(u) for u, f in zip(und, fb) if f and u in held),
    )
    return Plan(NAME, legs, ctx)


def requirement(plan: Plan, stats: dict[str, TailStats], grouping: str = "account") -> dict[str, np.ndarray]:
    """Per portfolio of ``grouping``: the component measures, base, apc, liquidity, floor, im, mm ([P] USD).

    Keys: ``es_<component>`` and, for ``stress``, ``stress_worst`` and ``stress_charge``, for every
    component in ``COMPONENTS`` (NaN for a component the run did not have), ``es`` (the largest ES
    component; NaN if none ran), ``worst`` (over every scenario of every component), ``base``,
    ``base_component`` (the binding term, ``none`` when base is 0), ``apc_buffer``,
    ``liquidity_addon``, ``floor``, ``im``, ``mm``. Vectorised over portfolios.
    """
    ctx: Context = plan.context
    params = ctx.params
    comps = ctx.components
    ports = plan.legs[f"{grouping}/{comps[0]}"].portfolios
    P = len(ports)
    nan = np.full(P, np.nan)
    out: dict[str, np.ndarray] = {f"es_{c}": nan for c in ES_COMPONENTS}
    out.update(stress_worst=nan, stress_charge=nan)
    charges, worst = [], np.full(P, -np.inf)
    for c in comps:  # at most four components
        st = stats[f"{grouping}/{c}"]
        worst = np.maximum(worst, st.worst)
        if c == "stress":
            out["stress_worst"] = st.worst
            out["stress_charge"] = params.stress_factor * st.worst
            charges.append(out["stress_charge"])
        else:
            out[f"es_{c}"] = st.es[:, 0]
            charges.append(st.es[:, 0])
    es_run = [out[f"es_{c}"] for c in comps if c != "stress"]
    out["es"] = np.max(np.vstack(es_run), axis=0) if es_run else nan
    C = np.vstack(charges)  # [components, P]
    top = C.max(axis=0)
    base = np.maximum(top, 0.0)
    out["worst"] = worst
    out["base"] = base
    out["base_component"] = np.where(top > 0.0, np.asarray(comps, dtype=object)[C.argmax(axis=0)], "none")

    # liquidity add-on and floor: positions only (collateral rows are the last C instruments)
    n_book = ctx.n_positions
    U = ctx.n_underlyings
    row_port = np.repeat(np.arange(P, dtype=np.int64), np.diff(ports.indptr))
    ins = ports.instrument_idx.astype(np.int64)
    exposure = ports.quantity * ctx.delta[ins] * (ins < n_book)  # [nnz] USD per unit relative move
    col = ctx.und_code[ins]
    D = np.bincount(row_port * U + col, weights=exposure, minlength=P * U).reshape(P, U)
    coeff = params.liquidity_coefficient * ctx.liq_sigma / np.sqrt(ctx.liq_adv)  # [U]; 0 for stablecoins
    absD = np.abs(D)
    liquidity = (coeff[None, :] * absD * np.sqrt(absD)).sum(axis=1)
    floor = params.floor_gross_rate * np.bincount(row_port, weights=np.abs(exposure), minlength=P)
    apc = ctx.apc["buffer_rate"] * base
    im = np.maximum(base + apc + liquidity, floor)
    out.update(apc_buffer=apc, liquidity_addon=liquidity, floor=floor, im=im, mm=params.mm_factor * im)
    return out


def _measure_columns(r: dict, q: str) -> dict:
    """The component columns of a margin table, in a fixed order whatever components ran (NaN if absent)."""
    cols = {"worst": r["worst"], f"es_{q}": r["es"]}
    for c in ES_COMPONENTS:
        cols[f"es_{q}_{c}"] = r[f"es_{c}"]
    cols["stress_worst"] = r["stress_worst"]
    cols["stress_charge"] = r["stress_charge"]
    cols["base"] = r["base"]
    cols["base_component"] = r["base_component"]
    cols["apc_buffer"] = r["apc_buffer"]
    cols["liquidity_addon"] = r["liquidity_addon"]
    cols["floor"] = r["floor"]
    return cols


def coverage(plan: Plan) -> pd.DataFrame:
    """Every account of the book, cross-venue (``venue`` = ``ALL``); ``venue_margin`` is standalone detail."""
    return pd.DataFrame({"account_id": np.asarray(plan.context.book.accounts, dtype=object), "venue": ALL_VENUES})


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """Tables ``margin`` (per account, venue ``ALL``), ``calls`` and ``venue_margin`` (account×venue
    standalone), all USD, with the standard columns; summary."""
    ctx: Context = plan.context
    params, book, comps = ctx.params, ctx.book, ctx.components
    q = level_name(params.confidence)
    r = requirement(plan, stats, "account")
    eq, raw = _coll.equity(book, ctx.collateral, params.collateral, "account")
    A = book.n_accounts
    margin = standard_frame(book.accounts, ALL_VENUES, NAME, "USD", r["im"], r["mm"], eq, call_params=params.calls)
    margin["cross_margin_benefit"] = np.zeros(A)
    margin["standalone_im"] = r["im"].copy()
    for k, v in _measure_columns(r, q).items():
        margin[k] = v
    margin["collateral_value"] = raw
    tables = {"margin": margin}
    legs = {c: plan.legs[f"account/{c}"].scenarios for c in comps}
    summary = {
        "model": NAME,
        "accounts": int(A),
        "currency": "USD",
        "confidence": params.confidence,
        "components": list(comps),
        "horizon_days": {c: float(s.horizon_days) for c, s in legs.items()},
        "history_date": str(ctx.history_date.date()),
        "history_lag_days": int(ctx.history_lag_days),
        "stress_factor": params.stress_factor,
        "total_im": float(r["im"].sum()),
        "total_mm": float(r["mm"].sum()),
        "total_equity": float(eq.sum()),
        "total_excess": float((eq - r["im"]).sum()),
        "total_liquidity_addon": float(r["liquidity_addon"].sum()),
        "total_apc_buffer": float(r["apc_buffer"].sum()),
        "accounts_at_floor": int(np.sum((r["floor"] > 0) & (r["im"] == r["floor"]))),
        "base_component": {k: int(np.sum(r["base_component"] == k)) for k in list(comps) + ["none"]},
        "calls": _calls.status_counts(margin["status"]),
        "total_call_amount": float(margin["call_amount_usd"].sum()),
        "apc": ctx.apc,
        "liquidity_fallback_underlyings": list(ctx.liq_fallback),
        "scenarios": {c: {k: v for k, v in s.describe().items() if k != "metadata"} for c, s in legs.items()},
    }
    if "account_venue" in ctx.groupings:
        rv = requirement(plan, stats, "account_venue")
        vports = plan.legs[f"account_venue/{comps[0]}"].portfolios
        veq, vraw = _coll.equity(book, ctx.collateral, params.collateral, "account_venue")
        acct = vports.account_idx.astype(np.int64)
        standalone = np.bincount(acct, weights=rv["im"], minlength=A)
        margin["standalone_im"] = standalone
        margin["cross_margin_benefit"] = standalone - r["im"]
        venue = standard_frame(vports.key["account_id"], vports.key["venue"], NAME, "USD", rv["im"], rv["mm"], veq,
                               call_params=params.calls)
        for k, v in _measure_columns(rv, q).items():
            venue[k] = v
        venue["collateral_value"] = vraw
        tables["venue_margin"] = venue
        by_venue = venue.groupby("venue", sort=True)["im"].sum()
        summary["im_by_venue_standalone"] = {str(k): float(v) for k, v in by_venue.items()}
        summary["total_standalone_im"] = float(standalone.sum())
        summary["cross_margin_benefit"] = float((standalone - r["im"]).sum())
    tables["calls"] = _calls.calls_table(margin)
    usd = {c: "USD" for c in ["cross_margin_benefit", "standalone_im", "worst", f"es_{q}", "stress_worst",
                              "stress_charge", "base", "apc_buffer", "liquidity_addon", "floor", "collateral_value"]
           + [f"es_{q}_{c}" for c in ES_COMPONENTS]}
    units = {"margin": usd, "venue_margin": {k: v for k, v in usd.items() if k not in ("cross_margin_benefit",
                                                                                       "standalone_im")},
             "calls": {"call_amount_usd": "USD", "im_usd": "USD", "mm_usd": "USD", "equity_usd": "USD"}}
    return MarginResult(NAME, tables, summary, units)


__all__ = [
    "NAME",
    "Params",
    "Context",
    "load_params",
    "plan",
    "finalize",
    "coverage",
    "scenario_components",
    "apc_state",
    "delta_notional",
    "requirement",
]
