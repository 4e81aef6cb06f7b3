"""Transfer-planning time of a run: ``gpurisk.actions.transfers.plan_transfers`` on a synthetic book.

    python benchmarks/planning.py [--accounts 100000] [--deficit-share 0.2] [--costs none|fees|fixed]
                                  [--json FILE]

Each account has 2-4 venue sub-accounts holding 1-3 assets (stablecoins, BTC, ETH); a share of the
venue rows is short of its predicted IM (``--deficit-share`` of the accounts). ``--costs``:

* ``none``: no fee, haircut or rule: every account goes through the vectorised greedy (the closed form);
* ``fees``: a proportional fee on every route and haircuts at one venue: every account with a need is an
  LP, solved in batches of accounts (one HiGHS call per batch);
* ``fixed``: a fixed network fee on BTC and a minimum size: a MILP per batch.

It prints the wall seconds of building the inputs, planning (greedy / LP split) and writing the outputs,
and checks the plan's own figures (need = covered + shortfall; no venue made worse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

VENUES = np.array(["deribit", "okx", "binance", "bybit"], dtype=object)
ASSETS = np.array(["USDT", "USDC", "BTC", "ETH"], dtype=object)
PRICES = {"BTC": 95_000.0, "ETH": 3_400.0}


def synthetic(n_accounts: int, deficit_share: float, seed: int = 0):
    """(venue margin table, balances) of n_accounts accounts, vectorised."""
    rng = np.random.default_rng(seed)
    n_v = rng.integers(2, 5, n_accounts)
    acct = np.repeat(np.arange(n_accounts), n_v)
    # distinct venues per account: a random rotation of the four
    start = rng.integers(0, 4, n_accounts)[acct]
    pos = np.arange(len(acct)) - np.repeat(np.cumsum(n_v) - n_v, n_v)
    venue = VENUES[(start + pos) % 4]
    im = rng.uniform(0, 50_000, len(acct))
    n_a = rng.integers(1, 4, len(acct))
    row = np.repeat(np.arange(len(acct)), n_a)
    a0 = rng.integers(0, 4, len(acct))[row]
    apos = np.arange(len(row)) - np.repeat(np.cumsum(n_a) - n_a, n_a)
    asset = ASSETS[(a0 + apos) % 4]
    usd = rng.uniform(0, 40_000, len(row))
    price = pd.Series(asset).map({**PRICES, "USDT": 1.0, "USDC": 1.0}).to_numpy()
    eq = np.bincount(row, weights=usd, minlength=len(acct))
    short = rng.random(n_accounts) < deficit_share
    scale = np.where(short[acct] & (pos == 0), 0.3, 1.0)  # the first venue of a short account holds too little
    usd = usd * scale[row]
    eq = np.bincount(row, weights=usd, minlength=len(acct))
    im = np.where(short[acct] & (pos == 0), eq * 1.8 + 1_000.0, np.minimum(im, 0.7 * eq))
    names = np.array([f"ACC{i:07d}" for i in range(n_accounts)], dtype=object)
    vm = pd.DataFrame({"account_id": names[acct], "venue": venue, "im_usd": im, "mm_usd": 0.8 * im, "equity_usd": eq})
    vm["status"] = np.where(vm["equity_usd"] >= vm["im_usd"], "ok", "call").astype(object)
    bal = pd.DataFrame({"account_id": names[acct][row], "venue": venue[row], "asset": asset, "amount": usd / price})
    return vm, bal


def params_for(costs: str):
    from gpurisk.actions import transfers as T

    if costs == "none":
        return T.TransferParams()
    rules = {"okx": T.VenueRule(haircut={"BTC": 0.95, "ETH": 0.9})}
    if costs == "fees":
        return T.TransferParams(venues=rules, routes=(T.Route(fee_rate=0.0005),))
    rules["deribit"] = T.VenueRule(min_transfer={"BTC": 0.01})
    return T.TransferParams(venues=rules, routes=(T.Route(fee_rate=0.0005), T.Route(asset="BTC", fee_fixed=0.0001)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--deficit-share", type=float, default=0.2)
    ap.add_argument("--costs", choices=("none", "fees", "fixed"), default="none")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from gpurisk.actions import transfers as T

    vm, bal = synthetic(a.accounts, a.deficit_share)
    params = params_for(a.costs)
    t0 = time.perf_counter()
    inp = T.build_inputs(vm, bal, PRICES, params)
    t1 = time.perf_counter()
    plan = T.plan_transfers(inp, params, "bench")
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        T.write_plan(plan, d)
    t3 = time.perf_counter()
    acc = plan.accounts
    assert np.allclose(acc["need_usd"], acc["covered_usd"] + acc["shortfall_usd"], rtol=1e-9, atol=1e-6)
    v = plan.venues
    assert (v["counted_after_usd"] >= np.minimum(v["counted_before_usd"], v["target_usd"])
            - 1e-6 * np.maximum(v["target_usd"], 1.0)).all()
    out = {"accounts": a.accounts, "venue_rows": int(len(vm)), "balance_rows": int(len(bal)), "costs": a.costs,
           "cpus": os.cpu_count(), "inputs_s": t1 - t0, "plan_s": t2 - t1, "write_s": t3 - t2, "total_s": t3 - t0,
           **{k: plan.summary[k] for k in ("accounts_greedy", "accounts_lp", "lp_solver_calls", "milp", "transfers",
                                            "infeasible_accounts", "moved_usd", "cost_usd")},
           "plan_split_s": plan.summary["seconds"]}
    print(json.dumps(out, indent=1, default=float))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
