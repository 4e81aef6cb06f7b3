"""The stress report: read a finished stress run folder (``gpurisk stress`` / a ``stress`` job) and lay it out.

Headline Cover-1/Cover-2 against the default resources and the alerts, loss per family, the Cover-2 of every
scenario, the loss-over-margin ranking of the groups (anonymised on request: ``group #rank``), heat maps of
scenario × venue and scenario × underlying losses, totals by account kind, reverse stress, sensitivity, the
disclosure tables and every assumption. Nothing is recomputed: every figure is a cell of the run's tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import plots
from .disclosure import pqd_table
from .page import ReportError, Section, figure, fmt_move, fmt_pct, fmt_usd

#: scenarios in a heat map and groups in a ranking
HEATMAP_ROWS, RANKING_ROWS = 25, 50


def is_stress_run(folder: Path) -> bool:
    s = folder / "summary.json"
    if not (s.is_file() and (folder / "cover.parquet").is_file()):
        return False
    try:
        return json.loads(s.read_text(encoding="utf-8")).get("kind") == "stress"
    except ValueError:
        return False


def _read(folder: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    p = folder / f"{name}.parquet"
    if not p.is_file():
        if required:
            raise ReportError(f"{folder}: stress run lacks {name}.parquet")
        return None
    df = pd.read_parquet(p)
    for c in df.columns:  # categorical labels as plain text
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(object)
    return df


def load(folder) -> dict:
    """The stress run's summary and tables (``group_losses`` only for the Cover-1/Cover-2 scenarios)."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    wanted = {summary["cover1"]["scenario_id"], summary["cover2"]["scenario_id"]}
    gl = pd.read_parquet(folder / "group_losses.parquet", filters=[("scenario_id", "in", sorted(wanted))])
    for c in gl.columns:
        if isinstance(gl[c].dtype, pd.CategoricalDtype):
            gl[c] = gl[c].astype(object)
    return {"folder": folder, "summary": summary, "cover": _read(folder, "cover"), "groups": _read(folder, "groups"),
            "totals": _read(folder, "totals"), "reverse": _read(folder, "reverse", False),
            "sensitivity": _read(folder, "sensitivity", False), "scenarios": _read(folder, "scenarios"),
            "group_losses": gl}


def anonymiser(groups: pd.DataFrame, on: bool):
    """A function mapping a group id to what the report shows: itself, or ``group #rank`` when ``on``."""
    if not on:
        return lambda g: g
    names = dict(zip(groups["group_id"].astype(str), "group #" + groups["rank"].astype(str)))
    return lambda g: names.get(str(g), "" if g in ("", None) else "group #?")


