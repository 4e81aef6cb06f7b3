"""Run metrics for Prometheus and threshold alerts.

``metrics.prom`` uses the Prometheus text exposition format (``# HELP`` and
``# TYPE`` lines) for the node_exporter textfile collector; it is written
atomically into the run folder and copied to ``OUTPUT/gpurisk_<job>.prom`` (point
the collector's ``--collector.textfile.directory`` at OUTPUT; one file per job, so
jobs sharing an output folder do not overwrite each other's metrics).

Alerts are JSON objects appended to ``OUTPUT/alerts.jsonl`` and, when a webhook
URL is configured, POSTed as JSON (``Content-Type: application/json``) with a
timeout. A failed POST is logged and never fails the job.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..config import AlertConfig
from ..fileio import append_line, write_text

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
    return ms


def write_metrics(report: dict, run_dir: Path | None, latest: Path) -> str:
    """Write ``metrics.prom`` into the run folder (if any) and the job's ``latest`` file; returns the text."""
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


def post_webhook(url: str, payload: dict, timeout_s: float = 5.0) -> bool:
    """POST ``payload`` as JSON; True on a 2xx answer. Failures are logged, never raised."""
    data = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            ok = 200 <= resp.status < 300
            if not ok:
                log.warning("alert webhook %s answered HTTP %s", url, resp.status)
            return ok
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("alert webhook %s failed: %s", url, exc)
        return False


def raise_alerts(alerts: list[dict], out_dir: Path, cfg: AlertConfig) -> list[dict]:
    """Append each alert to ``out_dir/alerts.jsonl``, log it and POST it to the webhook if configured."""
    for a in alerts:
        append_line(json.dumps(a, sort_keys=True, default=str), Path(out_dir) / "alerts.jsonl")
        log.warning("ALERT %s: %s", a["alert"], a["message"])
        if cfg.webhook_url:
            a["delivered"] = post_webhook(cfg.webhook_url, a, cfg.webhook_timeout_s)
    return alerts
