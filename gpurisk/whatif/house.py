"""The house model's what-if: one account's margin after trades, from the session's P&L rows.

The account's cross-venue portfolio (positions, then its collateral pseudo-instruments) is
re-evaluated exactly as the full run does it:

1. its scenario P&L per component, L_c = Σ_j q_j·P_c[row_j], from the session's P_c rows
   (an instrument the run did not hold is revalued on the fly through the session's backend,
   by planning the house model on a one-instrument book with the session's scenario sets,
   and cached);
2. each component's tail statistics under the leg's own ``MeasureSpec`` (``whatif.tail``);
3. the IM terms by ``gpurisk.margin.house.requirement`` itself (base, APC buffer, liquidity
   add-on, floor, IM, MM), on a one-portfolio plan whose context rows are the account's;
4. equity as ``collateral.equity`` values it (unchanged unless a spot holding changed), status by
   ``calls.classify``.

So the result equals a full recomputation of the modified book on the same backend, up to
the order of floating-point sums.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from ..book import SPOT, Portfolios
from ..errors import GpuriskError, ScenarioError
from ..margin import calls as _calls
from ..margin import collateral as _coll
from ..margin import house as _house
from ..margin.plan import Plan
from .base import Figures, WhatIfError
from .tail import portfolio_pnl, tail_one


@dataclass(frozen=True)
class _Row:
    """A row revalued on the fly: its P&L per component [S_c], delta (USD per unit move), underlying
    and that underlying's liquidity inputs (σ daily, ADV USD)."""

    pnl: dict
    delta: float
    underlying: str
    sigma: float
    adv: float


