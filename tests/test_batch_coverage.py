"""The batch layer's coverage check (``summary.model_coverage``) on the real margin models.

Independent source: the account × venue pairs counted here straight from the book's
positions and balances tables, not from the models' own ``coverage``.
"""

from __future__ import annotations


import pandas as pd
import pytest

from gpurisk.book import Book
from gpurisk.generate import generate_book
from gpurisk.margin import deribit, measures, okx, venue
from gpurisk.margin.plan import MarginResult, execute
from gpurisk.batch.summary import model_coverage


@pytest.fixture(scope="module")
def tables():
    t = generate_book(30, 8)
    # one account with a balance and no position at all
    extra = pd.DataFrame({"account_id": ["ZZ-BAL-ONLY"], "venue": ["okx"], "asset": ["USDT"], "amount": [123.0]})
    t["balances"] = pd.concat([t["balances"], extra], ignore_index=True)
    return t


@pytest.fixture(scope="module")
def book(tables):
    t = tables
    return Book.from_frames(t["meta"]["as_of"], t["instruments"], t["market"], t["index"], t["positions"],
                            t["balances"])


def _result(mod, book, params=None):
    p = mod.plan(book, params)
    stats, _ = execute(p, "reference")
    return p, mod.finalize(p, stats)


def test_venue_model_covers_every_pair_of_positions_and_balances(tables, book):
    p, res = _result(venue, book)
    cov = model_coverage(venue, p, book, res)
    ins = tables["instruments"].set_index("instrument_id")["venue"]
    pairs = set(zip(tables["positions"]["account_id"], tables["positions"]["instrument_id"].map(ins)))
    pairs |= set(zip(tables["balances"]["account_id"], tables["balances"]["venue"]))
    assert cov["key"] == ["account_id", "venue"]
    assert (cov["expected"], cov["covered"], cov["missing"], cov["extra"]) == (len(pairs), len(pairs), 0, 0)
    assert cov["complete"] and ("ZZ-BAL-ONLY", "okx") in pairs
    # dropping the balance-only row (what the model did before) is caught and named
    m = res.tables["margin"]
    res.tables["margin"] = m[m["account_id"] != "ZZ-BAL-ONLY"]
    cov = model_coverage(venue, p, book, res)
    assert not cov["complete"] and cov["missing"] == 1 and cov["missing_examples"] == ["ZZ-BAL-ONLY/okx"]


@pytest.mark.parametrize("mod", [deribit, okx])
def test_venue_replicas_cover_the_accounts_they_margin(tables, book, mod):
    p, res = _result(mod, book)
    cov = model_coverage(mod, p, book, res)
    ins = tables["instruments"].set_index("instrument_id")["venue"]
    pos = tables["positions"]
    at = pos[pos["instrument_id"].map(ins).isin(p.context.params.venues) & (pos["quantity"] != 0)]
    want = set(zip(at["account_id"], at["instrument_id"].map(ins)))
    assert cov["complete"] and cov["expected"] == cov["covered"] == len(want) > 0


def test_measures_coverage_is_every_account_of_the_book(book):
    p = measures.plan(book, measures.Params(), None)
    stats, _ = execute(p, "reference")
    res = measures.finalize(p, stats)
    cov = model_coverage(measures, p, book, res)
    assert cov["key"] == ["account_id", "venue"] and cov["expected"] == len(book.accounts) == cov["covered"]
    short = MarginResult("x", {"margin": res.tables["margin"].iloc[2:]}, {})
    cov = model_coverage(measures, p, book, short)
    assert cov["missing"] == 2 and not cov["complete"]
    assert cov["missing_examples"] == [f"{a}/ALL" for a in res.tables["margin"]["account_id"].iloc[:2]]
    nokey = MarginResult("x", {"margin": pd.DataFrame({"im": [1.0]})}, {})
    cov = model_coverage(measures, p, book, nokey)
    assert not cov["complete"] and "account_id" in cov["error"]
