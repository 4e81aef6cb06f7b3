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
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [x["alert"] for x in lines] == ["job_failure", "webhook_failed"]
    assert lines[1]["failed_alert"] == "job_failure" and "Connection refused" in lines[1]["error"]


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


# --------------------------------------------------------------------------- webhook secrets and failures

TOKENS = ("s3cretPW", "tok3nPATH", "QUERYtok3n", "FRAGtok3n")


@pytest.mark.parametrize("url, shown", [
    ("https://user:s3cretPW@hooks.example.com:8443/services/T0/tok3nPATH?token=QUERYtok3n#FRAGtok3n",
     "https://***@hooks.example.com:8443/***?***#***"),
    ("http://127.0.0.1:9000/alerts", "http://127.0.0.1:9000/***"),
    ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
    ("http://[::1]:80/x?y=1", "http://[::1]:80/***?***"),
    ("hooks.example.com/tok3nPATH", "***"),  # not a URL: nothing of it can be told safe
    ("http://host:notaport/x", "***"),
])
def test_redact_url_keeps_scheme_host_and_port_only(url, shown):
    from gpurisk.redact import redact_url

    assert redact_url(url) == shown


def test_redact_masks_urls_in_text_and_pieces_of_a_known_url():
    from gpurisk.redact import redact

    url = "http://bob:s3cretPW@127.0.0.1:9/hook/tok3nPATH?token=QUERYtok3n"
    text = f"POST {url} failed; nonnumeric port: 's3cretPW@127.0.0.1:9'; path /hook/tok3nPATH; see https://x.org/a?b=c"
    out = redact(text, url)
    assert not any(t in out for t in TOKENS), out
    assert "http://***@127.0.0.1:9/***?***" in out and "https://x.org/***?***" in out
    assert redact("scheduler 10.0.0.5:8786 is down", "10.0.0.5:8786") == "scheduler 10.0.0.5:8786 is down"


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every POST with ``status`` and records (path, Authorization header, body)."""

    status = 204
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture()
def recorder():
    """A local webhook on 127.0.0.1 whose answer status a test sets (``recorder.status``)."""

    class Handler(_Recorder):
        seen = []

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Handler.port = srv.server_address[1]
    yield Handler
    srv.shutdown()
    srv.server_close()


def test_user_info_is_sent_as_basic_auth_never_in_the_address(recorder):
    import base64

    url = f"http://bob:s3cretPW@127.0.0.1:{recorder.port}/hook/tok3nPATH?token=QUERYtok3n"
    assert monitoring.post_webhook(url, {"alert": "x"}, 2.0) == (True, None)
    path, auth, body = recorder.seen[0]
    assert path == "/hook/tok3nPATH?token=QUERYtok3n" and body == {"alert": "x"}
    assert auth == "Basic " + base64.b64encode(b"bob:s3cretPW").decode()


def test_failed_delivery_is_recorded_counted_and_redacted(tmp_path, recorder, caplog):
    """An HTTP 500 from the webhook: a ``webhook_failed`` record, ``delivered: false``, a warning and the
    counter; the token is in none of them."""
    recorder.status = 500
    url = f"http://bob:s3cretPW@127.0.0.1:{recorder.port}/hook/tok3nPATH?token=QUERYtok3n#FRAGtok3n"
    cfg = AlertConfig(im_jump_pct=None, max_calls=10, max_rejects_ratio=None, webhook_url=url, webhook_timeout_s=2)
    report = dict(REPORT)
    with caplog.at_level("WARNING", logger="gpurisk.batch"):
        report["alerts"] = monitoring.raise_alerts(monitoring.check_alerts(report, None, cfg), tmp_path, cfg)
    assert len(recorder.seen) == 1  # the POST was made (and failed)
    calls, failed = report["alerts"]
    assert calls["kind"] == "calls" and calls["delivered"] is False and calls["delivery_error"] == "HTTP 500"
    assert failed["kind"] == "webhook_failed" and failed["failed_alert"] == "calls"
    assert failed["webhook"] == f"http://***@127.0.0.1:{recorder.port}/***?***#***"
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["calls", "webhook_failed"]
    assert "webhook" in caplog.text and "HTTP 500" in caplog.text
    latest = tmp_path / "gpurisk_intraday.prom"
    monitoring.write_metrics(report, tmp_path / "run", latest)
    assert 'gpurisk_webhook_failures_total{job="intraday"} 1' in latest.read_text().splitlines()
    assert "# TYPE gpurisk_webhook_failures_total counter" in latest.read_text()
    monitoring.write_metrics(report, tmp_path / "run2", latest)  # a counter over runs: 1 + 1
    assert 'gpurisk_webhook_failures_total{job="intraday"} 2' in latest.read_text().splitlines()
    everything = caplog.text + "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert not any(t in everything for t in TOKENS)


def test_a_malformed_answer_is_a_failed_delivery_not_an_exception(tmp_path):
    """A webhook that answers garbage (not HTTP) fails the delivery; nothing is raised."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def garbage():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"this is not HTTP\r\n\r\n")
        conn.close()

    t = threading.Thread(target=garbage, daemon=True)
    t.start()
    ok, cause = monitoring.post_webhook(f"http://127.0.0.1:{srv.getsockname()[1]}/h?k=QUERYtok3n", {"a": 1}, 2.0)
    t.join(5)
    srv.close()
    assert ok is False and cause and "QUERYtok3n" not in cause


def test_no_webhook_means_no_delivery_fields_and_no_counter_increase(tmp_path):
    alerts = monitoring.raise_alerts([{"alert": "calls", "message": "m"}], tmp_path, AlertConfig())
    assert alerts == [{"alert": "calls", "kind": "calls", "message": "m"}]
    text = monitoring.write_metrics({**REPORT, "alerts": alerts}, None, tmp_path / "x.prom")
    assert 'gpurisk_webhook_failures_total{job="intraday"} 0' in text.splitlines()
