"""Tail measures and the ``measures`` model: hand examples, an independent full-sort oracle, invariants."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpurisk.margin as gm
from gpurisk.backends import MeasureSpec, TailStats, reference
from gpurisk.book import Book
from gpurisk.errors import ConfigError, ScenarioError
from gpurisk import tail
from gpurisk.margin import common, measures
from gpurisk.margin.plan import execute
from gpurisk.scenarios import make_scenario_set

AS_OF = "2024-06-01T00:00:00Z"
PRICES = {"BTC": 60000.0, "ETH": 3000.0}


# --------------------------------------------------------------------------- book builders (shared by the margin tests)


def instruments_frame() -> pd.DataFrame:
    """A small instrument universe: linear/inverse delta-one, spot and options on BTC and ETH."""
    rows = [
        # id, venue, und, kind, settlement, cs, expiry, strike, type, forward, vol
        ("OKX-BTC-PERP", "okx", "BTC", "perpetual", "linear", 0.01, None, np.nan, None, 60000.0, np.nan),
        ("OKX-BTC-FUT", "okx", "BTC", "future", "linear", 0.01, "2024-09-27T08:00:00", np.nan, None, 61000.0, np.nan),
        ("DER-BTC-PERP", "deribit", "BTC", "perpetual", "inverse", 10.0, None, np.nan, None, 60010.0, np.nan),
        ("DER-BTC-FUT", "deribit", "BTC", "future", "inverse", 10.0, "2024-12-27T08:00:00", np.nan, None, 62500.0, np.nan),
        ("DER-BTC-C", "deribit", "BTC", "option", "inverse", 1.0, "2024-09-27T08:00:00", 65000.0, "call", 61000.0, 0.55),
        ("DER-BTC-P", "deribit", "BTC", "option", "inverse", 1.0, "2024-06-28T08:00:00", 55000.0, "put", 60300.0, 0.60),
        ("OKX-ETH-PERP", "okx", "ETH", "perpetual", "linear", 0.1, None, np.nan, None, 3001.0, np.nan),
        ("OKX-ETH-C", "okx", "ETH", "option", "linear", 1.0, "2024-07-26T08:00:00", 3200.0, "call", 3010.0, 0.65),
        ("BIN-BTC", "binance", "BTC", "spot", "linear", 1.0, None, np.nan, None, 60000.0, np.nan),
        ("BIN-ETH", "binance", "ETH", "spot", "linear", 1.0, None, np.nan, None, 3000.0, np.nan),
    ]
    cols = ["instrument_id", "venue", "underlying", "kind", "settlement", "contract_size", "expiry", "strike",
            "option_type", "underlying_price", "implied_vol"]
    return pd.DataFrame(rows, columns=cols)


def make_book(positions: pd.DataFrame, balances: pd.DataFrame | None = None, as_of=AS_OF) -> Book:
    ins = instruments_frame()
    if balances is None:
        balances = pd.DataFrame({"account_id": [], "venue": [], "asset": [], "amount": []})
    index = pd.DataFrame({"underlying": list(PRICES), "price": list(PRICES.values())})
    return Book.from_frames(as_of, ins.drop(columns=["underlying_price", "implied_vol"]),
                            ins[["instrument_id", "underlying_price", "implied_vol"]], index, positions, balances)


def random_positions(rng, n_accounts: int, n_rows: int) -> pd.DataFrame:
    ids = instruments_frame()["instrument_id"].to_numpy()
    return pd.DataFrame({
        "account_id": [f"acct{i:04d}" for i in rng.integers(0, n_accounts, n_rows)],
        "instrument_id": rng.choice(ids, n_rows),
        "quantity": np.round(rng.normal(0, 20, n_rows), 3),
    })


def random_scenarios(rng, S: int, weighted: bool = False, factors: bool = False):
    shock = rng.normal(0, 0.08, (S, 2)).clip(-0.6, 1.0)
    vol = rng.normal(0, 0.2, (S, 2)).clip(-0.5, 1.0)
    w = rng.uniform(0.1, 2.0, S) if weighted else None
    f = np.where(rng.uniform(size=S) < 0.2, 0.5, 1.0) if factors else None
    return make_scenario_set(["BTC", "ETH"], shock, vol, weight=w, pnl_factor=f, horizon_days=1.0)


def oracle(book: Book, sset, levels, profit_factor=1.0):
    """Independent measures: dense account P&L via np.add.at, then a full sort per account."""
    pi, s2 = common.book_pricing(book, sset)
    P = reference.revalue(pi, s2)  # [I, S] per-contract P&L (pricing oracle)
    A = book.n_accounts
    L = np.zeros((A, sset.n_scenarios))
    np.add.at(L, book.positions.account_idx, book.positions.quantity[:, None] * P[book.positions.instrument_idx])
    L = L * np.asarray(sset.pnl_factor)[None, :]
    L = np.where(L > 0, L * profit_factor, L)
    x = -L
    w = np.asarray(sset.weight, dtype=float)
    out = {"worst": x.max(axis=1)}
    for q in levels:
        var, es = np.empty(A), np.empty(A)
        for a in range(A):  # the oracle may loop; the engine may not
            order = np.argsort(-x[a], kind="stable")
            xs, ws = x[a][order], w[order]
            cw = np.cumsum(ws)
            k = int(np.searchsorted(cw, (1 - q) * w.sum() * (1 - 1e-12)))
            var[a] = xs[k]
            es[a] = np.dot(ws[: k + 1], xs[: k + 1]) / cw[k]
        out[f"var_{tail.level_name(q)}"] = var
        out[f"es_{tail.level_name(q)}"] = es
    return pd.DataFrame(out, index=book.accounts)


# --------------------------------------------------------------------------- naming and hand examples


@pytest.mark.parametrize("q,name", [(0.99, "99"), (0.975, "97_5"), (0.999, "99_9"), (0.9, "90"), (0.5, "50")])
def test_level_names(q, name):
    assert tail.level_name(q) == name


def test_measure_columns_order():
    assert tail.measure_columns((0.99, 0.975)) == ["worst", "var_99", "var_97_5", "es_99", "es_97_5"]


def _one_perp_book(qty=1.0):
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["BIN-BTC"], "quantity": [qty]})
    return make_book(pos)


def test_hand_example_equal_weights():
    # 1 BTC spot at 60,000: P&L = 60,000 * s
    shocks = np.array([-0.10, -0.08, -0.05, -0.02, 0.0, 0.01, 0.03, 0.05, 0.07, 0.09])
    sset = make_scenario_set(["BTC", "ETH"], np.c_[shocks, np.zeros(10)])
    res = gm.compute(_one_perp_book(), "measures", params=measures.Params(levels=(0.8, 0.9)), scenarios=sset,
                     backend="reference")
    row = res.tables["margin"].iloc[0]
    assert row["account_id"] == "a"
    assert row["worst"] == pytest.approx(6000.0)
    # 20 % tail of 10 scenarios = the 2 worst: losses 6000, 4800
    assert row["var_80"] == pytest.approx(4800.0)
    assert row["es_80"] == pytest.approx(5400.0)
    # 10 % tail = the single worst
    assert row["var_90"] == pytest.approx(6000.0)
    assert row["es_90"] == pytest.approx(6000.0)


def test_hand_example_99_of_10000_takes_100():
    # losses 1..10000 (USD): ES99 = mean of the 100 worst = mean(9901..10000) = 9950.5
    S = 10_000
    shocks = -np.arange(1, S + 1) / 60000.0
    sset = make_scenario_set(["BTC", "ETH"], np.c_[shocks, np.zeros(S)])
    row = gm.compute(_one_perp_book(), "measures", scenarios=sset, backend="reference").tables["margin"].iloc[0]
    assert row["var_99"] == pytest.approx(9901.0)
    assert row["es_99"] == pytest.approx(9950.5)
    assert row["worst"] == pytest.approx(10000.0)


def test_hand_example_weighted():
    # losses 6000, 3000, 1200, -600 with weights .05, .10, .35, .50; 90 % tail mass 0.10 is reached at the 2nd
    shocks = np.array([-0.10, -0.05, -0.02, 0.01])
    w = np.array([0.05, 0.10, 0.35, 0.50])
    sset = make_scenario_set(["BTC", "ETH"], np.c_[shocks, np.zeros(4)], weight=w)
    row = gm.compute(_one_perp_book(), "measures", params=measures.Params(levels=(0.9,)), scenarios=sset,
                     backend="reference").tables["margin"].iloc[0]
    assert row["var_90"] == pytest.approx(3000.0)
    assert row["es_90"] == pytest.approx((0.05 * 6000 + 0.10 * 3000) / 0.15)


def test_hand_example_pnl_factor_and_profit_scaling():
    # short 1 BTC: gains when BTC falls. pnl_factor halves the +20 % scenario.
    shocks = np.array([-0.10, 0.20, 0.05])
    sset = make_scenario_set(["BTC", "ETH"], np.c_[shocks, np.zeros(3)], pnl_factor=[1.0, 0.5, 1.0])
    p = measures.Params(levels=(0.5,), profit_factor=0.0)
    row = gm.compute(_one_perp_book(-1.0), "measures", params=p, scenarios=sset,
                     backend="reference").tables["margin"].iloc[0]
    # counted P&L: profit 6000 -> 0 (no credit), -12000*0.5 = -6000, -3000
    assert row["worst"] == pytest.approx(6000.0)
    assert row["var_50"] == pytest.approx(3000.0)  # k = ceil(0.5*3) = 2
    assert row["es_50"] == pytest.approx(4500.0)


def test_account_without_positions_has_zero_measures():
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["BIN-BTC"], "quantity": [1.0]})
    bal = pd.DataFrame({"account_id": ["b"], "venue": ["okx"], "asset": ["USDT"], "amount": [100.0]})
    sset = random_scenarios(np.random.default_rng(0), 50)
    df = gm.compute(make_book(pos, bal), "measures", scenarios=sset, backend="reference").tables["margin"]
    assert list(df["account_id"]) == ["a", "b"]
    assert (df.iloc[1][["worst", "var_99", "es_99"]] == 0).all()


# --------------------------------------------------------------------------- against the independent oracle


@pytest.mark.parametrize("weighted,factors,profit", [(False, False, 1.0), (True, False, 1.0), (True, True, 0.4)])
def test_random_books_match_full_sort_oracle(weighted, factors, profit):
    rng = np.random.default_rng(7 + int(weighted) + 2 * int(factors))
    book = make_book(random_positions(rng, 40, 200))
    sset = random_scenarios(rng, 300, weighted, factors)
    levels = (0.99, 0.975, 0.9)
    df = gm.compute(book, "measures", params=measures.Params(levels=levels, profit_factor=profit), scenarios=sset,
                    backend="reference").tables["margin"].set_index("account_id")
    want = oracle(book, sset, levels, profit)
    cols = tail.measure_columns(levels)
    np.testing.assert_allclose(df[cols].to_numpy(), want.loc[df.index, cols].to_numpy(), rtol=1e-10, atol=1e-8)
    assert (df["es_99"] >= df["var_99"] - 1e-9).all() and (df["worst"] >= df["es_99"] - 1e-9).all()


def test_cpu_backend_matches_reference_when_available():
    from gpurisk import backends

    try:
        backends.get("cpu")
    except Exception as exc:  # noqa: BLE001 - a missing optional backend skips
        pytest.skip(f"cpu backend unavailable: {exc}")
    rng = np.random.default_rng(11)
    book = make_book(random_positions(rng, 30, 120))
    sset = random_scenarios(rng, 400, weighted=True)
    p = measures.Params(levels=(0.99, 0.975))
    a = gm.compute(book, "measures", params=p, scenarios=sset, backend="reference").tables["margin"]
    b = gm.compute(book, "measures", params=p, scenarios=sset, backend="cpu").tables["margin"]
    cols = tail.measure_columns(p.levels)
    np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), rtol=1e-9, atol=1e-7)


# --------------------------------------------------------------------------- invariants (hypothesis)

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_SSET = random_scenarios(np.random.default_rng(3), 200, weighted=True)


def _measures(book, sset=_SSET, levels=(0.99, 0.9)):
    df = gm.compute(book, "measures", params=measures.Params(levels=levels), scenarios=sset,
                    backend="reference").tables["margin"]
    return df.set_index("account_id")[tail.measure_columns(levels)]


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_order_of_accounts_and_positions_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    pos = random_positions(rng, 12, 40)
    base = _measures(make_book(pos))
    shuffled = pos.sample(frac=1.0, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)
    # rename accounts so their sorted order changes too
    ren = {a: f"z{999 - int(a[4:]):04d}" for a in pos["account_id"].unique()}
    shuffled["account_id"] = shuffled["account_id"].map(ren)
    other = _measures(make_book(shuffled))
    other.index = other.index.map({v: k for k, v in ren.items()})
    pd.testing.assert_frame_equal(other.loc[base.index], base, rtol=1e-12, atol=1e-9)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), cuts=st.lists(st.integers(0, 15), max_size=4))
def test_chunking_portfolios_changes_nothing(seed, cuts):
    rng = np.random.default_rng(seed)
    book = make_book(random_positions(rng, 15, 50))
    plan = measures.plan(book, measures.Params(levels=(0.99, 0.9)), _SSET)
    whole, _ = execute(plan, "reference")
    leg = plan.legs["account"]
    P = reference.revalue(leg.pricing, leg.scenarios)
    n = len(leg.portfolios)
    edges = sorted({0, n, *[min(c, n) for c in cuts]})
    parts = [reference.tail_stats(leg.portfolios.slice(a, b), P, leg.spec) for a, b in zip(edges, edges[1:])]
    joined = TailStats.concat(parts)
    a = measures.finalize(plan, whole).tables["margin"]
    b = measures.finalize(plan, {"account": joined}).tables["margin"]
    pd.testing.assert_frame_equal(a, b)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), k=st.floats(0.01, 100.0))
def test_scaling_positions_scales_measures(seed, k):
    rng = np.random.default_rng(seed)
    pos = random_positions(rng, 8, 30)
    base = _measures(make_book(pos))
    scaled = pos.assign(quantity=pos["quantity"] * k)
    got = _measures(make_book(scaled))
    np.testing.assert_allclose(got.to_numpy(), k * base.to_numpy(), rtol=1e-9, atol=1e-7 * max(k, 1))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), size=st.floats(0.1, 1000.0))
def test_exact_hedge_adds_no_risk(seed, size):
    # 1 BIN-BTC spot (1 coin) has P&L 60,000*s; short 100 OKX-BTC-PERP (0.01 coin each, same 60,000 mark) cancels it
    rng = np.random.default_rng(seed)
    pos = random_positions(rng, 6, 20)
    pos = pos[~pos["instrument_id"].isin(["BIN-BTC", "OKX-BTC-PERP"])]
    base = _measures(make_book(pos))
    acct = pos["account_id"].iloc[0]
    hedge = pd.DataFrame({"account_id": [acct, acct], "instrument_id": ["BIN-BTC", "OKX-BTC-PERP"],
                          "quantity": [size, -100.0 * size]})
    got = _measures(make_book(pd.concat([pos, hedge], ignore_index=True)))
    np.testing.assert_allclose(got.loc[base.index].to_numpy(), base.to_numpy(), rtol=1e-9, atol=1e-6 * size)


# --------------------------------------------------------------------------- spec and params


def test_spec_for_passes_equal_weights_as_none():
    s = make_scenario_set(["BTC"], np.zeros((3, 1)), weight=[2.0, 2.0, 2.0])
    spec = tail.spec_for(s, (0.99,))
    assert spec.weight is None and spec.pnl_factor is None
    s = make_scenario_set(["BTC"], np.zeros((3, 1)), weight=[1.0, 2.0, 2.0], pnl_factor=[1, 0.5, 1])
    spec = tail.spec_for(s, (0.99,))
    np.testing.assert_array_equal(spec.weight, [1.0, 2.0, 2.0])
    np.testing.assert_array_equal(spec.pnl_factor, [1.0, 0.5, 1.0])


def test_spec_for_rejects_bad_weights():
    s = make_scenario_set(["BTC"], np.zeros((2, 1)), weight=[-1.0, 2.0])
    with pytest.raises(ScenarioError, match="weights"):
        tail.spec_for(s)


def test_tail_counts_agree_with_ceiling_rule():
    for S in (1, 7, 100, 250, 10_000, 11_833):
        for q in (0.99, 0.975, 0.95):
            k = MeasureSpec(levels=(q,)).tail_counts(S)[0]
            assert k == max(1, math.ceil(round((1 - q) * S, 9)))


def test_params_file_levels(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text("levels = [0.99, 0.975]\nprofit_factor = 0.5\n")
    assert measures.load_params(str(f)) == measures.Params(levels=(0.99, 0.975), profit_factor=0.5)
    f.write_text("levels = [1.5]\n")
    with pytest.raises(ConfigError, match="m.toml"):
        measures.load_params(str(f))
    f.write_text("level = [0.99]\n")
    with pytest.raises(ConfigError, match="'level'"):
        measures.load_params(str(f))


def test_unknown_underlying_in_scenarios_is_a_scenario_error():
    s = make_scenario_set(["BTC"], np.zeros((2, 1)))
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-ETH-PERP"], "quantity": [1.0]})
    with pytest.raises(ScenarioError, match="ETH"):
        gm.compute(make_book(pos), "measures", scenarios=s, backend="reference")
