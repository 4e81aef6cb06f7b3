"""The GPU backend's kernels run on the CPU: ``kernels/*.cu`` compiled by the host C++ compiler under
``kernels/emu/cuda_emu.h`` (every CUDA thread a fiber; barriers, warp collectives and atomics emulated,
threads scheduled in a seeded random order).

``device(build_dir, seed)`` returns an object the GPU backend accepts as ``device=``: NumPy arrays in
place of CuPy ones and kernel launches that run the very kernel sources the GPU compiles. The tests
run the GPU backend's host code and kernels this way against the reference backend, so the GPU logic
is checked where no GPU exists. It needs a C++17 compiler (``c++``/``g++``/``clang++`` or ``$CXX``);
``available()`` says whether one is there.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

#: compile options: no contraction of multiply-adds, as the kernels are compiled with --fmad=false
CXXFLAGS = ("-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")

_CTYPES = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.float64): ctypes.c_double,
    np.dtype(np.float32): ctypes.c_float,
}


def _kernel_dir() -> Path:
    from .gpu import kernel_dir

    return kernel_dir()


def compiler() -> str | None:
    """The C++ compiler to use ($CXX, else c++, g++ or clang++ on PATH), or None."""
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return cand
    return None


def available() -> tuple[bool, str]:
    cxx = compiler()
    if cxx is None:
        return False, "no C++ compiler on PATH (set CXX)"
    if not (_kernel_dir() / "emu" / "host.cpp").exists():
        return False, "kernels/emu/host.cpp is not installed with the package"
    return True, cxx


def _sources() -> list[Path]:
    k = _kernel_dir()
    return sorted(k.glob("*.cu")) + [k / "emu" / "cuda_emu.h", k / "emu" / "host.cpp"]


def build(build_dir) -> Path:
    """Compile the emulated kernels into ``build_dir`` (once per content of the sources); returns the library."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler on PATH (set CXX) to build the emulated kernels")
    digest = hashlib.sha256()
    for src in _sources():
        digest.update(src.name.encode() + b"\0" + src.read_bytes())
    digest.update(" ".join(CXXFLAGS).encode())
    out = Path(build_dir) / f"gpurisk_emu_{digest.hexdigest()[:16]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        emu = _kernel_dir() / "emu"
        cmd = [cxx, *CXXFLAGS, f"-I{emu}", "-o", str(tmp), str(emu / "host.cpp")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"building the emulated kernels failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, out)
    return out


class KernelError(RuntimeError):
    """The emulator refused a launch: a barrier or warp collective not reached by the whole block or warp."""


class EmulatedDevice:
    """A device for ``gpu.tail_stats(..., device=)``: NumPy arrays, kernels run by the emulator.

    ``sm_count`` and ``smem_budget`` (dynamic shared memory per block, bytes) shape the launches as a
    GPU's attributes would; small values force the kernels' global-memory and spill paths.
    """

    name = "emulated"

    def __init__(self, lib_path, seed: int = 0, sm_count: int = 2, smem_budget: int = 48 * 1024):
        self._lib = ctypes.CDLL(str(lib_path))
        self._lib.gr_emu_launch.restype = ctypes.c_char_p
        self._lib.gr_emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_ulonglong,
                                            ctypes.POINTER(ctypes.c_void_p), ctypes.c_ulonglong]
        self.seed = int(seed)
        self.sm_count = int(sm_count)
        self.smem_budget = int(smem_budget)
        self.launches: list[tuple[str, int, int]] = []  # (kernel, grid, dynamic shared bytes), for tests
        self.xp = np

    def to_host(self, a):
        return np.asarray(a)

    def launch(self, module: str, fn: str, grid: int, block: int, args, shared_mem: int = 0) -> None:
        holders = []
        for a in args:
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"argument of {fn} is not contiguous")
                holders.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.generic) and a.dtype in _CTYPES:
                holders.append(_CTYPES[a.dtype](a.item()))
            else:
                raise TypeError(f"kernel {fn}: argument {a!r} must be an array or a sized NumPy scalar")
        argv = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
        self.seed += 1
        self.launches.append((fn, int(grid), int(shared_mem)))
        err = self._lib.gr_emu_launch(fn.encode(), int(grid), int(block), int(shared_mem), argv, self.seed)
        if err:
            raise KernelError(f"{module}.cu:{fn}: {err.decode()}")

    def synchronize(self) -> None:
        pass


def device(build_dir, seed: int = 0, sm_count: int = 2, smem_budget: int = 48 * 1024) -> EmulatedDevice:
    """An EmulatedDevice over the kernels built into ``build_dir``."""
    return EmulatedDevice(build(build_dir), seed=seed, sm_count=sm_count, smem_budget=smem_budget)
