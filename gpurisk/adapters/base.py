"""What every adapter shares: the mapped tables, the row-by-row rejects, reading JSON and combining sources.

An adapter turns one standard structure (a list of CCXT ``Position`` dicts, a Deribit
``get_positions`` result, an OKX balance, a FIXML ``PosRpt`` batch, ...) into **partial book
tables** plus a **rejects table**, record by record: every input record is either mapped or
rejected, never dropped (``Mapped.counts[kind] = {input, mapped, rejected}``, input = mapped +
rejected). ``combine`` merges the parts of several sources into one set of book tables.

Partial tables (DataFrames, columns as in docs/data-format.md; an adapter fills what it knows):

- ``instruments``: the book's instrument columns; ``expiry`` UTC ``datetime64``, ``strike`` NaN
  unless option, ``option_type`` None unless option.
- ``market``: ``instrument_id, underlying_price, implied_vol`` plus ``priority`` (0 = the best
  source of that price, e.g. a ticker; 2 = a position's mark): ``combine`` keeps the best.
- ``index``: ``underlying, price, priority``.
- ``positions``: ``account_id, instrument_id, quantity`` (extra columns are carried along).
- ``balances``: ``account_id, venue, asset, amount``.

Rejects have the columns of ``gpurisk.validate``'s rejects table (``table, row, column, reason,
message, value``): ``table`` names the record kind (``deribit.positions``), ``row`` is the
1-based record number in its source, and the message starts with the source (a file name).
The reason codes are ``gpurisk.schema.REASONS`` and ``gpurisk.schema.ADAPTER_REASONS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..book import STABLECOINS
from ..errors import GpuriskError
from ..schema import ADAPTER_REASONS, REASONS, REJECT_COLUMNS, VALUE_CHARS
from ..fileio import read_text

#: every reason an adapter's reject may give
ALL_REASONS = {**REASONS, **ADAPTER_REASONS}

#: the book tables an adapter fills, in order
BOOK_TABLES = ("instruments", "market", "index", "positions", "balances")
INSTRUMENT_COLUMNS = ["instrument_id", "venue", "underlying", "kind", "settlement", "contract_size", "expiry",
                      "strike", "option_type"]
MARKET_COLUMNS = ["instrument_id", "underlying_price", "implied_vol", "priority"]
INDEX_COLUMNS = ["underlying", "price", "priority"]
POSITION_COLUMNS = ["account_id", "instrument_id", "quantity"]
BALANCE_COLUMNS = ["account_id", "venue", "asset", "amount"]
COLUMNS = {"instruments": INSTRUMENT_COLUMNS, "market": MARKET_COLUMNS, "index": INDEX_COLUMNS,
           "positions": POSITION_COLUMNS, "balances": BALANCE_COLUMNS}
#: price priorities (lower wins): a venue's market-data record, a spot ticker's last price, a position's mark
PRIORITY_MARKET, PRIORITY_SPOT, PRIORITY_POSITION = 0, 1, 2
#: a JSON source larger than this is refused (a snapshot of positions is megabytes, not gigabytes)
MAX_JSON_BYTES = 512 * 1024 * 1024


class AdapterError(GpuriskError):
    """A source that cannot be read at all (unreadable, truncated, not the structure it should be): one line."""


def empty(table: str) -> pd.DataFrame:
    """An empty partial table with the right columns (and dtypes for the numbers and the expiry)."""
    df = pd.DataFrame({c: pd.Series([], dtype=object) for c in COLUMNS[table]})
    for c in ("contract_size", "strike", "underlying_price", "implied_vol", "price", "quantity", "amount"):
        if c in df.columns:
            df[c] = df[c].astype(np.float64)
    if "priority" in df.columns:
        df["priority"] = df["priority"].astype(np.int64)
    if "expiry" in df.columns:
        df["expiry"] = pd.Series([], dtype="datetime64[ns, UTC]")
    return df


#: context an adapter reject carries besides validate's columns: whose record it was, at which venue
CONTEXT_COLUMNS = ["account_id", "venue"]


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=np.int64 if c == "row" else object)
                         for c in REJECT_COLUMNS + CONTEXT_COLUMNS})


@dataclass
class Mapped:
    """One or more sources mapped to partial book tables; see the module docstring.

    ``as_of``: the latest record time seen (naive-UTC ``datetime64[s]``) or None; ``counts``:
    ``{kind: {input, mapped, rejected}}``; ``sources``: ``[{path, format, kind, records}]``.
    """

    tables: dict[str, pd.DataFrame] = field(default_factory=lambda: {t: empty(t) for t in BOOK_TABLES})
    rejects: pd.DataFrame = field(default_factory=empty_rejects)
    counts: dict = field(default_factory=dict)
    as_of: np.datetime64 | None = None
    sources: list = field(default_factory=list)

    def add(self, table: str, df: pd.DataFrame) -> None:
        """Append rows to partial table ``table`` (missing columns are filled with empties)."""
        if df is None or len(df) == 0:
            return
        cur = self.tables[table]
        df = df.reset_index(drop=True)
        for c in COLUMNS[table]:
            if c not in df.columns:
                df[c] = empty(table)[c].reindex(range(len(df))).to_numpy()
        self.tables[table] = df if len(cur) == 0 else pd.concat([cur, df], ignore_index=True)

    def reject(self, rejects: pd.DataFrame) -> None:
        if len(rejects):
            self.rejects = rejects if len(self.rejects) == 0 else pd.concat([self.rejects, rejects],
                                                                              ignore_index=True)

    def add_position_prices(self, instrument_id, kind, mark, underlying=None, index=None) -> None:
        """The prices a position record carries, at position priority: the mark [n] of a non-option instrument
        as its ``underlying_price`` (an option's mark is a premium, not the underlying's), and the
        ``index`` [n] of each ``underlying`` [n] when given; non-finite or non-positive prices are skipped."""
        fut = (np.asarray(kind, dtype=object) != "option") & np.isfinite(mark) & (mark > 0)
        self.add("market", pd.DataFrame({"instrument_id": np.asarray(instrument_id, dtype=object)[fut],
                                         "underlying_price": mark[fut], "implied_vol": np.nan,
                                         "priority": PRIORITY_POSITION}))
        if index is not None:
            good = np.isfinite(index) & (index > 0)
            self.add("index", pd.DataFrame({"underlying": np.asarray(underlying, dtype=object)[good],
                                            "price": index[good], "priority": PRIORITY_POSITION}))

    def settle(self, rj: "Rejector") -> np.ndarray:
        """Take a record kind's checks in: its rejects kept, its records counted under ``rj.kind``; the mask
        [n] of the records that passed."""
        ok = rj.ok
        self.reject(rj.rejects())
        self.count(rj.kind, len(ok), int((~ok).sum()))
        return ok

    def count(self, kind: str, n_input: int, n_rejected: int, **extra) -> None:
        c = self.counts.setdefault(kind, {"input": 0, "mapped": 0, "rejected": 0})
        c["input"] += int(n_input)
        c["mapped"] += int(n_input - n_rejected)
        c["rejected"] += int(n_rejected)
        for k, v in extra.items():
            c[k] = c.get(k, 0) + int(v)

    def seen(self, times) -> None:
        """Record record times (``datetime64`` array, NaT ignored) for the default as-of."""
        t = np.asarray(times, dtype="datetime64[s]")
        t = t[~np.isnat(t)]
        if len(t):
            latest = t.max()
            self.as_of = latest if self.as_of is None else max(self.as_of, latest)

    def extend(self, other: "Mapped") -> "Mapped":
        """Merge ``other`` into this one (tables appended, counts summed, latest as-of kept)."""
        for t in BOOK_TABLES:
            self.add(t, other.tables[t])
        self.reject(other.rejects)
        for kind, c in other.counts.items():
            mine = self.counts.setdefault(kind, {k: 0 for k in c})
            for k, v in c.items():
                mine[k] = mine.get(k, 0) + v
        if other.as_of is not None:
            self.seen(np.array([other.as_of]))
        self.sources.extend(other.sources)
        return self


# ----------------------------------------------------------------------------- rejects


class Rejector:
    """Collects the first failing check per record of one record kind (vectorised, like ``validate``).

    ``frame``: one row per input record (row r is record r+1); ``flag(mask, column, reason)``
    rejects the masked records not rejected yet; ``ok`` are the rest.
    """

    def __init__(self, kind: str, frame: pd.DataFrame, source: str, account=None, venue=None):
        self.kind, self.frame, self.source = kind, frame, str(source)
        self.context = {"account_id": account, "venue": venue}  # scalars or [n] arrays
        self.n = len(frame)
        self.reason = np.full(self.n, "", dtype=object)
        self.column = np.full(self.n, "", dtype=object)
        self.value = np.full(self.n, "", dtype=object)

    @property
    def ok(self) -> np.ndarray:
        return self.reason == ""

    def flag(self, mask, column: str, reason: str, value=None) -> None:
        """Reject records where ``mask`` (and not rejected yet); ``value``: the shown cell (default: ``frame[column]``)."""
        if reason not in ALL_REASONS:
            raise KeyError(f"unknown reject reason {reason!r}")
        m = np.asarray(mask, dtype=bool) & self.ok
        if not m.any():
            return
        self.reason[m] = reason
        self.column[m] = column
        if value is None:
            value = self.frame[column] if column in self.frame.columns else pd.Series([""] * self.n)
        shown = np.asarray(pd.Series(value).reset_index(drop=True).map(cell_text), dtype=object)
        self.value[m] = shown[m]

    def rejects(self) -> pd.DataFrame:
        rows = np.flatnonzero(~self.ok)
        if len(rows) == 0:
            return empty_rejects()
        out = pd.DataFrame({"table": self.kind, "row": (rows + 1).astype(np.int64),
                            "column": self.column[rows], "reason": self.reason[rows], "value": self.value[rows]})
        text = out["reason"].map(ALL_REASONS)
        out["message"] = (self.source + ": " + out["table"] + " row " + out["row"].astype(str) + ", column "
                          + out["column"] + ": " + text + " (" + out["reason"] + "; value '" + out["value"] + "')")
        for c, v in self.context.items():
            if v is None or np.isscalar(v):
                out[c] = v
            else:
                out[c] = np.asarray(pd.Series(v, dtype=object).reset_index(drop=True), dtype=object)[rows]
        return out[REJECT_COLUMNS + CONTEXT_COLUMNS]


def cell_text(v) -> str:
    """A record field as the reject's ``value``: plain text, at most ``VALUE_CHARS`` characters."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (dict, list)):
        v = json.dumps(v, sort_keys=True, default=str)
    return str(v)[:VALUE_CHARS]


