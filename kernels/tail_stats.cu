// Fused portfolio aggregation + tail reduction of the gpurisk GPU backend.
//
// One thread block of GR_TPB threads per portfolio (grid-stride over portfolios):
//   1. the block forms the portfolio's counted losses x[s] = -L'[s] for all S
//      scenarios (L[s] = sum_j q_j * P[i_j, s], coalesced over s) in shared
//      memory, or in a per-block row of global scratch when S is too large;
//   2. worst = max x (smallest scenario index among ties) by a block reduction;
//   3. equal weights: per level, an MSB-first radix select (8 passes of 8 bits,
//      each digit chosen by a block-wide scan of the histogram) on an
//      order-preserving uint64 key of the float64 finds the k-th largest loss
//      (VaR); ES = (sum of losses above it + the remaining count * VaR) / k;
//   4. probability weights: a radix select finds the m-th largest loss (m from
//      the host bounds the tail count); exactly m candidates are gathered into
//      shared memory (every loss above it, then its ties in ascending scenario
//      order, as the reference's stable sort takes them), bitonic-sorted by
//      (loss desc, scenario asc) and scanned for the cumulative weight, as the
//      reference does.
// Nothing of size accounts x scenarios is ever formed. Compile with --fmad=false.
//
// status[0] collects bits (atomicOr); the host raises on any of them:
//   2  a weighted tail's m candidates did not reach a level's target weight
//      (the host's bound did not hold), so the result would be clamped;
//   4  a counted loss was NaN (its key would order it above +inf); such a
//      portfolio's outputs are left unwritten.

#define GR_TPB 256
#define GR_RADIX 256
#define GR_NEG_INF (-__longlong_as_double(0x7ff0000000000000LL))  // no math.h under NVRTC

__device__ __forceinline__ unsigned long long gr_key(double x)
{
    unsigned long long u = (unsigned long long)__double_as_longlong(x);
    return (u >> 63) ? ~u : (u | 0x8000000000000000ULL);
}

__device__ __forceinline__ double gr_unkey(unsigned long long k)
{
    unsigned long long u = (k >> 63) ? (k & 0x7fffffffffffffffULL) : ~k;
    return __longlong_as_double((long long)u);
}

// a ranks before b: larger loss first, then the smaller scenario index
__device__ __forceinline__ bool gr_before(double xa, int sa, double xb, int sb)
{
    return xa > xb || (xa == xb && sa < sb);
}

__device__ double gr_block_sum(double v, double* red)
{
    const int tid = threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (int w = GR_TPB / 2; w > 0; w >>= 1) {
        if (tid < w) {
            red[tid] += red[tid + w];
        }
        __syncthreads();
    }
    double out = red[0];
    __syncthreads();
    return out;
}

// Key of the k-th largest of x[0..n) (1 <= k <= n); *above = how many keys are strictly larger.
__device__ unsigned long long gr_radix_select(const double* x, int n, long long k, unsigned int* hist,
                                              unsigned long long* sh_prefix, long long* sh_left,
                                              long long* above)
{
    static_assert(GR_RADIX == GR_TPB, "one digit per thread");
    __shared__ unsigned int wsum[GR_TPB / 32];
    const int tid = threadIdx.x;
    unsigned long long prefix = 0ULL, mask = 0ULL;
    long long left = k;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int b = tid; b < GR_RADIX; b += GR_TPB) {
            hist[b] = 0u;
        }
        __syncthreads();
        for (int s = tid; s < n; s += GR_TPB) {
            unsigned long long key = gr_key(x[s]);
            if ((key & mask) == prefix) {
                atomicAdd(&hist[(key >> shift) & 0xFFULL], 1u);
            }
        }
        __syncthreads();
        {
            // parallel digit choice: thread t holds digit 255 - t; inclusive scan = keys with digit >= 255 - t
            const int lane = tid & 31, warp = tid >> 5;
            const unsigned int cnt = hist[GR_RADIX - 1 - tid];
            unsigned int v = cnt;
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned int n = __shfl_up_sync(0xffffffffu, v, o);
                if (lane >= o) {
                    v += n;
                }
            }
            if (lane == 31) {
                wsum[warp] = v;
            }
            __syncthreads();
            long long incl = v;
            for (int w = 0; w < warp; ++w) {
                incl += wsum[w];
            }
            const long long excl = incl - cnt;
            if (excl < left && left <= incl) {  // exactly one thread
                *sh_prefix = prefix | ((unsigned long long)(GR_RADIX - 1 - tid) << shift);
                *sh_left = left - excl;
            }
        }
        __syncthreads();
        prefix = *sh_prefix;
        left = *sh_left;
        mask |= 0xFFULL << shift;
        __syncthreads();
    }
    *above = k - left;
    return prefix;
}

