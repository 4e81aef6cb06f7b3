"""The OKX replica against OKX's published position-builder example.

Source: OKX API v5 docs, ``POST /api/v5/account/position-builder`` ("Position builder (new)"),
its first request example (−10 BTC-USDT-SWAP, +10 LTC-USDT-SWAP, 100 USDT, ``inclRealPosAndEq``
false) and its response example of 2025-01-15 10:26:41 UTC, stored in
``tests/data/okx/position_builder_example.json`` as published.

What the example does not print is derived from what it does, once, here:

- USDT/USD = delta ÷ (pos × ctVal × markPx): 0.99954, the same for both perpetuals. The book
  holds USD prices (the house counts USDT as USD), so the USDT prices are converted at it.
- The index: MR1 ÷ (|grid move| × |pos × ctVal| × USDT/USD) is 97,078.9 USDT for BTC and
  101.9951 USDT for LTC, prices on the index's own tick grid. MR1 and MR6 move the index, not
  the mark (97,093.7 and 102): on the mark MR1 would be 1.5e-4 (BTC) and 4.8e-5 (LTC) too high.

The book is written as a book folder and loaded with ``gpurisk.io.load_book``, then margined
with ``okx.plan`` / ``okx.finalize`` on the reference backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpurisk.backends import Engine
from gpurisk.backends import reference as ref
from gpurisk.margin import okx
from gpurisk.margin.plan import execute

from test_deribit import INSTRUMENT_COLS, write_book

FIXTURE = Path(__file__).parent / "data" / "okx" / "position_builder_example.json"
EXAMPLE = json.loads(FIXTURE.read_text())
RESP = EXAMPLE["response"]
UNITS = {u["riskUnit"]: u for u in RESP["riskUnitData"]}
CT_VAL = {k: float(v) for k, v in EXAMPLE["contract_value"].items()}
AS_OF = pd.Timestamp(int(RESP["ts"]), unit="ms", tz="UTC")
INDEX_USDT = {"BTC": 97_078.9, "LTC": 101.9951}  # implied by the example's MR1 (test below)
INDEX_TICK = {"BTC": 0.1, "LTC": 0.0001}
ACCOUNT = "pb-example"


def _position(unit: str) -> dict:
    (pos,) = UNITS[unit]["portfolios"]
    return pos


def usdt_usd() -> float:
    """USDT/USD implied by each perpetual's cash delta; both must agree."""
    rates = [float(p["delta"]) / (float(p["amt"]) * CT_VAL[p["instId"]] * float(p["markPx"]))
             for p in (_position(u) for u in UNITS)]
    assert rates[0] == pytest.approx(rates[1], rel=1e-15)
    return rates[0]


def example_book(tmp_path):
    rate = usdt_usd()
    inst, under = [_position(u)["instId"] for u in UNITS], list(UNITS)
    instruments = pd.DataFrame([[i, "okx", u, "perpetual", "linear", CT_VAL[i], "", "", ""]
                                for i, u in zip(inst, under)], columns=INSTRUMENT_COLS)
    market = pd.DataFrame({"instrument_id": inst,
                           "underlying_price": [float(_position(u)["markPx"]) * rate for u in under],
                           "implied_vol": [np.nan] * len(inst)})
    index = pd.DataFrame({"underlying": under + ["USDT"], "price": [INDEX_USDT[u] * rate for u in under] + [1.0]})
    sim = EXAMPLE["request"]["simPos"]
    positions = pd.DataFrame({"account_id": ACCOUNT, "instrument_id": [p["instId"] for p in sim],
                              "quantity": [float(p["pos"]) for p in sim]})
    balances = pd.DataFrame({"account_id": [ACCOUNT], "venue": ["okx"],
                             "asset": [a["ccy"] for a in EXAMPLE["request"]["simAsset"]],
                             "amount": [float(a["amt"]) for a in EXAMPLE["request"]["simAsset"]]})
    return write_book(tmp_path / "book", AS_OF.isoformat(), instruments, market, index, positions, balances)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    book = example_book(tmp_path_factory.mktemp("okx_pb"))
    p = okx.plan(book)
    stats, _ = execute(p, Engine("reference"))
    return p, okx.finalize(p, stats)


def test_fixture_is_consistent_and_implies_usdt_and_index():
    # the published figures add up: totalMmr = derivMmr + borrowMmr, derivMmr = Σ unit MMR, IMR = 1.3 MMR
    assert float(RESP["totalMmr"]) == pytest.approx(float(RESP["derivMmr"]) + float(RESP["borrowMmr"]), rel=1e-15)
    assert float(RESP["derivMmr"]) == pytest.approx(sum(float(u["mmr"]) for u in UNITS.values()), rel=1e-15)
    for u in UNITS.values():
        assert float(u["imr"]) == pytest.approx(1.3 * float(u["mmr"]), rel=1e-15)
    assert usdt_usd() == pytest.approx(0.99954, rel=1e-15)
    for name, u in UNITS.items():
        pos = _position(name)
        size = abs(float(pos["amt"]) * CT_VAL[pos["instId"]])
        worst = u["mr1FinalResult"]
        implied = abs(float(worst["pnl"])) / (abs(float(worst["spotShock"])) * size * usdt_usd())
        assert implied == pytest.approx(INDEX_USDT[name], rel=1e-14)
        ticks = INDEX_USDT[name] / INDEX_TICK[name]
        assert ticks == pytest.approx(round(ticks), abs=1e-6)  # a price on the index's tick grid
        # the mark is not the MR1 base
        assert abs(float(pos["markPx"]) / INDEX_USDT[name] - 1.0) > 4e-5


