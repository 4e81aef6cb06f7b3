"""Pre-trade what-if margin on a warm session: what would these trades do to an account's margin,
in the house model and on each venue?

    session = gpurisk.whatif.Session(book, {"house": ModelConfig("house"), "venue": ModelConfig("venue")})
    w = gpurisk.whatif(session, "ACC0000001", [("BTC-PERPETUAL", 100)])
    w.house.before.im, w.house.after.im, w.venues["deribit"].after.status, w.elapsed_us

The session (``session.Session``) holds the book, its market snapshot, the models' parameters,
plans, scenario P&L and results; a what-if re-evaluates only the account's portfolios from the
session's P&L rows (``house.HouseWhatIf``, ``venue.VenueWhatIf``), so the answer equals a full
margin recomputation of the modified book on the same backend (up to the order of
floating-point sums) at a fraction of its cost. ``margin_of`` margins an ad-hoc portfolio
(positions and balances given in full) the same way. All amounts are USD.

Euler contributions of the trades (``attribution=True``): per house model label and ES component,
each trade's Δq × its marginal over the post-trade tail set of the account (``gpurisk.tail``, the
same k, weights and tie rule as the ES); they sum with the rest of the account's positions to that
ES. Without it, ``attribution`` says it was not asked for.
"""

from __future__ import annotations

import math
import sys
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import GpuriskError
from .base import MAX_QUANTITY, MAX_TRADES, Figures, ModelConfig, Trade, WhatIfError, check_quantity
from .session import ReloadBusy, Session, SessionHolder, apply_trades, spot_traded

#: what ``attribution`` says when it was not asked for
ATTRIBUTION_UNAVAILABLE = {"available": False, "reason": "not asked for (attribution=true)"}
#: the keys of one before/after block (amounts USD)
BLOCK_KEYS = ("im_before", "im_after", "mm_before", "mm_after", "equity_before", "equity_after", "excess_before",
              "excess_after", "status_before", "status_after", "call_amount_before", "call_amount_after")


@dataclass(frozen=True)
class Change:
    """One margined row before and after: ``Figures`` each (USD); ``methodology`` for a venue row."""

    before: Figures
    after: Figures
    methodology: str = ""

    def as_dict(self) -> dict:
        b, a = self.before, self.after
        out = {"im_before": b.im, "im_after": a.im, "mm_before": b.mm, "mm_after": a.mm,
               "equity_before": b.equity, "equity_after": a.equity, "excess_before": b.excess,
               "excess_after": a.excess, "status_before": b.status, "status_after": a.status,
               "call_amount_before": b.call_amount, "call_amount_after": a.call_amount}
        out = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
        if self.methodology:
            out["methodology"] = self.methodology
        return out


@dataclass
class WhatIf:
    """The answer: per model label, the house row (``house``: {label: Change}) and the venue rows
    (``venues``: {label: {venue: Change}}); ``elapsed_us`` the time taken (µs)."""

    account_id: str
    house: dict = field(default_factory=dict)
    venues: dict = field(default_factory=dict)
    elapsed_us: float = 0.0
    attribution: dict = field(default_factory=lambda: dict(ATTRIBUTION_UNAVAILABLE))

    def as_dict(self) -> dict:
        """The service's JSON: ``house`` and ``venues`` of the first house and venue models, and
        ``models`` with every label."""
        models = {k: {"house": v.as_dict()} for k, v in self.house.items()}
        models.update({k: {"venues": {vn: c.as_dict() for vn, c in v.items()}} for k, v in self.venues.items()})
        return {
            "account_id": self.account_id,
            "house": next(iter(self.house.values())).as_dict() if self.house else None,
            "venues": ({vn: c.as_dict() for vn, c in next(iter(self.venues.values())).items()}
                       if self.venues else {}),
            "models": models,
            "attribution": self.attribution,
            "elapsed_us": round(self.elapsed_us, 1),
            "currency": "USD",
        }


def _as_trades(trades):
    """Trades given as (instrument_id, quantity) pairs, ``Trade`` objects or mappings, as a list."""
    out = []
    for t in trades if isinstance(trades, (list, tuple)) else [trades]:
        if isinstance(t, tuple) and len(t) == 2 and not isinstance(t, Trade):
            out.append(Trade(t[0], t[1]))
        else:
            out.append(t)
    return out


