"""``Book.from_frames`` and CSR portfolios, checked against a plain pandas groupby.

Independent source: pandas ``groupby(...).sum()`` over the positions table,
joined with the instruments' venue / settlement currency; and invariance of
the portfolios to the input row order (hypothesis).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpurisk.book import Book
from gpurisk.generate import generate_book
from gpurisk.io import TABLES
from gpurisk.validate import validate

GROUPINGS = {"account": None, "account_venue": "venue", "account_settlement": "currency"}


@pytest.fixture(scope="module")
def clean():
    g = generate_book(150, 11)
    tables = {k: g[k] for k in TABLES}
    # add duplicate (account, instrument) rows so netting is exercised too
    pos = tables["positions"]
    tables["positions"] = pd.concat([pos, pos.iloc[::7].assign(quantity=lambda d: d["quantity"] * 0.5)],
                                    ignore_index=True)
    clean, rejects, _ = validate(tables, g["meta"]["as_of"])
    assert rejects.empty
    return g["meta"]["as_of"], clean


def _expected(clean_tables, by: str) -> pd.DataFrame:
    """Net positions per (portfolio key, instrument_id) from a pandas groupby."""
    ins = clean_tables["instruments"]
    cur = np.where(ins["settlement"] == "inverse", ins["underlying"], "USD")
    lab = pd.DataFrame({"instrument_id": ins["instrument_id"], "venue": ins["venue"], "currency": cur})
    pos = clean_tables["positions"].merge(lab, on="instrument_id", how="left")
    keys = ["account_id"] + ([GROUPINGS[by]] if GROUPINGS[by] else [])
    out = pos.groupby(keys + ["instrument_id"], sort=True)["quantity"].sum().reset_index()
    return out.rename(columns={"quantity": "q"})


def _actual(book: Book, by: str) -> pd.DataFrame:
    pf = book.portfolios(by=by)
    counts = np.diff(pf.indptr)
    df = pd.DataFrame({"account_id": np.repeat(pf.key["account_id"], counts),
                       "instrument_id": book.instruments.instrument_id[pf.instrument_idx],
                       "q": pf.quantity})
    if GROUPINGS[by]:
        df[GROUPINGS[by]] = np.repeat(pf.key[GROUPINGS[by]], counts)
    keys = ["account_id"] + ([GROUPINGS[by]] if GROUPINGS[by] else [])
    return df[keys + ["instrument_id", "q"]].sort_values(keys + ["instrument_id"]).reset_index(drop=True)


@pytest.mark.parametrize("by", list(GROUPINGS))
def test_portfolios_match_pandas_groupby(clean, by):
    as_of, tables = clean
    book = Book.from_frames(as_of, **tables)
    exp = _expected(tables, by)
    got = _actual(book, by)
    exp = exp[got.columns].astype({c: "str" for c in got.columns if c != "q"})
    got = got.astype({c: "str" for c in got.columns if c != "q"})
    assert len(got) > 300
    pd.testing.assert_frame_equal(got, exp, check_exact=False, rtol=1e-12)
    pf = book.portfolios(by=by)
    assert pf.indptr[0] == 0 and np.all(np.diff(pf.indptr) >= 0) and pf.nnz == len(got)
    assert np.all(book.accounts[pf.account_idx] == pf.key["account_id"])
    # rows of one portfolio are sorted by instrument (canonical CSR)
    for p in range(len(pf)):
        seg = pf.instrument_idx[pf.indptr[p]:pf.indptr[p + 1]]
        assert np.all(np.diff(seg) > 0)


def test_netting_of_duplicates(clean):
    as_of, tables = clean
    book = Book.from_frames(as_of, **tables)
    n_pairs = tables["positions"].groupby(["account_id", "instrument_id"]).ngroups
    assert len(book.positions.quantity) == n_pairs
    np.testing.assert_allclose(book.positions.quantity.sum(), tables["positions"]["quantity"].sum(), rtol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_portfolios_invariant_to_row_order(clean, seed):
    as_of, tables = clean
    rng = np.random.default_rng(seed)
    base = Book.from_frames(as_of, **tables)
    shuffled = dict(tables)
    shuffled["positions"] = tables["positions"].iloc[rng.permutation(len(tables["positions"]))]
    shuffled["balances"] = tables["balances"].iloc[rng.permutation(len(tables["balances"]))]
    shuffled["market"] = tables["market"].iloc[rng.permutation(len(tables["market"]))]
    other = Book.from_frames(as_of, **shuffled)
    for by in GROUPINGS:
        a, b = base.portfolios(by=by), other.portfolios(by=by)
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.instrument_idx, b.instrument_idx)
        np.testing.assert_allclose(a.quantity, b.quantity, rtol=1e-12)
        for k in a.key:
            np.testing.assert_array_equal(a.key[k], b.key[k])
    np.testing.assert_array_equal(base.market.underlying_price, other.market.underlying_price)
    # permuting the instruments table changes indices, not the portfolios' content
    perm = dict(tables)
    perm["instruments"] = tables["instruments"].iloc[rng.permutation(len(tables["instruments"]))]
    third = Book.from_frames(as_of, **perm)
    for by in GROUPINGS:
        pd.testing.assert_frame_equal(_actual(base, by), _actual(third, by), check_exact=False, rtol=1e-12)


def test_tiny_book_arrays_by_hand():
    """The tiny book's arrays against values worked out by hand."""
    from conftest import TINY_AS_OF, tiny_tables

    clean, rejects, _ = validate(tiny_tables(), TINY_AS_OF)
    book = Book.from_frames(TINY_AS_OF, **clean)
    ins = book.instruments
    assert ins.kind.tolist() == [2, 1, 3, 2, 3, 0] and ins.settlement.tolist() == [1, 1, 1, 0, 0, 0]
    assert ins.option_type.tolist() == [0, 0, 1, 0, -1, 0]
    # 2024-12-31T08:00 -> 2025-06-27T08:00 is 178 days, ACT/365
    np.testing.assert_allclose(book.time_to_expiry(), [0, 178 / 365, 178 / 365, 0, 178 / 365, 0], rtol=0, atol=1e-15)
    assert list(book.market.underlyings) == ["BTC", "ETH", "USDC", "USDT"]
    assert book.underlying_idx().tolist() == [0, 0, 0, 0, 1, 0]
    assert ins.settlement_currency().tolist() == ["BTC", "BTC", "BTC", "USD", "USD", "USD"]
    pf = book.portfolios("account_settlement")
    assert list(zip(pf.key["account_id"], pf.key["currency"])) == [("A1", "BTC"), ("A2", "BTC"), ("A2", "USD"),
                                                                    ("A3", "USD")]


