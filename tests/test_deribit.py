"""Deribit S:PM replica against the published docs example and independent hand computations."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from gpurisk.book import Book
from gpurisk.io import load_book
from gpurisk.margin import deribit
from gpurisk.margin.plan import execute

AS_OF = "2024-06-17T10:22:20Z"  # the docs example's timestamp 1718619740501 ms
INDEX = 65_666.19
PERP_MARK, FUT_MARK = 65_910.57, 67_371.75
PERP_BTC, FUT_BTC = 0.314538364, -0.001187534
CONTRACT_USD = 10.0  # Deribit's BTC futures are 10 USD per contract

INSTRUMENT_COLS = ["instrument_id", "venue", "underlying", "kind", "settlement", "contract_size", "expiry",
                   "strike", "option_type"]


def write_book(folder: Path, as_of, instruments, market, index, positions, balances) -> Book:
    """Write the five tables as CSV plus book.toml into ``folder`` and load them back."""
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"instruments": instruments, "market": market, "index": index, "positions": positions,
              "balances": balances}
    for name, df in tables.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    lines = [f'as_of = "{as_of}"', ""] + [f'{name} = "{name}.csv"' for name in tables]
    (folder / "book.toml").write_text("\n".join(lines) + "\n")
    loaded = load_book(str(folder))
    assert len(loaded.rejects) == 0, loaded.rejects
    return loaded.book


def run(book, params=None):
    p = deribit.plan(book, params)
    stats, _ = execute(p, "reference")
    return deribit.finalize(p, stats)


def docs_example_book(tmp_path) -> Book:
    instruments = pd.DataFrame(
        [["BTC-PERPETUAL", "deribit", "BTC", "perpetual", "inverse", CONTRACT_USD, "", "", ""],
         ["BTC-28JUN24", "deribit", "BTC", "future", "inverse", CONTRACT_USD, "2024-06-28T08:00:00Z", "", ""]],
        columns=INSTRUMENT_COLS)
    market = pd.DataFrame({"instrument_id": ["BTC-PERPETUAL", "BTC-28JUN24"],
                           "underlying_price": [PERP_MARK, FUT_MARK], "implied_vol": [np.nan, np.nan]})
    index = pd.DataFrame({"underlying": ["BTC"], "price": [INDEX]})
    # sizes in BTC → contracts of 10 USD at the instrument's mark
    positions = pd.DataFrame({"account_id": ["acct-1", "acct-1"],
                              "instrument_id": ["BTC-PERPETUAL", "BTC-28JUN24"],
                              "quantity": [PERP_BTC * PERP_MARK / CONTRACT_USD, FUT_BTC * FUT_MARK / CONTRACT_USD]})
    balances = pd.DataFrame({"account_id": ["acct-1"], "venue": ["deribit"], "asset": ["BTC"], "amount": [0.5]})
    return write_book(tmp_path / "book", AS_OF, instruments, market, index, positions, balances)


def test_docs_example_reproduced(tmp_path):
    res = run(docs_example_book(tmp_path))
    m = res.tables["margin"]
    assert len(m) == 1
    row = m.iloc[0]
    assert row["currency"] == "BTC" and row["venue"] == "deribit"
    # worst case and roll shock to 1e-9 relative (published: 0.05968587238095239, 0.00315725898)
    assert row["worst_case"] == pytest.approx(0.05968587238095239, rel=1e-9)
    assert row["roll_shock"] == pytest.approx(0.00315725898, rel=1e-9)
    assert row["delta_shock"] == 0.0
    # The published figures agree with each other only to ~6e-9 relative (worst + roll =
    # 0.06284313136 vs the published risk_matrix_margin 0.06284313098; MM = 0.8 × the latter),
    # so IM (= risk-matrix margin; mmp and open-orders margin are out of scope) and MM are
    # asserted to 1e-8 relative, with nothing fitted to the rounding.
    assert row["im"] == pytest.approx(0.06284313098, rel=1e-8)
    assert row["mm"] == pytest.approx(0.050274504784, rel=1e-8)
    assert row["worst_scenario"].startswith("-16% vol")
    assert row["equity"] == 0.5
    assert row["excess"] == pytest.approx(0.5 - row["im"], rel=1e-15)
    assert row["im_usd"] == pytest.approx(row["im"] * INDEX, rel=1e-15)
    assert row["mm_usd"] == pytest.approx(row["mm"] * INDEX, rel=1e-15)


def test_docs_example_risk_vectors(tmp_path):
    """The standard vector equals the published aggregated vector (q·s/(1+s) summed)."""
    res = run(docs_example_book(tmp_path))
    rv = res.tables["risk_vectors"]
    std = rv[rv["table"] == "standard"]
    assert len(std) == 27
    s = std["price_shock"].to_numpy()
    expected = (PERP_BTC + FUT_BTC) * s / (1.0 + s)
    np.testing.assert_allclose(std["pnl"].to_numpy(), expected, rtol=1e-12, atol=1e-18)
    published_first = -0.05968587238095239
    assert std["pnl"].iloc[0] == pytest.approx(published_first, rel=1e-9)
    # extended table: delta-one sees the move clipped to ±16 % (as in the published vectors)
    ext = rv[rv["table"] == "extended"]
    assert len(ext) == 8
    clip = np.clip(ext["price_shock"].to_numpy(), -0.16, 0.16)
    np.testing.assert_allclose(ext["pnl"].to_numpy(), (PERP_BTC + FUT_BTC) * clip / (1 + clip), rtol=1e-12)
    # after the fraction and dampener they are all zero, as published
    np.testing.assert_array_equal(ext["counted_pnl"].to_numpy(), 0.0)


def _b76(F, K, T, sigma, w):
    nd = NormalDist()
    if T <= 0 or sigma <= 0:
        return max(w * (F - K), 0.0)
    st = sigma * math.sqrt(T)
    d1 = (math.log(F / K) + 0.5 * st * st) / st
    return w * (F * nd.cdf(w * d1) - K * nd.cdf(w * (d1 - st)))


def _shocked(sigma, v, dte, pp):
    """The documented vol shock, written out independently."""
    scale = (30.0 / max(dte, 1.0)) ** (0.30 if dte < 30 else 0.13)
    s = sigma * (1.0 + v * scale)
    if v > 0:
        s = max(s, pp.min_volatility_for_shock_up)
    return max(s, 0.01)


def option_book(tmp_path, legs, as_of="2024-06-17T08:00:00Z", F=60_000.0, name="opt"):
    """Inverse BTC options (1 BTC each) on one account; legs = [(strike, type, expiry, vol, qty)]."""
    rows, mk, pos = [], [], []
    for i, (K, typ, exp, vol, qty) in enumerate(legs):
        iid = f"BTC-{i}-{int(K)}-{typ[0].upper()}"
        rows.append([iid, "deribit", "BTC", "option", "inverse", 1.0, exp, K, typ])
        mk.append([iid, F, vol])
        pos.append(["acct-opt", iid, qty])
    return write_book(
        tmp_path / name, as_of,
        pd.DataFrame(rows, columns=INSTRUMENT_COLS),
        pd.DataFrame(mk, columns=["instrument_id", "underlying_price", "implied_vol"]),
        pd.DataFrame({"underlying": ["BTC"], "price": [F]}),
        pd.DataFrame(pos, columns=["account_id", "instrument_id", "quantity"]),
        pd.DataFrame({"account_id": ["acct-opt"], "venue": ["deribit"], "asset": ["BTC"], "amount": [1.0]}),
    )


@pytest.mark.parametrize("K,typ,qty", [(66_000.0, "call", -3.0), (52_000.0, "put", -2.0), (60_000.0, "call", 5.0),
                                       (36_000.0, "put", -1_000.0)])
def test_option_worst_case_matches_hand_computation(tmp_path, K, typ, qty):
    F, vol, dte = 60_000.0, 0.55, 12.0
    as_of = pd.Timestamp("2024-06-17T08:00:00Z")
    expiry = (as_of + pd.Timedelta(days=dte)).isoformat()
    book = option_book(tmp_path, [(K, typ, expiry, vol, qty)], F=F)
    res = run(book)
    row = res.tables["margin"].iloc[0]
    pp = deribit.Params().pair("BTC")
    w = 1 if typ == "call" else -1
    T = dte / 365.0
    v0 = _b76(F, K, T, vol, w) / F
    grid = []
    for m in np.linspace(-0.16, 0.16, 9):
        for vname, v in (("up", 0.5), ("same", 0.0), ("down", -0.25)):
            F1 = F * (1 + m)
            pnl = qty * (_b76(F1, K, T, _shocked(vol, v, dte, pp), w) / F1 - v0)
            grid.append((-pnl, f"{100 * m:+.4g}% vol {vname}"))
    ext = []
    for m in (-0.66, -0.33, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0):
        F1 = F * (1 + m)
        pnl = qty * (_b76(F1, K, T, _shocked(vol, 0.5, dte, pp), w) / F1 - v0) * min(1.0, 0.16 / abs(m))
        damp = (abs(m) / 0.16 - 1) * 100_000.0 / F  # USD dampener in BTC at the index
        ext.append((-math.copysign(max(abs(pnl) - damp, 0.0), pnl), f"{100 * m:+.4g}% vol up (extended)"))
    loss, label = max(grid + ext, key=lambda t: t[0])
    assert row["worst_case"] == pytest.approx(max(loss, 0.0), rel=1e-10)
    assert row["worst_scenario"] == label
    if K == 36_000.0:  # a large far-OTM short put: the extended table decides
        assert label == "-66% vol up (extended)"
    assert row["roll_shock"] == 0.0  # options carry no roll shock


def test_short_strangle_requirement_rises_as_expiry_nears(tmp_path):
    """A near-the-money short strangle (strikes ±5 %) inside the short-term vega regime.

    (Far from expiry the vega loss dominates and a longer option can need more; the
    docs note this. Inside 30 days gamma and the (30/DTE)^0.3 vol shock take over.)
    """
    as_of = pd.Timestamp("2024-06-17T08:00:00Z")
    ims = []
    for days in (20, 7, 2, 1):
        exp = (as_of + pd.Timedelta(days=days)).isoformat()
        book = option_book(tmp_path, [(63_000.0, "call", exp, 0.5, -1.0), (57_000.0, "put", exp, 0.5, -1.0)],
                           name=f"strangle{days}")
        ims.append(run(book).tables["margin"]["im"].iloc[0])
    assert all(b > a for a, b in zip(ims, ims[1:])), ims


def test_delta_shock_beyond_liquidity_threshold(tmp_path):
    """300 BTC long at 100,000: |delta| 30M USD, 10M above the threshold, shocked at 10 %."""
    F = 100_000.0
    ins = pd.DataFrame([["BTC-PERPETUAL", "deribit", "BTC", "perpetual", "inverse", 10.0, "", "", ""]],
                       columns=INSTRUMENT_COLS)
    mk = pd.DataFrame({"instrument_id": ["BTC-PERPETUAL"], "underlying_price": [F], "implied_vol": [np.nan]})
    idx = pd.DataFrame({"underlying": ["BTC"], "price": [F]})
    pos = pd.DataFrame({"account_id": ["big"], "instrument_id": ["BTC-PERPETUAL"], "quantity": [300 * F / 10.0]})
    bal = pd.DataFrame({"account_id": ["big"], "venue": ["deribit"], "asset": ["BTC"], "amount": [100.0]})
    row = run(write_book(tmp_path / "d", "2024-06-17T08:00:00Z", ins, mk, idx, pos, bal)).tables["margin"].iloc[0]
    assert row["delta_shock"] == pytest.approx(0.1 * (30e6 - 20e6) / F, rel=1e-12)
    assert row["worst_case"] == pytest.approx(300 * 0.16 / 0.84, rel=1e-12)
    assert row["roll_shock"] == pytest.approx(300 * 0.01, rel=1e-12)
    assert row["im"] == pytest.approx(row["worst_case"] + row["roll_shock"] + row["delta_shock"], rel=1e-15)


def test_currencies_margined_separately(tmp_path):
    """S:PM: a BTC and an ETH book together give the same rows as each alone."""
    ins = pd.DataFrame(
        [["BTC-PERPETUAL", "deribit", "BTC", "perpetual", "inverse", 10.0, "", "", ""],
         ["ETH-PERPETUAL", "deribit", "ETH", "perpetual", "inverse", 1.0, "", "", ""]], columns=INSTRUMENT_COLS)
    mk = pd.DataFrame({"instrument_id": ["BTC-PERPETUAL", "ETH-PERPETUAL"], "underlying_price": [60_000.0, 3_000.0],
                       "implied_vol": [np.nan, np.nan]})
    idx = pd.DataFrame({"underlying": ["BTC", "ETH"], "price": [60_000.0, 3_000.0]})
    pos = pd.DataFrame({"account_id": ["a", "a", "b"], "instrument_id": ["BTC-PERPETUAL", "ETH-PERPETUAL", "ETH-PERPETUAL"],
                        "quantity": [1200.0, -3000.0, 600.0]})
    bal = pd.DataFrame({"account_id": ["a", "a"], "venue": ["deribit", "deribit"], "asset": ["BTC", "ETH"],
                        "amount": [1.0, 2.0]})
    m = run(write_book(tmp_path / "x", "2024-06-17T08:00:00Z", ins, mk, idx, pos, bal)).tables["margin"]
    assert list(zip(m["account_id"], m["currency"])) == [("a", "BTC"), ("a", "ETH"), ("b", "ETH")]
    # a: short 1 ETH (−3000 contracts of 1 USD at 3000): worst at +18 %: 1·0.18/1.18; roll 1·0.005
    eth = m[(m["account_id"] == "a") & (m["currency"] == "ETH")].iloc[0]
    assert eth["worst_case"] == pytest.approx(0.18 / 1.18, rel=1e-12)
    assert eth["roll_shock"] == pytest.approx(0.005, rel=1e-12)
    assert eth["equity"] == 2.0
    btc = m[(m["account_id"] == "a") & (m["currency"] == "BTC")].iloc[0]
    assert btc["worst_case"] == pytest.approx(0.2 * 0.16 / 0.84, rel=1e-12)
    assert btc["im_usd"] == pytest.approx(btc["im"] * 60_000.0, rel=1e-15)


def test_params_file_roundtrip_and_errors(tmp_path):
    from gpurisk.errors import ConfigError

    repo = Path(__file__).resolve().parents[1]
    p = deribit.load_params(str(repo / "jobs" / "params" / "deribit.toml"))
    assert p == deribit.Params()
    bad = tmp_path / "bad.toml"
    bad.write_text("[pairs.BTC]\nprice_rnge = 0.2\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*pairs\.BTC\.price_rnge"):
        deribit.load_params(str(bad))
    bad.write_text("mm_factor = \"high\"\n")
    with pytest.raises(ConfigError, match="mm_factor"):
        deribit.load_params(str(bad))
    # a partial table overlays the built-in entry of that name; others stay
    part = tmp_path / "part.toml"
    part.write_text("[pairs.ETH]\nprice_range = 0.2\n")
    q = deribit.load_params(str(part))
    assert q.pair("ETH").price_range == 0.2 and q.pair("ETH").volatility_range_up == 0.4
    assert q.pair("BTC") == deribit.PairParams()
