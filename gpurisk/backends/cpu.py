"""The CPU backend: fused Numba kernels that reproduce ``backends.reference``.

``revalue`` evaluates every (instrument, scenario) pair in parallel over
instruments; the per-instrument parts (base value, vol-term scale, forward) are
computed once per instrument, the normal CDF uses ``math.erf``/``math.erfc``
exactly as SciPy's ``ndtr`` does.

``tail_stats`` fuses the sparse aggregation L[p, s] = Σ_j q_j·P[i_j, s] over the
CSR portfolios with the tail reduction and never forms the accounts × scenarios
matrix. By default it goes through the exact int16 screen (``backends.screen``,
``_screened_kernel``): P's rows are quantised once to int16 (``quantize``, tile-major),
each portfolio's float32 screened losses y are formed tile by tile from them (2 bytes
per position-scenario instead of 8), the (y, scenario) pairs that can reach the tail
are kept (θ from a strided sample, raised to (m-th largest y kept) − 2b as the
buffer fills), and at the end only the band y ≥ y_(m) − 2b (about m scenarios) is
recomputed in float64 from P, rows outer so the loads overlap, with the same
products and sums as below; a portfolio the screen may not be used for, or whose
sample threshold turned out too high, goes through the direct kernel. The direct
kernel (``_tail_kernel``, also used for small books, ``SCREEN_MIN_POSITIONS_PER_ROW``):

* the scenario axis is cut into tiles of T columns so that the tile P[:, tile]
  (I·T·8 bytes, I·T·4 with float32 storage) stays in the shared L3 cache while every portfolio of a chunk
  streams over it; a portfolio's tile of P&L lives in a T-element buffer;
* tail selection never sorts the S losses. Each portfolio keeps a buffer of up to
  2m candidate (loss, scenario) pairs, m = the largest tail count over the levels
  (equal weights) or, with probability weights, 2 + the smallest count whose
  *lightest* weights reach the tail mass (base.tail_candidates). A loss enters only
  if it ranks above the portfolio's floor (rank: loss, then the smaller scenario
  index, the reference's stable order); a full buffer is cut back to its best m by
  quickselect and the floor rises to the m-th best. Entry checks run as a
  vectorised count over blocks of 32 losses, so the common "nothing enters" case
  costs a compare per loss;
* the floor starts at a high quantile of the portfolio's losses over a strided
  sample of the scenarios (every SAMPLE_STRIDE-th), placed so that about
  SAMPLE_MARGIN·m losses are expected above it; the sample's r-th largest comes
  from a running top r when r ≤ TOP_R_MAX (r = 13 for ES99 of 10,000 scenarios),
  otherwise from a quickselect. If fewer than m losses end up
  above it, that portfolio is recomputed with no floor, so the sample affects
  only speed, never the result;
* candidates are stored as (loss, scenario) pairs side by side in one float64
  row per portfolio, so an admission writes one cache line, not two;
* at the end the m best candidates are heap-sorted and VaR/ES/worst are read off
  exactly as the reference does (same summation order for ES).

The aggregation adds four rows per pass in the reference's order
(((q₀a + q₁b) + q₂c) + …), multiplies and adds separately (no FMA contraction), so
every portfolio loss is bitwise the value ``scipy.sparse`` computes.

``float32=True`` (``revalue`` and ``tail_stats``) is an opt-in storage mode: P held
as float32 halves the bytes the aggregation streams from cache; every product and
sum is still float64. Its results differ from float64 ones by at most
``float32_error_bound``; it is never the default for margin numbers.

Scratch: T doubles per thread and 2m (loss, scenario) pairs per portfolio of the
current chunk (screened: 2m + 64 (float32, int32) pairs); chunks are sized so that this
state stays under ``STATE_BYTES``.
Inputs are cast to one dtype set (int64 indices, float64 values; P float64 or, in
the float32 mode, float32) so each kernel compiles once per P dtype (``cache=True``
keeps the machine code between runs).
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..pricing import DAYS_PER_YEAR, NUMERAIRE_CODES, NUMERAIRE_SETTLEMENT, PricingInputs
from . import screen
from .base import MeasureSpec, TailStats, check_portfolios, check_underlyings, tail_candidates

name = "cpu"

#: bytes of the P tile kept hot in cache (a share of the 32 MiB L3 of a typical server core complex)
TILE_BYTES = 8 << 20  # 2 threads x 8 MiB tiles measured faster than 4 MiB (and than 2 or 16) on a 32 MiB L3
#: portfolio blocks per thread in a chunk (each block streams every P tile once; more blocks balance load)
BLOCKS_PER_THREAD = 4
#: bound on the per-chunk candidate state (2m losses and scenario indices per portfolio)
STATE_BYTES = 256 << 20
#: the starting floor comes from every SAMPLE_STRIDE-th scenario ...
SAMPLE_STRIDE = 16
#: ... at the rank where SAMPLE_MARGIN·m losses of all S are expected above it
SAMPLE_MARGIN = 2.0
#: sample ranks up to this use a running top r (≈ r·ln(n/r) replacements of r compares); larger ones a quickselect
TOP_R_MAX = 32
#: the exact int16 screen (backends.screen): on, and used when the book has at least this many positions per row of P
#: (quantising P costs one pass over it; screening saves most of the bytes every position streams)
SCREEN = True
SCREEN_MIN_POSITIONS_PER_ROW = 0.5
#: bytes of the int16 tile of Q (all rows) that every portfolio of a block screens before the next one
SCREEN_TILE_BYTES = 16 << 20

try:  # numba is a hard dependency, but the backend still reports cleanly without it
    import numba
    from numba import njit, prange

    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only without numba
    numba = None
    _IMPORT_ERROR = exc


if numba is not None:
    from llvmlite import ir as _llir
    from numba.core import cgutils as _cgutils
    from numba.core import types as _nbtypes
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _prefetch2(typingctx, arr, i, j):
        """Ask the CPU to start loading arr[i, j] into its caches (``llvm.prefetch``; no bounds check, no fault)."""
        sig = _nbtypes.void(arr, i, j)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            idx = [context.cast(builder, a, t, _nbtypes.intp) for a, t in zip(args[1:], signature.args[1:])]
            ptr = _cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
            i8p = _llir.IntType(8).as_pointer()
            i32 = _llir.IntType(32)
            fnty = _llir.FunctionType(_llir.VoidType(), [i8p, i32, i32, i32])
            fn = _cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])  # write, keep, data
            return context.get_dummy_value()

        return sig, codegen


def available():
    if numba is None:
        return False, f"numba cannot be imported ({_IMPORT_ERROR})"
    return True, f"numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads"


if numba is not None:
    _SQRT1_2 = 0.7071067811865476
    _QMAX = float(screen.QMAX)
    #: bit index of a 64-bit word's single set bit: _DEBRUIJN64[(bit · magic) >> 58]
    _DEBRUIJN_MAGIC = np.uint64(0x03F79D71B4CB0A89)
    _DEBRUIJN64 = np.zeros(64, dtype=np.int64)
    for _b in range(64):
        _DEBRUIJN64[((1 << _b) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = _b
    _TINY_ROW = screen.TINY_ROW
    _OPT, _SPOT, _INV = 3, 0, 1
    _VOL_ABS, _VOL_TERM = 1, 2

    @njit(cache=True, fastmath=False, inline="always")
    def _ndtr(a):
        """Standard normal CDF, the Cephes/SciPy formulation (erf near 0, erfc in the tails)."""
        x = a * _SQRT1_2
        z = abs(x)
        if z < _SQRT1_2:
            return 0.5 + 0.5 * math.erf(x)
        y = 0.5 * math.erfc(z)
        if x > 0.0:
            y = 1.0 - y
        return y

    @njit(cache=True, fastmath=False, inline="always")
    def _black76(F, K, T, sigma, w):
        """Undiscounted Black-76 (pricing.black76) for one set of scalars."""
        sig_t = sigma * math.sqrt(max(T, 0.0))
        if not sig_t > 0.0:
            return max(w * (F - K), 0.0)
        sF = F if F > 0.0 else 1.0
        sK = K if K > 0.0 else 1.0
        d1 = (math.log(sF / sK) + 0.5 * sig_t * sig_t) / sig_t
        d2 = d1 - sig_t
        return w * (F * _ndtr(w * d1) - K * _ndtr(w * d2))

    @njit(cache=True, fastmath=False, parallel=True)
    def _revalue_kernel(kind, settlement, option_type, uidx, cs, fwd, strike, ttm, vol,
                        price_shock, vol_shock, vol_mode, horizon_years, coin,
                        ref_days, p_short, p_long, min_vol_up, vol_floor, min_dte, out):
        """out [I, S] = scenario value − base value per contract (pricing.contract_values)."""
        n_ins = kind.shape[0]
        n_s = price_shock.shape[0]
        for i in prange(n_ins):
            u = uidx[i]
            c = cs[i]
            F = fwd[i]
            inv = settlement[i] == _INV
            k = kind[i]
            if k == _OPT:
                K = strike[i]
                w = float(option_type[i])
                T0 = ttm[i]
                T1 = max(T0 - horizon_years, 0.0)
                sig0 = vol[i]
                dte = max(T0 * DAYS_PER_YEAR, min_dte)
                p = p_short if dte < ref_days else p_long
                scale = (ref_days / dte) ** p
                b0 = _black76(F, K, T0, sig0, w)
                if coin and inv:
                    base = c * b0 / F
                else:
                    base = c * b0
                for s in range(n_s):
                    sh = price_shock[s, u]
                    v = vol_shock[s, u]
                    m = vol_mode[s]
                    F1 = F * (1.0 + sh)
                    if m == _VOL_ABS:
                        sig1 = sig0 + v
                    elif m == _VOL_TERM:
                        sig1 = sig0 * (1.0 + v * scale)
                        if v > 0.0:
                            sig1 = max(sig1, min_vol_up)
                    else:
                        sig1 = sig0 * (1.0 + v)
                    sig1 = max(sig1, vol_floor)
                    b1 = _black76(F1, K, T1, sig1, w)
                    if coin and inv:
                        out[i, s] = c * b1 / F1 - base
                    else:
                        out[i, s] = c * b1 - base
            else:
                spot_base = c * F
                for s in range(n_s):
                    sh = price_shock[s, u]
                    if inv:
                        if coin:
                            d1p = c / F * sh / (1.0 + sh)
                        else:
                            d1p = c * sh
                    else:
                        d1p = c * F * sh
                    if k == _SPOT:
                        out[i, s] = (spot_base + d1p) - spot_base
                    else:
                        out[i, s] = d1p - 0.0

    # ---- candidate sets of (loss, scenario) pairs ----
    # a ranks below b when a.loss < b.loss, or the losses tie and a has the larger index
    # (the reference's stable descending order).

    @njit(cache=True, fastmath=False, inline="always")
    def _below(xa, ia, xb, ib):
        return xa < xb or (xa == xb and ia > ib)

    @njit(cache=True, fastmath=False)
    def _swap(cx, ci, a, b):
        tx = cx[a]
        ti = ci[a]
        cx[a] = cx[b]
        ci[a] = ci[b]
        cx[b] = tx
        ci[b] = ti

    @njit(cache=True, fastmath=False)
    def _keep_top(cx, ci, n, m):
        """Quickselect: move the m best-ranked of the n entries to the front (any order); m < n."""
        lo = 0
        hi = n - 1
        while lo < hi:
            mid = (lo + hi) // 2  # median of three as the pivot, parked at hi
            if _below(cx[lo], ci[lo], cx[mid], ci[mid]):
                _swap(cx, ci, lo, mid)
            if _below(cx[lo], ci[lo], cx[hi], ci[hi]):
                _swap(cx, ci, lo, hi)
            if _below(cx[hi], ci[hi], cx[mid], ci[mid]):
                _swap(cx, ci, mid, hi)
            px = cx[hi]
            pi_ = ci[hi]
            store = lo
            for r in range(lo, hi):
                if _below(px, pi_, cx[r], ci[r]):  # r ranks above the pivot
                    _swap(cx, ci, r, store)
                    store += 1
            _swap(cx, ci, store, hi)
            if store == m - 1 or store == m:
                return
            if store < m:
                lo = store + 1
            else:
                hi = store - 1

    @njit(cache=True, fastmath=False)
    def _kth_largest(a, n, r):
        """The r-th largest of a[:n] (1 ≤ r ≤ n) by quickselect; reorders a[:n]."""
        lo = 0
        hi = n - 1
        want = r - 1  # position in descending order
        while lo < hi:
            mid = (lo + hi) // 2
            if a[lo] < a[mid]:
                a[lo], a[mid] = a[mid], a[lo]
            if a[lo] < a[hi]:
                a[lo], a[hi] = a[hi], a[lo]
            if a[hi] < a[mid]:
                a[mid], a[hi] = a[hi], a[mid]
            pv = a[hi]
            store = lo
            for t in range(lo, hi):
                if a[t] > pv:
                    a[t], a[store] = a[store], a[t]
                    store += 1
            a[store], a[hi] = a[hi], a[store]
            if store == want:
                return a[store]
            if store < want:
                lo = store + 1
            else:
                hi = store - 1
        return a[want]

    @njit(cache=True, fastmath=False)
    def _rth_largest(a, n, r, top):
        """The r-th largest of a[:n] (1 ≤ r ≤ n, r small): a running top r whose minimum is replaced.

        About r·ln(n/r) replacements of r compares each instead of a quickselect's swaps.
        (A NaN never enters once the top is full; a NaN in the first r makes the result NaN,
        a floor nothing passes, so that portfolio is redone without one.)
        """
        for t in range(r):
            top[t] = a[t]
        lo = 0
        for u in range(1, r):
            if top[u] < top[lo]:
                lo = u
        mn = top[lo]
        for t in range(r, n):
            x = a[t]
            if x > mn:
                top[lo] = x
                lo = 0
                for u in range(1, r):
                    if top[u] < top[lo]:
                        lo = u
                mn = top[lo]
        return mn

    @njit(cache=True, fastmath=False)
    def _lowest(cx, ci, n):
        """Position of the lowest-ranked of the first n entries."""
        w = 0
        for r in range(1, n):
            if _below(cx[r], ci[r], cx[w], ci[w]):
                w = r
        return w

    @njit(cache=True, fastmath=False)
    def _sift_down(hx, hi, n, pos):
        """Min-heap on rank (root = lowest rank) over the first n entries."""
        x = hx[pos]
        ix = hi[pos]
        while True:
            c = 2 * pos + 1
            if c >= n:
                break
            if c + 1 < n and _below(hx[c + 1], hi[c + 1], hx[c], hi[c]):
                c += 1
            if _below(hx[c], hi[c], x, ix):
                hx[pos] = hx[c]
                hi[pos] = hi[c]
                pos = c
            else:
                break
        hx[pos] = x
        hi[pos] = ix

    @njit(cache=True, fastmath=False)
    def _sort_best_first(cx, ci, n):
        """Heap sort the first n entries into rank order, best first."""
        for r in range(n // 2 - 1, -1, -1):
            _sift_down(cx, ci, n, r)
        for e in range(n - 1, 0, -1):
            _swap(cx, ci, 0, e)
            _sift_down(cx, ci, e, 0)

    @njit(cache=True, fastmath=False, inline="always")
    def _losses(indptr, idx, qty, P, p, t0, t1, pf_t, profit_factor, buf):
        """buf[:t1−t0] = counted losses of portfolio p over scenario columns [t0, t1) of P."""
        nt = t1 - t0
        j0 = indptr[p]
        j1 = indptr[p + 1]
        if j0 == j1:
            for s in range(nt):
                buf[s] = 0.0
        else:
            q = qty[j0]
            prow = P[idx[j0], t0:t1]  # a contiguous slice vectorises; 2-D indexing does not
            for s in range(nt):
                buf[s] = q * prow[s]
        j = j0 + 1
        while j + 3 < j1:  # four rows per pass, same rounding as one row at a time: (((buf + q·a) + q2·b) + …)
            q = qty[j]
            q2 = qty[j + 1]
            q3 = qty[j + 2]
            q4 = qty[j + 3]
            prow = P[idx[j], t0:t1]
            prow2 = P[idx[j + 1], t0:t1]
            prow3 = P[idx[j + 2], t0:t1]
            prow4 = P[idx[j + 3], t0:t1]
            for s in range(nt):
                buf[s] = (((buf[s] + q * prow[s]) + q2 * prow2[s]) + q3 * prow3[s]) + q4 * prow4[s]
            j += 4
        while j + 1 < j1:  # then two rows per pass
            q = qty[j]
            q2 = qty[j + 1]
            prow = P[idx[j], t0:t1]
            prow2 = P[idx[j + 1], t0:t1]
            for s in range(nt):
                buf[s] = (buf[s] + q * prow[s]) + q2 * prow2[s]
            j += 2
        if j < j1:
            q = qty[j]
            prow = P[idx[j], t0:t1]
            for s in range(nt):
                buf[s] += q * prow[s]
        # x = −v·(profit_factor if v > 0 else 1), v = pnl_factor·L (a select, no branch)
        for s in range(nt):
            v = buf[s] * pf_t[s]
            buf[s] = -v * (profit_factor if v > 0.0 else 1.0)

    @njit(cache=True, fastmath=False, inline="always")
    def _admit(buf, nt, t0, cxp, cip, n, fl, m):
        """Append the losses of buf[:nt] (scenarios t0…) that rank above the floor fl; returns (n, fl)."""
        cap = cxp.shape[0]
        for c0 in range(0, nt, 32):  # a vectorised count first: most 32-blocks have no entrant
            c1 = min(c0 + 32, nt)
            hits = 0
            for s in range(c0, c1):
                hits += buf[s] > fl
            if hits == 0:
                continue
            for s in range(c0, c1):
                x = buf[s]
                if x > fl:  # strict: a tie with the floor has a larger index, so it ranks below
                    cxp[n] = x
                    cip[n] = t0 + s
                    n += 1
                    if n == cap:
                        _keep_top(cxp, cip, n, m)
                        n = m
                        fl = cxp[_lowest(cxp, cip, m)]
        return n, fl

    @njit(cache=True, fastmath=False)
    def _read_off(cxp, cip, n, m, weighted, ks, weight, targets, worst, worst_s, var, es, p,
                  want, tail_i, tail_x, tail_n):
        """worst / VaR / ES of row p from its n candidates (loss, scenario), n ≥ m when any loss was admissible.

        ``want``: also row p's tail set, best first (``tail_i``/``tail_x`` [·, m], ``tail_n`` [·, L] counts)."""
        n_lev = var.shape[1]
        if n == 0:  # no admissible loss (all NaN): say so rather than read uninitialised scratch
            worst[p] = np.nan
            worst_s[p] = -1
            for lv in range(n_lev):
                var[p, lv] = np.nan
                es[p, lv] = np.nan
                if want:
                    tail_n[p, lv] = 0
            return
        if n > m:
            _keep_top(cxp, cip, n, m)
            n = m
        if not weighted and n_lev == 1 and not want:
            # one level, m = k: VaR is the lowest-ranked candidate, ES their mean; no sort
            best = 0
            low = 0
            acc = 0.0
            for r in range(n):
                acc += cxp[r]
                if _below(cxp[best], cip[best], cxp[r], cip[r]):
                    best = r
                if _below(cxp[r], cip[r], cxp[low], cip[low]):
                    low = r
            worst[p] = cxp[best]
            worst_s[p] = int(cip[best])
            var[p, 0] = cxp[low]
            es[p, 0] = acc / ks[0]
            return
        _sort_best_first(cxp, cip, n)
        worst[p] = cxp[0]
        worst_s[p] = int(cip[0])
        if not weighted:
            for lv in range(n_lev):
                k = ks[lv]
                acc = 0.0
                for r in range(k):
                    acc += cxp[r]
                var[p, lv] = cxp[k - 1]
                es[p, lv] = acc / k
                if want:
                    tail_n[p, lv] = min(k, n)
        else:
            for lv in range(n_lev):
                cw = 0.0
                cwx = 0.0
                r = 0
                while r < n:
                    wr = weight[int(cip[r])]
                    cw += wr
                    cwx += wr * cxp[r]
                    if cw >= targets[lv]:
                        break
                    r += 1
                if r == n:
                    r = n - 1
                var[p, lv] = cxp[r]
                es[p, lv] = cwx / cw
                if want:
                    tail_n[p, lv] = r + 1
        if want:
            for r in range(min(n, tail_i.shape[1])):
                tail_i[p, r] = int(cip[r])
                tail_x[p, r] = cxp[r]

    @njit(cache=True, fastmath=False, parallel=True)
    def _tail_kernel(indptr, idx, qty, P, lo, hi, tile, m, pnl_factor, profit_factor,
                     weighted, ks, weight, targets, n_blocks, P_sample, pnl_sample, rank,
                     worst, worst_s, var, es, want, tail_i, tail_x, tail_n):
        """Worst/VaR/ES of portfolios [lo, hi) written to rows [0, hi−lo) of the outputs.

        Each portfolio keeps up to 2m candidates; a loss enters only if it ranks above
        the floor. The floor starts at the ``rank``-th largest loss over a strided sample
        of the scenarios (P_sample = P[:, sample]), chosen so that, very likely, at least m
        losses exceed it; it rises to the m-th best at each compaction (quickselect to
        the best m when the buffer is full). A portfolio that ends with fewer than m
        candidates (the sample floor was too high) is redone with no floor, so the
        result is exact whatever the sample says.
        """
        n_s = P.shape[1]
        n_p = hi - lo
        cap = 2 * m
        n_samp = P_sample.shape[1]
        # (loss, scenario) pairs side by side, so one written cache line holds both halves of an entry;
        # scenario indices are stored as float64 (exact below 2**53)
        cand = np.empty((n_p, 2 * cap))
        fill = np.zeros(n_p, dtype=np.int64)
        floor = np.full(n_p, -np.inf)
        per = (n_p + n_blocks - 1) // n_blocks
        for b in prange(n_blocks):
            buf = np.empty(max(tile, n_samp))
            top = np.empty(max(rank, 1))
            p0 = b * per
            p1 = min(p0 + per, n_p)
            if rank > 0:
                for p in range(p0, p1):
                    _losses(indptr, idx, qty, P_sample, lo + p, 0, n_samp, pnl_sample, profit_factor, buf)
                    if rank <= TOP_R_MAX:
                        floor[p] = _rth_largest(buf, n_samp, rank, top)
                    else:
                        floor[p] = _kth_largest(buf, n_samp, rank)
            for t0 in range(0, n_s, tile):
                t1 = min(t0 + tile, n_s)
                pf_t = pnl_factor[t0:t1]
                for p in range(p0, p1):
                    _losses(indptr, idx, qty, P, lo + p, t0, t1, pf_t, profit_factor, buf)
                    fill[p], floor[p] = _admit(buf, t1 - t0, t0, cand[p, 0::2], cand[p, 1::2], fill[p], floor[p], m)
            for p in range(p0, p1):
                if fill[p] < m:  # the sample floor was above the m-th loss: redo without a floor
                    n = 0
                    fl = -np.inf
                    for t0 in range(0, n_s, tile):
                        t1 = min(t0 + tile, n_s)
                        _losses(indptr, idx, qty, P, lo + p, t0, t1, pnl_factor[t0:t1], profit_factor, buf)
                        n, fl = _admit(buf, t1 - t0, t0, cand[p, 0::2], cand[p, 1::2], n, fl, m)
                    fill[p] = n
            # order each portfolio's candidates best-first and read off the statistics
            for p in range(p0, p1):
                _read_off(cand[p, 0::2], cand[p, 1::2], fill[p], m, weighted, ks, weight, targets,
                          worst, worst_s, var, es, p, want, tail_i, tail_x, tail_n)

    # ---- the exact int16 screen (backends.screen): screened float32 losses decide which losses are computed ----

    @njit(cache=True, fastmath=False, parallel=True)
    def _row_max_bits(Pbits, sign_mask, out):
        """out[i] = max_s (Pbits[i, s] & ~sign): the bit pattern of max_s |P_is| (an integer max vectorises;
        a NaN or ±inf shows as a pattern at or above the infinity's)."""
        n_ins, n_s = Pbits.shape
        keep = ~sign_mask
        for i in prange(n_ins):
            mx = Pbits[i, 0] & keep if n_s else sign_mask & 0
            for s in range(n_s):
                mx = max(mx, Pbits[i, s] & keep)
            out[i] = mx

    @njit(cache=True, fastmath=False, parallel=True)
    def _quantize_kernel(P, r, Qt, stride, Q_sample):
        """Qt[t, i, u] = rint(P[i, t·T + u] · r_i) as int16, tile-major and zero-padded (r_i = 1/σ_i, or 0 for
        a row left unquantised); every stride-th column also into Q_sample."""
        n_ins, n_s = P.shape
        n_tiles, _, tile = Qt.shape
        for i in prange(n_ins):
            ri = r[i]
            for t in range(n_tiles):
                t0 = t * tile
                nt = min(tile, n_s - t0)
                out = Qt[t, i]
                row = P[i, t0:t0 + nt]
                if ri == 0.0:
                    for u in range(tile):
                        out[u] = 0
                    continue
                for u in range(nt):
                    out[u] = np.int16(np.rint(np.float64(row[u]) * ri))
                for u in range(nt, tile):
                    out[u] = 0
            for u in range(Q_sample.shape[1]):
                Q_sample[i, u] = Qt[(u * stride) // tile, i, (u * stride) % tile]

    @njit(cache=True, fastmath=False, inline="always")
    def _screen_losses(indptr, idx, c32, Q, p, t0, t1, f32_t, pf32, buf):
        """buf[:t1−t0] (float32) = screened counted losses of portfolio p over columns [t0, t1) of the int16 rows Q."""
        nt = t1 - t0
        j0 = indptr[p]
        j1 = indptr[p + 1]
        if j0 == j1:
            for s in range(nt):
                buf[s] = 0.0
        else:
            c = c32[j0]
            qrow = Q[idx[j0], t0:t1]
            for s in range(nt):
                buf[s] = c * qrow[s]
        j = j0 + 1
        while j + 3 < j1:
            c = c32[j]
            c2 = c32[j + 1]
            c3 = c32[j + 2]
            c4 = c32[j + 3]
            qrow = Q[idx[j], t0:t1]
            qrow2 = Q[idx[j + 1], t0:t1]
            qrow3 = Q[idx[j + 2], t0:t1]
            qrow4 = Q[idx[j + 3], t0:t1]
            for s in range(nt):
                buf[s] = (((buf[s] + c * qrow[s]) + c2 * qrow2[s]) + c3 * qrow3[s]) + c4 * qrow4[s]
            j += 4
        while j < j1:
            c = c32[j]
            qrow = Q[idx[j], t0:t1]
            for s in range(nt):
                buf[s] = buf[s] + c * qrow[s]
            j += 1
        one = np.float32(1.0)
        for s in range(nt):
            v = buf[s] * f32_t[s]
            buf[s] = -v * (pf32 if v > 0.0 else one)

    @njit(cache=True, fastmath=False, inline="always")
    def _screen_tile(indptr, idx, c32, Q, p, nt, f32_t, pf32, th, buf, mask):
        """``_screen_losses`` over columns [0, nt) of one tile, with the entry mask buf ≥ th written in the
        same pass (zero-padded to a whole 8-byte word); returns the number of entrants."""
        _screen_losses(indptr, idx, c32, Q, p, 0, nt, f32_t, pf32, buf)
        hits = 0
        for s in range(nt):
            e = buf[s] >= th
            mask[s] = e
            hits += e
        for s in range(nt, (nt + 7) // 8 * 8):
            mask[s] = 0
        return hits

    @njit(cache=True, fastmath=False, inline="always")
    def _down32(t):
        """The largest float32 ≤ t."""
        r = np.float32(t)
        if r > t:
            r = np.nextafter(r, np.float32(-np.inf))
        return r

    @njit(cache=True, fastmath=False)
    def _raise_screen(ys, ss, n, th, m, two_b, scratch):
        """Keep only the entries with y ≥ (m-th largest y) − 2b (n ≥ m); returns (n, th)."""
        for h in range(n):
            scratch[h] = ys[h]
        t = _down32(np.float64(_kth_largest(scratch, n, m)) - two_b)
        if t > th:
            th = t
        k = 0
        for h in range(n):  # branch-free filter, in place
            y = ys[h]
            ys[k] = y
            ss[k] = ss[h]
            k += y >= th
        return k, th

    @njit(cache=True, fastmath=False, inline="always")
    def _collect(ybuf, nt, t0, th, two_b, ys, ss, p, n, m, scratch, mask, words):
        """Append (y, scenario) for the tile's entrants (``mask``, from ``_screen_tile``) to row p of ys / ss.
        When the row is nearly full the threshold rises to (m-th largest y held) − 2b and the entries below it go. Returns
        (n, th); n = −1 when even that leaves no room (a band of more than cap − 64 near-ties: computed
        directly).

        The mask's 8-byte words (``words`` views ``mask``, one byte 0/1 per scenario, little-endian) skip eight
        scenarios at a time, and a word's entrants are found by their set bits, so the scalar work is one
        step per entrant.
        """
        cap = ys.shape[1]
        for w in range((nt + 7) // 8):
            if words[w] == 0:
                continue
            if n + 8 > cap:
                n, th = _raise_screen(ys[p], ss[p], n, th, m, two_b, scratch)
                if n + 64 > cap:
                    return -1, np.float32(np.inf)
            wv = words[w]
            while wv != 0:  # one step per entrant: the lowest set byte of the word, by a de Bruijn lookup
                low = wv & (~wv + np.uint64(1))
                s = 8 * w + (_DEBRUIJN64[(low * _DEBRUIJN_MAGIC) >> np.uint64(58)] >> 3)
                ys[p, n] = ybuf[s]
                ss[p, n] = t0 + s
                n += 1
                wv ^= low
        return n, th

    @njit(cache=True, fastmath=False, parallel=True)
    def _screened_kernel(indptr, idx, qty, c32, P, Qt, lo, hi, m, pnl_factor, pnl32, profit_factor, pf32,
                         bound, weighted, ks, weight, targets, n_blocks, Q_sample, pnl32_sample, rank,
                         worst, worst_s, var, es, redo, want, tail_i, tail_x, tail_n):
        """Worst/VaR/ES of portfolios [lo, hi) (rows [0, hi−lo) of the outputs) through the int16 screen.

        Each portfolio forms its float32 screened losses y tile by tile from the tile-major int16 rows Qt
        and keeps the (y, scenario) pairs with y ≥ θ. θ starts at θ₀, the ``rank``-th largest y over the
        strided sample, and rises to (m-th largest y held) − 2b when the buffer fills. At the end, with
        y_(m) the m-th largest screened loss: if at least m pairs were kept and θ₀ ≤ y_(m) − 2b, the kept
        pairs with y ≥ y_(m) − 2b hold the whole true top m (backends.screen); only those are computed
        exactly from P (the reference's products and sums) and the statistics read off them. Otherwise
        ``redo[lo + p]`` is set and the caller computes that portfolio directly.
        """
        n_s = P.shape[1]
        n_tiles, _, tile = Qt.shape
        n_p = hi - lo
        cap = 2 * m + 64
        n_samp = Q_sample.shape[1]
        ys = np.empty((n_p, cap), dtype=np.float32)
        ss = np.empty((n_p, cap), dtype=np.int32)
        fill = np.zeros(n_p, dtype=np.int64)
        for p in range(n_p):
            if redo[lo + p]:  # not screenable: the caller computes it directly
                fill[p] = -1
        th = np.full(n_p, -np.inf, dtype=np.float32)
        th0 = np.full(n_p, -np.inf, dtype=np.float32)
        per = (n_p + n_blocks - 1) // n_blocks
        for b in prange(n_blocks):
            ybuf = np.empty(max(tile, n_samp) + 8, dtype=np.float32)  # + 8: the mask words read whole
            scratch = np.empty(cap, dtype=np.float32)
            top = np.empty(max(rank, 1), dtype=np.float32)
            cx = np.empty(cap)
            ci = np.empty(cap)
            sb = np.empty(cap, dtype=np.int64)
            mask = np.zeros((tile + 7) // 8 * 8, dtype=np.uint8)
            words = mask.view(np.uint64)
            p0 = b * per
            p1 = min(p0 + per, n_p)
            if rank > 0:
                for p in range(p0, p1):
                    if p + 1 < p1:
                        for j in range(indptr[lo + p + 1], indptr[lo + p + 2]):
                            _prefetch2(Q_sample, idx[j], 0)
                    if fill[p] < 0:
                        continue
                    _screen_losses(indptr, idx, c32, Q_sample, lo + p, 0, n_samp, pnl32_sample, pf32, ybuf)
                    if rank <= TOP_R_MAX:
                        v = _rth_largest(ybuf, n_samp, rank, top)
                    else:
                        v = _kth_largest(ybuf, n_samp, rank)
                    th[p] = v
                    th0[p] = v
            for t in range(n_tiles):
                t0 = t * tile
                nt = min(tile, n_s - t0)
                Qtile = Qt[t]
                f_t = pnl32[t0:t0 + nt]
                for p in range(p0, p1):
                    if p + 1 < p1 and fill[p + 1] >= 0:  # the next portfolio's append position and the starts of its
                        _prefetch2(ys, p + 1, fill[p + 1])  # rows: cold lines, fetched while this one is screened
                        _prefetch2(ss, p + 1, fill[p + 1])
                        for j in range(indptr[lo + p + 1], indptr[lo + p + 2]):
                            _prefetch2(Qtile, idx[j], 0)
                    if fill[p] < 0:
                        continue
                    if _screen_tile(indptr, idx, c32, Qtile, lo + p, nt, f_t, pf32, th[p], ybuf, mask) == 0:
                        continue
                    fill[p], th[p] = _collect(ybuf, nt, t0, th[p], 2.0 * bound[lo + p], ys, ss, p, fill[p], m,
                                              scratch, mask, words)
            for p in range(p0, p1):
                if p + 1 < p1:  # the next portfolio's kept pairs: cold lines, fetched while this one finishes
                    for h in range(0, fill[p + 1], 16):
                        _prefetch2(ys, p + 1, h)
                        _prefetch2(ss, p + 1, h)
                n = fill[p]
                if n < m:  # the sample's θ₀ was above the m-th screened loss, or the band overflowed
                    redo[lo + p] = True
                    continue
                two_b = 2.0 * bound[lo + p]
                for h in range(n):
                    scratch[h] = ys[p, h]
                cut = np.float64(_kth_largest(scratch, n, m)) - two_b
                if not (th0[p] <= cut):
                    redo[lo + p] = True
                    continue
                k = 0
                for h in range(n):  # the band: every scenario that can be in the true top m
                    sb[k] = ss[p, h]
                    k += ys[p, h] >= cut
                # exact losses of the band, rows outer so the loads of P overlap; the order of ``_losses``
                j0 = indptr[lo + p]
                j1 = indptr[lo + p + 1]
                for h in range(k):
                    cx[h] = 0.0
                if j0 < j1:
                    q = qty[j0]
                    prow = P[idx[j0]]
                    for h in range(k):
                        cx[h] = q * prow[sb[h]]
                    for j in range(j0 + 1, j1):
                        q = qty[j]
                        prow = P[idx[j]]
                        for h in range(k):
                            cx[h] = cx[h] + q * prow[sb[h]]
                for h in range(k):
                    v = cx[h] * pnl_factor[sb[h]]
                    cx[h] = -v * (profit_factor if v > 0.0 else 1.0)
                    ci[h] = sb[h]
                _read_off(cx, ci, k, m, weighted, ks, weight, targets, worst, worst_s, var, es, p,
                          want, tail_i, tail_x, tail_n)


    @njit(cache=True, fastmath=False, parallel=True)
    def _marginal_kernel(indptr, idx, P, tail_i, tail_x, tail_n, weight, pnl_factor, profit_factor, out):
        """out[j, l] = Σ_{r < n_l} w·g·P[idx_j, s_r] / Σ_{r < n_l} w over portfolio p's tail entries (s_r, x_r),
        g = ``gpurisk.tail.tail_factor``(x_r): the Euler marginal of every position (parallel over portfolios)."""
        n_p = indptr.shape[0] - 1
        n_lev = tail_n.shape[1]
        K = tail_i.shape[1]
        for p in prange(n_p):
            j0 = indptr[p]
            j1 = indptr[p + 1]
            if j0 == j1:
                continue
            nmax = 0
            for lv in range(n_lev):
                nmax = max(nmax, tail_n[p, lv])
            nmax = min(nmax, K)
            coef = np.empty(max(nmax, 1))
            for r in range(nmax):
                s = tail_i[p, r]
                f = pnl_factor[s]
                x = tail_x[p, r]
                if x < 0.0:
                    g = -f * profit_factor
                else:
                    g = -f
                if profit_factor == 0.0 and x == 0.0:
                    g = 0.0
                coef[r] = weight[s] * g
            for lv in range(n_lev):
                n = min(tail_n[p, lv], K)
                wsum = 0.0
                for r in range(n):
                    wsum += weight[tail_i[p, r]]
                inv = 1.0 / wsum if wsum > 0.0 else 0.0
                for j in range(j0, j1):
                    row = idx[j]
                    acc = 0.0
                    for r in range(n):
                        acc += coef[r] * P[row, tail_i[p, r]]
                    out[j, lv] = acc * inv


def _vec(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def revalue(pi: PricingInputs, scenarios, numeraire: str = "usd", *, float32: bool = False) -> np.ndarray:
    """P [I, S] float64: P&L per contract of every instrument under every scenario (as the reference).

    ``float32=True`` (opt-in, never the default for margin numbers): every value is computed in
    float64 exactly as without it and rounded once to float32 on store, i.e. ``P.astype(np.float32)``
    of the float64 result, in half the memory. See ``tail_stats`` and ``float32_error_bound``.
    """
    n_s = scenarios.n_scenarios
    out = np.empty((len(pi), n_s), dtype=np.float32 if float32 else np.float64)
    if len(pi) == 0 or n_s == 0:
        return out
    check_underlyings(pi.underlying_idx, np.shape(scenarios.price_shock)[1])
    term = scenarios.term
    _revalue_kernel(
        _vec(pi.kind, np.int8), _vec(pi.settlement, np.int8), _vec(pi.option_type, np.int8),
        _vec(pi.underlying_idx, np.int64), _vec(pi.contract_size, np.float64), _vec(pi.forward, np.float64),
        _vec(pi.strike, np.float64), _vec(pi.ttm, np.float64), _vec(pi.vol, np.float64),
        _vec(scenarios.price_shock, np.float64), _vec(scenarios.vol_shock, np.float64),
        _vec(scenarios.vol_mode, np.int8), float(scenarios.horizon_years),
        NUMERAIRE_CODES[numeraire] == NUMERAIRE_SETTLEMENT,
        float(term.ref_days), float(term.power_short), float(term.power_long), float(term.min_vol_up),
        float(term.vol_floor), float(term.min_dte_days), out,
    )
    return out


def tail_stats(portfolios, P: np.ndarray, spec: MeasureSpec, *, float32: bool = False,
               attribution: bool = False) -> TailStats:
    """Per-portfolio worst / VaR / ES over P [I, S] (MeasureSpec rule), fused and tiled.

    ``float32=True`` is an opt-in storage mode, never the default for margin numbers: P is
    read as float32 (rounded once if it is float64; a float32 P, e.g. from
    ``revalue(..., float32=True)``, is used as is), which halves the bytes the aggregation
    streams; products, sums and the tail selection stay in float64. Equal-weight specs only;
    the results then differ from the float64 ones by at most ``float32_error_bound`` per
    portfolio (docs/benchmarks.md states and tests/test_float32.py tests the bound).
    Without it, a float32 P is widened to float64 exactly and treated as float64 data.

    ``attribution=True`` (float64 only): the read-off also writes each portfolio's tail set, best first
    (the candidates it already holds), and ``_marginal_kernel`` gathers P at those scenarios per
    position (``gpurisk.tail``, "Euler attribution"); off, the kernels skip both.
    """
    n_port = len(portfolios)
    n_lev = len(spec.levels)
    if float32:
        if spec.weight is not None:
            raise ValueError("float32 storage is for equal-weight measure specs only "
                             "(a weighted VaR/ES is not Lipschitz in the P&L, so no error bound holds)")
        if attribution:
            raise ValueError("attribution is computed from float64 P only (float32 storage is a screening mode)")
        P = _as_float32(P)
    else:
        P = np.ascontiguousarray(P, dtype=np.float64)
    n_ins, S = P.shape
    worst = np.zeros(n_port)
    worst_s = np.zeros(n_port, dtype=np.int64)
    var = np.zeros((n_port, n_lev))
    es = np.zeros((n_port, n_lev))
    if n_port == 0:
        out = TailStats(worst, worst_s, var, es)
        if attribution:
            K = tail_candidates(spec, S)[1] if S else 1
            out.tail_index, out.tail_loss = np.zeros((0, K), np.int64), np.zeros((0, K))
            out.tail_count, out.marginal = np.zeros((0, n_lev), np.int64), np.zeros((len(portfolios.quantity), n_lev))
        return out
    if S == 0:
        raise ValueError("tail_stats needs at least one scenario")
    check_portfolios(portfolios, n_ins)
    weighted, m, ks, targets = tail_candidates(spec, S)
    pnl = np.ones(S) if spec.pnl_factor is None else _vec(spec.pnl_factor, np.float64)
    weight = np.ones(S) if spec.weight is None else _vec(spec.weight, np.float64)
    if len(pnl) != S or len(weight) != S:
        raise ValueError(f"measure spec has {len(pnl)} pnl factors / {len(weight)} weights for {S} scenarios")
    if attribution:
        tails = (np.full((n_port, m), -1, np.int64), np.full((n_port, m), np.nan), np.zeros((n_port, n_lev), np.int64))
    else:  # one-element stand-ins keep the kernels' types (one compilation either way)
        tails = (np.zeros((1, 1), np.int64), np.zeros((1, 1)), np.zeros((1, 1), np.int64))
    st = _tail_pass(portfolios, P, spec, weighted, m, ks, targets, pnl, weight, n_port, n_lev, n_ins, S,
                    (worst, worst_s, var, es), attribution, tails)
    if attribution:
        st.tail_index, st.tail_loss, st.tail_count = tails
        st.marginal = marginals(portfolios, P, spec, st)
    return st


def _tails_of(tails, rows, want):
    """The tail arrays' rows ``rows`` (a slice or indices) for a kernel call, or the stand-ins when off."""
    if not want:
        return tails
    return tuple(t[rows] for t in tails)


def _tail_pass(portfolios, P, spec, weighted, m, ks, targets, pnl, weight, n_port, n_lev, n_ins, S, out, want, tails):
    """The screened kernel where it applies, the direct kernel for the rest; writes ``out`` and ``tails``."""
    worst, worst_s, var, es = out
    threads = numba.get_num_threads()
    indptr = _vec(portfolios.indptr, np.int64)
    idx = _vec(portfolios.instrument_idx, np.int64)
    qty = _vec(portfolios.quantity, np.float64)
    # the sample that sets each portfolio's starting floor: every stride-th scenario
    stride = int(max(1, min(SAMPLE_STRIDE, S // max(4 * m, 1))))
    sample = np.arange(0, S, stride)
    rank = int(min(len(sample), max(8, math.ceil(SAMPLE_MARGIN * m * len(sample) / S)))) if stride > 1 else 0
    if SCREEN and len(idx) >= SCREEN_MIN_POSITIONS_PER_ROW * n_ins:
        stile = int(min(S, max(32, SCREEN_TILE_BYTES // (2 * max(n_ins, 1)))))
        Qt, scale, M, Q_sample = quantize(P, stile, stride if rank else 0)
        bound, ok = screen.screen_bound(np, indptr, idx, qty, M, screen.row_error(M), spec)
        if ok.any():
            c32 = screen.coefficients(qty, idx, scale)
            pnl32 = pnl.astype(np.float32)
            pnl32_sample = np.ascontiguousarray(pnl32[sample]) if rank else np.empty(0, dtype=np.float32)
            redo = ~ok
            chunk_s = int(max(1, min(n_port, STATE_BYTES // (8 * (2 * m + 64) + 64))))
            for lo in range(0, n_port, chunk_s):
                hi = min(lo + chunk_s, n_port)
                n_blocks = int(min(hi - lo, BLOCKS_PER_THREAD * threads))
                _screened_kernel(indptr, idx, qty, c32, P, Qt, lo, hi, m, pnl, pnl32, float(spec.profit_factor),
                                 np.float32(spec.profit_factor), bound, weighted, _vec(ks, np.int64), weight,
                                 _vec(targets, np.float64), n_blocks, Q_sample, pnl32_sample, rank,
                                 worst[lo:hi], worst_s[lo:hi], var[lo:hi], es[lo:hi], redo,
                                 want, *_tails_of(tails, slice(lo, hi), want))
            again = np.flatnonzero(redo & ok)
            if len(again):  # the sample's θ₀ was too high: screened again with no starting threshold
                sub_ptr, sub_idx, sub_qty, take = _subset(indptr, idx, qty, again)
                sub_redo = np.zeros(len(again), dtype=np.bool_)
                got = [np.zeros(len(again)), np.zeros(len(again), dtype=np.int64), np.zeros((len(again), n_lev)),
                       np.zeros((len(again), n_lev))]
                sub_tails = _tails_of(tails, again, want)
                _screened_kernel(sub_ptr, sub_idx, sub_qty, c32[take], P, Qt, 0, len(again), m, pnl, pnl32,
                                 float(spec.profit_factor), np.float32(spec.profit_factor), bound[again], weighted,
                                 _vec(ks, np.int64), weight, _vec(targets, np.float64),
                                 int(min(len(again), BLOCKS_PER_THREAD * threads)),
                                 np.empty((n_ins, 0), dtype=np.int16), np.empty(0, dtype=np.float32), 0, *got, sub_redo,
                                 want, *sub_tails)
                done = ~sub_redo
                for o, part in zip((worst, worst_s, var, es), got):
                    o[again[done]] = part[done]
                if want:
                    for o, part in zip(tails, sub_tails):
                        o[again[done]] = part[done]
                redo[again[done]] = False
            rest = np.flatnonzero(redo)
            if len(rest):  # not screenable, or a band of near-ties wider than the buffer: computed directly
                sub_ptr, sub_idx, sub_qty, _ = _subset(indptr, idx, qty, rest)
                sub_tails = _tails_of(tails, rest, want)
                got = _direct((sub_ptr, sub_idx, sub_qty), P, spec, weighted, m, ks, targets, pnl, weight, threads,
                              n_ins, S, want=want, tails=sub_tails)
                worst[rest], worst_s[rest], var[rest], es[rest] = got.worst, got.worst_scenario, got.var, got.es
                if want:
                    for o, part in zip(tails, sub_tails):
                        o[rest] = part
            return TailStats(worst=worst, worst_scenario=worst_s, var=var, es=es)
    return _direct((indptr, idx, qty), P, spec, weighted, m, ks, targets, pnl, weight, threads, n_ins, S,
                   out=(worst, worst_s, var, es), want=want, tails=tails)


def marginals(portfolios, P: np.ndarray, spec: MeasureSpec, stats: TailStats) -> np.ndarray:
    """[nnz, L] Euler marginals of every CSR position from the tail sets in ``stats`` (``_marginal_kernel``)."""
    n_lev = len(spec.levels)
    nnz = len(portfolios.quantity)
    out = np.zeros((nnz, n_lev))
    if nnz == 0 or len(portfolios) == 0:
        return out
    S = P.shape[1]
    pnl = np.ones(S) if spec.pnl_factor is None else _vec(spec.pnl_factor, np.float64)
    weight = np.ones(S) if spec.weight is None else _vec(spec.weight, np.float64)
    _marginal_kernel(_vec(portfolios.indptr, np.int64), _vec(portfolios.instrument_idx, np.int64),
                     np.ascontiguousarray(P, dtype=np.float64), _vec(stats.tail_index, np.int64),
                     _vec(stats.tail_loss, np.float64), _vec(stats.tail_count, np.int64), weight, pnl,
                     float(spec.profit_factor), out)
    return out


def _subset(indptr, idx, qty, rows):
    """(indptr, idx, qty, take) of the CSR rows ``rows`` (in that order); ``take`` indexes the positions."""
    counts = indptr[rows + 1] - indptr[rows]
    sub_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    take = np.repeat(indptr[rows] - sub_ptr[:-1], counts) + np.arange(int(sub_ptr[-1]))
    return sub_ptr, idx[take], qty[take], take


def _direct(csr, P, spec, weighted, m, ks, targets, pnl, weight, threads, n_ins, S, out=None, want=False, tails=None):
    """The unscreened kernel (``_tail_kernel``) over the CSR (indptr, idx, qty); writes into ``out`` if given
    (and, with ``want``, the tail sets into ``tails``)."""
    indptr, idx, qty = csr
    n_port = len(indptr) - 1
    n_lev = len(spec.levels)
    if out is None:
        out = (np.zeros(n_port), np.zeros(n_port, dtype=np.int64), np.zeros((n_port, n_lev)), np.zeros((n_port, n_lev)))
    if tails is None:
        tails = (np.zeros((1, 1), np.int64), np.zeros((1, 1)), np.zeros((1, 1), np.int64))
    worst, worst_s, var, es = out
    tile = int(min(S, max(16, TILE_BYTES // (P.itemsize * max(n_ins, 1)))))
    chunk = int(max(1, min(n_port, STATE_BYTES // (32 * m + 24))))
    stride = int(max(1, min(SAMPLE_STRIDE, S // max(4 * m, 1))))
    sample = np.arange(0, S, stride)
    rank = int(min(len(sample), max(8, math.ceil(SAMPLE_MARGIN * m * len(sample) / S)))) if stride > 1 else 0
    P_sample = np.ascontiguousarray(P[:, sample]) if rank else np.empty((n_ins, 0), dtype=P.dtype)
    pnl_sample = np.ascontiguousarray(pnl[sample]) if rank else np.empty(0)
    for lo in range(0, n_port, chunk):
        hi = min(lo + chunk, n_port)
        n_blocks = int(min(hi - lo, BLOCKS_PER_THREAD * threads))
        _tail_kernel(indptr, idx, qty, P, lo, hi, tile, m, pnl, float(spec.profit_factor), weighted,
                     _vec(ks, np.int64), weight, _vec(targets, np.float64), n_blocks, P_sample, pnl_sample, rank,
                     worst[lo:hi], worst_s[lo:hi], var[lo:hi], es[lo:hi], want, *_tails_of(tails, slice(lo, hi), want))
    return TailStats(worst=worst, worst_scenario=worst_s, var=var, es=es)


def quantize(P: np.ndarray, tile: int, stride: int = 0):
    """(Qt [n_tiles, I, tile] int16, σ [I], M [I], Q_sample [I, ⌈S/stride⌉]): P's rows quantised for the
    screen (``backends.screen``), tile-major so that a tile of all rows is one contiguous block.

    M_i = max_s |P_is| (NaN for a row holding a non-finite value), σ_i = M_i / 32767 and
    Q_is = rint(P_is / σ_i) (computed as P_is·(1/σ_i)); rows that are 0, below ``screen.TINY_ROW`` or
    not finite get σ = 0, Q = 0. ``Q_sample`` holds every stride-th column (none when stride is 0).
    """
    n_ins, n_s = P.shape
    n_tiles = -(-n_s // tile)
    Qt = np.empty((n_tiles, n_ins, tile), dtype=np.int16)
    Q_sample = np.empty((n_ins, len(range(0, n_s, stride)) if stride else 0), dtype=np.int16)
    if P.dtype == np.float32:
        bits, sign, inf_bits, back = np.uint32, np.uint32(0x80000000), 0x7F800000, np.float32
    else:
        bits, sign, inf_bits, back = np.uint64, np.uint64(0x8000000000000000), 0x7FF0000000000000, np.float64
    mbits = np.zeros(n_ins, dtype=bits)
    if n_ins and n_s:
        _row_max_bits(P.view(bits), sign, mbits)
    M = mbits.view(back).astype(np.float64)
    M[mbits >= inf_bits] = np.nan
    ok = M >= screen.TINY_ROW  # False for NaN
    scale = np.where(ok, M / screen.QMAX, 0.0)
    with np.errstate(divide="ignore"):
        r = np.where(ok, 1.0 / np.where(ok, scale, 1.0), 0.0)
    if n_ins and n_s:
        _quantize_kernel(P, r, Qt, max(stride, 1), Q_sample)
    return Qt, scale, M, Q_sample


#: float32 unit roundoff and the spacing of its subnormals (the absolute error of underflow)
_U32 = 2.0**-24
_ETA32 = 2.0**-149


def _as_float32(P) -> np.ndarray:
    """P rounded to a C-contiguous float32 array; refuses values beyond float32's range."""
    P = np.asarray(P)
    if P.dtype != np.float32:
        P64 = np.asarray(P, dtype=np.float64)
        big = np.abs(P64[np.isfinite(P64)]).max(initial=0.0)
        if big > float(np.finfo(np.float32).max):
            raise ValueError(f"|P| reaches {big:.3g}, beyond float32's range: use float64 storage")
        P = P64.astype(np.float32)
    return np.ascontiguousarray(P)


def float32_error_bound(portfolios, P: np.ndarray, spec: MeasureSpec) -> np.ndarray:
    """[n_portfolios] bound on |r32 − r64| for worst, every VaR and every ES of ``tail_stats(..., float32=True)``.

    With u = 2⁻²⁴ = eps32/2, F = max_s |pnl_factor_s| · max(1, profit_factor) and
    B_p = Σ_i |q_i| · max_s |P_is| over the portfolio's positions:

        |r32 − r64| ≤ F · (eps32 · B_p + 2⁻¹⁴⁹ · Σ_i |q_i|)

    (docs/benchmarks.md derives it: rounding P to float32 moves every scenario loss by at most
    F·(u·B_p + 2⁻¹⁵⁰·Σ|q|); worst, VaR and the equal-weight ES are 1-Lipschitz in the sup norm of
    the losses; the float64 arithmetic of both runs adds under u·B_p·F while positions per
    portfolio plus the tail count stay below 2²⁶.)
    """
    P = np.asarray(P)
    P64 = np.asarray(P, dtype=np.float64)
    rowmax = np.abs(P64).max(axis=1) if P64.shape[1] else np.zeros(P64.shape[0])
    if P.dtype == np.float32:  # given the rounded P: |P64| ≤ |P32| / (1 − u) bounds the original's magnitude
        rowmax = rowmax / (1.0 - _U32)
    idx = np.asarray(portfolios.instrument_idx, dtype=np.int64)
    aq = np.abs(np.asarray(portfolios.quantity, dtype=np.float64))
    indptr = np.asarray(portfolios.indptr, dtype=np.int64)
    seg = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    B = np.bincount(seg, weights=aq * rowmax[idx], minlength=len(indptr) - 1)
    Q = np.bincount(seg, weights=aq, minlength=len(indptr) - 1)
    pnl = 1.0
    if spec.pnl_factor is not None:
        pnl = float(np.abs(np.asarray(spec.pnl_factor, dtype=np.float64)).max(initial=0.0))
    F = pnl * max(1.0, abs(float(spec.profit_factor)))
    return F * (2.0 * _U32 * B + _ETA32 * Q)


def threads() -> int:
    """Numba worker threads in use (NUMBA_NUM_THREADS, default: all cores)."""
    return numba.get_num_threads() if numba is not None else int(os.cpu_count() or 1)
