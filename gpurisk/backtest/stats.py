"""The regulators' backtest statistics, each a plain function with its formula.

Notation: N observations, x exceptions (days whose loss exceeded the margin held), ``level`` the
confidence of the margin model (0.99), p = 1 − level the exception probability it promises.
0·ln 0 is taken as 0 throughout (``scipy.special.xlogy``). A test returns ``(lr, p_value)``.
Sources: docs/backtesting.md (formulas, the MathWorks ``varbacktest`` test vector, the Basel table).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import xlogy
from scipy.stats import binom, chi2, norm

#: Basel traffic-light cut-offs on the binomial CDF: green ≤ 0.95 < yellow ≤ 0.9999 < red
GREEN_MAX = 0.95
YELLOW_MAX = 0.9999
#: the Basel window and the step of the rolling windows (days)
WINDOW_DAYS = 250
WINDOW_STEP = 25
#: the n of the n-day IM increases
INCREASE_DAYS = (1, 5, 10)
#: a realised ES or a floor below this share of the IM is rounding noise (a hedged portfolio): no ratio
NEGLIGIBLE = 1e-9


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return level


def _check_counts(n_obs: int, n_exceptions: int) -> tuple[int, int]:
    n, x = int(n_obs), int(n_exceptions)
    if n < 1 or x < 0 or x > n:
        raise ValueError(f"need 0 <= n_exceptions <= n_obs and n_obs >= 1, got {n_exceptions} of {n_obs}")
    return n, x


def kupiec_pof(n_obs: int, n_exceptions: int, level: float) -> tuple[float, float]:
    """Kupiec's proportion-of-failures test: (LR, p-value of χ²(1)).

    LR = −2[(N−x)·ln(1−p) + x·ln p] + 2[(N−x)·ln(1−x/N) + x·ln(x/N)], p = 1 − level.
    """
    n, x = _check_counts(n_obs, n_exceptions)
    p = 1.0 - _check_level(level)
    phat = x / n
    lr = -2.0 * (xlogy(n - x, 1.0 - p) + xlogy(x, p)) + 2.0 * (xlogy(n - x, 1.0 - phat) + xlogy(x, phat))
    lr = max(float(lr), 0.0)
    return lr, float(chi2.sf(lr, 1))


def kupiec_one_sided(n_obs: int, n_exceptions: int, level: float) -> float:
    """One-sided p-value of the POF test against *too many* exceptions (the signed-root LR).

    z = sign(x/N − p)·√LR, p-value = 1 − Φ(z): fewer exceptions than expected give z ≤ 0 and a
    p-value ≥ 0.5, so they never fail it; coverage of at least ``level`` is rejected when it is < 0.05.
    """
    n, x = _check_counts(n_obs, n_exceptions)
    lr, _ = kupiec_pof(n, x, level)
    z = math.copysign(math.sqrt(lr), x / n - (1.0 - level)) if lr > 0 else 0.0
    return float(norm.sf(z))


def transition_counts(exceptions) -> tuple[int, int, int, int]:
    """(n00, n01, n10, n11) of a 0/1 series: n_ij = days at j whose previous day was at i (n01 = 0→1)."""
    e = np.asarray(exceptions).astype(bool).astype(np.int64)
    if e.ndim != 1:
        raise ValueError("exceptions must be a 1-d 0/1 series")
    if len(e) < 2:
        return 0, 0, 0, 0
    pair = 2 * e[:-1] + e[1:]
    c = np.bincount(pair, minlength=4)
    return int(c[0]), int(c[1]), int(c[2]), int(c[3])


def christoffersen_independence(exceptions) -> tuple[float, float]:
    """Christoffersen's independence test on a 0/1 exception series: (LR, p-value of χ²(1)).

    With π01 = n01/(n00+n01), π11 = n11/(n10+n11), π = (n01+n11)/(n00+n01+n10+n11):
    LR = −2·ln[(1−π)^(n00+n10)·π^(n01+n11)] + 2·ln[(1−π01)^n00·π01^n01·(1−π11)^n10·π11^n11].
    A series with no exception, or only exceptions, gives LR = 0.
    """
    return independence_from_counts(*transition_counts(exceptions))


def independence_from_counts(n00: int, n01: int, n10: int, n11: int) -> tuple[float, float]:
    """Christoffersen's independence LR and p-value from the transition counts (n00, n01, n10, n11) of an exception
    series (or their sums over several series, for a pooled row)."""
    tot = n00 + n01 + n10 + n11
    if tot == 0:
        return 0.0, 1.0
    pi = (n01 + n11) / tot
    p01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    p11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    l0 = xlogy(n00 + n10, 1.0 - pi) + xlogy(n01 + n11, pi)
    l1 = xlogy(n00, 1.0 - p01) + xlogy(n01, p01) + xlogy(n10, 1.0 - p11) + xlogy(n11, p11)
    lr = max(float(-2.0 * (l0 - l1)), 0.0)
    return lr, float(chi2.sf(lr, 1))


def conditional_coverage(exceptions, level: float) -> tuple[float, float]:
    """Christoffersen's conditional coverage: LR_CC = LR_POF + LR_CCI, p-value of χ²(2)."""
    e = np.asarray(exceptions).astype(bool)
    lr_pof, _ = kupiec_pof(len(e), int(e.sum()), level)
    lr_cci, _ = christoffersen_independence(e)
    lr = lr_pof + lr_cci
    return float(lr), float(chi2.sf(lr, 2))


