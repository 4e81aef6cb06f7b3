"""``gpurisk margin`` end to end, the model registry and the callable ``gpurisk.margin`` module."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import gpurisk.margin as gm
from gpurisk import io
from gpurisk.cli import main
from gpurisk.errors import ConfigError
from gpurisk.generate import generate_book
from gpurisk.scenarios import make_scenario_set
from gpurisk.scenarios.io import write_scenarios


@pytest.fixture(scope="module")
def book_dir(tmp_path_factory):
    tb = generate_book(150, 3)
    meta = tb.pop("meta")
    pos = tb["positions"]
    # one bad row: a position on an instrument the book does not have -> a reject, not a crash
    tb["positions"] = pd.concat([pos, pd.DataFrame({"account_id": ["ACCBAD"], "instrument_id": ["NO-SUCH"],
                                                    "quantity": [1.0]})], ignore_index=True)
    d = tmp_path_factory.mktemp("book")
    io.write_book(d, tb, meta)
    return d


@pytest.fixture(scope="module")
def scen_file(tmp_path_factory):
    rng = np.random.default_rng(1)
    s = make_scenario_set(["BTC", "ETH", "SOL"], rng.normal(0, 0.06, (600, 3)), rng.normal(0, 0.15, (600, 3)),
                          horizon_days=2.0, kind="custom", source="test draws")
    f = tmp_path_factory.mktemp("scen") / "scen.parquet"
    write_scenarios(s, f)
    return f


def _read(out, name):
    return pd.read_parquet(out / f"{name}.parquet")


def test_measures_command(book_dir, scen_file, tmp_path):
    out = tmp_path / "m"
    rc = main(["margin", str(book_dir), "--model", "measures", "--scenarios", str(scen_file), "--out", str(out),
               "--backend", "reference"])
    assert rc == 0
    m = _read(out, "margin")
    from gpurisk.margin.plan import STANDARD_COLUMNS

    assert list(m.columns) == [*STANDARD_COLUMNS, "worst", "var_99", "es_99"]
    assert (m["im_usd"] == m["es_99"].clip(lower=0.0)).all() and (m["venue"] == "ALL").all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejects"] == 1 and (out / "rejects.parquet").exists()
    assert summary["backend"] == "reference" and summary["gpu_fallbacks"] == 0
    assert summary["accounts"] == len(m) and "ACCBAD" not in set(m["account_id"])
    # the same numbers as the Python API on the same book and scenarios
    from gpurisk.scenarios.io import read_scenarios

    book = io.load_book(book_dir).book
    api = gm(book, model="measures", scenarios=read_scenarios(scen_file), backend="reference").tables["margin"]
    pd.testing.assert_frame_equal(m[["account_id", "worst", "var_99", "es_99"]],
                                  api[["account_id", "worst", "var_99", "es_99"]], check_dtype=False)


def test_measures_levels_from_params_file(book_dir, scen_file, tmp_path):
    pf = tmp_path / "m.toml"
    pf.write_text("levels = [0.99, 0.975]\n")
    out = tmp_path / "m"
    assert main(["margin", str(book_dir), "--model", "measures", "--scenarios", str(scen_file), "--params", str(pf),
                 "--out", str(out), "--backend", "reference"]) == 0
    m = _read(out, "margin")
    assert {"var_99", "var_97_5", "es_99", "es_97_5"} <= set(m.columns)
    assert (m["es_99"] >= m["es_97_5"] - 1e-9).all()


def test_house_command_writes_all_tables(book_dir, scen_file, tmp_path):
    out = tmp_path / "h"
    assert main(["margin", str(book_dir), "--model", "house", "--scenarios", str(scen_file), "--out", str(out)]) == 0
    m, c, v = _read(out, "margin"), _read(out, "calls"), _read(out, "venue_margin")
    s = json.loads((out / "summary.json").read_text())
    for col in ("account_id", "model", "currency", "im", "mm", "equity", "excess", "status", "call_amount_usd",
                "cross_margin_benefit"):
        assert col in m.columns
    assert set(m["status"]) <= {"ok", "call", "reduce_only", "liquidation"}
    assert set(c["account_id"]) == set(m.loc[m["status"] != "ok", "account_id"])
    assert s["total_im"] == pytest.approx(m["im"].sum())
    assert s["im_by_venue_standalone"] == pytest.approx(v.groupby("venue")["im"].sum().to_dict())
    assert s["calls"] == {k: int((m["status"] == k).sum()) for k in ("ok", "call", "reduce_only", "liquidation")}
    assert s["rejects"] == 1 and s["backend"] in ("cpu", "gpu", "reference")
    assert sorted(s["tables"]) == ["calls.parquet", "margin.parquet", "rejects.parquet", "venue_margin.parquet"]
    assert not list(out.glob(".*tmp"))  # no temp files left behind


def test_bad_params_file_fails_cleanly(book_dir, tmp_path, capsys):
    pf = tmp_path / "bad.toml"
    pf.write_text("mm_factor = 2.0\n")
    out = tmp_path / "o"
    rc = main(["margin", str(book_dir), "--model", "house", "--params", str(pf), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "bad.toml" in err and "mm_factor" in err
    assert not out.exists()


def test_missing_scenario_file_fails_cleanly(book_dir, tmp_path, capsys):
    rc = main(["margin", str(book_dir), "--model", "measures", "--scenarios", str(tmp_path / "nope.parquet"),
               "--out", str(tmp_path / "o")])
    assert rc != 0 and "nope.parquet" in capsys.readouterr().err


def test_missing_book_fails_cleanly(tmp_path, capsys):
    rc = main(["margin", str(tmp_path / "nobook"), "--model", "measures", "--out", str(tmp_path / "o")])
    assert rc != 0 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_unknown_model_is_rejected_by_the_parser(book_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["margin", str(book_dir), "--model", "nosuch", "--out", str(tmp_path / "o")])
    assert e.value.code != 0


def test_registry_resolves_every_available_model():
    for name in gm.MODELS:
        try:
            mod = gm.get_model(name)
        except ConfigError:
            continue  # not in this build
        for attr in ("Params", "load_params", "plan", "finalize"):
            assert hasattr(mod, attr), (name, attr)
    with pytest.raises(ConfigError, match="unknown margin model"):
        gm.get_model("nosuch")


def test_module_is_callable(book_dir, scen_file):
    from gpurisk.scenarios.io import read_scenarios

    book = io.load_book(book_dir).book
    s = read_scenarios(scen_file)
    a = gm(book, model="measures", scenarios=s, backend="reference")
    b = gm.compute(book, model="measures", scenarios=s, backend="reference")
    pd.testing.assert_frame_equal(a.tables["margin"], b.tables["margin"])
    assert a.summary["backend"] == "reference"


def test_unusable_backend_is_a_clean_error(book_dir, scen_file, tmp_path, capsys):
    from gpurisk import backends

    try:
        backends.get("gpu")
        pytest.skip("a GPU is usable here")
    except backends.BackendUnavailable:
        pass
    rc = main(["margin", str(book_dir), "--model", "measures", "--scenarios", str(scen_file), "--backend", "gpu",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "gpu" in err and len(err.splitlines()) == 1


def test_out_that_is_a_file_fails_cleanly(book_dir, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("keep me")
    rc = main(["margin", str(book_dir), "--model", "measures", "--out", str(f), "--backend", "reference"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "taken" in err and "--out" in err
    assert "Traceback" not in err and f.read_text() == "keep me"


def test_out_that_cannot_be_written_fails_cleanly(book_dir, scen_file, tmp_path, capsys):
    """A table path taken by a folder fails at the write as one line naming it."""
    out = tmp_path / "o"
    (out / "margin.parquet").mkdir(parents=True)
    rc = main(["margin", str(book_dir), "--model", "measures", "--scenarios", str(scen_file), "--out", str(out),
               "--backend", "reference"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "margin.parquet" in err and "Traceback" not in err


def test_printed_accounts_are_distinct_accounts_for_every_model(tmp_path, capsys):
    """Venue models have several rows per account; the printed count and the summary count accounts."""
    tb = generate_book(20, 4)
    meta = tb.pop("meta")
    d = tmp_path / "book"
    io.write_book(d, tb, meta)
    for model in ("venue", "okx", "deribit"):
        out = tmp_path / model
        assert main(["margin", str(d), "--model", model, "--out", str(out), "--backend", "reference"]) == 0
        printed = capsys.readouterr().out
        m = _read(out, "margin")
        n = m["account_id"].nunique()
        if model == "venue":
            assert len(m) > n  # several rows per account, so a row count would be wrong
        assert f": {n} accounts," in printed
        assert json.loads((out / "summary.json").read_text())["accounts"] == n


@pytest.mark.parametrize("model", ["deribit", "okx", "venue"])
def test_venue_models_refuse_scenarios_instead_of_ignoring_them(book_dir, scen_file, tmp_path, capsys, model):
    out = tmp_path / model
    rc = main(["margin", str(book_dir), "--model", model, "--scenarios", str(scen_file), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "cannot take a scenario set" in err and not out.exists()


def test_component_and_units_metadata(book_dir, scen_file, tmp_path):
    from gpurisk.margin.output import read_metadata

    a, b = tmp_path / "user", tmp_path / "stress"
    assert main(["margin", str(book_dir), "--model", "house", "--scenarios", str(scen_file), "--out", str(a),
                 "--backend", "reference"]) == 0
    assert main(["margin", str(book_dir), "--model", "house", "--scenarios", str(scen_file), "--component", "stress",
                 "--out", str(b), "--backend", "reference"]) == 0
    ma, mb = _read(a, "margin"), _read(b, "margin")
    assert list(ma.columns) == list(mb.columns)  # one schema whatever the component
    assert (ma["base_component"].astype(str).isin(["user", "none"])).all()
    assert (mb["base_component"].astype(str).isin(["stress", "none"])).all()
    np.testing.assert_allclose(mb["stress_charge"], 0.33 * mb["stress_worst"], rtol=1e-12)
    meta = read_metadata(a / "margin.parquet")
    assert meta["model"] == "house" and meta["units"]["im_usd"] == "USD" and meta["units"]["im"] == "currency"
    assert meta["as_of"].endswith("Z") and meta["scenarios_file"] == str(scen_file)
    assert str(ma["status"].dtype) == "category"
