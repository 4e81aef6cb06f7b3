"""Row validation: every reason code, cascades, netting, strict mode, and accounting invariants.

Independent source: a hand-made tiny book (tests/conftest.py) whose one corrupted
cell must come back as exactly one reject with the documented reason, row and
column; the accounting invariants are checked with hypothesis.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_AS_OF, tiny_tables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpurisk.book import Book
from gpurisk.errors import ValidationError
from gpurisk.validate import REASONS, REJECT_COLUMNS, validate

TABLES = ("instruments", "market", "index", "positions", "balances")

# (table, 0-based row, column, new value, expected reason)
SINGLE_CELL_CASES = [
    ("instruments", 0, "instrument_id", None, "missing_value"),
    ("instruments", 0, "venue", "", "missing_value"),
    ("instruments", 0, "kind", "swap", "unknown_kind"),
    ("instruments", 0, "kind", None, "missing_value"),
    ("instruments", 0, "settlement", "quanto", "unknown_settlement"),
    ("instruments", 5, "settlement", "inverse", "inverse_spot"),
    ("instruments", 0, "contract_size", "0", "non_positive"),
    ("instruments", 3, "contract_size", "-0.01", "non_positive"),
    ("instruments", 0, "contract_size", "ten", "wrong_type"),
    ("instruments", 0, "contract_size", "inf", "non_finite"),
    ("instruments", 0, "contract_size", "nan", "non_finite"),
    ("instruments", 0, "contract_size", None, "missing_value"),
    ("instruments", 2, "contract_size", "2", "bad_contract_size"),
    ("instruments", 1, "expiry", TINY_AS_OF, "expired_instrument"),
    ("instruments", 2, "expiry", "2024-06-28T08:00:00Z", "expired_instrument"),
    ("instruments", 1, "expiry", None, "missing_value"),
    ("instruments", 1, "expiry", "next friday", "wrong_type"),
    ("instruments", 0, "expiry", "2025-06-27T08:00:00Z", "unexpected_value"),
    ("instruments", 2, "option_type", "straddle", "bad_option_type"),
    ("instruments", 4, "option_type", None, "missing_value"),
    ("instruments", 1, "option_type", "call", "unexpected_value"),
    ("instruments", 2, "strike", "0", "non_positive"),
    ("instruments", 2, "strike", "-100", "non_positive"),
    ("instruments", 2, "strike", "100k", "wrong_type"),
    ("instruments", 2, "strike", None, "missing_value"),
    ("instruments", 2, "strike", "inf", "non_finite"),
    ("instruments", 3, "strike", "90000", "unexpected_value"),
    ("instruments", 3, "underlying", "DOGE", "unknown_underlying"),
    ("market", 0, "underlying_price", "0", "non_positive"),
    ("market", 1, "underlying_price", "-97000", "non_positive"),
    ("market", 1, "underlying_price", "97,000", "wrong_type"),
    ("market", 1, "underlying_price", "-inf", "non_finite"),
    ("market", 1, "underlying_price", None, "missing_value"),
    ("market", 2, "implied_vol", None, "option_without_vol"),
    ("market", 2, "implied_vol", "0", "option_without_vol"),
    ("market", 4, "implied_vol", "-0.2", "option_without_vol"),
    ("market", 4, "implied_vol", "nan", "option_without_vol"),
    ("market", 4, "implied_vol", "inf", "non_finite"),
    ("market", 4, "implied_vol", "high", "wrong_type"),
    ("market", 2, "implied_vol", "62", "implausible_vol"),  # a vol in percent, not 0.62
    ("market", 4, "implied_vol", "5.0001", "implausible_vol"),
    ("market", 3, "instrument_id", "NOPE", "unknown_instrument"),
    ("index", 1, "price", "0", "non_positive"),
    ("index", 1, "price", "abc", "wrong_type"),
    ("index", 1, "price", "nan", "non_finite"),
    ("index", 3, "underlying", None, "missing_value"),
    ("positions", 0, "quantity", "0", "zero_quantity"),
    ("positions", 0, "quantity", "-0.0", "zero_quantity"),
    ("positions", 0, "quantity", "1e400", "non_finite"),
    ("positions", 0, "quantity", "lots", "wrong_type"),
    ("positions", 0, "quantity", None, "missing_value"),
    ("positions", 1, "instrument_id", "BTC-27JUN25-999-C", "unknown_instrument"),
    ("positions", 1, "instrument_id", "", "missing_value"),
    ("positions", 2, "account_id", None, "missing_value"),
    ("balances", 0, "asset", "EUR", "unknown_asset"),
    ("balances", 1, "amount", "lots", "wrong_type"),
    ("balances", 1, "amount", "nan", "non_finite"),
    ("balances", 1, "amount", None, "missing_value"),
    ("balances", 1, "venue", None, "missing_value"),
    # plausibility with the default settings (notional bound 1e12 USD, mark band 3 around the index)
    ("positions", 0, "quantity", "1e300", "implausible_notional"),
    ("positions", 4, "quantity", "1e30", "implausible_notional"),
    ("balances", 1, "amount", "2e12", "implausible_notional"),
    ("market", 0, "underlying_price", "1e-300", "mark_off_index"),
    ("market", 3, "underlying_price", "279001", "mark_off_index"),
]


def _check_accounting(tables, rejects, summary):
    for name in TABLES:
        s = summary[name]
        assert s["input"] == len(tables[name])
        assert s["accepted"] + s["rejected"] == s["input"]
        rj = rejects[rejects["table"] == name]
        assert len(rj) == s["rejected"]
        assert rj["row"].is_unique
        assert rj["row"].between(1, s["input"]).all()


@pytest.mark.parametrize("table,row,column,value,reason", SINGLE_CELL_CASES)
def test_single_bad_cell_is_one_reject(table, row, column, value, reason):
    t = tiny_tables()
    t[table].loc[row, column] = value
    clean, rejects, summary = validate(t, TINY_AS_OF)
    _check_accounting(t, rejects, summary)
    mine = rejects[rejects["table"] == table]
    assert len(mine) == 1, rejects
    rj = mine.iloc[0]
    assert (rj["row"], rj["column"], rj["reason"]) == (row + 1, column, reason)
    assert list(rejects.columns) == REJECT_COLUMNS
    # the message names table, row, column and value
    assert f"{table} row {row + 1}" in rj["message"] and f"column {column}" in rj["message"]
    shown = "" if value is None else value
    assert f"value '{shown}'" in rj["message"]
    assert rj["reason"] in REASONS
    assert len(clean[table]) == len(t[table]) - 1


def test_every_reason_code_is_exercised():
    tested = {c[-1] for c in SINGLE_CELL_CASES}
    others = {"duplicate_instrument", "duplicate_market_row", "duplicate_underlying", "missing_market_row",
              "rejected_instrument",
              "duplicate_account"}  # the optional accounts table: tests/test_stress_accounts.py
    assert set(REASONS) == tested | others


def test_vol_bound_is_inclusive_and_only_for_options():
    """5.0 (500 %) is the largest accepted vol; a non-option's implied_vol is not read at all."""
    t = tiny_tables()
    t["market"].loc[2, "implied_vol"] = "5.0"
    t["market"].loc[0, "implied_vol"] = "62"  # row 0 is not an option: its vol is ignored
    clean, rejects, summary = validate(t, TINY_AS_OF)
    assert len(rejects) == 0, rejects
    assert summary["market"]["accepted"] == len(t["market"])


