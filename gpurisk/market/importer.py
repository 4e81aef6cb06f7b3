"""Appending rows to a history folder: CSV files of the shipped format, CCXT OHLCV JSON, fetched bars.

``import_files(files, into)`` reads each file into the rows of one table (``gpurisk.market.layout``):

- a CSV file of the shipped format (header ``timestamp,open,high,low,close,volume``, ``date,dvol`` or
  ``timestamp,funding_rate``); its table comes from its name (``BTCUSDT_1d.csv``,
  ``deribit_btc_dvol_daily.csv``, ``binance_BTCUSDT_perp_funding_8h.csv``) or, for bars, from
  ``symbol``/``timeframe``;
- a CCXT OHLCV JSON file (``[[ms, open, high, low, close, volume], ...]``, what ``fetch_ohlcv``
  returns; ``ms`` is the bar's open time in milliseconds UTC), its table from its name
  (``BTCUSDT_1d.json``) or from ``symbol``/``timeframe``.

``apply_rows(into, batches)`` merges rows into the folder; ``fetch`` uses it too. The policy:

- **Key.** A row is keyed by its table and its time. Rows already in the folder come first, then the
  inputs in the order given.
- **Duplicate.** A row whose values all equal the row already there for its time (or an earlier
  input's) is a duplicate: counted, not written again. Importing the same file twice changes nothing,
  and a table with nothing new is not rewritten.
- **Conflict.** A row whose time is already there with any different value is a conflict. It is never
  applied silently: with ``on_conflict="error"`` (the default) the import stops with a one-line error
  naming the first conflict and writes nothing; ``"keep"`` keeps the row already there and reports
  the conflicts; ``"replace"`` takes the later row and reports every replacement.
- **Rejects.** A row that cannot be used (an unreadable time or number, a price ≤ 0, high < low, a bar
  off its timeframe's grid, or a bar that had not closed at the time of the import) is rejected with
  the file, line (CSV) or entry (JSON) and reason; rows read = added + duplicates + conflicts + rejected.
- **Gaps.** Missing bars next to the rows added (a day without a daily bar, a missing 4-hour bar, a
  funding interval longer than 12 hours) are reported; they are not filled.
- **Atomic.** Every input is read and checked before the first write; each table is then written
  whole through the atomic writer (a reader sees the old table or the new one), in the shipped format.

The shipped folder is never written: copy it first (``gpurisk market init DIR``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import write_text
from .layout import (FUNDING, OHLCV, POSITIVE, QUOTE, MarketDataError, Table, check_coin, kind_for_header,
                     parse_times, read_csv_cells, read_table, table_for_name, table_text)
from .store import shipped_dir, utc_time

#: what ``on_conflict`` may be
ON_CONFLICT = ("error", "keep", "replace")
#: examples of gaps, conflicts and rejects kept per table in a report
EXAMPLES = 20
#: a CCXT bar time outside [2000-01-01, 2100-01-01) is not a bar time (ms)
_MS_RANGE = (946_684_800_000, 4_102_444_800_000)


@dataclass
class Batch:
    """Rows for one table from one source: ``frame`` has ``time`` (naive UTC), the table's value columns and
    ``line`` (the CSV line or JSON entry number, for messages)."""

    table: Table
    source: str
    frame: pd.DataFrame


@dataclass
class TableResult:
    """What an import did to one table."""

    table: str  # its path in the folder
    label: str
    incoming: int = 0  # rows read for this table, rejects excluded
    added: int = 0
    duplicates: int = 0
    conflicts: int = 0
    replaced: int = 0
    rows: int = 0  # rows of the table after the import
    first: str | None = None
    last: str | None = None
    gaps: int = 0  # gaps in the whole table after the import
    new_gaps: list = field(default_factory=list)  # gaps next to added rows: {after, before, missing}
    conflict_examples: list = field(default_factory=list)
    written: bool = False


@dataclass
class ImportReport:
    """An import's outcome: per table, per input, the rejected rows and the conflicts."""

    into: str
    on_conflict: str
    tables: list = field(default_factory=list)  # [TableResult]
    inputs: list = field(default_factory=list)  # [{source, table, rows, rejected}]
    rejects: list = field(default_factory=list)  # [{source, line, column, reason}]

    @property
    def rows_read(self) -> int:
        return sum(int(i["rows"]) for i in self.inputs)

    @property
    def counts(self) -> dict:
        t = self.tables
        return {"read": self.rows_read, "added": sum(r.added for r in t), "duplicates": sum(r.duplicates for r in t),
                "conflicts": sum(r.conflicts for r in t), "replaced": sum(r.replaced for r in t),
                "rejected": len(self.rejects)}

    @property
    def balanced(self) -> bool:
        """rows read = added + duplicates + conflicts + rejected."""
        c = self.counts
        return c["read"] == c["added"] + c["duplicates"] + c["conflicts"] + c["rejected"]

    def as_dict(self) -> dict:
        return {"into": self.into, "on_conflict": self.on_conflict, "counts": self.counts, "balanced": self.balanced,
                "tables": [asdict(r) for r in self.tables], "inputs": self.inputs, "rejects": self.rejects}

    def lines(self) -> list[str]:
        """A short human-readable account, one line per table, then gaps, conflicts and rejects."""
        out = []
        for r in self.tables:
            out.append(f"{r.table}: {r.added} added, {r.duplicates} duplicate, {r.conflicts} conflicting"
                       + (f" ({r.replaced} replaced)" if r.replaced else "")
                       + f"; {r.rows} rows {r.first}..{r.last}; {r.gaps} gap(s)"
                       + ("" if r.written else " (unchanged)"))
            for g in r.new_gaps:
                out.append(f"  gap: {g['missing']} missing between {g['after']} and {g['before']}")
            for c in r.conflict_examples:
                out.append(f"  conflict: {c['time']} {c['column']} {c['existing']!r} already there, {c['incoming']!r} "
                           f"in {c['source']} {c['line']} ({'replaced' if c['applied'] else 'kept'})")
        for x in self.rejects[:EXAMPLES]:
            out.append(f"  rejected: {x['source']} {x['line']}: {x['column']}: {x['reason']}")
        if len(self.rejects) > EXAMPLES:
            out.append(f"  ... and {len(self.rejects) - EXAMPLES} more rejected rows")
        return out


