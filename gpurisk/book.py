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

from .errors import ValidationError
from .schema import DEFAULT_ACCOUNT_KIND, REQUIRED_COLUMNS, TABLES, VALUE_CHARS, reject_message

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

    vals = pa.array(pd.Series(values).astype("str"), type=pa.string())
    pos = pc.index_in(vals, value_set=pa.array(pd.Series(np.asarray(keys, dtype=object)).astype("str"), type=pa.string()))
    return pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class AccountGroups:
    """The optional ``accounts`` table, aligned to ``Book.accounts`` ([A] each).

    group_id: the member group an account belongs to (affiliates default together);
    name: display name; kind: e.g. ``house``, ``client``, ``fund`` (``unspecified`` if not given).
    """

    group_id: np.ndarray  # [A] str
    name: np.ndarray  # [A] str
    kind: np.ndarray  # [A] str

    @staticmethod
    def own(accounts: np.ndarray) -> "AccountGroups":
        """Each account its own group, named by its id, of kind ``unspecified``."""
        acc = np.asarray(accounts, dtype=object)
        return AccountGroups(group_id=acc.copy(), name=acc.copy(),
                             kind=np.full(len(acc), DEFAULT_ACCOUNT_KIND, dtype=object))


@dataclass(frozen=True)
class Book:
    """A risk team's whole book at one as-of time.

    ``groups`` holds the optional ``accounts`` table aligned to ``accounts``; None means each
    account is its own group (``account_groups()`` gives the aligned arrays either way).
    """

    as_of: np.datetime64
    accounts: np.ndarray  # [A] str, sorted unique
    instruments: Instruments
    market: MarketSnapshot
    positions: Positions
    balances: Balances
    groups: AccountGroups | None = None

    @property
    def n_accounts(self) -> int:
        return len(self.accounts)

    def account_groups(self) -> AccountGroups:
        """[A] group, name and kind of every account (its own group when the book has no accounts table)."""
        return self.groups if self.groups is not None else AccountGroups.own(self.accounts)

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
        accounts: pd.DataFrame | None = None,
    ) -> "Book":
        """Build a book from validated tables (``gpurisk.validate``); columns as in docs/data-format.md.

        ``accounts`` (optional: ``account_id, group_id`` and optionally ``name, kind``) puts
        accounts into member groups; an account it does not list is its own group, and a listed
        account without positions or balances is ignored. A missing id or a repeated
        ``account_id`` raises ``ValidationError`` like the other tables.

        Takes the clean tables of ``gpurisk.validate`` (or equally clean frames built in
        Python) and checks them cheaply, vectorised: a cell that would give a wrong or
        NaN figure raises ``ValidationError`` with one line naming the table, the row
        (1-based position in the frame passed) and the column: missing or repeated ids,
        unknown codes, a non-finite or non-positive contract size, strike, mark, vol or
        index price, a missing or unreadable expiry of a future or option, an instrument
        without a market row or an index price, a position on an unknown instrument, a
        non-finite quantity or amount. It does not apply the policy checks of
        ``gpurisk.validate`` (notional bound, mark/index band, vol cap, expiry after
        ``as_of``) and does not need an index row for a balance's asset (the margin
        models check the assets they price).

        Rows with the same (account, instrument) are netted into one position, and
        balance rows with the same (account, venue, asset) into one balance (the merge
        policy of docs/data-format.md). Vectorised: 10 M positions load in seconds.
        """
        as_of = to_utc_seconds(as_of)
        acc_tab = None if accounts is None else accounts.reset_index(drop=True)
        tabs = {"instruments": instruments, "market": market, "index": index, "positions": positions,
                "balances": balances}
        for name in TABLES:
            missing = [c for c in REQUIRED_COLUMNS[name] if c not in tabs[name].columns]
            if missing:
                raise ValidationError(f"Book.from_frames: table {name!r} lacks column(s) {', '.join(missing)}")
        ins = instruments.reset_index(drop=True)
        mkt = market.reset_index(drop=True)
        idx_tab = index.reset_index(drop=True)
        pos_tab = positions.reset_index(drop=True)
        bal_tab = balances.reset_index(drop=True)

        # instruments
        ids = _ids("instruments", ins, "instrument_id", unique_reason="duplicate_instrument").to_numpy(dtype=object)
        kind = _codes("instruments", ins, "kind", KIND_CODES, "unknown_kind")
        settle = _codes("instruments", ins, "settlement", SETTLEMENT_CODES, "unknown_settlement")
        is_opt = kind == OPTION
        is_dated = is_opt | (kind == FUTURE)
        cs = _numbers("instruments", ins, "contract_size", positive=True)
        expiry = _expiry("instruments", ins, is_dated)
        # option fields are read on options only (validation rejects them elsewhere; here they are ignored)
        sel = np.flatnonzero(is_opt)
        otype = np.zeros(len(ins), dtype=np.int8)
        otype[sel] = _codes("instruments", ins.iloc[sel], "option_type", OPTION_TYPE_CODES, "bad_option_type", rows=sel)
        strike = np.full(len(ins), np.nan)
        strike[sel] = _numbers("instruments", ins.iloc[sel], "strike", positive=True, rows=sel)
        underlying = _ids("instruments", ins, "underlying").to_numpy(dtype=object)

        # index: one row per underlying
        und = _ids("index", idx_tab, "underlying", unique_reason="duplicate_underlying").to_numpy(dtype=object)
        price = _numbers("index", idx_tab, "price", positive=True)
        _fail("instruments", ins, _lookup(und, underlying) < 0, "underlying", "unknown_underlying")
        order = np.argsort(und, kind="stable")

        # market: one row per instrument, aligned to instrument order
        m_ids = _ids("market", mkt, "instrument_id", unique_reason="duplicate_market_row")
        _fail("market", mkt, _lookup(ids, m_ids) < 0, "instrument_id", "unknown_instrument")
        m_row = _lookup(m_ids.to_numpy(dtype=object), ids)
        _fail("instruments", ins, m_row < 0, "instrument_id", "missing_market_row")
        up = _numbers("market", mkt, "underlying_price", positive=True)[m_row]
        vol = np.full(len(ins), np.nan)
        vol[sel] = _numbers("market", mkt.iloc[m_row[sel]], "implied_vol", positive=True, rows=m_row[sel],
                            zero_reason="option_without_vol")
        instr = Instruments(
            instrument_id=ids,
            venue=_ids("instruments", ins, "venue").to_numpy(dtype=object),
            underlying=underlying,
            kind=kind,
            settlement=settle,
            contract_size=cs,
            expiry=expiry,
            strike=strike,
            option_type=otype,
        )
        snap = MarketSnapshot(
            as_of=as_of,
            underlyings=und[order],
            index_price=price[order],
            underlying_price=up,
            implied_vol=vol,
        )

        # positions and balances
        p_acct_txt = _ids("positions", pos_tab, "account_id")
        p_ins = _lookup(ids, _ids("positions", pos_tab, "instrument_id"))
        _fail("positions", pos_tab, p_ins < 0, "instrument_id", "unknown_instrument")
        qty = _numbers("positions", pos_tab, "quantity")
        b_acct_txt = _ids("balances", bal_tab, "account_id")
        b_venue = _ids("balances", bal_tab, "venue")
        b_asset = _ids("balances", bal_tab, "asset")
        amount = _numbers("balances", bal_tab, "amount")

        # accounts over positions and balances: one sorted factorisation of both columns
        n_pos = len(pos_tab)
        acct_codes, accounts = pd.factorize(pd.concat([p_acct_txt, b_acct_txt], ignore_index=True), sort=True)
        accounts = np.asarray(accounts, dtype=object)
        p_acct = acct_codes[:n_pos].astype(np.int64)
        # net duplicates (account, instrument)
        n_ins = max(len(ids), 1)
        pair = p_acct * n_ins + p_ins
        pair_u, inv = np.unique(pair, return_inverse=True)
        pos = Positions(
            account_idx=(pair_u // n_ins).astype(np.int32),
            instrument_idx=(pair_u % n_ins).astype(np.int32),
            quantity=np.bincount(inv.reshape(-1), weights=qty, minlength=len(pair_u)).astype(np.float64),
        )
        # net duplicates (account, venue, asset)
        v_codes, venues = pd.factorize(b_venue, sort=True)
        a_codes, assets = pd.factorize(b_asset, sort=True)
        n_v, n_a = max(len(venues), 1), max(len(assets), 1)
        bkey = (acct_codes[n_pos:].astype(np.int64) * n_v + v_codes) * n_a + a_codes
        bkey_u, binv = np.unique(bkey, return_inverse=True)
        bal = Balances(
            account_idx=(bkey_u // (n_v * n_a)).astype(np.int32),
            venue=np.asarray(venues, dtype=object)[(bkey_u // n_a) % n_v] if len(bkey_u) else np.empty(0, object),
            asset=np.asarray(assets, dtype=object)[bkey_u % n_a] if len(bkey_u) else np.empty(0, object),
            amount=np.bincount(binv.reshape(-1), weights=amount, minlength=len(bkey_u)).astype(np.float64),
        )
        groups = None if acc_tab is None else _account_groups(acc_tab, accounts)
        return Book(as_of=as_of, accounts=accounts, instruments=instr, market=snap, positions=pos, balances=bal,
                    groups=groups)


# ----------------------------------------------------------------------------- from_frames checks


def _account_groups(tab: pd.DataFrame, accounts: np.ndarray) -> AccountGroups:
    """The accounts table aligned to the book's sorted ``accounts`` [A]; unlisted accounts are their own group."""
    missing = [c for c in REQUIRED_COLUMNS["accounts"] if c not in tab.columns]
    if missing:
        raise ValidationError(f"Book.from_frames: table 'accounts' lacks column(s) {', '.join(missing)}")
    ids = _ids("accounts", tab, "account_id", unique_reason="duplicate_account").to_numpy(dtype=object)
    grp = _ids("accounts", tab, "group_id").to_numpy(dtype=object)
    out = AccountGroups.own(accounts)
    row = _lookup(ids, pd.Series(np.asarray(accounts, dtype=object)))  # [A] row of each account, -1 if unlisted
    hit = row >= 0
    out.group_id[hit] = grp[row[hit]]
    for col, target in (("name", out.name), ("kind", out.kind)):  # an empty cell keeps the default
        if col not in tab.columns:
            continue
        txt, miss = _text(tab, col)
        vals = (txt.str.strip().str.lower() if col == "kind" else txt.str.strip()).to_numpy(dtype=object)
        sel = hit & ~miss[np.maximum(row, 0)]
        target[sel] = vals[row[sel]]
    return out


def _cell(df: pd.DataFrame, column: str, i: int) -> str:
    """Cell ``i`` of ``column`` as plain text (empty for a null), as a reject's ``value`` shows it."""
    v = df[column].iloc[i]
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, np.generic):
        v = v.item()
    return str(v)[:VALUE_CHARS]


def _fail(table: str, df: pd.DataFrame, mask, column: str, reason: str, rows=None) -> None:
    """Raise ``ValidationError`` naming the first row where ``mask`` holds (``rows`` maps to frame rows)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return
    i = int(np.argmax(mask))
    row = int(rows[i]) if rows is not None else i
    msg = reject_message(table, row + 1, column, reason, _cell(df, column, i))
    raise ValidationError(f"{msg}; Book.from_frames takes validated tables (see gpurisk.validate)")


def _text(df: pd.DataFrame, column: str):
    """(text [n] pandas str Series, missing [n] bool): the column as text; null or empty text is missing."""
    s = df[column].reset_index(drop=True)
    miss = s.isna().to_numpy(dtype=bool)
    txt = s if isinstance(s.dtype, pd.StringDtype) else s.astype("str")
    if isinstance(s.dtype, pd.StringDtype) or s.dtype == object:
        miss = miss | (txt.str.len() == 0).to_numpy(dtype=bool, na_value=True)
    return txt, miss


def _ids(table: str, df: pd.DataFrame, column: str, unique_reason: str | None = None) -> pd.Series:
    """[n] identifiers as a pandas str Series; a missing one (or, with ``unique_reason``, a repeated one) raises."""
    txt, miss = _text(df, column)
    _fail(table, df, miss, column, "missing_value")
    if unique_reason is not None:
        _fail(table, df, txt.duplicated(keep="first").to_numpy(dtype=bool), column, unique_reason)
    return txt


def _codes(table, df, column, codes: dict, reason: str, rows=None) -> np.ndarray:
    """[n] int8 codes of a case-insensitive code column; an empty or unknown code raises."""
    txt, miss = _text(df, column)
    _fail(table, df, miss, column, "missing_value", rows)
    mapped = txt.str.strip().str.lower().map(codes)
    _fail(table, df, mapped.isna().to_numpy(), column, reason, rows)
    return mapped.to_numpy(dtype=np.int8)


def _numbers(table, df, column, positive=False, rows=None, zero_reason="non_positive") -> np.ndarray:
    """[n] float64 of a number column; missing, unparsable, non-finite (or with ``positive``, <= 0) raises."""
    s = df[column]
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        txt = s.astype("string").str.strip()
        miss = txt.isna().to_numpy(dtype=bool) | (txt.str.len() == 0).fillna(True).to_numpy(dtype=bool)
        _fail(table, df, miss, column, "missing_value", rows)
        vals = pd.to_numeric(txt, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        nan_text = txt.str.lower().isin(["nan", "+nan", "-nan"]).to_numpy(dtype=bool)
        _fail(table, df, np.isnan(vals) & ~nan_text, column, "wrong_type", rows)
    _fail(table, df, ~np.isfinite(vals), column, "non_finite", rows)
    if positive:
        _fail(table, df, vals <= 0, column, zero_reason, rows)
    return vals


def _expiry(table, df, is_dated: np.ndarray) -> np.ndarray:
    """[n] datetime64[s] naive UTC; NaT where the kind has no expiry. A dated kind needs a readable one."""
    out = np.full(len(df), np.datetime64("NaT"), dtype="datetime64[s]")
    if not is_dated.any():
        return out
    sel = np.flatnonzero(is_dated)
    sub = df.iloc[sel]
    _, miss = _text(sub, "expiry")
    _fail(table, sub, miss, "expiry", "missing_value", sel)
    col = sub["expiry"]
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(col.dtype):
        parsed = pd.to_datetime(col, utc=True)
    else:
        parsed = pd.to_datetime(col.astype("string").str.strip(), utc=True, errors="coerce", format="ISO8601")
    vals = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[s]")
    _fail(table, sub, np.isnat(vals), "expiry", "wrong_type", sel)
    out[sel] = vals
    return out
