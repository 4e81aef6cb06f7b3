"""The Dask cluster a batch runs on: an embedded cluster or a running scheduler, and what runs where.

Embedded: a ``LocalCluster`` of worker processes, or with the GPU backend one worker per visible
GPU (dask-cuda's ``LocalCUDACluster`` when it is installed, else one process per device with its
own ``CUDA_VISIBLE_DEVICES``), each declaring the resource ``GPU=1``. A worker process that dies
while the cluster starts fails that attempt only: the start is retried (``START_ATTEMPTS``); a
worker lost later is restarted by its nanny.

External (``--scheduler ADDRESS``): workers that own a GPU declare ``--resources GPU=1``.

``choose_backend`` resolves the run's backend once, on the client, before any work: an explicit
``gpu`` that cannot run (no usable device here, or no worker of the scheduler declaring a GPU,
where GPU tasks would wait forever) is a one-line error; ``auto`` falls back to the CPU with a
warning and a counted fallback. GPU tasks carry ``resources={"GPU": 1}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass

from ..errors import ConfigError, GpuriskError
from ..redact import redact

log = logging.getLogger("gpurisk.batch")

#: seconds to wait for a remote scheduler (and for its first worker) before the run fails
CONNECT_TIMEOUT_S = 30.0
#: attempts to start the embedded cluster (a worker process that dies during the start fails one)
START_ATTEMPTS = 3


class ClusterError(GpuriskError):
    """The Dask scheduler cannot be reached or the local cluster cannot start."""


def default_workers() -> int:
    """Embedded cluster size: 2, or the CPU count when that is smaller."""
    return max(1, min(2, cpu_cores()))


#: the embedded cluster starts at most this many worker processes per CPU core
MAX_WORKERS_PER_CORE = 4
#: the embedded scheduler's ``distributed.scheduler.worker-saturation``: no scheduler-side queue, every task
#: goes to a worker as soon as it is ready, each worker runs its tasks by the run's priorities, and work
#: stealing evens the workers out. Dask's queue (the default, 1.1) only holds "root-ish" tasks, those of a task
#: group larger than twice the threads at the moment they arrive: a run's first revaluations and a leg's
#: first chunks went straight to a worker and the rest waited in the queue, so the order a worker ran them
#: in depended on submission timing, not on priority (a 1-worker run computed the house model's chunks
#: before the venue model's revaluations)
WORKER_SATURATION = "inf"
_warned: set = set()


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_workers(n: int, what: str = "--workers") -> int:
    """``n`` if the embedded cluster may start that many worker processes here, else a one-line ConfigError.

    At most ``MAX_WORKERS_PER_CORE`` × the CPU cores (each worker is a process with its own memory
    and a share of the cores; hundreds of them never start in reasonable time). Above the core
    count, a warning (once per size): the workers share cores, which is slower and takes more memory.
    ``what`` names where ``n`` came from (``--workers``, ``job.toml: [job] workers``).
    """
    cores = cpu_cores()
    limit = MAX_WORKERS_PER_CORE * cores
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{what}: the worker count must be a whole number of at least 1; got {n!r}")
    if n > limit:
        raise ConfigError(
            f"{what}: {n} workers is more than the embedded cluster starts on this machine (at most {limit}: "
            f"{MAX_WORKERS_PER_CORE} per CPU core, {cores} core(s)); use at most {cores}, or run workers on more "
            f"machines behind a Dask scheduler (--scheduler)")
    if n > cores and (n, cores) not in _warned:
        _warned.add((n, cores))
        log.warning("%s: %d workers on %d CPU core(s): the workers share cores (slower, more memory); "
                    "%d or fewer is best", what, n, cores, cores)
    return n


def local_gpu_usable() -> bool:
    """Whether the GPU backend can run in this process (CuPy imports and sees a device)."""
    from ..backends import BackendUnavailable, get

    try:
        get("gpu")
        return True
    except (BackendUnavailable, ValueError):
        return False


def _workers(client) -> dict:
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return info.get("workers", {})


def n_workers(client) -> int:
    """How many workers the client's scheduler has now."""
    return len(_workers(client))


def gpu_workers(client) -> int:
    """How many of the client's workers declare a ``GPU`` resource."""
    return sum(1 for w in _workers(client).values() if (w.get("resources") or {}).get("GPU", 0) >= 1)


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def worker_env(threads: int) -> dict[str, str]:
    """Thread caps for a worker process, so N workers use N × ``threads`` cores, not N × all cores.

    Numba's parallel kernels and BLAS read these when they are first imported, which on a
    worker happens in its first task.
    """
    n = str(max(1, int(threads)))
    return {"NUMBA_NUM_THREADS": n, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}


class BackendError(ConfigError):
    """The backend asked for cannot run on this cluster (one line, before any work)."""


@dataclass(frozen=True)
class Workers:
    """The cluster's workers now: how many, how many declare a GPU, whether all run on this host."""

    count: int
    gpu: int
    local: bool


