/* Whole optimizer steps over one learner's parameter tensors, on the CPU, split across torch's
 * threads: the kernels that the compiled steps (compile=True or "auto") of MoMo, TAM, AdaTAM(W),
 * AM-SGD, MoMo-Adam and AM-AdamW take on a CPU instead of Inductor-generated ones (MoMo's whole
 * step here; two passes for the others: TAM's, AdaTAM(W)'s and AM-SGD's as one call with their
 * numbers in between from rowmath.c, and so AM-AdamW's, MoMo-Adam's as two calls around
 * torch's sum of its per-tensor gamma); MoMo-Adam's and AM-AdamW's passes over a fleet's rows (MOMO_ADAM_ROWS, AMADAMW_ROWS: member by member; their numbers in between in
 * rowmath.c); and the switch that flushes subnormals on torch's threads. Built with rowsums.c and rowmath.c by shiftsim.optim._native.
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
 * own order), so a step equals the eager one up to float rounding, as any compiled step does.
 * The elementwise work is the eager kernels' torch operations, one expression each, with a fused
 * multiply-add exactly where torch's CPU kernels make one (lerp, add with alpha, addcmul) and no
 * other contraction (-ffp-contract=off): torch's bits where its kernels fuse those (x86-64 with
 * AVX2 or AVX-512, tested), else equal up to float rounding.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define LANES 16
#define BLOCK 256

#ifdef _OPENMP
#include <omp.h>
#endif

/* The first (side 0) or last-plus-one (side 1) of the calling thread's chunks of n, inside a
 * parallel region: each thread takes the same chunks in every pass of a step, so that a pass
 * that updates what an earlier pass read starts on chunks its own core touched last (dealt out
 * otherwise, TAM's step measured about 1.3x slower; see _native). */
static inline int64_t chunk_bound(int64_t n, int side)
{
#ifdef _OPENMP
    return n * (omp_get_thread_num() + side) / omp_get_num_threads();
#else
    return side ? n : 0;
#endif
}

/* A loop over the calling thread's chunks c, each thread of torch's team (nt threads) taking
 * its own, forward or backward (without OpenMP: all of them, on the calling thread). */
#define EACH_CHUNK(nt, n, c)                                                                \
    (void)(nt);                                                                             \
    _Pragma("omp parallel num_threads(nt)")                                                 \
    for (int64_t c = chunk_bound(n, 0), c##_end = chunk_bound(n, 1); c < c##_end; c++)
#define EACH_CHUNK_BACKWARD(nt, n, c)                                                       \
    (void)(nt);                                                                             \
    _Pragma("omp parallel num_threads(nt)")                                                 \
    for (int64_t c = chunk_bound(n, 1) - 1, c##_first = chunk_bound(n, 0); c >= c##_first; c--)

/* 1 where the library was built with OpenMP (the loops below split across threads), else 0 */
int shiftsim_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Subnormal numbers flushed to zero: as results (flush-to-zero) and as inputs
 * (denormals-are-zero) on x86-64 (MXCSR bits 15 and 6), as both on ARM64 (FPCR.FZ). */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define HAVE_FLUSH 1
#define FLUSH_BITS 0x8040u
static inline int get_flush(void) { return (_mm_getcsr() & FLUSH_BITS) == FLUSH_BITS; }
static inline void set_flush(int on)
{
    const unsigned m = _mm_getcsr();
    _mm_setcsr(on ? m | FLUSH_BITS : m & ~FLUSH_BITS);
}
#elif defined(__aarch64__)
#define HAVE_FLUSH 1
#define FPCR_FZ (1ull << 24)
static inline uint64_t get_fpcr(void)
{
    uint64_t v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v));
    return v;
}
static inline int get_flush(void) { return (get_fpcr() & FPCR_FZ) != 0; }
static inline void set_flush(int on)
{
    const uint64_t v = on ? get_fpcr() | FPCR_FZ : get_fpcr() & ~FPCR_FZ;
    __asm__ volatile("msr fpcr, %0" : : "r"(v));
}
#endif

/* The calling thread alone: flush = 1 flushes subnormals to zero, 0 keeps them, -1 changes
 * nothing; returns the state before (1 flushed, 0 not), or -1 on other processors. */
int shiftsim_thread_denormals(int flush)
{
#ifdef HAVE_FLUSH
    const int before = get_flush();
    if (flush >= 0)
        set_flush(flush);
    return before;
#else
    (void)flush;
    return -1;
#endif
}

/* flush = 1: subnormals flushed to zero on the calling thread and on every thread of the
 * OpenMP team (torch's intra-op threads, where the library shares torch's runtime); 0: IEEE
 * subnormals there again; -1: change nothing. Returns the calling thread's state before (1
 * flushed, 0 not), or -1 on other processors (nothing changed). flush = -2 changes nothing
 * and returns how many threads of the team (the calling thread among them) flush. */
