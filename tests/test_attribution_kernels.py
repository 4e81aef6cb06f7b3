"""Euler attribution inside the tail pass: tail sets and per-position marginals on every backend.

Every backend's tail sets equal the reference's (same scenarios, same rank order: loss descending,
then scenario ascending), its marginals match the reference's, and the contributions
c_j = q_j·marginal_j sum to each portfolio's ES to 1e-9 relative, with equal and probability weights,
P&L factors, profit factors and ties. ``gpu-emulated`` runs the CUDA kernels on the CPU
(``backends.cuda_emu``); ``gpu`` the same on a device.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpurisk.backends import Engine
from gpurisk.backends import reference as ref
from gpurisk.book import Portfolios
from gpurisk.tail import MeasureSpec, tail_candidates, tail_factor

#: the sum of the contributions against the ES, relative to the gross scale of the tail P&L
SUM_RTOL = 1e-9


class _Emulated:
    name = "gpu-emulated"

    def __init__(self, build_dir, **shape):
        from gpurisk.backends import cuda_emu

        self.device = cuda_emu.device(build_dir, seed=3, **shape)

    def tail_stats(self, portfolios, P, spec, attribution=False):
        from gpurisk.backends import gpu

        return gpu.tail_stats(portfolios, P, spec, device=self.device, attribution=attribution)


class _CpuUnscreened:
    """The CPU backend's direct kernel (the screen off), so both CPU kernels are covered."""

    name = "cpu-direct"

    def tail_stats(self, portfolios, P, spec, attribution=False):
        from gpurisk.backends import cpu

        old = cpu.SCREEN
        cpu.SCREEN = False
        try:
            return cpu.tail_stats(portfolios, P, spec, attribution=attribution)
        finally:
            cpu.SCREEN = old


_EMU: list = []


@pytest.fixture(scope="session", autouse=True)
def _emu_dir(tmp_path_factory):
    _EMU[:] = [tmp_path_factory.mktemp("cuda_emu_attr")]


def _backend(name):
    if name == "reference":
        return ref
    if name == "cpu":
        from gpurisk.backends import cpu

        return cpu
    if name == "cpu-direct":
        return _CpuUnscreened()
    if name.startswith("gpu-emulated"):
        from gpurisk.backends import cuda_emu

        ok, why = cuda_emu.available()
        if not ok:
            pytest.skip(f"no emulated GPU: {why}")
        shape = {"smem_budget": 4 * 1024} if name.endswith("spill") else {}
        return _Emulated(_EMU[0], **shape)
    from gpurisk.backends import get

    return get(name)


BACKENDS = ["reference", "cpu", "cpu-direct", "gpu-emulated", "gpu-emulated-spill",
            pytest.param("gpu", marks=pytest.mark.gpu)]


def _book(rng, n_port, n_ins, n_s, max_pos=8, ties=False):
    counts = rng.integers(0, max_pos + 1, n_port)
    counts[:2] = 0  # empty portfolios
    counts[2] = 1  # a one-position portfolio
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(indptr[-1])
    if ties:  # integer P&L and quantities: many equal portfolio losses, at the cut too
        P = rng.integers(-4, 5, (n_ins, n_s)).astype(np.float64)
        qty = rng.integers(-3, 4, nnz).astype(np.float64)
    else:
        P = rng.normal(0.0, 100.0, (n_ins, n_s))
        qty = rng.normal(0.0, 10.0, nnz)
    ports = Portfolios(indptr, rng.integers(0, n_ins, nnz).astype(np.int32), qty, np.arange(n_port, dtype=np.int32))
    return ports, P


SPECS = {
    "es99": lambda S, rng: MeasureSpec((0.99,)),
    "levels": lambda S, rng: MeasureSpec((0.9, 0.99, 0.975)),
    "pnl_factor": lambda S, rng: MeasureSpec((0.99, 0.95), pnl_factor=rng.choice([1.0, 0.33], S)),
    "no_profit": lambda S, rng: MeasureSpec((0.99,), profit_factor=0.0),
    "half_profit": lambda S, rng: MeasureSpec((0.975,), pnl_factor=rng.uniform(0.2, 1.0, S), profit_factor=0.5),
    "weighted": lambda S, rng: MeasureSpec((0.99, 0.9), weight=rng.uniform(0.0, 2.0, S)),
    "weighted_ewma": lambda S, rng: MeasureSpec((0.99, 0.975), weight=0.97 ** np.arange(S)[::-1],
                                                pnl_factor=rng.choice([1.0, 0.5], S), profit_factor=0.25),
}


