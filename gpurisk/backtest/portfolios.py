"""The portfolios a backtest margins every day: the standard test set, or a caller's book, held constant.

**Standard test portfolios** (``standard_tables``; shipped as the book folder
``datasets/backtest/standard_portfolios/``, which a test keeps equal to this generator). One account per
portfolio, 1 USD of notional per leg, priced at the last shipped close (2024-12-31, as of
2025-01-01T00:00Z):

- ``long_<COIN>`` / ``short_<COIN>``: a linear perpetual, ±1 USD, for each of the 7 shipped coins;
- ``long_BTC_short_ETH``, ``long_ETH_short_SOL``: a pair of linear perpetuals;
- ``basis_BTC``: long 1 USD of BTC spot, short 1 USD of a 90-day linear BTC future (future marked at the
  spot × (1 + f·T), f the annualised mean BTC perpetual funding of the last 30 days: the carry);
- ``short_straddle_BTC``: short a 30-day at-the-money call and put (linear, 1 USD each);
- ``short_strangle_BTC``: short a 30-day 25-delta call and a 25-delta put;
- ``long_call_spread_BTC``: long a 30-day at-the-money call, short a 30-day 25-delta call;
- ``long_BTC_inverse_BTC_collateral``: long 1 USD of the inverse BTC perpetual with 1 USD of BTC as its
  only collateral (wrong-way risk: the position and the collateral fall together).

Options take the ATM implied-vol level (``atm_vol``: BTC DVOL) as a flat vol.

**Holding a book constant** (``ConstantBook``): on day d the book is the template re-marked at d's
closes. With ρ_u = S_u(d) / S_u(template) per underlying: marks, forwards and strikes × ρ_u (moneyness
kept), times to expiry kept (expiries move with the as-of), quantities of linear contracts, spot and
inverse options ÷ ρ_u and coin balances ÷ ρ_asset (USD notional and collateral value kept; inverse
futures and perpetuals are USD contracts, kept), implied vols × A_u(d) / Ā_u with A the ATM vol level
(``atm_vol``) and Ā_u the template's mean implied vol of u's options (the smile's shape is kept, its
level follows the history; the standard options, all at one vol, take A_u(d)). A portfolio takes part on day d
only when every coin it holds has
``MIN_HISTORY_DAYS`` daily closes through d (a coin not yet listed cannot be held).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..book import INVERSE, OPTION, STABLECOINS, Balances, Book, MarketSnapshot, Positions, to_utc_seconds
from ..errors import ConfigError
from ..market import COINS, market_store

#: the template date of the standard portfolios: the close of the last shipped day
STANDARD_AS_OF = "2025-01-01T00:00:00Z"
#: daily closes a coin needs through d before a portfolio holding it takes part (the Monte Carlo needs 60
#: returns of every coin, the FHS filter 30)
MIN_HISTORY_DAYS = 90
#: option tenor and future tenor of the standard portfolios (days)
OPTION_DAYS = 30
FUTURE_DAYS = 90
#: |delta| of the strangle legs and of the short leg of the call spread
WING_DELTA = 0.25
#: RiskMetrics λ of the realised-vol proxy of the ATM vol level (where there is no DVOL)
PROXY_VOL_LAMBDA = 0.94
#: days of funding averaged into the basis trade's carry
FUNDING_DAYS = 30


# --------------------------------------------------------------------------- ATM vol level


def atm_vol(coin: str, date, market=None) -> tuple[float, str]:
    """(annualised ATM implied-vol level of ``coin`` at the close of ``date``, source): BTC DVOL (decimal)
    when it is known for ``date``, else the coin's RiskMetrics EWMA (λ 0.94) daily vol × √365 through
    ``date`` (``proxy``)."""
    store = market_store(market)
    d = pd.Timestamp(date).normalize()
    if coin == "BTC":
        dv = store.memo(("backtest.dvol",), lambda: store.dvol())
        if d in dv.index and np.isfinite(dv.loc[d]):
            return float(dv.loc[d]), "dvol"
    return proxy_vol(coin, d, store), "proxy"


def proxy_vol(coin: str, date, market=None) -> float:
    """Annualised EWMA (λ ``PROXY_VOL_LAMBDA``) vol of ``coin``'s daily log returns through ``date``."""
    store = market_store(market)

    def path():
        from ..scenarios.historical import ewma_sigma

        c = store.daily_bars(coin)["close"]
        r = np.log(c).diff().dropna()
        s = ewma_sigma(r.to_numpy(), PROXY_VOL_LAMBDA)[1:] * math.sqrt(365.0)
        return pd.Series(s, index=r.index)

    s = store.memo(("backtest.proxy_vol", coin), path)
    d = pd.Timestamp(date).normalize()
    if d < s.index[0]:
        raise KeyError(f"no {coin} history before {d.date()}")
    return float(s.loc[:d].iloc[-1])


