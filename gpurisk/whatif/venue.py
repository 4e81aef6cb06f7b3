"""The venue model's what-if: each venue's margin for one account after trades, in USD.

Per account × venue, as ``gpurisk.margin.venue`` does it: Deribit S:PM per (underlying,
settlement currency) group, summed per currency and converted at the index; OKX per risk
unit (underlying), summed; fully paid spot (a short is charged ``spot_short_rate`` × its
notional); a venue the table does not name is ``uncovered``. Each group's figures come from
the replicas' own functions (``deribit.group_figures``, ``okx.unit_figures``) on the
account's one-portfolio P&L, built from the session's P rows of that group's legs; an
instrument the group's legs do not hold is revalued on the fly (the venue model planned on
a one-instrument book, revalued through the session's backend) and cached. Equity is the
venue holdings (``replica.holdings_usd``), unchanged unless a spot position changed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..book import SPOT, Portfolios
from ..errors import GpuriskError
from ..margin import calls as _calls
from ..margin import deribit as _deribit
from ..margin import okx as _okx
from ..margin import venue as _venue
from ..margin.plan import UNCOVERED
from ..margin.replica import holdings_usd, venue_positions
from .base import Figures, WhatIfError
from .tail import portfolio_pnl, tail_one

#: per-contract arrays of a group (indexed by the group's instruments)
DERIBIT_ARRAYS = ("settle_size", "roll_rate", "usd_delta")
OKX_ARRAYS = ("notional", "kind", "ttm", "linear")
NAN = float("nan")


@dataclass
class _Group:
    """One replica group of the session: its parameters and per-contract arrays ``g``, the book
    instruments it holds (book row -> local row), and P per leg role with the legs' specs."""

    g: dict
    local: dict
    P: dict
    spec: dict


@dataclass(frozen=True)
class _Probe:
    """An instrument revalued on the fly: its methodology, its group's ``g`` (arrays of one row),
    its P&L per leg role [S] and the legs' specs."""

    methodology: str
    g: dict
    pnl: dict
    spec: dict


def _roles_deribit(g: dict) -> dict:
    return {"std": g["std"], **{f"ext{j}": name for j, name in enumerate(g["ext"])}}


