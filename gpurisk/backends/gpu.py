"""The GPU backend: CuPy plus the CUDA kernels in ``kernels/*.cu``.

CuPy is imported lazily (only when this backend is used). The kernels are loaded
with ``cupy.RawModule`` from ``<package>/kernels`` and compiled with
``--fmad=false`` so sums and products round as the CPU's do.

Data movement, once per batch:

* pricing inputs and scenario sets are uploaded once and kept in a small device
  cache keyed by the identity of the host object; the cache holds the host object
  only weakly and drops the entry when it is collected, so a long-lived worker does
  not keep device memory for inputs it no longer uses (host inputs are treated as
  immutable, as the frozen dataclasses already are); the scenario shocks go up
  transposed, [U, S], so the revaluation kernel reads them coalesced;
* ``revalue`` returns the host P [I, S] (the engine's contract), marked read-only,
  and keeps its device copy in the same cache keyed by that host array, so
  ``tail_stats`` on the P it just produced uploads nothing; a host P is cached only
  while it cannot be written (a writeable one is uploaded on every call, so an
  in-place change is never answered from a stale copy); ``revalue_device`` returns
  the CuPy array and ``tail_stats`` also accepts a CuPy P directly;
* ``clear_cache()`` frees everything. The kernel and device caches are thread-safe.

``tail_stats`` is one fused kernel (``kernels/tail_stats.cu``): one thread block per
portfolio, losses in shared memory (global scratch rows when S is too large; the
kernel opts in to the device's full per-block shared memory, so about 28,000
scenarios fit on an H100), radix select for equal weights, sorted candidates for
probability weights. cuSPARSE (``csr @ P``) is not used: it would write the dense
[portfolios, S] block to global memory and read it back for the selection, which
the fused kernel avoids.
Weighted specs whose tail bound needs more than ``MAX_CANDIDATES`` candidates raise
``GpuLimitError`` (the engine then falls back to the CPU), as does a weighted tail
whose bound did not hold; a NaN counted loss raises ``NonFinitePnL``.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..pricing import NUMERAIRE_CODES, NUMERAIRE_SETTLEMENT, PricingInputs
from .base import MeasureSpec, NonFinitePnL, TailStats, check_portfolios, check_underlyings, tail_candidates

name = "gpu"

#: threads per block; must equal GR_TPB in kernels/tail_stats.cu
THREADS = 256
#: dynamic shared memory a block may use without opting in (48 KiB less the kernel's static arrays);
#: the tail kernel opts in to more where the device allows (see ``_tail_kernel``)
DYNAMIC_SMEM = 40 * 1024
#: largest candidate buffer (power of two) for weighted tails: 12 bytes each; a weighted
#: tail keeps exactly m candidates (ties at the threshold are cut in scenario order)
MAX_CANDIDATES = 2048
#: bound on the global scratch used when a portfolio's S losses do not fit in shared memory
SCRATCH_BYTES = 512 << 20
#: how many uploaded objects the device cache keeps
CACHE_ENTRIES = 8
#: compile options: no fused multiply-add, so results round as on the CPU
NVRTC_OPTIONS = ("--fmad=false",)


class GpuLimitError(RuntimeError):
    """The request exceeds a limit of the GPU kernels (the engine falls back to the CPU)."""


def kernel_dir() -> Path:
    """Folder of the shipped ``*.cu`` sources."""
    import gpurisk

    return Path(gpurisk.__file__).parent / "kernels"


def _cupy():
    import cupy

    return cupy


def available():
    """(True, description) only when CuPy imports and sees at least one CUDA device."""
    try:
        cp = _cupy()
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA install
        return False, f"CuPy cannot be imported ({type(exc).__name__}: {exc})"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        return False, f"CuPy sees no CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    try:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        dev = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:  # noqa: BLE001
        dev = "CUDA device"
    return True, f"CuPy {cp.__version__} on {dev}"


_modules: dict = {}
_kernels: dict = {}
_modules_lock = threading.Lock()


def _kernel(module: str, fn: str):
    """The compiled kernel ``fn`` of ``kernels/<module>.cu``, a ``cupy.RawKernel`` (compiled once per process)."""
    key = (module, fn)
    kern = _kernels.get(key)
    if kern is None:
        with _modules_lock:  # one compilation per module, even with several threads
            kern = _kernels.get(key)
            if kern is None:
                if module not in _modules:
                    cp = _cupy()
                    code = (kernel_dir() / f"{module}.cu").read_text()
                    _modules[module] = cp.RawModule(code=code, options=NVRTC_OPTIONS)
                kern = _kernels[key] = _modules[module].get_function(fn)
    return kern


#: device id -> (SM count, dynamic shared-memory budget of the tail kernel), read once per device
_tail_setup: dict = {}


def _tail_kernel(cp):
    """(tail kernel, SM count, dynamic shared-memory budget) for the current device.

    The budget is the device's opt-in maximum per block less the kernel's static shared
    memory; the kernel is opted in to it once per device (the default limit is 48 KiB in all).
    """
    fn = _kernel("tail_stats", "tail_stats")
    dev = cp.cuda.Device().id
    setup = _tail_setup.get(dev)
    if setup is None:
        with _modules_lock:
            setup = _tail_setup.get(dev)
            if setup is None:
                attrs = cp.cuda.Device(dev).attributes
                sm = int(attrs.get("MultiProcessorCount", 132))
                optin = int(attrs.get("MaxSharedMemoryPerBlockOptin", 0))
                budget = max(DYNAMIC_SMEM, optin - int(fn.shared_size_bytes))
                if budget > DYNAMIC_SMEM:
                    fn.max_dynamic_shared_size_bytes = budget
                setup = _tail_setup[dev] = (sm, budget)
    return fn, setup[0], setup[1]


class _DeviceCache:
    """Device copies keyed by (tag, id(host object)), holding each host object only weakly.

    An entry goes when its host object is collected (its id may then be reused, so a hit
    also checks the weak reference), when ``size`` newer entries push it out, or on
    ``clear()``. Host objects that cannot be weakly referenced are not cached. Thread-safe.
    """

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict = OrderedDict()  # (tag, id) -> (weakref to the host object, device value)
        self._lock = threading.Lock()
        self._dead: list = []  # (key, weakref) of collected host objects not yet purged

    def _on_death(self, key, ref):
        # A weakref callback can run inside any allocation, even one made under our own lock:
        # queue the key and purge now only if the lock is free (else the holder purges).
        self._dead.append((key, ref))
        if self._lock.acquire(blocking=False):
            try:
                self._purge()
            finally:
                self._lock.release()

    def _purge(self):
        while self._dead:
            key, ref = self._dead.pop()
            hit = self.items.get(key)
            if hit is not None and hit[0] is ref:
                del self.items[key]

    def lookup(self, tag, host):
        """The cached device value for ``host``, or None."""
        key = (tag, id(host))
        with self._lock:
            self._purge()
            hit = self.items.get(key)
            if hit is not None and hit[0]() is host:
                self.items.move_to_end(key)
                return hit[1]
            return None

    def get(self, tag, host, make):
        value = self.lookup(tag, host)
        if value is None:
            value = make()  # outside the lock: an upload can take a while
            self.put(tag, host, value)
        return value

    def put(self, tag, host, value):
        key = (tag, id(host))
        try:
            ref = weakref.ref(host, lambda r, key=key: self._on_death(key, r))
        except TypeError:  # not weakly referenceable: not cached
            return
        with self._lock:
            self._purge()
            self.items[key] = (ref, value)
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
            self._purge()

    def clear(self):
        with self._lock:
            self.items.clear()
            self._dead.clear()

    def __len__(self):
        with self._lock:
            self._purge()
            return len(self.items)


_cache = _DeviceCache(CACHE_ENTRIES)


def clear_cache() -> None:
    """Drop every cached device copy (pricing inputs, scenario sets, P)."""
    _cache.clear()


def _pricing_on_device(pi: PricingInputs):
    cp = _cupy()

    def make():
        return {
            "kind": cp.asarray(pi.kind, dtype=cp.int8),
            "settlement": cp.asarray(pi.settlement, dtype=cp.int8),
            "option_type": cp.asarray(pi.option_type, dtype=cp.int8),
            "uidx": cp.asarray(pi.underlying_idx, dtype=cp.int32),
            "cs": cp.asarray(pi.contract_size, dtype=cp.float64),
            "fwd": cp.asarray(pi.forward, dtype=cp.float64),
            "strike": cp.asarray(pi.strike, dtype=cp.float64),
            "ttm": cp.asarray(pi.ttm, dtype=cp.float64),
            "vol": cp.asarray(pi.vol, dtype=cp.float64),
        }

    return _cache.get("pricing", pi, make)


def _scenarios_on_device(scenarios):
    cp = _cupy()

    def make():  # shocks [S, U] go up as [U, S]: the revaluation kernel reads them along s
        return {
            "price_shock": cp.ascontiguousarray(cp.asarray(scenarios.price_shock, dtype=cp.float64).T),
            "vol_shock": cp.ascontiguousarray(cp.asarray(scenarios.vol_shock, dtype=cp.float64).T),
            "vol_mode": cp.asarray(scenarios.vol_mode, dtype=cp.int8),
        }

    return _cache.get("scenarios", scenarios, make)


def _blocks(n: int) -> int:
    return int(max(1, min((n + THREADS - 1) // THREADS, 65535 * 8)))


def revalue_device(pi: PricingInputs, scenarios, numeraire: str = "usd"):
    """P [I, S] float64 as a CuPy array on the current device."""
    cp = _cupy()
    n_ins, n_s = len(pi), scenarios.n_scenarios
    out = cp.empty((n_ins, n_s), dtype=cp.float64)
    if n_ins == 0 or n_s == 0:
        return out
    check_underlyings(pi.underlying_idx, np.shape(scenarios.price_shock)[1])
    d = _pricing_on_device(pi)
    sc = _scenarios_on_device(scenarios)
    coin = np.int32(NUMERAIRE_CODES[numeraire] == NUMERAIRE_SETTLEMENT)
    base = cp.empty(n_ins, dtype=cp.float64)
    _kernel("revalue", "instrument_base")(
        (_blocks(n_ins),), (THREADS,),
        (np.int64(n_ins), d["kind"], d["settlement"], d["option_type"], d["cs"], d["fwd"], d["strike"],
         d["ttm"], d["vol"], coin, base),
    )
    term = scenarios.term
    _kernel("revalue", "revalue_pnl")(
        (_blocks(n_ins * n_s),), (THREADS,),
        (np.int64(n_ins), np.int32(n_s), d["kind"], d["settlement"], d["option_type"], d["uidx"], d["cs"], d["fwd"],
         d["strike"], d["ttm"], d["vol"], sc["price_shock"],
         sc["vol_shock"], sc["vol_mode"], np.float64(scenarios.horizon_years), coin, np.float64(term.ref_days),
         np.float64(term.power_short), np.float64(term.power_long), np.float64(term.min_vol_up),
         np.float64(term.vol_floor), np.float64(term.min_dte_days), base, out),
    )
    return out


def revalue(pi: PricingInputs, scenarios, numeraire: str = "usd") -> np.ndarray:
    """P [I, S] float64 on the host, read-only; the device copy stays cached for ``tail_stats``."""
    P_dev = revalue_device(pi, scenarios, numeraire)
    P = _cupy().asnumpy(P_dev)
    P.flags.writeable = False  # so the cached device copy cannot go stale
    _cache.put("P", P, P_dev)
    return P


def _read_only(a) -> bool:
    """True when neither ``a`` nor any array it views can be written through."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        if a.base is None:
            return True
        a = a.base
    return False  # a view of some other buffer: its owner may write to it


