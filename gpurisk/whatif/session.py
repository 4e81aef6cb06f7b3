"""A warm what-if session: one book, its market snapshot, the models' plans, scenario P&L and results.

``Session(book, {label: ModelConfig(name, params, scenarios)}, backend)`` plans every model,
revalues each distinct (pricing, scenarios, numeraire) once through the backend's ``Engine``,
reduces it to the run's results and keeps all of it in memory, read-only: requests share
the P&L matrices, never copy them. What a request adds (an instrument the book does not
hold, revalued on the fly) goes into small per-model caches, each insert under its own lock.

``SessionHolder`` holds the current session; ``swap`` replaces it in one reference
assignment, so a request (which reads ``holder.current`` once) sees either the old session
or the new one, never half of each.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..book import SPOT, Balances, Book, Instruments, MarketSnapshot, Positions
from ..errors import ConfigError, GpuriskError
from .base import (INSTRUMENT_FIELDS, MARKET_FIELDS, MAX_QUANTITY, MAX_TRADES, PROBE_ACCOUNT, Figures, ModelConfig,
                   Trade, WhatIfError, check_quantity)
from .house import HouseWhatIf
from .tail import warm
from .venue import VenueWhatIf

#: model name -> its what-if evaluator (a model not listed has none: account look-ups only)
EVALUATORS = {"house": HouseWhatIf, "venue": VenueWhatIf}

class InstrumentRef:
    """An instrument a request names: a row of the session's book (``book_idx`` ≥ 0) or a new
    one (``book_idx`` = −1) with its validated one-row definition."""

    __slots__ = ("key", "book_idx", "venue", "underlying", "kind", "cache_key", "_one", "_session")

    def __init__(self, key: str, book_idx: int, venue: str, underlying: str, kind: int, session, one=None,
                 cache_key: str = ""):
        self.key = key
        self.book_idx = book_idx
        self.cache_key = cache_key or f"book:{book_idx}"
        self.venue = venue
        self.underlying = underlying
        self.kind = kind
        self._one = one
        self._session = session

    def one_book(self) -> Book:
        """A book of this one instrument, held by one probe account (1 contract), no balances."""
        if self._one is None:
            self._one = self._session._probe_book(self.book_idx)
        return self._one


class Session:
    """A loaded book and its models, warm. See the module docstring.

    book: a validated ``Book``. models: {label: ModelConfig}. backend: a name or an ``Engine``.
    margins: optional {label: margin table} to answer account look-ups with (a run's own
    tables); by default the session's results. source: JSON-able provenance (run id, paths).
    prime: also revalue, in one pass per model, every listed instrument no account holds (so a
    trade on any listed instrument is answered from memory; only unlisted ones are revalued on
    the fly).
    """

    def __init__(self, book: Book, models: Mapping[str, ModelConfig], backend="auto", margins=None,
                 source: Mapping | None = None, prime: bool = True):
        from ..backends import BackendUnavailable, Engine
        from ..margin import check_scenarios, get_model
        from ..margin.plan import finish

        if not models:
            raise ConfigError("a what-if session needs at least one model")
        if not isinstance(backend, Engine):
            try:
                backend = Engine(backend)
            except (BackendUnavailable, ValueError) as exc:
                raise ConfigError(str(exc)) from None
        t0 = time.perf_counter()
        self.book = book
        self.engine = backend
        self.source = dict(source or {})
        self.loaded_at = time.time()
        self.models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._new: dict[str, InstrumentRef] = {}
        self._refs: dict[int, InstrumentRef] = {}
        self.accounts = {str(a): i for i, a in enumerate(book.accounts)}
        self.instruments = {str(x): i for i, x in enumerate(book.instruments.instrument_id)}
        acct = book.portfolios("account")
        self._pos_ptr, self._pos_ins, self._pos_qty = acct.indptr, acct.instrument_idx, acct.quantity
        bal = book.balances
        order = np.argsort(bal.account_idx, kind="stable")
        self._bal_order = order
        self._bal_ptr = np.zeros(book.n_accounts + 1, dtype=np.int64)
        np.cumsum(np.bincount(bal.account_idx, minlength=book.n_accounts), out=self._bal_ptr[1:])
        timings = {}
        for label, cfg in models.items():
            mod = get_model(cfg.name)
            check_scenarios(cfg.name, cfg.scenarios)
            params = cfg.params if cfg.params is not None else mod.load_params(None)
            t = time.perf_counter()
            plan = mod.plan(book, params, cfg.scenarios)
            pnl, stats = {}, {}
            for name, leg in plan.legs.items():
                key = leg.pnl_key()
                if key not in pnl:
                    pnl[key] = self.engine.revalue(leg.pricing, leg.scenarios, leg.numeraire)
                stats[name] = self.engine.tail_stats(leg.portfolios, pnl[key], leg.spec)
            result = finish(mod, plan, stats)
            table = None if margins is None else margins.get(label)
            self.models[label] = LoadedModel(label, cfg.name, params, cfg.scenarios, plan, pnl, result,
                                             table if table is not None else result.margin)
            self.models[label].evaluator = _evaluator(self, self.models[label])
            timings[label] = time.perf_counter() - t
        if prime:  # revalue every listed instrument the run did not hold, in one pass per model
            for m in self.models.values():
                if m.evaluator is not None:
                    m.evaluator.prime()
        warm()  # compile (or load) the one-portfolio kernels now, not in the first request
        self.load_seconds = time.perf_counter() - t0
        self.timings = timings

    # ------------------------------------------------------------------ look-ups

    @property
    def as_of(self) -> str:
        return str(np.datetime_as_string(self.book.as_of, unit="s")) + "Z"

    def describe(self) -> dict:
        """JSON-able facts about the session: as-of, sizes, models, backend, age, provenance."""
        return {
            "as_of": self.as_of,
            "accounts": int(self.book.n_accounts),
            "instruments": int(len(self.book.instruments)),
            "positions": int(len(self.book.positions.quantity)),
            "models": {k: m.name for k, m in self.models.items()},
            "whatif_models": [k for k, m in self.models.items() if m.evaluator is not None],
            "backend": self.engine.name,
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3),
            "source": self.source,
        }

    def account_index(self, account_id, where: str = "account_id") -> int:
        if not isinstance(account_id, str) or not account_id:
            raise WhatIfError(f"{where} must be a non-empty string", where)
        a = self.accounts.get(account_id)
        if a is None:
            raise WhatIfError(f"{where}: account {account_id!r} is not in the session's book", where, 404)
        return a

    def labels(self, models=None, where: str = "models") -> list[str]:
        """The model labels a request asks for (None: every label the what-if supports), checked."""
        ok = [k for k, m in self.models.items() if m.evaluator is not None]
        if models is None:
            return ok
        if isinstance(models, str) or not isinstance(models, (list, tuple)):
            raise WhatIfError(f"{where} must be a list of model labels", where)
        out = []
        for i, name in enumerate(models):
            m = self.models.get(name) if isinstance(name, str) else None
            if m is None:
                raise WhatIfError(f"{where}[{i}]: unknown model {name!r}; this session has {', '.join(self.models)}",
                                  f"{where}[{i}]")
            if m.evaluator is None:
                raise WhatIfError(f"{where}[{i}]: model {name!r} ({m.name}) has no what-if; use one of "
                                  f"{', '.join(ok) or 'none'}", f"{where}[{i}]")
            if name not in out:
                out.append(name)
        if not out:
            raise WhatIfError(f"{where} must name at least one model", where)
        return out

    def positions_of(self, a: int) -> list[tuple[InstrumentRef, float]]:
        """The account's positions as (instrument, quantity), in instrument order."""
        lo, hi = self._pos_ptr[a], self._pos_ptr[a + 1]
        return [(self.ref(int(i)), float(q)) for i, q in zip(self._pos_ins[lo:hi], self._pos_qty[lo:hi])]

    def balances_of(self, a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The account's balances: (venue [b], asset [b], amount [b])."""
        rows = self._bal_order[self._bal_ptr[a]:self._bal_ptr[a + 1]]
        b = self.book.balances
        return b.venue[rows], b.asset[rows], b.amount[rows]

    def ref(self, i: int) -> InstrumentRef:
        """The reference of book instrument row ``i`` (cached)."""
        r = self._refs.get(i)
        if r is None:
            ins = self.book.instruments
            r = InstrumentRef(str(ins.instrument_id[i]), i, str(ins.venue[i]), str(ins.underlying[i]),
                              int(ins.kind[i]), self)
            self._refs[i] = r
        return r

    # ------------------------------------------------------------------ trades

    def resolve_trades(self, trades, where: str = "trades", max_trades: int = MAX_TRADES) -> list:
        """[(InstrumentRef, quantity)] for ``trades`` (Trade objects or mappings), checked; WhatIfError names the field."""
        if not isinstance(trades, (list, tuple)):
            raise WhatIfError(f"{where} must be a list of trades", where)
        if not trades:
            raise WhatIfError(f"{where} is empty: give at least one trade", where)
        if len(trades) > max_trades:
            raise WhatIfError(f"{where} has {len(trades)} trades; at most {max_trades} are allowed", where)
        out = []
        for j, t in enumerate(trades):
            w = f"{where}[{j}]"
            if isinstance(t, Mapping):
                iid, qty, defn = t.get("instrument_id"), t.get("quantity"), t.get("instrument")
            elif isinstance(t, Trade):
                iid, qty, defn = t.instrument_id, t.quantity, t.instrument
            else:
                raise WhatIfError(f"{w} must be a trade (instrument_id, quantity)", w)
            ref = self.instrument(iid, defn, w)
            for other, _ in out:
                if other.key == ref.key and other is not ref:
                    raise WhatIfError(f"{w}.instrument: {ref.key} is defined twice with different columns",
                                      f"{w}.instrument")
            out.append((ref, check_quantity(qty, f"{w}.quantity")))
        return out

    def instrument(self, instrument_id, definition=None, where: str = "trades[0]") -> InstrumentRef:
        """The instrument a trade names: a book row, or a new one defined by ``definition`` (validated, cached)."""
        if not isinstance(instrument_id, str) or not instrument_id.strip():
            raise WhatIfError(f"{where}.instrument_id must be a non-empty string", f"{where}.instrument_id")
        i = self.instruments.get(instrument_id)
        if i is not None:
            if definition is not None:
                raise WhatIfError(f"{where}.instrument: {instrument_id} is listed in the book; omit its definition",
                                  f"{where}.instrument")
            return self.ref(i)
        if definition is None:
            raise WhatIfError(f"{where}.instrument_id: unknown instrument {instrument_id!r}; a trade on an "
                              "instrument the book does not list must carry its definition in 'instrument'",
                              f"{where}.instrument_id")
        if not isinstance(definition, Mapping):
            raise WhatIfError(f"{where}.instrument must be an object of instrument and market columns",
                              f"{where}.instrument")
        d = {k: definition.get(k) for k in INSTRUMENT_FIELDS + MARKET_FIELDS}
        extra = sorted(set(definition) - set(d))
        if extra:
            raise WhatIfError(f"{where}.instrument.{extra[0]}: unknown column; allowed: "
                              f"{', '.join(INSTRUMENT_FIELDS[1:] + MARKET_FIELDS)}", f"{where}.instrument.{extra[0]}")
        if d["instrument_id"] not in (None, instrument_id):
            raise WhatIfError(f"{where}.instrument.instrument_id differs from the trade's instrument_id",
                              f"{where}.instrument.instrument_id")
        d["instrument_id"] = instrument_id
        key = json.dumps(d, sort_keys=True, default=str)
        hit = self._new.get(key)
        if hit is not None:
            return hit
        one = self._validated_book(d, where)
        ins = one.instruments
        ref = InstrumentRef(instrument_id, -1, str(ins.venue[0]), str(ins.underlying[0]), int(ins.kind[0]), self, one,
                            cache_key=f"new:{key}")
        with self._lock:
            return self._new.setdefault(key, ref)

    def _validated_book(self, d: dict, where: str) -> Book:
        """A one-instrument probe book from a definition, through ``gpurisk.validate`` (its rules and bounds)."""
        from ..validate import validate

        def cell(v):
            return None if v is None else str(v)

        tables = {
            "instruments": pd.DataFrame([{k: cell(d[k]) for k in INSTRUMENT_FIELDS}], dtype=object),
            "market": pd.DataFrame([{"instrument_id": d["instrument_id"], **{k: cell(d[k]) for k in MARKET_FIELDS}}],
                                   dtype=object),
            "index": self._index_frame(),
            "positions": pd.DataFrame([{"account_id": PROBE_ACCOUNT, "instrument_id": d["instrument_id"],
                                        "quantity": "1"}], dtype=object),
            "balances": pd.DataFrame(columns=["account_id", "venue", "asset", "amount"], dtype=object),
        }
        try:
            clean, rejects, _ = validate(tables, self.book.as_of)
        except GpuriskError as exc:
            raise WhatIfError(f"{where}.instrument: {exc}", f"{where}.instrument") from None
        if len(rejects):  # the root cause first: a rejected market row cascades to its instrument and position
            cascade = rejects["reason"].isin(["missing_market_row", "rejected_instrument"]).to_numpy()
            r = rejects.iloc[int(np.argmin(cascade))]
            col = str(r["column"])
            col = col if col in INSTRUMENT_FIELDS + MARKET_FIELDS else ""
            f = f"{where}.instrument" + (f".{col}" if col else "")
            msg = str(r["message"]).split(": ", 1)[-1]
            raise WhatIfError(f"{f}: {msg}", f)
        return Book.from_frames(self.book.as_of, **clean)

    def _index_frame(self) -> pd.DataFrame:
        m = self.book.market
        return pd.DataFrame({"underlying": np.asarray(m.underlyings, dtype=object),
                             "price": np.asarray(m.index_price, dtype=np.float64)})

    def _probe_book(self, i: int) -> Book:
        """Book row ``i`` alone, held by the probe account (1 contract), no balances."""
        return self.probe_book(np.array([i]))

    def probe_book(self, idx) -> Book:
        """Book rows ``idx`` [n] (sorted), each held by the probe account (1 contract), no balances."""
        b = self.book
        m = b.market
        idx = np.asarray(idx, dtype=np.int64)
        n = len(idx)
        return Book(
            as_of=b.as_of,
            accounts=np.array([PROBE_ACCOUNT], dtype=object),
            instruments=b.instruments.take(idx),
            market=MarketSnapshot(m.as_of, m.underlyings, m.index_price, m.underlying_price[idx], m.implied_vol[idx]),
            positions=Positions(np.zeros(n, np.int32), np.arange(n, dtype=np.int32), np.ones(n)),
            balances=_no_balances(),
        )

    def asset_book(self, asset: str) -> Book:
        """A book of one probe account holding 1 unit of ``asset`` as a balance, no positions."""
        b = self.book
        m = b.market
        return Book(
            as_of=b.as_of, accounts=np.array([PROBE_ACCOUNT], dtype=object),
            instruments=b.instruments.take(np.zeros(0, np.int64)),
            market=MarketSnapshot(m.as_of, m.underlyings, m.index_price, np.zeros(0), np.zeros(0)),
            positions=Positions(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0)),
            balances=Balances(np.zeros(1, np.int32), np.array([PROBE_ACCOUNT], dtype=object),
                              np.array([asset], dtype=object), np.ones(1)),
        )

    def mini_book(self, account_id: str, positions, balances) -> Book:
        """A one-account book of ``positions`` [(InstrumentRef, q)] and ``balances`` (venue, asset, amount)."""
        b = self.book
        m = b.market
        old = [r.book_idx for r, _ in positions if r.book_idx >= 0]
        new = [r for r, _ in positions if r.book_idx < 0]
        parts = [b.instruments.take(np.asarray(old, dtype=np.int64))]
        up = [m.underlying_price[old]]
        iv = [m.implied_vol[old]]
        for r in new:
            one = r.one_book()
            parts.append(one.instruments)
            up.append(one.market.underlying_price)
            iv.append(one.market.implied_vol)
        qty = np.array([q for r, q in positions if r.book_idx >= 0] + [q for r, q in positions if r.book_idx < 0])
        n = len(qty)
        venue, asset, amount = balances
        return Book(
            as_of=b.as_of, accounts=np.array([account_id], dtype=object),
            instruments=Instruments.concat(parts),
            market=MarketSnapshot(m.as_of, m.underlyings, m.index_price, np.concatenate(up), np.concatenate(iv)),
            positions=Positions(np.zeros(n, np.int32), np.arange(n, dtype=np.int32), qty.astype(np.float64)),
            balances=Balances(np.zeros(len(amount), np.int32), np.asarray(venue, dtype=object),
                              np.asarray(asset, dtype=object), np.asarray(amount, dtype=np.float64)),
        )