def whatif(session: Session, account_id: str, trades, models=None, attribution: bool = False) -> WhatIf:
    """The account's margin before and after ``trades`` ([(instrument_id, quantity)], ``Trade`` or
    mappings with ``instrument_id``, ``quantity`` and, for an unlisted instrument, ``instrument``).

    models: session labels to answer for (None: every label with a what-if). attribution: also the
    trades' Euler contributions to each house ES component after the trades. WhatIfError (a
    GpuriskError with ``field`` and ``status``) names the bad input.
    """
    t0 = time.perf_counter()
    if isinstance(trades, (list, tuple)) and not trades:
        raise WhatIfError("trades is empty: give at least one trade", "trades")
    a = session.account_index(account_id)
    labels = session.labels(models)
    resolved = session.resolve_trades(_as_trades(trades))
    base = session.positions_of(a)
    after = apply_trades(base, resolved)
    balances = session.balances_of(a)
    same_equity = not spot_traded(resolved)
    out = WhatIf(account_id)
    for label in labels:
        ev = session.models[label].evaluator
        try:
            if session.models[label].name == "house":
                before = ev.before(a)
                sink: dict = {}
                fig = ev.evaluate(account_id, after, balances, a=a, equity=before.equity if same_equity else None,
                                  attribute=(resolved, sink) if attribution else None)
                out.house[label] = Change(before, fig)
                if attribution:
                    if not out.attribution.get("available"):
                        out.attribution = {"available": True, "currency": "USD", "models": {}}
                    out.attribution["models"][label] = sink
            else:
                before = ev.before(a)
                res = ev.evaluate(account_id, after, balances, equity=ev.equity_of(before) if same_equity else None)
                rows = {}
                for v in sorted(set(before) | set(res)):
                    m0, f0 = before.get(v, (None, Figures.empty()))
                    m1, f1 = res.get(v, (None, Figures.empty()))
                    rows[v] = Change(f0, f1, m1 or m0 or "")
                out.venues[label] = rows
        except WhatIfError:
            raise
        except GpuriskError as exc:
            raise WhatIfError(f"model {label}: {exc}", "trades") from None
    out.elapsed_us = (time.perf_counter() - t0) * 1e6
    return out


def margin_of(session: Session, positions, balances=(), models=None, account_id: str = "adhoc") -> dict:
    """Margins of an ad-hoc portfolio given in full: ``positions`` (as trades) and ``balances``
    [{venue, asset, amount}]; {label: Figures (house) or {venue: (methodology, Figures)}} in USD."""
    labels = session.labels(models)
    pos = apply_trades([], session.resolve_trades(_as_trades(positions), where="positions"))
    bal = _balances(session, balances)
    out = {}
    for label in labels:
        ev = session.models[label].evaluator
        try:
            if session.models[label].name == "house":
                out[label] = ev.evaluate(account_id, pos, bal, a=None, where="positions")
            else:
                out[label] = ev.evaluate(account_id, pos, bal, where="positions")
        except WhatIfError:
            raise
        except GpuriskError as exc:
            raise WhatIfError(f"model {label}: {exc}", "positions") from None
    return out


def _balances(session: Session, balances):
    """(venue [b], asset [b], amount [b]) from [{venue, asset, amount}], checked (WhatIfError names the field)."""
    import numpy as np

    if not isinstance(balances, (list, tuple)):
        raise WhatIfError("balances must be a list of {venue, asset, amount}", "balances")
    known = set(map(str, session.book.market.underlyings)) | {"USD", "USDT", "USDC"}
    v, a, x = [], [], []
    for i, b in enumerate(balances):
        w = f"balances[{i}]"
        if not isinstance(b, Mapping):
            raise WhatIfError(f"{w} must be an object with venue, asset and amount", w)
        for k in ("venue", "asset"):
            if not isinstance(b.get(k), str) or not b.get(k):
                raise WhatIfError(f"{w}.{k} must be a non-empty string", f"{w}.{k}")
        if b["asset"] not in known:
            raise WhatIfError(f"{w}.asset: {b['asset']!r} has no index price in the session's market snapshot",
                              f"{w}.asset")
        amt = b.get("amount")
        if isinstance(amt, bool) or not isinstance(amt, (int, float)) or not math.isfinite(float(amt)):
            raise WhatIfError(f"{w}.amount must be a finite number", f"{w}.amount")
        if abs(float(amt)) > MAX_QUANTITY * 1e3:
            raise WhatIfError(f"{w}.amount is implausibly large", f"{w}.amount")
        v.append(b["venue"])
        a.append(b["asset"])
        x.append(float(amt))
    return np.array(v, dtype=object), np.array(a, dtype=object), np.array(x, dtype=np.float64)


class _CallableModule(types.ModuleType):
    def __call__(self, session, account_id, trades, models=None, attribution: bool = False):
        return whatif(session, account_id, trades, models, attribution)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Session", "SessionHolder", "ModelConfig", "Trade", "Figures", "Change", "WhatIf", "WhatIfError",
           "ReloadBusy", "whatif", "margin_of", "check_quantity", "ATTRIBUTION_UNAVAILABLE", "BLOCK_KEYS",
           "MAX_TRADES", "MAX_QUANTITY"]
