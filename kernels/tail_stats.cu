// Fused portfolio aggregation + tail reduction of the gpurisk GPU backend: the exact int16 screen.
//
// quantize_rows (one block per row of P, grid-stride): M_i = max_s |P_is| (from the bit patterns, so
//   a NaN or ±inf is seen), σ_i = M_i / 32767 and Q_is = rint(P_is · (1/σ_i)) as int16; a row that is
//   0, below GR_TINY_ROW or not finite gets σ = 0 and Q = 0. M and σ go to the host, which forms the
//   per-portfolio bound b (gpurisk/backends/screen.py) and the float32 coefficients c_j = fl32(q_j·σ).
//
// tail_stats (one block of GR_TPB threads per portfolio, grid-stride over the portfolio list):
//   1. screened losses y_s = g(Σ_j c_j·Q[i_j, s]) in float32 (2 bytes of Q per position-scenario
//      instead of 8 of P), into shared memory (or a per-block global row when S is large);
//      |y_s − x_s| ≤ b for the float64 loss x_s the reference computes;
//   2. an MSB-first radix select (4 passes of 8 bits over the order-preserving uint32 key of y;
//      per-warp histograms, lanes with the same digit combined by __match_any_sync so a hot bin
//      costs one shared atomic per warp) finds y_(m), the m-th largest screened loss;
//   3. candidates: every scenario with y_s ≥ θ = y_(m) − 2b (they include the whole true top m);
//      their exact losses x are computed from P in float64 with the reference's products and sums
//      (sequential over positions, no FMA: compile with --fmad=false), then bitonic-sorted by
//      (x descending, scenario ascending), the reference's stable order;
//   4. the sorted candidates with x ≥ y_(m) − b rank above every scenario left out (those have
//      x < y_(m) − b), so that prefix is exactly the start of the reference's sorted order: one
//      thread reads worst (the first), and VaR / ES for every level from it with the reference's
//      sequential sums (one selection for all levels);
//   5. probability weights: m starts at the host's guess; if a level's target weight is not reached
//      within the exact prefix, m grows fourfold and steps 2-4 repeat (at m ≥ S every scenario is a
//      candidate), so there is no candidate limit.
//   6. attribution (want_tail): the tail set of every level is the start of that sorted prefix; its
//      scenarios and exact losses go to tail_s / tail_x [P, tail_cap] (rank order: loss descending,
//      then scenario ascending, the reference's tie rule) and each level's count to tail_n [P, L].
//   A portfolio the screen may not be used for (b not finite: see screen.py) takes every scenario as
//   a candidate. A portfolio with no positions has zero loss everywhere. When a portfolio's
//   candidates do not fit the block's shared buffer, the first launch (spill_pass 0) appends it to
//   the spill list and a second launch (spill_pass 1, fewer blocks) redoes the listed portfolios with
//   per-block global buffers of next_pow2(S) entries.
//
// status[0] collects bits (atomicOr); the host raises on any of them:
//   2  the exact prefix was shorter than the largest tail count (the screen bound did not hold);
//   4  an exact loss was NaN (such a portfolio's outputs are left unwritten);
//   8  a spilled portfolio's candidates exceeded the global buffer (cannot happen: cap >= S).
//
// tail_marginals (one thread per CSR position, grid-stride): the Euler marginal of position j at each
//   level, Σ_{r<n_l} w·g·P[i_j, s_r] / Σ_{r<n_l} w over its portfolio's tail entries (s_r, x_r), with
//   g = −f·pf where x < 0, −f otherwise, 0 where pf = 0 and x = 0 (gpurisk.tail.tail_factor); the same
//   products and sums, in the same order, as the CPU backend's _marginal_kernel.

#ifdef GR_EMULATE
#include "cuda_emu.h"
#else
#define GR_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

#define GR_TPB 256
#define GR_WARPS (GR_TPB / 32)
#define GR_RADIX 256
#define GR_QMAX 32767.0
#define GR_TINY_ROW 9.332636185032189e-302  // 2^-1000, screen.TINY_ROW
#define GR_NEG_INF (-__longlong_as_double(0x7ff0000000000000LL))  // no math.h under NVRTC