def vol_levels(coin: str, d0, d1, market=None) -> tuple[float, float, str]:
    """(A(d0), A(d1), source) from one source: DVOL when it is known on both dates, else the proxy on both."""
    a0, s0 = atm_vol(coin, d0, market)
    a1, s1 = atm_vol(coin, d1, market)
    if s0 != s1:
        return proxy_vol(coin, d0, market), proxy_vol(coin, d1, market), "proxy"
    return a0, a1, s0


# --------------------------------------------------------------------------- the standard portfolios


def _perp(coin, side):
    return [(coin, "perpetual", "linear", side, None, None)]


def standard_specs() -> dict[str, list[tuple]]:
    """{portfolio: [(coin, kind, settlement, side, option_type, strike_rule), ...]}; side ±1 per 1 USD."""
    out = {}
    for c in COINS:
        out[f"long_{c}"] = _perp(c, +1)
        out[f"short_{c}"] = _perp(c, -1)
    out["long_BTC_short_ETH"] = _perp("BTC", +1) + _perp("ETH", -1)
    out["long_ETH_short_SOL"] = _perp("ETH", +1) + _perp("SOL", -1)
    out["basis_BTC"] = [("BTC", "spot", "linear", +1, None, None), ("BTC", "future", "linear", -1, None, None)]
    out["short_straddle_BTC"] = [("BTC", "option", "linear", -1, "call", "atm"),
                                 ("BTC", "option", "linear", -1, "put", "atm")]
    out["short_strangle_BTC"] = [("BTC", "option", "linear", -1, "call", "wing"),
                                 ("BTC", "option", "linear", -1, "put", "wing")]
    out["long_call_spread_BTC"] = [("BTC", "option", "linear", +1, "call", "atm"),
                                   ("BTC", "option", "linear", -1, "call", "wing")]
    out["long_BTC_inverse_BTC_collateral"] = [("BTC", "perpetual", "inverse", +1, None, None)]
    return out


#: portfolio -> coin balances (1 USD of the coin)
STANDARD_COLLATERAL = {"long_BTC_inverse_BTC_collateral": ("BTC",)}


def wing_strike(F: float, sigma: float, T: float, option_type: str, delta: float = WING_DELTA) -> float:
    """Strike of the Black-76 option of |delta| ``delta`` (call delta N(d1), put N(d1) − 1)."""
    z = norm.ppf(delta) if option_type == "call" else norm.ppf(1.0 - delta)
    st = sigma * math.sqrt(T)
    return float(F * math.exp(-z * st + 0.5 * st * st))


def mean_funding(date, market=None, days: int = FUNDING_DAYS) -> float:
    """Annualised mean BTC perpetual funding (fraction per year) over the ``days`` days through ``date``."""
    store = market_store(market)
    t = pd.Timestamp(date).normalize() + pd.Timedelta(days=1)
    try:
        f = store.funding_rates("BTC", as_of=t)
    except Exception:  # noqa: BLE001 - a history without a funding file: no carry
        return 0.0
    f = f.loc[t - pd.Timedelta(days=days):]
    return float(f.mean() * 3 * 365) if len(f) else 0.0


