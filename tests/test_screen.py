"""The exact int16 screen (backends.screen): its bound holds and is nearly attained, and the tail kernels that
use it (CPU, and the GPU's kernels under the emulator) stay exact where the screen cannot separate scenarios:
near-ties finer than the quantisation step, exact ties at the cut, all-equal rows, values at rounding midpoints.

The screened losses are re-derived here with NumPy float32 arithmetic in the kernels' order (c_j·Q_j summed
position by position, then the loss transform), from the CPU backend's own quantisation.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpurisk.backends import MeasureSpec, screen
from gpurisk.backends import reference as ref
from gpurisk.book import Portfolios
from gpurisk.tail import counted_pnl

cpu = pytest.importorskip("gpurisk.backends.cpu")


def _csr(pf):
    return (np.asarray(pf.indptr, np.int64), np.asarray(pf.instrument_idx, np.int64),
            np.asarray(pf.quantity, np.float64))


def screened(P, pf, spec):
    """(y [n, S] float32 screened losses, x [n, S] reference losses, b [n], ok [n])."""
    S = P.shape[1]
    Qt, scale, M, _ = cpu.quantize(np.ascontiguousarray(P, dtype=np.float64), tile=S)
    Q = Qt[0]
    indptr, idx, qty = _csr(pf)
    b, ok = screen.screen_bound(np, indptr, idx, qty, M, screen.row_error(M), spec)
    c = screen.coefficients(qty, idx, scale)
    f32 = (np.ones(S) if spec.pnl_factor is None else np.asarray(spec.pnl_factor)).astype(np.float32)
    pf32 = np.float32(spec.profit_factor)
    y = np.zeros((len(pf), S), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # unscreenable portfolios overflow float32 (flagged by ok)
        _screen_rows(y, Q, c, f32, pf32, indptr, idx)
    x = -counted_pnl(ref.portfolio_pnl(pf, P), spec)
    return y, x, b, ok


def _screen_rows(y, Q, c, f32, pf32, indptr, idx):
    for p in range(len(y)):
        acc = np.zeros(y.shape[1], np.float32)
        for j in range(indptr[p], indptr[p + 1]):
            term = c[j] * Q[idx[j]].astype(np.float32)
            acc = term if j == indptr[p] else acc + term
        v = acc * f32
        y[p] = -v * np.where(v > 0, pf32, np.float32(1.0))


def _book(rng, n_port, n_ins, max_pos=8, qscale=10.0):
    counts = rng.integers(1, max_pos + 1, n_port)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(indptr[-1])
    return Portfolios(indptr, rng.integers(0, n_ins, nnz).astype(np.int32), rng.normal(0.0, qscale, nnz),
                      np.arange(n_port, dtype=np.int32))


def _check_bound(P, pf, spec):
    y, x, b, ok = screened(P, pf, spec)
    err = np.abs(y.astype(np.float64) - x).max(axis=1)
    assert np.all(ok), "every portfolio of these books is screenable"
    assert np.all(err <= b), (err / b).max()
    return float((err / b).max())


def test_bound_holds_and_is_nearly_attained_on_a_fat_tailed_book():
    rng = np.random.default_rng(0)
    P = rng.standard_t(3, (30, 2000)) * rng.lognormal(0.0, 2.0, (30, 1))
    pf = _book(rng, 60, 30)
    ratios = [_check_bound(P, pf, spec) for spec in (
        MeasureSpec((0.99,)),
        MeasureSpec((0.99,), pnl_factor=rng.choice([1.0, 0.33, 2.5], 2000), profit_factor=0.5),
        MeasureSpec((0.9,), profit_factor=0.0),
    )]
    assert max(ratios) > 0.5  # the bound is within a factor of two of the worst error seen


def test_bound_on_adversarial_rows():
    rng = np.random.default_rng(1)
    S = 700
    base = rng.normal(0.0, 1.0, S)
    sigma = 4.0 / 32767
    midpoints = (rng.integers(-32000, 32000, S) + 0.5 - 1e-9) * sigma  # every value rounds by almost σ/2
    midpoints[0] = 4.0
    rows = [
        base, base * (1 + 1e-9),              # nearly equal rows: ±1e7 positions cancel
        midpoints,                            # worst-case quantisation
        base * 1e25, base * 1e-30,            # large and small magnitudes (2¹⁰⁰ ≈ 1.3e30 is the limit)
        np.where(np.arange(S) % 7 == 0, 1e12, 1e-3) * np.sign(base),  # huge dynamic range in one row
        base * 1e-305,                        # below TINY_ROW: not quantised, error = its magnitude
        np.round(base * 8) / 8,               # exactly representable
    ]
    P = np.array(rows)
    pf = Portfolios(np.array([0, 2, 3, 4, 5, 6, 8, 10], np.int64), np.array([0, 1, 2, 3, 4, 5, 6, 2, 7, 0], np.int32),
                    np.array([1e7, -1e7, 1.0, 3.0, -2.0, 1.0, 1e300, 1.0, 5.0, -0.25]), np.arange(7, dtype=np.int32))
    for spec in (MeasureSpec((0.99,)), MeasureSpec((0.5,), pnl_factor=np.linspace(0.1, 3.0, S), profit_factor=0.25)):
        _check_bound(P, pf, spec)


def test_unscreenable_portfolios_are_flagged():
    P = np.array([[1.0, -2.0, 3.0], [1e300, -1e300, 0.0], [np.nan, 1.0, 0.0], [0.5, 0.25, -1.0]])
    pf = Portfolios(np.array([0, 1, 2, 3, 4], np.int64), np.array([0, 1, 2, 3], np.int32), np.ones(4),
                    np.arange(4, dtype=np.int32))
    _, _, b, ok = screened(P, pf, MeasureSpec((0.5,)))
    assert ok.tolist() == [True, False, False, True]  # beyond float32 range; a NaN row
    _, _, _, ok = screened(P, pf, MeasureSpec((0.5,), pnl_factor=np.array([1.0, 1e-120, 1.0])))
    assert not ok.any()  # a factor float32 cannot hold with a relative rounding: no screen at all


def _exact_cases():
    rng = np.random.default_rng(7)
    S = 1201
    step = 1.0 / 32767
    near = 1.0 + step * 1e-3 * rng.random((4, S))  # near-ties: differences far below the quantisation step
    near[:, ::97] = 1.0 + step * 1e-3 * 2  # ... a few scenarios tie exactly at the top
    ints = rng.integers(-3, 4, (4, S)).astype(np.float64)  # exact ties straddling every cut
    flat = np.tile(np.array([[2.0], [-1.0], [0.5], [0.0]]), (1, S))  # all-equal rows
    mids = (rng.integers(-32000, 32000, (4, S)) + 0.5) * (3.0 / 32767)  # values at rounding midpoints
    mids[:, 0] = 3.0
    P = np.vstack([near, ints, flat, mids])
    pf = Portfolios(np.array([0, 1, 3, 4, 6, 7, 9, 10, 11, 13, 15], np.int64),
                    np.array([0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 1, 5], np.int32),
                    np.array([-1.0, 1.0, -1.0, 1.0, 2.0, -1.0, 1.0, 1.0, 3.0, -2.0, 1.0, -1.0, 0.5, 1.0, 1.0]),
                    np.arange(10, dtype=np.int32))
    specs = (MeasureSpec((0.99, 0.9, 0.5)), MeasureSpec((0.95,), weight=0.98 ** np.arange(S)[::-1]),
             MeasureSpec((0.99,), profit_factor=0.0, pnl_factor=np.where(np.arange(S) % 2 == 0, 1.0, 0.5)))
    return P, pf, specs


def _assert_equal_stats(got, want):
    for name in ("worst", "var", "es"):
        w = getattr(want, name)
        np.testing.assert_allclose(getattr(got, name), w, rtol=1e-12, atol=1e-15 * max(1.0, float(np.abs(w).max())))
    np.testing.assert_array_equal(got.worst_scenario, want.worst_scenario)


def test_cpu_screen_is_exact_where_the_screen_cannot_separate(monkeypatch):
    P, pf, specs = _exact_cases()
    monkeypatch.setattr(cpu, "SCREEN_MIN_POSITIONS_PER_ROW", 0.0)
    for tile_bytes in (cpu.SCREEN_TILE_BYTES, 2 * P.shape[0] * 100):
        monkeypatch.setattr(cpu, "SCREEN_TILE_BYTES", tile_bytes)
        for spec in specs:
            _assert_equal_stats(cpu.tail_stats(pf, P, spec), ref.tail_stats(pf, P, spec))


def test_gpu_kernels_emulated_are_exact_where_the_screen_cannot_separate(tmp_path_factory):
    from gpurisk.backends import cuda_emu, gpu

    ok, why = cuda_emu.available()
    if not ok:
        pytest.skip(why)
    P, pf, specs = _exact_cases()
    dev = cuda_emu.device(tmp_path_factory.mktemp("emu"), seed=5, smem_budget=16 * 1024)
    for spec in specs:
        _assert_equal_stats(gpu.tail_stats(pf, P, spec, device=dev), ref.tail_stats(pf, P, spec))