def test_clean_book_has_no_rejects_and_builds(tiny):
    clean, rejects, summary = validate(tiny, TINY_AS_OF, strict=True)
    assert rejects.empty and summary["total_rejected"] == 0
    book = Book.from_frames(TINY_AS_OF, **clean)
    assert book.n_accounts == 3 and len(book.instruments) == 6
    np.testing.assert_allclose(np.sort(book.positions.quantity), np.sort([1000, -2.5, 0.5, -4650, 30, -12]))
    assert book.balances.amount.min() == -250.5  # a negative balance (debt) is accepted
    assert clean["instruments"]["kind"].tolist()[0] == "perpetual"


def test_codes_are_case_insensitive(tiny):
    tiny["instruments"].loc[0, "kind"] = " Perpetual "
    tiny["instruments"].loc[2, "option_type"] = "CALL"
    tiny["instruments"].loc[3, "settlement"] = "LINEAR"
    clean, rejects, _ = validate(tiny, TINY_AS_OF)
    assert rejects.empty
    book = Book.from_frames(TINY_AS_OF, **clean)
    assert book.instruments.kind[0] == 2 and book.instruments.option_type[2] == 1


def test_duplicate_instrument_keeps_first(tiny):
    ins = tiny["instruments"]
    dup = ins.iloc[[1]].copy()
    dup["contract_size"] = "100"
    tiny["instruments"] = pd.concat([ins, dup], ignore_index=True)
    clean, rejects, summary = validate(tiny, TINY_AS_OF)
    assert rejects[["table", "row", "reason"]].values.tolist() == [["instruments", 7, "duplicate_instrument"]]
    assert clean["instruments"].set_index("instrument_id").loc["BTC-27JUN25", "contract_size"] == 10.0


