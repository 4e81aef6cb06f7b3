"""benchmarks/gpu_check.py --dry: every step of the first-device check runs here, with the kernels under the CPU
emulator instead of a GPU, and writes its JSON report and markdown table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_runs_every_step_and_writes_its_report(tmp_path):
    from gpurisk.backends import cuda_emu

    ok, why = cuda_emu.available()
    if not ok:
        pytest.skip(f"the dry run needs the emulated kernels: {why}")
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["ok"] and doc["dry"]
    steps = doc["steps"]
    assert list(steps) == ["install", "device", "tests", "parity and speed", "sanitize"]
    assert steps["install"]["skipped"] == "--dry"
    assert steps["device"]["emulator"][0] is True
    assert " passed" in steps["tests"]["summary"] and " failed" not in steps["tests"]["summary"]
    assert steps["sanitize"]["result"]["seeds"] == 3
    books = steps["parity and speed"]["books"]
    assert {name for b in books for name in b["specs"]} == {"es99", "5 levels", "ewma"}
    assert all(sp["mismatches"] == [] and sp["sampled"] > 0 for b in books for sp in b["specs"].values())
    md = (out / "gpu_check.md").read_text()
    assert "**passed**" in md and "no device was used" in md and "| 300 × 10 × 500 | ewma |" in md


def test_gpu_check_fails_when_a_step_fails(tmp_path):
    """A budget too small for any step: every step is skipped as out of time and the check exits non-zero."""
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--budget", "5",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    doc = json.loads((out / "gpu_check.json").read_text())
    assert not doc["ok"] and all("out of time" in s.get("skipped", "") for s in doc["steps"].values())


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_mod", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_tests_are_collected_from_the_files_that_mark_them():
    """The device step runs ``pytest -m gpu`` on exactly the files holding GPU-marked tests (so a GPU machine
    needs no Dask or service extras to collect them)."""
    mod = _gpu_check_module()
    files = mod.gpu_test_files()
    assert {"tests/test_gpu.py", "tests/test_backends_parity.py", "tests/test_attribution_kernels.py"} <= set(files)
    assert "tests/test_gpu_check.py" not in files and "tests/test_batch_run.py" not in files


def test_the_report_table_names_a_measure_that_failed():
    """A spec that raised on the device is a row with its error and no timing, and the check is not ok."""
    mod = _gpu_check_module()
    doc = {"date_utc": "2026-11-29T00:00:00Z", "command": "python benchmarks/gpu_check.py", "dry": False,
           "machine": {"host": "h", "gpu": "NVIDIA H200"}, "seconds": 1.0, "ok": False,
           "steps": {"parity and speed": {"ok": False, "seconds": 1.0, "books": [
               {"accounts": 10, "positions_per_account": 2, "scenarios": 100, "specs": {
                   "es99": {"tail_stats_s": 0.5, "position_scenarios_per_s": 4000.0, "sampled": 10,
                            "mismatches": [], "launch": {"spilled": 1234}},
                   "ewma": {"sampled": 10, "mismatches": ["GpuLimitError: too many candidates"]}}}]}}}
    md = mod.markdown(doc)
    assert "| 10 × 2 × 100 | es99 | 0.500 | 4e+03 | 1,234 | all (10) |" in md
    assert "| 10 × 2 × 100 | ewma | — | — | — | GpuLimitError: too many candidates (10) |" in md
    assert "**FAILED**" in md


def test_a_books_worker_out_of_time_keeps_the_measurements_it_finished(tmp_path, monkeypatch):
    """The worker rewrites its results after each measurement; a timed-out step reports those (marked
    partial, and failed) instead of nothing."""
    from types import SimpleNamespace

    mod = _gpu_check_module()
    done = {"books": [{"accounts": 100_000, "positions_per_account": 10, "scenarios": 10_000, "specs": {
        "es99": {"tail_stats_s": 0.07, "position_scenarios_per_s": 1.4e11, "sampled": 2000, "mismatches": []}}}]}

    def timed_out(cmd, timeout, env=None):
        mod._write(tmp_path / mod.PARTIAL_BOOKS, json.dumps(done))
        return 124, "# 1,000,000 accounts: built\n(timed out after 60 s)", 60.0

    monkeypatch.setattr(mod, "_run", timed_out)
    got = mod.step_books(SimpleNamespace(build_dir=tmp_path, dry=False), 400.0)
    assert not got["ok"] and got["partial"] and got["books"] == done["books"]
    assert "timed out" in got["output"]
    md = mod.markdown({"date_utc": "d", "command": "c", "dry": False, "machine": {"host": "h", "gpu": "g"},
                       "seconds": 1.0, "ok": False, "steps": {"parity and speed": got}})
    assert "| 100,000 × 10 × 10,000 | es99 | 0.070 |" in md and "| parity and speed | FAILED | 60.0 | partial:" in md