# --------------------------------------------------------------------------- reading inputs


def _reject(rejects: list, source: str, line, column: str, reason: str) -> None:
    rejects.append({"source": source, "line": line, "column": column, "reason": reason})


def ohlcv_table(symbol: str, timeframe: str) -> Table:
    """The bar table of a ``BASE/USDT`` (or ``BASEUSDT`` or ``BASE``) symbol at ``timeframe``."""
    s = str(symbol).strip().upper()
    if "/" in s:
        base, _, quote = s.partition("/")
        quote = quote.split(":")[0]
        if quote != QUOTE:
            raise MarketDataError(f"symbol {symbol!r}: the history holds {QUOTE}-quoted prices only (e.g. BTC/{QUOTE})")
    else:
        base = s[: -len(QUOTE)] if s.endswith(QUOTE) and len(s) > len(QUOTE) else s
    return Table(OHLCV, check_coin(base, f"symbol {symbol!r}"), timeframe)


def _target(path: Path, kind: str, symbol, timeframe) -> Table:
    named = table_for_name(path.name)
    if kind == OHLCV and (symbol or timeframe):
        if not (symbol or (named and named.kind == OHLCV)) or not (timeframe or (named and named.kind == OHLCV)):
            raise MarketDataError(f"{path}: give both --symbol and --timeframe, or name the file like BTCUSDT_1d.csv")
        return ohlcv_table(symbol or named.coin, timeframe or named.timeframe)
    if named is None:
        raise MarketDataError(f"{path}: cannot tell which table it is: name it like BTCUSDT_1d.csv / .json, "
                              "deribit_btc_dvol_daily.csv or binance_BTCUSDT_perp_funding_8h.csv, "
                              "or give --symbol and --timeframe for bars")
    if named.kind != kind:
        raise MarketDataError(f"{path}: the name says {named.label} but the columns are those of a {kind} table")
    return named