def standard_tables(market=None) -> tuple[dict[str, pd.DataFrame], dict]:
    """(book tables, meta) of the standard portfolios (module docstring), priced at the shipped history's
    last close known at ``STANDARD_AS_OF``; deterministic for that history."""
    store = market_store(market)
    t = to_utc_seconds(STANDARD_AS_OF)
    d = pd.Timestamp(t) - pd.Timedelta(days=1)
    spot = {c: float(store.daily_bars(c, as_of=t)["close"].iloc[-1]) for c in COINS}
    vol0, _ = atm_vol("BTC", d, store)
    carry = mean_funding(d, store)
    T_opt = OPTION_DAYS / 365.0
    T_fut = FUTURE_DAYS / 365.0
    exp_opt = pd.Timestamp(t) + pd.Timedelta(days=OPTION_DAYS)
    exp_fut = pd.Timestamp(t) + pd.Timedelta(days=FUTURE_DAYS)
    ins, mkt, pos, bal = {}, {}, [], []
    for name, legs in standard_specs().items():
        for coin, kind, settle, side, otype, rule in legs:
            S = spot[coin]
            if kind == "option":
                K = S if rule == "atm" else wing_strike(S, vol0, T_opt, otype)
                iid = f"{coin}-{exp_opt:%d%b%y}-{K:.0f}-{otype[0].upper()}".upper()
                ins[iid] = (iid, "deribit", coin, "option", settle, 1.0, exp_opt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            round(K, 2), otype)
                mkt[iid] = (iid, S, vol0)
                qty = side / S
            elif kind == "future":
                iid = f"{coin}USDT-{exp_fut:%y%m%d}"
                ins[iid] = (iid, "binance", coin, "future", settle, 1.0, exp_fut.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            None, None)
                mkt[iid] = (iid, S * (1.0 + carry * T_fut), None)
                qty = side / mkt[iid][1]
            elif kind == "spot":
                iid = f"{coin}USDT"
                ins[iid] = (iid, "binance", coin, "spot", settle, 1.0, None, None, None)
                mkt[iid] = (iid, S, None)
                qty = side / S
            elif settle == "inverse":
                iid = f"{coin}-PERPETUAL"
                ins[iid] = (iid, "deribit", coin, "perpetual", "inverse", 10.0, None, None, None)
                mkt[iid] = (iid, S, None)
                qty = side / 10.0
            else:
                iid = f"{coin}USDT-PERP"
                ins[iid] = (iid, "binance", coin, "perpetual", "linear", 1.0, None, None, None)
                mkt[iid] = (iid, S, None)
                qty = side / S
            pos.append((name, iid, qty))
        for coin in STANDARD_COLLATERAL.get(name, ()):
            bal.append((name, "deribit", coin, 1.0 / spot[coin]))
    tables = {
        "instruments": pd.DataFrame(list(ins.values()), columns=["instrument_id", "venue", "underlying", "kind",
                                                                 "settlement", "contract_size", "expiry", "strike",
                                                                 "option_type"]),
        "market": pd.DataFrame(list(mkt.values()), columns=["instrument_id", "underlying_price", "implied_vol"]),
        "index": pd.DataFrame([(c, spot[c]) for c in COINS] + [("USDT", 1.0), ("USDC", 1.0)],
                              columns=["underlying", "price"]),
        "positions": pd.DataFrame(pos, columns=["account_id", "instrument_id", "quantity"]),
        "balances": pd.DataFrame(bal, columns=["account_id", "venue", "asset", "amount"]),
    }
    meta = {"as_of": STANDARD_AS_OF, "description": "gpurisk standard backtest portfolios: 1 USD of notional per leg",
            "price_date": str(d.date()), "atm_vol": vol0, "btc_carry": carry}
    return tables, meta


def write_standard_book(out, market=None):
    """Write the standard portfolios as a book folder (CSV tables + ``book.toml``): how the shipped
    ``datasets/backtest/standard_portfolios/`` is made."""
    from ..io import write_book

    tables, meta = standard_tables(market)
    return write_book(out, tables, meta, fmt="csv")


def standard_book(market=None) -> Book:
    """The standard portfolios as a ``Book`` (``standard_tables``)."""
    tables, meta = standard_tables(market)
    return Book.from_frames(meta["as_of"], **tables)


# --------------------------------------------------------------------------- a book held constant


