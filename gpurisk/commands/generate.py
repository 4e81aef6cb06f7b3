"""``gpurisk generate --accounts N --seed S --out BOOK [--as-of DATE] [--format parquet|csv] [--force]``.

Writes a realistic sample book (see ``gpurisk.generate``) into folder BOOK:
the five tables and ``book.toml`` (as_of, seed, generator, n_accounts), each
file atomically. The same N, S and DATE give the same book.

BOOK may be missing (it is created; its parent folder must exist) or empty. A
folder that holds anything is refused unless ``--force``; even then only the
files it writes (``NAME.FORMAT`` and ``book.toml``) are replaced, nothing else is
touched, and a table there in the other format (which would make the book
ambiguous) is an error rather than a deletion.
"""

from __future__ import annotations

import time


def add_parser(subparsers):
    p = subparsers.add_parser("generate", help="write a realistic sample book", description=__doc__)
    p.add_argument("--accounts", type=int, required=True, help="number of accounts (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="book folder to write (missing or empty; see --force)")
    p.add_argument("--as-of", dest="as_of", default=None,
                   help="UTC as-of time, ISO-8601 (default 2024-12-31T08:00:00Z)")
    p.add_argument("--format", dest="fmt", choices=("parquet", "csv"), default="parquet", help="table format")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder, replacing only the files this command writes")
    from .market import add_market_options

    add_market_options(p, policy=False)
    p.set_defaults(func=run)
    return p


def check_target(out, fmt: str, force: bool):
    """The book folder ``out`` as a Path, if ``generate`` may write there; else a one-line ``BookError``."""
    from ..errors import BookError
    from ..io import FORMATS, TABLES
    from .outpath import out_folder

    out = out_folder(out)
    if not out.exists():
        return out
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise BookError(f"--out {out}: cannot list the folder ({exc.strerror or exc})") from None
    if not entries:
        return out
    if not force:
        shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise BookError(f"--out {out}: folder is not empty ({len(entries)} entries: {shown}); "
                        "use --force to replace the book files there, or choose an empty folder")
    other_fmt = next(f for f in FORMATS if f != fmt)
    other = [f"{name}.{other_fmt}" for name in TABLES if f"{name}.{other_fmt}" in entries]
    if other:
        raise BookError(f"--out {out}: holds {', '.join(other)}, tables in the other format; generate never "
                        f"deletes files it did not write: remove them, or use --format {other_fmt}")
    return out


def run(args) -> int:
    from ..generate import generate_book
    from ..io import TABLES, parse_as_of, write_book

    out = check_target(args.out, args.fmt, args.force)
    from .market import store_from_args

    as_of = parse_as_of(args.as_of, where="--as-of") if args.as_of is not None else None
    market = store_from_args(args)
    t0 = time.perf_counter()
    g = generate_book(args.accounts, args.seed, as_of, market)
    write_book(out, {k: g[k] for k in TABLES}, g["meta"], fmt=args.fmt)
    dt = time.perf_counter() - t0
    print(f"wrote {out}: {args.accounts:,} accounts, {len(g['instruments']):,} instruments, "
          f"{len(g['positions']):,} positions, {len(g['balances']):,} balances, as_of {g['meta']['as_of']} "
          f"(closes of {g['meta']['price_date']}, DVOL of {g['meta']['dvol_date']}; {dt:.1f} s)")
    return 0
