"""The GPU backend: launch geometry, host-side checks, the device cache, and its kernels run by the
CPU emulator (``backends.cuda_emu``, everywhere a C++ compiler exists): thread-order independence,
the global-memory and spill paths, weighted tails that outgrow the first guess, and the emulator's
own detection of racy and divergent kernels. Device behaviour only where a CUDA device exists."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from gpurisk.backends import MeasureSpec
from gpurisk.backends import gpu as gpu_mod
from gpurisk.backends import reference as ref
from gpurisk.backends.base import tail_candidates
from gpurisk.book import Portfolios


def test_launch_shape_keeps_losses_and_candidates_in_shared_memory_when_they_fit():
    grid, cap, y_sh, smem = gpu_mod.launch_shape(10_000, 4096, 41, sm_count=132)
    assert y_sh and cap == 256 and smem == 12 * cap + 4 * 4096 <= gpu_mod.DYNAMIC_SMEM
    assert grid == 8 * 132
    grid, cap, y_sh, smem = gpu_mod.launch_shape(5, 1000, 300, sm_count=132)
    assert grid == 5 and cap == 1024 and y_sh and smem <= gpu_mod.DYNAMIC_SMEM


def test_launch_shape_moves_losses_to_global_rows_for_large_s():
    grid, cap, y_sh, smem = gpu_mod.launch_shape(1_000_000, 100_000, 1000, sm_count=132)
    assert not y_sh and cap >= 256 and smem == 12 * cap <= gpu_mod.DYNAMIC_SMEM
    budget = 227 * 1024 - 9 * 1024  # an H100's opt-in budget less the static arrays
    grid, cap, y_sh, smem = gpu_mod.launch_shape(1000, 20_000, 200, sm_count=132, smem_budget=budget)
    assert y_sh and cap == 512 and smem == 12 * cap + 4 * 20_000 <= budget


def test_spill_shape_holds_every_scenario_within_the_scratch_bound():
    for n_s in (1, 1237, 10_000, 100_000, 2_000_000):
        grid, cap, y_sh, smem = gpu_mod.spill_shape(10**6, n_s, sm_count=132)
        assert cap >= n_s and grid >= 1
        assert grid == 1 or grid * (12 * cap + (0 if y_sh else 4 * n_s)) <= gpu_mod.SCRATCH_BYTES


def test_the_first_call_of_a_process_builds_its_device_without_deadlock(monkeypatch):
    """``gpu.revalue`` / ``tail_stats`` as a process's first call (no ``available()`` before): building the
    device compiles the tail kernel, which takes the module lock, so the device table needs a lock of its
    own (it once shared that non-reentrant lock, and the call hung for good on an H200). CuPy is stood in
    for by a minimal module here (no GPU), so that the locking path itself runs."""
    import threading
    from types import SimpleNamespace

    class _Fn:
        shared_size_bytes = 8 * 1024
        max_dynamic_shared_size_bytes = 0

    class _Module:
        def __init__(self, code, options):
            assert "--fmad=false" in options and "tail_stats" in code or "revalue" in code

        def get_function(self, name):
            return _Fn()

    class _Device:
        id = 0
        attributes = {"MultiProcessorCount": 132, "MaxSharedMemoryPerBlockOptin": 227 * 1024}

        def __init__(self, i=None):
            pass

    stand_in = SimpleNamespace(RawModule=_Module, cuda=SimpleNamespace(Device=_Device))
    monkeypatch.setattr(gpu_mod, "_cupy", lambda: stand_in)
    monkeypatch.setattr(gpu_mod, "_devices", {})
    monkeypatch.setattr(gpu_mod, "_kernels", {})
    monkeypatch.setattr(gpu_mod, "_modules", {})
    got = []
    t = threading.Thread(target=lambda: got.append(gpu_mod._device()), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "building the first device deadlocked"
    assert got[0].sm_count == 132 and got[0].smem_budget == 227 * 1024 - 8 * 1024
    assert gpu_mod._device() is got[0]  # built once per device


def test_weighted_first_guess_is_within_the_safe_bound():
    S = 10_000
    w = 0.97 ** np.arange(S)[::-1]  # EWMA: the safe bound is nearly every scenario
    spec = MeasureSpec((0.99, 0.975), weight=w)
    _, m_safe, _, _ = tail_candidates(spec, S)
    assert m_safe > 9000
    assert gpu_mod.weighted_first_guess(spec, S, m_safe) == 2 * 250 + 64
    assert gpu_mod.weighted_first_guess(MeasureSpec((0.5,), weight=np.ones(10)), 10, 7) == 7


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
@pytest.mark.parametrize("where", ["shared", "global-rows"], ids=["losses-in-shared", "losses-in-global-rows"])
def test_large_s_paths(gpu, where):
    """9,001 screened losses fit the opted-in shared memory; one more than this device's shared budget
    holds (at least 40,001; an H200 holds about 57,000) go to per-block global rows."""
    dev = gpu._device()
    S = 9001 if where == "shared" else max(40_001, (dev.smem_budget - 12 * 256) // 4 + 1) | 1
    y_sh = gpu.launch_shape(40, S, 200, dev.sm_count, dev.smem_budget)[2]
    assert y_sh == (where == "shared")
    pi, sc, pf = _case(S=S, n_port=40)
    P = ref.revalue(pi, sc, "usd")
    for spec in (MeasureSpec((0.99, 0.999)), MeasureSpec((0.99,), weight=np.linspace(1.0, 2.0, S))):
        got, want = gpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec)
        np.testing.assert_allclose(got.var, want.var, rtol=1e-9, atol=1e-12 * np.abs(want.var).max())
        np.testing.assert_allclose(got.es, want.es, rtol=1e-9, atol=1e-12 * np.abs(want.es).max())
        np.testing.assert_array_equal(got.worst_scenario, want.worst_scenario)


@pytest.mark.gpu
def test_revalue_as_the_first_call_of_a_fresh_process():
    """A fresh process whose first GPU call is ``gpu.revalue`` (the benchmarks' workers): it returns."""
    import subprocess
    import sys

    pytest.importorskip("cupy")
    code = ("import sys; sys.path.insert(0, 'tests'); from test_gpu import _case; from gpurisk.backends import gpu; "
            "pi, sc, pf = _case(S=64, n_port=8); P = gpu.revalue(pi, sc, 'usd'); print(P.shape)")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("(120, 64)")


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
def test_weighted_tails_needing_thousands_of_candidates_stay_on_the_gpu(gpu):
    """No candidate limit: a median of 5,000 weighted scenarios and an EWMA set stay on the GPU."""
    from gpurisk.backends import Engine

    pi, sc, pf = _case(S=5000, n_port=10)
    P = ref.revalue(pi, sc, "usd")
    for spec in (MeasureSpec((0.5,), weight=np.ones(5000) + np.arange(5000) % 3),
                 MeasureSpec((0.99, 0.975), weight=0.97 ** np.arange(5000)[::-1])):
        eng = Engine("gpu")
        got = eng.tail_stats(pf, P, spec)
        assert eng.fallbacks == 0 and eng.used == ["gpu"]
        want = ref.tail_stats(pf, P, spec)
        np.testing.assert_allclose(got.es, want.es, rtol=1e-9)
        np.testing.assert_array_equal(got.worst_scenario, want.worst_scenario)


@pytest.mark.gpu
def test_release_frees_the_cache_and_the_pools(gpu):
    import cupy as cp

    pi, sc, pf = _case(S=300, n_port=20)
    P = gpu.revalue(pi, sc, "usd")
    gpu.tail_stats(pf, P, MeasureSpec((0.99,)))
    assert len(gpu._cache) > 0
    gpu.release()
    assert len(gpu._cache) == 0 and cp.get_default_memory_pool().used_bytes() == 0


# ---- the kernels under the CPU emulator (no GPU needed) ----


@pytest.fixture(scope="module")
def emu_dir(tmp_path_factory):
    from gpurisk.backends import cuda_emu

    ok, why = cuda_emu.available()
    if not ok:
        pytest.skip(f"no C++ compiler for the emulated kernels: {why}")
    d = tmp_path_factory.mktemp("emu")
    cuda_emu.build(d)
    return d


def _emu(emu_dir, **kw):
    from gpurisk.backends import cuda_emu

    return cuda_emu.device(emu_dir, **kw)


def _assert_same(got, want):
    for name in ("worst", "var", "es"):
        w = getattr(want, name)
        np.testing.assert_allclose(getattr(got, name), w, rtol=1e-9, atol=1e-12 * max(1.0, float(np.abs(w).max())))
    np.testing.assert_array_equal(got.worst_scenario, want.worst_scenario)


def test_emulated_results_do_not_depend_on_thread_order(emu_dir):
    """Blocks and threads run in a different random order under each seed: bit-identical results."""
    pi, sc, pf = _case(S=701, n_port=40, seed=3)
    P = ref.revalue(pi, sc, "usd")
    spec = MeasureSpec((0.5, 0.9, 0.99), pnl_factor=np.where(np.arange(701) % 3 == 0, 0.5, 1.0), profit_factor=0.5)
    runs = [gpu_mod.tail_stats(pf, P, spec, device=_emu(emu_dir, seed=seed)) for seed in (1, 2, 3)]
    for r in runs[1:]:
        for name in ("worst", "worst_scenario", "var", "es"):
            np.testing.assert_array_equal(getattr(r, name), getattr(runs[0], name))
    _assert_same(runs[0], ref.tail_stats(pf, P, spec))


def test_emulated_global_rows_and_spill_pass(emu_dir):
    """A small shared-memory budget puts the screened losses in global rows and sends tie-heavy portfolios
    (more candidates than the shared buffer holds) to the spill launch: same results as the reference."""
    rng = np.random.default_rng(4)
    S = 1500
    P = rng.integers(-2, 3, (12, S)).astype(np.float64)  # integer P&L: large tie groups at every cut
    P[3] = 0.0  # a flat row: every scenario ties
    pf = Portfolios(np.array([0, 0, 1, 3, 6, 10], np.int64), np.array([3, 0, 1, 2, 4, 5, 6, 7, 8, 9], np.int32),
                    np.array([2.0, 1.0, -1.0, 1.0, 0.5, -2.0, 1.0, 1.0, -1.0, 3.0]), np.arange(5, dtype=np.int32))
    dev = _emu(emu_dir, smem_budget=4 * 1024)
    for spec in (MeasureSpec((0.99, 0.9)), MeasureSpec((0.95,), weight=0.99 ** np.arange(S)[::-1])):
        _assert_same(gpu_mod.tail_stats(pf, P, spec, device=dev), ref.tail_stats(pf, P, spec))
    kinds = [(fn, grid) for fn, grid, _ in dev.launches if fn == "tail_stats"]
    assert len(kinds) >= 3  # a first launch and a spill launch at least once
    assert not gpu_mod.launch_shape(5, S, 150, dev.sm_count, dev.smem_budget)[2]  # losses in global rows


def test_emulated_weighted_tail_beyond_the_first_guess(emu_dir):
    """The largest losses in the lightest (oldest) scenarios: the tail needs far more candidates than the
    first guess, so the kernel grows its candidate count until every level's weight is reached."""
    S = 3000
    w = 0.97 ** np.arange(S)[::-1]  # scenario 0 is the oldest, lightest
    P = np.linspace(10.0, -10.0, S)[None, :] + 0.01 * np.sin(np.arange(S))[None, :]  # losses of a short fall with age
    pf = Portfolios(np.array([0, 1], np.int64), np.array([0], np.int32), np.array([-1.0]), np.zeros(1, np.int32))
    spec = MeasureSpec((0.99, 0.9), weight=w)
    weighted, m_safe, _, targets = tail_candidates(spec, S)
    x = -(-P[0])
    order = np.argsort(-x, kind="stable")
    need = int(np.argmax(np.cumsum(w[order]) >= targets.min())) + 1
    assert need > 4 * gpu_mod.weighted_first_guess(spec, S, m_safe)  # at least two growth steps
    _assert_same(gpu_mod.tail_stats(pf, P, spec, device=_emu(emu_dir)), ref.tail_stats(pf, P, spec))


def test_emulated_nan_is_non_finite_and_edge_inputs(emu_dir):
    from gpurisk.backends import NonFinitePnL

    dev = _emu(emu_dir)
    P = np.zeros((2, 50))
    P[1, 7] = np.nan
    with pytest.raises(NonFinitePnL):
        gpu_mod.tail_stats(_one_portfolio(), P, MeasureSpec((0.99,)), device=dev)
    # −0.0 and +0.0 losses, an odd S, one scenario, rows too large or too small to screen
    P = np.array([[-0.0, 0.0, -0.0, 1.0, -1.0], [0.0, -0.0, 0.0, -0.0, 0.0], [1e300, -1e300, 0.0, 1e299, 5.0],
                  [1e-310, -1e-310, 2e-310, 0.0, -3e-310]])
    pf = Portfolios(np.array([0, 1, 2, 3, 4, 6], np.int64), np.array([1, 0, 2, 3, 0, 1], np.int32),
                    np.array([1.0, -1.0, 1e-5, 1.0, 2.0, -3.0]), np.arange(5, dtype=np.int32))
    for spec in (MeasureSpec((0.5, 0.8)), MeasureSpec((0.5,), weight=np.array([1.0, 0.0, 2.0, 1.0, 1.0]))):
        _assert_same(gpu_mod.tail_stats(pf, P, spec, device=dev), ref.tail_stats(pf, P, spec))
        one = spec if spec.weight is None else MeasureSpec(spec.levels, weight=spec.weight[:1])  # one scenario
        _assert_same(gpu_mod.tail_stats(pf, P[:, :1], one, device=dev), ref.tail_stats(pf, P[:, :1], one))


_RACY = r"""
#define GR_EMULATE 1
#include "cuda_emu.h"
extern "C" __global__ void racy(int* out)
{
    __shared__ int v;
    if (threadIdx.x == 0) { v = 1; }
    if (threadIdx.x == 5) { v = 2; }
    __syncthreads();
    out[threadIdx.x] = v;             // read after the barrier, but ...
    if (threadIdx.x == 7) { v = 3; }  // ... thread 7 writes with no barrier between the others' reads
    out[threadIdx.x] += 10 * v;
}
extern "C" __global__ void divergent(int* out)
{
    if (threadIdx.x < 32) { __syncthreads(); }
    out[threadIdx.x] = 1;
}
extern "C" const char* run(int which, int* out, unsigned long long seed)
{
    static std::string err;
    void* args[] = {&out};
    err = which == 0 ? gr_emu::launch(racy, 1, 64, 0, args, seed) : gr_emu::launch(divergent, 1, 64, 0, args, seed);
    return err.c_str();
}
"""


def test_the_emulator_exposes_races_and_divergent_barriers(emu_dir, tmp_path):
    """The harness can fail: a shared-memory race gives seed-dependent results, a barrier inside a branch an error."""
    import ctypes
    import subprocess

    from gpurisk.backends import cuda_emu

    src = tmp_path / "bad_kernels.cpp"
    src.write_text(_RACY)
    lib = tmp_path / "bad_kernels.so"
    cmd = [cuda_emu.compiler(), *cuda_emu.CXXFLAGS, f"-I{gpu_mod.kernel_dir() / 'emu'}", "-o", str(lib), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    dll = ctypes.CDLL(str(lib))
    dll.run.restype = ctypes.c_char_p
    dll.run.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_ulonglong]
    seen = set()
    for seed in range(12):
        out = (ctypes.c_int * 64)()
        assert dll.run(0, out, seed) == b""
        seen.add(tuple(out))
    assert len(seen) > 1  # the unsynchronised read differs with the thread order
    out = (ctypes.c_int * 64)()
    err = dll.run(1, out, 0)
    assert b"cannot proceed" in err and b"__syncthreads" in err


def test_weighted_first_launch_holds_the_first_growth_in_shared_memory(emu_dir):
    """EWMA(0.97) ES99 at S = 10,000 with an H200's shared budget: the first launch's buffer holds the first
    fourfold growth of the candidate count, so no portfolio goes to the global-buffer launch (sized for the
    first guess alone, 10 of these 60 did), and the results are the reference's."""
    from gpurisk.backends import cuda_emu

    dev = cuda_emu.device(emu_dir, seed=0, sm_count=2)
    dev.smem_budget = 224 * 1024
    pi, sc, pf = _case(S=10_000, n_port=60)
    P = ref.revalue(pi, sc, "usd")
    spec = MeasureSpec((0.99,), weight=0.97 ** np.arange(10_000)[::-1])
    got, want = gpu_mod.tail_stats(pf, P, spec, device=dev), ref.tail_stats(pf, P, spec)
    m_first = gpu_mod.weighted_first_guess(spec, 10_000, tail_candidates(spec, 10_000)[1])
    assert gpu_mod.last_tail_launch["spilled"] == 0
    assert gpu_mod.last_tail_launch["cand_cap"] >= 2 * 4 * m_first + 64
    np.testing.assert_allclose(got.es, want.es, rtol=1e-9, atol=1e-12 * np.abs(want.es).max())
    np.testing.assert_allclose(got.var, want.var, rtol=1e-9, atol=1e-12 * np.abs(want.var).max())
    np.testing.assert_array_equal(got.worst_scenario, want.worst_scenario)