@dataclass(frozen=True)
class ConstantBook:
    """A template book and what re-marking it on another day needs (module docstring).

    s0: the template's index price per underlying name; a0: its mean implied vol per option underlying.
    """

    book: Book
    coins: tuple[tuple[str, ...], ...]  # [A] the coins (stablecoins aside) each account holds
    s0: dict
    a0: dict

    @property
    def accounts(self) -> np.ndarray:
        return self.book.accounts


def hold_constant(book: Book, market=None) -> ConstantBook:
    """A ``ConstantBook`` of ``book`` (its index prices and, for option underlyings, its mean implied vol); every
    coin it holds must have daily closes in ``market``."""
    store = market_store(market)
    mk = book.market
    s0 = {str(u): float(p) for u, p in zip(mk.underlyings, mk.index_price)}
    held = {}
    pos = book.positions
    und = np.asarray(book.instruments.underlying, dtype=object)
    for a, u in zip(pos.account_idx, und[pos.instrument_idx]):
        held.setdefault(int(a), set()).add(str(u))
    for a, u in zip(book.balances.account_idx, book.balances.asset):
        held.setdefault(int(a), set()).add(str(u))
    coins = tuple(tuple(sorted(held.get(i, set()) - set(STABLECOINS))) for i in range(book.n_accounts))
    missing = sorted({c for cs in coins for c in cs if c not in s0})
    if missing:
        raise ConfigError(f"the book holds {missing} without an index price")
    no_hist = sorted({c for cs in coins for c in cs if not store.has_daily(c)})
    if no_hist:
        raise ConfigError(f"the book holds {no_hist}, which the market history {store.name} has no daily closes of")
    is_opt = book.instruments.kind == OPTION
    iv = pd.Series(book.market.implied_vol[is_opt]).groupby(und[is_opt].astype(str)).mean()
    a0 = {str(u): float(v) for u, v in iv.items()}
    return ConstantBook(book=book, coins=coins, s0=s0, a0=a0)


def active_accounts(cb: ConstantBook, date, horizon_days: int, market=None) -> np.ndarray:
    """[A] bool: the accounts that take part on ``date``: every coin held has ``MIN_HISTORY_DAYS`` closes through
    ``date`` and a close on ``date`` + h (the realised P&L)."""
    store = market_store(market)
    d = pd.Timestamp(date).normalize()
    end = d + pd.Timedelta(days=int(horizon_days))
    ok_coin = {}
    for c in sorted({c for cs in cb.coins for c in cs}):  # a handful of coins
        idx = store.memo(("backtest.close_dates", c), lambda c=c: store.daily_bars(c).index)
        n = int(idx.searchsorted(d, side="right"))
        ok_coin[c] = n >= MIN_HISTORY_DAYS and idx[n - 1] == d and end in idx
    return np.array([all(ok_coin[c] for c in cs) for cs in cb.coins], dtype=bool)


def subset(book: Book, keep: np.ndarray) -> Book:
    """``book`` with only the accounts where ``keep`` [A] is true, and only the instruments they hold."""
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return book
    new = np.full(book.n_accounts, -1, np.int64)
    new[keep] = np.arange(int(keep.sum()))
    p, b = book.positions, book.balances
    pk = keep[p.account_idx]
    bk = keep[b.account_idx]
    used = np.zeros(len(book.instruments), bool)
    used[p.instrument_idx[pk]] = True
    ins_new = np.cumsum(used) - 1
    mk = book.market
    market = replace(mk, underlying_price=mk.underlying_price[used], implied_vol=mk.implied_vol[used])
    groups = None if book.groups is None else replace(
        book.groups, **{k: getattr(book.groups, k)[keep] for k in book.groups.__dataclass_fields__})
    return replace(book, accounts=book.accounts[keep], instruments=book.instruments.take(np.flatnonzero(used)),
                   market=market,
                   positions=Positions(new[p.account_idx[pk]].astype(np.int32),
                                       ins_new[p.instrument_idx[pk]].astype(np.int32), p.quantity[pk]),
                   balances=Balances(new[b.account_idx[bk]].astype(np.int32), b.venue[bk], b.asset[bk],
                                     b.amount[bk]),
                   groups=groups)


