"""The end-of-run text a person reads (``gpurisk run``, ``gpurisk schedule``); the runner only reports.

Progress while a run works is shown by the caller through ``run_job(..., on_chunk=...)``.
"""

from __future__ import annotations


def _usd(x) -> str:
    return "n/a" if x is None else f"{float(x):,.0f}"


def _signed(x) -> str:
    return f"{float(x):+,.0f}"


def format_summary(report) -> str:
    """The short end-of-run table: the book, totals per model, calls, deficits, the change against the
    previous run, the largest accounts, coverage, time per stage and the alerts."""
    c = report.counts
    lines = [
        f"run {report.run_id}: {report.status} in {report.duration_s:.1f} s on {report.workers} worker(s), "
        f"backend {report.backend}",
        f"  output    {report.run_dir}",
        f"  book      as of {report.as_of or 'n/a'}   accounts {c.get('accounts', 0):,}   input rows "
        f"{c.get('input_rows', 0):,}   rejects {c.get('rejects', 0):,}",
        f"  chunks    {c.get('chunks_total', 0)} ({c.get('chunks_resumed', 0)} from checkpoints)   "
        f"GPU fallbacks {c.get('gpu_fallbacks', 0)}",
    ]
    if any(report.total_im.values()):
        lines.append(f"  {'model':<12} {'venue':<12} {'total IM (USD)':>20}")
        for model, by in report.total_im.items():
            for venue, v in by.items():
                lines.append(f"  {model:<12} {venue:<12} {v:>20,.2f}")
    for model, f in report.figures.items():
        parts = [f"equity {_usd(f['total_equity_usd'])}", f"excess {_usd(f['total_excess_usd'])}"]
        if f.get("cross_margin_benefit_usd") is not None:
            parts.append(f"cross-margin benefit {_usd(f['cross_margin_benefit_usd'])}")
        ch = report.changes.get(model)
        if ch:
            pct = "" if ch["change_pct"] is None else f" ({ch['change_pct']:+.1f}%)"
            parts.append(f"IM {_signed(ch['change_usd'])}{pct} vs run {ch['previous_run']}")
        lines.append(f"  {model} (USD): " + ", ".join(parts))
        calls = {s: n for s, n in (report.calls.get(model) or {}).items() if n and s != "ok"}
        if calls:
            lines.append(f"  calls {model}: " + ", ".join(f"{s} {n:,}" for s, n in calls.items())
                         + f"; call amount {_usd(f['total_call_amount_usd'])} USD")
        if f.get("deficits"):
            lines.append(f"  deficits {model}: {f['deficits']:,} {f.get('rows_are', 'row')}(s) with equity below "
                         f"their requirement, {_usd(f['total_deficit_usd'])} USD short in all")
        if f.get("uncovered_pairs"):
            lines.append(f"  uncovered {model}: {f['uncovered_pairs']:,} account × venue pair(s) at venue(s) "
                         f"{', '.join(f.get('uncovered_venues') or []) or '?'} without a methodology (not margined)")
        top = f.get("largest_accounts") or []
        if top:
            lines.append(f"  largest {model}: " + "; ".join(
                f"{a['account_id']}" + (f"@{a['venue']}" if a["venue"] != "ALL" else "")
                + f" IM {_usd(a['im_usd'])} excess {_usd(a['excess_usd'])}" for a in top))
    for model, cov in report.coverage.items():
        if cov.get("expected") is None:
            lines.append(f"  coverage {model}: {cov.get('error', 'unchecked')}")
        else:
            lines.append(f"  coverage {model}: {cov['covered']:,}/{cov['expected']:,} {'×'.join(cov['key'])}"
                         + ("" if cov["complete"] else f", {cov['missing']:,} MISSING"))
    if report.timings:
        lines.append("  stages    " + "  ".join(f"{k} {v:.2f}s" for k, v in report.timings.items()))
    if report.alerts:
        lines.append("  alerts    " + "; ".join(a["message"] for a in report.alerts))
    if report.error:
        lines.append(f"  error     {report.error}")
    return "\n".join(lines)


__all__ = ["format_summary"]
