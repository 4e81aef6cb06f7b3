"""Maximum-likelihood fits in JAX for the house model's scenario generators.

- ``fit_student_t(X)``: the Monte Carlo's Student-t law. X [n, K] are standardised returns (each coin's daily
  log return over its EWMA vol forecast, ``standardised_returns``); the model is the multivariate t with ν
  degrees of freedom and unit-variance margins, scale matrix S = R·(ν − 2)/ν with R a correlation matrix:
  ℓ(x) = lnΓ((ν+K)/2) − lnΓ(ν/2) − (K/2)·ln(νπ) − ½·ln|S| − (ν+K)/2·ln(1 + xᵀS⁻¹x/ν).
  R = D^{-1/2}·L·Lᵀ·D^{-1/2} from a lower-triangular L with a positive diagonal (any correlation matrix), and
  ν = 2.05 + e^a; the mean ℓ is maximised by BFGS (``jax.scipy.optimize.minimize``, gradients by autodiff).
  This is the law ``gpurisk.scenarios.montecarlo`` draws (one χ²_ν per scenario, unit-variance t margins).
- ``fit_garch_t(r)``: the GARCH(1,1)-t volatility filter (``gpurisk.scenarios.volfilter``, where the
  historical scenarios use it); re-exported here with the other fits.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..scenarios.volfilter import GarchFit, fit_garch_t, garch_t_loglik


@dataclass(frozen=True)
class StudentTFit:
    """nu, corr [K, K], the mean log-likelihood per observation, n, and whether the optimiser converged."""

    nu: float
    corr: np.ndarray
    loglik: float
    n: int
    converged: bool


@functools.lru_cache(maxsize=1)
def _jax():
    import jax
    import jax.numpy as jnp
    from jax.scipy.optimize import minimize
    from jax.scipy.special import gammaln

    def unpack(th, K):
        iu = jnp.tril_indices(K)
        L = jnp.zeros((K, K)).at[iu].set(th[1:])
        L = L.at[jnp.diag_indices(K)].set(jnp.exp(jnp.diag(L)))
        C = L @ L.T
        d = jnp.sqrt(jnp.diag(C))
        return 2.05 + jnp.exp(th[0]), C / jnp.outer(d, d)

    def mean_ll(th, X):
        n, K = X.shape
        nu, R = unpack(th, K)
        S = R * (nu - 2.0) / nu
        chol = jnp.linalg.cholesky(S)
        z = jax.scipy.linalg.solve_triangular(chol, X.T, lower=True)
        q = jnp.sum(z * z, axis=0)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
        ll = (gammaln(0.5 * (nu + K)) - gammaln(0.5 * nu) - 0.5 * K * jnp.log(nu * jnp.pi) - 0.5 * logdet
              - 0.5 * (nu + K) * jnp.log1p(q / nu))
        return jnp.mean(ll)

    @jax.jit
    def fit(th0, X):
        res = minimize(lambda th: -mean_ll(th, X), th0, method="BFGS", options={"maxiter": 1000})
        return res.x, res.fun, res.success

    return jax, jnp, unpack, fit, jax.jit(mean_ll)


def _start(X: np.ndarray) -> np.ndarray:
    """BFGS start: ν = 6, L = the Cholesky factor of the sample correlation (log diagonal)."""
    K = X.shape[1]
    c = np.corrcoef(X, rowvar=False) if K > 1 else np.ones((1, 1))
    w, v = np.linalg.eigh(c)
    c = (v * np.maximum(w, 1e-6)) @ v.T
    L = np.linalg.cholesky(c)
    L[np.diag_indices(K)] = np.log(np.diag(L))
    return np.concatenate([[math.log(6.0 - 2.05)], L[np.tril_indices(K)]])


def fit_student_t(X) -> StudentTFit:
    """The multivariate Student-t (unit-variance margins) of the rows of X [n, K] by maximum likelihood (module
    docstring); rows with a non-finite value are left out."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError("X must be [n, K]")
    X = X[np.isfinite(X).all(axis=1)]
    n, K = X.shape
    if n < 10 * K:
        raise ValueError(f"a Student-t fit over {K} coins needs at least {10 * K} rows, got {n}")
    jax, jnp, unpack, fit, _ = _jax()
    with jax.enable_x64(True):
        th, fun, ok = fit(jnp.asarray(_start(X)), jnp.asarray(X))
        nu, R = unpack(th, K)
        nu, R, fun = float(nu), np.asarray(R), float(fun)
    return StudentTFit(nu, 0.5 * (R + R.T), -fun, n, bool(ok) and math.isfinite(fun))


