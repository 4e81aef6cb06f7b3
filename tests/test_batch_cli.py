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

from test_batch_fixtures import plain, read_frame, read_outputs

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


@pytest.mark.slow
def test_cli_run_twice_identical_and_matches_in_process(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(book="sample = {accounts = 40, seed = 3}"))
    assert main(["run", str(job), "--workers", "2", "--quiet"]) == 0
    out1 = capsys.readouterr().out
    assert "succeeded" in out1 and "accounts 40" in out1 and "house" in out1
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
    got = read_frame(runs[0] / "house" / "margin.parquet")
    pd.testing.assert_frame_equal(got, plain(want), check_dtype=False)
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


UNCOVERED_JOB = """
[job]
name = "unc"
backend = "reference"
output = "runs"

[book]
path = "book"

[[models]]
name = "house"
params = {mc_scenarios = 200, lookback_days = 365}

[[models]]
name = "venue"
"""


@pytest.mark.slow
def test_uncovered_venue_writes_every_table_alerts_and_exits_zero(tmp_path, capsys):
    """A balance at a venue no methodology covers: every table is written, the venue model marks the pair
    ``uncovered``, an ``uncovered_venue`` alert is raised and the run exits 0 (docs/operations.md)."""
    from gpurisk.generate import generate_book
    from gpurisk.io import TABLES, write_book

    g = generate_book(30, 5)
    extra = pd.DataFrame({"account_id": [g["balances"]["account_id"].iloc[0]], "venue": ["kraken"],
                          "asset": ["USDT"], "amount": [1000.0]})
    g["balances"] = pd.concat([g["balances"], extra], ignore_index=True)
    write_book(tmp_path / "book", {k: g[k] for k in TABLES}, g["meta"])
    job = tmp_path / "job.toml"
    job.write_text(UNCOVERED_JOB)
    assert main(["run", str(job), "--quiet"]) == 0
    out = capsys.readouterr().out
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert {"house/margin.parquet", "venue/margin.parquet", "rejects.parquet"} <= set(read_outputs(run))
    vm = read_frame(run / "venue" / "margin.parquet")
    kr = vm[vm["venue"] == "kraken"]
    assert len(kr) == 1 and kr["status"].iloc[0] == "uncovered" and kr["im_usd"].isna().all()
    assert (vm.loc[vm["venue"] != "kraken", "status"] != "uncovered").all()
    alerts = [json.loads(x) for x in (tmp_path / "runs" / "alerts.jsonl").read_text().splitlines()]
    unc = [a for a in alerts if a["alert"] == "uncovered_venue"]
    assert len(unc) == 1 and unc[0]["venues"] == ["kraken"] and unc[0]["value"] == 1 and unc[0]["model"] == "venue"
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "succeeded" and man["figures"]["venue"]["uncovered_venues"] == ["kraken"]
    assert "uncovered venue: 1 account × venue pair(s) at venue(s) kraken" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["models"]["venue"]["uncovered_pairs"] == 1 and summary["as_of"] == man["as_of"]
    # the venue model's predicted deficits are in the summary, computed here from its margin table
    cov = vm[vm["status"] != "uncovered"]
    short = cov[cov["excess_usd"] < 0]
    assert summary["models"]["venue"]["deficits"] == len(short)
    assert summary["models"]["venue"]["total_deficit_usd"] == pytest.approx(-short["excess_usd"].sum())
    prom = (run / "metrics.prom").read_text()
    assert 'gpurisk_uncovered_pairs{job="unc",model="venue"} 1' in prom
    assert 'gpurisk_book_as_of_timestamp_seconds{job="unc"}' in prom


KILL_JOB = """
[job]
name = "kill"
backend = "reference"
chunk_size = 3
output = "runs"

[book]
sample = {{accounts = 150, seed = 4}}

[[models]]
name = "measures"
scenarios = {{generator = "montecarlo", n_scenarios = 4000, seed = 3, lookback_days = 365}}
"""


@pytest.mark.slow
def test_cli_run_with_workers_killed_at_start_and_at_the_first_checkpoint_exits_zero(tmp_path, capsys):
    """The acceptance case through the command: same outputs as an undisturbed run, exit 0."""
    import os
    import signal
    import threading
    import time

    from test_batch_fixtures import KillAtStart, worker_pids

    job = tmp_path / "job.toml"
    job.write_text(KILL_JOB.format())
    assert main(["run", str(job), "--quiet"]) == 0
    base = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    at_start = KillAtStart()
    killed, stop = [], threading.Event()

    def at_first_checkpoint():
        while not stop.is_set():
            runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and p != base and p.name[0] != "."]
            if runs and any((runs[0] / "chunks").rglob("*.npz")) and at_start.killed:
                pids = worker_pids(at_start.before)
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=at_first_checkpoint, daemon=True)
    at_start.start()
    watcher.start()
    try:
        assert main(["run", str(job), "--quiet"]) == 0
    finally:
        at_start.stop.set()
        stop.set()
        at_start.join()
        watcher.join()
    assert at_start.killed and killed
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and p != base and p.name[0] != ".")
    assert read_outputs(run) == read_outputs(base)
    assert "succeeded" in capsys.readouterr().out
