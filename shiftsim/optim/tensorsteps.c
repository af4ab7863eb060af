/* Whole optimizer steps over one learner's parameter tensors, on the CPU, split across torch's
 * threads: the kernels that MoMo's compiled step (compile=True, shiftsim.optim.momo.MoMo) takes
 * on a CPU instead of an Inductor-generated one. Built with rowsums.c and rowmath.c by
 * shiftsim.optim._native.
 *
 * The tensors are cut into chunks (chunk c: elements lo[c] .. hi[c] - 1 of tensor tix[c]; the
 * caller cuts every tensor at the same multiples of one chunk length), and each pass over them
 * is one OpenMP loop over the chunks. The library is built with -fopenmp only where torch's own
 * parallel backend is GCC's OpenMP (libgomp), and then loads torch's copy of it (the same
 * soname): these loops run on torch's thread team, whose threads are awake right after torch's
 * own parallel work, instead of competing with them from a second pool. Built without OpenMP
 * the pragmas are ignored and the loops run on the calling thread.
 *
 * Numbers: a chunk's sum is its own (float32 products summed in 16 float32 lanes over blocks
 * of 256 elements, the blocks added into 16 float64 lanes, the lanes added pairwise; float64
 * inputs: float64 throughout), and a tensor's sum adds its chunks' sums in order, in float64:
 * the same bits whatever the number of threads. They are not torch's bits (torch sums in its
 * own order), so this step equals the eager one up to float rounding, as any compiled step does.
 * The elementwise updates are torch's formulas with a fused multiply-add exactly where torch's
 * CPU kernels make one (lerp; add with alpha), no other contraction (-ffp-contract=off).
 */
#include <math.h>
#include <stdint.h>

#define LANES 16
#define BLOCK 256

/* 1 where the library was built with OpenMP (the loops below split across threads), else 0 */
int shiftsim_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define CLAMP_MIN(x, lo) ((x) < (lo) ? (lo) : (x))
#define CLAMP_MAX(x, hi) ((x) > (hi) ? (hi) : (x))

static inline double lanes_sum(double *s)
{
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            s[j] += s[j + w];
    return s[0];
}

/* One chunk of MoMo's first pass: x <- lerp(x, y, w) (torch's lerp_: x + w (y - x) for |w| <
 * 0.5, else y + (w - 1)(y - x), one fused multiply-add), then the sum of the new x's squares
 * (see the top), block by block while the block is in the first-level cache. ACC: the type the
 * products are summed in within a block. */
#define LERP_SQUARES(NAME, T, ACC, FMA)                                                      \
    static double NAME(T *restrict x, const T *restrict y, int64_t n, T w, T wm1, int small) \
    {                                                                                       \
        double lanes[LANES] = {0};                                                          \
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {                                         \
            const int64_t m = n - i0 < BLOCK ? n - i0 : BLOCK;                              \
            T *restrict a = x + i0;                                                         \
            const T *restrict b = y + i0;                                                   \
            if (small)                                                                      \
                for (int64_t e = 0; e < m; e++)                                             \
                    a[e] = FMA(w, b[e] - a[e], a[e]);                                       \
            else                                                                            \
                for (int64_t e = 0; e < m; e++)                                             \
                    a[e] = FMA(wm1, b[e] - a[e], b[e]);                                     \
            ACC part[LANES] = {0};                                                          \
            int64_t e = 0;                                                                  \
            for (; e + LANES <= m; e += LANES)                                              \
                for (int j = 0; j < LANES; j++)                                             \
                    part[j] += (ACC)a[e + j] * (ACC)a[e + j];                               \
            for (; e < m; e++)                                                              \
                part[e % LANES] += (ACC)a[e] * (ACC)a[e];                                   \
            for (int j = 0; j < LANES; j++)                                                 \
                lanes[j] += (double)part[j];                                                \
        }                                                                                   \
        return lanes_sum(lanes);                                                            \
    }

LERP_SQUARES(lerp_squares_f32, float, float, fmaf)
LERP_SQUARES(lerp_squares_f64, double, double, fma)

