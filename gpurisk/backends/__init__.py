"""Backend registry with lazy imports.

``get(name)`` returns a backend module (``reference``, ``cpu`` or ``gpu``);
``select("auto")`` takes the GPU when CuPy sees a usable device, else the CPU.
CuPy and Numba are imported only when their backend is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass

from .base import BackendUnavailable, NonFinitePnL, MeasureSpec, TailStats

NAMES = ("reference", "cpu", "gpu")
CHOICES = ("auto",) + NAMES


def get(name: str):
    """The backend module called ``name``; BackendUnavailable (naming the reason) if it cannot run here."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    try:
        mod = importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:  # a missing optional dependency
        raise BackendUnavailable(f"backend {name!r} cannot be imported: {exc}") from exc
    ok, why = mod.available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not usable here: {why}")
    return mod


def select(name: str = "auto"):
    """The backend module for ``name``: an explicit name must be usable (BackendUnavailable says why);
    ``auto`` takes the GPU when usable, else the CPU, else the reference. See ``resolve``."""
    return resolve(name).backend


@dataclass(frozen=True)
class Resolved:
    """A backend request resolved once: ``requested`` (auto | reference | cpu | gpu), the backend
    module chosen, and why ``auto`` did not take the GPU (``""`` when it did, or was not asked)."""

    requested: str
    backend: object
    gpu_skipped: str = ""

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def gpu_fallback(self) -> bool:
        """True when ``auto`` wanted the GPU, CuPy is installed, but the device could not be used."""
        return bool(self.gpu_skipped) and importlib.util.find_spec("cupy") is not None


def resolve(name: str = "auto") -> Resolved:
    """Resolve a backend request once, where the work will run.

    An explicit ``gpu`` (or ``cpu``, ``reference``) that cannot run here is a one-line
    ``BackendUnavailable``; ``auto`` takes the GPU when usable, else the CPU (else the
    reference), logging a warning when CuPy is installed but the GPU is not usable.
    """
    if name != "auto":
        return Resolved(name, get(name))
    try:
        return Resolved("auto", get("gpu"))
    except BackendUnavailable as exc:
        why = str(exc)
    res = Resolved("auto", _fallback(), why)
    log = logging.getLogger("gpurisk.backends")
    (log.warning if res.gpu_fallback else log.debug)("backend auto: %s; using %s", why, res.name)
    return res


def _fallback():
    """The backend a failed GPU call retries on: the CPU, else the reference."""
    try:
        return get("cpu")
    except BackendUnavailable:
        return get("reference")


def _to_host(a):
    """A CuPy array as NumPy (so a CPU retry can read it); anything else unchanged."""
    if type(a).__module__.startswith("cupy") and hasattr(a, "get"):
        return a.get()
    return a


__all__ = ["Engine", "Resolved", "resolve", "get", "select", "NAMES", "CHOICES", "MeasureSpec", "TailStats", "BackendUnavailable"]


def check_finite_pnl(P, scenarios=None) -> None:
    """Raise NonFinitePnL if P [I, S] holds NaN or ±inf (one pass; the tail kernels assume finite P&L)."""
    import numpy as np

    finite = np.isfinite(P)
    if finite.all():
        return
    i, s = np.argwhere(~finite)[0]
    sid = scenarios.scenario_id[s] if scenarios is not None else s
    raise NonFinitePnL(
        f"revaluation gave a non-finite P&L ({P[i, s]}) for instrument row {int(i)} in scenario {sid!r}: "
        f"{int((~finite).sum())} entries in all; check that instrument's market data and the scenario's shocks"
    )


class Engine:
    """A resolved backend with a per-call GPU→CPU fallback.

    ``revalue`` and ``tail_stats`` run on the resolved backend. If the GPU fails in one call
    (out of memory, a launch or compile error) that call is retried on the CPU, a warning is
    logged, the GPU's device memory is released and ``fallbacks`` counts it; the next call
    tries the GPU again. Bad input (``NonFinitePnL``, ``ValueError``) is raised, never retried.
    ``used`` records the backend that produced each call's result. ``auto`` resolving to
    the CPU although CuPy is installed also counts one fallback.
    """

    def __init__(self, name: "str | Resolved" = "auto"):
        self.resolved = name if isinstance(name, Resolved) else resolve(name)
        self.requested = self.resolved.requested
        self.backend = self.resolved.backend
        self.fallbacks = int(self.resolved.gpu_fallback)
        self.used: list[str] = []
        self._log = logging.getLogger("gpurisk.backends")

    @property
    def name(self) -> str:
        return self.backend.name

    def _call(self, fn: str, *args, **kwargs):
        try:
            out = getattr(self.backend, fn)(*args, **kwargs)
            self.used.append(self.backend.name)
            return out
        except (NonFinitePnL, ValueError):
            raise  # bad input, not a GPU failure: the CPU would refuse it too
        except Exception as exc:  # noqa: BLE001 - any GPU failure falls back for this call
            if self.backend.name != "gpu":
                raise
            self._log.warning("GPU backend failed in %s (%s: %s); this call runs on the CPU", fn,
                              type(exc).__name__, " ".join(str(exc).split())[:300])
            self.fallbacks += 1
            self.release()
            other = _fallback()
            out = getattr(other, fn)(*tuple(_to_host(a) for a in args), **kwargs)
            self.used.append(other.name)
            return out

    def revalue(self, pi, scenarios, numeraire: str = "usd"):
        """P [I, S]; a non-finite entry is an error naming its instrument row and scenario (never silently dropped)."""
        P = self._call("revalue", pi, scenarios, numeraire)
        check_finite_pnl(P, scenarios)
        return P

    def tail_stats(self, portfolios, P, spec, attribution: bool = False):
        """TailStats of the portfolios over P; ``attribution`` adds the tail sets and Euler marginals
        (``gpurisk.tail``; asked of the backend only when set, so the default call is unchanged)."""
        if attribution:
            return self._call("tail_stats", portfolios, P, spec, attribution=True)
        return self._call("tail_stats", portfolios, P, spec)

    def release(self) -> None:
        """Free what the backend holds on its device (a no-op on the CPU)."""
        fn = getattr(self.backend, "release", None)
        if callable(fn):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - releasing must never mask the original failure
                self._log.warning("releasing %s memory failed: %s", self.backend.name, exc)

    def close(self) -> None:
        self.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
