"""``gpurisk backtest``: a margin model's rolling point-in-time backtest into ``--out DIR``.

Every day from ``--start`` to ``--end`` the model margins the portfolios (the standard test portfolios, or a
book folder held constant) from the history known that day, and the IM is set against the P&L of the next
``--horizon-days`` (default the model's margin period of risk). DIR gets ``daily.parquet`` (one row per day and
portfolio: ``date, portfolio, im, pnl, exception`` and the IM's parts), ``summary.parquet`` (per portfolio and
``pooled``: Kupiec, Christoffersen, the traffic light, coverage, exceedances, procyclicality),
``windows.parquet`` (the 250-day traffic-light windows), ``summary.json`` and ``report.html`` (with the
optional extra ``reports``). The days run as Dask tasks on an embedded cluster (``--workers``) or a running
scheduler (``--scheduler``); the results do not depend on the worker count. Also run from a job file of kind
``backtest`` (``gpurisk run``). docs/backtesting.md explains the statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("gpurisk.backtest")


def add_parser(subparsers):
    from ..backends import CHOICES
    from ..margin import MODELS
    from .market import add_market_options

    p = subparsers.add_parser("backtest", help="rolling point-in-time backtest of a margin model",
                              description=__doc__)
    p.add_argument("--model", default="house", choices=list(MODELS), help="margin model (default house)")
    p.add_argument("--params", default=None, metavar="FILE",
                   help="the model's parameter file (default: its code defaults, which jobs/params/house.toml holds)")
    p.add_argument("--portfolios", default="standard", metavar="standard|BOOK_DIR",
                   help="the standard test portfolios (default) or a book folder held constant")
    p.add_argument("--start", required=True, metavar="DATE", help="first day (YYYY-MM-DD)")
    p.add_argument("--end", required=True, metavar="DATE", help="last day (YYYY-MM-DD)")
    p.add_argument("--horizon-days", type=int, default=None, metavar="H",
                   help="P&L horizon in days (default: the model's margin period of risk)")
    p.add_argument("--level", type=float, default=0.99,
                   help="the coverage the statistics test (default 0.99, whatever the model's confidence)")
    add_market_options(p, policy=False)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; its parent must exist)")
    add_cluster_options(p, CHOICES)
    p.add_argument("--no-report", action="store_true", help="do not write DIR/report.html")
    p.set_defaults(func=run)
    return p


def add_cluster_options(p, choices) -> None:
    """``--workers``, ``--scheduler``, ``--backend``, ``--block-days``, ``-q`` (shared with ``calibrate``)."""
    p.add_argument("--workers", type=int, default=None, help="worker processes of the embedded cluster (default 2)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None, help="a running Dask scheduler (tcp://host:8786)")
    p.add_argument("--backend", default="auto", choices=list(choices), help="compute backend (default auto)")
    p.add_argument("--block-days", type=int, default=None, metavar="N", help="days per Dask task (default 30)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def check_cluster_options(workers, scheduler, block_days, what: str = "") -> None:
    """One-line ConfigErrors for a bad worker count or block size, before any work."""
    from ..batch.cluster import check_workers
    from ..errors import ConfigError

    if workers is not None and not scheduler:
        check_workers(workers, f"{what}--workers" if not what else what + "workers")
    if block_days is not None and (isinstance(block_days, bool) or block_days < 1):
        raise ConfigError(f"{what or '--'}block-days must be a whole number ≥ 1; got {block_days}")


def book_arg(portfolios):
    """``standard``, or the book of folder ``portfolios`` loaded and validated now (before any cluster starts)."""
    if portfolios == "standard":
        return portfolios
    from ..io import load_book

    return load_book(portfolios).book


def report_extra_available() -> bool:
    """True when the optional extra ``reports`` (Jinja2, matplotlib) is installed."""
    from ..reports import ReportError, require

    try:
        require()
        return True
    except ReportError:
        return False


def write_backtest_report(out: Path, quiet: bool = False) -> Path | None:
    """``out/report.html`` from the written backtest folder; None (and a note) without the reports extra."""
    if not report_extra_available():
        if not quiet:
            log.warning("report.html not written: HTML reports need the optional extra "
                        "(pip install 'gpurisk[reports]')")
        return None
    from ..reports import write_report

    return write_report(out, out / "report.html")


def run_backtest(*, model, params, portfolios, start, end, horizon_days, store, backend, workers, scheduler,
                 block_days, out: Path, report: bool, quiet: bool, level: float = 0.99):
    """Run a backtest on a Dask client and write it into ``out``; returns the ``BacktestResult``."""
    from .. import backtest
    from ..batch.cluster import open_client
    from . import progress

    with progress.showing(progress.Progress.mode_for(quiet)) as show:
        with open_client(workers=workers, scheduler=scheduler) as client:
            result = backtest.run(model=model, params=params, portfolios=portfolios, start=start, end=end,
                                  horizon_days=horizon_days, market=store, backend=backend, client=client,
                                  block_days=block_days or backtest.BLOCK_DAYS, on_block=show, level=level)
    result.write(out)
    if report:
        write_backtest_report(out, quiet)
    return result


def format_summary(result, out) -> str:
    """The lines printed at the end: the pooled statistics and each portfolio's zone and cost."""
    s = result.summary.set_index("portfolio")
    p = s.loc["pooled"]
    lines = [f"backtest {result.meta['model']}: {result.meta['days']:,} days x {result.meta['portfolios']} "
             f"portfolios ({result.meta['start']}..{result.meta['end']}, horizon {result.meta['horizon_days']} d) "
             f"-> {out}",
             f"pooled: {int(p['n_exceptions']):,} exceptions in {int(p['n_obs']):,} ({100 * p['coverage']:.2f} % "
             f"covered), Kupiec p {p['kupiec_p']:.3f} (one-sided {p['kupiec_p_one_sided']:.3f}), "
             f"{p['zone']}; windows green {int(p['windows_green'])}, yellow {int(p['windows_yellow'])}, "
             f"red {int(p['windows_red'])}",
             f"{'portfolio':34s} {'exc':>4s} {'zone':>6s} {'worst 250d':>10s} {'mean IM':>8s} {'IM/ES':>6s}"]
    for name, r in s.drop(index="pooled").iterrows():
        lines.append(f"{name:34s} {int(r['n_exceptions']):4d} {r['zone']:>6s} {r['worst_window_zone']:>10s} "
                     f"{r['mean_im_share']:8.3f} {r['im_over_es']:6.2f}")
    return "\n".join(lines)


def run(args) -> int:
    from ..errors import ConfigError
    from .market import store_from_args
    from .outpath import out_folder

    out = out_folder(args.out, ConfigError)
    check_cluster_options(args.workers, args.scheduler, args.block_days)
    store = store_from_args(args)
    portfolios = book_arg(args.portfolios)
    if not args.no_report and not report_extra_available():
        log.warning("report.html will not be written: install the optional extra (pip install 'gpurisk[reports]')")
    result = run_backtest(model=args.model, params=args.params, portfolios=portfolios, start=args.start,
                          end=args.end, horizon_days=args.horizon_days, store=store, backend=args.backend,
                          workers=args.workers, scheduler=args.scheduler, block_days=args.block_days, out=out,
                          report=not args.no_report, quiet=args.quiet, level=args.level)
    print(format_summary(result, out))
    return 0


__all__ = ["add_parser", "run", "run_backtest", "book_arg", "format_summary", "add_cluster_options", "check_cluster_options",
           "write_backtest_report", "report_extra_available"]
