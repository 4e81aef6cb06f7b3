"""Realistic sample books, generated from real market history (the shipped ``datasets/`` by default).

``generate_book(n_accounts, seed, as_of, market=None)`` returns the five tables of a book
(docs/data-format.md) plus ``meta`` for ``book.toml``. Everything is vectorised
over accounts, so 1 M accounts take seconds, and the output is a pure function
of ``(n_accounts, seed, as_of)`` and the history read (``market``: a ``gpurisk.market``
store, a folder, or None for the default store).

Market (``as_of`` default 2024-12-31T08:00:00Z):

- index: the last complete Binance daily close at or before ``as_of`` for BTC,
  ETH, SOL (the bar of the previous UTC day, so nothing after ``as_of`` is used);
  USDT and USDC at 1.
- forwards: ``F(T) = S·exp(b·T)`` with annualised contango ``BASIS`` (BTC 9 %,
  ETH 10 %, SOL 12 %); perpetual and spot marks are the index.
- implied vols: ATM ``σ(T) = DVOL·m·clip(1 + 0.04·ln(T/30d), 0.75, 1.25)``, with
  DVOL the Deribit BTC 30-day index on the previous day and the multiple ``m``
  from ``VOL_MULTIPLE`` (BTC 1, ETH 1.25, SOL 1.5); smile
  ``σ(K) = σ_atm·clip(1 − 0.109·x + 0.088·x², 0.7, 2.0)`` with
  ``x = ln(K/F)/(σ_atm·√T)``, the skew and curvature fitted to the real Deribit
  chain in ``datasets/options``.
- expiries at 08:00 UTC, Deribit-style: three dailies, three Friday weeklies,
  three last-Friday monthlies, four last-Friday quarterlies (options); two
  weeklies, one monthly and three quarterlies (futures).
- strikes: step ``STRIKE_STEP`` (BTC 1000, ETH 50, SOL 2.5) within ±10 % of the
  forward, 5× that step to ±40 %, 10× beyond; the range covers ±4 standard
  deviations (at least ±10 %, within 0.2×..4× the forward).

``as_of`` may be any time from 2021-03-25 (the shipped DVOL starts 2021-03-24); past the end
of the history (the shipped one ends 2024-12-31) the last close and DVOL known are reused, and
``meta`` records their dates (``price_date``, ``dvol_date``). Only what is known at ``as_of`` is read.

Venues: ``deribit`` (BTC, ETH inverse perpetuals, futures [10 USD / 1 USD per
contract] and options [1 coin]); ``okx`` (BTC, ETH, SOL linear USDT perpetuals,
futures and options, 0.01 BTC / 0.1 ETH / 1 SOL per contract; OKX's real
options are coin-settled, modelled here as linear); ``binance`` (BTC, ETH, SOL
spot, 1 coin per contract).

Accounts (``ACCOUNT_MIX``): directional futures, basis trades (long spot, short
future), delta-hedged option books and short-strangle sellers; account size in
USD is Pareto (α = 1.16, scale 10 000, capped at 200 M). Collateral per venue:
the coin on deribit, USDT or USDC (sometimes BTC too) on okx, USDT on binance,
sized as a lognormal share (median 45 %, σ 0.6) of the venue's gross notional, so
a few per cent of accounts are under-collateralised and exercise the call states. Spot holdings are positions, not balances.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtr

from .book import to_utc_seconds
from .errors import BookError
from .market import MarketDataError, market_store

GENERATOR = "gpurisk.generate/1"
DEFAULT_AS_OF = "2024-12-31T08:00:00Z"

COINS = ("BTC", "ETH", "SOL")
VENUES = ("deribit", "okx", "binance")
STABLES = ("USDT", "USDC")
#: annualised contango of futures over spot (continuous)
BASIS = {"BTC": 0.09, "ETH": 0.10, "SOL": 0.12}
#: implied-vol level as a multiple of BTC DVOL
VOL_MULTIPLE = {"BTC": 1.0, "ETH": 1.25, "SOL": 1.5}
#: option strike step near the money (USD)
STRIKE_STEP = {"BTC": 1000.0, "ETH": 50.0, "SOL": 2.5}
#: contract sizes: deribit futures/perps in USD per contract, everything else in coin
DERIBIT_FUTURE_USD = {"BTC": 10.0, "ETH": 1.0}
OKX_CONTRACT_COIN = {"BTC": 0.01, "ETH": 0.1, "SOL": 1.0}
#: smile shape (fitted to the Deribit BTC chain in datasets/options), term slope
SMILE_SKEW, SMILE_CURVATURE, TERM_SLOPE = -0.109, 0.088, 0.04
#: account types and their shares
ACCOUNT_MIX = {"directional": 0.30, "basis": 0.20, "hedged_options": 0.30, "short_vol": 0.20}
#: which coin an account trades
COIN_SHARE = (0.55, 0.30, 0.15)

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAY = np.timedelta64(1, "D")
_EIGHT = np.timedelta64(8, "h")


# ----------------------------------------------------------------------------- calendar


def _last_friday(year: int, month: int) -> np.datetime64:
    """08:00 UTC on the last Friday of ``month``."""
    first_next = np.datetime64(f"{year + (month == 12):04d}-{month % 12 + 1:02d}-01", "D")
    last = first_next - _DAY
    # numpy: 1970-01-01 was a Thursday -> weekday (Mon=0) = (days + 3) % 7
    wd = (last.astype(np.int64) + 3) % 7
    back = (wd - 4) % 7
    return (last - back * _DAY).astype("datetime64[s]") + _EIGHT


def expiry_calendar(as_of) -> dict[str, np.ndarray]:
    """Deribit-style listed expiries after ``as_of`` (datetime64[s], 08:00 UTC), by family.

    Returns ``daily`` (next 3 days), ``weekly`` (next 3 Fridays), ``monthly`` (next 3
    last Fridays) and ``quarterly`` (next 4 last Fridays of Mar/Jun/Sep/Dec), plus
    ``options`` (their union) and ``futures`` (2 weeklies, 1 monthly, 3 quarterlies).
    """
    t = to_utc_seconds(as_of)
    day0 = t.astype("datetime64[D]")
    cands = day0 + np.arange(0, 40) * _DAY
    eights = cands.astype("datetime64[s]") + _EIGHT
    eights = eights[eights > t]
    daily = eights[:3]
    wd = (eights.astype("datetime64[D]").astype(np.int64) + 3) % 7
    weekly = eights[wd == 4][:3]
    y, m = int(str(day0)[:4]), int(str(day0)[5:7])
    lf = []
    for k in range(0, 30):
        yy, mm = y + (m - 1 + k) // 12, (m - 1 + k) % 12 + 1
        lf.append((_last_friday(yy, mm), mm))
    monthly = np.array([d for d, _ in lf if d > t][:3], dtype="datetime64[s]")
    quarterly = np.array([d for d, mm in lf if d > t and mm % 3 == 0][:4], dtype="datetime64[s]")
    options = np.unique(np.concatenate([daily, weekly, monthly, quarterly]))
    futures = np.unique(np.concatenate([weekly[:2], monthly[:1], quarterly[:3]]))
    return {"daily": daily, "weekly": weekly, "monthly": monthly, "quarterly": quarterly,
            "options": options, "futures": futures}


def strike_grid(forward: float, sigma: float, t_years: float, step: float) -> np.ndarray:
    """Listed strikes: ``step`` within ±10 % of ``forward``, 5·step to ±40 %, 10·step beyond.

    The range is ±4 standard deviations (``σ√T``), at least ±10 %, within 0.2..4 × forward.
    """
    width = 4.0 * sigma * np.sqrt(max(t_years, 1.0 / 365.0))
    lo = forward * min(max(np.exp(-width), 0.2), 0.9)
    hi = forward * max(min(np.exp(width), 4.0), 1.1)
    parts = []
    for mult, band_lo, band_hi in ((1, 0.9, 1.1), (5, 0.6, 1.4), (10, 0.0, np.inf)):
        s = step * mult
        a, b = max(lo, forward * band_lo), min(hi, forward * band_hi)
        if b >= a:
            parts.append(np.arange(np.ceil(a / s) * s, b + 1e-9, s))
    k = np.unique(np.round(np.concatenate(parts), 8))
    return k[k > 0]


def smile_vol(atm: np.ndarray, strike: np.ndarray, forward: np.ndarray, t_years: np.ndarray) -> np.ndarray:
    """Implied vol [n] on the fitted smile: ``atm·clip(1 + skew·x + curv·x², 0.7, 2.0)``."""
    x = np.log(strike / forward) / (atm * np.sqrt(t_years))
    return atm * np.clip(1.0 + SMILE_SKEW * x + SMILE_CURVATURE * x * x, 0.7, 2.0)


def atm_vol(dvol: float, coin: str, t_years) -> np.ndarray:
    """ATM implied vol for ``coin`` at maturity ``t_years``, anchored on BTC DVOL (decimal)."""
    t = np.asarray(t_years, dtype=np.float64)
    term = np.clip(1.0 + TERM_SLOPE * np.log(np.maximum(t, 1 / 365) / (30 / 365)), 0.75, 1.25)
    return dvol * VOL_MULTIPLE[coin] * term


def _deribit_date(d: np.datetime64) -> str:
    y, m, dd = str(d)[:10].split("-")
    return f"{int(dd)}{_MONTHS[int(m) - 1]}{y[2:]}"


def _okx_date(d: np.datetime64) -> str:
    return str(d)[2:10].replace("-", "")


def _strike_text(k: float) -> str:
    return str(int(k)) if float(k).is_integer() else f"{k:g}"


# ----------------------------------------------------------------------------- market


def market_inputs(as_of, market=None) -> dict:
    """Index prices (USD) and DVOL (decimal) from the last daily closes known at ``as_of`` (the bars of days
    before it), from ``market`` (a ``gpurisk.market`` store, a folder, or None for the default store)."""
    t = to_utc_seconds(as_of)
    store = market_store(market)
    spot, dates = {}, []
    for c in COINS:  # three coins
        try:
            bars = store.daily_bars(c, as_of=t)
        except MarketDataError as exc:
            raise BookError(f"cannot generate a book at {t}: {exc}") from None
        if bars.empty:
            raise BookError(f"cannot generate a book at {t}: no {c} close is known then "
                            f"(the {c} history starts {store.daily_bars(c).index[0].date()})")
        spot[c] = float(bars["close"].iloc[-1])
        dates.append(bars.index[-1])
    dv = store.dvol(as_of=t)
    if dv.empty:
        full = store.dvol()
        start = f"the history starts {full.index[0].date()}" if len(full) else f"{store.name} has no BTC DVOL"
        raise BookError(f"cannot generate a book at {t}: it needs the DVOL of the day before, and {start}")
    return {"spot": spot, "dvol": float(dv.iloc[-1]), "price_date": str(min(dates).date()),
            "dvol_date": str(dv.index[-1].date())}


def build_instruments(as_of, mkt: dict) -> pd.DataFrame:
    """The listed universe at ``as_of`` with marks and vols: one row per instrument.

    Columns: the instruments and market columns of a book plus ``lot`` (smallest
    tradable quantity, contracts) and ``t_years``.
    """
    t = to_utc_seconds(as_of)
    cal = expiry_calendar(t)
    rows = []  # list of dicts of equal-length arrays

    def add(**cols):
        n = max(len(np.atleast_1d(v)) for v in cols.values())
        rows.append({k: np.broadcast_to(np.asarray(v, dtype=object if isinstance(v, str) else None), (n,))
                     for k, v in cols.items()})

    for coin in COINS:
        s = mkt["spot"][coin]
        fut_t = (cal["futures"] - t).astype(np.float64) / (365 * 86400.0)
        fut_f = s * np.exp(BASIS[coin] * fut_t)
        opt_t = (cal["options"] - t).astype(np.float64) / (365 * 86400.0)
        opt_f = s * np.exp(BASIS[coin] * opt_t)
        # binance spot
        add(instrument_id=f"{coin}USDT", venue="binance", underlying=coin, kind="spot", settlement="linear",
            contract_size=1.0, expiry=np.datetime64("NaT", "s"), strike=np.nan, option_type=None,
            underlying_price=s, implied_vol=np.nan, lot=1e-5, t_years=0.0)
        venues = ("deribit", "okx") if coin in DERIBIT_FUTURE_USD else ("okx",)
        for venue in venues:
            inverse = venue == "deribit"
            settle = "inverse" if inverse else "linear"
            fcs = DERIBIT_FUTURE_USD[coin] if inverse else OKX_CONTRACT_COIN[coin]
            ocs = 1.0 if inverse else OKX_CONTRACT_COIN[coin]
            perp = f"{coin}-PERPETUAL" if inverse else f"{coin}-USDT-SWAP"
            add(instrument_id=perp, venue=venue, underlying=coin, kind="perpetual", settlement=settle,
                contract_size=fcs, expiry=np.datetime64("NaT", "s"), strike=np.nan, option_type=None,
                underlying_price=s, implied_vol=np.nan, lot=1.0, t_years=0.0)
            names = [f"{coin}-{_deribit_date(d)}" if inverse else f"{coin}-USDT-{_okx_date(d)}"
                     for d in cal["futures"]]
            add(instrument_id=np.array(names, dtype=object), venue=venue, underlying=coin, kind="future",
                settlement=settle, contract_size=fcs, expiry=cal["futures"], strike=np.nan, option_type=None,
                underlying_price=fut_f, implied_vol=np.nan, lot=1.0, t_years=fut_t)
            for d, tt, f in zip(cal["options"], opt_t, opt_f):
                atm = float(atm_vol(mkt["dvol"], coin, tt))
                k = strike_grid(f, atm, tt, STRIKE_STEP[coin])
                kk = np.repeat(k, 2)
                typ = np.tile(np.array(["call", "put"], dtype=object), len(k))
                stem = f"{coin}-{_deribit_date(d)}" if inverse else f"{coin}-USDT-{_okx_date(d)}"
                ids = np.array([f"{stem}-{_strike_text(x)}-{'C' if c == 'call' else 'P'}" for x, c in zip(kk, typ)],
                               dtype=object)
                add(instrument_id=ids, venue=venue, underlying=coin, kind="option", settlement=settle,
                    contract_size=ocs, expiry=d, strike=kk, option_type=typ, underlying_price=f,
                    implied_vol=smile_vol(atm, kk, f, tt), lot=0.1 if inverse else 1.0, t_years=tt)
    cols = rows[0].keys()
    df = pd.DataFrame({c: np.concatenate([r[c] for r in rows]) for c in cols})
    for c in ("contract_size", "strike", "underlying_price", "implied_vol", "lot", "t_years"):
        df[c] = df[c].astype(np.float64)
    df["expiry"] = pd.to_datetime(df["expiry"].astype("datetime64[s]"), utc=True)
    for c in ("instrument_id", "venue", "underlying", "kind", "settlement", "option_type"):
        df[c] = df[c].astype("str")
    df.loc[df["kind"] != "option", "option_type"] = None
    return df


# ----------------------------------------------------------------------------- accounts


class _Universe:
    """Index arrays into the instruments frame for vectorised leg selection."""

    def __init__(self, ins: pd.DataFrame):
        self.ins = ins
        venue = ins["venue"].to_numpy(dtype=object)
        coin = ins["underlying"].to_numpy(dtype=object)
        kind = ins["kind"].to_numpy(dtype=object)
        self.vcode = np.select([venue == v for v in VENUES], np.arange(len(VENUES)), -1)
        self.ccode = np.select([coin == c for c in COINS], np.arange(len(COINS)), -1)
        nv, nc = len(VENUES), len(COINS)
        self.spot = np.full(nc, -1)
        self.perp = np.full((nv, nc), -1)
        rows = np.arange(len(ins))
        for r in rows[kind == "spot"]:
            self.spot[self.ccode[r]] = r
        for r in rows[kind == "perpetual"]:
            self.perp[self.vcode[r], self.ccode[r]] = r
        fut = rows[kind == "future"]
        self.n_fut = int(np.sum((self.vcode[fut] == 1) & (self.ccode[fut] == 0)))
        self.fut = np.full((nv, nc, self.n_fut), -1)
        for v in range(nv):
            for c in range(nc):
                sel = fut[(self.vcode[fut] == v) & (self.ccode[fut] == c)]
                if len(sel):
                    self.fut[v, c] = sel[np.argsort(ins["expiry"].to_numpy()[sel], kind="stable")]
        # option chains: one per (venue, coin, expiry); rows ordered strike, (call, put)
        opt = rows[kind == "option"]
        exp_code = pd.factorize(ins["expiry"].to_numpy()[opt], sort=True)[0]
        self.n_exp = int(exp_code.max()) + 1
        chain = (self.vcode[opt] * nc + self.ccode[opt]) * self.n_exp + exp_code
        order = np.lexsort((ins["option_type"].to_numpy(dtype=object)[opt] == "put",
                            ins["strike"].to_numpy()[opt], chain))
        self.opt_rows = opt[order]
        self.opt_chain = chain[order]
        self.opt_strike = ins["strike"].to_numpy()[self.opt_rows]
        n_chain = nv * nc * self.n_exp
        self.chain_start = np.searchsorted(self.opt_chain, np.arange(n_chain), side="left")
        self.chain_stop = np.searchsorted(self.opt_chain, np.arange(n_chain), side="right")
        self.chain_t = np.zeros(n_chain)
        self.chain_f = np.zeros(n_chain)
        self.chain_atm = np.zeros(n_chain)
        has = self.chain_stop > self.chain_start
        first = self.opt_rows[self.chain_start[has]]
        self.chain_t[has] = ins["t_years"].to_numpy()[first]
        self.chain_f[has] = ins["underlying_price"].to_numpy()[first]
        self.opt_key = self.opt_chain.astype(np.float64) * 1e9 + self.opt_strike

    def option(self, venue, coin, exp_i, strike_target, is_put) -> np.ndarray:
        """[n] instrument rows of the listed option nearest to ``strike_target`` in each chain."""
        nc = len(COINS)
        chain = (venue * nc + coin) * self.n_exp + exp_i
        lo, hi = self.chain_start[chain], self.chain_stop[chain]
        if np.any(hi - lo < 2):
            raise ValueError("option leg on a venue/coin/expiry without a listed chain")
        pos = np.searchsorted(self.opt_key, chain * 1e9 + strike_target)  # first strike >= target
        up = lo + ((np.clip(pos, lo, hi - 1) - lo) // 2) * 2  # its (call, put) pair
        down = np.maximum(up - 2, lo)
        closer_down = np.abs(self.opt_strike[down] - strike_target) < np.abs(self.opt_strike[up] - strike_target)
        pick = np.where(closer_down, down, up)
        return self.opt_rows[pick + is_put.astype(np.int64)]


def _to_contracts(coin_qty: np.ndarray, rows: np.ndarray, ins_cs, ins_settle_inv, ins_kind_opt, ins_price, ins_lot):
    """Signed contracts (rounded to the lot, never zero) for a signed coin amount on instrument ``rows``."""
    cs = ins_cs[rows]
    inv_fut = ins_settle_inv[rows] & ~ins_kind_opt[rows]
    q = np.where(inv_fut, coin_qty * ins_price[rows] / cs, coin_qty / cs)
    lot = ins_lot[rows]
    q = np.round(q / lot) * lot
    q = np.where(q == 0, np.sign(coin_qty) * lot, q)
    q = np.where(q == 0, lot, q)
    return np.round(q, 6)


def generate_book(n_accounts: int, seed: int, as_of=None, market=None) -> dict:
    """A sample book: ``{"instruments", "market", "index", "positions", "balances": DataFrame, "meta": dict}``.

    Deterministic for ``(n_accounts, seed, as_of)`` and the history of ``market`` (a ``gpurisk.market``
    store, a folder, or None for the default store); ``as_of`` defaults to 2024-12-31T08:00:00Z.
    Quantities are signed contracts; balances in asset units.
    """
    n_accounts = int(n_accounts)
    if n_accounts < 1:
        raise BookError(f"n_accounts must be >= 1, got {n_accounts}")
    as_of = to_utc_seconds(as_of if as_of is not None else DEFAULT_AS_OF)
    mkt = market_inputs(as_of, market)
    full = build_instruments(as_of, mkt)
    u = _Universe(full)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), n_accounts]))
    n = n_accounts

    ins_cs = full["contract_size"].to_numpy()
    ins_inv = (full["settlement"] == "inverse").to_numpy(dtype=bool)
    ins_opt = (full["kind"] == "option").to_numpy(dtype=bool)
    ins_price = full["underlying_price"].to_numpy()
    ins_lot = full["lot"].to_numpy()
    spot_px = np.array([mkt["spot"][c] for c in COINS])

    types = np.array(list(ACCOUNT_MIX))
    acct_type = rng.choice(len(types), size=n, p=list(ACCOUNT_MIX.values()))
    coin = rng.choice(len(COINS), size=n, p=list(COIN_SHARE))
    deriv_venue = np.where((coin == 2) | (rng.random(n) < 0.4), 1, 0)  # SOL only on okx
    notional = np.minimum(10_000.0 * (1.0 + rng.pareto(1.16, size=n)), 2e8)  # USD, heavy-tailed
    coin_amt = notional / spot_px[coin]
    sign = np.where(rng.random(n) < 0.55, 1.0, -1.0)
    n_fut = u.n_fut

    legs_acct, legs_row, legs_coinqty = [], [], []

    def leg(mask, row, qty):
        legs_acct.append(np.flatnonzero(mask))
        legs_row.append(np.asarray(row)[mask] if np.ndim(row) else np.full(mask.sum(), row))
        legs_coinqty.append(np.asarray(qty)[mask])

    # directional futures: a perpetual, and sometimes a dated future, same direction
    d = acct_type == 0
    w = rng.uniform(0.3, 1.0, n)
    with_fut = d & (rng.random(n) < 0.6)
    leg(d, u.perp[deriv_venue, coin], sign * coin_amt * np.where(with_fut, w, 1.0))
    fk = rng.integers(0, n_fut, n)
    leg(with_fut, u.fut[deriv_venue, coin, fk], sign * coin_amt * (1 - w))

    # basis trades: long spot on binance, short a monthly/quarterly future
    b = acct_type == 1
    bk = rng.integers(max(n_fut - 4, 0), n_fut, n)
    leg(b, u.spot[coin], coin_amt)
    leg(b, u.fut[deriv_venue, coin, bk], -coin_amt)

    # hedged option books: 4 random option legs, delta-hedged with the perpetual
    h = acct_type == 2
    hedge = np.zeros(n)
    for _ in range(4):
        e = rng.integers(0, u.n_exp, n)
        ch = (deriv_venue * len(COINS) + coin) * u.n_exp + e
        t = u.chain_t[ch]
        atm = atm_vol(1.0, "BTC", np.maximum(t, 1 / 365)) * _dvol_mult(mkt["dvol"], coin)
        k_target = u.chain_f[ch] * np.exp(rng.normal(0.0, 1.0, n) * atm * np.sqrt(np.maximum(t, 1 / 365)))
        is_put = rng.random(n) < 0.5
        rows = u.option(deriv_venue, coin, e, k_target, is_put)
        q = np.where(rng.random(n) < 0.5, 1.0, -1.0) * coin_amt * rng.uniform(0.1, 0.5, n)
        leg(h, rows, q)
        f, kx, sv, tt = ins_price[rows], full["strike"].to_numpy()[rows], full["implied_vol"].to_numpy()[rows], t
        d1 = (np.log(f / kx) + 0.5 * sv * sv * tt) / (sv * np.sqrt(np.maximum(tt, 1e-9)))
        delta = ndtr(d1) - is_put
        hedge -= np.where(h, q * delta, 0.0)
    leg(h & (np.abs(hedge) * spot_px[coin] > 50.0), u.perp[deriv_venue, coin], hedge)

    # short-vol sellers: short strangles (0.5..1.5 sd out), sometimes on a second expiry
    v = acct_type == 3
    for j in range(2):
        on = v if j == 0 else v & (rng.random(n) < 0.4)
        e = rng.integers(min(3, u.n_exp - 1), u.n_exp, n)
        ch = (deriv_venue * len(COINS) + coin) * u.n_exp + e
        t = np.maximum(u.chain_t[ch], 1 / 365)
        atm = atm_vol(1.0, "BTC", t) * _dvol_mult(mkt["dvol"], coin)
        z = rng.uniform(0.5, 1.5, n) * atm * np.sqrt(t)
        size = -coin_amt * rng.uniform(0.5, 2.0, n)
        leg(on, u.option(deriv_venue, coin, e, u.chain_f[ch] * np.exp(-z), np.ones(n, bool)), size)
        leg(on, u.option(deriv_venue, coin, e, u.chain_f[ch] * np.exp(z), np.zeros(n, bool)), size)

    leg_acct = np.concatenate(legs_acct)
    leg_row = np.concatenate(legs_row).astype(np.int64)
    acct, row = leg_acct, leg_row
    cq = np.concatenate(legs_coinqty)
    qty = _to_contracts(cq, row, ins_cs, ins_inv, ins_opt, ins_price, ins_lot)
    # net legs that hit the same instrument twice (rare), keep account order
    key = acct * len(full) + row
    uk, inv = np.unique(key, return_inverse=True)
    qty = np.bincount(inv, weights=qty, minlength=len(uk))
    acct, row = uk // len(full), uk % len(full)
    nz = np.round(qty, 6) != 0
    acct, row, qty = acct[nz], row[nz], np.round(qty[nz], 6)

    # collateral: per (account, venue) a lognormal share of gross notional
    usd = np.abs(cq) * spot_px[coin[leg_acct]]
    av = leg_acct * len(VENUES) + u.vcode[leg_row]
    av_u, av_inv = np.unique(av, return_inverse=True)
    gross = np.bincount(av_inv, weights=usd, minlength=len(av_u))
    b_acct, b_venue = av_u // len(VENUES), av_u % len(VENUES)
    share = np.exp(rng.normal(np.log(0.45), 0.6, len(av_u)))
    share = np.where(b_venue == 2, share * 0.2, share)
    coll_usd = np.maximum(gross * share, 100.0)
    okx_usdc = rng.random(len(av_u)) < 0.25
    asset = np.where(b_venue == 0, np.array(COINS, dtype=object)[coin[b_acct]],
                     np.where((b_venue == 1) & okx_usdc, "USDC", "USDT")).astype(object)
    price = np.where(b_venue == 0, spot_px[coin[b_acct]], 1.0)
    amount = np.round(coll_usd / price, 8)
    extra = (b_venue == 1) & (rng.random(len(av_u)) < 0.2)  # some okx accounts also post BTC
    bal_acct = np.concatenate([b_acct, b_acct[extra]])
    bal_venue = np.concatenate([b_venue, b_venue[extra]])
    bal_asset = np.concatenate([asset, np.full(extra.sum(), "BTC", dtype=object)])
    bal_amount = np.concatenate([amount, np.round(coll_usd[extra] * 0.5 / spot_px[0], 8)])
    border = np.lexsort((bal_asset.astype(str), bal_venue, bal_acct))

    width = max(7, len(str(n - 1)))
    acct_ids = ("ACC" + pd.Series(np.arange(n)).astype("str").str.zfill(width)).to_numpy(dtype=object)

    ins_cols = ["instrument_id", "venue", "underlying", "kind", "settlement", "contract_size", "expiry", "strike",
                "option_type"]
    instruments = full[ins_cols].reset_index(drop=True)
    market = full[["instrument_id", "underlying_price", "implied_vol"]].reset_index(drop=True)
    index = pd.DataFrame({"underlying": list(COINS) + list(STABLES),
                          "price": [mkt["spot"][c] for c in COINS] + [1.0] * len(STABLES)})
    index["underlying"] = index["underlying"].astype("str")
    positions = pd.DataFrame({
        "account_id": pd.array(acct_ids[acct], dtype="str"),
        "instrument_id": pd.array(full["instrument_id"].to_numpy(dtype=object)[row], dtype="str"),
        "quantity": qty,
    })
    balances = pd.DataFrame({
        "account_id": pd.array(acct_ids[bal_acct[border]], dtype="str"),
        "venue": pd.array(np.array(VENUES, dtype=object)[bal_venue[border]], dtype="str"),
        "asset": pd.array(bal_asset[border], dtype="str"),
        "amount": bal_amount[border],
    })
    meta = {
        "as_of": str(np.datetime_as_string(as_of, unit="s")) + "Z",
        "seed": int(seed),
        "n_accounts": n,
        "generator": GENERATOR,
        "price_date": mkt["price_date"],
        "dvol": round(mkt["dvol"], 6),
        "dvol_date": mkt["dvol_date"],
        "account_types": {str(t): int((acct_type == i).sum()) for i, t in enumerate(types)},
    }
    return {"instruments": instruments, "market": market, "index": index, "positions": positions,
            "balances": balances, "meta": meta}


def _dvol_mult(dvol: float, coin: np.ndarray) -> np.ndarray:
    """[n] DVOL × the coin's vol multiple."""
    return dvol * np.array([VOL_MULTIPLE[c] for c in COINS])[coin]


def sample_book(n_accounts: int = 100, seed: int = 0, as_of=None, market=None):
    """A generated, validated ``Book`` (for tests and examples)."""
    from .book import Book
    from .validate import validate

    g = generate_book(n_accounts, seed, as_of, market)
    tables = {k: g[k] for k in ("instruments", "market", "index", "positions", "balances")}
    clean, _, _ = validate(tables, g["meta"]["as_of"])
    return Book.from_frames(g["meta"]["as_of"], **clean)
