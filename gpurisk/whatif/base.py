"""The what-if vocabulary: trades, figures, model configs, errors and input limits."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GpuriskError

#: the account id of the one-instrument books a model is planned on to revalue a new instrument
PROBE_ACCOUNT = "__whatif__"
#: the instrument definition fields a trade on an unlisted instrument carries (docs/data-format.md)
INSTRUMENT_FIELDS = ("instrument_id", "venue", "underlying", "kind", "settlement", "contract_size", "expiry",
                     "strike", "option_type")
MARKET_FIELDS = ("underlying_price", "implied_vol")
#: most trades in one request, and the largest |quantity| of one trade (contracts)
MAX_TRADES = 200
MAX_QUANTITY = 1e9


class WhatIfError(GpuriskError):
    """Bad what-if input. ``field`` names the input at fault (``trades[0].quantity``); ``status`` is
    the HTTP status the service answers with (422 bad value, 404 unknown account)."""

    def __init__(self, message: str, field: str = "", status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class ModelConfig:
    """One model of a session: its registry ``name``, Params (None: defaults) and scenarios (None: its own)."""

    name: str
    params: Any = None
    scenarios: Any = None


@dataclass(frozen=True)
class Trade:
    """A hypothetical trade: ``quantity`` contracts (signed) of ``instrument_id``.

    ``instrument``: the definition of an instrument the book does not list (the instruments
    and market columns of docs/data-format.md: venue, underlying, kind, settlement,
    contract_size, expiry, strike, option_type, underlying_price, implied_vol).
    """

    instrument_id: str
    quantity: float
    instrument: Mapping | None = None


@dataclass(frozen=True)
class Figures:
    """One margined row in USD: IM, MM, equity, excess = equity − IM, status and call amount."""

    im: float
    mm: float
    equity: float
    excess: float
    status: str
    call_amount: float

    @staticmethod
    def empty() -> "Figures":
        """Nothing held: no margin, no equity."""
        return Figures(0.0, 0.0, 0.0, 0.0, "ok", 0.0)


def check_quantity(q, where: str) -> float:
    """A trade quantity as a finite, non-zero float of at most MAX_QUANTITY contracts; WhatIfError otherwise."""
    if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)):
        raise WhatIfError(f"{where} must be a number of contracts", where)
    q = float(q)
    if not math.isfinite(q):
        raise WhatIfError(f"{where} must be finite", where)
    if q == 0.0:
        raise WhatIfError(f"{where} is zero: a trade must buy (> 0) or sell (< 0)", where)
    if abs(q) > MAX_QUANTITY:
        raise WhatIfError(f"{where}: |{q:g}| contracts is above the limit of {MAX_QUANTITY:g}", where)
    return q


__all__ = ["PROBE_ACCOUNT", "INSTRUMENT_FIELDS", "MARKET_FIELDS", "MAX_TRADES", "MAX_QUANTITY", "WhatIfError",
           "ModelConfig", "Trade", "Figures", "check_quantity"]