class VenueWhatIf:
    """What-if evaluator of a loaded venue model (see the module docstring)."""

    def __init__(self, session, model):
        book = session.book
        ctx: _venue.Context = model.plan.context
        self.session = session
        self.params = ctx.params
        self.methodology = {v: spec.methodology for v, spec in ctx.params.venues.items()}
        self.ccy = book.instruments.settlement_currency()
        sp = ctx.subplans.get("deribit")
        self.dparams = sp.context.params if sp is not None else None
        sp = ctx.subplans.get("okx")
        self.oparams = sp.context.params if sp is not None else None
        self.dgroups, self.ogroups = self._groups(book, ctx.subplans, model.pnl)
        # the run's rows, per account
        t = model.result.margin
        acct = t["account_id"].astype(str).map(session.accounts).to_numpy()
        order = np.argsort(acct, kind="stable")
        self.t_ptr = np.searchsorted(acct[order], np.arange(book.n_accounts + 1))
        self.t_order = order
        self.t_venue = t["venue"].to_numpy(dtype=object)
        self.t_cols = {c: t[c].to_numpy(dtype=np.float64) for c in ("im_usd", "mm_usd", "equity_usd",
                                                                      "call_amount_usd")}
        self.t_status = t["status"].to_numpy(dtype=object)
        self._ext: dict[str, _Probe | None] = {}
        self._lock = threading.Lock()

    def _groups(self, book, subplans, pnl) -> tuple[dict, dict]:
        """({(venue, underlying, currency): _Group} of Deribit, {(venue, underlying): _Group} of OKX) of a
        venue plan's sub-plans on ``book``, with ``pnl`` {Leg.pnl_key(): P}."""
        ins, pos = book.instruments, book.positions
        ccy = ins.settlement_currency()
        pi = pos.instrument_idx
        lab_v, lab_u, lab_c = ins.venue[pi], ins.underlying[pi], ccy[pi]
        dgroups, ogroups = {}, {}
        sp = subplans.get("deribit")
        if sp is not None:
            sel = venue_positions(book, sp.context.params.venues)
            for g in sp.context.groups:
                m = sel & (lab_v == g["venue"]) & (lab_u == g["underlying"]) & (lab_c == g["currency"])
                dgroups[(g["venue"], g["underlying"], g["currency"])] = self._group(
                    g, np.unique(pi[m]), _roles_deribit(g), sp, pnl, DERIBIT_ARRAYS)
        sp = subplans.get("okx")
        if sp is not None:
            sel = venue_positions(book, sp.context.params.venues)
            for g in sp.context.groups:
                m = sel & (lab_v == g["venue"]) & (lab_u == g["underlying"])
                ogroups[(g["venue"], g["underlying"])] = self._group(
                    g, np.unique(pi[m]), dict(g["legs"]), sp, pnl, OKX_ARRAYS)
        return dgroups, ogroups

    def prime(self) -> None:
        """Revalue every listed Deribit/OKX instrument that no session group holds, in one venue plan."""
        book = self.session.book
        ins = book.instruments
        todo = []
        for i in range(len(ins)):  # listed instruments: a few thousand, once per session
            m = self.methodology.get(str(ins.venue[i]))
            key = ((str(ins.venue[i]), str(ins.underlying[i]), str(self.ccy[i])) if m == "deribit"
                   else (str(ins.venue[i]), str(ins.underlying[i])) if m == "okx" else None)
            if key is None:
                continue
            grp = (self.dgroups if m == "deribit" else self.ogroups).get(key)
            if grp is None or i not in grp.local:
                todo.append(i)
        if not todo:
            return
        probe = self.session.probe_book(np.asarray(todo))
        p1 = _venue.plan(probe, self.params)
        eng = self.session.engine
        pnl = {}
        for leg in p1.legs.values():
            k = leg.pnl_key()
            if k not in pnl:
                pnl[k] = np.asarray(eng.revalue(leg.pricing, leg.scenarios, leg.numeraire))
        dg, og = self._groups(probe, p1.context.subplans, pnl)
        for meth, groups, arrays in (("deribit", dg, DERIBIT_ARRAYS), ("okx", og, OKX_ARRAYS)):
            for grp in groups.values():
                for k, j in grp.local.items():
                    g = {**grp.g, **{a: grp.g[a][j:j + 1] for a in arrays}}
                    self._ext[self.session.ref(int(todo[k])).cache_key] = _Probe(
                        meth, g, {r: P[j] for r, P in grp.P.items()}, grp.spec)

    @staticmethod
    def _group(g, inst, roles, sp, pnl, arrays) -> _Group:
        if any(len(g[k]) != len(inst) for k in arrays):
            raise GpuriskError(f"venue what-if: group {g['venue']}/{g['underlying']} holds {len(inst)} instruments "
                               "but its arrays do not; the what-if needs updating to the replica's layout")
        return _Group(g, {int(i): j for j, i in enumerate(inst)},
                      {r: pnl[sp.legs[n].pnl_key()] for r, n in roles.items()},
                      {r: sp.legs[n].spec for r, n in roles.items()})

    # ------------------------------------------------------------------ figures

    def before(self, a: int) -> dict[str, tuple[str, Figures]]:
        """{venue: (methodology, Figures)} of the account's rows in the session's run."""
        out = {}
        for i in self.t_order[self.t_ptr[a]:self.t_ptr[a + 1]]:
            v = str(self.t_venue[i])
            c = self.t_cols
            im, eq = c["im_usd"][i], c["equity_usd"][i]
            out[v] = (self.methodology.get(v, UNCOVERED),
                      Figures(float(im), float(c["mm_usd"][i]), float(eq), float(eq - im), str(self.t_status[i]),
                              float(c["call_amount_usd"][i])))
        return out

    def equity_of(self, before: dict) -> dict[str, float]:
        return {v: f.equity for v, (_, f) in before.items()}

    def evaluate(self, account_id: str, positions, balances, equity: dict | None = None,
                 where: str = "trades") -> dict[str, tuple[str, Figures]]:
        """{venue: (methodology, Figures)} for ``positions`` [(InstrumentRef, q)] and ``balances``
        (venue, asset, amount). ``equity``: the known holdings per venue (None: computed)."""
        meth = self.methodology
        d_entries: dict[tuple, list] = {}
        o_entries: dict[tuple, list] = {}
        spot: dict[str, float] = {}
        present = {str(v) for v in balances[0]}
        for ref, q in positions:
            v = ref.venue
            present.add(v)
            m = meth.get(v)
            if m == "deribit":
                d_entries.setdefault((v, ref.underlying, self._currency(ref)), []).append((ref, q))
            elif m == "okx":
                o_entries.setdefault((v, ref.underlying), []).append((ref, q))
            elif m == "spot":
                if ref.kind != SPOT:
                    raise WhatIfError(f"{where}: instrument {ref.key} at spot-methodology venue {v} is not spot; "
                                      "the venue table must map that venue to a derivatives methodology", where)
                cs, mark = self._size_and_mark(ref)
                spot[v] = spot.get(v, 0.0) + float(_venue.spot_charge(q, cs, mark, self.params.spot_short_rate))
        im: dict[str, float] = {}
        mm: dict[str, float] = {}
        per_ccy: dict[tuple, list] = {}
        for key in sorted(d_entries):
            g, f = self._deribit(key, d_entries[key], where)
            acc = per_ccy.setdefault((key[0], key[2]), [0.0, 0.0, g["conv"]])
            acc[0] += float(f["im"][0])
            acc[1] += float(f["mm"][0])
        for (v, _), (i, m_, conv) in per_ccy.items():
            im[v] = im.get(v, 0.0) + i * conv
            mm[v] = mm.get(v, 0.0) + m_ * conv
        for key in sorted(o_entries):
            f = self._okx(key, o_entries[key], where)
            im[key[0]] = im.get(key[0], 0.0) + float(f["imr"][0])
            mm[key[0]] = mm.get(key[0], 0.0) + float(f["mmr"][0])
        for v, x in spot.items():
            im[v] = im.get(v, 0.0) + x
            mm[v] = mm.get(v, 0.0) + x
        if equity is None:
            h = holdings_usd(self.session.mini_book(account_id, positions, balances))
            equity = dict(zip(h["venue"].astype(str), h["usd"].astype(float)))
        out = {}
        for v in sorted(present):
            m = meth.get(v)
            if m is None:
                out[v] = (UNCOVERED, Figures(NAN, NAN, NAN, NAN, UNCOVERED, NAN))
                continue
            i, m_, eq = im.get(v, 0.0), mm.get(v, 0.0), float(equity.get(v, 0.0))
            status, amount = _calls.classify(np.array([i]), np.array([m_]), np.array([eq]),
                                             self.params.venues[v].call_params(self.params.calls))  # venue's bands
            out[v] = (m, Figures(i, m_, eq, eq - i, str(status[0]), float(amount[0])))
        return out

    # ------------------------------------------------------------------ groups

    def _currency(self, ref) -> str:
        if ref.book_idx >= 0:
            return str(self.ccy[ref.book_idx])
        return str(ref.one_book().instruments.settlement_currency()[0])

    def _size_and_mark(self, ref) -> tuple[float, float]:
        b = self.session.book if ref.book_idx >= 0 else ref.one_book()
        i = ref.book_idx if ref.book_idx >= 0 else 0
        return float(b.instruments.contract_size[i]), float(b.market.underlying_price[i])

    def _collect(self, grp: _Group | None, entries, arrays, methodology: str, where: str):
        """(g with the entries' arrays, session rows, quantities, extras [(q, probe)]) of one group."""
        rows, qs, extra, cols, template = [], [], [], {k: [] for k in arrays}, grp.g if grp else None
        for ref, q in entries:
            j = grp.local.get(ref.book_idx, -1) if grp is not None and ref.book_idx >= 0 else -1
            if j >= 0:
                rows.append(j)
                qs.append(q)
                src, at = grp.g, j
            else:
                e = self._probe(ref, methodology, where)
                extra.append((q, e))
                src, at = e.g, 0
                template = template or e.g
            for k in arrays:
                cols[k].append(src[k][at])
        g = {**template, **{k: np.asarray(v) for k, v in cols.items()}}
        return g, rows, qs, extra

    @staticmethod
    def _ports(entries) -> Portfolios:
        n = len(entries)
        return Portfolios(np.array([0, n], dtype=np.int64), np.arange(n, dtype=np.int32),
                          np.array([q for _, q in entries], dtype=np.float64), np.zeros(1, np.int32), {}, "")

    @staticmethod
    def _leg_pnl(grp, role, rows, qs, extra):
        P = grp.P[role] if grp is not None else None
        return portfolio_pnl(P, rows if P is not None else [], qs, [(q, e.pnl[role]) for q, e in extra])

    def _deribit(self, key, entries, where):
        grp = self.dgroups.get(key)
        g, rows, qs, extra = self._collect(grp, entries, DERIBIT_ARRAYS, "deribit", where)
        spec = (grp or extra[0][1]).spec
        std = tail_one(self._leg_pnl(grp, "std", rows, qs, extra), spec["std"])
        ext = np.array([[self._leg_pnl(grp, f"ext{j}", rows, qs, extra)[0] for j in range(len(g["ext"]))]])
        return g, _deribit.group_figures(g, self._ports(entries), std, ext.reshape(1, len(g["ext"])),
                                         self.dparams.mm_factor)

    def _okx(self, key, entries, where):
        grp = self.ogroups.get(key)
        g, rows, qs, extra = self._collect(grp, entries, OKX_ARRAYS, "okx", where)
        spec = (grp or extra[0][1]).spec
        worst = {r: tail_one(self._leg_pnl(grp, r, rows, qs, extra), spec[r]).worst for r in g["legs"]}
        return _okx.unit_figures(g, self._ports(entries), worst["mr1"], worst["mr6"], worst.get("mr2"), self.oparams)

    def _probe(self, ref, methodology: str, where: str) -> _Probe:
        """The venue model planned on the instrument's one-instrument book; its legs revalued (cached)."""
        hit = self._ext.get(ref.cache_key)
        if hit is not None:
            return hit
        try:
            p1 = _venue.plan(ref.one_book(), self.params)
        except GpuriskError as exc:
            raise WhatIfError(f"{where}: instrument {ref.key}: {exc}", where) from None
        sp = p1.context.subplans.get(methodology)
        if sp is None or len(sp.context.groups) != 1:
            raise GpuriskError(f"venue what-if: planning {ref.key} alone did not give one {methodology} group")
        g = sp.context.groups[0]
        roles = _roles_deribit(g) if methodology == "deribit" else dict(g["legs"])
        eng = self.session.engine
        pnl = {r: np.asarray(eng.revalue(sp.legs[n].pricing, sp.legs[n].scenarios, sp.legs[n].numeraire))[0].copy()
               for r, n in roles.items()}
        probe = _Probe(methodology, g, pnl, {r: sp.legs[n].spec for r, n in roles.items()})
        with self._lock:
            return self._ext.setdefault(ref.cache_key, probe)


__all__ = ["VenueWhatIf"]