def workers_of(client) -> Workers:
    """Count the client's workers and ask each for its host name (one round trip)."""
    info = _workers(client)
    gpu = sum(1 for w in info.values() if (w.get("resources") or {}).get("GPU", 0) >= 1)
    try:
        hosts = set(client.run(socket.gethostname).values())
    except Exception:  # noqa: BLE001 - a worker that cannot answer: assume another host
        hosts = {None}
    return Workers(len(info), gpu, hosts <= {socket.gethostname()})


@dataclass(frozen=True)
class RunBackend:
    """A run's backend, resolved once: what was asked, what the tasks run, whether the embedded
    cluster starts GPU workers, the tasks' resources, and the fallbacks counted in resolving it."""

    requested: str
    name: str
    gpu_cluster: bool = False
    resources: dict | None = None
    fallbacks: int = 0

    def task_backend(self):
        from .tasks import TaskBackend

        return TaskBackend(self.name, self.requested)


def _resolve_here(name: str):
    from ..backends import BackendUnavailable, resolve

    try:
        return resolve(name)
    except BackendUnavailable as exc:
        hint = "; use --backend auto (or cpu)" if name == "gpu" else ""
        raise BackendError(f"{exc}{hint}") from None
    except ValueError as exc:
        raise BackendError(str(exc)) from None


def choose_backend(requested: str, workers: Workers | None = None) -> RunBackend:
    """Resolve ``requested`` (auto | reference | cpu | gpu) once for a run.

    ``workers`` None: the embedded cluster, not started yet; it runs on this host, so the backend is
    resolved here (``backends.resolve``), and a GPU resolution starts one GPU worker per device.
    Otherwise a running cluster: an explicit ``gpu`` needs a worker declaring ``GPU`` (and, when all
    workers are on this host, a usable GPU here); ``auto`` takes the GPU workers when there are any.
    A BackendError says why not, in one line.
    """
    gpu_res = {"GPU": 1}
    if workers is None:
        r = _resolve_here(requested)
        gpu = r.name == "gpu"
        return RunBackend(requested, r.name, gpu, gpu_res if gpu else None, int(r.gpu_fallback))
    if requested in ("gpu", "auto") and workers.gpu:
        if requested == "gpu" and workers.local:
            _resolve_here("gpu")
        return RunBackend(requested, "gpu", False, gpu_res)
    if requested == "gpu":
        raise BackendError(
            f"backend 'gpu': none of the {workers.count} worker(s) of the Dask scheduler declares a GPU "
            f"(start GPU workers with --resources GPU=1), so GPU tasks would wait forever; "
            f"use --backend auto (or cpu)")
    if requested == "auto" and not workers.local:
        return RunBackend(requested, "cpu")
    r = _resolve_here(requested)
    return RunBackend(requested, r.name, False, None, int(r.gpu_fallback))