def student_t_loglik(X, nu: float, corr) -> float:
    """Mean log-likelihood of the rows of X under the unit-variance multivariate t (NumPy/SciPy, independent of
    the JAX code: ``scipy.stats.multivariate_t``)."""
    from scipy.stats import multivariate_t

    X = np.asarray(X, dtype=np.float64)
    X = X[np.isfinite(X).all(axis=1)]
    S = np.asarray(corr) * (nu - 2.0) / nu
    return float(multivariate_t(loc=np.zeros(X.shape[1]), shape=S, df=nu).logpdf(X).mean())


def standardised_returns(closes: pd.DataFrame, lam: float = 0.94) -> pd.DataFrame:
    """Each coin's daily log return over its EWMA (λ) vol forecast for that day [dates, coins], on the dates
    every coin has one (the EWMA from each coin's first return, ``historical.ewma_sigma``)."""
    from ..scenarios.historical import ewma_sigma

    out = {}
    for c in closes.columns:  # a handful of coins
        r = np.log(closes[c].dropna()).diff().dropna()
        sig = ewma_sigma(r.to_numpy(), lam)[:-1]
        out[c] = pd.Series(r.to_numpy() / sig, index=r.index)
    return pd.DataFrame(out).dropna()


def fit_report(market=None, start="2021-01-01", end="2024-12-31", coins=None, mc_dof: float = 5.0,
               lam: float = 0.94) -> dict:
    """The fits of a calibration run, JSON-able: ``student_t`` (ν, R, mean log-likelihood of the standardised
    returns from ``start`` to ``end``, against the Monte Carlo's current dof ``mc_dof`` with the sample correlation)
    and ``garch`` per coin (GARCH(1,1)-t on the last ``volfilter.FIT_DAYS`` returns through ``end``, with the
    mean Student-t log-likelihood, the persistence α + β and the half-life of a variance shock)."""
    from ..market import COINS, market_store
    from ..scenarios.volfilter import FIT_DAYS

    store = market_store(market)
    coins = [c for c in (coins or COINS) if store.has_daily(c)]
    t_end = pd.Timestamp(end) + pd.Timedelta(days=1)
    closes = store.daily_closes(tuple(coins), as_of=t_end)
    Z = standardised_returns(closes, lam).loc[str(start):str(end)]
    X = Z.to_numpy()
    t = fit_student_t(X)
    sample = np.corrcoef(X, rowvar=False)
    out = {"student_t": {"coins": coins, "start": str(start), "end": str(end), "observations": int(t.n),
                         "standardised_by": f"EWMA lambda {lam:g}", "nu": t.nu, "corr": np.round(t.corr, 6).tolist(),
                         "loglik": t.loglik, "converged": t.converged,
                         "loglik_check_scipy": student_t_loglik(X, t.nu, t.corr),
                         "current_dof": mc_dof, "loglik_current_dof_sample_corr": student_t_loglik(X, mc_dof, sample),
                         "loglik_fitted_dof_sample_corr": student_t_loglik(X, t.nu, sample)}}
    g = {}
    for c in coins:  # a handful of coins
        r = np.diff(np.log(store.daily_bars(c, as_of=t_end)["close"].to_numpy(dtype=np.float64)))[-FIT_DAYS:]
        f = fit_garch_t(r)
        pers = f.alpha + f.beta
        stationary = 0 < pers < 1 - 1e-3  # α + β at the bound is an integrated GARCH: no finite half-life
        g[c] = {**f.as_dict(), "persistence": pers,
                "half_life_days": float(np.log(0.5) / np.log(pers)) if stationary else None,
                "unconditional_daily_vol": float(np.sqrt(f.omega / (1 - pers)) / 100.0) if stationary else None}
    out["garch"] = g
    return out


__all__ = ["fit_report", "StudentTFit", "fit_student_t", "student_t_loglik", "standardised_returns", "GarchFit",
           "fit_garch_t",
           "garch_t_loglik"]
