"""What-if margin equals a full recomputation of the modified book (same backend).

The oracle is independent of the what-if code: the book's tables are modified as frames (trade
rows appended to ``positions``, new instruments to ``instruments`` and ``market``), validated
and built with ``Book.from_frames``, and margined from scratch with ``gpurisk.margin.compute``.
Tolerance: 1e-9 relative, with an absolute floor of 1e-6 USD for figures that cancel to ~0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import gpurisk
from gpurisk.book import Book
from gpurisk.generate import generate_book
from gpurisk.io import TABLES
from gpurisk.margin import compute
from gpurisk.margin.house import Params as HouseParams
from gpurisk.scenarios import make_scenario_set
from gpurisk.validate import validate
from gpurisk.whatif import ModelConfig, Session, Trade, WhatIfError, margin_of

RTOL = 1e-9
ATOL = 1e-6  # USD
ACCOUNTS = 40
SEED = 11
COINS = ("BTC", "ETH", "SOL")
EXPIRIES = ("2025-01-31T08:00:00Z", "2025-03-28T08:00:00Z", "2025-06-27T08:00:00Z")
SETTINGS = dict(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate], print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow, HealthCheck.data_too_large])


def components(seed: int = 0, weighted: bool = False) -> dict:
    """Small house scenario components over the book's coins (so a full recomputation is quick)."""
    rng = np.random.default_rng(seed)

    def mk(S, scale, kind, weight=None):
        ps = np.clip(rng.normal(0.0, scale, (S, len(COINS))), -0.7, 0.9)
        vs = np.clip(rng.normal(0.0, 0.2, (S, len(COINS))), -0.6, 1.0)
        return make_scenario_set(COINS, ps, vs, kind=kind, horizon_days=2.0, weight=weight)

    if weighted:
        return {"user": mk(300, 0.05, "user", weight=rng.uniform(0.2, 2.0, 300)), "stress": mk(8, 0.25, "stress")}
    return {"historical": mk(250, 0.05, "historical"), "montecarlo": mk(400, 0.06, "montecarlo"),
            "stress": mk(10, 0.25, "stress")}


def build(frames: dict, as_of) -> Book:
    clean, rejects, _ = validate({k: v.copy() for k, v in frames.items()}, as_of)
    assert rejects.empty, rejects.head().to_string()
    return Book.from_frames(as_of, **clean)


def modified(frames: dict, account_id: str, trades) -> dict:
    """The book's tables after ``trades`` [(instrument_id, quantity, definition | None)]."""
    f = {k: v.copy() for k, v in frames.items()}
    listed = set(f["instruments"]["instrument_id"].astype(str))
    for iid, q, d in trades:
        if d is not None and iid not in listed:
            listed.add(iid)
            row = {k: d.get(k) for k in f["instruments"].columns}
            row["instrument_id"] = iid
            new = pd.DataFrame([row])
            new["expiry"] = pd.to_datetime(pd.Series([d.get("expiry")], dtype=object), utc=True)
            f["instruments"] = pd.concat([f["instruments"], new.astype(f["instruments"].dtypes)], ignore_index=True)
            f["market"] = pd.concat([f["market"], pd.DataFrame([{
                "instrument_id": iid, "underlying_price": d["underlying_price"],
                "implied_vol": d.get("implied_vol") if d.get("implied_vol") is not None else np.nan,
            }]).astype(f["market"].dtypes)], ignore_index=True)
        f["positions"] = pd.concat([f["positions"], pd.DataFrame([{
            "account_id": account_id, "instrument_id": iid, "quantity": float(q)}]).astype(f["positions"].dtypes)],
            ignore_index=True)
    return f


def close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= RTOL * max(abs(a), abs(b)) + ATOL


def assert_row(fig, row, what):
    for k, col in (("im", "im_usd"), ("mm", "mm_usd"), ("equity", "equity_usd"), ("excess", "excess_usd"),
                   ("call_amount", "call_amount_usd")):
        got, want = getattr(fig, k), float(row[col])
        assert close(got, want), f"{what}: {k} what-if {got!r} != full recomputation {want!r}"
    assert fig.status == row["status"], f"{what}: status {fig.status} != {row['status']}"


