"""Collateral transfer plans: move collateral between an account's venue sub-accounts so that every venue's
equity covers its predicted requirement plus a buffer, at least cost.

Per account, with venues v (the venue model's rows: the replicas' predicted IM), optional treasury
venues (wallets that only give), assets k at index price p_k and balances b_{v,k}:

* target T_v = max((1 + buffer)·IM_v, call line_v) (the call line is the venue's own band, e.g.
  1.5 × MM on Binance, where it is above IM: the plan prevents the venue's call);
* counted equity CE_v = equity_v − Σ_k (1 − h_{v,k})·p_k·b⁺_{v,k}, h_{v,k} the receiving venue's
  collateral rate (0 where the asset is not eligible there, 1 by default);
* flows x_{u→v,k} ≥ 0 (asset units), received x·(1 − rate) − fixed (route fees by asset and network).

Linear program (HiGHS through ``scipy.optimize.linprog``; ``milp`` with binaries y when a fixed fee or a
minimum size is set):

    minimise   M·Σ_v z_v + Σ p_k·(rate·x + fixed·y) [+ Σ p_k·x with no fee at all: the least USD moved]
    subject to CE_v + ΔCE_v + z_v ≥ T_v                 every venue covered, or short by z_v ≥ 0
               CE_v + ΔCE_v ≥ min(CE_v, T_v)            no venue made worse
               Σ_v x_{u→v,k} ≤ b⁺_{u,k}                 only what is held moves
               Σ_{v,k} p_k·x_{u→v,k} ≤ W_u              withdrawal limit of venue u (USD)
               m_{u,k}·y ≤ x ≤ b⁺_{u,k}·y               minimum size (MILP)
               Σ fees ≤ max(house excess, 0)           the house IM stays covered (the account's house
                                                        equity moves only by the fees)

with ΔCE_v = Σ_in h_{v,k}·p_k·(received) − Σ_out h_{v,k}·p_k·x, solved lexicographically (M → ∞): first the
least uncovered need Σ z per account, then, holding each account's shortfall there, the least cost; so an
infeasible account still gets its best partial plan, and its cost is exactly optimal.

Closed form (``method = greedy``): with no fee, no minimum size, every haircut 1 and every asset eligible,
each USD of deficit needs exactly one USD moved out of a venue's excess, so the least USD moved is
min(Σ excess, Σ deficit) and a greedy transport (largest excess to largest deficit, the intervals of
their cumulative sums matched) attains it with at most sources + sinks − 1 transfers (a basic solution;
minimising the count exactly is a bin-packing problem and is not attempted). It is vectorised over all
accounts at once; the LP cases are solved in batches of accounts (block-diagonal, one solver call each).

Infeasibility is reported per account with its cause: the total excess short of the total need, a
withdrawal limit binding, eligibility or haircuts, minimum sizes, or the house constraint; the best
partial plan is still given. Outputs (``write_plan``): ``transfers.parquet`` and ``transfers.jsonl``
(``account_id, from_venue, to_venue, asset, amount, amount_usd, fee_usd, reason, idempotency_key``; the
key is a SHA-256 of the run id and the row's content), ``venues_after.parquet`` (the predicted status of
every venue row before and after) and ``plan_accounts.parquet`` (need, covered, cost, cause), all USD.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..book import STABLECOINS
from ..errors import ConfigError
from ..margin.calls import CallParams, classify_bands

#: tie-break weight of the USD moved when fees are set (the least cost first, then the least moved)
MOVED_WEIGHT = 1e-6
#: flows below this share of the largest balance of the account are dropped as solver noise
FLOW_RTOL = 1e-9
#: relative optimality gap of the MILP (fixed fees, minimum sizes): the cost is optimal to this share
MIP_REL_GAP = 1e-7
#: variables per MILP call: accounts are independent, and branch and bound over one large block-diagonal
#: MILP is far slower than over many small ones (measured: docs/benchmarks.md, "Transfer planning")
MILP_BATCH_VARS = 200
#: relative slack of the checks on a solved plan
CHECK_RTOL = 1e-7

TRANSFER_COLUMNS = ["account_id", "from_venue", "to_venue", "asset", "amount", "amount_usd", "fee_usd", "reason",
                    "idempotency_key"]
UNITS = {"transfers": {"amount": "asset", "amount_usd": "USD", "fee_usd": "USD"}}


@dataclass(frozen=True)
class VenueRule:
    """What a venue accepts: ``eligible`` assets (empty = every asset), ``haircut`` (collateral rate per asset,
    default 1), ``max_withdraw_usd`` (per account and plan), ``min_transfer`` (asset units per transfer out)."""

    eligible: tuple[str, ...] = ()
    haircut: dict[str, float] = field(default_factory=dict)
    max_withdraw_usd: float = math.inf
    min_transfer: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        for k, v in self.haircut.items():
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"haircut of {k} must lie in [0, 1], got {v}")
        for k, v in self.min_transfer.items():
            if not (v >= 0.0 and math.isfinite(v)):
                raise ValueError(f"min_transfer of {k} must be a finite number >= 0, got {v}")
        if not (self.max_withdraw_usd >= 0.0):
            raise ValueError(f"max_withdraw_usd must be >= 0, got {self.max_withdraw_usd}")

    def rate(self, asset: str) -> float:
        if self.eligible and asset not in self.eligible:
            return 0.0
        return float(self.haircut.get(asset, 1.0))


@dataclass(frozen=True)
class Route:
    """A fee schedule: transfers ``from_venue`` → ``to_venue`` of ``asset`` (``*`` matches any) over ``network``
    pay ``fee_fixed`` (asset units per transfer) plus ``fee_rate`` (share of the amount). The most specific
    matching route applies (fewest ``*``; the later one on a tie)."""

    from_venue: str = "*"
    to_venue: str = "*"
    asset: str = "*"
    network: str = ""
    fee_fixed: float = 0.0
    fee_rate: float = 0.0

    def __post_init__(self):
        if not (self.fee_fixed >= 0.0 and math.isfinite(self.fee_fixed)):
            raise ValueError(f"fee_fixed must be a finite number >= 0, got {self.fee_fixed}")
        if not (0.0 <= self.fee_rate < 1.0):
            raise ValueError(f"fee_rate must lie in [0, 1), got {self.fee_rate}")

    @property
    def specificity(self) -> int:
        return sum(x != "*" for x in (self.from_venue, self.to_venue, self.asset))


@dataclass(frozen=True)
class TransferParams:
    """buffer: target = (1 + buffer)·IM (and at least the venue's call line); treasury: venues that only give;
    venues: rules per venue; routes: fee schedules; lp_batch_vars: variables per LP call (accounts are
    batched up to it)."""

    buffer: float = 0.05
    treasury: tuple[str, ...] = ()
    venues: dict[str, VenueRule] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    lp_batch_vars: int = 20000

    def __post_init__(self):
        if not (0.0 <= self.buffer < math.inf):
            raise ValueError(f"buffer must be a finite number >= 0, got {self.buffer}")
        if self.lp_batch_vars < 1:
            raise ValueError("lp_batch_vars must be >= 1")

    def rule(self, venue: str) -> VenueRule:
        return self.venues.get(venue, _PLAIN)

    @property
    def has_fees(self) -> bool:
        return any(r.fee_fixed > 0 or r.fee_rate > 0 for r in self.routes)


_PLAIN = VenueRule()


def load_costs(path, buffer: float | None = None) -> TransferParams:
    """TransferParams from a costs file (TOML: ``buffer``, ``treasury``, ``[venues.NAME]`` rules,
    ``[[routes]]``), strictly; ``buffer`` overrides the file's."""
    from ..margin.params import build
    from ..fileio import read_toml

    data = {} if path is None else read_toml(path, "costs file")
    if buffer is not None:
        data = {**data, "buffer": float(buffer)}
    return build(TransferParams, data, str(path) if path is not None else "--buffer")


# ----------------------------------------------------------------------------- inputs


@dataclass
class PlanInputs:
    """The venue rows, nodes and holdings of every account, as flat arrays (USD; assets in units).

    nodes: one row per account × venue (margined venues and treasuries): ``account_id, venue, sink``
    (margined), ``equity`` (the replica's), ``counted`` (CE), ``target`` (T; 0 for a treasury),
    ``withdraw`` (W), plus the margin figures for the status after. holdings: ``node, asset, amount``
    (> 0, movable), ``price``.
    """

    nodes: pd.DataFrame
    holdings: pd.DataFrame
    bands: dict
    house_excess: pd.Series | None = None


def venue_targets(margin: pd.DataFrame, buffer: float) -> np.ndarray:
    """[n] T = max((1 + buffer)·IM, call line) of venue margin rows (the call line is IM without one)."""
    im = margin["im_usd"].to_numpy(dtype=np.float64)
    line = margin["call_line_usd"].to_numpy(dtype=np.float64) if "call_line_usd" in margin.columns else im
    return np.maximum((1.0 + buffer) * im, np.where(np.isfinite(line), line, im))


def build_inputs(venue_margin: pd.DataFrame, balances: pd.DataFrame, prices: dict, params: TransferParams,
                 bands: dict | None = None, house_margin: pd.DataFrame | None = None) -> PlanInputs:
    """Nodes and holdings from the venue model's ``margin`` table and the book's balances
    (``account_id, venue, asset, amount``; ``prices``: USD per unit of each asset, stablecoins 1).

    Rows at venues without a methodology (``uncovered``) take no part unless named as treasuries.
    """
    vm = venue_margin[venue_margin["status"] != "uncovered"]
    nodes = pd.DataFrame({
        "account_id": vm["account_id"].astype(str).to_numpy(dtype=object), "venue": vm["venue"].astype(str).to_numpy(dtype=object),
        "sink": True, "equity": vm["equity_usd"].to_numpy(np.float64), "im": vm["im_usd"].to_numpy(np.float64),
        "mm": vm["mm_usd"].to_numpy(np.float64), "target": venue_targets(vm, params.buffer),
        "status": vm["status"].astype(str).to_numpy(dtype=object),
    })
    bal = balances.assign(account_id=balances["account_id"].astype(str), venue=balances["venue"].astype(str),
                          asset=balances["asset"].astype(str))
    bal = bal.groupby(["account_id", "venue", "asset"], as_index=False, sort=True)["amount"].sum()
    if params.treasury:
        tre = bal[bal["venue"].isin(params.treasury)][["account_id", "venue"]].drop_duplicates()
        tre = tre.merge(nodes[["account_id", "venue"]], how="left", indicator=True)
        tre = tre[tre["_merge"] == "left_only"].drop(columns="_merge")
        nodes = pd.concat([nodes, tre.assign(sink=False, equity=0.0, im=0.0, mm=0.0, target=0.0, status="treasury")],
                          ignore_index=True)
        nodes.loc[nodes["venue"].isin(params.treasury), ["sink", "target"]] = [False, 0.0]
    nodes = nodes.sort_values(["account_id", "venue"], kind="stable").reset_index(drop=True)
    nodes["node"] = np.arange(len(nodes))
    ids = nodes["account_id"].to_numpy(dtype=object)
    nodes["acct"] = np.cumsum(np.r_[True, ids[1:] != ids[:-1]]) - 1 if len(ids) else np.zeros(0, np.int64)
    price = bal["asset"].map({**{a: 1.0 for a in STABLECOINS}, **dict(prices)})
    if price.isna().any():
        bad = sorted(set(bal.loc[price.isna(), "asset"]))
        raise ConfigError(f"balances hold asset(s) {bad} with no index price")
    bal["price"] = price.to_numpy(dtype=np.float64)
    held = bal.merge(nodes[["account_id", "venue", "node"]], on=["account_id", "venue"], how="inner")
    # counted equity: the venue's equity less the haircut part of what it holds (positive balances only)
    rate = _rates(params, held["venue"], held["asset"])
    cut = ((1.0 - rate) * held["price"] * np.maximum(held["amount"], 0.0)).to_numpy()
    nodes["counted"] = nodes["equity"].to_numpy() - np.bincount(held["node"].to_numpy(), weights=cut,
                                                                   minlength=len(nodes))
    nodes.loc[~nodes["sink"], "counted"] = 0.0
    nodes["withdraw"] = nodes["venue"].map({v: r.max_withdraw_usd for v, r in params.venues.items()}).fillna(
        math.inf).to_numpy(np.float64)
    holdings = held[held["amount"] > 0.0][["node", "asset", "amount", "price"]].reset_index(drop=True)
    house = None
    if house_margin is not None and len(house_margin):
        hm = house_margin.assign(account_id=house_margin["account_id"].astype(str))
        house = hm.set_index("account_id")["excess_usd"].astype(np.float64)
    return PlanInputs(nodes, holdings, dict(bands or {}), house)


def _per_pair(params: TransferParams, venue, asset, fn, default: float) -> np.ndarray:
    """[n] ``fn(rule, asset)`` of each (venue, asset), evaluated once per distinct pair (a few) and merged."""
    pairs = pd.DataFrame({"v": np.asarray(venue, dtype=object), "a": np.asarray(asset, dtype=object)})
    if not params.venues or pairs.empty:
        return np.full(len(pairs), default)
    u = pairs.drop_duplicates()
    u["r"] = [fn(params.rule(v), a) for v, a in zip(u["v"], u["a"])]  # distinct (venue, asset) pairs only
    return pairs.merge(u, on=["v", "a"], how="left")["r"].to_numpy(dtype=np.float64)


def _rates(params: TransferParams, venue, asset) -> np.ndarray:
    """[n] the collateral rate of each (venue, asset): 0 where not eligible, the haircut rate otherwise."""
    return _per_pair(params, venue, asset, VenueRule.rate, 1.0)


def _min_sizes(params: TransferParams, venue, asset) -> np.ndarray:
    """[n] the minimum size (asset units) of a transfer of ``asset`` out of ``venue``."""
    return _per_pair(params, venue, asset, lambda r, a: float(r.min_transfer.get(a, 0.0)), 0.0)


# ----------------------------------------------------------------------------- the closed form


def match_intervals(group_a: np.ndarray, len_a: np.ndarray, group_b: np.ndarray, len_b: np.ndarray):
    """Greedy transport within each group: sequences A and B (rows sorted by group, in the order to use)
    laid end to end; returns (i [m], j [m], length [m]) of the overlaps of their cumulative intervals up to
    min(ΣA, ΣB) per group, i and j global row indices. Vectorised over all groups."""
    group_a = np.asarray(group_a, dtype=np.int64)
    group_b = np.asarray(group_b, dtype=np.int64)
    la = np.maximum(np.asarray(len_a, dtype=np.float64), 0.0)
    lb = np.maximum(np.asarray(len_b, dtype=np.float64), 0.0)
    if len(la) == 0 or len(lb) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    G = int(max(group_a.max(), group_b.max())) + 1
    tot_a = np.bincount(group_a, weights=la, minlength=G)
    tot_b = np.bincount(group_b, weights=lb, minlength=G)
    cap = np.minimum(tot_a, tot_b)
    start_a = np.concatenate([[0], np.cumsum(np.bincount(group_a, minlength=G))])[:-1]
    start_b = np.concatenate([[0], np.cumsum(np.bincount(group_b, minlength=G))])[:-1]
    ca = _group_cumsum(group_a, la)
    cb = _group_cumsum(group_b, lb)
    ca = np.minimum(ca, cap[group_a])
    cb = np.minimum(cb, cap[group_b])
    val = np.concatenate([ca, cb])
    typ = np.concatenate([np.zeros(len(ca), np.int8), np.ones(len(cb), np.int8)])
    grp = np.concatenate([group_a, group_b])
    order = np.lexsort((typ, val, grp))
    val, typ, grp = val[order], typ[order], grp[order]
    first = np.r_[True, grp[1:] != grp[:-1]]
    prev = np.where(first, 0.0, np.r_[0.0, val[:-1]])
    length = val - prev
    is_a = (typ == 0).astype(np.int64)
    cnt_a = np.cumsum(is_a) - is_a  # A rows before this element, all groups
    cnt_b = np.cumsum(1 - is_a) - (1 - is_a)
    gstart = np.flatnonzero(first)
    gi = np.cumsum(first) - 1
    before_a = (cnt_a - cnt_a[gstart][gi])
    before_b = (cnt_b - cnt_b[gstart][gi])
    scale = np.maximum(cap[grp], 1.0)
    keep = length > 1e-12 * scale
    i = start_a[grp[keep]] + before_a[keep]
    j = start_b[grp[keep]] + before_b[keep]
    return i.astype(np.int64), j.astype(np.int64), length[keep]


def _group_cumsum(group: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Cumulative sum of x within each group (rows sorted by group), summed group by group (no running total
    across groups, which would cost a small group the digits of the large ones before it)."""
    return pd.Series(x).groupby(group, sort=False).cumsum().to_numpy()


def _asset_order(holdings: pd.DataFrame) -> np.ndarray:
    """Order of holdings within a node: stablecoins first, then the larger USD value first."""
    stable = holdings["asset"].isin(STABLECOINS).to_numpy()
    usd = (holdings["amount"] * holdings["price"]).to_numpy()
    return np.lexsort((-usd, ~stable, holdings["node"].to_numpy()))


def greedy_plan(inp: PlanInputs, nodes_mask: np.ndarray | None = None) -> pd.DataFrame:
    """Transfers of the closed-form accounts (no fees, haircuts 1, every asset eligible, no minimum size):
    largest excess to largest deficit, then each venue's outflow drawn from its assets in order.

    Returns rows ``node_from, node_to, asset, amount, usd`` (fees 0)."""
    nd = inp.nodes if nodes_mask is None else inp.nodes[nodes_mask]
    hd = inp.holdings[inp.holdings["node"].isin(nd["node"])]
    acct_code = pd.factorize(nd["account_id"], sort=True)[0]
    movable = np.bincount(hd["node"].to_numpy(), weights=(hd["amount"] * hd["price"]).to_numpy(),
                          minlength=len(inp.nodes))[nd["node"].to_numpy()]
    counted, target = nd["counted"].to_numpy(), nd["target"].to_numpy()
    excess = np.where(nd["sink"].to_numpy(), counted - target, np.inf)
    supply = np.clip(np.minimum(np.minimum(excess, movable), nd["withdraw"].to_numpy()), 0.0, None)
    need = np.where(nd["sink"].to_numpy(), np.maximum(target - counted, 0.0), 0.0)
    src = np.flatnonzero(supply > 0)
    snk = np.flatnonzero(need > 0)
    src = src[np.lexsort((-supply[src], acct_code[src]))]  # by account, the largest first
    snk = snk[np.lexsort((-need[snk], acct_code[snk]))]
    i, j, usd = match_intervals(acct_code[src], supply[src], acct_code[snk], need[snk])
    node_ids = nd["node"].to_numpy()
    n_from, n_to = node_ids[src[i]], node_ids[snk[j]]
    if len(usd) == 0:
        return pd.DataFrame({"node_from": np.zeros(0, np.int64), "node_to": np.zeros(0, np.int64),
                             "asset": np.zeros(0, object), "amount": np.zeros(0), "usd": np.zeros(0)})
    # each venue's outflows (in sink order) against its assets (stablecoins first): a second matching
    flows = pd.DataFrame({"node_from": n_from, "node_to": n_to, "usd": usd}).sort_values("node_from", kind="stable")
    order = _asset_order(hd)
    h = hd.iloc[order]
    ii, jj, part = match_intervals(flows["node_from"].to_numpy(), flows["usd"].to_numpy(), h["node"].to_numpy(),
                                   (h["amount"] * h["price"]).to_numpy())
    price = h["price"].to_numpy()[jj]
    amount = np.minimum(part / price, h["amount"].to_numpy()[jj])
    return pd.DataFrame({"node_from": flows["node_from"].to_numpy()[ii], "node_to": flows["node_to"].to_numpy()[ii],
                         "asset": h["asset"].to_numpy(dtype=object)[jj], "amount": amount, "usd": amount * price})


# ----------------------------------------------------------------------------- the LP / MILP


def _route_fees(params: TransferParams, v_from, v_to, asset) -> tuple[np.ndarray, np.ndarray]:
    """(fixed [n] asset units, rate [n]) of each flow from the most specific matching route (loops over routes)."""
    n = len(asset)
    fixed, rate = np.zeros(n), np.zeros(n)
    spec = np.full(n, -1)
    vf, vt, a = (np.asarray(x, dtype=object) for x in (v_from, v_to, asset))
    for r in params.routes:  # a handful of routes; later and more specific ones win
        m = ((r.from_venue == "*") | (vf == r.from_venue)) & ((r.to_venue == "*") | (vt == r.to_venue)) & (
            (r.asset == "*") | (a == r.asset))
        m &= r.specificity >= spec
        fixed[m], rate[m], spec[m] = r.fee_fixed, r.fee_rate, r.specificity
    return fixed, rate


def lp_plan(inp: PlanInputs, params: TransferParams, accounts: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Transfers of ``accounts`` by LP (MILP with fixed fees or minimum sizes), in batches of accounts.

    Returns (rows ``node_from, node_to, asset, amount, usd, fee_usd``, {"calls": solver calls, "milp": bool})."""
    nodes, hold = inp.nodes, inp.holdings
    sel = nodes["account_id"].isin(accounts).to_numpy()
    nd = nodes[sel]
    # candidate flows: every holding to every other margined venue of its account where the asset counts
    h = hold[hold["node"].isin(nd["node"])].merge(nodes[["node", "account_id", "venue"]], on="node")
    sinks = nd[nd["sink"]][["account_id", "node", "venue"]].rename(columns={"node": "to", "venue": "to_venue"})
    f = h.reset_index().rename(columns={"index": "hid"}).merge(sinks, on="account_id")
    f = f[f["to"] != f["node"]]
    f = f.assign(hc=_rates(params, f["to_venue"], f["asset"]))
    f = f[f["hc"] > 0.0].reset_index(drop=True)
    fixed, rate = _route_fees(params, f["venue"], f["to_venue"], f["asset"])
    f = f.assign(fixed=fixed, rate=rate, min_size=_min_sizes(params, f["venue"], f["asset"]))
    src_rate = _rates(params, f["venue"], f["asset"])  # what leaving costs the source's counted equity
    f = f.assign(src_hc=src_rate)
    integer = bool((f["fixed"] > 0).any() or (f["min_size"] > 0).any())
    # batches of whole accounts, about lp_batch_vars flows each
    acct = pd.factorize(f["account_id"], sort=True)[0] if len(f) else np.zeros(0, np.int64)
    out, calls = [], 0
    if len(f):
        per_acct = np.bincount(acct)
        size = min(params.lp_batch_vars, MILP_BATCH_VARS) if integer else params.lp_batch_vars
        batch_of = np.floor_divide(np.cumsum(per_acct) - per_acct, size)
        f_batch = batch_of[acct]
        for b in np.unique(f_batch):  # one solver call per batch of accounts
            fb = f[f_batch == b].reset_index(drop=True)
            out.append(_solve_batch(fb, nodes, inp, integer))
            calls += 1
    cols = ["node_from", "node_to", "asset", "amount", "usd", "fee_usd"]
    res = pd.concat(out, ignore_index=True) if out else pd.DataFrame({c: [] for c in cols})
    return res, {"calls": calls, "milp": integer}


def _solve_batch(f: pd.DataFrame, nodes: pd.DataFrame, inp: PlanInputs, integer: bool) -> pd.DataFrame:
    """One HiGHS solve over the flows ``f`` of a batch of accounts (block-diagonal). The variables are the USD
    values moved (x·p), so every coefficient is O(1) whatever the asset's price."""
    import scipy.sparse as sp
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp

    X = len(f)
    p = f["price"].to_numpy()
    amt = f["amount"].to_numpy()
    fixed, rate, mins = f["fixed"].to_numpy(), f["rate"].to_numpy(), f["min_size"].to_numpy()
    needs_y = (fixed > 0) | (mins > 0)
    ys = np.flatnonzero(needs_y) if integer else np.zeros(0, np.int64)
    Y = len(ys)
    # the batch's margined venues (coverage rows) and its sources (withdrawal rows)
    sink_nodes = np.unique(f["to"].to_numpy())
    src_nodes = np.unique(f["node"].to_numpy())
    all_nodes = np.union1d(sink_nodes, src_nodes)
    ndx = nodes.set_index("node").loc[all_nodes]
    sink_nodes = all_nodes[ndx["sink"].to_numpy()]
    Z = len(sink_nodes)  # sorted: rows are found by searchsorted
    # ΔCE per sink: inflow h_v·p·((1 − rate)·x − fixed·y), outflow −h_u·p·x
    to_row = np.searchsorted(sink_nodes, f["to"].to_numpy())
    is_sink_src = np.isin(f["node"].to_numpy(), sink_nodes)
    from_row = np.searchsorted(sink_nodes, f["node"].to_numpy()[is_sink_src])
    hc, shc = f["hc"].to_numpy(), f["src_hc"].to_numpy()
    rows = [to_row, from_row]
    cols = [np.arange(X), np.flatnonzero(is_sink_src)]
    vals = [hc * (1.0 - rate), -shc[is_sink_src]]
    dCE_x = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(Z, X))
    yfix = np.zeros(Y)
    dCE_y = sp.csr_matrix((Z, Y))
    if Y:
        yfix = (hc * p * fixed)[ys]  # the fixed fee in USD
        dCE_y = sp.csr_matrix((-yfix, (to_row[ys], np.arange(Y))), shape=(Z, Y))
    counted = ndx.loc[sink_nodes, "counted"].to_numpy()
    target = ndx.loc[sink_nodes, "target"].to_numpy()
    Iz = sp.identity(Z, format="csr")
    blocks, ub = [], []
    # coverage: −ΔCE − z ≤ CE − T ; no worse: −ΔCE ≤ max(CE − T, 0)
    blocks.append(sp.hstack([-dCE_x, -dCE_y, -Iz]))
    ub.append(counted - target)
    blocks.append(sp.hstack([-dCE_x, -dCE_y, sp.csr_matrix((Z, Z))]))
    ub.append(np.maximum(counted - target, 0.0))
    # supply per holding
    hid, hinv = np.unique(f["hid"].to_numpy(), return_inverse=True)
    S = sp.csr_matrix((np.ones(X), (hinv, np.arange(X))), shape=(len(hid), X))
    blocks.append(sp.hstack([S, sp.csr_matrix((len(hid), Y + Z))]))
    ub.append((f["amount"] * f["price"]).groupby(f["hid"], sort=True).first().loc[hid].to_numpy())
    # withdrawal limits
    W = ndx.loc[src_nodes, "withdraw"].to_numpy()
    lim = np.isfinite(W)
    if lim.any():
        has = np.isin(f["node"].to_numpy(), src_nodes[lim])
        r = np.searchsorted(src_nodes[lim], f["node"].to_numpy()[has])
        Wm = sp.csr_matrix((np.ones(int(has.sum())), (r, np.flatnonzero(has))), shape=(int(lim.sum()), X))
        blocks.append(sp.hstack([Wm, sp.csr_matrix((int(lim.sum()), Y + Z))]))
        ub.append(W[lim])
    # minimum sizes and fixed fees: x ≤ b·y, m·y ≤ x
    if Y:
        Ex = sp.csr_matrix((np.ones(Y), (np.arange(Y), ys)), shape=(Y, X))
        blocks.append(sp.hstack([Ex, -sp.diags((amt * p)[ys]), sp.csr_matrix((Y, Z))]))
        ub.append(np.zeros(Y))
        blocks.append(sp.hstack([-Ex, sp.diags((mins * p)[ys]), sp.csr_matrix((Y, Z))]))
        ub.append(np.zeros(Y))
    # the house IM stays covered: the fees of an account at most its house excess
    fee_x = rate.copy()  # USD of fee per USD moved
    fee_y = (p * fixed)[ys] if Y else np.zeros(0)
    if inp.house_excess is not None and (fee_x.any() or fee_y.any()):
        acc, ainv = np.unique(f["account_id"].to_numpy(dtype=object), return_inverse=True)
        Fx = sp.csr_matrix((fee_x, (ainv, np.arange(X))), shape=(len(acc), X))
        Fy = sp.csr_matrix((fee_y, (ainv[ys], np.arange(Y))), shape=(len(acc), Y)) if Y else sp.csr_matrix((len(acc), 0))
        blocks.append(sp.hstack([Fx, Fy, sp.csr_matrix((len(acc), Z))]))
        ub.append(np.maximum(inp.house_excess.reindex(acc).fillna(np.inf).to_numpy(), 0.0))
    A = sp.vstack(blocks, format="csr")
    b = np.concatenate(ub)
    moved = MOVED_WEIGHT if (fee_x.any() or fee_y.any()) else 1.0
    cost = np.concatenate([fee_x + moved, fee_y, np.zeros(Z)])
    upper = np.concatenate([amt * p, np.ones(Y), np.full(Z, np.inf)])
    integrality = np.concatenate([np.zeros(X), np.ones(Y), np.zeros(Z)]) if (integer and Y) else None

    def solve(c, A, b, strict=True):
        if integrality is not None:
            r = milp(c, constraints=LinearConstraint(A, -np.inf, b), integrality=integrality,
                     bounds=Bounds(np.zeros(X + Y + Z), upper), options={"mip_rel_gap": MIP_REL_GAP})
        else:
            r = linprog(c, A_ub=A, b_ub=b, bounds=np.c_[np.zeros(X + Y + Z), upper], method="highs",
                        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
        if r.x is None and strict:  # cannot happen: no transfer at all, z = the shortfall, is feasible
            raise RuntimeError(f"the transfer LP has no solution ({r.message})")
        return r.x

    # lexicographic: 1. the least uncovered need per account, 2. at that, the least cost
    zc = np.concatenate([np.zeros(X + Y), np.ones(Z)])
    first = solve(zc, A, b)
    z = first[X + Y:]
    z_acct, z_inv = np.unique(ndx.loc[sink_nodes, "account_id"].to_numpy(dtype=object), return_inverse=True)
    zmax = np.bincount(z_inv, weights=z, minlength=len(z_acct))
    need = np.bincount(z_inv, weights=np.maximum(target - counted, 0.0), minlength=len(z_acct))
    Zs = sp.csr_matrix((np.ones(Z), (z_inv, np.arange(Z))), shape=(len(z_acct), Z))
    A2 = sp.vstack([A, sp.hstack([sp.csr_matrix((len(z_acct), X + Y)), Zs])], format="csr")
    sol = None
    for slack in (1e-7, 1e-5):  # USD: the shortfall held at its optimum (a looser hold if HiGHS needs it)
        sol = solve(cost, A2, np.concatenate([b, zmax + slack + 1e-12 * need]), strict=False)
        if sol is not None:
            break
    sol = first if sol is None else sol
    x = np.minimum(sol[:X] / p, amt)  # back to asset units (never above the balance)
    res_y = sol[X:X + Y]
    on = np.zeros(X, bool)
    on[:] = x > FLOW_RTOL * np.maximum(amt, 1e-300)
    yv = np.zeros(X)
    if Y:
        yv[ys] = np.round(res_y)
        on &= ~needs_y | (yv > 0.5)
    fee_units = rate * x + fixed * (yv if Y else 0.0)
    return pd.DataFrame({"node_from": f["node"].to_numpy()[on], "node_to": f["to"].to_numpy()[on],
                         "asset": f["asset"].to_numpy(dtype=object)[on], "amount": x[on], "usd": (x * p)[on],
                         "fee_usd": (fee_units * p)[on]})


# ----------------------------------------------------------------------------- the plan


@dataclass
class TransferPlan:
    """The plan: ``transfers`` (one row per move), ``venues`` (every venue row before/after, USD),
    ``accounts`` (need, covered, cost, cause per account with a need or a move) and a summary."""

    transfers: pd.DataFrame
    venues: pd.DataFrame
    accounts: pd.DataFrame
    summary: dict


def _accounts(nodes: pd.DataFrame) -> np.ndarray:
    """[A] the accounts of ``nodes`` in order (the nodes are sorted by account: no sort needed)."""
    a = nodes["account_id"].to_numpy(dtype=object)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def closed_form_accounts(inp: PlanInputs, params: TransferParams) -> np.ndarray:
    """[A] bool per account of ``inp.nodes`` (sorted ids): True where the greedy is exact (no fee, no minimum
    size, every haircut 1 and every asset eligible at every venue of the account)."""
    accts = _accounts(inp.nodes)
    if params.has_fees:
        return np.zeros(len(accts), bool)
    if not params.venues:
        return np.ones(len(accts), bool)
    h = inp.holdings.merge(inp.nodes[["node", "account_id"]], on="node")
    sinks = inp.nodes[inp.nodes["sink"]][["account_id", "venue"]]
    pairs = h[["account_id", "asset"]].drop_duplicates().merge(sinks, on="account_id")
    plain = _rates(params, pairs["venue"], pairs["asset"]) == 1.0
    src = h.merge(inp.nodes[["node", "venue"]], on="node")
    has_min = _min_sizes(params, src["venue"], src["asset"]) > 0
    bad = set(pairs.loc[~plain, "account_id"]) | set(src.loc[has_min, "account_id"])
    return ~np.isin(accts, np.asarray(sorted(bad), dtype=object))


def plan_transfers(inp: PlanInputs, params: TransferParams, run_id: str = "") -> TransferPlan:
    """The transfer plan of every account (module docstring): greedy where exact, batched LP/MILP elsewhere."""
    t0 = time.perf_counter()
    nodes = inp.nodes
    accts = _accounts(nodes)
    closed = closed_form_accounts(inp, params)
    short = (nodes["sink"] & (nodes["counted"] < nodes["target"])).to_numpy()
    wants = np.bincount(nodes["acct"].to_numpy(), weights=short, minlength=len(accts)) > 0
    g_accts = accts[closed & wants]
    l_accts = accts[~closed & wants]
    parts = []
    g = greedy_plan(inp, nodes["account_id"].isin(g_accts).to_numpy()) if len(g_accts) else None
    if g is not None and len(g):
        parts.append(g.assign(fee_usd=0.0, method="greedy"))
    t1 = time.perf_counter()
    lp_info = {"calls": 0, "milp": False}
    if len(l_accts):
        lp, lp_info = lp_plan(inp, params, l_accts)
        if len(lp):
            parts.append(lp.assign(method="milp" if lp_info["milp"] else "lp"))
    t2 = time.perf_counter()
    cols = ["node_from", "node_to", "asset", "amount", "usd", "fee_usd", "method"]
    flows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in cols})
    plan = _finish(inp, params, flows, accts, closed, run_id)
    plan.summary.update(seconds={"greedy": t1 - t0, "lp": t2 - t1, "total": time.perf_counter() - t0},
                        accounts_greedy=int(len(g_accts)), accounts_lp=int(len(l_accts)),
                        lp_solver_calls=int(lp_info["calls"]), milp=bool(lp_info["milp"]))
    return plan


