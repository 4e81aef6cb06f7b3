"""The GPU backend: launch geometry (everywhere) and device behaviour (only where a CUDA device exists)."""

from __future__ import annotations

import numpy as np
import pytest

from gpurisk.backends import MeasureSpec
from gpurisk.backends import gpu as gpu_mod
from gpurisk.backends import reference as ref
from gpurisk.backends.base import tail_candidates


def test_launch_shape_uses_shared_memory_when_the_losses_fit():
    grid, cap, use_shared, smem = gpu_mod.launch_shape(10_000, 4096, False, 41, sm_count=132)
    assert use_shared and cap == 0 and smem == 4096 * 8 <= gpu_mod.DYNAMIC_SMEM
    assert grid == 8 * 132


def test_launch_shape_falls_back_to_global_scratch_for_large_s():
    n_s = 100_000
    grid, cap, use_shared, smem = gpu_mod.launch_shape(1_000_000, n_s, False, 1000, sm_count=132)
    assert not use_shared and smem == 0
    assert grid * n_s * 8 <= gpu_mod.SCRATCH_BYTES


def test_launch_shape_weighted_candidates():
    grid, cap, use_shared, smem = gpu_mod.launch_shape(5, 1000, True, 300, sm_count=132)
    assert grid == 5 and cap == 1024 and cap >= 300 and smem == 1000 * 8 + cap * 12 and use_shared
    assert smem <= gpu_mod.DYNAMIC_SMEM
    with pytest.raises(gpu_mod.GpuLimitError):
        gpu_mod.launch_shape(5, 100_000, True, gpu_mod.MAX_CANDIDATES + 1)


def test_tail_candidates_bound_contains_the_weighted_tail():
    """Whatever the order of losses, the m largest carry at least the tail mass."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        S = int(rng.integers(1, 500))
        w = rng.uniform(0, 1, S) ** 3
        spec = MeasureSpec((0.99, 0.9), weight=w)
        weighted, m, _, targets = tail_candidates(spec, S)
        assert weighted and 1 <= m <= S
        assert np.sort(w)[:m].sum() >= targets.max() or m == S


# ---- on a device ----


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("cupy")
    from gpurisk.backends import get

    return get("gpu")


def _case(S=700, n_port=300, seed=0):
    from test_backends_parity import make_portfolios, make_pricing, make_scenarios

    rng = np.random.default_rng(seed)
    pi = make_pricing(rng, 120, 3)
    sc = make_scenarios(rng, S, 3)
    return pi, sc, make_portfolios(rng, n_port, len(pi))


@pytest.mark.gpu
def test_revalue_keeps_its_device_copy_for_tail_stats(gpu):
    import cupy as cp

    pi, sc, pf = _case()
    gpu.clear_cache()
    P = gpu.revalue(pi, sc, "usd")
    assert gpu._P_on_device(P) is gpu._cache.items[("P", id(P))][1]  # no second upload
    spec = MeasureSpec((0.99, 0.95))
    got, want = gpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec)
    np.testing.assert_allclose(got.es, want.es, rtol=1e-9, atol=1e-12 * np.abs(want.es).max())
    P_dev = gpu.revalue_device(pi, sc, "usd")
    assert isinstance(P_dev, cp.ndarray)
    dev = gpu.tail_stats(pf, P_dev, spec)
    np.testing.assert_array_equal(dev.worst_scenario, got.worst_scenario)


@pytest.mark.gpu
def test_global_scratch_path_for_large_s(gpu):
    pi, sc, pf = _case(S=9001, n_port=40)
    P = ref.revalue(pi, sc, "usd")
    for spec in (MeasureSpec((0.99, 0.999)), MeasureSpec((0.99,), weight=np.linspace(1.0, 2.0, 9001))):
        got, want = gpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec)
        np.testing.assert_allclose(got.var, want.var, rtol=1e-9, atol=1e-12 * np.abs(want.var).max())
        np.testing.assert_allclose(got.es, want.es, rtol=1e-9, atol=1e-12 * np.abs(want.es).max())
        np.testing.assert_array_equal(got.worst_scenario, want.worst_scenario)


@pytest.mark.gpu
def test_engine_on_gpu_uses_it_without_fallback(gpu):
    from gpurisk.backends import Engine

    pi, sc, pf = _case(S=300, n_port=20)
    eng = Engine("gpu")
    P = eng.revalue(pi, sc, "settlement")
    eng.tail_stats(pf, P, MeasureSpec((0.99,)))
    assert eng.used == ["gpu", "gpu"] and eng.fallbacks == 0


@pytest.mark.gpu
def test_too_many_weighted_candidates_fall_back_to_cpu(gpu):
    from gpurisk.backends import Engine

    pi, sc, pf = _case(S=5000, n_port=10)
    P = ref.revalue(pi, sc, "usd")
    spec = MeasureSpec((0.5,), weight=np.ones(5000))  # the tail needs ~2500 candidates
    with pytest.raises(gpu_mod.GpuLimitError):
        gpu.tail_stats(pf, P, spec)
    eng = Engine("gpu")
    got = eng.tail_stats(pf, P, spec)
    assert eng.fallbacks == 1 and eng.used == ["cpu"]
    np.testing.assert_allclose(got.es, ref.tail_stats(pf, P, spec).es, rtol=1e-9)
