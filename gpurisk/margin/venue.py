"""Venue margin: apply the methodology each venue declares, one row per account × venue.

The venue table (``jobs/params/venues.toml``) maps each ``instruments.venue`` to a
methodology: ``deribit`` (gpurisk.margin.deribit, S:PM in the settlement coin),
``okx`` (gpurisk.margin.okx, per risk unit in USD) or ``spot`` (fully paid spot:
long holdings need no margin; a short spot position is charged
``spot_short_rate`` × its USD notional, an assumption). A venue of the book (in
the positions or the balances) that the table does not name is an error naming it,
never silently dropped.

Every account × venue pair present in the positions or the balances has one row;
a pair with nothing margined there carries IM 0. ``equity_usd`` is the pair's
holdings in USD: balances (coins at the index price, stablecoins at 1) plus the mark
value of its spot positions at that venue (``holdings_usd``).

This module also holds ``load_params_file``, the venue models' shared reader: the
TOML file overlaid on the code defaults (tables merge entry by entry), then read
strictly by ``gpurisk.margin.params``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..backends import TailStats
from ..book import OPTION, SPOT, STABLECOINS, Book, Portfolios, csr_from_groups
from ..errors import ConfigError, GpuriskError
from .params import build as build_params
from .plan import MarginResult, Plan

METHODOLOGIES = ("deribit", "okx", "spot")

# ---------------------------------------------------------------------------------------------
# parameter files: TOML overlaid on the code defaults, then read strictly by margin.params


def _plain(x):
    """A dataclass / dict / tuple as TOML-like data (tables, arrays, scalars)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    return x