def test_duplicate_market_row_and_index_row(tiny):
    tiny["market"] = pd.concat([tiny["market"], tiny["market"].iloc[[0]]], ignore_index=True)
    tiny["index"] = pd.concat([tiny["index"], tiny["index"].iloc[[0]]], ignore_index=True)
    _, rejects, summary = validate(tiny, TINY_AS_OF)
    got = sorted(map(tuple, rejects[["table", "row", "reason"]].values.tolist()))
    assert got == [("index", 5, "duplicate_underlying"), ("market", 7, "duplicate_market_row")]
    _check_accounting(tiny, rejects, summary)


def test_missing_market_row_cascades_to_positions(tiny):
    tiny["market"] = tiny["market"].drop(index=2).reset_index(drop=True)  # the BTC call's row
    clean, rejects, summary = validate(tiny, TINY_AS_OF)
    got = rejects[["table", "row", "column", "reason"]].values.tolist()
    assert got == [
        ["instruments", 3, "instrument_id", "missing_market_row"],
        ["positions", 2, "instrument_id", "rejected_instrument"],
    ]
    _check_accounting(tiny, rejects, summary)


def test_bad_market_row_rejects_instrument_and_positions(tiny):
    tiny["market"].loc[4, "implied_vol"] = None  # the ETH put: option without vol
    _, rejects, _ = validate(tiny, TINY_AS_OF)
    got = rejects[["table", "row", "reason"]].values.tolist()
    assert got == [["instruments", 5, "missing_market_row"], ["market", 5, "option_without_vol"],
                   ["positions", 6, "rejected_instrument"]]


def test_rejected_instrument_cascades_to_market_and_positions(tiny):
    tiny["instruments"].loc[1, "kind"] = "swap"
    _, rejects, _ = validate(tiny, TINY_AS_OF)
    got = rejects[["table", "row", "reason"]].values.tolist()
    assert got == [["instruments", 2, "unknown_kind"], ["market", 2, "rejected_instrument"],
                   ["positions", 4, "rejected_instrument"]]


def test_missing_index_rejects_underlying_instruments(tiny):
    tiny["index"] = tiny["index"][tiny["index"]["underlying"] != "ETH"].reset_index(drop=True)
    _, rejects, _ = validate(tiny, TINY_AS_OF)
    got = rejects[["table", "row", "reason"]].values.tolist()
    assert got == [["instruments", 5, "unknown_underlying"], ["market", 5, "rejected_instrument"],
                   ["positions", 6, "rejected_instrument"]]


def test_first_failing_check_wins(tiny):
    tiny["instruments"].loc[2, "strike"] = "-1"
    tiny["instruments"].loc[2, "contract_size"] = "abc"
    _, rejects, _ = validate(tiny, TINY_AS_OF)
    ins = rejects[rejects["table"] == "instruments"]
    assert ins[["column", "reason"]].values.tolist() == [["contract_size", "wrong_type"]]


def test_duplicate_positions_are_netted_and_counted(tiny):
    extra = pd.DataFrame({"account_id": ["A1", "A1", "A2"], "instrument_id": ["BTC-PERPETUAL"] * 2 + ["BTCUSDT"],
                          "quantity": ["-400", "50", "0.25"]}).astype("str")
    tiny["positions"] = pd.concat([tiny["positions"], extra], ignore_index=True)
    clean, rejects, summary = validate(tiny, TINY_AS_OF)
    assert rejects.empty
    assert summary["positions"] == {"input": 9, "accepted": 9, "rejected": 0, "merged": 3, "net_positions": 6}
    book = Book.from_frames(TINY_AS_OF, **clean)
    assert len(book.positions.quantity) == 6
    a1 = np.searchsorted(book.accounts, "A1")
    perp = list(book.instruments.instrument_id).index("BTC-PERPETUAL")
    sel = (book.positions.account_idx == a1) & (book.positions.instrument_idx == perp)
    assert book.positions.quantity[sel].tolist() == [650.0]