class HouseWhatIf:
    """What-if evaluator of a loaded house model (see the module docstring)."""

    def __init__(self, session, model):
        book = session.book
        plan = model.plan
        ctx: _house.Context = plan.context
        self.session = session
        self.ctx = ctx
        self.params = ctx.params
        self.comps = ctx.components
        self.legs = {c: plan.legs[f"account/{c}"] for c in self.comps}
        self.P = {c: model.pnl[leg.pnl_key()] for c, leg in self.legs.items()}
        self.scenarios = {c: leg.scenarios for c, leg in self.legs.items()}
        ports = self.legs[self.comps[0]].portfolios
        K = ctx.n_positions
        held = np.unique(book.positions.instrument_idx)
        C = len(ctx.collateral)
        if len(held) != K or len(self.legs[self.comps[0]].pricing) != K + C or len(ports) != book.n_accounts:
            raise GpuriskError("house what-if: the plan's rows are not [held instruments, collateral assets]; "
                               "the what-if needs updating to the house model's layout")
        self.K = K
        self.rowmap = np.full(len(book.instruments), -1, dtype=np.int64)
        self.rowmap[held] = np.arange(K)
        self.asset_row = {str(a): K + j for j, a in enumerate(ctx.collateral.assets)}
        names = np.concatenate([np.asarray(book.instruments.underlying[held], dtype=object).astype(str),
                                np.asarray(ctx.collateral.assets, dtype=object).astype(str)])
        und = np.empty(ctx.n_underlyings, dtype=object)
        und[ctx.und_code] = names
        self.und_code = {str(u): i for i, u in enumerate(und)}
        self.ptr, self.rows, self.qty = ports.indptr, ports.instrument_idx.astype(np.int64), ports.quantity
        m = model.result.margin
        if not np.array_equal(m["account_id"].to_numpy(dtype=object), np.asarray(book.accounts, dtype=object)):
            raise GpuriskError("house what-if: the margin table is not one row per account in book order")
        self.im = m["im"].to_numpy(dtype=np.float64)
        self.mm = m["mm"].to_numpy(dtype=np.float64)
        self.equity = m["equity"].to_numpy(dtype=np.float64)
        self.status = m["status"].to_numpy(dtype=object)
        self.call = m["call_amount_usd"].to_numpy(dtype=np.float64)
        self._ext: dict[str, _Row] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ figures

    def _equity(self, positions, balances) -> float:
        """Haircut equity (USD) of one account's holdings, as ``collateral.equity`` values them on a one-account
        book: balances at the index (``collateral.index_prices``), spot positions at their mark (q × contract
        size × underlying price), summed per asset, then tiered by ``collateral.tier_value``; without building a
        book."""
        book = self.session.book
        net = _net_by_asset(balances)
        prices = _coll.index_prices([a for a, _ in net], book.market)
        held = {a: x * float(px) for (a, x), px in zip(net, prices)}
        for ref, q in positions:
            if ref.kind != SPOT:
                continue
            if ref.book_idx >= 0:
                i = ref.book_idx
                size, price = book.instruments.contract_size[i], book.market.underlying_price[i]
            else:
                one = ref.one_book()
                size, price = one.instruments.contract_size[0], one.market.underlying_price[0]
            held[ref.underlying] = held.get(ref.underlying, 0.0) + float(q) * float(size) * float(price)
        if not held:
            return 0.0
        assets = np.array(list(held), dtype=object)
        return float(_coll.tier_value(assets, np.fromiter(held.values(), float, len(held)), self.params.collateral).sum())

    def before(self, a: int) -> Figures:
        """The account's figures in the session's run."""
        return Figures(float(self.im[a]), float(self.mm[a]), float(self.equity[a]),
                       float(self.equity[a] - self.im[a]), str(self.status[a]), float(self.call[a]))

    def evaluate(self, account_id: str, positions, balances, a: int | None = None, equity: float | None = None,
                 where: str = "trades", attribute=None) -> Figures:
        """Figures of a portfolio of ``positions`` [(InstrumentRef, q)] plus collateral.

        ``a``: the session account whose collateral rows to use (None: net ``balances`` (venue,
        asset, amount) per asset). ``equity``: the known equity (None: computed from the holdings).
        ``attribute``: (trades [(InstrumentRef, Δq)], sink dict): the trades' Euler contributions to each ES
        component of the portfolio go into ``sink`` ({component: {...}}; per call, so concurrent requests
        never share it).
        """
        ctx = self.ctx
        rows, qs, extra = [], [], []
        q_loc, delta, code = [], [], []
        new_und: dict[str, tuple[float, float]] = {}
        U = ctx.n_underlyings
        for j, (ref, q) in enumerate(positions):
            r = self.rowmap[ref.book_idx] if ref.book_idx >= 0 else -1
            if r >= 0:
                rows.append(r)
                qs.append(q)
                delta.append(ctx.delta[r])
                code.append(ctx.und_code[r])
            else:
                e = self._instrument_row(ref, where)
                extra.append((q, e))
                delta.append(e.delta)
                code.append(self._code(e, new_und, U))
            q_loc.append(q)
        n_pos = len(q_loc)
        if a is not None:  # the run's own collateral rows of the account (net per asset)
            lo, hi = self.ptr[a], self.ptr[a + 1]
            for r, q in zip(self.rows[lo:hi], self.qty[lo:hi]):
                if r >= self.K:
                    rows.append(int(r))
                    qs.append(float(q))
                    q_loc.append(float(q))
                    delta.append(ctx.delta[r])
                    code.append(ctx.und_code[r])
        else:
            for asset, amount in _net_by_asset(balances):
                r = self.asset_row.get(asset)
                if r is not None:
                    rows.append(r)
                    qs.append(amount)
                    delta.append(ctx.delta[r])
                    code.append(ctx.und_code[r])
                else:
                    e = self._asset_row(asset)
                    extra.append((amount, e))
                    delta.append(e.delta)
                    code.append(self._code(e, new_und, U))
                q_loc.append(amount)
        stats = {}
        for c in self.comps:
            L = portfolio_pnl(self.P[c], rows, qs, [(q, e.pnl[c]) for q, e in extra])
            stats[f"account/{c}"] = tail_one(L, self.legs[c].spec)
        if attribute is not None:
            trades, sink = attribute
            sink.update({c: self._contributions(c, rows, qs, extra, trades, where) for c in self.comps if c != "stress"})
        n = len(q_loc)
        lctx = replace(
            ctx, delta=np.asarray(delta, dtype=np.float64), und_code=np.asarray(code, dtype=np.int64),
            n_positions=n_pos, n_underlyings=U + len(new_und),
            liq_sigma=np.concatenate([ctx.liq_sigma, [v[0] for v in new_und.values()]]),
            liq_adv=np.concatenate([ctx.liq_adv, [v[1] for v in new_und.values()]]),
        )
        ports = Portfolios(np.array([0, n], dtype=np.int64), np.arange(n, dtype=np.int32),
                           np.asarray(q_loc, dtype=np.float64), np.zeros(1, dtype=np.int32), {}, "account")
        c0 = self.comps[0]
        local = Plan(_house.NAME, {f"account/{c0}": replace(self.legs[c0], portfolios=ports)}, lctx)
        req = _house.requirement(local, stats, "account")
        im, mm = float(req["im"][0]), float(req["mm"][0])
        if equity is None:
            equity = self._equity(positions, balances)
        status, amount = _calls.classify(np.array([im]), np.array([mm]), np.array([equity]), self.params.calls)
        return Figures(im, mm, equity, equity - im, str(status[0]), float(amount[0]))

    def _contributions(self, c: str, rows, qs, extra, trades, where: str) -> dict:
        """Euler contributions (USD) of ``trades`` [(InstrumentRef, Δq)] to the ES of component ``c`` of the portfolio
        (rows of P ``rows`` × ``qs`` plus ``extra``): Δq × the trade instrument's marginal, the mean of its P&L over
        the portfolio's tail set (the ES's own k and weights; ``gpurisk.tail``, "Euler attribution"). The trade rows
        ride along with quantity 0, so they change no loss; a trade that closes a position still has its marginal."""
        from ..backends import reference as _ref
        from ..book import Portfolios

        P = self.P[c]
        mats = [P[r] for r in rows] + [e.pnl[c] for _, e in extra]
        qty = list(qs) + [q for q, _ in extra]
        n = len(mats)
        for ref, _ in trades:
            r = self.rowmap[ref.book_idx] if ref.book_idx >= 0 else -1
            mats.append(P[r] if r >= 0 else self._instrument_row(ref, where).pnl[c])
            qty.append(0.0)
        m = len(mats)
        ports = Portfolios(np.array([0, m], dtype=np.int64), np.arange(m, dtype=np.int32),
                           np.asarray(qty, dtype=np.float64), np.zeros(1, dtype=np.int32))
        spec = self.legs[c].spec
        st = _ref.tail_stats(ports, np.vstack(mats), spec, attribution=True)
        marg = st.marginal[n:, 0]
        return {"es_after_usd": float(st.es[0, 0]),
                "trades": [{"instrument_id": ref.key, "quantity": float(dq), "marginal_per_unit": float(g),
                            "contribution_usd": float(dq * g)} for (ref, dq), g in zip(trades, marg)]}

    # ------------------------------------------------------------------ rows revalued on the fly

    def _code(self, e: _Row, new_und: dict, U: int) -> int:
        c = self.und_code.get(e.underlying)
        if c is not None:
            return c
        if e.underlying not in new_und:
            new_und[e.underlying] = (e.sigma, e.adv)
        return U + list(new_und).index(e.underlying)

    def prime(self) -> None:
        """Revalue every listed instrument no account holds (one plan and one revaluation per component)."""
        unheld = np.flatnonzero(self.rowmap < 0)
        if not len(unheld):
            return
        probe = self.session.probe_book(unheld)
        p1 = _house.plan(probe, self.params, dict(self.scenarios))
        ctx1 = p1.context
        if ctx1.n_positions != len(unheld):
            raise GpuriskError("house what-if: priming did not plan one row per unheld instrument")
        P = {c: np.asarray(self.session.engine.revalue(p1.legs[f"account/{c}"].pricing,
                                                       p1.legs[f"account/{c}"].scenarios, "usd"))
             for c in self.comps}
        names = np.asarray(probe.instruments.underlying, dtype=object).astype(str)
        for j, i in enumerate(unheld):
            u = int(ctx1.und_code[j])
            self._ext[self.session.ref(int(i)).cache_key] = _Row(
                {c: P[c][j] for c in self.comps}, float(ctx1.delta[j]), str(names[j]),
                float(ctx1.liq_sigma[u]), float(ctx1.liq_adv[u]))

    def _instrument_row(self, ref, where: str) -> _Row:
        hit = self._ext.get(ref.cache_key)
        if hit is None:
            hit = self._probe(ref.one_book(), ref.cache_key, f"{where}: instrument {ref.key}")
        return hit

    def _asset_row(self, asset: str) -> _Row:
        key = f"asset:{asset}"
        hit = self._ext.get(key)
        if hit is None:
            hit = self._probe(self.session.asset_book(asset), key, f"balances: asset {asset}")
        return hit

    def _probe(self, one, key: str, what: str) -> _Row:
        """Plan the house model on a one-row book with the session's scenario sets; revalue its row."""
        try:
            p1 = _house.plan(one, self.params, dict(self.scenarios))
        except (ScenarioError, GpuriskError) as exc:
            raise WhatIfError(f"{what}: {exc} (the session's scenario sets are fixed; a new coin needs a new run)",
                              where_of(what)) from None
        ctx1 = p1.context
        pnl = {}
        for c in self.comps:
            leg = p1.legs[f"account/{c}"]
            pnl[c] = np.asarray(self.session.engine.revalue(leg.pricing, leg.scenarios, leg.numeraire))[0].copy()
        u = int(ctx1.und_code[0])
        one_name = str(one.instruments.underlying[0]) if len(one.instruments) else str(one.balances.asset[0])
        row = _Row(pnl, float(ctx1.delta[0]), one_name, float(ctx1.liq_sigma[u]), float(ctx1.liq_adv[u]))
        with self._lock:
            return self._ext.setdefault(key, row)


def where_of(what: str) -> str:
    """The field part of a ``field: detail`` label."""
    return what.split(":", 1)[0]


def _net_by_asset(balances):
    """[(asset, amount)] summed per asset in first-seen order (the account grouping nets venues)."""
    _, asset, amount = balances
    out: dict[str, float] = {}
    for a, x in zip(asset, amount):
        out[str(a)] = out.get(str(a), 0.0) + float(x)
    return list(out.items())


__all__ = ["HouseWhatIf"]
