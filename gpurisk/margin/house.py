"""The house risk-based model: cross-venue portfolio margin (OCC STANS / Eurex Prisma / SPAN 2 spirit).

Per portfolio (an account across all venues, and each account×venue standalone),
with L the position P&L plus the collateral P&L in a scenario:

    base      = max(ES_q(L | FHS), ES_q(L | Monte Carlo), stress_factor · worst(L | stress),
                    apc_floor · ES_q(L | unfiltered apc_floor_days windows), 0)
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
from the market history store at the history date.

The history date is the history's end at the book's as-of (``components.book_history``): the
earliest last daily close known then among the coins the model reads (the book's coins that the
store has, the APC indicator and, with the default components, BTC). Every input is read up to
it. A history that ends more than ``max_history_age_days`` (the store's policy, default 3) before
the as-of date is refused (``StaleHistoryError``) unless the store allows stale history; the
summary's ``market_history`` records the end, its age and whether it was stale. The APC
buffer is 25 % of the base in calm markets and is run down linearly to 0 as a coin's
short-run EWMA vol rises from its long-run level to ``apc_release_ratio`` times it: per coin
(``apc_indicator = "own"``, a portfolio's rate weighted by its gross delta notional in each coin)
or on one indicator coin for all. The FHS filter ratio uses a floored historical vol and a cap
(``vol_floor``, ``ratio_cap``); the stress set holds upward moves too (``squeezes``,
``rally_shock``). Parameter rationale, and the backtest behind each: docs/methodologies.md
("House model") and jobs/params/house.toml.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..book import STABLECOINS, Book
from ..errors import ScenarioError
from ..market import MarketDataError, MarketStore, market_store
from ..pricing import NUMERAIRE_USD, PricingInputs, VolTerm, contract_values, pricing_inputs
from ..scenarios import ScenarioSet
from ..tail import TailStats, check_levels, level_name, spec_for
from . import calls as _calls
from . import collateral as _coll
from . import params as _params
from .common import compact, map_scenarios
from ..scenarios.historical import VOL_FILTERS
from .components import (ES_COMPONENTS, SQUEEZES, ComponentParams, book_coins, book_history,
                         caller_components, default_components)
from .plan import ALL_VENUES, Leg, MarginResult, Plan, standard_frame

NAME = "house"

log = logging.getLogger(__name__)

#: portfolio groupings: the cross-venue account, and each account×venue standalone
GROUPINGS = ("account", "account_venue")

#: relative price bump of the finite-difference delta
DELTA_BUMP = 1e-4
#: the leg of the anti-procyclicality floor (``apc_floor`` > 0)
FLOOR_LEG = "apc_floor"
#: ``apc_indicator`` value that releases the buffer per underlying, on each coin's own volatility
APC_OWN = "own"


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
    mc_dof: float = 5.0  # Student-t degrees of freedom of the Monte Carlo (> 2; the ML fit is in docs/methodologies.md)
    stress_names: tuple[str, ...] = ()  # empty = every named stress scenario
    vol_floor: float = 1.0  # FHS: historical vol in the filter ratio floored at this share of the long-run vol
    ratio_cap: float = 3.0  # FHS: the filter ratio σ_now/σ_then capped at this
    vol_filter: str = "ewma"  # FHS volatility filter: ewma, garch or adaptive (gpurisk.scenarios.volfilter)
    squeezes: str = "coin"  # measured squeezes in the stress set: none, coin (each coin's) or market (BTC's)
    squeeze_cap: float = 1.0  # each measured squeeze move capped at this relative rise (+100 %)
    rally_shock: float = 0.30  # hypothetical rally: every coin up by this much, the mirror of crash_30 (0 = none)
    stress_factor: float = 0.33  # share of the worst stress loss that counts (SPAN's extreme moves: 33 %)
    profit_factor: float = 1.0  # full credit for scenario profits inside a portfolio
    mm_factor: float = 0.8  # MM = 0.8·IM (Deribit 0.8; OKX IMR = 1.3·MMR)
    apc_buffer: float = 0.25  # EMIR Art. 28(1)(a): ≥ 25 % buffer, released in stress
    apc_release_ratio: float = 1.5  # buffer fully released when short vol ≥ 1.5 × long vol
    apc_indicator: str = APC_OWN  # each coin's own vol releases the buffer of the portfolios exposed to it
    apc_long_days: int = 3650  # long-run vol window (10 years, as in Art. 28(1)(c))
    apc_floor: float = 0.0  # EMIR Art. 28(1)(c): base ≥ apc_floor × ES_q over the unfiltered apc_floor_days windows
    apc_floor_days: int = 3650  # the floor's lookback (10 years; what the history has)
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
            (self.mc_dof > 2, "mc_dof must be > 2 (a finite variance)"),
            (0 <= self.profit_factor <= 1, "profit_factor must lie in [0, 1]"),
            (0 < self.mm_factor <= 1, "mm_factor must lie in (0, 1]"),
            (self.apc_buffer >= 0, "apc_buffer must be ≥ 0"),
            (self.apc_release_ratio > 1, "apc_release_ratio must be > 1"),
            (self.apc_long_days >= 365, "apc_long_days must be ≥ 365"),
            (0 <= self.apc_floor < math.inf, "apc_floor must be a finite number ≥ 0"),
            (self.apc_floor_days >= 365, "apc_floor_days must be ≥ 365"),
            (self.liquidity_coefficient >= 0, "liquidity_coefficient must be ≥ 0"),
            (self.adv_days >= 1, "adv_days must be ≥ 1"),
            (self.fallback_adv_usd > 0, "fallback_adv_usd must be > 0"),
            (self.fallback_daily_vol >= 0, "fallback_daily_vol must be ≥ 0"),
            (self.floor_gross_rate >= 0, "floor_gross_rate must be ≥ 0"),
            (0 <= self.vol_floor < math.inf, "vol_floor must be a finite number ≥ 0"),
            (self.ratio_cap > 0, "ratio_cap must be > 0"),
            (self.vol_filter in VOL_FILTERS, f"vol_filter must be one of {', '.join(VOL_FILTERS)}"),
            (self.squeezes in SQUEEZES, f"squeezes must be one of {', '.join(SQUEEZES)}"),
            (self.squeeze_cap > 0, "squeeze_cap must be > 0"),
            (0 <= self.rally_shock < math.inf, "rally_shock must be a finite number ≥ 0"),
            (self.apc_indicator == APC_OWN or bool(self.apc_indicator.strip()),
             f"apc_indicator must be a coin or {APC_OWN!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def components(self) -> ComponentParams:
        """The parameters of the default scenario components."""
        return ComponentParams(self.horizon_days, self.lookback_days, self.ewma_lambda, self.mc_scenarios,
                               self.mc_seed, self.mc_dist, self.stress_names, self.vol_floor, self.ratio_cap,
                               self.vol_filter, self.squeezes, self.squeeze_cap, self.rally_shock, self.mc_dof)


def load_params(path: str | None = None) -> Params:
    """Params from a TOML file (strict keys and types), or the defaults when ``path`` is None."""
    return _params.load(Params, path)


# --------------------------------------------------------------------------- market inputs


def _close_path(store: MarketStore, coin: str) -> pd.Series:
    """Every daily close of ``coin`` in the store (kept once per folder); callers cut it at their history date."""
    return store.memo(("house.closes", coin), lambda: store.daily_bars(coin)["close"])


def _closes_through(store: MarketStore, coin: str, date: pd.Timestamp) -> pd.Series:
    """Daily closes of ``coin`` up to and including the bar dated ``date`` (known from ``date`` + 1 day)."""
    return store.daily_bars(coin, as_of=date + pd.Timedelta(days=1))["close"]


def _ewma_path(coin: str, lam: float, store: MarketStore) -> pd.Series:
    """RiskMetrics EWMA daily vol of ``coin``'s log returns after each bar (σ_d from the returns through d):
    σ²_d = λ·σ²_{d−1} + (1−λ)·r²_d started at r²_first. Causal, so its value on d is the one computed from the
    history through d alone; kept once per folder."""
    def compute():
        r = np.log(_close_path(store, coin)).diff().dropna()
        return np.sqrt((r * r).ewm(alpha=1.0 - lam, adjust=False).mean())

    return store.memo(("house.ewma_path", coin, float(lam)), compute)


def _ewma_daily_vol(coin: str, date: pd.Timestamp, lam: float, store: MarketStore) -> float:
    """RiskMetrics EWMA daily vol of ``coin``'s log returns through the bar dated ``date``."""
    path = _ewma_path(coin, lam, store)
    n = int(path.index.searchsorted(date, side="right"))
    if n < 1 or n + 1 < 3:  # at least two returns through ``date``
        raise KeyError(f"too little {coin} history before {date.date()}")
    return float(path.iloc[n - 1])