def traffic_light(n_obs: int, n_exceptions: int, level: float) -> tuple[str, float]:
    """The Basel traffic light for any window: (zone, F) with F = P(X ≤ x), X ~ Binomial(N, 1 − level);
    green when F ≤ 0.95, yellow when F ≤ 0.9999, red above (250 days at 99 %: green 0–4, yellow 5–9,
    red ≥ 10)."""
    n, x = _check_counts(n_obs, n_exceptions)
    f = float(binom.cdf(x, n, 1.0 - _check_level(level)))
    zone = "green" if f <= GREEN_MAX else "yellow" if f <= YELLOW_MAX else "red"
    return zone, f


def rolling_windows(exceptions, level: float, window: int = WINDOW_DAYS, step: int = WINDOW_STEP) -> pd.DataFrame:
    """The traffic light of every ``window``-day window of a 0/1 series, windows starting every ``step`` days
    (the last full window included): columns ``start`` (0-based first day), ``n_exceptions``, ``zone``,
    ``probability``. Empty when the series is shorter than one window."""
    e = np.asarray(exceptions).astype(np.int64)
    n = len(e)
    if n < window:
        return pd.DataFrame({"start": np.zeros(0, np.int64), "n_exceptions": np.zeros(0, np.int64),
                             "zone": np.zeros(0, object), "probability": np.zeros(0)})
    starts = np.arange(0, n - window + 1, step)
    if starts[-1] != n - window:
        starts = np.append(starts, n - window)
    cs = np.concatenate([[0], np.cumsum(e)])
    x = cs[starts + window] - cs[starts]
    f = binom.cdf(x, window, 1.0 - _check_level(level))
    zone = np.where(f <= GREEN_MAX, "green", np.where(f <= YELLOW_MAX, "yellow", "red")).astype(object)
    return pd.DataFrame({"start": starts, "n_exceptions": x, "zone": zone, "probability": f})


def expected_shortfall(losses, level: float) -> float:
    """Realised ES: the mean of the worst ⌈(1 − level)·n⌉ of ``losses`` [n] (positive = loss)."""
    x = np.sort(np.asarray(losses, dtype=np.float64))[::-1]
    if not len(x):
        return math.nan
    k = max(1, int(math.ceil((1.0 - _check_level(level)) * len(x) * (1 - 1e-12))))
    return float(x[:k].mean())