def test_mr1_and_mr6_reproduced(reproduced):
    _, res = reproduced
    units = res.tables["risk_units"].set_index("risk_unit")
    for name, pub in UNITS.items():
        row = units.loc[name]
        assert row["mr1"] == pytest.approx(float(pub["mr1"]), rel=1e-8)
        assert row["mr6"] == pytest.approx(float(pub["mr6"]), rel=1e-8)
        assert row["mr6"] == pytest.approx(0.5 * abs(float(pub["mr6FinalResult"]["pnl"])), rel=1e-8)
        for term in ("mr2", "mr3", "mr5", "mr9"):
            assert row[term] == float(pub[term]) == 0.0


def test_mr1_scenario_grid_reproduced(reproduced):
    # all 21 scenario P&Ls of each unit, against mr1Scenarios (volShockUp / volSame / volShockDown)
    p, _ = reproduced
    state = {1: "volShockUp", 0: "volSame", -1: "volShockDown"}
    for name, pub in UNITS.items():
        leg = p.legs[f"okx.{name}/mr1"]
        pnl = ref.portfolio_pnl(leg.portfolios, ref.revalue(leg.pricing, leg.scenarios, "usd"))[0]  # [S]
        moves = leg.scenarios.price_shock[:, 0]
        vols = np.sign(leg.scenarios.vol_shock[:, 0]).astype(int)
        published = pub["mr1Scenarios"]
        assert sum(len(v) for v in published.values()) == len(pnl) == 21
        for s in range(len(pnl)):
            want = float(published[state[vols[s]]][f"{moves[s]:g}"])
            assert pnl[s] == pytest.approx(want, rel=1e-8, abs=1e-9), (name, moves[s], vols[s])
        worst = float(pub["mr1FinalResult"]["spotShock"])
        assert moves[np.argmin(pnl)] == pytest.approx(worst, abs=1e-15)


def test_mmr_and_imr_per_risk_unit_and_for_the_derivatives(reproduced):
    # MR4 (0.2 % BTC, 0.8 % LTC) and MR7 (0.45 %, 0.7 %) of the cash delta at the mark are
    # reproduced exactly, so MMR and IMR hold to 1e-9 (the acceptance asks 1e-5)
    _, res = reproduced
    units = res.tables["risk_units"].set_index("risk_unit")
    for name, pub in UNITS.items():
        row = units.loc[name]
        assert row["mr4"] == pytest.approx(float(pub["mr4"]), rel=1e-9)
        assert row["mr7"] == pytest.approx(float(pub["mr7"]), rel=1e-9)
        assert row["mr7"] < row["mmr"]  # the minimum charge does not bind here
        assert row["mmr"] == pytest.approx(float(pub["mmr"]), rel=1e-9)
        assert row["imr"] == pytest.approx(float(pub["imr"]), rel=1e-9)
    acct = res.tables["margin"].set_index("account_id").loc[ACCOUNT]
    assert acct["venue"] == "okx" and acct["currency"] == "USD"
    # derivatives MMR (derivMmr) and IMR (Σ unit IMR; totalImr adds the borrowing IMR, out of scope)
    assert acct["mm"] == pytest.approx(float(RESP["derivMmr"]), rel=1e-9)
    assert acct["im"] == pytest.approx(sum(float(u["imr"]) for u in UNITS.values()), rel=1e-9)
    assert acct["mm_usd"] == acct["mm"] and acct["im_usd"] == acct["im"]


def test_the_old_rules_miss_the_example(tmp_path):
    # without MR4 on perpetuals MMR falls 1.6 % (BTC) and 4.3 % (LTC) short of the published one;
    # with the perpetuals shocked on their marks MR1 misses by more than the marks' rounding
    book = example_book(tmp_path)
    for params, term in ((okx.Params(mr4_kinds=("future",)), "mmr"), (okx.Params(index_shocked_kinds=()), "mr1")):
        p = okx.plan(book, params)
        stats, _ = execute(p, Engine("reference"))
        units = okx.finalize(p, stats).tables["risk_units"].set_index("risk_unit")
        for name, pub in UNITS.items():
            gap = 1.0 - units.loc[name, term] / float(pub[term])
            assert abs(gap) > 1e-5, (term, name, gap)
