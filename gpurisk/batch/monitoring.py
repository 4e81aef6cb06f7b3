"""Run metrics for Prometheus and threshold alerts.

``metrics.prom`` uses the Prometheus text exposition format (``# HELP`` and
``# TYPE`` lines) for the node_exporter textfile collector; it is written
atomically into the run folder and copied to ``OUTPUT/gpurisk_<job>.prom`` (point
the collector's ``--collector.textfile.directory`` at OUTPUT; one file per job, so
jobs sharing an output folder do not overwrite each other's metrics).

Alerts are JSON objects appended to ``OUTPUT/alerts.jsonl`` and, when a webhook
URL is configured, POSTed as JSON (``Content-Type: application/json``) with a
timeout. A failed POST never fails the job: it is logged, recorded in
``alerts.jsonl`` as a ``webhook_failed`` record, marked on the alert
(``delivered: false``) and counted in ``gpurisk_webhook_failures_total``. The
webhook URL is a secret (its token sits in the user-info, path or query): it is
shown and stored only through ``gpurisk.redact`` (scheme, host and port).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from ..config import AlertConfig
from ..fileio import append_line, write_text
from ..redact import redact, redact_url

log = logging.getLogger("gpurisk.batch")

PREFIX = "gpurisk"


@dataclass
class Metric:
    name: str
    help: str
    type: str = "gauge"  # gauge | counter
    samples: list[tuple[dict, float]] = field(default_factory=list)

    def add(self, value: float, **labels) -> "Metric":
        self.samples.append((labels, float(value)))
        return self


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() or abs(x) >= 1e15 else str(int(x))


def exposition(metrics: list[Metric]) -> str:
    """The metrics in Prometheus text format, one ``# HELP``/``# TYPE`` block per name."""
    lines = []
    for m in metrics:
        name = f"{PREFIX}_{m.name}"
        lines.append(f"# HELP {name} {m.help}")
        lines.append(f"# TYPE {name} {m.type}")
        for labels, value in m.samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{lab}}} {_fmt(value)}" if lab else f"{name} {_fmt(value)}")
    return "\n".join(lines) + "\n"


def run_metrics(report: dict) -> list[Metric]:
    """Metrics from a run report (see ``runner.RunReport.as_dict``)."""
    job = report.get("job", "")
    ms = [
        Metric("run_success", "1 if the last run succeeded, else 0").add(1.0 if report["status"] == "succeeded" else 0.0, job=job),
        Metric("run_timestamp_seconds", "Unix time the last run finished").add(report.get("finished_unix", 0.0), job=job),
        Metric("run_duration_seconds", "Wall time of the last run").add(report.get("duration_s", 0.0), job=job),
    ]
    stage = Metric("stage_duration_seconds", "Wall time per stage of the last run")
    for name, sec in sorted((report.get("timings") or {}).items()):
        stage.add(sec, job=job, stage=name)
    ms.append(stage)
    counts = report.get("counts") or {}
    ms.append(Metric("accounts", "Accounts margined in the last run").add(counts.get("accounts", 0), job=job))
    ms.append(Metric("input_rows", "Input rows read (results + rejects)").add(counts.get("input_rows", 0), job=job))
    ms.append(Metric("rejects", "Input rows rejected by validation").add(counts.get("rejects", 0), job=job))
    ms.append(Metric("chunks", "Chunk tasks of the last run by origin")
              .add(counts.get("chunks_computed", 0), job=job, origin="computed")
              .add(counts.get("chunks_resumed", 0), job=job, origin="checkpoint"))
    ms.append(Metric("gpu_fallbacks", "GPU calls that fell back to the CPU in the last run")
              .add(counts.get("gpu_fallbacks", 0), job=job))
    calls = Metric("calls", "Margin calls by model and status")
    for model, by_status in sorted((report.get("calls") or {}).items()):
        for status, n in sorted(by_status.items()):
            calls.add(n, job=job, model=model, status=status)
    ms.append(calls)
    im = Metric("total_im_usd", "Total initial margin by model and venue label, USD")
    for model, by_venue in sorted((report.get("total_im") or {}).items()):
        for venue, v in sorted(by_venue.items()):
            im.add(v, job=job, model=model, venue=venue)
    ms.append(im)
    ms.extend(figure_metrics(report, job))
    ms.append(Metric("webhook_failures_total", "Alert webhook deliveries that failed, over all runs of the job",
                     type="counter").add(report.get("webhook_failures_total", webhook_failures(report)), job=job))
    return ms