def procyclicality(im, floor=None, days=INCREASE_DAYS) -> dict:
    """Anti-procyclicality measures of one IM series [n] (consecutive days), and of IM over a floor series.

    peak_to_trough = max IM / min IM; increase_<n>d = max_t (IM_t / IM_{t−n}) − 1 (NaN when the series is
    shorter than n + 1); with ``floor`` [n] (e.g. the IM of a 10-year unfiltered lookback): im_to_floor_min
    and im_to_floor_mean = min and mean of IM_t / floor_t over the days where the floor is not negligible
    (> ``NEGLIGIBLE``·IM_t).
    """
    m = np.asarray(im, dtype=np.float64)
    out = {}
    pos = m[m > 0]
    out["peak_to_trough"] = float(pos.max() / pos.min()) if len(pos) else math.nan
    for n in days:
        if len(m) > n:
            a, b = m[n:], m[:-n]
            ok = b > 0
            out[f"increase_{n}d"] = float(np.max(a[ok] / b[ok]) - 1.0) if ok.any() else math.nan
        else:
            out[f"increase_{n}d"] = math.nan
    if floor is not None:
        f = np.asarray(floor, dtype=np.float64)
        ok = f > NEGLIGIBLE * np.abs(m)
        r = m[ok] / f[ok]
        out["im_to_floor_min"] = float(r.min()) if len(r) else math.nan
        out["im_to_floor_mean"] = float(r.mean()) if len(r) else math.nan
    return out


def portfolio_summary(im, pnl, level: float, floor=None, window: int = WINDOW_DAYS, step: int = WINDOW_STEP
                      ) -> dict:
    """Every statistic of one portfolio's backtest: ``im`` [n] the margin held on each day, ``pnl`` [n] the
    realised P&L over the margin period that follows (USD), ``floor`` [n] optional (``procyclicality``).

    n_obs, n_exceptions (−pnl > im), kupiec_lr/p, kupiec_p_one_sided, cci_lr/p, cc_lr/p, zone and
    zone_probability (the whole period), coverage = 1 − x/N, mean_im, realised_es (ES_level of −pnl),
    im_over_es = mean_im / realised_es (NaN when that ES is negligible: a hedged portfolio), max/mean
    exceedance in USD and as a share of the IM that day,
    the 250-day windows (count, green, yellow, red, green share, worst zone) and the procyclicality measures.
    """
    im = np.asarray(im, dtype=np.float64)
    pnl = np.asarray(pnl, dtype=np.float64)
    loss = -pnl
    exc = loss > im
    n, x = len(im), int(exc.sum())
    out = {"n_obs": n, "n_exceptions": x}
    if n == 0:
        return out
    out["kupiec_lr"], out["kupiec_p"] = kupiec_pof(n, x, level)
    out["kupiec_p_one_sided"] = kupiec_one_sided(n, x, level)
    out["cci_lr"], out["cci_p"] = christoffersen_independence(exc)
    out["cc_lr"], out["cc_p"] = conditional_coverage(exc, level)
    out["zone"], out["zone_probability"] = traffic_light(n, x, level)
    out["coverage"] = 1.0 - x / n
    out["mean_im"] = float(im.mean())
    out["realised_es"] = expected_shortfall(loss, level)
    # a hedged portfolio's realised ES is rounding noise: no ratio then
    out["im_over_es"] = out["mean_im"] / out["realised_es"] \
        if out["realised_es"] > NEGLIGIBLE * max(out["mean_im"], 0.0) else math.nan
    over = np.where(exc, loss - im, 0.0)
    share = np.where(exc & (im > 0), over / np.where(im > 0, im, 1.0), np.where(exc, np.inf, 0.0))
    out["max_exceedance"] = float(over.max())
    out["mean_exceedance"] = float(over[exc].mean()) if x else 0.0
    out["max_exceedance_share"] = float(share.max())
    out["mean_exceedance_share"] = float(share[exc].mean()) if x else 0.0
    w = rolling_windows(exc, level, window, step)
    out["windows"] = int(len(w))
    for z in ("green", "yellow", "red"):
        out[f"windows_{z}"] = int((w["zone"] == z).sum())
    out["windows_green_share"] = float((w["zone"] == "green").mean()) if len(w) else math.nan
    out["worst_window_zone"] = ("red" if out["windows_red"] else "yellow" if out["windows_yellow"] else "green") \
        if len(w) else "none"
    out.update(procyclicality(im, floor))
    return out


__all__ = ["kupiec_pof", "kupiec_one_sided", "transition_counts", "christoffersen_independence", "independence_from_counts",
           "conditional_coverage", "traffic_light", "rolling_windows", "expected_shortfall", "procyclicality",
           "portfolio_summary", "GREEN_MAX", "YELLOW_MAX", "WINDOW_DAYS", "WINDOW_STEP", "INCREASE_DAYS"]