extern "C" __global__ void __launch_bounds__(GR_TPB) tail_stats(
    const int n_port,
    const int n_s,
    const long long* __restrict__ indptr,
    const int* __restrict__ idx,
    const double* __restrict__ qty,
    const double* __restrict__ P,
    const double* __restrict__ pnl_factor,
    const double profit_factor,
    const int n_lev,
    const long long* __restrict__ ks,
    const int weighted,
    const double* __restrict__ weight,
    const double* __restrict__ targets,
    const int m,
    const int cap,
    const int use_shared,
    double* __restrict__ scratch,
    double* __restrict__ worst,
    long long* __restrict__ worst_s,
    double* __restrict__ var,
    double* __restrict__ es,
    int* __restrict__ status)
{
    extern __shared__ double smem[];
    __shared__ unsigned int hist[GR_RADIX];
    __shared__ double red[GR_TPB];
    __shared__ int red_i[GR_TPB];
    __shared__ unsigned long long sh_prefix;
    __shared__ long long sh_left;
    __shared__ int sh_ncand;

    const int tid = threadIdx.x;
    double* x = use_shared ? smem : scratch + (long long)blockIdx.x * n_s;
    double* cand_x = use_shared ? smem + n_s : smem;  // [cap]
    int* cand_s = (int*)(cand_x + cap);               // [cap]

    for (int p = blockIdx.x; p < n_port; p += gridDim.x) {
        const long long j0 = indptr[p], j1 = indptr[p + 1];

        // 1. counted losses; 2. this thread's worst (strided s ascend, so '>' keeps the smallest index)
        double best = GR_NEG_INF;
        int best_s = n_s;
        int nan_seen = 0;
        for (int s = tid; s < n_s; s += GR_TPB) {
            double acc = 0.0;
            for (long long j = j0; j < j1; ++j) {
                acc += qty[j] * P[(long long)idx[j] * n_s + s];
            }
            const double v = acc * pnl_factor[s];
            const double xv = -v * (v > 0.0 ? profit_factor : 1.0) + 0.0;  // + 0.0: -0 becomes +0
            x[s] = xv;
            nan_seen |= xv != xv;
            if (xv > best || best_s == n_s) {
                best = xv;
                best_s = s;
            }
        }
        if (__syncthreads_or(nan_seen)) {  // block-uniform; also a barrier for x
            if (tid == 0) {
                atomicOr(status, 4);
            }
            continue;
        }
        red[tid] = best;
        red_i[tid] = best_s;
        __syncthreads();
        for (int w = GR_TPB / 2; w > 0; w >>= 1) {
            if (tid < w) {
                const double ob = red[tid + w];
                const int os = red_i[tid + w];
                if (os < n_s && (red_i[tid] >= n_s || gr_before(ob, os, red[tid], red_i[tid]))) {
                    red[tid] = ob;
                    red_i[tid] = os;
                }
            }
            __syncthreads();
        }
        if (tid == 0) {
            worst[p] = red[0];
            worst_s[p] = red_i[0];
        }
        __syncthreads();

        if (!weighted) {
            // 3. VaR / ES per level by radix select
            for (int lv = 0; lv < n_lev; ++lv) {
                const long long k = ks[lv];
                long long above = 0;
                const unsigned long long kth = gr_radix_select(x, n_s, k, hist, &sh_prefix, &sh_left, &above);
                const double vk = gr_unkey(kth);
                double part = 0.0;
                for (int s = tid; s < n_s; s += GR_TPB) {
                    if (gr_key(x[s]) > kth) {
                        part += x[s];
                    }
                }
                const double top = gr_block_sum(part, red);
                if (tid == 0) {
                    var[(long long)p * n_lev + lv] = vk;
                    es[(long long)p * n_lev + lv] = (top + (double)(k - above) * vk) / (double)k;
                }
            }
        } else {
            // 4. candidates: the losses above the m-th largest, then its ties in ascending
            //    scenario order until m are held (the reference's stable order); nc == m <= cap
            long long above = 0;
            const unsigned long long thr = gr_radix_select(x, n_s, m, hist, &sh_prefix, &sh_left, &above);
            if (tid == 0) {
                sh_ncand = 0;
            }
            __syncthreads();
            for (int s = tid; s < n_s; s += GR_TPB) {
                if (gr_key(x[s]) > thr) {
                    const int pos = atomicAdd(&sh_ncand, 1);  // < above <= m - 1
                    cand_x[pos] = x[s];
                    cand_s[pos] = s;
                }
            }
            const int need = m - (int)above;  // >= 1
            const int lane = tid & 31, warp = tid >> 5;
            int taken = 0;  // block-uniform
            for (int b0 = 0; b0 < n_s && taken < need; b0 += GR_TPB) {
                const int s = b0 + tid;
                const bool tie = s < n_s && gr_key(x[s]) == thr;
                const unsigned int bal = __ballot_sync(0xffffffffu, tie);
                __syncthreads();  // hist (reused as per-warp counts) is free
                if (lane == 0) {
                    hist[warp] = __popc(bal);
                }
                __syncthreads();
                int before = __popc(bal & ((1u << lane) - 1u)), total = 0;
                for (int w = 0; w < GR_TPB / 32; ++w) {
                    const int c = (int)hist[w];
                    before += w < warp ? c : 0;
                    total += c;
                }
                if (tie && taken + before < need) {
                    cand_x[above + taken + before] = x[s];
                    cand_s[above + taken + before] = s;
                }
                taken += total;
            }
            __syncthreads();
            const int nc = m;
            int n2 = 1;
            while (n2 < nc) {
                n2 <<= 1;
            }
            for (int r = nc + tid; r < n2; r += GR_TPB) {
                cand_x[r] = GR_NEG_INF;
                cand_s[r] = 0x7fffffff;
            }
            __syncthreads();
            for (int k2 = 2; k2 <= n2; k2 <<= 1) {
                for (int jj = k2 >> 1; jj > 0; jj >>= 1) {
                    for (int r = tid; r < n2; r += GR_TPB) {
                        const int o = r ^ jj;
                        if (o > r) {
                            const bool first_half = (r & k2) == 0;
                            const bool swap = first_half ? gr_before(cand_x[o], cand_s[o], cand_x[r], cand_s[r])
                                                         : gr_before(cand_x[r], cand_s[r], cand_x[o], cand_s[o]);
                            if (swap) {
                                const double tx = cand_x[r];
                                const int ts = cand_s[r];
                                cand_x[r] = cand_x[o];
                                cand_s[r] = cand_s[o];
                                cand_x[o] = tx;
                                cand_s[o] = ts;
                            }
                        }
                    }
                    __syncthreads();
                }
            }
            if (tid == 0) {
                for (int lv = 0; lv < n_lev; ++lv) {
                    double cw = 0.0, cwx = 0.0;
                    int r = 0;
                    for (; r < nc; ++r) {
                        const double wr = weight[cand_s[r]];
                        cw += wr;
                        cwx += wr * cand_x[r];
                        if (cw >= targets[lv]) {
                            break;
                        }
                    }
                    if (r == nc) {  // the bound did not hold (rounding): let the host fall back
                        r = nc - 1;
                        if (nc < n_s) {
                            atomicOr(status, 2);
                        }
                    }
                    var[(long long)p * n_lev + lv] = cand_x[r];
                    es[(long long)p * n_lev + lv] = cwx / cw;
                }
            }
            __syncthreads();
        }
    }
}
