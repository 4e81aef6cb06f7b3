"""Helpers the venue replicas share (deribit, okx, venue): position selection at venues, market
checks, CSR grouping by label columns, account × venue keys and holdings in USD.

Vectorised over positions; the only loops run over groups (a few underlyings/currencies).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..book import OPTION, SPOT, STABLECOINS, Book, Portfolios, csr_from_groups
from ..errors import GpuriskError


def venue_positions(book: Book, venues) -> np.ndarray:
    """[N] bool: positions held at one of ``venues`` with a non-zero quantity."""
    pos = book.positions
    vpos = book.instruments.venue[pos.instrument_idx]
    return np.isin(vpos, np.asarray(tuple(venues), dtype=object)) & (pos.quantity != 0.0)


def check_market(book: Book, inst: np.ndarray, model: str) -> None:
    """GpuriskError naming the first instrument in ``inst`` with no usable mark or vol."""
    ins, mkt = book.instruments, book.market
    fwd = mkt.underlying_price[inst]
    bad = ~np.isfinite(fwd) | (fwd <= 0.0)
    is_opt = ins.kind[inst] == OPTION
    vol = mkt.implied_vol[inst]
    bad_vol = is_opt & (~np.isfinite(vol) | (vol < 0.0))
    bad_strike = is_opt & ~(ins.strike[inst] > 0.0)
    for mask, what in ((bad, "underlying_price"), (bad_vol, "implied_vol"), (bad_strike, "strike")):
        if mask.any():
            i = inst[np.argmax(mask)]
            raise GpuriskError(
                f"{model}: instrument {ins.instrument_id[i]} has no usable {what} in the market snapshot"
            )


def take_rows(p: Portfolios, rows: np.ndarray) -> Portfolios:
    """The portfolios ``rows`` (sorted indices) as a new CSR."""
    rows = np.asarray(rows, dtype=np.int64)
    lo, hi = p.indptr[rows], p.indptr[rows + 1]
    counts = hi - lo
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    take = np.repeat(lo - indptr[:-1], counts) + np.arange(indptr[-1])
    return Portfolios(indptr, p.instrument_idx[take], p.quantity[take], p.account_idx[rows],
                      {k: np.asarray(v)[rows] for k, v in p.key.items()}, p.grouping)


def row_of_entries(p: Portfolios) -> np.ndarray:
    """[nnz] the portfolio of each CSR entry."""
    return np.repeat(np.arange(len(p)), np.diff(p.indptr))


def group_portfolios(book: Book, sel: np.ndarray, group_cols: dict[str, np.ndarray]):
    """Split the selected positions by the label columns; yields (labels, local instruments, Portfolios).

    Within each group portfolios are accounts (sorted); instrument indices are local to
    ``inst`` (the group's sorted unique instruments). The loop runs over groups (a few
    underlyings/currencies), never over accounts.
    """
    pos = book.positions
    p_ins = pos.instrument_idx[sel]
    p_acct = pos.account_idx[sel]
    p_qty = pos.quantity[sel]
    frame = pd.DataFrame({k: np.asarray(v)[sel] for k, v in group_cols.items()})
    if frame.empty:
        return
    gid = frame.groupby(list(group_cols), sort=True).ngroup().to_numpy()
    order = np.argsort(gid, kind="stable")
    bounds = np.flatnonzero(np.diff(gid[order])) + 1
    for part in np.split(order, bounds):
        labels = {k: str(frame[k].iloc[part[0]]) for k in group_cols}
        inst = np.unique(p_ins[part])
        local = np.searchsorted(inst, p_ins[part]).astype(np.int32)
        accts, acode = np.unique(p_acct[part], return_inverse=True)
        indptr, idx, qty = csr_from_groups(acode.astype(np.int64), len(accts), local, p_qty[part])
        key = {"account_id": book.accounts[accts]}
        key.update({k: np.full(len(accts), v, dtype=object) for k, v in labels.items()})
        yield labels, inst, Portfolios(indptr, idx, qty, accts.astype(np.int32), key, "+".join(["account", *group_cols]))


def holdings_usd(book: Book, venues=None) -> pd.DataFrame:
    """USD value of each account's holdings per venue: columns ``account_idx``, ``venue``, ``usd``.

    Holdings are the balances (coins at the index price, stablecoins at 1, no haircut) plus
    the spot positions held at that venue at their mark (``contract_size`` ×
    ``underlying_price`` × ``quantity``): spot holdings are positions, not balances
    (docs/data-format.md). ``venues`` restricts both to those venues (None: all).
    A balance coin with no index price, or a spot position with no usable mark, is a
    GpuriskError naming it, never a silent zero.
    """
    b, ins, pos = book.balances, book.instruments, book.positions
    keep_b = np.ones(len(b.amount), bool)
    s_sel = ins.kind[pos.instrument_idx] == SPOT
    if venues is not None:
        vv = np.asarray(tuple(venues), dtype=object)
        keep_b = np.isin(b.venue, vv)
        s_sel &= np.isin(ins.venue[pos.instrument_idx], vv)
    asset = b.asset[keep_b].astype(str)
    price = np.ones(len(asset))
    coins = ~np.isin(asset, np.asarray(STABLECOINS, dtype=object))
    if coins.any():
        u = book.market.underlyings
        at = np.clip(np.searchsorted(u, asset[coins]), 0, max(len(u) - 1, 0))
        ok = (u[at] == asset[coins]) if len(u) else np.zeros(int(coins.sum()), bool)
        if not np.all(ok):
            missing = sorted(set(asset[coins][~ok].tolist()))
            raise GpuriskError(f"balances hold asset(s) {missing} with no index price in the book")
        price[coins] = book.market.index_price[at]
    s_ins = pos.instrument_idx[s_sel]
    mark = book.market.underlying_price[s_ins]
    bad = ~np.isfinite(mark) | (mark <= 0.0)
    if bad.any():
        raise GpuriskError(
            f"spot position in {ins.instrument_id[s_ins[np.argmax(bad)]]} has no usable underlying_price "
            "in the market snapshot; it cannot be valued as equity"
        )
    df = pd.DataFrame({
        "account_idx": np.concatenate([b.account_idx[keep_b], pos.account_idx[s_sel]]).astype(np.int64),
        "venue": np.concatenate([np.asarray(b.venue[keep_b], dtype=object), ins.venue[s_ins].astype(object)]),
        "usd": np.concatenate([b.amount[keep_b] * price, pos.quantity[s_sel] * ins.contract_size[s_ins] * mark]),
    })
    return df.groupby(["account_idx", "venue"], sort=True, as_index=False)["usd"].sum()


def account_venue_pairs(book: Book, positions=True, balances=True, venues=None) -> pd.DataFrame:
    """Sorted unique (``account_id``, ``venue``) pairs present in the positions and/or balances.

    ``venues`` restricts the pairs to those venues (None: all).
    """
    pos, b = book.positions, book.balances
    acct, ven = [], []
    if positions:
        acct.append(pos.account_idx)
        ven.append(book.instruments.venue[pos.instrument_idx].astype(object))
    if balances:
        acct.append(b.account_idx)
        ven.append(np.asarray(b.venue, dtype=object))
    df = pd.DataFrame({"account_idx": np.concatenate(acct).astype(np.int64) if acct else np.zeros(0, np.int64),
                       "venue": np.concatenate(ven) if ven else np.zeros(0, object)})
    if venues is not None:
        df = df[df["venue"].isin(list(venues))]
    df = df.drop_duplicates().sort_values(["account_idx", "venue"], kind="stable")
    return pd.DataFrame({"account_id": book.accounts[df["account_idx"].to_numpy()], "venue": df["venue"].to_numpy()})


def covered_pairs(book: Book, venues) -> pd.DataFrame:
    """Sorted unique (``account_id``, ``venue``) pairs of the non-zero positions at ``venues``:
    the rows a venue replica (deribit, okx) margins."""
    sel = venue_positions(book, venues)
    pos = book.positions
    df = pd.DataFrame({"account_idx": pos.account_idx[sel].astype(np.int64),
                       "venue": book.instruments.venue[pos.instrument_idx[sel]].astype(object)})
    df = df.drop_duplicates().sort_values(["account_idx", "venue"], kind="stable")
    return pd.DataFrame({"account_id": book.accounts[df["account_idx"].to_numpy()], "venue": df["venue"].to_numpy()})


__all__ = ["venue_positions", "check_market", "take_rows", "row_of_entries", "group_portfolios", "holdings_usd",
           "account_venue_pairs", "covered_pairs"]
