"""A synthetic book for the benchmarks: instruments of every kind, a scenario set, random CSR portfolios.

Everything is vectorised and seeded, so every benchmark process builds the same problem.
"""

from __future__ import annotations

import numpy as np

from gpurisk.book import FUTURE, INVERSE, LINEAR, OPTION, PERPETUAL, SPOT, Portfolios
from gpurisk.pricing import VOL_RELATIVE, VOL_TERM, PricingInputs
from gpurisk.scenarios import make_scenario_set

UNDERLYINGS = ("BTC", "ETH", "SOL", "XRP")
SPOTS = np.array([95_000.0, 3_400.0, 180.0, 2.4])


def instruments(n_ins: int, rng: np.random.Generator) -> PricingInputs:
    """n_ins instruments: 10 % spot, 15 % futures, 10 % perpetuals, 65 % options; linear and inverse."""
    kind = rng.choice([SPOT, FUTURE, PERPETUAL, OPTION], n_ins, p=[0.10, 0.15, 0.10, 0.65]).astype(np.int8)
    opt = kind == OPTION
    u = rng.integers(0, len(UNDERLYINGS), n_ins).astype(np.int32)
    settlement = np.where(kind == SPOT, LINEAR, rng.choice([LINEAR, INVERSE], n_ins)).astype(np.int8)
    fwd = SPOTS[u] * rng.uniform(0.98, 1.05, n_ins)
    ttm = np.where(opt | (kind == FUTURE), rng.choice([1, 2, 7, 14, 30, 60, 90, 180, 365], n_ins) / 365.0, 0.0)
    cs = np.where(settlement == INVERSE, np.where(opt, 1.0, 10.0), rng.choice([0.001, 0.01, 0.1, 1.0], n_ins))
    return PricingInputs(
        kind=kind,
        settlement=settlement,
        option_type=np.where(opt, rng.choice([-1, 1], n_ins), 0).astype(np.int8),
        underlying_idx=u,
        contract_size=cs,
        forward=fwd,
        strike=np.where(opt, fwd * np.exp(rng.normal(0.0, 0.2, n_ins)), 0.0),
        ttm=ttm,
        vol=np.where(opt, rng.uniform(0.35, 1.1, n_ins), 0.0),
    )


def scenarios(n_s: int, rng: np.random.Generator):
    """Correlated Student-t-like price moves and vol shocks, 1-day horizon, relative and term vol modes."""
    corr = np.array([[1.0, 0.8, 0.7, 0.6], [0.8, 1.0, 0.7, 0.6], [0.7, 0.7, 1.0, 0.5], [0.6, 0.6, 0.5, 1.0]])
    z = rng.standard_normal((n_s, 4)) @ np.linalg.cholesky(corr).T
    scale = np.sqrt(3.0 / rng.chisquare(3.0, (n_s, 1)))
    shock = np.clip(0.04 * z * scale, -0.9, 2.0)
    vshock = np.clip(-2.0 * shock + 0.05 * rng.standard_normal((n_s, 4)), -0.8, 2.0)
    modes = np.where(rng.random(n_s) < 0.5, VOL_RELATIVE, VOL_TERM).astype(np.int8)
    return make_scenario_set(UNDERLYINGS, shock, vshock, vol_mode=modes, horizon_days=1.0, kind="montecarlo", seed=0)


def portfolios(n_accounts: int, k: int, n_ins: int, rng: np.random.Generator) -> Portfolios:
    """n_accounts portfolios of exactly k random positions each (CSR)."""
    idx = rng.integers(0, n_ins, n_accounts * k).astype(np.int32)
    qty = np.round(rng.normal(0.0, 10.0, n_accounts * k), 2)
    indptr = np.arange(n_accounts + 1, dtype=np.int64) * k
    return Portfolios(indptr, idx, qty, np.arange(n_accounts, dtype=np.int32))


def problem(n_accounts: int, n_scenarios: int, k: int, n_ins: int, seed: int = 0):
    """(pricing inputs, scenario set, portfolios) for one benchmark configuration."""
    rng = np.random.default_rng(seed)
    return instruments(n_ins, rng), scenarios(n_scenarios, rng), portfolios(n_accounts, k, n_ins, rng)
