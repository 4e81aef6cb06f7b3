"""Scenario file form: round trips, hand-written files, defaults and every rejected case."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpurisk.cli import main
from gpurisk.errors import ScenarioError
from gpurisk.pricing import VOL_ABSOLUTE, VOL_RELATIVE, VOL_TERM, VolTerm
from gpurisk.scenarios import make_scenario_set, read_scenarios, write_scenarios
from gpurisk.scenarios.io import PARQUET_META_KEY, sidecar_path


def assert_same_set(a, b):
    assert a.underlyings == b.underlyings
    np.testing.assert_array_equal(a.price_shock, b.price_shock)
    np.testing.assert_array_equal(a.vol_shock, b.vol_shock)
    np.testing.assert_array_equal(a.vol_mode, b.vol_mode)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.pnl_factor, b.pnl_factor)
    assert list(a.label) == list(b.label)
    assert list(a.scenario_id) == list(b.scenario_id)
    for k in ("horizon_days", "kind", "seed", "source", "term"):
        assert getattr(a, k) == getattr(b, k), k


@settings(max_examples=25, deadline=None)
@given(
    S=st.integers(1, 6),
    U=st.integers(1, 4),
    seed=st.integers(0, 2**31),
    fmt=st.sampled_from(["parquet", "csv"]),
)
def test_round_trip_is_exact(tmp_path_factory, S, U, seed, fmt):
    rng = np.random.default_rng(seed)
    unders = ["ADA", "BTC", "ETH", "USDT"][:U]
    sset = make_scenario_set(
        unders,
        rng.uniform(-0.99, 3.0, (S, U)),
        rng.normal(0, 0.3, (S, U)),
        vol_mode=rng.integers(0, 3, S).astype(np.int8),
        weight=rng.uniform(0, 2, S),
        pnl_factor=rng.uniform(0, 1, S),
        label=np.array([f"scenario, {i} \"q\"" for i in range(S)], dtype=object),
        scenario_id=np.array([f"id{i}" for i in range(S)][::-1], dtype=object),
        horizon_days=float(rng.integers(0, 10)),
        kind="custom",
        seed=int(seed),
        source="round trip test",
        term=VolTerm(ref_days=30.0, power_short=0.3, power_long=0.13, min_vol_up=0.5),
    )
    path = tmp_path_factory.mktemp("rt") / f"s.{fmt}"
    write_scenarios(sset, path)
    assert_same_set(sset, read_scenarios(path))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_hand_written_csv_minimal_columns_get_defaults(tmp_path):
    p = tmp_path / "reg.csv"
    p.write_text(
        "scenario_id,underlying,price_shock\n"
        "crash,BTC,-0.3\ncrash,ETH,-0.4\n"
        "rally,BTC,0.2\nrally,ETH,0.25\n"
    )
    s = read_scenarios(p)
    assert s.underlyings == ("BTC", "ETH")
    assert list(s.scenario_id) == ["crash", "rally"]  # order of first appearance
    np.testing.assert_array_equal(s.price_shock, [[-0.3, -0.4], [0.2, 0.25]])
    assert np.all(s.vol_shock == 0) and np.all(s.weight == 1) and np.all(s.pnl_factor == 1)
    assert np.all(s.vol_mode == VOL_RELATIVE)
    assert list(s.label) == ["crash", "rally"]
    assert s.kind == "custom" and s.horizon_days == 0.0 and s.seed is None and s.term == VolTerm()


def test_hand_written_csv_with_sidecar_and_modes(tmp_path):
    p = tmp_path / "reg.csv"
    p.write_text(
        "scenario_id,underlying,price_shock,vol_shock,vol_mode,weight,pnl_factor,label\n"
        "a,BTC,-0.1,0.25,absolute,2,1,vol up\n"
        "b,BTC,0.1,-0.5,TERM,1,0.33,\n"
    )
    sidecar_path(p).write_text(json.dumps({"kind": "stress", "horizon_days": 2, "source": "regulator 2026",
                                           "term": {"ref_days": 30, "min_vol_up": 0.4}}))
    s = read_scenarios(p)
    assert list(s.vol_mode) == [VOL_ABSOLUTE, VOL_TERM]
    assert list(s.label) == ["vol up", "b"]
    assert s.kind == "stress" and s.horizon_days == 2.0 and s.source == "regulator 2026"
    assert s.term == VolTerm(min_vol_up=0.4)
    np.testing.assert_array_equal(s.weight, [2.0, 1.0])
    np.testing.assert_array_equal(s.pnl_factor, [1.0, 0.33])


HEADER = "scenario_id,underlying,price_shock,vol_shock,weight,label,vol_mode\n"
GOOD = "s1,BTC,-0.1,0.1,1,one,relative\ns1,ETH,-0.2,0.1,1,one,relative\n"

BAD_CSV = [
    ("unknown underlying", HEADER + "s1,BTC,-0.1,0,1,x,relative\ns1,LUNA,-0.9,0,1,x,relative\n",
     ["line 3", "'underlying'", "LUNA"]),
    ("nan shock", HEADER + GOOD + "s2,BTC,nan,0,1,x,relative\ns2,ETH,0.1,0,1,x,relative\n",
     ["line 4", "'price_shock'", "not a finite number"]),
    ("inf vol", HEADER + GOOD + "s2,BTC,0.1,inf,1,x,relative\ns2,ETH,0.1,0,1,x,relative\n",
     ["line 4", "'vol_shock'", "not a finite number"]),
    ("text shock", HEADER + "s1,BTC,-10%,0,1,x,relative\ns1,ETH,0.1,0,1,x,relative\n",
     ["line 2", "'price_shock'", "'-10%'"]),
    ("empty shock", HEADER + "s1,BTC,,0,1,x,relative\ns1,ETH,0.1,0,1,x,relative\n",
     ["line 2", "'price_shock'", "empty"]),
    ("missing column", "scenario_id,underlying,vol_shock\ns1,BTC,0.1\n", ["missing column", "price_shock"]),
    ("-100 %", HEADER + GOOD + "s2,BTC,-1,0,1,x,relative\ns2,ETH,0.1,0,1,x,relative\n",
     ["line 4", "'price_shock'", "-100 %"]),
    ("below -100 %", HEADER + "s1,BTC,-1.5,0,1,x,relative\ns1,ETH,0.1,0,1,x,relative\n",
     ["line 2", "'price_shock'", "> -1"]),
    ("missing underlying row", HEADER + GOOD + "s2,BTC,0.1,0,1,x,relative\n",
     ["'s2'", "no row for underlying 'ETH'"]),
    ("bad vol_mode", HEADER + "s1,BTC,0.1,0,1,x,relative\ns1,ETH,0.1,0,1,x,sticky\n",
     ["line 3", "'vol_mode'", "sticky"]),
    ("duplicate row", HEADER + GOOD + "s1,BTC,-0.1,0.1,1,one,relative\n", ["line 4", "duplicate"]),
    ("inconsistent weight", HEADER + "s1,BTC,0.1,0,1,x,relative\ns1,ETH,0.1,0,2,x,relative\n",
     ["line 3", "'weight'", "same on every row"]),
    ("negative weight", HEADER + "s1,BTC,0.1,0,-1,x,relative\ns1,ETH,0.1,0,-1,x,relative\n",
     ["line 2", "'weight'", "negative"]),
    ("empty underlying", HEADER + "s1,,0.1,0,1,x,relative\n", ["line 2", "'underlying'", "empty"]),
    ("negative pnl_factor", "scenario_id,underlying,price_shock,pnl_factor\ns1,BTC,0.1,0.5\ns1,ETH,0.1,0.5\n"
     "s2,BTC,0.1,-0.33\ns2,ETH,0.1,-0.33\n", ["line 4", "'pnl_factor'", "-0.33 is negative"]),
    ("no rows", HEADER, ["no scenario rows"]),
    ("empty file", "", ["empty"]),
]


@pytest.mark.parametrize("name,text,needles", BAD_CSV, ids=[c[0] for c in BAD_CSV])
def test_bad_csv_gets_one_line_error_naming_file_row_column(tmp_path, name, text, needles):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ScenarioError) as ei:
        read_scenarios(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "bad.csv" in msg
    for n in needles:
        assert n in msg, (n, msg)


@pytest.mark.parametrize("name,text,needles", BAD_CSV[:3] + BAD_CSV[5:10], ids=[c[0] for c in BAD_CSV[:3] + BAD_CSV[5:10]])
def test_bad_csv_through_cli_exits_nonzero_with_one_line(tmp_path, capsys, name, text, needles):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    # 'gpurisk pnl' reads the scenario file before the book, so the book folder need not exist
    rc = main(["pnl", str(tmp_path / "nobook"), "--scenarios", str(p), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gpurisk pnl: error: ") and "bad.csv" in err
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "out" / "pnl.parquet").exists()


def test_bad_sidecar_and_metadata(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text(HEADER + GOOD)
    sidecar_path(p).write_text("{not json")
    with pytest.raises(ScenarioError, match="meta.json.*not valid JSON"):
        read_scenarios(p)
    sidecar_path(p).write_text(json.dumps({"horizon_days": -1}))
    with pytest.raises(ScenarioError, match="horizon_days"):
        read_scenarios(p)
    sidecar_path(p).write_text(json.dumps({"term": {"power": 2}}))
    with pytest.raises(ScenarioError, match="unknown vol-term parameter"):
        read_scenarios(p)


def test_parquet_errors_name_row_and_metadata_key(tmp_path):
    df = pd.DataFrame({"scenario_id": ["a", "a", "b", "b"], "underlying": ["BTC", "ETH", "BTC", "ETH"],
                       "price_shock": [0.1, 0.2, np.inf, 0.0]})
    p = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), p)
    with pytest.raises(ScenarioError, match=r"s\.parquet: row 3, column 'price_shock'"):
        read_scenarios(p)
    df.loc[2, "price_shock"] = 0.0
    t = pa.Table.from_pandas(df, preserve_index=False)
    t = t.replace_schema_metadata({PARQUET_META_KEY: b'{"kind": "stress", "horizon_days": 5}'})
    pq.write_table(t, p)
    s = read_scenarios(p)
    assert s.kind == "stress" and s.horizon_days == 5.0 and s.n_scenarios == 2
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ScenarioError, match="not a readable Parquet"):
        read_scenarios(tmp_path / "junk.parquet")
    with pytest.raises(ScenarioError, match="not found"):
        read_scenarios(tmp_path / "missing.parquet")
    with pytest.raises(ScenarioError, match="unknown scenario file type"):
        read_scenarios(tmp_path / "s.xlsx")


def test_known_underlyings_can_be_extended(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("scenario_id,underlying,price_shock\na,AVAX,-0.2\n")
    with pytest.raises(ScenarioError, match="AVAX"):
        read_scenarios(p)
    assert read_scenarios(p, known_underlyings=["AVAX"]).underlyings == ("AVAX",)


def test_the_documented_csv_example_parses(tmp_path):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data-format.md").read_text().split("## Scenario sets", 1)[1]
    csv = doc.split("```csv\n", 1)[1].split("```", 1)[0]
    meta = doc.split("```json\n", 1)[1].split("```", 1)[0]
    p = tmp_path / "reg_stress_2026.csv"
    p.write_text(csv)
    sidecar_path(p).write_text(meta)
    s = read_scenarios(p)
    assert s.underlyings == ("BTC", "ETH", "USDT") and list(s.scenario_id) == ["crash", "depeg"]
    np.testing.assert_array_equal(s.price_shock, [[-0.35, -0.45, 0.0], [0.0, 0.0, -0.10]])
    assert list(s.vol_mode) == [VOL_ABSOLUTE, VOL_RELATIVE]
    assert s.kind == "stress" and s.horizon_days == 2.0


def test_written_files_have_ordinary_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    s = make_scenario_set(["BTC"], [[0.1]])
    for name in ("a.parquet", "a.csv", "a.csv.meta.json"):
        if not name.endswith(".json"):
            write_scenarios(s, tmp_path / name)
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


DIFFERING = [
    ("weight", "weight", ["1", "2"], "(2.0 vs 1.0)"),
    ("pnl_factor", "pnl_factor", ["0.33", "1"], "(1.0 vs 0.33)"),
    ("vol_mode", "vol_mode", ["relative", "absolute"], "('absolute' vs 'relative')"),
    ("label", "label", ["up", "down"], "('down' vs 'up')"),
]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("name,column,values,shown", DIFFERING, ids=[c[0] for c in DIFFERING])
def test_differing_scenario_level_values_show_plain_values(tmp_path, fmt, name, column, values, shown):
    """Messages show Python values and vol-mode names, never NumPy reprs such as np.int8(1) or np.float64(2.0)."""
    df = pd.DataFrame({"scenario_id": ["s1", "s1"], "underlying": ["BTC", "ETH"], "price_shock": [0.1, 0.2],
                       column: values})
    p = tmp_path / f"s.{fmt}"
    if fmt == "csv":
        df.to_csv(p, index=False)
    else:
        if column in ("weight", "pnl_factor"):
            df[column] = df[column].astype(np.float32 if column == "weight" else np.float64)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), p)
    with pytest.raises(ScenarioError) as ei:
        read_scenarios(p)
    msg = str(ei.value)
    assert "np." not in msg and "numpy" not in msg and "\n" not in msg
    assert f"column '{column}'" in msg and f"{name} differs" in msg and shown in msg, msg


def test_parquet_negative_pnl_factor_names_the_row(tmp_path):
    df = pd.DataFrame({"scenario_id": ["a", "a"], "underlying": ["BTC", "ETH"], "price_shock": [0.1, 0.2],
                       "pnl_factor": np.array([-1, -1], dtype=np.int8)})
    p = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), p)
    with pytest.raises(ScenarioError, match=r"s\.parquet: row 1, column 'pnl_factor': pnl_factor -1 is negative"):
        read_scenarios(p)
    df["pnl_factor"] = 0  # zero: the scenario does not count, allowed like a zero weight
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), p)
    assert read_scenarios(p).pnl_factor.tolist() == [0.0]


def test_unknown_underlying_message_lists_plain_names(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("scenario_id,underlying,price_shock\ns1,LUNA,0.1\n")
    with pytest.raises(ScenarioError) as ei:
        read_scenarios(p, known_underlyings=np.array(["BTC", "ETH"]))
    assert "known ['BTC', 'ETH']" in str(ei.value)
