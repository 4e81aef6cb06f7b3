"""Parameter sweeps: the sets, their sharing of one revaluation (exact), the scores, the frontier and the proposal,
the proposed parameter file, ``gpurisk calibrate`` and a job of kind ``calibration``."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import gpurisk.backtest as bt
from gpurisk.calibration import proposal, sweep
from gpurisk.errors import ConfigError
from gpurisk.margin import house
from gpurisk.market import MarketStore, shipped_dir

from test_backtest import perp_book, synthetic_history

REPO = Path(__file__).resolve().parents[1]
FAST = house.Params(cross_venue=False, mc_scenarios=0)


def test_parameter_sets_expand_the_grid_base_first():
    sets = sweep.parameter_sets(FAST, {"vol_floor": [0.0, 1.0], "stress_factor": [0.25, 0.33]},
                                [{"apc_buffer": 0.1}])
    changes = [c for c, _ in sets]
    assert changes[0] == {}  # the base
    ps = [p for _, p in sets]
    assert len(ps) == 1 + 3 + 1  # (vol_floor 1.0, stress 0.33) is the base itself: dropped
    assert all(ps[i] != ps[j] for i in range(len(ps)) for j in range(i))
    assert dataclasses.replace(FAST, vol_floor=0.0, stress_factor=0.25) in ps
    with pytest.raises(ConfigError, match="no_such"):
        sweep.parameter_sets(FAST, {"no_such": [1]})
    with pytest.raises(ConfigError, match="vol_floor"):
        sweep.parameter_sets(FAST, {"vol_floor": [-1.0]})


def test_groups_share_scenarios_and_build_the_floor_leg():
    ps = [FAST, dataclasses.replace(FAST, stress_factor=0.2), dataclasses.replace(FAST, apc_floor=0.7),
          dataclasses.replace(FAST, vol_floor=0.5)]
    g = sweep.groups(ps)
    assert [sorted(idx) for _, idx in g] == [[0, 1, 2], [3]]
    assert g[0][0].apc_floor == 0.7


def _table(rows):
    t = pd.DataFrame(rows)
    t["frontier"] = sweep.frontier(t)
    return t


def test_frontier_and_proposal_by_hand():
    t = _table([
        dict(set=0, coverage_ok=True, cost_ok=True, im_over_es_mean=1.2, increase_5d=2.0),  # base
        dict(set=1, coverage_ok=True, cost_ok=True, im_over_es_mean=1.1, increase_5d=1.9),  # better on both
        dict(set=2, coverage_ok=True, cost_ok=True, im_over_es_mean=1.0, increase_5d=2.5),  # cheaper, more cyclical
        dict(set=3, coverage_ok=False, cost_ok=True, im_over_es_mean=0.8, increase_5d=1.0),  # does not cover
        dict(set=4, coverage_ok=True, cost_ok=False, im_over_es_mean=1.05, increase_5d=1.5),  # too dear somewhere
    ])
    # the frontier is over the covering sets: set 4 (cost limit broken somewhere) still dominates set 1
    assert list(t["frontier"]) == [False, False, True, False, True]
    assert sweep.propose(t) == 1  # the cheapest covering, cost-ok set no more cyclical than the base
    t2 = _table([dict(set=0, coverage_ok=False, cost_ok=True, im_over_es_mean=1.0, increase_5d=1.0)])
    assert sweep.propose(t2) is None


def test_proposed_file_rewrites_the_changed_values_and_parses_back():
    base = house.Params()
    new = dataclasses.replace(base, vol_floor=0.5, apc_indicator="BTC", mc_dof=4.0)
    row = pd.Series(dict(set=7, n_exceptions=60, n_obs=37000, kupiec_p_one_sided=1.0, min_green_share=0.93,
                         im_over_es_mean=1.1, im_over_es_max=1.4, increase_5d=1.8))
    base_row = row.copy()
    base_row["im_over_es_mean"], base_row["im_over_es_max"], base_row["increase_5d"] = 1.2, 1.47, 2.0
    text = (REPO / "jobs" / "params" / "house.toml").read_text()
    out = proposal.proposed_toml(base, new, row, base_row, text, "test run")
    p = Path(pytest.importorskip("tempfile").mkdtemp()) / "p.toml"
    p.write_text(out)
    assert house.load_params(str(p)) == new
    changed = [ln for ln in out.splitlines() if "# calibrated" in ln]
    assert len(changed) == 3 and all("test run set 7" in ln and "was" in ln for ln in changed)
    assert "[collateral.tiers]" in out  # the tables of the base file are kept
    plain = proposal.proposed_toml(base, new, row, base_row, None)
    p.write_text(plain)
    assert house.load_params(str(p)) == new


def test_each_set_equals_its_own_backtest():
    store = MarketStore(shipped_dir())
    grid = {"vol_floor": [0.0, 1.0], "stress_factor": [0.2, 0.33]}
    res = sweep.run(FAST, grid, None, "standard", "2022-05-05", "2022-05-20", store, "reference")
    t = res.table
    assert len(t) == 4 and res.meta["scenario_groups"] == 2
    for col in ("kupiec_p_one_sided", "min_green_share", "im_over_es_mean", "increase_5d", "mean_im_share",
                "coverage_ok", "cost_ok", "frontier", "proposed"):
        assert col in t.columns
    i = int(t.index[(t["param.vol_floor"] == 0.0) & (t["param.stress_factor"] == 0.2)][0])
    alone = bt.run(params=res.params[i], start="2022-05-05", end="2022-05-20", market=store, backend="reference")
    mine = res.summaries[res.summaries["set"] == i].drop(columns="set").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, alone.summary, rtol=1e-12)


def test_gpurisk_calibrate_on_a_synthetic_history(tmp_path):
    hist = synthetic_history(tmp_path / "hist", days=900)
    book = perp_book(tmp_path / "book")
    out = tmp_path / "cal"
    params = tmp_path / "p.toml"
    params.write_text("mc_scenarios = 0\ncross_venue = false\nlookback_days = 365\n")
    cmd = [sys.executable, "-m", "gpurisk.cli", "calibrate", "--params", str(params), "--grid", "vol_floor=0.0,1.0",
           "--grid", "apc_indicator=BTC,own", "--portfolios", str(book), "--start", "2020-01-01", "--end",
           "2020-06-30", "--market-data", str(hist), "--out", str(out), "--workers", "2", "--backend", "reference",
           "--no-fits", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    t = pd.read_parquet(out / "calibration.parquet")
    assert len(t) == 4 and (out / "report.html").is_file() and (out / "summaries.parquet").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario_groups"] == 2 and summary["market"]["path"] == str(hist.resolve())
    html = (out / "report.html").read_text()
    assert "Coverage, cost and procyclicality" in html and "calibration-sets" in html and "<svg" in html
    if summary["proposal"] is not None:
        prop = out / "house.proposed.toml"
        assert prop.is_file() and isinstance(house.load_params(str(prop)), house.Params)
    assert "parameter sets" in r.stdout


def test_a_calibration_job_runs_through_gpurisk_run(tmp_path):
    hist = synthetic_history(tmp_path / "hist", days=800)
    book = perp_book(tmp_path / "book")
    job = tmp_path / "cal.toml"
    job.write_text(f"""[job]