def _long_daily_vol(coin: str, date: pd.Timestamp, days: int, store: MarketStore) -> tuple[float, int]:
    """(daily vol over up to ``days`` days to ``date``, days of history actually used)."""
    def compute():
        close = _close_path(store, coin)
        lo = int(close.index.searchsorted(date - pd.Timedelta(days=days), side="left"))
        hi = int(close.index.searchsorted(date, side="right"))
        win = close.iloc[lo:hi]
        r = np.diff(np.log(win.to_numpy(dtype=np.float64)))
        if len(r) < 2:
            raise KeyError(f"too little {coin} history before {date.date()}")
        used = int((win.index[-1] - win.index[0]).days)
        if used < days - 1:  # a standing property of the history, reported in the summary (apc.long_window_days)
            log.info(
                "anti-procyclicality: %s history gives only %d of the %d days asked for before %s; "
                "the long-run vol uses what there is", coin, used, days, date.date(),
            )
        return float(np.std(r, ddof=1)), used

    return store.memo(("house.long_daily_vol", coin, date, int(days)), compute)


def average_daily_volume_usd(coin: str, date: pd.Timestamp, days: int = 30, market=None) -> float:
    """Mean daily traded value in USD over the ``days`` daily bars through ``date`` (volume × close)."""
    store = market_store(market)
    value = store.memo(("house.traded_value", coin), lambda: (lambda b: b["volume"] * b["close"])(
        store.daily_bars(coin)))
    n = int(value.index.searchsorted(date, side="right"))
    if n < 1:
        raise KeyError(f"no {coin} volume on or before {date.date()}")
    return float(value.iloc[max(0, n - days):n].mean())