def _finish(inp, params, flows, accts, closed, run_id) -> TransferPlan:
    """Transfers with their reasons and keys, venue rows after the plan, and per-account causes.

    Aggregates run on the integer account codes (``nodes.acct``); strings are read once."""
    nodes = inp.nodes
    N, A = len(nodes), len(accts)
    ids = nodes["account_id"].to_numpy(dtype=object)
    venue = nodes["venue"].to_numpy(dtype=object)
    acode = nodes["acct"].to_numpy()
    sink = nodes["sink"].to_numpy()
    nf, nt = flows["node_from"].to_numpy(np.int64), flows["node_to"].to_numpy(np.int64)
    usd, fee = flows["usd"].to_numpy(np.float64), flows["fee_usd"].to_numpy(np.float64)
    asset = flows["asset"].to_numpy(dtype=object)
    received_usd = usd - fee
    # what each venue's equity (the replica's: no haircut) and counted equity become
    rate_to = _rates(params, venue[nt], asset) if len(flows) else np.zeros(0)
    rate_from = _rates(params, venue[nf], asset) if len(flows) else np.zeros(0)
    equity, counted, target = (nodes[c].to_numpy(np.float64) for c in ("equity", "counted", "target"))
    eq_after = equity + np.bincount(nt, weights=received_usd, minlength=N) - np.bincount(nf, weights=usd, minlength=N)
    ce_after = counted + np.bincount(nt, weights=rate_to * received_usd, minlength=N) - np.bincount(
        nf, weights=rate_from * usd, minlength=N)
    im, mm = nodes["im"].to_numpy(np.float64), nodes["mm"].to_numpy(np.float64)
    vcode, vnames = pd.factorize(venue[sink])
    house = CallParams()
    bands = inp.bands or {}
    r = {k: np.array([bands.get(str(v), {}).get(k, getattr(house, k)) for v in vnames], dtype=np.float64)[vcode]
         for k in ("call_mm_ratio", "reduce_only_mm_ratio", "liquidation_mm_ratio")}  # per distinct venue
    s_after, call_after = classify_bands(im[sink], mm[sink], eq_after[sink], r["call_mm_ratio"],
                                         r["reduce_only_mm_ratio"], r["liquidation_mm_ratio"])
    short_after = np.maximum(target - ce_after, 0.0) * sink
    status_before = nodes["status"].to_numpy(dtype=object)[sink]
    venues = pd.DataFrame({
        "account_id": ids[sink], "venue": venue[sink], "im_usd": im[sink], "mm_usd": mm[sink],
        "target_usd": target[sink], "equity_before_usd": equity[sink], "equity_after_usd": eq_after[sink],
        "counted_before_usd": counted[sink], "counted_after_usd": ce_after[sink], "status_before": status_before,
        "status_after": s_after, "call_amount_after_usd": call_after, "shortfall_after_usd": short_after[sink],
        "fixed": (status_before != "ok") & (s_after == "ok"),
    })
    # per account: need, covered, cost, cause
    need_a = np.bincount(acode, weights=np.maximum(target - counted, 0.0) * sink, minlength=A)
    short_a = np.bincount(acode, weights=short_after, minlength=A)
    moved_a = np.bincount(acode[nf], weights=usd, minlength=A)
    cost_a = np.bincount(acode[nf], weights=fee, minlength=A)
    n_a = np.bincount(acode[nf], minlength=A)
    keep = (need_a > 0) | (moved_a > 0)
    cause, detail = _causes(inp, need_a, short_a)
    feasible = short_a <= CHECK_RTOL * np.maximum(need_a, 1.0)
    lp_kind = "milp" if flows["method"].eq("milp").any() else "lp"
    accounts = pd.DataFrame({
        "account_id": accts[keep], "need_usd": need_a[keep], "covered_usd": (need_a - short_a)[keep],
        "shortfall_usd": short_a[keep], "moved_usd": moved_a[keep], "cost_usd": cost_a[keep],
        "transfers": n_a[keep].astype(np.int64), "feasible": feasible[keep],
        "cause": np.where(feasible, "", cause)[keep].astype(object),
        "cause_detail": np.where(feasible, "", detail)[keep].astype(object),
        "method": np.where(closed, "greedy", lp_kind)[keep].astype(object),
    })
    # the transfer rows (a few per account with a need)
    reason = ("cover " + pd.Series(venue[nt], dtype=object) + ": counted equity "
              + pd.Series(counted[nt]).map("{:,.2f}".format) + " < target "
              + pd.Series(target[nt]).map("{:,.2f}".format)
              + f" USD (IM x {1.0 + params.buffer:g} or the venue's call line)")
    tr = pd.DataFrame({
        "account_id": ids[nf], "from_venue": venue[nf], "to_venue": venue[nt], "asset": asset,
        "amount": flows["amount"].to_numpy(np.float64), "amount_usd": usd, "fee_usd": fee,
        "reason": reason.to_numpy(dtype=object),
    }).sort_values(["account_id", "to_venue", "from_venue", "asset"], kind="stable").reset_index(drop=True)
    tr["idempotency_key"] = idempotency_keys(run_id, tr)
    bad = accounts.loc[~accounts["feasible"], "cause"]
    summary = {
        "accounts_with_need": int((accounts["need_usd"] > 0).sum()), "transfers": int(len(tr)),
        "moved_usd": float(usd.sum()), "cost_usd": float(fee.sum()),
        "need_usd": float(need_a.sum()), "covered_usd": float((need_a - short_a).sum()),
        "infeasible_accounts": int((~accounts["feasible"]).sum()),
        "causes": {str(k): int(n) for k, n in bad.value_counts().items()},
        "venue_rows_fixed": int(venues["fixed"].sum()),
        "venue_rows_called_after": int((venues["status_after"] != "ok").sum()),
        "buffer": params.buffer, "run_id": run_id,
    }
    return TransferPlan(tr[TRANSFER_COLUMNS], venues, accounts, summary)