#: per-model run figures exported as gauges (``report["figures"]``, ``gpurisk.batch.summary.model_figures``; USD)
FIGURE_METRICS = (
    ("total_equity_usd", "total_equity_usd", "Total equity by model, USD"),
    ("total_excess_usd", "total_excess_usd", "Total excess (equity - IM) by model, USD"),
    ("total_call_amount_usd", "total_call_amount_usd", "Total margin call amount by model, USD"),
    ("deficits", "deficits", "Rows (accounts, or account x venue pairs) with equity below their requirement"),
    ("total_deficit_usd", "total_deficit_usd", "Total shortfall of the rows in deficit by model, USD"),
    ("cross_margin_benefit_usd", "cross_margin_benefit_usd", "Standalone IM minus cross-margined IM, USD"),
    ("uncovered_pairs", "uncovered_pairs", "Account x venue pairs at venues without a margin methodology"),
)


def figure_metrics(report: dict, job: str) -> list[Metric]:
    """The book's as-of, each model's run figures, and its IM change against the previous run."""
    ms = []
    as_of = report.get("as_of")
    if as_of:
        from datetime import datetime

        ts = datetime.fromisoformat(str(as_of).replace("Z", "+00:00")).timestamp()
        ms.append(Metric("book_as_of_timestamp_seconds", "Unix time of the book's as-of in the last run").add(ts, job=job))
    figures = report.get("figures") or {}
    for name, key, help_ in FIGURE_METRICS:
        m = Metric(name, help_)
        for model, f in sorted(figures.items()):
            if f.get(key) is not None:
                m.add(f[key], job=job, model=model)
        if m.samples:
            ms.append(m)
    change = Metric("im_change_usd", "Total IM change against the previous successful run, USD")
    for model, ch in sorted((report.get("changes") or {}).items()):
        change.add(ch["change_usd"], job=job, model=model)
    if change.samples:
        ms.append(change)
    return ms


def webhook_failures(report: dict) -> int:
    """How many of the report's alerts the webhook did not take (``delivered`` false)."""
    return sum(1 for a in report.get("alerts") or () if a.get("delivered") is False)


