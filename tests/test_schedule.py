"""The intraday schedule: slot arithmetic, overrun skipping, max runs and a clean SIGTERM stop."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from gpurisk.batch.schedule import Scheduler, ScheduleLock, next_slot
from gpurisk.config import ScheduleConfig
from gpurisk.errors import ConfigError


def _ts(s: str) -> float:
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc).timestamp()


def test_next_slot_times_of_day_wraps_to_next_day():
    cfg = ScheduleConfig(times=("08:00", "16:00"))
    assert next_slot(cfg, _ts("2026-11-21T07:59:59"), 0) == _ts("2026-11-21T08:00:00")
    assert next_slot(cfg, _ts("2026-11-21T08:00:00"), 0) == _ts("2026-11-21T16:00:00")  # strictly after
    assert next_slot(cfg, _ts("2026-11-21T23:00:00"), 0) == _ts("2026-11-22T08:00:00")


def test_next_slot_interval_is_anchored():
    cfg = ScheduleConfig(interval_minutes=15)
    a = _ts("2026-11-21T10:00:00")
    assert next_slot(cfg, a, a) == a + 900
    assert next_slot(cfg, a + 899.9, a) == a + 900
    assert next_slot(cfg, a + 2000, a) == a + 2700


class FakeClock:
    """A clock that only moves when the scheduler waits or a run takes time."""

    def __init__(self, t0: float):
        self.t = t0

    def __call__(self) -> float:
        return self.t


class FakeEvent(threading.Event):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.waits = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        self.clock.t += timeout
        return self.is_set()


def test_interval_runs_and_overrun_skips_slots():
    clock = FakeClock(_ts("2026-11-21T10:00:00"))
    durations = iter([60.0, 2000.0, 10.0])  # the 2nd run overruns the 10:20, 10:30 and 10:40 slots
    starts = []

    def run_once():
        starts.append(clock.t)
        clock.t += next(durations)
        return True

    s = Scheduler(ScheduleConfig(interval_minutes=10), run_once, max_runs=3, clock=clock, stop_event=FakeEvent(clock))
    assert s.run() == 3
    t0 = _ts("2026-11-21T10:00:00")
    assert starts == [t0, t0 + 600, t0 + 3000]  # 10:00, 10:10 (ends 10:43:20), then 10:50
    assert s.skipped == [t0 + 1200, t0 + 1800, t0 + 2400]
    assert s.failures == 0


def test_failed_run_is_counted_and_schedule_goes_on():
    clock = FakeClock(_ts("2026-11-21T07:00:00"))
    calls = []

    def run_once():
        calls.append(clock.t)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return True

    s = Scheduler(ScheduleConfig(times=("08:00", "09:00")), run_once, max_runs=2, clock=clock, stop_event=FakeEvent(clock))
    assert s.run() == 2 and s.failures == 1
    assert calls == [_ts("2026-11-21T08:00:00"), _ts("2026-11-21T09:00:00")]


def test_stop_during_wait_returns_at_once():
    ran = []
    s = Scheduler(ScheduleConfig(times=("00:00",)), lambda: ran.append(1), max_runs=5)
    threading.Timer(0.2, s.stop).start()
    t = time.perf_counter()
    assert s.run() == 0 and not ran
    assert time.perf_counter() - t < 5


def test_no_schedule_is_an_error():
    with pytest.raises(ConfigError, match="no \\[schedule\\]"):
        Scheduler(ScheduleConfig(), lambda: True)


def test_lock_allows_one_scheduler_per_output(tmp_path):
    with ScheduleLock(tmp_path):
        with pytest.raises(ConfigError, match="another scheduler"):
            with ScheduleLock(tmp_path):
                pass
    with ScheduleLock(tmp_path):  # released
        pass


def test_cli_schedule_stops_cleanly_on_sigterm(tmp_path):
    """A waiting ``gpurisk schedule`` exits 0 on SIGTERM without starting a run."""
    now = dt.datetime.now(dt.timezone.utc)
    far = (now + dt.timedelta(hours=12)).strftime("%H:%M")
    job = tmp_path / "job.toml"
    job.write_text(f'[job]\nname = "s"\noutput = "out"\n[book]\npath = "nowhere"\n[[models]]\nname = "house"\n'
                   f'[schedule]\ntimes = ["{far}"]\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpurisk.cli", "schedule", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    lines = []
    while time.time() < deadline:  # wait until it is waiting for the first slot
        line = proc.stderr.readline()
        lines.append(line)
        if "next run at" in line or not line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + err
    assert (tmp_path / "out" / ".schedule.lock").exists() and not list((tmp_path / "out").glob("2*"))


def test_stop_signals_first_stops_after_the_run_second_stops_the_run():
    """``gpurisk schedule``'s handler: the first signal asks the scheduler to stop (the run in progress
    goes on); a second during a run raises ``Interrupted`` there (the runner records the run); a signal
    while that unwinds is ignored, and a raise that got lost is made again."""
    from gpurisk.commands.schedule import ScheduleSignals
    from gpurisk.commands.signals import Interrupted

    s = Scheduler(ScheduleConfig(interval_minutes=10), lambda: True)
    h = ScheduleSignals(s)
    try:
        h.in_run = True
        h(signal.SIGTERM)
        assert s.stop_event.is_set()
        h.check()  # only asked to stop after the run: nothing to raise
        with pytest.raises(Interrupted) as exc:
            h(signal.SIGTERM)
        assert exc.value.signum == signal.SIGTERM and exc.value.exit_code == 143
        try:
            raise exc.value
        except Interrupted:
            h(signal.SIGINT)  # while the stop unwinds (the run being recorded): ignored
            h.check()
        with pytest.raises(Interrupted):  # the raise was lost (a handler run inside a __del__): made again
            h.check()
        with pytest.raises(Interrupted):
            h(signal.SIGINT)
        h.acknowledge()
        h(signal.SIGINT)  # the scheduler has dealt with it
        h.check()
    finally:
        h.close()

    waiting = ScheduleSignals(Scheduler(ScheduleConfig(interval_minutes=10), lambda: True))
    waiting(signal.SIGINT)
    waiting(signal.SIGINT)  # a second signal while waiting is not a run to stop: nothing raised
    assert waiting.sched.stop_event.is_set() and waiting.received is None


def test_stop_signals_of_a_single_run():
    """``gpurisk run``'s handler: the first signal raises ``Interrupted``; later ones are ignored while it
    unwinds (the run being recorded); a lost raise is made again, by ``check()`` or by the watcher thread."""
    from gpurisk.commands.signals import Interrupted, StopSignals, check_stop, stop_on_signals

    h = StopSignals()
    try:
        h.check()
        with pytest.raises(Interrupted) as exc:
            h(signal.SIGTERM)
        assert str(exc.value) == "SIGTERM received" and exc.value.exit_code == 143
        try:
            raise exc.value
        except Interrupted:
            h(signal.SIGINT)  # ignored
        with pytest.raises(Interrupted):
            h.check()
    finally:
        h.close()
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as installed:
        assert signal.getsignal(signal.SIGTERM) is installed and signal.getsignal(signal.SIGINT) is installed
        check_stop()  # no stop asked for
        with pytest.raises(Interrupted):
            signal.raise_signal(signal.SIGTERM)  # a real signal to this process
        deadline = time.monotonic() + 30  # the first raise is taken as lost: the watcher makes it again
        with pytest.raises(Interrupted):
            while time.monotonic() < deadline:
                time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before
    check_stop()  # the default handler has no check: nothing happens


def test_the_raise_waits_while_the_main_thread_imports_or_logs():
    """Raising inside the import machinery or logging could leave their locks held (the next import in
    any thread then waits forever): there the raise is put off, and made at the next safe moment."""
    import types

    from gpurisk.commands.signals import Interrupted, StopSignals, safe_to_raise

    def frame(filename, back=None):
        return types.SimpleNamespace(f_code=types.SimpleNamespace(co_filename=filename), f_back=back)

    importing = frame("/x/jax/_src/config.py", frame("<frozen importlib._bootstrap>", frame("/x/gpurisk/batch/runner.py")))
    logging_ = frame("/usr/lib/python3.11/logging/__init__.py", frame("/x/gpurisk/batch/runner.py"))
    waiting = frame("/usr/lib/python3.11/threading.py", frame("/x/gpurisk/batch/runner.py"))
    assert not safe_to_raise(importing) and not safe_to_raise(logging_) and safe_to_raise(waiting)
    h = StopSignals()
    try:
        h(signal.SIGTERM, importing)  # put off: nothing raised, the stop is remembered
        assert h.received == signal.SIGTERM
        with pytest.raises(Interrupted):
            h(signal.SIGTERM, waiting)  # the next try (a signal, or the watcher's poke) raises it
    finally:
        h.close()
