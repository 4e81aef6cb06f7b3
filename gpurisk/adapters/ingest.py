"""Any source to a book: recognise each file's format, map it, combine, validate, write a book folder or snapshot.

``ingest(sources, ...)`` is ``gpurisk ingest`` as a Python function; it returns an ``Ingested``
(the book tables, the as-of, the adapters' rejects, the validation of the result and a summary).
A source is a file (JSON: CCXT, Deribit or OKX, recognised by its structure; XML: FIXML), a book
folder (``book.toml`` + tables), a folder of such files (they belong to ``account``), or a
folder of per-account folders (each sub-folder's name is the account of the files in it).
``format`` forces one format for every source.

Counting: for every record kind, input = mapped + rejected (``summary["records"]``); the book
written holds every mapped row, and ``summary["validation"]`` says what ``gpurisk validate``
(and so a run) will accept of it.

Writing: ``write_book_folder`` writes the book folder atomically (a hidden temp folder renamed into
place) and refuses a non-empty folder unless ``force``; ``write_snapshot`` writes
``FOLDER/<as-of as 2026-11-21T100000Z>/``, which ``[book] snapshots = "FOLDER"`` picks up (the
last name wins; temp folders are hidden and end in ``.tmp``, so a run never sees half a snapshot).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BookError
from ..fileio import check_name, make_temp_dir, write_json, write_parquet
from .base import AdapterError, Combined, Mapped, combine, load_json, source_name, utc

FORMATS = ("book", "ccxt", "deribit", "okx", "fixml")
_XML_SUFFIXES = (".xml", ".fixml")


# ----------------------------------------------------------------------------- recognising formats


def detect_json(doc) -> str | None:
    """``deribit``, ``okx`` or ``ccxt`` for a JSON document, from its structure; None if none fits."""
    from . import ccxt, deribit, okx

    first = doc[0] if isinstance(doc, list) and doc else doc
    if isinstance(first, dict):
        if "jsonrpc" in first:
            return "deribit"
        if "code" in first and "data" in first:
            return "okx"
    if ccxt.classify(doc):
        return "ccxt"
    recs = doc if isinstance(doc, list) else [doc]
    rec = next((r for r in recs if isinstance(r, dict)), None)
    if rec is None:
        return None
    if deribit._kind(rec) is not None:
        return "deribit"
    if okx._kind(rec) is not None:
        return "okx"
    return None


def is_book(path: Path) -> bool:
    return path.is_dir() and (path / "book.toml").is_file()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def expand(path, account: str | None) -> list[tuple[Path, str | None]]:
    """``[(file or book folder, account)]`` of one source path (see the module doc)."""
    p = Path(path)
    if not p.exists():
        raise AdapterError(f"{p}: source not found")
    if p.is_file() or is_book(p):
        return [(p, account)]
    if not p.is_dir():
        raise AdapterError(f"{p}: not a file or folder")
    out = [(f, account) for f in _files(p)]
    for sub in sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith(".")):
        if is_book(sub):
            out.append((sub, account))
        else:
            out.extend((f, sub.name) for f in _files(sub))
    if not out:
        raise AdapterError(f"{p}: folder holds no source files")
    return out


# ----------------------------------------------------------------------------- reading


def read_book_source(path) -> Mapped:
    """A book folder as partial tables: its validated tables (what a run would margin), the book's as-of;
    the rows its validation rejects are rejects of kind ``book.<table>``."""
    from ..io import read_tables
    from ..validate import validate

    tables, meta = read_tables(path)
    clean, rejects, summary = validate(tables, meta["as_of"])
    m = Mapped()
    for t in ("instruments", "market", "index", "positions", "balances"):
        df = clean[t].copy()
        if t in ("market", "index"):
            df["priority"] = 0
        m.add(t, df)
        n = summary[t]["input"]
        m.count(f"book.{t}", n, summary[t]["rejected"])
    if len(rejects):
        r = rejects.copy()
        r["message"] = f"{path}: " + r["message"]
        r["table"] = "book." + r["table"]
        m.reject(r)
    m.seen(np.array([meta["as_of"]]))
    m.sources.append({"path": str(path), "format": "book"})
    return m


def read_sources(paths, *, fmt: str | None = None, venue: str | None = None, account: str | None = None,
                 mapping=None) -> Mapped:
    """Map every source (files, book folders, folders of them) into one ``Mapped``.

    ``venue``: the venue of CCXT structures; ``account``: the account of venue JSON and CCXT files
    (or the sub-folder names); ``mapping``: a FIXML symbol mapping (path, shipped name or ``Mapping``).
    """
    from . import ccxt, deribit, fixml, okx

    if fmt is not None and fmt not in FORMATS:
        raise AdapterError(f"unknown source format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Mapped()
    groups: dict[str, list] = {}
    xml = []
    for path in paths:
        for p, acct in expand(path, account):
            if p.is_dir() or fmt == "book":
                if fmt not in (None, "book"):
                    raise AdapterError(f"{p}: a book folder, but --format is {fmt}")
                out.extend(read_book_source(p))
                continue
            if fmt == "fixml" or (fmt is None and p.suffix.lower() in _XML_SUFFIXES):
                xml.append((fixml.read_xml(p), p))
                continue
            doc = load_json(p)
            kind = fmt or detect_json(doc)
            if kind is None:
                raise AdapterError(f"{p}: not a structure gpurisk reads (CCXT, Deribit or OKX JSON); "
                                   "give --format if it is one")
            if kind in ("book", "fixml"):
                raise AdapterError(f"{p}: a JSON file, but --format is {kind}")
            groups.setdefault(kind, []).append((doc, p, acct))
    if "deribit" in groups:
        out.extend(deribit.from_deribit(groups["deribit"]))
    if "okx" in groups:
        out.extend(okx.from_okx(groups["okx"]))
    if "ccxt" in groups:
        if not venue:
            raise AdapterError(f"{source_name(groups['ccxt'][0][1])}: CCXT structures name no venue: give --venue")
        out.extend(ccxt.from_documents(groups["ccxt"], venue))
    if xml:
        if mapping is None:
            raise AdapterError(f"{source_name(xml[0][1])}: FIXML needs a symbol mapping: give --mapping (a TOML "
                               f"file or a shipped name: {', '.join(fixml.shipped_mappings())})")
        mp = mapping if isinstance(mapping, fixml.Mapping) else fixml.load_mapping(mapping)
        out.extend(fixml.from_fixml(xml, mp))
    return out


def market_only(m: Mapped) -> Mapped:
    """Only the prices of ``m``: its instrument, market and index rows (a ``--market`` source holds nothing).

    Its position and balance records are not counted (they are not this ingest's records)."""
    held = ("positions", "balances", "balance", "account_summary")
    counts = {k: v for k, v in m.counts.items() if not k.endswith(held)}
    rejects = m.rejects[~m.rejects["table"].astype(str).str.endswith(held)].reset_index(drop=True)
    keep = Mapped(rejects=rejects, counts=counts, as_of=None,
                  sources=[{**s, "role": "market"} for s in m.sources])
    for t in ("instruments", "market", "index"):
        keep.add(t, m.tables[t])
    return keep


# ----------------------------------------------------------------------------- ingest


@dataclass
class Ingested:
    """The result of ``ingest``: book ``tables`` (the five), ``as_of`` (naive-UTC datetime64[s]), the adapters'
    ``rejects``, the validation of the tables (``clean``, ``validation_rejects``) and a JSON-able ``summary``."""

    tables: dict[str, pd.DataFrame]
    as_of: np.datetime64
    rejects: pd.DataFrame
    clean: dict[str, pd.DataFrame]
    validation_rejects: pd.DataFrame
    summary: dict = field(default_factory=dict)


def ingest(sources=(), *, fmt=None, venue=None, account=None, mapping=None, market=(), as_of=None,
           mapped: Mapped | None = None) -> Ingested:
    """Read, map and combine ``sources`` (and the prices of ``market`` sources) into a validated book.

    ``as_of``: the book's UTC time (default: the latest record time of the sources; an error if they
    carry none). ``mapped``: partial tables already mapped (a live fetch) to add.
    """
    from ..io import parse_as_of
    from ..validate import validate

    m = Mapped()
    if sources:
        m.extend(read_sources(sources, fmt=fmt, venue=venue, account=account, mapping=mapping))
    if mapped is not None:
        m.extend(mapped)
    if market:
        m.extend(market_only(read_sources(market, venue=venue, account=account or "-", mapping=mapping)))
    if not m.sources:
        raise AdapterError("ingest: no sources given")
    if as_of is not None:
        when = parse_as_of(as_of, where="--as-of")
    elif m.as_of is not None:
        when = m.as_of
    else:
        raise AdapterError("ingest: the sources carry no time; give --as-of")
    c = combine(m)
    tables = _typed(c)
    empty = [t for t, df in tables.items() if len(df) == 0]
    if empty:  # not a book yet (writing it is refused); validation needs every table
        clean, vrej = {}, c.rejects.iloc[0:0]
        vsum = {"skipped": f"no {', '.join(empty)} rows", "total_rejected": 0}
    else:
        clean, vrej, vsum = validate(tables, when)
    summary = {
        "as_of": str(np.datetime_as_string(np.datetime64(when, "s"), unit="s")) + "Z",
        "as_of_from": "option" if as_of is not None else "sources",
        "sources": c.sources,
        "records": c.counts,
        "records_total": {k: int(sum(v[k] for v in c.counts.values())) for k in ("input", "mapped", "rejected")},
        "rejects_by_reason": {str(k): int(v) for k, v in c.rejects["reason"].value_counts().sort_index().items()},
        "tables": {t: int(len(df)) for t, df in tables.items()},
        "validation": vsum,
    }
    return Ingested(tables=tables, as_of=np.datetime64(when, "s"), rejects=c.rejects, clean=clean,
                    validation_rejects=vrej, summary=summary)


def _typed(c: Combined) -> dict[str, pd.DataFrame]:
    """The combined tables with the book's column types (text as object, numbers float64, expiry UTC)."""
    t = {k: v.copy() for k, v in c.tables.items()}
    ins = t["instruments"]
    ins["expiry"] = utc(ins["expiry"])
    for col in ("contract_size", "strike"):
        ins[col] = pd.to_numeric(ins[col], errors="coerce").astype(np.float64)
    for col in ("instrument_id", "venue", "underlying", "kind", "settlement", "option_type"):
        ins[col] = ins[col].astype(object).where(ins[col].notna(), None)
    for name, cols in (("market", ("underlying_price", "implied_vol")), ("index", ("price",)),
                       ("positions", ("quantity",)), ("balances", ("amount",))):
        for col in cols:
            t[name][col] = pd.to_numeric(t[name][col], errors="coerce").astype(np.float64)
    for name, cols in (("positions", ("account_id", "instrument_id")), ("balances", ("account_id", "venue", "asset")),
                       ("market", ("instrument_id",)), ("index", ("underlying",))):
        for col in cols:
            t[name][col] = t[name][col].astype(object)
    return t


# ----------------------------------------------------------------------------- writing


def _empty_tables(ing: Ingested) -> list[str]:
    return [t for t, df in ing.tables.items() if len(df) == 0]


def snapshot_name(as_of) -> str:
    """The snapshot folder name of an as-of: ``2026-11-21T100000Z`` (UTC; name order is time order)."""
    ts = pd.Timestamp(as_of)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return check_name(ts.strftime("%Y-%m-%dT%H%M%SZ"), "snapshot folder name")


def write_book_folder(ing: Ingested, out, *, table_format: str = "parquet", force: bool = False) -> Path:
    """Write the ingested book into folder ``out`` atomically (with ``ingest.json`` and ``ingest_rejects.parquet``).

    ``out`` must be missing or empty, unless ``force`` (it is then replaced whole). A table with no row is a
    one-line error (a book needs a row in every table), and nothing is written.
    """
    from ..io import write_book

    out = Path(out)
    empty = _empty_tables(ing)
    if empty:
        raise AdapterError(f"ingest: the sources give no {', '.join(empty)} row(s); a book needs at least one row "
                           "in every table (add the venue's positions, balances or market data)")
    if out.exists() and not out.is_dir():
        raise BookError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise BookError(f"{out}: folder is not empty; use --force to replace it, or choose another folder")
    meta = {"as_of": snapshot_iso(ing.as_of), "generator": "gpurisk ingest",
            "sources": [str(s.get("path")) for s in ing.summary.get("sources", [])]}
    tmp = make_temp_dir(out)
    try:
        write_book(tmp, ing.tables, meta, fmt=table_format)
        write_json(ing.summary, tmp / "ingest.json")
        write_parquet(ing.rejects.astype({"row": np.int64}), tmp / "ingest_rejects.parquet")
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old.tmp")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_snapshot(ing: Ingested, folder, *, table_format: str = "parquet", force: bool = False) -> Path:
    """Write the ingested book as ``folder/<snapshot_name(as_of)>/`` (see ``write_book_folder``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BookError(f"{folder}: exists and is not a folder")
    target = folder / snapshot_name(ing.as_of)
    if target.exists() and not force:
        raise BookError(f"{target}: a snapshot of this as-of exists; use --force to replace it")
    return write_book_folder(ing, target, table_format=table_format, force=force)


def snapshot_iso(as_of) -> str:
    return str(np.datetime_as_string(np.datetime64(as_of, "s"), unit="s")) + "Z"


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: records in / mapped / rejected per kind, tables, validation."""
    lines = [f"as_of {summary['as_of']} ({summary['as_of_from']})",
             f"{'records':<28}{'input':>10}{'mapped':>10}{'rejected':>10}"]
    for k, v in sorted(summary["records"].items()):
        lines.append(f"{k:<28}{v['input']:>10,}{v['mapped']:>10,}{v['rejected']:>10,}")
    if summary.get("rejects_by_reason"):
        lines.append("rejects by reason: " + ", ".join(f"{k} {v:,}" for k, v in summary["rejects_by_reason"].items()))
    lines.append("book rows: " + ", ".join(f"{k} {v:,}" for k, v in summary["tables"].items()))
    val = summary["validation"]
    lines.append(f"validation: {val.get('total_rejected', 0):,} row(s) a run will reject"
                 + (" (" + ", ".join(f"{k} {v}" for k, v in val.get("rejects_by_reason", {}).items()) + ")"
                    if val.get("rejects_by_reason") else ""))
    return "\n".join(lines)


__all__ = ["FORMATS", "Ingested", "detect_json", "expand", "read_sources", "read_book_source", "market_only",
           "ingest", "write_book_folder", "write_snapshot", "snapshot_name", "format_summary"]