def _P_on_device(P):
    cp = _cupy()
    if isinstance(P, cp.ndarray):
        return cp.ascontiguousarray(P, dtype=cp.float64)

    def make():
        return cp.ascontiguousarray(cp.asarray(P, dtype=cp.float64))

    if not _read_only(P):  # a writeable P may change in place: never answer from a cached copy
        return make()
    return _cache.get("P", P, make)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def launch_shape(n_port: int, n_s: int, weighted: bool, m: int, sm_count: int = 132,
                 smem_budget: int = DYNAMIC_SMEM):
    """(grid, cap, use_shared, dynamic shared bytes) for the tail kernel; GpuLimitError past the limits.

    ``smem_budget``: the dynamic shared memory a block may use (the device's opt-in
    maximum less the kernel's static arrays; ``DYNAMIC_SMEM`` without opting in).
    A weighted tail keeps exactly m candidates, so ``cap`` = the power of two >= m.
    """
    cap = 0
    if weighted:
        if m > MAX_CANDIDATES:
            raise GpuLimitError(f"weighted tail needs {m} candidates per portfolio; the GPU kernel holds {MAX_CANDIDATES}")
        cap = _next_pow2(max(m, 1))
    use_shared = n_s * 8 + cap * 12 <= smem_budget
    smem = (n_s * 8 if use_shared else 0) + cap * 12
    grid = max(1, min(n_port, 8 * sm_count))
    if not use_shared:
        grid = max(1, min(grid, SCRATCH_BYTES // (8 * n_s)))
    return grid, cap, use_shared, smem


def tail_stats(portfolios, P, spec: MeasureSpec) -> TailStats:
    """Per-portfolio worst / VaR / ES (MeasureSpec rule) from P [I, S] (host or CuPy).

    The host-side checks (portfolio CSR, the lengths of ``pnl_factor`` and ``weight``)
    run before anything touches the device: the kernel does not bounds-check.
    """
    n_port, n_lev = len(portfolios), len(spec.levels)
    n_ins, n_s = P.shape
    if n_port == 0:
        z = np.zeros((0, n_lev))
        return TailStats(np.zeros(0), np.zeros(0, np.int64), z, z.copy())
    if n_s == 0:
        raise ValueError("tail_stats needs at least one scenario")
    check_portfolios(portfolios, n_ins)
    pnl = np.ones(n_s) if spec.pnl_factor is None else np.asarray(spec.pnl_factor, dtype=np.float64)
    weight = np.ones(n_s) if spec.weight is None else np.asarray(spec.weight, dtype=np.float64)
    for what, arr in (("pnl_factor", pnl), ("weight", weight)):
        if arr.shape != (n_s,):
            raise ValueError(f"MeasureSpec.{what} has shape {arr.shape}; P has {n_s} scenarios, so it must be ({n_s},)")
    idx_h = np.asarray(portfolios.instrument_idx)
    weighted, m, ks, targets = tail_candidates(spec, n_s)
    cp = _cupy()
    fn, sm, budget = _tail_kernel(cp)
    grid, cap, use_shared, smem = launch_shape(n_port, n_s, weighted, m, sm, budget)
    P_dev = _P_on_device(P)
    scratch = cp.empty(1 if use_shared else grid * n_s, dtype=cp.float64)
    worst = cp.empty(n_port, dtype=cp.float64)
    worst_s = cp.empty(n_port, dtype=cp.int64)
    var = cp.empty((n_port, n_lev), dtype=cp.float64)
    es = cp.empty((n_port, n_lev), dtype=cp.float64)
    status = cp.zeros(1, dtype=cp.int32)
    fn(
        (grid,), (THREADS,),
        (np.int32(n_port), np.int32(n_s), cp.asarray(portfolios.indptr, dtype=cp.int64),
         cp.asarray(idx_h, dtype=cp.int32), cp.asarray(portfolios.quantity, dtype=cp.float64), P_dev,
         cp.asarray(pnl), np.float64(spec.profit_factor), np.int32(n_lev), cp.asarray(ks, dtype=cp.int64),
         np.int32(weighted), cp.asarray(weight), cp.asarray(targets, dtype=cp.float64), np.int32(m),
         np.int32(cap), np.int32(use_shared), scratch, worst, worst_s, var, es, status),
        shared_mem=smem,
    )
    st = int(status.get()[0])
    if st & 4:
        raise NonFinitePnL("a portfolio's counted P&L is NaN on the GPU (check P, pnl_factor and profit_factor)")
    if st:
        raise GpuLimitError(f"a weighted tail's {m} candidates did not reach its target weight (status {st})")
    return TailStats(worst=cp.asnumpy(worst), worst_scenario=cp.asnumpy(worst_s), var=cp.asnumpy(var),
                     es=cp.asnumpy(es))