#: the causes of a partial plan (``plan_accounts.cause``), the first that holds
CAUSES = ("total_excess_short", "withdrawal_limit", "venue_rules")


def _causes(inp: PlanInputs, need: np.ndarray, short: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cause [A], detail [A]) per account (read where the need is not met in full), the first that holds
    of: ``total_excess_short`` (the total excess is short of the total need), ``withdrawal_limit`` (a
    withdrawal limit binds), ``venue_rules`` (eligibility, haircuts, fees, minimum sizes or the house
    constraint). Vectorised over accounts."""
    nodes, hold = inp.nodes, inp.holdings
    A = len(need)
    acode = nodes["acct"].to_numpy()
    movable = np.bincount(hold["node"].to_numpy(), weights=(hold["amount"] * hold["price"]).to_numpy(),
                          minlength=len(nodes))
    excess = np.where(nodes["sink"].to_numpy(), (nodes["counted"] - nodes["target"]).to_numpy(), np.inf)
    free = np.clip(np.minimum(excess, movable), 0.0, None)
    limited = np.minimum(free, nodes["withdraw"].to_numpy())
    free_a = np.bincount(acode, weights=free, minlength=A)
    lim_a = np.bincount(acode, weights=limited, minlength=A)
    c1 = free_a < need * (1 - CHECK_RTOL)
    c2 = lim_a < need * (1 - CHECK_RTOL)
    cause = np.select([c1, c2], list(CAUSES[:2]), default=CAUSES[2]).astype(object)
    bad = np.flatnonzero(short > CHECK_RTOL * np.maximum(need, 1.0))
    detail = np.full(A, "", dtype=object)
    f = lambda x: f"{x:,.2f}"  # noqa: E731 - formatting of the short accounts only
    detail[bad] = [  # one line per account left short (a minority)
        f"total excess {f(free_a[i])} USD short of the total need {f(need[i])} USD" if c1[i] else
        f"a withdrawal limit binds: {f(lim_a[i])} USD may leave, {f(need[i])} USD needed" if c2[i] else
        f"eligibility, haircuts, fees, minimum sizes or the house constraint leave {f(short[i])} USD uncovered"
        for i in bad]
    return cause, detail


def idempotency_keys(run_id: str, tr: pd.DataFrame) -> np.ndarray:
    """[n] SHA-256 (32 hex digits) of the run id and each transfer's content (account, route, asset, amount):
    the same plan of the same run gives the same keys, a changed amount a new one."""
    text = (str(run_id) + "|" + tr["account_id"].astype(str) + "|" + tr["from_venue"].astype(str) + "|"
            + tr["to_venue"].astype(str) + "|" + tr["asset"].astype(str) + "|"
            + tr["amount"].map("{:.12g}".format).astype(str))  # str even when empty (no transfer)
    return np.array([hashlib.sha256(t.encode()).hexdigest()[:32] for t in text], dtype=object)


def book_balances(book) -> tuple[pd.DataFrame, dict]:
    """(balances ``account_id, venue, asset, amount``, index prices {asset: USD}) of a ``Book``."""
    b = book.balances
    bal = pd.DataFrame({"account_id": np.asarray(book.accounts, dtype=object)[b.account_idx].astype(str),
                        "venue": np.asarray(b.venue, dtype=object).astype(str),
                        "asset": np.asarray(b.asset, dtype=object).astype(str), "amount": b.amount})
    prices = dict(zip(map(str, book.market.underlyings), map(float, book.market.index_price)))
    return bal, prices


def plan_for_results(book, venue_result, house_result, params: TransferParams, run_id: str) -> TransferPlan:
    """The transfer plan of a run from its results in memory (the venue model's, and the house's if any)."""
    bal, prices = book_balances(book)
    inp = build_inputs(venue_result.margin, bal, prices, params, venue_result.summary.get("venue_bands"),
                       house_result.margin if house_result is not None else None)
    return plan_transfers(inp, params, run_id)


def write_plan(plan: TransferPlan, folder, summary: dict | None = None) -> list[str]:
    """``transfers.parquet``, ``transfers.jsonl``, ``venues_after.parquet``, ``plan_accounts.parquet`` and, last,
    ``summary.json`` (the plan's summary and ``summary``) into ``folder``; returns the file names."""
    from pathlib import Path

    from ..fileio import write_json, write_parquet, write_text

    folder = Path(folder)
    files = ["transfers.parquet", "transfers.jsonl", "venues_after.parquet", "plan_accounts.parquet"]
    write_parquet(plan.transfers, folder / files[0])
    tr = plan.transfers
    write_text(tr.to_json(orient="records", lines=True, double_precision=15) if len(tr) else "", folder / files[1])
    write_parquet(plan.venues, folder / files[2])
    write_parquet(plan.accounts, folder / files[3])
    write_json({**(summary or {}), **plan.summary, "files": files}, folder / "summary.json")
    return files + ["summary.json"]


def apply_transfers(balances: pd.DataFrame, transfers: pd.DataFrame) -> pd.DataFrame:
    """The balances (``account_id, venue, asset, amount``) after the transfers: the amount leaves the sending
    venue, the amount less its fee arrives at the receiving one."""
    if transfers.empty:
        return balances.copy()
    price = transfers["amount_usd"] / transfers["amount"].where(transfers["amount"] > 0, 1.0)
    recv = transfers["amount"] - transfers["fee_usd"] / price.where(price > 0, 1.0)
    moves = pd.concat([
        pd.DataFrame({"account_id": transfers["account_id"], "venue": transfers["from_venue"],
                      "asset": transfers["asset"], "amount": -transfers["amount"]}),
        pd.DataFrame({"account_id": transfers["account_id"], "venue": transfers["to_venue"],
                      "asset": transfers["asset"], "amount": recv}),
    ])
    b = pd.concat([balances[["account_id", "venue", "asset", "amount"]].astype({"amount": float}), moves])
    for c in ("account_id", "venue", "asset"):
        b[c] = b[c].astype(str)
    return b.groupby(["account_id", "venue", "asset"], as_index=False, sort=True)["amount"].sum()


__all__ = ["VenueRule", "Route", "TransferParams", "load_costs", "PlanInputs", "build_inputs", "venue_targets",
           "match_intervals", "greedy_plan", "lp_plan", "TransferPlan", "closed_form_accounts", "plan_transfers",
           "idempotency_keys", "apply_transfers", "book_balances", "plan_for_results", "write_plan",
           "TRANSFER_COLUMNS", "UNITS", "CAUSES"]
