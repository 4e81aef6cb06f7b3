"""Monte Carlo scenarios in JAX: correlated Gaussian or Student-t, with a joint vol factor.

Model (docs/data-format.md ("Scenario sets") repeats it):

- **Targets.** Daily log returns of the coins and the daily log change of BTC DVOL
  (the vol factor) over the last ``lookback_days`` days to ``as_of`` (bars used
  as in historical.py: a bar dated d only if d+1 00:00 UTC ≤ as_of), on the dates
  where every coin has a close. Covariance by ``estimator``: ``"ewma"`` (zero mean,
  weights ∝ λ^age, RiskMetrics) or ``"sample"`` (demeaned, n−1). Where DVOL has
  no value in the window, the vol factor is the log change of BTC's EWMA vol.
  The covariance gives vols σ [U+1] and a correlation R, repaired to be positive
  semi-definite by clipping eigenvalues at 1e-12.
- **Draws.** x = L·z with z ~ N(0, I) and L the Cholesky factor of R;
  ``distribution="student_t"``: x·√((ν−2)/W) with one W ~ χ²_ν per scenario
  (a t copula with t marginals, scaled to unit variance, so σ and R are the same
  targets). Keys are ``jax.random.key(seed)`` split once: deterministic per seed.
- **Horizon.** Log move of coin c: σ_c·√h·x_c (zero log drift); price_shock =
  exp(move) − 1. Vol shock (relative): exp(β_c·σ_v·√h·x_v) − 1 with β_BTC = 1 and
  β_c = ``vol_beta`` for the other coins (default 1.0, as in historical.py).

JAX runs on its default device (CPU or GPU). GPU memory is not preallocated:
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set before jax is first imported here.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..book import to_utc_seconds  # noqa: E402
from ..errors import ScenarioError  # noqa: E402
from ..market import COINS, market_store  # noqa: E402
from .historical import _closes_until, ewma_sigma  # noqa: E402
from .scenario_set import ScenarioSet  # noqa: E402

MIN_OBSERVATIONS = 60
MAX_SCENARIOS = 5_000_000


def estimate_targets(
    as_of, coins=COINS, lookback_days: int = 365, estimator: str = "ewma", ewma_lambda: float = 0.94,
    closes: pd.DataFrame | None = None, dvol_series: pd.Series | None = None, market=None,
):
    """(sigma [U+1] daily, corr [U+1, U+1], info) of the coins' log returns and the vol factor (last).

    History from ``market`` (a MarketStore, a folder, or None for the default store) as known at ``as_of``;
    ``closes`` / ``dvol_series`` replace its closes / DVOL.
    """
    coins = tuple(coins)
    if estimator not in ("ewma", "sample"):
        raise ScenarioError(f"estimator must be 'ewma' or 'sample', got {estimator!r}")
    if not (0.0 < ewma_lambda < 1.0):
        raise ScenarioError(f"ewma_lambda must be in (0, 1), got {ewma_lambda}")
    need = tuple(dict.fromkeys(("BTC",) + coins))
    store = market_store(market) if closes is None or dvol_series is None else None
    where = "the caller's closes" if closes is not None else store.name
    if closes is None:
        bad = [c for c in need if not store.has_daily(c)]
        if bad:
            raise ScenarioError(f"no daily history for {bad} in {store.name}; have {list(store.coins())}")
        closes = store.daily_closes(need, as_of=as_of)
    closes = _closes_until(closes[list(need)].sort_index(), as_of)
    r = np.log(closes).diff().iloc[1:]
    r = r.iloc[-int(lookback_days):]
    empty = [c for c in need if not r[c].notna().any()]
    if empty:
        raise ScenarioError(f"no returns for {empty} in the {lookback_days} days to as-of {as_of}")
    r = r.dropna()
    if len(r) < MIN_OBSERVATIONS:
        raise ScenarioError(
            f"only {len(r)} days with a close for every coin in the {lookback_days} days to as-of {as_of}; "
            f"need {MIN_OBSERVATIONS}"
        )
    dv = store.dvol(as_of=as_of) if dvol_series is None else dvol_series
    dv = _closes_until(dv.to_frame("dvol"), as_of)["dvol"]
    vf = np.log(dv).diff().reindex(r.index)
    if vf.notna().all():
        vol_source = "BTC DVOL daily log change"
    else:  # proxy: log change of BTC's EWMA vol forecast
        full = np.log(closes["BTC"]).diff().dropna()
        sig = pd.Series(ewma_sigma(full.to_numpy(), ewma_lambda)[1:], index=full.index)
        vf = vf.fillna(np.log(sig).diff().reindex(r.index))
        vol_source = "BTC DVOL daily log change, BTC EWMA-vol log change where DVOL is missing"
    X = np.column_stack([r[list(coins)].to_numpy(), vf.to_numpy()])
    ok = np.isfinite(X).all(axis=1)
    X = X[ok]
    n = len(X)
    if estimator == "ewma":
        w = ewma_lambda ** np.arange(n - 1, -1, -1, dtype=np.float64)
        w /= w.sum()
        cov = (X * w[:, None]).T @ X
    else:
        cov = np.cov(X, rowvar=False, ddof=1)
    sigma = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sigma, sigma)
    corr = nearest_correlation(corr)
    info = {"observations": int(n), "first": str(r.index[ok][0].date()), "last": str(r.index[ok][-1].date()),
            "vol_factor": vol_source, "history": where}
    return sigma, corr, info


def nearest_correlation(c: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """A PSD correlation close to ``c``: eigenvalues clipped at ``floor``, unit diagonal restored."""
    c = 0.5 * (c + c.T)
    vals, vecs = np.linalg.eigh(c)
    if vals.min() >= floor:
        return c
    c = (vecs * np.maximum(vals, floor)) @ vecs.T
    d = np.sqrt(np.diag(c))
    return c / np.outer(d, d)


@functools.lru_cache(maxsize=8)
def _base_draws(seed: int, n: int, K: int, distribution: str, dof: float):
    """(z [n, K] N(0, 1), w [n] χ²_dof or None) of ``seed``: the same for every correlation, so a rolling
    backtest draws them once (JAX arrays, reused as they are: the results are the same bits)."""
    with jax.enable_x64(True):
        key = jax.random.key(int(seed))
        kz, kw = jax.random.split(key)
        z = jax.random.normal(kz, (n, K), dtype=jnp.float64)
        w = jax.random.chisquare(kw, dof, shape=(n,), dtype=jnp.float64) if distribution == "student_t" else None
    return z, w


@functools.lru_cache(maxsize=8)
def _scenario_ids(n: int) -> np.ndarray:
    width = len(str(n - 1))
    return np.array([f"mc{i:0{width}d}" for i in range(n)], dtype=object)


def draw_factors(seed: int, n: int, corr: np.ndarray, distribution: str = "gaussian", dof: float = 5.0) -> np.ndarray:
    """x [n, K] float64: unit-variance draws with correlation ``corr`` (JAX, deterministic per seed)."""
    K = corr.shape[0]
    L = np.linalg.cholesky(corr + 1e-14 * np.eye(K))
    z, w = _base_draws(int(seed), int(n), int(K), distribution, float(dof))
    with jax.enable_x64(True):
        x = z @ jnp.asarray(L).T
        if distribution == "student_t":
            x = x * jnp.sqrt((dof - 2.0) / w)[:, None]
        return np.asarray(x, dtype=np.float64)


def monte_carlo_scenarios(
    as_of,
    n_scenarios: int = 10_000,
    seed: int = 0,
    coins=COINS,
    horizon_days: float = 1.0,
    distribution: str = "gaussian",
    dof: float = 5.0,
    estimator: str = "ewma",
    ewma_lambda: float = 0.94,
    lookback_days: int = 365,
    vol_beta: float = 1.0,
    closes: pd.DataFrame | None = None,
    dvol_series: pd.Series | None = None,
    market=None,
) -> ScenarioSet:
    """Correlated Monte Carlo scenarios [n_scenarios, U] (model in the module docstring); history from
    ``market`` as in ``estimate_targets``."""
    coins = tuple(str(c) for c in coins)
    if not coins or len(set(coins)) != len(coins):
        raise ScenarioError(f"coins must be a non-empty list without duplicates, got {list(coins)}")
    n = int(n_scenarios)
    if not (1 <= n <= MAX_SCENARIOS):
        raise ScenarioError(f"n_scenarios must be in [1, {MAX_SCENARIOS}], got {n_scenarios}")
    if distribution not in ("gaussian", "student_t"):
        raise ScenarioError(f"distribution must be 'gaussian' or 'student_t', got {distribution!r}")
    if distribution == "student_t" and not dof > 2.0:
        raise ScenarioError(f"Student-t needs dof > 2 for a finite variance, got {dof}")
    if not horizon_days > 0:
        raise ScenarioError(f"horizon_days must be > 0, got {horizon_days}")
    sigma, corr, info = estimate_targets(as_of, coins, lookback_days, estimator, ewma_lambda, closes, dvol_series,
                                         market)
    x = draw_factors(seed, n, corr, distribution, dof)
    sq = np.sqrt(float(horizon_days))
    U = len(coins)
    price = np.expm1(x[:, :U] * (sigma[:U] * sq))
    betas = np.array([1.0 if c == "BTC" else float(vol_beta) for c in coins])
    vol = np.expm1(x[:, [U]] * (sigma[U] * sq) * betas[None, :])
    ids = _scenario_ids(n).copy()
    src = (
        f"Monte Carlo ({distribution}{f', dof {dof:g}' if distribution == 'student_t' else ''}), seed {seed}, "
        f"{n} scenarios, horizon {horizon_days:g}d sqrt-scaled; {estimator} "
        f"{f'lambda {ewma_lambda:g} ' if estimator == 'ewma' else ''}covariance of daily log returns from "
        f"{info['history']} ({', '.join(coins)}) {info['first']}..{info['last']} ({info['observations']} days) "
        f"and vol factor ({info['vol_factor']}, beta {vol_beta:g}); JAX {jax.__version__} on {jax.default_backend()}"
    )
    return ScenarioSet(
        underlyings=coins,
        price_shock=price,
        vol_shock=vol,
        vol_mode=np.zeros(n, np.int8),
        weight=np.ones(n),
        pnl_factor=np.ones(n),
        label=ids.copy(),
        scenario_id=ids,
        horizon_days=float(horizon_days),
        kind="montecarlo",
        seed=int(seed),
        source=src,
        metadata={
            "as_of": str(pd.Timestamp(to_utc_seconds(as_of))),
            "distribution": distribution,
            "dof": float(dof) if distribution == "student_t" else None,
            "estimator": estimator,
            "sigma_daily": {c: float(s) for c, s in zip(coins + ("vol_factor",), sigma)},
            "corr": corr.tolist(),
            **info,
        },
    )


__all__ = ["monte_carlo_scenarios", "estimate_targets", "draw_factors", "nearest_correlation"]
