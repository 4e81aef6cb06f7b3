"""The JAX maximum-likelihood fits against independent implementations: GARCH(1,1)-t against the ``arch`` package
on the shipped BTC returns, the multivariate Student-t against SciPy and a simulation with known parameters."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from gpurisk.calibration import fits
from gpurisk.calibration.adaptive import compare_filters
from gpurisk.market import MarketStore, shipped_dir
from gpurisk.scenarios import volfilter

STORE = MarketStore(shipped_dir())


def btc_returns(last=1460):
    c = pd.read_csv(shipped_dir() / "market" / "daily" / "BTCUSDT_1d.csv")["close"].to_numpy()
    return np.diff(np.log(c))[-last:]


def test_garch_t_matches_the_arch_package_on_btc():
    arch_model = pytest.importorskip("arch").arch_model
    r = btc_returns()
    mine = fits.fit_garch_t(r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = arch_model(r * 100, mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False).fit(disp="off")
    p = res.params
    assert mine.converged
    assert mine.alpha == pytest.approx(p["alpha[1]"], rel=2e-3)
    assert mine.beta == pytest.approx(p["beta[1]"], rel=2e-4)
    assert mine.nu == pytest.approx(p["nu"], rel=2e-3)
    assert mine.omega == pytest.approx(p["omega"], rel=1e-2)
    assert mine.loglik == pytest.approx(res.loglikelihood / len(r), abs=1e-6)
    # the same conditional volatility at the same parameters
    sig = volfilter.garch_sigma(r * 100, p["omega"], p["alpha[1]"], p["beta[1]"])[:-1]
    np.testing.assert_allclose(sig, res.conditional_volatility, rtol=1e-8)
    # and the JAX likelihood at arch's parameters is arch's
    at_arch = volfilter.GarchFit(p["omega"], p["alpha[1]"], p["beta[1]"], p["nu"], 0.0, len(r), True)
    assert volfilter.garch_t_loglik(r, at_arch) == pytest.approx(res.loglikelihood / len(r), abs=1e-9)


def test_garch_recursion_by_hand():
    r = np.array([0.01, -0.02, 0.03, 0.0, -0.01])
    s = volfilter.garch_sigma(r, 1e-5, 0.1, 0.85, s0=4e-4)
    h = [1e-5 + 0.95 * 4e-4]
    for x in r:
        h.append(1e-5 + 0.1 * x * x + 0.85 * h[-1])
    np.testing.assert_allclose(s ** 2, h, rtol=1e-12)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 3000])
def test_one_pole_filter_is_scipy_lfilter_bit_for_bit(n):
    """The compiled recursion of the EWMA and GARCH variances gives lfilter's bits (same operations, same
    order), on squared returns of every scale and on GARCH's ω + α r² input."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.standard_t(3, n) ** 2 * rng.uniform(1e-8, 1e4)
        a, y0 = rng.uniform(0.5, 0.9999), rng.uniform(0.0, 10.0)
        for b in (1.0 - a, 1.0):
            ref, _ = lfilter([b], [1.0, -a], x, zi=np.array([a * y0]))
            assert np.array_equal(volfilter.one_pole(x, b, a, y0), ref)
    r = rng.standard_normal(n) * 0.03
    s0 = float(np.mean(r[:30] ** 2)) if n else 0.0
    if n:
        ref, _ = lfilter([1.0 - 0.97], [1.0, -0.97], r**2, zi=np.array([0.97 * s0]))
        assert np.array_equal(volfilter.ewma_sigma(r, 0.97), np.sqrt(np.concatenate([[s0], ref])))


def test_student_t_recovers_a_known_law():
    rng = np.random.default_rng(5)
    K, nu, n = 3, 4.5, 30_000
    R = np.array([[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]])
    z = rng.multivariate_normal(np.zeros(K), R, size=n)
    X = z * np.sqrt((nu - 2) / rng.chisquare(nu, size=n))[:, None]
    f = fits.fit_student_t(X)
    assert f.converged
    assert f.nu == pytest.approx(nu, abs=0.3)
    np.testing.assert_allclose(f.corr, R, atol=0.02)
    np.testing.assert_allclose(np.diag(f.corr), 1.0, atol=1e-12)
    assert f.loglik == pytest.approx(fits.student_t_loglik(X, f.nu, f.corr), abs=1e-9)  # SciPy at the optimum
    assert f.loglik >= fits.student_t_loglik(X, nu, R) - 1e-9  # the maximum is at least the truth's likelihood


def test_fit_report_on_the_shipped_history():
    rep = fits.fit_report(STORE, "2021-01-01", "2024-12-31")
    st = rep["student_t"]
    assert 2.05 < st["nu"] < 10 and st["converged"]
    assert st["loglik"] >= st["loglik_current_dof_sample_corr"] - 1e-9  # the ML fit beats the current law
    assert st["loglik"] == pytest.approx(st["loglik_check_scipy"], abs=1e-9)
    for c, g in rep["garch"].items():
        assert 0 < g["persistence"] < 1 and g["nu"] > 2.05, c


def test_adaptive_comparison_adds_up():
    a = compare_filters(STORE, "2023-01-01", "2023-06-30", ewma_lambda=0.97, coins=("BTC", "XRP"))
    assert set(a["per_coin"]) == {"BTC", "XRP"}
    for c, v in a["per_coin"].items():
        assert v["days"] > 150 and sum(v["choices"].values()) >= 5
        assert v["adaptive_minus_ewma"] == pytest.approx(v["adaptive"] - v["ewma"])
    assert a["total"]["ewma"] == pytest.approx(sum(v["ewma"] for v in a["per_coin"].values()))
    assert a["adaptive_beats_ewma"] == (a["total"]["adaptive"] > a["total"]["ewma"])
