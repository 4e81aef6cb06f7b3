"""``gpurisk calibrate``: sweep the house model's parameters, backtest every set on Dask, and propose a parameter file.

The sets are the base parameters and the grid of ``--grid FIELD=V1,V2,...`` (every combination; repeat the
option per field; a job file of kind ``calibration`` also takes explicit ``sets``). Each set is backtested on the
portfolios from ``--start`` to
``--end`` (sets that differ only in confidence, stress factor or the anti-procyclicality settings share one
revaluation per day) and scored on coverage (Kupiec one-sided, the 250-day traffic lights), procyclicality
(peak-to-trough, n-day IM increases) and cost (IM over the realised ES of the h-day losses). OUT gets
``calibration.parquet`` (the sets, their scores, the frontier and the proposed set), ``summaries.parquet``,
``fits.json`` (Student-t and GARCH-t fits in JAX, the adaptive filter against EWMA out of sample),
``summary.json``, the proposed parameter file (a comment per changed value naming its backtest) and
``report.html``. Also run from a job file of kind ``calibration`` (``gpurisk run jobs/calibration.toml``).
"""

from __future__ import annotations

import logging

log = logging.getLogger("gpurisk.calibration")


def add_parser(subparsers):
    from ..backends import CHOICES
    from .backtest import add_cluster_options
    from .market import add_market_options

    p = subparsers.add_parser("calibrate", help="sweep house parameters, backtest each set, propose a parameter file",
                              description=__doc__)
    p.add_argument("--params", default=None, metavar="FILE", help="the base parameter file (default: the code "
                                                                  "defaults, which jobs/params/house.toml holds)")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="values of one house parameter to sweep (repeat per field; every combination is run)")
    p.add_argument("--portfolios", default="standard", metavar="standard|BOOK_DIR",
                   help="the standard test portfolios (default) or a book folder held constant")
    p.add_argument("--start", default="2020-01-01", metavar="DATE", help="first day (default 2020-01-01)")
    p.add_argument("--end", default="2024-12-31", metavar="DATE", help="last day (default 2024-12-31)")
    p.add_argument("--no-fits", action="store_true", help="skip the JAX fits and the adaptive filter comparison")
    p.add_argument("--fit-start", default="2021-01-01", metavar="DATE",
                   help="first day of the Student-t fit's window (default 2021-01-01)")
    add_market_options(p, policy=False)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; its parent must exist)")
    add_cluster_options(p, CHOICES)
    p.add_argument("--no-report", action="store_true", help="do not write DIR/report.html")
    p.set_defaults(func=run)
    return p


def parse_grid(items) -> dict:
    """{field: [values]} from ``FIELD=V1,V2`` items; values read as TOML scalars (numbers, true/false, "text")."""
    from ..errors import ConfigError
    from ..fileio import toml_scalar

    grid = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"--grid {it}: expected FIELD=V1,V2,...")
        k, vals = it.split("=", 1)
        k = k.strip()
        out = [toml_scalar(v.strip()) for v in vals.split(",")]  # a bare word is a string (own, coin)
        if not k or any(v == "" for v in out):
            raise ConfigError(f"--grid {it}: expected FIELD=V1,V2,...")
        grid[k] = out
    return grid


def format_summary(result, out) -> str:
    """The lines printed at the end: every set's scores, the frontier and the proposal."""
    t = result.table
    cols = [c for c in t.columns if c.startswith("param.")]
    lines = [f"calibration: {len(t)} parameter sets in {result.sweep.meta['scenario_groups']} scenario groups, "
             f"{result.sweep.meta['start']}..{result.sweep.meta['end']} -> {out}"]
    for _, r in t.iterrows():
        ch = ", ".join(f"{c[6:]}={r[c]}" for c in cols if r[c] == r[c]) or "base"
        mark = "*" if r["proposed"] else "f" if r["frontier"] else " "
        lines.append(f"{mark} set {int(r['set']):2d} [{ch}]: exceptions {int(r['n_exceptions'])}/{int(r['n_obs'])} "
                     f"(p1s {r['kupiec_p_one_sided']:.2f}, green >= {r['min_green_share']:.0%}, red "
                     f"{int(r['windows_red'])}), IM/ES {r['im_over_es_mean']:.2f}/{r['im_over_es_max']:.2f}, "
                     f"5d increase {r['increase_5d']:.2f}, IM {100 * r['mean_im_share']:.1f} % of notional")
    if result.sweep.proposal is None:
        lines.append("no parameter set passes the coverage criteria: nothing proposed")
    else:
        lines.append(f"proposed: set {result.sweep.proposal} (* above; f = frontier)")
    fits = result.fits
    if fits.get("adaptive"):
        a = fits["adaptive"]
        lines.append(f"adaptive filter vs EWMA out of sample: log-likelihood {a['total']['adaptive']:.1f} vs "
                     f"{a['total']['ewma']:.1f} ({'beats' if a['adaptive_beats_ewma'] else 'does not beat'} EWMA)")
    if fits.get("student_t"):
        st = fits["student_t"]
        lines.append(f"Student-t fit: nu {st['nu']:.2f} (the Monte Carlo uses {st['current_dof']:g})")
    return "\n".join(lines)


def run_calibration(*, params, grid, sets, portfolios, start, end, store, backend, workers, scheduler, block_days,
                    out, report: bool, quiet: bool, fits: bool, fit_start: str, label: str = "gpurisk calibrate"):
    """Run a calibration on a Dask client and write it into ``out``; returns the ``CalibrationResult``."""
    from pathlib import Path

    from .. import calibration
    from ..batch.cluster import open_client
    from ..margin import get_model
    from . import progress
    from .backtest import report_extra_available

    base = get_model("house").load_params(params)
    text = Path(params).read_text(encoding="utf-8") if params else None
    with progress.showing(progress.Progress.mode_for(quiet)) as show:
        with open_client(workers=workers, scheduler=scheduler) as client:
            res = calibration.run(base, grid=grid, sets=sets, portfolios=portfolios, start=start, end=end,
                                  market=store, backend=backend, client=client, block_days=block_days or 30,
                                  on_block=show, fits=fits, fit_start=fit_start, params_text=text, label=label)
    res.write(out)
    if report:
        if report_extra_available():
            from ..reports.calibration import write_calibration_report

            write_calibration_report(out, out / "report.html")
        elif not quiet:
            log.warning("report.html not written: HTML reports need the optional extra (pip install "
                        "'gpurisk[reports]')")
    return res


def run(args) -> int:
    from ..errors import ConfigError
    from .backtest import book_arg, check_cluster_options
    from .market import store_from_args
    from .outpath import out_folder

    out = out_folder(args.out, ConfigError)
    check_cluster_options(args.workers, args.scheduler, args.block_days)
    grid = parse_grid(args.grid)
    store = store_from_args(args)
    portfolios = book_arg(args.portfolios)
    res = run_calibration(params=args.params, grid=grid, sets=None, portfolios=portfolios, start=args.start,
                          end=args.end, store=store, backend=args.backend, workers=args.workers,
                          scheduler=args.scheduler, block_days=args.block_days, out=out, report=not args.no_report,
                          quiet=args.quiet, fits=not args.no_fits, fit_start=args.fit_start)
    print(format_summary(res, out))
    return 0


__all__ = ["add_parser", "run", "parse_grid", "format_summary", "run_calibration"]
