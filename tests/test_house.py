"""The house model: components against independent computations, APC, floor, calls, cross-venue view, 10k book."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps
from scipy.stats import norm
from test_measures import make_book, random_positions

import gpurisk.margin as gm
from gpurisk.backends import TailStats, reference
from gpurisk.market import StaleHistoryError, default_store, shipped_dir
from gpurisk.margin import calls, components, house
from gpurisk.margin.plan import execute
from gpurisk.pricing import VolTerm
from gpurisk.scenarios import make_scenario_set


def _backend() -> str:
    from gpurisk import backends

    try:
        backends.get("cpu")
        return "cpu"
    except Exception:  # noqa: BLE001 - fall back to the oracle where Numba is unusable
        return "reference"


def _sset(S=1000, seed=0, horizon=2.0):
    rng = np.random.default_rng(seed)
    return make_scenario_set(["BTC", "ETH"], rng.normal(0, 0.05, (S, 2)), rng.normal(0, 0.1, (S, 2)),
                             horizon_days=horizon)


def _raw_bars(coin):
    """Daily bars straight from the shipped CSV file (not through the store)."""
    return pd.read_csv(shipped_dir() / "market" / "daily" / f"{coin}USDT_1d.csv", index_col="timestamp",
                       parse_dates=True)


def _raw_adv(coin, date, days=30):
    """Mean of volume × close over the ``days`` bars through ``date``, from the raw file."""
    b = _raw_bars(coin).loc[:date].tail(days)
    return float((b["volume"] * b["close"]).mean())


def _ewma_vol_loop(coin, date, lam):
    """Daily EWMA vol, the plain recursion written out (independent of the model's pandas code)."""
    c = _raw_bars(coin)["close"].loc[:date].to_numpy()
    r = np.diff(np.log(c))
    v = r[0] ** 2
    for x in r[1:]:
        v = lam * v + (1 - lam) * x * x
    return math.sqrt(v)


# --------------------------------------------------------------------------- components


def test_im_components_by_hand():
    # 2 BTC long via OKX linear perp (200 contracts × 0.01 BTC at 60,000), USDT collateral
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [200.0]})
    bal = pd.DataFrame({"account_id": ["a"], "venue": ["okx"], "asset": ["USDT"], "amount": [50_000.0]})
    book = make_book(pos, bal)
    shocks = -np.linspace(0.0, 0.3, 100)  # losses 0 .. 36,000 USD
    sset = make_scenario_set(["BTC", "ETH"], np.c_[shocks, np.zeros(100)], horizon_days=2.0)
    p = house.Params(cross_venue=False)
    m = gm.compute(book, "house", params=p, scenarios=sset, backend="reference").tables["margin"].iloc[0]
    D = 2 * 60_000.0
    losses = np.sort(-D * shocks)[::-1]
    es = losses[:1].mean()  # k = ceil(0.01 * 100) = 1
    assert m["es_99"] == pytest.approx(es) and m["es_99_user"] == m["es_99"]
    assert m["base"] == pytest.approx(es) and m["base_component"] == "user"  # a caller's set is one component
    date = components.history_date(book.as_of)
    assert date == pd.Timestamp("2024-05-31")
    sigma = _ewma_vol_loop("BTC", date, 0.94)
    adv = _raw_adv("BTC", date, 30)
    assert house.average_daily_volume_usd("BTC", date, 30) == pytest.approx(adv, rel=1e-12)
    liq = 1.0 * sigma * D * math.sqrt(D / adv)
    assert m["liquidity_addon"] == pytest.approx(liq, rel=1e-6)
    st = house.apc_state(date, p)
    assert m["apc_buffer"] == pytest.approx(st["buffer_rate"] * es)
    assert m["floor"] == pytest.approx(0.01 * D)
    assert m["im"] == pytest.approx(max(es * (1 + st["buffer_rate"]) + liq, 0.01 * D))
    assert m["mm"] == pytest.approx(0.8 * m["im"])
    assert m["equity"] == pytest.approx(50_000.0)
    assert m["excess"] == pytest.approx(50_000.0 - m["im"])


