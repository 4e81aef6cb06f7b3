"""Volatility filters of the historical scenarios beside EWMA: GARCH(1,1) with Student-t innovations fitted
by maximum likelihood in JAX, and the adaptive choice per coin by out-of-sample likelihood.

- **GARCH(1,1)-t.** r_t = σ_t·z_t, z_t standardised Student-t(ν) (unit variance),
  σ²_t = ω + α·r²_{t−1} + β·σ²_{t−1}, σ²_0 = ω + (α + β)·b with b the backcast (RiskMetrics weights
  0.94^k over the first 75 squared returns, as the ``arch`` package). Log-likelihood per day
  ℓ_t = lnΓ((ν+1)/2) − lnΓ(ν/2) − ½ln(π(ν−2)) − ½ln σ²_t − (ν+1)/2·ln(1 + r²_t/(σ²_t(ν−2))).
  Maximised by BFGS (``jax.scipy.optimize``, gradients by ``jax.grad``) over
  ω = e^a, α + β = sigmoid(b) < 1, α = (α+β)·sigmoid(c), ν = 2.05 + e^d, on returns × 100, the last
  ``FIT_DAYS`` returns through the fit date (fewer: all; under ``MIN_FIT_DAYS``: no fit, the EWMA is used).
- **Schedule, point in time.** Fits happen on refit dates every ``REFIT_DAYS`` days (counted from
  1970-01-01) from the returns through that date only; a scenario set as of d uses the fit of the last refit
  date ≤ d's last bar. With fixed parameters the filter is causal, so its path is computed once per fit.
- **Adaptive.** At each refit date R, per coin, every candidate (EWMA with λ in ``EWMA_GRID``, and GARCH-t
  fitted on the returns through R − ``VALIDATION_DAYS``) forecasts the variance of each day of
  (R − ``VALIDATION_DAYS``, R]; the candidate with the highest Gaussian log-likelihood of those returns,
  Σ −½(ln 2πσ²_t + r²_t/σ²_t) (QLIKE: it ranks variance forecasts whatever the innovations' law), is that
  coin's filter until the next refit date (GARCH-t then refitted on the returns through R).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

#: returns used to start the EWMA variance (and the least the long-run vol of the floor averages)
EWMA_SEED_RETURNS = 30
#: the EWMA λ candidates of the adaptive filter
EWMA_GRID = (0.90, 0.94, 0.97, 0.99)
#: days between refits, and the returns a fit uses
REFIT_DAYS = 30
FIT_DAYS = 1460
MIN_FIT_DAYS = 250
#: the out-of-sample window of the adaptive choice (days)
VALIDATION_DAYS = 365
#: the returns are scaled by this before a fit (ω is reported on the scaled returns, as ``arch`` does)
SCALE = 100.0
#: the backcast's weights and length (``arch``)
BACKCAST_LAMBDA, BACKCAST_DAYS = 0.94, 75


def one_pole(x: np.ndarray, b: float, a: float, y_prev: float) -> np.ndarray:
    """y [n] with y[t] = b·x[t] + a·y[t−1] and y[−1] = ``y_prev``: the variance recursions of EWMA and GARCH.

    The same operations in the same order as ``scipy.signal.lfilter([b], [1, −a], x, zi=[a·y_prev])``, so
    the same bits; compiled with Numba (cached), since importing ``scipy.signal`` costs ~0.7 s per process.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    return _one_pole()(x, float(b), float(a), float(a) * float(y_prev))


@functools.lru_cache(maxsize=1)
def _one_pole():
    from numba import njit

    @njit(cache=True, nogil=True, fastmath=False)
    def run(x, b, a, z):  # z: a·y[t−1], the filter's state (lfilter's direct form II transposed)
        y = np.empty_like(x)
        for t in range(x.shape[0]):
            y[t] = b * x[t] + z
            z = a * y[t]
        return y

    return run


