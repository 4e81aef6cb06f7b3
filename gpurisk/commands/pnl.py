"""``gpurisk pnl BOOK --scenarios FILE --out DIR [--numeraire usd|settlement]``.

Full revaluation of every instrument of the book under every scenario with the
reference backend. Writes ``DIR/pnl.parquet`` (one row per instrument × scenario,
instrument-major) with columns ``instrument_id, scenario_id, base_value,
scenario_value, pnl, numeraire``: values per contract, in ``numeraire`` (``USD``,
or the settlement coin with ``--numeraire settlement``). For futures and
perpetuals base_value is 0 and scenario_value is the P&L. Also writes
``DIR/pnl_summary.json``. Files are written atomically; DIR may be created, its
parent folder must exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ScenarioError

#: bound on the [I, S] block revalued at once, in float64 elements
BLOCK_ELEMENTS = 2_000_000
COLUMNS = ("instrument_id", "scenario_id", "base_value", "scenario_value", "pnl", "numeraire")


def add_parser(subparsers):
    p = subparsers.add_parser("pnl", help="per-contract scenario P&L of every instrument in a book",
                              description=__doc__)
    p.add_argument("book", help="book folder")
    p.add_argument("--scenarios", required=True, help="scenario file (.parquet or .csv)")
    p.add_argument("--out", required=True, help="output folder (its parent folder must exist)")
    p.add_argument("--numeraire", choices=("usd", "settlement"), default="usd")
    p.set_defaults(func=run)
    return p


def pnl_table_writer(book, sset, numeraire: str, path: Path) -> dict:
    """Revalue ``book``'s instruments under ``sset`` in blocks and write the long table to ``path`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..backends.reference import revalue_values
    from ..pricing import pricing_inputs
    from ..fileio import atomic_write

    ins = book.instruments
    try:
        idx, sset = sset.columns_for(ins.underlying)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    pi = pricing_inputs(book, idx)
    S, I = sset.n_scenarios, len(pi)
    num_name = ins.settlement_currency() if numeraire == "settlement" else np.full(I, "USD", dtype=object)
    sid = np.asarray(sset.scenario_id, dtype=object).astype(str)
    schema = pa.schema([("instrument_id", pa.string()), ("scenario_id", pa.string()), ("base_value", pa.float64()),
                        ("scenario_value", pa.float64()), ("pnl", pa.float64()), ("numeraire", pa.string())])
    ids_pa = pa.array(ins.instrument_id.astype(str), type=pa.string())
    sid_pa = pa.array(sid, type=pa.string())
    num_pa = pa.array(num_name.astype(str), type=pa.string())
    step = max(1, BLOCK_ELEMENTS // max(S, 1))
    stats = {"rows": 0}

    def write(fh):
        with pq.ParquetWriter(fh, schema, compression="zstd") as w:
            for lo in range(0, max(I, 1), step):
                sl = slice(lo, min(lo + step, I))
                n = sl.stop - sl.start
                if n <= 0:
                    break
                base, scen = revalue_values(pi.take(sl), sset, numeraire)
                pnl = scen - base[:, None]
                bad = ~np.isfinite(pnl)
                if bad.any():
                    i, j = np.argwhere(bad)[0]
                    raise ScenarioError(
                        f"instrument {ins.instrument_id[sl][i]!r}, scenario {sid[j]!r}: non-finite P&L; "
                        "check the book's prices and vols"
                    )
                rows_i = pa.array(np.repeat(np.arange(sl.start, sl.stop), S))
                w.write_table(pa.table({
                    "instrument_id": ids_pa.take(rows_i),
                    "scenario_id": sid_pa.take(pa.array(np.tile(np.arange(S), n))),
                    "base_value": pa.array(np.repeat(base, S)),
                    "scenario_value": pa.array(scen.reshape(-1)),
                    "pnl": pa.array(pnl.reshape(-1)),
                    "numeraire": num_pa.take(rows_i),
                }, schema=schema))
                stats["rows"] += n * S
            if I == 0:
                w.write_table(schema.empty_table())

    atomic_write(path, write)
    return {"instruments": I, "scenarios": S, **stats}


def run(args) -> int:
    from ..fileio import write_json
    from ..io import load_book
    from ..scenarios.io import read_scenarios
    from .outpath import out_folder

    out = out_folder(args.out)  # may be created; its parent folder must exist
    sset = read_scenarios(args.scenarios)  # cheap: fail on a bad scenario file before loading the book
    lb = load_book(args.book)
    try:
        stats = pnl_table_writer(lb.book, sset, args.numeraire, out / "pnl.parquet")
    except OSError as exc:
        raise ScenarioError(f"{out}: cannot write pnl.parquet ({exc.strerror or exc})") from None
    summary = {
        "book": lb.summary.get("book", {}),
        "rejected_rows": int(len(lb.rejects)),
        "scenario_set": {k: v for k, v in sset.describe().items() if k != "metadata"},
        "numeraire": args.numeraire,
        **stats,
        "out": str(out / "pnl.parquet"),
    }
    write_json(summary, out / "pnl_summary.json")
    print(json.dumps({k: summary[k] for k in ("instruments", "scenarios", "rows", "rejected_rows", "out")}, default=str))
    return 0
