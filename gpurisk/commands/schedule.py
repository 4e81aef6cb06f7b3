"""``gpurisk schedule JOB``: run a job intraday at its [schedule] times or interval."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path

from .run import add_run_options

log = logging.getLogger("gpurisk.batch")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "schedule",
        help="run a job repeatedly at its [schedule] times (UTC) or interval",
        description="Run a job at each slot of its [schedule], each time on the latest snapshot; never two runs at "
        "once (an overrun slot is skipped and logged). SIGTERM or Ctrl-C stops it cleanly (exit 0).",
    )
    p.add_argument("job", help="job file (TOML) with a [schedule] table")
    p.add_argument("--max-runs", type=int, help="stop after this many runs")
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..batch import JobError, format_summary, run_job
    from ..batch import cluster as cl
    from ..batch.schedule import Scheduler, ScheduleLock
    from ..config import load_job
    from ..errors import ConfigError
    from .run import configure_logging, parse_options

    configure_logging(args.quiet)
    job = load_job(args.job)
    if job.kind == "calibration":
        raise ConfigError(f"{job.path.name}: calibration jobs are not built yet; this job file is a placeholder")
    if args.max_runs is not None and args.max_runs < 1:
        raise ConfigError(f"--max-runs must be at least 1; got {args.max_runs}")
    opts = parse_options(args)
    out = Path(opts.out or job.output)
    stack = contextlib.ExitStack()
    client = None

    def run_once():
        nonlocal client
        if client is None:  # the cluster starts at the first run and stays up between runs
            gpu = (opts.backend or job.backend) in ("gpu", "auto") and not opts.scheduler and cl.local_gpu_usable()
            client = stack.enter_context(cl.open_client(opts.workers or job.workers, opts.scheduler, gpu=gpu))
        try:
            report = run_job(load_job(args.job), opts, client=client)
        except JobError as exc:
            log.error("%s", exc)
            return False
        print(format_summary(report), flush=True)
        return True

    with ScheduleLock(out), stack:
        sched = Scheduler(job.schedule, run_once, max_runs=args.max_runs)
        old = {s: signal.signal(s, sched.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            sched.run()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    stopped = sched.stop_event.is_set()
    log.info("scheduler done: %d run(s), %d failed, %d slot(s) skipped%s", sched.runs, sched.failures,
             len(sched.skipped), " (stopped)" if stopped else "")
    return 0 if stopped or sched.failures == 0 else 1