def test_delta_notional_matches_closed_forms():
    book = make_book(pd.DataFrame({"account_id": ["a"], "instrument_id": ["BIN-BTC"], "quantity": [1.0]}))
    from gpurisk.margin.measures import book_pricing

    pi, _ = book_pricing(book, _sset(2))
    d = house.delta_notional(pi, VolTerm())
    ins = book.instruments
    F, cs, T = pi.forward, pi.contract_size, pi.ttm
    for i, iid in enumerate(ins.instrument_id):
        if ins.kind[i] == 3:  # option: cs · w·N(w·d1) · F (Black-76 delta in USD notional)
            w = ins.option_type[i]
            s = pi.vol[i] * math.sqrt(T[i])
            d1 = (math.log(F[i] / pi.strike[i]) + 0.5 * s * s) / s
            want = cs[i] * w * norm.cdf(w * d1) * F[i]
        elif ins.settlement[i] == 1:  # inverse delta-one: cs USD per unit move
            want = cs[i]
        else:
            want = cs[i] * F[i]
        assert d[i] == pytest.approx(want, rel=1e-6), iid


def test_apc_buffer_released_in_stress_and_kept_in_calm():
    p = house.Params()
    calm = house.apc_state(pd.Timestamp("2024-12-31"), p)
    assert calm["buffer_rate"] == pytest.approx(0.25)
    covid = house.apc_state(pd.Timestamp("2020-03-13"), p)
    assert covid["release"] == 1.0 and covid["buffer_rate"] == 0.0
    # the rule itself, on the reported vols; long-run vol = sample std over the window
    for state, date in ((calm, "2024-12-31"), (covid, "2020-03-13")):
        d = pd.Timestamp(date)
        c = _raw_bars("BTC")["close"].loc[d - pd.Timedelta(days=3650): d]
        assert state["long_daily_vol"] == pytest.approx(np.std(np.diff(np.log(c.to_numpy())), ddof=1))
        assert state["short_daily_vol"] == pytest.approx(_ewma_vol_loop("BTC", d, 0.94), rel=1e-9)
        r = state["short_daily_vol"] / state["long_daily_vol"]
        assert state["buffer_rate"] == pytest.approx(0.25 * (1 - min(max((r - 1) / 0.5, 0), 1)))


def test_history_date_is_the_last_bar_known_at_the_as_of():
    # a bar dated d closes at d+1 00:00 UTC
    assert components.history_date(np.datetime64("2024-06-10T12:00:00")) == pd.Timestamp("2024-06-09")
    assert components.history_date(np.datetime64("2024-06-10T00:00:00")) == pd.Timestamp("2024-06-09")
    assert components.history_date(np.datetime64("2024-06-09T23:59:59")) == pd.Timestamp("2024-06-08")
    # after the shipped history: its last bar (the staleness policy is book_history's, not this function's)
    assert components.history_date(np.datetime64("2026-03-01T08:00:00")) == pd.Timestamp("2024-12-31")


def test_book_after_the_history_is_refused_naming_both_dates():
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1.0]})
    p = house.Params(cross_venue=False)
    with pytest.raises(StaleHistoryError) as err:
        gm.compute(make_book(pos, as_of="2025-03-01T00:00:00Z"), "house", params=p, scenarios=_sset(50),
                   backend="reference")
    msg = str(err.value)
    assert "\n" not in msg and "2024-12-31" in msg and "2025-03-01T00:00:00Z" in msg and "60 days" in msg
    assert "--allow-stale-history" in msg


@pytest.mark.parametrize("as_of,age,ok", [("2025-01-01T00:00:00Z", 1, True), ("2025-01-03T23:00:00Z", 3, True),
                                         ("2025-01-04T00:00:00Z", 4, False)])
def test_staleness_limit_is_inclusive(as_of, age, ok):
    # the shipped history ends 2024-12-31: age = as-of date − 2024-12-31; refused when > 3 days
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1.0]})
    p = house.Params(cross_venue=False)
    book = make_book(pos, as_of=as_of)
    if ok:
        res = gm.compute(book, "house", params=p, scenarios=_sset(50), backend="reference")
        h = res.summary["market_history"]
        assert h["end"] == res.summary["history_date"] == "2024-12-31" and h["age_days"] == age
        assert h["stale"] is False and h["max_age_days"] == 3
    else:
        with pytest.raises(StaleHistoryError, match="4 days before"):
            gm.compute(book, "house", params=p, scenarios=_sset(50), backend="reference")
        # a wider limit lets it run, unmarked
        res = gm.compute(book, "house", params=p, scenarios=_sset(50), backend="reference",
                         market=default_store().with_policy(max_history_age_days=4))
        assert res.summary["market_history"]["stale"] is False