def check_against_full(session, frames, as_of, account_id, trades, house_scenarios, backend, house_params=None):
    """Run the what-if and a full recomputation of the modified book; compare every figure."""
    w = gpurisk.whatif(session, account_id, [Trade(i, q, d) for i, q, d in trades])
    book2 = build(modified(frames, account_id, trades), as_of)
    full_h = compute(book2, "house", params=house_params, scenarios=house_scenarios, backend=backend).margin
    row = full_h[full_h["account_id"] == account_id].iloc[0]
    assert_row(w.house["house"].after, row, f"house {account_id}")
    full_v = compute(book2, "venue", backend=backend).margin
    rows = full_v[full_v["account_id"] == account_id].set_index("venue")
    got = w.venues["venue"]
    for v, change in got.items():
        if v in rows.index:
            assert_row(change.after, rows.loc[v], f"venue {account_id}/{v}")
        else:  # the pair is gone after the trades: nothing margined, nothing held
            assert change.after.im == 0.0 and change.after.equity == 0.0 and change.after.status == "ok"
    assert set(rows.index) <= set(got), f"venues {sorted(set(rows.index) - set(got))} missing from the what-if"
    return w


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tables():
    g = generate_book(ACCOUNTS, SEED)
    return {k: g[k] for k in TABLES}, g["meta"]["as_of"]


@pytest.fixture(scope="module")
def book(tables):
    return build(*tables)


@pytest.fixture(scope="module")
def scen():
    return components(1)


@pytest.fixture(scope="module")
def session(book, scen):
    return Session(book, {"house": ModelConfig("house", None, scen), "venue": ModelConfig("venue")},
                   backend="reference")


def _definition(draw, book: Book) -> dict:
    """A new instrument (not in the book) on a covered coin, at deribit, okx or binance."""
    m = book.market
    index = dict(zip(map(str, m.underlyings), m.index_price))
    kind = draw(st.sampled_from(["option", "option", "future", "spot"]))
    under = draw(st.sampled_from(["BTC", "ETH"]))
    venue = "binance" if kind == "spot" else draw(st.sampled_from(["deribit", "okx"]))
    inverse = venue == "deribit"
    px = index[under] * draw(st.sampled_from([0.999, 1.0, 1.004, 1.012]))
    d = {"venue": venue, "underlying": under, "kind": kind, "settlement": "inverse" if inverse else "linear",
         "contract_size": 1.0 if kind == "spot" else (10.0 if inverse and kind == "future" else
                                                       (1.0 if inverse else 0.01)),
         "expiry": None, "strike": None, "option_type": None, "underlying_price": px, "implied_vol": None}
    if kind in ("option", "future"):
        d["expiry"] = draw(st.sampled_from(EXPIRIES))
    if kind == "option":
        d["strike"] = float(round(index[under] * draw(st.sampled_from([0.6, 0.9, 1.0, 1.1, 1.5])), -1))
        d["option_type"] = draw(st.sampled_from(["call", "put"]))
        d["implied_vol"] = draw(st.sampled_from([0.35, 0.6, 0.95]))
    tag = abs(hash(tuple(sorted((k, str(v)) for k, v in d.items())))) % 10**8
    return f"NEW-{under}-{kind}-{tag}", d


