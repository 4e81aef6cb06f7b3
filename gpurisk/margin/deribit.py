"""Deribit portfolio margin replica (S:PM): each settlement currency margined on its own, in that coin.

Risk matrix per (account, settlement currency, underlying), the underlying shocked alone:

- standard table: ``2·buckets+1`` evenly spaced moves over ±``price_range`` × vol
  {up, same, down}; vol shock ``σ·(1 ± v·(30/DTE)^p)``, up-shock floored at
  ``min_volatility_for_shock_up`` (``vol_mode=term``); horizon 0 (no time decay).
  Profits count at ``pnl_offset`` (MeasureSpec.profit_factor).
- extended table: moves ``extended_moves`` with vol up only; futures and perpetuals
  see the move clipped to ±``price_range`` (as in the published risk vectors);
  only the fraction ``extended_table_factor·price_range/|move|`` of the P&L counts
  [U], then a dampener pulls it toward zero by ``(|move|/price_range − 1)·extended_dampener``
  USD, converted at the index [U].
- worst_case = max(0, largest counted loss over both tables) [coin].
- roll_shock = Σ|q_i|·max(min_annualised_move, annualised_move_risk·T_i) over futures and
  perpetuals, q_i the position in the settlement currency [D: reproduces the docs example].
- delta_shock = max_delta_shock·max(0, |Δ_USD| − delta_total_liq_shock_threshold) in the
  settlement currency [U: the published parameters, the rule assumed].
- IM = worst_case + roll_shock + delta_shock (mmp and open-orders margin: no orders in a book);
  MM = mm_factor·IM.

A linear (USD-settled) currency with several underlyings sums the per-underlying figures (no
offset between underlyings) [U]. Outputs: ``margin`` (one row per account × currency) and
``risk_vectors`` (the scenario P&L of the N largest requirements, for checking against the
venue's own simulator). See docs/methodologies.md (section 3) for sources.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..backends import reference as ref
from ..book import FUTURE, INVERSE, OPTION, PERPETUAL, STABLECOINS, Book, Portfolios
from ..errors import GpuriskError
from ..pricing import VOL_MODE_CODES, PricingInputs, VolTerm, _ndtr, pricing_inputs
from ..scenarios import ScenarioSet
from ..tail import MeasureSpec, TailStats
from .params import load_overlay
from .plan import Leg, MarginResult, Plan, standard_frame
from .replica import check_market, covered_pairs, group_portfolios, row_of_entries, take_rows, venue_positions

NAME = MODEL = "deribit"
USD = "USD"


@dataclass(frozen=True)
class PairParams:
    """Risk-matrix parameters of one underlying (Deribit's ``currency_pair`` block).

    price_range: largest standard move (0.16 = ±16 %); buckets: moves per side.
    volatility_range_up/down: relative vol shocks at 30 days; vega powers below/above
    ``vega_ref_days``; min_volatility_for_shock_up: floor of the up-shocked vol (decimal).
    max_delta_shock: share of the excess delta charged; delta_total_liq_shock_threshold: USD.
    extended_moves: extended-table moves; extended_table_factor scales their fractions;
    extended_fractions: explicit fractions per move (empty = factor·price_range/|move|).
    min_dte_days: floor of DTE in the vol-term scale [U].
    """

    price_range: float = 0.16
    buckets: int = 4
    volatility_range_up: float = 0.50
    volatility_range_down: float = 0.25
    min_volatility_for_shock_up: float = 0.50
    short_term_vega_power: float = 0.30
    long_term_vega_power: float = 0.13
    vega_ref_days: float = 30.0
    min_dte_days: float = 1.0
    max_delta_shock: float = 0.10
    delta_total_liq_shock_threshold: float = 20_000_000.0
    extended_moves: tuple[float, ...] = (-0.66, -0.33, 0.50, 1.00, 2.00, 3.00, 4.00, 5.00)
    extended_table_factor: float = 1.0
    extended_fractions: tuple[float, ...] = ()

    def __post_init__(self):
        if not (0.0 < self.price_range < 1.0):
            raise ValueError(f"price_range must be in (0, 1), got {self.price_range}")
        if self.buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {self.buckets}")
        if any(m <= -1.0 or m == 0.0 for m in self.extended_moves):
            raise ValueError("extended_moves must be non-zero and > -1")
        if self.extended_fractions and len(self.extended_fractions) != len(self.extended_moves):
            raise ValueError("extended_fractions must have one entry per extended move")

    def standard_moves(self) -> np.ndarray:
        """[2·buckets+1] evenly spaced moves from −price_range to +price_range."""
        return np.linspace(-self.price_range, self.price_range, 2 * self.buckets + 1)

    def fractions(self) -> np.ndarray:
        """[E] share of each extended scenario's P&L that counts."""
        if self.extended_fractions:
            return np.asarray(self.extended_fractions, dtype=np.float64)
        m = np.abs(np.asarray(self.extended_moves, dtype=np.float64))
        return self.extended_table_factor * np.minimum(1.0, self.price_range / m)

    def vol_term(self) -> VolTerm:
        return VolTerm(
            ref_days=self.vega_ref_days,
            power_short=self.short_term_vega_power,
            power_long=self.long_term_vega_power,
            min_vol_up=self.min_volatility_for_shock_up,
            min_dte_days=self.min_dte_days,
        )


@dataclass(frozen=True)
class CurrencyParams:
    """Parameters of one settlement currency (Deribit's ``currency`` block).

    annualised_move_risk / min_annualised_move: roll shock rates; extended_dampener: USD;
    pnl_offset: share of scenario profit credited.
    """

    annualised_move_risk: float = 0.075
    min_annualised_move: float = 0.01
    extended_dampener: float = 100_000.0
    pnl_offset: float = 0.0


def _default_pairs() -> dict[str, PairParams]:
    return {
        "BTC": PairParams(),
        "ETH": PairParams(price_range=0.18, volatility_range_up=0.40),
    }


def _default_currencies() -> dict[str, CurrencyParams]:
    return {
        "BTC": CurrencyParams(),
        "ETH": CurrencyParams(annualised_move_risk=0.05, min_annualised_move=0.005,
                              extended_dampener=200_000.0, pnl_offset=0.6),
        "USD": CurrencyParams(annualised_move_risk=0.10, min_annualised_move=0.01,
                              extended_dampener=25_000.0, pnl_offset=0.4),
    }


@dataclass(frozen=True)
class Params:
    """Deribit S:PM parameters; defaults are the published BTC/ETH ``model_params``.

    venues: the venues margined with this methodology. pairs: per underlying;
    currencies: per settlement currency (``USD`` for linear contracts);
    default_pair / default_currency: used for names not listed [U].
    risk_vectors_top: how many of the largest requirements get their risk vectors written.
    """

    venues: tuple[str, ...] = ("deribit",)
    mm_factor: float = 0.8
    risk_vectors_top: int = 10
    pairs: dict[str, PairParams] = field(default_factory=_default_pairs)
    currencies: dict[str, CurrencyParams] = field(default_factory=_default_currencies)
    default_pair: PairParams = field(default_factory=PairParams)
    default_currency: CurrencyParams = field(default_factory=CurrencyParams)

    def pair(self, underlying: str) -> PairParams:
        return self.pairs.get(underlying, self.default_pair)

    def currency(self, ccy: str) -> CurrencyParams:
        return self.currencies.get(ccy, self.default_currency)


def load_params(path: str | None) -> Params:
    """Params from a TOML file (``jobs/params/deribit.toml``); None gives the defaults.

    Tables ``[pairs.BTC]`` and ``[currencies.BTC]`` replace the built-in entry for
    that name (keys not given keep the PairParams/CurrencyParams defaults).
    """
    return load_overlay(Params, path)


# ---------------------------------------------------------------------------------------------
# scenario sets


def _pct(m: float) -> str:
    return f"{100.0 * m:+.4g}%"


def standard_scenarios(underlying: str, pp: PairParams) -> ScenarioSet:
    """The 3·(2·buckets+1) standard scenarios of one underlying: each move × vol up/same/down."""
    moves = pp.standard_moves()
    vols = np.array([pp.volatility_range_up, 0.0, -pp.volatility_range_down])
    names = ("up", "same", "down")
    S = len(moves) * 3
    ps = np.repeat(moves, 3)[:, None]
    vs = np.tile(vols, len(moves))[:, None]
    label = np.array([f"{_pct(m)} vol {n}" for m in moves for n in names], dtype=object)
    return ScenarioSet(
        underlyings=(underlying,),
        price_shock=ps,
        vol_shock=vs,
        vol_mode=np.full(S, VOL_MODE_CODES["term"], dtype=np.int8),
        weight=np.ones(S),
        pnl_factor=np.ones(S),
        label=label,
        scenario_id=np.array([f"standard:{i}" for i in range(S)], dtype=object),
        horizon_days=0.0,
        kind="grid",
        source=f"deribit risk matrix {underlying}",
        term=pp.vol_term(),
    )


def extended_scenario(underlying: str, pp: PairParams, j: int) -> ScenarioSet:
    """Extended scenario j as a one-scenario set over [underlying, clipped underlying].

    Column 0 carries the full move (options); column 1 the move clipped to ±price_range
    (futures, perpetuals and spot). Vol is shocked up.
    """
    m = float(pp.extended_moves[j])
    clip = float(np.clip(m, -pp.price_range, pp.price_range))
    return ScenarioSet(
        underlyings=(underlying, f"{underlying}~clipped"),
        price_shock=np.array([[m, clip]]),
        vol_shock=np.array([[pp.volatility_range_up, pp.volatility_range_up]]),
        vol_mode=np.full(1, VOL_MODE_CODES["term"], dtype=np.int8),
        weight=np.ones(1),
        pnl_factor=np.ones(1),
        label=np.array([f"{_pct(m)} vol up (extended)"], dtype=object),
        scenario_id=np.array([f"extended:{j}"], dtype=object),
        horizon_days=0.0,
        kind="grid",
        source=f"deribit extended table {underlying}",
        term=pp.vol_term(),
    )


# ---------------------------------------------------------------------------------------------
# per-instrument inputs


def usd_delta_per_contract(pi: PricingInputs) -> np.ndarray:
    """[I] USD change per contract for a small relative move of the underlying, per unit move.

    Delta-one linear and spot: cs·F; inverse futures/perpetuals: cs; options: cs·F·w·N(w·d1).
    """
    F, cs = pi.forward, pi.contract_size
    out = np.where(pi.settlement == INVERSE, cs, cs * F)
    opt = pi.kind == OPTION
    if opt.any():
        ndtr = _ndtr(np)
        w = pi.option_type.astype(np.float64)
        sig_t = pi.vol * np.sqrt(np.maximum(pi.ttm, 0.0))
        live = sig_t > 0.0
        K = np.where(pi.strike > 0.0, pi.strike, 1.0)
        d1 = (np.log(np.where(F > 0, F, 1.0) / K) + 0.5 * sig_t**2) / np.where(live, sig_t, 1.0)
        d_live = w * ndtr(w * d1)
        d_dead = np.where(w * (F - K) > 0.0, w, 0.0)
        d = np.where(live, d_live, d_dead)
        out = np.where(opt, cs * F * d, out)
    return out


# ---------------------------------------------------------------------------------------------
# plan and finalize


@dataclass(frozen=True)
class Context:
    """What ``finalize`` needs: the book, the parameters and one entry per (venue, underlying, currency)
    group (its legs, parameters, USD conversion and per-contract arrays)."""

    book: Book
    params: Params
    groups: list


def plan(book: Book, params: Params | None = None, scenarios: ScenarioSet | None = None) -> Plan:
    """Legs per (underlying, settlement currency): the standard table and one leg per extended move.

    The venue's grid is the methodology: a caller's ``scenarios`` are refused (``gpurisk.margin.check_scenarios``).
    """
    if scenarios is not None:
        raise GpuriskError("deribit: the Deribit replica uses its own risk matrix and cannot take a scenario set")
    params = params or Params()
    ins = book.instruments
    sel = venue_positions(book, params.venues)
    ccy_all = ins.settlement_currency()
    pi_all = pricing_inputs(book, np.zeros(len(ins), dtype=np.int32))
    ttm_all = pi_all.ttm
    legs: dict[str, Leg] = {}
    groups = []
    pos_ins = book.positions.instrument_idx
    for labels, inst, ports in group_portfolios(
        book, sel, {"venue": ins.venue[pos_ins], "currency": ccy_all[pos_ins], "underlying": ins.underlying[pos_ins]}
    ):
        v, u, c = labels["venue"], labels["underlying"], labels["currency"]
        check_market(book, inst, MODEL)
        pp, cp = params.pair(u), params.currency(c)
        pi = pi_all.take(inst)
        pi = dataclasses.replace(pi, underlying_idx=np.zeros(len(inst), dtype=np.int32))
        pi_ext = dataclasses.replace(pi, underlying_idx=np.where(pi.kind == OPTION, 0, 1).astype(np.int32))
        tag = f"{v}.{u}.{c}"
        std = standard_scenarios(u, pp)
        legs[f"{tag}/standard"] = Leg(f"{tag}/standard", pi, std, "settlement", ports,
                                      MeasureSpec(levels=(0.99,), profit_factor=cp.pnl_offset))
        ext_names = []
        for j in range(len(pp.extended_moves)):
            name = f"{tag}/extended{j}"
            legs[name] = Leg(name, pi_ext, extended_scenario(u, pp, j), "settlement", ports,
                             MeasureSpec(levels=(0.99,)))
            ext_names.append(name)
        try:
            index_usd = float(book.market.index_price[book.market.index_of(np.array([u], dtype=object))[0]])
        except KeyError:
            raise GpuriskError(f"{MODEL}: no index price for underlying {u!r} in the book") from None
        coin = c != USD
        # per-contract position size in the settlement currency and the roll rate
        settle_size = np.where(pi.settlement == INVERSE, pi.contract_size / pi.forward, pi.contract_size * pi.forward)
        is_fut = np.isin(pi.kind, (FUTURE, PERPETUAL))
        roll_rate = np.where(is_fut, np.maximum(cp.min_annualised_move, cp.annualised_move_risk * ttm_all[inst]), 0.0)
        groups.append(dict(
            venue=v, underlying=u, currency=c, pair=pp, ccy=cp, std=f"{tag}/standard", ext=ext_names,
            conv=index_usd if coin else 1.0, index_usd=index_usd,
            settle_size=settle_size, roll_rate=roll_rate, usd_delta=usd_delta_per_contract(pi),
        ))
    return Plan(model=MODEL, legs=legs, context=Context(book, params, groups))


def counted_extended(L: np.ndarray, pp: PairParams, cp: CurrencyParams, conv: float) -> np.ndarray:
    """[n, E] counted extended-table P&L from the simulated P&L ``L`` [n, E] (settlement currency).

    Each scenario counts its fraction, is pulled toward 0 by the dampener
    ``(|move|/price_range − 1)·extended_dampener`` USD (÷ ``conv``, the index price for a
    coin), and a remaining profit is credited at ``pnl_offset``.
    """
    moves = np.abs(np.asarray(pp.extended_moves, dtype=np.float64))
    damp = (np.maximum(moves / pp.price_range, 1.0) - 1.0) * cp.extended_dampener / conv
    Lf = L * pp.fractions()[None, :]
    Ld = np.sign(Lf) * np.maximum(np.abs(Lf) - damp[None, :], 0.0)
    return np.where(Ld > 0.0, Ld * cp.pnl_offset, Ld)


def group_figures(g: dict, ports: Portfolios, std: TailStats, ext_pnl: np.ndarray, mm_factor: float) -> dict:
    """The figures of one (venue, underlying, currency) group's portfolios [P], in the settlement currency.

    ``std``: the standard table's TailStats [P]; ``ext_pnl`` [P, E]: each extended scenario's raw
    P&L. Returns ``worst_case``, ``binding`` (0: the standard table binds, j + 1: extended
    scenario j), ``roll_shock``, ``delta_usd`` (USD), ``delta_shock``, ``im`` and ``mm``.
    Vectorised over portfolios (``finalize`` runs it on every account, the what-if on one).
    """
    pp: PairParams = g["pair"]
    cp: CurrencyParams = g["ccy"]
    n = len(ports)
    losses = np.concatenate([std.worst[:, None], -counted_extended(ext_pnl, pp, cp, g["conv"])], axis=1)  # [P, 1+E]
    k = np.argmax(losses, axis=1)
    worst = np.maximum(losses[np.arange(n), k], 0.0)
    # roll and delta shocks
    r = row_of_entries(ports)
    q, ii = ports.quantity, ports.instrument_idx
    roll = np.bincount(r, weights=np.abs(q * g["settle_size"][ii]) * g["roll_rate"][ii], minlength=n)
    delta_usd = np.bincount(r, weights=q * g["usd_delta"][ii], minlength=n)
    delta_shock = pp.max_delta_shock * np.maximum(np.abs(delta_usd) - pp.delta_total_liq_shock_threshold, 0.0) / g["conv"]
    im = worst + roll + delta_shock
    return {"worst_case": worst, "binding": k, "roll_shock": roll, "delta_usd": delta_usd,
            "delta_shock": delta_shock, "im": im, "mm": mm_factor * im}


def _group_table(g: dict, legs: dict[str, Leg], stats: dict[str, TailStats], mm_factor: float):
    """Per-portfolio figures of one (underlying, currency) group, vectorised over accounts."""
    std_leg = legs[g["std"]]
    ports = std_leg.portfolios
    st = stats[g["std"]]
    n = len(ports)
    # extended table: each one-scenario leg's "worst" is minus its raw P&L
    if g["ext"]:
        L = -np.stack([stats[name].worst for name in g["ext"]], axis=1)  # [P, E]
    else:
        L = np.zeros((n, 0))
    f = group_figures(g, ports, st, L, mm_factor)
    k = f["binding"]
    std_labels = std_leg.scenarios.label
    ext_labels = np.array([legs[name].scenarios.label[0] for name in g["ext"]], dtype=object)
    all_labels = np.concatenate([np.array([""], dtype=object), ext_labels])
    worst_label = np.where(k == 0, std_labels[st.worst_scenario], all_labels[k])
    return pd.DataFrame({
        "account_id": ports.key["account_id"],
        "account_idx": ports.account_idx,
        "venue": g["venue"],
        "currency": g["currency"],
        "underlying": g["underlying"],
        "worst_case": f["worst_case"],
        "worst_scenario": worst_label,
        "roll_shock": f["roll_shock"],
        "delta_shock": f["delta_shock"],
        "delta_usd": f["delta_usd"],
        "im": f["im"],
        "mm": f["mm"],
        "conv": g["conv"],
    })


def _equity(book: Book, rows: pd.DataFrame) -> np.ndarray:
    """[R] each row's balance at its ``venue`` in its ``currency`` (stablecoins sum for USD)."""
    b = book.balances
    if len(b.amount) == 0 or len(rows) == 0:
        return np.zeros(len(rows))
    asset = np.where(np.isin(b.asset, np.asarray(STABLECOINS, dtype=object)), USD, b.asset)
    bal = pd.DataFrame({"account_idx": b.account_idx, "venue": b.venue, "currency": asset, "amount": b.amount})
    bal = bal.groupby(["account_idx", "venue", "currency"], as_index=False)["amount"].sum()
    keys = rows[["account_idx", "venue", "currency"]]
    return keys.merge(bal, on=["account_idx", "venue", "currency"], how="left")["amount"].fillna(0.0).to_numpy()


def coverage(plan: Plan) -> pd.DataFrame:
    """The (account_id, venue) pairs the ``margin`` table must hold: every account with a
    non-zero position at one of the model's venues (the batch layer checks the output)."""
    return covered_pairs(plan.context.book, plan.context.params.venues)


def risk_vectors(plan: Plan, table: pd.DataFrame, top: int) -> pd.DataFrame:
    """Scenario P&L (raw and counted) of the ``top`` largest requirements (by IM in USD).

    Revalues only those few portfolios with the NumPy reference backend; ``pnl`` is the
    simulated P&L, ``counted_pnl`` after profit credit, extended fractions and dampener.
    """
    cols = ["account_id", "venue", "currency", "underlying", "table", "scenario_id", "label", "price_shock",
            "vol_shock", "pnl", "counted_pnl"]
    if top <= 0 or table.empty:
        return pd.DataFrame(columns=cols)
    pick = table.assign(_usd=table["im"] * table["conv"]).nlargest(top, "_usd", keep="first")
    legs = plan.legs
    out = []
    for gi, g in enumerate(plan.context.groups):
        rows = np.sort(pick.loc[pick["_group"] == gi, "_row"].to_numpy())
        if len(rows) == 0:
            continue
        cp, pp = g["ccy"], g["pair"]
        std = legs[g["std"]].scenarios
        sub = take_rows(legs[g["std"]].portfolios, rows)

        def pnl(name):
            return ref.portfolio_pnl(sub, ref.revalue(legs[name].pricing, legs[name].scenarios, "settlement"))

        L = pnl(g["std"])  # [n, 27]
        blocks = [("standard", L, np.where(L > 0.0, L * cp.pnl_offset, L), std.scenario_id, std.label,
                   std.price_shock[:, 0], std.vol_shock[:, 0])]
        if g["ext"]:
            Le = np.concatenate([pnl(name) for name in g["ext"]], axis=1)  # [n, E]
            ext = [legs[name].scenarios for name in g["ext"]]
            blocks.append(("extended", Le, counted_extended(Le, pp, cp, g["conv"]),
                           np.array([e.scenario_id[0] for e in ext], dtype=object),
                           np.array([e.label[0] for e in ext], dtype=object),
                           np.array([e.price_shock[0, 0] for e in ext]), np.array([e.vol_shock[0, 0] for e in ext])))
        for tab, Lx, Cx, sids, labels, ps, vs in blocks:
            n, S = Lx.shape
            out.append(pd.DataFrame({
                "account_id": np.repeat(sub.key["account_id"], S), "venue": g["venue"], "currency": g["currency"],
                "underlying": g["underlying"], "table": tab, "scenario_id": np.tile(sids, n),
                "label": np.tile(labels, n), "price_shock": np.tile(ps, n), "vol_shock": np.tile(vs, n),
                "pnl": Lx.ravel(), "counted_pnl": Cx.ravel(),
            }))
    if not out:
        return pd.DataFrame(columns=cols)
    return pd.concat(out, ignore_index=True)[cols]


#: units of the ``margin`` table's own columns (besides the standard ones)
UNITS = {"worst_case": "currency", "roll_shock": "currency", "delta_shock": "currency", "index_price": "USD"}
RISK_VECTOR_UNITS = {"price_shock": "1", "vol_shock": "1", "pnl": "currency", "counted_pnl": "currency"}


def finalize(plan: Plan, stats: dict[str, TailStats]) -> MarginResult:
    """``margin`` per account × venue × settlement currency (in that currency, and USD at the index),
    ``risk_vectors`` of the largest requirements."""
    ctx: Context = plan.context
    params, book = ctx.params, ctx.book
    parts = []
    for gi, g in enumerate(ctx.groups):
        t = _group_table(g, plan.legs, stats, params.mm_factor)
        t["_group"] = gi
        t["_row"] = np.arange(len(t))
        parts.append(t)
    extra = ["worst_case", "roll_shock", "delta_shock", "worst_scenario", "index_price"]
    units = {"margin": UNITS, "risk_vectors": RISK_VECTOR_UNITS}
    if not parts:
        empty = standard_frame([], [], MODEL, [], [], [], []).assign(**{c: [] for c in extra})
        return MarginResult(MODEL, {"margin": empty, "risk_vectors": risk_vectors(plan, pd.DataFrame(), 0)},
                            {"model": MODEL, "n_rows": 0, "accounts": 0, "im_usd_total": 0.0, "mm_usd_total": 0.0},
                            units)
    pair_table = pd.concat(parts, ignore_index=True)
    # one row per account × currency: sum over the currency's underlyings (one for a coin)
    g = pair_table.groupby(["account_idx", "account_id", "venue", "currency"], sort=True)
    ix = g.agg(worst_case=("worst_case", "sum"), roll_shock=("roll_shock", "sum"), delta_shock=("delta_shock", "sum"),
               im=("im", "sum"), mm=("mm", "sum"), conv=("conv", "first"),
               worst_scenario=("worst_scenario", "first"), n_under=("underlying", "nunique")).reset_index()
    ix.loc[ix["n_under"] > 1, "worst_scenario"] = "per underlying"
    margin = standard_frame(ix["account_id"], ix["venue"], MODEL, ix["currency"], ix["im"], ix["mm"],
                            _equity(book, ix), ix["conv"])
    for c in extra[:-1]:
        margin[c] = ix[c].to_numpy()
    margin["index_price"] = ix["conv"].to_numpy()
    vectors = risk_vectors(plan, pair_table, params.risk_vectors_top)
    summary = {
        "model": MODEL,
        "venues": list(params.venues),
        "n_rows": int(len(margin)),
        "accounts": int(margin["account_id"].nunique()),
        "currencies": sorted(margin["currency"].unique().tolist()),
        "im_usd_total": float(margin["im_usd"].sum()),
        "mm_usd_total": float(margin["mm_usd"].sum()),
        "n_risk_vector_portfolios": int(vectors[["account_id", "venue", "currency", "underlying"]].drop_duplicates().shape[0]),
    }
    return MarginResult(MODEL, {"margin": margin, "risk_vectors": vectors}, summary, units)


__all__ = ["NAME", "Context", "Params", "PairParams", "CurrencyParams", "load_params", "plan", "finalize", "coverage",
           "standard_scenarios", "extended_scenario", "group_figures"]