name = "cal"
kind = "calibration"
output = "runs"
workers = 2
backend = "reference"

[calibration]
portfolios = "{book}"
params = {{ mc_scenarios = 0, cross_venue = false, lookback_days = 365 }}
start = 2020-01-01
end = 2020-03-31
fit_start = 2019-06-01
fits = true

[calibration.grid]
stress_factor = [0.25, 0.33]

[market]
history = "{hist}"
""")
    from gpurisk.cli import main

    assert main(["run", str(job), "-q"]) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "succeeded" and man["kind"] == "calibration"
    fits = json.loads((run / "fits.json").read_text())
    assert set(fits) >= {"student_t", "garch", "adaptive"}
    assert fits["student_t"]["coins"] == ["BTC", "ETH"] and fits["student_t"]["nu"] > 2
    a = fits["adaptive"]
    assert a["adaptive_beats_ewma"] == (a["total"]["adaptive"] > a["total"]["ewma"])
    assert (run / "report.html").is_file()


def test_a_backtest_job_runs_through_gpurisk_run(tmp_path):
    hist = synthetic_history(tmp_path / "hist", days=700)
    book = perp_book(tmp_path / "book")
    job = tmp_path / "bt.toml"
    job.write_text(f"""[job]
name = "bt"
kind = "backtest"
output = "runs"
workers = 1
backend = "reference"

[backtest]
portfolios = "{book}"
params = {{ mc_scenarios = 0 }}
start = 2019-09-01
end = 2019-10-15
horizon_days = 1

[market]
history = "{hist}"
""")
    from gpurisk.cli import main

    assert main(["run", str(job), "-q"]) == 0
    run = sorted((tmp_path / "runs").iterdir())[0]
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "succeeded" and "daily.parquet" in man["outputs"]
    daily = pd.read_parquet(run / "daily.parquet")
    assert daily["date"].nunique() == 45 and set(daily["portfolio"]) == {"long_BTC", "short_BTC", "long_ETH",
                                                                        "short_ETH"}
    assert math.isclose(daily["pnl"].iloc[0], daily["pnl"].iloc[0])
    assert (run / "report.html").is_file()
