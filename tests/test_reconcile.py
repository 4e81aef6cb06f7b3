"""Reconciliation: every planted break is found, nothing within tolerance is, and the outputs count what they say."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gpurisk import reconcile as R
from gpurisk.cli import main

from conftest import TINY_AS_OF, tiny_tables

VENUES = ["deribit", "okx", "binance"]
POSITION_TYPES = ["missing_internal", "missing_external", "quantity_mismatch", "side_mismatch", "price_mismatch",
                  "unmapped_symbol"]
COLLATERAL_TYPES = ["missing_internal", "missing_external", "amount_mismatch"]


def _side(pos, bal, unmapped=None, label=""):
    empty_u = pd.DataFrame({"account_id": [], "venue": [], "symbol": []}, dtype=object)
    return R.Side(positions=pd.DataFrame(pos, columns=["account_id", "venue", "instrument_id", "quantity", "price"]),
                  balances=pd.DataFrame(bal, columns=["account_id", "venue", "asset", "amount"]),
                  unmapped=pd.DataFrame(unmapped, columns=["account_id", "venue", "symbol"]) if unmapped else empty_u,
                  label=label)


@st.composite
def planted(draw):
    n_pos = draw(st.integers(8, 30))
    n_bal = draw(st.integers(4, 12))
    tol = {
        "quantity": R.Tolerance(draw(st.floats(0, 1e-3)), draw(st.floats(0, 1e-3))),
        "price": R.Tolerance(draw(st.floats(0, 1.0)), draw(st.floats(0, 1e-2))),
        "amount": R.Tolerance(draw(st.floats(0, 1e-3)), draw(st.floats(0, 1e-3))),
    }
    venue_tol = {}
    if draw(st.booleans()):
        venue_tol["okx"] = {"quantity": R.Tolerance(draw(st.floats(0, 1e-2)), draw(st.floats(0, 1e-2)))}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    accounts = [f"A{i}" for i in range(4)]
    pos = [(accounts[rng.integers(4)], VENUES[rng.integers(3)], f"I{i}",
            float(rng.choice([-1, 1]) * 10 ** rng.uniform(-2, 4)), float(10 ** rng.uniform(1, 5)))
           for i in range(n_pos)]
    bal = [(accounts[i % 4], VENUES[i % 3], f"C{i}", float(rng.choice([-1, 1]) * 10 ** rng.uniform(-2, 6)))
           for i in range(n_bal)]
    settings_ = R.Settings(tolerances=tol, venues=venue_tol)

    def wiggle(value, column, venue):
        a, r = settings_.tolerance(column, [venue])
        return value + 0.4 * (a[0] + r[0] * abs(value)) * rng.uniform(-1, 1)

    external_pos = [(a, v, i, wiggle(q, "quantity", v), wiggle(p, "price", v)) for a, v, i, q, p in pos]
    external_bal = [(a, v, c, wiggle(x, "amount", v)) for a, v, c, x in bal]
    internal_pos = list(pos)
    internal_bal = list(bal)
    unmapped = []
    expected = set()
    kinds = draw(st.lists(st.sampled_from(POSITION_TYPES), min_size=0, max_size=6))
    keys = list(rng.permutation(n_pos))
    for k, kind in zip(keys, kinds):
        a, v, i, q, p = external_pos[k]
        if kind == "missing_internal":
            internal_pos[k] = None
        elif kind == "missing_external":
            external_pos[k] = None
        elif kind == "quantity_mismatch":
            external_pos[k] = (a, v, i, pos[k][3] * 2.0, p)
        elif kind == "side_mismatch":
            external_pos[k] = (a, v, i, -pos[k][3], p)
        elif kind == "price_mismatch":
            external_pos[k] = (a, v, i, q, pos[k][4] * 1.5)
        elif kind == "unmapped_symbol":
            unmapped.append((a, v, f"X{k}"))
            expected.add(("positions", kind, a, v, f"X{k}"))
            continue
        expected.add(("positions", kind, a, v, i))
    ckinds = draw(st.lists(st.sampled_from(COLLATERAL_TYPES), min_size=0, max_size=3))
    for k, kind in zip(rng.permutation(n_bal), ckinds):
        a, v, c, x = external_bal[k]
        if kind == "missing_internal":
            internal_bal[k] = None
        elif kind == "missing_external":
            external_bal[k] = None
        else:
            external_bal[k] = (a, v, c, bal[k][3] * 3.0)
        expected.add(("balances", kind, a, v, c))
    internal = _side([x for x in internal_pos if x], [x for x in internal_bal if x], label="internal")
    external = _side([x for x in external_pos if x], [x for x in external_bal if x], unmapped, label="external")
    return internal, external, settings_, expected


def _found(rec):
    b = rec.breaks
    key = np.where(b["table"] == "positions", b["instrument_id"], b["asset"])
    return set(zip(b["table"], b["break_type"], b["account_id"], b["venue"], key))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted())
def test_every_planted_break_is_found_and_nothing_within_tolerance(case):
    internal, external, settings_, expected = case
    rec = R.reconcile(internal, external, settings_)
    assert _found(rec) == expected
    s = rec.summary
    for t in ("positions", "balances"):
        assert s["compared"][t] == s["matched"][t] + s["breaks_by_table"][t]
    assert s["breaks"] == len(expected) == sum(s["breaks_by_type"].values())
    assert rec.failed == (len(expected) > 0)


def test_default_tolerances_do_not_report_float_rounding():
    q = 0.1 + 0.2  # 0.30000000000000004
    internal = _side([("A", "okx", "I", 0.3, 100.0)], [("A", "okx", "USDT", 1e6 / 3)])
    external = _side([("A", "okx", "I", q, 100.0 * (1 + 1e-9))], [("A", "okx", "USDT", 333333.33333333337)])
    assert R.reconcile(internal, external).n_breaks == 0
    assert R.DEFAULT_TOLERANCES["quantity"] == R.Tolerance(1e-9, 1e-9)
    assert R.DEFAULT_TOLERANCES["price"] == R.Tolerance(0.0, 1e-4)


def test_long_and_short_legs_net_before_comparing():
    internal = _side([("A", "okx", "I", 15.0, 1.0)], [])
    external = _side([("A", "okx", "I", 25.0, 1.0), ("A", "okx", "I", -10.0, 1.0)], [])
    assert R.reconcile(internal, external).n_breaks == 0
    flat = _side([("A", "okx", "I", 5.0, 1.0), ("A", "okx", "I", -5.0, 1.0)], [])
    assert R.reconcile(flat, _side([], [])).n_breaks == 0  # a net of 0 is no position


def test_bad_tolerances_and_specs_are_one_line_errors():
    from gpurisk.errors import ConfigError

    with pytest.raises(ConfigError):
        R.Tolerance(-1.0, 0.0)
    with pytest.raises(ConfigError):
        R.Tolerance(float("nan"), 0.0)
    assert R.parse_tolerance("okx:price=0,1e-3") == ("okx", "price", R.Tolerance(0.0, 1e-3))
    with pytest.raises(ConfigError, match="COLUMN"):
        R.parse_tolerance("price:0.1")
    with pytest.raises(ConfigError, match="column"):
        R.parse_tolerance("colour=1,2")


# ----------------------------------------------------------------------------- the command, on a real book


@pytest.fixture()
def book_and_venue(tmp_path):
    """The tiny book folder and its accounts' Deribit and OKX JSON (as the venues would answer)."""
    from gpurisk.adapters import deribit, okx
    from gpurisk.io import write_book
    from gpurisk.validate import validate

    tables = tiny_tables()
    book = tmp_path / "book"
    write_book(book, tables, {"as_of": TINY_AS_OF})
    clean, _, _ = validate(tables, TINY_AS_OF)
    ext = tmp_path / "venue"
    for a in ("A1", "A3"):
        (ext / a).mkdir(parents=True)
        for k, v in deribit.responses(clean, a, TINY_AS_OF).items():
            (ext / a / f"deribit_{k}.json").write_text(json.dumps(v))
        for k, v in okx.responses(clean, a, TINY_AS_OF).items():
            (ext / a / f"okx_{k}.json").write_text(json.dumps(v))
    return book, ext


