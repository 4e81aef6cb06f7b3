"""Acceptance: a house run on a book dated after the end of its history fails with the staleness error; with
the history extended by ``gpurisk market import``, the same run succeeds and uses the new rows (its IM
changes, and the summary names the new history end date). Through ``gpurisk margin`` and ``gpurisk run``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gpurisk.cli import main
from gpurisk.margin.output import read_metadata
from gpurisk.market import ENV_VAR, shipped_dir

AS_OF = "2025-01-06T08:00:00Z"  # six days after the shipped history's last close (2024-12-31)
DAY0 = 1735689600000  # 2025-01-01 00:00 UTC, ms
#: illustrative daily bars 2025-01-01..05 (open, high, low, close, volume), as CCXT's fetch_ohlcv returns them
BARS = {
    "BTC": [(93576.0, 95151.15, 92888.0, 94591.79, 10373.3), (94591.78, 97839.5, 94392.0, 96984.79, 21970.5),
            (96984.79, 98976.91, 96100.01, 98174.18, 15253.8), (98174.17, 98778.43, 97514.79, 98236.23, 8990.1),
            (98236.24, 98813.3, 97291.76, 98314.96, 8095.6)],
    "ETH": [(3332.08, 3366.41, 3321.37, 3353.49, 190322.1), (3353.48, 3498.0, 3343.05, 3451.71, 391001.2),
            (3451.71, 3624.24, 3418.0, 3605.36, 351234.6), (3605.36, 3673.71, 3582.12, 3656.81, 210987.7),
            (3656.81, 3675.74, 3607.41, 3635.4, 180123.5)],
    "SOL": [(189.31, 194.19, 188.1, 193.7, 2456789.0), (193.7, 210.5, 192.9, 208.5, 5678901.0),
            (208.5, 218.9, 205.3, 215.6, 4567890.0), (215.6, 219.9, 213.0, 217.2, 3123456.0),
            (217.2, 220.1, 210.3, 213.1, 2987654.0)],
}
PARAMS = "mc_scenarios = 1000\n"


def ccxt_files(folder):
    folder.mkdir()
    out = []
    for coin, rows in BARS.items():
        f = folder / f"{coin}USDT_1d.json"
        f.write_text(json.dumps([[DAY0 + i * 86_400_000, *r] for i, r in enumerate(rows)]))
        out.append(str(f))
    return out


def ewma_vol(closes: np.ndarray, lam: float = 0.94) -> float:
    """The RiskMetrics recursion written out, started at the first squared return."""
    r = np.diff(np.log(closes))
    v = r[0] ** 2
    for x in r[1:]:
        v = lam * v + (1 - lam) * x * x
    return float(np.sqrt(v))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A history folder copied from the shipped one, and a sample book dated 2025-01-06 08:00 UTC."""
    tmp = tmp_path_factory.mktemp("acceptance")
    assert main(["market", "init", str(tmp / "hist")]) == 0
    assert main(["generate", "--accounts", "30", "--seed", "2", "--as-of", AS_OF, "--market-data", str(tmp / "hist"),
                 "--out", str(tmp / "book")]) == 0
    (tmp / "house.toml").write_text(PARAMS)
    return tmp


def margin(world, out, *extra):
    return main(["margin", str(world / "book"), "--model", "house", "--params", str(world / "house.toml"),
                 "--backend", "cpu", "--market-data", str(world / "hist"), "--out", str(world / out), *extra])


