"""``gpurisk plan transfers|deleverage RUN_DIR --out DIR``: act on a run's venue-predicted calls.

RUN_DIR is a finished ``gpurisk run`` folder whose job has a venue model, or a
``gpurisk margin BOOK --model venue --out DIR`` folder; the book is the one the run read.

``transfers`` plans collateral moves between each account's venue sub-accounts (and ``--treasury``
wallets) so that every venue's equity covers its predicted IM × (1 + ``--buffer``) (and its own call
line), at least cost (``--costs FILE``: fees by route, asset and network, withdrawal limits, minimum
sizes, eligibility and haircuts per venue; docs/methodologies.md, "Collateral transfer plan"). It
writes ``transfers.parquet``, ``transfers.jsonl``, ``venues_after.parquet`` (each venue row's predicted
status before and after), ``plan_accounts.parquet`` (need, covered, cost, cause) and ``summary.json``.

``deleverage`` plans reduce-only orders for the rows the transfers leave short, ranked by marginal ES
per unit of liquidation cost and verified by recomputing the venue model; it writes ``orders.parquet``,
``orders.jsonl``, ``deleverage.parquet`` (margin before and after per row), ``transfers.parquet`` (the
plan it starts from), ``adl.parquet`` (the venues' auto-deleveraging ranks) and ``summary.json``.

Exit status: 0 when every row is covered (or held), 1 when the plan is partial (the summary names the
causes), 2 for a usage or input error.
"""

from __future__ import annotations

import json


def add_parser(subparsers):
    from ..backends import CHOICES

    p = subparsers.add_parser("plan", help="collateral transfer and deleveraging plans from a run's venue calls",
                              description=__doc__)
    sub = p.add_subparsers(dest="plan", required=True)
    t = sub.add_parser("transfers", help="collateral moves across an account's venues that prevent the venues' calls")
    d = sub.add_parser("deleverage", help="reduce-only orders where collateral cannot cover, verified by the model")
    for q in (t, d):
        q.add_argument("run_dir", metavar="RUN_DIR", help="a gpurisk run folder (with a venue model) or a "
                                                           "gpurisk margin --model venue folder")
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--buffer", type=float, default=None,
                       help="target = predicted IM x (1 + buffer) (default 0.05, or the costs file's)")
        q.add_argument("--costs", default=None, metavar="FILE",
                       help="transfer costs and venue rules (TOML): buffer, treasury, [venues.NAME], [[routes]]")
        q.add_argument("--treasury", action="append", default=None, metavar="VENUE",
                       help="a venue of the book that only gives (a wallet); repeatable")
    d.add_argument("--params", default=None, metavar="FILE",
                   help="deleverage parameters (TOML): half_spread_bps, lot_step, lots, max_iterations")
    d.add_argument("--backend", default="auto", choices=list(CHOICES), help="compute backend (default auto)")
    from .market import add_market_options

    add_market_options(d)
    t.set_defaults(func=run_transfers)
    d.set_defaults(func=run_deleverage)
    return p


def _transfer_params(args):
    import dataclasses

    from ..actions.transfers import load_costs
    from ..errors import ConfigError

    if args.buffer is not None and not (0.0 <= args.buffer < float("inf")):
        raise ConfigError(f"--buffer must be a finite number >= 0; got {args.buffer}")
    params = load_costs(args.costs, args.buffer)
    if args.treasury:
        params = dataclasses.replace(params, treasury=tuple(dict.fromkeys((*params.treasury, *args.treasury))))
    return params


def _jsonl(df) -> str:
    return df.to_json(orient="records", lines=True, double_precision=15) if len(df) else ""


def run_transfers(args) -> int:
    from ..actions.source import book_tables, read_source
    from ..actions.transfers import build_inputs, plan_transfers, write_plan
    from .outpath import out_folder

    out = out_folder(args.out)
    params = _transfer_params(args)
    src = read_source(args.run_dir)
    clean, _, _ = book_tables(src.book_path)
    prices = dict(zip(clean["index"]["underlying"].astype(str), clean["index"]["price"].astype(float)))
    inp = build_inputs(src.venue_margin, clean["balances"], prices, params, src.bands, src.house_margin)
    plan = plan_transfers(inp, params, src.run_id)
    write_plan(plan, out, {"command": "plan transfers", "run_dir": str(src.folder), "run_id": src.run_id,
                           "as_of": src.as_of, "book": str(src.book_path), "costs_file": args.costs})
    s = plan.summary
    print(f"plan transfers: {s['transfers']} transfer(s), {s['moved_usd']:,.2f} USD moved, cost {s['cost_usd']:,.2f} "
          f"USD; {s['venue_rows_fixed']} venue call(s) prevented, {s['infeasible_accounts']} account(s) short "
          f"-> {out}")
    return 1 if s["infeasible_accounts"] else 0


def run_deleverage(args) -> int:
    from ..actions.deleverage import load_params, plan_deleverage
    from ..actions.source import read_source
    from ..fileio import write_json, write_parquet, write_text
    from .market import store_from_args
    from .outpath import out_folder

    out = out_folder(args.out)
    tparams = _transfer_params(args)
    params = load_params(args.params, args.buffer if args.buffer is not None else tparams.buffer)
    market = store_from_args(args)
    src = read_source(args.run_dir)
    plan = plan_deleverage(src, params, tparams, backend=args.backend, market=market)
    write_parquet(plan.orders, out / "orders.parquet")
    write_text(_jsonl(plan.orders), out / "orders.jsonl")
    write_parquet(plan.rows, out / "deleverage.parquet")
    write_parquet(plan.transfers, out / "transfers.parquet")
    write_parquet(plan.adl, out / "adl.parquet")
    summary = {"command": "plan deleverage", "run_dir": str(src.folder), "run_id": src.run_id, "as_of": src.as_of,
               "book": str(src.book_path), "params_file": args.params, "costs_file": args.costs, **plan.summary,
               "files": ["orders.parquet", "orders.jsonl", "deleverage.parquet", "transfers.parquet", "adl.parquet"]}
    write_json(json.loads(json.dumps(summary, default=str)), out / "summary.json")
    s = plan.summary
    print(f"plan deleverage: {s['orders']} order(s) on {s['rows']} venue row(s), {s['held']} verified, "
          f"expected cost {s['expected_cost_usd']:,.2f} USD -> {out}")
    return 1 if s.get("not_held") else 0
