"""Files out, TOML in, and the names that become paths: the package's one home for each.

Writers. ``atomic_write(path, write)`` is the only way the package writes a file:
``write(fh)`` fills a temp file ``.NAME.<random>.tmp`` in the destination folder, which
is flushed, fsynced and moved over ``path`` with ``os.replace``, so a reader sees the old
file or the new one, never a part. The temp file is created by ``os.open(..., 0o666)``,
so the kernel applies the process umask (and a folder's default ACL) exactly as for a
plain ``open()``: 0644 under umask 022, 0600 under 077; nothing reads or changes the umask.
On any failure the temp file is removed and the old file is left as it was; an OS
failure is a one-line ``WriteError`` naming the path. Conveniences on top:
``write_bytes``, ``write_text``, ``write_json`` (sorted keys: equal content gives equal
bytes), ``write_parquet`` / ``write_table`` (equal frames give byte-identical files),
``write_csv``; ``append_line`` appends one JSON Lines record. Arguments are (data, path).

Parent folders: every writer takes ``parents``. With ``parents=True`` (the default:
run folders and the ``--out DIR`` folders of the commands are made as needed) missing
folders are created; with ``parents=False`` a missing folder is a ``WriteError``, for
callers that must not invent a folder a user misspelt.

Reading: ``read_bytes`` / ``read_text(path, what, error, limit)`` read a whole input file (JSON, XML,
TOML) with one-line errors naming it and an optional size limit; ``read_toml(path, what)`` is the only TOML reader: a missing file, a folder, bytes
that are not UTF-8 or text that is not TOML is one line naming the file (a ``ConfigError``
unless the caller names another error class). A UTF-8 byte-order mark is accepted.

Names: ``check_name(name, what)`` is the gate every user-given name passes before it
becomes a path component (model labels, job names, run ids, model table names): ASCII
letters, digits, ``-``, ``_`` and ``.``, not starting with ``.``, no ``..``, at most
``NAME_MAX`` characters; anything else (separators, NUL, newlines, absolute paths, the
empty string) is a ``ConfigError``. ``path_name(text)`` maps free text that is not a chosen
name (leg names such as ``account/fhs``, an as-of time) to a name deterministically and
without collisions: the allowed characters kept, others ``_``, plus 12 hex digits of the
text's SHA-256.

Hashes: ``sha256_file`` and ``sha256_bytes`` (hex digests).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from .errors import BookError, ConfigError

#: the longest name ``check_name`` accepts (leaves room for prefixes, suffixes and temp names)
NAME_MAX = 100
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_NAME_RULE = "use ASCII letters, digits, '-', '_' and '.', not starting with '.', without '..'"
#: hex digits of the SHA-256 that ``path_name`` appends
_PATH_NAME_HASH = 12


class WriteError(BookError, OSError):
    """A file could not be written: one line naming the path.

    A ``BookError`` (what the writers have always raised, printed by the CLI without a
    traceback) and an ``OSError`` (so callers that treat I/O failures as non-fatal, such
    as a run's metrics, keep catching it).
    """


# ----------------------------------------------------------------------------- writers


def _temp_path(path: Path) -> Path:
    """A fresh hidden name next to ``path`` (``.NAME.<12 hex>.tmp``, short enough for any NAME)."""
    stem = path.name.encode("utf-8")[:120].decode("utf-8", "ignore")  # file names are limited in bytes
    return path.with_name(f".{stem}.{secrets.token_hex(6)}.tmp")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _make_parent(path: Path, parents: bool) -> None:
    folder = path.parent
    if parents:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise WriteError(f"{path}: cannot write: folder {folder} does not exist")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[BinaryIO], object], *, parents: bool = True, durable: bool = True) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temp file (binary ``fh``) that replaces ``path``.

    ``durable=False`` skips the fsyncs, for files that are recomputed when lost (chunk checkpoints):
    still atomic (a reader sees the old file or the new one), not durable across a power loss.
    The new file's mode is 0o666 less the process umask, as for ``open()``. An OS failure
    (no permission, disk full, the folder is a file) is a ``WriteError`` naming ``path``;
    any other exception from ``write`` propagates unchanged. Either way the temp file is
    removed and an existing ``path`` is untouched. Returns ``path``.
    """
    path = Path(path)
    try:
        _make_parent(path, parents)
        while True:
            tmp = _temp_path(path)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:  # a 48-bit collision: draw another name
                continue
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(f"{path}: cannot write here ({_reason(exc)})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(f"{path}: cannot write ({_reason(exc)})") from None
        raise
    if durable:
        _fsync_folder(path.parent)
    return path


def write_bytes(data: bytes, path, *, parents: bool = True, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (``durable``: see ``atomic_write``)."""
    return atomic_write(path, lambda fh: fh.write(data), parents=parents, durable=durable)


def write_text(text: str, path, *, parents: bool = True) -> Path:
    """Write ``text`` as UTF-8 (newlines as given) to ``path`` atomically."""
    return write_bytes(text.encode("utf-8"), path, parents=parents)


def json_default(obj):
    """JSON form of what ``json`` cannot encode: NumPy scalars and arrays, paths, dates, sets, mappings.

    Anything else is a ``TypeError`` (nothing is silently written as its ``str``).
    """
    import numpy as np

    if isinstance(obj, (np.datetime64, np.timedelta64)):
        return str(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "isoformat"):  # datetime, date, time, pandas.Timestamp
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_text(obj) -> str:
    """``obj`` as indented JSON with sorted keys and a trailing newline (equal content, equal text)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=json_default, allow_nan=True) + "\n"


def write_json(obj, path, *, parents: bool = True) -> Path:
    """Write ``obj`` as ``json_text(obj)`` atomically; an unencodable value is a TypeError and writes nothing."""
    return write_text(json_text(obj), path, parents=parents)


def write_table(table, path, *, parents: bool = True) -> Path:
    """Write a ``pyarrow.Table`` (its schema metadata kept) as zstd Parquet, atomically.

    Floating-point columns are not dictionary-encoded (their values rarely repeat: the dictionary attempt
    costs 3 to 4 times the write and the fallback is larger); labels, integers and the rest are. The bytes
    depend only on the table, so equal tables give byte-identical files.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = [f.name for f in table.schema if not pa.types.is_floating(f.type) and not pa.types.is_nested(f.type)]
    return atomic_write(
        path,
        lambda fh: pq.write_table(table, fh, compression="zstd", write_statistics=True, store_schema=True,
                                  use_dictionary=labels),
        parents=parents,
    )


def write_parquet(df, path, *, parents: bool = True) -> Path:
    """Write DataFrame ``df`` (no index) as Parquet, atomically; equal frames give byte-identical files.

    The pandas schema metadata is kept (it holds no time stamps), so dtypes round-trip.
    """
    import pyarrow as pa

    return write_table(pa.Table.from_pandas(df, preserve_index=False), path, parents=parents)


def write_csv(df, path, *, parents: bool = True) -> Path:
    """Write DataFrame ``df`` (no index) as UTF-8 CSV with a header row, atomically; NaN/None as empty cells.

    Time-zone-aware columns are written as ISO-8601 UTC (``2025-01-03T08:00:00Z``).
    """
    import pandas as pd

    tz_cols = [c for c in df.columns if isinstance(df[c].dtype, pd.DatetimeTZDtype)]
    if tz_cols:
        df = df.copy(deep=False)
        for c in tz_cols:
            df[c] = df[c].dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _write(fh):
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        df.to_csv(text, index=False, lineterminator="\n")
        text.flush()
        text.detach()  # leave ``fh`` open for atomic_write's fsync

    return atomic_write(path, _write, parents=parents)


def append_line(line: str, path, *, parents: bool = True) -> Path:
    """Append ``line`` plus a newline to ``path`` (JSON Lines) in one ``O_APPEND`` write, then fsync.

    The file is created like ``open()`` would (0o666 less the umask). ``line`` must be a
    single line: an embedded newline would split the record, so it is a ValueError.
    """
    path = Path(path)
    line = line.rstrip("\n")
    if "\n" in line or "\r" in line:
        raise ValueError(f"{path}: append_line takes one line; got {line[:60]!r}")
    data = (line + "\n").encode("utf-8")
    try:
        _make_parent(path, parents)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(f"{path}: cannot append ({_reason(exc)})") from None
    return path


def make_temp_dir(target) -> Path:
    """A fresh empty folder ``.TARGET.<random>.tmp`` next to ``target`` (made with the parents), to be
    filled and renamed onto ``target``; its mode is 0o777 less the umask, as for ``mkdir``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = _temp_path(target)
            try:
                os.mkdir(tmp, 0o777)
                return tmp
            except FileExistsError:
                continue
    except OSError as exc:
        raise WriteError(f"{target}: cannot write here ({_reason(exc)})") from None


# ----------------------------------------------------------------------------- hashes


def sha256_file(path, bufsize: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in ``bufsize`` blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- TOML


def read_bytes(path, what: str, error: type[Exception] = ConfigError, limit: int | None = None) -> bytes:
    """The bytes of the file at ``path``; ``error`` (one line naming the file) if it cannot be read.

    ``what`` names the file's role in messages (``job file``, ``JSON file``): a missing file reads
    ``PATH: job file not found``. ``limit``: the largest size accepted (bytes), checked before reading.
    """
    p = Path(path)
    try:
        if limit is not None and (size := p.stat().st_size) > limit:
            raise error(f"{path}: {what} of {size:,} bytes is larger than the limit of {limit:,} bytes")
        return p.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: {what} is a folder, not a file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({_reason(exc)})") from None


def read_text(path, what: str, error: type[Exception] = ConfigError, limit: int | None = None) -> str:
    """``read_bytes`` decoded as UTF-8 (a byte-order mark accepted); bytes that are not UTF-8 are ``error``
    naming the byte offset."""
    raw = read_bytes(path, what, error, limit)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None


def read_toml(path, what: str, error: type[Exception] = ConfigError) -> dict:
    """The TOML file at ``path`` as a dict; ``error`` (one line naming the file) if it cannot be.

    ``what`` names the file's role in messages (``job file``, ``parameter file``): a missing
    file reads ``PATH: job file not found``. Bytes that are not UTF-8 name the byte offset;
    a TOML syntax error names the line and column.
    """
    import tomllib

    text = read_text(path, what, error)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = " ".join(str(exc).split())
        raise error(f"{path}: not valid TOML: {detail}") from None


def toml_value(v) -> str:
    """A value as TOML text: booleans, integers, floats (``inf``, ``nan`` included), arrays; anything
    else as a basic string (a JSON string is one)."""
    import math
    import numbers

    if isinstance(v, bool) or getattr(getattr(v, "dtype", None), "kind", "") == "b":  # NumPy booleans too
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        return ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def toml_scalar(text: str):
    """``text`` read as one TOML value (``3``, ``0.99``, ``true``, ``"own"``, ``[1, 2]``); a bare word that is
    not TOML is returned as the string itself (``own``)."""
    import tomllib

    try:
        return tomllib.loads(f"x = {text}")["x"]
    except tomllib.TOMLDecodeError:
        return text


# ----------------------------------------------------------------------------- names


def check_name(name, what: str) -> str:
    """``name`` unchanged if it is safe as one path component, else a one-line ``ConfigError``.

    Allowed: ASCII letters, digits, ``-``, ``_``, ``.``; not starting with ``.``; no ``..``;
    1 to ``NAME_MAX`` characters. ``what`` says where the name comes from (a file and key
    path, or an option), and starts the message.
    """
    if not isinstance(name, str):
        raise ConfigError(f"{what}: a name must be a string; got {type(name).__name__}")
    if not name:
        why = "is empty"
    elif len(name) > NAME_MAX:
        why = f"is longer than {NAME_MAX} characters"
    elif name.startswith("."):
        why = "starts with '.'"
    elif ".." in name:
        why = "contains '..'"
    elif not _NAME.fullmatch(name):
        bad = next(c for c in name if not _NAME.fullmatch("a" + c))
        why = f"contains {bad!r}"
    else:
        return name
    shown = name if len(name) <= 60 else name[:57] + "..."
    raise ConfigError(f"{what}: bad name {shown!r}: it {why}; {_NAME_RULE}")


def path_name(text: str) -> str:
    """A deterministic, collision-free path component for free text (``account/fhs`` ->
    ``account_fhs-<12 hex>``): up to 48 of its characters, those other than ASCII letters,
    digits, ``-`` and ``_`` as ``_``, then ``-`` and the first 12 hex digits of its SHA-256."""
    text = str(text)
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", text[:48]) or "_"
    return check_name(f"{readable}-{sha256_bytes(text.encode('utf-8'))[:_PATH_NAME_HASH]}", "path_name")


__all__ = [
    "NAME_MAX", "WriteError", "atomic_write", "write_bytes", "write_text", "json_default", "json_text", "write_json",
    "write_table", "write_parquet", "write_csv", "append_line", "make_temp_dir", "sha256_file", "sha256_bytes",
    "read_toml", "check_name", "path_name",
]
