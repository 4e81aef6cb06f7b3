"""What a user sees while ``gpurisk run`` or ``gpurisk schedule`` works.

``Progress`` is driven by the batch runner's ``on_chunk(done, total)`` hook and a heartbeat:

- ``bar`` (stderr is a terminal): one line redrawn every second, ``chunks [####    ] 12/51  34 s``
  (``working ... 12 s`` before the first chunk finishes), so a long first task (Numba compiling
  the CPU kernels) never looks like a hang;
- ``lines`` (a log file, the journal): a log line at every 10 % of the chunks, and a
  ``still working`` line after every ``quiet_s`` seconds without one;
- ``off`` (``--quiet``): nothing.

``compile_notice`` says, before the work starts, when the CPU kernels are not in Numba's
on-disk cache yet: the first tasks then compile them (``COMPILE_SECONDS``), once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

log = logging.getLogger("gpurisk.batch")

#: about what compiling the CPU kernels once takes on a worker process of a 2-core machine (measured: 58 s
#: with the machine busy, load 9; see docs/operations.md)
COMPILE_SECONDS = 60
#: bar width in characters
WIDTH = 30


class Progress:
    """A progress display for one run: ``mode`` is ``bar``, ``lines`` or ``off``.

    Call it as ``on_chunk(done, total)``; use it as a context manager (the heartbeat runs inside).
    """

    def __init__(self, mode: str, *, stream=None, tick_s: float = 1.0, quiet_s: float = 30.0):
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress mode must be bar, lines or off; got {mode!r}")
        self.mode, self.tick_s, self.quiet_s = mode, tick_s, quiet_s
        self.stream = stream
        self.done, self.total = 0, None
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        self.next_tenth = 1
        self._lock = threading.RLock()  # re-entered when a log line is written while drawing
        self._stop = threading.Event()
        self._thread = None
        self._drawn = False

    @staticmethod
    def mode_for(quiet: bool, stream=None) -> str:
        """``off`` when quiet, ``bar`` when ``stream`` (default stderr) is a terminal, else ``lines``."""
        if quiet:
            return "off"
        s = stream or sys.stderr
        return "bar" if getattr(s, "isatty", lambda: False)() else "lines"

    def __enter__(self):
        self.t0 = self.last_line = time.perf_counter()
        if self.mode != "off":
            self._thread = threading.Thread(target=self._beat, name="gpurisk-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.mode == "bar" and self._drawn:
                self._write("\n")
                self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            self.done, self.total = int(done), int(total)
            if self.mode == "bar":
                self._draw()
            elif self.mode == "lines":
                tenths = 10 * self.done // self.total if self.total else 10  # whole tenths done
                if tenths >= self.next_tenth or self.done >= self.total:
                    frac = self.done / self.total if self.total else 1.0
                    log.info("chunks %d/%d done (%.0f%%), %.0f s", self.done, self.total, 100 * frac, self._elapsed())
                    self.last_line = time.perf_counter()
                    self.next_tenth = tenths + 1

    # ------------------------------------------------------------------ internals

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _write(self, text: str) -> None:
        s = self.stream or sys.stderr
        s.write(text)
        s.flush()

    def _draw(self) -> None:
        if self.total:
            frac = min(self.done / self.total, 1.0)
            line = f"  chunks [{'#' * int(WIDTH * frac):<{WIDTH}}] {self.done}/{self.total} {self._elapsed():6.0f} s"
        else:
            line = f"  working {self._elapsed():6.0f} s (no chunk finished yet)"
        self._write("\r\x1b[K" + line)
        self._drawn = True

    def beside(self, write) -> None:
        """Call ``write()`` (a log line to the same terminal) with the bar's line wiped first; the bar is
        redrawn at the next tick."""
        with self._lock:
            if self.mode == "bar" and self._drawn:
                self._write("\r\x1b[K")
                self._drawn = False
            write()

    def _beat(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self._lock:
                if self.mode == "bar":
                    self._draw()
                elif time.perf_counter() - self.last_line >= self.quiet_s:
                    if self.total:
                        log.info("still working: %d/%d chunks done after %.0f s", self.done, self.total,
                                 self._elapsed())
                    else:
                        log.info("still working after %.0f s: no chunk finished yet", self._elapsed())
                    self.last_line = time.perf_counter()


#: the progress display of the run in progress (log lines are written beside it), or None
ACTIVE: Progress | None = None


def then(show, check):
    """An ``on_chunk(done, total)`` hook that updates ``show`` and then calls ``check()`` (which may raise)."""

    def on_chunk(done: int, total: int) -> None:
        show(done, total)
        check()

    return on_chunk


@contextlib.contextmanager
def showing(mode: str):
    """A running ``Progress(mode)``, registered as ``ACTIVE`` while it runs; yields it (the ``on_chunk`` hook)."""
    global ACTIVE
    with Progress(mode) as show:
        ACTIVE = show
        try:
            yield show
        finally:
            ACTIVE = None


def kernels_cached(module) -> bool | None:
    """Whether Numba's on-disk cache holds compiled code of ``module``'s kernels for their current source.

    True when any cached kernel of the module has a valid cache index (Numba rewrites every index
    when the source changes, so a fresh install or an edited module has none); False when none
    has; None when it cannot be told (no cached kernels, or Numba's cache layout is not the expected one).
    """
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return None
    found = False
    for obj in list(vars(module).values()):
        if not isinstance(obj, Dispatcher):
            continue
        cache = getattr(obj, "_cache", None)
        load = getattr(getattr(cache, "_cache_file", None), "_load_index", None)
        if load is None:
            continue
        found = True
        try:
            if load():
                return True
        except Exception:  # noqa: BLE001 - an unreadable index is a cold cache for this purpose
            continue
    return False if found else None


def compile_notice(backend: str, scheduler: str | None) -> str | None:
    """The line to log before the work when the CPU kernels will be compiled, else None.

    Only for the embedded cluster (a scheduler's workers have their own caches) and when the
    CPU backend will run: ``cpu``, or ``auto`` without a usable GPU.
    """
    if scheduler or backend not in ("cpu", "auto"):
        return None
    from ..backends import BackendUnavailable, get
    from ..batch.cluster import local_gpu_usable

    if backend == "auto" and local_gpu_usable():
        return None
    try:
        cpu = get("cpu")
    except BackendUnavailable:
        return None
    if kernels_cached(cpu) is not False:
        return None
    return (f"compiling the CPU kernels once: the first chunks take up to about {COMPILE_SECONDS} s longer on a "
            f"2-core machine; the compiled kernels are cached for later runs")
