"""OKX portfolio-margin replica: the published MR7 tier rule and hand-computed MR terms."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from gpurisk.margin import okx
from gpurisk.margin.plan import execute

from test_deribit import INSTRUMENT_COLS, write_book

AS_OF = pd.Timestamp("2025-02-03T08:00:00Z")


def run(book, params=None):
    p = okx.plan(book, params)
    stats, _ = execute(p, "reference")
    return okx.finalize(p, stats)


def make_book(tmp_path, rows, name="okx"):
    """rows: (instrument_id, underlying, kind, contract_size, expiry, strike, type, forward, vol, account, qty)."""
    ins = pd.DataFrame([[r[0], "okx", r[1], r[2], "linear", r[3], r[4], r[5], r[6]] for r in rows],
                       columns=INSTRUMENT_COLS).drop_duplicates("instrument_id")
    mk = pd.DataFrame([[r[0], r[7], r[8]] for r in rows],
                      columns=["instrument_id", "underlying_price", "implied_vol"]).drop_duplicates("instrument_id")
    und = sorted({r[1] for r in rows})
    spot = {r[1]: r[7] for r in rows}
    idx = pd.DataFrame({"underlying": und + ["USDT"], "price": [spot[u] for u in und] + [1.0]})
    pos = pd.DataFrame([[r[9], r[0], r[10]] for r in rows], columns=["account_id", "instrument_id", "quantity"])
    bal = pd.DataFrame({"account_id": sorted(pos["account_id"].unique()), "venue": "okx", "asset": "USDT",
                        "amount": 100_000.0})
    return write_book(tmp_path / name, AS_OF.isoformat(), ins, mk, idx, pos, bal)


def test_mr7_tier_rule_published_example():
    # raw MR7 30,000 at tiers x1 to 10k and x2 above: 10,000 + 20,000 x 2 = 50,000
    assert okx.tiered(np.array([30_000.0]), (10_000.0,), (1.0, 2.0))[0] == 50_000.0
    # the 2025-01-15 BTC/ETH tiers: 300k raw = 250k x1 + 50k x2
    p = okx.Params()
    assert okx.tiered(np.array([300_000.0]), p.mr7_tier_bounds, p.mr7_multipliers)[0] == 350_000.0
    assert okx.tiered(np.array([0.0, 5_000.0]), p.mr7_tier_bounds, p.mr7_multipliers).tolist() == [0.0, 5_000.0]


def test_linear_perpetual_and_future_terms(tmp_path):
    F = 100_000.0
    exp = (AS_OF + pd.Timedelta(days=73)).isoformat()
    book = make_book(tmp_path, [
        ("BTC-USDT-SWAP", "BTC", "perpetual", 0.01, "", "", "", F, np.nan, "a", 1_000.0),  # 10 BTC long
        ("BTC-USDT-250417", "BTC", "future", 0.01, exp, "", "", F, np.nan, "b", -500.0),  # 5 BTC short
    ])
    m = run(book).tables["margin"]
    a = m[(m["account_id"] == "a") & (m["level"] == "risk_unit")].iloc[0]
    notional = 10 * F
    assert a["mr1"] == pytest.approx(0.12 * notional, rel=1e-12)  # worst grid point −12 %
    assert a["mr6"] == pytest.approx(0.5 * 0.24 * notional, rel=1e-12)
    assert a["mr4"] == 0.0 and a["mr2"] == 0.0
    assert a["mr7_raw"] == pytest.approx(0.002 * notional, rel=1e-12)
    assert a["mmr"] == pytest.approx(0.12 * notional, rel=1e-12)
    assert a["imr"] == pytest.approx(1.3 * 0.12 * notional, rel=1e-12)
    b = m[(m["account_id"] == "b") & (m["level"] == "risk_unit")].iloc[0]
    T = 73 / 365
    assert b["mr4"] == pytest.approx(5 * F * 0.05 * T, rel=1e-12)
    assert b["mmr"] == pytest.approx(0.12 * 5 * F + 5 * F * 0.05 * T, rel=1e-12)
    acct_b = m[(m["account_id"] == "b") & (m["level"] == "account")].iloc[0]
    assert acct_b["imr"] == pytest.approx(b["imr"], rel=1e-15)
    assert acct_b["im_usd"] == acct_b["imr"] and acct_b["mm_usd"] == acct_b["mmr"]
    # im_usd lives on account rows only, so the table total counts each account once
    assert m["im_usd"].sum() == pytest.approx(m.loc[m["level"] == "risk_unit", "imr"].sum(), rel=1e-12)
    assert np.isnan(b["im_usd"])
    assert acct_b["equity"] == 100_000.0
    assert acct_b["excess"] == pytest.approx(100_000.0 - b["imr"], rel=1e-12)


def test_asset_classes_follow_the_announcement(tmp_path):
    F = 200.0
    book = make_book(tmp_path, [("SOL-USDT-SWAP", "SOL", "perpetual", 1.0, "", "", "", F, np.nan, "a", -100.0)])
    u = run(book).tables["margin"].iloc[0]
    # SOL: MR1 'others' grid (±25 %), MR6 mid caps ±36 % counted at 50 %
    assert u["mr1"] == pytest.approx(0.25 * 100 * F, rel=1e-12)
    assert u["mr6"] == pytest.approx(0.5 * 0.36 * 100 * F, rel=1e-12)


def _b76(F, K, T, s, w):
    if T <= 0 or s <= 0:
        return max(w * (F - K), 0.0)
    st = s * math.sqrt(T)
    d1 = (math.log(F / K) + 0.5 * st * st) / st
    nd = NormalDist()
    return w * (F * nd.cdf(w * d1) - K * nd.cdf(w * (d1 - st)))


def test_option_unit_terms_match_hand_computation(tmp_path):
    F, K, vol, dte, qty = 100_000.0, 104_000.0, 0.6, 10.0, -2.0
    exp = (AS_OF + pd.Timedelta(days=dte)).isoformat()
    book = make_book(tmp_path, [("BTC-C", "BTC", "option", 1.0, exp, K, "call", F, vol, "a", qty)])
    u = run(book).tables["margin"].iloc[0]
    T = dte / 365
    v0 = _b76(F, K, T, vol, 1)
    scale = (30 / dte) ** 0.30
    grid = []
    for m in (-0.12, -0.08, -0.04, 0.0, 0.04, 0.08, 0.12):
        for v in (0.5, 0.0, -0.25):
            grid.append(-qty * (_b76(F * (1 + m), K, T, vol * (1 + v * scale), 1) - v0))
    assert u["mr1"] == pytest.approx(max(max(grid), 0.0), rel=1e-10)
    assert int(np.argmax(grid)) == 18  # +12 % (7th move) x vol up (1st) for a short call
    mr6 = max(0.5 * -qty * (_b76(F * (1 + m), K, T, vol, 1) - v0) for m in (-0.24, 0.24))
    assert u["mr6"] == pytest.approx(max(mr6, 0.0), rel=1e-10)
    # a short option gains from one day of decay: no MR2
    assert u["mr2"] == 0.0
    assert u["mmr"] == pytest.approx(max(u["mr1"], u["mr6"]) + u["mr4"], rel=1e-12)


def test_long_option_pays_mr2_time_decay(tmp_path):
    F, K, vol = 100_000.0, 100_000.0, 0.6
    exp = (AS_OF + pd.Timedelta(days=5)).isoformat()
    book = make_book(tmp_path, [("BTC-P", "BTC", "option", 1.0, exp, K, "put", F, vol, "a", 3.0)])
    u = run(book).tables["margin"].iloc[0]
    hand = 3.0 * (_b76(F, K, 5 / 365, vol, -1) - _b76(F, K, 4 / 365, vol, -1))
    assert u["mr2"] == pytest.approx(hand, rel=1e-10)


def test_params_file_and_errors(tmp_path):
    from pathlib import Path

    from gpurisk.errors import ConfigError

    repo = Path(__file__).resolve().parents[1]
    assert okx.load_params(str(repo / "jobs" / "params" / "okx.toml")) == okx.Params()
    bad = tmp_path / "bad.toml"
    bad.write_text("mr7_tier_bounds = [10000.0]\n")
    with pytest.raises(ConfigError, match="mr7_multipliers"):
        okx.load_params(str(bad))
    bad.write_text("[mr6_moves]\nbtc_eth = \"big\"\n")
    with pytest.raises(ConfigError, match=r"mr6_moves\.btc_eth"):
        okx.load_params(str(bad))