def test_stale_run_fails_then_import_extends_the_history_and_the_same_run_succeeds(world, capsys):
    # 1. the history ends 2024-12-31: six days before the book -> the staleness error, one line, exit 2
    assert margin(world, "stale") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "market history ends 2024-12-31" in err and "6 days before the book's as-of 2025-01-06T08:00:00Z" in err
    assert not (world / "stale" / "summary.json").exists()
    # 2. allowed, it runs on the old history and says so in every output
    assert margin(world, "allowed", "--allow-stale-history") == 0
    capsys.readouterr()
    old = json.loads((world / "allowed" / "summary.json").read_text())
    assert old["market_history"]["stale"] is True and old["market_history"]["end"] == "2024-12-31"
    assert read_metadata(world / "allowed" / "margin.parquet")["market_history"]["stale"] is True
    # 3. extend the history with the bars of 2025-01-01..05 (CCXT OHLCV JSON)
    files = ccxt_files(world / "new_bars")
    assert main(["market", "import", *files, "--into", str(world / "hist")]) == 0
    assert "15 rows read: 15 added" in capsys.readouterr().out
    # 4. the same run now succeeds on the new rows
    assert margin(world, "fresh") == 0
    capsys.readouterr()
    new = json.loads((world / "fresh" / "summary.json").read_text())
    h = new["market_history"]
    assert (h["end"], h["age_days"], h["stale"]) == ("2025-01-05", 1, False)
    assert new["history_date"] == "2025-01-05"
    assert read_metadata(world / "fresh" / "margin.parquet")["market_history"]["end"] == "2025-01-05"
    assert new["total_im"] != pytest.approx(old["total_im"], rel=1e-6)  # its IM changes
    # the new rows are read: the APC indicator's EWMA vol over the shipped closes and the imported ones
    shipped = pd.read_csv(shipped_dir() / "market" / "daily" / "BTCUSDT_1d.csv")["close"].to_numpy()
    closes = np.concatenate([shipped, [r[3] for r in BARS["BTC"]]])
    # (the APC is released per coin by default: BTC's state is under apc.by_underlying)
    assert new["apc"]["by_underlying"]["BTC"]["short_daily_vol"] == pytest.approx(ewma_vol(closes), rel=1e-9)
    assert old["apc"]["by_underlying"]["BTC"]["short_daily_vol"] == pytest.approx(ewma_vol(shipped), rel=1e-9)
    assert "up to bar 2025-01-05" in new["scenarios"]["historical"]["source"]
    # 5. importing the same files again changes nothing, and the run gives the same numbers
    snap = (world / "hist" / "market" / "daily" / "BTCUSDT_1d.csv").stat().st_mtime_ns
    assert main(["market", "import", *files, "--into", str(world / "hist")]) == 0
    assert "0 added, 5 duplicate" in capsys.readouterr().out
    assert (world / "hist" / "market" / "daily" / "BTCUSDT_1d.csv").stat().st_mtime_ns == snap
    assert margin(world, "again") == 0
    capsys.readouterr()
    pd.testing.assert_frame_equal(pd.read_parquet(world / "again" / "margin.parquet"),
                                  pd.read_parquet(world / "fresh" / "margin.parquet"))


JOB = """
[job]
name = "{name}"
backend = "cpu"
output = "runs"

[book]
path = "{book}"

[[models]]
name = "house"
params = {{mc_scenarios = 1000}}
"""


@pytest.mark.slow
def test_the_batch_fails_with_an_alert_on_stale_history_and_runs_on_the_extended_one(world, tmp_path, capsys,
                                                                                   monkeypatch):
    # the batch reads the history named by GPURISK_MARKET_DATA (a model given no store uses it)
    stale = tmp_path / "stale_hist"
    assert main(["market", "init", str(stale)]) == 0
    monkeypatch.setenv(ENV_VAR, str(stale))
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(name="acc", book=world / "book"))
    assert main(["run", str(job), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gpurisk run: error: run") and "market history ends 2024-12-31" in err
    alerts = [json.loads(x) for x in (tmp_path / "runs" / "alerts.jsonl").read_text().splitlines()]
    assert alerts[-1]["alert"] == "job_failure" and "market history ends 2024-12-31" in alerts[-1]["message"]
    # extended by an import, the same job runs on the new rows
    assert main(["market", "import", *ccxt_files(tmp_path / "bars"), "--into", str(stale)]) == 0
    assert main(["run", str(job), "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    run = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))[-1]
    summary = json.loads((run / "house" / "summary.json").read_text())
    assert summary["market_history"]["end"] == "2025-01-05" and not summary["market_history"]["stale"]
