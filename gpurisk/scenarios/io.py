"""Scenario files: long-format Parquet or CSV, one row per (scenario, underlying).

See docs/data-format.md ("Scenario sets"). ``read_scenarios(path) -> ScenarioSet`` checks every
row and raises ``ScenarioError`` with one line naming the file, row and column;
``write_scenarios(sset, path)`` writes atomically with ``gpurisk.fileio``.

Row numbers in messages: for CSV the line number in the file (the header is
line 1); for Parquet the 1-based data row.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..book import STABLECOINS
from ..errors import ScenarioError
from ..fileio import write_csv, write_json, write_table
from ..market import COINS
from ..pricing import VOL_MODE_CODES, VOL_MODE_NAMES, VolTerm
from .scenario_set import ScenarioSet

#: Parquet key-value metadata key holding the set-level metadata (JSON).
PARQUET_META_KEY = b"gpurisk.scenarios"
#: Version of the file form written by ``write_scenarios``.
FORMAT_VERSION = 1

REQUIRED_COLUMNS = ("scenario_id", "underlying", "price_shock")
#: optional columns and their defaults (label defaults to the scenario_id)
OPTIONAL_DEFAULTS = {"vol_shock": 0.0, "weight": 1.0, "pnl_factor": 1.0, "vol_mode": "relative", "label": None}
#: the columns that describe a whole scenario and must agree over its rows
SCENARIO_LEVEL = ("weight", "pnl_factor", "vol_mode", "label")

#: metadata defaults when a file carries none
META_DEFAULTS = {"kind": "custom", "horizon_days": 0.0, "seed": None, "source": ""}

#: underlyings a scenario file may name: the coins with market history and the stablecoins
KNOWN_UNDERLYINGS = tuple(COINS) + tuple(STABLECOINS)


def sidecar_path(path) -> Path:
    """The CSV metadata sidecar ``FILE.meta.json`` of a scenario CSV ``FILE``."""
    p = Path(path)
    return p.with_name(p.name + ".meta.json")


def _fmt(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise ScenarioError(f"{path}: unknown scenario file type {suffix!r}; use .parquet or .csv")


# ---------------------------------------------------------------- reading


def _row_numbers(n: int, fmt: str) -> np.ndarray:
    return np.arange(n) + (2 if fmt == "csv" else 1)


def _where(path, fmt, rows, i, column) -> str:
    unit = "line" if fmt == "csv" else "row"
    return f"{path}: {unit} {int(rows[i])}, column {column!r}"


def _numeric(df, col, path, fmt, rows) -> np.ndarray:
    raw = df[col]
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.argmax(bad))
        shown = raw.iloc[i]
        shown = "empty" if shown is None or (isinstance(shown, float) and math.isnan(shown)) or shown is pd.NA else repr(str(shown))
        raise ScenarioError(f"{_where(path, fmt, rows, i, col)}: {shown} is not a finite number")
    return vals


def _plain(x):
    """A NumPy scalar as the Python value it holds, so that messages never show ``np.float64(...)``."""
    return x.item() if isinstance(x, np.generic) else x


def _meta_from(raw: dict | None, where: str) -> dict:
    meta = dict(META_DEFAULTS)
    term = VolTerm()
    extra = {}
    if raw:
        if not isinstance(raw, dict):
            raise ScenarioError(f"{where}: metadata must be a JSON object")
        for k, v in raw.items():
            if k in META_DEFAULTS:
                meta[k] = v
            elif k == "term":
                if not isinstance(v, dict):
                    raise ScenarioError(f"{where}: metadata 'term' must be an object")
                known = {f.name for f in fields(VolTerm)}
                unknown = sorted(set(v) - known)
                if unknown:
                    raise ScenarioError(f"{where}: unknown vol-term parameter(s) {unknown}; known {sorted(known)}")
                try:
                    vals = {kk: float(vv) for kk, vv in v.items()}
                except (TypeError, ValueError):
                    raise ScenarioError(f"{where}: vol-term parameters must be numbers") from None
                if not all(math.isfinite(x) for x in vals.values()):
                    raise ScenarioError(f"{where}: vol-term parameters must be finite")
                term = VolTerm(**vals)
            elif k in ("format_version", "n_scenarios", "underlyings", "vol_modes"):
                continue  # informative only
            else:
                extra[k] = v
    try:
        h = float(meta["horizon_days"])
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}: horizon_days {meta['horizon_days']!r} is not a number") from None
    if not math.isfinite(h) or h < 0:
        raise ScenarioError(f"{where}: horizon_days must be a finite number >= 0, got {meta['horizon_days']!r}")
    meta["horizon_days"] = h
    if meta["seed"] is not None:
        try:
            meta["seed"] = int(meta["seed"])
        except (TypeError, ValueError):
            raise ScenarioError(f"{where}: seed {meta['seed']!r} is not an integer") from None
    meta["kind"] = str(meta["kind"])
    meta["source"] = str(meta["source"])
    meta["term"] = term
    meta["metadata"] = extra.get("metadata", {}) if isinstance(extra.get("metadata", {}), dict) else {}
    return meta


def _read_raw(path: Path, fmt: str):
    if not path.exists():
        raise ScenarioError(f"{path}: scenario file not found")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
            raise ScenarioError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
        kv = table.schema.metadata or {}
        raw_meta = None
        if PARQUET_META_KEY in kv:
            try:
                raw_meta = json.loads(kv[PARQUET_META_KEY].decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise ScenarioError(f"{path}: Parquet metadata {PARQUET_META_KEY.decode()!r} is not valid JSON") from None
        df = table.to_pandas()
        return df, raw_meta, f"{path} (Parquet metadata)"
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ScenarioError(f"{path}: empty scenario file (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    side = sidecar_path(path)
    raw_meta = None
    if side.exists():
        try:
            raw_meta = json.loads(side.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ScenarioError(f"{side}: metadata sidecar is not valid JSON") from None
    return df, raw_meta, str(side)


def read_scenarios(path, known_underlyings=None) -> ScenarioSet:
    """Read a scenario file (``.parquet`` or ``.csv``) into a ScenarioSet.

    ``known_underlyings``: the names a file may shock (default KNOWN_UNDERLYINGS,
    the coins of ``gpurisk.market.COINS`` plus the stablecoins). Scenarios keep
    the order of their first row; underlyings are sorted.
    """
    path = Path(path)
    fmt = _fmt(path)
    df, raw_meta, meta_where = _read_raw(path, fmt)
    meta = _meta_from(raw_meta, meta_where)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ScenarioError(f"{path}: missing column(s) {missing}; required {list(REQUIRED_COLUMNS)}")
    n = len(df)
    if n == 0:
        raise ScenarioError(f"{path}: no scenario rows")
    rows = _row_numbers(n, fmt)
    known = {str(u) for u in (KNOWN_UNDERLYINGS if known_underlyings is None else known_underlyings)}

    # text columns
    sid = df["scenario_id"]
    und = df["underlying"]
    for col, s in (("scenario_id", sid), ("underlying", und)):
        empty = s.isna().to_numpy() | (s.astype("string").str.strip().fillna("") == "").to_numpy()
        if empty.any():
            i = int(np.argmax(empty))
            raise ScenarioError(f"{_where(path, fmt, rows, i, col)}: empty value")
    sid = sid.astype(str).str.strip().to_numpy(dtype=object)
    und = und.astype(str).str.strip().to_numpy(dtype=object)
    bad_u = ~np.isin(und, np.array(sorted(known), dtype=object))
    if bad_u.any():
        i = int(np.argmax(bad_u))
        raise ScenarioError(
            f"{_where(path, fmt, rows, i, 'underlying')}: unknown underlying {und[i]!r}; known {sorted(known)}"
        )

    price = _numeric(df, "price_shock", path, fmt, rows)
    low = price <= -1.0
    if low.any():
        i = int(np.argmax(low))
        raise ScenarioError(
            f"{_where(path, fmt, rows, i, 'price_shock')}: {price[i]:g} is a move of -100 % or worse; "
            "price_shock is relative and must be > -1"
        )
    vol = _numeric(df, "vol_shock", path, fmt, rows) if "vol_shock" in df.columns else np.zeros(n)
    weight = _numeric(df, "weight", path, fmt, rows) if "weight" in df.columns else np.ones(n)
    if (weight < 0).any():
        i = int(np.argmax(weight < 0))
        raise ScenarioError(f"{_where(path, fmt, rows, i, 'weight')}: weight {weight[i]:g} is negative")
    pnlf = _numeric(df, "pnl_factor", path, fmt, rows) if "pnl_factor" in df.columns else np.ones(n)
    if (pnlf < 0).any():
        i = int(np.argmax(pnlf < 0))
        raise ScenarioError(
            f"{_where(path, fmt, rows, i, 'pnl_factor')}: pnl_factor {pnlf[i]:g} is negative; it is the share of "
            "the scenario's P&L that counts and must be >= 0"
        )
    if "vol_mode" in df.columns:
        vm_raw = df["vol_mode"].astype("string").str.strip().str.lower().fillna("relative")
        vm_raw = vm_raw.where(vm_raw != "", "relative")
        codes = vm_raw.map(VOL_MODE_CODES)
        bad = codes.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ScenarioError(
                f"{_where(path, fmt, rows, i, 'vol_mode')}: unknown vol_mode {str(df['vol_mode'].iloc[i])!r}; "
                f"use one of {sorted(VOL_MODE_CODES)}"
            )
        vmode = codes.to_numpy(dtype=np.int8)
    else:
        vmode = np.zeros(n, dtype=np.int8)
    if "label" in df.columns:
        lab = df["label"].astype("string").fillna("").to_numpy(dtype=object)
        lab = np.where(lab == "", sid, lab)
    else:
        lab = sid.copy()

    # scenario × underlying layout
    s_codes, s_uniques = pd.factorize(pd.Series(sid, dtype=object), sort=False)
    u_codes, u_uniques = pd.factorize(pd.Series(und, dtype=object), sort=True)
    S, U = len(s_uniques), len(u_uniques)
    flat = s_codes.astype(np.int64) * U + u_codes
    order = np.argsort(flat, kind="stable")
    dup = np.zeros(n, dtype=bool)
    dup[order[1:]] = flat[order[1:]] == flat[order[:-1]]
    if dup.any():
        i = int(np.argmax(dup))
        raise ScenarioError(
            f"{_where(path, fmt, rows, i, 'underlying')}: duplicate row for scenario {sid[i]!r}, underlying {und[i]!r}"
        )
    if n != S * U:
        have = np.zeros(S * U, dtype=bool)
        have[flat] = True
        j = int(np.argmin(have))
        s_j, u_j = j // U, j % U
        first = int(np.argmax(s_codes == s_j))
        raise ScenarioError(
            f"{_where(path, fmt, rows, first, 'underlying')}: scenario {s_uniques[s_j]!r} has no row for underlying "
            f"{u_uniques[u_j]!r}; every scenario needs one row per underlying of the file"
        )
    # scenario-level columns must agree over a scenario's rows
    first_row = np.full(S, n, dtype=np.int64)
    np.minimum.at(first_row, s_codes, np.arange(n))
    for name, arr in (("weight", weight), ("pnl_factor", pnlf), ("vol_mode", vmode), ("label", lab)):
        ref = arr[first_row[s_codes]]
        diff = ref != arr
        if diff.any():
            i = int(np.argmax(diff))
            shown = (lambda v: VOL_MODE_NAMES[int(v)]) if name == "vol_mode" else _plain
            raise ScenarioError(
                f"{_where(path, fmt, rows, i, name)}: {name} differs between rows of scenario {sid[i]!r} "
                f"({shown(arr[i])!r} vs {shown(ref[i])!r}); it must be the same on every row of a scenario"
            )
    ps = np.empty(S * U)
    vs = np.empty(S * U)
    ps[flat] = price
    vs[flat] = vol
    return ScenarioSet(
        underlyings=tuple(str(u) for u in u_uniques),
        price_shock=ps.reshape(S, U),
        vol_shock=vs.reshape(S, U),
        vol_mode=vmode[first_row].astype(np.int8),
        weight=weight[first_row].astype(np.float64),
        pnl_factor=pnlf[first_row].astype(np.float64),
        label=np.asarray(lab[first_row], dtype=object),
        scenario_id=np.asarray(s_uniques, dtype=object),
        horizon_days=meta["horizon_days"],
        kind=meta["kind"],
        seed=meta["seed"],
        source=meta["source"],
        term=meta["term"],
        metadata=meta["metadata"],
    )


# ---------------------------------------------------------------- writing


def scenarios_frame(sset: ScenarioSet) -> pd.DataFrame:
    """The long table of a set: S·U rows, scenario-major, columns as documented."""
    S, U = sset.price_shock.shape
    return pd.DataFrame(
        {
            "scenario_id": np.repeat(np.asarray(sset.scenario_id, dtype=object).astype(str), U),
            "underlying": np.tile(np.asarray(sset.underlyings, dtype=object).astype(str), S),
            "price_shock": np.asarray(sset.price_shock, dtype=np.float64).reshape(-1),
            "vol_shock": np.asarray(sset.vol_shock, dtype=np.float64).reshape(-1),
            "vol_mode": np.repeat(np.array([VOL_MODE_NAMES[int(m)] for m in np.asarray(sset.vol_mode)], dtype=object), U),
            "weight": np.repeat(np.asarray(sset.weight, dtype=np.float64), U),
            "pnl_factor": np.repeat(np.asarray(sset.pnl_factor, dtype=np.float64), U),
            "label": np.repeat(np.asarray(sset.label, dtype=object).astype(str), U),
        }
    )


def scenario_metadata(sset: ScenarioSet) -> dict:
    """Set-level metadata as written to files (JSON-able)."""
    d = sset.describe()
    d["format_version"] = FORMAT_VERSION
    return json.loads(json.dumps(d, default=_jsonable))


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def write_scenarios(sset: ScenarioSet, path) -> Path:
    """Write ``sset`` to ``path`` (.parquet with key-value metadata, or .csv + ``.meta.json`` sidecar)."""
    import pyarrow as pa

    path = Path(path)
    fmt = _fmt(path)
    frame = scenarios_frame(sset)
    meta = scenario_metadata(sset)
    if fmt == "parquet":
        table = pa.Table.from_pandas(frame, preserve_index=False)
        kv = dict(table.schema.metadata or {})
        kv[PARQUET_META_KEY] = json.dumps(meta, sort_keys=True).encode("utf-8")
        table = table.replace_schema_metadata(kv)
        write_table(table, path)
    else:
        write_csv(frame, path)
        write_json(meta, sidecar_path(path))
    return path


__all__ = ["read_scenarios", "write_scenarios", "scenarios_frame", "scenario_metadata", "sidecar_path",
           "KNOWN_UNDERLYINGS", "REQUIRED_COLUMNS", "PARQUET_META_KEY"]
