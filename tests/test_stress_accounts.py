"""The optional accounts table: member groups read, validated (rejects, accounting) and aligned in the Book."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_AS_OF, tiny_tables
from gpurisk.book import Book
from gpurisk.errors import ValidationError
from gpurisk.io import load_book, write_book
from gpurisk.schema import DEFAULT_ACCOUNT_KIND, OPTIONAL_TABLES
from gpurisk.validate import validate


def _accounts(rows):
    return pd.DataFrame(rows, columns=["account_id", "group_id", "name", "kind"], dtype=object)


def _book(tables):
    clean, rejects, summary = validate(tables, TINY_AS_OF)
    return Book.from_frames(TINY_AS_OF, **clean), rejects, summary


def test_without_the_table_each_account_is_its_own_group():
    book, _, summary = _book(tiny_tables())
    assert book.groups is None and "accounts" not in summary
    g = book.account_groups()
    assert list(g.group_id) == list(book.accounts) and set(g.kind) == {DEFAULT_ACCOUNT_KIND}


def test_groups_are_aligned_to_the_sorted_accounts_and_unlisted_accounts_stand_alone():
    t = tiny_tables()
    t["accounts"] = _accounts([("A3", "G1", "Fund three", "Fund"), ("A1", "G1", "House one", " house "),
                               ("ZZ", "G9", "no positions", "client")])
    book, rejects, summary = _book(t)
    assert list(book.accounts) == ["A1", "A2", "A3"]
    g = book.account_groups()
    assert list(g.group_id) == ["G1", "A2", "G1"]
    assert list(g.kind) == ["house", DEFAULT_ACCOUNT_KIND, "fund"]  # codes are trimmed and lower-cased
    assert list(g.name) == ["House one", "A2", "Fund three"]
    assert summary["accounts"] == {"input": 3, "accepted": 3, "rejected": 0} and len(rejects) == 0


@pytest.mark.parametrize("row,column,value,reason", [
    (1, "account_id", "A1", "duplicate_account"),
    (0, "group_id", None, "missing_value"),
    (1, "account_id", "", "missing_value"),
])
def test_bad_rows_are_rejects_and_the_counts_balance(row, column, value, reason):
    t = tiny_tables()
    acc = _accounts([("A1", "G1", None, "house"), ("A2", "G1", None, None), ("A3", "G2", None, None)])
    acc.loc[row, column] = value
    t["accounts"] = acc
    clean, rejects, summary = validate(t, TINY_AS_OF)
    mine = rejects[rejects["table"] == "accounts"]
    assert len(mine) == 1
    r = mine.iloc[0]
    assert (r["row"], r["column"], r["reason"]) == (row + 1, column, reason)
    assert f"accounts row {row + 1}, column {column}" in r["message"]
    s = summary["accounts"]
    assert s["accepted"] + s["rejected"] == s["input"] == 3 and s["rejected"] == 1
    assert len(clean["accounts"]) == 2
    with pytest.raises(ValidationError, match=reason):
        validate(t, TINY_AS_OF, strict=True)


def test_from_frames_refuses_a_repeated_account():
    t = tiny_tables()
    clean, _, _ = validate(t, TINY_AS_OF)
    acc = _accounts([("A1", "G1", None, None), ("A1", "G2", None, None)])
    with pytest.raises(ValidationError, match="accounts row 2, column account_id.*duplicate_account"):
        Book.from_frames(TINY_AS_OF, **clean, accounts=acc)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_book_folder_with_an_accounts_table_round_trips(tmp_path, fmt):
    t = tiny_tables()
    t["accounts"] = _accounts([("A1", "G1", "one", "house"), ("A2", "G1", "two", "client")])
    write_book(tmp_path / "b", t, {"as_of": TINY_AS_OF}, fmt=fmt)
    assert (tmp_path / "b" / f"accounts.{fmt}").is_file() and "accounts" in OPTIONAL_TABLES
    lb = load_book(tmp_path / "b")
    assert list(lb.book.account_groups().group_id) == ["G1", "G1", "A3"]
    assert lb.summary["book"]["groups"] == 2
    assert lb.summary["accounts"]["input"] == 2


def test_an_accounts_table_without_group_id_is_a_one_line_book_error(tmp_path):
    from gpurisk.errors import BookError

    t = tiny_tables()
    write_book(tmp_path / "b", t, {"as_of": TINY_AS_OF}, fmt="csv")
    (tmp_path / "b" / "accounts.csv").write_text("account_id,name\nA1,x\n", encoding="utf-8")
    with pytest.raises(BookError, match="accounts.csv: missing column\\(s\\) group_id"):
        load_book(tmp_path / "b")


def test_every_listed_account_is_accepted_or_rejected():
    t = tiny_tables()
    n = 50
    rng = np.random.default_rng(3)
    ids = [f"A{i}" for i in rng.integers(0, 20, n)]
    t["accounts"] = _accounts([(a, f"G{i % 4}" if i % 7 else None, None, None) for i, a in enumerate(ids)])
    clean, rejects, summary = validate(t, TINY_AS_OF)
    s = summary["accounts"]
    assert s["input"] == n and s["accepted"] + s["rejected"] == n
    assert len(rejects[rejects["table"] == "accounts"]) == s["rejected"]
    assert clean["accounts"]["account_id"].is_unique
