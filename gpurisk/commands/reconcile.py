"""``gpurisk reconcile --internal BOOK_OR_SOURCE... --external SOURCE... --out DIR``: positions and collateral, side by side.

Each side is a book folder or any source ``gpurisk ingest`` reads (CCXT structures, Deribit or OKX
JSON, FIXML position and collateral reports); ``--format``, ``--venue``, ``--account``,
``--mapping`` and ``--market`` apply to the sources of both sides as in ``gpurisk ingest``.

Writes into DIR (atomically): ``breaks.parquet`` (one row per break: table, break_type,
account_id, venue, instrument_id or asset, both sides' quantities, prices or amounts, the
difference and the tolerance), ``summary.json`` (compared = matched + breaks per table, breaks by
type and venue, tolerances, threshold), ``metrics.prom`` (Prometheus text) and, when there are
breaks, an alert appended to ``alerts.jsonl``.

Tolerances: a pair matches when |internal − external| ≤ ABS + REL·|external|; defaults quantity and
amount 1e-9, 1e-9; price 0, 1e-4. ``--tolerance [VENUE:]COLUMN=ABS,REL`` overrides one (repeatable).
Exit status: 0 when breaks ≤ ``--max-breaks`` (default 0), 1 when above, 2 on a fault.
"""

from __future__ import annotations


def add_parser(subparsers):
    from ..adapters.ingest import FORMATS

    p = subparsers.add_parser("reconcile", help="compare a book's positions and balances with a venue's",
                              description=__doc__)
    p.add_argument("--internal", nargs="+", required=True, metavar="BOOK_OR_SOURCE",
                   help="the engine's side: a book folder (or sources)")
    p.add_argument("--external", nargs="+", required=True, metavar="SOURCE",
                   help="the venue's or clearing house's side: sources (or a book folder)")
    p.add_argument("--out", required=True, help="folder for breaks.parquet, summary.json, metrics.prom, alerts.jsonl")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default=None, help="format of the sources (default: recognised)")
    p.add_argument("--venue", default=None, help="venue of CCXT structures")
    p.add_argument("--account", default=None, help="account of venue JSON and CCXT files")
    p.add_argument("--mapping", default=None, help="FIXML symbol mapping (TOML file or shipped name)")
    p.add_argument("--market", action="append", default=[], metavar="SOURCE",
                   help="a source of prices for the external side (e.g. the book folder next to FIXML reports)")
    p.add_argument("--tolerance", action="append", default=[], metavar="[VENUE:]COLUMN=ABS,REL",
                   help="tolerance of quantity, price or amount (repeatable)")
    p.add_argument("--max-breaks", type=int, default=0, help="breaks allowed before the exit status is 1 (default 0)")
    p.add_argument("--no-prices", action="store_true", help="do not compare mark prices")
    p.set_defaults(func=run)
    return p


def settings_from_args(args):
    from ..errors import ConfigError
    from ..reconcile import DEFAULT_TOLERANCES, Settings, parse_tolerance

    if args.max_breaks < 0:
        raise ConfigError(f"--max-breaks must be >= 0, got {args.max_breaks}")
    tol = dict(DEFAULT_TOLERANCES)
    venues: dict = {}
    for spec in args.tolerance:
        venue, column, t = parse_tolerance(spec)
        if venue is None:
            tol[column] = t
        else:
            venues.setdefault(venue, {})[column] = t
    return Settings(tolerances=tol, venues=venues, max_breaks=args.max_breaks, compare_prices=not args.no_prices)


def run(args) -> int:
    from ..batch.monitoring import Metric, exposition, raise_alerts
    from ..config import AlertConfig
    from ..fileio import write_text
    from ..reconcile import BREAKS_EXIT, load_side, reconcile, write_outputs
    from .outpath import out_folder

    out = out_folder(args.out)
    settings = settings_from_args(args)
    opts = dict(fmt=args.fmt, venue=args.venue, account=args.account, mapping=args.mapping)
    internal = load_side(args.internal, **opts, label="internal")
    external = load_side(args.external, **opts, market=args.market, label="external")
    rec = reconcile(internal, external, settings)
    paths = write_outputs(rec, out)
    metrics = [Metric(name, text, samples=list(samples)) for name, text, samples in rec.metrics()]
    write_text(exposition(metrics), out / "metrics.prom")
    alerts = rec.alerts({"job": "reconcile"})
    if alerts:
        raise_alerts(alerts, out, AlertConfig())
    s = rec.summary
    print(f"compared: positions {s['compared']['positions']:,}, balances {s['compared']['balances']:,}; "
          f"matched: positions {s['matched']['positions']:,}, balances {s['matched']['balances']:,}")
    print(f"breaks: {s['breaks']:,}" + (f" ({', '.join(f'{k} {v}' for k, v in s['breaks_by_type'].items())})"
                                        if s["breaks"] else ""))
    print(f"wrote {paths['breaks']} and {paths['summary']}")
    if rec.failed:
        print(f"breaks above the threshold ({s['breaks']} > {s['max_breaks']})")
        return BREAKS_EXIT
    return 0
