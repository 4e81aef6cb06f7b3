"""What a run reports: each model's figures and coverage, and the run-level summary.

Everything here reads the models' standard columns (``gpurisk.margin.plan``) through
``MarginResult.totals()`` and ``module.coverage(plan)``; nothing guesses a column name. All
amounts are USD. A model's own summary adds what only it knows, under documented keys:
``history_date`` and ``cross_margin_benefit`` (house), ``uncovered_venues`` (venue).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..margin.plan import ALL_VENUES, UNCOVERED, MarginResult

#: accounts listed as the largest by IM, per model
LARGEST = 5
#: examples of missing keys named in the manifest and the error
COVERAGE_EXAMPLES = 5


def model_figures(result: MarginResult) -> dict:
    """A model's run-level figures (USD): totals, calls, deficits, uncovered pairs, largest accounts.

    ``deficits`` counts rows whose equity is below their IM (for the venue model: account × venue
    pairs short of the venue's own predicted requirement), ``total_deficit_usd`` their shortfall.
    """
    t = result.totals()
    m = result.margin
    cov = m[m["status"] != UNCOVERED] if len(m) else m
    cols = ["account_id", "venue", "im_usd", "equity_usd", "excess_usd", "status", "call_amount_usd"]
    top = cov.nlargest(LARGEST, "im_usd", keep="first")[cols] if len(cov) else pd.DataFrame(columns=cols)
    s = result.summary or {}
    benefit = s.get("cross_margin_benefit")
    return {
        "currency": "USD",
        "rows": t["rows"],
        "rows_are": "account" if not len(m) or (m["venue"].astype(str) == ALL_VENUES).all() else "account × venue pair",
        "accounts": t["accounts"],
        "total_im_usd": t["total_im_usd"],
        "total_mm_usd": t["total_mm_usd"],
        "total_equity_usd": t["total_equity_usd"],
        "total_excess_usd": t["total_excess_usd"],
        "im_usd_by_venue": t["im_usd"],
        "status": t["status"],
        "calls": int(sum(n for k, n in t["status"].items() if k != "ok")),
        "total_call_amount_usd": t["total_call_amount_usd"],
        "deficits": t["deficits"],
        "total_deficit_usd": t["total_deficit_usd"],
        "uncovered_pairs": t["uncovered"],
        "uncovered_venues": [str(v) for v in s.get("uncovered_venues", [])],
        "cross_margin_benefit_usd": None if benefit is None else float(benefit),
        "history_date": s.get("history_date"),
        "largest_accounts": [
            {k: (str(v) if k in ("account_id", "venue", "status") else float(v)) for k, v in row.items()}
            for row in top.to_dict("records")
        ],
    }


def change(figures: dict[str, dict], previous: dict | None) -> dict[str, dict]:
    """{model label: IM change against the previous successful run of the job} (labels it had).

    ``previous`` is the job's ``last_run-<job>.json``: its ``total_im_usd`` by model (or, from an older
    run, the sum of its ``total_im`` by model and venue).
    """
    if not previous:
        return {}
    out = {}
    prev_total = previous.get("total_im_usd") or {}
    prev_im = previous.get("total_im") or {}
    for label, f in figures.items():
        if label in prev_total:
            was = float(prev_total[label])
        elif label in prev_im:
            was = float(sum(prev_im[label].values()))
        else:
            continue
        now = float(f["total_im_usd"])
        out[label] = {"previous_run": previous.get("run_id"), "previous_total_im_usd": was, "change_usd": now - was,
                      "change_pct": (100.0 * (now / was - 1.0)) if was else None}
    return out


def model_coverage(module, plan, book, res) -> dict:
    """Which key rows a model's ``margin`` table must hold, and how many it does (vectorised).

    The keys are ``module.coverage(plan)`` (a frame of key columns, e.g. account_id × venue).
    Returns ``{key, expected, covered, missing, extra, complete, missing_examples}``;
    ``extra`` counts output keys not in the expected set (reported, not an error).
    """
    want = module.coverage(plan)
    key = list(want.columns)
    df = res.tables.get("margin")
    if df is None or any(c not in df.columns for c in key):
        return {"key": key, "expected": None, "covered": 0, "missing": None, "extra": None, "complete": False,
                "missing_examples": [], "error": f"margin table lacks the key column(s) {key}"}
    kw, kg = _row_codes(want, df, key)
    uw, first = np.unique(kw, return_index=True)
    ug = np.unique(kg)
    has = np.isin(uw, ug)
    miss = np.sort(first[~has])  # first row of each missing key, in the order coverage() lists them
    examples = ["/".join(map(str, r)) for r in want[key].iloc[miss[:COVERAGE_EXAMPLES]].itertuples(index=False,
                                                                                                   name=None)]
    return {"key": key, "expected": int(len(uw)), "covered": int(has.sum()), "missing": int(len(miss)),
            "extra": int(len(ug) - has.sum()), "complete": bool(len(miss) == 0), "missing_examples": examples}


def _row_codes(a: pd.DataFrame, b: pd.DataFrame, key: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One int64 code per row of ``a`` and of ``b`` over the ``key`` columns (as text): equal codes, equal keys."""
    n = len(a)
    code = np.zeros(n + len(b), dtype=np.int64)
    for c in key:
        col = pd.concat([a[c].astype(str), b[c].astype(str)], ignore_index=True)
        codes, uniq = pd.factorize(col)
        code = pd.factorize(code * (len(uniq) + 1) + codes)[0].astype(np.int64)
    return code[:n], code[n:]


def uncovered_alerts(report: dict) -> list[dict]:
    """An ``uncovered_venue`` alert (warning) per model that left venues without a methodology.

    The run still succeeds and writes every table: those account × venue rows carry status
    ``uncovered`` with no figures (docs/operations.md, "Exit status").
    """
    base = {"job": report.get("job"), "run_id": report.get("run_id"), "time": report.get("finished")}
    out = []
    for label, f in sorted((report.get("figures") or {}).items()):
        venues = f.get("uncovered_venues") or []
        if not venues and not f.get("uncovered_pairs"):
            continue
        out.append({**base, "alert": "uncovered_venue", "severity": "warning", "model": label,
                    "venues": venues, "value": int(f.get("uncovered_pairs", 0)),
                    "message": f"{label}: no margin methodology for venue(s) {', '.join(venues) or '?'}: "
                               f"{int(f.get('uncovered_pairs', 0)):,} account × venue pair(s) not margined"})
    return out


def stale_history_alerts(report: dict, results: dict) -> list[dict]:
    """A ``stale_history`` alert (warning) per model that ran on history older than its policy allows
    (``--allow-stale-history``): its outputs are marked ``stale`` (summary and Parquet metadata)."""
    base = {"job": report.get("job"), "run_id": report.get("run_id"), "time": report.get("finished")}
    out = []
    for label, res in sorted(results.items()):
        mh = (getattr(res, "summary", None) or {}).get("market_history") or {}
        if mh.get("stale"):
            out.append({**base, "alert": "stale_history", "severity": "warning", "model": label,
                        "value": mh.get("age_days"),
                        "message": f"{label}: market history ends {mh.get('end')}, {mh.get('age_days')} day(s) before "
                                   f"the book's as-of (limit {mh.get('max_age_days')}); run with "
                                   "--allow-stale-history, outputs marked stale"})
    return out


__all__ = ["LARGEST", "model_figures", "change", "model_coverage", "uncovered_alerts", "stale_history_alerts"]