def test_allowed_stale_history_runs_marked_and_warned(caplog):
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1.0]})
    p = house.Params(cross_venue=False)
    store = default_store().with_policy(allow_stale_history=True)
    with caplog.at_level(logging.WARNING, logger="gpurisk.market"):
        stale = gm.compute(make_book(pos, as_of="2025-03-01T00:00:00Z"), "house", params=p, scenarios=_sset(50),
                           backend="reference", market=store)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "2024-12-31" in warned[0] and "60 days" in warned[0]
    h = stale.summary["market_history"]
    assert h["stale"] is True and h["end"] == "2024-12-31" and h["age_days"] == 60
    # the model reads the same history as a book dated the day after the last bar
    fresh = gm.compute(make_book(pos, as_of="2025-01-01T08:00:00Z"), "house", params=p, scenarios=_sset(50),
                       backend="reference")
    assert fresh.summary["apc"] == stale.summary["apc"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpurisk.market"):
        res = gm.compute(make_book(pos), "house", params=p, scenarios=_sset(50), backend="reference")
    assert not caplog.records and res.summary["market_history"]["age_days"] == 1


def test_hedged_book_pays_the_floor():
    # long 1 BTC spot, short 100 × 0.01 BTC linear perp at the same mark: P&L ≡ 0
    pos = pd.DataFrame({"account_id": ["a", "a"], "instrument_id": ["BIN-BTC", "OKX-BTC-PERP"],
                        "quantity": [1.0, -100.0]})
    m = gm.compute(make_book(pos), "house", params=house.Params(cross_venue=False), scenarios=_sset(),
                   backend="reference").tables["margin"].iloc[0]
    assert abs(m["es_99"]) < 1e-6 and m["liquidity_addon"] < 1e-9
    assert m["im"] == pytest.approx(0.01 * 2 * 60_000.0)


def test_liquidity_charge_grows_faster_than_size():
    def im_parts(k):
        pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [k]})
        return gm.compute(make_book(pos), "house", params=house.Params(cross_venue=False), scenarios=_sset(),
                          backend="reference").tables["margin"].iloc[0]

    small, big = im_parts(1e3), im_parts(1e5)
    assert big["liquidity_addon"] == pytest.approx(small["liquidity_addon"] * 100 ** 1.5, rel=1e-9)
    assert big["es_99"] == pytest.approx(small["es_99"] * 100, rel=1e-9)


# --------------------------------------------------------------------------- calls


def test_classify_bands_by_hand():
    im = np.array([100.0, 100, 100, 100, 100, 100, 0.0, 0.0])
    mm = 0.8 * im
    eq = np.array([100.0, 150, 95, 88, 87.9, 79, 0.0, -1.0])
    status, amt = calls.classify(im, mm, eq, calls.CallParams(1.10, 1.0))
    assert list(status) == ["ok", "ok", "call", "call", "reduce_only", "liquidation", "ok", "liquidation"]
    np.testing.assert_allclose(amt, [0, 0, 5, 12, 12.1, 21, 0, 1])


def test_classify_caps_bands_at_im():
    # MM = 0.95·IM and a reduce-only line at 1.2·MM = 114 > IM: the call band is empty,
    # equity just under IM is reduce-only, at IM it is ok
    im, mm = np.array([100.0, 100.0, 100.0]), np.array([95.0, 95.0, 95.0])
    status, _ = calls.classify(im, mm, np.array([100.0, 99.0, 94.0]), calls.CallParams(1.2, 1.0))
    assert list(status) == ["ok", "reduce_only", "liquidation"]
    with pytest.raises(ValueError):
        calls.CallParams(reduce_only_mm_ratio=0.9, liquidation_mm_ratio=1.0)


# --------------------------------------------------------------------------- cross-venue view


def test_cross_venue_benefit():
    # a: long OKX perp vs short Deribit inverse perp (a cross-venue hedge); b: one venue only
    pos = pd.DataFrame({"account_id": ["a", "a", "b"], "instrument_id": ["OKX-BTC-PERP", "DER-BTC-PERP", "OKX-ETH-PERP"],
                        "quantity": [100.0, -6001.0, 30.0]})
    bal = pd.DataFrame({"account_id": ["a", "a", "b"], "venue": ["okx", "deribit", "okx"], "asset": ["USDT", "BTC", "USDC"],
                        "amount": [20_000.0, 0.5, 5_000.0]})
    res = gm.compute(make_book(pos, bal), "house", scenarios=_sset(), backend="reference")
    m = res.tables["margin"].set_index("account_id")
    v = res.tables["venue_margin"]
    assert m.loc["a", "cross_margin_benefit"] > 0.5 * m.loc["a", "standalone_im"]
    assert m.loc["b", "cross_margin_benefit"] == 0.0
    per_acct = v.groupby("account_id")["im"].sum()
    np.testing.assert_allclose(m.loc[per_acct.index, "standalone_im"], per_acct.to_numpy())
    np.testing.assert_allclose(m["cross_margin_benefit"], m["standalone_im"] - m["im"])
    s = res.summary
    assert s["total_im"] == pytest.approx(m["im"].sum())
    assert sum(s["im_by_venue_standalone"].values()) == pytest.approx(s["total_standalone_im"])
    assert s["cross_margin_benefit"] == pytest.approx(s["total_standalone_im"] - s["total_im"])