def ewma_sigma(r: np.ndarray, lam: float) -> np.ndarray:
    """EWMA vol of one coin's daily log returns r [n] (no NaN): σ [n+1].

    σ[t] is the forecast for r[t] from r[:t]; σ[n] is the forecast for the next day.
    """
    r = np.asarray(r, dtype=np.float64)
    if len(r) == 0:
        return np.full(1, np.nan)
    s0 = float(np.mean(r[:EWMA_SEED_RETURNS] ** 2))
    # σ²[t+1] = λ σ²[t] + (1−λ) r²[t], σ²[0] = s0
    tail = one_pole(r**2, 1.0 - lam, lam, s0)
    return np.sqrt(np.concatenate([[s0], tail]))


def long_run_sigma(r: np.ndarray) -> np.ndarray:
    """Long-run vol of one coin's daily log returns r [n] (no NaN): σ̄ [n+1], σ̄[t] = the root mean square of
    r[:max(t, 30)] (point in time from the 30th return on; the first 30 share the EWMA seed's window)."""
    r = np.asarray(r, dtype=np.float64)
    n = len(r)
    if n == 0:
        return np.full(1, np.nan)
    cs = np.concatenate([[0.0], np.cumsum(r * r)])
    k = np.maximum(np.arange(n + 1), min(EWMA_SEED_RETURNS, n))
    return np.sqrt(cs[k] / k)


@dataclass(frozen=True)
class GarchFit:
    """A GARCH(1,1)-t fit on returns × ``SCALE``: omega (scaled units²), alpha, beta, nu, the mean
    log-likelihood per day, the number of returns, and whether the optimiser converged."""

    omega: float
    alpha: float
    beta: float
    nu: float
    loglik: float
    n: int
    converged: bool

    def as_dict(self) -> dict:
        return {"omega": self.omega, "alpha": self.alpha, "beta": self.beta, "nu": self.nu,
                "loglik": self.loglik, "n": self.n, "converged": self.converged}


def backcast(r: np.ndarray) -> float:
    """The start variance b: Σ w_k r²_k over the first 75 returns, w_k ∝ 0.94^k."""
    r = np.asarray(r, dtype=np.float64)
    tau = min(BACKCAST_DAYS, len(r))
    w = BACKCAST_LAMBDA ** np.arange(tau)
    return float(np.sum(r[:tau] ** 2 * w / w.sum()))


def garch_sigma(r: np.ndarray, omega: float, alpha: float, beta: float, s0: float | None = None) -> np.ndarray:
    """σ [n+1] of GARCH(1,1) on returns r [n] (same units as ω): σ[t] the forecast for r[t], σ[n] for the next
    day; σ²[0] = ω + (α+β)·b with b = ``backcast(r)`` unless ``s0`` is given."""
    r = np.asarray(r, dtype=np.float64)
    b = backcast(r) if s0 is None else float(s0)
    h0 = omega + (alpha + beta) * b
    if len(r) == 0:
        return np.sqrt(np.array([h0]))
    # h[t+1] = ω + α r²[t] + β h[t]
    tail = one_pole(omega + alpha * r**2, 1.0, beta, h0)
    return np.sqrt(np.concatenate([[h0], tail]))


@functools.lru_cache(maxsize=1)
def _jax():
    import jax
    import jax.numpy as jnp
    from jax.scipy.optimize import minimize
    from jax.scipy.special import gammaln

    def unpack(th):
        p = jax.nn.sigmoid(th[1])
        s = jax.nn.sigmoid(th[2])
        return jnp.exp(th[0]), p * s, p * (1.0 - s), 2.05 + jnp.exp(th[3])

    def nll(th, r2, mask, b, n):
        omega, alpha, beta, nu = unpack(th)
        c = gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu) - 0.5 * jnp.log(jnp.pi * (nu - 2.0))

        def step(h, x):
            x2, m = x
            ll = c - 0.5 * jnp.log(h) - 0.5 * (nu + 1.0) * jnp.log1p(x2 / (h * (nu - 2.0)))
            return omega + alpha * x2 + beta * h, m * ll

        _, ll = jax.lax.scan(step, omega + (alpha + beta) * b, (r2, mask))
        return -jnp.sum(ll) / n

    @jax.jit
    def fit(th0, r2, mask, b, n):
        res = minimize(nll, th0, args=(r2, mask, b, n), method="BFGS", options={"maxiter": 500})
        return res.x, res.fun, res.success

    @jax.jit
    def loglik(th, r2, mask, b, n):
        return -nll(th, r2, mask, b, n)

    return jax, jnp, unpack, fit, loglik


