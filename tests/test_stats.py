"""The backtest statistics against the published MathWorks ``varbacktest`` example, the Basel table and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from gpurisk.backtest import stats


def series_with_transitions(n00: int, n01: int, n10: int, n11: int) -> np.ndarray:
    """A 0/1 series starting and ending at 0 with exactly these transition counts (runs of 1s of length 1 or 2)."""
    runs = n01  # every run of 1s starts with a 0→1 and (ending at 0) ends with a 1→0
    assert n10 == runs and 0 <= n11 <= runs
    lengths = [2] * n11 + [1] * (runs - n11)
    zeros = n00 + runs + 1  # zeros needed: n00 0→0 transitions, one 0 before each run, one at the start
    gaps = np.full(runs + 1, 1)
    gaps[0] += zeros - (runs + 1) - 0
    out = []
    extra = zeros - gaps.sum()
    gaps[-1] += extra
    for g, run in zip(gaps[:-1], lengths):
        out += [0] * int(g) + [1] * run
    out += [0] * int(gaps[-1])
    e = np.array(out)
    assert stats.transition_counts(e) == (n00, n01, n10, n11)
    return e


# --------------------------------------------------------------------------- the MathWorks test vector


def test_kupiec_pof_matches_mathworks():
    lr, p = stats.kupiec_pof(1043, 57, 0.95)
    assert lr == pytest.approx(0.46147, abs=5e-6)
    assert p == pytest.approx(0.49694, abs=5e-6)


def test_christoffersen_and_conditional_coverage_match_mathworks():
    e = series_with_transitions(932, 53, 53, 4)
    assert len(e) == 1043 and e.sum() == 57
    lr, p = stats.christoffersen_independence(e)
    assert lr == pytest.approx(0.25866, abs=5e-6)
    assert p == pytest.approx(0.61104, abs=5e-6)
    lr, p = stats.conditional_coverage(e, 0.95)
    assert lr == pytest.approx(0.72013, abs=5e-6)
    assert p == pytest.approx(0.69763, abs=5e-6)


def test_traffic_light_matches_mathworks():
    zone, prob = stats.traffic_light(1043, 57, 0.95)
    assert zone == "green"
    assert prob == pytest.approx(0.77913, abs=5e-6)


# --------------------------------------------------------------------------- the Basel table, 250 days at 99 %

BASEL_CDF = {0: 0.08106, 1: 0.28575, 2: 0.54317, 3: 0.75812, 4: 0.89219, 5: 0.95882, 6: 0.98630, 7: 0.99597,
             8: 0.99894, 9: 0.99975, 10: 0.99995}


@pytest.mark.parametrize("x", range(13))
def test_traffic_light_zones_at_250_days(x):
    zone, prob = stats.traffic_light(250, x, 0.99)
    assert zone == ("green" if x <= 4 else "yellow" if x <= 9 else "red")
    if x in BASEL_CDF:
        assert prob == pytest.approx(BASEL_CDF[x], abs=5e-6)
    assert prob == pytest.approx(binom.cdf(x, 250, 0.01), rel=1e-12)


@pytest.mark.parametrize("x,lr", [(0, "5.0252"), (1, "1.1765"), (2, "0.1084"), (3, "0.0949"), (4, "0.7691"),
                                  (5, "1.9568"), (9, "10.229"), (10, "12.956")])
def test_kupiec_at_250_days(x, lr):
    unit = 10.0 ** -len(lr.split(".")[1])  # the table's last printed digit
    assert abs(stats.kupiec_pof(250, x, 0.99)[0] - float(lr)) <= unit


# --------------------------------------------------------------------------- edge cases


def test_zero_failures():
    lr, p = stats.kupiec_pof(250, 0, 0.99)
    assert lr == pytest.approx(-2 * 250 * math.log(0.99))
    assert stats.kupiec_one_sided(250, 0, 0.99) > 0.5  # too few exceptions never fail the one-sided test
    assert stats.christoffersen_independence(np.zeros(250)) == (0.0, 1.0)
    assert stats.traffic_light(250, 0, 0.99)[0] == "green"


def test_all_failures():
    n = 100
    lr, p = stats.kupiec_pof(n, n, 0.99)
    assert lr == pytest.approx(-2 * n * math.log(0.01)) and p < 1e-12
    assert stats.kupiec_one_sided(n, n, 0.99) < 1e-12
    assert stats.transition_counts(np.ones(n)) == (0, 0, 0, n - 1)
    lr, p = stats.christoffersen_independence(np.ones(n))
    assert lr == 0.0 and p == 1.0
    assert stats.traffic_light(n, n, 0.99)[0] == "red"
    lr_cc, _ = stats.conditional_coverage(np.ones(n), 0.99)
    assert lr_cc == pytest.approx(stats.kupiec_pof(n, n, 0.99)[0])


def test_failure_on_the_last_day():
    e = np.zeros(250)
    e[-1] = 1
    assert stats.transition_counts(e) == (248, 1, 0, 0)
    lr, p = stats.christoffersen_independence(e)
    # π01 = 1/249, π11 undefined (no 1→), π = 1/249: the restricted and the free likelihoods are equal
    assert lr == pytest.approx(0.0, abs=1e-9) and p == pytest.approx(1.0)
    s = stats.portfolio_summary(np.ones(250), np.where(e > 0, -2.0, 0.0), 0.99)
    assert s["n_exceptions"] == 1 and s["max_exceedance"] == pytest.approx(1.0)
    assert s["max_exceedance_share"] == pytest.approx(1.0)


def test_one_sided_kupiec_is_the_signed_root():
    for x in (0, 1, 2, 3, 4, 8, 15):
        lr, _ = stats.kupiec_pof(500, x, 0.99)
        z = math.copysign(math.sqrt(lr), x / 500 - 0.01)
        assert stats.kupiec_one_sided(500, x, 0.99) == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert stats.kupiec_one_sided(500, 5, 0.99) == pytest.approx(0.5)  # exactly the expected count


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError):
        stats.kupiec_pof(10, 11, 0.99)
    with pytest.raises(ValueError):
        stats.traffic_light(10, 1, 1.0)
    with pytest.raises(ValueError):
        stats.transition_counts(np.zeros((2, 2)))


# --------------------------------------------------------------------------- windows, ES, procyclicality


def test_rolling_windows_step_and_last_window():
    e = np.zeros(300, int)
    e[[10, 20, 30, 40, 50, 290]] = 1
    w = stats.rolling_windows(e, 0.99, window=250, step=25)
    assert list(w["start"]) == [0, 25, 50]
    assert list(w["n_exceptions"]) == [5, 3, 2]  # days 0-249, 25-274, 50-299
    assert list(w["zone"]) == ["yellow", "green", "green"]
    assert stats.rolling_windows(np.zeros(100), 0.99).empty


def test_expected_shortfall_is_the_mean_of_the_worst_share():
    x = np.arange(1, 201, dtype=float)  # 200 losses: the worst 1 % is 2 of them
    assert stats.expected_shortfall(x, 0.99) == pytest.approx((200 + 199) / 2)
    assert stats.expected_shortfall(np.arange(100.0), 0.99) == 99.0


def test_procyclicality_measures_by_hand():
    im = np.array([2.0, 4.0, 2.0, 8.0, 8.0, 8.0, 1.0])
    m = stats.procyclicality(im, floor=np.array([2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 0.0]), days=(1, 5))
    assert m["peak_to_trough"] == pytest.approx(8.0)
    assert m["increase_1d"] == pytest.approx(3.0)  # 2 -> 8
    assert m["increase_5d"] == pytest.approx(3.0)  # max(IM_5/IM_0, IM_6/IM_1) - 1 = 8/2 - 1
    assert m["im_to_floor_min"] == pytest.approx(1.0) and m["im_to_floor_mean"] == pytest.approx(
        np.mean([1, 2, 1, 2, 2, 2]))
    short = stats.procyclicality(np.array([1.0, 2.0]), days=(1, 5))
    assert short["increase_1d"] == 1.0 and math.isnan(short["increase_5d"])


def test_portfolio_summary_counts_and_coverage():
    rng = np.random.default_rng(3)
    pnl = rng.normal(size=1000)
    im = np.full(1000, 2.326)  # the 99 % quantile of the standard normal
    s = stats.portfolio_summary(im, pnl, 0.99)
    x = int((-pnl > im).sum())
    assert s["n_exceptions"] == x and s["coverage"] == pytest.approx(1 - x / 1000)
    assert s["kupiec_lr"] == pytest.approx(stats.kupiec_pof(1000, x, 0.99)[0])
    assert s["windows"] == len(stats.rolling_windows(-pnl > im, 0.99))
    assert s["realised_es"] == pytest.approx(stats.expected_shortfall(-pnl, 0.99))
