// Revaluation kernels of the gpurisk GPU backend (loaded by CuPy's RawModule).
//
// They reproduce gpurisk/pricing.py (contract_values, shocked_vol, black76) in
// float64. The normal CDF follows SciPy's ndtr (erf near zero, erfc in the
// tails). Compile with --fmad=false so products and sums round as on the CPU.
//
// Layouts (row-major): price_shock, vol_shock [U, S] (the host uploads the
// scenario set's [S, U] arrays transposed, so that neighbouring threads, which
// share an instrument and take consecutive scenarios, read consecutive
// addresses); out [I, S] P&L per contract.
// Codes: kind SPOT=0 FUTURE=1 PERPETUAL=2 OPTION=3; settlement LINEAR=0 INVERSE=1;
// option_type +1 call, -1 put; vol_mode RELATIVE=0 ABSOLUTE=1 TERM=2.

#define GR_SPOT 0
#define GR_OPTION 3
#define GR_INVERSE 1
#define GR_VOL_ABSOLUTE 1
#define GR_VOL_TERM 2
#define GR_DAYS_PER_YEAR 365.0

// np.maximum: NaN if either argument is NaN (fmax would return the other one).
__device__ __forceinline__ double gr_max(double a, double b)
{
    return (a != a || b != b) ? a + b : fmax(a, b);
}

__device__ __forceinline__ double gr_ndtr(double a)
{
    const double SQRT1_2 = 0.7071067811865476;
    double x = a * SQRT1_2;
    double z = fabs(x);
    if (z < SQRT1_2) {
        return 0.5 + 0.5 * erf(x);
    }
    double y = 0.5 * erfc(z);
    return x > 0.0 ? 1.0 - y : y;
}

// Undiscounted Black-76 per unit of underlying; intrinsic value when sigma*sqrt(T) <= 0.
__device__ __forceinline__ double gr_black76(double F, double K, double T, double sigma, double w)
{
    double sig_t = sigma * sqrt(gr_max(T, 0.0));
    if (!(sig_t > 0.0)) {
        return gr_max(w * (F - K), 0.0);
    }
    double sF = F > 0.0 ? F : 1.0;
    double sK = K > 0.0 ? K : 1.0;
    double d1 = (log(sF / sK) + 0.5 * sig_t * sig_t) / sig_t;
    double d2 = d1 - sig_t;
    return w * (F * gr_ndtr(w * d1) - K * gr_ndtr(w * d2));
}

// base [I]: value per contract at the snapshot (options: premium; spot: cs*F; futures: 0).
extern "C" __global__ void instrument_base(
    const long long n_ins,
    const signed char* __restrict__ kind,
    const signed char* __restrict__ settlement,
    const signed char* __restrict__ option_type,
    const double* __restrict__ cs,
    const double* __restrict__ fwd,
    const double* __restrict__ strike,
    const double* __restrict__ ttm,
    const double* __restrict__ vol,
    const int coin,
    double* __restrict__ base)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n_ins;
         i += (long long)gridDim.x * blockDim.x) {
        double b = 0.0;
        if (kind[i] == GR_OPTION) {
            double v = gr_black76(fwd[i], strike[i], ttm[i], vol[i], (double)option_type[i]);
            b = (coin && settlement[i] == GR_INVERSE) ? cs[i] * v / fwd[i] : cs[i] * v;
        } else if (kind[i] == GR_SPOT) {
            b = cs[i] * fwd[i];
        }
        base[i] = b;
    }
}

// out [I, S] = scenario value - base value, per contract, one thread per (i, s).
extern "C" __global__ void revalue_pnl(
    const long long n_ins,
    const int n_s,
    const signed char* __restrict__ kind,
    const signed char* __restrict__ settlement,
    const signed char* __restrict__ option_type,
    const int* __restrict__ uidx,
    const double* __restrict__ cs,
    const double* __restrict__ fwd,
    const double* __restrict__ strike,
    const double* __restrict__ ttm,
    const double* __restrict__ vol,
    const double* __restrict__ price_shock,
    const double* __restrict__ vol_shock,
    const signed char* __restrict__ vol_mode,
    const double horizon_years,
    const int coin,
    const double ref_days,
    const double p_short,
    const double p_long,
    const double min_vol_up,
    const double vol_floor,
    const double min_dte,
    const double* __restrict__ base,
    double* __restrict__ out)
{
    const long long total = n_ins * (long long)n_s;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long i = e / n_s;
        const int s = (int)(e - i * n_s);
        const int u = uidx[i];
        const double sh = price_shock[(long long)u * n_s + s];
        const double c = cs[i];
        const double F = fwd[i];
        const bool inv = settlement[i] == GR_INVERSE;
        const int k = kind[i];
        double r;
        if (k == GR_OPTION) {
            const double sig0 = vol[i];
            const double T0 = ttm[i];
            const double T1 = gr_max(T0 - horizon_years, 0.0);
            const double v = vol_shock[(long long)u * n_s + s];
            const int mode = vol_mode[s];
            double sig1;
            if (mode == GR_VOL_ABSOLUTE) {
                sig1 = sig0 + v;
            } else if (mode == GR_VOL_TERM) {
                const double dte = gr_max(T0 * GR_DAYS_PER_YEAR, min_dte);
                const double p = dte < ref_days ? p_short : p_long;
                sig1 = sig0 * (1.0 + v * pow(ref_days / dte, p));
                if (v > 0.0) {
                    sig1 = gr_max(sig1, min_vol_up);
                }
            } else {
                sig1 = sig0 * (1.0 + v);
            }
            sig1 = gr_max(sig1, vol_floor);
            const double F1 = F * (1.0 + sh);
            const double b1 = gr_black76(F1, strike[i], T1, sig1, (double)option_type[i]);
            r = ((coin && inv) ? c * b1 / F1 : c * b1) - base[i];
        } else {
            double d1p;
            if (inv) {
                d1p = coin ? c / F * sh / (1.0 + sh) : c * sh;
            } else {
                d1p = c * F * sh;
            }
            r = (k == GR_SPOT) ? (base[i] + d1p) - base[i] : d1p;
        }
        out[e] = r;
    }
}
