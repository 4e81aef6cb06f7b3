"""Monte Carlo: moments and correlations converge to targets computed independently from the data."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from gpurisk.errors import ScenarioError
from gpurisk.market import shipped_dir
from gpurisk.scenarios.montecarlo import estimate_targets, monte_carlo_scenarios, nearest_correlation

AS_OF = "2024-07-01"
COINS3 = ("BTC", "ETH", "SOL")
N = 100_000


def independent_targets(coins, lookback=365, as_of=AS_OF):
    """Sample covariance of daily log returns and DVOL log changes, straight from the CSV files."""
    d = shipped_dir()
    closes = pd.concat({c: pd.read_csv(d / "market" / "daily" / f"{c}USDT_1d.csv", index_col="timestamp",
                                       parse_dates=True)["close"] for c in coins}, axis=1)
    closes = closes.loc[: pd.Timestamp(as_of) - pd.Timedelta(days=1)]
    r = np.log(closes).diff().iloc[1:].iloc[-lookback:].dropna()
    dv = pd.read_csv(d / "options" / "deribit_btc_dvol_daily.csv", index_col="date", parse_dates=True)["dvol"]
    dv = dv.asfreq("D").ffill()
    r["vol"] = np.log(dv).diff().reindex(r.index)
    return r.std(ddof=1).to_numpy(), r.corr().to_numpy()


@pytest.fixture(scope="module")
def gauss():
    return monte_carlo_scenarios(AS_OF, N, seed=7, coins=COINS3, estimator="sample", horizon_days=1.0)


def test_sample_targets_match_independent_estimate():
    sig, corr, info = estimate_targets(AS_OF, COINS3, estimator="sample")
    s2, c2 = independent_targets(COINS3)
    np.testing.assert_allclose(sig, s2, rtol=1e-12)
    np.testing.assert_allclose(corr, c2, atol=1e-12)
    assert info["observations"] == 365 and info["last"] == "2024-06-30"


def test_ewma_targets_match_independent_weights():
    sig, corr, _ = estimate_targets(AS_OF, COINS3, estimator="ewma", ewma_lambda=0.97)
    d = shipped_dir()
    btc = pd.read_csv(d / "market" / "daily" / "BTCUSDT_1d.csv", index_col="timestamp", parse_dates=True)["close"]
    r = np.log(btc.loc[:"2024-06-30"]).diff().iloc[-365:].to_numpy()
    w = np.array([0.97**k for k in range(364, -1, -1)])
    assert sig[0] == pytest.approx(np.sqrt(np.sum(w * r * r) / w.sum()), rel=1e-12)


def test_gaussian_moments_and_correlations_converge(gauss):
    s2, c2 = independent_targets(COINS3)
    lm = np.log1p(gauss.price_shock)
    lv = np.log1p(gauss.vol_shock[:, 0])
    X = np.column_stack([lm, lv])
    # mean 0: |mean| < 5 σ/√N
    assert np.all(np.abs(X.mean(0)) < 5 * s2 / np.sqrt(N))
    # sd: relative error of a Gaussian sample sd has sd 1/√(2N)
    np.testing.assert_allclose(X.std(0, ddof=1) / s2, 1.0, atol=5 / np.sqrt(2 * N))
    # correlations: sd of a sample correlation ≈ (1 − ρ²)/√N
    got = np.corrcoef(X.T)
    np.testing.assert_array_less(np.abs(got - c2), 5 * (1 - c2**2) / np.sqrt(N) + 1e-12)
    # marginals are Gaussian: excess kurtosis ≈ 0 (sd √(24/N))
    z = (lm[:, 0] - lm[:, 0].mean()) / lm[:, 0].std()
    assert abs(np.mean(z**4) - 3.0) < 5 * np.sqrt(24 / N)
    # the non-BTC coins share the vol factor (beta 1)
    np.testing.assert_array_equal(gauss.vol_shock[:, 1], gauss.vol_shock[:, 0])


def test_student_t_has_targets_and_fat_tails():
    dof = 6.0
    t = monte_carlo_scenarios(AS_OF, N, seed=7, coins=COINS3, estimator="sample", distribution="student_t", dof=dof)
    s2, c2 = independent_targets(COINS3)
    lm = np.log1p(t.price_shock)
    # sample variance sd for kurtosis κ: σ²·√((κ−1)/N); κ = 3 + 6/(ν−4) = 6 for ν = 6
    kappa = 3 + 6 / (dof - 4)
    np.testing.assert_allclose(lm.var(0, ddof=1) / s2[:3] ** 2, 1.0, atol=5 * np.sqrt((kappa - 1) / N))
    got = np.corrcoef(lm.T)
    np.testing.assert_array_less(np.abs(got - c2[:3, :3]), 10 * (1 - c2[:3, :3] ** 2) / np.sqrt(N) + 1e-12)
    z = lm[:, 0] / lm[:, 0].std()
    assert np.mean(z**4) > 4.5  # kurtosis 6 expected; Gaussian would be 3


def test_deterministic_per_seed_and_horizon_scaling():
    a = monte_carlo_scenarios(AS_OF, 2000, seed=3, coins=COINS3)
    b = monte_carlo_scenarios(AS_OF, 2000, seed=3, coins=COINS3)
    c = monte_carlo_scenarios(AS_OF, 2000, seed=4, coins=COINS3)
    np.testing.assert_array_equal(a.price_shock, b.price_shock)
    np.testing.assert_array_equal(a.vol_shock, b.vol_shock)
    assert not np.array_equal(a.price_shock, c.price_shock)
    d = monte_carlo_scenarios(AS_OF, 2000, seed=3, coins=COINS3, horizon_days=4.0)
    np.testing.assert_allclose(np.log1p(d.price_shock), 2.0 * np.log1p(a.price_shock), rtol=1e-12, atol=1e-15)
    assert d.horizon_days == 4.0 and a.seed == 3 and a.kind == "montecarlo" and "seed 3" in a.source
    assert len(set(a.scenario_id)) == 2000


def test_jax_does_not_preallocate():
    assert os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") == "false"


def test_nearest_correlation_repairs_non_psd():
    c = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
    assert np.linalg.eigvalsh(c).min() < 0
    r = nearest_correlation(c)
    assert np.linalg.eigvalsh(r).min() > -1e-12
    np.testing.assert_allclose(np.diag(r), 1.0)
    np.linalg.cholesky(r + 1e-12 * np.eye(3))


@pytest.mark.parametrize("kw,match", [
    (dict(n_scenarios=0), "n_scenarios"), (dict(distribution="cauchy"), "distribution"),
    (dict(distribution="student_t", dof=2.0), "dof"), (dict(horizon_days=0), "horizon"),
    (dict(estimator="garch"), "estimator"), (dict(coins=("LUNA",)), "LUNA"),
])
def test_bad_parameters(kw, match):
    with pytest.raises(ScenarioError, match=match):
        monte_carlo_scenarios(AS_OF, **{"n_scenarios": 10, **kw})


def test_as_of_before_coin_listing_is_a_clear_error():
    with pytest.raises(ScenarioError, match="SOL"):
        monte_carlo_scenarios("2020-06-01", 10, coins=("BTC", "SOL"))