def apc_state(date: pd.Timestamp, params: Params, market=None, coin: str | None = None) -> dict:
    """The anti-procyclicality buffer rate at history date ``date`` on the closes through it of ``coin`` (default
    the indicator ``apc_indicator``; BTC when that is ``own``): {buffer_rate, release, vol_ratio, short_vol,
    long_vol}. The buffer is ``apc_buffer`` and is run down linearly to 0 as the coin's short-run EWMA vol rises
    from its long-run vol to ``apc_release_ratio`` times it."""
    store = market_store(market)
    coin = coin or (params.apc_indicator if params.apc_indicator != APC_OWN else "BTC")
    try:
        short = _ewma_daily_vol(coin, date, params.vol_lambda, store)
        long, long_days = _long_daily_vol(coin, date, params.apc_long_days, store)
    except (KeyError, MarketDataError) as exc:
        msg = str(exc) if isinstance(exc, MarketDataError) else (exc.args[0] if exc.args else exc)
        raise ScenarioError(f"anti-procyclicality indicator: {msg}") from None
    ratio = short / long
    release = float(np.clip((ratio - 1.0) / (params.apc_release_ratio - 1.0), 0.0, 1.0))
    return {
        "buffer_rate": params.apc_buffer * (1.0 - release),
        "release": release,
        "vol_ratio": ratio,
        "short_daily_vol": short,
        "long_daily_vol": long,
        "long_window_days": long_days,  # may be shorter than apc_long_days where the history is
        "indicator": coin,
    }


