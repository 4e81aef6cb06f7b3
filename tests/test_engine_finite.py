"""Non-finite P&L never reaches the tail kernels: the engine stops with a message naming where it arose."""

import numpy as np
import pytest

from gpurisk.backends import Engine, NonFinitePnL, check_finite_pnl
from gpurisk.book import FUTURE, LINEAR, OPTION, CALL
from gpurisk.pricing import PricingInputs
from gpurisk.scenarios import make_scenario_set


def _inputs(forward):
    return PricingInputs(
        kind=np.array([FUTURE, OPTION], np.int8),
        settlement=np.array([LINEAR, LINEAR], np.int8),
        option_type=np.array([0, CALL], np.int8),
        underlying_idx=np.array([0, 0], np.int32),
        contract_size=np.array([1.0, 1.0]),
        forward=np.asarray(forward, dtype=np.float64),
        strike=np.array([0.0, 100.0]),
        ttm=np.array([0.0, 0.1]),
        vol=np.array([0.0, 0.5]),
    )


def test_finite_inputs_pass_through_unchanged():
    sset = make_scenario_set(["BTC"], [[-0.1], [0.0], [0.2]])
    P = Engine("reference").revalue(_inputs([100.0, 100.0]), sset)
    np.testing.assert_allclose(P[0], [-10.0, 0.0, 20.0])  # linear future: cs·F·s


def test_nan_forward_is_an_error_naming_row_and_scenario():
    sset = make_scenario_set(["BTC"], [[-0.1], [0.2]], scenario_id=["down", "up"])
    with pytest.raises(NonFinitePnL, match=r"instrument row 1 in scenario 'down'.*2 entries"):
        Engine("reference").revalue(_inputs([100.0, np.nan]), sset)


def test_check_finite_pnl_flags_infinity():
    P = np.zeros((3, 4))
    P[2, 3] = np.inf
    with pytest.raises(NonFinitePnL, match="instrument row 2"):
        check_finite_pnl(P)
    check_finite_pnl(np.zeros((3, 4)))  # no error


def test_cpu_tail_stats_all_nan_portfolio_is_nan_not_garbage():
    pytest.importorskip("numba")
    from gpurisk.backends import MeasureSpec, get
    from gpurisk.book import Portfolios

    cpu = get("cpu")
    P = np.full((2, 50), np.nan)
    P[1] = np.linspace(-5.0, 5.0, 50)
    pf = Portfolios(np.array([0, 1, 2], np.int64), np.array([0, 1], np.int32), np.array([1.0, 1.0]),
                    np.array([0, 1], np.int32))
    ts = cpu.tail_stats(pf, P, MeasureSpec(levels=(0.9,)))
    assert np.isnan(ts.worst[0]) and np.isnan(ts.es[0, 0]) and ts.worst_scenario[0] == -1
    assert ts.worst[1] == 5.0 and ts.worst_scenario[1] == 0  # the finite portfolio is unaffected


class _GpuRejectingInput:
    """A GPU backend that refuses its input (NaN losses, mismatched lengths): bad input, not a device failure."""

    name = "gpu"

    def tail_stats(self, portfolios, P, spec):
        raise NonFinitePnL("tail step found NaN losses")

    def revalue(self, pi, scenarios, numeraire="usd"):
        raise ValueError("measure spec has 3 weights for 4 scenarios")


def test_bad_input_on_the_gpu_is_raised_not_retried_on_the_cpu():
    eng = Engine("reference")
    eng.backend = _GpuRejectingInput()
    with pytest.raises(NonFinitePnL):
        eng.tail_stats(None, np.zeros((1, 1)), None)
    with pytest.raises(ValueError, match="3 weights"):
        eng.revalue(None, None)
    assert eng.fallbacks == 0 and eng.name == "gpu"