# ----------------------------------------------------------------------------- from_frames checks its input


def _clean_tiny():
    from conftest import TINY_AS_OF, tiny_tables

    clean, rejects, _ = validate(tiny_tables(), TINY_AS_OF)
    assert rejects.empty
    return TINY_AS_OF, clean


# (table, 0-based row, column, bad value, reason): each would otherwise give a wrong or NaN figure
FROM_FRAMES_FAULTS = [
    ("positions", 1, "quantity", np.nan, "non_finite"),
    ("positions", 0, "quantity", np.inf, "non_finite"),
    ("positions", 2, "instrument_id", "NOPE", "unknown_instrument"),
    ("positions", 3, "account_id", None, "missing_value"),
    ("balances", 2, "amount", np.nan, "non_finite"),
    ("balances", 0, "asset", None, "missing_value"),
    ("market", 0, "underlying_price", np.nan, "non_finite"),
    ("market", 3, "underlying_price", 0.0, "non_positive"),
    ("market", 2, "implied_vol", np.nan, "non_finite"),
    ("market", 4, "implied_vol", 0.0, "option_without_vol"),
    ("index", 1, "price", -1.0, "non_positive"),
    ("instruments", 0, "contract_size", 0.0, "non_positive"),
    ("instruments", 1, "kind", "swap", "unknown_kind"),
    ("instruments", 3, "settlement", "quanto", "unknown_settlement"),
    ("instruments", 2, "strike", np.nan, "non_finite"),
    ("instruments", 4, "option_type", "straddle", "bad_option_type"),
    ("instruments", 4, "underlying", "DOGE", "unknown_underlying"),
    ("instruments", 2, "instrument_id", "BTC-PERPETUAL", "duplicate_instrument"),
]


