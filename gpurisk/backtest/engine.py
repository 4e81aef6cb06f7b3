"""The rolling point-in-time backtest: a model's IM on every day from the history known then, against the
P&L the portfolios then made.

For each day d of the range (``day_rows``):

- the book is the template held constant (``portfolios.day_book``), as of d + 1 day 00:00 UTC, so the
  model reads the history through d's close and nothing after (its own point-in-time reads: the pinned
  stress windows and the stress episodes count only once they are in the past);
- ``im``: the model's initial margin per portfolio (house: ``house.requirement``; the other models: their
  ``margin`` table, summed over venues), in USD;
- ``pnl``: the realised P&L from the close of d to the close of d + h, by full revaluation of the same
  instruments and collateral at the history's closes (options at the ATM vol level's change, with their decay
  over h; ``portfolios.vol_levels``); ``exception`` = −pnl > im;
- ``im_floor_10y``: the ES at the model's confidence over the *unfiltered* h-day windows of the 10 years of
  history before d (the floor of EMIR RTS 153/2013 Art. 28(1)(c)), for the anti-procyclicality measures.

Days run in blocks, one Dask task per block when a ``distributed.Client`` is given (in-process otherwise):
every day is computed from the history alone, so the rows do not depend on the blocks or the worker count.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..book import STABLECOINS, Book
from ..errors import ConfigError, GpuriskError
from ..market import MarketStore
from ..pricing import PricingInputs, pricing_inputs
from ..scenarios import ScenarioSet
from ..scenarios.historical import historical_scenarios
from ..tail import spec_for
from . import portfolios as pf

log = logging.getLogger("gpurisk.backtest")

#: the lookback of the anti-procyclicality floor (days): EMIR's 10 years
FLOOR_LOOKBACK_DAYS = 3650
#: the coverage a backtest tests by default (and the floor's confidence for a model without one)
DEFAULT_LEVEL = 0.99
#: the columns of the model's IM decomposition kept per row (house; NaN for the other models)
HOUSE_COLUMNS = ("base", "es_historical", "es_montecarlo", "stress_charge", "apc_floor", "apc_buffer",
                 "liquidity_addon", "floor")
#: house parameters a variant may change without new scenarios: they only recombine the same tail statistics
VARIANT_FIELDS = ("confidence", "stress_factor", "apc_buffer", "apc_release_ratio", "apc_indicator", "apc_long_days",
                  "apc_floor", "floor_gross_rate", "liquidity_coefficient")


class BacktestError(GpuriskError):
    """A backtest that cannot run: no day with a portfolio and a realised P&L, a bad range or model."""


@dataclass(frozen=True)
class Setup:
    """What every block of days needs (sent to the workers): the model and its parameters, the template book
    held constant, the history folder and its policy, the P&L horizon h (days), the backend, the confidence of
    the 10-year floor (the model's)."""

    model: str
    params: object
    template: pf.ConstantBook
    market_root: str
    max_history_age_days: int
    allow_stale_history: bool
    horizon_days: int
    backend: str
    level: float
    variants: tuple = ()  # house Params differing from ``params`` in VARIANT_FIELDS only: rows per variant

    def all_params(self) -> tuple:
        return self.variants or (self.params,)

    def store(self) -> MarketStore:
        return MarketStore(self.market_root).with_policy(self.max_history_age_days, self.allow_stale_history)


@contextmanager
def _quiet_models():
    """The per-day notes of the models (a short history window, day after day) kept at debug level."""
    lg = logging.getLogger("gpurisk.margin")
    old = lg.level
    lg.setLevel(max(old, logging.WARNING))
    try:
        yield
    finally:
        lg.setLevel(old)


def _measure_inputs(book: Book, sset: ScenarioSet):
    """(PricingInputs [I + C], widened set, account CSR over them): the book's positions and collateral mapped
    onto ``sset``, as the margin models map them."""
    from ..margin import collateral as coll_mod
    from ..margin.common import map_scenarios

    coll = coll_mod.collateral_instruments(book)
    idx, s = map_scenarios(book, sset, coll.assets)
    n = len(book.instruments)
    pi = PricingInputs.concat([pricing_inputs(book, idx[:n]), coll.pricing(idx[n:])])
    return pi, s, coll_mod.portfolios_with_collateral(book, coll, "account")


def _csr_sum(ports, column: np.ndarray) -> np.ndarray:
    """[P] Σ quantity × column[instrument] per portfolio."""
    rows = np.repeat(np.arange(len(ports), dtype=np.int64), np.diff(ports.indptr))
    return np.bincount(rows, weights=ports.quantity * column[ports.instrument_idx], minlength=len(ports))


def realised_set(book: Book, store: MarketStore, date: pd.Timestamp, h: int) -> ScenarioSet:
    """One scenario: the moves of the book's coins from the close of ``date`` to the close of ``date`` + h (price
    relative moves; ATM vol level relative change for the coins the book has options on), horizon h."""
    coins = sorted({str(u) for u in book.instruments.underlying} | {str(a) for a in book.balances.asset})
    coins = [c for c in coins if c not in STABLECOINS] or ["BTC"]
    end = date + pd.Timedelta(days=h)
    p0 = pf.closes_on(store, coins, date)
    p1 = pf.closes_on(store, coins, end)
    opt = {str(u) for u in book.instruments.underlying[book.instruments.kind == 3]}
    vol = []
    for c in coins:  # a handful of coins
        if c in opt:
            a0, a1, _ = pf.vol_levels(c, date, end, store)
            vol.append(a1 / a0 - 1.0)
        else:
            vol.append(0.0)
    price = np.array([[p1[c] / p0[c] - 1.0 for c in coins]])
    return ScenarioSet(underlyings=tuple(coins), price_shock=price, vol_shock=np.array([vol]),
                       vol_mode=np.zeros(1, np.int8), weight=np.ones(1), pnl_factor=np.ones(1),
                       label=np.array([f"realised {date.date()}..{end.date()}"], dtype=object),
                       scenario_id=np.array([f"{end.date()}"], dtype=object), horizon_days=float(h),
                       kind="realised", source="realised moves of the history's closes")


def _house_variants(setup: Setup, plan, engine, store: MarketStore) -> list[dict[str, np.ndarray]]:
    """house.requirement of every variant from one revaluation: each leg's tail statistics at every variant's
    confidence, then each variant's recombination (its APC state read at the plan's history date)."""
    from ..margin import house
    from ..margin.plan import execute
    from ..tail import TailStats

    variants = setup.all_params()
    levels = tuple(sorted({float(v.confidence) for v in variants}))
    for leg in plan.legs.values():
        leg.spec = replace(leg.spec, levels=levels)
    stats, _ = execute(plan, engine)
    ctx = plan.context
    date = pd.Timestamp(ctx.history["end"])
    out = []
    for v in variants:
        j = levels.index(float(v.confidence))
        sv = {k: TailStats(t.worst, t.worst_scenario, t.var[:, [j]], t.es[:, [j]]) for k, t in stats.items()}
        rates, apc = house.apc_rates(list(ctx.underlyings), date, v, store)
        pv = replace(plan, context=replace(ctx, params=v, apc=apc, apc_rate=rates))
        out.append(house.requirement(pv, sv, "account"))
    return out


def _model_im(setup: Setup, book: Book, store: MarketStore, engine) -> list[dict[str, np.ndarray]]:
    """[{im [A] USD, and the house decomposition}] of ``book``'s accounts, one per variant."""
    from ..margin import get_model, plan_model
    from ..margin.plan import execute, finish

    mod = get_model(setup.model)
    plan = plan_model(mod, setup.model, book, setup.params, None, store)
    if setup.model == "house":
        return _house_variants(setup, plan, engine, store)
    stats, _ = execute(plan, engine)
    m = finish(mod, plan, stats).margin
    im = m.groupby("account_id", sort=False)["im_usd"].sum()
    return [{"im": im.reindex(book.accounts).to_numpy(dtype=np.float64)}]


def day_rows(setup: Setup, date, store: MarketStore | None = None, engine=None) -> pd.DataFrame:
    """The rows of one day d (module docstring): one per portfolio taking part; empty when none does."""
    from ..backends import Engine

    store = store or setup.store()
    engine = engine or Engine(setup.backend)
    d = pd.Timestamp(date).normalize()
    h = setup.horizon_days
    act = pf.active_accounts(setup.template, d, h, store)
    if not act.any():
        return pd.DataFrame()
    book = pf.subset(pf.day_book(setup.template, d, store), act)
    with _quiet_models():
        ims = _model_im(setup, book, store, engine)
    # realised P&L and the 10-year unfiltered floor, on the same instruments and collateral
    rset = realised_set(book, store, d, h)
    pi, rs, ports = _measure_inputs(book, rset)
    pnl = _csr_sum(ports, engine.revalue(pi, rs, "usd")[:, 0])
    mh = _model_horizon(setup)
    fset = historical_scenarios(d + pd.Timedelta(days=1), coins=rset.underlyings, horizon_days=mh,
                                lookback_days=FLOOR_LOOKBACK_DAYS, filtered=False, include_periods=(), market=store)
    fpi, fs, fports = _measure_inputs(book, fset)
    floor = engine.tail_stats(fports, engine.revalue(fpi, fs, "usd"), spec_for(fs, (setup.level,))).es[:, 0]
    A = book.n_accounts
    K = len(ims)
    cols = {"date": np.full(A * K, d.to_datetime64()),
            "portfolio": np.tile(np.asarray(book.accounts, dtype=object), K),
            "im": np.concatenate([r["im"] for r in ims]), "pnl": np.tile(pnl, K)}
    cols["exception"] = -cols["pnl"] > cols["im"]
    cols["notional"] = np.tile(pf.portfolio_notional(book), K)
    cols["im_floor_10y"] = np.tile(floor, K)
    for c in HOUSE_COLUMNS:
        cols[c] = np.concatenate([r.get(c, np.full(A, np.nan)) for r in ims])
    cols["base_component"] = np.concatenate([np.asarray(r.get("base_component", np.full(A, "", dtype=object)),
                                                        dtype=object) for r in ims])
    if setup.variants:
        cols = {"variant": np.repeat(np.arange(K, dtype=np.int64), A), **cols}
    return pd.DataFrame(cols)


def _model_horizon(setup: Setup) -> int:
    """The model's margin period of risk in whole days (at least 1)."""
    h = getattr(setup.params, "horizon_days", setup.horizon_days)
    return max(1, int(round(float(h))))


def run_block(setup: Setup, days) -> pd.DataFrame:
    """The rows of every day of ``days`` (ISO dates), one block: one store and one engine for the block."""
    from ..backends import Engine

    store = setup.store()
    engine = Engine(setup.backend)
    parts = [day_rows(setup, d, store, engine) for d in days]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def blocks(days: list, block_days: int) -> list[list]:
    """``days`` cut into consecutive blocks of ``block_days``."""
    b = max(1, int(block_days))
    return [days[i:i + b] for i in range(0, len(days), b)]


def compute(setup: Setup, days: list, client=None, block_days: int = 30, on_block=None) -> pd.DataFrame:
    """Every day's rows, sorted by (date, portfolio): the blocks as Dask tasks on ``client`` (a
    ``distributed.Client``), else in-process; ``on_block(done, total)`` after each block."""
    parts = blocks(days, block_days)
    total = len(parts)
    out = []
    if client is None:
        for i, b in enumerate(parts):
            out.append(run_block(setup, b))
            if on_block is not None:
                on_block(i + 1, total)
    else:
        from distributed import as_completed

        futs = [client.submit(run_block, setup, b, pure=False, key=f"backtest-block-{i}-{time.time_ns()}")
                for i, b in enumerate(parts)]
        try:
            for i, f in enumerate(as_completed(futs)):
                out.append(f.result())
                if on_block is not None:
                    on_block(i + 1, total)
        finally:
            for f in futs:
                f.cancel()
    out = [p for p in out if len(p)]
    if not out:
        raise BacktestError("no day of the range has a portfolio with history and a realised P&L "
                            f"(from {days[0]} to {days[-1]})" if days else "the date range is empty")
    df = pd.concat(out, ignore_index=True)
    keys = (["variant"] if "variant" in df.columns else []) + ["date", "portfolio"]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def make_setup(model: str, params, template: pf.ConstantBook, store: MarketStore, horizon_days=None,
               backend: str = "auto", variants=()) -> Setup:
    """A checked ``Setup``: ``horizon_days`` defaults to the model's MPOR (whole days); ``variants``: house Params
    that differ from ``params`` only in ``VARIANT_FIELDS`` (ConfigError otherwise)."""
    import dataclasses

    variants = tuple(variants)
    if variants and model != "house":
        raise ConfigError("parameter variants apply to the house model only")
    for v in variants:
        diff = [f.name for f in dataclasses.fields(params) if f.name not in VARIANT_FIELDS
                and getattr(v, f.name) != getattr(params, f.name)]
        if diff:
            raise ConfigError(f"a variant may change only {', '.join(VARIANT_FIELDS)}; this one changes {diff}")
    if any(getattr(v, "apc_floor", 0) > 0 for v in variants) and not getattr(params, "apc_floor", 0) > 0:
        raise ConfigError("variants with an apc_floor need a base whose apc_floor is > 0 (it builds the floor's leg)")
    level = float(getattr(params, "confidence", DEFAULT_LEVEL))
    h = horizon_days if horizon_days is not None else getattr(params, "horizon_days", 1.0)
    if isinstance(h, bool) or not float(h) == int(round(float(h))) or int(round(float(h))) < 1:
        raise ConfigError(f"the P&L horizon must be a whole number of days >= 1, got {h}")
    return Setup(model=model, params=params, template=template, market_root=str(store.root),
                 max_history_age_days=int(store.max_history_age_days),
                 allow_stale_history=bool(store.allow_stale_history), horizon_days=int(round(float(h))),
                 backend=backend, level=level, variants=variants)


def check_range(start, end) -> list[str]:
    """The ISO days from ``start`` to ``end`` inclusive; ConfigError for a bad or reversed range."""
    try:
        a, b = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    except (ValueError, TypeError):
        raise ConfigError(f"bad date range {start!r}..{end!r}: dates are YYYY-MM-DD") from None
    if pd.isna(a) or pd.isna(b) or b < a:
        raise ConfigError(f"bad date range {start}..{end}: the end must not be before the start")
    return [str(d.date()) for d in pd.date_range(a, b, freq="D")]


__all__ = ["Setup", "BacktestError", "FLOOR_LOOKBACK_DAYS", "DEFAULT_LEVEL", "HOUSE_COLUMNS", "VARIANT_FIELDS",
           "day_rows",
           "run_block", "compute", "blocks", "make_setup", "check_range", "realised_set"]