def previous_counter(path: Path, name: str, job: str) -> float:
    """The value of counter ``gpurisk_<name>{job=...}`` in an earlier metrics file (0 if none or unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 0.0
    pat = re.compile(rf'^{PREFIX}_{re.escape(name)}\{{job="{re.escape(_escape(job))}"\}} (\S+)$', re.M)
    m = pat.search(text)
    try:
        value = float(m.group(1)) if m else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


def write_metrics(report: dict, run_dir: Path | None, latest: Path) -> str:
    """Write ``metrics.prom`` into the run folder (if any) and the job's ``latest`` file; returns the text.

    ``gpurisk_webhook_failures_total`` carries on from the value in ``latest`` (a counter over all runs
    of the job; deleting the file resets it, which Prometheus treats as a counter reset).
    """
    if "webhook_failures_total" not in report:
        before = previous_counter(latest, "webhook_failures_total", str(report.get("job", "")))
        report = {**report, "webhook_failures_total": before + webhook_failures(report)}
    text = exposition(run_metrics(report))
    if run_dir is not None:
        write_text(text, Path(run_dir) / "metrics.prom")
    write_text(text, Path(latest))
    return text


# --------------------------------------------------------------------------- alerts


def check_alerts(report: dict, previous: dict | None, cfg: AlertConfig) -> list[dict]:
    """Threshold alerts for a finished (or failed) run.

    - ``job_failure``: the run failed (``cfg.on_failure``).
    - ``im_jump``: a model's total IM moved more than ``im_jump_pct`` % from the previous successful run.
    - ``calls``: more than ``max_calls`` calls (status other than ok).
    - ``rejects_ratio``: rejects / input rows above ``max_rejects_ratio``.
    """
    base = {"job": report.get("job"), "run_id": report.get("run_id"), "time": report.get("finished")}
    alerts = []
    if report["status"] != "succeeded":
        if cfg.on_failure:
            alerts.append({**base, "alert": "job_failure", "severity": "critical",
                           "message": f"job {report.get('job')} failed: {report.get('error')}"})
        return alerts
    if cfg.im_jump_pct is not None and previous:
        prev = previous.get("total_im") or {}
        for model, by_venue in sorted((report.get("total_im") or {}).items()):
            now_total = float(sum(by_venue.values()))
            if model not in prev:
                continue
            was = float(sum(prev[model].values()))
            if was == 0.0:
                jump = math.inf if now_total != 0.0 else 0.0
            else:
                jump = 100.0 * abs(now_total / was - 1.0)
            if jump > cfg.im_jump_pct:
                alerts.append({**base, "alert": "im_jump", "severity": "warning", "model": model,
                               "value": now_total, "previous": was, "change_pct": jump,
                               "threshold_pct": cfg.im_jump_pct,
                               "message": f"{model} total IM {now_total:,.0f} vs {was:,.0f} previous run "
                                          f"({jump:.1f}% > {cfg.im_jump_pct}%)"})
    if cfg.max_calls is not None:
        n_calls = sum(n for by_status in (report.get("calls") or {}).values()
                      for s, n in by_status.items() if s != "ok")
        if n_calls > cfg.max_calls:
            alerts.append({**base, "alert": "calls", "severity": "warning", "value": n_calls,
                           "threshold": cfg.max_calls, "message": f"{n_calls} margin calls > {cfg.max_calls}"})
    counts = report.get("counts") or {}
    if cfg.max_rejects_ratio is not None and counts.get("input_rows"):
        ratio = counts.get("rejects", 0) / counts["input_rows"]
        if ratio > cfg.max_rejects_ratio:
            alerts.append({**base, "alert": "rejects_ratio", "severity": "warning", "value": ratio,
                           "threshold": cfg.max_rejects_ratio,
                           "message": f"{counts.get('rejects', 0)} of {counts['input_rows']} input rows rejected "
                                      f"({ratio:.2%} > {cfg.max_rejects_ratio:.2%})"})
    return alerts


def post_webhook(url: str, payload: dict, timeout_s: float = 5.0) -> tuple[bool, str | None]:
    """POST ``payload`` as JSON; (True, None) on a 2xx answer, else (False, the cause, redacted).

    User-info in the URL (``https://user:token@host/...``) is sent as HTTP basic authentication,
    never as part of the address. Nothing is raised: any failure (refused, timeout, HTTP error,
    a malformed answer or URL) is returned.
    """
    data = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    try:
        parts = urlsplit(url)
        headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
            headers["Authorization"] = "Basic " + base64.b64encode(cred).decode("ascii")
            netloc = parts.hostname if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
            netloc += f":{parts.port}" if parts.port is not None else ""
            target = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        else:
            target = url
        req = urllib.request.Request(target, data=data, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            if 200 <= resp.status < 300:
                return True, None
            return False, f"HTTP {resp.status}"
    except Exception as exc:  # noqa: BLE001 - an alert channel never fails the job; the cause is returned
        code = getattr(exc, "code", None)
        cause = f"HTTP {code}" if isinstance(code, int) else f"{type(exc).__name__}: {exc}"
        return False, redact(" ".join(cause.split())[:300], url)


def raise_alerts(alerts: list[dict], out_dir: Path, cfg: AlertConfig) -> list[dict]:
    """Append each alert to ``out_dir/alerts.jsonl``, log it and POST it to the webhook if configured.

    Each alert gets ``kind`` (its name). With a webhook, each gets ``delivered`` (true/false) and,
    when the POST failed, ``delivery_error``; a failed POST also appends a ``webhook_failed``
    record (the alert it concerns, the redacted URL and the cause) and logs a warning.
    Returns the alerts followed by the ``webhook_failed`` records.
    """
    out = Path(out_dir) / "alerts.jsonl"
    failures = []
    for a in alerts:
        a.setdefault("kind", a.get("alert"))
        append_line(json.dumps(a, sort_keys=True, default=str), out)
        log.warning("ALERT %s: %s", a["alert"], a["message"])
        if not cfg.webhook_url:
            continue
        ok, cause = post_webhook(cfg.webhook_url, a, cfg.webhook_timeout_s)
        a["delivered"] = ok
        if ok:
            continue
        shown = redact_url(cfg.webhook_url)
        a["delivery_error"] = cause
        rec = {"kind": "webhook_failed", "alert": "webhook_failed", "severity": "warning",
               "job": a.get("job"), "run_id": a.get("run_id"), "time": a.get("time"),
               "failed_alert": a.get("alert"), "webhook": shown, "error": cause,
               "message": f"alert {a.get('alert')} not delivered to {shown}: {cause}"}
        append_line(json.dumps(rec, sort_keys=True, default=str), out)
        log.warning("alert webhook %s failed for alert %s: %s", shown, a.get("alert"), cause)
        failures.append(rec)
    return list(alerts) + failures