def test_strict_raises_on_first_bad_row(tiny):
    tiny["positions"].loc[4, "quantity"] = "0"
    tiny["balances"].loc[0, "asset"] = "EUR"
    with pytest.raises(ValidationError) as exc:
        validate(tiny, TINY_AS_OF, strict=True)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("positions row 5, column quantity") and "zero_quantity" in msg


def test_typed_columns(tiny):
    """Parquet-style typed columns: floats with NaN, integer ids, tz-aware expiries."""
    t = tiny
    t["instruments"]["contract_size"] = t["instruments"]["contract_size"].astype(float)
    t["instruments"]["strike"] = pd.to_numeric(t["instruments"]["strike"])
    t["instruments"]["expiry"] = pd.to_datetime(t["instruments"]["expiry"], utc=True)
    t["market"]["underlying_price"] = t["market"]["underlying_price"].astype(float)
    t["market"]["implied_vol"] = pd.to_numeric(t["market"]["implied_vol"])
    t["positions"]["quantity"] = t["positions"]["quantity"].astype(float)
    t["balances"]["account_id"] = [1, 2, 3]
    t["positions"]["account_id"] = [1, 1, 2, 2, 3, 3]
    t["market"].loc[0, "underlying_price"] = np.nan
    clean, rejects, _ = validate(t, TINY_AS_OF)
    assert rejects[["table", "row", "reason"]].values.tolist() == [
        ["instruments", 1, "missing_market_row"], ["market", 1, "non_finite"], ["positions", 1, "rejected_instrument"]]
    book = Book.from_frames(TINY_AS_OF, **clean)
    assert list(book.accounts) == ["1", "2", "3"]


def test_validate_names_a_missing_column(tiny):
    tiny["positions"] = tiny["positions"].drop(columns="quantity")
    with pytest.raises(ValidationError, match="positions.*quantity"):
        validate(tiny, TINY_AS_OF)


# ----------------------------------------------------------------------------- plausibility: notional and mark band

# USD notional of each tiny-book row, worked out by hand (docs/data-format.md: "What one contract is"):
#   positions: A1 BTC-PERPETUAL 1000 x 10 USD (inverse: contract_size is USD, the mark does not enter),
#              A1 BTC call -2.5 x 1 BTC x 97000 (inverse option: on the underlying, at its forward),
#              A2 BTCUSDT 0.5 x 1 x 93000, A2 BTC-27JUN25 4650 x 10 USD, A3 BTC-USDT-SWAP 30 x 0.01 x 93010,
#              A3 ETH put -12 x 0.1 x 3500
#   balances:  0.8 BTC x 93000, 5000 USDT x 1, -250.5 USDC x 1
HAND_NOTIONAL = {
    "positions": [10_000.0, 242_500.0, 46_500.0, 46_500.0, 27_903.0, 4_200.0],
    "balances": [74_400.0, 5_000.0, 250.5],
}


@pytest.mark.parametrize("bound", [250.5, 4_000.0, 5_000.0, 10_000.0, 27_000.0, 30_000.0, 50_000.0, 80_000.0,
                                   242_000.0, 243_000.0])
def test_notional_bound_matches_hand_computed_notionals(tiny, bound):
    """Exactly the rows whose hand-computed USD notional is above the bound are rejected (the bound is inclusive)."""
    clean, rejects, summary = validate(tiny, TINY_AS_OF, max_notional_usd=bound)
    _check_accounting(tiny, rejects, summary)
    assert set(rejects["reason"]) <= {"implausible_notional"}
    for table, notional in HAND_NOTIONAL.items():
        want = [i + 1 for i, x in enumerate(notional) if x > bound]
        got = rejects.loc[rejects["table"] == table, "row"].tolist()
        assert got == want, (table, bound)
    col = rejects.set_index(["table", "row"])["column"]
    assert all(col[(t, r)] == ("quantity" if t == "positions" else "amount") for t, r in col.index)
    assert summary["limits"] == {"max_notional_usd": bound, "mark_band": 3.0}


