"""Reference pricing formulas, written once against an array namespace ``xp``
(NumPy, CuPy or JAX).

Per-contract conventions (see docs/methodologies.md):

- spot (linear): value ``cs·F`` USD; P&L ``cs·F·s``.
- linear future/perpetual: value 0 (variation-margined); P&L ``cs·F·s`` USD.
- inverse future/perpetual (``cs`` USD per contract): coin P&L ``cs/F · s/(1+s)``,
  USD P&L ``cs·s`` (the coin P&L converted at the scenario price ``F(1+s)``).
  A position of q coins (q = n·cs/F) thus has coin P&L ``q·s/(1+s)``.
- option, linear: value ``cs·B76(F,K,T,σ)`` USD.
- option, inverse (Deribit-style, cs = 1 coin): value ``cs·B76/F`` coin, ``cs·B76`` USD.

Black-76 is undiscounted (crypto option marks are quoted on the forward with no
discounting). F is the instrument's ``underlying_price`` (the mark, or the
option expiry's forward); scenario s moves it to ``F·(1+s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .book import CALL, FUTURE, INVERSE, OPTION, PERPETUAL, SPOT, Book

DAYS_PER_YEAR = 365.0

# vol-shock modes of a scenario (ScenarioSet.vol_mode)
VOL_RELATIVE, VOL_ABSOLUTE, VOL_TERM = 0, 1, 2
VOL_MODE_CODES = {"relative": VOL_RELATIVE, "absolute": VOL_ABSOLUTE, "term": VOL_TERM}
VOL_MODE_NAMES = {v: k for k, v in VOL_MODE_CODES.items()}

NUMERAIRE_USD, NUMERAIRE_SETTLEMENT = 0, 1
NUMERAIRE_CODES = {"usd": NUMERAIRE_USD, "settlement": NUMERAIRE_SETTLEMENT}


@dataclass(frozen=True)
class VolTerm:
    """Parameters of the term-scaled vol shock σ' = σ·(1 + v·(ref/DTE)^p), with floors.

    p = ``power_short`` when DTE < ``ref_days`` else ``power_long``; an up-shock is
    floored at ``min_vol_up``; every shocked vol is floored at ``vol_floor``.
    DTE is floored at ``min_dte_days`` so an expiring option's scale stays finite.
    """

    ref_days: float = 30.0
    power_short: float = 0.30
    power_long: float = 0.13
    min_vol_up: float = 0.0
    vol_floor: float = 0.01
    min_dte_days: float = 1.0


@dataclass(frozen=True)
class PricingInputs:
    """Flat per-instrument arrays the kernels read; all [I]."""

    kind: np.ndarray  # int8
    settlement: np.ndarray  # int8
    option_type: np.ndarray  # int8 (+1 call, -1 put, 0)
    underlying_idx: np.ndarray  # int32 column of the scenario set
    contract_size: np.ndarray  # float64
    forward: np.ndarray  # float64 USD
    strike: np.ndarray  # float64 (0 unless option)
    ttm: np.ndarray  # float64 years
    vol: np.ndarray  # float64 (0 unless option)

    def __len__(self) -> int:
        return len(self.kind)

    def take(self, idx) -> "PricingInputs":
        return PricingInputs(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    @staticmethod
    def concat(parts) -> "PricingInputs":
        return PricingInputs(
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in PricingInputs.__dataclass_fields__}
        )


def pricing_inputs(book: Book, underlying_idx: np.ndarray) -> PricingInputs:
    """The book's instruments as flat arrays; ``underlying_idx`` [I] maps to scenario columns."""
    ins, mkt = book.instruments, book.market
    is_opt = ins.kind == OPTION
    return PricingInputs(
        kind=ins.kind.astype(np.int8),
        settlement=ins.settlement.astype(np.int8),
        option_type=np.where(is_opt, ins.option_type, 0).astype(np.int8),
        underlying_idx=np.asarray(underlying_idx, dtype=np.int32),
        contract_size=ins.contract_size.astype(np.float64),
        forward=mkt.underlying_price.astype(np.float64),
        strike=np.where(is_opt, np.nan_to_num(ins.strike), 0.0),
        ttm=np.maximum(book.time_to_expiry(), 0.0),
        vol=np.where(is_opt, np.nan_to_num(mkt.implied_vol), 0.0),
    )