def test_chunked_tail_stats_give_the_same_result():
    rng = np.random.default_rng(4)
    book = make_book(random_positions(rng, 25, 90))
    plan = house.plan(book, house.Params(), _sset(400))
    whole, _ = execute(plan, "reference")
    chunked = {}
    for name, leg in plan.legs.items():
        P = reference.revalue(leg.pricing, leg.scenarios)
        n = len(leg.portfolios)
        edges = [0, 3, 4, n // 2, n]
        chunked[name] = TailStats.concat([reference.tail_stats(leg.portfolios.slice(a, b), P, leg.spec)
                                          for a, b in zip(edges, edges[1:])])
    a, b = house.finalize(plan, whole), house.finalize(plan, chunked)
    for t in a.tables:
        pd.testing.assert_frame_equal(a.tables[t], b.tables[t])


def test_default_scenario_set_is_fhs_mc_and_stress():
    book = make_book(pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-ETH-PERP"], "quantity": [1.0]}),
                     as_of="2025-01-01T00:00:00Z")
    parts = components.default_components(book, house.Params().components())
    assert [p.kind for p in parts.values()] == ["historical", "montecarlo", "stress"]
    n = {k: p.n_scenarios for k, p in parts.items()}
    assert n["montecarlo"] == 10_000 and n["historical"] >= 1_000 and n["stress"] >= 1
    assert all(p.horizon_days == 2.0 for p in parts.values())
    assert {"ETH", "USDT"} <= set(parts["stress"].underlyings) and "ETH" in parts["historical"].underlyings


def test_plan_has_one_leg_per_grouping_and_component():
    book = make_book(pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-ETH-PERP"], "quantity": [1.0]}))
    comps = components.default_components(book, house.Params(mc_scenarios=500).components())
    assert list(comps) == ["historical", "montecarlo", "stress"]
    assert [c.kind for c in comps.values()] == ["historical", "montecarlo", "stress"]
    assert comps["montecarlo"].n_scenarios == 500
    pl = house.plan(book, house.Params(mc_scenarios=500), comps)
    assert list(pl.legs) == [f"{g}/{c}" for c in comps for g in ("account", "account_venue")]
    # the two groupings of a component share one revaluation; components never share one
    keys = {name: leg.pnl_key() for name, leg in pl.legs.items()}
    assert len(set(keys.values())) == 3 and keys["account/stress"] == keys["account_venue/stress"]
    no_mc = components.default_components(book, house.Params(mc_scenarios=0).components())
    assert list(no_mc) == ["historical", "stress"]


@pytest.mark.parametrize("bad,match", [
    ({"fhs": _sset(10)}, "components"),
    ({}, "components"),
    ({"stress": np.zeros((3, 2))}, "ScenarioSet"),
    (np.zeros((3, 2)), "ScenarioSet"),
])
def test_bad_scenario_components_are_clean_errors(bad, match):
    from gpurisk.errors import ScenarioError

    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1.0]})
    with pytest.raises(ScenarioError, match=match):
        gm.compute(make_book(pos), "house", scenarios=bad, backend="reference")
    with pytest.raises(ValueError, match="stress_factor"):
        house.Params(stress_factor=1.5)