@dataclass
class LoadedModel:
    """One model of a session: its plan, P&L per ``Leg.pnl_key``, result, the table account
    look-ups read, and its what-if evaluator (None for a model without one)."""

    label: str
    name: str
    params: Any
    scenarios: Any
    plan: Any
    pnl: dict
    result: Any
    table: pd.DataFrame
    evaluator: Any = None
    _rows: dict | None = field(default=None, repr=False)

    def rows_of(self, account_id: str) -> list[dict]:
        """The account's rows of ``table`` as JSON-able dicts (NaN as None)."""
        if self._rows is None:
            ids = self.table["account_id"].astype(str).to_numpy()
            order = np.argsort(ids, kind="stable")
            self._rows = {"ids": ids[order], "order": order}
        ids, order = self._rows["ids"], self._rows["order"]
        lo, hi = np.searchsorted(ids, account_id, "left"), np.searchsorted(ids, account_id, "right")
        sub = self.table.iloc[order[lo:hi]]
        return [{k: _plain(v) for k, v in rec.items()} for rec in sub.to_dict("records")]


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (pd.Timestamp, np.datetime64)):
        return str(v)
    return v


def _no_balances() -> Balances:
    return Balances(np.zeros(0, np.int32), np.zeros(0, object), np.zeros(0, object), np.zeros(0))


