"""The GPU backend: launch geometry, host-side checks, the device cache and a NumPy
emulation of the tail kernel's selection (everywhere); device behaviour (only where a
CUDA device exists)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from gpurisk.backends import MeasureSpec
from gpurisk.backends import gpu as gpu_mod
from gpurisk.backends import reference as ref
from gpurisk.backends.base import tail_candidates
from gpurisk.book import Portfolios


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
    """The kernel keeps exactly m candidates (ties cut in scenario order), so cap = next power of two >= m."""
    grid, cap, use_shared, smem = gpu_mod.launch_shape(5, 1000, True, 300, sm_count=132)
    assert grid == 5 and cap == 512 and smem == 1000 * 8 + cap * 12 and use_shared
    assert smem <= gpu_mod.DYNAMIC_SMEM
    assert gpu_mod.launch_shape(5, 1000, True, 1, sm_count=132)[1] == 1
    assert gpu_mod.launch_shape(5, 100_000, True, gpu_mod.MAX_CANDIDATES)[1] == gpu_mod.MAX_CANDIDATES
    with pytest.raises(gpu_mod.GpuLimitError):
        gpu_mod.launch_shape(5, 100_000, True, gpu_mod.MAX_CANDIDATES + 1)


def test_launch_shape_uses_the_opted_in_shared_memory_budget():
    n_s = 20_000  # 160 KB of losses: global scratch by default, shared memory with an H100's opt-in budget
    assert not gpu_mod.launch_shape(1000, n_s, False, 200)[2]
    budget = 227 * 1024 - 5 * 1024
    grid, cap, use_shared, smem = gpu_mod.launch_shape(1000, n_s, False, 200, sm_count=132, smem_budget=budget)
    assert use_shared and smem == n_s * 8 <= budget and grid == 1000
    grid, cap, use_shared, smem = gpu_mod.launch_shape(1000, n_s, True, 2000, sm_count=132, smem_budget=budget)
    assert use_shared and cap == 2048 and smem == n_s * 8 + cap * 12 <= budget


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


def _one_portfolio(n_ins=2):
    return Portfolios(
        indptr=np.array([0, n_ins], dtype=np.int64),
        instrument_idx=np.arange(n_ins, dtype=np.int32),
        quantity=np.ones(n_ins),
        account_idx=np.zeros(1, dtype=np.int32),
    )


@pytest.mark.parametrize("field", ["pnl_factor", "weight"])
@pytest.mark.parametrize("length", [9, 11])
def test_spec_vector_lengths_are_checked_before_any_device_work(monkeypatch, field, length):
    """A wrong-length pnl_factor or weight would make the kernel read past its buffer."""

    def no_device():
        raise AssertionError("the device was touched before the host-side checks")

    monkeypatch.setattr(gpu_mod, "_cupy", no_device)
    P = np.zeros((2, 10))
    spec = MeasureSpec((0.9,), **{field: np.ones(length)})
    with pytest.raises(ValueError, match=field):
        gpu_mod.tail_stats(_one_portfolio(), P, spec)


def test_device_cache_drops_entries_whose_host_object_is_collected():
    cache = gpu_mod._DeviceCache(4)
    host = np.zeros(3)
    made = []
    assert cache.get("P", host, lambda: made.append(1) or "dev") == "dev"
    assert cache.get("P", host, lambda: made.append(1) or "other") == "dev" and made == [1]
    del host
    gc.collect()
    assert len(cache) == 0  # the device value is released with its host object
    keep = [np.zeros(1) for _ in range(6)]
    for i, h in enumerate(keep):
        cache.put("P", h, i)
    assert len(cache) == 4 and cache.lookup("P", keep[0]) is None and cache.lookup("P", keep[5]) == 5
    cache.put("x", (1, 2), "tuple")  # not weakly referenceable: not cached
    assert cache.lookup("x", (1, 2)) is None
    cache.clear()
    assert len(cache) == 0


def test_only_read_only_host_p_is_cacheable():
    P = np.arange(6.0).reshape(2, 3).copy()  # owns its data, as revalue's asnumpy result does
    assert not gpu_mod._read_only(P)
    view = P[:, :2]
    view.flags.writeable = False
    assert not gpu_mod._read_only(view)  # its base can still be written
    P.flags.writeable = False
    assert gpu_mod._read_only(P) and gpu_mod._read_only(P[:, :2])
    assert not gpu_mod._read_only(np.arange(6.0).reshape(2, 3))  # a view of a writeable array


# ---- a NumPy emulation of kernels/tail_stats.cu's selection ----


def _key(x):
    u = np.asarray(x, np.float64).view(np.uint64)
    return np.where(u >> np.uint64(63) == 1, ~u, u | np.uint64(1 << 63))


def _unkey(k):
    k = np.uint64(k)
    u = (k & np.uint64(0x7FFFFFFFFFFFFFFF)) if k >> np.uint64(63) else ~k
    return float(np.array([u], np.uint64).view(np.float64)[0])


def _radix_select(x, k):
    """(key of the k-th largest, count strictly above): 8 passes of 8 bits, digit by the block scan."""
    keys = _key(x)
    prefix, mask, left = np.uint64(0), np.uint64(0), k
    for shift in range(56, -1, -8):
        sel = keys[(keys & mask) == prefix]
        hist = np.bincount(((sel >> np.uint64(shift)) & np.uint64(255)).astype(np.int64), minlength=256)
        cnt = hist[::-1]  # thread t holds digit 255 - t
        incl = np.cumsum(cnt)
        excl = incl - cnt
        (t,) = np.nonzero((excl < left) & (left <= incl))
        assert len(t) == 1  # exactly one thread writes the digit
        prefix |= np.uint64(255 - int(t[0])) << np.uint64(shift)
        left -= int(excl[t[0]])
        mask |= np.uint64(255) << np.uint64(shift)
    return prefix, k - left


def _kernel_weighted(x, w, targets, m, tpb=gpu_mod.THREADS):
    """VaR / ES per target as the kernel's weighted path computes them (status 2 -> None)."""
    thr, above = _radix_select(x, m)
    keys = _key(x)
    cand = list(np.nonzero(keys > thr)[0])
    assert len(cand) == above
    need, taken = m - above, 0
    for b0 in range(0, len(x), tpb):  # block-ordered compaction of the ties (ballot / popc)
        if taken >= need:
            break
        ties = [s for s in range(b0, min(b0 + tpb, len(x))) if keys[s] == thr]
        cand += [s for before, s in enumerate(ties) if taken + before < need]
        taken += len(ties)
    assert len(cand) == m
    order = sorted(cand, key=lambda s: (-x[s], s))  # the bitonic sort's order
    out = []
    for tg in targets:
        cw = cwx = 0.0
        for r, s in enumerate(order):
            cw += w[s]
            cwx += w[s] * x[s]
            if cw >= tg:
                break
        else:
            if m < len(x):
                return None
        out.append((x[order[r]], cwx / cw))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_emulated_weighted_selection_matches_the_reference_with_many_ties(seed):
    """Ties at the threshold (flat portfolios, intrinsic-priced options, grids) are cut in scenario order."""
    rng = np.random.default_rng(seed)
    for t in range(40):
        S = int(rng.integers(2, 1500))
        kind = t % 4
        if kind == 0:
            x = np.zeros(S)  # a flat or empty portfolio: every scenario ties
        elif kind == 1:
            x = rng.choice([0.0, 1.0, 2.0, -1.0], S)
        elif kind == 2:
            x = np.where(rng.uniform(size=S) < 0.8, 3.5, rng.normal(size=S))
        else:
            x = np.round(rng.normal(size=S), 1)
        x = x + 0.0
        w = rng.uniform(0, 1, S) ** 2 + (1e-3 if t % 3 else 0.0)
        spec = MeasureSpec((0.99, 0.9, 0.5), weight=w)
        weighted, m, _, targets = tail_candidates(spec, S)
        got = _kernel_weighted(x, w, targets, m)
        assert got is not None
        want = ref.tail_of_block(-x[None, :], spec)
        for j, (var, es) in enumerate(got):
            assert var == want.var[0, j] and es == want.es[0, j]