def closes_on(store, coins, date, missing_ok: bool = False) -> dict:
    """{coin: close of ``date``} (USD); stablecoins 1. A coin without a close that day is a KeyError naming it,
    or, with ``missing_ok``, left out."""
    d = pd.Timestamp(date).normalize()
    out = {}
    for c in coins:
        if c in STABLECOINS:
            out[c] = 1.0
            continue
        s = store.memo(("backtest.closes", c), lambda c=c: store.daily_bars(c)["close"])
        i = int(s.index.searchsorted(d))
        if i < len(s) and s.index[i] == d:
            out[c] = float(s.iloc[i])
        elif not missing_ok:
            raise KeyError(f"no {c} close on {d.date()} in the market history")
    return out


def day_book(cb: ConstantBook, date, market=None) -> Book:
    """The template re-marked at the close of ``date`` (module docstring), as of ``date`` + 1 day 00:00 UTC."""
    store = market_store(market)
    b = cb.book
    d = pd.Timestamp(date).normalize()
    as_of = to_utc_seconds(d + pd.Timedelta(days=1))
    names = [str(u) for u in b.market.underlyings]
    px = closes_on(store, [u for u in names if u in STABLECOINS or store.has_daily(u)], d, missing_ok=True)
    rho = {u: (px[u] / cb.s0[u] if u in px else 1.0) for u in names}
    ins = b.instruments
    und = np.asarray(ins.underlying, dtype=object)
    r_ins = np.array([rho[str(u)] for u in und]) if len(und) else np.zeros(0)
    shift = np.timedelta64(as_of - b.as_of, "s")
    expiry = np.where(np.isnat(ins.expiry), ins.expiry, ins.expiry + shift)
    vol_ratio = {u: atm_vol(u, d, store)[0] / a for u, a in cb.a0.items()}
    v_ins = np.array([vol_ratio.get(str(u), 1.0) for u in und]) if len(und) else np.zeros(0)
    instruments = replace(ins, expiry=expiry.astype("datetime64[s]"), strike=ins.strike * r_ins)
    snap = MarketSnapshot(as_of=as_of, underlyings=b.market.underlyings,
                          index_price=np.array([px.get(u, cb.s0[u]) for u in names]),
                          underlying_price=b.market.underlying_price * r_ins,
                          implied_vol=b.market.implied_vol * v_ins)
    # USD notional kept: coin-denominated quantities ÷ ρ (inverse futures/perpetuals are USD contracts)
    usd_contract = (ins.settlement == INVERSE) & (ins.kind != OPTION)
    q_scale = np.where(usd_contract, 1.0, 1.0 / r_ins)
    pos = replace(b.positions, quantity=b.positions.quantity * q_scale[b.positions.instrument_idx])
    a_rho = np.array([1.0 if str(a) in STABLECOINS else rho.get(str(a), 1.0) for a in b.balances.asset])
    bal = replace(b.balances, amount=b.balances.amount / a_rho if len(a_rho) else b.balances.amount)
    return replace(b, as_of=as_of, instruments=instruments, market=snap, positions=pos, balances=bal)


def portfolio_notional(book: Book) -> np.ndarray:
    """[A] gross USD notional per account: Σ |q·cs·F| over linear contracts and spot, |q·cs| over inverse
    futures and perpetuals, |q·F| over inverse options (the positions only)."""
    ins, p = book.instruments, book.positions
    i = p.instrument_idx
    cs, F = ins.contract_size[i], book.market.underlying_price[i]
    usd = (ins.settlement[i] == INVERSE) & (ins.kind[i] != OPTION)
    n = np.where(usd, np.abs(p.quantity * cs), np.abs(p.quantity * cs * F))
    return np.bincount(p.account_idx, weights=n, minlength=book.n_accounts)


__all__ = ["STANDARD_AS_OF", "MIN_HISTORY_DAYS", "standard_specs", "standard_tables", "standard_book",
           "write_standard_book", "atm_vol",
           "proxy_vol", "vol_levels", "wing_strike", "ConstantBook", "hold_constant", "active_accounts", "subset",
           "day_book", "closes_on", "portfolio_notional"]
