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

log = logging.getLogger(__name__)

#: the default scenario components, in leg order
COMPONENTS = ("historical", "montecarlo", "stress")
#: the component a caller's single scenario set becomes
USER = "user"
#: components measured by ES_q (the rest, ``stress``, by stress_factor × worst loss)
ES_COMPONENTS = ("historical", "montecarlo", USER)
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


def load_params(path: str | None = None) -> Params:
    """Params from a TOML file (strict keys and types), or the defaults when ``path`` is None."""
    return _params.load(Params, path)


# --------------------------------------------------------------------------- market inputs


def history_date(as_of) -> pd.Timestamp:
    """The date of the last daily bar the model may use at ``as_of``, clamped to the last shipped bar.

    A bar dated d closes at d+1 00:00 UTC, so it is usable when d + 1 day ≤ as_of
    (the rule of ``scenarios.historical``). A book dated after the shipped history
    (which ends 2024-12-31) uses that last bar; ``history_lag_days`` says by how much.
    """
    last = marketdata.daily_bars("BTC").index.max()
    return min(_usable_bar(as_of), last)


def _usable_bar(as_of) -> pd.Timestamp:
    return (pd.Timestamp(np.datetime64(as_of, "s")) - pd.Timedelta(days=1)).floor("D")


def history_lag_days(as_of) -> int:
    """Days between the bar the as-of time could use and the bar the model uses (0 unless clamped)."""
    return int((_usable_bar(as_of) - history_date(as_of)).days)


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
    if used < days - 1:
        log.warning(
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


def _generator(module, *names):
    for n in names:
        fn = getattr(module, n, None)
        if fn is not None:
            return fn
    raise ScenarioError(f"{module.__name__} has none of {names}")


def _book_coins(book: Book) -> list[str]:
    coins = sorted(
        (set(map(str, book.instruments.underlying)) | set(map(str, book.balances.asset))) - set(STABLECOINS)
    )
    return coins or ["BTC"]


def default_components(book: Book, params: Params | None = None) -> dict[str, ScenarioSet]:
    """{historical, montecarlo (if ``mc_scenarios`` > 0), stress} over the book's coins (stablecoins aside).

    History is read as of ``history_date(book.as_of) + 1 day`` (the close of the last bar used).
    Every component has the model's horizon.
    """
    params = params or Params()
    coins = _book_coins(book)
    hist_as_of = history_date(book.as_of) + pd.Timedelta(days=1)
    try:
        from ..scenarios import historical, montecarlo, stress
    except ImportError as exc:
        raise ScenarioError(f"scenario generators unavailable ({exc}); pass a scenario file") from None
    h = params.horizon_days
    try:
        parts = {}
        parts["historical"] = _generator(historical, "generate", "historical_scenarios")(
            hist_as_of, coins=coins, lookback_days=params.lookback_days, horizon_days=h, ewma_lambda=params.ewma_lambda
        )
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
            parts["montecarlo"] = mc
        st = _generator(stress, "generate", "named_stress")(coins=coins, horizon_days=h)
        if params.stress_names:
            keep = np.isin(np.asarray(st.scenario_id, dtype=str), list(params.stress_names))
            if not keep.any():
                raise ScenarioError(f"no stress scenario is named any of {list(params.stress_names)}")
            st = st.subset(np.flatnonzero(keep))
        parts["stress"] = st
    except (KeyError, ValueError) as exc:
        raise ScenarioError(f"cannot build the house scenario set: {exc}") from None
    # the generators agree on horizon and vol-term parameters; align the floats
    term = parts["historical"].term
    return {k: replace(v, horizon_days=float(h), term=term) for k, v in parts.items()}


def default_scenarios(book: Book, params: Params | None = None) -> ScenarioSet:
    """The default components joined into one set (``ScenarioSet.concat``), for models that pool them.

    The house model itself never pools them: it measures each component on its own leg.
    """
    parts = list(default_components(book, params).values())
    try:
        return ScenarioSet.concat(parts, kind="house", source=" + ".join(f"{p.kind}({p.n_scenarios})" for p in parts))
    except ValueError as exc:
        raise ScenarioError(f"cannot build the house scenario set: {exc}") from None


def scenario_components(scenarios) -> dict[str, ScenarioSet]:
    """A caller's scenarios as components: one ScenarioSet is ``{"user": set}`` (``{"stress": set}`` when its
    kind is ``stress``, so a stress-only run is charged stress_factor × worst loss like the default); a
    mapping is checked.

    Mapping keys are ``historical``, ``montecarlo``, ``user`` (measured by ES_q) and
    ``stress`` (measured by stress_factor × worst loss); at least one, each a ScenarioSet.
    """
    if isinstance(scenarios, ScenarioSet):
        return {"stress" if scenarios.kind == "stress" else USER: scenarios}
    if not isinstance(scenarios, Mapping):
        raise ScenarioError(
            f"house scenarios must be a ScenarioSet or a mapping of components, got {type(scenarios).__name__}"
        )
    allowed = ES_COMPONENTS + ("stress",)
    bad = [str(k) for k in scenarios if k not in allowed]
    if bad or not scenarios:
        raise ScenarioError(f"house scenario components must be some of {list(allowed)}, got {list(scenarios)}")
    for k, v in scenarios.items():
        if not isinstance(v, ScenarioSet):
            raise ScenarioError(f"house scenario component {k!r} is a {type(v).__name__}, not a ScenarioSet")
    return {k: scenarios[k] for k in allowed if k in scenarios}


# --------------------------------------------------------------------------- plan / finalize


def plan(book: Book, params: Params | None = None, scenarios=None) -> Plan:
    """Legs ``<grouping>/<component>``: groupings ``account`` (cross-venue) and, if ``cross_venue``,
    ``account_venue`` (standalone); components as ``default_components`` or ``scenario_components``.

    The legs of one component share one revaluation; the legs of one grouping share one CSR.
    """
    params = params or Params()
    date = history_date(book.as_of)
    lag = history_lag_days(book.as_of)
    if lag > 0:
        log.warning(
            "house: book as-of %s is after the shipped market history; using history to %s (%d days stale)",
            pd.Timestamp(np.datetime64(book.as_of, "s")), date.date(), lag,
        )
    comps = default_components(book, params) if scenarios is None else scenario_components(scenarios)
    coll = _coll.collateral_instruments(book)
    n_ins = len(book.instruments)
    groupings = GROUPINGS if params.cross_venue else GROUPINGS[:1]
    ports = {g: _coll.portfolios_with_collateral(book, coll, g) for g in groupings}
    legs = {}
    for name, comp in comps.items():  # at most four components
        idx, sset = map_scenarios(book, comp, coll.assets)
        pi = PricingInputs.concat([pricing_inputs(book, idx[:n_ins]), coll.pricing(idx[n_ins:])])
        spec = spec_for(sset, (params.confidence,), params.profit_factor)
        for g in groupings:
            legs[f"{g}/{name}"] = Leg(f"{g}/{name}", pi, sset, "usd", ports[g], spec)
    # liquidity inputs over the book's own underlyings, whatever the scenario sets cover
    names = np.concatenate([np.asarray(book.instruments.underlying, dtype=object).astype(str),
                            np.asarray(coll.assets, dtype=object).astype(str)])
    code, und = pd.factorize(pd.Series(names, dtype=object), sort=True)
    pi0 = PricingInputs.concat([pricing_inputs(book, code[:n_ins]), coll.pricing(code[n_ins:])])
    sig, adv, fb = liquidity_inputs(list(und), date, params)
    ctx = {
        "params": params,
        "book": book,
        "collateral": coll,
        "components": list(comps),
        "groupings": list(groupings),
        "history_date": date,
        "history_lag_days": lag,
        "apc": apc_state(date, params),
        "delta": delta_notional(pi0, next(iter(comps.values())).term),
        "und_code": code.astype(np.int64),
        "n_underlyings": len(und),
        "liq_sigma": sig,
        "liq_adv": adv,
        # only position underlyings count: collateral is not in the add-on's delta
        "liq_fallback": [str(u) for u, f in zip(und, fb) if f and u in set(map(str, book.instruments.underlying))],
    }
    return Plan(NAME, legs, ctx)


def requirement(plan: Plan, stats: dict[str, TailStats], grouping: str = "account") -> dict[str, np.ndarray]:
    """Per portfolio of ``grouping``: the component measures, base, apc, liquidity, floor, im, mm ([P] USD).

    Keys: ``es_<component>`` per ES component, ``stress_worst`` and ``stress_charge``
    with a stress component, ``es`` (the largest ES component, if any), ``worst`` (over
    every scenario of every component), ``base``, ``base_component`` (the binding
    term, ``none`` when base is 0), ``apc_buffer``, ``liquidity_addon``, ``floor``,
    ``im``, ``mm``. Vectorised over portfolios.
    """
    ctx = plan.context
    params: Params = ctx["params"]
    comps = ctx["components"]
    ports = plan.legs[f"{grouping}/{comps[0]}"].portfolios
    P = len(ports)
    out: dict[str, np.ndarray] = {}
    charges, worst = [], np.full(P, -np.inf)
    es_cols = []
    for c in comps:  # at most four components
        st = stats[f"{grouping}/{c}"]
        worst = np.maximum(worst, st.worst)
        if c == "stress":
            out["stress_worst"] = st.worst
            out["stress_charge"] = params.stress_factor * st.worst
            charges.append(out["stress_charge"])
        else:
            out[f"es_{c}"] = st.es[:, 0]
            es_cols.append(st.es[:, 0])
            charges.append(st.es[:, 0])
    if es_cols:
        out["es"] = np.max(np.vstack(es_cols), axis=0)
    C = np.vstack(charges)  # [components, P]
    top = C.max(axis=0)
    base = np.maximum(top, 0.0)
    out["worst"] = worst
    out["base"] = base
    out["base_component"] = np.where(top > 0.0, np.asarray(comps, dtype=object)[C.argmax(axis=0)], "none")

    # liquidity add-on and floor: positions only (collateral rows are the last C instruments)
    n_book = len(ctx["book"].instruments)
    U = ctx["n_underlyings"]
    row_port = np.repeat(np.arange(P, dtype=np.int64), np.diff(ports.indptr))
    ins = ports.instrument_idx.astype(np.int64)
    exposure = ports.quantity * ctx["delta"][ins] * (ins < n_book)  # [nnz] USD per unit relative move
    col = ctx["und_code"][ins]
    D = np.bincount(row_port * U + col, weights=exposure, minlength=P * U).reshape(P, U)
    coeff = params.liquidity_coefficient * ctx["liq_sigma"] / np.sqrt(ctx["liq_adv"])  # [U]; 0 for stablecoins
    absD = np.abs(D)
    liquidity = (coeff[None, :] * absD * np.sqrt(absD)).sum(axis=1)
    floor = params.floor_gross_rate * np.bincount(row_port, weights=np.abs(exposure), minlength=P)
    apc = ctx["apc"]["buffer_rate"] * base
    im = np.maximum(base + apc + liquidity, floor)
    out.update(apc_buffer=apc, liquidity_addon=liquidity, floor=floor, im=im, mm=params.mm_factor * im)
    return out


def _measure_columns(r: dict, q: str, comps) -> dict:
    """The component columns of a margin table, in a fixed order."""
    cols = {"worst": r["worst"]}
    if "es" in r:
        cols[f"es_{q}"] = r["es"]
    for c in comps:
        if c == "stress":
            cols["stress_worst"] = r["stress_worst"]
            cols["stress_charge"] = r["stress_charge"]
        else:
            cols[f"es_{q}_{c}"] = r[f"es_{c}"]
    cols["base"] = r["base"]
    cols["base_component"] = r["base_component"]
    return cols


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """Tables ``margin`` (per account), ``calls`` and ``venue_margin`` (account×venue standalone); summary."""
    ctx = plan.context
    params: Params = ctx["params"]
    book: Book = ctx["book"]
    comps = ctx["components"]
    q = level_name(params.confidence)
    r = requirement(plan, stats, "account")
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
            **_measure_columns(r, q, comps),
            "apc_buffer": r["apc_buffer"],
            "liquidity_addon": r["liquidity_addon"],
            "floor": r["floor"],
            "collateral_value": raw,
        }
    )
    tables = {"margin": margin}
    legs = {c: plan.legs[f"account/{c}"].scenarios for c in comps}
    summary = {
        "model": NAME,
        "accounts": int(A),
        "currency": "USD",
        "confidence": params.confidence,
        "horizon_days": {c: float(s.horizon_days) for c, s in legs.items()},
        "history_date": str(ctx["history_date"].date()),
        "history_lag_days": int(ctx["history_lag_days"]),
        "stress_factor": params.stress_factor,
        "total_im": float(r["im"].sum()),
        "total_mm": float(r["mm"].sum()),
        "total_equity": float(eq.sum()),
        "total_excess": float((eq - r["im"]).sum()),
        "total_liquidity_addon": float(r["liquidity_addon"].sum()),
        "total_apc_buffer": float(r["apc_buffer"].sum()),
        "accounts_at_floor": int(np.sum((r["floor"] > 0) & (r["im"] == r["floor"]))),
        "base_component": {k: int(np.sum(r["base_component"] == k)) for k in list(comps) + ["none"]},
        "calls": _calls.status_counts(status),
        "total_call_amount": float(amount.sum()),
        "apc": ctx["apc"],
        "liquidity_fallback_underlyings": ctx["liq_fallback"],
        "scenarios": {c: {k: v for k, v in s.describe().items() if k != "metadata"} for c, s in legs.items()},
    }
    if "account_venue" in ctx["groupings"]:
        rv = requirement(plan, stats, "account_venue")
        vports = plan.legs[f"account_venue/{comps[0]}"].portfolios
        veq, vraw = _coll.equity(book, ctx["collateral"], params.collateral, "account_venue")
        acct = vports.account_idx.astype(np.int64)
        standalone = np.bincount(acct, weights=rv["im"], minlength=A)
        margin["standalone_im"] = standalone
        margin["cross_margin_benefit"] = standalone - r["im"]
        venue = pd.DataFrame(
            {
                "account_id": np.asarray(vports.key["account_id"], dtype=object),
                "venue": np.asarray(vports.key["venue"], dtype=object),
                "model": NAME,
                "currency": "USD",
                "im": rv["im"],
                "mm": rv["mm"],
                "equity": veq,
                "excess": veq - rv["im"],
                **_measure_columns(rv, q, comps),
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
    "default_components",
    "default_scenarios",
    "scenario_components",
    "history_date",
    "history_lag_days",
    "apc_state",
    "delta_notional",
    "requirement",
]
