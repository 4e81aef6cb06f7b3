"""Collateral: tiered haircuts, and coin balances revalued inside every scenario.

Two views of the same balances (``Book.balances``, units of each asset):

- **Equity** (static, USD): the account's holdings (balances, plus spot positions,
  which are coins owned on a spot venue) per asset; each asset's USD value counts at a
  collateral rate that is progressive by amount, slice by slice (Binance style):
  with tiers ``[(10e6, 1.0), (50e6, 0.975), (inf, 0.95)]`` the first 10 M USD count
  at 1.0, the next 40 M at 0.975 and the rest at 0.95. Tiers apply to an account's
  total holding of an asset within the portfolio (all venues for the account view).
  A negative balance (a loan) counts in full: haircuts never shrink a debt.
  The haircut prices what the scenarios do not: the cost of selling the holding
  (market impact, growing with size) and concentration. The price move over the
  margin period of risk is in the scenario P&L below, so a small coin holding
  carries almost no haircut and a large one progressively more (the default tiers
  cover the square-root impact cost of selling each slice, with a margin of safety;
  docs/methodologies.md, "Collateral").
- **Scenario P&L**: each asset becomes a pseudo-instrument (linear spot, contract
  size 1 coin, underlying = the asset) appended to the pricing inputs, and the
  balance its quantity in the portfolio CSR, so the tail measures see position
  and collateral P&L together (BTC collateral behind a long-BTC book is wrong-way
  risk). Stablecoins are underlyings with zero shock unless a scenario de-pegs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..book import LINEAR, SPOT, STABLECOINS, Book, Portfolios, csr_from_groups
from ..errors import BookError
from ..pricing import PricingInputs

INF = math.inf


def _default_tiers() -> dict:
    return {
        "USD": ((INF, 1.0),),
        "USDT": ((10e6, 1.0), (50e6, 0.975), (INF, 0.95)),
        "USDC": ((10e6, 1.0), (50e6, 0.975), (INF, 0.95)),
        # coins: liquidation cost beyond the MPOR price move (square-root impact, docs/methodologies.md);
        # beyond about 8 % of a day's traded value a holding is not accepted (concentration)
        "BTC": ((1e6, 0.995), (10e6, 0.99), (50e6, 0.98), (200e6, 0.95), (INF, 0.0)),
        "ETH": ((1e6, 0.99), (10e6, 0.98), (50e6, 0.96), (100e6, 0.92), (INF, 0.0)),
    }


@dataclass(frozen=True)
class CollateralParams:
    """Haircut schedule per asset.

    tiers: asset -> ((upper bound of the slice in USD value, collateral rate), ...),
      bounds strictly increasing, the last one ``inf``; rates in [0, 1].
    default_rate: collateral rate of an asset without a schedule (0 = not accepted).
    """

    tiers: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=_default_tiers)
    default_rate: float = 0.0

    def __post_init__(self):
        for asset, tiers in self.tiers.items():
            ub = [float(t[0]) for t in tiers]
            rates = [float(t[1]) for t in tiers]
            if not tiers or any(len(t) != 2 for t in tiers):
                raise ValueError(f"collateral tiers of {asset} must be a non-empty list of [upper_usd, rate]")
            if any(b <= a for a, b in zip(ub, ub[1:])) or ub[0] <= 0 or ub[-1] != INF:
                raise ValueError(f"collateral tier bounds of {asset} must increase and end with inf, got {ub}")
            if any(not (0.0 <= r <= 1.0) for r in rates):
                raise ValueError(f"collateral rates of {asset} must lie in [0, 1], got {rates}")
        if not (0.0 <= self.default_rate <= 1.0):
            raise ValueError(f"default_rate must lie in [0, 1], got {self.default_rate}")


def tier_value(asset: np.ndarray, value_usd: np.ndarray, params: CollateralParams) -> np.ndarray:
    """[n] collateral value in USD of holdings worth ``value_usd`` [n] of ``asset`` [n], slice by slice.

    Non-positive values pass through unchanged (a debt counts in full).
    """
    asset = np.asarray(asset, dtype=object)
    value = np.asarray(value_usd, dtype=np.float64)
    if len(asset) == 0:
        return np.zeros(0)
    if len(asset) <= 32:  # one account's holdings (the what-if): a dict, first-seen order as pd.factorize's
        first: dict[str, int] = {}
        codes = np.fromiter((first.setdefault(str(a), len(first)) for a in asset), np.int64, len(asset))
        uniq = list(first)
    else:
        codes, uniq = pd.factorize(pd.Series(asset, dtype=object))
    schedules = [params.tiers.get(str(a), ((INF, params.default_rate),)) for a in uniq]
    T = max(len(s) for s in schedules)
    upper = np.full((len(uniq), T), INF)
    rate = np.zeros((len(uniq), T))
    for i, s in enumerate(schedules):  # loops over distinct assets only
        upper[i, : len(s)] = [t[0] for t in s]
        rate[i, : len(s)] = [t[1] for t in s]
    lower = np.concatenate([np.zeros((len(uniq), 1)), upper[:, :-1]], axis=1)
    v = np.maximum(value, 0.0)[:, None]
    up, lo = upper[codes], lower[codes]
    width = np.where(np.isinf(lo), 0.0, np.minimum(v, up) - lo)
    sliced = np.clip(width, 0.0, None)
    out = (sliced * rate[codes]).sum(axis=1)
    return np.where(value > 0.0, out, value)


@dataclass(frozen=True)
class CollateralInstruments:
    """C collateral pseudo-instruments, one per distinct balance asset (sorted)."""

    assets: np.ndarray  # [C] str
    price_usd: np.ndarray  # [C] float64 USD per unit of the asset at as-of

    def __len__(self) -> int:
        return len(self.assets)

    def pricing(self, underlying_idx: np.ndarray) -> PricingInputs:
        """PricingInputs [C]: linear spot, 1 coin per contract, at the as-of price."""
        C = len(self.assets)
        return PricingInputs(
            kind=np.full(C, SPOT, np.int8),
            settlement=np.full(C, LINEAR, np.int8),
            option_type=np.zeros(C, np.int8),
            underlying_idx=np.asarray(underlying_idx, dtype=np.int32),
            contract_size=np.ones(C),
            forward=self.price_usd.astype(np.float64),
            strike=np.zeros(C),
            ttm=np.zeros(C),
            vol=np.zeros(C),
        )


def collateral_instruments(book: Book) -> CollateralInstruments:
    """One pseudo-instrument per balance asset, priced at the book's index (stablecoins at 1 if absent).

    BookError names an asset that has no index price and is not a stablecoin.
    """
    assets = np.asarray(sorted(set(map(str, book.balances.asset))), dtype=object)
    return CollateralInstruments(assets=assets, price_usd=index_prices(assets, book.market))


def index_prices(assets, market) -> np.ndarray:
    """[n] USD price of balance ``assets`` [n]: the index of ``market`` (a ``MarketSnapshot``), stablecoins at 1
    when it has none. BookError names an asset with no price or a non-positive one."""
    assets = np.asarray(assets, dtype=object)
    price = np.ones(len(assets))
    known = {u: p for u, p in zip(map(str, market.underlyings), market.index_price)}
    missing = []
    for i, a in enumerate(assets):  # distinct assets only
        if a in known:
            price[i] = known[a]
        elif a not in STABLECOINS:
            missing.append(a)
    if missing:
        raise BookError(f"balances: asset(s) {missing} have no index price in the market snapshot")
    if np.any(~np.isfinite(price) | (price <= 0)):
        bad = assets[~np.isfinite(price) | (price <= 0)].tolist()
        raise BookError(f"index: non-positive or missing price for collateral asset(s) {bad}")
    return price


def _group_codes(book: Book, by: str):
    """Group keys of positions and balances for grouping ``by``; returns (pos_group, bal_group, key, acct)."""
    pos, bal = book.positions, book.balances
    if by == "account":
        n = book.n_accounts
        acct = np.arange(n, dtype=np.int32)
        return pos.account_idx.astype(np.int64), bal.account_idx.astype(np.int64), {"account_id": book.accounts}, acct
    if by != "account_venue":
        raise ValueError(f"unknown collateral grouping {by!r}; use account or account_venue")
    pv = np.asarray(book.instruments.venue[pos.instrument_idx], dtype=object)
    bv = np.asarray(bal.venue, dtype=object)
    codes, uniq = pd.factorize(pd.Series(np.concatenate([pv, bv]), dtype=object), sort=True)
    nv = max(len(uniq), 1)
    acct_all = np.concatenate([pos.account_idx, bal.account_idx]).astype(np.int64)
    pair = acct_all * nv + codes
    pair_u, group = np.unique(pair, return_inverse=True)
    acct = (pair_u // nv).astype(np.int32)
    venue = np.asarray(uniq, dtype=object)[pair_u % nv] if len(uniq) else np.empty(0, dtype=object)
    n_pos = len(pos.account_idx)
    key = {"account_id": book.accounts[acct], "venue": venue}
    return group[:n_pos].astype(np.int64), group[n_pos:].astype(np.int64), key, acct


def portfolios_with_collateral(book: Book, coll: CollateralInstruments, by: str = "account") -> Portfolios:
    """CSR over [book instruments I, then collateral C] per ``by`` (``account`` or ``account_venue``).

    Balance rows of the same asset within a group are summed. The account_venue
    grouping has a portfolio for every (account, venue) with a position or a balance.
    """
    pos, bal = book.positions, book.balances
    pg, bg, key, acct = _group_codes(book, by)
    n_groups = len(acct)
    I = len(book.instruments)
    a_code = np.searchsorted(coll.assets, np.asarray(bal.asset, dtype=object).astype(str).astype(object))
    b_ins = I + a_code.astype(np.int64)
    # net balances of one asset within a group
    bkey = bg * (I + len(coll)) + b_ins
    bkey_u, inv = np.unique(bkey, return_inverse=True)
    b_amt = np.bincount(inv, weights=bal.amount, minlength=len(bkey_u))
    b_grp = bkey_u // (I + len(coll))
    b_ins_u = bkey_u % (I + len(coll))
    group = np.concatenate([pg, b_grp])
    ins = np.concatenate([pos.instrument_idx.astype(np.int64), b_ins_u])
    qty = np.concatenate([pos.quantity, b_amt])
    indptr, idx, q = csr_from_groups(group, n_groups, ins, qty)
    return Portfolios(indptr, idx, q, acct, key, by + "+collateral")


def equity(book: Book, coll: CollateralInstruments, params: CollateralParams, by: str = "account"):
    """(haircut equity [G] USD, raw value [G] USD) per group of ``by``, groups as ``portfolios_with_collateral``.

    Holdings are the balances (at the as-of index) plus spot positions (coins owned
    on a spot venue, at their mark): both are assets of the account. They are summed
    per (group, asset) and then valued slice by slice with the asset's tiers.
    """
    bal, pos, ins = book.balances, book.positions, book.instruments
    pg, bg, key, acct = _group_codes(book, by)
    n_groups = len(acct)
    a_code = np.searchsorted(coll.assets, np.asarray(bal.asset, dtype=object).astype(str).astype(object))
    b_value = bal.amount * (coll.price_usd[a_code] if len(coll) else np.zeros(0))
    spot = ins.kind[pos.instrument_idx] == SPOT
    s_ins = pos.instrument_idx[spot]
    s_value = pos.quantity[spot] * ins.contract_size[s_ins] * book.market.underlying_price[s_ins]
    names = np.concatenate([np.asarray(bal.asset, dtype=object), np.asarray(ins.underlying[s_ins], dtype=object)])
    group = np.concatenate([bg, pg[spot]]).astype(np.int64)
    value = np.concatenate([b_value, s_value])
    codes, uniq = pd.factorize(pd.Series(names, dtype=object), sort=True)
    n_assets = max(len(uniq), 1)
    k_u, inv = np.unique(group * n_assets + codes, return_inverse=True)
    v = np.bincount(inv, weights=value, minlength=len(k_u))
    asset = np.asarray(uniq, dtype=object)[k_u % n_assets] if len(uniq) else np.empty(0, dtype=object)
    hv = tier_value(asset, v, params)
    grp = k_u // n_assets
    eq = np.bincount(grp, weights=hv, minlength=n_groups)
    raw = np.bincount(grp, weights=v, minlength=n_groups)
    return eq, raw


__all__ = [
    "CollateralParams",
    "CollateralInstruments",
    "tier_value",
    "collateral_instruments",
    "index_prices",
    "portfolios_with_collateral",
    "equity",
]
