"""Position and collateral reconciliation: the engine's book against what a venue or clearing house reports.

``reconcile(internal, external, settings) -> Reconciliation``. Either side is a ``Side`` read by
``load_side`` from a book folder or from any source ``gpurisk ingest`` reads (CCXT structures,
Deribit / OKX JSON, FIXML), with the same options.

**Positions** are keyed by (account_id, venue, instrument_id): quantities of one key are summed
(long/short legs net), and a key whose net is within the quantity tolerance of 0 counts as absent.
One break row per key, the first that applies:

- ``missing_internal``: the external side has the position, the book does not;
- ``missing_external``: the book has it, the external side does not;
- ``side_mismatch``: both have it, of opposite signs (and the quantities differ beyond tolerance);
- ``quantity_mismatch``: same sign, quantities differ beyond tolerance;
- ``price_mismatch``: quantities agree, the instrument's mark (or settlement) price differs beyond
  tolerance (compared when both sides price it);
- ``unmapped_symbol``: a position record of one side that its adapter could not map to an instrument
  (reject reason ``unknown_symbol``): keyed by its account, venue and the symbol as written.

**Collateral**: balances keyed by (account_id, venue, asset), summed; ``missing_internal``,
``missing_external``, ``amount_mismatch``.

**Tolerance** (per column, per venue): a pair matches when |a − b| ≤ abs + rel·|b|, b the external
value. Defaults (``DEFAULT_TOLERANCES``) never report float rounding: quantity and amount abs 1e-9
and rel 1e-9; price abs 0 and rel 1e-4.

**Outputs** (``write_outputs``): ``breaks.parquet`` (one row per break with both sides' values),
``summary.json`` (counts by type and venue, matched and compared rows: compared = matched + breaks,
per table). ``Reconciliation.failed`` is True when breaks exceed ``max_breaks``; ``alerts()`` and
``metrics()`` give the alert records and metric samples the callers hand to ``gpurisk.batch.monitoring``.

``pre_run_check(job, book_path)`` is the job option ``[reconcile]``: reconcile the run's book
against the job's external sources before the margin batch, and say whether to stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, GpuriskError

#: break types, in the order a key is checked
POSITION_BREAKS = ("missing_internal", "missing_external", "unmapped_symbol", "side_mismatch", "quantity_mismatch",
                   "price_mismatch")
COLLATERAL_BREAKS = ("missing_internal", "missing_external", "amount_mismatch")
BREAK_TYPES = tuple(dict.fromkeys(POSITION_BREAKS + COLLATERAL_BREAKS))
COLUMNS = ("quantity", "price", "amount")
#: the columns of ``breaks.parquet``
BREAK_COLUMNS = ["table", "break_type", "account_id", "venue", "instrument_id", "asset", "column",
                 "internal_quantity", "external_quantity", "internal_price", "external_price",
                 "internal_amount", "external_amount", "difference", "tolerance", "detail"]
#: exit status of ``gpurisk reconcile`` when breaks exceed the threshold
BREAKS_EXIT = 1


class ReconcileError(GpuriskError):
    """Reconciliation cannot run (bad settings or sources): one line."""


@dataclass(frozen=True)
class Tolerance:
    """|a − b| ≤ abs + rel·|b| (b: the external value)."""

    abs: float = 0.0
    rel: float = 0.0

    def __post_init__(self):
        for k in ("abs", "rel"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"tolerance {k} must be a finite number >= 0, got {v!r}")


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "quantity": Tolerance(abs=1e-9, rel=1e-9),
    "price": Tolerance(abs=0.0, rel=1e-4),
    "amount": Tolerance(abs=1e-9, rel=1e-9),
}


@dataclass(frozen=True)
class Settings:
    """Tolerances (defaults and per-venue overrides), the break threshold and whether prices are compared."""

    tolerances: dict = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    venues: dict = field(default_factory=dict)  # {venue: {column: Tolerance}}
    max_breaks: int = 0
    compare_prices: bool = True

    def tolerance(self, column: str, venues) -> tuple[np.ndarray, np.ndarray]:
        """([n] abs, [n] rel) for ``column`` at each row's venue."""
        base = self.tolerances.get(column, DEFAULT_TOLERANCES[column])
        v = pd.Series(venues, dtype=object).reset_index(drop=True)
        a = np.full(len(v), float(base.abs))
        r = np.full(len(v), float(base.rel))
        for venue, cols in self.venues.items():
            if column in cols:
                sel = (v == venue).to_numpy()
                a[sel], r[sel] = cols[column].abs, cols[column].rel
        return a, r