// order-preserving key of a float32 (larger float, larger key)
__device__ __forceinline__ unsigned int gr_key32(float y)
{
    const unsigned int u = __float_as_uint(y);
    return (u >> 31) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float gr_unkey32(unsigned int k)
{
    return __uint_as_float((k >> 31) ? (k & 0x7fffffffu) : ~k);
}

// a ranks before b: larger loss first, then the smaller scenario index
__device__ __forceinline__ bool gr_before(double xa, int sa, double xb, int sb)
{
    return xa > xb || (xa == xb && sa < sb);
}

// ---- quantisation of P's rows ----

extern "C" __global__ void __launch_bounds__(GR_TPB) quantize_rows(
    const int n_ins,
    const int n_s,
    const double* __restrict__ P,
    short* __restrict__ Q,
    double* __restrict__ scale,
    double* __restrict__ rowmax)
{
    __shared__ unsigned long long red[GR_TPB];
    const int tid = threadIdx.x;
    for (int i = blockIdx.x; i < n_ins; i += gridDim.x) {
        const double* row = P + (long long)i * n_s;
        unsigned long long mx = 0ULL;
        for (int s = tid; s < n_s; s += GR_TPB) {
            const unsigned long long b = (unsigned long long)__double_as_longlong(row[s]) & 0x7fffffffffffffffULL;
            mx = b > mx ? b : mx;
        }
        red[tid] = mx;
        __syncthreads();
        for (int w = GR_TPB / 2; w > 0; w >>= 1) {
            if (tid < w) {
                red[tid] = red[tid + w] > red[tid] ? red[tid + w] : red[tid];
            }
            __syncthreads();
        }
        const unsigned long long mb = red[0];
        __syncthreads();  // red is reused by the next row
        const bool finite = mb < 0x7ff0000000000000ULL;
        const double M = __longlong_as_double((long long)mb);
        const bool ok = finite && M >= GR_TINY_ROW;
        const double sc = ok ? M / GR_QMAX : 0.0;
        const double r = ok ? 1.0 / sc : 0.0;
        if (tid == 0) {
            scale[i] = sc;
            rowmax[i] = finite ? M : __longlong_as_double(0x7ff8000000000000LL);  // NaN: not finite
        }
        short* q = Q + (long long)i * n_s;
        for (int s = tid; s < n_s; s += GR_TPB) {
            q[s] = ok ? (short)__double2int_rn(row[s] * r) : (short)0;
        }
    }
}

// ---- block-wide helpers (every thread of the block calls them) ----

// Key of the m-th largest of y[0..n) (1 <= m <= n): 4 passes of 8 bits.
__device__ unsigned int gr_select32(const float* y, int n, int m, unsigned int* hist, unsigned int* sh_word)
{
    static_assert(GR_RADIX == GR_TPB, "one digit per thread");
    __shared__ unsigned int wsum[GR_WARPS];
    __shared__ int sh_left;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    unsigned int prefix = 0u, mask = 0u;
    int left = m;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < GR_WARPS * GR_RADIX; b += GR_TPB) {
            hist[b] = 0u;
        }
        __syncthreads();
        for (int base = 0; base < n; base += GR_TPB) {  // block-uniform trip count: the warp stays converged
            const int s = base + tid;
            unsigned int digit = GR_RADIX;  // lanes with nothing to count
            if (s < n) {
                const unsigned int key = gr_key32(y[s]);
                if ((key & mask) == prefix) {
                    digit = (key >> shift) & 0xFFu;
                }
            }
            const unsigned int peers = __match_any_sync(0xffffffffu, digit);
            if (digit < GR_RADIX && (peers & ((1u << lane) - 1u)) == 0u) {  // the lowest lane of its group
                atomicAdd(&hist[warp * GR_RADIX + digit], (unsigned int)__popc(peers));
            }
        }
        __syncthreads();
        {
            // thread t holds digit 255 - t; an inclusive scan gives the count of keys with digit >= 255 - t
            const unsigned int d = GR_RADIX - 1 - tid;
            unsigned int cnt = 0u;
            for (int w = 0; w < GR_WARPS; ++w) {
                cnt += hist[w * GR_RADIX + d];
            }
            unsigned int v = cnt;
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned int u = __shfl_up_sync(0xffffffffu, v, o);
                if (lane >= o) {
                    v += u;
                }
            }
            if (lane == 31) {
                wsum[warp] = v;
            }
            __syncthreads();
            int incl = (int)v;
            for (int w = 0; w < warp; ++w) {
                incl += (int)wsum[w];
            }
            const int excl = incl - (int)cnt;
            if (excl < left && left <= incl) {  // exactly one thread
                *sh_word = prefix | (d << shift);
                sh_left = left - excl;
            }
        }
        __syncthreads();
        prefix = *sh_word;
        left = sh_left;
        mask |= 0xFFu << shift;
        __syncthreads();
    }
    return prefix;
}

