"""Book folder reader and the book writer.

A book is a folder of tables (``NAME.parquet`` or ``NAME.csv``, exactly one per
table) plus ``book.toml``; see docs/data-format.md. Structural faults (missing or
unreadable file, missing column, empty table, bad ``book.toml``) raise
``BookError`` with one line naming the file; row-level faults are left to
``gpurisk.validate`` and come back as rejects.

The file writers are ``gpurisk.fileio``'s atomic ones (temp file + ``os.replace``,
mode honouring the umask), re-exported here: ``write_parquet``, ``write_csv``,
``write_json``, ``write_text``; ``write_book`` writes a whole book folder with them.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .book import Book, to_utc_seconds
from .errors import BookError
from .fileio import read_toml, toml_value, write_csv, write_json, write_parquet, write_text  # noqa: F401 - writers re-exported
from .schema import OPTIONAL_TABLES, REQUIRED_COLUMNS, TABLES  # noqa: F401 - the table schema, re-exported
from .validate import DEFAULT_MARK_BAND, DEFAULT_MAX_NOTIONAL_USD, validate

FORMATS = ("parquet", "csv")
BOOK_TOML = "book.toml"


# ----------------------------------------------------------------------------- readers


def find_table(book_dir, name: str) -> Path:
    """The file of table ``name`` in ``book_dir``: exactly one of ``name.parquet`` / ``name.csv``."""
    book_dir = Path(book_dir)
    found = [book_dir / f"{name}.{fmt}" for fmt in FORMATS if (book_dir / f"{name}.{fmt}").exists()]
    if not found:
        raise BookError(f"{book_dir}: missing table {name!r} (expected {name}.parquet or {name}.csv)")
    if len(found) > 1:
        raise BookError(f"{book_dir}: table {name!r} is ambiguous: both {name}.parquet and {name}.csv exist")
    if not found[0].is_file():
        raise BookError(f"{found[0]}: not a regular file")
    return found[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _magic(path: Path) -> bytes:
    """The file's first 4 bytes (b"PAR1" for Parquet); BookError if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError as exc:
        raise BookError(f"{path}: unreadable: {exc.strerror or exc}") from None


def _read_csv(path: Path) -> pa.Table:
    """Every column as string (nulls only for empty cells), so validation sees the raw text."""
    if _magic(path) == b"PAR1":
        raise BookError(f"{path}: is a Parquet file, but its name says CSV")
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
        try:
            first.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BookError(f"{path}: not a UTF-8 CSV file") from None
        if not first.strip():
            raise BookError(f"{path}: empty file (no header row)")
        # the header alone, so that every column can be typed as string
        header = pacsv.read_csv(pa.BufferReader(first)).column_names
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 24),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except BookError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, OSError) as exc:
        raise BookError(f"{path}: unreadable or truncated CSV: {_csv_error_detail(path, exc)}") from None
    return table


def _csv_error_detail(path: Path, exc: BaseException) -> str:
    """The parse error, with its line number: a single-threaded re-read names the row (error path only)."""
    msg = _first_line(exc)
    if "parse error" not in msg or "Row #" in msg:
        return msg
    try:
        pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as again:
        detail = _first_line(again)
        if "Row #" in detail:  # arrow counts the header as row 1, as a file line number
            return detail.replace("Row #", "line ")
    return msg


def _read_parquet(path: Path) -> pa.Table:
    if _magic(path) != b"PAR1":
        raise BookError(f"{path}: not a Parquet file (its name says Parquet)")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BookError(f"{path}: unreadable or truncated Parquet file: {_first_line(exc)}") from None


def read_table(path, name: str | None = None) -> pd.DataFrame:
    """One table as a DataFrame; CSV columns are read as text, Parquet keeps its types.

    Checks the required columns of ``name`` (default: the file stem) and that the
    table has at least one data row; data row r (1-based, header excluded) is
    DataFrame index r-1.
    """
    path = Path(path)
    name = name or path.stem
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = _read_csv(path)
    elif suffix == ".parquet":
        table = _read_parquet(path)
    else:
        raise BookError(f"{path}: unknown table format {suffix!r} (use .parquet or .csv)")
    cols = [str(c) for c in table.column_names]
    if len(set(cols)) != len(cols):
        dup = sorted({c for c in cols if cols.count(c) > 1})
        raise BookError(f"{path}: duplicate column(s) {', '.join(dup)}")
    required = REQUIRED_COLUMNS.get(name, ())
    missing = [c for c in required if c not in cols]
    if missing:
        raise BookError(f"{path}: missing column(s) {', '.join(missing)} in table {name!r}")
    if table.num_rows == 0:
        raise BookError(f"{path}: table {name!r} is empty (no data rows)")
    try:
        df = table.to_pandas()
    except (pa.ArrowException, ValueError) as exc:
        raise BookError(f"{path}: cannot convert table {name!r}: {_first_line(exc)}") from None
    df.attrs["path"] = str(path)
    return df.reset_index(drop=True)


