"""``gpurisk validate BOOK [--strict] [--out DIR] [--max-notional-usd USD] [--mark-band K]``.

Reads and validates a book folder and prints a per-table summary (input,
accepted, rejected, and the position and balance rows merged by netting). With
``--out`` it writes ``DIR/rejects.parquet`` (columns ``table, row, column, reason,
message, value``) and ``DIR/summary.json``, both atomically; DIR may be created,
its parent folder must exist. Exits 0 when the book loads, even with rejected
rows; non-zero on a structural fault, a bad option, or under ``--strict`` on the
first bad row.

Plausibility: a position or balance whose USD notional is above
``--max-notional-usd`` (default 1e12) is rejected (``implausible_notional``), and
so is a mark outside [index / K, index × K] of its underlying's index
(``--mark-band``, default 3; ``mark_off_index``). ``inf`` turns a check off.

Coverage: venues of the book that the venue table (``--venues FILE``, default the built-in
table: deribit, okx, binance) gives no methodology are listed as ``uncovered_venues`` (the
venue model reports their pairs as ``uncovered``; the house model margins them as usual).
"""

from __future__ import annotations


def add_parser(subparsers):
    p = subparsers.add_parser("validate", help="check a book folder and report rejected rows", description=__doc__)
    p.add_argument("book", help="book folder (tables as .parquet or .csv, plus book.toml)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of rejecting it")
    p.add_argument("--out", help="folder for rejects.parquet and summary.json (its parent folder must exist)")
    p.add_argument("--max-notional-usd", type=_number, default=None, metavar="USD",
                   help="reject a position or balance whose USD notional is above this (default 1e12; inf: off)")
    p.add_argument("--mark-band", type=_number, default=None, metavar="K",
                   help="reject a mark outside [index / K, index × K] (default 3; inf: off)")
    p.add_argument("--venues", default=None, metavar="FILE",
                   help="venue table (TOML, as jobs/params/venues.toml) to check coverage against (default: built-in)")
    p.set_defaults(func=run)
    return p


def _number(text: str) -> float:
    """A float option value; the range is checked by ``gpurisk.validate.plausibility_limits``."""
    import argparse

    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def format_summary(summary: dict) -> str:
    """The per-table summary as a small fixed-width text table."""
    from ..io import TABLES

    lines = [f"{'table':<12}{'input':>12}{'accepted':>12}{'rejected':>12}"]
    for name in TABLES:
        s = summary[name]
        lines.append(f"{name:<12}{s['input']:>12,}{s['accepted']:>12,}{s['rejected']:>12,}")
    pos = summary["positions"]
    lines.append(f"positions netted: {pos['merged']:,} row(s) merged into {pos['net_positions']:,} net position(s)")
    bal = summary["balances"]
    if "merged" in bal:
        lines.append(f"balances netted: {bal['merged']:,} row(s) merged into {bal['net_balances']:,} net balance(s)")
    by = summary.get("rejects_by_reason") or {}
    if by:
        lines.append("rejects by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def run(args) -> int:
    from ..fileio import write_json, write_parquet
    from ..io import load_book
    from ..validate import DEFAULT_MARK_BAND, DEFAULT_MAX_NOTIONAL_USD
    from .outpath import out_folder

    out = out_folder(args.out) if args.out else None
    limits = {
        "max_notional_usd": DEFAULT_MAX_NOTIONAL_USD if args.max_notional_usd is None else args.max_notional_usd,
        "mark_band": DEFAULT_MARK_BAND if args.mark_band is None else args.mark_band,
    }
    from ..margin import venue

    table = venue.load_params(args.venues)
    loaded = load_book(args.book, strict=args.strict, **limits)
    missing = list(venue.uncovered_venues(loaded.book, table))
    loaded.summary["uncovered_venues"] = missing
    print(format_summary(loaded.summary))
    if missing:
        print(f"venues with no methodology in the venue table: {', '.join(missing)} "
              "(the venue model marks their pairs 'uncovered'; add [venues.NAME] methodology = ...)")
    if out is not None:
        write_parquet(loaded.rejects, out / "rejects.parquet")
        write_json(loaded.summary, out / "summary.json")
        print(f"wrote {out / 'rejects.parquet'} and {out / 'summary.json'}")
    return 0
