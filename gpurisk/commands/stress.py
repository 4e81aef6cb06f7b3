"""``gpurisk stress BOOK --scenarios FAMILY_OR_FILE... --out DIR``: a stress run written into DIR itself.

DIR gets ``account_losses, group_losses, groups, cover, totals, scenarios`` (and ``reverse``,
``sensitivity``) as Parquet, ``rejects.parquet`` when the book had bad rows, ``summary.json`` and, with
``--report``, ``report.html``. The summary printed gives the loss per scenario family and Cover-1/Cover-2
against the default resources.
"""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers):
    from ..backends import CHOICES
    from ..scenarios.stress import FAMILIES

    p = subparsers.add_parser(
        "stress", help="stress losses per account and scenario, Cover-1/Cover-2, reverse stress, sensitivity",
        description=__doc__)
    p.add_argument("book", help="book folder (see docs/data-format.md; an accounts table sets member groups)")
    p.add_argument("--scenarios", nargs="+", metavar="FAMILY_OR_FILE", default=list(FAMILIES),
                   help=f"stress families ({', '.join(FAMILIES)}) and/or scenario files (.parquet, .csv); "
                        "default: every family")
    p.add_argument("--out", required=True, help="output folder (created; its parent must exist)")
    p.add_argument("--params", default=None, help="house model parameter file (IM and haircuts); default: the code "
                                                  "defaults")
    p.add_argument("--stress-params", default=None,
                   help="stress parameter file (TOML, the keys of a job's [stress] table that StressParams has)")
    p.add_argument("--default-fund-usd", type=float, default=None, help="default resources Cover-2 is compared with")
    p.add_argument("--horizon-days", type=float, default=None, help="scenario horizon in days (default 0: instant)")
    p.add_argument("--no-reverse", action="store_true", help="skip the reverse stress")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the house IM sensitivity runs")
    p.add_argument("--report", action="store_true", help="also write DIR/report.html (needs the reports extra)")
    p.add_argument("--anonymise", action="store_true", help="report: show groups as 'group #rank'")
    p.add_argument("--backend", default="auto", choices=list(CHOICES), help="compute backend (default auto)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad book row instead of rejecting it")
    from .market import add_market_options

    add_market_options(p)
    p.set_defaults(func=run)
    return p


def split_scenarios(items) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    """(families, files) of ``--scenarios``: a known family name, else an existing file; ScenarioError otherwise."""
    from ..errors import ScenarioError
    from ..scenarios.stress import FAMILIES

    fams, files = [], []
    for it in items:
        if it in FAMILIES:
            fams.append(it)
        elif Path(it).is_file():
            files.append(Path(it))
        else:
            raise ScenarioError(f"--scenarios {it}: neither a stress family ({', '.join(FAMILIES)}) nor a file")
    return tuple(dict.fromkeys(fams)), tuple(files)


def run(args) -> int:
    import numpy as np

    from .. import io
    from ..fileio import write_parquet
    from ..margin import get_model
    from ..margin.params import load, override
    from ..stress import StressParams, build_sets, format_summary, run_stress, write_stress
    from .outpath import out_folder

    out = out_folder(args.out)
    families, files = split_scenarios(args.scenarios)
    params = load(StressParams, args.stress_params)
    changes = {"families": list(families)}
    if args.default_fund_usd is not None:
        changes["default_fund_usd"] = args.default_fund_usd
    if args.horizon_days is not None:
        changes["horizon_days"] = args.horizon_days
    if args.no_reverse:
        changes["reverse"] = False
    if args.no_sensitivity:
        changes["sensitivity"] = False
    params = override(params, changes, "gpurisk stress options")
    house_params = get_model("house").load_params(args.params)
    if args.report:  # fail before the work when the optional extra is missing
        from ..reports import require

        require()
    loaded = io.load_book(args.book, strict=args.strict)
    from .market import store_from_args

    market = store_from_args(args)
    sets = build_sets(loaded.book, params, files, market)
    result = run_stress(loaded.book, sets, params, house_params, backend=args.backend, market=market)
    result.summary.update({"command": "stress", "book": loaded.summary.get("book", {}),
                           "rejects": int(len(loaded.rejects)), "house_params_file": args.params,
                           "scenario_files": [str(f) for f in files]})
    out.mkdir(exist_ok=True)
    if len(loaded.rejects):
        write_parquet(loaded.rejects, out / "rejects.parquet")
    as_of = str(np.datetime_as_string(loaded.book.as_of, unit="s")) + "Z"
    write_stress(result, out, {"command": "stress", "as_of": as_of, "house_params_file": args.params})
    if args.report:
        from ..reports import write_report

        write_report(out, out / "report.html", anonymise=args.anonymise)
    print(f"stress: {loaded.book.n_accounts:,} accounts, {len(loaded.rejects):,} rejects -> {out}")
    print(format_summary(result.summary))
    return 0


__all__ = ["add_parser", "run", "split_scenarios"]