def read_ccxt_json(path, symbol=None, timeframe=None, rejects: list | None = None) -> Batch:
    """The bars of a CCXT OHLCV JSON file ``[[ms, open, high, low, close, volume], ...]``; bad entries are
    appended to ``rejects`` (entry numbers count from 1)."""
    path = Path(path)
    rejects = [] if rejects is None else rejects
    table = _target(path, OHLCV, symbol, timeframe)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise MarketDataError(f"{path}: file not found") from None
    except OSError as exc:
        raise MarketDataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise MarketDataError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise MarketDataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise MarketDataError(f"{path}: expected a JSON list of [ms, open, high, low, close, volume] entries, "
                              f"got a {type(data).__name__}")
    cols = table.columns
    shaped = np.array([isinstance(e, list) and len(e) == 6 for e in data], dtype=bool)
    for i in np.flatnonzero(~shaped):
        _reject(rejects, path.name, f"entry {i + 1}", "entry", "expected [ms, open, high, low, close, volume]")
    good = [e for e, ok in zip(data, shaped) if ok]
    raw = pd.DataFrame(good, columns=list(cols), dtype=object) if good else pd.DataFrame(columns=list(cols))
    entry = np.flatnonzero(shaped) + 1
    isnum = raw.map(lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)).to_numpy(dtype=bool) \
        if len(raw) else np.zeros((0, len(cols)), bool)
    keep = isnum.all(axis=1)
    for i in np.flatnonzero(~keep):
        c = cols[int(np.argmin(isnum[i]))]
        _reject(rejects, path.name, f"entry {entry[i]}", c, f"{raw[c].iloc[i]!r} is not a number")
    raw, entry = raw[keep], entry[keep]
    ms = raw["timestamp"].to_numpy(dtype=np.float64) if len(raw) else np.zeros(0)
    okt = (ms == np.floor(ms)) & (ms >= _MS_RANGE[0]) & (ms < _MS_RANGE[1])
    for i in np.flatnonzero(~okt):
        _reject(rejects, path.name, f"entry {entry[i]}", "timestamp",
                f"{raw['timestamp'].iloc[i]!r} is not a bar time in milliseconds since 1970 (UTC)")
    raw, entry, ms = raw[okt], entry[okt], ms[okt]
    frame = pd.DataFrame({"time": pd.to_datetime(ms.astype(np.int64), unit="ms").as_unit("ns")})
    for c in cols[1:]:
        frame[c] = raw[c].to_numpy(dtype=np.float64)
    frame["line"] = [f"entry {k}" for k in entry]
    return Batch(table, path.name, frame)


def read_csv_rows(path, symbol=None, timeframe=None, rejects: list | None = None) -> Batch:
    """The rows of a CSV file of the shipped format; unreadable rows are appended to ``rejects`` (CSV lines
    count the header as line 1)."""
    path = Path(path)
    rejects = [] if rejects is None else rejects
    raw = read_csv_cells(path)
    kind = kind_for_header(raw.columns)
    if kind is None:
        raise MarketDataError(f"{path}: columns {','.join(map(str, raw.columns))} are none of the shipped formats "
                              "(timestamp,open,high,low,close,volume | date,dvol | timestamp,funding_rate)")
    table = _target(path, kind, symbol, timeframe)
    line = np.arange(len(raw)) + 2
    tcol = table.columns[0]
    times = parse_times(raw[tcol])
    ok = ~np.asarray(times.isna())
    for i in np.flatnonzero(~ok):
        _reject(rejects, path.name, f"line {line[i]}", tcol, f"cannot read {raw[tcol].iloc[i]!r} as a UTC time")
    frame = pd.DataFrame({"time": times})
    for c in table.values:
        v = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = ok & ~np.isfinite(v)
        for i in np.flatnonzero(bad):
            _reject(rejects, path.name, f"line {line[i]}", c, f"{raw[c].iloc[i]!r} is not a finite number")
        ok &= ~bad
        frame[c] = v
    frame["line"] = [f"line {k}" for k in line]
    return Batch(table, path.name, frame[ok].reset_index(drop=True))


