"""Every fast backend against the NumPy reference on random and edge-case inputs (float64, rtol 1e-9).

The absolute tolerance near zero is 1e-12 times the largest magnitude of the
reference array being compared, so values that cancel to ~0 are compared on
the scale of the numbers they came from.

``gpu-emulated`` is the GPU backend (its host code and ``kernels/*.cu``) with the kernels run on
the CPU by ``backends.cuda_emu``; it runs wherever a C++ compiler exists, so the GPU logic is in
the parity suite without a GPU. ``gpu`` is the same on a real device.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpurisk.backends import MeasureSpec
from gpurisk.backends import reference as ref
from gpurisk.backends.base import tail_candidates
from gpurisk.book import FUTURE, INVERSE, LINEAR, OPTION, PERPETUAL, SPOT, Portfolios
from gpurisk.pricing import VOL_ABSOLUTE, VOL_RELATIVE, VOL_TERM, PricingInputs, VolTerm
from gpurisk.scenarios import make_scenario_set

RTOL = 1e-9


class EmulatedGpu:
    """The GPU backend with its kernels run by the CPU emulator (``backends.cuda_emu``)."""

    name = "gpu-emulated"

    def __init__(self, build_dir, seed: int = 0, **shape):
        from gpurisk.backends import cuda_emu

        self.device = cuda_emu.device(build_dir, seed=seed, **shape)

    def revalue(self, pi, scenarios, numeraire="usd"):
        from gpurisk.backends import gpu

        return gpu.revalue(pi, scenarios, numeraire, device=self.device)

    def tail_stats(self, portfolios, P, spec):
        from gpurisk.backends import gpu

        return gpu.tail_stats(portfolios, P, spec, device=self.device)


_EMU_DIR: list = []


@pytest.fixture(scope="session", autouse=True)
def _emulator_build_dir(tmp_path_factory):
    """Where the emulated kernels are built (once per session)."""
    _EMU_DIR[:] = [tmp_path_factory.mktemp("cuda_emu")]


def emulated_gpu(seed: int = 0, **shape) -> EmulatedGpu:
    from gpurisk.backends import cuda_emu

    ok, why = cuda_emu.available()
    if not ok:
        pytest.skip(f"no emulated GPU: {why}")
    return EmulatedGpu(_EMU_DIR[0], seed=seed, **shape)


def _backend(name):
    if name == "gpu-emulated":
        return emulated_gpu()
    if name == "gpu":
        pytest.importorskip("cupy")
    from gpurisk.backends import get

    return get(name)


BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("gpu-emulated", id="gpu-emulated"),
    pytest.param("gpu", id="gpu", marks=pytest.mark.gpu),
]


def assert_close(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12 * scale, err_msg=what)


def assert_stats_equal(got, want):
    assert_close(got.worst, want.worst, "worst")
    assert_close(got.var, want.var, "var")
    assert_close(got.es, want.es, "es")
    np.testing.assert_array_equal(got.worst_scenario, want.worst_scenario)


def make_pricing(rng, n_ins: int, n_under: int) -> PricingInputs:
    """All kinds, both settlements, expired and zero-vol options, expiries around a 1-day horizon."""
    kind = np.resize(np.array([SPOT, FUTURE, PERPETUAL, OPTION, OPTION, OPTION], np.int8), n_ins)
    rng.shuffle(kind)
    opt = kind == OPTION
    settlement = rng.choice([LINEAR, INVERSE], n_ins).astype(np.int8)
    settlement[kind == SPOT] = LINEAR
    fwd = rng.uniform(0.5, 60_000.0, n_ins)
    strike = np.where(opt, fwd * rng.uniform(0.5, 1.5, n_ins), 0.0)
    # ttm: expired (0), inside the 1-day horizon, exactly at it, short (< 30 d) and long dated
    ttm_choices = np.array([0.0, 0.5, 1.0, 7.0, 29.0, 45.0, 400.0]) / 365.0
    ttm = np.where(opt | (kind == FUTURE), rng.choice(ttm_choices, n_ins), 0.0)
    vol = np.where(opt, rng.choice([0.0, 0.05, 0.6, 1.5], n_ins), 0.0)
    cs = np.where(settlement == INVERSE, rng.choice([1.0, 10.0, 100.0], n_ins), rng.uniform(0.001, 10.0, n_ins))
    cs = np.where(opt & (settlement == INVERSE), 1.0, cs)
    return PricingInputs(
        kind=kind,
        settlement=settlement,
        option_type=np.where(opt, rng.choice([-1, 1], n_ins), 0).astype(np.int8),
        underlying_idx=rng.integers(0, n_under, n_ins).astype(np.int32),
        contract_size=cs,
        forward=fwd,
        strike=strike,
        ttm=ttm,
        vol=vol,
    )


def make_scenarios(rng, n_s: int, n_under: int, horizon_days: float = 1.0, term: VolTerm | None = None):
    shock = rng.uniform(-0.6, 0.8, (n_s, n_under))
    shock[0] = 0.0  # the unshocked scenario
    vshock = rng.uniform(-0.6, 1.0, (n_s, n_under))
    modes = rng.choice([VOL_RELATIVE, VOL_ABSOLUTE, VOL_TERM], n_s).astype(np.int8)
    return make_scenario_set(
        [f"U{u}" for u in range(n_under)], shock, vshock, vol_mode=modes, horizon_days=horizon_days,
        term=term or VolTerm(min_vol_up=0.3),
    )


def make_portfolios(rng, n_port: int, n_ins: int, max_pos: int = 12) -> Portfolios:
    counts = rng.integers(0, max_pos + 1, n_port)
    counts[: min(3, n_port)] = 0  # empty portfolios
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(indptr[-1])
    qty = rng.normal(0.0, 20.0, nnz)
    return Portfolios(
        indptr=indptr,
        instrument_idx=rng.integers(0, n_ins, nnz).astype(np.int32),
        quantity=qty,
        account_idx=np.arange(n_port, dtype=np.int32),
    )


SPECS = {
    "es99": lambda S, rng: MeasureSpec((0.99,)),
    "levels": lambda S, rng: MeasureSpec((0.5, 0.9, 0.975, 0.99, 0.999)),
    "pnl_factor": lambda S, rng: MeasureSpec((0.99, 0.95), pnl_factor=rng.choice([1.0, 0.33], S)),
    "no_profit": lambda S, rng: MeasureSpec((0.99,), profit_factor=0.0),
    "half_profit": lambda S, rng: MeasureSpec((0.975,), pnl_factor=rng.uniform(0.2, 1.0, S), profit_factor=0.5),
    "weighted": lambda S, rng: MeasureSpec((0.99, 0.9), weight=rng.uniform(0.0, 2.0, S)),
    "weighted_ewma": lambda S, rng: MeasureSpec(
        (0.99, 0.975), weight=0.97 ** np.arange(S)[::-1], pnl_factor=rng.choice([1.0, 0.5], S), profit_factor=0.25
    ),
    "weighted_zeros": lambda S, rng: MeasureSpec((0.95,), weight=np.where(rng.random(S) < 0.5, 0.0, 1.0)),
}


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(20261121)
    pi = make_pricing(rng, 240, 4)
    sc = make_scenarios(rng, 1237, 4)  # not a multiple of any tile size
    return pi, sc, rng


@pytest.mark.parametrize("numeraire", ["usd", "settlement"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_revalue_matches_reference(backend, numeraire, case):
    pi, sc, _ = case
    be = _backend(backend)
    assert_close(be.revalue(pi, sc, numeraire), ref.revalue(pi, sc, numeraire))


@pytest.mark.parametrize("backend", BACKENDS)
def test_revalue_long_horizon_and_term_floors(backend):
    """Horizon beyond every expiry (options go to intrinsic), term-vol floors, tiny shocks."""
    rng = np.random.default_rng(3)
    pi = make_pricing(rng, 90, 2)
    sc = make_scenarios(rng, 33, 2, horizon_days=30.0, term=VolTerm(power_short=0.5, min_vol_up=0.9, vol_floor=0.2))
    sc.price_shock[1] = 1e-12
    be = _backend(backend)
    for num in ("usd", "settlement"):
        assert_close(be.revalue(pi, sc, num), ref.revalue(pi, sc, num), num)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_tail_stats_matches_reference(backend, spec_name, case):
    pi, sc, rng = case
    P = ref.revalue(pi, sc, "usd")
    pf = make_portfolios(np.random.default_rng(11), 150, len(pi))
    spec = SPECS[spec_name](sc.n_scenarios, np.random.default_rng(5))
    be = _backend(backend)
    assert_stats_equal(be.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_pick_the_reference_scenarios(backend):
    """Integer P&L: many exact ties; worst_scenario is the smallest index, weighted tails pick the same rows."""
    rng = np.random.default_rng(8)
    P = rng.integers(-3, 4, (20, 401)).astype(np.float64)
    pf = make_portfolios(rng, 60, 20, max_pos=4)
    pf = Portfolios(pf.indptr, pf.instrument_idx, np.round(pf.quantity / 10.0), pf.account_idx)
    be = _backend(backend)
    for spec in (
        MeasureSpec((0.99, 0.5, 0.01)),
        MeasureSpec((0.99, 0.8), weight=rng.integers(0, 3, 401).astype(np.float64)),
        MeasureSpec((0.9,), profit_factor=0.0, pnl_factor=np.where(np.arange(401) % 2 == 0, 1.0, 0.5)),
    ):
        assert_stats_equal(be.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec))


@pytest.mark.parametrize("backend", BACKENDS)
def test_weighted_tie_group_straddling_the_cut(backend):
    """A tie group cut by the tail mass: the reference keeps the tied scenarios with the smallest indices."""
    rng = np.random.default_rng(21)
    S = 200
    P = np.ones((1, S))  # loss −1 per short contract ...
    P[0, [3, 50, 77, 120, 199]] = 10.0  # ... and five big losses
    pf = Portfolios(np.array([0, 1], np.int64), np.array([0], np.int32), np.array([-1.0]), np.zeros(1, np.int32))
    spec = MeasureSpec((0.95, 0.9), weight=1.0 + 0.5 * rng.random(S))
    want = ref.tail_stats(pf, P, spec)
    assert want.var[0, 0] == -1.0 or want.var[0, 0] == 1.0  # the cut falls inside the tie group
    assert_stats_equal(_backend(backend).tail_stats(pf, P, spec), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_scenario_and_empty_inputs(backend):
    be = _backend(backend)
    rng = np.random.default_rng(1)
    P = rng.normal(size=(5, 1))
    pf = make_portfolios(rng, 7, 5)
    for spec in (MeasureSpec((0.99, 0.5)), MeasureSpec((0.99,), weight=np.array([2.0]))):
        got, want = be.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec)
        assert_stats_equal(got, want)
        np.testing.assert_array_equal(got.worst_scenario, 0)
    empty = Portfolios(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.int32))
    out = be.tail_stats(empty, P, MeasureSpec((0.99, 0.9)))
    assert len(out) == 0 and out.var.shape == (0, 2)
    # portfolios with no positions: zero loss everywhere, worst scenario 0
    none = Portfolios(np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0), np.arange(3, dtype=np.int32))
    z = be.tail_stats(none, rng.normal(size=(5, 50)), MeasureSpec((0.99,)))
    np.testing.assert_array_equal(z.worst, 0.0)
    np.testing.assert_array_equal(z.es, 0.0)
    np.testing.assert_array_equal(z.worst_scenario, 0)


def test_cpu_tiles_and_chunks_do_not_change_the_result(monkeypatch, case):
    """Tiny tiles (S = 1237 is no multiple of them) and tiny chunks give the same numbers as one pass."""
    from gpurisk.backends import cpu

    pi, sc, _ = case
    P = ref.revalue(pi, sc, "usd")
    pf = make_portfolios(np.random.default_rng(4), 97, len(pi))
    for spec in (SPECS["levels"](sc.n_scenarios, None), SPECS["weighted_ewma"](sc.n_scenarios, np.random.default_rng(2))):
        want = ref.tail_stats(pf, P, spec)
        monkeypatch.setattr(cpu, "TILE_BYTES", 8 * len(pi) * 50)  # 50-column tiles
        monkeypatch.setattr(cpu, "STATE_BYTES", 16 * 1000)  # a few portfolios per chunk
        assert_stats_equal(cpu.tail_stats(pf, P, spec), want)
        monkeypatch.undo()


@st.composite
def tail_problems(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    n_ins = draw(st.integers(1, 15))
    n_s = draw(st.integers(1, 300))
    n_port = draw(st.integers(0, 25))
    levels = tuple(draw(st.lists(st.sampled_from([0.5, 0.9, 0.95, 0.975, 0.99, 0.999]), min_size=1, max_size=3)))
    weighted = draw(st.booleans())
    profit = draw(st.sampled_from([1.0, 0.5, 0.0]))
    integer = draw(st.booleans())  # integer P&L: ties
    rng = np.random.default_rng(seed)
    P = rng.integers(-5, 6, (n_ins, n_s)).astype(float) if integer else rng.normal(0, 100, (n_ins, n_s))
    pf = make_portfolios(rng, n_port, n_ins, max_pos=6)
    spec = MeasureSpec(
        levels,
        weight=rng.uniform(0.0, 3.0, n_s) if weighted else None,
        pnl_factor=rng.choice([1.0, 0.33], n_s),
        profit_factor=profit,
    )
    return P, pf, spec


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail_problems())
def test_cpu_tail_stats_property(problem):
    from gpurisk.backends import cpu

    P, pf, spec = problem
    assert_stats_equal(cpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec))


@pytest.mark.gpu
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail_problems())
def test_gpu_tail_stats_property(problem):
    gpu = _backend("gpu")
    P, pf, spec = problem
    assert_stats_equal(gpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail_problems())
def test_gpu_emulated_tail_stats_property(problem):
    P, pf, spec = problem
    assert_stats_equal(emulated_gpu(seed=len(pf)).tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec))


def test_cpu_screen_tiles_chunks_and_paths_do_not_change_the_result(monkeypatch, case):
    """The screened CPU path with tiny screen tiles (S = 1237: a partial last tile) and tiny chunks, and the
    direct path, all give the reference's numbers."""
    from gpurisk.backends import cpu

    pi, sc, _ = case
    P = ref.revalue(pi, sc, "usd")
    pf = make_portfolios(np.random.default_rng(4), 97, len(pi))
    S = sc.n_scenarios
    for spec in (SPECS["levels"](S, None), SPECS["weighted_ewma"](S, np.random.default_rng(2)),
                 SPECS["half_profit"](S, np.random.default_rng(3))):
        want = ref.tail_stats(pf, P, spec)
        for tile_cols, screen_on in ((50, True), (333, True), (None, False)):
            monkeypatch.setattr(cpu, "SCREEN", screen_on)
            monkeypatch.setattr(cpu, "SCREEN_MIN_POSITIONS_PER_ROW", 0.0)
            if tile_cols:
                monkeypatch.setattr(cpu, "SCREEN_TILE_BYTES", 2 * len(pi) * tile_cols)
            monkeypatch.setattr(cpu, "STATE_BYTES", 40 * 1000)  # a few portfolios per chunk
            assert_stats_equal(cpu.tail_stats(pf, P, spec), want)
            monkeypatch.undo()


