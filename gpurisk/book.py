"""Columnar containers: a book is structs of NumPy arrays, never per-row Python objects.

Shapes: I instruments, U underlyings, A accounts, N positions, B balance rows,
P portfolios. Prices are USD; quantities are signed contracts (long > 0).

Codes used in the integer columns:

- ``kind``: SPOT=0, FUTURE=1, PERPETUAL=2, OPTION=3
- ``settlement``: LINEAR=0, INVERSE=1
- ``option_type``: CALL=+1, PUT=-1, none=0

``contract_size`` is coin per contract for linear contracts, USD per contract for
inverse futures and perpetuals, and 1 coin for inverse (Deribit-style) options.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

SPOT, FUTURE, PERPETUAL, OPTION = 0, 1, 2, 3
LINEAR, INVERSE = 0, 1
CALL, PUT, NO_OPTION = 1, -1, 0

KIND_CODES = {"spot": SPOT, "future": FUTURE, "perpetual": PERPETUAL, "option": OPTION}
SETTLEMENT_CODES = {"linear": LINEAR, "inverse": INVERSE}
OPTION_TYPE_CODES = {"call": CALL, "put": PUT}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
SETTLEMENT_NAMES = {v: k for k, v in SETTLEMENT_CODES.items()}

#: Assets that count as USD unless a scenario shocks them explicitly (de-peg).
STABLECOINS = ("USD", "USDT", "USDC")
#: Settlement currency of every linear contract (USDT counts as USD).
LINEAR_SETTLEMENT_CURRENCY = "USD"

SECONDS_PER_YEAR = 365.0 * 86400.0


def to_utc_seconds(t) -> np.datetime64:
    """A timestamp (str, datetime, Timestamp; naive means UTC) as naive UTC datetime64[s]."""
    ts = pd.Timestamp(t)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.to_datetime64(), "s")


def year_fraction(as_of: np.datetime64, expiry: np.ndarray) -> np.ndarray:
    """ACT/365 in exact seconds from ``as_of`` to ``expiry`` [I]; 0 where expiry is NaT."""
    exp = np.asarray(expiry, dtype="datetime64[s]")
    secs = (exp - np.datetime64(as_of, "s")).astype("float64")
    secs[np.isnat(exp)] = 0.0
    return secs / SECONDS_PER_YEAR


@dataclass(frozen=True)
class Instruments:
    """I instruments as columns."""

    instrument_id: np.ndarray  # [I] str
    venue: np.ndarray  # [I] str
    underlying: np.ndarray  # [I] str
    kind: np.ndarray  # [I] int8, KIND_CODES
    settlement: np.ndarray  # [I] int8, SETTLEMENT_CODES
    contract_size: np.ndarray  # [I] float64
    expiry: np.ndarray  # [I] datetime64[s]; NaT for spot and perpetual
    strike: np.ndarray  # [I] float64; NaN unless option
    option_type: np.ndarray  # [I] int8; CALL, PUT or 0

    def __len__(self) -> int:
        return len(self.instrument_id)

    def settlement_currency(self) -> np.ndarray:
        """[I] str: the underlying coin for inverse contracts, ``USD`` for linear ones."""
        return np.where(self.settlement == INVERSE, self.underlying, LINEAR_SETTLEMENT_CURRENCY)

    def take(self, idx: np.ndarray) -> "Instruments":
        return Instruments(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    @staticmethod
    def concat(parts: list["Instruments"]) -> "Instruments":
        return Instruments(
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in Instruments.__dataclass_fields__}
        )


@dataclass(frozen=True)
class MarketSnapshot:
    """One market snapshot at ``as_of``: index per underlying and mark/vol per instrument."""

    as_of: np.datetime64  # UTC, seconds
    underlyings: np.ndarray  # [U] str, sorted unique
    index_price: np.ndarray  # [U] float64 USD spot index
    underlying_price: np.ndarray  # [I] float64 USD: the mark, or the option's forward
    implied_vol: np.ndarray  # [I] float64 decimal; NaN unless option

    def index_of(self, names: np.ndarray) -> np.ndarray:
        """[n] int32 column in ``underlyings`` for each name; KeyError names the missing ones."""
        names = np.asarray(names)
        pos = np.searchsorted(self.underlyings, names)
        pos = np.clip(pos, 0, max(len(self.underlyings) - 1, 0))
        ok = (len(self.underlyings) > 0) & (self.underlyings[pos] == names) if len(names) else np.ones(0, bool)
        if not np.all(ok):
            missing = sorted(set(names[~ok].tolist()))
            raise KeyError(f"no index price for underlying(s) {missing}")
        return pos.astype(np.int32)


@dataclass(frozen=True)
class Positions:
    """N positions; at most one row per (account, instrument)."""

    account_idx: np.ndarray  # [N] int32 into Book.accounts
    instrument_idx: np.ndarray  # [N] int32 into Book.instruments
    quantity: np.ndarray  # [N] float64 signed contracts


@dataclass(frozen=True)
class Balances:
    """B collateral rows: the equity each venue reports for an account, per asset."""

    account_idx: np.ndarray  # [B] int32 into Book.accounts
    venue: np.ndarray  # [B] str
    asset: np.ndarray  # [B] str
    amount: np.ndarray  # [B] float64, units of the asset


@dataclass(frozen=True)
class Portfolios:
    """P portfolios in CSR over instruments: rows ``indptr[p]:indptr[p+1]`` belong to portfolio p.

    A portfolio is a group margined together: an account, an account×venue or an
    account×settlement currency. ``key`` holds the label columns ([P] each), e.g.
    ``{"account_id": ..., "venue": ...}``.
    """

    indptr: np.ndarray  # [P+1] int64
    instrument_idx: np.ndarray  # [nnz] int32
    quantity: np.ndarray  # [nnz] float64
    account_idx: np.ndarray  # [P] int32
    key: dict = field(default_factory=dict)
    grouping: str = "account"

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def slice(self, start: int, stop: int) -> "Portfolios":
        """Portfolios [start, stop) as a new CSR (views where possible)."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return Portfolios(
            indptr=self.indptr[start : stop + 1] - lo,
            instrument_idx=self.instrument_idx[lo:hi],
            quantity=self.quantity[lo:hi],
            account_idx=self.account_idx[start:stop],
            key={k: v[start:stop] for k, v in self.key.items()},
            grouping=self.grouping,
        )

    def scaled(self, k: float) -> "Portfolios":
        return replace(self, quantity=self.quantity * k)