def read_input(path, symbol=None, timeframe=None, rejects: list | None = None) -> Batch:
    """One input file: ``.json`` is CCXT OHLCV, ``.csv`` the shipped format."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_ccxt_json(path, symbol, timeframe, rejects)
    if suffix == ".csv":
        return read_csv_rows(path, symbol, timeframe, rejects)
    raise MarketDataError(f"{path}: expected a .csv file (shipped format) or a .json file (CCXT OHLCV)")


def check_rows(batch: Batch, now, rejects: list) -> Batch:
    """``batch`` without the rows that fail the table's rules (appended to ``rejects``): prices > 0, volume ≥ 0,
    high ≥ low, on the timeframe's grid, known (closed) by ``now``."""
    t, f = batch.table, batch.frame
    times = pd.DatetimeIndex(f["time"])
    reasons = np.full(len(f), None, dtype=object)
    column = np.full(len(f), "", dtype=object)

    def fail(mask, col, why):
        new = np.asarray(mask, bool) & (reasons == None)  # noqa: E711 - elementwise on an object array
        reasons[new] = why if isinstance(why, str) else np.asarray(why, dtype=object)[new]
        column[new] = col

    for c in POSITIVE[t.kind]:
        fail(f[c].to_numpy() <= 0, c, "must be > 0")
    if t.kind == OHLCV:
        fail(f["volume"].to_numpy() < 0, "volume", "must be ≥ 0")
        fail(f["high"].to_numpy() < f["low"].to_numpy(), "high", "high is below low")
    if t.kind == FUNDING:
        fail(np.abs(f["funding_rate"].to_numpy()) >= 1, "funding_rate", "a funding rate of 100 % or more per 8 h")
    fail(~t.on_grid(times), t.columns[0], f"not on the {t.timeframe} grid (bars start at multiples of {t.timeframe} "
                                          "from 00:00 UTC)")
    known = t.known_from(times)
    late = np.asarray(known > utc_time(now))
    fail(late, t.columns[0], np.array([f"not closed at the time of the import (closes {k.isoformat()}Z)"
                                       for k in known], dtype=object) if late.any() else "")
    bad = reasons != None  # noqa: E711
    for i in np.flatnonzero(bad):
        _reject(rejects, batch.source, f["line"].iloc[i], column[i], reasons[i])
    return Batch(t, batch.source, f[~bad].reset_index(drop=True))


# --------------------------------------------------------------------------- merging


def _gaps(t: Table, times: pd.DatetimeIndex, new: np.ndarray) -> tuple[int, list]:
    """(gaps in ``times``, the gaps next to a row where ``new`` [n] is True as {after, before, missing})."""
    if len(times) < 2:
        return 0, []
    step = t.period if t.kind != FUNDING else pd.Timedelta(hours=12)  # funding times jitter around 8 h
    d = np.diff(times.asi8)
    gap = d > step.value
    near = gap & (new[:-1] | new[1:])
    per = t.period.value
    out = [{"after": str(times[i]), "before": str(times[i + 1]), "missing": int(round(d[i] / per)) - 1}
           for i in np.flatnonzero(near)[:EXAMPLES]]
    return int(gap.sum()), out


