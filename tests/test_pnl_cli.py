"""``gpurisk pnl`` and ``gpurisk scenarios`` end to end: files, values, numeraires and errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from gpurisk.cli import main
from gpurisk.io import write_book
from gpurisk.scenarios import exchange_grid, make_scenario_set, named_stress, read_scenarios, write_scenarios

AS_OF = "2024-06-01T00:00:00Z"
F_BTC, F_ETH = 65000.0, 3500.0
T_OPT = (pd.Timestamp("2024-06-28T08:00:00") - pd.Timestamp("2024-06-01")).total_seconds() / (365 * 86400)


def _tables():
    ins = pd.DataFrame({
        "instrument_id": ["BTC-PERP-INV", "ETH-PERP-LIN", "BTC-C-66000", "ETH-SPOT"],
        "venue": ["deribit", "binance", "deribit", "binance"],
        "underlying": ["BTC", "ETH", "BTC", "ETH"],
        "kind": ["perpetual", "perpetual", "option", "spot"],
        "settlement": ["inverse", "linear", "inverse", "linear"],
        "contract_size": [10.0, 0.01, 1.0, 1.0],
        "expiry": [None, None, "2024-06-28T08:00:00Z", None],
        "strike": [np.nan, np.nan, 66000.0, np.nan],
        "option_type": [None, None, "call", None],
    })
    mkt = pd.DataFrame({"instrument_id": ins["instrument_id"],
                        "underlying_price": [F_BTC, F_ETH, F_BTC, F_ETH],
                        "implied_vol": [np.nan, np.nan, 0.5, np.nan]})
    index = pd.DataFrame({"underlying": ["BTC", "ETH"], "price": [F_BTC, F_ETH]})
    pos = pd.DataFrame({"account_id": ["A", "A", "B", "B"], "instrument_id": ins["instrument_id"],
                        "quantity": [100.0, -5.0, 2.0, 1.0]})
    bal = pd.DataFrame({"account_id": ["A", "B"], "venue": ["deribit", "binance"], "asset": ["BTC", "ETH"],
                        "amount": [1.0, 2.0]})
    return {"instruments": ins, "market": mkt, "index": index, "positions": pos, "balances": bal}


@pytest.fixture()
def book_dir(tmp_path):
    return write_book(tmp_path / "book", _tables(), {"as_of": AS_OF})


def b76_call(F, K, T, s):
    n = NormalDist()
    st = s * math.sqrt(T)
    d1 = (math.log(F / K) + 0.5 * st * st) / st
    return F * n.cdf(d1) - K * n.cdf(d1 - st)


SHOCKS = [(-0.2, 0.1, 0.3), (0.0, 0.0, 0.0), (0.15, -0.05, -0.2)]  # (BTC, ETH, vol relative)


@pytest.fixture()
def scen_file(tmp_path):
    s = make_scenario_set(["BTC", "ETH"], [[a, b] for a, b, _ in SHOCKS], [[v, v] for _, _, v in SHOCKS],
                          scenario_id=np.array(["down", "flat", "up"], dtype=object))
    return write_scenarios(s, tmp_path / "s.csv")


@pytest.mark.parametrize("numeraire", ["usd", "settlement"])
def test_pnl_writes_one_row_per_instrument_and_scenario(tmp_path, book_dir, scen_file, numeraire, capsys):
    out = tmp_path / "out"
    rc = main(["pnl", str(book_dir), "--scenarios", str(scen_file), "--out", str(out), "--numeraire", numeraire])
    assert rc == 0, capsys.readouterr().err
    df = pd.read_parquet(out / "pnl.parquet")
    assert list(df.columns) == ["instrument_id", "scenario_id", "base_value", "scenario_value", "pnl", "numeraire"]
    assert len(df) == 4 * 3
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    summary = json.loads((out / "pnl_summary.json").read_text())
    assert summary["rows"] == 12 and summary["rejected_rows"] == 0
    v = df.set_index(["instrument_id", "scenario_id"])
    np.testing.assert_allclose(v["pnl"], v["scenario_value"] - v["base_value"], rtol=0, atol=1e-12)
    coin = numeraire == "settlement"
    for sid, (sb, se, sv) in zip(["down", "flat", "up"], SHOCKS):
        # inverse perpetual, 10 USD contracts: coin P&L q·s/(1+s) with q = 10/F; USD P&L 10·s
        r = v.loc[("BTC-PERP-INV", sid)]
        expect = (10.0 / F_BTC) * sb / (1 + sb) if coin else 10.0 * sb
        assert r["pnl"] == pytest.approx(expect, rel=1e-12, abs=1e-15)
        assert r["numeraire"] == ("BTC" if coin else "USD")
        # linear perpetual: cs·F·s USD
        r = v.loc[("ETH-PERP-LIN", sid)]
        assert r["pnl"] == pytest.approx(0.01 * F_ETH * se, rel=1e-12, abs=1e-12) and r["numeraire"] == "USD"
        # spot: value cs·F
        r = v.loc[("ETH-SPOT", sid)]
        assert r["base_value"] == pytest.approx(F_ETH) and r["scenario_value"] == pytest.approx(F_ETH * (1 + se))
        # inverse option: Black-76 in USD, / F in coin
        r = v.loc[("BTC-C-66000", sid)]
        b0 = b76_call(F_BTC, 66000.0, T_OPT, 0.5)
        b1 = b76_call(F_BTC * (1 + sb), 66000.0, T_OPT, 0.5 * (1 + sv))
        assert r["base_value"] == pytest.approx(b0 / F_BTC if coin else b0, rel=1e-9)
        assert r["scenario_value"] == pytest.approx(b1 / (F_BTC * (1 + sb)) if coin else b1, rel=1e-9)
    assert (v.loc[("BTC-C-66000", "flat"), "pnl"]) == 0.0


def test_pnl_errors_are_one_line_and_nonzero(tmp_path, book_dir, scen_file, capsys):
    # missing book
    rc = main(["pnl", str(tmp_path / "nothing"), "--scenarios", str(scen_file), "--out", str(tmp_path / "o1")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "nothing" in err
    # the scenario set does not cover the book's ETH instruments
    btc_only = write_scenarios(make_scenario_set(["BTC"], [[0.1]]), tmp_path / "btc.parquet")
    rc = main(["pnl", str(book_dir), "--scenarios", str(btc_only), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "ETH" in err
    assert not (tmp_path / "o2" / "pnl.parquet").exists()
    # --out is a file
    f = tmp_path / "file"
    f.write_text("x")
    rc = main(["pnl", str(book_dir), "--scenarios", str(scen_file), "--out", str(f)])
    assert rc != 0 and capsys.readouterr().err.count("\n") == 1


def test_cli_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("scenario_id,underlying,price_shock\na,BTC,-1.2\n")
    p = subprocess.run([sys.executable, "-m", "gpurisk.cli", "pnl", str(tmp_path), "--scenarios", str(bad),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert "bad.csv: line 2, column 'price_shock'" in p.stderr


@pytest.mark.parametrize("argv,check", [
    (["grid", "--underlyings", "BTC,ETH"], lambda s: s.n_scenarios == 35 and s.kind == "grid"),
    (["grid", "--per-underlying", "--no-extended", "--underlyings", "BTC,ETH"], lambda s: s.n_scenarios == 54),
    (["span", "--price-range", "0.1"], lambda s: s.n_scenarios == 16 and np.isclose(s.price_shock.min(), -0.3)),
    (["stress"], lambda s: s.n_scenarios == 8 and "USDT" in s.underlyings),
    (["historical", "--as-of", "2023-01-01", "--underlyings", "BTC,ETH", "--lookback-days", "50",
      "--no-stress-periods", "--horizon-days", "2"], lambda s: s.n_scenarios == 50 and s.horizon_days == 2),
    (["montecarlo", "--as-of", "2024-01-01", "--n-scenarios", "500", "--seed", "9", "--underlyings", "BTC,ETH",
      "--distribution", "student_t"], lambda s: s.n_scenarios == 500 and s.seed == 9),
])
def test_scenarios_command_writes_readable_files(tmp_path, capsys, argv, check):
    out = tmp_path / "s.parquet"
    rc = main(["scenarios", *argv, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    line = json.loads(capsys.readouterr().out)
    s = read_scenarios(out)
    assert check(s) and line["n_scenarios"] == s.n_scenarios and s.source


def test_scenarios_command_matches_the_api(tmp_path, capsys):
    out = tmp_path / "g.csv"
    assert main(["scenarios", "grid", "--underlyings", "BTC", "--out", str(out)]) == 0
    s, api = read_scenarios(out), exchange_grid(["BTC"])
    np.testing.assert_array_equal(s.price_shock, api.price_shock)
    np.testing.assert_array_equal(s.pnl_factor, api.pnl_factor)
    assert s.term == api.term
    toml = tmp_path / "mine.toml"
    toml.write_text('[[scenario]]\nid = "mine"\nprice_shock = { "*" = -0.4 }\n')
    out2 = tmp_path / "st.parquet"
    assert main(["scenarios", "stress", "--definition", str(toml), "--out", str(out2)]) == 0
    s2 = read_scenarios(out2)
    base = named_stress()
    assert list(s2.scenario_id) == list(base.scenario_id) + ["mine"]
    cols = [base.underlyings.index(u) for u in s2.underlyings]  # files sort the underlyings
    np.testing.assert_array_equal(s2.price_shock[:-1], base.price_shock[:, cols])
    np.testing.assert_array_equal(s2.price_shock[-1], [0.0 if u == "USDT" else -0.4 for u in s2.underlyings])


@pytest.mark.parametrize("argv,needle", [
    (["historical"], "--as-of"),
    (["montecarlo", "--as-of", "not a date"], "as_of"),
    (["grid", "--price-range", "1.5"], "price_range"),
    (["montecarlo", "--as-of", "2024-01-01", "--n-scenarios", "0"], "n_scenarios"),
    (["historical", "--as-of", "2024-01-01", "--horizon-days", "1.5"], "whole number"),
    (["stress", "--only-definition"], "--definition"),
    (["stress", "--underlyings", "BTC,LUNA"], "LUNA"),
])
def test_scenarios_command_errors(tmp_path, capsys, argv, needle):
    out = tmp_path / "x.parquet"
    rc = main(["scenarios", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not out.exists()


def test_out_with_a_missing_parent_is_a_one_line_error(tmp_path, book_dir, scen_file, capsys):
    """pnl and scenarios create the --out target, never a misspelt parent folder."""
    rc = main(["pnl", str(book_dir), "--scenarios", str(scen_file), "--out", str(tmp_path / "nope" / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "parent folder" in err and "Traceback" not in err
    rc = main(["scenarios", "grid", "--out", str(tmp_path / "nope" / "g.parquet")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "parent folder" in err and "Traceback" not in err
    assert not (tmp_path / "nope").exists()
    rc = main(["scenarios", "grid", "--out", str(tmp_path)])  # a folder where a file is wanted
    assert rc != 0 and "is a folder" in capsys.readouterr().err
    # the target itself may be created
    assert main(["pnl", str(book_dir), "--scenarios", str(scen_file), "--out", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "pnl.parquet").is_file()