def _ndtr(xp):
    mod = getattr(xp, "__name__", "")
    if mod.startswith("cupy"):
        from cupyx.scipy.special import ndtr

        return ndtr
    if mod.startswith("jax"):
        from jax.scipy.special import ndtr

        return ndtr
    from scipy.special import ndtr

    return ndtr


def black76(xp, F, K, T, sigma, option_type):
    """Undiscounted Black-76 price in USD per unit of underlying.

    option_type: +1 call, -1 put. With T ≤ 0 or σ ≤ 0 it is the intrinsic value.
    Broadcasts over its arguments.
    """
    ndtr = _ndtr(xp)
    w = option_type
    sig_t = sigma * xp.sqrt(xp.maximum(T, 0.0))
    live = sig_t > 0.0
    safe_sig_t = xp.where(live, sig_t, 1.0)
    safe_F = xp.where(F > 0.0, F, 1.0)
    safe_K = xp.where(K > 0.0, K, 1.0)
    d1 = (xp.log(safe_F / safe_K) + 0.5 * sig_t * sig_t) / safe_sig_t
    d2 = d1 - sig_t
    price = w * (F * ndtr(w * d1) - K * ndtr(w * d2))
    intrinsic = xp.maximum(w * (F - K), 0.0)
    return xp.where(live, price, intrinsic)


def shocked_vol(xp, sigma, v, mode, dte_days, term: VolTerm):
    """Scenario vol for base vol ``sigma``, shock ``v`` and ``mode`` (VOL_* codes). Broadcasts."""
    dte = xp.maximum(dte_days, term.min_dte_days)
    p = xp.where(dte < term.ref_days, term.power_short, term.power_long)
    scale = (term.ref_days / dte) ** p
    term_v = sigma * (1.0 + v * scale)
    term_v = xp.where(v > 0.0, xp.maximum(term_v, term.min_vol_up), term_v)
    out = xp.where(mode == VOL_ABSOLUTE, sigma + v, xp.where(mode == VOL_TERM, term_v, sigma * (1.0 + v)))
    return xp.maximum(out, term.vol_floor)


def contract_values(xp, pi: PricingInputs, shock, vol_shock, vol_mode, horizon_years, term: VolTerm, numeraire):
    """Base and scenario value per contract in the numeraire.

    pi: PricingInputs as ``xp`` arrays [I]; shock, vol_shock: [I, S] already gathered
    per instrument (the underlying's move); vol_mode [S]. Returns (base [I], scen [I, S]).
    For futures and perpetuals the base value is 0 and the scenario value is the P&L.
    """
    kind = pi.kind[:, None]
    inverse = (pi.settlement == INVERSE)[:, None]
    cs = pi.contract_size[:, None]
    F = pi.forward[:, None]
    F1 = F * (1.0 + shock)
    coin = numeraire == NUMERAIRE_SETTLEMENT

    # delta-one
    lin_pnl = cs * F * shock
    if coin:
        inv_pnl = cs / F * shock / (1.0 + shock)
    else:
        inv_pnl = cs * shock
    d1_pnl = xp.where(inverse, inv_pnl, lin_pnl)
    spot_base = cs[:, 0] * F[:, 0]

    # options
    K = pi.strike[:, None]
    w = pi.option_type[:, None].astype(F.dtype)
    T0 = pi.ttm[:, None]
    T1 = xp.maximum(T0 - horizon_years, 0.0)
    sig0 = pi.vol[:, None]
    sig1 = shocked_vol(xp, sig0, vol_shock, vol_mode[None, :], T0 * DAYS_PER_YEAR, term)
    b0 = black76(xp, F, K, T0, sig0, w)
    b1 = black76(xp, F1, K, T1, sig1, w)
    if coin:
        opt0 = xp.where(inverse, cs * b0 / F, cs * b0)
        opt1 = xp.where(inverse, cs * b1 / F1, cs * b1)
    else:
        opt0, opt1 = cs * b0, cs * b1

    is_opt = kind == OPTION
    is_spot = kind == SPOT
    base = xp.where(is_opt[:, 0], opt0[:, 0], xp.where(is_spot[:, 0], spot_base, 0.0))
    scen = xp.where(is_opt, opt1, xp.where(is_spot, spot_base[:, None] + d1_pnl, d1_pnl))
    return base, scen


__all__ = [
    "CALL",
    "FUTURE",
    "PERPETUAL",
    "SPOT",
    "OPTION",
    "VolTerm",
    "PricingInputs",
    "pricing_inputs",
    "black76",
    "shocked_vol",
    "contract_values",
]
