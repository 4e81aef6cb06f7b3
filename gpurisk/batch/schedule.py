"""The intraday schedule: run a job at UTC times of day or at a fixed interval.

Runs never overlap: a run that overruns one or more slots makes those slots be
skipped (each is logged); the next run starts at the first slot after it ends.
Interval schedules are anchored at the scheduler's start (the first run starts
at once); time-of-day schedules fire at each ``HH:MM`` UTC. ``stop()`` (wired to
SIGTERM/SIGINT by ``gpurisk schedule``) ends the current wait at once, or lets
the current run finish, and then returns.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import ScheduleConfig
from ..errors import ConfigError

log = logging.getLogger("gpurisk.batch")


def next_slot(cfg: ScheduleConfig, after: float, anchor: float) -> float:
    """The first slot time (Unix seconds) strictly after ``after``.

    Interval: ``anchor + k·interval``. Times of day: the next ``HH:MM`` UTC.
    """
    if cfg.interval_minutes is not None:
        step = cfg.interval_minutes * 60.0
        k = math.floor((after - anchor) / step) + 1
        return anchor + max(k, 0) * step
    if not cfg.times:
        raise ConfigError("the job has no [schedule] (set times = [\"HH:MM\", ...] or interval_minutes)")
    day = _dt.datetime.fromtimestamp(after, _dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    for d in range(0, 3):
        base = day + _dt.timedelta(days=d)
        for t in cfg.times:
            hh, mm = map(int, t.split(":"))
            ts = (base + _dt.timedelta(hours=hh, minutes=mm)).timestamp()
            if ts > after:
                return ts
    raise AssertionError("unreachable: a time of day recurs within two days")


class Scheduler:
    """Calls ``run_once()`` at each slot of ``cfg``, one run at a time.

    ``run_once`` returns truthy on success; an exception is logged and counted as a
    failed run (the schedule goes on). ``clock`` and ``stop_event`` can be replaced
    in tests.
    """

    def __init__(self, cfg: ScheduleConfig, run_once: Callable[[], object], *, max_runs: int | None = None,
                 clock: Callable[[], float] = time.time, stop_event: threading.Event | None = None):
        if not cfg.configured:
            raise ConfigError("the job has no [schedule] (set times = [\"HH:MM\", ...] or interval_minutes)")
        self.cfg, self.run_once, self.max_runs, self.clock = cfg, run_once, max_runs, clock
        self.stop_event = stop_event or threading.Event()
        self.runs = 0
        self.failures = 0
        self.skipped: list[float] = []

    def stop(self, *_):
        """Stop after the current run, or at once while waiting."""
        if not self.stop_event.is_set():
            log.info("stop requested; the scheduler exits after the current run or wait")
        self.stop_event.set()

    def run(self) -> int:
        """Loop until ``max_runs`` runs are done or ``stop()``; returns the number of runs."""
        anchor = self.clock()
        slot = anchor if self.cfg.interval_minutes is not None else next_slot(self.cfg, anchor, anchor)
        while not self.stop_event.is_set() and (self.max_runs is None or self.runs < self.max_runs):
            wait = slot - self.clock()
            if wait > 0:
                log.info("next run at %s", _iso(slot))
                if self.stop_event.wait(wait):
                    break
            self.runs += 1
            try:
                if not self.run_once():
                    self.failures += 1
            except Exception as exc:  # noqa: BLE001 - a failed run is logged; the schedule goes on
                self.failures += 1
                log.error("scheduled run %d failed: %s", self.runs, exc)
            end = self.clock()
            nxt = next_slot(self.cfg, end, anchor)
            missed = slot
            while True:
                missed = next_slot(self.cfg, missed, anchor)
                if missed >= nxt:
                    break
                self.skipped.append(missed)
                log.warning("run at %s skipped: the previous run overran it (ended %s)", _iso(missed), _iso(end))
            slot = nxt
        return self.runs


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ScheduleLock:
    """An exclusive ``flock`` on ``OUTPUT/.schedule.lock``: one scheduler per output folder."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".schedule.lock"
        self.fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise ConfigError(f"another scheduler already runs on {self.path.parent} (lock {self.path.name} is held)") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()
