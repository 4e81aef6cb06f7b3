"""The house risk-based model: cross-venue portfolio margin (OCC STANS / Eurex Prisma / SPAN 2 spirit).

Per portfolio (an account across all venues, and each account×venue standalone):

    base      = max(ES_q(position P&L + collateral P&L), 0)      over the combined scenario set
    apc       = buffer_rate · base                                 anti-procyclicality buffer (EMIR Art. 28(1)(a))
    liquidity = Σ_u Y · σ_u · |D_u| · sqrt(|D_u| / ADV_u)          square-root impact, per underlying u
    floor     = floor_gross_rate · Σ_i |q_i · δ_i|                 gross delta notional of the positions
    IM        = max(base + apc + liquidity, floor);   MM = mm_factor · IM

All amounts USD. D_u is the portfolio's net delta notional (USD per unit relative
move) on underlying u, positions and coin collateral together; σ_u the EWMA
(λ = ``vol_lambda``) daily volatility and ADV_u the ``adv_days``-day average daily
traded value of u, both from the shipped market history at the history date.

The scenario set (unless the caller passes one) is filtered historical
simulation + Monte Carlo + named stress, joined with ``ScenarioSet.concat``.
The history date is the book's as-of date, clamped to the last date of the
shipped history (2024-12-31) when the book is later. The APC buffer is 25 % of
the base in calm markets and is run down linearly to 0 as the indicator coin's
short-run EWMA vol rises from its long-run level to ``apc_release_ratio`` times
it. Parameter rationale: docs/methodologies.md and jobs/params/house.toml.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import pandas as pd

from .. import marketdata
from ..backends import TailStats
from ..book import STABLECOINS, Book
from ..errors import ScenarioError
from ..pricing import NUMERAIRE_USD, PricingInputs, VolTerm, contract_values, pricing_inputs
from ..scenarios import ScenarioSet
from . import calls as _calls
from . import collateral as _coll
from . import params as _params
from .measures import check_levels, level_name, map_scenarios, spec_for
from .plan import Leg, MarginResult, Plan

NAME = "house"

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


def load_params(path: str | None = None) -> Params:
    """Params from a TOML file (strict keys and types), or the defaults when ``path`` is None."""
    return _params.load(Params, path)


# --------------------------------------------------------------------------- market inputs


def history_date(as_of) -> pd.Timestamp:
    """The date of the last daily bar the model may use at ``as_of``, clamped to the last shipped bar.

    A bar dated d closes at d+1 00:00 UTC, so it is usable when d + 1 day ≤ as_of
    (the rule of ``scenarios.historical``). A book dated after the shipped history
    (which ends 2024-12-31) uses that last bar.
    """
    last = marketdata.daily_bars("BTC").index.max()
    ts = (pd.Timestamp(np.datetime64(as_of, "s")) - pd.Timedelta(days=1)).floor("D")
    return min(ts, last)


@lru_cache(maxsize=64)
def _ewma_daily_vol(coin: str, date: pd.Timestamp, lam: float) -> float:
    close = marketdata.daily_bars(coin)["close"].loc[:date]
    r = np.log(close).diff().dropna()
    if len(r) < 2:
        raise KeyError(f"too little {coin} history before {date.date()}")
    return float(np.sqrt((r * r).ewm(alpha=1.0 - lam, adjust=False).mean().iloc[-1]))


@lru_cache(maxsize=64)
def _long_daily_vol(coin: str, date: pd.Timestamp, days: int) -> float:
    close = marketdata.daily_bars(coin)["close"].loc[date - pd.Timedelta(days=days) : date]
    r = np.log(close).diff().dropna()
    if len(r) < 2:
        raise KeyError(f"too little {coin} history before {date.date()}")
    return float(r.std(ddof=1))


def apc_state(date: pd.Timestamp, params: Params) -> dict:
    """The anti-procyclicality buffer rate at ``date``: {buffer_rate, release, vol_ratio, short_vol, long_vol}."""
    try:
        short = _ewma_daily_vol(params.apc_indicator, date, params.vol_lambda)
        long = _long_daily_vol(params.apc_indicator, date, params.apc_long_days)
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


def _generator(module, *names):
    for n in names:
        fn = getattr(module, n, None)
        if fn is not None:
            return fn
    raise ScenarioError(f"{module.__name__} has none of {names}")


def default_scenarios(book: Book, params: Params | None = None) -> ScenarioSet:
    """FHS + Monte Carlo + stress over the book's coins (underlyings and collateral, stablecoins aside).

    History is read as of ``history_date(book.as_of) + 1 day`` (the close of the last bar used).
    """
    params = params or Params()
    coins = sorted(
        (set(map(str, book.instruments.underlying)) | set(map(str, book.balances.asset))) - set(STABLECOINS)
    )
    if not coins:
        coins = ["BTC"]
    hist_as_of = history_date(book.as_of) + pd.Timedelta(days=1)
    try:
        from ..scenarios import historical, montecarlo, stress
    except ImportError as exc:
        raise ScenarioError(f"scenario generators unavailable ({exc}); pass a scenario file") from None
    h = params.horizon_days
    try:
        hist = _generator(historical, "generate", "historical_scenarios")(
            hist_as_of, coins=coins, lookback_days=params.lookback_days, horizon_days=h, ewma_lambda=params.ewma_lambda
        )
        parts = [hist]
        if params.mc_scenarios > 0:
            if hasattr(montecarlo, "generate"):
                mc = montecarlo.generate(
                    hist_as_of, n_scenarios=params.mc_scenarios, seed=params.mc_seed, dist=params.mc_dist,
                    horizon_days=h, coins=coins,
                )
            else:
                mc = montecarlo.monte_carlo_scenarios(
                    hist_as_of, n_scenarios=params.mc_scenarios, seed=params.mc_seed, distribution=params.mc_dist,
                    horizon_days=h, coins=coins,
                )
            parts.append(mc)
        st = _generator(stress, "generate", "named_stress")(coins=coins, horizon_days=h)
        if params.stress_names:
            keep = np.isin(np.asarray(st.scenario_id, dtype=str), list(params.stress_names))
            if not keep.any():
                raise ScenarioError(f"no stress scenario is named any of {list(params.stress_names)}")
            st = st.subset(np.flatnonzero(keep))
        parts.append(st)
        # the generators agree on horizon and vol-term parameters; align floats before concat
        parts = [replace(p, horizon_days=float(h), term=parts[0].term) for p in parts]
        return ScenarioSet.concat(parts, kind="house", source=" + ".join(f"{p.kind}({p.n_scenarios})" for p in parts))
    except (KeyError, ValueError) as exc:
        raise ScenarioError(f"cannot build the house scenario set: {exc}") from None


# --------------------------------------------------------------------------- plan / finalize


def plan(book: Book, params: Params | None = None, scenarios: ScenarioSet | None = None) -> Plan:
    """Legs ``account`` (cross-venue) and, if ``cross_venue``, ``account_venue`` (standalone)."""
    params = params or Params()
    date = history_date(book.as_of)
    if scenarios is None:
        scenarios = default_scenarios(book, params)
    coll = _coll.collateral_instruments(book)
    idx, sset = map_scenarios(book, scenarios, coll.assets)
    n_ins = len(book.instruments)
    pi = PricingInputs.concat([pricing_inputs(book, idx[:n_ins]), coll.pricing(idx[n_ins:])])
    spec = spec_for(sset, (params.confidence,), params.profit_factor)
    legs = {"account": Leg("account", pi, sset, "usd", _coll.portfolios_with_collateral(book, coll, "account"), spec)}
    if params.cross_venue:
        ports = _coll.portfolios_with_collateral(book, coll, "account_venue")
        legs["account_venue"] = Leg("account_venue", pi, sset, "usd", ports, spec)
    sig, adv, fb = liquidity_inputs(list(sset.underlyings), date, params)
    ctx = {
        "params": params,
        "book": book,
        "collateral": coll,
        "history_date": date,
        "apc": apc_state(date, params),
        "delta": delta_notional(pi, sset.term),
        "liq_sigma": sig,
        "liq_adv": adv,
        "liq_fallback": [u for u, f in zip(sset.underlyings, fb) if f],
    }
    return Plan(NAME, legs, ctx)


def requirement(leg: Leg, stats: TailStats, ctx: dict) -> dict[str, np.ndarray]:
    """Per portfolio of ``leg``: es, base, apc, liquidity, floor, im, mm (all [P] USD); vectorised."""
    params: Params = ctx["params"]
    ports = leg.portfolios
    P = len(ports)
    U = len(leg.scenarios.underlyings)
    n_book = len(ctx["book"].instruments)
    row_port = np.repeat(np.arange(P, dtype=np.int64), np.diff(ports.indptr))
    ins = ports.instrument_idx.astype(np.int64)
    exposure = ports.quantity * ctx["delta"][ins]  # [nnz] USD per unit relative move
    col = leg.pricing.underlying_idx[ins].astype(np.int64)
    D = np.bincount(row_port * U + col, weights=exposure, minlength=P * U).reshape(P, U)
    coeff = params.liquidity_coefficient * ctx["liq_sigma"] / np.sqrt(ctx["liq_adv"])  # [U]; 0 for stablecoins
    absD = np.abs(D)
    liquidity = (coeff[None, :] * absD * np.sqrt(absD)).sum(axis=1)
    gross = np.bincount(row_port, weights=np.abs(exposure) * (ins < n_book), minlength=P)
    floor = params.floor_gross_rate * gross
    es = stats.es[:, 0]
    base = np.maximum(es, 0.0)
    apc = ctx["apc"]["buffer_rate"] * base
    im = np.maximum(base + apc + liquidity, floor)
    return {
        "worst": stats.worst,
        "var": stats.var[:, 0],
        "es": es,
        "apc_buffer": apc,
        "liquidity_addon": liquidity,
        "floor": floor,
        "im": im,
        "mm": params.mm_factor * im,
    }


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """Tables ``margin`` (per account), ``calls`` and ``venue_margin`` (account×venue standalone); summary."""
    ctx = plan.context
    params: Params = ctx["params"]
    book: Book = ctx["book"]
    q = level_name(params.confidence)
    leg = plan.legs["account"]
    r = requirement(leg, stats["account"], ctx)
    eq, raw = _coll.equity(book, ctx["collateral"], params.collateral, "account")
    status, amount = _calls.classify(r["im"], r["mm"], eq, params.calls)
    A = book.n_accounts
    margin = pd.DataFrame(
        {
            "account_id": np.asarray(book.accounts, dtype=object),
            "model": NAME,
            "currency": "USD",
            "im": r["im"],
            "mm": r["mm"],
            "equity": eq,
            "excess": eq - r["im"],
            "status": status,
            "call_amount": amount,
            "cross_margin_benefit": np.zeros(A),
            "standalone_im": r["im"].copy(),
            "worst": r["worst"],
            f"var_{q}": r["var"],
            f"es_{q}": r["es"],
            "apc_buffer": r["apc_buffer"],
            "liquidity_addon": r["liquidity_addon"],
            "floor": r["floor"],
            "collateral_value": raw,
        }
    )
    tables = {"margin": margin}
    summary = {
        "model": NAME,
        "accounts": int(A),
        "currency": "USD",
        "confidence": params.confidence,
        "horizon_days": float(leg.scenarios.horizon_days),
        "history_date": str(ctx["history_date"].date()),
        "total_im": float(r["im"].sum()),
        "total_mm": float(r["mm"].sum()),
        "total_equity": float(eq.sum()),
        "total_excess": float((eq - r["im"]).sum()),
        "total_liquidity_addon": float(r["liquidity_addon"].sum()),
        "total_apc_buffer": float(r["apc_buffer"].sum()),
        "accounts_at_floor": int(np.sum((r["floor"] > 0) & (r["im"] == r["floor"]))),
        "calls": _calls.status_counts(status),
        "total_call_amount": float(amount.sum()),
        "apc": ctx["apc"],
        "liquidity_fallback_underlyings": ctx["liq_fallback"],
        "scenarios": {k: v for k, v in leg.scenarios.describe().items() if k != "metadata"},
        "scenario_parts": [
            {k: part.get(k) for k in ("kind", "n_scenarios", "seed", "source")}
            for part in leg.scenarios.metadata.get("parts", [])
        ],
    }
    if "account_venue" in plan.legs:
        vleg = plan.legs["account_venue"]
        rv = requirement(vleg, stats["account_venue"], ctx)
        veq, vraw = _coll.equity(book, ctx["collateral"], params.collateral, "account_venue")
        acct = vleg.portfolios.account_idx.astype(np.int64)
        standalone = np.bincount(acct, weights=rv["im"], minlength=A)
        margin["standalone_im"] = standalone
        margin["cross_margin_benefit"] = standalone - r["im"]
        venue = pd.DataFrame(
            {
                "account_id": np.asarray(vleg.portfolios.key["account_id"], dtype=object),
                "venue": np.asarray(vleg.portfolios.key["venue"], dtype=object),
                "model": NAME,
                "currency": "USD",
                "im": rv["im"],
                "mm": rv["mm"],
                "equity": veq,
                "excess": veq - rv["im"],
                f"es_{q}": rv["es"],
                "apc_buffer": rv["apc_buffer"],
                "liquidity_addon": rv["liquidity_addon"],
                "floor": rv["floor"],
                "collateral_value": vraw,
            }
        )
        tables["venue_margin"] = venue
        by_venue = venue.groupby("venue", sort=True)["im"].sum()
        summary["im_by_venue_standalone"] = {str(k): float(v) for k, v in by_venue.items()}
        summary["total_standalone_im"] = float(standalone.sum())
        summary["cross_margin_benefit"] = float((standalone - r["im"]).sum())
    tables["calls"] = _calls.calls_table(margin)
    return MarginResult(NAME, tables, summary)


__all__ = [
    "Params",
    "load_params",
    "plan",
    "finalize",
    "default_scenarios",
    "history_date",
    "apc_state",
    "delta_notional",
    "requirement",
]
