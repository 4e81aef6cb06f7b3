"""Backend selection, the one-line unavailability error and the GPU → CPU fallback of ``Engine``."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gpurisk.backends import BackendUnavailable, Engine, MeasureSpec, get, select
from gpurisk.backends import reference as ref
from gpurisk.book import Portfolios
from gpurisk.errors import GpuriskError
from gpurisk.pricing import PricingInputs
from gpurisk.scenarios import make_scenario_set


def _gpu_usable() -> bool:
    from gpurisk.backends import gpu

    return gpu.available()[0]


def _small_problem():
    rng = np.random.default_rng(0)
    pi = PricingInputs(
        kind=np.array([0, 1, 2, 3], np.int8),
        settlement=np.array([0, 1, 0, 1], np.int8),
        option_type=np.array([0, 0, 0, 1], np.int8),
        underlying_idx=np.zeros(4, np.int32),
        contract_size=np.array([1.0, 10.0, 0.1, 1.0]),
        forward=np.full(4, 30_000.0),
        strike=np.array([0.0, 0.0, 0.0, 31_000.0]),
        ttm=np.array([0.0, 0.1, 0.0, 0.05]),
        vol=np.array([0.0, 0.0, 0.0, 0.7]),
    )
    sc = make_scenario_set(["BTC"], rng.uniform(-0.3, 0.3, (64, 1)), rng.uniform(-0.3, 0.3, (64, 1)), horizon_days=1.0)
    pf = Portfolios(np.array([0, 2, 4], np.int64), np.array([0, 3, 1, 2], np.int32), np.array([1.0, -2.0, 5.0, 3.0]),
                    np.arange(2, dtype=np.int32))
    return pi, sc, pf, MeasureSpec((0.99, 0.9))


def test_auto_prefers_gpu_then_cpu():
    expected = "gpu" if _gpu_usable() else "cpu"
    assert select("auto").name == expected
    assert Engine("auto").name == expected
    assert select("reference").name == "reference"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        get("tpu")


@pytest.mark.skipif(_gpu_usable(), reason="a usable GPU is present")
def test_explicit_gpu_without_device_is_one_line_error():
    with pytest.raises(BackendUnavailable) as info:
        Engine("gpu")
    msg = str(info.value)
    assert isinstance(info.value, GpuriskError)  # the CLI prints it as one line and exits non-zero
    assert "\n" not in msg and "gpu" in msg


class OutOfMemoryGpu:
    """A GPU backend whose every call fails as a device out of memory would."""

    name = "gpu"

    def __init__(self):
        self.calls = 0

    def revalue(self, pi, scenarios, numeraire="usd"):
        self.calls += 1
        raise MemoryError("out of memory allocating 2147483648 bytes on the device")

    def tail_stats(self, portfolios, P, spec):
        self.calls += 1
        raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED")


@pytest.mark.slow
def test_gpu_failure_falls_back_to_cpu_and_is_counted(caplog):
    pi, sc, pf, spec = _small_problem()
    eng = Engine("cpu")
    failing = OutOfMemoryGpu()
    eng.backend = failing
    with caplog.at_level(logging.WARNING, logger="gpurisk.backends"):
        P = eng.revalue(pi, sc, "usd")
    assert failing.calls == 1 and eng.fallbacks == 1 and eng.used == ["cpu"]
    assert eng.name == "gpu"  # the fallback is for that call only: the next call tries the GPU again
    assert any("this call runs on the CPU" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(P, ref.revalue(pi, sc, "usd"), rtol=1e-9, atol=1e-9)
    # a later tail_stats call tries the GPU again, fails, and also falls back
    stats = eng.tail_stats(pf, P, spec)
    assert failing.calls == 2
    want = ref.tail_stats(pf, P, spec)
    assert eng.fallbacks == 2 and eng.used == ["cpu", "cpu"]
    np.testing.assert_allclose(stats.es, want.es, rtol=1e-9)
    np.testing.assert_array_equal(stats.worst_scenario, want.worst_scenario)


@pytest.mark.skipif(_gpu_usable(), reason="a usable GPU is present")
def test_real_gpu_module_failing_without_cupy_falls_back():
    """The real GPU backend module, run where CuPy or a device is missing, fails; the engine recovers."""
    from gpurisk.backends import gpu

    pi, sc, pf, spec = _small_problem()
    eng = Engine("cpu")
    eng.backend = gpu
    P = eng.revalue(pi, sc, "settlement")
    assert eng.name == "gpu"
    assert eng.fallbacks == 1 and eng.used == ["cpu"]
    np.testing.assert_allclose(P, ref.revalue(pi, sc, "settlement"), rtol=1e-9, atol=1e-12)


def test_cpu_failures_are_not_swallowed():
    _, _, pf, spec = _small_problem()
    eng = Engine("cpu")
    with pytest.raises(ValueError, match="out of range"):
        eng.tail_stats(pf, np.zeros((2, 8)), spec)  # P has fewer rows than the portfolios reference
    assert eng.fallbacks == 0


def test_margin_plan_reports_fallbacks():
    from gpurisk.margin.plan import Leg, Plan, execute

    pi, sc, pf, spec = _small_problem()
    eng = Engine("cpu")
    eng.backend = OutOfMemoryGpu()
    stats, metrics = execute(Plan("test", {"im": Leg("im", pi, sc, "usd", pf, spec)}), eng)
    # each failed call falls back on its own: revalue and tail_stats both ran on the CPU, both counted
    assert metrics["gpu_fallbacks"] == 2 and metrics["backends_used"] == ["cpu"] and eng.used == ["cpu", "cpu"]
    want = ref.tail_stats(pf, ref.revalue(pi, sc, "usd"), spec)
    np.testing.assert_allclose(stats["im"].var, want.var, rtol=1e-9)
