"""Backend registry with lazy imports.

``get(name)`` returns a backend module (``reference``, ``cpu`` or ``gpu``);
``select("auto")`` takes the GPU when CuPy sees a usable device, else the CPU.
CuPy and Numba are imported only when their backend is used.
"""

from __future__ import annotations

import importlib

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
    """Resolve ``auto`` to the GPU if usable, else the CPU; other names as ``get``."""
    if name != "auto":
        return get(name)
    for candidate in ("gpu", "cpu"):
        try:
            return get(candidate)
        except BackendUnavailable:
            continue
    return get("reference")


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


__all__ = ["Engine", "get", "select", "NAMES", "CHOICES", "MeasureSpec", "TailStats", "BackendUnavailable"]


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
    """A backend chosen by name with GPU→CPU fallback.

    ``revalue`` and ``tail_stats`` run on the selected backend; if the GPU backend
    fails (no device, out of memory, compile error) the call is retried on the CPU,
    a warning is logged and ``fallbacks`` counts it. ``used`` records the backend
    that produced each call's result.
    """

    def __init__(self, name: str = "auto"):
        import logging

        self.requested = name
        self.backend = select(name)
        self.fallbacks = 0
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
        except Exception as exc:  # noqa: BLE001 - any GPU failure falls back
            if self.backend.name != "gpu":
                raise
            self._log.warning("GPU backend failed in %s (%s: %s); falling back to the CPU", fn, type(exc).__name__, exc)
            self.fallbacks += 1
            self.backend = _fallback()
            args = tuple(_to_host(a) for a in args)
            out = getattr(self.backend, fn)(*args, **kwargs)
            self.used.append(self.backend.name)
            return out

    def revalue(self, pi, scenarios, numeraire: str = "usd"):
        """P [I, S]; a non-finite entry is an error naming its instrument row and scenario (never silently dropped)."""
        P = self._call("revalue", pi, scenarios, numeraire)
        check_finite_pnl(P, scenarios)
        return P

    def tail_stats(self, portfolios, P, spec):
        return self._call("tail_stats", portfolios, P, spec)
