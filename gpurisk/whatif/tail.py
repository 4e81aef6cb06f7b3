"""One portfolio's scenario P&L and its tail statistics, for the what-if.

A what-if needs the loss vector of one portfolio (a few rows of P [R, S] times their
quantities) and its worst / VaR / ES under a leg's ``MeasureSpec``. Both are small
jitted loops here (no thread launch, no [P, S] block): a combination over the
portfolio's rows, then a partition over S for the equal-weight tail. The rule is
``gpurisk.tail.MeasureSpec``'s; a weighted spec goes through the NumPy reference
(``backends.reference.tail_of_block``), the oracle itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..backends import reference as _ref
from ..tail import MeasureSpec, TailStats, counted_pnl


@njit(cache=True, nogil=True)
def _combine(P, rows, qty, out):  # pragma: no cover - compiled
    S = P.shape[1]
    for j in range(rows.shape[0]):
        q = qty[j]
        r = rows[j]
        for s in range(S):
            out[s] += q * P[r, s]


@njit(cache=True, nogil=True)
def _tail_equal(x, ks, var, es):  # pragma: no cover - compiled
    """worst index of the losses x [S]; VaR/ES per level (k-th largest / mean of the k largest) into var, es.

    One pass with a min-heap of the m = max(ks) largest losses (most losses fail the first compare).
    """
    S = x.shape[0]
    w = 0
    m = 0
    for k in ks:
        m = max(m, k)
    heap = np.empty(m)
    n = 0
    for s in range(S):
        v = x[s]
        if v > x[w]:
            w = s
        if n < m:  # sift up
            i = n
            n += 1
            while i > 0:
                parent = (i - 1) >> 1
                if heap[parent] <= v:
                    break
                heap[i] = heap[parent]
                i = parent
            heap[i] = v
        elif v > heap[0]:  # replace the smallest kept, sift down
            i = 0
            while True:
                c = 2 * i + 1
                if c >= m:
                    break
                if c + 1 < m and heap[c + 1] < heap[c]:
                    c += 1
                if heap[c] >= v:
                    break
                heap[i] = heap[c]
                i = c
            heap[i] = v
    top = np.sort(heap)[::-1]  # the m largest, descending
    for j in range(ks.shape[0]):
        k = ks[j]
        var[j] = top[k - 1]
        acc = 0.0
        for i in range(k):
            acc += top[i]
        es[j] = acc / k
    return w


def portfolio_pnl(P, rows, qty, extra=()) -> np.ndarray:
    """L [S] = Σ_j qty[j]·P[rows[j]] + Σ q·v over ``extra`` ((q, v [S]) pairs: rows revalued on the fly).

    ``P`` may be None when every row is in ``extra``."""
    out = np.zeros(P.shape[1] if P is not None else len(extra[0][1]))
    if len(rows):
        _combine(P, np.asarray(rows, dtype=np.int64), np.asarray(qty, dtype=np.float64), out)
    for q, v in extra:
        out += q * v
    return out


_KS: dict = {}


def tail_one(L: np.ndarray, spec: MeasureSpec) -> TailStats:
    """TailStats [1] of one portfolio's scenario P&L L [S] under ``spec`` (losses positive)."""
    if spec.weight is not None:
        return _ref.tail_of_block(np.asarray(L, dtype=np.float64)[None, :], spec)
    x = -counted_pnl(np.asarray(L, dtype=np.float64), spec)
    hit = _KS.get(id(spec))
    if hit is None or hit[0] is not spec or hit[1] != len(x):  # a few specs per session: cache their counts
        if len(_KS) > 4096:
            _KS.clear()
        hit = _KS[id(spec)] = (spec, len(x), spec.tail_counts(len(x)))
    ks = hit[2]
    var = np.empty((1, len(ks)))
    es = np.empty((1, len(ks)))
    w = _tail_equal(np.ascontiguousarray(x), ks, var[0], es[0])
    return TailStats(worst=x[w:w + 1].copy(), worst_scenario=np.array([w], dtype=np.int64), var=var, es=es)


def warm() -> None:
    """Compile (or load from the cache) the kernels above on tiny inputs."""
    L = portfolio_pnl(np.zeros((1, 4)), np.zeros(1, np.int64), np.ones(1))
    tail_one(L, MeasureSpec(levels=(0.5,)))


__all__ = ["portfolio_pnl", "tail_one", "warm"]