def test_each_component_can_bind_by_hand():
    # h: 2 BTC long (OKX linear perp), m: 20 ETH long, s: 930,000 USDT and no positions, all on okx.
    # historical moves BTC, Monte Carlo moves ETH, stress de-pegs USDT (and moves the coins a little).
    pos = pd.DataFrame({"account_id": ["h", "m"], "instrument_id": ["OKX-BTC-PERP", "OKX-ETH-PERP"],
                        "quantity": [200.0, 200.0]})  # 0.01 BTC and 0.1 ETH per contract
    bal = pd.DataFrame({"account_id": ["s"], "venue": ["okx"], "asset": ["USDT"], "amount": [930_000.0]})
    book = make_book(pos, bal)
    n = 100
    hist = make_scenario_set(["BTC", "ETH"], np.c_[-np.linspace(0, 0.30, n), np.full(n, -0.01)], horizon_days=2.0,
                             kind="historical")
    mc = make_scenario_set(["BTC", "ETH"], np.c_[np.full(400, -0.02), -np.linspace(0, 0.40, 400)], horizon_days=2.0,
                           kind="montecarlo")
    stress = make_scenario_set(["BTC", "ETH", "USDT"], [[-0.05, -0.05, 0.0], [0.0, 0.0, -0.10]], horizon_days=2.0,
                               kind="stress")
    p = house.Params(stress_factor=0.4, apc_indicator="BTC")  # one buffer rate for all (the default is per coin)
    res = gm.compute(book, "house", params=p, scenarios={"historical": hist, "montecarlo": mc, "stress": stress},
                     backend="reference")
    m = res.tables["margin"].set_index("account_id")
    Dh, Dm = 2 * 60_000.0, 20 * 3_001.0  # ETH perp marked at 3,001
    want = {  # (ES historical, ES Monte Carlo, worst stress loss)
        "h": (Dh * 0.30, Dh * 0.02, Dh * 0.05),  # k = 1 of 100; every MC scenario moves BTC -2 %
        "m": (Dm * 0.01, np.mean(Dm * np.linspace(0, 0.40, 400)[-4:]), Dm * 0.05),  # k = 4 of 400
        "s": (0.0, 0.0, 93_000.0),  # USDT has no shock outside the de-peg
    }
    binds = {"h": "historical", "m": "montecarlo", "s": "stress"}
    rate = res.summary["apc"]["buffer_rate"]
    for a, (eh, em, sw) in want.items():
        r = m.loc[a]
        assert r["es_99_historical"] == pytest.approx(eh, abs=1e-6)
        assert r["es_99_montecarlo"] == pytest.approx(em, abs=1e-6)
        assert r["stress_worst"] == pytest.approx(sw) and r["stress_charge"] == pytest.approx(0.4 * sw)
        base = max(eh, em, 0.4 * sw)
        assert r["base"] == pytest.approx(base) and r["base_component"] == binds[a]
        assert r["apc_buffer"] == pytest.approx(rate * base)
        assert r["im"] == pytest.approx(max(base * (1 + rate) + r["liquidity_addon"], r["floor"]))
    assert m.loc["s", "im"] == pytest.approx(0.4 * 93_000.0 * (1 + rate))  # no positions: no add-on, no floor
    assert res.summary["base_component"] == {"historical": 1, "montecarlo": 1, "stress": 1, "none": 0}
    # the standalone view is computed the same way: one venue each, so venue rows equal account rows
    v = res.tables["venue_margin"].set_index("account_id")
    cols = ["im", "base", "base_component", "es_99_historical", "es_99_montecarlo", "stress_charge"]
    pd.testing.assert_frame_equal(v.loc[["h", "m", "s"], cols], m.loc[["h", "m", "s"], cols])
    # stress_factor scales the stress term only: at 0 the USDT holder needs nothing
    p0 = house.Params(stress_factor=0.0, apc_indicator="BTC")
    m0 = gm.compute(book, "house", params=p0, scenarios={"historical": hist, "montecarlo": mc, "stress": stress},
                    backend="reference").tables["margin"].set_index("account_id")
    assert m0.loc["s", "im"] == 0.0 and m0.loc["s", "base_component"] == "none"
    np.testing.assert_allclose(m0.loc[["h", "m"], "im"], m.loc[["h", "m"], "im"])


def test_usdt_holder_is_bound_by_the_default_depeg_stress():
    # default components (real FHS, Monte Carlo and named stress): USDT has no shock but usdt_depeg_10
    bal = pd.DataFrame({"account_id": ["s"], "venue": ["okx"], "asset": ["USDT"], "amount": [930_000.0]})
    book = make_book(pd.DataFrame({"account_id": [], "instrument_id": [], "quantity": []}), bal)
    p = house.Params(mc_scenarios=2000, apc_indicator="BTC")  # one buffer rate for all (the default is per coin)
    res = gm.compute(book, "house", params=p, backend="reference")
    r = res.tables["margin"].iloc[0]
    assert r["es_99_historical"] == 0.0 and r["es_99_montecarlo"] == 0.0
    assert r["stress_worst"] == pytest.approx(93_000.0) and r["base_component"] == "stress"
    rate = res.summary["apc"]["buffer_rate"]
    assert r["im"] == pytest.approx(0.33 * 93_000.0 * (1 + rate))
    assert r["equity"] == pytest.approx(930_000.0)  # below 10 M USDT counts in full