def _overlay(base, over):
    """``over`` merged into ``base``: tables merge key by key, everything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _overlay(base[k], v) if k in base else v
        return out
    return over


def load_params_file(cls, path):
    """``cls()`` overlaid with the TOML file at ``path`` (None → the defaults).

    Tables merge with the defaults key by key, so ``[pairs.ETH] price_range = 0.2``
    changes only that value and keeps the other pairs; unknown keys and wrong types
    raise ConfigError naming the file and the key (``gpurisk.margin.params``).
    """
    if path is None:
        return cls()
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: parameter file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return build_params(cls, _overlay(_plain(cls()), data), str(p))


# ---------------------------------------------------------------------------------------------
# position selection, CSR grouping and market checks shared by the venue replicas (deribit, okx)


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


# ---------------------------------------------------------------------------------------------
# the venue methodology model


@dataclass(frozen=True)
class VenueSpec:
    """How one venue margins: ``methodology`` (deribit | okx | spot)."""

    methodology: str = "spot"

    def __post_init__(self):
        if self.methodology not in METHODOLOGIES:
            raise ValueError(f"methodology {self.methodology!r} is not one of {', '.join(METHODOLOGIES)}")


@dataclass(frozen=True)
class Params:
    """The venue table and the parameter files of each methodology.

    ``deribit_params`` / ``okx_params``: TOML files (relative to the venue file's folder
    when loaded from a file; empty = the model's built-in defaults).
    ``spot_short_rate``: margin on a short spot position as a share of its USD notional
    (an assumption; fully paid long spot needs none).
    """

    venues: dict[str, VenueSpec] = field(
        default_factory=lambda: {
            "deribit": VenueSpec("deribit"),
            "okx": VenueSpec("okx"),
            "binance": VenueSpec("spot"),
        }
    )
    deribit_params: str = ""
    okx_params: str = ""
    spot_short_rate: float = 1.0


def load_params(path: str | None) -> Params:
    """Venue table from TOML (``[venues.NAME] methodology = ...``); sub-files resolve next to it."""
    params = load_params_file(Params, path)
    if path is not None:
        base = Path(path).resolve().parent
        fix = {}
        for key in ("deribit_params", "okx_params"):
            val = getattr(params, key)
            if val and not Path(val).is_absolute():
                fix[key] = str(base / val)
        if fix:
            params = dataclasses.replace(params, **fix)
    return params


def _submodel_params(params: Params):
    from . import deribit, okx

    d = deribit.load_params(params.deribit_params or None)
    o = okx.load_params(params.okx_params or None)
    by = {m: tuple(sorted(v for v, s in params.venues.items() if s.methodology == m)) for m in METHODOLOGIES}
    return dataclasses.replace(d, venues=by["deribit"]), dataclasses.replace(o, venues=by["okx"]), by


def _check_venues(book: Book, params: Params) -> None:
    held = set(map(str, pd.unique(book.instruments.venue[book.positions.instrument_idx])))
    held |= set(map(str, pd.unique(np.asarray(book.balances.venue, dtype=object))))
    unmapped = sorted(held - set(params.venues))
    if unmapped:
        raise ConfigError(
            f"venue table has no methodology for venue(s) {unmapped}; add [venues.NAME] methodology = ... "
            f"(known: {', '.join(sorted(params.venues))})"
        )


def plan(book: Book, params: Params | None = None, scenarios=None) -> Plan:
    """Legs of the Deribit and OKX replicas over their venues (prefixed ``deribit/`` and ``okx/``)."""
    from . import deribit, okx

    params = params or Params()
    _check_venues(book, params)
    dparams, oparams, by = _submodel_params(params)
    legs = {}
    sub = {}
    if by["deribit"]:
        dp = deribit.plan(book, dparams)
        sub["deribit"] = dp
        legs.update({f"deribit/{k}": v for k, v in dp.legs.items()})
    if by["okx"]:
        op = okx.plan(book, oparams)
        sub["okx"] = op
        legs.update({f"okx/{k}": v for k, v in op.legs.items()})
    return Plan(model="venue", legs=legs, context={"book": book, "params": params, "subplans": sub, "by": by})


def _spot_rows(book: Book, venues: tuple[str, ...], rate: float) -> pd.DataFrame:
    """Fully paid spot: per account × venue, short spot charged ``rate`` × USD notional."""
    ins, pos = book.instruments, book.positions
    vpos = ins.venue[pos.instrument_idx]
    sel = np.isin(vpos, np.asarray(venues, dtype=object))
    if not sel.any():
        return pd.DataFrame(columns=["account_id", "venue", "im_usd"])
    kinds = ins.kind[pos.instrument_idx[sel]]
    if (kinds != SPOT).any():
        bad = ins.instrument_id[pos.instrument_idx[sel][kinds != SPOT][0]]
        raise GpuriskError(
            f"instrument {bad} at spot-methodology venue {vpos[sel][kinds != SPOT][0]} is not spot; "
            "map the venue to a derivatives methodology in the venue table"
        )
    ii = pos.instrument_idx[sel]
    notional = pos.quantity[sel] * ins.contract_size[ii] * book.market.underlying_price[ii]
    charge = rate * np.maximum(-notional, 0.0)
    df = pd.DataFrame({"account_idx": pos.account_idx[sel], "venue": vpos[sel], "im_usd": charge})
    out = df.groupby(["account_idx", "venue"], sort=True, as_index=False)["im_usd"].sum()
    out.insert(0, "account_id", book.accounts[out["account_idx"].to_numpy()])
    return out.drop(columns="account_idx")


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


def _equity_usd(book: Book) -> pd.DataFrame:
    """Holdings per account × venue in USD (balances plus spot positions, see ``holdings_usd``)."""
    out = holdings_usd(book).rename(columns={"usd": "equity_usd"})
    out.insert(0, "account_id", book.accounts[out["account_idx"].to_numpy()])
    return out.drop(columns="account_idx")


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


def coverage(plan: Plan) -> pd.DataFrame:
    """The (account_id, venue) pairs the venue model's ``margin`` table must hold: every pair
    present in the positions or the balances (the batch layer checks the output against it)."""
    return account_venue_pairs(plan.context["book"])


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """One row per account × venue: margin in the venue's currency and in USD.

    Deribit rows: the venue currency is the account's settlement coin when it has one
    at that venue, else ``USD`` (the sum of its coins' USD values). OKX and spot rows are USD.
    """
    from . import deribit, okx

    book: Book = plan.context["book"]
    params: Params = plan.context["params"]
    tables: dict[str, pd.DataFrame] = {}
    parts = []
    summary: dict = {"model": "venue", "methodologies": {k: list(v) for k, v in plan.context["by"].items() if v}}
    for name, mod in (("deribit", deribit), ("okx", okx)):
        sp = plan.context["subplans"].get(name)
        if sp is None:
            continue
        sub_stats = {k[len(name) + 1 :]: v for k, v in stats.items() if k.startswith(name + "/")}
        res = mod.finalize(sp, sub_stats)
        tables[name] = res.tables["margin"]
        if "risk_vectors" in res.tables:
            tables[f"{name}_risk_vectors"] = res.tables["risk_vectors"]
        summary[name] = res.summary
        m = res.tables["margin"]
        if name == "okx":
            m = m[m["level"] == "account"]
        if m.empty:
            continue
        g = m.groupby(["account_id", "venue"], sort=True)
        agg = g.agg(im_usd=("im_usd", "sum"), mm_usd=("mm_usd", "sum"), n_ccy=("currency", "nunique"),
                    currency=("currency", "first"), im=("im", "sum"), mm=("mm", "sum")).reset_index()
        multi = agg["n_ccy"] > 1
        agg.loc[multi, "currency"] = "USD"
        agg.loc[multi, "im"] = agg.loc[multi, "im_usd"]
        agg.loc[multi, "mm"] = agg.loc[multi, "mm_usd"]
        agg["methodology"] = name
        parts.append(agg.drop(columns="n_ccy"))
    spot_venues = plan.context["by"]["spot"]
    if spot_venues:
        s = _spot_rows(book, spot_venues, params.spot_short_rate)
        if not s.empty:
            s = s.assign(mm_usd=s["im_usd"], currency="USD", im=s["im_usd"], mm=s["im_usd"], methodology="spot")
            parts.append(s)
    cols = ["account_id", "venue", "methodology", "currency", "im", "mm", "im_usd", "mm_usd"]
    margin = pd.concat([p[cols] for p in parts], ignore_index=True) if parts else pd.DataFrame(columns=cols)
    # every account × venue pair present in positions or balances gets a row: pairs with nothing
    # margined (balances only, or zero quantities) carry IM 0 and their equity
    keys = account_venue_pairs(book)
    margin = keys.merge(margin, on=["account_id", "venue"], how="left", validate="one_to_many")
    empty = margin["methodology"].isna()
    if empty.any():
        meth = {v: spec.methodology for v, spec in params.venues.items()}
        margin.loc[empty, "methodology"] = margin.loc[empty, "venue"].map(meth).to_numpy()
        margin.loc[empty, "currency"] = "USD"
        margin.loc[empty, ["im", "mm", "im_usd", "mm_usd"]] = 0.0
    eq = _equity_usd(book)
    margin = margin.merge(eq, on=["account_id", "venue"], how="left")
    margin["equity_usd"] = margin["equity_usd"].fillna(0.0)
    margin["excess_usd"] = margin["equity_usd"] - margin["im_usd"]
    margin.insert(1, "model", "venue")
    margin = margin.sort_values(["account_id", "venue"], kind="stable").reset_index(drop=True)
    tables["margin"] = margin
    summary.update(
        n_rows=int(len(margin)),
        accounts=int(margin["account_id"].nunique()) if len(margin) else 0,
        im_usd_total=float(margin["im_usd"].sum()) if len(margin) else 0.0,
        mm_usd_total=float(margin["mm_usd"].sum()) if len(margin) else 0.0,
    )
    return MarginResult(model="venue", tables=tables, summary=summary)


__all__ = ["Params", "VenueSpec", "load_params", "plan", "finalize", "coverage", "load_params_file",
           "holdings_usd", "account_venue_pairs"]
