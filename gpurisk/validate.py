"""Row-level validation of a book's tables into clean tables plus a rejects table.

``validate(tables, as_of)`` checks every row with vectorised masks (no per-row
Python), so 10 M positions validate in seconds. Each bad row is rejected once,
with the first failing check in the order below; every input row is either
accepted or rejected, and the summary says so per table
(``accepted + rejected == input``).

``row`` in the rejects is the 1-based data-row number in the file (the header is
not counted: the first data row is row 1; for Parquet, the record's position + 1).

Duplicate keys are merged, not rejected, for the two tables that hold amounts:
positions with the same (account_id, instrument_id) are netted (summed) into one
position, and balances with the same (account_id, venue, asset) into one balance,
by ``Book.from_frames``. All of those rows count as accepted; the summary says
how many were merged (``positions.merged``, ``balances.merged``).

Two plausibility checks are configurable: ``max_notional_usd`` (a position's or a
balance's USD notional above it is ``implausible_notional``) and ``mark_band`` (a
mark outside [index / band, index × band] is ``mark_off_index``).

The reason codes are in ``REASONS`` (``gpurisk.schema``) and documented in
docs/data-format.md.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .book import KIND_CODES, OPTION_TYPE_CODES, SETTLEMENT_CODES, to_utc_seconds
from .errors import ValidationError
from .schema import MERGE_KEYS, OPTIONAL_TABLES, REASONS, REJECT_COLUMNS, REQUIRED_COLUMNS, TABLES, VALUE_CHARS

#: largest accepted option implied_vol (decimal): above it the vol was most likely given in percent
MAX_IMPLIED_VOL = 5.0
#: default bound on a position's or a balance's USD notional; above it the row is ``implausible_notional``
DEFAULT_MAX_NOTIONAL_USD = 1e12
#: default band of a mark around its underlying's index: accepted within [index / band, index × band]
DEFAULT_MARK_BAND = 3.0

_REASON_LIST = list(REASONS)
_REASON_CODE = {r: i + 1 for i, r in enumerate(_REASON_LIST)}  # 0 = accepted

_TABLE_ORDER = TABLES
_NAN_TEXT = {"nan", "+nan", "-nan"}


# ----------------------------------------------------------------------------- column helpers


def _is_text(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.StringDtype) or s.dtype == object


def _text(s: pd.Series) -> pd.Series:
    """The column as pandas strings (nulls stay null)."""
    if isinstance(s.dtype, pd.StringDtype):
        return s
    if s.dtype == object:
        return s.astype("str")
    if pd.api.types.is_float_dtype(s.dtype):
        out = s.astype("str")
        return out.mask(s.isna())
    return s.astype("str")


def _missing(s: pd.Series) -> np.ndarray:
    """[n] bool: null or empty text."""
    if s.dtype == object:
        s = _text(s)
    miss = s.isna().to_numpy(dtype=bool).copy()
    if _is_text(s):
        miss |= (s.str.len() == 0).fillna(True).to_numpy(dtype=bool)
    return miss


def _numeric(s: pd.Series):
    """(values float64 [n], missing [n], wrong_type [n]).

    Text cells parse as numbers ('nan'/'inf' parse and count as non-finite later);
    empty text is missing. In a typed numeric column NaN counts as non-finite.
    """
    n = len(s)
    if pd.api.types.is_bool_dtype(s.dtype):
        return np.full(n, np.nan), np.zeros(n, bool), np.ones(n, bool)
    if pd.api.types.is_numeric_dtype(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(n, bool), np.zeros(n, bool)
    if not _is_text(s):  # datetimes and the like
        miss = s.isna().to_numpy()
        return np.full(n, np.nan), miss, ~miss
    s = _text(s)  # object columns (mixed Python values) become strings
    miss = _missing(s)
    vals = None
    if isinstance(s.dtype, pd.StringDtype):
        try:  # fast path: the whole column parses
            vals = pc.cast(pa.array(s, type=pa.string()), pa.float64()).to_numpy(zero_copy_only=False)
            vals = np.where(miss, np.nan, vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            vals = None
    if vals is None:
        stripped = s.str.strip()
        vals = pd.to_numeric(stripped, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(vals) & ~miss
        if bad.any():
            lit = stripped[bad].str.lower().isin(_NAN_TEXT).to_numpy(dtype=bool)
            idx = np.flatnonzero(bad)
            bad[idx[lit]] = False  # the text 'nan' parsed: non-finite, not wrong type
        return vals, miss, bad
    return vals, miss, np.zeros(n, bool)


def _datetime(s: pd.Series):
    """(values datetime64[s] naive UTC [n], missing [n], wrong_type [n])."""
    n = len(s)
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        v = s.dt.tz_convert("UTC").dt.tz_localize(None)
        miss = s.isna().to_numpy()
        return v.to_numpy(dtype="datetime64[s]"), miss, np.zeros(n, bool)
    if pd.api.types.is_datetime64_dtype(s.dtype):
        return s.to_numpy(dtype="datetime64[s]"), s.isna().to_numpy(), np.zeros(n, bool)
    miss = _missing(s) if _is_text(s) else s.isna().to_numpy()
    if not _is_text(s):
        return np.full(n, np.datetime64("NaT"), dtype="datetime64[s]"), miss, ~miss
    txt = _text(s).str.strip()
    parsed = pd.to_datetime(txt.where(~miss), utc=True, errors="coerce", format="ISO8601")
    vals = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[s]")
    wrong = np.isnat(vals) & ~miss
    return vals, miss, wrong


def _code_text(s: pd.Series) -> pd.Series:
    """A code column (kind, settlement, option_type) stripped and lower-cased; null -> ''."""
    return _text(s).str.strip().str.lower().fillna("")


def _lookup(keys: pd.Series, universe: pd.Series) -> np.ndarray:
    """[n] int64 row in ``universe`` of each key (its first occurrence), -1 when absent.

    Arrow's hash lookup (``index_in``) against the small universe; 10 M keys take well under a second.
    """
    uni = pd.Index(universe)
    if len(uni) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    first = ~uni.duplicated(keep="first")
    rows = np.flatnonzero(first)
    try:
        found = pc.index_in(pa.array(keys, type=pa.string()), value_set=pa.array(uni[first], type=pa.string()))
        pos = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        pos = uni[first].get_indexer(keys).astype(np.int64)
    return np.where(pos >= 0, rows[np.maximum(pos, 0)], -1).astype(np.int64)


# ----------------------------------------------------------------------------- the checker


class _Check:
    """Reject bookkeeping of one table: the first failing check per row wins."""

    def __init__(self, name: str, df: pd.DataFrame):
        self.name = name
        self.df = df
        self.n = len(df)
        self.code = np.zeros(self.n, dtype=np.int8)
        self.col = np.zeros(self.n, dtype=np.int16)
        self.columns: list[str] = [""]

    def flag(self, mask, column: str, reason: str) -> None:
        m = np.asarray(mask, dtype=bool) & (self.code == 0)
        if not m.any():
            return
        if column not in self.columns:
            self.columns.append(column)
        self.code[m] = _REASON_CODE[reason]
        self.col[m] = self.columns.index(column)

    def number(self, column: str, vals, miss, wrong, positive: bool = True, zero_reason: str = "non_positive"):
        self.flag(miss, column, "missing_value")
        self.flag(wrong, column, "wrong_type")
        self.flag(~np.isfinite(vals) & ~miss & ~wrong, column, "non_finite")
        if positive:
            self.flag(np.isfinite(vals) & (vals <= 0), column, zero_reason)

    @property
    def ok(self) -> np.ndarray:
        return self.code == 0

    def rejects(self) -> pd.DataFrame:
        rows = np.flatnonzero(self.code)
        if len(rows) == 0:
            return _empty_rejects()
        reason = np.asarray(_REASON_LIST, dtype=object)[self.code[rows].astype(np.int64) - 1]
        colnames = np.asarray(self.columns, dtype=object)[self.col[rows]]
        value = np.empty(len(rows), dtype=object)
        for ci in np.unique(self.col[rows]):
            sel = self.col[rows] == ci
            cells = self.df[self.columns[ci]].iloc[rows[sel]]
            txt = _text(cells).fillna("").str.slice(0, VALUE_CHARS)
            value[sel] = txt.to_numpy(dtype=object)
        out = pd.DataFrame(
            {
                "table": self.name,
                "row": (rows + 1).astype(np.int64),
                "column": colnames,
                "reason": reason,
                "value": value,
            }
        )
        out["table"] = out["table"].astype("str")
        for c in ("column", "reason", "value"):
            out[c] = out[c].astype("str")
        text = out["reason"].map(REASONS)
        out["message"] = (
            out["table"] + " row " + out["row"].astype("str") + ", column " + out["column"] + ": "
            + text + " (" + out["reason"] + "; value '" + out["value"] + "')"
        )
        return out[REJECT_COLUMNS]


def _empty_rejects() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "table": pd.Series([], dtype="str"),
            "row": pd.Series([], dtype=np.int64),
            "column": pd.Series([], dtype="str"),
            "reason": pd.Series([], dtype="str"),
            "message": pd.Series([], dtype="str"),
            "value": pd.Series([], dtype="str"),
        }
    )[REJECT_COLUMNS]


# ----------------------------------------------------------------------------- validate


def plausibility_limits(max_notional_usd=DEFAULT_MAX_NOTIONAL_USD, mark_band=DEFAULT_MARK_BAND) -> dict:
    """The two plausibility settings checked and normalised: ``{max_notional_usd, mark_band}``.

    ``max_notional_usd`` must be > 0 (USD), ``mark_band`` >= 1; ``None`` or ``inf``
    turns a check off (stored as ``None``). A bad value raises ``ValidationError``.
    """
    out = {}
    for name, value, low, rule in (("max_notional_usd", max_notional_usd, 0.0, "> 0"),
                                   ("mark_band", mark_band, 1.0, ">= 1")):
        if value is None:
            out[name] = None
            continue
        try:
            v = float(value) if not isinstance(value, (bool, np.bool_)) else math.nan
        except (TypeError, ValueError):
            v = math.nan
        if math.isnan(v) or v < low or (name == "max_notional_usd" and v == low):
            raise ValidationError(f"{name} must be a number {rule} (or inf to turn the check off), got '{value}'")
        out[name] = None if math.isinf(v) else v
    return out


def validate(
    tables: dict[str, pd.DataFrame],
    as_of,
    strict: bool = False,
    *,
    max_notional_usd: float | None = DEFAULT_MAX_NOTIONAL_USD,
    mark_band: float | None = DEFAULT_MARK_BAND,
):
    """Check every row of a book's tables.

    ``tables``: DataFrames ``instruments, market, index, positions, balances``
    and, optionally, ``accounts`` (member groups; ``missing_value``, ``duplicate_account``)
    (columns as in docs/data-format.md; extra columns are carried along).
    ``as_of``: the book's UTC time. Returns ``(clean_tables, rejects, summary)``:
    clean tables hold only accepted rows with typed columns (ready for
    ``Book.from_frames``); ``rejects`` has columns ``table, row, column, reason,
    message, value``; ``summary[table] = {input, accepted, rejected}`` (plus
    ``merged`` and ``net_positions`` / ``net_balances`` for positions and balances)
    and ``summary["limits"]`` the plausibility settings used.
    With ``strict``, the first bad row raises ``ValidationError``.

    Plausibility (keyword-only; ``None`` or ``inf`` turns a check off):
    ``max_notional_usd`` (default 1e12): a position whose USD notional
    |quantity| × contract_size × mark (|quantity| × contract_size for inverse
    futures and perpetuals, whose contract_size is USD; options on the
    underlying) or a balance whose |amount| × index price is above it is rejected
    (``implausible_notional``). ``mark_band`` (default 3): a market row whose
    ``underlying_price`` is outside [index / band, index × band] of its
    underlying's index price is rejected (``mark_off_index``), and so cascades to
    the instrument and its positions.
    """
    limits = plausibility_limits(max_notional_usd, mark_band)
    for name in _TABLE_ORDER:
        if name not in tables:
            raise ValidationError(f"table {name!r} missing from the tables to validate")
        missing = [c for c in REQUIRED_COLUMNS[name] if c not in tables[name].columns]
        if missing:
            raise ValidationError(f"table {name!r}: missing column(s) {', '.join(missing)}")
    for name in OPTIONAL_TABLES:  # optional tables: checked when given
        if tables.get(name) is not None:
            missing = [c for c in REQUIRED_COLUMNS[name] if c not in tables[name].columns]
            if missing:
                raise ValidationError(f"table {name!r}: missing column(s) {', '.join(missing)}")
    as_of = to_utc_seconds(as_of)
    t = {k: tables[k].reset_index(drop=True) for k in _TABLE_ORDER}

    # ---- index
    ix = t["index"]
    ck_ix = _Check("index", ix)
    und = _text(ix["underlying"])
    ck_ix.flag(_missing(ix["underlying"]), "underlying", "missing_value")
    ck_ix.flag(und.duplicated(keep="first").to_numpy(dtype=bool) & ~_missing(ix["underlying"]), "underlying", "duplicate_underlying")
    price, miss, wrong = _numeric(ix["price"])
    ck_ix.number("price", price, miss, wrong)
    index_names = und[ck_ix.ok]

    # ---- instruments (all but the market-row check)
    ins = t["instruments"]
    ck_in = _Check("instruments", ins)
    ids = _text(ins["instrument_id"])
    ids_miss = _missing(ins["instrument_id"])
    ck_in.flag(ids_miss, "instrument_id", "missing_value")
    ck_in.flag(ids.duplicated(keep="first").to_numpy(dtype=bool) & ~ids_miss, "instrument_id", "duplicate_instrument")
    ck_in.flag(_missing(ins["venue"]), "venue", "missing_value")
    ck_in.flag(_missing(ins["underlying"]), "underlying", "missing_value")
    kind = _code_text(ins["kind"])
    ck_in.flag((kind == "").to_numpy(dtype=bool), "kind", "missing_value")
    ck_in.flag(~kind.isin(list(KIND_CODES)).to_numpy(dtype=bool), "kind", "unknown_kind")
    settle = _code_text(ins["settlement"])
    ck_in.flag((settle == "").to_numpy(dtype=bool), "settlement", "missing_value")
    ck_in.flag(~settle.isin(list(SETTLEMENT_CODES)).to_numpy(dtype=bool), "settlement", "unknown_settlement")
    is_opt = (kind == "option").to_numpy(dtype=bool)
    is_dated = is_opt | (kind == "future").to_numpy(dtype=bool)
    is_inverse = (settle == "inverse").to_numpy(dtype=bool)
    ck_in.flag(is_inverse & (kind == "spot").to_numpy(dtype=bool), "settlement", "inverse_spot")
    cs, miss, wrong = _numeric(ins["contract_size"])
    ck_in.number("contract_size", cs, miss, wrong)
    ck_in.flag(is_opt & is_inverse & np.isfinite(cs) & (cs != 1.0), "contract_size", "bad_contract_size")
    exp, emiss, ewrong = _datetime(ins["expiry"])
    ck_in.flag(is_dated & emiss, "expiry", "missing_value")
    ck_in.flag(is_dated & ewrong, "expiry", "wrong_type")
    ck_in.flag(is_dated & ~np.isnat(exp) & (exp <= as_of), "expiry", "expired_instrument")
    ck_in.flag(~is_dated & ~emiss, "expiry", "unexpected_value")
    otype = _code_text(ins["option_type"])
    ck_in.flag(is_opt & (otype == "").to_numpy(dtype=bool), "option_type", "missing_value")
    ck_in.flag(is_opt & ~otype.isin(list(OPTION_TYPE_CODES)).to_numpy(dtype=bool), "option_type", "bad_option_type")
    ck_in.flag(~is_opt & (otype != "").to_numpy(dtype=bool), "option_type", "unexpected_value")
    strike, smiss, swrong = _numeric(ins["strike"])
    ck_in.flag(is_opt & smiss, "strike", "missing_value")
    ck_in.flag(is_opt & swrong, "strike", "wrong_type")
    ck_in.flag(is_opt & ~np.isfinite(strike) & ~smiss & ~swrong, "strike", "non_finite")
    ck_in.flag(is_opt & np.isfinite(strike) & (strike <= 0), "strike", "non_positive")
    strike_present = ~smiss & ~np.isnan(strike) | swrong
    ck_in.flag(~is_opt & strike_present, "strike", "unexpected_value")
    ins_und = _text(ins["underlying"])
    ck_in.flag(~ins_und.isin(index_names).to_numpy(dtype=bool) & ~_missing(ins["underlying"]), "underlying", "unknown_underlying")
    ok_price = price[ck_ix.ok]
    ins_ix = _lookup(ins_und, index_names.reset_index(drop=True))  # [I] row among the accepted index rows
    ins_index = np.where(ins_ix >= 0, ok_price[np.maximum(ins_ix, 0)] if len(ok_price) else np.nan, np.nan)

    # ---- market
    mk = t["market"]
    ck_mk = _Check("market", mk)
    mid = _text(mk["instrument_id"])
    mid_miss = _missing(mk["instrument_id"])
    ck_mk.flag(mid_miss, "instrument_id", "missing_value")
    m_pos = _lookup(mid, ids)  # first row of that id in the instruments table
    ck_mk.flag((m_pos < 0) & ~mid_miss, "instrument_id", "unknown_instrument")
    ck_mk.flag(mid.duplicated(keep="first").to_numpy(dtype=bool) & ~mid_miss, "instrument_id", "duplicate_market_row")
    m_ok_ins = np.zeros(len(mk), bool)
    m_ok_ins[m_pos >= 0] = ck_in.ok[m_pos[m_pos >= 0]]
    ck_mk.flag((m_pos >= 0) & ~m_ok_ins, "instrument_id", "rejected_instrument")
    up, miss, wrong = _numeric(mk["underlying_price"])
    ck_mk.number("underlying_price", up, miss, wrong)
    if limits["mark_band"] is not None:
        band = limits["mark_band"]
        m_index = np.full(len(mk), np.nan)
        m_index[m_pos >= 0] = ins_index[m_pos[m_pos >= 0]]
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            off = np.isfinite(m_index) & ((up < m_index / band) | (up > m_index * band))
        ck_mk.flag(off, "underlying_price", "mark_off_index")
    m_opt = np.zeros(len(mk), bool)
    m_opt[m_pos >= 0] = is_opt[m_pos[m_pos >= 0]]
    vol, vmiss, vwrong = _numeric(mk["implied_vol"])
    ck_mk.flag(m_opt & vmiss, "implied_vol", "option_without_vol")
    ck_mk.flag(m_opt & vwrong, "implied_vol", "wrong_type")
    ck_mk.flag(m_opt & np.isnan(vol) & ~vmiss & ~vwrong, "implied_vol", "option_without_vol")
    ck_mk.flag(m_opt & np.isinf(vol), "implied_vol", "non_finite")
    ck_mk.flag(m_opt & np.isfinite(vol) & (vol <= 0), "implied_vol", "option_without_vol")
    ck_mk.flag(m_opt & np.isfinite(vol) & (vol > MAX_IMPLIED_VOL), "implied_vol", "implausible_vol")
    # an accepted instrument needs an accepted market row
    has_row = np.zeros(len(ins), bool)
    has_row[m_pos[ck_mk.ok]] = True
    ck_in.flag(~has_row, "instrument_id", "missing_market_row")

    # ---- positions
    ps = t["positions"]
    ck_ps = _Check("positions", ps)
    ck_ps.flag(_missing(ps["account_id"]), "account_id", "missing_value")
    pid = _text(ps["instrument_id"])
    pid_miss = _missing(ps["instrument_id"])
    ck_ps.flag(pid_miss, "instrument_id", "missing_value")
    p_pos = _lookup(pid, ids)
    ck_ps.flag((p_pos < 0) & ~pid_miss, "instrument_id", "unknown_instrument")
    p_ok_ins = np.zeros(len(ps), bool)
    p_ok_ins[p_pos >= 0] = ck_in.ok[p_pos[p_pos >= 0]]
    ck_ps.flag((p_pos >= 0) & ~p_ok_ins, "instrument_id", "rejected_instrument")
    qty, miss, wrong = _numeric(ps["quantity"])
    ck_ps.number("quantity", qty, miss, wrong, positive=False)
    ck_ps.flag(qty == 0.0, "quantity", "zero_quantity")
    if limits["max_notional_usd"] is not None:
        mark = np.full(len(ins), np.nan)
        mark[m_pos[ck_mk.ok]] = up[ck_mk.ok]
        # USD per contract: contract_size is USD for inverse futures and perpetuals, else coins × the mark
        usd_per_contract = np.where(is_inverse & ~is_opt, cs, cs * mark)
        p_usd = np.where(p_pos >= 0, usd_per_contract[np.maximum(p_pos, 0)] if len(ins) else np.nan, np.nan)
        with np.errstate(over="ignore", invalid="ignore"):
            ck_ps.flag(np.abs(qty) * p_usd > limits["max_notional_usd"], "quantity", "implausible_notional")

    # ---- balances
    bl = t["balances"]
    ck_bl = _Check("balances", bl)
    for c in ("account_id", "venue", "asset"):
        ck_bl.flag(_missing(bl[c]), c, "missing_value")
    ck_bl.flag(~_text(bl["asset"]).isin(index_names).to_numpy(dtype=bool), "asset", "unknown_asset")
    amt, miss, wrong = _numeric(bl["amount"])
    ck_bl.number("amount", amt, miss, wrong, positive=False)
    if limits["max_notional_usd"] is not None:
        b_ix = _lookup(_text(bl["asset"]), index_names.reset_index(drop=True))
        b_px = np.where(b_ix >= 0, ok_price[np.maximum(b_ix, 0)] if len(ok_price) else np.nan, np.nan)
        with np.errstate(over="ignore", invalid="ignore"):
            ck_bl.flag(np.abs(amt) * b_px > limits["max_notional_usd"], "amount", "implausible_notional")

    checks = {"instruments": ck_in, "market": ck_mk, "index": ck_ix, "positions": ck_ps, "balances": ck_bl}

    # ---- accounts (optional): member groups
    order = list(_TABLE_ORDER)
    c_ac = None
    if tables.get("accounts") is not None:
        ac = tables["accounts"].reset_index(drop=True)
        ck_ac = _Check("accounts", ac)
        a_miss = _missing(ac["account_id"])
        ck_ac.flag(a_miss, "account_id", "missing_value")
        ck_ac.flag(_text(ac["account_id"]).duplicated(keep="first").to_numpy(dtype=bool) & ~a_miss, "account_id",
                   "duplicate_account")
        ck_ac.flag(_missing(ac["group_id"]), "group_id", "missing_value")
        checks["accounts"] = ck_ac
        order.append("accounts")
        c_ac = ac.copy(deep=False)
        for c in ("account_id", "group_id") + tuple(c for c in ("name", "kind") if c in ac.columns):
            c_ac[c] = _text(ac[c])
        c_ac = c_ac if ck_ac.ok.all() else c_ac.loc[ck_ac.ok].reset_index(drop=True)
    parts = [checks[k].rejects() for k in order]
    parts = [p for p in parts if len(p)]
    rejects = pd.concat(parts, ignore_index=True) if parts else _empty_rejects()
    if strict and len(rejects):
        raise ValidationError(f"{rejects['message'].iloc[0]} (strict mode; {len(rejects)} bad row(s) in all)")

    # ---- clean tables (typed, accepted rows only)
    def _keep(df: pd.DataFrame, ok: np.ndarray) -> pd.DataFrame:
        return df if ok.all() else df.loc[ok].reset_index(drop=True)

    ok = ck_in.ok
    c_ins = ins.copy()
    c_ins["instrument_id"] = ids
    c_ins["venue"] = _text(ins["venue"])
    c_ins["underlying"] = ins_und
    c_ins["kind"] = kind
    c_ins["settlement"] = settle
    c_ins["option_type"] = otype.where(is_opt, None)
    c_ins["contract_size"] = cs
    c_ins["strike"] = np.where(is_opt, strike, np.nan)
    c_ins["expiry"] = pd.to_datetime(np.where(is_dated, exp, np.datetime64("NaT", "s")), utc=True)
    c_ins = _keep(c_ins, ok)

    c_mk = mk.copy()
    c_mk["instrument_id"] = mid
    c_mk["underlying_price"] = up
    c_mk["implied_vol"] = np.where(m_opt, vol, np.nan)
    c_mk = _keep(c_mk, ck_mk.ok)

    c_ix = ix.copy()
    c_ix["underlying"] = und
    c_ix["price"] = price
    c_ix = _keep(c_ix, ck_ix.ok)

    c_ps = ps.copy(deep=False)
    c_ps["account_id"] = _text(ps["account_id"])
    c_ps["instrument_id"] = pid
    c_ps["quantity"] = qty
    c_ps = _keep(c_ps, ck_ps.ok)

    c_bl = bl.copy(deep=False)
    for c in ("account_id", "venue", "asset"):
        c_bl[c] = _text(bl[c])
    c_bl["amount"] = amt
    c_bl = _keep(c_bl, ck_bl.ok)

    clean = {"instruments": c_ins, "market": c_mk, "index": c_ix, "positions": c_ps, "balances": c_bl}
    if c_ac is not None:
        clean["accounts"] = c_ac

    # ---- summary
    summary: dict = {}
    for k in order:
        n, acc = checks[k].n, int(checks[k].ok.sum())
        summary[k] = {"input": int(n), "accepted": acc, "rejected": int(n - acc)}
    # merged rows (MERGE_KEYS); a position's instrument is keyed by its instruments row
    merge_keys = {"positions": [c_ps["account_id"], p_pos[ck_ps.ok]],
                  "balances": [c_bl[k] for k in MERGE_KEYS["balances"]]}
    for name, net in (("positions", "net_positions"), ("balances", "net_balances")):
        n_net = _n_distinct(merge_keys[name])
        summary[name]["merged"] = int(summary[name]["accepted"] - n_net)
        summary[name][net] = n_net
    summary["rejects_by_reason"] = {str(k): int(v) for k, v in rejects["reason"].value_counts().sort_index().items()}
    summary["total_rejected"] = int(len(rejects))
    summary["limits"] = limits
    return clean, rejects, summary


def _n_distinct(keys) -> int:
    """The number of distinct key tuples over rows; ``keys`` are [n] columns (text, or int codes >= 0)."""
    if len(keys[0]) == 0:
        return 0
    code, size = np.zeros(len(keys[0]), dtype=np.int64), 1
    for k in keys:
        if isinstance(k, np.ndarray) and k.dtype.kind in "iu":
            c, m = k.astype(np.int64), int(k.max()) + 1
        else:
            c, u = pd.factorize(k, use_na_sentinel=False)
            m = max(len(u), 1)
        if size * m >= 2**62:  # keep the combined code in int64: renumber it densely first
            code, uniq = pd.factorize(code)
            size = len(uniq)
        code = code.astype(np.int64) * m + c
        size *= m
    return int(len(pd.unique(code)))