def test_quantity_or_price_1e300_is_rejected_without_warnings(tiny):
    """The issue's cases: 1e300 and 1e30 quantities, an index and marks at 1e300: rejects, no overflow warning."""
    import warnings

    tiny["positions"].loc[0, "quantity"] = "1e300"
    tiny["positions"].loc[2, "quantity"] = "1e30"
    tiny["index"].loc[1, "price"] = "1e300"  # ETH index and the ETH put's forward both absurd but consistent
    tiny["market"].loc[4, "underlying_price"] = "1e300"
    tiny["balances"].loc[1, "amount"] = "1e300"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean, rejects, summary = validate(tiny, TINY_AS_OF)
    got = rejects[["table", "row", "column", "reason"]].values.tolist()
    assert got == [["positions", 1, "quantity", "implausible_notional"],
                   ["positions", 3, "quantity", "implausible_notional"],
                   ["positions", 6, "quantity", "implausible_notional"],  # -12 x 0.1 x 1e300
                   ["balances", 2, "amount", "implausible_notional"]]
    _check_accounting(tiny, rejects, summary)
    book = Book.from_frames(TINY_AS_OF, **clean)
    notional = np.abs(book.positions.quantity) * book.instruments.contract_size[book.positions.instrument_idx]
    assert np.all(notional < 1e12)


def test_mark_band_edges_are_inclusive(tiny):
    """BTC index 93000, band 3: 31000 and 279000 are accepted, 30999 and 279001 are not."""
    for mark, ok in (("31000", True), ("279000", True), ("30999", False), ("279001", False)):
        t = tiny_tables()
        t["market"].loc[3, "underlying_price"] = mark
        _, rejects, _ = validate(t, TINY_AS_OF)
        if ok:
            assert rejects.empty, (mark, rejects)
        else:
            assert rejects[["table", "row", "reason"]].values.tolist() == [
                ["instruments", 4, "missing_market_row"], ["market", 4, "mark_off_index"],
                ["positions", 5, "rejected_instrument"]], mark


def test_mark_far_from_index_cascades(tiny):
    """The issue's case: a perpetual marked at 1e-300 against a 93,000 index rejects it and its positions."""
    tiny["market"].loc[0, "underlying_price"] = "1e-300"
    clean, rejects, summary = validate(tiny, TINY_AS_OF)
    assert rejects[["table", "row", "column", "reason"]].values.tolist() == [
        ["instruments", 1, "instrument_id", "missing_market_row"],
        ["market", 1, "underlying_price", "mark_off_index"],
        ["positions", 1, "instrument_id", "rejected_instrument"]]
    assert "BTC-PERPETUAL" not in set(clean["market"]["instrument_id"])
    _check_accounting(tiny, rejects, summary)


def test_mark_band_is_configurable(tiny):
    """Forwards 97000 (BTC, index 93000: x 1.0430) and 3500 (ETH, index 3360: x 1.0417) fit a band of 1.05, not 1.04."""
    _, rejects, _ = validate(tiny, TINY_AS_OF, mark_band=1.05)
    assert rejects.empty
    _, rejects, _ = validate(tiny, TINY_AS_OF, mark_band=1.04)
    got = rejects.loc[rejects["table"] == "market", "row"].tolist()
    assert got == [2, 3, 5]  # BTC-27JUN25, the BTC call and the ETH put; the 93010 swap (x 1.0001) stays
    assert set(rejects.loc[rejects["table"] == "market", "reason"]) == {"mark_off_index"}


@pytest.mark.parametrize("off", [None, float("inf")])
def test_checks_can_be_turned_off(tiny, off):
    tiny["market"].loc[0, "underlying_price"] = "1e-300"
    tiny["positions"].loc[4, "quantity"] = "1e300"
    _, rejects, summary = validate(tiny, TINY_AS_OF, max_notional_usd=off, mark_band=off)
    assert rejects.empty
    assert summary["limits"] == {"max_notional_usd": None, "mark_band": None}


