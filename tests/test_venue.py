"""Venue model: methodology per venue, and the invariants every venue replica keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpurisk.backends import TailStats
from gpurisk.backends import reference as ref
from gpurisk.book import Book
from gpurisk.errors import ConfigError, GpuriskError
from gpurisk.generate import generate_book
from gpurisk.margin import deribit, okx, venue
from gpurisk.margin.plan import execute

from test_deribit import INSTRUMENT_COLS, write_book

REPO = Path(__file__).resolve().parents[1]
VENUES_TOML = REPO / "jobs" / "params" / "venues.toml"


def sample_book(n=24, seed=3) -> Book:
    t = generate_book(n, seed)
    return Book.from_frames(t["meta"]["as_of"], t["instruments"], t["market"], t["index"], t["positions"],
                            t["balances"])


def run(mod, book, params=None, chunk=None):
    """plan → tail stats (optionally in chunks of ``chunk`` portfolios, as the batch layer does) → finalize."""
    p = mod.plan(book, params)
    if chunk is None:
        stats, _ = execute(p, "reference")
    else:
        stats = {}
        for name, leg in p.legs.items():
            P = ref.revalue(leg.pricing, leg.scenarios, leg.numeraire)
            n = len(leg.portfolios)
            parts = [ref.tail_stats(leg.portfolios.slice(lo, min(lo + chunk, n)), P, leg.spec)
                     for lo in range(0, n, chunk)]
            stats[name] = TailStats.concat(parts)
    return mod.finalize(p, stats)


@pytest.fixture(scope="module")
def book():
    return sample_book()


def test_venue_rows_match_each_methodology(book):
    res = run(venue, book, venue.load_params(str(VENUES_TOML)))
    m = res.tables["margin"]
    assert not m.duplicated(["account_id", "venue"]).any()
    d = run(deribit, book).tables["margin"]
    o = run(okx, book).tables["margin"]
    dv = m[m["methodology"] == "deribit"].set_index("account_id")
    dd = d.groupby("account_id")[["im_usd", "mm_usd"]].sum()
    pd.testing.assert_frame_equal(dv[["im_usd", "mm_usd"]].sort_index(), dd.sort_index(), check_exact=False,
                                  rtol=1e-13)
    ov = m[m["methodology"] == "okx"].set_index("account_id")
    np.testing.assert_allclose(ov["im_usd"].to_numpy(), o.set_index("account_id").loc[ov.index, "imr"].to_numpy(),
                               rtol=1e-13)
    # the venue table is all USD (one unit per column); Deribit's own figures, in each settlement coin,
    # ride along in the ``deribit`` table
    assert (m["currency"] == "USD").all() and np.array_equal(m["im"].to_numpy(), m["im_usd"].to_numpy())
    pd.testing.assert_frame_equal(res.tables["deribit"], d)
    assert set(d["currency"]) >= {"BTC", "ETH"}
    np.testing.assert_allclose(d["im_usd"].to_numpy(), (d["im"] * d["index_price"]).to_numpy(), rtol=1e-15)
    # binance is fully paid spot: the sample book holds only long spot
    assert (m.loc[m["venue"] == "binance", "im_usd"] == 0.0).all()
    held = {(a, v) for a, v in zip(book.accounts[book.positions.account_idx],
                                   book.instruments.venue[book.positions.instrument_idx])}
    held |= {(a, v) for a, v in zip(book.accounts[book.balances.account_idx], book.balances.venue)}
    assert {(a, v) for a, v in zip(m["account_id"], m["venue"])} == held
    assert res.summary["accounts"] == m["account_id"].nunique() == len(set(book.accounts))


def _spot_book(tmp_path, qty, venue_name="binance", kind="spot"):
    ins = pd.DataFrame([["BTCUSDT", venue_name, "BTC", kind, "linear", 1.0, "", "", ""]], columns=INSTRUMENT_COLS)
    mk = pd.DataFrame({"instrument_id": ["BTCUSDT"], "underlying_price": [50_000.0], "implied_vol": [np.nan]})
    idx = pd.DataFrame({"underlying": ["BTC", "USDT"], "price": [50_000.0, 1.0]})
    pos = pd.DataFrame({"account_id": ["s"], "instrument_id": ["BTCUSDT"], "quantity": [qty]})
    bal = pd.DataFrame({"account_id": ["s"], "venue": [venue_name], "asset": ["USDT"], "amount": [80_000.0]})
    return write_book(tmp_path / f"spot{qty}{venue_name}{kind}", "2025-01-02T00:00:00Z", ins, mk, idx, pos, bal)


def test_spot_methodology(tmp_path):
    p = venue.Params(spot_short_rate=0.5)
    long_ = run(venue, _spot_book(tmp_path, 2.0), p).tables["margin"].iloc[0]
    # equity: 80,000 USDT balance + 2 BTC spot held at 50,000
    assert long_["im_usd"] == 0.0 and long_["equity_usd"] == 180_000.0 and long_["methodology"] == "spot"
    short = run(venue, _spot_book(tmp_path, -1.5), p).tables["margin"].iloc[0]
    assert short["im_usd"] == pytest.approx(0.5 * 1.5 * 50_000.0, rel=1e-15)
    # a short spot holding is a liability: 80,000 − 1.5 × 50,000
    assert short["equity_usd"] == pytest.approx(5_000.0, rel=1e-15)
    assert short["excess_usd"] == pytest.approx(5_000.0 - 37_500.0, rel=1e-15)


def test_unmapped_venue_is_uncovered_and_wrong_instrument_is_an_error(tmp_path):
    res = run(venue, _spot_book(tmp_path, 1.0, venue_name="kraken"))
    r = res.tables["margin"].iloc[0]
    assert r["venue"] == "kraken" and r["status"] == "uncovered" and r["methodology"] == "uncovered"
    assert np.isnan(r["im_usd"]) and np.isnan(r["excess_usd"])
    assert res.summary["uncovered_venues"] == ["kraken"] and res.summary["uncovered_pairs"] == 1
    with pytest.raises(GpuriskError, match="BTCUSDT.*binance.*not spot"):
        run(venue, _spot_book(tmp_path, 1.0, kind="perpetual"))


def test_venues_file_roundtrip_and_errors(tmp_path):
    p = venue.load_params(str(VENUES_TOML))
    assert {k: v.methodology for k, v in p.venues.items()} == {"deribit": "deribit", "okx": "okx", "binance": "spot"}
    assert Path(p.deribit_params).name == "deribit.toml" and Path(p.deribit_params).is_absolute()
    bad = tmp_path / "v.toml"
    bad.write_text('[venues.bybit]\nmethodology = "span"\n')
    with pytest.raises(ConfigError, match="span"):
        venue.load_params(str(bad))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), chunk=st.integers(1, 7))
@pytest.mark.slow
def test_chunking_and_account_order_change_nothing(seed, chunk):
    """Chunked tail stats and a permuted, relabelled account list give the same rows."""
    t = generate_book(12, seed)
    b = Book.from_frames(t["meta"]["as_of"], t["instruments"], t["market"], t["index"], t["positions"], t["balances"])
    rng = np.random.default_rng(seed)
    names = sorted(set(t["positions"]["account_id"]) | set(t["balances"]["account_id"]))
    new = dict(zip(names, [f"Z{i:03d}" for i in rng.permutation(len(names))]))
    pos = t["positions"].sample(frac=1.0, random_state=seed).assign(account_id=lambda d: d["account_id"].map(new))
    bal = t["balances"].sample(frac=1.0, random_state=seed).assign(account_id=lambda d: d["account_id"].map(new))
    b2 = Book.from_frames(t["meta"]["as_of"], t["instruments"], t["market"], t["index"], pos, bal)
    back = {v: k for k, v in new.items()}
    for mod in (deribit, okx, venue):
        base = run(mod, b).tables["margin"]
        chunked = run(mod, b, chunk=chunk).tables["margin"]
        pd.testing.assert_frame_equal(base, chunked)
        perm = run(mod, b2).tables["margin"].assign(account_id=lambda d: d["account_id"].map(back))
        keys = [c for c in ("account_id", "venue", "currency", "level", "risk_unit") if c in base.columns]
        pd.testing.assert_frame_equal(base.sort_values(keys).reset_index(drop=True),
                                      perm.sort_values(keys).reset_index(drop=True), check_exact=False, rtol=1e-12)


@settings(max_examples=10, deadline=None)
@given(k=st.floats(0.25, 4.0))
def test_delta_one_margin_scales_linearly(k):
    """Scaling a futures-only book scales Deribit and OKX requirements (small books: MR7 tier 1)."""
    t = generate_book(12, 5)
    ins = t["instruments"]
    d1 = set(ins.loc[ins["kind"].isin(["future", "perpetual"]), "instrument_id"])
    pos = t["positions"][t["positions"]["instrument_id"].isin(d1)]
    b = Book.from_frames(t["meta"]["as_of"], ins, t["market"], t["index"], pos, t["balances"])
    bk = Book.from_frames(t["meta"]["as_of"], ins, t["market"], t["index"], pos.assign(quantity=pos["quantity"] * k),
                          t["balances"])
    for mod, col in ((deribit, "im"), (okx, "imr")):
        a, c = run(mod, b).tables["margin"], run(mod, bk).tables["margin"]
        assert len(a) > 0
        np.testing.assert_allclose(c[col].to_numpy(), k * a[col].to_numpy(), rtol=1e-10)


def _holdings_tables():
    """Spot at binance and at OKX, an OKX perpetual, and an account with balances only."""
    ins = pd.DataFrame([
        ["BTCUSDT", "binance", "BTC", "spot", "linear", 1.0, "", "", ""],
        ["BTC-USDT", "okx", "BTC", "spot", "linear", 1.0, "", "", ""],
        ["BTC-USDT-SWAP", "okx", "BTC", "perpetual", "linear", 0.01, "", "", ""],
    ], columns=INSTRUMENT_COLS)
    # spot marks differ from the index so the test sees which price values which holding
    mk = pd.DataFrame({"instrument_id": ["BTCUSDT", "BTC-USDT", "BTC-USDT-SWAP"],
                       "underlying_price": [60_000.0, 60_050.0, 60_100.0], "implied_vol": [np.nan] * 3})
    idx = pd.DataFrame({"underlying": ["BTC", "USDT"], "price": [59_900.0, 1.0]})
    pos = pd.DataFrame({"account_id": ["a", "b", "b"], "instrument_id": ["BTCUSDT", "BTC-USDT", "BTC-USDT-SWAP"],
                        "quantity": [0.5, 0.2, -100.0]})
    bal = pd.DataFrame({"account_id": ["a", "b", "b", "c", "c"], "venue": ["binance", "okx", "okx", "deribit", "okx"],
                        "asset": ["USDT", "USDT", "BTC", "USDT", "BTC"],
                        "amount": [5_000.0, 10_000.0, 0.1, 1_000.0, 0.01]})
    return ins, mk, idx, pos, bal


def test_equity_counts_spot_holdings_and_every_pair_has_a_row(tmp_path):
    ins, mk, idx, pos, bal = _holdings_tables()
    book = write_book(tmp_path / "h", "2025-01-02T00:00:00Z", ins, mk, idx, pos, bal)
    m = run(venue, book).tables["margin"].set_index(["account_id", "venue"])
    # every pair of the positions or the balances, and only those
    assert sorted(m.index) == [("a", "binance"), ("b", "okx"), ("c", "deribit"), ("c", "okx")]
    # hand computation: balances at the index (stablecoins 1), spot positions at their mark
    assert m.loc[("a", "binance"), "equity_usd"] == pytest.approx(5_000.0 + 0.5 * 60_000.0, rel=1e-15)
    assert m.loc[("b", "okx"), "equity_usd"] == pytest.approx(10_000.0 + 0.1 * 59_900.0 + 0.2 * 60_050.0, rel=1e-15)
    assert m.loc[("c", "deribit"), "equity_usd"] == 1_000.0
    assert m.loc[("c", "okx"), "equity_usd"] == pytest.approx(0.01 * 59_900.0, rel=1e-15)
    # balance-only pairs: nothing margined, the venue's methodology, excess = equity
    for key, meth in ((("c", "deribit"), "deribit"), (("c", "okx"), "okx")):
        r = m.loc[key]
        assert r["methodology"] == meth and r["currency"] == "USD"
        assert r["im"] == r["mm"] == r["im_usd"] == r["mm_usd"] == 0.0 and r["excess_usd"] == r["equity_usd"]
    # OKX's own account row carries the same equity (spot included) and a positive requirement
    o = run(okx, book).tables["margin"]
    ob = o[o["account_id"] == "b"].iloc[0]
    assert ob["equity"] == pytest.approx(m.loc[("b", "okx"), "equity_usd"], rel=1e-15)
    assert m.loc[("b", "okx"), "im_usd"] == pytest.approx(ob["imr"], rel=1e-15) and ob["imr"] > 0.0
    assert set(o["account_id"]) == {"b"}  # okx alone margins only accounts with positions there


def test_unpriced_holdings_are_errors_not_zero():
    ins, mk, idx, pos, bal = _holdings_tables()
    # Book.from_frames does not need an index row for a balance's asset: the models must refuse it
    bal_sol = pd.concat([bal, pd.DataFrame({"account_id": ["b"], "venue": ["okx"], "asset": ["SOL"],
                                            "amount": [3.0]})], ignore_index=True)
    b = Book.from_frames("2025-01-02T00:00:00Z", ins, mk, idx, pos, bal_sol)
    for mod in (venue, okx):
        with pytest.raises(GpuriskError, match=r"SOL.*no index price"):
            run(mod, b)
    # a spot position without a usable mark: Book.from_frames refuses it, and so does the model for a
    # book assembled without it
    import dataclasses

    with pytest.raises(GpuriskError, match="market row 1, column underlying_price"):
        Book.from_frames("2025-01-02T00:00:00Z", ins, mk.assign(underlying_price=[np.nan, 60_050.0, 60_100.0]),
                         idx, pos, bal)
    b = Book.from_frames("2025-01-02T00:00:00Z", ins, mk, idx, pos, bal)
    b = dataclasses.replace(b, market=dataclasses.replace(b.market, underlying_price=np.array([np.nan, 60_050.0,
                                                                                               60_100.0])))
    with pytest.raises(GpuriskError, match="BTCUSDT.*underlying_price"):
        run(venue, b)


def test_balance_at_an_unmapped_venue_is_reported_not_fatal(tmp_path):
    # one balance at a venue without a methodology used to fail the whole run; now only that pair is uncovered
    ins, mk, idx, pos, bal = _holdings_tables()
    bal = pd.concat([bal, pd.DataFrame({"account_id": ["c"], "venue": ["kraken"], "asset": ["USDT"],
                                        "amount": [1.0]})], ignore_index=True)
    book = write_book(tmp_path / "k", "2025-01-02T00:00:00Z", ins, mk, idx, pos, bal)
    res = run(venue, book)
    m = res.tables["margin"].set_index(["account_id", "venue"])
    assert m.loc[("c", "kraken"), "status"] == "uncovered" and np.isnan(m.loc[("c", "kraken"), "im_usd"])
    covered = m.drop(index=("c", "kraken"))
    assert covered["status"].isin(["ok", "call", "reduce_only", "liquidation"]).all()
    assert np.isfinite(covered["im_usd"]).all() and res.summary["uncovered_venues"] == ["kraken"]


def test_coverage_lists_the_pairs_each_model_must_report(book):
    """The batch layer's coverage check reads these: they equal the pairs each model outputs."""
    for mod, params in ((venue, venue.load_params(str(VENUES_TOML))), (deribit, None), (okx, None)):
        p = mod.plan(book, params)
        stats, _ = execute(p, "reference")
        m = mod.finalize(p, stats).tables["margin"]
        want = mod.coverage(p)
        got = m[["account_id", "venue"]].drop_duplicates().sort_values(["account_id", "venue"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want.reset_index(drop=True), check_dtype=False)
        assert len(want) > 0