int shiftsim_denormals(int flush)
{
#ifdef HAVE_FLUSH
    if (flush == -2) {
        int count = 0;
        _Pragma("omp parallel reduction(+ : count)") count += get_flush();
        return count;
    }
    const int before = get_flush();
    if (flush >= 0) {
        set_flush(flush);
        _Pragma("omp parallel") set_flush(flush);
    }
    return before;
#else
    (void)flush;
    return -1;
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

typedef float v16f __attribute__((vector_size(16 * sizeof(float))));
typedef double v16d __attribute__((vector_size(16 * sizeof(double))));

/* R (at most 5) sums of products over one block of k elements, added into the float64 lanes
 * L[0..R-1]: L[r] += the sums of XS[r][e] YS[r][e] (in T, 16 lanes: element e into lane e % 16),
 * the block's tail zero-padded to a whole vector (adds exact zeros). */
#define BLOCK_SUMS(T, V, R, XS, YS, k, L)                                                   \
    do {                                                                                    \
        V acc_[5] = {{0}, {0}, {0}, {0}, {0}};                                              \
        int64_t e_ = 0;                                                                     \
        for (; e_ + LANES <= (k); e_ += LANES)                                              \
            for (int r_ = 0; r_ < (R); r_++) {                                              \
                V xv_, yv_;                                                                 \
                memcpy(&xv_, (XS)[r_] + e_, sizeof xv_);                                    \
                memcpy(&yv_, (YS)[r_] + e_, sizeof yv_);                                    \
                acc_[r_] += xv_ * yv_;                                                      \
            }                                                                               \
        if (e_ < (k))                                                                       \
            for (int r_ = 0; r_ < (R); r_++) {                                              \
                T xt_[LANES] = {0}, yt_[LANES] = {0};                                       \
                memcpy(xt_, (XS)[r_] + e_, (size_t)((k) - e_) * sizeof(T));                 \
                memcpy(yt_, (YS)[r_] + e_, (size_t)((k) - e_) * sizeof(T));                 \
                V xv_, yv_;                                                                 \
                memcpy(&xv_, xt_, sizeof xv_);                                              \
                memcpy(&yv_, yt_, sizeof yv_);                                              \
                acc_[r_] += xv_ * yv_;                                                      \
            }                                                                               \
        for (int r_ = 0; r_ < (R); r_++)                                                    \
            L[r_] += __builtin_convertvector(acc_[r_], v16d);                               \
    } while (0)

/* s[r] = the float64 lanes L[r] added pairwise, r < R. */
static inline void lanes_sums(const v16d *L, int R, double *s)
{
    for (int r = 0; r < R; r++) {
        double l[LANES];
        memcpy(l, &L[r], sizeof l);
        s[r] = lanes_sum(l);
    }
}

/* torch's lerp of x toward y with weight w (wm1 = w - 1; small: |w| < 0.5): x + w (y - x) for
 * small weights, else y + (w - 1)(y - x), one fused multiply-add either way. */
#define LERP(FMA, x, y, w, wm1, small) ((small) ? FMA(w, (y) - (x), (x)) : FMA(wm1, (y) - (x), (y)))

/* The first pass's totals from its chunks' sums part[c * stride + r] (r < R): out[t * R + r] for
 * each of the n tensors, and (all not NULL) all[r] over all of them, each added in chunk order
 * in float64. */
static void tensor_totals(const double *part, int stride, int R, const int64_t *tix,
                          int64_t nchunks, int64_t n, double *out, double *all)
{
    for (int r = 0; r < R; r++)
        if (all)
            all[r] = 0.0;
    int64_t c = 0;
    for (int64_t t = 0; t < n; t++) {
        for (int r = 0; r < R; r++)
            out[t * R + r] = 0.0;
        for (; c < nchunks && tix[c] == t; c++)
            for (int r = 0; r < R; r++) {
                out[t * R + r] += part[c * stride + r];
                if (all)
                    all[r] += part[c * stride + r];
            }
    }
}

/* One chunk of MoMo's first pass: x <- lerp(x, y, w) (LERP), then the sum of the new x's squares
 * (see the top), block by block while the block is in the first-level cache. */
#define LERP_SQUARES(NAME, T, V, FMA)                                                       \
    static double NAME(T *restrict x, const T *restrict y, int64_t n, T w, T wm1, int small) \
    {                                                                                       \
        v16d L[1] = {{0}};                                                                  \
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {                                         \
            const int64_t k = n - i0 < BLOCK ? n - i0 : BLOCK;                              \
            T *a = x + i0;                                                                  \
            const T *b = y + i0;                                                            \
            for (int64_t e = 0; e < k; e++)                                                 \
                a[e] = LERP(FMA, a[e], b[e], w, wm1, small);                                \
            const T *xs[1] = {a};                                                           \
            BLOCK_SUMS(T, V, 1, xs, xs, k, L);                                              \
        }                                                                                   \
        double s;                                                                           \
        lanes_sums(L, 1, &s);                                                               \
        return s;                                                                           \
    }

LERP_SQUARES(lerp_squares_f32, float, v16f, fmaf)
LERP_SQUARES(lerp_squares_f64, double, v16d, fma)

/* MoMo's step without weight decay, the offsets carried (shiftsim.optim._compiled.momo_step,
 * momo._momo_blocks' only_v path), over n tensors p, g, d (the parameters, their gradients, the
 * first moments) cut into chunks (see the top):
 *   d <- lerp(d, g, w) and sq[t] = |d_t|^2 per tensor (first pass);
 *   loss_avg <- loss_avg beta + f w;  u_t = kept_t beta;
 *   tau = min(max(loss_avg - rho fstar + sum_t u_t, 0) / sum_t sq_t, cap) (0 where the norm is
 *   not positive; a NaN ratio stays NaN);  kept_t <- u_t - tau sq_t;
 *   p <- p - tau d (torch's add with alpha: one fused multiply-add; second pass, each thread's
 *   chunks in reverse order so that it starts on those its first pass left in cache).
 * part: one double per chunk (scratch); nt: the threads. Writes tau. */
#define MOMO_TENSORS(NAME, T, FMA, ABS, SQUARES)                                            \
    void NAME(int nt, int64_t n, T **p, T **g, T **d, int64_t nchunks, const int64_t *tix,  \
              const int64_t *lo, const int64_t *hi, double *part, double *part_t, T *sq,    \
              T *kept,                                                                      \
              T *loss_avg, const T *f, const T *fstar, double beta_d, double w_d,           \
              double rho_d, double cap_d, T *tau_out)                                       \
    {                                                                                       \
        const T beta = (T)beta_d, w = (T)w_d, wm1 = w - (T)1, rho = (T)rho_d, cap = (T)cap_d; \
        const int small = ABS(w) < (T)0.5;                                                  \
        EACH_CHUNK(nt, nchunks, c)                                                          \
            part[c] = SQUARES(d[tix[c]] + lo[c], g[tix[c]] + lo[c], hi[c] - lo[c], w, wm1,  \
                              small);                                                       \
        tensor_totals(part, 1, 1, tix, nchunks, n, part_t, NULL);                           \
        T norm = 0, usum = 0;                                                               \
        for (int64_t t = 0; t < n; t++) {                                                   \
            sq[t] = (T)part_t[t];                                                           \
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
        EACH_CHUNK_BACKWARD(nt, nchunks, k) {                                               \
            T *restrict x = p[tix[k]] + lo[k];                                              \
            const T *restrict y = d[tix[k]] + lo[k];                                        \
            const int64_t m = hi[k] - lo[k];                                                \
            for (int64_t e = 0; e < m; e++)                                                 \
                x[e] = FMA(a, y[e], x[e]);                                                  \
        }                                                                                   \
    }

MOMO_TENSORS(shiftsim_momo_tensors_f32, float, fmaf, fabsf, lerp_squares_f32)
MOMO_TENSORS(shiftsim_momo_tensors_f64, double, fma, fabs, lerp_squares_f64)

/* One chunk's sums for TAM's and AM-SGD's first pass: <m, g>, |m|^2, |g|^2 into s[0..2] (see
 * the top: products summed in 16 lanes per block, the blocks in float64), with g replaced by
 * g + wd p (torch's add with alpha: one fused multiply-add) where p is not NULL (coupled weight
 * decay). V: a vector of 16 elements of T (GCC's vector extension, split into the machine's
 * vectors by the compiler; no contraction, so the same sums at any vector width). */
#define THREE_SUMS(NAME, T, V, FMA)                                                         \
    static void NAME(const T *restrict m, const T *restrict g, const T *restrict p, T wd,   \
                     int64_t n, double *s)                                                  \
    {                                                                                       \
        v16d L[3] = {{0}, {0}, {0}};                                                        \
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {                                         \
            const int64_t k = n - i0 < BLOCK ? n - i0 : BLOCK;                              \
            T gb[BLOCK];                                                                    \
            const T *a = m + i0;                                                            \
            const T *b = g + i0;                                                            \
            if (p) {                                                                        \
                const T *restrict x = p + i0;                                               \
                for (int64_t e = 0; e < k; e++)                                             \
                    gb[e] = FMA(wd, x[e], b[e]);                                            \
                b = gb;                                                                     \
            }                                                                               \
            const T *xs[3] = {a, a, b}, *ys[3] = {b, a, b};                                 \
            BLOCK_SUMS(T, V, 3, xs, ys, k, L);                                              \
        }                                                                                   \
        lanes_sums(L, 3, s);                                                                \
    }

THREE_SUMS(three_sums_f32, float, v16f, fmaf)
THREE_SUMS(three_sums_f64, double, v16d, fma)

/* The first pass of TAM's and AM-SGD's compiled step over n tensors m, g (and p with coupled
 * weight decay wd, else NULL): out[0..2] = <m, g>, |m|^2, |g|^2 over all of them, each the
 * chunks' sums added in order in float64 and rounded once to T. part: 3 doubles per chunk. */
#define SUMS_TENSORS(NAME, T, SUMS)                                                         \
    void NAME(int nt, T **m, T **g, T **p, double wd_d, int64_t nchunks, const int64_t *tix, \
              const int64_t *lo, const int64_t *hi, double *part, T *out)                   \
    {                                                                                       \
        const T wd = (T)wd_d;                                                               \
        EACH_CHUNK(nt, nchunks, c)                                                          \
            SUMS(m[tix[c]] + lo[c], g[tix[c]] + lo[c], p ? p[tix[c]] + lo[c] : NULL, wd,    \
                 hi[c] - lo[c], part + 3 * c);                                              \
        double s[3] = {0.0, 0.0, 0.0};                                                      \
        for (int64_t c = 0; c < nchunks; c++)                                               \
            for (int q = 0; q < 3; q++)                                                     \
                s[q] += part[3 * c + q];                                                    \
        for (int q = 0; q < 3; q++)                                                         \
            out[q] = (T)s[q];                                                               \
    }

SUMS_TENSORS(shiftsim_three_sums_tensors_f32, float, three_sums_f32)
SUMS_TENSORS(shiftsim_three_sums_tensors_f64, double, three_sums_f64)

/* The second pass of TAM's and AM-SGD's compiled step, element by element: with coupled weight
 * decay (coupled != 0) g' = g + wd p from the parameter before this pass changes it (torch's add
 * with alpha), else g' = g; m <- lerp(m, g', w) (torch's lerp); p <- p shrink (decoupled weight
 * decay, where shrink_on); p <- p + step m (torch's add with alpha). Each thread takes the
 * chunks it summed, in reverse order (the first pass leaves the last ones in its caches). */
#define LERP_UPDATE(NAME, T, FMA, ABS)                                                      \
    void NAME(int nt, T **p, T **g, T **m, int64_t nchunks, const int64_t *tix,             \
              const int64_t *lo, const int64_t *hi, double w_d, double step_d, int coupled, \
              double wd_d, int shrink_on, double shrink_d)                                  \
    {                                                                                       \
        const T w = (T)w_d, wm1 = w - (T)1, step = (T)step_d, wd = (T)wd_d;                 \
        const T shrink = (T)shrink_d;                                                       \
        const int small = ABS(w) < (T)0.5;                                                  \
        EACH_CHUNK_BACKWARD(nt, nchunks, c) {                                               \
            T *restrict x = p[tix[c]] + lo[c];                                              \
            const T *restrict y = g[tix[c]] + lo[c];                                        \
            T *restrict a = m[tix[c]] + lo[c];                                              \
            const int64_t k = hi[c] - lo[c];                                                \
            for (int64_t i0 = 0; i0 < k; i0 += BLOCK) {                                     \
                const int64_t b = k - i0 < BLOCK ? k - i0 : BLOCK;                          \
                T gb[BLOCK];                                                                \
                const T *restrict gg = y + i0;                                              \
                if (coupled) {                                                              \
                    for (int64_t e = 0; e < b; e++)                                         \
                        gb[e] = FMA(wd, x[i0 + e], gg[e]);                                  \
                    gg = gb;                                                                \
                }                                                                           \
                T *restrict am = a + i0;                                                    \
                for (int64_t e = 0; e < b; e++)                                             \
                    am[e] = LERP(FMA, am[e], gg[e], w, wm1, small);                         \
                T *restrict xp = x + i0;                                                    \
                if (shrink_on)                                                              \
                    for (int64_t e = 0; e < b; e++)                                         \
                        xp[e] = xp[e] * shrink;                                             \
                for (int64_t e = 0; e < b; e++)                                             \
                    xp[e] = FMA(step, am[e], xp[e]);                                        \
            }                                                                               \
        }                                                                                   \
    }

LERP_UPDATE(shiftsim_lerp_update_tensors_f32, float, fmaf, fabsf)
LERP_UPDATE(shiftsim_lerp_update_tensors_f64, double, fma, fabs)

/* AdaTAM(W)'s second pass (shiftsim.optim._compiled.adatam_step_native), element by element as
 * its eager kernel (shiftsim.optim.tam._adatam_update with float hyperparameters; c = the
 * damping + torque_eps), each one expression as ADATAM_STEP in rowmath.c: with coupled weight
 * decay (coupled != 0) g' = g + wd p from the parameter before this pass changes it (torch's add
 * with alpha), else g' = g; m <- m b1, m <- m + g' c (torch's mul_ and addcmul_: one fused
 * multiply-add); v <- v b2, v <- v + (w2 g') g' (mul_, addcmul_ with value w2: one fused
 * multiply-add); p <- p shrink (decoupled weight decay, where shrink_on); den = sqrt(v) + eps
 * (the correctly rounded square root); p <- p + (size m) / den (torch's addcdiv_ with the float
 * value size). Each thread takes the chunks it summed in the first pass
 * (shiftsim_three_sums_tensors), in reverse order. */
#define ADATAM_UPDATE(NAME, T, FMA, SQRT)                                                   \
    void NAME(int nt, T **p, T **g, T **m, T **v, int64_t nchunks, const int64_t *tix,      \
              const int64_t *lo, const int64_t *hi, double c_d, double b1_d, double b2_d,   \
              double w2_d, double eps_d, double size_d, int coupled, double wd_d,           \
              int shrink_on, double shrink_d)                                               \
    {                                                                                       \
        const T c = (T)c_d, b1 = (T)b1_d, b2 = (T)b2_d, w2 = (T)w2_d, eps = (T)eps_d;       \
        const T size = (T)size_d, wd = (T)wd_d, shrink = (T)shrink_d;                       \
        EACH_CHUNK_BACKWARD(nt, nchunks, k) {                                               \
            T *restrict x = p[tix[k]] + lo[k];                                              \
            const T *restrict y = g[tix[k]] + lo[k];                                        \
            T *restrict a = m[tix[k]] + lo[k];                                              \
            T *restrict b = v[tix[k]] + lo[k];                                              \
            const int64_t n = hi[k] - lo[k];                                                \
            for (int64_t e = 0; e < n; e++) {                                               \
                const T ge = coupled ? FMA(wd, x[e], y[e]) : y[e];                          \
                const T me = FMA(ge, c, a[e] * b1);                                         \
                a[e] = me;                                                                  \
                const T wg = w2 * ge;                                                       \
                const T ve = FMA(wg, ge, b[e] * b2);                                        \
                b[e] = ve;                                                                  \
                const T xe = shrink_on ? x[e] * shrink : x[e];                              \
                const T den = SQRT(ve) + eps;                                               \
                x[e] = xe + (size * me) / den;                                              \
            }                                                                               \
        }                                                                                   \
    }

ADATAM_UPDATE(shiftsim_adatam_update_tensors_f32, float, fmaf, sqrtf)
ADATAM_UPDATE(shiftsim_adatam_update_tensors_f64, double, fma, sqrt)

/* The numbers between the passes (rowmath.c: torch's operations of shiftsim.optim._compiled's
 * _tam_numbers, _adatam_numbers and _amsgd_numbers, bit for bit). */
void shiftsim_tam_tensor_numbers_f32(const float *s, const float *h, int positive, float *shat,
                                     float *scale, float *sq, float *out);
void shiftsim_tam_tensor_numbers_f64(const double *s, const double *h, int positive,
                                     double *shat, double *scale, double *sq, double *out);
void shiftsim_adatam_tensor_numbers_f32(const float *s, float weight, float teps, float *shat,
                                        float *out);
void shiftsim_adatam_tensor_numbers_f64(const double *s, double weight, double teps, double *shat,
                                        double *out);
void shiftsim_amsgd_tensor_numbers_f32(const float *s, const float *h, float *sq, float *out);
void shiftsim_amsgd_tensor_numbers_f64(const double *s, const double *h, double *sq,
                                       double *out);

/* Whole compiled steps of TAM, AM-SGD and AdaTAM(W) over one learner's tensors, in one call:
 * the first pass (SUMS_TENSORS: the sums into out[0..2]), the numbers (rowmath.c, into the
 * state and out[3..]), the second pass (LERP_UPDATE or ADATAM_UPDATE with those numbers). The
 * same functions on the same numbers as the passes called one by one with the numbers computed
 * by torch in between, so the same bits (tested; TAM's and AdaTAM's lerp of the cosine as
 * rowmath.c's header says), without Python between the passes: run right
 * after a pass over megabytes, its 20-odd small torch operations took 0.18-0.22 ms a step there
 * (5M parameters, 2-core AMD EPYC; MoMo-Adam's numbers alone 41 us when repeated, 142 us right
 * after its first pass). coupled: g + wd p for g in both passes (coupled weight decay);
 * shrink_on: p shrink before the step (decoupled). */
#define TAM_TENSORS_STEP(NAME, T, SUMS, NUMBERS, UPDATE)                                    \
    void NAME(int nt, T **p, T **g, T **m, int64_t nchunks, const int64_t *tix,             \
              const int64_t *lo, const int64_t *hi, double *part, int coupled, double wd,   \
              int shrink_on, double shrink, const T *h, int positive, T *shat, T *scale,    \
              T *sq, T *out)                                                                \
    {                                                                                       \
        /* out: <m, g>, |m|^2, |g|^2, then d, w, the step */                                \
        SUMS(nt, m, g, coupled ? p : NULL, wd, nchunks, tix, lo, hi, part, out);            \
        NUMBERS(out, h, positive, shat, scale, sq, out + 3);                                \
        UPDATE(nt, p, g, m, nchunks, tix, lo, hi, out[4], out[5], coupled, wd, shrink_on,   \
               shrink);                                                                     \
    }

TAM_TENSORS_STEP(shiftsim_tam_tensors_step_f32, float, shiftsim_three_sums_tensors_f32,
                 shiftsim_tam_tensor_numbers_f32, shiftsim_lerp_update_tensors_f32)
TAM_TENSORS_STEP(shiftsim_tam_tensors_step_f64, double, shiftsim_three_sums_tensors_f64,
                 shiftsim_tam_tensor_numbers_f64, shiftsim_lerp_update_tensors_f64)

#define AMSGD_TENSORS_STEP(NAME, T, SUMS, NUMBERS, UPDATE)                                  \
    void NAME(int nt, T **p, T **g, T **d, int64_t nchunks, const int64_t *tix,             \
              const int64_t *lo, const int64_t *hi, double *part, int coupled, double wd,   \
              double step, const T *h, T *sq, T *out)                                       \
    {                                                                                       \
        /* out: <d, g>, |d|^2, |g|^2, then beta, w */                                       \
        SUMS(nt, d, g, coupled ? p : NULL, wd, nchunks, tix, lo, hi, part, out);            \
        NUMBERS(out, h, sq, out + 3);                                                       \
        UPDATE(nt, p, g, d, nchunks, tix, lo, hi, out[4], step, coupled, wd, 0, 1.0);       \
    }

AMSGD_TENSORS_STEP(shiftsim_amsgd_tensors_step_f32, float, shiftsim_three_sums_tensors_f32,
                   shiftsim_amsgd_tensor_numbers_f32, shiftsim_lerp_update_tensors_f32)
AMSGD_TENSORS_STEP(shiftsim_amsgd_tensors_step_f64, double, shiftsim_three_sums_tensors_f64,
                   shiftsim_amsgd_tensor_numbers_f64, shiftsim_lerp_update_tensors_f64)

#define ADATAM_TENSORS_STEP(NAME, T, SUMS, NUMBERS, UPDATE)                                 \
    void NAME(int nt, T **p, T **g, T **m, T **v, int64_t nchunks, const int64_t *tix,      \
              const int64_t *lo, const int64_t *hi, double *part, int coupled, double wd,   \
              int shrink_on, double shrink, const T *h, double b1, double b2, double w2,    \
              double eps, double size, T *shat, T *out)                                     \
    {                                                                                       \
        /* h: (size, beta1, beta2, 1 - gamma, torque_eps, ...); out: the sums, d, c */      \
        SUMS(nt, m, g, coupled ? p : NULL, wd, nchunks, tix, lo, hi, part, out);            \
        NUMBERS(out, h[3], h[4], shat, out + 3);                                            \
        UPDATE(nt, p, g, m, v, nchunks, tix, lo, hi, out[4], b1, b2, w2, eps, size,         \
               coupled, wd, shrink_on, shrink);                                             \
    }

ADATAM_TENSORS_STEP(shiftsim_adatam_tensors_step_f32, float, shiftsim_three_sums_tensors_f32,
                    shiftsim_adatam_tensor_numbers_f32, shiftsim_adatam_update_tensors_f32)
ADATAM_TENSORS_STEP(shiftsim_adatam_tensors_step_f64, double, shiftsim_three_sums_tensors_f64,
                    shiftsim_adatam_tensor_numbers_f64, shiftsim_adatam_update_tensors_f64)

/* MoMo-Adam's preconditioned direction, element by element as its eager kernel: v / bc2 (a true
 * division), its correctly rounded square root, + eps, then d / that. */
#define ADAM_DIRECTION(T, SQRT, d, v, bc2, eps) ((d) / (SQRT((v) / (bc2)) + (eps)))

/* One chunk of MoMo-Adam's first pass: d <- lerp(d, g, w1) (LERP), v <- v b2, then
 * v <- v + (w2 g) g (torch's mul_ and addcmul_ with value w2: one fused multiply-add), and the
 * sums <p, g>, <p, d>, <d, q> with q the direction above, into s[0..2] (as THREE_SUMS). */
#define ADAM_MOMENTS(NAME, T, V, FMA, ABS, SQRT)                                            \
    static void NAME(const T *restrict p, const T *restrict g, T *restrict d, T *restrict v, \
                     int64_t n, T w1, T b2, T w2, T bc2, T eps, double *s)                  \
    {                                                                                       \
        const T wm1 = w1 - (T)1;                                                            \
        const int small = ABS(w1) < (T)0.5;                                                 \
        v16d L[3] = {{0}, {0}, {0}};                                                        \
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {                                         \
            const int64_t k = n - i0 < BLOCK ? n - i0 : BLOCK;                              \
            const T *x = p + i0, *y = g + i0;                                               \
            T *a = d + i0, *b = v + i0;                                                     \
            T q[BLOCK];                                                                     \
            for (int64_t e = 0; e < k; e++)                                                 \
                a[e] = LERP(FMA, a[e], y[e], w1, wm1, small);                               \
            for (int64_t e = 0; e < k; e++) {                                               \
                const T vb = b[e] * b2, wg = w2 * y[e];                                     \
                b[e] = FMA(wg, y[e], vb);                                                   \
                q[e] = ADAM_DIRECTION(T, SQRT, a[e], b[e], bc2, eps);                       \
            }                                                                               \
            const T *xs[3] = {x, x, a}, *ys[3] = {y, a, q};                                 \
            BLOCK_SUMS(T, V, 3, xs, ys, k, L);                                              \
        }                                                                                   \
        lanes_sums(L, 3, s);                                                                \
    }

ADAM_MOMENTS(adam_moments_f32, float, v16f, fmaf, fabsf, sqrtf)
ADAM_MOMENTS(adam_moments_f64, double, v16d, fma, fabs, sqrt)

/* MoMo-Adam's first pass over n tensors (shiftsim.optim._compiled.momo_adam_step): the moments
 * moved (ADAM_MOMENTS) and xg[t] = <p_t, g_t> per tensor, out[0] = <p, d> and out[1] = <d, q>
 * over all of them (chunk sums added in order in float64, rounded once to T). part: 3 doubles
 * per chunk. */
#define MOMO_ADAM_MOMENTS(NAME, T, MOMENTS)                                                 \
    void NAME(int nt, int64_t n, T **p, T **g, T **d, T **v, int64_t nchunks,               \
              const int64_t *tix, const int64_t *lo, const int64_t *hi, double *part,       \
              double *part_t, double w1, double b2, double w2, double bc2, double eps,      \
              T *xg, T *out)                                                                \
    {                                                                                       \
        EACH_CHUNK(nt, nchunks, c)                                                          \
            MOMENTS(p[tix[c]] + lo[c], g[tix[c]] + lo[c], d[tix[c]] + lo[c],                \
                    v[tix[c]] + lo[c], hi[c] - lo[c], (T)w1, (T)b2, (T)w2, (T)bc2, (T)eps,  \
                    part + 3 * c);                                                          \
        double all[3];                                                                      \
        tensor_totals(part, 3, 3, tix, nchunks, n, part_t, all);                            \
        for (int64_t t = 0; t < n; t++)                                                     \
            xg[t] = (T)part_t[3 * t];                                                       \
        out[0] = (T)all[1];                                                                 \
        out[1] = (T)all[2];                                                                 \
    }

MOMO_ADAM_MOMENTS(shiftsim_momo_adam_moments_f32, float, adam_moments_f32)
MOMO_ADAM_MOMENTS(shiftsim_momo_adam_moments_f64, double, adam_moments_f64)

/* MoMo-Adam's update of k elements: x <- x pre (decoupled decay, where pre is not NULL),
 * x <- x + q ntau with q the direction above from d and v (torch's addcmul_: one fused
 * multiply-add), x <- x post (proximal decay, where post is not NULL). */
#define ADAM_UPDATE_RUN(NAME, T, FMA, SQRT)                                                 \
    static inline void NAME(T *restrict x, const T *restrict d, const T *restrict v,        \
                            int64_t k, T bc2, T eps, T ntau, const T *pre, const T *post)   \
    {                                                                                       \
        if (pre)                                                                            \
            for (int64_t e = 0; e < k; e++)                                                 \
                x[e] = x[e] * *pre;                                                         \
        for (int64_t e = 0; e < k; e++)                                                     \
            x[e] = FMA(ADAM_DIRECTION(T, SQRT, d[e], v[e], bc2, eps), ntau, x[e]);          \
        if (post)                                                                           \
            for (int64_t e = 0; e < k; e++)                                                 \
                x[e] = x[e] * *post;                                                        \
    }

ADAM_UPDATE_RUN(adam_update_f32, float, fmaf, sqrtf)
ADAM_UPDATE_RUN(adam_update_f64, double, fma, sqrt)

/* MoMo-Adam's second pass over n tensors (ADAM_UPDATE_RUN, ntau = -tau): each thread its first
 * pass's chunks, in reverse. */
#define MOMO_ADAM_UPDATE(NAME, T, RUN)                                                      \
    void NAME(int nt, T **p, T **d, T **v, int64_t nchunks, const int64_t *tix,             \
              const int64_t *lo, const int64_t *hi, double bc2_d, double eps_d,             \
              double ntau_d, int pre_on, double pre_d, int post_on, double post_d)          \
    {                                                                                       \
        const T bc2 = (T)bc2_d, eps = (T)eps_d, ntau = (T)ntau_d, pre = (T)pre_d;           \
        const T post = (T)post_d;                                                           \
        EACH_CHUNK_BACKWARD(nt, nchunks, c)                                                 \
            RUN(p[tix[c]] + lo[c], d[tix[c]] + lo[c], v[tix[c]] + lo[c], hi[c] - lo[c],     \
                bc2, eps, ntau, pre_on ? &pre : NULL, post_on ? &post : NULL);              \
    }

MOMO_ADAM_UPDATE(shiftsim_momo_adam_update_f32, float, adam_update_f32)
MOMO_ADAM_UPDATE(shiftsim_momo_adam_update_f64, double, adam_update_f64)

/* MoMo-Adam's numbers (rowmath.c: MOMO_ADAM_AVERAGES and MOMO_ADAM_COEFS, the torch operations
 * of shiftsim.optim._compiled._momo_adam_numbers bit for bit with one member) */
void shiftsim_momo_adam_averages_f32(int64_t S, int64_t K, const float *f, float *la, float *gam,
                                     const float *xg, const float *b1, int64_t b1_s,
                                     const float *w1, int64_t w1_s);
void shiftsim_momo_adam_averages_f64(int64_t S, int64_t K, const double *f, double *la,
                                     double *gam, const double *xg, const double *b1,
                                     int64_t b1_s, const double *w1, int64_t w1_s);
void shiftsim_momo_adam_coefs_f32(int64_t K, const float *la, const float *fstar,
                                  const float *xd, const float *dq, const float *gamma,
                                  int rho_one, int c_one, float *tau_out, float *neg_out,
                                  const float *rho, int64_t rho_s, const float *c, int64_t c_s,
                                  const float *cap, int64_t cap_s);
void shiftsim_momo_adam_coefs_f64(int64_t K, const double *la, const double *fstar,
                                  const double *xd, const double *dq, const double *gamma,
                                  int rho_one, int c_one, double *tau_out, double *neg_out,
                                  const double *rho, int64_t rho_s, const double *c,
                                  int64_t c_s, const double *cap, int64_t cap_s);

/* MoMo-Adam's compiled step in two calls around torch's sum of the per-tensor gamma (its order
 * is torch's own), with no other Python between its passes (see TAM_TENSORS_STEP). The first:
 * its first pass (MOMO_ADAM_MOMENTS: xg per tensor, out = <p, d>, <d, q>), then gam <- gam b1 +
 * xg (1 - b1) and la <- f (1 - b1) + la b1 with b1 = h[0] and 1 - b1 rounded once (torch's rsub
 * of h[0]). h: (beta1, beta2, 1 - beta2^s, eps, rho, lr / rho, c = 1 + lr wd, ...). */
#define MOMO_ADAM_TENSORS_FIRST(NAME, T, MOMENTS, AVERAGES)                                 \
    void NAME(int nt, int64_t n, T **p, T **g, T **d, T **v, int64_t nchunks,               \
              const int64_t *tix, const int64_t *lo, const int64_t *hi, double *part,       \
              double *part_t, double w1, double b2, double w2, double bc2, double eps,      \
              T *xg, T *out, const T *h, const T *f, T *la, T *gam)                         \
    {                                                                                       \
        MOMENTS(nt, n, p, g, d, v, nchunks, tix, lo, hi, part, part_t, w1, b2, w2, bc2,     \
                eps, xg, out);                                                              \
        const T wt = (T)1 - h[0];                                                           \
        AVERAGES(n, 1, f, la, gam, xg, h, 0, &wt, 0);                                       \
    }

MOMO_ADAM_TENSORS_FIRST(shiftsim_momo_adam_tensors_first_f32, float,
                        shiftsim_momo_adam_moments_f32, shiftsim_momo_adam_averages_f32)
MOMO_ADAM_TENSORS_FIRST(shiftsim_momo_adam_tensors_first_f64, double,
                        shiftsim_momo_adam_moments_f64, shiftsim_momo_adam_averages_f64)

/* The second: from gamma (torch's sum), the step size tau (MOMO_ADAM_COEFS: the gap la - rho f*,
 * with c = h[6] where decay, capped at h[5]) into *tau, then the second pass (MOMO_ADAM_UPDATE
 * with -tau). */
#define MOMO_ADAM_TENSORS_SECOND(NAME, T, COEFS, UPDATE)                                    \
    void NAME(int nt, T **p, T **d, T **v, int64_t nchunks, const int64_t *tix,             \
              const int64_t *lo, const int64_t *hi, double bc2, double eps, int pre_on,     \
              double pre, int post_on, double post, const T *h, int decay, const T *la,     \
              const T *fstar, const T *out, const T *gamma, T *tau)                         \
    {                                                                                       \
        T neg;                                                                              \
        COEFS(1, la, fstar, out, out + 1, gamma, 0, !decay, tau, &neg, h + 4, 0, h + 6, 0,  \
              h + 5, 0);                                                                    \
        UPDATE(nt, p, d, v, nchunks, tix, lo, hi, bc2, eps, (double)neg, pre_on, pre,       \
               post_on, post);                                                              \
    }

MOMO_ADAM_TENSORS_SECOND(shiftsim_momo_adam_tensors_second_f32, float,
                         shiftsim_momo_adam_coefs_f32, shiftsim_momo_adam_update_f32)
MOMO_ADAM_TENSORS_SECOND(shiftsim_momo_adam_tensors_second_f64, double,
                         shiftsim_momo_adam_coefs_f64, shiftsim_momo_adam_update_f64)

/* MoMo-Adam over a fleet's rows (shiftsim.optim.momo._momo_adam_rows): rows k0 .. k1 - 1 of
 * S segments each (tensor t's segment s of row k at x[t * S + s] + k * ld[t * S + s], len[s]
 * elements; the tensors P, G, D, V), each row whole on one thread, split across the OpenMP
 * team as the whole row steps are (FOR_EACH_ROW). A hyperparameter is a pointer and a stride
 * (0: one for all rows, 1: one per row). The first pass runs ADAM_MOMENTS over each segment with
 * the row's numbers: xg[s * K + k] = <p, g> over segment s, rounded once; xd[k] =
 * <p, d> and dq[k] = <d, q> over the row, the segments' float64 sums added in order and rounded
 * once: the same bits at any thread count and member count. */
int shiftsim_split_rows(int64_t rows, int64_t n, int count);

static inline int64_t row_length(int S, const int64_t *len)
{
    int64_t n = 0;
    for (int s = 0; s < S; s++)
        n += len[s];
    return n;
}

/* The loop over rows k0 .. k1 - 1 of a fleet row pass reading COUNT tensors of S segments,
 * split across the OpenMP team as the whole row steps are (shiftsim_split_rows, rowmath.c:
 * each row whole on one thread, schedule static); SEG(t): segment s of tensor t in row k. */
#define FOR_EACH_ROW(COUNT)                                                                 \
    const int split_ = shiftsim_split_rows(k1 - k0, row_length(S, len), (COUNT));           \
    _Pragma("omp parallel for schedule(static) if(split_)")                                 \
    for (int64_t k = k0; k < k1; k++)
#define SEG(t) (x[(t) * S + s] + k * ld[(t) * S + s])

#define MOMO_ADAM_ROWS(NAME, T, MOMENTS)                                                    \
    void NAME(int S, const int64_t *len, T **x, const int64_t *ld, int64_t k0, int64_t k1,  \
              int64_t K, const T *w1, int64_t w1_s, const T *b2, int64_t b2_s, const T *w2, \
              int64_t w2_s, const T *bc2, int64_t bc2_s, const T *eps, int64_t eps_s,       \
              T *xg, T *xd, T *dq)                                                          \
    {                                                                                       \
        FOR_EACH_ROW(4) {                                                                   \
            double row_xd = 0.0, row_dq = 0.0;                                              \
            for (int s = 0; s < S; s++) {                                                   \
                double part[3];                                                             \
                MOMENTS(SEG(0), SEG(1), SEG(2), SEG(3), len[s],                             \
                        w1[k * w1_s], b2[k * b2_s], w2[k * w2_s], bc2[k * bc2_s],           \
                        eps[k * eps_s], part);                                              \
                xg[s * K + k] = (T)part[0];                                                 \
                row_xd += part[1];                                                          \
                row_dq += part[2];                                                          \
            }                                                                               \
            xd[k] = (T)row_xd;                                                              \
            dq[k] = (T)row_dq;                                                              \
        }                                                                                   \
    }

MOMO_ADAM_ROWS(shiftsim_momo_adam_rows_f32, float, adam_moments_f32)
MOMO_ADAM_ROWS(shiftsim_momo_adam_rows_f64, double, adam_moments_f64)

/* The second pass over the rows (the first pass's x: tensors P, G, D, V; G not read), element
 * by element as MOMO_ADAM_UPDATE with the row's numbers: p <- p pre[k] (decoupled decay; pre NULL: none), p <- p + q ntau[k]
 * (torch's addcmul_: one fused multiply-add), p <- p post[k] (proximal decay; post NULL). */
#define MOMO_ADAM_ROWS_UPDATE(NAME, T, RUN)                                                 \
    void NAME(int S, const int64_t *len, T **x, const int64_t *ld, int64_t k0, int64_t k1,  \
              const T *bc2, int64_t bc2_s, const T *eps, int64_t eps_s, const T *ntau,      \
              const T *pre, int64_t pre_s, const T *post, int64_t post_s)                   \
    {                                                                                       \
        FOR_EACH_ROW(3)                                                                     \
            for (int s = 0; s < S; s++)                                                     \
                RUN(SEG(0), SEG(2), SEG(3), len[s], bc2[k * bc2_s], eps[k * eps_s],         \
                    ntau[k], pre ? pre + k * pre_s : NULL,                                  \
                    post ? post + k * post_s : NULL);                                       \
    }

MOMO_ADAM_ROWS_UPDATE(shiftsim_momo_adam_rows_update_f32, float, adam_update_f32)
MOMO_ADAM_ROWS_UPDATE(shiftsim_momo_adam_rows_update_f64, double, adam_update_f64)

/* AM-AdamW's preconditioner and metric, element by element as its eager kernel
 * (shiftsim.optim.adamem: _am_precond, _am_metric): P = sqrt(v) c1 + c2 (the correctly rounded
 * square root, then torch's mul_ and add_), W = P + lam P P (torch's addcmul with value lam: one
 * fused multiply-add) where use_lam, else P. */
#define AM_PRECOND(T, SQRT, FMA, v, c1, c2, lam, use_lam, P, W)                             \
    const T P = SQRT(v) * (c1) + (c2);                                                      \
    const T W = (use_lam) ? FMA((lam) * P, P, P) : P;

/* One chunk of AM-AdamW's first pass (tensor coefficients c1, c2): v <- v b2, v <- v + (w2 g) g
 * (torch's mul_ and addcmul_), then its sums, as the eager kernel's _am_sums: q1 = <d/P, g>,
 * q2 = <d/P, d>, s = <(d - g)/W, d - g>, and where p is not NULL x1 = <p, g>, x2 = <p, d>, into
 * out[0..4] (as THREE_SUMS: 16 lanes per block, float64 across blocks). */
#define AM_SUMS(NAME, T, V, FMA, SQRT)                                                      \
    static void NAME(const T *restrict p, const T *restrict g, const T *restrict d,         \
                     T *restrict v, int64_t n, T b2, T w2, T c1, T c2, T lam, int use_lam,  \
                     double *out)                                                           \
    {                                                                                       \
        v16d L[5] = {{0}, {0}, {0}, {0}, {0}};                                              \
        const int R = p ? 5 : 3;                                                            \
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {                                         \
            const int64_t k = n - i0 < BLOCK ? n - i0 : BLOCK;                              \
            const T *y = g + i0, *a = d + i0;                                               \
            T *b = v + i0;                                                                  \
            T u[BLOCK], dt[BLOCK], w[BLOCK];                                                \
            for (int64_t e = 0; e < k; e++) {                                               \
                const T vb = b[e] * b2, wg = w2 * y[e];                                     \
                b[e] = FMA(wg, y[e], vb);                                                   \
                AM_PRECOND(T, SQRT, FMA, b[e], c1, c2, lam, use_lam, P, W)                  \
                dt[e] = a[e] - y[e];                                                        \
                w[e] = dt[e] / W;                                                           \
                u[e] = a[e] / P;                                                            \
            }                                                                               \
            const T *xs[5] = {u, u, w, p ? p + i0 : y, p ? p + i0 : y};                     \
            const T *ys[5] = {y, a, dt, y, a};                                              \
            BLOCK_SUMS(T, V, R, xs, ys, k, L);                                              \
        }                                                                                   \
        lanes_sums(L, R, out);                                                              \
    }

AM_SUMS(am_sums_f32, float, v16f, fmaf, sqrtf)
AM_SUMS(am_sums_f64, double, v16d, fma, sqrt)

/* AM-AdamW's first pass over n tensors (shiftsim.optim.adamem), tensor t with its coefficients
 * c1[t], c2[t]: the second moments moved and sums[t * R + r] its R sums (5 with p, else 3: the
 * eager kernel's _am_sums, in its order), each the chunks' sums added in order in float64 and
 * rounded once to T. part: 5 doubles per chunk. */
#define AMADAMW_SUMS(NAME, T, SUMS)                                                         \
    void NAME(int nt, int64_t n, T **p, T **g, T **d, T **v, int64_t nchunks,               \
              const int64_t *tix, const int64_t *lo, const int64_t *hi, double *part,       \
              double *part_t, const T *c1, const T *c2, double b2, double lam, int use_lam, \
              T *sums)                                                                      \
    {                                                                                       \
        EACH_CHUNK(nt, nchunks, c)                                                          \
            SUMS(p ? p[tix[c]] + lo[c] : NULL, g[tix[c]] + lo[c], d[tix[c]] + lo[c],        \
                 v[tix[c]] + lo[c], hi[c] - lo[c], (T)b2, (T)(1.0 - b2), c1[tix[c]],        \
                 c2[tix[c]], (T)lam, use_lam, part + 5 * c);                                \
        const int R = p ? 5 : 3;                                                            \
        tensor_totals(part, 5, R, tix, nchunks, n, part_t, NULL);                           \
        for (int64_t i = 0; i < n * R; i++)                                                 \
            sums[i] = (T)part_t[i];                                                         \
    }

AMADAMW_SUMS(shiftsim_amadamw_sums_f32, float, am_sums_f32)
AMADAMW_SUMS(shiftsim_amadamw_sums_f64, double, am_sums_f64)

/* AM-AdamW's update of k elements with their tensor's numbers, as the eager kernel
 * (_am_lerp_weight; keep = 1 - beta): P and W again (AM_PRECOND),
 * d <- lerp(d, g, a) with a = (P / W) keep where use_lam, else keep; x <- x shrink (where shrink
 * is not NULL); then the step with nlr = -lr as torch's addcdiv_ makes it (STEP): with a float
 * value x + (nlr d) / P, with a tensor value (the denominator divided by it first, then
 * addcdiv_ with value 1) x + d / (P / nlr). */
#define AM_UPDATE_RUN(NAME, T, FMA, ABS, SQRT, STEP)                                        \
    static inline void NAME(T *restrict x, const T *restrict g, T *restrict d,              \
                            const T *restrict v, int64_t k, T c1, T c2, T lam, int use_lam, \
                            T keep, const T *shrink, T nlr)                                 \
    {                                                                                       \
        const int shrink_on = shrink != NULL;                                               \
        const T f = shrink_on ? *shrink : (T)1;                                             \
        for (int64_t e = 0; e < k; e++) {                                                   \
            AM_PRECOND(T, SQRT, FMA, v[e], c1, c2, lam, use_lam, P, W)                      \
            const T wt = use_lam ? (P / W) * keep : keep;                                   \
            d[e] = LERP(FMA, d[e], g[e], wt, wt - (T)1, ABS(wt) < (T)0.5);                  \
            const T xe = shrink_on ? x[e] * f : x[e];                                       \
            x[e] = STEP(xe, d[e], P, nlr);                                                  \
        }                                                                                   \
    }

/* the step's two forms (see above): a float value, a tensor value */
#define AM_STEP_FLOAT(xe, d, P, nlr) ((xe) + ((nlr) * (d)) / (P))
#define AM_STEP_TENSOR(xe, d, P, nlr) ((xe) + (d) / ((P) / (nlr)))

AM_UPDATE_RUN(am_update_f32, float, fmaf, fabsf, sqrtf, AM_STEP_FLOAT)
AM_UPDATE_RUN(am_update_f64, double, fma, fabs, sqrt, AM_STEP_FLOAT)
AM_UPDATE_RUN(am_update_value_f32, float, fmaf, fabsf, sqrtf, AM_STEP_TENSOR)
AM_UPDATE_RUN(am_update_value_f64, double, fma, fabs, sqrt, AM_STEP_TENSOR)

/* AM-AdamW's second pass over n tensors (AM_UPDATE_RUN with tensor t's keep[t], the float
 * step: torch's addcdiv_ with value nlr = -lr): each thread its first pass's chunks, in
 * reverse. */
#define AMADAMW_UPDATE(NAME, T, RUN)                                                        \
    void NAME(int nt, T **p, T **g, T **d, T **v, int64_t nchunks, const int64_t *tix,      \
              const int64_t *lo, const int64_t *hi, const T *c1, const T *c2, double lam_d, \
              int use_lam, const T *keep, int shrink_on, double shrink_d, double nlr_d)     \
    {                                                                                       \
        const T lam = (T)lam_d, shrink = (T)shrink_d, nlr = (T)nlr_d;                       \
        EACH_CHUNK_BACKWARD(nt, nchunks, c) {                                               \
            const int64_t t = tix[c];                                                       \
            RUN(p[t] + lo[c], g[t] + lo[c], d[t] + lo[c], v[t] + lo[c], hi[c] - lo[c],      \
                c1[t], c2[t], lam, use_lam, keep[t], shrink_on ? &shrink : NULL, nlr);      \
        }                                                                                   \
    }

AMADAMW_UPDATE(shiftsim_amadamw_update_f32, float, am_update_f32)
AMADAMW_UPDATE(shiftsim_amadamw_update_f64, double, am_update_f64)

/* AM-AdamW's whole compiled step in one call (as TAM_TENSORS_STEP): the passes' coefficients
 * c1, c2 (n each, written) from pi (rowmath.c AM_TENSOR_SCALES; s = 1 / sqrt(1 - b2^t) and eps
 * from Python), AMADAMW_SUMS (with the
 * parameters' sums where decay), each tensor's beta (rowmath.c: the torch operations of
 * shiftsim.optim.adamem._am_beta_parts bit for bit; its hp = (prev, wd, 1 + wd lr, lr,
 * beta_max) each rounded to T here, as torch rounds a Python float; gap_on as there; beta, keep
 * and pi (n,) written), then AMADAMW_UPDATE with keep. sums: 5 n numbers of scratch. */
void shiftsim_am_tensor_betas_f32(int64_t n, const float *sums, int R, const float *hp,
                                  int gap_on, float *beta_out, float *keep, float *pi);
void shiftsim_am_tensor_betas_f64(int64_t n, const double *sums, int R, const double *hp,
                                  int gap_on, double *beta_out, double *keep, double *pi);
void shiftsim_am_tensor_scales_f32(int64_t n, const float *pi, double b1_d, double s_d,
                                   double eps_d, float *c1, float *c2);
void shiftsim_am_tensor_scales_f64(int64_t n, const double *pi, double b1_d, double s_d,
                                   double eps_d, double *c1, double *c2);

#define AMADAMW_TENSORS_STEP(NAME, T, SUMS, SCALES, BETAS, UPDATE)                          \
    void NAME(int nt, int64_t n, T **p, T **g, T **d, T **v, int64_t nchunks,               \
              const int64_t *tix, const int64_t *lo, const int64_t *hi, double *part,       \
              double *part_t, T *c1, T *c2, double s, double eps, double b2, double lam,    \
              int use_lam, int decay, double prev, double wd, double c, double lr,          \
              double bmax, int gap_on, T *sums, T *beta, T *keep, T *pi, int shrink_on,     \
              double shrink, double nlr)                                                    \
    {                                                                                       \
        const T hp[5] = {(T)prev, (T)wd, (T)c, (T)lr, (T)bmax};                             \
        SCALES(n, pi, bmax, s, eps, c1, c2);                                                \
        SUMS(nt, n, decay ? p : NULL, g, d, v, nchunks, tix, lo, hi, part, part_t, c1, c2,  \
             b2, lam, use_lam, sums);                                                       \
        BETAS(n, sums, decay ? 5 : 3, hp, gap_on, beta, keep, pi);                          \
        UPDATE(nt, p, g, d, v, nchunks, tix, lo, hi, c1, c2, lam, use_lam, keep, shrink_on, \
               shrink, nlr);                                                                \
    }

AMADAMW_TENSORS_STEP(shiftsim_amadamw_tensors_step_f32, float, shiftsim_amadamw_sums_f32,
                     shiftsim_am_tensor_scales_f32, shiftsim_am_tensor_betas_f32,
                     shiftsim_amadamw_update_f32)
AMADAMW_TENSORS_STEP(shiftsim_amadamw_tensors_step_f64, double, shiftsim_amadamw_sums_f64,
                     shiftsim_am_tensor_scales_f64, shiftsim_am_tensor_betas_f64,
                     shiftsim_amadamw_update_f64)

/* AM-AdamW over a fleet's rows (shiftsim.optim.adamem._amadamw_rows): rows k0 .. k1 - 1 of S
 * segments (one per parameter tensor; tensor t's segment s of row k at x[t * S + s] +
 * k * ld[t * S + s]; the tensors P, G, D, V), each row whole on one thread (FOR_EACH_ROW). Segment s of row k takes its coefficients c1[s * K + k], c2[s * K + k];
 * the hyperparameters b2, w2 = 1 - b2 and lam are a pointer and a stride each. The first pass
 * runs AM_SUMS over each segment: the second moments moved, and the eager kernel's sums
 * (R = 5 with the parameters, where with_p, else 3) into sums[(s * R + r) * K + k], each
 * rounded once from float64. */
#define AMADAMW_ROWS(NAME, T, SUMS)                                                         \
    void NAME(int S, const int64_t *len, T **x, const int64_t *ld, int64_t k0, int64_t k1,  \
              int64_t K, const T *c1, const T *c2, const T *b2, int64_t b2_s, const T *w2,  \
              int64_t w2_s, const T *lam, int64_t lam_s, int use_lam, int with_p, T *sums)  \
    {                                                                                       \
        const int R = with_p ? 5 : 3;                                                       \
        FOR_EACH_ROW(4)                                                                     \
            for (int s = 0; s < S; s++) {                                                   \
                double out[5];                                                              \
                SUMS(with_p ? SEG(0) : NULL, SEG(1), SEG(2), SEG(3), len[s],                \
                     b2[k * b2_s], w2[k * w2_s], c1[s * K + k], c2[s * K + k],              \
                     lam[k * lam_s], use_lam, out);                                         \
                for (int r = 0; r < R; r++)                                                 \
                    sums[(s * R + r) * K + k] = (T)out[r];                                  \
            }                                                                               \
    }

AMADAMW_ROWS(shiftsim_amadamw_rows_f32, float, am_sums_f32)
AMADAMW_ROWS(shiftsim_amadamw_rows_f64, double, am_sums_f64)

/* The second pass over the rows, element by element as the eager kernel with tensor
 * hyperparameters: P and W again (AM_PRECOND), d <- lerp(d, g, a) with a = (P / W) keep
 * (use_lam) else keep (keep[s * K + k] = 1 - beta), p <- p shrink (decoupled decay; shrink
 * NULL: none), p <- p + d / (P / nlr) (torch's div_ of the denominator by the tensor value
 * nlr = -lr, then addcdiv_). */
#define AMADAMW_ROWS_UPDATE(NAME, T, RUN)                                                   \
    void NAME(int S, const int64_t *len, T **x, const int64_t *ld, int64_t k0, int64_t k1,  \
              int64_t K, const T *c1, const T *c2, const T *lam, int64_t lam_s,             \
              int use_lam, const T *keep, const T *shrink, int64_t shrink_s,                \
              const T *nlr, int64_t nlr_s)                                                  \
    {                                                                                       \
        FOR_EACH_ROW(4)                                                                     \
            for (int s = 0; s < S; s++)                                                     \
                RUN(SEG(0), SEG(1), SEG(2), SEG(3), len[s],                                 \
                    c1[s * K + k], c2[s * K + k], lam[k * lam_s], use_lam,                  \
                    keep[s * K + k], shrink ? shrink + k * shrink_s : NULL,                 \
                    nlr[k * nlr_s]);                                                        \
    }

AMADAMW_ROWS_UPDATE(shiftsim_amadamw_rows_update_f32, float, am_update_value_f32)
AMADAMW_ROWS_UPDATE(shiftsim_amadamw_rows_update_f64, double, am_update_value_f64)
