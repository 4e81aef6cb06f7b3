"""The GPU backend: CuPy plus the CUDA kernels in ``kernels/*.cu``.

CuPy is imported lazily (only when this backend is used). The kernels are loaded
with ``cupy.RawModule`` from ``<package>/kernels`` and compiled with
``--fmad=false`` so sums and products round as the CPU's do. ``available()`` compiles
both modules once (so ``auto`` never picks a GPU whose CUDA toolkit cannot compile);
the ``gpu`` extra depends on ``cupy-cuda13x[ctk]``, which brings NVRTC with it.

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
  the CuPy array and ``tail_stats`` also accepts a CuPy P directly; P's int16 screen
  (``quantize_rows``) is cached beside it;
* ``release()`` (also ``close()``) frees everything: the cache and CuPy's memory pools. It runs
  by itself when a call fails for lack of device memory, before the error reaches the engine.

``tail_stats`` is the exact int16 screen of ``kernels/tail_stats.cu`` (see its header and
``backends.screen``): P's rows quantised once to int16, each portfolio's screened float32 losses
(2 bytes per position-scenario read instead of 8), one radix select at the largest tail count,
exact float64 recomputation and a sort of only the candidates that can be in the tail, every
level read from that one sorted list. Probability-weighted tails grow their candidate count in
the kernel until every level's weight is reached: there is no candidate limit. cuSPARSE
(``csr @ P``) is not used: it would write the dense [portfolios, S] block to global memory and
read it back for the selection. A NaN loss raises ``NonFinitePnL``; a broken screen bound (a
defect, never expected) raises ``GpuLimitError`` so the engine retries that call on the CPU.
With ``attribution=True`` the tail kernel also writes each portfolio's tail set (the start of its
sorted exact prefix) and ``tail_marginals`` gathers P at those scenarios, one thread per position,
into the Euler marginals (``gpurisk.tail``); off, the kernel skips both (one branch per portfolio).

Every function that touches a device takes ``device=``: None for the CuPy device, or an
object with the same small interface (``xp``, ``launch``, ``to_host``, ``sm_count``,
``smem_budget``), such as ``backends.cuda_emu``'s, which runs the same kernel sources on the CPU.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..pricing import NUMERAIRE_CODES, NUMERAIRE_SETTLEMENT, PricingInputs
from . import screen
from .base import MeasureSpec, NonFinitePnL, TailStats, check_portfolios, check_underlyings, tail_candidates

name = "gpu"

#: threads per block; must equal GR_TPB in kernels/tail_stats.cu
THREADS = 256
#: dynamic shared memory a block may use without opting in (48 KiB less the kernel's static arrays);
#: the tail kernel opts in to more where the device allows (see ``_CupyDevice``)
DYNAMIC_SMEM = 36 * 1024
#: bound on the global scratch of the tail kernel's spill pass (candidate buffers of next_pow2(S) entries)
SCRATCH_BYTES = 512 << 20
#: how many uploaded objects the device cache keeps
CACHE_ENTRIES = 8
#: compile options: no fused multiply-add, so results round as on the CPU
NVRTC_OPTIONS = ("--fmad=false",)
#: kernel modules and the entry points the backend launches
MODULES = {"revalue": ("instrument_base", "revalue_pnl"), "tail_stats": ("quantize_rows", "tail_stats", "tail_marginals")}


class GpuLimitError(RuntimeError):
    """The request exceeds a limit of the GPU kernels, or a kernel's self-check failed (the engine retries on
    the CPU)."""


def kernel_dir() -> Path:
    """Folder of the shipped ``*.cu`` sources."""
    import gpurisk

    return Path(gpurisk.__file__).parent / "kernels"


def _cupy():
    import cupy

    return cupy


_available: tuple | None = None


def available():
    """(True, description) only when CuPy imports, sees a CUDA device and compiles both kernel modules.

    Compiling needs NVRTC (the ``[ctk]`` extra of ``cupy-cuda13x`` or a local CUDA toolkit); the
    answer is computed once per process.
    """
    global _available
    if _available is not None:
        return _available
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
        for module, fns in MODULES.items():
            for fn in fns:
                _kernel(module, fn)
    except Exception as exc:  # noqa: BLE001 - NVRTC missing or a compile error
        _available = (False, f"the CUDA kernels do not compile here ({type(exc).__name__}: {str(exc)[:300]}); "
                             "install the gpu extra (cupy-cuda13x[ctk]) or a CUDA toolkit")
        return _available
    try:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        dev = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:  # noqa: BLE001
        dev = "CUDA device"
    _available = (True, f"CuPy {cp.__version__} on {dev} ({n} device{'s' if n > 1 else ''})")
    return _available


#: the shape of this process's last ``tail_stats`` first launch and how many portfolios it spilled to the
#: global-buffer launch (a diagnostic for benchmarks and the GPU check; not thread-safe, not an API)
last_tail_launch: dict = {}

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


class _CupyDevice:
    """The current CUDA device through CuPy: arrays, launches, SM count and the tail kernel's shared-memory budget."""

    name = "cupy"

    def __init__(self):
        cp = _cupy()
        self.xp = cp
        dev = cp.cuda.Device().id
        attrs = cp.cuda.Device(dev).attributes
        self.sm_count = int(attrs.get("MultiProcessorCount", 132))
        fn = _kernel("tail_stats", "tail_stats")
        optin = int(attrs.get("MaxSharedMemoryPerBlockOptin", 0))
        self.smem_budget = max(DYNAMIC_SMEM, optin - int(fn.shared_size_bytes))
        if self.smem_budget > DYNAMIC_SMEM:
            fn.max_dynamic_shared_size_bytes = self.smem_budget

    def to_host(self, a):
        return _cupy().asnumpy(a)

    def launch(self, module, fn, grid, block, args, shared_mem=0):
        _kernel(module, fn)((int(grid),), (int(block),), tuple(args), shared_mem=int(shared_mem))

    def synchronize(self):
        _cupy().cuda.Device().synchronize()