def contributions_sum(ports, st):
    """[P, L] Σ_j q_j·marginal_j per portfolio, and the gross scale Σ_j |q_j|·Σ_T w·|g·P| / Σ_T w."""
    port = np.repeat(np.arange(len(ports)), np.diff(ports.indptr))
    c = st.marginal * ports.quantity[:, None]
    sums = np.zeros((len(ports), st.marginal.shape[1]))
    np.add.at(sums, port, c)
    return sums


def gross_scale(ports, P, spec, st):
    """[P, L] the gross tail P&L the ES nets: Σ_j |q_j|·Σ_{T_l} w·|g·P[i_j, s]| / Σ_{T_l} w."""
    from gpurisk.tail import tail_coefficients

    coef = np.abs(tail_coefficients(spec, st.tail_index, st.tail_loss, st.tail_count))  # [P, L, K]
    port = np.repeat(np.arange(len(ports)), np.diff(ports.indptr))
    tail = np.where(st.tail_index >= 0, st.tail_index, 0)
    G = np.abs(P[ports.instrument_idx.astype(np.int64)[:, None], tail[port]])  # [nnz, K]
    per = np.einsum("jk,jlk->jl", G, coef[port]) * np.abs(ports.quantity)[:, None]
    out = np.zeros((len(ports), coef.shape[1]))
    np.add.at(out, port, per)
    return out


def check_sums(ports, P, spec, st, what=""):
    sums = contributions_sum(ports, st)
    scale = np.maximum(np.abs(st.es), gross_scale(ports, P, spec, st))
    err = np.abs(sums - st.es)
    bad = err > SUM_RTOL * scale + 1e-300
    assert not bad.any(), f"{what}: contributions miss the ES by {err[bad].max()} (scale {scale[bad].max()})"