@pytest.mark.parametrize("kw,value", [("max_notional_usd", 0), ("max_notional_usd", -1.0),
                                      ("max_notional_usd", float("nan")), ("max_notional_usd", "lots"),
                                      ("mark_band", 0.5), ("mark_band", float("nan")), ("mark_band", True),
                                      ("max_notional_usd", np.float64(-2.0))])
def test_bad_limit_is_one_line_error(tiny, kw, value):
    with pytest.raises(ValidationError) as exc:
        validate(tiny, TINY_AS_OF, **{kw: value})
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(kw) and "np." not in msg


# ----------------------------------------------------------------------------- duplicate balances


def test_duplicate_balances_are_merged_and_counted_like_positions(tiny):
    """One policy for both tables: rows with the same key are summed and counted as merged."""
    extra = pd.DataFrame({"account_id": ["A1", "A1", "A2", "A2"], "venue": ["deribit", "deribit", "binance", "okx"],
                          "asset": ["BTC", "BTC", "USDT", "USDT"], "amount": ["0.2", "-0.1", "1000", "7"]})
    tiny["balances"] = pd.concat([tiny["balances"], extra.astype("str")], ignore_index=True)
    clean, rejects, summary = validate(tiny, TINY_AS_OF)
    assert rejects.empty
    assert summary["balances"] == {"input": 7, "accepted": 7, "rejected": 0, "merged": 3, "net_balances": 4}
    book = Book.from_frames(TINY_AS_OF, **clean)
    # independent: a pandas groupby over the clean rows
    want = clean["balances"].groupby(["account_id", "venue", "asset"])["amount"].sum()
    got = pd.Series(book.balances.amount, index=pd.MultiIndex.from_arrays(
        [book.accounts[book.balances.account_idx], book.balances.venue, book.balances.asset],
        names=["account_id", "venue", "asset"])).sort_index()
    pd.testing.assert_series_equal(got, want, check_names=False, rtol=1e-15)
    assert got[("A1", "deribit", "BTC")] == pytest.approx(0.9, rel=1e-15)


# ----------------------------------------------------------------------------- messages


def test_messages_have_one_format_and_plain_values(tiny):
    """Every reject's message is ``schema.reject_message`` of its cells; NumPy-typed cells show plain values."""
    from gpurisk.schema import reject_message

    t = tiny
    t["positions"]["quantity"] = np.array([0, 1, 2, 3, 4, 5], dtype=np.int8)  # row 1: zero quantity
    t["instruments"]["contract_size"] = np.array([10, 10, 1, -0.01, 0.1, 1], dtype=np.float32)
    t["balances"]["amount"] = pd.Series([np.int8(1), np.float64(np.nan), np.uint16(7)], dtype=object)
    t["index"]["price"] = np.array([93000, 3360, 1, 1], dtype=np.uint32)
    t["index"].loc[3, "price"] = 0  # USDC: its balance (row 3) cascades to unknown_asset
    clean, rejects, summary = validate(t, TINY_AS_OF)
    assert len(rejects) >= 4
    for r in rejects.itertuples():
        assert r.message == reject_message(r.table, r.row, r.column, r.reason, r.value)
        assert "np." not in r.message and "numpy" not in r.message
    vals = rejects.set_index(["table", "row"])["value"]
    assert vals[("positions", 1)] == "0" and vals[("index", 4)] == "0" and vals[("instruments", 4)] == "-0.01"
    assert vals[("balances", 2)] in ("", "nan")


# ----------------------------------------------------------------------------- property tests

_BAD = {
    ("instruments", "kind"): ["swap", None, "Option"],
    ("instruments", "settlement"): ["quanto", None],
    ("instruments", "contract_size"): ["0", "-1", "x", "nan", "inf", None],
    ("instruments", "expiry"): ["2020-01-01", "soon", None, "2026-01-01T08:00:00Z"],
    ("instruments", "strike"): ["0", "-5", "k", None, "1e5"],
    ("instruments", "option_type"): ["both", None, "put"],
    ("instruments", "underlying"): ["XRP", None],
    ("instruments", "instrument_id"): [None, "BTC-PERPETUAL"],
    ("market", "underlying_price"): ["0", "-1", "x", "inf", None],
    ("market", "implied_vol"): ["0", "-1", None, "x"],
    ("market", "instrument_id"): ["NOPE", None, "BTCUSDT"],
    ("index", "price"): ["0", "x", None, "nan"],
    ("index", "underlying"): [None, "BTC"],
    ("positions", "quantity"): ["0", "x", None, "inf", "-0", "3"],
    ("positions", "instrument_id"): ["NOPE", None, "BTC-PERPETUAL"],
    ("positions", "account_id"): [None, "A1"],
    ("balances", "asset"): ["EUR", None, "ETH"],
    ("balances", "amount"): ["x", "nan", None, "0"],
}
_KEYS = sorted(_BAD)