# ----------------------------------------------------------------------------- field parsing


def records_frame(records: list, columns: list[str]) -> pd.DataFrame:
    """[n] rows of ``columns`` from a list of records (one pandas pass, no per-field Python).

    A dict record gives its fields (absent -> NaN); a record that is not a dict gives an empty row
    with ``_bad`` True. A column ``a.b`` reads key ``b`` of the dict in field ``a``.
    """
    n = len(records)
    bad = np.fromiter((not isinstance(r, dict) for r in records), dtype=bool, count=n)
    raw = pd.DataFrame([r if not b else {} for r, b in zip(records, bad)]) if n else pd.DataFrame()
    raw.index = pd.RangeIndex(n)
    out = pd.DataFrame(index=pd.RangeIndex(n))
    for c in columns:
        top, _, sub = c.partition(".")
        col = raw[top] if top in raw.columns else pd.Series([None] * n, dtype=object)
        if sub:
            col = col.astype(object).str.get(sub) if n else col
        out[c] = col.astype(object).where(col.notna(), None) if n else pd.Series([], dtype=object)
    out["_bad"] = bad
    return out


def number(s: pd.Series):
    """(values float64 [n], missing [n], wrong_type [n]): JSON numbers and numeric strings parse; ``""`` and
    None are missing; booleans, lists, dicts and other text are the wrong type. NaN/inf parse (checked later)."""
    s = pd.Series(s).reset_index(drop=True)
    n = len(s)
    if pd.api.types.is_bool_dtype(s.dtype):
        return np.full(n, np.nan), np.zeros(n, bool), np.ones(n, bool)
    if pd.api.types.is_numeric_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        return v, np.isnan(v), np.zeros(n, bool)
    kind = s.map(type)
    is_str = (kind == str).to_numpy()
    is_num = kind.isin(_NUMBER_TYPES).to_numpy()
    na = s.isna().to_numpy()
    stripped = s.where(is_str).str.strip()
    blank = is_str & (stripped == "").fillna(False).to_numpy(dtype=bool)
    vals = pd.to_numeric(s.where(is_num | (is_str & ~blank)), errors="coerce").to_numpy(dtype=np.float64,
                                                                                        na_value=np.nan)
    nan_text = stripped.str.lower().isin(["nan", "+nan", "-nan"]).to_numpy(dtype=bool)
    miss = (na & ~is_num) | blank
    wrong = (is_str & ~blank & np.isnan(vals) & ~nan_text) | ~(na | is_num | is_str)
    return vals, miss, wrong