def parse_tolerance(spec: str) -> tuple[str | None, str, Tolerance]:
    """``[VENUE:]COLUMN=ABS,REL`` (the CLI's ``--tolerance``) -> (venue or None, column, Tolerance)."""
    try:
        left, right = spec.split("=", 1)
        venue, _, column = left.rpartition(":")
        a, r = (float(x) for x in right.split(","))
    except ValueError:
        raise ConfigError(f"--tolerance {spec!r}: expected [VENUE:]COLUMN=ABS,REL (e.g. price=0,1e-4)") from None
    if column not in COLUMNS:
        raise ConfigError(f"--tolerance {spec!r}: column must be one of {', '.join(COLUMNS)}")
    return (venue or None), column, Tolerance(a, r)


# ----------------------------------------------------------------------------- sides


@dataclass
class Side:
    """One side: positions [account_id, venue, instrument_id, quantity, price], balances [account_id, venue,
    asset, amount], unmapped position records [account_id, venue, symbol], and where it came from."""

    positions: pd.DataFrame
    balances: pd.DataFrame
    unmapped: pd.DataFrame
    label: str = ""
    info: dict = field(default_factory=dict)


def side_from_tables(tables: dict, rejects: pd.DataFrame | None = None, label: str = "", info=None) -> Side:
    """A side from book tables (instruments, market, positions, balances) and an adapter's rejects."""
    ins = tables["instruments"][["instrument_id", "venue"]].drop_duplicates("instrument_id")
    px = tables["market"][["instrument_id", "underlying_price"]].drop_duplicates("instrument_id")
    pos = tables["positions"][["account_id", "instrument_id", "quantity"]].merge(ins, on="instrument_id", how="left")
    pos = pos.merge(px, on="instrument_id", how="left").rename(columns={"underlying_price": "price"})
    pos["venue"] = pos["venue"].astype(object).where(pos["venue"].notna(), "")
    bal = tables["balances"][["account_id", "venue", "asset", "amount"]].copy()
    unmapped = pd.DataFrame({"account_id": pd.Series([], dtype=object), "venue": pd.Series([], dtype=object),
                             "symbol": pd.Series([], dtype=object)})
    if rejects is not None and len(rejects):
        r = rejects[(rejects["reason"] == "unknown_symbol")
                    & rejects["table"].astype(str).str.contains("position|PosRpt", case=False)]
        if len(r):
            unmapped = pd.DataFrame({"account_id": r.get("account_id", pd.Series([None] * len(r))).to_numpy(),
                                     "venue": r.get("venue", pd.Series([None] * len(r))).to_numpy(),
                                     "symbol": r["value"].to_numpy()})
            unmapped = unmapped.astype(object).where(unmapped.notna(), "")
    return Side(positions=pos[["account_id", "venue", "instrument_id", "quantity", "price"]], balances=bal,
                unmapped=unmapped, label=label, info=dict(info or {}))


def load_side(spec, *, fmt=None, venue=None, account=None, mapping=None, market=(), label: str = "") -> Side:
    """A side from ``spec``: a book folder (its validated tables: what the engine margins), or sources
    (a path or a list of paths) read like ``gpurisk ingest`` (the mapped records, before validation)."""
    from .adapters.base import combine
    from .adapters.ingest import is_book, market_only, read_sources

    paths = [Path(p) for p in (spec if isinstance(spec, (list, tuple)) else [spec])]
    if len(paths) == 1 and is_book(paths[0]) and fmt in (None, "book") and not market:
        from .io import read_tables
        from .validate import validate

        tables, meta = read_tables(paths[0])
        clean, rejects, summary = validate(tables, meta["as_of"])
        return side_from_tables(clean, None, label or str(paths[0]),
                                {"kind": "book", "path": str(paths[0]), "rejected_rows": int(len(rejects))})
    m = read_sources(paths, fmt=fmt, venue=venue, account=account, mapping=mapping)
    if market:
        m.extend(market_only(read_sources(market, venue=venue, account=account or "-", mapping=mapping)))
    c = combine(m)
    return side_from_tables(c.tables, c.rejects, label or ", ".join(str(p) for p in paths),
                            {"kind": "sources", "records": c.counts, "rejected_records": int(len(c.rejects))})