def _padded(r: np.ndarray, length: int):
    """(r² [length] padded with zeros at the end, mask [length])."""
    n = len(r)
    r2 = np.zeros(length)
    mask = np.zeros(length)
    r2[:n] = r**2
    mask[:n] = 1.0
    return r2, mask


def _pad_length(n: int) -> int:
    """The fixed lengths a fit is compiled for (few compilations): FIT_DAYS, or the next power of two ≥ n."""
    if n >= FIT_DAYS:
        return FIT_DAYS
    return max(MIN_FIT_DAYS, 1 << int(math.ceil(math.log2(max(n, 1)))))


def fit_garch_t(r, scale: float = SCALE) -> GarchFit:
    """GARCH(1,1)-t by maximum likelihood (module docstring) on the returns r [n] (all of them; the caller picks
    the window), × ``scale``. JAX float64, BFGS from α + β = 0.95, α = 0.1·0.95, ν = 5."""
    x = np.asarray(r, dtype=np.float64) * scale
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 10:
        raise ValueError(f"a GARCH fit needs at least 10 returns, got {n}")
    jax, jnp, unpack, fit, _ = _jax()
    L = max(_pad_length(n), n)
    r2, mask = _padded(x, L)
    b = backcast(x)
    var = float(np.mean(x * x))
    th0 = np.array([math.log(var * 0.05), math.log(0.95 / 0.05), math.log(0.1 / 0.9), math.log(3.0)])
    with jax.enable_x64(True):
        th, fun, ok = fit(jnp.asarray(th0), jnp.asarray(r2), jnp.asarray(mask), b, float(n))
        omega, alpha, beta, nu = (float(v) for v in unpack(th))
        fun = float(fun)
    return GarchFit(omega, alpha, beta, nu, -fun, n, bool(ok) and math.isfinite(fun))


def garch_t_loglik(r, fit: GarchFit, scale: float = SCALE) -> float:
    """Mean Student-t log-likelihood per day of returns r under ``fit`` (its own backcast), on returns × ``scale``."""
    x = np.asarray(r, dtype=np.float64) * scale
    sig = garch_sigma(x, fit.omega, fit.alpha, fit.beta)[:-1]
    nu = fit.nu
    c = math.lgamma(0.5 * (nu + 1)) - math.lgamma(0.5 * nu) - 0.5 * math.log(math.pi * (nu - 2))
    ll = c - np.log(sig) - 0.5 * (nu + 1) * np.log1p(x**2 / (sig**2 * (nu - 2)))
    return float(ll.mean())


def gaussian_loglik(r, sigma) -> float:
    """Σ −½(ln 2πσ²_t + r²_t/σ²_t) over the days: the out-of-sample score of a variance forecast (QLIKE)."""
    r = np.asarray(r, dtype=np.float64)
    s2 = np.asarray(sigma, dtype=np.float64) ** 2
    return float(np.sum(-0.5 * (np.log(2 * np.pi * s2) + r * r / s2)))


# --------------------------------------------------------------------------- point-in-time paths