def read_book_toml(book_dir) -> dict:
    """``book.toml`` as a dict with ``as_of`` normalised to naive-UTC ``datetime64[s]``."""
    path = Path(book_dir) / BOOK_TOML
    meta = read_toml(path, "book metadata file", BookError)
    if "as_of" not in meta:
        raise BookError(f"{path}: missing key as_of (UTC, ISO-8601)")
    meta["as_of"] = parse_as_of(meta["as_of"], where=str(path))
    return meta


def parse_as_of(value, where: str = "as_of") -> np.datetime64:
    """A UTC time (ISO-8601 string, TOML/Python datetime or date) as naive-UTC datetime64[s]."""
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        value = _dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, (str, _dt.datetime, np.datetime64, pd.Timestamp)):
        raise BookError(f"{where}: as_of must be a UTC date-time, got {value!r}")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise BookError(f"{where}: as_of {value!r} is not an ISO-8601 date-time") from None
    if pd.isna(ts):
        raise BookError(f"{where}: as_of is empty")
    return to_utc_seconds(ts)


def read_tables(book_dir) -> tuple[dict[str, pd.DataFrame], dict]:
    """All tables of a book folder plus its ``book.toml``; raises ``BookError`` on structural faults.

    The optional tables (``accounts``) are in the dict only when the folder has them.
    """
    book_dir = Path(book_dir)
    if not book_dir.exists():
        raise BookError(f"{book_dir}: book folder not found")
    if not book_dir.is_dir():
        raise BookError(f"{book_dir}: not a folder (a book is a folder of tables)")
    meta = read_book_toml(book_dir)
    tables = {name: read_table(find_table(book_dir, name), name) for name in TABLES}
    for name in OPTIONAL_TABLES:  # read when present (``accounts``: member groups)
        if any((book_dir / f"{name}.{fmt}").exists() for fmt in FORMATS):
            tables[name] = read_table(find_table(book_dir, name), name)
    return tables, meta


@dataclass(frozen=True)
class LoadedBook:
    """A validated book: the ``Book``, the rejects table and the per-table summary."""

    book: Book
    rejects: pd.DataFrame
    summary: dict
    meta: dict


def load_book(
    path,
    strict: bool = False,
    *,
    max_notional_usd: float | None = DEFAULT_MAX_NOTIONAL_USD,
    mark_band: float | None = DEFAULT_MARK_BAND,
) -> LoadedBook:
    """Read, validate and build the book in folder ``path``.

    Structural faults raise ``BookError``; bad rows become rejects (or, with
    ``strict``, raise ``ValidationError`` naming the first one).
    ``max_notional_usd`` (default 1e12 USD) and ``mark_band`` (default 3: a mark
    between index / 3 and index × 3) are the plausibility checks of
    ``gpurisk.validate.validate``; ``None`` or ``inf`` turns one off.
    """
    tables, meta = read_tables(path)
    clean, rejects, summary = validate(tables, meta["as_of"], strict=strict, max_notional_usd=max_notional_usd,
                                       mark_band=mark_band)
    book = Book.from_frames(meta["as_of"], **clean)
    summary = dict(summary)
    summary["book"] = {
        "path": str(path),
        "as_of": str(np.datetime_as_string(meta["as_of"], unit="s")) + "Z",
        "accounts": int(book.n_accounts),
        "instruments": int(len(book.instruments)),
        "positions": int(len(book.positions.quantity)),
        "groups": int(len(pd.unique(book.groups.group_id))) if book.groups is not None else None,
    }
    return LoadedBook(book=book, rejects=rejects, summary=summary, meta=meta)


# ----------------------------------------------------------------------------- writers


def toml_dumps(meta: dict) -> str:
    """A flat ``{key: scalar | list | {key: scalar}}`` dict as TOML text (sub-dicts become tables)."""
    lines, tables = [], []
    for k, v in meta.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {toml_value(v)}")
    for name, sub in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in sub.items())
    return "\n".join(lines) + "\n"


def write_book(out_dir, tables: dict[str, pd.DataFrame], meta: dict, fmt: str = "parquet") -> Path:
    """Write a book folder: every table as ``NAME.fmt`` plus ``book.toml`` (must hold ``as_of``).

    An optional table (``accounts``) is written when ``tables`` holds it.
    A stale copy of a table in the other format is removed, so the folder stays unambiguous.
    """
    if fmt not in FORMATS:
        raise BookError(f"unknown book format {fmt!r}; use parquet or csv")
    if "as_of" not in meta:
        raise BookError("book meta needs as_of")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BookError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    writer = write_parquet if fmt == "parquet" else write_csv
    for name in TABLES + tuple(n for n in OPTIONAL_TABLES if tables.get(n) is not None):
        writer(tables[name], out / f"{name}.{fmt}")
        other = out / f"{name}.{'csv' if fmt == 'parquet' else 'parquet'}"
        if other.exists():
            other.unlink()
    write_text(toml_dumps(meta), out / BOOK_TOML)
    return out
