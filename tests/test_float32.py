"""The CPU backend's opt-in float32 storage mode: its stated error bound, on random and adversarial books.

Bound (cpu.float32_error_bound, derived in docs/benchmarks.md): for every portfolio p and each of
worst, VaR and ES (equal weights)

    |r32 − r64| ≤ F · (eps32 · Σ_i |q_i| · max_s |P_is| + 2⁻¹⁴⁹ · Σ_i |q_i|),  F = max|pnl_factor| · max(1, profit_factor)

where r64 is the float64 result (checked against the reference backend) and r32 the float32-storage one.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpurisk.backends import MeasureSpec
from gpurisk.backends import reference as ref
from gpurisk.book import Portfolios

cpu = pytest.importorskip("gpurisk.backends.cpu")

EPS32 = float(np.finfo(np.float32).eps)


def portfolios(rng, n_port: int, n_ins: int, max_pos: int = 8, qscale: float = 10.0) -> Portfolios:
    counts = rng.integers(0, max_pos + 1, n_port)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(indptr[-1])
    return Portfolios(indptr, rng.integers(0, n_ins, nnz).astype(np.int32), rng.normal(0.0, qscale, nnz),
                      np.arange(n_port, dtype=np.int32))


def check_bound(pf, P, spec, slack: float = 1.0):
    """Run both modes; assert float64 matches the reference and float32 stays within the bound. Returns max error/bound."""
    if len(pf) == 0:
        assert len(cpu.tail_stats(pf, P, spec, float32=True)) == 0
        return 0.0
    r64 = cpu.tail_stats(pf, P, spec)
    want = ref.tail_stats(pf, P, spec)
    np.testing.assert_allclose(r64.es, want.es, rtol=1e-9, atol=1e-12 * max(1.0, float(np.abs(want.es).max(initial=0))))
    r32 = cpu.tail_stats(pf, P, spec, float32=True)
    bound = cpu.float32_error_bound(pf, P, spec) * slack
    worst_ratio = 0.0
    for got, exp in ((r32.worst, r64.worst), (r32.var, r64.var), (r32.es, r64.es)):
        got = got.reshape(len(pf), -1)
        exp = exp.reshape(len(pf), -1)
        err = np.abs(got - exp)
        assert np.all(err <= bound[:, None]), (err / np.maximum(bound[:, None], 1e-300)).max()
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(bound[:, None] > 0, err / bound[:, None], 0.0)
        worst_ratio = max(worst_ratio, float(ratio.max(initial=0.0)))
    return worst_ratio


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.slow
def test_bound_on_random_books(seed):
    rng = np.random.default_rng(seed)
    n_ins, S = 40, 1500
    P = rng.standard_t(3, (n_ins, S)) * rng.lognormal(0.0, 3.0, (n_ins, 1))  # fat tails, rows of mixed scale
    pf = portfolios(rng, 120, n_ins)
    for spec in (MeasureSpec((0.99,)), MeasureSpec((0.9, 0.99, 0.999)),
                 MeasureSpec((0.975,), pnl_factor=rng.choice([1.0, 0.33, 2.5], S), profit_factor=0.5)):
        check_bound(pf, P, spec)


def test_bound_on_adversarial_books():
    rng = np.random.default_rng(11)
    S = 800
    base = rng.normal(0.0, 1.0, S)
    # every value sits just below a float32 rounding midpoint: each rounds by almost u = eps32/2
    u = 2.0**-24
    near_mid = (1.0 + u * (1.0 - 2.0**-20)) * np.sign(rng.normal(size=S)) * 2.0 ** rng.integers(-3, 4, S)
    rows = [
        base,                                   # 0: plain
        base * (1.0 + 1e-9),                    # 1: nearly equal to row 0: huge opposite positions cancel
        near_mid,                               # 2: worst-case rounding
        base * 1e30,                            # 3: large magnitudes (well inside float32 range)
        base * 1e-41,                           # 4: float32 subnormals (absolute error 2^-150)
        np.where(np.arange(S) % 7 == 0, 1e20, 1e-5) * np.sign(base),  # 5: huge dynamic range in one row
        np.round(base * 8) / 8,                 # 6: exactly representable: no rounding at all
    ]
    P = np.array(rows)
    indptr = np.array([0, 2, 3, 4, 5, 6, 8, 9, 11], np.int64)
    idx = np.array([0, 1, 2, 3, 4, 5, 0, 6, 2, 3, 4], np.int32)
    qty = np.array([1e7, -1e7, 1.0, 3.0, -2.0, 1.0, 1e-3, 5.0, 1.0, 1e-30, 1e40])
    pf = Portfolios(indptr, idx, qty, np.arange(len(indptr) - 1, dtype=np.int32))
    for spec in (MeasureSpec((0.99,)), MeasureSpec((0.5, 0.99)), MeasureSpec((0.99,), profit_factor=0.0)):
        check_bound(pf, P, spec)


def test_bound_is_nearly_attained():
    """One position on a row that rounds by almost u everywhere: the error is about half the bound (c cannot drop below 1/2)."""
    S = 1000
    P = np.full((1, S), 1.0 + 2.0**-24 * (1.0 - 2.0**-20))  # rounds down to 1.0 in float32
    P[0, ::3] *= -1.0
    pf = Portfolios(np.array([0, 1], np.int64), np.array([0], np.int32), np.array([-1.0]), np.zeros(1, np.int32))
    ratio = check_bound(pf, P, MeasureSpec((0.99,)))
    assert 0.45 < ratio <= 0.5


def test_exactly_representable_P_gives_the_float64_result():
    """Integer P (float32 holds it exactly): identical to float64 and the reference, ties and worst scenario included."""
    rng = np.random.default_rng(3)
    P = rng.integers(-5, 6, (12, 700)).astype(float)
    pf = portfolios(rng, 60, 12)
    for spec in (MeasureSpec((0.99,)), MeasureSpec((0.95, 0.999), profit_factor=0.5)):
        r32 = cpu.tail_stats(pf, P, spec, float32=True)
        r64 = cpu.tail_stats(pf, P, spec)
        want = ref.tail_stats(pf, P, spec)
        for a, b in ((r32.worst, r64.worst), (r32.var, r64.var), (r32.es, r64.es)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(r32.worst_scenario, want.worst_scenario)
        assert np.all(cpu.float32_error_bound(pf, P, spec) >= 0)


@st.composite
def books(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    n_ins = draw(st.integers(1, 12))
    S = draw(st.integers(1, 400))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.integers(-30, 30))
    P = rng.normal(0.0, 1.0, (n_ins, S)) * scale
    pf = portfolios(rng, draw(st.integers(0, 20)), n_ins, max_pos=6, qscale=10.0 ** draw(st.integers(-3, 6)))
    levels = tuple(draw(st.lists(st.sampled_from([0.5, 0.9, 0.99, 0.999]), min_size=1, max_size=3)))
    spec = MeasureSpec(levels, pnl_factor=rng.choice([1.0, 0.33], S), profit_factor=draw(st.sampled_from([1.0, 0.5, 0.0])))
    return P, pf, spec


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books())
def test_bound_property(book):
    P, pf, spec = book
    check_bound(pf, P, spec)


def test_revalue_float32_is_the_rounded_float64():
    from test_backends_parity import make_pricing, make_scenarios

    rng = np.random.default_rng(5)
    pi = make_pricing(rng, 60, 3)
    sc = make_scenarios(rng, 300, 3)
    for numeraire in ("usd", "settlement"):
        P64 = cpu.revalue(pi, sc, numeraire)
        P32 = cpu.revalue(pi, sc, numeraire, float32=True)
        assert P32.dtype == np.float32
        np.testing.assert_array_equal(P32, P64.astype(np.float32))


def test_float32_is_opt_in_and_refused_where_no_bound_holds():
    rng = np.random.default_rng(8)
    P = rng.normal(size=(5, 200))
    pf = portfolios(rng, 10, 5)
    # the default reads a float32 P as exact float64 data: the reference over the widened values
    P32 = P.astype(np.float32)
    got = cpu.tail_stats(pf, P32, MeasureSpec((0.99,)))
    want = ref.tail_stats(pf, P32.astype(np.float64), MeasureSpec((0.99,)))
    np.testing.assert_allclose(got.es, want.es, rtol=1e-9)
    np.testing.assert_array_equal(got.worst_scenario, want.worst_scenario)
    with pytest.raises(ValueError, match="equal-weight"):
        cpu.tail_stats(pf, P, MeasureSpec((0.99,), weight=np.ones(200)), float32=True)
    with pytest.raises(ValueError, match="float32's range"):
        cpu.tail_stats(pf, P * 1e300, MeasureSpec((0.99,)), float32=True)