def test_cpu_misleading_sample_floor_is_redone_exactly():
    """Huge losses on exactly the sampled scenarios set a floor above the true m-th loss: the portfolio is redone."""
    from gpurisk.backends import cpu

    S = 4000
    rng = np.random.default_rng(6)
    P = rng.normal(0.0, 1.0, (3, S))
    P[0, :: cpu.SAMPLE_STRIDE] = 1e6  # every sampled scenario (stride 16 from 0) is a huge loss for a short
    pf = Portfolios(np.array([0, 2, 3], np.int64), np.array([0, 1, 2], np.int32), np.array([-1.0, 0.5, 2.0]),
                    np.zeros(2, np.int32))
    for spec in (MeasureSpec((0.99,)), MeasureSpec((0.99,), weight=rng.uniform(0.5, 1.0, S))):
        assert S // (4 * tail_candidates(spec, S)[1]) >= cpu.SAMPLE_STRIDE  # the sample is every 16th scenario
        assert_stats_equal(cpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_are_clear_errors_not_crashes(backend, case):
    """Compiled kernels do not bounds-check: malformed inputs must be refused before they run."""
    be = _backend(backend)
    pi, sc, _ = case
    P = np.zeros((4, 10))
    bad_csr = [
        Portfolios(np.array([0, 3], np.int64), np.array([0, 1], np.int32), np.ones(2), np.zeros(1, np.int32)),
        Portfolios(np.array([0, 2, 1], np.int64), np.array([0, 1], np.int32), np.ones(2), np.zeros(2, np.int32)),
        Portfolios(np.array([0, 2], np.int64), np.array([0, 4], np.int32), np.ones(2), np.zeros(1, np.int32)),
        Portfolios(np.array([0, 2], np.int64), np.array([0, -1], np.int32), np.ones(2), np.zeros(1, np.int32)),
    ]
    for pf in bad_csr:
        with pytest.raises(ValueError, match="portfolio"):
            be.tail_stats(pf, P, MeasureSpec((0.99,)))
    wrong_u = PricingInputs(**{**pi.__dict__, "underlying_idx": np.full(len(pi), 9, np.int32)})
    with pytest.raises(ValueError, match="scenario column 9"):
        be.revalue(wrong_u, sc, "usd")


@pytest.mark.parametrize("levels", [(0.99,), (0.9,), (0.9, 0.99, 0.999)])
def test_cpu_both_sample_floor_paths_match_the_reference(levels):
    """ES99 of 5,000 scenarios ranks the sample with a running top r, ES90 with a quickselect: both exact."""
    from gpurisk.backends import cpu

    S = 5000
    rng = np.random.default_rng(12)
    P = rng.standard_t(3, (30, S)) * rng.lognormal(0.0, 1.0, (30, 1))
    P[7] = np.round(P[7])  # a row with ties
    pf = make_portfolios(rng, 200, 30)
    spec = MeasureSpec(levels, pnl_factor=rng.choice([1.0, 0.5], S), profit_factor=0.5)
    m = tail_candidates(spec, S)[1]
    stride = max(1, min(cpu.SAMPLE_STRIDE, S // (4 * m)))
    rank = int(np.ceil(cpu.SAMPLE_MARGIN * m * len(range(0, S, stride)) / S))
    assert stride > 1 and ((rank <= cpu.TOP_R_MAX) == (levels == (0.99,)))
    assert_stats_equal(cpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec))
