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
    assert list(steps) == ["install", "device", "tests", "sanitize", "parity and speed"]
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
