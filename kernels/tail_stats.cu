// Fused portfolio aggregation + tail reduction of the gpurisk GPU backend.
//
// One thread block of GR_TPB threads per portfolio (grid-stride over portfolios):
//   1. the block forms the portfolio's counted losses x[s] = -L'[s] for all S
//      scenarios (L[s] = sum_j q_j * P[i_j, s], coalesced over s) in shared
//      memory, or in a per-block row of global scratch when S is too large;
//   2. worst = max x (smallest scenario index among ties) by a block reduction;
//   3. equal weights: per level, an MSB-first radix select (8 passes of 8 bits)
//      on an order-preserving uint64 key of the float64 finds the k-th largest
//      loss (VaR); ES = (sum of losses above it + the remaining count * VaR) / k;
//   4. probability weights: a radix select finds the m-th largest loss (m from
//      the host bounds the tail count), the candidates >= it are gathered into
//      shared memory, bitonic-sorted by (loss desc, scenario asc) and scanned
//      for the cumulative weight, as the reference does.
// Nothing of size accounts x scenarios is ever formed. Compile with --fmad=false.
//
// status[0] is set to 1 when a weighted portfolio has more tied candidates than
// the candidate buffer holds; the host then reports a failure (and the engine
// falls back to the CPU).

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
        if (tid == 0) {
            long long l = left;
            int d = GR_RADIX - 1;
            for (; d > 0; --d) {
                long long c = (long long)hist[d];
                if (l <= c) {
                    break;
                }
                l -= c;
            }
            *sh_prefix = prefix | ((unsigned long long)d << shift);
            *sh_left = l;
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
        for (int s = tid; s < n_s; s += GR_TPB) {
            double acc = 0.0;
            for (long long j = j0; j < j1; ++j) {
                acc += qty[j] * P[(long long)idx[j] * n_s + s];
            }
            const double v = acc * pnl_factor[s];
            const double xv = -v * (v > 0.0 ? profit_factor : 1.0) + 0.0;  // + 0.0: -0 becomes +0
            x[s] = xv;
            if (xv > best || best_s == n_s) {
                best = xv;
                best_s = s;
            }
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
            // 4. candidates >= the m-th largest, sorted, then the cumulative weight scan
            long long above = 0;
            const unsigned long long thr = gr_radix_select(x, n_s, m, hist, &sh_prefix, &sh_left, &above);
            if (tid == 0) {
                sh_ncand = 0;
            }
            __syncthreads();
            for (int s = tid; s < n_s; s += GR_TPB) {
                if (gr_key(x[s]) >= thr) {
                    const int pos = atomicAdd(&sh_ncand, 1);
                    if (pos < cap) {
                        cand_x[pos] = x[s];
                        cand_s[pos] = s;
                    }
                }
            }
            __syncthreads();
            const int nc = sh_ncand;
            if (nc > cap) {
                if (tid == 0) {
                    atomicExch(status, 1);
                }
                __syncthreads();
                continue;
            }
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
                    if (r == nc) {
                        r = nc - 1;
                    }
                    var[(long long)p * n_lev + lv] = cand_x[r];
                    es[(long long)p * n_lev + lv] = cwx / cw;
                }
            }
            __syncthreads();
        }
    }
}
