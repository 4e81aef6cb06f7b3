"""Deleveraging plans: reduce-only orders for the venue rows that collateral cannot cover, verified by the full model.

Starting point: the transfer plan (``actions.transfers``) of the run, applied; the venue rows it leaves
short of their target T = max((1 + buffer)·IM, call line) (the replica's IM and equity) are the rows to
deleverage. For each, the positions held at that venue are ranked by **marginal ES per unit of
liquidation cost**:

* marginal ES per contract: the house model's Euler marginal of the position (``actions.attribution``,
  ``es_<q>``: the binding component), times the sign of the position, i.e. how much the account's ES falls
  per contract reduced (a position whose reduction would raise ES ranks after every one that lowers it);
* liquidation cost per contract: the half-spread (``half_spread_bps`` of the delta notional, by instrument
  kind) plus the liquidity add-on's square-root impact, Y·σ_u·|δ|·sqrt(|q·δ| / ADV_u) (the house's own
  Y, σ_u and ADV_u, ``margin.house``).

Orders are taken in that order until their estimated ES reduction reaches the row's shortfall times a
factor that doubles at every iteration; quantities are whole lot steps (``lot_step`` by kind, ``lots`` by
instrument), never more than the position (an order never increases a position or flips it). Each
iteration applies the orders to the book (spot sold or bought back settles in USDT at that venue; the
estimated cost is paid from it) and **recomputes the venue model** (``gpurisk.margin.compute``, the full
replica, not the linear estimate) on the accounts concerned; a row is done when its recomputed equity
reaches its recomputed target. The last iteration closes every position at the venue; a row still short
then is reported with its cause (its equity is below the requirement of an empty book there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .attribution import COLLATERAL_PREFIX
from .source import RunSource, book_tables, make_book
from .transfers import TransferParams, apply_transfers, build_inputs, idempotency_keys, plan_transfers, venue_targets

#: settlement asset of spot proceeds and of the estimated liquidation cost
CASH = "USDT"
ORDER_COLUMNS = ["account_id", "venue", "instrument_id", "side", "quantity", "position_before", "position_after",
                 "marginal_es_per_unit_usd", "cost_per_unit_usd", "score", "rank", "expected_cost_usd",
                 "idempotency_key"]


def _kinds() -> dict:
    return {"spot": 5.0, "future": 5.0, "perpetual": 5.0, "option": 100.0}


def _lots() -> dict:
    return {"spot": 1e-6, "future": 1.0, "perpetual": 1.0, "option": 0.1}


@dataclass(frozen=True)
class DeleverageParams:
    """buffer: target = (1 + buffer)·IM (at least the call line); half_spread_bps: by instrument kind, of the
    delta notional; lot_step: contracts by kind; lots: contracts by instrument id (overrides); max_iterations:
    rounds of verification (the last closes every position at the venue)."""

    buffer: float = 0.05
    half_spread_bps: dict[str, float] = field(default_factory=_kinds)
    lot_step: dict[str, float] = field(default_factory=_lots)
    lots: dict[str, float] = field(default_factory=dict)
    max_iterations: int = 6

    def __post_init__(self):
        if not (0.0 <= self.buffer < math.inf):
            raise ValueError(f"buffer must be a finite number >= 0, got {self.buffer}")
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be >= 1")
        for k, v in {**self.lot_step, **self.lots}.items():
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"lot step of {k} must be a positive number, got {v}")
        for k, v in self.half_spread_bps.items():
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"half_spread_bps of {k} must be >= 0, got {v}")


def load_params(path, buffer: float | None = None) -> DeleverageParams:
    from ..fileio import read_toml
    from ..margin.params import build

    data = {} if path is None else read_toml(path, "deleverage parameter file")
    if buffer is not None:
        data = {**data, "buffer": float(buffer)}
    return build(DeleverageParams, data, str(path) if path is not None else "--buffer")


@dataclass
class DeleveragePlan:
    """orders (one row per reduce-only order), rows (each venue row deleveraged: margin before and after,
    recomputed), transfers (the transfer plan it starts from), adl (the venues' ADL ranks of the
    accounts' positions) and a summary."""

    orders: pd.DataFrame
    rows: pd.DataFrame
    transfers: pd.DataFrame
    adl: pd.DataFrame
    summary: dict


def _model_params(module, data: dict | None):
    from ..margin.params import build

    if not data:
        return module.load_params(None)
    try:
        return build(module.Params, data, "the run's recorded parameters")
    except ConfigError:
        return module.load_params(None)


def _venue_margin(book, vparams, backend, buffer):
    """The venue model on ``book``: its margin table with the target of every row."""
    from ..margin import compute

    m = compute(book, "venue", params=vparams, backend=backend).margin
    m = m[m["status"] != "uncovered"].copy()
    m["target"] = venue_targets(m, buffer)
    m["account_id"] = m["account_id"].astype(str)
    m["venue"] = m["venue"].astype(str)
    return m.set_index(["account_id", "venue"])


def _candidates(book, clean, accounts, house_params, backend, market, params) -> pd.DataFrame:
    """Every position of ``accounts`` with its marginal ES per contract, liquidation cost per contract, kind,
    lot step and the data to settle it (contract size, mark)."""
    from .attribution import compute as attributed, row_labels

    res, plan = attributed(book, "house", params=house_params, backend=backend, market=market, return_plan=True)
    ctx = plan.context
    q = f"es_{_level(ctx.params.confidence)}"
    att = res.tables["attribution"]
    att = att[(att["measure"] == q) & ~att["instrument_id"].astype(str).str.startswith(COLLATERAL_PREFIX)]
    marg = att.groupby(["account_id", "instrument_id"], sort=False)["marginal_per_unit"].first()
    labels = row_labels("house", plan)
    row_of = pd.Series(np.arange(len(labels)), index=pd.Index(labels.astype(str)))
    pos = clean["positions"]
    pos = pos[pos["account_id"].astype(str).isin(accounts) & (pos["quantity"] != 0)]
    ins = clean["instruments"].set_index("instrument_id")
    mk = clean["market"].set_index("instrument_id")
    out = pd.DataFrame({"account_id": pos["account_id"].astype(str).to_numpy(dtype=object),
                        "instrument_id": pos["instrument_id"].astype(str).to_numpy(dtype=object),
                        "quantity": pos["quantity"].to_numpy(np.float64)})
    out = out.groupby(["account_id", "instrument_id"], as_index=False, sort=True)["quantity"].sum()
    iid = out["instrument_id"]
    out["venue"] = ins.loc[iid, "venue"].astype(str).to_numpy(dtype=object)
    out["kind"] = ins.loc[iid, "kind"].astype(str).to_numpy(dtype=object)
    out["contract_size"] = ins.loc[iid, "contract_size"].to_numpy(np.float64)
    out["mark"] = mk.loc[iid, "underlying_price"].to_numpy(np.float64)
    m = marg.reindex(pd.MultiIndex.from_arrays([out["account_id"], iid])).to_numpy(np.float64)
    out["marginal_es"] = np.nan_to_num(m)
    rows = row_of.reindex(iid).to_numpy()
    ok = ~np.isnan(rows)
    r = np.where(ok, rows, 0).astype(np.int64)
    delta = np.where(ok, ctx.delta[r], 0.0)
    u = ctx.und_code[r]
    sigma = np.where(ok, ctx.liq_sigma[u], 0.0)
    adv = np.where(ok, ctx.liq_adv[u], np.inf)
    notional = np.abs(out["quantity"].to_numpy() * delta)
    bps = out["kind"].map(params.half_spread_bps).fillna(0.0).to_numpy(np.float64)
    impact = ctx.params.liquidity_coefficient * sigma * np.abs(delta) * np.sqrt(notional / adv)
    out["cost"] = bps * 1e-4 * np.abs(delta) + impact
    out["delta"] = delta
    # ES falls per contract reduced by sign(q)·marginal; the ranking prefers the most reduction per cost
    benefit = np.sign(out["quantity"].to_numpy()) * out["marginal_es"].to_numpy()
    out["benefit"] = benefit
    risk = np.abs(delta) * np.maximum(sigma, 1e-12)  # a tie-break where ES does not fall
    out["score"] = np.where(benefit > 0, benefit / np.maximum(out["cost"], 1e-12), 0.0)
    out["tiebreak"] = risk / np.maximum(out["cost"], 1e-12)
    lots = out["kind"].map(params.lot_step).fillna(1.0).to_numpy(np.float64)
    over = iid.map(params.lots)
    out["lot"] = np.where(over.notna(), over.to_numpy(dtype=np.float64, na_value=1.0), lots)
    return out


def _level(q: float) -> str:
    from ..tail import level_name

    return level_name(q)


def _orders(cand: pd.DataFrame, need: pd.Series, factor: float, close_all: bool) -> pd.DataFrame:
    """Reduce-only orders per (account, venue) in ``need`` (USD shortfall): ranked candidates taken until
    their estimated ES reduction reaches need × factor (all of them with ``close_all``); lot-rounded."""
    c = cand.merge(need.rename("need").reset_index(), on=["account_id", "venue"], how="inner")
    c = c.sort_values(["account_id", "venue", "score", "tiebreak"], ascending=[True, True, False, False],
                      kind="stable").reset_index(drop=True)
    absq = np.abs(c["quantity"].to_numpy())
    est = np.maximum(c["benefit"].to_numpy(), 0.0) * absq  # ES reduction of a full close
    key = c["account_id"] + "\x1f" + c["venue"]
    cum = pd.Series(est).groupby(key.to_numpy(), sort=False).cumsum().to_numpy()
    before = cum - est
    goal = c["need"].to_numpy() * factor
    if close_all:
        take = absq
    else:
        # full closes while the goal is not reached; the one that crosses it partly; the rest none
        full = cum <= goal
        part = (before < goal) & ~full
        per = np.maximum(c["benefit"].to_numpy(), 1e-300)
        want = np.where(full, absq, np.where(part, (goal - before) / per, 0.0))
        # positions that cannot lower ES join only after every one that can, when those fall short
        short_total = pd.Series(est).groupby(key.to_numpy(), sort=False).transform("sum").to_numpy() < goal
        fill = short_total & (c["benefit"].to_numpy() <= 0)
        frac = np.minimum(factor / 8.0, 1.0)  # a growing share of them, round by round
        want = np.where(fill, absq * frac, want)
        take = np.minimum(want, absq)
    lot = c["lot"].to_numpy()
    take = np.where(take >= absq, absq, np.minimum(np.ceil(take / lot - 1e-9) * lot, absq))
    c["take"] = take
    c["rank"] = c.groupby(["account_id", "venue"], sort=False).cumcount() + 1
    return c[c["take"] > 0].reset_index(drop=True)


def _apply(clean: dict, orders: pd.DataFrame, balances: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(positions, balances) after the orders: positions reduced toward 0; spot proceeds and the expected cost
    settle in ``CASH`` at the venue."""
    pos = clean["positions"].copy()
    pos["account_id"] = pos["account_id"].astype(str)
    pos["instrument_id"] = pos["instrument_id"].astype(str)
    if orders.empty:
        return pos, balances
    d = orders.assign(dq=-np.sign(orders["quantity"]) * orders["take"])
    delta = d.groupby(["account_id", "instrument_id"])["dq"].sum()
    idx = pd.MultiIndex.from_arrays([pos["account_id"], pos["instrument_id"]])
    n = pos.groupby(["account_id", "instrument_id"]).cumcount().to_numpy() == 0  # the first row of a pair takes it
    pos["quantity"] = pos["quantity"].to_numpy() + np.where(n, delta.reindex(idx).fillna(0.0).to_numpy(), 0.0)
    spot = d["kind"].to_numpy() == "spot"
    cash = np.where(spot, -d["dq"].to_numpy() * d["contract_size"].to_numpy() * d["mark"].to_numpy(), 0.0)
    cash = cash - d["take"].to_numpy() * d["cost"].to_numpy()
    moves = pd.DataFrame({"account_id": d["account_id"], "venue": d["venue"], "asset": CASH, "amount": cash})
    b = pd.concat([balances[["account_id", "venue", "asset", "amount"]], moves], ignore_index=True)
    for col in ("account_id", "venue", "asset"):
        b[col] = b[col].astype(str)
    b = b.groupby(["account_id", "venue", "asset"], as_index=False, sort=True)["amount"].sum()
    return pos, b


def plan_deleverage(src: RunSource, params: DeleverageParams | None = None,
                    transfer_params: TransferParams | None = None, backend="auto", market=None) -> DeleveragePlan:
    """The deleveraging plan of a run (module docstring), every row verified by recomputing the venue model."""
    from ..margin import venue as venue_model
    from ..margin import house as house_model
    from .adl import adl_ranks

    params = params or DeleverageParams()
    tparams = transfer_params or TransferParams(buffer=params.buffer)
    clean, as_of, _ = book_tables(src.book_path)
    prices = dict(zip(clean["index"]["underlying"].astype(str), clean["index"]["price"].astype(float)))
    inp = build_inputs(src.venue_margin, clean["balances"], prices, tparams, src.bands, src.house_margin)
    tplan = plan_transfers(inp, tparams, src.run_id)
    short = tplan.venues[tplan.venues["shortfall_after_usd"] > 1e-9 * np.maximum(tplan.venues["target_usd"], 1.0)]
    accounts = sorted(set(short["account_id"].astype(str)))
    empty_rows = pd.DataFrame(columns=["account_id", "venue", "im_before_usd", "im_after_usd", "equity_before_usd",
                                       "equity_after_usd", "target_before_usd", "target_after_usd", "status_before",
                                       "status_after", "held", "iterations", "orders", "expected_cost_usd", "cause"])
    summary = {"run_id": src.run_id, "buffer": params.buffer, "rows": 0, "accounts": len(accounts), "held": 0,
               "orders": 0, "expected_cost_usd": 0.0, "transfer_plan": tplan.summary}
    if not accounts:
        return DeleveragePlan(pd.DataFrame(columns=ORDER_COLUMNS), empty_rows, tplan.transfers,
                              pd.DataFrame(), summary)
    bal1 = apply_transfers(clean["balances"], tplan.transfers[tplan.transfers["account_id"].isin(accounts)])
    vparams = _model_params(venue_model, src.venue_params)
    hparams = _model_params(house_model, src.house_params)
    book1 = make_book(clean, as_of, accounts=accounts, balances=bal1)
    m1 = _venue_margin(book1, vparams, backend, params.buffer)
    keys = pd.MultiIndex.from_arrays([short["account_id"].astype(str), short["venue"].astype(str)])
    keys = keys[keys.isin(m1.index)]
    before = m1.loc[keys]
    need = (before["target"] - before["equity_usd"]).clip(lower=0.0)
    todo = need[need > 0]
    cand = _candidates(book1, clean, accounts, hparams, backend, market, params)
    done_orders, done_rows = [], []
    after = None
    pending = todo
    for it in range(1, params.max_iterations + 1):
        if pending.empty:
            break
        last = it == params.max_iterations
        orders = _orders(cand, pending, (1.0 + params.buffer) * 2.0 ** (it - 1), close_all=last)
        pos2, bal2 = _apply(clean, orders, bal1)
        book2 = make_book(clean, as_of, accounts=sorted(set(pending.index.get_level_values(0))), positions=pos2,
                          balances=bal2)
        m2 = _venue_margin(book2, vparams, backend, params.buffer).reindex(pending.index)
        held = (m2["equity_usd"] >= m2["target"] * (1 - 1e-12)).to_numpy()
        okk = pending.index[held]
        if last:
            okk = pending.index
        if len(okk):
            sel = pd.MultiIndex.from_arrays([orders["account_id"], orders["venue"]]).isin(okk)
            done_orders.append(orders[sel].assign(iteration=it))
            done_rows.append(m2.loc[okk].assign(iteration=it))
        pending = pending[~pending.index.isin(okk)]
    orders = pd.concat(done_orders, ignore_index=True) if done_orders else pd.DataFrame()
    # the final check: every row's orders together, recomputed once more
    pos_f, bal_f = _apply(clean, orders, bal1) if len(orders) else (clean["positions"], bal1)
    book_f = make_book(clean, as_of, accounts=sorted(set(before.index.get_level_values(0))), positions=pos_f,
                       balances=bal_f)
    after = _venue_margin(book_f, vparams, backend, params.buffer).reindex(before.index)
    held = after["equity_usd"] >= after["target"] * (1 - 1e-12)
    n_orders = orders.groupby(["account_id", "venue"]).size() if len(orders) else pd.Series(dtype=int)
    cost = (orders["take"] * orders["cost"]).groupby([orders["account_id"], orders["venue"]]).sum() if len(
        orders) else pd.Series(dtype=float)
    iters = pd.concat(done_rows)["iteration"] if done_rows else pd.Series(dtype=int)
    rows = pd.DataFrame({
        "account_id": before.index.get_level_values(0).to_numpy(dtype=object),
        "venue": before.index.get_level_values(1).to_numpy(dtype=object),
        "im_before_usd": before["im_usd"].to_numpy(), "im_after_usd": after["im_usd"].to_numpy(),
        "equity_before_usd": before["equity_usd"].to_numpy(), "equity_after_usd": after["equity_usd"].to_numpy(),
        "target_before_usd": before["target"].to_numpy(), "target_after_usd": after["target"].to_numpy(),
        "status_before": before["status"].astype(str).to_numpy(dtype=object),
        "status_after": after["status"].astype(str).to_numpy(dtype=object),
        "held": held.to_numpy(),
        "iterations": iters.reindex(before.index).fillna(0).astype(int).to_numpy(),
        "orders": n_orders.reindex(before.index).fillna(0).astype(int).to_numpy(),
        "expected_cost_usd": cost.reindex(before.index).fillna(0.0).to_numpy(),
    })
    rows["cause"] = np.where(rows["held"], np.where(need.reindex(before.index).to_numpy() > 0, "", "covered by the transfers"),
                             "short even with every position at the venue closed (equity below the requirement "
                             "of an empty book there)").astype(object)
    out = pd.DataFrame(columns=ORDER_COLUMNS)
    if len(orders):
        q = orders["quantity"].to_numpy()
        out = pd.DataFrame({
            "account_id": orders["account_id"].to_numpy(dtype=object), "venue": orders["venue"].to_numpy(dtype=object),
            "instrument_id": orders["instrument_id"].to_numpy(dtype=object),
            "side": np.where(q > 0, "sell", "buy").astype(object), "quantity": orders["take"].to_numpy(),
            "position_before": q, "position_after": q - np.sign(q) * orders["take"].to_numpy(),
            "marginal_es_per_unit_usd": orders["benefit"].to_numpy(), "cost_per_unit_usd": orders["cost"].to_numpy(),
            "score": orders["score"].to_numpy(), "rank": orders["rank"].to_numpy(np.int64),
            "expected_cost_usd": (orders["take"] * orders["cost"]).to_numpy(),
        })
        key_frame = pd.DataFrame({"account_id": out["account_id"], "from_venue": out["venue"],
                                  "to_venue": out["side"], "asset": out["instrument_id"], "amount": out["quantity"]})
        out["idempotency_key"] = idempotency_keys(src.run_id + "|deleverage", key_frame)
        out = out[ORDER_COLUMNS]
    adl = adl_ranks(clean, src.venue_margin, accounts=accounts, book_path=src.book_path)
    summary.update(rows=int(len(rows)), held=int(rows["held"].sum()), orders=int(len(out)),
                   expected_cost_usd=float(out["expected_cost_usd"].sum()) if len(out) else 0.0,
                   not_held=int((~rows["held"]).sum()))
    return DeleveragePlan(out, rows, tplan.transfers, adl, summary)


__all__ = ["DeleverageParams", "DeleveragePlan", "load_params", "plan_deleverage", "ORDER_COLUMNS", "CASH"]