def apc_rates(names, date: pd.Timestamp, params: Params, market=None) -> tuple[np.ndarray, dict]:
    """(buffer rate [U] per underlying name, summary) at history date ``date``.

    ``apc_indicator`` a coin: one rate for every underlying (``apc_state`` of that coin; the summary is its state).
    ``own``: each coin's rate from its own volatility, so a crash of one coin releases the buffer of the
    portfolios exposed to it; stablecoins and coins without history keep the full buffer (summary:
    ``{mode, buffer, release_ratio, by_underlying: {coin: state}}``).
    """
    store = market_store(market)
    if params.apc_indicator != APC_OWN:
        st = apc_state(date, params, store)
        return np.full(len(names), st["buffer_rate"]), st
    rates = np.full(len(names), float(params.apc_buffer))
    by = {}
    for j, u in enumerate(names):  # distinct underlyings only
        if u in STABLECOINS or not store.has_daily(u):
            continue
        try:
            st = apc_state(date, params, store, coin=u)
        except ScenarioError:  # too little history of a new coin: the full buffer
            continue
        rates[j] = st["buffer_rate"]
        by[str(u)] = st
    return rates, {"mode": APC_OWN, "buffer": float(params.apc_buffer),
                   "release_ratio": float(params.apc_release_ratio), "by_underlying": by}


def liquidity_inputs(names, date: pd.Timestamp, params: Params, market=None):
    """(σ daily [U], ADV USD [U], used_fallback [U] bool) per underlying name at history date ``date``;
    0/inf for stablecoins; the fallbacks for a coin the store has no daily history of."""
    store = market_store(market)
    sig = np.zeros(len(names))
    adv = np.full(len(names), np.inf)
    fb = np.zeros(len(names), bool)
    for j, u in enumerate(names):  # distinct underlyings only
        if u in STABLECOINS:
            continue
        if not store.has_daily(u):
            sig[j], adv[j], fb[j] = params.fallback_daily_vol, params.fallback_adv_usd, True
            continue
        try:
            sig[j] = _ewma_daily_vol(u, date, params.vol_lambda, store)
            adv[j] = average_daily_volume_usd(u, date, params.adv_days, store)
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


def floor_scenarios(book: Book, params: Params, market=None, history=None) -> ScenarioSet:
    """The anti-procyclicality floor's scenarios: the book's coins' *unfiltered* h-day windows over the last
    ``apc_floor_days`` days (no pinned periods), read as the default components are."""
    from ..scenarios.historical import historical_scenarios

    store = market_store(market)
    hist = history or book_history(book, store, ("BTC",))
    return historical_scenarios(hist.read_as_of, coins=book_coins(book), horizon_days=params.horizon_days,
                                lookback_days=params.apc_floor_days, filtered=False, include_periods=(),
                                market=store)


def scenario_components(book: Book, params: Params, scenarios=None, market=None, history=None
                        ) -> dict[str, ScenarioSet]:
    """The components of a run: the defaults (``components.default_components``, from ``market`` read up to
    ``history``) when ``scenarios`` is None, else the caller's (``components.caller_components``: one set is
    ``user``, measured by ES_q)."""
    if scenarios is None:
        return default_components(book, params.components(), market, history)
    return caller_components(scenarios)


# --------------------------------------------------------------------------- plan / finalize


@dataclass(frozen=True)
class Context:
    """What ``requirement`` and ``finalize`` need, fixed when the plan is made.

    The legs' instrument rows are the K held instruments then the C collateral assets (``common.compact``):
    delta [K + C] USD per unit relative move per contract; und_code [K + C] underlying column of each;
    n_positions = K; liq_sigma, liq_adv, apc_rate [U] per underlying; history: the market history read
    (``gpurisk.market.HistoryState.summary()``: end date, age, stale or not, folder).
    """

    params: Params
    book: Book
    collateral: _coll.CollateralInstruments
    components: tuple[str, ...]
    groupings: tuple[str, ...]
    history: dict
    apc: dict
    delta: np.ndarray
    und_code: np.ndarray
    n_positions: int
    n_underlyings: int
    liq_sigma: np.ndarray
    liq_adv: np.ndarray
    liq_fallback: tuple[str, ...]
    apc_rate: np.ndarray | None = None
    underlyings: tuple[str, ...] = ()


