"""The intraday margin report: read a finished margin run and lay it out.

A run folder of ``gpurisk run`` (``manifest.json``, ``<label>/margin.parquet``, ``<label>/summary.json``,
``rejects.parquet``) or of ``gpurisk margin --out DIR`` (``margin.parquet`` and ``summary.json`` in DIR).
Sections: totals by model and venue, the change against the previous run of the same job (the latest
earlier run folder beside this one whose manifest says ``succeeded``, or ``--previous``), the largest
accounts and what drives their IM, calls by status with amounts, the deficits the venues' own
methodologies predict, the cross-margin benefit, backend and timings, rejects, and the disclosure tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import plots
from .disclosure import pqd_table
from .page import ReportError, Section, figure, fmt_pct, fmt_usd
from .stress import add_disclosure

#: accounts listed as the largest, deficits listed, reject rows listed
TOP_ACCOUNTS, TOP_DEFICITS, REJECT_ROWS = 20, 20, 50
#: the house margin columns that explain an IM, in order, when present
DRIVERS = ("base_component", "es_99", "es_99_historical", "es_99_montecarlo", "es_99_user", "stress_charge",
           "apc_buffer", "liquidity_addon", "floor", "cross_margin_benefit")


def is_margin_run(folder: Path) -> bool:
    if (folder / "manifest.json").is_file():
        return any((d / "margin.parquet").is_file() for d in folder.iterdir() if d.is_dir())
    return (folder / "margin.parquet").is_file() and (folder / "summary.json").is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: unreadable ({exc})") from None


def _frame(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(object)
    return df


def load(folder) -> dict:
    """{folder, manifest, models: {label: {margin, summary, tables}}, rejects}."""
    folder = Path(folder)
    models = {}
    if (folder / "manifest.json").is_file():
        man = _read_json(folder / "manifest.json")
        dirs = sorted(d for d in folder.iterdir() if d.is_dir() and (d / "margin.parquet").is_file())
    else:
        s = _read_json(folder / "summary.json")
        man = {"run_id": folder.name, "job": s.get("command", "margin"), "status": "succeeded",
               "timings": {k: v for k, v in s.items() if k.endswith("_s") and isinstance(v, (int, float))},
               "models": {s.get("model", "model"): {}}}
        dirs = [folder]
    for d in dirs:
        label = d.name if d != folder else str(next(iter(man["models"])))
        models[label] = {"margin": _frame(d / "margin.parquet"),
                         "summary": _read_json(d / "summary.json") if (d / "summary.json").is_file() else {},
                         "tables": {p.stem: p for p in d.glob("*.parquet") if p.stem != "margin"}}
    rej = folder / "rejects.parquet"
    return {"folder": folder, "manifest": man, "models": models, "rejects": _frame(rej) if rej.is_file() else None}


def previous_run(folder: Path, manifest: dict) -> Path | None:
    """The latest run folder beside ``folder`` of the same job, earlier by name, that succeeded."""
    parent = folder.parent
    best = None
    for d in sorted(parent.iterdir()):  # run folders of one output folder
        if d == folder or not d.is_dir() or d.name >= folder.name or not (d / "manifest.json").is_file():
            continue
        try:
            m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if m.get("job") == manifest.get("job") and m.get("status") == "succeeded":
            best = d
    return best


def totals(models: dict) -> pd.DataFrame:
    """model, venue, rows, im_usd, mm_usd, equity_usd, excess_usd, deficits, deficit_usd (uncovered rows left out)."""
    parts = []
    for label, m in models.items():
        df = m["margin"]
        df = df[df["status"].astype(str) != "uncovered"]
        g = df.groupby(df["venue"].astype(str), sort=True)
        t = g[["im_usd", "mm_usd", "equity_usd", "excess_usd"]].sum()
        t["rows"] = g.size()
        t["deficits"] = g["excess_usd"].agg(lambda x: int((x < 0).sum()))
        t["deficit_usd"] = g["excess_usd"].agg(lambda x: float(-x[x < 0].sum()) + 0.0)  # no "-0"
        parts.append(t.reset_index().assign(model=label))
    cols = ["model", "venue", "rows", "im_usd", "mm_usd", "equity_usd", "excess_usd", "deficits", "deficit_usd"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def sections(run: dict, previous: dict | None = None, stress_summary: dict | None = None,
             backtest: pd.DataFrame | None = None) -> tuple[list[Section], pd.DataFrame]:
    """The report's sections and its disclosure rows."""
    man, models = run["manifest"], run["models"]
    tot = totals(models)
    out = []

    sec = Section("totals", "Totals by model and venue")
    items = [figure(f"IM {r.model} / {r.venue} (USD)", f"im_usd:{r.model}:{r.venue}", float(r.im_usd))
             for r in tot.itertuples(index=False)]
    n_acc = max((int(m["margin"]["account_id"].nunique()) for m in models.values()), default=0)
    items.append(figure("Accounts", "accounts", n_acc, text=f"{n_acc:,}"))
    n_rej = 0 if run["rejects"] is None else len(run["rejects"])
    items.append(figure("Rejected input rows", "rejects", n_rej, text=f"{n_rej:,}"))
    sec.figures(items)
    sec.table(tot, "totals-table", {"model": "model", "venue": "venue", "rows": "rows", "im_usd": "IM (USD)",
                                    "mm_usd": "MM (USD)", "equity_usd": "equity (USD)", "excess_usd": "excess (USD)",
                                    "deficits": "deficits", "deficit_usd": "deficit (USD)"},
              formats={c: fmt_usd for c in ("im_usd", "mm_usd", "equity_usd", "excess_usd", "deficit_usd")})
    if len(tot):
        sec.svg(plots.bars(tot["model"] + " / " + tot["venue"], tot["im_usd"], "Initial margin by model and venue"))
    out.append(sec)

    sec = Section("change", "Change against the previous run")
    if previous is None:
        sec.text("No earlier successful run of this job beside this one (or none given with --previous).", note=True)
    else:
        prev = totals(previous["models"])[["model", "venue", "im_usd"]].rename(columns={"im_usd": "previous_im_usd"})
        ch = tot[["model", "venue", "im_usd"]].merge(prev, on=["model", "venue"], how="outer")
        ch["change_usd"] = ch["im_usd"] - ch["previous_im_usd"]
        ch["change_pct"] = 100.0 * ch["change_usd"] / ch["previous_im_usd"].where(ch["previous_im_usd"] != 0)
        sec.text(f"Against run {previous['folder'].name} ({previous['manifest'].get('finished', '')}).")
        sec.table(ch, "change-table", {"model": "model", "venue": "venue", "im_usd": "IM now (USD)",
                                       "previous_im_usd": "IM before (USD)", "change_usd": "change (USD)",
                                       "change_pct": "change"},
                  formats={"im_usd": fmt_usd, "previous_im_usd": fmt_usd, "change_usd": fmt_usd, "change_pct": fmt_pct})
    out.append(sec)

    sec = Section("largest", "Largest accounts and their drivers")
    for label, m in models.items():
        df = m["margin"]
        if "base_component" not in df.columns:
            continue
        top = df.sort_values("im_usd", ascending=False, kind="stable").head(TOP_ACCOUNTS)
        cols = {"account_id": "account", "im_usd": "IM (USD)", "equity_usd": "equity (USD)",
                "excess_usd": "excess (USD)", "status": "status"}
        cols.update({c: c for c in DRIVERS if c in df.columns})
        sec.heading(f"model {label}: the {len(top)} largest IMs (base_component: the term that binds)")
        sec.table(top, f"largest-{label}", cols,
                  formats={c: fmt_usd for c in cols if c not in ("account_id", "status", "base_component")})
    out.append(sec)

    sec = Section("calls", "Calls by status")
    rows = []
    for label, m in models.items():
        df = m["margin"]
        g = df.groupby(df["status"].astype(str), sort=True)
        for st, grp in g:
            rows.append({"model": label, "status": st, "rows": int(len(grp)),
                         "call_amount_usd": float(grp["call_amount_usd"].sum())})
    calls = pd.DataFrame(rows, columns=["model", "status", "rows", "call_amount_usd"])
    sec.table(calls, "calls-table", {"model": "model", "status": "status", "rows": "rows",
                                     "call_amount_usd": "call amount (USD)"}, formats={"call_amount_usd": fmt_usd})
    out.append(sec)

    sec = Section("deficits", "Deficits the venues' methodologies predict")
    venue_models = [lab for lab, m in models.items() if "methodology" in m["margin"].columns]
    if not venue_models:
        sec.text("This run has no venue replica model.", note=True)
    for label in venue_models:
        df = models[label]["margin"]
        d = df[df["excess_usd"] < 0]
        by = d.groupby(d["venue"].astype(str), sort=True)["excess_usd"].agg(["size", "sum"]).reset_index()
        by = by.rename(columns={"size": "accounts", "sum": "excess_usd"}).assign(deficit_usd=lambda x: -x["excess_usd"])
        sec.heading(f"model {label}: by venue")
        sec.table(by, f"deficits-{label}", {"venue": "venue", "accounts": "accounts in deficit",
                                            "deficit_usd": "deficit (USD)"}, formats={"deficit_usd": fmt_usd})
        worst = d.sort_values("excess_usd", kind="stable").head(TOP_DEFICITS)
        sec.table(worst, f"deficits-top-{label}", {"account_id": "account", "venue": "venue", "im_usd": "IM (USD)",
                                                   "equity_usd": "equity (USD)", "excess_usd": "excess (USD)",
                                                   "status": "status"},
                  formats={"im_usd": fmt_usd, "equity_usd": fmt_usd, "excess_usd": fmt_usd})
    out.append(sec)

    sec = Section("cross", "Cross-margin benefit")
    found = False
    for label, m in models.items():
        s = m["summary"]
        if "cross_margin_benefit" in s:
            found = True
            sec.figures([figure(f"{label}: standalone IM (USD)", f"standalone_im_usd:{label}",
                                s.get("total_standalone_im")),
                         figure(f"{label}: cross-venue IM (USD)", f"cross_im_usd:{label}", s.get("total_im")),
                         figure(f"{label}: cross-margin benefit (USD)", f"cross_margin_benefit:{label}",
                                s.get("cross_margin_benefit"))])
    if not found:
        sec.text("No model of this run margins across venues.", note=True)
    out.append(sec)

    sec = Section("runtime", "Backend and timings")
    kv = [("run", man.get("run_id", "")), ("job", man.get("job", "")), ("status", man.get("status", "")),
          ("started", man.get("started", "")), ("finished", man.get("finished", "")),
          ("workers", man.get("workers", "")), ("code", json.dumps(man.get("code", {})))]
    kv += [(f"counts.{k}", v) for k, v in sorted((man.get("counts") or {}).items())]
    sec.items("kv", kv)
    tim = pd.DataFrame(sorted((man.get("timings") or {}).items()), columns=["stage", "seconds"])
    sec.table(tim, "timings-table", {"stage": "stage", "seconds": "seconds"},
              formats={"seconds": lambda v: f"{v:.2f}"})
    out.append(sec)

    sec = Section("rejects", "Rejected input rows")
    rj = run["rejects"]
    if rj is None or not len(rj):
        sec.text("No input row was rejected.", note=True)
    else:
        by = rj.groupby(["table", "reason"], sort=True).size().reset_index(name="rows")
        sec.table(by, "rejects-by-reason", {"table": "table", "reason": "reason", "rows": "rows"})
        sec.table(rj.head(REJECT_ROWS), "rejects-table", {c: c for c in ("table", "row", "column", "reason", "message")})
    out.append(sec)

    sec = Section("disclosure", "Public quantitative disclosures (CPMI-IOSCO style)")
    params = None
    for label, m in (man.get("models") or {}).items():
        p = m.get("params") if isinstance(m, dict) else None
        if isinstance(p, dict) and {"confidence", "horizon_days", "lookback_days"} <= set(p):
            params = {k: p[k] for k in ("confidence", "horizon_days", "lookback_days")}
            break
    pqd = pqd_table(stress=stress_summary, im_totals=tot[["model", "venue", "im_usd"]], params=params,
                    backtest=backtest, sources={"im": "<model>/margin.parquet", "params": "manifest.json",
                                                "stress": "stress run summary.json",
                                                "backtest": "summary.parquet (backtest run)"})
    add_disclosure(sec, pqd)
    out.append(sec)
    return out, pqd


def subtitle(run: dict) -> str:
    m = run["manifest"]
    return (f"run {m.get('run_id', run['folder'].name)} of job {m.get('job', '')}, {m.get('status', '')}; "
            f"finished {m.get('finished', '')}")


__all__ = ["is_margin_run", "load", "previous_run", "totals", "sections", "subtitle"]
