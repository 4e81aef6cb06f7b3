"""SIGTERM is handled like Ctrl-C: both stop the command as an ``Interrupted`` exception.

``timeout``, ``kill`` and systemd send SIGTERM, whose default action ends the process at
once: a run in progress would keep ``"status": "running"`` in its manifest, with no alert and
no metrics. Raised as an exception instead, the signal unwinds through the code like Ctrl-C
does, so the batch runner records the run as failed (manifest, ``job_failure`` alert,
metrics), temporary files are removed and the cluster is closed.

Python runs a signal handler between two bytecodes of the main thread, wherever it is. Two
places are unsafe, and the raise waits for the next try there:

- an exception raised while the main thread runs a ``__del__`` or a garbage-collector callback
  (JAX has one) is printed and dropped, and the work would go on;
- an exception raised inside the import machinery or the logging module can leave one of their
  locks held, and the next import or log line in any thread (the cluster starting in the
  background) then waits forever. While the main thread is in one of them, the raise is put off.

So the raise is made again until it is seen unwinding the main thread: at the next signal, at
each chunk (``check``), and every ``POKE_S`` seconds by a watcher thread
(``_thread.interrupt_main``). A signal that comes while the stop is already unwinding (the run
being recorded) is logged and ignored; SIGKILL still ends the process at once.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import signal
import sys
import threading

log = logging.getLogger("gpurisk")

#: the signals a command stops on
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: seconds between two checks that a requested stop is unwinding the main thread
POKE_S = 1.0
#: code where raising could leave a lock held (the import machinery, logging): the raise waits
_UNSAFE = ("<frozen importlib.", "importlib/_bootstrap", "logging/__init__.py")


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT or SIGTERM) arrived; ``signum`` says which."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"{signal_name(self.signum)} received")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by it (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def unwinding() -> bool:
    """Whether an ``Interrupted`` is being handled or propagated in this thread (in an ``except``,
    ``finally`` or ``__exit__``, directly or as the context or cause of another exception)."""
    exc = sys.exc_info()[1]
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Interrupted):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def safe_to_raise(frame) -> bool:
    """Whether an exception may be raised in ``frame`` (the main thread's, as a signal handler gets it):
    not inside the import machinery or the logging module, whose locks it could leave held."""
    depth = 0
    while frame is not None and depth < 200:
        name = frame.f_code.co_filename.replace("\\", "/")
        if any(u in name for u in _UNSAFE):
            return False
        frame, depth = frame.f_back, depth + 1
    return True


class StopSignals:
    """The handler of SIGINT and SIGTERM: stop the work with ``Interrupted``, and make sure it stops."""

    def __init__(self):
        self.received: int | None = None  # the first stop signal
        self.handled = False  # the caller has dealt with the stop: nothing more to raise
        self._poked = False
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    def __call__(self, signum, frame=None):
        self.interrupt(signum, frame)

    def interrupt(self, signum: int, frame=None) -> None:
        """Raise ``Interrupted`` unless one is already unwinding (then log a real signal and return),
        or the main thread is where raising is unsafe (then the watcher tries again shortly)."""
        poked, self._poked = self._poked, False
        first = self.received is None
        if first:
            self.received = int(signum)
            self._watch()
        elif self.handled or unwinding():
            if not poked:
                log.warning("%s received while stopping after %s; finishing the cleanup (SIGKILL ends it at once)",
                            signal_name(signum), signal_name(self.received))
            return
        if frame is not None and not safe_to_raise(frame):
            return  # the watcher raises it at its next poke
        raise Interrupted(self.received)  # first, or again: the first raise was put off or dropped

    def check(self) -> None:
        """Raise ``Interrupted`` again if a stop was asked for and the work still goes on (call at safe points)."""
        if self.received is not None and not self.handled and not unwinding():
            raise Interrupted(self.received)

    def acknowledge(self) -> None:
        """The caller has caught the ``Interrupted`` and stops by itself: raise it no more."""
        self.handled = True
        self._closed.set()

    def close(self) -> None:
        """Stop the watcher thread (the handler is being uninstalled)."""
        self._closed.set()

    def _watch(self) -> None:
        if self._watcher is not None or threading.current_thread() is not threading.main_thread():
            return

        def poke():
            while not self._closed.wait(POKE_S):
                self._poked = True
                # runs this handler in the main thread (SIGTERM: once the handler is uninstalled and SIGTERM is
                # back to its default, a late poke does nothing)
                _thread.interrupt_main(signal.SIGTERM)

        self._watcher = threading.Thread(target=poke, name="gpurisk-stop-watch", daemon=True)
        self._watcher.start()


def check_stop() -> None:
    """``check()`` of the stop-signal handler installed for SIGTERM, if it has one (see ``StopSignals.check``)."""
    handler = signal.getsignal(signal.SIGTERM)
    check = getattr(handler, "check", None)
    if check is not None:
        check()


@contextlib.contextmanager
def stop_on_signals(handler: StopSignals | None = None):
    """Install ``handler`` (default ``StopSignals()``) for SIGINT and SIGTERM; restore the old handlers after.

    Does nothing outside the main thread (Python delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    handler = handler or StopSignals()
    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield handler
    finally:
        handler.close()
        for s, h in old.items():
            signal.signal(s, h)
