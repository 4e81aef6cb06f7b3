"""Prometheus exposition, threshold alerts and the webhook (a local http.server on 127.0.0.1)."""

from __future__ import annotations

import http.server
import json
import re
import threading

import pytest

from gpurisk.batch import monitoring
from gpurisk.config import AlertConfig

REPORT = {
    "job": "intraday", "run_id": "r1", "status": "succeeded", "finished": "2026-11-21T10:00:00+00:00",
    "finished_unix": 1795255200.0, "duration_s": 12.5,
    "timings": {"revalue": 1.5, "tail_stats": 2.25},
    "counts": {"accounts": 2000, "input_rows": 1000, "rejects": 5, "chunks_computed": 30, "chunks_resumed": 0,
               "gpu_fallbacks": 1},
    "calls": {"house": {"ok": 1900, "call": 60, "liquidation": 40}},
    "total_im": {"house": {"all": 1.5e7}, "venue": {"deribit": 8e6, "okx": 1e7}},
}

LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+]+$')


def test_exposition_is_valid_prometheus_text():
    text = monitoring.exposition(monitoring.run_metrics(REPORT))
    lines = text.strip().splitlines()
    names_typed = [ln.split()[2] for ln in lines if ln.startswith("# TYPE")]
    assert len(names_typed) == len(set(names_typed))  # one TYPE per metric name
    for ln in lines:
        if ln.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) gpurisk_\w+ .+", ln)
        else:
            assert LINE.match(ln), ln
            assert ln.split("{")[0].split(" ")[0] in names_typed
    assert 'gpurisk_total_im_usd{job="intraday",model="venue",venue="okx"} 10000000' in lines
    assert 'gpurisk_calls{job="intraday",model="house",status="liquidation"} 40' in lines
    assert 'gpurisk_stage_duration_seconds{job="intraday",stage="tail_stats"} 2.25' in lines
    assert 'gpurisk_gpu_fallbacks{job="intraday"} 1' in lines
    assert 'gpurisk_rejects{job="intraday"} 5' in lines
    assert 'gpurisk_run_success{job="intraday"} 1' in lines


def test_label_values_are_escaped():
    m = monitoring.Metric("x", "help").add(1, venue='a"b\\c\nd')
    assert monitoring.exposition([m]).splitlines()[-1] == 'gpurisk_x{venue="a\\"b\\\\c\\nd"} 1'


def test_write_metrics_is_atomic_and_written_twice(tmp_path):
    run = tmp_path / "run"
    monitoring.write_metrics(REPORT, run, tmp_path / "gpurisk_intraday.prom")
    assert (run / "metrics.prom").read_text() == (tmp_path / "gpurisk_intraday.prom").read_text()
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "cfg, previous, expect",
    [
        (AlertConfig(im_jump_pct=25, max_calls=None, max_rejects_ratio=None), {"total_im": {"house": {"all": 1.0e7}}}, ["im_jump"]),
        (AlertConfig(im_jump_pct=60, max_calls=None, max_rejects_ratio=None), {"total_im": {"house": {"all": 1.0e7}}}, []),
        (AlertConfig(im_jump_pct=25, max_calls=None, max_rejects_ratio=None), None, []),
        (AlertConfig(im_jump_pct=None, max_calls=99, max_rejects_ratio=None), None, ["calls"]),
        (AlertConfig(im_jump_pct=None, max_calls=100, max_rejects_ratio=None), None, []),
        (AlertConfig(im_jump_pct=None, max_calls=None, max_rejects_ratio=0.004), None, ["rejects_ratio"]),
        (AlertConfig(im_jump_pct=None, max_calls=None, max_rejects_ratio=0.005), None, []),
    ],
)
def test_threshold_alerts(cfg, previous, expect):
    alerts = monitoring.check_alerts(REPORT, previous, cfg)
    assert [a["alert"] for a in alerts] == expect
    for a in alerts:
        assert a["run_id"] == "r1" and a["message"]
    if expect == ["im_jump"]:
        assert alerts[0]["change_pct"] == pytest.approx(50.0)


def test_failure_alert():
    failed = {**REPORT, "status": "failed", "error": "BookError: x"}
    alerts = monitoring.check_alerts(failed, None, AlertConfig())
    assert [a["alert"] for a in alerts] == ["job_failure"] and "BookError: x" in alerts[0]["message"]
    assert monitoring.check_alerts(failed, None, AlertConfig(on_failure=False)) == []


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture()
def hook_server():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Hook.received = []
    yield f"http://127.0.0.1:{srv.server_address[1]}/alerts"
    srv.shutdown()
    srv.server_close()


def test_alerts_are_appended_and_posted(tmp_path, hook_server):
    cfg = AlertConfig(im_jump_pct=None, max_calls=10, max_rejects_ratio=None, webhook_url=hook_server, webhook_timeout_s=2)
    alerts = monitoring.raise_alerts(monitoring.check_alerts(REPORT, None, cfg), tmp_path, cfg)
    assert alerts[0]["delivered"] is True
    ctype, body = _Hook.received[0]
    assert ctype == "application/json" and body["alert"] == "calls" and body["value"] == 100
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(x)["alert"] for x in lines] == ["calls"]


def test_failed_post_is_logged_not_raised(tmp_path, caplog):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = AlertConfig(webhook_url=f"http://127.0.0.1:{port}/x", webhook_timeout_s=0.5)
    out = monitoring.raise_alerts([{"alert": "job_failure", "message": "m"}], tmp_path, cfg)
    assert out[0]["delivered"] is False
    assert "alert webhook" in caplog.text
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["alert"] == "job_failure"


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_metrics_and_alert_files_honour_the_umask(tmp_path, mask, mode):
    """A node_exporter running as another user must be able to read metrics.prom (0644 under umask 022)."""
    import stat

    from test_fileio import umask

    run, latest = tmp_path / "run", tmp_path / "gpurisk_intraday.prom"
    with umask(mask):
        monitoring.write_metrics(REPORT, run, latest)
        monitoring.write_metrics(REPORT, run, latest)  # a rewrite replaces the file: the mode is set afresh
        monitoring.raise_alerts([{"alert": "x", "message": "m"}], tmp_path, AlertConfig())
    for p in (run / "metrics.prom", latest, tmp_path / "alerts.jsonl"):
        assert stat.S_IMODE(p.stat().st_mode) == mode, p