def gpu_devices() -> list[str]:
    """The CUDA devices this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else 0..n-1 (CuPy's count)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import cupy

        return [str(i) for i in range(int(cupy.cuda.runtime.getDeviceCount()))]
    except Exception:  # noqa: BLE001 - no CuPy or no driver: no device
        return []


def gpu_worker_specs(devices: list[str], threads_per_worker: int = 1) -> dict:
    """SpecCluster worker specs: one nanny per device, seeing only that device, declaring ``GPU=1``."""
    from distributed import Nanny

    return {
        f"gpu-{d}": {"cls": Nanny, "options": {
            "nthreads": threads_per_worker, "host": "127.0.0.1", "resources": {"GPU": 1},
            "silence_logs": logging.ERROR, "env": {**worker_env(threads_per_worker), "CUDA_VISIBLE_DEVICES": d},
        }}
        for d in devices
    }


def _local_cluster(n: int, threads_per_worker: int, gpu: bool, devices: list[str] | None):
    """A started embedded cluster (see the module docstring), its scheduler set to ``WORKER_SATURATION``;
    raises what the start raised."""
    import dask

    with dask.config.set({"distributed.scheduler.worker-saturation": WORKER_SATURATION}):
        return _new_local_cluster(n, threads_per_worker, gpu, devices)


def _new_local_cluster(n: int, threads_per_worker: int, gpu: bool, devices: list[str] | None):
    from distributed import LocalCluster

    common = dict(dashboard_address=":0", host="127.0.0.1", silence_logs=logging.ERROR)
    if gpu:
        devices = list(devices if devices is not None else gpu_devices())[:n] or ["0"]
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None:
            return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(devices), n_workers=len(devices),
                                    threads_per_worker=threads_per_worker, resources={"GPU": 1},
                                    env=worker_env(threads_per_worker), **common)
        from distributed import Scheduler, SpecCluster

        return SpecCluster(workers=gpu_worker_specs(devices, threads_per_worker),
                           scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}},
                           silence_logs=logging.ERROR)
    return LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                        env=worker_env(threads_per_worker), **common)


def start_local(workers: int | None = None, threads_per_worker: int = 1, gpu: bool = False,
                devices: list[str] | None = None):
    """Start the embedded cluster; a start that fails (a worker process that died, a nanny that did not
    come up) is retried up to ``START_ATTEMPTS`` times, then a one-line ClusterError."""
    n = check_workers(workers) if workers is not None else default_workers()
    last = None
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _local_cluster(n, threads_per_worker, gpu, devices)
        except Exception as exc:  # noqa: BLE001 - any start-up failure is retried, then reported in one line
            last = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            if attempt < START_ATTEMPTS:
                log.warning("the local Dask cluster did not start (%s); retrying (attempt %d of %d)", last,
                            attempt + 1, START_ATTEMPTS)
    raise ClusterError(f"cannot start a local Dask cluster with {n} workers after {START_ATTEMPTS} attempts: {last}")


def connect(scheduler: str, timeout_s: float | None = None):
    """A Client to a running scheduler that has at least one worker; one-line ClusterError otherwise."""
    from distributed import Client

    timeout = timeout_s or CONNECT_TIMEOUT_S
    try:
        client = Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(redact(f"cannot reach the Dask scheduler at {scheduler}: {exc}", scheduler)) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise ClusterError(redact(f"the Dask scheduler at {scheduler} has no workers (waited {timeout:.0f} s)",
                                  scheduler)) from None
    return client


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1,
                gpu: bool = False, timeout_s: float | None = None, devices: list[str] | None = None):
    """Yield a ``distributed.Client``: to ``scheduler`` if given, else on a new embedded cluster.

    The embedded cluster has ``workers`` processes (default ``default_workers()``) with
    ``threads_per_worker`` threads each (and Numba/BLAS capped to as many) and the dashboard on a
    free port; with ``gpu``, one worker per visible device (``devices``, default ``gpu_devices()``;
    at most ``workers``), each with ``GPU=1``. It is closed on exit.
    """
    with Starting(workers, scheduler, threads_per_worker, gpu, timeout_s, devices, background=False) as start:
        yield start.client()


class Starting:
    """A cluster being started (in a background thread when ``background``) while the caller works.

    ``client()`` waits for it and returns the Client (or raises the start's error); leaving the
    ``with`` block closes the client and the embedded cluster, waiting for a start still running.
    """

    def __init__(self, workers=None, scheduler=None, threads_per_worker: int = 1, gpu: bool = False,
                 timeout_s=None, devices=None, background: bool = True):
        if not scheduler:  # a bad worker count is the caller's error, before anything starts
            workers = check_workers(workers) if workers is not None else default_workers()
        self.args = (workers, scheduler, threads_per_worker, gpu, timeout_s, devices)
        self._client = self._cluster = self._error = None
        self._thread = threading.Thread(target=self._start, name="gpurisk-cluster-start", daemon=True)
        if background:
            self._thread.start()
        else:
            self._start()

    def _start(self):
        from distributed import Client

        workers, scheduler, threads, gpu, timeout_s, devices = self.args
        try:
            if scheduler:
                self._client = connect(scheduler, timeout_s)
            else:
                self._cluster = start_local(workers, threads, gpu, devices)
                self._client = Client(self._cluster)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that asks for the client
            self._error = exc

    def client(self):
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._client

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._thread.ident is not None:
            self._thread.join()
        for obj in (self._client, self._cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception as err:  # noqa: BLE001 - closing never masks the run's own outcome
                    log.warning("closing the Dask %s failed: %s", type(obj).__name__, err)


class WorkerWatch:
    """While a run waits for its tasks, check every ``poll_s`` that the cluster still has a worker; after
    ``timeout_s`` with none (every worker and its nanny lost, a remote cluster gone), call ``on_dead`` (the
    runner cancels its futures and fails the run with ``message()``) instead of waiting forever.

    ``timeout_s`` ≤ 0 or None switches the watch off.
    """

    def __init__(self, client, timeout_s: float | None, on_dead, poll_s: float = 2.0):
        import threading

        self.client, self.timeout_s, self.on_dead, self.poll_s = client, timeout_s, on_dead, poll_s
        self.fired = False
        self._stop = threading.Event()
        self._thread = None

    def _count(self) -> int | None:
        try:
            return n_workers(self.client)
        except Exception:  # noqa: BLE001 - the scheduler itself may be gone: counts as no worker
            return 0

    def _run(self):
        import time

        since = None
        while not self._stop.wait(self.poll_s):
            n = self._count()
            if n:
                since = None
                continue
            since = time.monotonic() if since is None else since
            if time.monotonic() - since >= self.timeout_s:
                self.fired = True
                log.error("%s", self.message())
                try:
                    self.on_dead()
                except Exception as exc:  # noqa: BLE001 - cancelling is best effort; the run fails anyway
                    log.warning("cancelling the run's tasks failed: %s", exc)
                return

    def message(self) -> str:
        return (f"no Dask worker left for {self.timeout_s:g} s (every worker was lost and none came back); "
                "the run stops instead of waiting (set [job] lost_workers_timeout_s to wait longer)")

    def __enter__(self):
        import threading

        if self.timeout_s and self.timeout_s > 0:
            self._thread = threading.Thread(target=self._run, name="gpurisk-worker-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 1.0)
        return False
