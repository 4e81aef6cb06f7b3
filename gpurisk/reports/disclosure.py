"""Public quantitative disclosure tables in the style of CPMI-IOSCO's PQD (2015) and a CSV of them.

Rows: ``item`` (the PQD field number where a CCP's own publication confirms it: 6.4.5, the IM model's
target confidence), ``item_reconstructed`` (the reference's reconstruction of the numbering, not checked
against the standard's text: 4.1 resources, 4.4 stress results, 6.1 total IM, 6.3 model type, 6.4.x
parameters, 6.5.x backtests), ``section``, ``description``, ``value``, ``unit`` and ``source`` (the run file
the figure comes from). A figure whose source run was not given is a row saying so, never a blank.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..fileio import write_csv

COLUMNS = ["item", "item_reconstructed", "section", "description", "value", "unit", "source"]
#: the backtest summary columns the disclosure reads (issue "Backtesting and calibration": summary.parquet)
BACKTEST_COLUMNS = ("n_obs", "n_exceptions", "coverage", "max_exceedance")


def read_backtest(folder) -> pd.DataFrame:
    """A backtest run's ``summary.parquet`` (one row per portfolio and a ``pooled`` row); ReportError if unusable."""
    from .page import ReportError

    folder = Path(folder)
    path = folder / "summary.parquet"
    if not (folder / "daily.parquet").is_file() or not path.is_file():
        raise ReportError(f"{folder}: not a backtest run folder (expected daily.parquet and summary.parquet)")
    df = pd.read_parquet(path)
    missing = [c for c in ("portfolio",) + BACKTEST_COLUMNS if c not in df.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _row(section, description, value, unit, source, item="", rec=""):
    return {"item": item, "item_reconstructed": rec, "section": section, "description": description,
            "value": value, "unit": unit, "source": source}


def pqd_table(*, stress: dict | None = None, im_totals: pd.DataFrame | None = None, params: dict | None = None,
              backtest: pd.DataFrame | None = None, sources: dict | None = None) -> pd.DataFrame:
    """The disclosure rows from what was given.

    stress: a stress run's summary.json; im_totals: columns ``model, venue, im_usd``; params: the house
    model's ``confidence, horizon_days, lookback_days`` (and ``model_type``); backtest: ``read_backtest``'s
    table; sources: {kind: file name} shown in ``source``.
    """
    src = sources or {}
    rows = []
    if im_totals is not None and len(im_totals):
        for r in im_totals.itertuples(index=False):  # models × venues: a handful of rows
            rows.append(_row("Initial margin", f"total initial margin required, model {r.model}, venue {r.venue}",
                             float(r.im_usd), "USD", src.get("im", ""), rec="6.1"))
    else:
        rows.append(_row("Initial margin", "total initial margin required", "not available: no margin run given",
                         "", "", rec="6.1"))
    if params:
        rows.append(_row("Initial margin", "initial margin model type",
                         params.get("model_type", "portfolio simulation: expected shortfall over filtered historical, "
                                                  "Monte Carlo and stress scenarios"), "", src.get("params", ""),
                         rec="6.3"))
        rows.append(_row("Initial margin", "IM model target confidence level", 100.0 * float(params["confidence"]),
                         "%", src.get("params", ""), item="6.4.5", rec="6.4.5"))
        rows.append(_row("Initial margin", "look-back period of the historical scenarios",
                         int(params["lookback_days"]), "days", src.get("params", ""), rec="6.4.x"))
        rows.append(_row("Initial margin", "margin period of risk (liquidation horizon)",
                         float(params["horizon_days"]), "days", src.get("params", ""), rec="6.4.x"))
    else:
        rows.append(_row("Initial margin", "IM model parameters", "not available: no margin or stress run given", "",
                         "", rec="6.4.x"))
    if stress is not None:
        res = (stress.get("resources") or {}).get("default_fund_usd")
        rows.append(_row("Default resources", "prefunded default resources used in the stress test",
                         res if res is not None else "not configured", "USD" if res is not None else "",
                         src.get("stress", ""), rec="4.1"))
        for key, who in (("cover1", "one participant group (with its affiliates)"),
                         ("cover2", "any two participant groups (with their affiliates)")):
            c = stress.get(key) or {}
            rows.append(_row("Stress testing", f"largest stress loss in excess of initial margin and collateral: {who}, "
                             f"worst scenario {c.get('scenario_id', '')}", float(c.get("usd", 0.0)), "USD",
                             src.get("stress", ""), rec="4.4"))
        rows.append(_row("Stress testing", "stress scenarios run", int(stress.get("scenarios", 0)), "scenarios",
                         src.get("stress", ""), rec="4.4"))
    else:
        rows.append(_row("Stress testing", "largest stress loss in excess of margin (Cover-1, Cover-2)",
                         "not available: no stress run given", "", "", rec="4.4"))
    if backtest is not None and len(backtest):
        pooled = backtest[backtest["portfolio"].astype(str) == "pooled"]
        r = pooled.iloc[0] if len(pooled) else backtest.iloc[0]
        for col, desc, unit in (("n_obs", "backtest observations", "observations"),
                                ("n_exceptions", "backtest exceptions (loss above the margin held)", "exceptions"),
                                ("coverage", "achieved coverage", "1"),
                                ("max_exceedance", "largest exceedance", "USD")):
            v = r[col]
            rows.append(_row("Backtesting", f"{desc} ({'pooled' if len(pooled) else r['portfolio']})",
                             float(v) if col in ("coverage", "max_exceedance") else int(v), unit,
                             src.get("backtest", ""), rec="6.5.x"))
    else:
        rows.append(_row("Backtesting", "backtest results (observations, exceptions, coverage, largest exceedance)",
                         "not available: no backtest run given (gpurisk report --backtest DIR)", "", "", rec="6.5.x"))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_pqd_csv(table: pd.DataFrame, path) -> Path:
    """The disclosure rows as CSV (values as text, so a 'not available' row and a number share the column)."""
    out = table.copy()
    out["value"] = out["value"].map(lambda v: repr(v) if isinstance(v, float) else str(v))
    return write_csv(out, Path(path))


__all__ = ["COLUMNS", "BACKTEST_COLUMNS", "read_backtest", "pqd_table", "write_pqd_csv"]