# ----------------------------------------------------------------------------- matching


@dataclass
class Reconciliation:
    """The breaks, the summary, and whether the threshold was exceeded."""

    breaks: pd.DataFrame
    summary: dict

    @property
    def n_breaks(self) -> int:
        return int(len(self.breaks))

    @property
    def failed(self) -> bool:
        return bool(self.summary["failed"])

    def alerts(self, base: dict | None = None) -> list[dict]:
        """One alert when there are breaks: critical above the threshold, a warning at or below it."""
        if not self.n_breaks:
            return []
        s = self.summary
        return [{**(base or {}), "alert": "reconciliation_breaks",
                 "severity": "critical" if self.failed else "warning", "value": self.n_breaks,
                 "threshold": s["max_breaks"], "by_type": s["breaks_by_type"],
                 "message": f"{self.n_breaks} reconciliation break(s) ({_by(s['breaks_by_type'])}) "
                            f"{'>' if self.failed else '<='} threshold {s['max_breaks']}"}]

    def metrics(self) -> list[tuple[str, str, list[tuple[dict, float]]]]:
        """``[(name, help, [(labels, value)])]`` for Prometheus (``monitoring.Metric``)."""
        s = self.summary
        breaks = [({"type": t, "venue": v}, float(n)) for (t, v), n in sorted(s["_by_type_venue"].items())]
        return [
            ("reconcile_breaks", "Reconciliation breaks by type and venue", breaks),
            ("reconcile_compared", "Keys compared by reconciliation, per table",
             [({"table": t}, float(n)) for t, n in sorted(s["compared"].items())]),
            ("reconcile_matched", "Keys that matched within tolerance, per table",
             [({"table": t}, float(n)) for t, n in sorted(s["matched"].items())]),
            ("reconcile_success", "1 if breaks are within the threshold, else 0", [({}, 0.0 if self.failed else 1.0)]),
        ]