edit = st.tuples(
    st.sampled_from(_KEYS),
    st.integers(0, 5),
    st.one_of(st.integers(0, 5), st.text(max_size=6)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(edit, max_size=8), dup_positions=st.lists(st.integers(0, 5), max_size=4),
       dup_balances=st.lists(st.integers(0, 2), max_size=3))
@pytest.mark.slow
def test_no_mix_of_bad_rows_crashes_and_rows_balance(edits, dup_positions, dup_balances):
    t = tiny_tables()
    for (table, col), row, choice in edits:
        df = t[table]
        r = row % len(df)
        value = _BAD[(table, col)][choice % len(_BAD[(table, col)])] if isinstance(choice, int) else choice
        df.loc[r, col] = value
    if dup_positions:
        t["positions"] = pd.concat([t["positions"], t["positions"].iloc[dup_positions]], ignore_index=True)
    if dup_balances:
        t["balances"] = pd.concat([t["balances"], t["balances"].iloc[dup_balances]], ignore_index=True)
    clean, rejects, summary = validate(t, TINY_AS_OF)
    _check_accounting(t, rejects, summary)
    for name in TABLES:
        assert len(clean[name]) == summary[name]["accepted"]
    # netting is accounted: accepted rows = net positions + merged, and the built book holds the net ones
    pos, bal = summary["positions"], summary["balances"]
    assert pos["accepted"] == pos["net_positions"] + pos["merged"]
    assert bal["accepted"] == bal["net_balances"] + bal["merged"]
    if len(clean["instruments"]) and len(clean["index"]):
        book = Book.from_frames(TINY_AS_OF, **clean)
        assert len(book.positions.quantity) == pos["net_positions"]
        assert len(book.balances.amount) == bal["net_balances"]
        np.testing.assert_allclose(book.balances.amount.sum(), clean["balances"]["amount"].sum(), atol=1e-9)
        np.testing.assert_allclose(book.positions.quantity.sum(), clean["positions"]["quantity"].sum(), atol=1e-9)
        assert np.isfinite(book.market.underlying_price).all()
        assert (book.instruments.contract_size > 0).all()
    # every accepted position points at an accepted instrument
    assert clean["positions"]["instrument_id"].isin(clean["instruments"]["instrument_id"]).all()
    assert clean["balances"]["asset"].isin(clean["index"]["underlying"]).all()


def test_object_columns_with_python_values(tiny):
    """DataFrames built in Python may hold mixed objects: numbers, None, NaN; nothing crashes."""
    tiny["positions"]["quantity"] = pd.Series([1000, -2.5, None, "x", np.nan, 7], dtype=object)
    tiny["balances"]["amount"] = pd.Series([0.8, 5000, -250.5], dtype=object)
    tiny["positions"]["account_id"] = pd.Series([1, 1, 2, 2, 3, None], dtype=object)
    tiny["instruments"]["option_type"] = pd.Series([None, None, "call", None, "put", None], dtype=object)
    clean, rejects, summary = validate(tiny, TINY_AS_OF)
    got = rejects[["table", "row", "column", "reason"]].values.tolist()
    assert got == [["positions", 3, "quantity", "missing_value"], ["positions", 4, "quantity", "wrong_type"],
                   ["positions", 5, "quantity", "missing_value"], ["positions", 6, "account_id", "missing_value"]]
    _check_accounting(tiny, rejects, summary)


def test_lookup_against_an_empty_universe_finds_nothing():
    # an empty index table reached from Python (the file readers refuse empty tables) used to raise IndexError
    import pandas as pd

    from gpurisk.validate import _lookup

    assert _lookup(pd.Series(["BTC", "ETH"]), pd.Series([], dtype=object)).tolist() == [-1, -1]
