"""The backtest report: a backtest run folder (``daily.parquet`` + ``summary.parquet``, the layout of the
"Backtesting and calibration" issue) laid out: the statistics per portfolio and pooled, the IM against the
realised losses over time, and the backtest rows of the disclosure tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import plots
from .disclosure import pqd_table, read_backtest
from .page import Section, figure
from .stress import add_disclosure


def is_backtest_run(folder: Path) -> bool:
    return (folder / "daily.parquet").is_file() and (folder / "summary.parquet").is_file()


def load(folder) -> dict:
    folder = Path(folder)
    return {"folder": folder, "summary": read_backtest(folder), "daily": pd.read_parquet(folder / "daily.parquet")}


def sections(run: dict) -> tuple[list[Section], pd.DataFrame]:
    summ, daily = run["summary"], run["daily"]
    out = []
    sec = Section("backtest", "Backtest statistics")
    pooled = summ[summ["portfolio"].astype(str) == "pooled"]
    r = pooled.iloc[0] if len(pooled) else summ.iloc[0]
    sec.figures([figure("Observations", "n_obs", int(r["n_obs"]), text=f"{int(r['n_obs']):,}"),
                 figure("Exceptions", "n_exceptions", int(r["n_exceptions"]), text=f"{int(r['n_exceptions']):,}"),
                 figure("Coverage", "coverage", float(r["coverage"]), text=f"{100 * float(r['coverage']):.2f} %"),
                 figure("Largest exceedance (USD)", "max_exceedance", float(r["max_exceedance"]))])
    sec.table(summ, "backtest-summary", {c: c for c in summ.columns})
    if {"date", "im", "pnl"} <= set(daily.columns) and len(daily):
        by = daily.groupby("date", sort=True)[["im", "pnl"]].sum()
        sec.svg(plots.lines(by.index, {"IM held": by["im"], "realised loss": -by["pnl"]},
                            "IM against the realised loss, all portfolios"))
    out.append(sec)
    if {"apc_buffer", "base", "date", "portfolio"} <= set(daily.columns) and len(daily):
        out.append(apc_section(summ, daily))
    sec = Section("disclosure", "Public quantitative disclosures (CPMI-IOSCO style)")
    pqd = pqd_table(backtest=summ, sources={"backtest": "summary.parquet"})
    add_disclosure(sec, pqd)
    out.append(sec)
    return out, pqd


def apc_section(summ: pd.DataFrame, daily: pd.DataFrame) -> Section:
    """What the anti-procyclicality buffer did: its rate (buffer / base) and how often it was released, the IM with and
    without it over time, and the procyclicality measures per portfolio (from the house model's daily parts)."""
    sec = Section("apc", "Anti-procyclicality")
    has = daily["base"] > 0
    rate = (daily["apc_buffer"] / daily["base"]).where(has)
    full = float(rate.max()) if rate.notna().any() else 0.0
    released = rate < full - 1e-12
    sec.figures([figure("Mean buffer rate", "apc_rate_mean", float(rate.mean()),
                        text=f"{100 * float(rate.mean()):.1f} %"),
                 figure("Rows with the buffer (partly) released", "apc_released_share", float(released[has].mean()),
                        text=f"{100 * float(released[has].mean()):.1f} %")])
    by = daily.groupby("date", sort=True)[["im", "apc_buffer"]].sum()
    sec.svg(plots.lines(by.index, {"IM held": by["im"], "IM without the APC buffer": by["im"] - by["apc_buffer"]},
                        "The buffer over time, all portfolios"))
    per = daily.assign(rate=rate, released=released).groupby("portfolio", sort=True).agg(
        buffer_rate=("rate", "mean"), released_share=("released", "mean"))
    cols = [c for c in ("peak_to_trough", "increase_1d", "increase_5d", "increase_10d", "im_to_floor_mean")
            if c in summ.columns]
    if cols:
        per = per.join(summ.set_index(summ["portfolio"].astype(str))[cols], how="left")
    per = per.reset_index()
    sec.table(per, "apc-portfolios", {c: c.replace("_", " ") for c in per.columns})
    return sec


def subtitle(run: dict) -> str:
    return f"backtest run folder {run['folder'].name}"


__all__ = ["is_backtest_run", "load", "sections", "apc_section", "subtitle"]
