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
    o = o[o["level"] == "account"]
    dv = m[m["methodology"] == "deribit"].set_index("account_id")
    dd = d.groupby("account_id")[["im_usd", "mm_usd"]].sum()
    pd.testing.assert_frame_equal(dv[["im_usd", "mm_usd"]].sort_index(), dd.sort_index(), check_exact=False,
                                  rtol=1e-13)
    ov = m[m["methodology"] == "okx"].set_index("account_id")
    np.testing.assert_allclose(ov["im_usd"].to_numpy(), o.set_index("account_id").loc[ov.index, "imr"].to_numpy(),
                               rtol=1e-13)
    # single-currency deribit rows are in the coin
    one = dv[dv["currency"] != "USD"]
    np.testing.assert_allclose(one["im"].to_numpy(), d.set_index("account_id").loc[one.index, "im"].to_numpy(),
                               rtol=1e-13)
    # binance is fully paid spot: the sample book holds only long spot
    assert (m.loc[m["venue"] == "binance", "im_usd"] == 0.0).all()
    held = {(a, v) for a, v in zip(book.accounts[book.positions.account_idx],
                                   book.instruments.venue[book.positions.instrument_idx])}
    assert {(a, v) for a, v in zip(m["account_id"], m["venue"])} == held


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
    assert long_["im_usd"] == 0.0 and long_["equity_usd"] == 80_000.0 and long_["methodology"] == "spot"
    short = run(venue, _spot_book(tmp_path, -1.5), p).tables["margin"].iloc[0]
    assert short["im_usd"] == pytest.approx(0.5 * 1.5 * 50_000.0, rel=1e-15)
    assert short["excess_usd"] == pytest.approx(80_000.0 - 37_500.0, rel=1e-15)


def test_unmapped_venue_and_wrong_instrument_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="kraken"):
        run(venue, _spot_book(tmp_path, 1.0, venue_name="kraken"))
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
