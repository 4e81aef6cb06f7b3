"""Venue margin: apply the methodology each venue declares, one row per account × venue.

The venue table (``jobs/params/venues.toml``) maps each ``instruments.venue`` to a
methodology: ``deribit`` (gpurisk.margin.deribit, S:PM in the settlement coin),
``okx`` (gpurisk.margin.okx, per risk unit in USD) or ``spot`` (fully paid spot:
long holdings need no margin; a short spot position is charged
``spot_short_rate`` × its USD notional, an assumption). A venue of the book (in
the positions or the balances) that the table does not name is never silently
dropped: its account × venue rows carry status ``uncovered`` with NaN figures, the
summary names the venue, and the batch raises an alert.

Every account × venue pair present in the positions or the balances has one row, in
USD; a pair with nothing margined there carries IM 0. ``equity_usd`` is the pair's
holdings in USD: balances (coins at the index price, stablecoins at 1) plus the mark
value of its spot positions at that venue (``replica.holdings_usd``).

Venue-predicted calls: ``status`` and ``call_amount_usd`` are what the venue itself would do,
with each venue's published bands where the venue table gives them (``[venues.NAME]
call_mm_ratio``, ``reduce_only_mm_ratio``, ``liquidation_mm_ratio``, ``bands_source``; e.g.
Binance uniMMR: a call below 1.5 × MM, reduce-only below 1.2, liquidation below 1.05) and the
house bands (``[calls]``) elsewhere (``calls.classify_bands``). ``mm_ratio`` is equity / MM
(uniMMR for Binance; NaN where MM is 0), ``call_line_usd`` the equity at which the row is ``ok``,
``bands`` says whose bands applied (``venue`` or ``house``). The ``calls`` table lists the rows the
venues will act on.

"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..book import SPOT, Book
from ..errors import GpuriskError
from ..tail import TailStats
from .calls import CallParams, calls_table, call_line, classify_bands, status_counts
from .params import load_overlay
from .plan import UNCOVERED, MarginResult, Plan, standard_frame
from .replica import account_venue_pairs, holdings_usd

NAME = "venue"
log = logging.getLogger(__name__)

METHODOLOGIES = ("deribit", "okx", "spot")
#: Binance portfolio margin's published uniMMR states (docs/methodologies.md, "Venue-predicted calls")
BINANCE_BANDS = "Binance portfolio margin uniMMR states: reminder < 150 %, reduce-only < 120 %, liquidation < 105 %"

# ---------------------------------------------------------------------------------------------
# the venue methodology model


@dataclass(frozen=True)
class VenueSpec:
    """How one venue margins: ``methodology`` (deribit | okx | spot) and, where the venue publishes them,
    its status bands as multiples of MM (0 = the house band, ``Params.calls``); ``bands_source`` cites them."""

    methodology: str = "spot"
    call_mm_ratio: float = 0.0
    reduce_only_mm_ratio: float = 0.0
    liquidation_mm_ratio: float = 0.0
    bands_source: str = ""

    def __post_init__(self):
        if self.methodology not in METHODOLOGIES:
            raise ValueError(f"methodology {self.methodology!r} is not one of {', '.join(METHODOLOGIES)}")
        for k in ("call_mm_ratio", "reduce_only_mm_ratio", "liquidation_mm_ratio"):
            if not (getattr(self, k) >= 0.0):
                raise ValueError(f"{k} must be >= 0 (0 = the house band), got {getattr(self, k)}")

    @property
    def own_bands(self) -> bool:
        return any(getattr(self, k) > 0.0 for k in ("call_mm_ratio", "reduce_only_mm_ratio", "liquidation_mm_ratio"))

    def call_params(self, house: CallParams) -> CallParams:
        """The bands this venue's rows are classified with: its own where set, the house's otherwise."""
        return CallParams(
            reduce_only_mm_ratio=self.reduce_only_mm_ratio or house.reduce_only_mm_ratio,
            liquidation_mm_ratio=self.liquidation_mm_ratio or house.liquidation_mm_ratio,
            call_mm_ratio=self.call_mm_ratio or house.call_mm_ratio,
        )


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
            "binance": VenueSpec("spot", call_mm_ratio=1.5, reduce_only_mm_ratio=1.2, liquidation_mm_ratio=1.05,
                                 bands_source=BINANCE_BANDS),
        }
    )
    deribit_params: str = ""
    okx_params: str = ""
    spot_short_rate: float = 1.0
    calls: CallParams = field(default_factory=CallParams)

    def __post_init__(self):
        for name, spec in self.venues.items():  # each venue's bands must form a valid CallParams
            try:
                spec.call_params(self.calls)
            except ValueError as exc:
                raise ValueError(f"venues.{name}: {exc}") from None


def load_params(path: str | None) -> Params:
    """Venue table from TOML (``[venues.NAME] methodology = ...``); sub-files resolve next to it."""
    params = load_overlay(Params, path)
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


@dataclass(frozen=True)
class Context:
    """What ``finalize`` needs: the book, the venue table, the replicas' plans, venues by methodology,
    and the venues of the book that no methodology covers."""

    book: Book
    params: Params
    subplans: dict
    by: dict[str, tuple[str, ...]]
    uncovered: tuple[str, ...]


def uncovered_venues(book: Book, params: Params) -> tuple[str, ...]:
    """Venues of the book (positions or balances) that the venue table gives no methodology, sorted."""
    held = set(map(str, pd.unique(book.instruments.venue[book.positions.instrument_idx])))
    held |= set(map(str, pd.unique(np.asarray(book.balances.venue, dtype=object))))
    return tuple(sorted(held - set(params.venues)))


def plan(book: Book, params: Params | None = None, scenarios=None) -> Plan:
    """Legs of the Deribit and OKX replicas over their venues (prefixed ``deribit/`` and ``okx/``).

    Venues the table does not name are not margined: their account × venue rows say ``uncovered``.
    """
    from . import deribit, okx

    params = params or Params()
    missing = uncovered_venues(book, params)
    if missing:
        log.warning("venue model: no methodology for venue(s) %s; their account × venue rows are marked %r "
                    "(add [venues.NAME] methodology = ... to the venue table)", list(missing), UNCOVERED)
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
    return Plan(model=NAME, legs=legs, context=Context(book, params, sub, by, missing))


def spot_charge(quantity, contract_size, mark, rate: float) -> np.ndarray:
    """[n] USD margin of fully paid spot positions: ``rate`` × the USD notional of a short, 0 for a long."""
    notional = np.asarray(quantity, dtype=np.float64) * contract_size * mark
    return rate * np.maximum(-notional, 0.0)


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
    charge = spot_charge(pos.quantity[sel], ins.contract_size[ii], book.market.underlying_price[ii], rate)
    df = pd.DataFrame({"account_idx": pos.account_idx[sel], "venue": vpos[sel], "im_usd": charge})
    out = df.groupby(["account_idx", "venue"], sort=True, as_index=False)["im_usd"].sum()
    out.insert(0, "account_id", book.accounts[out["account_idx"].to_numpy()])
    return out.drop(columns="account_idx")


def coverage(plan: Plan) -> pd.DataFrame:
    """The (account_id, venue) pairs the venue model's ``margin`` table must hold: every pair
    present in the positions or the balances (the batch layer checks the output against it)."""
    return account_venue_pairs(plan.context.book)


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """One row per account × venue in USD (standard columns plus ``methodology``).

    The replicas' own tables ride along: ``deribit`` (per account × venue × settlement
    currency, in that currency), ``deribit_risk_vectors``, ``okx`` (per account × venue)
    and ``okx_risk_units``. Pairs at a venue with no methodology are ``uncovered`` (NaN figures).
    """
    from . import deribit, okx

    ctx: Context = plan.context
    book, params = ctx.book, ctx.params
    tables: dict[str, pd.DataFrame] = {}
    units: dict[str, dict[str, str]] = {}
    parts = []
    summary: dict = {"model": NAME, "methodologies": {k: list(v) for k, v in ctx.by.items() if v}}
    for name, mod in (("deribit", deribit), ("okx", okx)):
        sp = ctx.subplans.get(name)
        if sp is None:
            continue
        sub_stats = {k[len(name) + 1 :]: v for k, v in stats.items() if k.startswith(name + "/")}
        res = mod.finalize(sp, sub_stats)
        for tname, df in res.tables.items():
            key = name if tname == "margin" else f"{name}_{tname}"
            tables[key] = df
            units[key] = res.table_units(tname)
        summary[name] = res.summary
        m = res.tables["margin"]
        if m.empty:
            continue
        agg = m.groupby(["account_id", "venue"], sort=True, as_index=False)[["im_usd", "mm_usd"]].sum()
        agg["methodology"] = name
        parts.append(agg)
    if ctx.by["spot"]:
        s = _spot_rows(book, ctx.by["spot"], params.spot_short_rate)
        if not s.empty:
            parts.append(s.assign(mm_usd=s["im_usd"], methodology="spot"))
    cols = ["account_id", "venue", "im_usd", "mm_usd", "methodology"]
    margined = pd.concat([p[cols] for p in parts], ignore_index=True) if parts else pd.DataFrame(columns=cols)
    # every account × venue pair present in positions or balances gets a row: pairs with nothing
    # margined (balances only, or zero quantities) carry IM 0; pairs at uncovered venues NaN
    keys = account_venue_pairs(book)
    rows = keys.merge(margined, on=["account_id", "venue"], how="left", validate="one_to_one")
    meth = {v: spec.methodology for v, spec in params.venues.items()}
    rows["methodology"] = rows["venue"].map(meth).fillna(UNCOVERED).to_numpy(dtype=object)
    uncovered = (rows["methodology"] == UNCOVERED).to_numpy()
    for c in ("im_usd", "mm_usd"):
        rows[c] = np.where(uncovered, np.nan, rows[c].astype(np.float64).fillna(0.0).to_numpy())
    eq = holdings_usd(book).rename(columns={"usd": "equity_usd"})
    eq.insert(0, "account_id", book.accounts[eq["account_idx"].to_numpy()])
    rows = rows.merge(eq.drop(columns="account_idx"), on=["account_id", "venue"], how="left")
    equity = rows["equity_usd"].fillna(0.0).to_numpy()
    margin = standard_frame(rows["account_id"], rows["venue"], NAME, "USD", rows["im_usd"], rows["mm_usd"], equity)
    margin["methodology"] = rows["methodology"].to_numpy()
    # venue-predicted status: each venue's published bands where known, the house bands elsewhere
    bands = {v: spec.call_params(params.calls) for v, spec in params.venues.items()}
    venue_of = rows["venue"].astype(str)
    ratio = {k: venue_of.map({v: getattr(b, k) for v, b in bands.items()}).fillna(getattr(params.calls, k))
             .to_numpy(dtype=np.float64) for k in ("call_mm_ratio", "reduce_only_mm_ratio", "liquidation_mm_ratio")}
    im, mm = margin["im_usd"].to_numpy(), margin["mm_usd"].to_numpy()
    status, amount = classify_bands(im, mm, equity, ratio["call_mm_ratio"], ratio["reduce_only_mm_ratio"],
                                    ratio["liquidation_mm_ratio"])
    margin["status"] = status
    margin["call_amount_usd"] = amount
    with np.errstate(divide="ignore", invalid="ignore"):
        margin["mm_ratio"] = np.where(mm > 0.0, equity / np.where(mm > 0.0, mm, 1.0), np.nan)
    margin["call_line_usd"] = call_line(im, mm, ratio["call_mm_ratio"])
    own = {v for v, spec in params.venues.items() if spec.own_bands}
    margin["bands"] = np.where(venue_of.isin(own).to_numpy(), "venue", "house").astype(object)
    margin.loc[uncovered, ["equity", "excess", "equity_usd", "excess_usd", "call_amount_usd", "mm_ratio",
                           "call_line_usd"]] = np.nan
    margin.loc[uncovered, "status"] = UNCOVERED
    tables["margin"] = margin
    tables["calls"] = calls_table(margin).merge(margin[["account_id", "venue", "methodology", "bands"]],
                                                on=["account_id", "venue"], how="left")
    units["margin"] = {"mm_ratio": "1", "call_line_usd": "USD"}
    units["calls"] = {"call_amount_usd": "USD", "im_usd": "USD", "mm_usd": "USD", "equity_usd": "USD"}
    t = MarginResult(NAME, {"margin": margin}).totals()
    summary.update(
        n_rows=int(len(margin)),
        accounts=t["accounts"],
        currency="USD",
        im_usd_total=t["total_im_usd"],
        mm_usd_total=t["total_mm_usd"],
        im_usd_by_venue=t["im_usd"],
        status=t["status"],
        deficits=t["deficits"],
        deficit_usd_total=t["total_deficit_usd"],
        uncovered_venues=list(ctx.uncovered),
        uncovered_pairs=int(uncovered.sum()),
        predicted_status_by_venue={str(v): status_counts(g["status"]) for v, g in
                                   margin[~uncovered].groupby(margin["venue"][~uncovered].astype(str), sort=True)},
        venue_bands={v: {"call_mm_ratio": b.call_mm_ratio, "reduce_only_mm_ratio": b.reduce_only_mm_ratio,
                         "liquidation_mm_ratio": b.liquidation_mm_ratio,
                         "source": params.venues[v].bands_source or "house bands"} for v, b in bands.items()},
    )
    return MarginResult(model=NAME, tables=tables, summary=summary, units=units)


__all__ = ["NAME", "Params", "VenueSpec", "Context", "load_params", "plan", "finalize", "coverage", "uncovered_venues",
           "spot_charge"]
