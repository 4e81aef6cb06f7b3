"""``attribution.parquet`` end to end: per account and measure the contributions sum to the margin column,
from ``gpurisk margin --attribution`` and from ``gpurisk run --attribution`` (chunked on Dask), and a
user scenario file is attributed like any other set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gpurisk.actions import attribution as A
from gpurisk.cli import main

REL = 1e-9


def check_table(att: pd.DataFrame, margin: pd.DataFrame, measures):
    assert list(att.columns) == A.COLUMNS
    assert set(att["measure"]) == set(measures)
    g = att.groupby(["account_id", "measure"], observed=True)
    s = g["contribution_usd"].sum()
    gross = att.assign(a=att["contribution_usd"].abs()).groupby(["account_id", "measure"], observed=True)["a"].sum()
    m = margin.set_index("account_id")
    for meas in measures:
        got = s.xs(meas, level=1)
        want = m.loc[got.index, meas].to_numpy(dtype=float)
        scale = np.maximum(np.abs(want), gross.xs(meas, level=1).to_numpy())
        assert (np.abs(got.to_numpy() - want) <= REL * scale + 1e-12).all(), meas
    np.testing.assert_allclose(att["contribution_usd"], att["quantity"] * att["marginal_per_unit"], rtol=1e-12)
    assert att["instrument_id"].astype(str).str.startswith(A.COLLATERAL_PREFIX).any()  # collateral is attributed


def test_margin_command_writes_attribution_for_house_and_measures(tmp_path, sample_book_dir):
    out = tmp_path / "h"
    assert main(["margin", str(sample_book_dir), "--model", "house", "--params", str(_small_house(tmp_path)),
                 "--out", str(out), "--backend", "cpu", "--attribution"]) == 0
    att, margin = pd.read_parquet(out / "attribution.parquet"), pd.read_parquet(out / "margin.parquet")
    check_table(att, margin, ["es_99", "es_99_historical", "es_99_montecarlo"])
    s = json.loads((out / "summary.json").read_text())
    assert s["attribution"]["max_rel"] <= REL and s["attribution"]["rows"] == len(att)
    # a user scenario file is attributed as the house's ``user`` component
    import tomllib

    as_of = tomllib.loads((sample_book_dir / "book.toml").read_text())["as_of"]
    scen = tmp_path / "user.parquet"
    assert main(["scenarios", "montecarlo", "--out", str(scen), "--as-of", str(as_of), "--n-scenarios", "700",
                 "--lookback-days", "365"]) == 0
    out2 = tmp_path / "u"
    assert main(["margin", str(sample_book_dir), "--model", "house", "--params", str(_small_house(tmp_path)),
                 "--scenarios", str(scen), "--out", str(out2), "--backend", "reference", "--attribution"]) == 0
    check_table(pd.read_parquet(out2 / "attribution.parquet"), pd.read_parquet(out2 / "margin.parquet"),
                ["es_99", "es_99_user"])


def _small_house(tmp_path):
    f = tmp_path / "house.toml"
    f.write_text("mc_scenarios = 500\nlookback_days = 365\n")
    return f


def test_attribution_refuses_the_venue_models(tmp_path, sample_book_dir, capsys):
    rc = main(["margin", str(sample_book_dir), "--model", "venue", "--out", str(tmp_path / "v"), "--attribution"])
    assert rc == 2 and "--attribution applies to" in capsys.readouterr().err


@pytest.mark.slow
def test_run_with_attribution_and_a_transfer_plan(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text("""
[job]
name = "attr"
backend = "cpu"
chunk_size = 17
output = "runs"

[book]
sample = {accounts = 60, seed = 3}

[[models]]
name = "house"
params = {mc_scenarios = 300, lookback_days = 365}

[[models]]
name = "venue"
""")
    assert main(["run", str(job), "--workers", "1", "--quiet", "--attribution", "--plan-transfers"]) == 0
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    att = pd.read_parquet(run / "house" / "attribution.parquet")
    check_table(att, pd.read_parquet(run / "house" / "margin.parquet"), ["es_99", "es_99_historical",
                                                                         "es_99_montecarlo"])
    assert not (run / "venue" / "attribution.parquet").exists()  # the replicas are not ES
    man = json.loads((run / "manifest.json").read_text())
    assert "house/attribution.parquet" in man["outputs"] and "transfers/transfers.parquet" in man["outputs"]
    assert (run / "calls.parquet").is_file()
    s = json.loads((run / "transfers" / "summary.json").read_text())
    assert s["run_id"] == run.name
