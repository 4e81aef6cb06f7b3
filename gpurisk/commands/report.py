"""``gpurisk report RUN_DIR --out report.html``: the HTML report of a finished run folder.

RUN_DIR is a stress run (``gpurisk stress --out``, a stress job's ``OUTPUT/<run_id>``), a margin run
(``gpurisk run`` of a margin job: ``OUTPUT/<run_id>``; or ``gpurisk margin --out``) or a backtest run. The
page is self-contained (no network when opened; plots inline, tables sortable, printable); the disclosure
rows go beside it as ``report.pqd.csv``. Needs the optional extra ``reports``.
"""

from __future__ import annotations


def add_parser(subparsers):
    p = subparsers.add_parser("report", help="self-contained HTML report of a finished run folder",
                              description=__doc__)
    p.add_argument("run_dir", help="a finished run folder (stress, margin or backtest)")
    p.add_argument("--out", required=True, help="the HTML file to write (its folder must exist)")
    p.add_argument("--backtest", default=None, help="a backtest run folder for the disclosure's backtest rows")
    p.add_argument("--previous", default=None, help="margin report: the run to compare with (default: the latest "
                                                    "earlier run of the same job beside RUN_DIR)")
    p.add_argument("--stress", default=None, help="margin report: a stress run folder for the disclosure's "
                                                  "stress rows")
    p.add_argument("--anonymise", action="store_true", help="stress report: groups shown as 'group #rank'")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..errors import BookError
    from ..reports import write_report
    from .outpath import out_file

    out = out_file(args.out, BookError)
    path = write_report(args.run_dir, out, anonymise=args.anonymise, backtest=args.backtest,
                        previous=args.previous, stress=args.stress)
    print(f"report: {path} (disclosure rows: {path.with_suffix('.pqd.csv')})")
    return 0
