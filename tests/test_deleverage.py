"""Deleveraging plans: after the transfers and the orders, the full venue model recomputed here shows every
planned row at or above its target; no order increases or flips a position; lots are respected."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import gpurisk.margin as gm
from gpurisk.actions import deleverage as D
from gpurisk.actions.source import book_tables, make_book, read_source
from gpurisk.actions.transfers import apply_transfers, venue_targets


@pytest.fixture(scope="module")
def margin_folder(tmp_path_factory):
    """A sample book with venue calls that collateral cannot cover, margined by the venue model."""
    from gpurisk.cli import main
    from gpurisk.generate import generate_book
    from gpurisk.io import TABLES, write_book

    tmp = tmp_path_factory.mktemp("delev")
    g = generate_book(200, 11)
    write_book(tmp / "book", {k: g[k] for k in TABLES}, g["meta"])
    assert main(["margin", str(tmp / "book"), "--model", "venue", "--out", str(tmp / "m"), "--backend", "cpu"]) == 0
    return tmp


@pytest.fixture(scope="module")
def plan(margin_folder):
    src = read_source(margin_folder / "m")
    return src, D.plan_deleverage(src, D.DeleverageParams(), backend="cpu")


def test_every_planned_row_meets_its_target_when_the_full_model_is_recomputed(plan):
    src, p = plan
    assert len(p.rows) > 0 and p.rows["held"].all() and len(p.orders) > 0
    clean, as_of, _ = book_tables(src.book_path)
    # apply the transfers and the orders here, independently of the planner's own bookkeeping
    bal = apply_transfers(clean["balances"], p.transfers)
    pos = clean["positions"].copy()
    for c in ("account_id", "instrument_id"):
        pos[c] = pos[c].astype(str)
    ins = clean["instruments"].set_index("instrument_id")
    mark = clean["market"].set_index("instrument_id")["underlying_price"]
    cash = []
    for o in p.orders.itertuples():  # a few orders
        i = np.flatnonzero((pos["account_id"] == o.account_id) & (pos["instrument_id"] == o.instrument_id))[0]
        pos.loc[pos.index[i], "quantity"] = o.position_after
        spot = ins.loc[o.instrument_id, "kind"] == "spot"
        proceeds = (o.position_before - o.position_after) * ins.loc[o.instrument_id, "contract_size"] * mark[
            o.instrument_id] if spot else 0.0
        cash.append((o.account_id, o.venue, D.CASH, proceeds - o.expected_cost_usd))
    bal = pd.concat([bal, pd.DataFrame(cash, columns=["account_id", "venue", "asset", "amount"])])
    bal = bal.groupby(["account_id", "venue", "asset"], as_index=False)["amount"].sum()
    accounts = sorted(set(p.rows["account_id"]))
    m = gm.compute(make_book(clean, as_of, accounts=accounts, positions=pos, balances=bal), "venue",
                   backend="reference").margin
    m = m.assign(target=venue_targets(m, D.DeleverageParams().buffer)).set_index(["account_id", "venue"])
    rows = p.rows.set_index(["account_id", "venue"])
    got = m.loc[rows.index]
    assert (got["equity_usd"] >= got["target"] * (1 - 1e-12)).all()
    np.testing.assert_allclose(got["im_usd"], rows["im_after_usd"], rtol=1e-9)
    assert (got["status"] == "ok").all()
    # before: every row was short of its target
    assert (rows["equity_before_usd"] < rows["target_before_usd"]).all()


def test_no_order_increases_or_flips_a_position_and_lots_hold(plan):
    _, p = plan
    o = p.orders
    b, a = o["position_before"].to_numpy(), o["position_after"].to_numpy()
    assert (np.abs(a) < np.abs(b)).all()
    assert ((a == 0) | (np.sign(a) == np.sign(b))).all()
    assert (o["side"] == np.where(b > 0, "sell", "buy")).all()
    np.testing.assert_allclose(o["quantity"], np.abs(b - a))
    # a partial order is whole lots (options 0.1, futures and perpetuals 1 contract); a full close is the position
    partial = o[a != 0]
    is_option = partial["instrument_id"].str.rsplit("-", n=1).str[-1].isin(["C", "P"])
    step = np.where(is_option, 0.1, 1.0)
    ratio = partial["quantity"].to_numpy() / step
    assert np.allclose(ratio, np.round(ratio), atol=1e-6)


def test_orders_follow_the_ranking_and_report_costs(plan):
    _, p = plan
    for _, g in p.orders.groupby(["account_id", "venue"]):
        g = g.sort_values("rank")
        assert (np.diff(g["score"].to_numpy()) <= 1e-12).all()
    assert (p.orders["cost_per_unit_usd"] > 0).all()
    np.testing.assert_allclose(p.orders["expected_cost_usd"], p.orders["quantity"] * p.orders["cost_per_unit_usd"])
    assert p.summary["expected_cost_usd"] == pytest.approx(p.orders["expected_cost_usd"].sum())
    assert len(p.orders["idempotency_key"].unique()) == len(p.orders)
    assert set(p.adl["account_id"]) <= set(p.rows["account_id"])


def test_cli_plan_deleverage_writes_its_tables(margin_folder, capsys):
    from gpurisk.cli import main

    out = margin_folder / "d"
    assert main(["plan", "deleverage", str(margin_folder / "m"), "--out", str(out), "--backend", "cpu"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["held"] == s["rows"] > 0
    for f in ("orders.parquet", "orders.jsonl", "deleverage.parquet", "transfers.parquet", "adl.parquet"):
        assert (out / f).is_file()
    assert "verified" in capsys.readouterr().out


def test_params_are_checked():
    with pytest.raises(ValueError):
        D.DeleverageParams(lots={"X": 0.0})
    with pytest.raises(ValueError):
        D.DeleverageParams(max_iterations=0)