_NUMBER_TYPES = (int, float, np.int64, np.int32, np.float64, np.float32)


def text(s: pd.Series):
    """(values object [n] stripped strings or None, missing [n], wrong_type [n]): only strings are text."""
    s = pd.Series(s, dtype=object).reset_index(drop=True)
    is_str = (s.map(type) == str).to_numpy()
    stripped = s.where(is_str).str.strip()
    miss = (s.isna().to_numpy() & ~is_str) | (stripped == "").fillna(False).to_numpy(dtype=bool)
    wrong = ~is_str & ~miss
    vals = stripped.to_numpy(dtype=object, copy=True)
    vals[miss | wrong] = None
    return vals, miss, wrong


_MAX_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z in epoch milliseconds


def ms_time(s: pd.Series) -> np.ndarray:
    """[n] naive-UTC ``datetime64[s]`` from epoch milliseconds (numbers or numeric strings); NaT when absent or bad."""
    v, miss, wrong = number(s)
    ok = ~miss & ~wrong & np.isfinite(v) & (np.abs(v) < _MAX_MS)  # beyond 2200: "never" (a perpetual's expiry)
    out = np.full(len(s), np.datetime64("NaT"), dtype="datetime64[s]")
    out[ok] = (v[ok] // 1000).astype(np.int64).astype("datetime64[s]")
    return out


def utc(times) -> pd.Series:
    """Times (``datetime64`` of any unit, naive = UTC, or tz-aware) as a ``datetime64[ns, UTC]`` Series."""
    out = pd.Series(pd.to_datetime(times, utc=True))
    return out.astype("datetime64[ns, UTC]").reset_index(drop=True)


def epoch_ms(times, default: int = 0) -> np.ndarray:
    """[n] int64 epoch milliseconds of UTC times (any ``datetime64`` unit); ``default`` where NaT."""
    t = utc(times)
    ns = t.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return np.where(t.notna().to_numpy(), ns // 1_000_000, default).astype(np.int64)


def key_text(rj: Rejector, df: pd.DataFrame, column: str) -> np.ndarray:
    """The record key ``column`` as stripped text [n] (None where rejected); flags the records that are not
    objects, and a missing or non-text key."""
    rj.flag(df["_bad"].to_numpy(), column, "wrong_type", value=pd.Series(["(not an object)"] * len(df)))
    vals, miss, wrong = text(df[column])
    rj.flag(miss, column, "missing_value")
    rj.flag(wrong, column, "wrong_type")
    return vals


def check_number(rj: Rejector, column: str, vals, miss, wrong, *, required=True, positive=False) -> None:
    """The usual number checks: missing, wrong type, non-finite, and (``positive``) > 0."""
    if required:
        rj.flag(miss, column, "missing_value")
    rj.flag(wrong, column, "wrong_type")
    rj.flag(~miss & ~wrong & ~np.isfinite(vals), column, "non_finite")
    if positive:
        rj.flag(np.isfinite(vals) & (vals <= 0), column, "non_positive")


# ----------------------------------------------------------------------------- reading sources


def load_json(path) -> object:
    """The JSON document in file ``path``; ``AdapterError`` naming the file (and line/column) if it is not JSON."""
    p = Path(path)
    txt = read_text(p, "JSON file", AdapterError, MAX_JSON_BYTES)
    if not txt.strip():
        raise AdapterError(f"{p}: empty file (expected JSON)")
    try:
        return json.loads(txt, parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        what = "truncated JSON" if exc.pos >= len(txt.rstrip()) - 1 else "not valid JSON"
        raise AdapterError(f"{p}: {what} (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise AdapterError(f"{p}: JSON nested too deeply") from None


def _json_constant(name: str):
    return float(name.replace("Infinity", "inf"))  # NaN, Infinity, -Infinity parse (and are rejected as non-finite)


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts (Python numbers, exact), empty cells (None, NaN) left out."""
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items() if v is not None} for r in rows]


def source_name(source) -> str:
    """How a source is named in messages: the file path, or ``<python>`` for objects passed in Python."""
    return str(source) if source is not None else "<python>"


# ----------------------------------------------------------------------------- combining


@dataclass
class Combined:
    """Book tables built from several mapped sources: ``tables`` (the five, ready for ``validate``), the
    ``rejects`` of every source plus those of combining, ``counts`` and ``as_of``."""

    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    counts: dict
    as_of: np.datetime64 | None
    sources: list


_INSTRUMENT_TERMS = ["venue", "underlying", "kind", "settlement", "contract_size", "expiry", "strike", "option_type"]


def combine(mapped: Mapped) -> Combined:
    """One set of book tables from partial tables: instruments and index rows keyed by id (the first
    source's terms are kept; a later row with other terms is ``conflicting_instrument`` /
    ``conflicting_index``), the best-priority market row per instrument, stablecoin index rows at 1
    where no source prices them, positions and balances as given (the book's merge policy nets them).

    Only instruments that a position or a market record names are kept (an instrument list alone
    does not make instruments).
    """
    m = mapped
    rej = [m.rejects]
    counts = {k: dict(v) for k, v in m.counts.items()}

    ins = m.tables["instruments"].reset_index(drop=True)
    ins = ins.assign(_row=np.arange(len(ins)))
    first = ~ins.duplicated("instrument_id", keep="first").to_numpy()
    if (~first).any():
        kept = ins.loc[first].set_index("instrument_id")
        later = ins.loc[~first]
        ref = kept.loc[later["instrument_id"].to_numpy()]
        same = np.ones(len(later), bool)
        for c in _INSTRUMENT_TERMS:
            a, b = later[c].to_numpy(dtype=object), ref[c].to_numpy(dtype=object)
            same &= np.array([_same(x, y) for x, y in zip(a, b)], dtype=bool)
        if (~same).any():
            bad = later.loc[~same]
            rj = Rejector("combine.instruments", bad.reset_index(drop=True), "combine")
            rj.flag(np.ones(len(bad), bool), "instrument_id", "conflicting_instrument")
            r = rj.rejects()
            r["row"] = (bad["_row"].to_numpy() + 1).astype(np.int64)
            rej.append(r)
            counts.setdefault("combine.instruments", {"input": 0, "mapped": 0, "rejected": 0})
            counts["combine.instruments"]["rejected"] += int(len(bad))
        ins = ins.loc[first]
    ins = ins.drop(columns="_row")

    mk = m.tables["market"]
    if len(mk):
        mk = mk.assign(_order=np.arange(len(mk))).sort_values(["priority", "_order"], kind="stable")
        mk = mk.drop_duplicates("instrument_id", keep="first").sort_values("_order").drop(columns="_order")

    used = set(m.tables["positions"]["instrument_id"].dropna()) | set(mk["instrument_id"].dropna())
    ins = ins[ins["instrument_id"].isin(used)].reset_index(drop=True)
    mk = mk[mk["instrument_id"].isin(set(ins["instrument_id"]))].reset_index(drop=True)

    ix = m.tables["index"].reset_index(drop=True)
    if len(ix):
        ix = ix.assign(_order=np.arange(len(ix))).sort_values(["priority", "_order"], kind="stable")
        best = ix.drop_duplicates("underlying", keep="first")
        ref = best.set_index("underlying")["price"]
        rest = ix[ix.duplicated("underlying", keep="first") & (ix["priority"] == ix["underlying"].map(
            best.set_index("underlying")["priority"]))]
        differ = rest[~np.isclose(rest["price"].to_numpy(dtype=float),
                                  ref.loc[rest["underlying"]].to_numpy(dtype=float), rtol=0, atol=0)]
        if len(differ):
            rj = Rejector("combine.index", differ.reset_index(drop=True), "combine")
            rj.flag(np.ones(len(differ), bool), "price", "conflicting_index")
            r = rj.rejects()
            r["row"] = (differ["_order"].to_numpy() + 1).astype(np.int64)
            rej.append(r)
            counts.setdefault("combine.index", {"input": 0, "mapped": 0, "rejected": 0})
            counts["combine.index"]["rejected"] += int(len(differ))
        ix = best.sort_values("_order").drop(columns="_order")
    needed = set(ins["underlying"].dropna()) | set(m.tables["balances"]["asset"].dropna())
    missing_stable = sorted(a for a in needed if a in STABLECOINS and a not in set(ix["underlying"]))
    if missing_stable:
        ix = pd.concat([ix, pd.DataFrame({"underlying": missing_stable, "price": 1.0,
                                          "priority": PRIORITY_POSITION})], ignore_index=True)

    tables = {
        "instruments": ins[INSTRUMENT_COLUMNS + [c for c in ins.columns if c not in INSTRUMENT_COLUMNS]],
        "market": mk.drop(columns="priority").reset_index(drop=True),
        "index": ix.drop(columns="priority").reset_index(drop=True),
        "positions": m.tables["positions"].reset_index(drop=True),
        "balances": m.tables["balances"].reset_index(drop=True),
    }
    parts = [r for r in rej if len(r)]
    rejects = pd.concat(parts, ignore_index=True) if parts else empty_rejects()
    return Combined(tables=tables, rejects=rejects, counts=counts, as_of=m.as_of, sources=list(m.sources))


def _same(a, b) -> bool:
    """Two instrument terms are the same (floats exactly, NaN/None/NaT as equal empties)."""
    ea = a is None or (isinstance(a, float) and np.isnan(a)) or (a is pd.NaT)
    eb = b is None or (isinstance(b, float) and np.isnan(b)) or (b is pd.NaT)
    if ea or eb:
        return ea and eb
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


__all__ = ["AdapterError", "Mapped", "Combined", "Rejector", "combine", "empty", "empty_rejects", "load_json",
           "records_frame", "records", "number", "text", "ms_time", "utc", "epoch_ms", "check_number", "cell_text", "source_name",
           "PRIORITY_MARKET", "PRIORITY_SPOT", "PRIORITY_POSITION", "BOOK_TABLES", "COLUMNS", "CONTEXT_COLUMNS"]
