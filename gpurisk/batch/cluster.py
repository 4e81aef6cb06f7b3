"""The Dask cluster a batch runs on: an embedded ``LocalCluster`` or a running scheduler.

Workers that own a GPU declare the resource ``GPU=1`` (``dask worker ADDRESS
--resources GPU=1``); the embedded cluster declares it on its workers when the
GPU backend is usable on this machine. GPU tasks then carry
``resources={"GPU": 1}``; without GPU workers, tasks run anywhere and the
worker's engine falls back to the CPU backend.
"""

from __future__ import annotations

import contextlib
import logging
import os

from ..errors import GpuriskError

log = logging.getLogger("gpurisk.batch")

#: seconds to wait for a remote scheduler before the run fails
CONNECT_TIMEOUT_S = 30.0


class ClusterError(GpuriskError):
    """The Dask scheduler cannot be reached or the local cluster cannot start."""


def default_workers() -> int:
    """Embedded cluster size: 2, or the CPU count when that is smaller."""
    return max(1, min(2, os.cpu_count() or 1))


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


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1,
                gpu: bool = False, timeout_s: float | None = None):
    """Yield a ``distributed.Client``: to ``scheduler`` if given, else on a new embedded LocalCluster.

    The embedded cluster has ``workers`` processes (default ``default_workers()``)
    with ``threads_per_worker`` threads each (and Numba/BLAS capped to as many), the dashboard on a free port, and ``GPU=1`` on
    each worker when ``gpu`` is true. It is closed on exit.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout_s or CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or default_workers()
    kwargs = dict(
        n_workers=n,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=":0",  # a free port: never clashes with another cluster on the host
        host="127.0.0.1",
        silence_logs=logging.ERROR,
        env=worker_env(threads_per_worker),
    )
    if gpu:
        kwargs["resources"] = {"GPU": 1}
    try:
        cluster = LocalCluster(**kwargs)
    except Exception as exc:  # noqa: BLE001 - report any start-up failure in one line
        raise ClusterError(f"cannot start a local Dask cluster with {n} workers: {type(exc).__name__}: {exc}") from None
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