// Bitonic sort of (x, s) over n2 entries (a power of two), best first.
__device__ void gr_sort(double* cx, int* cs, int n2)
{
    const int tid = threadIdx.x;
    for (int k2 = 2; k2 <= n2; k2 <<= 1) {
        for (int jj = k2 >> 1; jj > 0; jj >>= 1) {
            for (int r = tid; r < n2; r += GR_TPB) {
                const int o = r ^ jj;
                if (o > r) {
                    const bool ascending_block = (r & k2) == 0;  // this half ends best-first
                    const bool swap = ascending_block ? gr_before(cx[o], cs[o], cx[r], cs[r])
                                                      : gr_before(cx[r], cs[r], cx[o], cs[o]);
                    if (swap) {
                        const double tx = cx[r];
                        const int ts = cs[r];
                        cx[r] = cx[o];
                        cs[r] = cs[o];
                        cx[o] = tx;
                        cs[o] = ts;
                    }
                }
            }
            __syncthreads();
        }
    }
}

// Sum over the block of one int per thread (every thread calls it; the result is block-uniform).
__device__ int gr_block_sum_int(int v, int* sh_acc)
{
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, o);
    }
    if (threadIdx.x == 0) {
        *sh_acc = 0;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(sh_acc, v);
    }
    __syncthreads();
    const int total = *sh_acc;
    __syncthreads();
    return total;
}

// ---- the tail kernel ----

