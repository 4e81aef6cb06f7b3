"""OKX portfolio-margin replica: the published MR7 tier rule and hand-computed MR terms.

OKX's published position-builder example is reproduced in ``test_okx_position_builder.py``.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from gpurisk.backends import Engine
from gpurisk.margin import okx
from gpurisk.margin.plan import execute

from test_deribit import INSTRUMENT_COLS, write_book

AS_OF = pd.Timestamp("2025-02-03T08:00:00Z")


def run(book, params=None):
    p = okx.plan(book, params)
    stats, _ = execute(p, Engine("reference"))
    return okx.finalize(p, stats)


def unit_rows(res) -> pd.DataFrame:
    """The risk-unit rows of an OKX result, indexed by (account_id, risk_unit)."""
    return res.tables["risk_units"].set_index(["account_id", "risk_unit"])


def account_rows(res) -> pd.DataFrame:
    """The account × venue rows of an OKX result, indexed by account_id."""
    return res.tables["margin"].set_index("account_id")


def make_book(tmp_path, rows, name="okx", index=None):
    """rows: (instrument_id, underlying, kind, contract_size, expiry, strike, type, forward, vol, account, qty).

    ``index``: {underlying: index price}; by default the forward of the underlying's last row.
    """
    ins = pd.DataFrame([[r[0], "okx", r[1], r[2], "linear", r[3], r[4], r[5], r[6]] for r in rows],
                       columns=INSTRUMENT_COLS).drop_duplicates("instrument_id")
    mk = pd.DataFrame([[r[0], r[7], r[8]] for r in rows],
                      columns=["instrument_id", "underlying_price", "implied_vol"]).drop_duplicates("instrument_id")
    und = sorted({r[1] for r in rows})
    spot = {r[1]: r[7] for r in rows} | (index or {})
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
    res = run(book)
    u = unit_rows(res)
    a = u.loc[("a", "BTC")]
    notional = 10 * F
    assert a["mr1"] == pytest.approx(0.12 * notional, rel=1e-12)  # worst grid point −12 %
    assert a["mr6"] == pytest.approx(0.5 * 0.24 * notional, rel=1e-12)
    assert a["mr2"] == 0.0
    assert a["mr4"] == pytest.approx(0.002 * notional, rel=1e-12)  # a perpetual pays the least basis move
    assert a["mr7_raw"] == pytest.approx(0.0045 * notional, rel=1e-12)
    assert a["mmr"] == pytest.approx(0.12 * notional + 0.002 * notional, rel=1e-12)
    assert a["imr"] == pytest.approx(1.3 * a["mmr"], rel=1e-12)
    b = u.loc[("b", "BTC")]
    T = 73 / 365
    assert 0.05 * T > 0.002  # the annualised move beats the least move at 73 days
    assert b["mr4"] == pytest.approx(5 * F * 0.05 * T, rel=1e-12)
    assert b["mmr"] == pytest.approx(0.12 * 5 * F + 5 * F * 0.05 * T, rel=1e-12)
    acct = account_rows(res)
    assert acct.loc["b", "im"] == pytest.approx(b["imr"], rel=1e-15)
    assert acct.loc["b", "mm"] == pytest.approx(b["mmr"], rel=1e-15)
    assert acct.loc["b", "im_usd"] == acct.loc["b", "im"] and acct.loc["b", "mm_usd"] == acct.loc["b", "mm"]
    assert acct.loc["b", "equity"] == 100_000.0
    assert acct.loc["b", "excess"] == pytest.approx(100_000.0 - b["imr"], rel=1e-12)


def test_delta_one_shocks_the_index_and_pays_mr4_mr7_on_the_mark(tmp_path):
    # a perpetual marked above its index: MR1/MR6 move with the index, MR4/MR7 use the cash delta at the mark
    mark, index = 101_000.0, 100_000.0
    exp = (AS_OF + pd.Timedelta(days=7)).isoformat()
    book = make_book(tmp_path, [
        ("BTC-USDT-SWAP", "BTC", "perpetual", 0.01, "", "", "", mark, np.nan, "a", -300.0),  # 3 BTC short
        ("BTC-USDT-250207", "BTC", "future", 0.01, exp, "", "", 100_500.0, np.nan, "b", 200.0),  # 2 BTC long
    ], index={"BTC": index})
    u = unit_rows(run(book))
    a, b = u.loc[("a", "BTC")], u.loc[("b", "BTC")]
    assert a["mr1"] == pytest.approx(0.12 * 3 * index, rel=1e-12)
    assert a["mr6"] == pytest.approx(0.5 * 0.24 * 3 * index, rel=1e-12)
    assert a["mr4"] == pytest.approx(0.002 * 3 * mark, rel=1e-12)
    assert a["mr7_raw"] == pytest.approx(0.0045 * 3 * mark, rel=1e-12)
    # a 7-day future: 5 % × 7/365 < 0.2 %, so the least move applies
    assert b["mr1"] == pytest.approx(0.12 * 2 * index, rel=1e-12)
    assert b["mr4"] == pytest.approx(0.002 * 2 * 100_500.0, rel=1e-12)
    # with no index-shocked kinds the perpetual moves with its own mark (the Deribit-style base)
    p = okx.Params(index_shocked_kinds=())
    a_mark = unit_rows(run(book, p)).loc[("a", "BTC")]
    assert a_mark["mr1"] == pytest.approx(0.12 * 3 * mark, rel=1e-12)


def test_hedged_calendar_spread_pays_the_minimum_charge(tmp_path):
    # long perpetual against a short 10-day future: MR1 and MR6 net to zero on the index,
    # MR4 is the least move on each leg, and MR7 binds: 0.45 % of the gross cash delta
    exp = (AS_OF + pd.Timedelta(days=10)).isoformat()
    F_perp, F_fut = 100_050.0, 100_300.0
    rows = [("BTC-USDT-SWAP", "BTC", "perpetual", 0.01, "", "", "", F_perp, np.nan, "h", 2_000.0),
            ("BTC-USDT-250213", "BTC", "future", 0.01, exp, "", "", F_fut, np.nan, "h", -2_000.0)]
    h = unit_rows(run(make_book(tmp_path, rows, index={"BTC": 100_000.0}))).loc[("h", "BTC")]
    gross = 20 * F_perp + 20 * F_fut
    assert h["mr1"] == pytest.approx(0.0, abs=1e-6) and h["mr6"] == pytest.approx(0.0, abs=1e-6)
    assert h["mr4"] == pytest.approx(0.002 * gross, rel=1e-12)
    assert h["mr7_raw"] == pytest.approx(0.0045 * gross, rel=1e-12)
    assert h["mr7"] == h["mr7_raw"]  # 18k raw: inside the first tier
    assert h["mmr"] == pytest.approx(0.0045 * gross, rel=1e-12) and h["mmr"] > h["mr4"] + h["mr1"]
    # 1,000× the size: raw 18.03M crosses every tier up to x12 above 4M
    big = [r[:10] + (r[10] * 1_000.0,) for r in rows]
    hb = unit_rows(run(make_book(tmp_path, big, name="big", index={"BTC": 100_000.0}))).loc[("h", "BTC")]
    raw = 0.0045 * gross * 1_000.0
    hand = (250e3 * 1 + 250e3 * 2 + 500e3 * 4 + 1e6 * 6 + 1e6 * 8 + 1e6 * 10 + (raw - 4e6) * 12)
    assert hb["mr7_raw"] == pytest.approx(raw, rel=1e-12)
    assert hb["mr7"] == pytest.approx(hand, rel=1e-12) and hb["mmr"] == pytest.approx(hand, rel=1e-12)


def test_spot_pays_no_minimum_charge_and_basis_only_when_asked(tmp_path):
    # 10 BTC spot against a 10 BTC short perpetual: MR7 is charged on the perpetual alone
    rows = [("BTC-USDT", "BTC", "spot", 1.0, "", "", "", 100_000.0, np.nan, "s", 10.0),
            ("BTC-USDT-SWAP", "BTC", "perpetual", 0.01, "", "", "", 100_000.0, np.nan, "s", -1_000.0)]
    book = make_book(tmp_path, rows)
    s = unit_rows(run(book)).loc[("s", "BTC")]
    assert s["mr1"] == pytest.approx(0.0, abs=1e-6)
    assert s["mr7_raw"] == pytest.approx(0.0045 * 1e6, rel=1e-12)
    assert s["mr4"] == pytest.approx(0.002 * 1e6, rel=1e-12)
    with_spot = unit_rows(run(book, okx.Params(mr4_kinds=("perpetual", "future", "spot")))).loc[("s", "BTC")]
    assert with_spot["mr4"] == pytest.approx(0.002 * 2e6, rel=1e-12)


def test_asset_classes_follow_the_announcement(tmp_path):
    F = 200.0
    book = make_book(tmp_path, [("SOL-USDT-SWAP", "SOL", "perpetual", 1.0, "", "", "", F, np.nan, "a", -100.0)])
    u = unit_rows(run(book)).loc[("a", "SOL")]
    # SOL: MR1 'others' grid (±25 %), MR6, MR4 and MR7 in the mid-cap risk class
    assert u["mr1"] == pytest.approx(0.25 * 100 * F, rel=1e-12)
    assert u["mr6"] == pytest.approx(0.5 * 0.36 * 100 * F, rel=1e-12)
    assert u["mr4"] == pytest.approx(0.008 * 100 * F, rel=1e-12)
    assert u["mr7_raw"] == pytest.approx(0.007 * 100 * F, rel=1e-12)
    # an underlying in no list takes the 'others' rates
    book = make_book(tmp_path, [("ZZZ-USDT-SWAP", "ZZZ", "perpetual", 1.0, "", "", "", F, np.nan, "a", 50.0)],
                     name="zzz")
    z = unit_rows(run(book)).loc[("a", "ZZZ")]
    assert z["mr6"] == pytest.approx(0.5 * 0.5 * 50 * F, rel=1e-12)
    assert z["mr4"] == pytest.approx(0.01 * 50 * F, rel=1e-12)
    assert z["mr7_raw"] == pytest.approx(0.01 * 50 * F, rel=1e-12)


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
    u = unit_rows(run(book)).loc[("a", "BTC")]
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
    # a short option gains from one day of decay: no MR2; options pay no MR4 (mr4_kinds)
    assert u["mr2"] == 0.0 and u["mr4"] == 0.0
    assert u["mr7_raw"] == pytest.approx(0.002 * 2 * F, rel=1e-12)
    assert u["mmr"] == pytest.approx(max(u["mr1"], u["mr6"]), rel=1e-12)


def test_long_option_pays_mr2_time_decay(tmp_path):
    F, K, vol = 100_000.0, 100_000.0, 0.6
    exp = (AS_OF + pd.Timedelta(days=5)).isoformat()
    book = make_book(tmp_path, [("BTC-P", "BTC", "option", 1.0, exp, K, "put", F, vol, "a", 3.0)])
    u = unit_rows(run(book)).loc[("a", "BTC")]
    hand = 3.0 * (_b76(F, K, 5 / 365, vol, -1) - _b76(F, K, 4 / 365, vol, -1))
    assert u["mr2"] == pytest.approx(hand, rel=1e-10)


def test_params_file_and_errors(tmp_path):
    from pathlib import Path

    from gpurisk.errors import ConfigError

    repo = Path(__file__).resolve().parents[1]
    assert okx.load_params(str(repo / "jobs" / "params" / "okx.toml")) == okx.Params()
    bad = tmp_path / "bad.toml"
    cases = [
        ("mr7_tier_bounds = [10000.0]\n", "mr7_multipliers"),
        ("[mr6_moves]\nbtc_eth = \"big\"\n", r"mr6_moves\.btc_eth"),
        ("[mr7_rates]\nbtc_eth = -0.001\n", "mr7_rates must not be negative"),
        ("mr4_kinds = [\"option\"]\n", "mr4_kinds"),
        ("index_shocked_kinds = [\"swap\"]\n", "index_shocked_kinds"),
    ]
    for text, match in cases:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            okx.load_params(str(bad))
    # a file overlays the defaults key by key
    ok = tmp_path / "ok.toml"
    ok.write_text("[mr4_min_moves]\nbtc_eth = 0.003\n")
    p = okx.load_params(str(ok))
    assert p.basis_min_move("BTC") == 0.003 and p.basis_min_move("LTC") == 0.008
