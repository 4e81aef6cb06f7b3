"""``gpurisk run`` end to end with the real models, loader and sample generator (embedded cluster)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from gpurisk.batch import sources
from gpurisk.cli import main
from gpurisk.errors import BookError
from gpurisk.margin import compute
from gpurisk.io import load_book

from test_batch_fixtures import read_outputs

JOB = """
[job]
name = "mini"
backend = "reference"
chunk_size = 13
output = "runs"

[book]
{book}

[[models]]
name = "house"
params = {{mc_scenarios = 200, lookback_days = 365}}

[[models]]
name = "measures"
label = "stress"
scenarios = {{generator = "stress", horizon_days = 2.0}}

[alerts]
max_rejects_ratio = 0.5
"""


def test_cli_run_twice_identical_and_matches_in_process(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(book="sample = {accounts = 40, seed = 3}"))
    assert main(["run", str(job), "--workers", "2", "--quiet"]) == 0
    out1 = capsys.readouterr().out
    assert "succeeded" in out1 and "accounts  40" in out1 and "house" in out1
    assert main(["run", str(job), "--workers", "1", "--chunk-size", "auto", "--quiet"]) == 0
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2
    a, b = read_outputs(runs[0]), read_outputs(runs[1])
    assert set(a) >= {"house/margin.parquet", "house/calls.parquet", "stress/margin.parquet", "rejects.parquet"}
    assert a == b
    # independent: the same model run in-process, unchunked, through gpurisk.margin.compute
    cache = next((tmp_path / "runs" / ".cache").iterdir())
    assert cache.name.startswith("sample-a40-s3-g")  # keyed by the generator code too
    book = load_book(cache).book
    from gpurisk.margin import get_model

    house = get_model("house")
    params = house.load_params(None)
    import dataclasses

    params = dataclasses.replace(params, mc_scenarios=200, lookback_days=365)
    want = compute(book, "house", params=params, backend="reference").tables["margin"]
    got = pd.read_parquet(runs[0] / "house" / "margin.parquet")
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True), check_dtype=False)
    man = json.loads((runs[0] / "manifest.json").read_text())
    assert man["counts"]["balanced"] and man["code"]["version"]
    assert any(k.startswith("book/") for k in man["inputs"])


def test_cli_failed_job_is_one_line_non_zero_and_alerted(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(book='path = "missing_book"'))
    assert main(["run", str(job), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("gpurisk run: error: job mini failed") and "missing_book: book not found" in last
    assert "Traceback" not in err
    alerts = [json.loads(x) for x in (tmp_path / "runs" / "alerts.jsonl").read_text().splitlines()]
    assert alerts[-1]["alert"] == "job_failure"


def test_latest_snapshot(tmp_path):
    for name in ("2026-11-21T0800Z", "2026-11-21T1200Z", "2026-11-21T1600Z.tmp", ".hidden"):
        (tmp_path / name).mkdir()
    assert sources.latest_snapshot(tmp_path).name == "2026-11-21T1200Z"
    with pytest.raises(BookError, match="no snapshot"):
        sources.latest_snapshot(tmp_path / "2026-11-21T0800Z")
    shutil.rmtree(tmp_path / "2026-11-21T0800Z")