def _by(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def _within(a: np.ndarray, b: np.ndarray, tol_abs: np.ndarray, tol_rel: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs(a - b) <= tol_abs + tol_rel * np.abs(b)


def _agg_positions(side: Side, settings: Settings) -> pd.DataFrame:
    p = side.positions
    if len(p) == 0:
        return pd.DataFrame({"account_id": pd.Series([], dtype=object), "venue": pd.Series([], dtype=object),
                             "instrument_id": pd.Series([], dtype=object), "quantity": pd.Series([], dtype=float),
                             "price": pd.Series([], dtype=float)})
    p = p.astype({"account_id": object, "venue": object, "instrument_id": object})
    g = p.groupby(["account_id", "venue", "instrument_id"], sort=False, dropna=False).agg(
        quantity=("quantity", "sum"), price=("price", "first")).reset_index()
    a, r = settings.tolerance("quantity", g["venue"])
    return g[~(np.abs(g["quantity"].to_numpy(float)) <= a)].reset_index(drop=True)


def _agg_balances(side: Side, settings: Settings) -> pd.DataFrame:
    b = side.balances
    if len(b) == 0:
        return pd.DataFrame({"account_id": pd.Series([], dtype=object), "venue": pd.Series([], dtype=object),
                             "asset": pd.Series([], dtype=object), "amount": pd.Series([], dtype=float)})
    b = b.astype({"account_id": object, "venue": object, "asset": object})
    g = b.groupby(["account_id", "venue", "asset"], sort=False, dropna=False)["amount"].sum().reset_index()
    a, r = settings.tolerance("amount", g["venue"])
    return g[~(np.abs(g["amount"].to_numpy(float)) <= a)].reset_index(drop=True)


def reconcile(internal: Side, external: Side, settings: Settings | None = None) -> Reconciliation:
    """Compare two sides key by key (see the module doc); every compared key is matched or one break."""
    st = settings or Settings()
    key = ["account_id", "venue", "instrument_id"]
    ip, ep = _agg_positions(internal, st), _agg_positions(external, st)
    m = ip.merge(ep, on=key, how="outer", suffixes=("_i", "_e"), indicator=True)
    both = (m["_merge"] == "both").to_numpy()
    qi, qe = m["quantity_i"].to_numpy(float), m["quantity_e"].to_numpy(float)
    pi, pe = m["price_i"].to_numpy(float), m["price_e"].to_numpy(float)
    qa, qr = st.tolerance("quantity", m["venue"])
    pa, pr = st.tolerance("price", m["venue"])
    q_ok = both & _within(qi, qe, qa, qr)
    opposite = both & ~q_ok & (np.sign(qi) * np.sign(qe) < 0)
    priced = both & np.isfinite(pi) & np.isfinite(pe)
    p_ok = ~priced | _within(pi, pe, pa, pr) | (not st.compare_prices)
    btype = np.select(
        [(m["_merge"] == "right_only").to_numpy(), (m["_merge"] == "left_only").to_numpy(), opposite,
         both & ~q_ok, both & q_ok & ~p_ok],
        ["missing_internal", "missing_external", "side_mismatch", "quantity_mismatch", "price_mismatch"], "")
    column = np.where(btype == "price_mismatch", "price", "quantity")
    diff = np.where(column == "price", pi - pe, np.nan_to_num(qi) - np.nan_to_num(qe))
    tol = np.where(column == "price", pa + pr * np.abs(pe), qa + qr * np.abs(np.nan_to_num(qe)))
    pos_breaks = pd.DataFrame({
        "table": "positions", "break_type": btype, "account_id": m["account_id"], "venue": m["venue"],
        "instrument_id": m["instrument_id"], "asset": None, "column": column, "internal_quantity": qi,
        "external_quantity": qe, "internal_price": pi, "external_price": pe, "internal_amount": np.nan,
        "external_amount": np.nan, "difference": diff, "tolerance": tol, "detail": ""})
    pos_breaks = pos_breaks[btype != ""]
    unmapped = []
    for side, where in ((internal, "internal"), (external, "external")):
        u = side.unmapped
        if len(u):
            g = u.groupby(["account_id", "venue", "symbol"], sort=True).size().reset_index(name="records")
            unmapped.append(pd.DataFrame({
                "table": "positions", "break_type": "unmapped_symbol", "account_id": g["account_id"],
                "venue": g["venue"], "instrument_id": g["symbol"], "asset": None, "column": "instrument_id",
                "internal_quantity": np.nan, "external_quantity": np.nan, "internal_price": np.nan,
                "external_price": np.nan, "internal_amount": np.nan, "external_amount": np.nan,
                "difference": np.nan, "tolerance": np.nan,
                "detail": f"the {where} side could not map this symbol (" + g["records"].astype(str) + " record(s))"}))

    bkey = ["account_id", "venue", "asset"]
    ib, eb = _agg_balances(internal, st), _agg_balances(external, st)
    c = ib.merge(eb, on=bkey, how="outer", suffixes=("_i", "_e"), indicator=True)
    cboth = (c["_merge"] == "both").to_numpy()
    ai, ae = c["amount_i"].to_numpy(float), c["amount_e"].to_numpy(float)
    aa, ar = st.tolerance("amount", c["venue"])
    a_ok = cboth & _within(ai, ae, aa, ar)
    ctype = np.select([(c["_merge"] == "right_only").to_numpy(), (c["_merge"] == "left_only").to_numpy(),
                       cboth & ~a_ok], ["missing_internal", "missing_external", "amount_mismatch"], "")
    coll_breaks = pd.DataFrame({
        "table": "balances", "break_type": ctype, "account_id": c["account_id"], "venue": c["venue"],
        "instrument_id": None, "asset": c["asset"], "column": "amount", "internal_quantity": np.nan,
        "external_quantity": np.nan, "internal_price": np.nan, "external_price": np.nan, "internal_amount": ai,
        "external_amount": ae, "difference": np.nan_to_num(ai) - np.nan_to_num(ae),
        "tolerance": aa + ar * np.abs(np.nan_to_num(ae)), "detail": ""})
    coll_breaks = coll_breaks[ctype != ""]

    parts = [p for p in [pos_breaks, *unmapped, coll_breaks] if len(p)]
    breaks = (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=BREAK_COLUMNS))[BREAK_COLUMNS]
    for col in ("table", "break_type", "account_id", "venue", "instrument_id", "asset", "column", "detail"):
        breaks[col] = breaks[col].astype(object)
    for col in BREAK_COLUMNS[7:15]:
        breaks[col] = breaks[col].astype(np.float64)
    n_unmapped = sum(len(u) for u in unmapped)
    compared = {"positions": int(len(m) + n_unmapped), "balances": int(len(c))}
    n_pos_breaks = int(len(pos_breaks) + n_unmapped)
    matched = {"positions": compared["positions"] - n_pos_breaks, "balances": compared["balances"] - int(len(coll_breaks))}
    by_type = {str(k): int(v) for k, v in breaks["break_type"].value_counts().sort_index().items()}
    by_venue = {str(k): int(v) for k, v in breaks["venue"].fillna("").value_counts().sort_index().items()}
    by_tv = {(str(t), str(v)): int(n) for (t, v), n in
             breaks.assign(venue=breaks["venue"].fillna("")).groupby(["break_type", "venue"]).size().items()}
    summary = {
        "internal": {"label": internal.label, **internal.info},
        "external": {"label": external.label, **external.info},
        "compared": compared, "matched": matched, "breaks": int(len(breaks)),
        "breaks_by_table": {"positions": n_pos_breaks, "balances": int(len(coll_breaks))},
        "breaks_by_type": by_type, "breaks_by_venue": by_venue,
        "breaks_by_type_and_venue": {f"{t}/{v}": n for (t, v), n in sorted(by_tv.items())},
        "max_breaks": int(st.max_breaks), "failed": bool(len(breaks) > st.max_breaks),
        "tolerances": {k: {"abs": t.abs, "rel": t.rel} for k, t in {**DEFAULT_TOLERANCES, **st.tolerances}.items()},
        "venue_tolerances": {v: {k: {"abs": t.abs, "rel": t.rel} for k, t in cols.items()}
                             for v, cols in st.venues.items()},
        "compare_prices": bool(st.compare_prices),
        "_by_type_venue": by_tv,
    }
    summary["status"] = "failed" if summary["failed"] else ("breaks" if len(breaks) else "reconciled")
    return Reconciliation(breaks=breaks.reset_index(drop=True), summary=summary)


def write_outputs(rec: Reconciliation, out) -> dict[str, Path]:
    """Write ``breaks.parquet`` and ``summary.json`` into folder ``out`` (atomically); their paths."""
    from .fileio import write_json, write_parquet

    out = Path(out)
    summary = {k: v for k, v in rec.summary.items() if not k.startswith("_")}
    write_parquet(rec.breaks, out / "breaks.parquet")
    write_json(summary, out / "summary.json")
    return {"breaks": out / "breaks.parquet", "summary": out / "summary.json"}


# ----------------------------------------------------------------------------- before a margin run


def pre_run_check(job, book_path) -> Reconciliation | None:
    """The job's ``[reconcile]`` option: reconcile the run's book (``book_path``) against the job's external
    sources. None when the job has no ``[reconcile]`` table. The caller stops the batch when
    ``job.reconcile.on_break == "stop"`` and ``result.failed``, raises ``result.alerts()`` either way.
    """
    cfg = getattr(job, "reconcile", None)
    if cfg is None:
        return None
    try:
        internal = load_side(book_path, label="book")
        external = load_side(list(cfg.external), fmt=cfg.format, venue=cfg.venue, account=cfg.account,
                             mapping=cfg.mapping, market=list(cfg.market), label="external")
    except GpuriskError as exc:
        raise ReconcileError(f"reconciliation before the run: {exc}") from None
    return reconcile(internal, external, cfg.settings)


__all__ = ["BREAK_TYPES", "POSITION_BREAKS", "COLLATERAL_BREAKS", "BREAK_COLUMNS", "BREAKS_EXIT", "DEFAULT_TOLERANCES",
           "ReconcileError", "Tolerance", "Settings", "Side", "Reconciliation", "parse_tolerance", "side_from_tables",
           "load_side", "reconcile", "write_outputs", "pre_run_check"]
