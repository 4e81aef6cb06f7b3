"""Where a P&L matrix P [I, S] float64 lives while a run needs it, and how big it may be.

A run revalues each distinct P once, in a Dask task on a worker (``tasks.revalue_pnl``), and the
tail-statistics task of every chunk reads it. How the workers share it depends on where they run:

* **one host** (the embedded cluster, or a scheduler whose workers all run on this machine): P is
  written once to a ``.npy`` file and every worker maps it (``np.load(..., mmap_mode=...)``): one
  copy in the page cache however many workers read it; nothing is pickled or sent. A P within the
  memory budget goes to a memory-backed folder (``/dev/shm`` when it has room), in one piece; a
  larger one is revalued in scenario blocks (each within the budget) straight into a file in the
  run's scratch folder (``RUN/scratch``), which the tail kernels stream through the page cache.
* **several hosts**: P stays in the revaluing worker's memory and Dask copies it to the workers
  that need it.

``place`` decides this on the client before any work and refuses, in one line naming the size
in bytes and what to change, a P that fits nowhere: above the budget on a multi-host cluster, or
larger than the free disk of the scratch folder. Either way P is the result of a task: a worker
lost with it only means the task runs again (a file already complete is reused).

Scratch files are not outputs: they are filled in place through a memory map and renamed when
complete (a reader never sees a part), without fsync (they are recomputable), and deleted with
their folder when the run ends. A memory-backed folder is named after the client's process id,
so one left by a killed run is swept at the next run (``sweep``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GpuriskError

log = logging.getLogger("gpurisk.batch")

#: bytes per P entry (float64)
ITEM_BYTES = 8
#: default memory budget: this share of the host's physical memory, split among the workers and the client
MEMORY_SHARE = 0.5
#: peak memory of one revaluation call relative to the P block it returns (the block, the copy into the
#: map, the backend's temporaries)
REVALUE_PEAK = 3
#: share of a memory-backed folder's free space the run may fill
SHM_SHARE = 0.5
#: the memory-backed folder tried first for P within the budget
SHM_ROOT = "/dev/shm"
#: name prefix of a run's folder there: ``gpurisk-<client pid>-<run id>``
SHM_PREFIX = "gpurisk-"
#: files a worker keeps mapped between tasks (the GPU backend caches a device copy per host array)
OPEN_MAPS = 4


class PnLSizeError(GpuriskError):
    """A P&L matrix does not fit where it has to live; the message names its size in bytes."""


@dataclass(frozen=True)
class PnLFile:
    """A P [I, S] float64 in a complete ``.npy`` file (a task's result, recomputable)."""

    path: str
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return int(self.shape[0]) * int(self.shape[1]) * ITEM_BYTES


@dataclass(frozen=True)
class Target:
    """Where one P goes: ``memory`` (the worker's, moved by Dask) or ``file`` (``path``, revalued
    ``block`` scenarios per call)."""

    kind: str
    path: str = ""
    block: int = 0
    where: str = ""  # "shm" | "disk" | "" (memory)


def nbytes(n_instruments: int, n_scenarios: int) -> int:
    """Bytes of P [I, S] float64."""
    return int(n_instruments) * int(n_scenarios) * ITEM_BYTES


def total_memory() -> int:
    """Physical memory of this host in bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - no psutil: a conservative 8 GiB
        return 8 << 30


def default_budget(workers: int) -> int:
    """Bytes one P may take in memory: ``MEMORY_SHARE`` of the host's memory over workers + client."""
    return int(MEMORY_SHARE * total_memory() / (max(int(workers), 1) + 1))


def free_bytes(folder) -> int:
    """Free bytes of the file system holding ``folder`` (its nearest existing parent)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def shm_folder(run_id: str) -> Path | None:
    """This run's memory-backed folder (``/dev/shm/gpurisk-<pid>-<run id>``), or None without /dev/shm."""
    root = Path(SHM_ROOT)
    if not (root.is_dir() and os.access(root, os.W_OK | os.X_OK)):
        return None
    return root / f"{SHM_PREFIX}{os.getpid()}-{run_id}"


def sweep(root: str | Path = SHM_ROOT) -> int:
    """Remove memory-backed run folders whose client process is gone (a killed run's); returns how many."""
    root = Path(root)
    n = 0
    try:
        entries = list(root.iterdir())
    except OSError:
        return 0
    for p in entries:
        if not (p.name.startswith(SHM_PREFIX) and p.is_dir()):
            continue
        pid = p.name[len(SHM_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 2**30:.2f} GiB)"


def place(sizes: dict[str, tuple[int, int]], *, shared: bool, budget: int, scratch: Path,
          shm: Path | None) -> dict[str, Target]:
    """{name: Target} for every P of a run, ``sizes`` {name: (I, S)}; PnLSizeError when one cannot live anywhere.

    ``shared``: every worker runs on this host and can map this host's files. ``budget``: bytes a P may
    take in memory. ``scratch``: the run's scratch folder (disk); ``shm``: a memory-backed folder or None.
    """
    out: dict[str, Target] = {}
    if not shared:
        for name, (n_ins, n_s) in sizes.items():
            b = nbytes(n_ins, n_s)
            if b > budget:
                raise PnLSizeError(
                    f"the P&L matrix of {name} ({n_ins:,} instruments × {n_s:,} scenarios) needs {_size(b)}, "
                    f"above the memory budget of {_size(budget)} per worker, and on a cluster spanning several "
                    f"hosts it travels in memory: raise [job] memory_budget_mb, use fewer scenarios, or run on "
                    f"one host (where it is memory-mapped from disk)")
            out[name] = Target("memory")
        return out
    shm_free = int(SHM_SHARE * free_bytes(shm)) if shm is not None else 0
    disk_free = free_bytes(scratch)
    for i, (name, (n_ins, n_s)) in enumerate(sorted(sizes.items())):
        b = nbytes(n_ins, n_s)
        file = f"p{i:03d}.npy"
        if b <= budget and b <= shm_free:
            shm_free -= b
            out[name] = Target("file", str(shm / file), max(int(n_s), 1), "shm")
            continue
        if b > disk_free:
            raise PnLSizeError(
                f"the P&L matrix of {name} ({n_ins:,} instruments × {n_s:,} scenarios) needs {_size(b)}: above "
                f"the memory budget of {_size(budget)} and more than the {_size(disk_free)} free in {scratch}; "
                f"free disk there, write the run elsewhere (--out), or use fewer scenarios")
        disk_free -= b
        block = n_s if b <= budget else max(1, budget // (REVALUE_PEAK * max(int(n_ins), 1) * ITEM_BYTES))
        out[name] = Target("file", str(scratch / file), int(min(block, max(int(n_s), 1))), "disk")
    return out


def revalue_to(engine, pricing, scenarios, numeraire: str, target: Target):
    """P revalued by ``engine`` into ``target``: an ndarray (memory) or a ``PnLFile``; (P, blocks)."""
    n_ins, n_s = len(pricing), scenarios.n_scenarios
    if target.kind == "memory":
        try:
            return engine.revalue(pricing, scenarios, numeraire), 1
        except MemoryError:
            raise PnLSizeError(
                f"out of memory revaluing a P&L matrix of {n_ins:,} instruments × {n_s:,} scenarios "
                f"({_size(nbytes(n_ins, n_s))}) on worker {socket.gethostname()}: use fewer scenarios, "
                f"or give the workers more memory") from None
    path = Path(target.path)
    handle = PnLFile(str(path), (int(n_ins), int(n_s)))
    if path.is_file():  # complete (renamed into place only when filled): a lost worker's result, reused
        return handle, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    blocks = 0
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(n_ins, n_s))
        step = max(int(target.block), 1)
        for a in range(0, n_s, step):
            b = min(a + step, n_s)
            part = scenarios if (a, b) == (0, n_s) else scenarios.subset(np.arange(a, b))
            try:
                mm[:, a:b] = engine.revalue(pricing, part, numeraire)
            except MemoryError:
                raise PnLSizeError(
                    f"out of memory revaluing {b - a:,} scenarios × {n_ins:,} instruments "
                    f"({_size(nbytes(n_ins, b - a))}) on worker {socket.gethostname()}: lower [job] "
                    f"memory_budget_mb so that P is revalued in smaller blocks") from None
            blocks += 1
        mm.flush()
        del mm
        os.replace(tmp, path)
    except OSError as exc:
        raise PnLSizeError(f"cannot write the P&L matrix ({_size(nbytes(n_ins, n_s))}) to {path}: "
                           f"{exc.strerror or exc}; free disk there or write the run elsewhere (--out)") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return handle, blocks


# --------------------------------------------------------------------------- reading (on the workers)

_open: dict[str, np.ndarray] = {}


def open_pnl(handle, read_only: bool = False) -> np.ndarray:
    """The P a revaluation task returned: an ndarray as is, a ``PnLFile`` mapped from its file.

    ``read_only`` maps it read-only (the GPU backend caches a device copy of a read-only host array);
    otherwise copy-on-write, so the CPU kernels see the writeable float64 arrays they were compiled
    for. The last ``OPEN_MAPS`` files stay mapped in this process between tasks (``forget`` drops them).
    """
    if not isinstance(handle, PnLFile):
        return handle
    st = os.stat(handle.path)  # the same path may hold another run's P later: key by the file itself
    key = f"{handle.path}:{st.st_ino}:{st.st_mtime_ns}:{int(read_only)}"
    P = _open.get(key)
    if P is None:
        P = np.asarray(np.load(handle.path, mmap_mode="r" if read_only else "c"))
        if P.shape != tuple(handle.shape):
            raise PnLSizeError(f"{handle.path}: P&L file holds shape {P.shape}, expected {tuple(handle.shape)}")
        _open[key] = P
        while len(_open) > OPEN_MAPS:
            _open.pop(next(iter(_open)))
    return P


def forget(prefix: str = "") -> int:
    """Drop this process's cached maps (those whose path starts with ``prefix``); returns how many."""
    keys = [k for k in _open if k.startswith(prefix)]
    for k in keys:
        del _open[k]
    return len(keys)


def remove(folder) -> None:
    """Delete a scratch folder and everything in it (no error if it is gone)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["PnLFile", "Target", "PnLSizeError", "nbytes", "default_budget", "free_bytes", "shm_folder", "sweep",
           "place", "revalue_to", "open_pnl", "forget", "remove"]