def merge_table(table: Table, existing: pd.DataFrame | None, batches: list[Batch], on_conflict: str):
    """(merged frame indexed by time, TableResult, conflicts [frame]): the rows of ``batches`` merged into
    ``existing`` by the policy of the module docstring (vectorised; no loop over rows)."""
    vals = list(table.values)
    res = TableResult(table.relpath, table.label)
    old = existing if existing is not None else pd.DataFrame({c: [] for c in vals},
                                                              index=pd.DatetimeIndex([], name="time"))
    olds = pd.DataFrame({"time": pd.DatetimeIndex(old.index).as_unit("ns"), **{c: old[c].to_numpy() for c in vals},
                         "source": "store", "line": [f"line {k}" for k in range(2, len(old) + 2)],
                         "order": -1})
    inc = [b.frame.assign(source=b.source) for b in batches if len(b.frame)]
    new = pd.concat(inc, ignore_index=True) if inc else olds.iloc[:0].drop(columns="order")
    new = new.assign(order=np.arange(len(new)))
    res.incoming = int(len(new))
    allr = pd.concat([olds, new], ignore_index=True).sort_values(["time", "order"], kind="stable")
    allr = allr.reset_index(drop=True)
    first_vals = allr.groupby("time", sort=False)[vals].transform("first").to_numpy()
    same = (allr[vals].to_numpy() == first_vals).all(axis=1)
    is_first = ~allr["time"].duplicated().to_numpy()
    incoming = allr["order"].to_numpy() >= 0
    added = incoming & is_first
    dup = incoming & ~is_first & same
    conflict = incoming & ~is_first & ~same
    res.added, res.duplicates, res.conflicts = int(added.sum()), int(dup.sum()), int(conflict.sum())
    # conflicts: the row against the first row of its time
    ci = np.flatnonzero(conflict)
    first_idx = allr.groupby("time", sort=False).cumcount().to_numpy()
    first_pos = np.arange(len(allr)) - first_idx
    diffcol = np.argmax(allr[vals].to_numpy()[ci] != first_vals[ci], axis=1) if len(ci) else np.zeros(0, int)
    conflicts = pd.DataFrame({
        "table": table.relpath, "time": allr["time"].to_numpy()[ci],
        "column": np.asarray(vals, dtype=object)[diffcol] if len(ci) else np.array([], dtype=object),
        "existing": allr[vals].to_numpy()[first_pos[ci], diffcol] if len(ci) else np.array([]),
        "incoming": allr[vals].to_numpy()[ci, diffcol] if len(ci) else np.array([]),
        "existing_source": allr["source"].to_numpy()[first_pos[ci]],
        "source": allr["source"].to_numpy()[ci], "line": allr["line"].to_numpy()[ci],
        "applied": on_conflict == "replace",
    })
    keep = "last" if on_conflict == "replace" else "first"
    merged = allr.drop_duplicates("time", keep=keep).set_index("time")[vals]
    merged.index = pd.DatetimeIndex(merged.index, name=table.columns[0])
    if on_conflict == "replace" and len(old):
        before = old.reindex(merged.index)
        was = before.notna().all(axis=1).to_numpy()
        res.replaced = int((was & (before.to_numpy() != merged.to_numpy()).any(axis=1)).sum())
    res.rows = int(len(merged))
    if len(merged):
        res.first, res.last = str(merged.index[0]), str(merged.index[-1])
    is_new = ~pd.DatetimeIndex(merged.index).isin(pd.DatetimeIndex(old.index))
    res.gaps, res.new_gaps = _gaps(table, pd.DatetimeIndex(merged.index), is_new)
    res.conflict_examples = [{k: (str(v) if k == "time" else v) for k, v in r.items()}
                             for r in conflicts.head(EXAMPLES).to_dict("records")]
    for r in res.conflict_examples:
        for k in ("existing", "incoming"):
            r[k] = float(r[k])
        r["applied"] = bool(r["applied"])
    return merged, res, conflicts