def _tail_es(D, scale, dist, alpha=0.01):
    """(ES, n -> standard error of the n-draw estimate) of a long linear position D USD whose log move is
    scale·X, X ~ ``dist`` (a frozen scipy distribution), by quadrature; the error is the asymptotic one of
    the mean of the worst ⌈αn⌉ losses."""
    xa = dist.ppf(alpha)

    def loss(x):
        return -D * math.expm1(scale * x)

    es = integrate.quad(lambda x: loss(x) * dist.pdf(x), -np.inf, xa)[0] / alpha
    m2 = integrate.quad(lambda x: loss(x) ** 2 * dist.pdf(x), -np.inf, xa)[0] / alpha
    tail_var = m2 - es * es + (1 - alpha) * (es - loss(xa)) ** 2
    return es, lambda n: math.sqrt(tail_var / (alpha * n))


def test_im_does_not_drift_with_mc_scenarios():
    # the reviewer's probe: one account long 10 BTC. Pooled equal weights made the IM fall by a third from
    # 2,000 to 40,000 draws; with one leg per component only the Monte Carlo ES moves, within sampling noise
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1000.0]})
    book = make_book(pos)
    D = 10 * 60_000.0
    rows = {}
    for n in (2000, 10_000, 40_000):
        # the FHS without its volatility floor binds this book in mid-2024 (with the floor, MC or stress does)
        p = house.Params(mc_scenarios=n, cross_venue=False, vol_floor=0.0)
        comps = components.default_components(book, p.components())
        res = gm.compute(book, "house", params=p, scenarios=comps, backend="reference")
        rows[n] = res.tables["margin"].iloc[0]
        meta = comps["montecarlo"].metadata
        dof = meta["dof"]  # x = sqrt((dof-2)/dof)·T with T a standard Student-t
        es, se = _tail_es(D, meta["sigma_daily"]["BTC"] * math.sqrt(2.0 * (dof - 2) / dof), sps.t(dof))
        assert abs(rows[n]["es_99_montecarlo"] - es) <= 5 * se(n), n  # t tails: z-scores skew right
    ims = [r["im"] for r in rows.values()]
    es_h = rows[40_000]["es_99_historical"]
    # here the FHS term binds, so the IM is the same whatever the number of draws
    assert [r["base_component"] for r in rows.values()] == ["historical"] * 3
    assert max(ims) - min(ims) <= 1e-9 * ims[0]
    assert all(r["es_99_historical"] == es_h for r in rows.values())
    # and the MC ES between 10,000 and 40,000 draws moves by less than the noise of 10,000
    assert abs(rows[10_000]["es_99_montecarlo"] - rows[40_000]["es_99_montecarlo"]) <= 4 * se(10_000)


def test_mc_bound_im_within_noise_of_the_closed_form():
    # Gaussian Monte Carlo (closed-form ES) is the only ES component with a mild stress set: the IM at 2,000
    # and 40,000 draws is the closed-form IM within sampling noise
    from gpurisk.scenarios.montecarlo import monte_carlo_scenarios

    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1000.0]})
    book = make_book(pos)
    D = 10 * 60_000.0
    stress = make_scenario_set(["BTC", "ETH"], [[-0.05, 0.0]], horizon_days=2.0, kind="stress")
    ims, ses = {}, {}
    for n in (2000, 40_000):
        mc = monte_carlo_scenarios(np.datetime64("2024-06-01"), n_scenarios=n, seed=0, coins=("BTC", "ETH"),
                                   horizon_days=2.0, distribution="gaussian")
        s = mc.metadata["sigma_daily"]["BTC"] * math.sqrt(2.0)
        es, se = _tail_es(D, s, sps.norm())
        z = norm.ppf(0.01)
        assert es == pytest.approx(D * (1 - math.exp(s * s / 2) * norm.cdf(z - s) / 0.01), rel=1e-8)  # closed form
        res = gm.compute(book, "house", params=house.Params(cross_venue=False, apc_indicator="BTC"),
                         scenarios={"montecarlo": mc, "stress": stress}, backend="reference")
        r = res.tables["margin"].iloc[0]
        assert r["base_component"] == "montecarlo"
        rate = res.summary["apc"]["buffer_rate"]
        ims[n], ses[n] = r["im"], (1 + rate) * se(n)
        assert abs(r["im"] - (es * (1 + rate) + r["liquidity_addon"])) <= 4 * ses[n], n
    assert abs(ims[2000] - ims[40_000]) <= 4 * (ses[2000] + ses[40_000])


