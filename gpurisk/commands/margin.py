"""``gpurisk margin BOOK --model NAME --out DIR``: margin a book with one model.

Writes, atomically, ``DIR/<table>.parquet`` for every table the model returns
(``margin`` always; ``calls``, ``venue_margin`` ... when the model has them),
``DIR/rejects.parquet`` when the book had bad rows, and ``DIR/summary.json``
last (model figures, the book's rejects count, backend and GPU-fallback counts). The house and
measures models read market history from ``--market-data DIR`` (else ``GPURISK_MARKET_DATA``, else the
shipped history) under the staleness policy (``--max-history-age-days``, ``--allow-stale-history``);
the history end they used is in ``summary.json`` and every Parquet file's metadata.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BookError, ConfigError


def add_parser(subparsers):
    from ..backends import CHOICES
    from ..margin import MODELS

    p = subparsers.add_parser("margin", help="initial/maintenance margin, excess and calls per account")
    p.add_argument("book", help="book folder (see docs/data-format.md)")
    p.add_argument("--model", default="house", choices=sorted(MODELS), help="margin model (default house)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scenarios", default=None,
                   help="scenario file replacing the model's own scenarios (house and measures only; the venue "
                        "replicas use their venues' grids)")
    p.add_argument("--component", default="user", choices=("historical", "montecarlo", "user", "stress"),
                   help="house: which scenario component the file is (default user, measured by ES; stress: "
                        "charged stress_factor × the worst loss)")
    p.add_argument("--params", default=None, help="model parameter file (TOML); default: the code defaults")
    p.add_argument("--backend", default="auto", choices=list(CHOICES), help="compute backend (default auto)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad book row instead of rejecting it")
    p.add_argument("--attribution", action="store_true",
                   help="also write attribution.parquet: each position's Euler contribution to every ES column "
                        "(house and measures models)")
    from .market import add_market_options

    add_market_options(p)
    p.set_defaults(func=run)
    return p


def n_accounts(result) -> int:
    """Distinct accounts in a result: the summary's ``accounts`` (every model states it), else
    the distinct ``account_id`` of the margin table; never its row count, which is per
    account × venue or per risk unit for the venue models."""
    if "accounts" in result.summary:
        return int(result.summary["accounts"])
    m = result.tables["margin"]
    return int(m["account_id"].nunique()) if "account_id" in m.columns else int(len(m))


def run(args) -> int:
    import numpy as np

    from .. import io
    from ..fileio import write_json, write_parquet
    from ..margin import check_scenarios, compute, get_model
    from ..margin.output import write_result
    from .market import store_from_args

    mod = get_model(args.model)  # unknown / unavailable model fails before any reading
    check_scenarios(args.model, args.scenarios)
    if getattr(args, "attribution", False):
        from ..actions.attribution import ATTRIBUTED_MODELS

        if args.model not in ATTRIBUTED_MODELS:
            raise ConfigError(f"--attribution applies to the {' and '.join(ATTRIBUTED_MODELS)} models (expected "
                              f"shortfall), not {args.model!r}")
    if args.component != "user" and args.model != "house":
        raise ConfigError(f"--component applies to the house model only (model {args.model!r} takes one set)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # before any work, not as a traceback at the first write
        raise BookError(f"{out}: --out must be a folder, and a file of that name exists")
    params = mod.load_params(args.params)
    market = store_from_args(args)  # resolved once, before the book is read
    loaded = io.load_book(args.book, strict=args.strict)
    scenarios = None
    if args.scenarios:
        from ..scenarios.io import read_scenarios

        scenarios = read_scenarios(args.scenarios)
        if args.component != "user":
            scenarios = {args.component: scenarios}
    if getattr(args, "attribution", False):
        from ..actions.attribution import compute as compute_attributed

        result = compute_attributed(loaded.book, model=args.model, params=params, scenarios=scenarios,
                                    backend=args.backend, market=market)
    else:
        result = compute(loaded.book, model=args.model, params=params, scenarios=scenarios, backend=args.backend,
                         market=market)
    as_of = str(np.datetime_as_string(loaded.book.as_of, unit="s")) + "Z"
    written = list(write_result(result, out, {"command": "margin", "as_of": as_of, "params_file": args.params,
                                              "scenarios_file": args.scenarios}))
    n_rejects = int(len(loaded.rejects))
    if n_rejects:
        written.append(str(write_parquet(loaded.rejects, out / "rejects.parquet").name))
    summary = dict(result.summary)
    summary.update(
        {
            "command": "margin",
            "model": args.model,
            "book": loaded.summary.get("book", {}),
            "rejects": n_rejects,
            "backend_requested": args.backend,
            "params_file": args.params,
            "scenarios_file": args.scenarios,
            "scenario_component": args.component if args.scenarios else None,
            "as_of": as_of,
            "tables": written,
        }
    )
    write_json(summary, out / "summary.json")
    print(
        f"margin ({args.model}, backend {summary.get('backend')}): {n_accounts(result)} "
        f"accounts, {n_rejects} rejects -> {out}"
    )
    return 0
