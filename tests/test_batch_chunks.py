"""Chunk planning (hypothesis invariants) and chunk checkpoints."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpurisk.backends import MeasureSpec, TailStats, reference
from gpurisk.batch import chunks
from gpurisk.book import Portfolios


def _check_cover(bounds, n):
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a < b for a, b in bounds)
    assert all(x[1] == y[0] for x, y in zip(bounds, bounds[1:]))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 50), min_size=1, max_size=300),
    S=st.integers(1, 20_000),
    workers=st.integers(1, 8),
    size=st.one_of(st.just("auto"), st.integers(1, 400)),
)
def test_chunks_cover_every_portfolio_once_in_order(counts, S, workers, size):
    indptr = np.concatenate([[0], np.cumsum(counts)])
    bounds = chunks.plan_chunks(indptr, S, size, workers)
    _check_cover(bounds, len(counts))
    if size != "auto":
        assert all(b - a == size for a, b in bounds[:-1]) and bounds[-1][1] - bounds[-1][0] <= size


def test_auto_sizes_by_work_and_balances_workers():
    indptr = np.arange(0, 20_001, 2)  # 10,000 portfolios of 2 positions
    S = 10_000
    total = chunks.chunk_work(indptr, S).sum()
    b = chunks.plan_chunks(indptr, S, "auto", workers=2)
    assert len(b) == int(np.ceil(total / chunks.TARGET_WORK))
    work = np.array([chunks.chunk_work(indptr[a: c + 1] - indptr[a], S).sum() for a, c in b])
    assert work.max() <= 1.05 * total / len(b)  # even split of the work
    tiny = chunks.plan_chunks(np.arange(0, 11), 10, "auto", workers=4)  # far below MIN_WORK: one task
    assert tiny == [(0, 10)]
    assert chunks.plan_chunks(np.array([0]), 10, "auto", 2) == []


def test_chunks_follow_work_not_counts():
    # one heavy portfolio then many light ones: the heavy one gets a chunk of its own
    indptr = np.concatenate([[0], np.cumsum([100_000] + [1] * 999)])
    b = chunks.plan_chunks(indptr, 5_000, "auto", workers=1)
    assert b[0] == (0, 1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 40))
def test_tail_stats_do_not_depend_on_chunking(seed, size):
    rng = np.random.default_rng(seed)
    I, S, n = 6, 64, 40
    P = rng.normal(size=(I, S))
    counts = rng.integers(0, 5, n)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    ports = Portfolios(indptr, rng.integers(0, I, indptr[-1]).astype(np.int32), rng.normal(size=indptr[-1]),
                       np.arange(n, dtype=np.int32))
    spec = MeasureSpec(levels=(0.9, 0.975), weight=rng.uniform(0.5, 1.5, S))
    whole = reference.tail_stats(ports, P, spec)
    got = TailStats.concat([reference.tail_stats(ports.slice(a, b), P, spec) for a, b in chunks.plan_chunks(indptr, S, size)])
    for f in ("worst", "worst_scenario", "var", "es"):
        np.testing.assert_array_equal(getattr(got, f), getattr(whole, f))


def test_checkpoint_round_trip_and_corrupt_file(tmp_path):
    rng = np.random.default_rng(1)
    ts = TailStats(rng.normal(size=5), np.arange(5, dtype=np.int64), rng.normal(size=(5, 2)), rng.normal(size=(5, 2)))
    p = chunks.checkpoint_path(tmp_path, "house", "account/venue", 0, 5)
    assert p.parent.name.startswith("account_venue-")  # readable, and no other leg shares the folder:
    assert chunks.checkpoint_path(tmp_path, "house", "account_venue", 0, 5).parent != p.parent
    chunks.save_chunk(p, ts, {"input_hash": "abc", "backend": "cpu"})
    got, meta = chunks.load_chunk(p)
    assert meta == {"input_hash": "abc", "backend": "cpu"}
    for f in ("worst", "worst_scenario", "var", "es"):
        np.testing.assert_array_equal(getattr(got, f), getattr(ts, f))
    p.write_bytes(b"not a zip")
    assert chunks.load_chunk(p) is None
    assert chunks.load_chunk(tmp_path / "missing.npz") is None
    assert not list(tmp_path.rglob("*.tmp"))


def test_bad_backend_results_are_caught():
    import pytest

    from gpurisk.batch.tasks import BadChunkResult, check_stats

    ok = TailStats(np.zeros(3), np.array([0, 4, 9]), np.zeros((3, 1)), np.zeros((3, 1)))
    check_stats(ok, 3, 10, 1, "cpu")
    bad = TailStats(np.zeros(3), np.array([0, 4, 4607182418800017408]), np.zeros((3, 1)), np.zeros((3, 1)))
    with pytest.raises(BadChunkResult, match=r"worst_scenario outside \[0, 10\) for 1 portfolio"):
        check_stats(bad, 3, 10, 1, "cpu")
    with pytest.raises(BadChunkResult, match="wrong shapes"):
        check_stats(ok, 4, 10, 1, "cpu")
