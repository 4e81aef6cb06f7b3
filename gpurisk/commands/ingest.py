"""``gpurisk ingest SOURCE... (--out BOOK | --snapshots DIR) [--format F] [--venue V] [--account A] [--as-of T]``.

Reads positions, balances and marks from standard structures and writes a book folder:

- CCXT unified structures (``--format ccxt --venue VENUE --account ACCOUNT``): JSON files of
  ``fetch_positions`` / ``fetch_balance`` / ``fetch_greeks`` / ``fetch_tickers`` / ``load_markets``;
- Deribit API v2 results and OKX API v5 data (JSON, recognised by their structure);
- FIXML Position and Collateral Reports (``.xml``; ``--mapping`` names the clearing house's symbol
  mapping: a TOML file, or a shipped one such as ``cme``);
- book folders. A SOURCE folder of files takes ``--account``; a folder of folders names each
  folder's account after it. ``--market SOURCE`` adds prices only (instrument, market and index
  rows; e.g. a book folder or a venue's tickers next to a clearing house's position reports).
- live, through ccxt (the optional extra ``connect``): ``--exchange deribit --account A
  --credentials-env PREFIX`` (``PREFIX_API_KEY``, ``PREFIX_SECRET``, ``PREFIX_PASSWORD``) or
  ``--credentials-file FILE`` (TOML, readable by its owner alone).

``--out BOOK`` writes a book folder (missing or empty; ``--force`` replaces it); ``--snapshots DIR``
writes ``DIR/<as-of, e.g. 2026-11-21T100000Z>/``, which a job's ``[book] snapshots = "DIR"`` uses
(latest name). Both are written atomically, with ``ingest.json`` (records in, mapped and rejected per
kind; what validation will reject) and ``ingest_rejects.parquet`` (one row per record not mapped).
The as-of is ``--as-of``, else the latest time in the sources. Exit 0 when the book is written
(with rejects), 2 on a fault (nothing written), 3 with ``--strict`` when any record was rejected.
"""

from __future__ import annotations

STRICT_EXIT = 3


def add_parser(subparsers):
    from ..adapters.ingest import FORMATS

    p = subparsers.add_parser("ingest", help="read positions and balances from CCXT, venue JSON or FIXML into a book",
                              description=__doc__)
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="files or folders to read")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="book folder to write (missing or empty; see --force)")
    where.add_argument("--snapshots", help="folder of snapshot folders: writes DIR/<as-of>/")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default=None,
                   help="the format of every SOURCE (default: recognised per file)")
    p.add_argument("--venue", default=None, help="venue of CCXT structures (deribit, okx, binance, ...)")
    p.add_argument("--account", default=None, help="account of venue JSON and CCXT files")
    p.add_argument("--mapping", default=None, help="FIXML symbol mapping: a TOML file or a shipped name (cme)")
    p.add_argument("--market", action="append", default=[], metavar="SOURCE",
                   help="a source whose prices (instruments, marks, index) complete the book; repeatable")
    p.add_argument("--as-of", dest="as_of", default=None, help="the book's UTC time (default: latest in the sources)")
    p.add_argument("--table-format", choices=("parquet", "csv"), default="parquet", help="table files (parquet)")
    p.add_argument("--force", action="store_true", help="replace an existing book folder or snapshot")
    p.add_argument("--strict", action="store_true", help=f"exit {STRICT_EXIT} (nothing written) if any record is rejected")
    live = p.add_argument_group("live fetching (optional extra 'connect')")
    live.add_argument("--exchange", default=None, help="ccxt exchange id to fetch from (deribit, okx, binance, ...)")
    live.add_argument("--credentials-env", default=None, metavar="PREFIX",
                      help="read PREFIX_API_KEY, PREFIX_SECRET (and PREFIX_PASSWORD) from the environment")
    live.add_argument("--credentials-file", default=None, metavar="FILE",
                      help="TOML file with api_key, secret (password), readable by its owner alone")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..adapters import ingest as ing
    from ..adapters.base import AdapterError
    from .outpath import out_folder

    if args.out:
        out_folder(args.out)  # a missing parent is a one-line error before any reading
    else:
        out_folder(args.snapshots, flag="--snapshots")
    mapped = None
    if args.exchange:
        from ..adapters.live import fetch

        if not args.account:
            raise AdapterError("--exchange needs --account (the account the credentials belong to)")
        mapped = fetch(args.exchange, args.account, venue=args.venue, env_prefix=args.credentials_env,
                       credentials_file=args.credentials_file)
    elif args.credentials_env or args.credentials_file:
        raise AdapterError("--credentials-env and --credentials-file go with --exchange")
    if not args.sources and mapped is None:
        raise AdapterError("give at least one SOURCE, or --exchange to fetch live")
    result = ing.ingest(args.sources, fmt=args.fmt, venue=args.venue, account=args.account, mapping=args.mapping,
                        market=args.market, as_of=args.as_of, mapped=mapped)
    print(ing.format_summary(result.summary))
    if args.strict and len(result.rejects):
        first = result.rejects["message"].iloc[0]
        print(f"--strict: {len(result.rejects)} record(s) rejected, nothing written; first: {first}")
        return STRICT_EXIT
    if args.out:
        path = ing.write_book_folder(result, args.out, table_format=args.table_format, force=args.force)
    else:
        path = ing.write_snapshot(result, args.snapshots, table_format=args.table_format, force=args.force)
    print(f"wrote {path}")
    return 0