def test_collateral_is_not_in_the_liquidity_delta():
    # the same perp with and without 50 BTC of collateral: same add-on and floor (the haircut prices the coin)
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [-5000.0]})
    bal = pd.DataFrame({"account_id": ["a"], "venue": ["okx"], "asset": ["BTC"], "amount": [50.0]})
    p = house.Params(cross_venue=False)
    with_c = gm.compute(make_book(pos, bal), "house", params=p, scenarios=_sset(), backend="reference")
    without = gm.compute(make_book(pos), "house", params=p, scenarios=_sset(), backend="reference")
    a, b = with_c.tables["margin"].iloc[0], without.tables["margin"].iloc[0]
    D = 50 * 60_000.0
    date = components.history_date(make_book(pos).as_of)
    liq = _ewma_vol_loop("BTC", date, 0.94) * D * math.sqrt(D / _raw_adv("BTC", date, 30))
    assert a["liquidity_addon"] == pytest.approx(liq, rel=1e-6) == b["liquidity_addon"]
    assert a["floor"] == b["floor"] == pytest.approx(0.01 * D)
    assert abs(a["es_99"]) < 1e-6  # short 50 BTC perp against 50 BTC held: no price risk left


# --------------------------------------------------------------------------- the generated 10k-account book


@pytest.fixture(scope="module")
def generated_10k():
    from gpurisk.book import Book
    from gpurisk.generate import generate_book

    tb = generate_book(10_000, 1)
    book = Book.from_frames(tb["meta"]["as_of"], tb["instruments"], tb["market"], tb["index"], tb["positions"],
                            tb["balances"])
    return book, gm(book, model="house", backend=_backend())


def test_house_on_generated_10k_book(generated_10k):
    book, res = generated_10k
    m, c, s = res.tables["margin"], res.tables["calls"], res.summary
    assert len(m) == 10_000 == s["accounts"] and list(m["account_id"]) == list(book.accounts)
    ran = [c for c in m.select_dtypes("number").columns if not c.endswith("_user")]  # no caller set in this run
    assert np.isfinite(m[ran].to_numpy()).all() and m["es_99_user"].isna().all()
    assert (m["im"] > 0).all() and np.allclose(m["mm"], 0.8 * m["im"])
    assert (m["im"] >= m["floor"] - 1e-9).all()
    assert s["total_im"] == pytest.approx(m["im"].sum())
    assert s["total_standalone_im"] == pytest.approx(res.tables["venue_margin"]["im"].sum())
    assert set(s["im_by_venue_standalone"]) == {"binance", "deribit", "okx"}
    assert s["cross_margin_benefit"] == pytest.approx((m["standalone_im"] - m["im"]).sum())
    assert s["cross_margin_benefit"] > 0
    # calls: the table lists exactly the accounts not ok, and the counts agree
    assert sum(s["calls"].values()) == 10_000
    assert len(c) == 10_000 - s["calls"]["ok"]
    assert c["status"].value_counts().to_dict() == {k: v for k, v in s["calls"].items() if k != "ok" and v}
    assert (c["call_amount_usd"] > 0).all() and (m.loc[m["status"] == "ok", "equity"] >= m.loc[m["status"] == "ok", "im"]).all()
    assert s["backend"] in ("cpu", "reference") and s["gpu_fallbacks"] == 0
    # the base is the largest component term, and the binding counts add up
    terms = np.vstack([m["es_99_historical"], m["es_99_montecarlo"], 0.33 * m["stress_worst"]])
    np.testing.assert_allclose(m["base"], np.maximum(terms.max(axis=0), 0.0), rtol=1e-12)
    np.testing.assert_allclose(m["stress_charge"], 0.33 * m["stress_worst"], rtol=1e-12)
    assert sum(s["base_component"].values()) == 10_000


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_house_order_of_rows_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    pos = random_positions(rng, 10, 30)
    accts = pos["account_id"].unique()
    bal = pd.DataFrame({"account_id": rng.choice(accts, 12), "venue": rng.choice(["okx", "deribit", "binance"], 12),
                        "asset": rng.choice(["USDT", "USDC", "BTC", "ETH"], 12), "amount": rng.uniform(0, 5e4, 12)})
    sset = _sset(300, seed=1)

    def run(p, b):
        res = gm.compute(make_book(p, b), "house", scenarios=sset, backend="reference")
        return res.tables["margin"].set_index("account_id").sort_index(), res.summary

    m1, s1 = run(pos, bal)
    m2, s2 = run(pos.sample(frac=1.0, random_state=seed % 1000).reset_index(drop=True),
                 bal.sample(frac=1.0, random_state=seed % 997).reset_index(drop=True))
    pd.testing.assert_frame_equal(m1, m2, rtol=1e-10, atol=1e-8)
    assert s1["calls"] == s2["calls"]