def refit_index(dates, last: int) -> int:
    """The index (into ``dates``) of the last refit date ≤ dates[last]: days since 1970-01-01 divisible by
    ``REFIT_DAYS``."""
    day = dates.asi8[last] // 86_400_000_000_000
    target = day - (day % REFIT_DAYS)
    return int(np.searchsorted(dates.asi8 // 86_400_000_000_000, target, side="right") - 1)


def fit_through(r: np.ndarray, stop: int) -> GarchFit | None:
    """GARCH-t fit on the last FIT_DAYS returns of r[:stop] (None when there are fewer than MIN_FIT_DAYS or the
    optimiser did not converge)."""
    x = r[max(0, stop - FIT_DAYS):stop]
    if len(x) < MIN_FIT_DAYS:
        return None
    f = fit_garch_t(x)
    return f if f.converged else None


def choose_filter(r: np.ndarray, stop: int, ewma_lambda: float) -> tuple[str, object]:
    """The adaptive choice at return index ``stop`` (the refit date's return is r[stop−1]): (name, GarchFit or λ);
    EWMA(``ewma_lambda``) while there is too little history to validate."""
    lo = stop - VALIDATION_DAYS
    if lo < MIN_FIT_DAYS:
        return f"ewma_{ewma_lambda:g}", ewma_lambda
    scores = {}
    for lam in EWMA_GRID:
        sig = ewma_sigma(r[:stop], lam)[lo:stop]
        scores[f"ewma_{lam:g}"] = (gaussian_loglik(r[lo:stop], sig), lam)
    g = fit_through(r, lo)
    if g is not None:
        sig = garch_sigma(r[:stop] * SCALE, g.omega, g.alpha, g.beta)[lo:stop] / SCALE
        scores["garch_t"] = (gaussian_loglik(r[lo:stop], sig), None)
    best = max(scores, key=lambda k: scores[k][0])
    if best == "garch_t":
        f = fit_through(r, stop)
        return ("garch_t", f) if f is not None else (f"ewma_{ewma_lambda:g}", ewma_lambda)
    return best, scores[best][1]


def forecast_path(r: np.ndarray, name: str, what) -> np.ndarray:
    """σ [n+1] of the filter ``name`` (``garch_t`` with its GarchFit, or ``ewma_<λ>`` with λ) over returns r [n]."""
    if name == "garch_t":
        return garch_sigma(r * SCALE, what.omega, what.alpha, what.beta) / SCALE
    return ewma_sigma(r, float(what))


def sigma_paths(panel, need, n: int, vol_filter: str, ewma_lambda: float, store=None) -> tuple[np.ndarray, dict]:
    """(σ [n, C] of each coin by ``vol_filter`` (``garch`` or ``adaptive``) through date index n − 1, the fits
    used {coin: {...}}); ``panel`` is ``historical._Panel``. Fits are kept per folder (``store.memo``) by coin and
    refit date; without a store they are computed each time."""
    T1, C = panel.r.shape
    sig = np.full((n, C), np.nan)
    fits = {}
    R = refit_index(panel.dates, n - 1)
    for j in range(C):  # a handful of coins
        f = int(panel.first[j])
        x = panel.r[f:n - 1, j]
        stop = R - f  # returns of the coin through the refit date: x[:stop]
        key = ("volfilter", need[j], vol_filter, float(ewma_lambda), str(panel.dates[max(R, 0)].date()))

        def choose(x=x, stop=stop):
            if stop < 1:
                return f"ewma_{ewma_lambda:g}", ewma_lambda
            if vol_filter == "garch":
                g = fit_through(x, stop)
                return ("garch_t", g) if g is not None else (f"ewma_{ewma_lambda:g}", ewma_lambda)
            return choose_filter(x, stop, ewma_lambda)

        name, what = store.memo(key, choose) if store is not None else choose()
        fits[need[j]] = {"filter": name, "refit_date": key[-1], **(what.as_dict() if name == "garch_t" else {})}
        sig[f:, j] = forecast_path(x, name, what)
    return sig, fits


__all__ = ["ewma_sigma", "long_run_sigma", "EWMA_SEED_RETURNS", "GarchFit", "fit_garch_t", "garch_sigma",
           "garch_t_loglik", "gaussian_loglik", "backcast",
           "sigma_paths", "refit_index", "fit_through", "choose_filter", "forecast_path", "EWMA_GRID", "REFIT_DAYS",
           "FIT_DAYS", "VALIDATION_DAYS", "SCALE"]
