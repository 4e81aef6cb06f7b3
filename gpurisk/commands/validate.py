"""``gpurisk validate BOOK [--strict] [--out DIR]``.

Reads and validates a book folder and prints a per-table summary (input,
accepted, rejected, and the positions merged by netting). With ``--out`` it
writes ``DIR/rejects.parquet`` (columns ``table, row, column, reason, message,
value``) and ``DIR/summary.json``, both atomically. Exits 0 when the book loads,
even with rejected rows; non-zero on a structural fault, or under ``--strict``
on the first bad row.
"""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers):
    p = subparsers.add_parser("validate", help="check a book folder and report rejected rows", description=__doc__)
    p.add_argument("book", help="book folder (tables as .parquet or .csv, plus book.toml)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of rejecting it")
    p.add_argument("--out", help="folder for rejects.parquet and summary.json")
    p.set_defaults(func=run)
    return p


def format_summary(summary: dict) -> str:
    """The per-table summary as a small fixed-width text table."""
    from ..io import TABLES

    lines = [f"{'table':<12}{'input':>12}{'accepted':>12}{'rejected':>12}"]
    for name in TABLES:
        s = summary[name]
        lines.append(f"{name:<12}{s['input']:>12,}{s['accepted']:>12,}{s['rejected']:>12,}")
    pos = summary["positions"]
    lines.append(f"positions netted: {pos['merged']:,} row(s) merged into {pos['net_positions']:,} net position(s)")
    by = summary.get("rejects_by_reason") or {}
    if by:
        lines.append("rejects by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def run(args) -> int:
    from ..io import load_book, write_json, write_parquet

    loaded = load_book(args.book, strict=args.strict)
    print(format_summary(loaded.summary))
    if args.out:
        out = Path(args.out)
        write_parquet(loaded.rejects, out / "rejects.parquet")
        write_json(loaded.summary, out / "summary.json")
        print(f"wrote {out / 'rejects.parquet'} and {out / 'summary.json'}")
    return 0
