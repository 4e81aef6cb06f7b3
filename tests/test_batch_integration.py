"""``gpurisk run`` wiring of the job options that reach beyond the margin batch: the market history
(``--market-data``, staleness), the pre-run reconciliation, the FIXML and HTML outputs, and job kinds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gpurisk.cli import main

from test_batch_fixtures import write_book_folder

JOB = """
[job]
name = "wired"
backend = "reference"
output = "runs"

[book]
path = "book"

[[models]]
name = "measures"
scenarios = {{generator = "stress", horizon_days = 1.0}}

{extra}
"""


def _job(tmp_path: Path, extra: str = "") -> Path:
    write_book_folder(tmp_path / "book", 20)
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(extra=extra))
    return job


def _runs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))


def _alerts(tmp_path: Path) -> list[dict]:
    f = tmp_path / "runs" / "alerts.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


@pytest.mark.slow
def test_reconciliation_outputs_and_report(tmp_path, capsys):
    pytest.importorskip("defusedxml")
    job = _job(tmp_path, '[reconcile]\nexternal = ["book"]\non_break = "stop"\n\n[outputs]\nfixml = true\n')
    assert main(["run", str(job), "--workers", "1", "--quiet"]) == 0, capsys.readouterr().err
    run = _runs(tmp_path)[-1]
    rec = json.loads((run / "reconcile" / "summary.json").read_text())
    assert rec["breaks"] == 0 and sum(rec["compared"].values()) > 0  # the book against itself
    xml = sorted((run / "measures" / "fixml").glob("*.xml"))
    margin = pd.read_parquet(run / "measures" / "margin.parquet")
    assert len(xml) == margin["account_id"].nunique() and "MgnReqmtRpt" in xml[0].read_text()
    man = json.loads((run / "manifest.json").read_text())
    assert man["reconcile"]["breaks"] == 0 and any(k.startswith("measures/fixml/") for k in man["outputs"])
    assert man["market"]["source"] == "shipped" and len(man["market"]["fingerprint"]) >= 16

    # a planted break: one external position differs, the job stops the run before any margin work
    ext = tmp_path / "external"
    shutil.copytree(tmp_path / "book", ext)
    pos = pd.read_parquet(ext / "positions.parquet")
    pos.loc[0, "quantity"] = pos.loc[0, "quantity"] * 2 + 1
    pos.to_parquet(ext / "positions.parquet", index=False)
    job.write_text(JOB.format(extra='[reconcile]\nexternal = ["external"]\non_break = "stop"\n'))
    assert main(["run", str(job), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "reconciliation before the run" in err
    run = _runs(tmp_path)[-1]
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    assert not (run / "measures").exists() and (run / "reconcile" / "breaks.parquet").exists()
    assert any(a.get("alert") == "reconciliation_breaks" for a in _alerts(tmp_path))


@pytest.mark.slow
def test_stale_history_through_the_market_data_flag(tmp_path, capsys):
    from gpurisk.market.store import shipped_dir

    job = _job(tmp_path, "")
    job.write_text(job.read_text().replace('name = "measures"\nscenarios = {generator = "stress", horizon_days = 1.0}',
                                           'name = "house"\nparams = {mc_scenarios = 100, lookback_days = 365}'))
    hist = tmp_path / "hist"
    shutil.copytree(shipped_dir(), hist)
    for f in (hist / "market" / "daily").glob("*_1d.csv"):  # the history ends 2024-05-01
        df = pd.read_csv(f)
        df[df["timestamp"] < "2024-05-02"].to_csv(f, index=False)
    assert main(["run", str(job), "--workers", "1", "--quiet", "--market-data", str(hist)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "2024-05-01" in err and "max_history_age_days" in err.replace("-", "_") or "stale" in err
    assert main(["run", str(job), "--workers", "1", "--quiet", "--market-data", str(hist),
                 "--allow-stale-history"]) == 0
    run = _runs(tmp_path)[-1]
    summary = json.loads((run / "house" / "summary.json").read_text())
    assert summary["market_history"]["stale"] and summary["market_history"]["end"].startswith("2024-05-01")
    assert any(a.get("alert") == "stale_history" for a in _alerts(tmp_path))


def test_a_stress_job_runs_through_gpurisk_run(tmp_path, capsys):
    write_book_folder(tmp_path / "book", 12)
    job = tmp_path / "stress.toml"
    job.write_text('[job]\nname = "st"\nkind = "stress"\nbackend = "reference"\noutput = "runs"\n\n'
                   '[book]\npath = "book"\n\n[stress]\nfamilies = ["hypothetical", "squeeze"]\nreport = false\n'
                   'sensitivity = false\nreverse = false\n\n[market]\nallow_stale_history = true\n')
    rc = main(["run", str(job), "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "cover" in out.out.lower()
    run = _runs(tmp_path)[-1]
    assert (run / "account_losses.parquet").exists() and (run / "cover.parquet").exists()