def check_into(into) -> Path:
    """``into`` as a Path, if an import may write there: a folder or nothing yet, and not the shipped history."""
    into = Path(into)
    if into.exists() and not into.is_dir():
        raise MarketDataError(f"--into {into}: exists and is not a folder")
    try:
        shipped = shipped_dir().resolve()
    except MarketDataError:
        shipped = None
    if shipped is not None and into.exists() and into.resolve() == shipped:
        raise MarketDataError(f"--into {into}: is the shipped history, which gpurisk never changes; copy it first "
                              "(gpurisk market init DIR) and import into the copy")
    return into


def apply_rows(into, batches: list[Batch], on_conflict: str = "error", rejects: list | None = None,
               inputs: list | None = None) -> ImportReport:
    """Merge ``batches`` into the history folder ``into`` (created if missing) and write the changed tables.

    MarketDataError (nothing written) on a conflict under ``on_conflict="error"`` or an unreadable table
    already in the folder.
    """
    if on_conflict not in ON_CONFLICT:
        raise MarketDataError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}; got {on_conflict!r}")
    into = check_into(into)
    report = ImportReport(str(into), on_conflict, rejects=list(rejects or []), inputs=list(inputs or []))
    by: dict[Table, list[Batch]] = {}
    for b in batches:
        by.setdefault(b.table, []).append(b)
    plans = []
    all_conflicts = []
    for table in sorted(by, key=lambda t: t.relpath):
        path = into / table.relpath
        existing = read_table(path, table) if path.is_file() else None
        merged, res, conflicts = merge_table(table, existing, by[table], on_conflict)
        plans.append((table, merged, res))
        all_conflicts.append(conflicts)
        report.tables.append(res)
    n_conf = sum(len(c) for c in all_conflicts)
    if n_conf and on_conflict == "error":
        c = next(x for x in all_conflicts if len(x)).iloc[0]
        raise MarketDataError(
            f"{n_conf} conflicting row(s), nothing written; first: {c['source']} {c['line']}, {c['table']} "
            f"{c['time']}: {c['column']} {float(c['incoming'])!r} where {c['existing_source']} has "
            f"{float(c['existing'])!r}; "
            "use --on-conflict keep (keep the rows already there) or replace (take the new rows)")
    for table, merged, res in plans:
        if res.added or res.replaced:
            write_text(table_text(table, merged), into / table.relpath)
            res.written = True
    return report


def import_files(files, into, *, symbol=None, timeframe=None, on_conflict: str = "error", now=None) -> ImportReport:
    """Import ``files`` (CSV of the shipped format, CCXT OHLCV JSON) into the history folder ``into``.

    symbol, timeframe: the bar table of inputs whose name does not say it (``BTC/USDT``, ``1d``).
    now: the time of the import (default: the clock), before which a bar must have closed.
    Returns the ImportReport; MarketDataError (one line, nothing written) when an input cannot be read
    at all or on a conflict under ``on_conflict="error"``.
    """
    files = [Path(f) for f in files]
    if not files:
        raise MarketDataError("no input files")
    now = pd.Timestamp.now(tz="UTC") if now is None else now
    check_into(into)
    rejects: list = []
    batches, inputs = [], []
    for f in files:
        before = len(rejects)
        b = read_input(f, symbol, timeframe, rejects)
        b = check_rows(b, now, rejects)
        n_rej = len(rejects) - before
        inputs.append({"source": f.name, "table": b.table.relpath, "rows": int(len(b.frame)) + n_rej,
                       "rejected": n_rej})
        batches.append(b)
    return apply_rows(into, batches, on_conflict, rejects, inputs)


__all__ = ["ON_CONFLICT", "Batch", "TableResult", "ImportReport", "ohlcv_table", "read_ccxt_json", "read_csv_rows",
           "read_input", "check_rows", "check_into", "merge_table", "apply_rows", "import_files"]
