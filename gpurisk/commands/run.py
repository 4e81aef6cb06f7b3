"""``gpurisk run JOB``: run a job file once on Dask and print a short summary.

Options are checked before any work: a bad ``--chunk-size``, ``--workers`` (or the job's
``workers``) beyond what the embedded cluster starts here, or a ``--resume`` that names no run
is a one-line error (exit 2) that raises no alert. SIGTERM stops a run like Ctrl-C, and the run
is recorded as failed (``gpurisk.commands.signals``). Log lines go to stderr with every URL
redacted; ``-q`` keeps warnings and errors only, ``-v`` adds debug lines.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..backends import CHOICES
from ..redact import redact


def add_parser(subparsers):
    p = subparsers.add_parser(
        "run",
        help="run a job file (jobs/*.toml) on an embedded Dask cluster or a scheduler",
        description="Run a job file once: book -> scenarios -> revaluation -> chunked tail statistics on Dask -> "
        "margin tables in OUT/<run_id>/, with manifest.json, metrics.prom and alerts.",
    )
    p.add_argument("job", help="job file (TOML); relative paths inside it resolve against its folder")
    add_run_options(p)
    p.add_argument("--resume", metavar="RUN_ID", help="finish run RUN_ID, reusing its checkpointed chunks")
    p.set_defaults(func=run)
    return p


def add_run_options(p) -> None:
    """The options a single run and a schedule share (each overrides the job file's value)."""
    p.add_argument("--out", type=Path, help="output folder (default: the job's [job] output)")
    p.add_argument("--workers", type=int, help="worker processes of the embedded cluster (default: the job's, else 2)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="submit to a running Dask scheduler (tcp://host:8786)")
    p.add_argument("--backend", choices=CHOICES, help="compute backend (default: the job's)")
    p.add_argument("--chunk-size", help="portfolios per task, or 'auto' (default: the job's)")
    p.add_argument("--attribution", action="store_true",
                   help="also write each house/measures model's attribution.parquet (Euler contributions to ES)")
    p.add_argument("--call-due-hours", type=float, metavar="H",
                   help="hours after issue at which an open margin call is escalated (default 4)")
    p.add_argument("--plan-transfers", nargs="?", const=True, default=None, metavar="COSTS",
                   help="with a venue model: plan collateral transfers into RUN/transfers/ (optional costs file)")
    from .market import add_market_options

    add_market_options(p)
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="log warnings and errors only, and no progress display (for cron and timers)")
    loud.add_argument("-v", "--verbose", action="store_true", help="log debug lines too")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record, every URL redacted,
    beside the progress bar when one is drawn."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def format(self, record):
        return redact(super().format(record))

    def emit(self, record):
        from . import progress

        bar = progress.ACTIVE
        if bar is None:
            super().emit(record)
        else:
            bar.beside(lambda: super(_StderrHandler, self).emit(record))


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Log lines to stderr for the gpurisk loggers: warnings up with ``quiet``, debug up with ``verbose``,
    else info up; Dask's own logs from errors up (warnings up with ``verbose``)."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ"))
    logging.Formatter.converter = __import__("time").gmtime
    root = logging.getLogger("gpurisk")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    logging.getLogger("distributed").setLevel(logging.WARNING if verbose else logging.ERROR)


def parse_options(args):
    """``RunOptions`` from the command line, each option checked (one-line ConfigError)."""
    from ..batch import RunOptions
    from ..batch.cluster import check_workers
    from ..errors import ConfigError
    from ..fileio import check_name

    chunk = args.chunk_size
    if chunk is not None and chunk != "auto":
        try:
            chunk = int(chunk)
            if chunk < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--chunk-size must be a positive integer or 'auto'; got {args.chunk_size!r}") from None
    if args.workers is not None and not args.scheduler:
        check_workers(args.workers, "--workers")
    resume = getattr(args, "resume", None)
    if resume is not None:
        check_name(resume, "--resume takes the id of a run to finish (a folder name in the output folder)")
    costs = getattr(args, "plan_transfers", None)
    if isinstance(costs, str):  # a bad costs file is an error before the run, not after it
        from ..actions.transfers import load_costs

        load_costs(costs)
    due = getattr(args, "call_due_hours", None)
    if due is not None and not (due > 0 and due < float("inf")):
        raise ConfigError(f"--call-due-hours must be a positive number of hours; got {due}")
    from .market import market_settings

    return RunOptions(out=args.out, workers=args.workers, scheduler=args.scheduler, backend=args.backend,
                      resume=resume, chunk_size=chunk, progress=False, market=market_settings(args),
                      attribution=bool(getattr(args, "attribution", False)) or None, call_due_hours=due,
                      transfer_costs=getattr(args, "plan_transfers", None))


def check_job_options(job, opts) -> None:
    """What the job file and the options give together, checked before any work: the
    worker count (``--workers``, else the job's ``workers``) and, with ``--resume``, that the run exists."""
    import os

    from ..batch.cluster import check_workers
    from ..batch.manifest import MANIFEST
    from ..errors import ConfigError

    if opts.scheduler:
        if opts.workers is not None or job.workers is not None:
            logging.getLogger("gpurisk.batch").warning(
                "the worker count (%s) is ignored with a Dask scheduler: its workers are started with it",
                "--workers" if opts.workers is not None else f"{job.path.name}: [job] workers")
    elif opts.workers is None and job.workers is not None:
        check_workers(job.workers, f"{job.path.name}: [job] workers")
    if opts.resume is not None:
        out = Path(os.path.normpath(opts.out or job.output))
        if not (out / opts.resume / MANIFEST).is_file():
            runs = sorted(q.parent.name for q in out.glob(f"*/{MANIFEST}"))
            hint = f"; the latest there: {', '.join(runs[-3:])}" if runs else f"; {out} holds no run"
            raise ConfigError(f"--resume {opts.resume}: no such run in {out} (no {opts.resume}/{MANIFEST}){hint}")


def run_kind(job, opts, quiet: bool = False) -> bool:
    """Run a job whose kind is not ``margin`` (``stress``, ``backtest``, ``calibration``) and print its summary;
    True when it was one of those. A margin job is left to the caller (``run_job`` on Dask)."""
    if job.kind in ("backtest", "calibration"):  # research jobs: gpurisk.batch.research_job
        from .research import run_research

        run_research(job, opts, quiet)
        return True
    if job.kind == "stress":  # the book through gpurisk.stress (gpurisk.batch.stress_job)
        from ..batch.stress_job import format_stress_summary, run_stress_job

        print(format_stress_summary(run_stress_job(job, opts)), flush=True)
        return True
    return False


def run(args) -> int:
    from ..batch import format_summary, run_job
    from ..config import load_job
    from . import progress
    from .signals import check_stop

    configure_logging(args.quiet, args.verbose)
    job = load_job(args.job)
    opts = parse_options(args)
    check_job_options(job, opts)
    if run_kind(job, opts, args.quiet):
        return 0
    notice = progress.compile_notice(opts.backend or job.backend, opts.scheduler)
    if notice:
        logging.getLogger("gpurisk.batch").info("%s", notice)
    with progress.showing(progress.Progress.mode_for(args.quiet)) as show:
        report = run_job(job, opts, on_chunk=progress.then(show, check_stop))
    print(format_summary(report))
    return 0