def csr_from_groups(group: np.ndarray, n_groups: int, instrument_idx: np.ndarray, quantity: np.ndarray):
    """Sort (group, instrument) pairs into CSR; returns indptr [G+1], instrument_idx, quantity.

    Rows of one group are ordered by instrument so the CSR is canonical: the
    result does not depend on the input row order.
    """
    order = np.lexsort((instrument_idx, group))
    counts = np.bincount(group, minlength=n_groups)
    indptr = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, instrument_idx[order].astype(np.int32), quantity[order].astype(np.float64)


def _lookup(keys: np.ndarray, values: pd.Series) -> np.ndarray:
    """[n] int64 position of each value in ``keys`` (−1 if absent), via Arrow's hash lookup."""
    import pyarrow as pa
    import pyarrow.compute as pc

    vals = pa.array(values.astype(str).to_numpy(dtype=object), type=pa.string())
    pos = pc.index_in(vals, value_set=pa.array(np.asarray(keys).astype(str), type=pa.string()))
    return pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class Book:
    """A risk team's whole book at one as-of time."""

    as_of: np.datetime64
    accounts: np.ndarray  # [A] str, sorted unique
    instruments: Instruments
    market: MarketSnapshot
    positions: Positions
    balances: Balances

    @property
    def n_accounts(self) -> int:
        return len(self.accounts)

    def underlying_idx(self) -> np.ndarray:
        """[I] int32: each instrument's column in ``market.underlyings``."""
        return self.market.index_of(self.instruments.underlying)

    def time_to_expiry(self) -> np.ndarray:
        """[I] float64 years (ACT/365, exact seconds); 0 for spot and perpetuals."""
        return year_fraction(self.as_of, self.instruments.expiry)

    def portfolios(self, by: str = "account") -> Portfolios:
        """CSR portfolios grouped ``by`` one of ``account``, ``account_venue``, ``account_settlement``."""
        pos = self.positions
        if by == "account":
            group = pos.account_idx.astype(np.int64)
            n = self.n_accounts
            indptr, idx, qty = csr_from_groups(group, n, pos.instrument_idx, pos.quantity)
            acct = np.arange(n, dtype=np.int32)
            return Portfolios(indptr, idx, qty, acct, {"account_id": self.accounts}, by)
        if by == "account_venue":
            label = self.instruments.venue[pos.instrument_idx]
            label_name = "venue"
        elif by == "account_settlement":
            label = self.instruments.settlement_currency()[pos.instrument_idx]
            label_name = "currency"
        else:
            raise ValueError(f"unknown portfolio grouping {by!r}; use account, account_venue or account_settlement")
        codes, uniques = pd.factorize(label, sort=True)
        uniques = np.asarray(uniques, dtype=object)
        pair = pos.account_idx.astype(np.int64) * max(len(uniques), 1) + codes
        pair_u, group = np.unique(pair, return_inverse=True)
        indptr, idx, qty = csr_from_groups(group, len(pair_u), pos.instrument_idx, pos.quantity)
        acct = (pair_u // max(len(uniques), 1)).astype(np.int32)
        lab = uniques[pair_u % max(len(uniques), 1)] if len(uniques) else np.empty(0, dtype=object)
        return Portfolios(indptr, idx, qty, acct, {"account_id": self.accounts[acct], label_name: lab}, by)

    @staticmethod
    def from_frames(
        as_of,
        instruments: pd.DataFrame,
        market: pd.DataFrame,
        index: pd.DataFrame,
        positions: pd.DataFrame,
        balances: pd.DataFrame,
    ) -> "Book":
        """Build a book from *clean* tables (see ``gpurisk.validate``); columns as in docs/data-format.md.

        Positions with the same (account, instrument) are netted. Vectorised: no
        per-row Python work, so 10 M positions load in seconds.
        """
        as_of = to_utc_seconds(as_of)
        ins = instruments.reset_index(drop=True)
        ids = ins["instrument_id"].astype(str).to_numpy(dtype=object)
        expiry = pd.to_datetime(ins["expiry"], utc=True, errors="coerce")
        expiry = expiry.dt.tz_localize(None).to_numpy(dtype="datetime64[s]")
        opt = ins["option_type"].astype("string").str.lower().fillna("")
        instr = Instruments(
            instrument_id=ids,
            venue=ins["venue"].astype(str).to_numpy(dtype=object),
            underlying=ins["underlying"].astype(str).to_numpy(dtype=object),
            kind=ins["kind"].str.lower().map(KIND_CODES).to_numpy(dtype=np.int8),
            settlement=ins["settlement"].str.lower().map(SETTLEMENT_CODES).to_numpy(dtype=np.int8),
            contract_size=ins["contract_size"].to_numpy(dtype=np.float64),
            expiry=expiry,
            strike=pd.to_numeric(ins["strike"], errors="coerce").to_numpy(dtype=np.float64),
            option_type=opt.map({"call": CALL, "put": PUT}).fillna(0).to_numpy(dtype=np.int8),
        )
        # market: one row per instrument, aligned to instrument order
        mk = market.drop_duplicates("instrument_id", keep="last").set_index("instrument_id")
        mk = mk.reindex(ids)
        idx_tab = index.drop_duplicates("underlying", keep="last").sort_values("underlying")
        snap = MarketSnapshot(
            as_of=as_of,
            underlyings=idx_tab["underlying"].astype(str).to_numpy(dtype=object),
            index_price=idx_tab["price"].to_numpy(dtype=np.float64),
            underlying_price=mk["underlying_price"].to_numpy(dtype=np.float64),
            implied_vol=pd.to_numeric(mk.get("implied_vol", pd.Series(np.nan, index=mk.index)), errors="coerce")
            .to_numpy(dtype=np.float64),
        )
        # accounts over positions and balances: one sorted factorisation of both columns
        n_pos = len(positions)
        acct_all = pd.concat([positions["account_id"].astype(str), balances["account_id"].astype(str)], ignore_index=True)
        acct_codes, accounts = pd.factorize(acct_all, sort=True)
        accounts = np.asarray(accounts, dtype=object)
        p_acct = acct_codes[:n_pos].astype(np.int64)
        p_ins = _lookup(ids, positions["instrument_id"])
        if (p_ins < 0).any():
            raise KeyError("positions reference instruments not in the instruments table; validate the book first")
        qty = positions["quantity"].to_numpy(dtype=np.float64)
        # net duplicates (account, instrument)
        pair = p_acct * len(ids) + p_ins
        pair_u, inv = np.unique(pair, return_inverse=True)
        q_net = np.bincount(inv, weights=qty, minlength=len(pair_u))
        pos = Positions(
            account_idx=(pair_u // len(ids)).astype(np.int32),
            instrument_idx=(pair_u % len(ids)).astype(np.int32),
            quantity=q_net,
        )
        bal = Balances(
            account_idx=acct_codes[n_pos:].astype(np.int32),
            venue=balances["venue"].astype(str).to_numpy(dtype=object),
            asset=balances["asset"].astype(str).to_numpy(dtype=object),
            amount=balances["amount"].to_numpy(dtype=np.float64),
        )
        return Book(as_of=as_of, accounts=accounts, instruments=instr, market=snap, positions=pos, balances=bal)