def _evaluator(session: Session, m: LoadedModel):
    """The what-if evaluator of a loaded model, or None for a model without one."""
    kind = EVALUATORS.get(m.name)
    return kind(session, m) if kind is not None else None


class SessionHolder:
    """The current session, swapped atomically. ``current`` is None until the first session is set."""

    def __init__(self, session: Session | None = None):
        self.current = session
        self._reload = threading.Lock()
        self.reloads = 0

    @property
    def ready(self) -> bool:
        return self.current is not None

    def swap(self, session: Session) -> Session | None:
        """Make ``session`` current (one reference assignment); returns the previous one."""
        old, self.current = self.current, session
        self.reloads += 1
        return old

    def reload(self, build) -> Session:
        """Build a new session with ``build()`` while the current one keeps serving, then swap.

        One reload at a time: a second call while one runs raises ``ReloadBusy``.
        """
        if not self._reload.acquire(blocking=False):
            raise ReloadBusy("a session reload is already running")
        try:
            new = build()
            self.swap(new)
            return new
        finally:
            self._reload.release()


class ReloadBusy(GpuriskError):
    """A reload was asked for while another was running."""


def spot_traded(trades) -> bool:
    """True if any trade is on a spot instrument (spot holdings are equity)."""
    return any(ref.kind == SPOT for ref, _ in trades)


def apply_trades(positions, trades) -> list:
    """Positions after ``trades``: quantities added per instrument (new ones appended in trade order);
    a position that nets to exactly zero is closed (dropped)."""
    by: dict[str, list] = {}
    for ref, q in positions:
        by[ref.key] = [ref, q]
    for ref, q in trades:
        hit = by.get(ref.key)
        if hit is None:
            by[ref.key] = [ref, q]
        else:
            hit[1] = hit[1] + q
    return [(ref, q) for ref, q in by.values() if q != 0.0]


__all__ = ["WhatIfError", "ModelConfig", "Trade", "Figures", "InstrumentRef", "Session", "LoadedModel",
           "SessionHolder", "ReloadBusy", "check_quantity", "apply_trades", "spot_traded", "EVALUATORS", "MAX_TRADES",
           "MAX_QUANTITY", "PROBE_ACCOUNT"]
