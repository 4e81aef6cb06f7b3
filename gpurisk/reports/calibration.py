"""The calibration report: a calibration run folder (``calibration.parquet``, ``summaries.parquet``, ``fits.json``,
``summary.json``) laid out: the frontier of coverage against cost against procyclicality, every set's scores,
the proposed parameters, and the JAX fits (Student-t, GARCH-t, the adaptive filter against EWMA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .page import ReportError, Section, figure, render


def is_calibration_run(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / "calibration.parquet").is_file() and (folder / "summary.json").is_file()


def load(folder) -> dict:
    folder = Path(folder)
    if not is_calibration_run(folder):
        raise ReportError(f"{folder}: not a calibration run folder (expected calibration.parquet and summary.json)")
    fits = folder / "fits.json"
    return {"folder": folder, "table": pd.read_parquet(folder / "calibration.parquet"),
            "summary": json.loads((folder / "summary.json").read_text(encoding="utf-8")),
            "fits": json.loads(fits.read_text(encoding="utf-8")) if fits.is_file() else {}}


def frontier_plot(table: pd.DataFrame) -> str:
    """Cost (mean IM / realised ES) against procyclicality (median 5-day IM increase); marker by coverage."""
    from .plots import _plt, _svg

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ok = table["coverage_ok"].to_numpy(bool)
    x = table["im_over_es_mean"].to_numpy(float)
    y = table["increase_5d"].to_numpy(float)
    ax.scatter(x[~ok], y[~ok], marker="x", color="#b2182b", label="coverage fails")
    ax.scatter(x[ok], y[ok], marker="o", facecolors="none", edgecolors="#2166ac", label="coverage passes")
    fr = table["frontier"].to_numpy(bool)
    if fr.any():
        order = np.argsort(x[fr])
        ax.plot(x[fr][order], y[fr][order], color="#2166ac", linewidth=1, label="frontier")
    prop = table["proposed"].to_numpy(bool)
    if prop.any():
        ax.scatter(x[prop], y[prop], marker="*", s=160, color="#1b7837", label="proposed", zorder=3)
    for xi, yi, s in zip(x, y, table["set"].to_numpy()):
        ax.annotate(str(int(s)), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("cost: mean IM / realised ES of h-day losses (single-coin portfolios)")
    ax.set_ylabel("procyclicality: median largest 5-day IM increase")
    ax.set_title("Calibration frontier", loc="left")
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig)


def sections(run: dict) -> list[Section]:
    t, summ, fits = run["table"], run["summary"], run["fits"]
    out = []
    sec = Section("frontier", "Coverage, cost and procyclicality")
    prop = summ.get("proposal")
    sec.figures([figure("Parameter sets", "sets", int(len(t)), text=f"{len(t)}"),
                 figure("Pass coverage", "coverage_ok", int(t["coverage_ok"].sum()),
                        text=f"{int(t['coverage_ok'].sum())}"),
                 figure("On the frontier", "frontier", int(t["frontier"].sum()), text=f"{int(t['frontier'].sum())}"),
                 figure("Proposed set", "proposal", "" if prop is None else int(prop),
                        text="none" if prop is None else f"{int(prop)}")])
    sec.text(f"Backtests {summ.get('start')}..{summ.get('end')}; {summ.get('scenario_groups')} scenario groups. "
             f"Coverage passes: Kupiec one-sided p ≥ {summ.get('min_kupiec_p')}, no red 250-day window, every "
             f"portfolio green in ≥ {100 * float(summ.get('min_green_share', 0.9)):.0f} % of its windows. Cost limit: "
             f"mean IM ≤ {summ.get('cost_limit')} × realised ES for every single-coin portfolio.")
    sec.svg(frontier_plot(t), "each point a parameter set (its number); lower left is cheaper and steadier")
    cols = {c: c.replace("param.", "") for c in t.columns if c.startswith("param.")}
    cols.update({"set": "set", "n_exceptions": "exceptions", "kupiec_p_one_sided": "Kupiec p (one-sided)",
                 "min_green_share": "min green share", "windows_red": "red windows",
                 "im_over_es_mean": "IM/ES mean", "im_over_es_max": "IM/ES max", "increase_1d": "1-day increase",
                 "increase_5d": "5-day increase", "peak_to_trough": "peak/trough", "mean_im_share": "IM/notional",
                 "coverage_ok": "coverage ok", "cost_ok": "cost ok", "frontier": "frontier", "proposed": "proposed"})
    sec.table(t, "calibration-sets", {k: v for k, v in cols.items() if k in t.columns})
    if summ.get("proposed_changes"):
        sec.heading("Proposed changes")
        sec.items("list", [f"{k.replace('param.', '')} = {v}" for k, v in summ["proposed_changes"].items()])
    out.append(sec)
    if fits:
        sec = Section("fits", "Maximum-likelihood fits (JAX)")
        st = fits.get("student_t")
        if st:
            sec.text(f"Monte Carlo Student-t on standardised returns {st['start']}..{st['end']} "
                     f"({st['observations']} days, {', '.join(st['coins'])}): ν = {st['nu']:.3f} "
                     f"(log-likelihood {st['loglik']:.4f} per day; SciPy check {st['loglik_check_scipy']:.4f}); "
                     f"the current ν = {st['current_dof']:g} with the sample correlation gives "
                     f"{st['loglik_current_dof_sample_corr']:.4f}.")
        g = fits.get("garch")
        if g:
            df = pd.DataFrame([{"coin": c, **{k: (np.nan if v[k] is None else v[k])
                                              for k in ("alpha", "beta", "nu", "persistence", "half_life_days",
                                                        "loglik")}} for c, v in g.items()])
            sec.table(df, "garch-fits", caption="GARCH(1,1)-t per coin (last 4 years of returns)")
        a = fits.get("adaptive")
        if a:
            sec.text(f"Adaptive filter against EWMA (λ {a['ewma_lambda']:g}) out of sample, {a['start']}..{a['end']}, "
                     f"refits every {a['refit_days']} days: log-likelihood {a['total']['adaptive']:.1f} against "
                     f"{a['total']['ewma']:.1f} (GARCH-t alone {a['total']['garch_t']:.1f}): the adaptive filter "
                     f"{'beats' if a['adaptive_beats_ewma'] else 'does not beat'} the EWMA filter.")
            df = pd.DataFrame([{"coin": c, "ewma": v["ewma"], "adaptive": v["adaptive"], "garch_t": v["garch_t"],
                                "adaptive − ewma": v["adaptive_minus_ewma"], "days": v["days"],
                                "choices": ", ".join(f"{k} {n}" for k, n in v["choices"].items())}
                               for c, v in a["per_coin"].items()])
            sec.table(df, "adaptive-filter")
        out.append(sec)
    return out


def write_calibration_report(run_dir, out) -> Path:
    """Write the calibration report of ``run_dir`` to ``out`` (one self-contained HTML page)."""
    from ..fileio import write_text

    run = load(run_dir)
    html = render("Calibration report", f"calibration run folder {Path(run_dir).name}", sections(run))
    return write_text(html, Path(out))


__all__ = ["is_calibration_run", "load", "sections", "frontier_plot", "write_calibration_report"]