/* MoMo's step without weight decay, the offsets carried (shiftsim.optim._compiled.momo_step,
 * momo._momo_blocks' only_v path), over n tensors p, g, d (the parameters, their gradients, the
 * first moments) cut into chunks (see the top):
 *   d <- lerp(d, g, w) and sq[t] = |d_t|^2 per tensor (first pass);
 *   loss_avg <- loss_avg beta + f w;  u_t = kept_t beta;
 *   tau = min(max(loss_avg - rho fstar + sum_t u_t, 0) / sum_t sq_t, cap) (0 where the norm is
 *   not positive; a NaN ratio stays NaN);  kept_t <- u_t - tau sq_t;
 *   p <- p - tau d (torch's add with alpha: one fused multiply-add; second pass, the chunks in
 *   reverse order so that it starts on those the first pass left in cache).
 * part: one double per chunk (scratch); nt: the threads. Writes tau. */
#define MOMO_TENSORS(NAME, T, FMA, ABS, SQUARES)                                             \
    void NAME(int nt, int64_t n, T **p, T **g, T **d, int64_t nchunks, const int64_t *tix,   \
              const int64_t *lo, const int64_t *hi, double *part, T *sq, T *kept,           \
              T *loss_avg, const T *f, const T *fstar, double beta_d, double w_d,           \
              double rho_d, double cap_d, T *tau_out)                                       \
    {                                                                                       \
        const T beta = (T)beta_d, w = (T)w_d, wm1 = w - (T)1, rho = (T)rho_d, cap = (T)cap_d; \
        const int small = ABS(w) < (T)0.5;                                                  \
        (void)nt; /* without OpenMP */                                                      \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                        \
        for (int64_t c = 0; c < nchunks; c++)                                               \
            part[c] = SQUARES(d[tix[c]] + lo[c], g[tix[c]] + lo[c], hi[c] - lo[c], w, wm1,   \
                              small);                                                       \
        T norm = 0, usum = 0;                                                               \
        int64_t c = 0;                                                                      \
        for (int64_t t = 0; t < n; t++) {                                                   \
            double s = 0.0;                                                                 \
            for (; c < nchunks && tix[c] == t; c++)                                         \
                s += part[c];                                                               \
            sq[t] = (T)s;                                                                   \
            norm += sq[t];                                                                  \
            kept[t] = kept[t] * beta;                                                       \
            usum += kept[t];                                                                \
        }                                                                                   \
        const T la_b = *loss_avg * beta, f_w = *f * w;                                      \
        const T la = la_b + f_w;                                                            \
        *loss_avg = la;                                                                     \
        const T rf = rho * *fstar;                                                          \
        const T gap = la - rf;                                                              \
        const T num = gap + usum;                                                           \
        const int pos = norm > 0;                                                           \
        const T q = CLAMP_MIN(num, (T)0) / (pos ? norm : (T)1);                             \
        const T tau = CLAMP_MAX(pos ? q : (T)0, cap);                                       \
        for (int64_t t = 0; t < n; t++) {                                                   \
            const T tsq = tau * sq[t];                                                      \
            kept[t] = kept[t] - tsq;                                                        \
        }                                                                                   \
        *tau_out = tau;                                                                     \
        const T a = -tau;                                                                   \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                        \
        for (int64_t r = 0; r < nchunks; r++) {                                             \
            const int64_t k = nchunks - 1 - r;                                              \
            T *restrict x = p[tix[k]] + lo[k];                                              \
            const T *restrict y = d[tix[k]] + lo[k];                                        \
            const int64_t m = hi[k] - lo[k];                                                \
            for (int64_t e = 0; e < m; e++)                                                 \
                x[e] = FMA(a, y[e], x[e]);                                                  \
        }                                                                                   \
    }

MOMO_TENSORS(shiftsim_momo_tensors_f32, float, fmaf, fabsf, lerp_squares_f32)
MOMO_TENSORS(shiftsim_momo_tensors_f64, double, fma, fabs, lerp_squares_f64)