def test_reconcile_command_on_matching_sides(tmp_path, book_and_venue, capsys):
    book, ext = book_and_venue
    out = tmp_path / "rec"
    # the venues' JSON of A1 and A3 against a book that also holds A2 at binance and deribit
    assert main(["reconcile", "--internal", str(book), "--external", str(ext), "--out", str(out),
                 "--max-breaks", "10"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    breaks = pd.read_parquet(out / "breaks.parquet")
    assert set(breaks["account_id"]) == {"A2"}  # A2's positions and balances are missing at the venue
    assert set(breaks["break_type"]) == {"missing_external"}
    for t in ("positions", "balances"):
        assert summary["compared"][t] == summary["matched"][t] + summary["breaks_by_table"][t]
    assert (out / "metrics.prom").read_text().count("gpurisk_reconcile_breaks{") >= 1
    assert (out / "alerts.jsonl").is_file()


def test_reconcile_command_finds_planted_breaks_and_fails(tmp_path, book_and_venue):
    book, ext = book_and_venue
    pos = json.loads((ext / "A1" / "deribit_positions.json").read_text())
    pos["result"][0]["size"] *= 1.5  # BTC-PERPETUAL quantity
    pos["result"].append(dict(pos["result"][0], instrument_name="BTC-31FOO25"))  # a symbol nobody maps
    (ext / "A1" / "deribit_positions.json").write_text(json.dumps(pos))
    bal = json.loads((ext / "A3" / "okx_balance.json").read_text())
    bal["data"][0]["details"][0]["eq"] = "-100.25"
    (ext / "A3" / "okx_balance.json").write_text(json.dumps(bal))
    out = tmp_path / "rec"
    code = main(["reconcile", "--internal", str(book), "--external", str(ext), "--out", str(out),
                 "--max-breaks", "4"])
    assert code == R.BREAKS_EXIT
    b = pd.read_parquet(out / "breaks.parquet")
    got = set(zip(b["break_type"], b["account_id"], np.where(b["table"] == "positions", b["instrument_id"], b["asset"])))
    assert ("quantity_mismatch", "A1", "BTC-PERPETUAL") in got
    assert ("unmapped_symbol", "A1", "BTC-31FOO25") in got
    assert ("amount_mismatch", "A3", "USDC") in got
    row = b[b["break_type"] == "quantity_mismatch"].iloc[0]
    assert (row["internal_quantity"], row["external_quantity"]) == (1000.0, 1500.0)
    alert = json.loads((out / "alerts.jsonl").read_text().splitlines()[-1])
    assert alert["alert"] == "reconciliation_breaks" and alert["severity"] == "critical"


def test_pre_run_check_from_a_job_table(tmp_path, book_and_venue):
    from gpurisk.config import parse_job

    book, ext = book_and_venue
    job = parse_job({"job": {"name": "j"}, "book": {"path": str(book)}, "models": [{"name": "venue"}],
                     "reconcile": {"external": [str(ext)], "on_break": "stop", "max_breaks": 0,
                                   "tolerances": {"price": {"abs": 0.0, "rel": 1e-3}}}}, tmp_path / "j.toml")
    result = R.pre_run_check(job, book)
    assert result.failed and job.reconcile.on_break == "stop"  # A2 is not at the venue
    assert result.alerts()[0]["severity"] == "critical"
    no = parse_job({"job": {"name": "j"}, "book": {"path": str(book)}, "models": [{"name": "venue"}]},
                   tmp_path / "j.toml")
    assert R.pre_run_check(no, book) is None