extern "C" __global__ void __launch_bounds__(GR_TPB) tail_stats(
    const int n_items,                      // portfolios to process: all (spill_pass 0) or the spill list's length
    const int n_s,
    const long long* __restrict__ indptr,
    const int* __restrict__ idx,
    const double* __restrict__ qty,
    const float* __restrict__ coef,         // [nnz] fl32(q_j · σ_{i_j})
    const double* __restrict__ P,           // [I, S]
    const short* __restrict__ Q,            // [I, S]
    const double* __restrict__ pnl_factor,  // [S]
    const float* __restrict__ pnl32,        // [S] fl32(pnl_factor)
    const double profit_factor,
    const float pf32,
    const double* __restrict__ bound,       // [P] b per portfolio; not finite: no screen
    const int n_lev,
    const long long* __restrict__ ks,       // [L] tail counts (equal weights)
    const int weighted,
    const double* __restrict__ weight,      // [S]
    const double* __restrict__ targets,     // [L] tail weights (probability weights)
    const int m_first,                      // m: the largest k (equal weights) or the first guess (weighted)
    const int spill_pass,
    int* __restrict__ spill,                // [P + 1]: spill[0] = count, then the portfolio numbers
    const int cand_cap,                     // candidate entries per block buffer (a power of two)
    const int y_in_shared,
    float* __restrict__ y_scratch,          // [grid, S] when !y_in_shared
    double* __restrict__ cand_x_g,          // [grid, cand_cap] when spill_pass
    int* __restrict__ cand_s_g,
    double* __restrict__ worst,
    long long* __restrict__ worst_s,
    double* __restrict__ var,
    double* __restrict__ es,
    int* __restrict__ status,
    const int want_tail,                    // attribution: also write the tail sets below
    const int tail_cap,                     // entries per portfolio row of tail_s / tail_x
    int* __restrict__ tail_s,               // [P, tail_cap] when want_tail
    double* __restrict__ tail_x,            // [P, tail_cap]
    int* __restrict__ tail_n)               // [P, L]
{
    GR_DYNAMIC_SHARED(double, smem);
    __shared__ unsigned int hist[GR_WARPS * GR_RADIX];
    __shared__ unsigned int sh_word;
    __shared__ int sh_count;
    __shared__ int sh_retry;
    __shared__ int sh_tail;

    const int tid = threadIdx.x, lane = tid & 31;
    double* cand_x = spill_pass ? cand_x_g + (long long)blockIdx.x * cand_cap : smem;
    int* cand_s = spill_pass ? cand_s_g + (long long)blockIdx.x * cand_cap : (int*)(smem + cand_cap);
    float* y = y_in_shared ? (float*)(smem + (spill_pass ? 0 : cand_cap) + (spill_pass ? 0 : (cand_cap + 1) / 2))
                           : y_scratch + (long long)blockIdx.x * n_s;

    for (int it = blockIdx.x; it < n_items; it += gridDim.x) {
        const int p = spill_pass ? spill[1 + it] : it;
        const long long j0 = indptr[p], j1 = indptr[p + 1];
        if (j0 == j1) {  // no positions: zero loss in every scenario
            if (tid == 0) {
                worst[p] = 0.0;
                worst_s[p] = 0;
                for (int lv = 0; lv < n_lev; ++lv) {
                    var[(long long)p * n_lev + lv] = 0.0;
                    es[(long long)p * n_lev + lv] = 0.0;
                }
                if (want_tail) {  // every loss is 0: the tail is the lowest scenario indices
                    int* tn = tail_n + (long long)p * n_lev;
                    int r = 0;
                    if (!weighted) {
                        for (int lv = 0; lv < n_lev; ++lv) {
                            tn[lv] = (int)ks[lv];
                            r = tn[lv] > r ? tn[lv] : r;
                        }
                    } else {
                        double cw = 0.0;
                        int done = 0;
                        for (int lv = 0; lv < n_lev; ++lv) {
                            tn[lv] = -1;
                        }
                        while (done < n_lev && r < n_s && r < tail_cap) {
                            cw += weight[r];
                            ++r;
                            for (int lv = 0; lv < n_lev; ++lv) {
                                if (tn[lv] < 0 && cw >= targets[lv]) {
                                    tn[lv] = r;
                                    ++done;
                                }
                            }
                        }
                        for (int lv = 0; lv < n_lev; ++lv) {
                            tn[lv] = tn[lv] < 0 ? r : tn[lv];
                        }
                    }
                    r = r < tail_cap ? r : tail_cap;
                    for (int t = 0; t < r; ++t) {
                        tail_s[(long long)p * tail_cap + t] = t;
                        tail_x[(long long)p * tail_cap + t] = 0.0;
                    }
                }
            }
            continue;
        }
        const double b = bound[p];
        const bool screened = b >= 0.0 && b <= 1.7976931348623157e308;

        // 1. screened losses
        if (screened) {
            for (int s = tid; s < n_s; s += GR_TPB) {
                float acc = 0.0f;
                for (long long j = j0; j < j1; ++j) {
                    acc = acc + coef[j] * (float)Q[(long long)idx[j] * n_s + s];
                }
                const float v = acc * pnl32[s];
                y[s] = -v * (v > 0.0f ? pf32 : 1.0f) + 0.0f;
            }
        }
        __syncthreads();

        int m = m_first < n_s ? m_first : n_s;
        for (;;) {
            // 2. the m-th largest screened loss and the candidate threshold
            double cut = GR_NEG_INF, keep = GR_NEG_INF;  // y >= cut: candidate; x >= keep: exact prefix
            if (screened && m < n_s) {
                const float ym = gr_unkey32(gr_select32(y, n_s, m, hist, &sh_word));
                cut = (double)ym - 2.0 * b;
                keep = (double)ym - b;
            }
            // 3. candidates
            int mine = 0;
            for (int s = tid; s < n_s; s += GR_TPB) {
                mine += !screened || (double)y[s] >= cut;
            }
            const int c = gr_block_sum_int(mine, &sh_count);
            int n2 = 1;
            while (n2 < c) {
                n2 <<= 1;
            }
            if (n2 > cand_cap) {
                if (!spill_pass) {  // redone by the second launch with global buffers
                    if (tid == 0) {
                        spill[1 + atomicAdd(&spill[0], 1)] = p;
                    }
                    break;
                }
                if (tid == 0) {
                    atomicOr(status, 8);
                }
                break;
            }
            if (tid == 0) {
                sh_count = 0;
            }
            __syncthreads();
            for (int base = 0; base < n_s; base += GR_TPB) {
                const int s = base + tid;
                const bool in = s < n_s && (!screened || (double)y[s] >= cut);
                const unsigned int bal = __ballot_sync(0xffffffffu, in);
                int first = 0;
                if (lane == 0 && bal) {
                    first = atomicAdd(&sh_count, __popc(bal));
                }
                first = __shfl_sync(0xffffffffu, first, 0);
                if (in) {
                    cand_s[first + __popc(bal & ((1u << lane) - 1u))] = s;
                }
            }
            __syncthreads();
            int nan_seen = 0;
            for (int r = tid; r < n2; r += GR_TPB) {
                if (r < c) {
                    const int s = cand_s[r];
                    double acc = 0.0;
                    for (long long j = j0; j < j1; ++j) {
                        acc = acc + qty[j] * P[(long long)idx[j] * n_s + s];
                    }
                    const double v = acc * pnl_factor[s];
                    const double x = -v * (v > 0.0 ? profit_factor : 1.0) + 0.0;  // + 0.0: -0 becomes +0
                    nan_seen |= x != x;
                    cand_x[r] = x;
                } else {
                    cand_x[r] = GR_NEG_INF;
                    cand_s[r] = 0x7fffffff;
                }
            }
            if (__syncthreads_or(nan_seen)) {
                if (tid == 0) {
                    atomicOr(status, 4);
                }
                break;
            }
            gr_sort(cand_x, cand_s, n2);
            // 4. the exact prefix: sorted candidates with x >= keep
            int above = 0;
            for (int r = tid; r < c; r += GR_TPB) {
                above += cand_x[r] >= keep;
            }
            const int trusted = gr_block_sum_int(above, &sh_count);
            if (tid == 0) {
                sh_retry = 0;
                sh_tail = 0;
                worst[p] = cand_x[0];
                worst_s[p] = cand_s[0];
                if (!weighted) {
                    long long kmax = 0;
                    for (int lv = 0; lv < n_lev; ++lv) {
                        kmax = ks[lv] > kmax ? ks[lv] : kmax;
                    }
                    if (kmax > trusted) {
                        atomicOr(status, 2);
                    } else {
                        if (want_tail) {
                            for (int lv = 0; lv < n_lev; ++lv) {
                                tail_n[(long long)p * n_lev + lv] = (int)ks[lv];
                            }
                            sh_tail = (int)kmax;
                        }
                        double acc = 0.0;
                        for (long long r = 0; r < kmax; ++r) {
                            acc += cand_x[r];
                            for (int lv = 0; lv < n_lev; ++lv) {
                                if (ks[lv] == r + 1) {
                                    var[(long long)p * n_lev + lv] = cand_x[r];
                                    es[(long long)p * n_lev + lv] = acc / (double)(r + 1);
                                }
                            }
                        }
                    }
                } else {
                    int done = 0;
                    double cw = 0.0, cwx = 0.0;
                    for (int r = 0; r < trusted && done < n_lev; ++r) {
                        const double wr = weight[cand_s[r]];
                        cw += wr;
                        cwx += wr * cand_x[r];
                        done = 0;
                        for (int lv = 0; lv < n_lev; ++lv) {
                            double* vp = &var[(long long)p * n_lev + lv];
                            if (cw >= targets[lv] && *vp != *vp) {  // first reached here (var was NaN-filled)
                                *vp = cand_x[r];
                                es[(long long)p * n_lev + lv] = cwx / cw;
                                if (want_tail) {
                                    tail_n[(long long)p * n_lev + lv] = r + 1;
                                    sh_tail = r + 1 > sh_tail ? r + 1 : sh_tail;
                                }
                            }
                            done += *vp == *vp;
                        }
                    }
                    if (done < n_lev) {
                        if (screened && m < n_s) {
                            sh_retry = 1;  // a level's tail reaches past the exact prefix: more candidates
                        } else {           // every scenario was a candidate: clamp as the CPU backend does
                            const int r = c - 1;
                            for (int lv = 0; lv < n_lev; ++lv) {
                                double* vp = &var[(long long)p * n_lev + lv];
                                if (*vp != *vp) {
                                    *vp = cand_x[r];
                                    es[(long long)p * n_lev + lv] = cwx / cw;
                                    if (want_tail) {
                                        tail_n[(long long)p * n_lev + lv] = c < tail_cap ? c : tail_cap;
                                        sh_tail = c;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            __syncthreads();
            if (!sh_retry) {
                if (want_tail) {  // 6. the tail sets: the first entries of the exact sorted prefix
                    const int nt = sh_tail < tail_cap ? sh_tail : tail_cap;
                    for (int r = tid; r < nt; r += GR_TPB) {
                        tail_s[(long long)p * tail_cap + r] = cand_s[r];
                        tail_x[(long long)p * tail_cap + r] = cand_x[r];
                    }
                }
                break;
            }
            m = 4 * m < n_s ? 4 * m : n_s;
        }
        __syncthreads();
    }
}

// ---- Euler marginals of every position from its portfolio's tail set ----

extern "C" __global__ void __launch_bounds__(GR_TPB) tail_marginals(
    const long long nnz,
    const int n_s,
    const int n_lev,
    const int tail_cap,
    const int* __restrict__ pos_port,       // [nnz] the portfolio of each position
    const int* __restrict__ idx,            // [nnz] its row of P
    const double* __restrict__ P,           // [I, S]
    const int* __restrict__ tail_s,         // [P, tail_cap]
    const double* __restrict__ tail_x,      // [P, tail_cap]
    const int* __restrict__ tail_n,         // [P, L]
    const double* __restrict__ weight,      // [S]
    const double* __restrict__ pnl_factor,  // [S]
    const double profit_factor,
    double* __restrict__ out)               // [nnz, L]
{
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < nnz;
         j += (long long)gridDim.x * blockDim.x) {
        const int p = pos_port[j];
        const double* row = P + (long long)idx[j] * n_s;
        const int* ts = tail_s + (long long)p * tail_cap;
        const double* tx = tail_x + (long long)p * tail_cap;
        for (int lv = 0; lv < n_lev; ++lv) {
            int n = tail_n[(long long)p * n_lev + lv];
            n = n < tail_cap ? n : tail_cap;
            double wsum = 0.0;
            for (int r = 0; r < n; ++r) {
                wsum += weight[ts[r]];
            }
            const double inv = wsum > 0.0 ? 1.0 / wsum : 0.0;
            double acc = 0.0;
            for (int r = 0; r < n; ++r) {
                const int s = ts[r];
                const double x = tx[r];
                const double f = pnl_factor[s];
                double g = x < 0.0 ? -f * profit_factor : -f;
                if (profit_factor == 0.0 && x == 0.0) {
                    g = 0.0;
                }
                const double coef = weight[s] * g;
                acc += coef * row[s];
            }
            out[j * n_lev + lv] = acc * inv;
        }
    }
}