#: device id -> _CupyDevice, built once per device
_devices: dict = {}
#: guards ``_devices``; not ``_modules_lock``, which building a device takes again (through ``_kernel``)
_devices_lock = threading.Lock()


def _device(device=None):
    if device is not None:
        return device
    dev_id = _cupy().cuda.Device().id
    d = _devices.get(dev_id)
    if d is None:
        with _devices_lock:
            d = _devices.get(dev_id)
            if d is None:
                d = _devices[dev_id] = _CupyDevice()
    return d


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
    """Drop every cached device copy (pricing inputs, scenario sets, P and its screen)."""
    _cache.clear()


def release() -> None:
    """Free this process's device memory: the cache and CuPy's default memory pools (safe without CuPy)."""
    _cache.clear()
    try:
        cp = _cupy()
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001 - no CuPy, or no device: nothing is held
        pass


close = release


def _is_out_of_memory(exc) -> bool:
    return "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower()


def _releasing(fn):
    """Run ``fn``; on a device out-of-memory error release everything first, then re-raise."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _is_out_of_memory(exc):
                release()
            raise

    return wrapper


def _cached(dev, tag, host, make):
    """``make()`` through the device cache on the CuPy device; uncached on any other."""
    if isinstance(dev, _CupyDevice):
        return _cache.get(tag, host, make)
    return make()


def _pricing_on_device(pi: PricingInputs, dev):
    xp = dev.xp

    def make():
        return {
            "kind": xp.asarray(pi.kind, dtype=np.int8),
            "settlement": xp.asarray(pi.settlement, dtype=np.int8),
            "option_type": xp.asarray(pi.option_type, dtype=np.int8),
            "uidx": xp.asarray(pi.underlying_idx, dtype=np.int32),
            "cs": xp.asarray(pi.contract_size, dtype=np.float64),
            "fwd": xp.asarray(pi.forward, dtype=np.float64),
            "strike": xp.asarray(pi.strike, dtype=np.float64),
            "ttm": xp.asarray(pi.ttm, dtype=np.float64),
            "vol": xp.asarray(pi.vol, dtype=np.float64),
        }

    return _cached(dev, "pricing", pi, make)


def _scenarios_on_device(scenarios, dev):
    xp = dev.xp

    def make():  # shocks [S, U] go up as [U, S]: the revaluation kernel reads them along s
        return {
            "price_shock": xp.ascontiguousarray(xp.asarray(scenarios.price_shock, dtype=np.float64).T),
            "vol_shock": xp.ascontiguousarray(xp.asarray(scenarios.vol_shock, dtype=np.float64).T),
            "vol_mode": xp.asarray(scenarios.vol_mode, dtype=np.int8),
        }

    return _cached(dev, "scenarios", scenarios, make)


def _blocks(n: int) -> int:
    return int(max(1, min((n + THREADS - 1) // THREADS, 65535 * 8)))


@_releasing
def revalue_device(pi: PricingInputs, scenarios, numeraire: str = "usd", *, device=None):
    """P [I, S] float64 as an array of the device (CuPy by default)."""
    dev = _device(device)
    xp = dev.xp
    n_ins, n_s = len(pi), scenarios.n_scenarios
    out = xp.empty((n_ins, n_s), dtype=np.float64)
    if n_ins == 0 or n_s == 0:
        return out
    check_underlyings(pi.underlying_idx, np.shape(scenarios.price_shock)[1])
    d = _pricing_on_device(pi, dev)
    sc = _scenarios_on_device(scenarios, dev)
    coin = np.int32(NUMERAIRE_CODES[numeraire] == NUMERAIRE_SETTLEMENT)
    base = xp.empty(n_ins, dtype=np.float64)
    dev.launch("revalue", "instrument_base", _blocks(n_ins), THREADS,
               (np.int64(n_ins), d["kind"], d["settlement"], d["option_type"], d["cs"], d["fwd"], d["strike"],
                d["ttm"], d["vol"], coin, base))
    term = scenarios.term
    dev.launch("revalue", "revalue_pnl", _blocks(n_ins * n_s), THREADS,
               (np.int64(n_ins), np.int32(n_s), d["kind"], d["settlement"], d["option_type"], d["uidx"], d["cs"],
                d["fwd"], d["strike"], d["ttm"], d["vol"], sc["price_shock"], sc["vol_shock"], sc["vol_mode"],
                np.float64(scenarios.horizon_years), coin, np.float64(term.ref_days), np.float64(term.power_short),
                np.float64(term.power_long), np.float64(term.min_vol_up), np.float64(term.vol_floor),
                np.float64(term.min_dte_days), base, out))
    return out


def revalue(pi: PricingInputs, scenarios, numeraire: str = "usd", *, device=None) -> np.ndarray:
    """P [I, S] float64 on the host, read-only; the device copy stays cached for ``tail_stats``."""
    dev = _device(device)
    P_dev = revalue_device(pi, scenarios, numeraire, device=dev)
    P = np.asarray(dev.to_host(P_dev))
    P.flags.writeable = False  # so the cached device copy cannot go stale
    if isinstance(dev, _CupyDevice):
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


def _P_on_device(P, dev=None):
    dev = _device(dev)
    xp = dev.xp
    if not isinstance(P, np.ndarray) and type(P).__module__.startswith("cupy"):
        return xp.ascontiguousarray(P, dtype=np.float64)

    def make():
        return xp.ascontiguousarray(xp.asarray(P, dtype=np.float64))

    if not _read_only(P):  # a writeable P may change in place: never answer from a cached copy
        return make()
    return _cached(dev, "P", P, make)


def _screen_on_device(P_host, P_dev, dev):
    """(Q [I, S] int16, σ [I], M [I]) of P by ``quantize_rows``; cached beside a cacheable P."""
    xp = dev.xp
    n_ins, n_s = P_dev.shape

    def make():
        Q = xp.empty((n_ins, n_s), dtype=np.int16)
        scale = xp.zeros(n_ins, dtype=np.float64)
        M = xp.zeros(n_ins, dtype=np.float64)
        if n_ins and n_s:
            grid = int(max(1, min(n_ins, 16 * dev.sm_count)))
            dev.launch("tail_stats", "quantize_rows", grid, THREADS,
                       (np.int32(n_ins), np.int32(n_s), P_dev, Q, scale, M))
        return Q, scale, M

    if isinstance(P_host, np.ndarray) and _read_only(P_host):
        return _cached(dev, "screen", P_host, make)
    return make()


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def weighted_first_guess(spec: MeasureSpec, n_s: int, m_safe: int) -> int:
    """The first candidate count of a probability-weighted tail: twice the equal-weight count of the lowest
    level plus 64, at most the safe bound ``m_safe`` (the kernel grows it fourfold while a level's weight
    is not reached)."""
    k = int(MeasureSpec((min(spec.levels),)).tail_counts(n_s)[0])
    return int(min(m_safe, 2 * k + 64))


def launch_shape(n_port: int, n_s: int, m: int, sm_count: int = 132, smem_budget: int = DYNAMIC_SMEM):
    """(grid, cand_cap, y_in_shared, dynamic shared bytes) of the tail kernel's first launch.

    The block's shared buffer holds ``cand_cap`` candidates (12 bytes each; a power of two, at least
    2m + 64 where it fits) and, when they fit beside them, the S screened losses (4 bytes each);
    otherwise the losses go to a per-block global row. A portfolio with more candidates than
    ``cand_cap`` is spilled to the second launch (``spill_shape``).
    """
    want = _next_pow2(max(2 * m + 64, 256))
    min_cap = 256
    y_in_shared = 4 * n_s + 12 * min_cap <= smem_budget
    room = smem_budget - (4 * n_s if y_in_shared else 0)
    cand_cap = min(want, 1 << max(0, (room // 12).bit_length() - 1))
    cand_cap = max(cand_cap, 1)
    smem = 8 * cand_cap + 8 * ((4 * cand_cap + 7) // 8) + (4 * n_s if y_in_shared else 0)
    grid = max(1, min(n_port, 8 * sm_count))
    return grid, cand_cap, y_in_shared, smem


def spill_shape(n_spill: int, n_s: int, sm_count: int = 132, smem_budget: int = DYNAMIC_SMEM):
    """(grid, cand_cap, y_in_shared, dynamic shared bytes) of the spill launch: global candidate buffers of
    next_pow2(S) entries per block, as many blocks as SCRATCH_BYTES allows (at least one)."""
    cand_cap = _next_pow2(n_s)
    y_in_shared = 4 * n_s <= smem_budget
    per_block = 12 * cand_cap + (0 if y_in_shared else 4 * n_s)
    grid = max(1, min(n_spill, 8 * sm_count, SCRATCH_BYTES // per_block))
    return grid, cand_cap, y_in_shared, (4 * n_s if y_in_shared else 8)


@_releasing
def tail_stats(portfolios, P, spec: MeasureSpec, *, device=None, attribution: bool = False) -> TailStats:
    """Per-portfolio worst / VaR / ES (MeasureSpec rule) from P [I, S] (host or device array).

    The host-side checks (portfolio CSR, the lengths of ``pnl_factor`` and ``weight``)
    run before anything touches the device: the kernel does not bounds-check.
    ``attribution``: also the tail sets and the per-position Euler marginals (``TailStats``).
    """
    n_port, n_lev = len(portfolios), len(spec.levels)
    n_ins, n_s = P.shape
    if n_port == 0:
        z = np.zeros((0, n_lev))
        out = TailStats(np.zeros(0), np.zeros(0, np.int64), z, z.copy())
        if attribution:
            K = tail_candidates(spec, n_s)[1] if n_s else 1
            out.tail_index, out.tail_loss = np.zeros((0, K), np.int64), np.zeros((0, K))
            out.tail_count, out.marginal = np.zeros((0, n_lev), np.int64), np.zeros((len(portfolios.quantity), n_lev))
        return out
    if n_s == 0:
        raise ValueError("tail_stats needs at least one scenario")
    if n_s >= 2**30 or n_ins * n_s >= 2**62:
        raise GpuLimitError(f"{n_s} scenarios exceed the GPU kernel's 32-bit scenario index")
    check_portfolios(portfolios, n_ins)
    pnl = np.ones(n_s) if spec.pnl_factor is None else np.asarray(spec.pnl_factor, dtype=np.float64)
    weight = np.ones(n_s) if spec.weight is None else np.asarray(spec.weight, dtype=np.float64)
    for what, arr in (("pnl_factor", pnl), ("weight", weight)):
        if arr.shape != (n_s,):
            raise ValueError(f"MeasureSpec.{what} has shape {arr.shape}; P has {n_s} scenarios, so it must be ({n_s},)")
    weighted, m_safe, ks, targets = tail_candidates(spec, n_s)
    m_first = weighted_first_guess(spec, n_s, m_safe) if weighted else m_safe
    dev = _device(device)
    xp = dev.xp
    P_dev = _P_on_device(P, dev)
    Q, scale, M = _screen_on_device(P, P_dev, dev)
    indptr = xp.asarray(portfolios.indptr, dtype=np.int64)
    idx = xp.asarray(portfolios.instrument_idx, dtype=np.int32)
    qty = xp.asarray(portfolios.quantity, dtype=np.float64)
    bound, ok = screen.screen_bound(xp, indptr, idx, qty, M, screen.row_error(M, xp), spec)
    bound = xp.ascontiguousarray(xp.where(ok, bound, np.nan))
    coef = xp.ascontiguousarray(screen.coefficients(qty, idx, scale))
    worst = xp.empty(n_port, dtype=np.float64)
    worst_s = xp.empty(n_port, dtype=np.int64)
    var = xp.full((n_port, n_lev), np.nan)  # NaN: "not yet reached" for the weighted read-off
    es = xp.full((n_port, n_lev), np.nan)
    status = xp.zeros(1, dtype=np.int32)
    spill = xp.zeros(n_port + 1, dtype=np.int32)
    tail_cap = int(m_safe) if attribution else 1
    if attribution:
        tail_s = xp.full(n_port * tail_cap, -1, dtype=np.int32)
        tail_x = xp.full(n_port * tail_cap, np.nan, dtype=np.float64)
        tail_n = xp.zeros(n_port * n_lev, dtype=np.int32)
    else:
        tail_s, tail_x, tail_n = xp.zeros(1, dtype=np.int32), xp.zeros(1, dtype=np.float64), xp.zeros(1, dtype=np.int32)
    tails_in = (np.int32(bool(attribution)), np.int32(tail_cap), tail_s, tail_x, tail_n)
    common_in = (np.int32(n_s), indptr, idx, qty, coef, P_dev, Q, xp.asarray(pnl), xp.asarray(pnl.astype(np.float32)),
                 np.float64(spec.profit_factor), np.float32(spec.profit_factor), bound, np.int32(n_lev),
                 xp.asarray(ks, dtype=np.int64), np.int32(weighted), xp.asarray(weight),
                 xp.asarray(targets, dtype=np.float64), np.int32(m_first))
    outs = (worst, worst_s, var, es, status, *tails_in)
    none_f = xp.zeros(1, dtype=np.float32)
    none_d = xp.zeros(1, dtype=np.float64)
    none_i = xp.zeros(1, dtype=np.int32)

    # A weighted tail grows m fourfold while a level's weight is not reached. The shared buffer is sized for
    # that first growth too (else every portfolio that needs it goes to the global-buffer launch: 46% of
    # the portfolios of an EWMA(0.97) ES99 on the synthetic book at S = 10,000), as long as that takes at most
    # half of a block's shared-memory budget (so that about two blocks still fit one multiprocessor).
    m_shape = m_first
    if weighted:
        grown = min(m_safe, 4 * m_first)
        if launch_shape(n_port, n_s, grown, dev.sm_count, dev.smem_budget)[3] <= dev.smem_budget // 2:
            m_shape = grown
    grid, cap, y_sh, smem = launch_shape(n_port, n_s, m_shape, dev.sm_count, dev.smem_budget)
    y_scratch = none_f if y_sh else xp.empty(grid * n_s, dtype=np.float32)
    dev.launch("tail_stats", "tail_stats", grid, THREADS,
               (np.int32(n_port), *common_in, np.int32(0), spill, np.int32(cap), np.int32(y_sh), y_scratch,
                none_d, none_i, *outs), shared_mem=smem)
    n_spill = int(dev.to_host(spill[:1])[0])
    last_tail_launch.update(portfolios=n_port, grid=grid, cand_cap=cap, losses_in_shared=bool(y_sh), shared_bytes=smem,
                            spilled=n_spill)
    if n_spill:  # portfolios whose candidates did not fit the shared buffer: global buffers of S entries
        grid, cap, y_sh, smem = spill_shape(n_spill, n_s, dev.sm_count, dev.smem_budget)
        y_scratch = none_f if y_sh else xp.empty(grid * n_s, dtype=np.float32)
        cand_x = xp.empty(grid * cap, dtype=np.float64)
        cand_s = xp.empty(grid * cap, dtype=np.int32)
        dev.launch("tail_stats", "tail_stats", grid, THREADS,
                   (np.int32(n_spill), *common_in, np.int32(1), spill, np.int32(cap), np.int32(y_sh), y_scratch,
                    cand_x, cand_s, *outs), shared_mem=smem)
    st = int(dev.to_host(status)[0])
    if st & 4:
        raise NonFinitePnL("a portfolio's counted P&L is NaN on the GPU (check P, pnl_factor and profit_factor)")
    if st:
        raise GpuLimitError(f"the GPU tail kernel's self-check failed (status {st}): its screen bound did not hold")
    out = TailStats(worst=np.asarray(dev.to_host(worst)), worst_scenario=np.asarray(dev.to_host(worst_s)),
                    var=np.asarray(dev.to_host(var)), es=np.asarray(dev.to_host(es)))
    if attribution:
        nnz = int(len(portfolios.quantity))
        marg = xp.zeros(max(nnz, 1) * n_lev, dtype=np.float64)
        if nnz:
            pos_port = xp.asarray(np.repeat(np.arange(n_port, dtype=np.int32), np.diff(np.asarray(portfolios.indptr))))
            dev.launch("tail_stats", "tail_marginals", _blocks(nnz), THREADS,
                       (np.int64(nnz), np.int32(n_s), np.int32(n_lev), np.int32(tail_cap), pos_port, idx, P_dev,
                        tail_s, tail_x, tail_n, xp.asarray(weight), xp.asarray(pnl), np.float64(spec.profit_factor),
                        marg))
        out.tail_index = np.asarray(dev.to_host(tail_s), dtype=np.int64).reshape(n_port, tail_cap)
        out.tail_loss = np.asarray(dev.to_host(tail_x)).reshape(n_port, tail_cap)
        out.tail_count = np.asarray(dev.to_host(tail_n), dtype=np.int64).reshape(n_port, n_lev)
        out.marginal = np.asarray(dev.to_host(marg))[: nnz * n_lev].reshape(nnz, n_lev)
    return out
