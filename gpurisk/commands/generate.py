"""``gpurisk generate --accounts N --seed S --out BOOK [--as-of DATE] [--format parquet|csv]``.

Writes a realistic sample book (see ``gpurisk.generate``) into folder BOOK:
the five tables and ``book.toml`` (as_of, seed, generator, n_accounts), each
file atomically. The same N, S and DATE give the same book.
"""

from __future__ import annotations

import time


def add_parser(subparsers):
    p = subparsers.add_parser("generate", help="write a realistic sample book", description=__doc__)
    p.add_argument("--accounts", type=int, required=True, help="number of accounts (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="book folder to write")
    p.add_argument("--as-of", dest="as_of", default=None,
                   help="UTC as-of time, ISO-8601 (default 2024-12-31T08:00:00Z)")
    p.add_argument("--format", dest="fmt", choices=("parquet", "csv"), default="parquet", help="table format")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..generate import generate_book
    from ..io import TABLES, parse_as_of, write_book

    as_of = parse_as_of(args.as_of, where="--as-of") if args.as_of is not None else None
    t0 = time.perf_counter()
    g = generate_book(args.accounts, args.seed, as_of)
    write_book(args.out, {k: g[k] for k in TABLES}, g["meta"], fmt=args.fmt)
    dt = time.perf_counter() - t0
    print(f"wrote {args.out}: {args.accounts:,} accounts, {len(g['instruments']):,} instruments, "
          f"{len(g['positions']):,} positions, {len(g['balances']):,} balances, as_of {g['meta']['as_of']} "
          f"(closes of {g['meta']['price_date']}, DVOL of {g['meta']['dvol_date']}; {dt:.1f} s)")
    return 0