@pytest.mark.parametrize("table,row,column,value,reason", FROM_FRAMES_FAULTS)
def test_from_frames_refuses_a_bad_cell_with_one_line(table, row, column, value, reason):
    """The issue's case first: a NaN quantity used to give a silently wrong margin; now it names row and column."""
    from gpurisk.errors import ValidationError

    as_of, clean = _clean_tiny()
    df = clean[table].copy()
    if isinstance(value, str) or value is None:
        df[column] = df[column].astype(object)
    df.loc[row, column] = value
    clean[table] = df
    with pytest.raises(ValidationError) as exc:
        Book.from_frames(as_of, **clean)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{table} row {row + 1}, column {column}: ") and f"({reason};" in msg, msg


def test_from_frames_names_a_missing_market_row_and_a_missing_expiry():
    from gpurisk.errors import ValidationError

    as_of, clean = _clean_tiny()
    clean["market"] = clean["market"].drop(index=4).reset_index(drop=True)
    with pytest.raises(ValidationError, match=r"^instruments row 5, column instrument_id: .*missing_market_row"):
        Book.from_frames(as_of, **clean)
    as_of, clean = _clean_tiny()
    clean["instruments"].loc[2, "expiry"] = pd.NaT  # the BTC option: priced as if expiring now
    with pytest.raises(ValidationError, match=r"^instruments row 3, column expiry: .*missing_value"):
        Book.from_frames(as_of, **clean)
    as_of, clean = _clean_tiny()
    clean["instruments"]["expiry"] = clean["instruments"]["expiry"].astype(object)
    clean["instruments"].loc[1, "expiry"] = "next friday"
    with pytest.raises(ValidationError, match=r"^instruments row 2, column expiry: .*wrong_type"):
        Book.from_frames(as_of, **clean)
    as_of, clean = _clean_tiny()
    clean["positions"] = clean["positions"].drop(columns="quantity")
    with pytest.raises(ValidationError, match="positions.*quantity"):
        Book.from_frames(as_of, **clean)


def test_from_frames_message_matches_validate():
    """The same bad cell gives the same text from validate's rejects and from from_frames."""
    from conftest import TINY_AS_OF, tiny_tables

    from gpurisk.errors import ValidationError

    t = tiny_tables()
    t["positions"]["quantity"] = t["positions"]["quantity"].astype(float)
    t["positions"].loc[1, "quantity"] = np.nan
    _, rejects, _ = validate(t, TINY_AS_OF)
    as_of, clean = _clean_tiny()
    clean["positions"]["quantity"] = t["positions"]["quantity"]
    with pytest.raises(ValidationError) as exc:
        Book.from_frames(as_of, **clean)
    assert str(exc.value).startswith(rejects["message"].iloc[0])


def test_from_frames_accepts_raw_text_frames_like_validate():
    """Text cells (as read from CSV) build the same book as the validated, typed tables."""
    from conftest import TINY_AS_OF, tiny_tables

    as_of, clean = _clean_tiny()
    a = Book.from_frames(as_of, **clean)
    b = Book.from_frames(TINY_AS_OF, **tiny_tables())
    for f in ("instrument_id", "kind", "settlement", "contract_size", "expiry", "strike", "option_type"):
        np.testing.assert_array_equal(getattr(a.instruments, f), getattr(b.instruments, f))
    np.testing.assert_array_equal(a.market.underlying_price, b.market.underlying_price)
    np.testing.assert_array_equal(a.market.implied_vol, b.market.implied_vol)
    np.testing.assert_array_equal(a.positions.quantity, b.positions.quantity)
    np.testing.assert_array_equal(a.balances.amount, b.balances.amount)


def test_from_frames_with_no_positions_or_balances_keeps_float_columns():
    as_of, clean = _clean_tiny()
    clean["positions"] = clean["positions"].iloc[:0]
    clean["balances"] = pd.DataFrame({"account_id": [], "venue": [], "asset": [], "amount": []})
    book = Book.from_frames(as_of, **clean)
    assert book.n_accounts == 0 and len(book.positions.quantity) == 0 and len(book.balances.amount) == 0
    assert book.positions.quantity.dtype == np.float64 and book.balances.amount.dtype == np.float64