def check_against_reference(ports, P, spec, got, want, what=""):
    np.testing.assert_array_equal(got.tail_count, want.tail_count, err_msg=f"{what}: tail counts")
    for l in range(want.tail_count.shape[1]):
        # the tail set of each level, in rank order (the documented tie rule: lower scenario index first)
        n = want.tail_count[:, l]
        K = want.tail_index.shape[1]
        inside = np.arange(K)[None, :] < n[:, None]
        np.testing.assert_array_equal(np.where(inside, got.tail_index[:, :K], -1), np.where(inside, want.tail_index, -1),
                                      err_msg=f"{what}: tail sets at level {l}")
    scale = np.maximum(np.abs(want.marginal).max(initial=0.0), 1.0)
    np.testing.assert_allclose(got.marginal, want.marginal, rtol=1e-9, atol=1e-12 * scale, err_msg=f"{what}: marginals")
    np.testing.assert_allclose(got.es, want.es, rtol=1e-9, atol=1e-12 * np.abs(want.es).max(initial=1.0))


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_tail_sets_and_marginals_match_the_reference(backend, spec_name):
    rng = np.random.default_rng(7)
    ports, P = _book(rng, 60, 30, 1237)
    spec = SPECS[spec_name](P.shape[1], np.random.default_rng(5))
    want = ref.tail_stats(ports, P, spec, attribution=True)
    got = _backend(backend).tail_stats(ports, P, spec, attribution=True)
    check_against_reference(ports, P, spec, got, want, backend)
    check_sums(ports, P, spec, got, backend)
    plain = _backend(backend).tail_stats(ports, P, spec)
    assert plain.marginal is None and plain.tail_index is None  # off by default
    np.testing.assert_allclose(plain.es, got.es, rtol=1e-12, atol=1e-12 * np.abs(got.es).max(initial=1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_follow_the_documented_rule(backend):
    """Integer P&L: many tied losses at the cut; the lower scenario indices are in the tail on every backend."""
    rng = np.random.default_rng(11)
    ports, P = _book(rng, 40, 12, 400, ties=True)
    for spec in (MeasureSpec((0.95, 0.9)), MeasureSpec((0.95,), weight=rng.choice([0.5, 1.0, 2.0], 400))):
        want = ref.tail_stats(ports, P, spec, attribution=True)
        got = _backend(backend).tail_stats(ports, P, spec, attribution=True)
        check_against_reference(ports, P, spec, got, want, backend)
        check_sums(ports, P, spec, got, backend)
        # the rule itself: within a portfolio's tail, equal losses appear in rising scenario order
        ti, tx = got.tail_index, got.tail_loss
        for p in range(len(ports)):
            n = int(got.tail_count[p].max())
            x, s = tx[p, :n], ti[p, :n]
            assert np.all((x[:-1] > x[1:]) | ((x[:-1] == x[1:]) & (s[:-1] < s[1:])))
        # and the scenarios left out rank below the last one in (loss, then index)
        L = ref.portfolio_pnl(ports, P)
        x_all = -L if spec.pnl_factor is None else -L * spec.pnl_factor
        for p in range(len(ports)):
            n = int(got.tail_count[p, 0])
            last_x, last_s = tx[p, n - 1], ti[p, n - 1]
            out = np.setdiff1d(np.arange(P.shape[1]), ti[p, :n])
            assert np.all((x_all[p, out] < last_x) | ((x_all[p, out] == last_x) & (out > last_s)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n_s=st.integers(1, 300), ties=st.booleans(),
       weighted=st.booleans(), pf=st.sampled_from([1.0, 0.5, 0.0]), level=st.sampled_from([0.5, 0.9, 0.99]))
def test_contributions_sum_to_the_es_on_every_backend(seed, n_s, ties, weighted, pf, level):
    rng = np.random.default_rng(seed)
    ports, P = _book(rng, 12, 9, n_s, max_pos=6, ties=ties)
    w = rng.choice([0.0, 0.5, 1.0, 3.0], n_s) if weighted else None
    if w is not None and w.sum() == 0:
        w[0] = 1.0
    f = rng.choice([1.0, 0.5], n_s) if rng.random() < 0.5 else None
    spec = MeasureSpec((level,), weight=w, pnl_factor=f, profit_factor=pf)
    want = ref.tail_stats(ports, P, spec, attribution=True)
    check_sums(ports, P, spec, want, "reference")
    for name in ("cpu", "cpu-direct", "gpu-emulated"):
        got = _backend(name).tail_stats(ports, P, spec, attribution=True)
        check_against_reference(ports, P, spec, got, want, name)
        check_sums(ports, P, spec, got, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_position_contribution_is_the_es(backend):
    rng = np.random.default_rng(2)
    P = rng.normal(0.0, 50.0, (5, 800))
    ports = Portfolios(np.array([0, 1, 2]), np.array([3, 1], np.int32), np.array([2.5, -7.0]), np.arange(2, dtype=np.int32))
    for spec in (MeasureSpec((0.99, 0.9)), MeasureSpec((0.975,), weight=rng.uniform(0.1, 1.0, 800), profit_factor=0.5)):
        got = _backend(backend).tail_stats(ports, P, spec, attribution=True)
        c = got.marginal * ports.quantity[:, None]
        np.testing.assert_allclose(c, got.es, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_contributions_scale_with_a_linear_book(backend):
    """Scaling every quantity by λ > 0 keeps the tail sets and scales every contribution by λ."""
    rng = np.random.default_rng(4)
    ports, P = _book(rng, 30, 15, 500)
    spec = MeasureSpec((0.99, 0.95), weight=rng.uniform(0.5, 1.5, 500))
    be = _backend(backend)
    a = be.tail_stats(ports, P, spec, attribution=True)
    for lam in (0.25, 3.0, 1000.0):
        b = be.tail_stats(ports.scaled(lam), P, spec, attribution=True)
        np.testing.assert_array_equal(a.tail_index, b.tail_index)
        ca = a.marginal * ports.quantity[:, None]
        cb = b.marginal * (lam * ports.quantity)[:, None]
        np.testing.assert_allclose(cb, lam * ca, rtol=1e-12, atol=1e-12 * np.abs(lam * ca).max())


def test_engine_asks_for_attribution_only_when_told():
    calls = []

    class Fake:
        name = "fake"

        def tail_stats(self, portfolios, P, spec, **kw):
            calls.append(kw)
            return ref.tail_stats(portfolios, P, spec, **kw)

    eng = Engine("reference")
    eng.backend = Fake()
    rng = np.random.default_rng(0)
    ports, P = _book(rng, 5, 4, 50)
    eng.tail_stats(ports, P, MeasureSpec())
    eng.tail_stats(ports, P, MeasureSpec(), attribution=True)
    assert calls == [{}, {"attribution": True}]


def test_tail_factor_rule():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(tail_factor(x, np.ones(3), 0.5), [-0.5, -1.0, -1.0])
    np.testing.assert_array_equal(tail_factor(x, np.ones(3), 0.0), [-0.0, 0.0, -1.0])


def test_tail_width_is_the_candidate_bound():
    rng = np.random.default_rng(0)
    ports, P = _book(rng, 8, 5, 333)
    spec = MeasureSpec((0.99, 0.5), weight=rng.uniform(0.0, 1.0, 333))
    st_ = ref.tail_stats(ports, P, spec, attribution=True)
    assert st_.tail_index.shape == (8, tail_candidates(spec, 333)[1])
    assert (st_.tail_count <= st_.tail_index.shape[1]).all()
