"""Operating ``gpurisk run`` and ``gpurisk schedule``: signals, worker counts, ``--resume`` mistakes,
secrets in webhook URLs, progress and the compile notice, plain help, the README's cron and CI lines.

Signals and secrets are tested through real subprocesses, real signals and a real HTTP server on
127.0.0.1; the independent checks are the files a run leaves (manifest, alerts, metrics).
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpurisk.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ("s3cretPW", "tok3nPATH", "QUERYtok3n")


def _job(tmp_path: Path, book: str, *, alerts: str = "", workers: str = "", schedule: str = "") -> Path:
    job = tmp_path / "job.toml"
    job.write_text(f"""
[job]
name = "ops"
backend = "reference"
chunk_size = 7
output = "runs"
{workers}

[book]
{book}

[[models]]
name = "house"
params = {{mc_scenarios = 200, lookback_days = 365}}

[alerts]
max_rejects_ratio = 0.5
{alerts}
{schedule}
""")
    return job


def _corrupt_book(src: Path, dst: Path) -> Path:
    """A copy of a book folder whose positions table is not Parquet: the run fails after its folder exists."""
    shutil.copytree(src, dst)
    (dst / "positions.parquet").write_bytes(b"not a parquet file")
    return dst


class Proc:
    """``python -m gpurisk.cli ARGS`` in ``cwd``, its stderr read line by line as it comes."""

    def __init__(self, args, cwd: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen([sys.executable, "-m", "gpurisk.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        self.err: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stderr:
            self.err.append(line)

    def wait_for(self, pattern: str, timeout: float = 180) -> bool:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(rx.search(x) for x in list(self.err)):
                return True
            if self.p.poll() is not None:
                self._t.join(5)
                return any(rx.search(x) for x in self.err)
            time.sleep(0.05)
        return False

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        out = self.p.stdout.read() if self.p.stdout else ""
        rc = self.p.wait(timeout=timeout)
        self._t.join(10)
        return rc, out, "".join(self.err)


def _runs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def _alerts(out: Path) -> list[dict]:
    f = out / "alerts.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


# --------------------------------------------------------------------------- A8: SIGTERM like Ctrl-C


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_records_the_run_as_failed(tmp_path, sig, code):
    """SIGTERM (``timeout``, ``kill``, systemd) does what Ctrl-C does: the manifest says failed with the
    signal, a ``job_failure`` alert and ``gpurisk_run_success 0`` are written, one line, exit 128 + signal."""
    job = _job(tmp_path, "sample = {accounts = 20, seed = 3}")
    proc = Proc(["run", str(job), "--workers", "1"], tmp_path)
    assert proc.wait_for(r"INFO run \S+: job ops"), "".join(proc.err)
    proc.p.send_signal(sig)
    rc, out, err = proc.finish()
    assert rc == code, err
    name = signal.Signals(sig).name
    assert err.strip().splitlines()[-1] == f"gpurisk run: stopped: {name} received", err
    assert "Traceback" not in err
    (run,) = _runs(tmp_path / "runs")
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "failed" and name in man["error"]
    assert [a["alert"] for a in _alerts(tmp_path / "runs")] == ["job_failure"]
    assert 'gpurisk_run_success{job="ops"} 0' in (run / "metrics.prom").read_text().splitlines()


def _schedule_job(tmp_path: Path) -> Path:
    return _job(tmp_path, "sample = {accounts = 20, seed = 3}", schedule="[schedule]\ninterval_minutes = 600")


@pytest.mark.slow
def test_schedule_lets_the_run_in_progress_finish_on_sigterm(tmp_path):
    """The first SIGTERM to ``gpurisk schedule`` during a run: the run finishes and is recorded, exit 0."""
    proc = Proc(["schedule", str(_schedule_job(tmp_path)), "--workers", "1"], tmp_path)
    assert proc.wait_for(r"INFO run \S+: job ops"), "".join(proc.err)
    proc.p.send_signal(signal.SIGTERM)
    rc, out, err = proc.finish()
    assert rc == 0, err
    (run,) = _runs(tmp_path / "runs")
    assert json.loads((run / "manifest.json").read_text())["status"] == "succeeded"
    assert "succeeded" in out and "Traceback" not in err


@pytest.mark.slow
def test_schedule_stops_the_run_on_a_second_sigterm_and_records_it(tmp_path):
    """A second SIGTERM stops the run in progress: recorded as failed (manifest, alert, metrics), exit 0."""
    proc = Proc(["schedule", str(_schedule_job(tmp_path)), "--workers", "1"], tmp_path)
    assert proc.wait_for(r"INFO run \S+: job ops"), "".join(proc.err)
    proc.p.send_signal(signal.SIGTERM)
    assert proc.wait_for("a second signal stops that run now")
    proc.p.send_signal(signal.SIGTERM)
    rc, out, err = proc.finish()
    assert rc == 0, err
    (run,) = _runs(tmp_path / "runs")
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "failed" and "SIGTERM" in man["error"]
    assert [a["alert"] for a in _alerts(tmp_path / "runs")] == ["job_failure"]
    assert 'gpurisk_run_success{job="ops"} 0' in (run / "metrics.prom").read_text().splitlines()
    assert "Traceback" not in err


# --------------------------------------------------------------------------- A11: worker counts


@pytest.mark.parametrize("where", ["option", "job"])
def test_too_many_workers_fail_fast_in_one_line(tmp_path, where):
    """``--workers 1000`` (or ``workers = 1000`` in the job) is refused before anything starts: one line,
    exit 2, no run folder, no alert, no leaked semaphores."""
    job = _job(tmp_path, 'path = "nowhere"', workers="workers = 1000" if where == "job" else "")
    args = ["run", str(job)] + (["--workers", "1000"] if where == "option" else [])
    r = subprocess.run([sys.executable, "-m", "gpurisk.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    what = "--workers" if where == "option" else "job.toml: [job] workers"
    assert line.startswith(f"gpurisk run: error: {what}: 1000 workers is more than") and "--scheduler" in line
    assert "leaked" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_workers_above_the_core_count_warn_and_above_the_cap_fail(monkeypatch, caplog):
    from gpurisk.batch import cluster
    from gpurisk.errors import ConfigError

    monkeypatch.setattr(cluster, "cpu_cores", lambda: 2)
    monkeypatch.setattr(cluster, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="gpurisk.batch"):
        assert cluster.check_workers(2) == 2
        assert not caplog.records
        assert cluster.check_workers(8) == 8  # the cap: 4 per core
        assert "8 workers on 2 CPU core(s)" in caplog.text
    for bad in (9, 0, -1, True, 2.5):
        with pytest.raises(ConfigError, match="--workers"):
            cluster.check_workers(bad)
    with pytest.raises(ConfigError, match="at most 8"):  # the library path fails as fast
        with cluster.open_client(workers=1000):
            pass


# --------------------------------------------------------------------------- A17: --resume mistakes


@pytest.mark.parametrize("resume, says", [("", "it is empty"), ("2026nope", "no such run"),
                                          ("../x", "bad name")])
def test_a_bad_resume_is_a_user_error_without_an_alert(tmp_path, capsys, resume, says):
    job = _job(tmp_path, 'path = "nowhere"')
    (tmp_path / "runs" / "20261121T102206Z-679e27cb").mkdir(parents=True)
    (tmp_path / "runs" / "20261121T102206Z-679e27cb" / "manifest.json").write_text("{}")
    assert main(["run", str(job), "--resume", resume, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gpurisk run: error: ") and says in err, err
    if resume == "2026nope":
        assert "20261121T102206Z-679e27cb" in err  # it names the runs that are there
    assert not (tmp_path / "runs" / "alerts.jsonl").exists()
    assert _runs(tmp_path / "runs") == [tmp_path / "runs" / "20261121T102206Z-679e27cb"]


@pytest.mark.slow
def test_resume_of_a_run_whose_inputs_changed_raises_no_alert(tmp_path, sample_book_dir):
    """A failed run, then ``--resume`` after the job changed: refused in one line, exit 2, and the only
    alert is the failed run's own."""
    _corrupt_book(sample_book_dir, tmp_path / "book")
    job = _job(tmp_path, 'path = "book"')
    r = subprocess.run([sys.executable, "-m", "gpurisk.cli", "run", str(job), "-q", "--workers", "1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "failed" in r.stderr
    (run,) = _runs(tmp_path / "runs")
    assert [a["alert"] for a in _alerts(tmp_path / "runs")] == ["job_failure"]
    job.write_text(job.read_text().replace("chunk_size = 7", "chunk_size = 8"))
    r = subprocess.run([sys.executable, "-m", "gpurisk.cli", "run", str(job), "-q", "--resume", run.name],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "cannot resume run" in line and "its inputs differ" in line
    assert [a["alert"] for a in _alerts(tmp_path / "runs")] == ["job_failure"]


# --------------------------------------------------------------------------- A13: no token anywhere


class _Failing(http.server.BaseHTTPRequestHandler):
    """A webhook that answers every POST with HTTP 500 and counts them."""

    posts: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append((self.path, self.headers.get("Authorization")))
        self.send_response(500)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture()
def failing_hook():
    class Handler(_Failing):
        posts = []

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Handler.url = f"http://bob:s3cretPW@127.0.0.1:{srv.server_address[1]}/hook/tok3nPATH?token=QUERYtok3n"
    yield Handler
    srv.shutdown()
    srv.server_close()


def _assert_no_token(out: str, err: str, folder: Path) -> None:
    assert not any(t in out for t in TOKENS), out
    assert not any(t in err for t in TOKENS), err
    for f in folder.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(t.encode() in data for t in TOKENS), f


def _assert_failed_delivery_recorded(out_dir: Path, run: Path, n_alerts: int) -> None:
    recs = _alerts(out_dir)
    failed = [a for a in recs if a["kind"] == "webhook_failed"]
    assert len(failed) == n_alerts and all(a["error"] == "HTTP 500" for a in failed)
    man = json.loads((run / "manifest.json").read_text())
    assert [a["kind"] for a in man["alerts"] if a["kind"] == "webhook_failed"] == ["webhook_failed"] * n_alerts
    assert "***" in man["parameters"]["job"]["alerts"]["webhook_url"]
    prom = (run / "metrics.prom").read_text().splitlines()
    assert f'gpurisk_webhook_failures_total{{job="ops"}} {n_alerts}' in prom


@pytest.mark.slow
def test_webhook_token_never_shown_or_stored_by_a_failed_run(tmp_path, sample_book_dir, failing_hook):
    """A run that fails (bad book) with a webhook that fails (HTTP 500): the token is in no output,
    log line, manifest, alert or metric; the failed delivery is recorded in each of them."""
    _corrupt_book(sample_book_dir, tmp_path / "book")
    job = _job(tmp_path, 'path = "book"', alerts=f'webhook_url = "{failing_hook.url}"\nwebhook_timeout_s = 5')
    r = subprocess.run([sys.executable, "-m", "gpurisk.cli", "run", str(job), "-v", "--workers", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert len(failing_hook.posts) == 1  # the alert was POSTed, with the credentials as basic auth
    assert failing_hook.posts[0][0] == "/hook/tok3nPATH?token=QUERYtok3n" and failing_hook.posts[0][1]
    (run,) = _runs(tmp_path / "runs")
    _assert_failed_delivery_recorded(tmp_path / "runs", run, 1)
    assert "webhook" in r.stderr and "failed" in r.stderr
    _assert_no_token(r.stdout, r.stderr, tmp_path / "runs")


def _book_with_a_reject(folder: Path) -> Path:
    """A generated 20-account book plus one position on an unknown instrument (one rejected row)."""
    import pandas as pd

    from gpurisk.generate import generate_book
    from gpurisk.io import TABLES, write_book

    g = generate_book(20, 3)
    write_book(folder, {k: g[k] for k in TABLES}, g["meta"], fmt="parquet")
    pos = pd.read_parquet(folder / "positions.parquet")
    bad = pos.iloc[:1].copy()
    bad["instrument_id"] = "NO-SUCH-INSTRUMENT"
    pd.concat([pos, bad], ignore_index=True).to_parquet(folder / "positions.parquet", index=False)
    return folder


@pytest.mark.slow
def test_webhook_token_never_shown_or_stored_by_a_finished_run(tmp_path, failing_hook):
    """The same through a whole run (summary files, last-run pointer, the job's .prom file); the
    alert is the rejects ratio (one rejected row, threshold 0)."""
    _book_with_a_reject(tmp_path / "book")
    job = _job(tmp_path, 'path = "book"', alerts=f'webhook_url = "{failing_hook.url}"\nwebhook_timeout_s = 5')
    job.write_text(job.read_text().replace("max_rejects_ratio = 0.5", "max_rejects_ratio = 0.0"))
    r = subprocess.run([sys.executable, "-m", "gpurisk.cli", "run", str(job), "-v", "--workers", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (run,) = _runs(tmp_path / "runs")
    assert (run / "house" / "summary.json").exists() and (tmp_path / "runs" / "last_run-ops.json").exists()
    assert len(failing_hook.posts) == 1  # the rejects_ratio alert
    _assert_failed_delivery_recorded(tmp_path / "runs", run, 1)
    assert "not delivered" in r.stdout  # the summary names the failed delivery (redacted)
    _assert_no_token(r.stdout, r.stderr, tmp_path / "runs")


def test_a_bad_webhook_url_is_reported_redacted(tmp_path, capsys):
    job = _job(tmp_path, 'path = "nowhere"', alerts='webhook_url = "ftp://bob:s3cretPW@host/tok3nPATH"')
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "webhook_url" in err and "ftp://***@host/***" in err and not any(t in err for t in TOKENS)


# --------------------------------------------------------------------------- A17: what a user reads


def _all_parsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    out = [parser]
    for p in sub.choices.values():
        out.append(p)
        for a in p._actions:  # nested subcommands (gpurisk scenarios KIND)
            if hasattr(a, "choices") and isinstance(a.choices, dict):
                out.extend(a.choices.values())
    return out


def test_help_is_plain_text():
    """No raw reST (````literal````, ``:func:`x```, ``**bold**``) in any ``--help``."""
    for p in _all_parsers():
        text = p.format_help()
        assert "``" not in text and not re.search(r":[a-z]+:`", text) and "**" not in text, p.prog


def test_quiet_and_verbose_short_forms():
    from gpurisk.commands.run import configure_logging

    for cmd in ("run", "schedule"):
        args = build_parser().parse_args([cmd, "job.toml", "-q"])
        assert args.quiet and not args.verbose
        args = build_parser().parse_args([cmd, "job.toml", "-v"])
        assert args.verbose and not args.quiet
        with pytest.raises(SystemExit):
            build_parser().parse_args([cmd, "job.toml", "-q", "-v"])
        help_q = next(a.help for a in _parser(cmd)._actions if "-q" in a.option_strings)
        assert "progress bar" not in help_q
    log = logging.getLogger("gpurisk")
    try:
        configure_logging(verbose=True)
        assert log.level == logging.DEBUG
        configure_logging(quiet=True)
        assert log.level == logging.WARNING
        configure_logging()
        assert log.level == logging.INFO
    finally:
        log.setLevel(logging.NOTSET)
        log.propagate = True
        for h in list(log.handlers):
            log.removeHandler(h)


def _parser(cmd):
    return next(p for p in _all_parsers() if p.prog == f"gpurisk {cmd}")


def test_progress_lines_say_what_is_done_and_that_work_goes_on(caplog):
    """Without a terminal: a line at every 10 % of the chunks, and a ``still working`` line when nothing
    was said for a while (before the first chunk too: the first run compiles the kernels)."""
    from gpurisk.commands.progress import Progress

    with caplog.at_level(logging.INFO, logger="gpurisk.batch"):
        with Progress("lines", tick_s=0.01, quiet_s=0.05) as show:
            deadline = time.monotonic() + 30
            while "no chunk finished yet" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
            for k in range(1, 21):
                show(k, 20)
    text = caplog.text
    assert "still working after" in text and "no chunk finished yet" in text
    done = re.findall(r"chunks (\d+)/20 done", text)
    assert done == ["2", "4", "6", "8", "10", "12", "14", "16", "18", "20"]


def test_progress_bar_is_drawn_before_and_after_chunks_and_ends_its_line():
    from gpurisk.commands.progress import Progress

    buf = io.StringIO()
    with Progress("bar", stream=buf, tick_s=0.01) as show:
        deadline = time.monotonic() + 30
        while "working" not in buf.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        show(5, 10)
    text = buf.getvalue()
    assert "working" in text and "no chunk finished yet" in text
    assert re.search(r"chunks \[#{15} {15}\] 5/10", text) and text.endswith("\n")
    off = io.StringIO()
    with Progress("off", stream=off) as show:
        show(1, 2)
    assert off.getvalue() == ""
    assert Progress.mode_for(quiet=True) == "off" and Progress.mode_for(False, io.StringIO()) == "lines"


_KERNEL = '''
from numba import njit


@njit(cache=True)
def twice(x):
    return 2.0 * x
'''

_PROBE = '''
import sys
sys.path.insert(0, sys.argv[1])
import kmod
from gpurisk.commands.progress import kernels_cached
before = kernels_cached(kmod)
if sys.argv[2] == "compile":
    kmod.twice(1.0)
print(before, kernels_cached(kmod))
'''


@pytest.mark.slow
def test_kernels_cached_tells_a_cold_cache_from_a_warm_one(tmp_path):
    """Numba's on-disk cache of a module: cold before its first compile, warm after it, cold again
    when the source changes (the compile notice is shown exactly when the kernels will compile)."""
    (tmp_path / "kmod.py").write_text(_KERNEL)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def probe(what):
        r = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path), what], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert probe("look") == ["False", "False"]
    assert probe("compile") == ["False", "True"]
    assert probe("look") == ["True", "True"]
    time.sleep(1.1)  # a new modification time: Numba's cache stamp of the source changes
    (tmp_path / "kmod.py").write_text(_KERNEL + "\n# edited\n")
    assert probe("look") == ["False", "False"]


def test_compile_notice_only_when_the_cpu_kernels_will_compile(monkeypatch):
    from gpurisk.commands import progress

    monkeypatch.setattr("gpurisk.batch.cluster.local_gpu_usable", lambda: False)
    monkeypatch.setattr(progress, "kernels_cached", lambda m: False)
    assert "compiling the CPU kernels once" in progress.compile_notice("auto", None)
    assert "compiling the CPU kernels once" in progress.compile_notice("cpu", None)
    assert progress.compile_notice("reference", None) is None
    assert progress.compile_notice("cpu", "tcp://127.0.0.1:8786") is None  # the scheduler's workers: unknown
    monkeypatch.setattr(progress, "kernels_cached", lambda m: True)
    assert progress.compile_notice("cpu", None) is None


# --------------------------------------------------------------------------- the README's cron and CI lines


def _cron_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"^[0-9*/,]+ [0-9*/,]+ \S+ \S+ \S+\s+cd /opt/gpurisk", ln)]


def test_cron_lines_run_on_a_fresh_clone(tmp_path):
    """The README's and docs/operations.md's cron lines work in a checkout without ``runs/`` (it is
    git-ignored, so a fresh clone has none); ``gpurisk`` is replaced by a stub that records its arguments."""
    lines = _cron_lines((ROOT / "README.md").read_text()) + _cron_lines((ROOT / "docs" / "operations.md").read_text())
    assert len(lines) >= 3
    for i, line in enumerate(lines):
        home = tmp_path / f"clone{i}"
        (home / ".venv" / "bin").mkdir(parents=True)
        stub = home / ".venv" / "bin" / "gpurisk"
        stub.write_text('#!/bin/sh\necho "stub gpurisk $*"\n')
        stub.chmod(0o755)
        command = re.split(r"\s+", line, maxsplit=5)[5].replace("/opt/gpurisk", str(home))
        r = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (line, r.stderr)
        assert "stub gpurisk run jobs/" in (home / "runs" / "cron.log").read_text()


def test_ci_runs_the_readme_test_line_and_slow_tests_are_marked():
    """``.ci/run`` runs the README's test line, and the ``slow`` marker that line and ``-m "not slow"``
    rely on is carried by tests (so deselecting it means something)."""
    r = subprocess.run([str(ROOT / ".ci" / "run")], env={**os.environ, "CI_PRINT_ONLY": "1"}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme.split("## Quick start", 1)[1], re.S)
    assert r.stdout.strip() == f"ci: {blocks[1].strip()}"
    import ast

    marked = 0
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                marked += any(ast.unparse(d) == "pytest.mark.slow" for d in node.decorator_list)
    assert marked >= 5


def test_no_negative_zero_in_written_margin_tables(tmp_path):
    """A figure that is zero is written as 0.0, never -0.0 (read back and printed as ``-0.000000``)."""
    import types

    import numpy as np
    import pandas as pd

    from gpurisk.margin.output import write_result

    df = pd.DataFrame({"account_id": ["A", "B"], "stress_worst": [-0.0, -1.5], "im": [0.0, 2.0]})
    res = types.SimpleNamespace(tables={"margin": df}, model="house", summary={},
                                table_units=lambda name: {"stress_worst": "USD", "im": "USD"})
    write_result(res, tmp_path)
    got = pd.read_parquet(tmp_path / "margin.parquet")
    assert not np.signbit(got["stress_worst"].to_numpy()[0]) and got["stress_worst"].tolist() == [0.0, -1.5]
    assert "-0.0" not in got.to_csv(float_format="%f")
    assert np.signbit(df["stress_worst"].to_numpy()[0])  # the caller's frame is left as it was