def draw_trades(data, book: Book, session, n_max: int = 4):
    """(account_id, [(instrument_id, quantity, definition | None)]) with held, closing, listed and new trades."""
    a = data.draw(st.integers(0, book.n_accounts - 1), label="account")
    acc = str(book.accounts[a])
    held = session.positions_of(a)
    ids = book.instruments.instrument_id
    trades, closed = [], set()
    for _ in range(data.draw(st.integers(1, n_max), label="n_trades")):
        what = data.draw(st.sampled_from(["held", "close", "listed", "new"]), label="kind")
        if what in ("held", "close") and held:
            ref, q = held[data.draw(st.integers(0, len(held) - 1))]
            if what == "close" and ref.key not in closed:
                closed.add(ref.key)
                trades.append((ref.key, -q, None))  # closes it (unless traded before)
            else:
                trades.append((ref.key, q * data.draw(st.sampled_from([-2.0, -0.5, 0.25, 1.5])), None))
        elif what == "new":
            iid, d = _definition(data.draw, book)
            trades.append((iid, data.draw(st.sampled_from([-20.0, -1.0, 0.5, 3.0])), d))
        else:
            i = data.draw(st.integers(0, len(ids) - 1))
            trades.append((str(ids[i]), data.draw(st.sampled_from([-50.0, -2.0, 1.0, 10.0])), None))
    return acc, trades


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("S", [1, 2, 7, 27, 101, 1825, 10000])
@pytest.mark.parametrize("levels, profit", [((0.99,), 1.0), ((0.5, 0.975, 0.999), 0.4)])
def test_one_portfolio_tail_equals_the_reference(S, levels, profit):
    from gpurisk.backends.reference import tail_of_block
    from gpurisk.tail import MeasureSpec
    from gpurisk.whatif.tail import portfolio_pnl, tail_one

    rng = np.random.default_rng(S)
    P = rng.normal(size=(6, S))
    P[:3, : S // 3] = np.round(P[:3, : S // 3], 1)  # ties
    rows, q = np.array([0, 2, 5]), np.array([1.5, -2.0, 0.25])
    L = portfolio_pnl(P, rows, q, [(3.0, P[4])])
    assert np.allclose(L, q @ P[rows] + 3.0 * P[4], rtol=1e-13, atol=1e-13)
    spec = MeasureSpec(levels=levels, profit_factor=profit)
    a, b = tail_one(L, spec), tail_of_block(L[None], spec)
    assert a.worst[0] == b.worst[0] and a.worst_scenario[0] == b.worst_scenario[0]
    np.testing.assert_allclose(a.var, b.var, rtol=1e-13)
    np.testing.assert_allclose(a.es, b.es, rtol=1e-13)


def test_before_is_the_run(session, book, scen):
    full_h = compute(book, "house", scenarios=scen, backend="reference").margin
    full_v = compute(book, "venue", backend="reference").margin
    for a in (0, 7, 19):
        acc = str(book.accounts[a])
        assert_row(session.models["house"].evaluator.before(a), full_h.iloc[a], f"house {acc}")
        before = session.models["venue"].evaluator.before(a)
        for v, row in full_v[full_v["account_id"] == acc].set_index("venue").iterrows():
            assert_row(before[v][1], row, f"venue {acc}/{v}")


@given(data=st.data())
@settings(max_examples=30, **SETTINGS)
@pytest.mark.slow
def test_whatif_equals_full_recomputation(session, tables, scen, book, data):
    acc, trades = draw_trades(data, book, session)
    check_against_full(session, tables[0], tables[1], acc, trades, scen, "reference")


def test_closing_every_position_leaves_collateral_only(session, tables, scen, book):
    a = next(i for i in range(book.n_accounts) if len(session.positions_of(i)) >= 2)
    acc = str(book.accounts[a])
    trades = [(ref.key, -q, None) for ref, q in session.positions_of(a)]
    w = check_against_full(session, tables[0], tables[1], acc, trades, scen, "reference")
    assert w.house["house"].after.im >= 0.0


def test_a_noop_basket_reproduces_before(session, book):
    a = 3
    ref, q = session.positions_of(a)[0]
    w = gpurisk.whatif(session, str(book.accounts[a]), [(ref.key, 1.0), (ref.key, -1.0)])
    b, f = w.house["house"].before, w.house["house"].after
    assert close(f.im, b.im) and close(f.mm, b.mm) and f.status == b.status
    for v, ch in w.venues["venue"].items():
        assert close(ch.after.im, ch.before.im) and ch.after.status == ch.before.status, v


def test_weighted_scenarios_and_the_user_component(tables, book):
    sc = components(5, weighted=True)
    s = Session(book, {"house": ModelConfig("house", None, sc), "venue": ModelConfig("venue")}, backend="reference")
    ref, q = s.positions_of(4)[0]
    iid, d = "NEW-ETH-CALL", {"venue": "okx", "underlying": "ETH", "kind": "option", "settlement": "linear",
                              "contract_size": 0.1, "expiry": EXPIRIES[1], "strike": 3600.0, "option_type": "call",
                              "underlying_price": 3370.0, "implied_vol": 0.7}
    check_against_full(s, tables[0], tables[1], str(book.accounts[4]), [(ref.key, -2 * q, None), (iid, -30.0, d)],
                       sc, "reference")


@pytest.mark.slow
def test_cpu_backend(tables, book, scen):
    s = Session(book, {"house": ModelConfig("house", None, scen), "venue": ModelConfig("venue")}, backend="cpu")
    rng = np.random.default_rng(2)
    ids = book.instruments.instrument_id
    for a in (1, 12, 30):
        ref, q = s.positions_of(a)[0]
        trades = [(ref.key, -q, None), (str(ids[rng.integers(len(ids))]), 5.0, None)]
        check_against_full(s, tables[0], tables[1], str(book.accounts[a]), trades, scen, "cpu")


@pytest.mark.slow
def test_default_components_fhs_montecarlo_stress(tables, book):
    """The house model's own components (FHS, Monte Carlo, stress) regenerate identically for the
    modified book, so the what-if matches a from-scratch run; new instrument on a held coin included."""
    p = HouseParams(mc_scenarios=300, lookback_days=365)
    s = Session(book, {"house": ModelConfig("house", p), "venue": ModelConfig("venue")}, backend="reference")
    assert set(s.models["house"].plan.context.components) == {"historical", "montecarlo", "stress"}
    iid, d = "NEW-BTC-PUT", {"venue": "deribit", "underlying": "BTC", "kind": "option", "settlement": "inverse",
                             "contract_size": 1.0, "expiry": EXPIRIES[0], "strike": 80000.0, "option_type": "put",
                             "underlying_price": 93100.0, "implied_vol": 0.55}
    ref, q = s.positions_of(9)[0]
    check_against_full(s, tables[0], tables[1], str(book.accounts[9]), [(iid, -4.0, d), (ref.key, q, None)], None,
                       "reference", house_params=p)


def test_adhoc_portfolio_equals_the_account(session, book):
    """margin_of on an account's own positions and balances gives that account's run figures."""
    for a in (2, 17):
        pos = [{"instrument_id": r.key, "quantity": q} for r, q in session.positions_of(a)]
        v, asset, amt = session.balances_of(a)
        bal = [{"venue": str(x), "asset": str(y), "amount": float(z)} for x, y, z in zip(v, asset, amt)]
        out = margin_of(session, pos, bal)
        hb = session.models["house"].evaluator.before(a)
        assert close(out["house"].im, hb.im) and close(out["house"].equity, hb.equity)
        vb = session.models["venue"].evaluator.before(a)
        for venue, (_, f) in out["venue"].items():
            assert close(f.im, vb[venue][1].im) and close(f.equity, vb[venue][1].equity), venue


def test_repeat_whatif_is_deterministic_and_caches_new_instruments(session, book):
    iid, d = "NEW-ETH-FUT", {"venue": "okx", "underlying": "ETH", "kind": "future", "settlement": "linear",
                             "contract_size": 0.1, "expiry": EXPIRIES[2], "underlying_price": 3400.0}
    w1 = gpurisk.whatif(session, str(book.accounts[5]), [Trade(iid, 7.0, d)])
    n = len(session._new)
    w2 = gpurisk.whatif(session, str(book.accounts[5]), [Trade(iid, 7.0, d)])
    assert len(session._new) == n
    assert w1.house["house"].after == w2.house["house"].after
    assert w1.as_dict()["attribution"]["available"] is False
    assert w1.elapsed_us > 0


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("account, trades, field", [
    ("NOPE", [("BTC-PERPETUAL", 1.0)], "account_id"),
    ("ACC0000001", [], "trades"),
    ("ACC0000001", [("BTC-PERPETUAL", float("nan"))], "trades[0].quantity"),
    ("ACC0000001", [("BTC-PERPETUAL", 0.0)], "trades[0].quantity"),
    ("ACC0000001", [("BTC-PERPETUAL", "ten")], "trades[0].quantity"),
    ("ACC0000001", [("BTC-PERPETUAL", 1e12)], "trades[0].quantity"),
    ("ACC0000001", [("NO-SUCH-INSTRUMENT", 1.0)], "trades[0].instrument_id"),
    ("ACC0000001", [("BTC-PERPETUAL", 1.0)] * 201, "trades"),
])
def test_bad_input_names_the_field(session, account, trades, field):
    with pytest.raises(WhatIfError) as e:
        gpurisk.whatif(session, account, trades)
    assert e.value.field == field, str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("defn, field", [
    ({"venue": "okx", "underlying": "BTC", "kind": "swap", "settlement": "linear", "contract_size": 0.01,
      "underlying_price": 93000.0}, "trades[0].instrument.kind"),
    ({"venue": "okx", "underlying": "DOGE", "kind": "perpetual", "settlement": "linear", "contract_size": 1.0,
      "underlying_price": 0.3}, "trades[0].instrument.underlying"),
    ({"venue": "okx", "underlying": "BTC", "kind": "option", "settlement": "linear", "contract_size": 0.01,
      "expiry": "2024-01-01T00:00:00Z", "strike": 90000, "option_type": "call", "underlying_price": 93000.0,
      "implied_vol": 0.5}, "trades[0].instrument.expiry"),
    ({"venue": "okx", "underlying": "BTC", "kind": "perpetual", "settlement": "linear", "contract_size": 0.01,
      "underlying_price": 930000.0}, "trades[0].instrument.underlying_price"),
    ({"venue": "okx", "underlying": "BTC", "kind": "perpetual", "settlement": "linear", "contract_size": 0.01,
      "underlying_price": 93000.0, "colour": "red"}, "trades[0].instrument.colour"),
])
def test_bad_instrument_definition_names_the_column(session, defn, field):
    with pytest.raises(WhatIfError) as e:
        gpurisk.whatif(session, "ACC0000001", [Trade("NEW-BAD", 1.0, defn)])
    assert e.value.field == field, str(e.value)


def test_definition_of_a_listed_instrument_is_refused(session):
    with pytest.raises(WhatIfError, match="listed in the book"):
        gpurisk.whatif(session, "ACC0000001", [Trade("BTC-PERPETUAL", 1.0, {"venue": "deribit"})])


def test_a_coin_outside_the_scenario_sets_is_refused(tables):
    """Scenario sets over BTC and ETH only: a new SOL instrument (SOL has an index price) cannot be
    margined exactly without new scenario sets, so it is refused, naming the coin."""
    f, as_of = tables
    f = {k: v.copy() for k, v in f.items()}
    sol = set(f["instruments"].loc[f["instruments"]["underlying"] == "SOL", "instrument_id"])
    f["instruments"] = f["instruments"][~f["instruments"]["instrument_id"].isin(sol)]
    f["market"] = f["market"][~f["market"]["instrument_id"].isin(sol)]
    f["positions"] = f["positions"][~f["positions"]["instrument_id"].isin(sol)]
    f["balances"] = f["balances"][f["balances"]["asset"] != "SOL"]
    b = build(f, as_of)
    sc = components(3)
    only = {k: make_scenario_set(("BTC", "ETH"), v.price_shock[:, :2], v.vol_shock[:, :2], kind=k, horizon_days=2.0)
            for k, v in sc.items()}
    s = Session(b, {"house": ModelConfig("house", None, only)}, backend="reference")
    d = {"venue": "okx", "underlying": "SOL", "kind": "perpetual", "settlement": "linear", "contract_size": 1.0,
         "underlying_price": 191.0}
    with pytest.raises(WhatIfError, match="no shocks for underlying") as e:
        gpurisk.whatif(s, str(b.accounts[0]), [Trade("SOL-NEW-SWAP", 1.0, d)])
    assert e.value.field == "trades"


def test_unknown_model_label(session):
    with pytest.raises(WhatIfError) as e:
        gpurisk.whatif(session, "ACC0000001", [("BTC-PERPETUAL", 1.0)], models=["nope"])
    assert e.value.field == "models[0]"


def test_holder_swaps_atomically(session, book, scen):
    from gpurisk.whatif import ReloadBusy, SessionHolder

    h = SessionHolder()
    assert not h.ready
    h.swap(session)
    seen = []

    def build():
        seen.append(h.current)  # the old session serves while the new one builds
        with pytest.raises(ReloadBusy):
            h.reload(lambda: None)
        return Session(book, {"house": ModelConfig("house", None, scen)}, backend="reference")

    new = h.reload(build)
    assert seen == [session] and h.current is new and h.reloads == 2


def test_trade_contributions_equal_the_full_attribution_of_the_modified_book(session, tables, scen, book):
    """The what-if's Euler contribution of a trade on a held instrument is Δq × that instrument's marginal in the
    full attribution (``gpurisk.actions.attribution.compute``) of the modified book, and the ES it explains is the
    modified book's ES of that component."""
    from gpurisk.actions.attribution import compute as attribute

    a = next(i for i in range(book.n_accounts) if len(session.positions_of(i)) >= 2)
    acc = str(book.accounts[a])
    ref, q = session.positions_of(a)[0]
    trades = [(ref.key, 0.5 * q, None)]
    w = gpurisk.whatif(session, acc, [Trade(i, dq, d) for i, dq, d in trades], attribution=True)
    assert w.attribution["available"] and set(w.attribution["models"]["house"]) == {"historical", "montecarlo"}
    book2 = build(modified(tables[0], acc, trades), tables[1])
    full = attribute(book2, "house", scenarios=scen, backend="reference").tables["attribution"]
    mine = full[full["account_id"] == acc]
    for comp, got in w.attribution["models"]["house"].items():
        rows = mine[mine["measure"] == f"es_99_{comp}"]
        marg = float(rows.loc[rows["instrument_id"] == ref.key, "marginal_per_unit"].iloc[0])
        (t,) = got["trades"]
        assert close(t["marginal_per_unit"], marg) and close(t["contribution_usd"], 0.5 * q * marg)
        assert close(got["es_after_usd"], float(rows["contribution_usd"].sum()))
    assert not gpurisk.whatif(session, acc, [Trade(ref.key, 1.0)]).attribution["available"]
