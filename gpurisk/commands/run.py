"""``gpurisk run JOB``: run a job file once on Dask and print a short summary."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..backends import CHOICES


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
    p.add_argument("--quiet", action="store_true", help="no progress bar and only warnings in the log")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(quiet: bool = False) -> None:
    """Log lines to stderr for the gpurisk loggers; Dask's own logs only from errors up."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ"))
    logging.Formatter.converter = __import__("time").gmtime
    root = logging.getLogger("gpurisk")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    logging.getLogger("distributed").setLevel(logging.ERROR)


def parse_options(args):
    from ..batch import RunOptions
    from ..errors import ConfigError

    chunk = args.chunk_size
    if chunk is not None and chunk != "auto":
        try:
            chunk = int(chunk)
            if chunk < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--chunk-size must be a positive integer or 'auto'; got {args.chunk_size!r}") from None
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {args.workers}")
    return RunOptions(out=args.out, workers=args.workers, scheduler=args.scheduler, backend=args.backend,
                      resume=getattr(args, "resume", None), chunk_size=chunk,
                      progress=False if args.quiet else None)


def run(args) -> int:
    from ..batch import format_summary, run_job
    from ..config import load_job

    configure_logging(args.quiet)
    job = load_job(args.job)
    opts = parse_options(args)
    report = run_job(job, opts)
    print(format_summary(report))
    return 0