def plan(book: Book, params: Params | None = None, scenarios=None, market=None) -> Plan:
    """Legs ``<grouping>/<component>``: groupings ``account`` (cross-venue) and, if ``cross_venue``,
    ``account_venue`` (standalone); components as ``scenario_components``.

    market: the history store (``gpurisk.market.MarketStore``, a folder, or None for the default store);
    every history input is read as of the book's as-of, up to the history's end, under the store's
    staleness policy (``StaleHistoryError`` when it is too old). The legs of one component share one
    revaluation; the legs of one grouping share one CSR.
    """
    params = params or Params()
    store = market_store(market)
    indicator = (params.apc_indicator,) if params.apc_indicator != APC_OWN else ()  # own: the book's coins
    extra = indicator + (("BTC",) if scenarios is None else ())  # BTC: the FHS proxy coin
    hist = book_history(book, store, extra)
    date = hist.end
    comps = scenario_components(book, params, scenarios, store, hist)
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
    if params.apc_floor > 0 and scenarios is None:  # the anti-procyclicality floor: unfiltered long lookback
        fset = floor_scenarios(book, params, store, hist)
        idx, sset = map_scenarios(book, fset, coll.assets)
        pi = PricingInputs.concat([pricing_inputs(book, idx[:n_ins]), coll.pricing(idx[n_ins:])]).take(keep)
        spec = spec_for(sset, (params.confidence,), params.profit_factor)
        for g in groupings:
            legs[f"{g}/{FLOOR_LEG}"] = Leg(f"{g}/{FLOOR_LEG}", pi, sset, "usd", ports[g], spec)
    # liquidity inputs over the held underlyings, whatever the scenario sets cover
    names = np.concatenate([np.asarray(book.instruments.underlying[keep_ins], dtype=object).astype(str),
                            np.asarray(coll.assets, dtype=object).astype(str)])  # [K + C], as the rows
    code, und = pd.factorize(pd.Series(names, dtype=object), sort=True)
    k = len(keep_ins)
    pi0 = PricingInputs.concat([pricing_inputs(book, np.zeros(n_ins, np.int32)).take(keep_ins),
                                coll.pricing(np.zeros(len(coll), np.int32))])
    pi0 = replace(pi0, underlying_idx=code.astype(np.int32))
    sig, adv, fb = liquidity_inputs(list(und), date, params, store)
    rates, apc = apc_rates(list(und), date, params, store)
    held = set(map(str, book.instruments.underlying[keep_ins]))
    ctx = Context(
        params=params, book=book, collateral=coll, components=tuple(comps), groupings=tuple(groupings),
        history=hist.summary(), apc=apc, apc_rate=rates, underlyings=tuple(str(u) for u in und),
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
    ``apc_floor`` (apc_floor × ES_q of the floor's scenarios; 0 when apc_floor is 0), ``base_component`` (the binding
    term, ``none`` when base is 0), ``apc_buffer``, ``liquidity_addon``, ``floor``, ``im``, ``mm``. Vectorised
    over portfolios.
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
    names = list(comps)
    out["apc_floor"] = np.zeros(P)  # no floor charge unless apc_floor > 0
    floor_leg = f"{grouping}/{FLOOR_LEG}"
    if params.apc_floor > 0 and floor_leg in stats and floor_leg in plan.legs:
        out["apc_floor"] = params.apc_floor * stats[floor_leg].es[:, 0]
        charges.append(out["apc_floor"])
        names.append(FLOOR_LEG)
    C = np.vstack(charges)  # [components, P]
    top = C.max(axis=0)
    base = np.maximum(top, 0.0)
    out["worst"] = worst
    out["base"] = base
    out["base_component"] = np.where(top > 0.0, np.asarray(names, dtype=object)[C.argmax(axis=0)], "none")

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
    if params.apc_indicator == APC_OWN:  # each portfolio's rate: its underlyings' rates by gross delta notional
        G = np.bincount(row_port * U + col, weights=np.abs(exposure), minlength=P * U).reshape(P, U)
        g = G.sum(axis=1)
        rate = np.where(g > 0, (G @ ctx.apc_rate) / np.where(g > 0, g, 1.0), params.apc_buffer)
    else:
        rate = ctx.apc["buffer_rate"]
    apc = rate * base
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
    cols["apc_floor"] = r["apc_floor"]
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
        "history_date": ctx.history["end"],  # the date of the last daily bar read (= market_history.end)
        "market_history": ctx.history,
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
                              "stress_charge", "apc_floor", "base", "apc_buffer", "liquidity_addon", "floor",
                              "collateral_value"]
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
    "apc_rates",
    "APC_OWN",
    "average_daily_volume_usd",
    "liquidity_inputs",
    "delta_notional",
    "requirement",
]
