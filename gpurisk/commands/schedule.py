"""``gpurisk schedule JOB``: run a job intraday at its [schedule] times or interval.

Stop signals (SIGTERM from systemd or ``kill``, Ctrl-C): the first ends a wait at once, or
lets the run in progress finish and be recorded, then the scheduler exits 0. A second signal
during a run stops that run now: it is recorded as failed (manifest, ``job_failure`` alert,
metrics), and the scheduler exits 0. Any further signal is logged and ignored.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .run import add_run_options
from .signals import StopSignals, signal_name

log = logging.getLogger("gpurisk.batch")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "schedule",
        help="run a job repeatedly at its [schedule] times (UTC) or interval",
        description="Run a job at each slot of its [schedule], each time on the latest snapshot; never two runs at "
        "once (an overrun slot is skipped and logged). SIGTERM or Ctrl-C stops it cleanly (exit 0): a wait ends "
        "at once, a run in progress finishes first; a second signal stops that run now, recorded as failed.",
    )
    p.add_argument("job", help="job file (TOML) with a [schedule] table")
    p.add_argument("--max-runs", type=int, help="stop after this many runs")
    add_run_options(p)
    p.set_defaults(func=run)
    return p


class ScheduleSignals(StopSignals):
    """The scheduler's stop-signal handler: the first signal stops the schedule after the run in progress;
    a second during a run stops that run now (``StopSignals.interrupt``: it is recorded as failed)."""

    def __init__(self, sched):
        super().__init__()
        self.sched = sched
        self.in_run = False

    def __call__(self, signum, frame=None):
        name = signal_name(signum)
        if not self.sched.stop_event.is_set():
            if self.in_run:
                log.info("%s: the scheduler exits after the run in progress (a second signal stops that run now; "
                         "it is then recorded as failed)", name)
            self.sched.stop()
            return
        if self.in_run or self.received is not None:
            if self.received is None:
                log.warning("%s again: stopping the run in progress; it is recorded as failed", name)
            self.interrupt(signum, frame)
            return
        log.warning("%s received while stopping; the scheduler exits now", name)

    def check(self) -> None:
        if self.in_run:
            super().check()


def run(args) -> int:
    from ..batch import JobError, format_summary, run_job
    from ..batch import cluster as cl
    from ..batch.schedule import Scheduler, ScheduleLock
    from ..config import load_job
    from ..errors import ConfigError
    from . import progress
    from ..errors import GpuriskError
    from .run import check_job_options, configure_logging, parse_options, run_kind
    from .signals import Interrupted, check_stop, stop_on_signals

    configure_logging(args.quiet, args.verbose)
    job = load_job(args.job)
    if args.max_runs is not None and args.max_runs < 1:
        raise ConfigError(f"--max-runs must be at least 1; got {args.max_runs}")
    opts = parse_options(args)
    check_job_options(job, opts)  # the job's kind and worker count, before anything starts
    out = Path(opts.out or job.output)
    stack = contextlib.ExitStack()
    client = None
    signals = None

    def run_once():
        nonlocal client
        signals.in_run = True
        try:
            this = load_job(args.job)
            check_job_options(this, opts)
            try:
                if run_kind(this, opts, args.quiet):  # stress, backtest, calibration: in this process
                    return True
            except GpuriskError as exc:
                log.error("%s", exc)
                return False
            if client is None:  # the cluster starts at the first run and stays up between runs
                notice = progress.compile_notice(opts.backend or this.backend, opts.scheduler)
                if notice:
                    log.info("%s", notice)
                gpu = (opts.backend or this.backend) in ("gpu", "auto") and not opts.scheduler and cl.local_gpu_usable()
                client = stack.enter_context(cl.open_client(opts.workers or this.workers, opts.scheduler, gpu=gpu))
            try:
                with progress.showing(progress.Progress.mode_for(args.quiet)) as show:
                    report = run_job(this, opts, client=client, on_chunk=progress.then(show, check_stop))
            except JobError as exc:
                log.error("%s", exc)
                return False
        finally:
            signals.in_run = False
        print(format_summary(report), flush=True)
        return True

    sched = Scheduler(job.schedule, run_once, max_runs=args.max_runs)
    signals = ScheduleSignals(sched)
    with stop_on_signals(signals), ScheduleLock(out), stack:
        try:
            sched.run()
        except Interrupted as exc:
            signals.acknowledge()
            sched.failures += 1
            log.warning("scheduled run %d stopped by %s and recorded as failed", sched.runs, signal_name(exc.signum))
    stopped = sched.stop_event.is_set()
    log.info("scheduler done: %d run(s), %d failed, %d slot(s) skipped%s", sched.runs, sched.failures,
             len(sched.skipped), " (stopped)" if stopped else "")
    return 0 if stopped or sched.failures == 0 else 1