def test_as_of_before_the_history_is_a_clean_error():
    from gpurisk.errors import ScenarioError

    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1.0]})
    with pytest.raises(ScenarioError, match="BTC"):
        gm.compute(make_book(pos, as_of="2017-08-18T00:00:00Z"), "house", params=house.Params(apc_indicator="BTC"),
                   scenarios=_sset(50), backend="reference")
    with pytest.raises(ScenarioError, match="indicator"):
        house.apc_state(pd.Timestamp("2017-08-17"), house.Params(apc_indicator="SOL"))


@pytest.mark.parametrize("kind", ["stress", "historical", "user"])
def test_a_caller_set_is_one_component_whatever_its_kind(kind):
    # one documented rule: a caller's single set is the ``user`` component measured by ES_q, whatever its
    # sidecar kind says (it used to be charged 0.33 × worst when the kind was "stress": about 3× apart),
    # and the margin table has the same columns every time
    from dataclasses import replace

    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [200.0]})
    shocks = np.array([[-0.40, -0.40], [-0.10, -0.20], [0.05, 0.0]])
    sset = replace(make_scenario_set(["BTC", "ETH"], shocks, horizon_days=2.0), kind=kind)
    p = house.Params(cross_venue=False, stress_factor=0.4)
    m = gm.compute(make_book(pos), "house", params=p, scenarios=sset, backend="reference").tables["margin"]
    worst = 200 * 0.01 * 60_000.0 * 0.40  # the −40 % move on 2 BTC of linear perp; ES99 of 3 scenarios is the worst
    r = m.iloc[0]
    assert r["base_component"] == "user"
    assert r["base"] == pytest.approx(worst, rel=1e-12) and r["es_99_user"] == pytest.approx(worst, rel=1e-12)
    assert np.isnan(r["es_99_historical"]) and np.isnan(r["stress_charge"])
    assert list(m.columns) == list(gm.compute(make_book(pos), "house", params=p, scenarios=replace(sset, kind="x"),
                                              backend="reference").tables["margin"].columns)


def test_a_stress_component_is_charged_stress_factor_times_worst():
    # the EOD stress job names the component explicitly: {"stress": set} is charged stress_factor × worst loss
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [200.0]})
    shocks = np.array([[-0.40, -0.40], [-0.10, -0.20], [0.05, 0.0]])
    stress = make_scenario_set(["BTC", "ETH"], shocks, horizon_days=2.0)
    p = house.Params(cross_venue=False, stress_factor=0.4)
    r = gm.compute(make_book(pos), "house", params=p, scenarios={"stress": stress},
                   backend="reference").tables["margin"].iloc[0]
    worst = 200 * 0.01 * 60_000.0 * 0.40
    assert r["base_component"] == "stress"
    assert r["base"] == pytest.approx(0.4 * worst, rel=1e-12) and r["stress_worst"] == pytest.approx(worst, rel=1e-12)
    assert np.isnan(r["es_99"])


def test_apc_reports_the_history_window_it_used(caplog, tmp_path):
    # a copy of the BTC history in a folder of its own: a store with nothing computed yet
    (tmp_path / "market" / "daily").mkdir(parents=True)
    src = shipped_dir() / "market" / "daily" / "BTCUSDT_1d.csv"
    (tmp_path / "market" / "daily" / "BTCUSDT_1d.csv").write_bytes(src.read_bytes())
    with caplog.at_level(logging.INFO, logger="gpurisk.margin.house"):
        st = house.apc_state(pd.Timestamp("2020-03-13"), house.Params(), market=tmp_path)
    first = _raw_bars("BTC").index[0]
    assert st["long_window_days"] == (pd.Timestamp("2020-03-13") - first).days  # history starts 2017-08-17
    said = [r for r in caplog.records if "only" in r.getMessage() and "3650" in r.getMessage()]
    assert said and all(r.levelno == logging.INFO for r in said)  # not a warning: it would print under --quiet