def test_emulated_radix_select_finds_the_kth_largest():
    rng = np.random.default_rng(7)
    special = [0.0, 1e-300, -1e-300, 5e-324, -5e-324, np.inf, -np.inf, 1.0]
    for t in range(200):
        S = int(rng.integers(1, 600))
        x = (rng.choice(special, S) if t % 2 else rng.integers(-3, 4, S).astype(float)) + 0.0
        k = int(rng.integers(1, S + 1))
        kth, above = _radix_select(x, k)
        xs = np.sort(x)[::-1]
        assert _unkey(kth) == xs[k - 1] and above == int((x > xs[k - 1]).sum())


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
@pytest.mark.parametrize("S, shared", [(9001, True), (40_001, False)], ids=["opted-in-shared", "global-scratch"])
def test_large_s_paths(gpu, S, shared):
    """Past 48 KiB the kernel uses the opted-in shared memory; past that budget, global scratch rows."""
    import cupy as cp

    _, sm, budget = gpu._tail_kernel(cp)
    assert gpu.launch_shape(40, S, True, 2048, sm, budget)[2] == shared
    pi, sc, pf = _case(S=S, n_port=40)
    P = ref.revalue(pi, sc, "usd")
    for spec in (MeasureSpec((0.99, 0.999)), MeasureSpec((0.99,), weight=np.linspace(1.0, 2.0, S))):
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
def test_weighted_ties_beyond_the_old_buffer_stay_on_the_gpu(gpu):
    """Thousands of tied losses (a flat portfolio) no longer overflow the candidate buffer."""
    S = 6000
    pf = _one_portfolio()
    P = np.zeros((2, S))
    spec = MeasureSpec((0.99, 0.9), weight=np.linspace(1.0, 2.0, S))
    got, want = gpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec)
    np.testing.assert_array_equal(got.var, want.var)
    np.testing.assert_array_equal(got.es, want.es)


@pytest.mark.gpu
def test_nan_pnl_raises_non_finite(gpu):
    from gpurisk.backends import NonFinitePnL

    P = np.zeros((2, 50))
    P[1, 7] = np.nan
    with pytest.raises(NonFinitePnL):
        gpu.tail_stats(_one_portfolio(), P, MeasureSpec((0.99,)))


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