def sections(run: dict, anonymise: bool = False, backtest: pd.DataFrame | None = None
             ) -> tuple[list[Section], pd.DataFrame]:
    """The report's sections and its disclosure rows."""
    s, cov, groups, totals = run["summary"], run["cover"], run["groups"], run["totals"]
    anon = anonymiser(groups, anonymise)
    res = s["resources"]["default_fund_usd"]
    out = []

    # ---- headline
    head = Section("headline", "Cover-1 and Cover-2 against the default resources")
    items = []
    for key, title in (("cover1", "Cover-1"), ("cover2", "Cover-2")):
        c = s[key]
        pct = c.get("pct_of_resources")
        warn_at = s["resources"]["early_warning_pct" if key == "cover1" else "two_largest_pct"]
        lvl = "" if pct is None else ("critical" if pct > 100 else "warning" if pct > warn_at else "")
        items.append(figure(f"{title} (USD)", f"{key}_usd", c["usd"],
                            sub=f"{c['scenario_id']}; groups {', '.join(anon(g) for g in c['groups']) or 'none'}",
                            level=lvl))
        items.append(figure(f"{title} / resources", f"{key}_pct", pct, text=fmt_pct(pct),
                            sub="of the default resources" if pct is not None else "resources not configured"))
    items.append(figure("Default resources (USD)", "default_fund_usd", res,
                        text=fmt_usd(res) if res is not None else "not configured"))
    items.append(figure("House IM (USD)", "house_total_im_usd", s["house"]["total_im_usd"],
                        sub=f"{s['accounts']:,} accounts, {s['groups']:,} groups"))
    head.figures(items)
    r = s["resources"]
    head.text(f"Thresholds: early warning when a group's loss over margin is above {r['early_warning_pct']:g} % of "
              f"the default resources; supplementary margin from each group above {r['group_call_pct']:g} % when the "
              f"two largest (Cover-2) are above {r['two_largest_pct']:g} %.", note=True)
    head.items("alerts", s.get("alerts", []))
    out.append(head)

    # ---- families
    fam = pd.DataFrame([{"family": k, **v} for k, v in s["families"].items()])
    sec = Section("families", "Loss per scenario family")
    if len(fam):
        sec.svg(plots.bars(fam["family"], fam["worst_loss_usd"], "Worst total loss of the book per family",
                           "USD (positive = loss)"))
        sec.table(fam, "families-table", {"family": "family", "scenarios": "scenarios",
                                          "worst_loss_usd": "worst total loss (USD)",
                                          "worst_loss_scenario": "scenario", "cover2_usd": "worst Cover-2 (USD)",
                                          "cover2_scenario": "Cover-2 scenario"},
                  formats={"worst_loss_usd": fmt_usd, "cover2_usd": fmt_usd})
    out.append(sec)

    # ---- cover per scenario
    sec = Section("cover", "Cover-1 and Cover-2 per scenario")
    top = cov.sort_values("cover2_usd", ascending=False, kind="stable").head(20)
    sec.svg(plots.bars(top["scenario_id"], top["cover2_usd"], "Cover-2 of the 20 worst scenarios",
                       reference=res, reference_label="default resources"))
    show = cov.assign(cover1_group=cov["cover1_group"].map(anon), cover2_group_1=cov["cover2_group_1"].map(anon),
                      cover2_group_2=cov["cover2_group_2"].map(anon)).sort_values("cover2_usd", ascending=False,
                                                                                   kind="stable")
    sec.table(show, "cover-table", {"scenario_id": "scenario", "family": "family", "cover1_usd": "Cover-1 (USD)",
                                    "cover1_group": "largest group", "cover2_usd": "Cover-2 (USD)",
                                    "cover2_group_2": "second group", "cover2_pct": "Cover-2 / resources",
                                    "total_loss_usd": "book loss (USD)",
                                    "total_uncovered_usd": "all groups' loss over margin (USD)",
                                    "accounts_uncovered": "accounts short"},
              formats={"cover1_usd": fmt_usd, "cover2_usd": fmt_usd, "cover2_pct": fmt_pct,
                       "total_loss_usd": fmt_usd, "total_uncovered_usd": fmt_usd})
    out.append(sec)

    # ---- ranking
    sec = Section("ranking", "Loss-over-margin ranking of the member groups")
    sid2 = s["cover2"]["scenario_id"]
    gl = run["group_losses"]
    rk = gl[gl["scenario_id"] == sid2].sort_values("rank", kind="stable").head(RANKING_ROWS)
    rk = rk.assign(group=rk["group_id"].map(anon))
    sec.text(f"In the Cover-2 scenario {sid2}: the {len(rk)} groups with the largest loss over margin "
             f"(loss beyond collateral after haircuts; accounts segregated).")
    sec.table(rk, "ranking-table", {"rank": "rank", "group": "group", "accounts": "accounts",
                                    "loss_usd": "loss (USD)", "im_usd": "house IM (USD)",
                                    "equity_usd": "collateral after haircuts (USD)",
                                    "uncovered_usd": "loss over margin (USD)"},
              formats={c: fmt_usd for c in ("loss_usd", "im_usd", "equity_usd", "uncovered_usd")})
    g = groups.head(RANKING_ROWS).assign(group=groups["group_id"].head(RANKING_ROWS).map(anon))
    sec.heading("Worst scenario of each group")
    sec.table(g, "groups-table", {"rank": "rank", "group": "group", "kind": "kind", "accounts": "accounts",
                                  "im_usd": "house IM (USD)", "equity_usd": "collateral after haircuts (USD)",
                                  "worst_uncovered_usd": "worst loss over margin (USD)",
                                  "worst_scenario_id": "worst scenario"},
              formats={c: fmt_usd for c in ("im_usd", "equity_usd", "worst_uncovered_usd")})
    out.append(sec)

    # ---- heat maps and totals
    sec = Section("heatmaps", "Losses by venue, underlying and account kind")
    book_loss = totals[totals["dimension"] == "venue"].groupby("scenario_id", sort=False)["loss_usd"].sum()
    worst = book_loss.sort_values(ascending=False, kind="stable").head(HEATMAP_ROWS).index
    for dim in ("venue", "underlying"):
        t = totals[(totals["dimension"] == dim) & totals["scenario_id"].isin(worst)]
        piv = t.pivot_table(index="scenario_id", columns="key", values="loss_usd", aggfunc="sum").reindex(worst)
        if piv.size:
            sec.svg(plots.heatmap(piv.index, piv.columns, piv.to_numpy(),
                                  f"Loss by {dim}: the {len(piv)} scenarios with the largest book loss"))
    kind = totals[totals["dimension"] == "kind"].pivot_table(index="key", values=["loss_usd", "uncovered_usd"],
                                                             aggfunc="max").reset_index()
    sec.heading("By account kind: the largest loss and loss over margin over the scenarios")
    sec.table(kind, "kind-table", {"key": "kind", "loss_usd": "largest loss (USD)",
                                   "uncovered_usd": "largest loss over margin (USD)"},
              formats={"loss_usd": fmt_usd, "uncovered_usd": fmt_usd})
    out.append(sec)

    # ---- reverse stress
    sec = Section("reverse", "Reverse stress")
    rev = run["reverse"]
    if rev is None:
        sec.text("Reverse stress was not run for this report's run (reverse = false).", note=True)
    else:
        tol = float(rev["tolerance"].iloc[0]) if len(rev) else float("nan")
        sec.text("The smallest move of one coin (or of every coin together) at which Cover-2 exceeds the default "
                 "resources, and at which each of the largest groups' loss exceeds its house IM and its collateral, "
                 f"found by bisection on the engine to a move tolerance of {tol:g}; vols unchanged.")
        rv = rev.assign(group=rev["group_id"].map(lambda g: anon(g) if g else ""))
        sec.table(rv, "reverse-table", {"target": "condition", "group": "group", "driver": "coin",
                                        "direction": "direction", "move": "move", "move_safe": "last safe move",
                                        "threshold_usd": "threshold (USD)", "value_usd": "value at move (USD)",
                                        "found": "found", "note": "note"},
                  formats={"move": fmt_move, "move_safe": fmt_move, "threshold_usd": fmt_usd, "value_usd": fmt_usd})
    for n in s.get("notes", []):
        sec.text(n, note=True)
    out.append(sec)

    # ---- sensitivity
    sec = Section("sensitivity", "Sensitivity of the house IM")
    sens = run["sensitivity"]
    if sens is None:
        sec.text("Sensitivity was not run for this report's run (sensitivity = false).", note=True)
    else:
        sec.svg(plots.bars(sens["label"], sens["total_im_usd"], "Total house IM of the book", "USD"))
        sec.table(sens, "sensitivity-table", {"label": "run", "total_im_usd": "total IM (USD)",
                                              "change_pct": "change vs base", "lookback_days_used": "history used (days)",
                                              "historical_scenarios": "FHS scenarios", "note": "note"},
                  formats={"total_im_usd": fmt_usd, "change_pct": fmt_pct})
    out.append(sec)

    # ---- disclosure
    sec = Section("disclosure", "Public quantitative disclosures (CPMI-IOSCO style)")
    house = s["house"]
    params = {"confidence": house["confidence"], "horizon_days": house["mpor_days"],
              "lookback_days": house["lookback_days"]}
    im = pd.DataFrame({"model": ["house"], "venue": ["ALL"], "im_usd": [house["total_im_usd"]]})
    pqd = pqd_table(stress=s, im_totals=im, params=params, backtest=backtest,
                    sources={"stress": "summary.json", "im": "account_losses.parquet (im_usd)",
                             "params": "summary.json (house)", "backtest": "summary.parquet (backtest run)"})
    add_disclosure(sec, pqd)
    out.append(sec)

    # ---- assumptions and scenarios
    sec = Section("assumptions", "Scenarios, sources and assumptions")
    sec.items("list", s.get("assumptions", []))
    sets = pd.DataFrame(s.get("sets", []))
    if len(sets):
        sec.table(sets, "sets-table", {c: c for c in ("family", "n_scenarios", "horizon_days", "source") if c in sets})
    labels = run["scenarios"].drop_duplicates("scenario_id")
    sec.heading("Every scenario")
    sec.table(labels, "scenarios-table", {"scenario_id": "scenario", "family": "family", "label": "label"})
    out.append(sec)
    return out, pqd


def add_disclosure(sec: Section, pqd: pd.DataFrame) -> None:
    sec.text("Item numbers: 'item' only where a CCP's published disclosure confirms the field (6.4.5); "
             "'reconstructed' numbering is not verified against the standard's text. The CSV next to this "
             "report holds the same rows.", note=True)
    show = pqd.assign(value=pqd["value"].map(lambda v: fmt_usd(v) if isinstance(v, float) and abs(v) >= 1000
                                             else (f"{v:g}" if isinstance(v, float) else str(v))))
    sec.table(show, "pqd-table", {"item": "item", "item_reconstructed": "reconstructed", "section": "section",
                                  "description": "description", "value": "value", "unit": "unit",
                                  "source": "source"}, page_size=0)


def subtitle(s: dict, folder: Path) -> str:
    return (f"book as of {s['as_of']}; {s['accounts']:,} accounts in {s['groups']:,} groups; {s['scenarios']:,} "
            f"scenarios; backend {s.get('backend', '')}; run folder {folder.name}")


__all__ = ["is_stress_run", "load", "sections", "subtitle", "anonymiser", "add_disclosure"]
