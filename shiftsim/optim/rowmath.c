/* The per-member arithmetic of the fleet's row kernels (TAM, MoMo, and MoMo-Adam's and
 * AM-AdamW's numbers between their passes), and the whole row steps, one call per step.
 *
 * A row kernel's step works on two kinds of data: the members' rows (n elements each, the
 * memory-bound passes: torch's multi-tensor ops and the native row sums of rowsums.c) and a
 * handful of (K,) vectors, one number per member (the cosine, the momentum's scale, MoMo's
 * step size ...). torch takes 20 to 30 operations for the second kind, each costing a few
 * microseconds however small its tensor; these functions do all of it in one call.
 *
 * The numbers are torch's, bit for bit, on CPUs where torch's kernels use fused multiply-adds
 * (x86-64 with AVX2, ARM64): each torch operation is one expression here, in its order, with
 * a fused multiply-add (fma) exactly where torch's kernel makes one — lerp (self + w (end -
 * self) for |w| < 0.5, else end + (w - 1)(end - self)), add with alpha (self + alpha other) and
 * addcmul (self + (value t1) t2) — and no other contraction (built with -ffp-contract=off).
 * A float hyperparameter is the one-element array of its value rounded to the tensors' dtype
 * (as torch rounds a Python scalar); a per-member one has stride 1. Built with rowsums.c by
 * shiftsim.optim._native.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* torch.clamp_min(x, lo) and clamp_max(x, hi) keep NaN (and a zero's sign) */
#define CLAMP_MIN(x, lo) ((x) < (lo) ? (lo) : (x))
#define CLAMP_MAX(x, hi) ((x) > (hi) ? (hi) : (x))

/* TAM's damping: the cosine from MG = <m, g>, MM = |m|^2 and GG = |g|^2 (0 where MM GG = 0,
 * clamped to [-1, 1]: torch.where(den2 > 0, mg * den2.rsqrt(), 0).clamp_(-1, 1)), smoothed
 * into SHAT (torch's lerp_ with the weight W0 = 1 - gamma), and D = SHAT / 2 + 1/2 declared. */
#define DAMPING(T, SQRT, FMA, ABS, MG, MM, GG, W0, SHAT, D)                                  \
    const T den2 = (MM) * (GG);                                                             \
    const T ratio = (MG) * ((T)1 / SQRT(den2));                                             \
    T cos = den2 > 0 ? ratio : (T)0;                                                        \
    cos = CLAMP_MAX(CLAMP_MIN(cos, (T)-1), (T)1);                                           \
    const T w0 = (W0), s0 = (SHAT), diff = cos - s0;                                        \
    const T s1 = ABS(w0) < (T)0.5 ? FMA(w0, diff, s0) : FMA(w0 - (T)1, diff, cos);          \
    SHAT = s1;                                                                              \
    const T half = s1 * (T)0.5;                                                             \
    const T D = half + (T)0.5;

/* TAM's scaled form, a model-wide cosine (shiftsim.optim.tam._tam_rows): from the sums
 * mg = <m, g>, gg = |g|^2 and the kept sq = |m|^2, update the smoothed cosine shat, the scale
 * and sq in place; write the damping d, the momentum's lerp weight w and the step -lr sigma.
 * beta_add: beta is a float (torch.add(c, scale, alpha=beta): one rounding), else a tensor
 * (scale * beta + c: two). positive: eps > 0 is known (no guard on sigma). */
#define TAM_COEFS(NAME, T, SQRT, FMA, ABS)                                                   \
    void NAME(int64_t K, const T *mg, const T *gg, T *sq, T *shat, T *scale,                 \
              const T *lw, int64_t lw_s, const T *eps, int64_t eps_s, const T *beta,         \
              int64_t beta_s, int beta_add, const T *neg_lr, int64_t lr_s, int positive,    \
              T *d_out, T *w_out, T *step_out)                                              \
    {                                                                                       \
        for (int64_t k = 0; k < K; k++) {                                                   \
            DAMPING(T, SQRT, FMA, ABS, mg[k], sq[k], gg[k], lw[k * lw_s], shat[k], d)       \
            const T c = d + eps[k * eps_s];                                                 \
            const T b = beta[k * beta_s];                                                   \
            T sig;                                                                          \
            if (beta_add) {                                                                 \
                sig = FMA(scale[k], b, c);                                                  \
            } else {                                                                        \
                const T scaled = scale[k] * b;                                              \
                sig = scaled + c;                                                           \
            }                                                                               \
            const T q = c / sig;                                                            \
            const T w = positive ? q : (sig > 0 ? q : (T)1);                                \
            scale[k] = sig;                                                                 \
            const T step = sig * neg_lr[k * lr_s];                                          \
            const T u = (T)1 - w;                                                           \
            T s = sq[k] * u;                                                                \
            const T w2 = (T)2 * w;                                                          \
            s = FMA(w2, mg[k], s);                                                          \
            s = s * u;                                                                      \
            const T ww = w * w;                                                             \
            s = FMA(ww, gg[k], s);                                                          \
            sq[k] = CLAMP_MIN(s, (T)0);                                                     \
            d_out[k] = d;                                                                   \
            w_out[k] = w;                                                                   \
            step_out[k] = step;                                                             \
        }                                                                                   \
    }

TAM_COEFS(shiftsim_tam_coefs_f32, float, sqrtf, fmaf, fabsf)
TAM_COEFS(shiftsim_tam_coefs_f64, double, sqrt, fma, fabs)

/* MoMo's step size (shiftsim.optim.momo._step_sizes) from the gap f_avg - rho f* (GAP),
 * <x, d> (XD), gamma (G) and the norm (NORM), with c = 1 + lr wd (C; C_ONE: exactly 1, the
 * products with it skipped): num = gap + xd - gamma, or c gap + xd - c gamma; tau = min(max(num,
 * 0) / norm, cap) (0 where the norm is not positive) into TAU_OUT, -tau into NEG_OUT.
 * torch.minimum and clamp_max agree here: both keep a NaN ratio, and cap is finite. */
#define MOMO_TAU(T, GAP, XD, G, NORM, C_ONE, C, CAP, TAU_OUT, NEG_OUT)                       \
    T num_;                                                                                 \
    if (C_ONE) {                                                                            \
        const T t_ = (GAP) + (XD);                                                          \
        num_ = t_ - (G);                                                                    \
    } else {                                                                                \
        const T c_ = (C);                                                                   \
        const T cgap_ = c_ * (GAP), cg_ = c_ * (G);                                         \
        const T t_ = cgap_ + (XD);                                                          \
        num_ = t_ - cg_;                                                                    \
    }                                                                                       \
    const T norm_ = (NORM);                                                                 \
    const int pos_ = norm_ > 0;                                                             \
    const T q_ = CLAMP_MIN(num_, (T)0) / (pos_ ? norm_ : (T)1);                             \
    const T tau_ = CLAMP_MAX(pos_ ? q_ : (T)0, (CAP));                                      \
    TAU_OUT = tau_;                                                                         \
    NEG_OUT = -tau_;

/* MoMo past its first step, without bias correction and f* estimation
 * (shiftsim.optim.momo._momo_rows): from the loss f and the sums dd = |d|^2, xg = <x, g>,
 * xd = <x, d>, update the loss average and gamma in place (both with the weights beta and
 * w = 1 - beta) and write the step size tau (MOMO_TAU, cap = lr) and -tau. */
#define MOMO_COEFS(NAME, T)                                                                  \
    void NAME(int64_t K, const T *f, T *loss_avg, const T *beta, int64_t beta_s, const T *w, \
              int64_t w_s, const T *xg, const T *xd, const T *dd, T *gam, const T *fstar,    \
              const T *c, int64_t c_s, int c_one, const T *cap, int64_t cap_s, T *tau_out,   \
              T *neg_out)                                                                   \
    {                                                                                       \
        for (int64_t k = 0; k < K; k++) {                                                   \
            const T b = beta[k * beta_s], wk = w[k * w_s];                                  \
            const T la_b = loss_avg[k] * b, f_w = f[k] * wk;                                \
            const T la = la_b + f_w;                                                        \
            loss_avg[k] = la;                                                               \
            const T g_b = gam[k] * b, xg_w = xg[k] * wk;                                    \
            const T g = g_b + xg_w;                                                         \
            gam[k] = g;                                                                     \
            const T gap = la - fstar[k];                                                    \
            MOMO_TAU(T, gap, xd[k], g, dd[k], c_one, c[k * c_s], cap[k * cap_s], tau_out[k], \
                     neg_out[k])                                                            \
        }                                                                                   \
    }

MOMO_COEFS(shiftsim_momo_coefs_f32, float)
MOMO_COEFS(shiftsim_momo_coefs_f64, double)

/* MoMo-Adam's numbers between its row passes without f* estimation
 * (shiftsim.optim.momo._momo_adam_taus), in two calls around torch's sum of gamma over the
 * segments (its order is torch's own, so torch makes it). The first: from the loss f and the
 * per-segment sums xg = <x_s, g_s> ((S, K) row-major, as gam), gam <- gam b1 + xg w1 (torch's
 * mul_, then add_ of xg * w1) and the loss average la <- f w1 + la b1. */
#define MOMO_ADAM_AVERAGES(NAME, T)                                                          \
    void NAME(int64_t S, int64_t K, const T *f, T *la, T *gam, const T *xg, const T *b1,      \
              int64_t b1_s, const T *w1, int64_t w1_s)                                      \
    {                                                                                       \
        for (int64_t s = 0; s < S; s++)                                                     \
            for (int64_t k = 0; k < K; k++) {                                               \
                const T g_b = gam[s * K + k] * b1[k * b1_s];                                \
                const T xg_w = xg[s * K + k] * w1[k * w1_s];                                \
                gam[s * K + k] = g_b + xg_w;                                                \
            }                                                                               \
        for (int64_t k = 0; k < K; k++) {                                                   \
            const T f_w = f[k] * w1[k * w1_s], la_b = la[k] * b1[k * b1_s];                 \
            la[k] = f_w + la_b;                                                             \
        }                                                                                   \
    }

MOMO_ADAM_AVERAGES(shiftsim_momo_adam_averages_f32, float)
MOMO_ADAM_AVERAGES(shiftsim_momo_adam_averages_f64, double)

/* The second: with gamma (the sum over the segments), xd = <x, d> and the norm dq = <d, q>,
 * the step size tau = MOMO_TAU of the gap la - rho f* (rho_one: rho is exactly 1, its product
 * skipped) capped at cap = lr / rho, and -tau. */
#define MOMO_ADAM_COEFS(NAME, T)                                                             \
    void NAME(int64_t K, const T *la, const T *fstar, const T *xd, const T *dq,              \
              const T *gamma, int rho_one, int c_one, T *tau_out, T *neg_out, const T *rho,  \
              int64_t rho_s, const T *c, int64_t c_s, const T *cap, int64_t cap_s)          \
    {                                                                                       \
        for (int64_t k = 0; k < K; k++) {                                                   \
            const T rf = rho_one ? fstar[k] : rho[k * rho_s] * fstar[k];                    \
            const T gap = la[k] - rf;                                                       \
            MOMO_TAU(T, gap, xd[k], gamma[k], dq[k], c_one, c[k * c_s], cap[k * cap_s],      \
                     tau_out[k], neg_out[k])                                                \
        }                                                                                   \
    }

MOMO_ADAM_COEFS(shiftsim_momo_adam_coefs_f32, float)
MOMO_ADAM_COEFS(shiftsim_momo_adam_coefs_f64, double)

/* AM-AdamW's betas over a fleet's rows (shiftsim.optim.adamem._am_beta_parts, as
 * _amadamw_rows calls it: the previous lr the current one, lr a tensor), from the first pass's
 * sums ((S, R, K) row-major: q1, q2, den, and with_p x1, x2; R = 3 or 5) per segment s and
 * member k, torch's operations one expression each:
 *   first step: beta = 0 + beta_max;
 *   else num = den - (q2 - q1); with_p: num <- num - wd (x2 - x1), q1 <- q1 + wd x1;
 *   c = lr q1 (with_p: times cwl = 1 + wd lr); num <- num + (lr > 0 ? c / lr : 0) (the guarded
 *   form; where every lr > 0 it is the unguarded one's numbers); beta = min(max(den > 0 ?
 *   num / den : 0, 0), beta_max).
 * Writes beta and keep = 1 - beta ((S, K)); pi <- pi beta where pi is not NULL (the product
 * of the past betas, (S, K), torch's mul_). */
#define AM_BETAS(NAME, T)                                                                    \
    void NAME(int64_t S, int64_t K, const T *sums, int with_p, int first, T *beta_out,       \
              T *keep_out, T *pi, const T *lr, int64_t lr_s, const T *wd, int64_t wd_s,      \
              const T *cwl, int64_t cwl_s, const T *bmax, int64_t bmax_s)                   \
    {                                                                                       \
        const int64_t R = with_p ? 5 : 3;                                                   \
        for (int64_t s = 0; s < S; s++)                                                     \
            for (int64_t k = 0; k < K; k++) {                                               \
                const T *q = sums + s * R * K + k;                                          \
                const T bm = bmax[k * bmax_s];                                              \
                T beta;                                                                     \
                if (first)                                                                  \
                    beta = (T)0 + bm;                                                       \
                else {                                                                      \
                    const T q1 = q[0], q2 = q[K], den = q[2 * K];                           \
                    const T diff = q2 - q1;                                                 \
                    T num = den - diff, a = q1;                                             \
                    if (with_p) {                                                           \
                        const T x1 = q[3 * K], x2 = q[4 * K], wdk = wd[k * wd_s];           \
                        const T dx = x2 - x1;                                               \
                        const T wdx = wdk * dx;                                             \
                        num = num - wdx;                                                    \
                        const T wx1 = wdk * x1;                                             \
                        a = q1 + wx1;                                                       \
                    }                                                                       \
                    const T lrk = lr[k * lr_s];                                             \
                    const T gap = lrk * a;                                                  \
                    const T cc = with_p ? cwl[k * cwl_s] * gap : gap;                       \
                    const T add = lrk > 0 ? cc / lrk : (T)0;                                \
                    num = num + add;                                                        \
                    const T r = num / den;                                                  \
                    beta = CLAMP_MAX(CLAMP_MIN(den > 0 ? r : (T)0, (T)0), bm);              \
                }                                                                           \
                beta_out[s * K + k] = beta;                                                 \
                keep_out[s * K + k] = (T)1 - beta;                                          \
                if (pi)                                                                     \
                    pi[s * K + k] = pi[s * K + k] * beta;                                   \
            }                                                                               \
    }

AM_BETAS(shiftsim_am_betas_f32, float)
AM_BETAS(shiftsim_am_betas_f64, double)

/* TAM's update of the members' rows after the coefficients (shiftsim.optim.tam._tam_rows): for
 * row k of S segments (segment s of each tensor at x[s] + k * ld[s], len[s] elements),
 * m <- lerp(m, g, w[k]) (torch's _foreach_lerp_), then p <- p * shrink (decoupled weight
 * decay's _foreach_mul_, when shrink is not NULL), then p <- p + m step[k] (_foreach_addcmul_:
 * one fused multiply-add), element by element in one pass instead of three. */
#define TAM_UPDATE(NAME, T, FMA, ABS)                                                        \
    void NAME(int S, const int64_t *len, T **p, const int64_t *p_ld, const T **g,            \
              const int64_t *g_ld, T **m, const int64_t *m_ld, int64_t K, const T *w,        \
              const T *step, const T *shrink, int64_t shrink_s)                             \
    {                                                                                       \
        for (int64_t k = 0; k < K; k++) {                                                   \
            const T wk = w[k], wm1 = wk - (T)1, sk = step[k];                               \
            const int small = ABS(wk) < (T)0.5;                                             \
            const T fk = shrink ? shrink[k * shrink_s] : (T)1;                              \
            for (int s = 0; s < S; s++) {                                                   \
                T *pp = p[s] + k * p_ld[s], *mp = m[s] + k * m_ld[s];                       \
                const T *gp = g[s] + k * g_ld[s];                                           \
                const int64_t n = len[s];                                                   \
                if (small && shrink)                                                        \
                    for (int64_t e = 0; e < n; e++) {                                       \
                        const T mv = FMA(wk, gp[e] - mp[e], mp[e]);                         \
                        mp[e] = mv;                                                         \
                        pp[e] = FMA(mv, sk, pp[e] * fk);                                    \
                    }                                                                       \
                else if (small)                                                             \
                    for (int64_t e = 0; e < n; e++) {                                       \
                        const T mv = FMA(wk, gp[e] - mp[e], mp[e]);                         \
                        mp[e] = mv;                                                         \
                        pp[e] = FMA(mv, sk, pp[e]);                                         \
                    }                                                                       \
                else                                                                        \
                    for (int64_t e = 0; e < n; e++) {                                       \
                        const T mv = FMA(wm1, gp[e] - mp[e], gp[e]);                        \
                        mp[e] = mv;                                                         \
                        pp[e] = FMA(mv, sk, shrink ? pp[e] * fk : pp[e]);                   \
                    }                                                                       \
            }                                                                               \
        }                                                                                   \
    }

TAM_UPDATE(shiftsim_tam_update_f32, float, fmaf, fabsf)
TAM_UPDATE(shiftsim_tam_update_f64, double, fma, fabs)

/* MoMo's update of the members' rows after the step size (shiftsim.optim.momo._momo_rows):
 * p <- p + d neg[k] (_foreach_addcmul_: one fused multiply-add), then p <- p * shrink (the
 * proximal weight decay's _foreach_mul_ by 1 / (1 + lr wd), when shrink is not NULL), element
 * by element in one pass instead of two. */
#define MOMO_UPDATE(NAME, T, FMA)                                                            \
    static void NAME(int S, const int64_t *len, T **p, const int64_t *p_ld, const T **d,            \
              const int64_t *d_ld, int64_t K, const T *neg, const T *shrink,                 \
              int64_t shrink_s)                                                             \
    {                                                                                       \
        for (int64_t k = 0; k < K; k++) {                                                   \
            const T nk = neg[k];                                                            \
            for (int s = 0; s < S; s++) {                                                   \
                T *pp = p[s] + k * p_ld[s];                                                 \
                const T *dp = d[s] + k * d_ld[s];                                           \
                const int64_t n = len[s];                                                   \
                if (shrink) {                                                               \
                    const T fk = shrink[k * shrink_s];                                      \
                    for (int64_t e = 0; e < n; e++)                                         \
                        pp[e] = FMA(dp[e], nk, pp[e]) * fk;                                 \
                } else                                                                      \
                    for (int64_t e = 0; e < n; e++)                                         \
                        pp[e] = FMA(dp[e], nk, pp[e]);                                      \
            }                                                                               \
        }                                                                                   \
    }

MOMO_UPDATE(shiftsim_momo_update_f32, float, fmaf)
MOMO_UPDATE(shiftsim_momo_update_f64, double, fma)

/* Whole row steps: TAM's and MoMo's (the two functions above each, after their sums) for rows
 * k0 .. k1 - 1, one member after another — its sums (rowsums.c), its per-member numbers, its
 * update — so that the update reads the row while the sums' pass has left it in cache, in one
 * call instead of three. The same functions on the same numbers, so the same bits as the three
 * calls. Segment pointers and strides as in TAM_UPDATE (tensor t's segment s at x[t * S + s]);
 * sums: (P, K) row-major, the pairs' sums of member k at sums[q * K + k]. Every step takes its
 * hyperparameters last, each as a pointer and a stride (0: one value for all members, 1: one
 * per member), the optional decay factor `shrink` (NULL: none) last of all. -1 for more than
 * MAXSEG segments (the caller then makes the three calls). */
#define MAXSEG 64

int shiftsim_rowsums_f32(const float **x, const int64_t *ld, int S, const int64_t *len, int npairs,
                         const int *pa, const int *pb, int64_t K, int64_t n, float *out,
                         int64_t out_ld, int lt, int lg, const float *lw, int64_t lw_s);
int shiftsim_rowsums_f64(const double **x, const int64_t *ld, int S, const int64_t *len,
                         int npairs, const int *pa, const int *pb, int64_t K, int64_t n,
                         double *out, int64_t out_ld, int lt, int lg, const double *lw,
                         int64_t lw_s);

/* Row k's pointers of `count` tensors of S segments each (x: tensor t's segment s at
 * x[t * S + s], row stride ld[t * S + s]). */
#define ROW_POINTERS(T, OUT, X, LD, COUNT)                                                   \
    for (int j = 0; j < (COUNT) * S; j++)                                                   \
        OUT[j] = (T *)X[j] + k * LD[j];

/* The start of a whole row step over COUNT tensors of S segments each (x, ld): -1 unless
 * 1 <= S <= MAXSEG; `zero` strides for the one-row calls. */
#define ROW_STEP_SETUP(T, COUNT)                                                             \
    static const int64_t zero[(COUNT) * MAXSEG] = {0};                                      \
    if (S < 1 || S > MAXSEG)                                                                \
        return -1;

/* The rows from which a whole row step is split across the OpenMP team (when the library is
 * built with it; see tensorsteps.c): at least two rows reading this many elements in all
 * (rows x row length x tensors; the loader sets it to shiftsim.optim._native's
 * ROWS_PARALLEL_FROM).
 * Each row is computed whole by one thread, in the same order: the same bits at any thread
 * count. */
int64_t shiftsim_rows_parallel_from = 1 << 16;

/* Whether `rows` rows of `count` tensors of `n` elements a row are split across the team (the
 * rule of every row step here and in tensorsteps.c). */
int shiftsim_split_rows(int64_t rows, int64_t n, int count)
{
    return rows > 1 && rows * n * count >= shiftsim_rows_parallel_from;
}

/* The loop over rows k0 .. k1 - 1 of a whole row step reading COUNT tensors of N elements a
 * row, split across the team as shiftsim_split_rows says (schedule static: a thread takes the
 * same rows every step). */
#define FOR_ROWS(COUNT, N)                                                                   \
    const int split_rows = shiftsim_split_rows(k1 - k0, (N), (COUNT));                      \
    _Pragma("omp parallel for schedule(static) if(split_rows)")                             \
    for (int64_t k = k0; k < k1; k++)

/* Row k's pointers (`row`, COUNT tensors), then its NP sums of the pairs pa, pb (rowsums.c)
 * into sums[q * K + k], tensor LT first moved toward tensor LG by *LW (LT = -1: no move). */
#define ROW_SUMS(T, SUMS, COUNT, NP, LT, LG, LW)                                             \
    T *row[(COUNT) * MAXSEG];                                                               \
    ROW_POINTERS(T, row, x, ld, COUNT)                                                      \
    SUMS((const T **)row, zero, S, len, NP, pa, pb, 1, n, sums + k, K, LT, LG, LW, 0);

#define TAM_STEP(NAME, T, SUMS, COEFS, UPDATE)                                               \
    int NAME(int S, const int64_t *len, int64_t n, T **x, const int64_t *ld, int64_t k0,     \
             int64_t k1, int64_t K, T *sums, T *sq, T *shat, T *scale, int beta_add,         \
             int positive, T *d_out, T *w_out, T *step_out, const T *lw, int64_t lw_s,       \
             const T *eps, int64_t eps_s, const T *beta, int64_t beta_s, const T *neg_lr,    \
             int64_t lr_s, const T *shrink, int64_t shrink_s)                               \
    {                                                                                       \
        /* x: the tensors P, G, M (3 S pointers); the sums' pairs <m, g>, <g, g> */          \
        static const int pa[2] = {2, 1}, pb[2] = {1, 1};                                    \
        ROW_STEP_SETUP(T, 3)                                                                \
        FOR_ROWS(3, n) {                                                                    \
            ROW_SUMS(T, SUMS, 3, 2, -1, -1, NULL)                                           \
            COEFS(1, sums + k, sums + K + k, sq + k, shat + k, scale + k, lw + k * lw_s,     \
                  lw_s, eps + k * eps_s, eps_s, beta + k * beta_s, beta_s, beta_add,        \
                  neg_lr + k * lr_s, lr_s, positive, d_out + k, w_out + k, step_out + k);   \
            UPDATE(S, len, row, zero, (const T **)(row + S), zero, row + 2 * S, zero, 1,     \
                   w_out + k, step_out + k, shrink ? shrink + k * shrink_s : NULL, 0);      \
        }                                                                                   \
        return 0;                                                                           \
    }

TAM_STEP(shiftsim_tam_step_f32, float, shiftsim_rowsums_f32, shiftsim_tam_coefs_f32,
         shiftsim_tam_update_f32)
TAM_STEP(shiftsim_tam_step_f64, double, shiftsim_rowsums_f64, shiftsim_tam_coefs_f64,
         shiftsim_tam_update_f64)

#define MOMO_STEP(NAME, T, SUMS, COEFS, UPDATE)                                              \
    int NAME(int S, const int64_t *len, int64_t n, T **x, const int64_t *ld, int64_t k0,     \
             int64_t k1, int64_t K, T *sums, const T *f, T *loss_avg, T *gam,                \
             const T *fstar, int c_one, T *tau_out, T *neg_out, const T *beta,               \
             int64_t beta_s, const T *w, int64_t w_s, const T *c, int64_t c_s, const T *cap, \
             int64_t cap_s, const T *shrink, int64_t shrink_s)                              \
    {                                                                                       \
        /* x: the tensors D, P, G (3 S pointers); the sums' pairs |d|^2, <x, g>, <x, d>,     \
         * d first moved toward g (the lerp's weight w) */                                  \
        static const int pa[3] = {0, 1, 1}, pb[3] = {0, 2, 0};                              \
        ROW_STEP_SETUP(T, 3)                                                                \
        FOR_ROWS(3, n) {                                                                    \
            ROW_SUMS(T, SUMS, 3, 3, 0, 2, w + k * w_s)                                      \
            COEFS(1, f + k, loss_avg + k, beta + k * beta_s, beta_s, w + k * w_s, w_s,       \
                  sums + K + k, sums + 2 * K + k, sums + k, gam + k, fstar + k,             \
                  c + k * c_s, c_s, c_one, cap + k * cap_s, cap_s, tau_out + k,             \
                  neg_out + k);                                                             \
            UPDATE(S, len, row + S, zero, (const T **)row, zero, 1, neg_out + k,            \
                   shrink ? shrink + k * shrink_s : NULL, 0);                               \
        }                                                                                   \
        return 0;                                                                           \
    }

MOMO_STEP(shiftsim_momo_step_f32, float, shiftsim_rowsums_f32, shiftsim_momo_coefs_f32,
          shiftsim_momo_update_f32)
MOMO_STEP(shiftsim_momo_step_f64, double, shiftsim_rowsums_f64, shiftsim_momo_coefs_f64,
          shiftsim_momo_update_f64)

/* AdaTAM(W)'s whole row step with a model-wide cosine (shiftsim.optim.tam._adatam_rows), rows
 * k0 .. k1 - 1, member by member: the sums <m, g>, |m|^2, |g|^2 (rowsums.c), the cosine
 * smoothed into shat and the damping d (as TAM_COEFS), c = d + torque_eps, then one pass over
 * the row doing torch's operations of shiftsim.optim.tam._adatam_update with tensor
 * hyperparameters, each one expression: m <- m b1 (_foreach_mul_), m <- m + g c
 * (_foreach_addcmul_: one fma), v <- v b2, v <- v + g (g w2) (_foreach_mul_, then addcmul:
 * one fma), p <- p shrink (decoupled decay, when shrink is not NULL), den = sqrt(v) (correctly
 * rounded, as numpy's), den <- den + eps, den <- den / size, p <- p + m / den (addcdiv). x: the
 * tensors P, G, M, V (4 S pointers); sums: (3, K) row-major. -1 for more than MAXSEG
 * segments. */
#define ADATAM_STEP(NAME, T, SUMS, SQRT, FMA, ABS)                                           \
    int NAME(int S, const int64_t *len, int64_t n, T **x, const int64_t *ld, int64_t k0,     \
             int64_t k1, int64_t K, T *sums, T *shat, T *d_out, const T *lw, int64_t lw_s,   \
             const T *teps, int64_t teps_s, const T *b1, int64_t b1_s, const T *b2,          \
             int64_t b2_s, const T *w2, int64_t w2_s, const T *eps, int64_t eps_s,           \
             const T *size, int64_t size_s, const T *shrink, int64_t shrink_s)              \
    {                                                                                       \
        static const int pa[3] = {2, 2, 1}, pb[3] = {1, 2, 1};                              \
        ROW_STEP_SETUP(T, 4)                                                                \
        FOR_ROWS(4, n) {                                                                    \
            ROW_SUMS(T, SUMS, 4, 3, -1, -1, NULL)                                           \
            DAMPING(T, SQRT, FMA, ABS, sums[k], sums[K + k], sums[2 * K + k], lw[k * lw_s],  \
                    shat[k], d)                                                             \
            d_out[k] = d;                                                                   \
            const T ck = d + teps[k * teps_s];                                              \
            const T b1k = b1[k * b1_s], b2k = b2[k * b2_s], w2k = w2[k * w2_s];             \
            const T ek = eps[k * eps_s], sk = size[k * size_s];                             \
            const T fk = shrink ? shrink[k * shrink_s] : (T)1;                              \
            for (int s = 0; s < S; s++) {                                                   \
                T *pp = row[s], *mp = row[2 * S + s], *vp = row[3 * S + s];                 \
                const T *gp = row[S + s];                                                   \
                const int64_t m = len[s];                                                   \
                for (int64_t e = 0; e < m; e++) {                                           \
                    const T gv = gp[e];                                                     \
                    const T mv = FMA(gv, ck, mp[e] * b1k);                                  \
                    mp[e] = mv;                                                             \
                    const T tmp = gv * w2k;                                                 \
                    const T vv = FMA(gv, tmp, vp[e] * b2k);                                 \
                    vp[e] = vv;                                                             \
                    const T pv = shrink ? pp[e] * fk : pp[e];                               \
                    T den = SQRT(vv);                                                       \
                    den = den + ek;                                                         \
                    den = den / sk;                                                         \
                    pp[e] = pv + mv / den;                                                  \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        return 0;                                                                           \
    }

ADATAM_STEP(shiftsim_adatam_step_f32, float, shiftsim_rowsums_f32, sqrtf, fmaf, fabsf)
ADATAM_STEP(shiftsim_adatam_step_f64, double, shiftsim_rowsums_f64, sqrt, fma, fabs)

/* AM-SGD's whole row step past the first (shiftsim.optim.adamem._amsgd_rows), rows k0 .. k1 - 1,
 * member by member: the sums a = <d, g>, b = |g|^2, e = |d|^2 (rowsums.c); the torch operations
 * of shiftsim.optim.adamem._am_weight and _clip, each one expression (no fma: plain products
 * and sums there), giving beta and the lerp weight w = (1 - beta) / (1 + lam); then one pass:
 * d <- lerp(d, g, w) (_foreach_lerp_) and p <- p + d neg_lr (_foreach_addcmul_: one fma).
 * x: the tensors P, G, D (3 S pointers); sums: (3, K) row-major; tol: 32 times the dtype's
 * machine epsilon. -1 for more than MAXSEG segments. */
#define AMSGD_STEP(NAME, T, SUMS, FMA, ABS)                                                  \
    int NAME(int S, const int64_t *len, int64_t n, T **x, const int64_t *ld, int64_t k0,     \
             int64_t k1, int64_t K, T *sums, T *beta_out, const T *ratio, int64_t ratio_s,   \
             const T *lam, int64_t lam_s, const T *lam1, int64_t lam1_s, const T *om,        \
             int64_t om_s, const T *bmax, int64_t bmax_s, const T *tol_c, int64_t tol_s,     \
             const T *neg_lr, int64_t lr_s)                                                 \
    {                                                                                       \
        static const int pa[3] = {2, 1, 2}, pb[3] = {1, 1, 2};                              \
        ROW_STEP_SETUP(T, 3)                                                                \
        FOR_ROWS(3, n) {                                                                    \
            ROW_SUMS(T, SUMS, 3, 3, -1, -1, NULL)                                           \
            const T a = sums[k], b = sums[K + k], e = sums[2 * K + k];                      \
            const T l1 = lam1[k * lam1_s];                                                  \
            const T tr = a * ratio[k * ratio_s];                                            \
            const T t1 = l1 * tr, t2 = om[k * om_s] * a, t3 = lam[k * lam_s] * e;           \
            const T t4 = t2 + t3;                                                           \
            const T t5 = t4 - b;                                                            \
            const T num = t1 - t5;                                                          \
            const T u1 = (T)2 * a;                                                          \
            const T u2 = e - u1;                                                            \
            const T den = u2 + b;                                                           \
            const T v1 = e + b;                                                             \
            const T tol = tol_c[k * tol_s] * v1;                                            \
            const T q = num / den;                                                          \
            T beta = den > tol ? q : (T)0;                                                  \
            beta = CLAMP_MAX(CLAMP_MIN(beta, (T)0), bmax[k * bmax_s]);                      \
            beta_out[k] = beta;                                                             \
            const T z1 = (T)1 - beta;                                                       \
            const T w = z1 / l1, wm1 = w - (T)1, nk = neg_lr[k * lr_s];                     \
            const int small = ABS(w) < (T)0.5;                                              \
            for (int s = 0; s < S; s++) {                                                   \
                T *pp = row[s], *dp = row[2 * S + s];                                       \
                const T *gp = row[S + s];                                                   \
                const int64_t m = len[s];                                                   \
                if (small)                                                                  \
                    for (int64_t i = 0; i < m; i++) {                                       \
                        const T dv = FMA(w, gp[i] - dp[i], dp[i]);                          \
                        dp[i] = dv;                                                         \
                        pp[i] = FMA(dv, nk, pp[i]);                                         \
                    }                                                                       \
                else                                                                        \
                    for (int64_t i = 0; i < m; i++) {                                       \
                        const T dv = FMA(wm1, gp[i] - dp[i], gp[i]);                        \
                        dp[i] = dv;                                                         \
                        pp[i] = FMA(dv, nk, pp[i]);                                         \
                    }                                                                       \
            }                                                                               \
        }                                                                                   \
        return 0;                                                                           \
    }

AMSGD_STEP(shiftsim_amsgd_step_f32, float, shiftsim_rowsums_f32, fmaf, fabsf)
AMSGD_STEP(shiftsim_amsgd_step_f64, double, shiftsim_rowsums_f64, fma, fabs)

/* The numbers between the two passes of TAM's, AdaTAM(W)'s and AM-SGD's compiled steps over one
 * learner's tensors (shiftsim.optim._compiled's _tam_numbers, _adatam_numbers and
 * _amsgd_numbers, which compute them with torch's operations on 0-d tensors), each operation
 * one expression in its order, as above: torch's bits. tensorsteps.c calls them between its
 * passes (a whole step in one call); s: the first pass's sums, h: the float hyperparameters as
 * the tensor shiftsim.optim._compiled.Scalars makes (the dtype's numbers). */

/* TAM: s = (<m, g>, |m|^2, |g|^2), h = (lr, beta, 1 - gamma, eps). shat <- lerp(shat, cos,
 * 1 - gamma) and d (DAMPING); c = d + eps; sig = scale beta + c (two roundings); w = c / sig
 * (positive: eps > 0 is known; else 1 where sig is not positive); u = 1 - w; the new
 * |m|^2 = max((u mm + (2 w) mg) u + (w w) gg, 0) into sq; scale <- sig; out = (d, w,
 * sig (-lr)). */
#define TAM_TENSOR_NUMBERS(NAME, T, SQRT, FMA, ABS)                                          \
    void NAME(const T *s, const T *h, int positive, T *shat, T *scale, T *sq, T *out)       \
    {                                                                                       \
        DAMPING(T, SQRT, FMA, ABS, s[0], s[1], s[2], h[2], *shat, d)                        \
        const T c = d + h[3];                                                               \
        const T scaled = *scale * h[1];                                                     \
        const T sig = scaled + c;                                                           \
        const T q = c / sig;                                                                \
        const T w = positive ? q : (sig > 0 ? q : (T)1);                                    \
        const T u = (T)1 - w;                                                               \
        const T umm = u * s[1], w2 = (T)2 * w;                                              \
        const T w2mg = w2 * s[0];                                                           \
        const T a = umm + w2mg;                                                             \
        const T au = a * u, ww = w * w;                                                     \
        const T wwgg = ww * s[2];                                                           \
        const T t = au + wwgg;                                                              \
        *sq = CLAMP_MIN(t, (T)0);                                                           \
        *scale = sig;                                                                       \
        const T neg_lr = -h[0];                                                             \
        out[0] = d;                                                                         \
        out[1] = w;                                                                         \
        out[2] = sig * neg_lr;                                                              \
    }

TAM_TENSOR_NUMBERS(shiftsim_tam_tensor_numbers_f32, float, sqrtf, fmaf, fabsf)
TAM_TENSOR_NUMBERS(shiftsim_tam_tensor_numbers_f64, double, sqrt, fma, fabs)

/* AdaTAM(W): s = (<m, g>, |m|^2, |g|^2); shat <- lerp(shat, cos, weight = 1 - gamma) and d
 * (DAMPING);
 * out = (d, d + teps). */
#define ADATAM_TENSOR_NUMBERS(NAME, T, SQRT, FMA, ABS)                                       \
    void NAME(const T *s, T weight, T teps, T *shat, T *out)                                \
    {                                                                                       \
        DAMPING(T, SQRT, FMA, ABS, s[0], s[1], s[2], weight, *shat, d)                      \
        out[0] = d;                                                                         \
        out[1] = d + teps;                                                                  \
    }

ADATAM_TENSOR_NUMBERS(shiftsim_adatam_tensor_numbers_f32, float, sqrtf, fmaf, fabsf)
ADATAM_TENSOR_NUMBERS(shiftsim_adatam_tensor_numbers_f64, double, sqrt, fma, fabs)

/* AM-SGD: s = (a = <d, g>, e = |d|^2, b = |g|^2), h = (lr, wd, lam, beta_max, lr_ratio, tol):
 * num = (1 + lam)(a ratio) - (((1 - lam) a + lam e) - b); den = (e - 2 a) + b;
 * beta = min(max(den > tol (e + b) ? num / den : 0, 0), beta_max) (torch.minimum: beta_max is a
 * finite number, so a NaN beta stays NaN as there); w = (1 - beta) / (1 + lam); u = 1 - w;
 * the new |d|^2 = max((u e + (2 w) a) u + (w w) b, 0) into sq; out = (beta, w). */
#define AMSGD_TENSOR_NUMBERS(NAME, T)                                                        \
    void NAME(const T *s, const T *h, T *sq, T *out)                                        \
    {                                                                                       \
        const T a = s[0], e = s[1], b = s[2], lam = h[2];                                   \
        const T l1 = lam + (T)1, ar = a * h[4];                                             \
        const T t1 = l1 * ar;                                                               \
        const T om = (T)1 - lam;                                                            \
        const T t2 = om * a, t3 = lam * e;                                                  \
        const T t4 = t2 + t3;                                                               \
        const T t5 = t4 - b;                                                                \
        const T num = t1 - t5;                                                              \
        const T a2 = a * (T)2;                                                              \
        const T u2 = e - a2;                                                                \
        const T den = u2 + b;                                                               \
        const T eb = e + b;                                                                 \
        const T tol = h[5] * eb;                                                            \
        const T r = num / den;                                                              \
        T beta = den > tol ? r : (T)0;                                                      \
        beta = CLAMP_MAX(CLAMP_MIN(beta, (T)0), h[3]);                                      \
        const T z1 = (T)1 - beta;                                                           \
        const T w = z1 / l1;                                                                \
        const T u = (T)1 - w;                                                               \
        const T ue = u * e, w2 = (T)2 * w;                                                  \
        const T w2a = w2 * a;                                                               \
        const T x = ue + w2a;                                                               \
        const T xu = x * u, ww = w * w;                                                     \
        const T wwb = ww * b;                                                               \
        const T t = xu + wwb;                                                               \
        *sq = CLAMP_MIN(t, (T)0);                                                           \
        out[0] = beta;                                                                      \
        out[1] = w;                                                                         \
    }

AMSGD_TENSOR_NUMBERS(shiftsim_amsgd_tensor_numbers_f32, float)
AMSGD_TENSOR_NUMBERS(shiftsim_amsgd_tensor_numbers_f64, double)

/* AM-AdamW's betas between the passes of its compiled step over one learner's tensors
 * (shiftsim.optim.adamem._am_beta_parts with float hyperparameters, as _amadamw_native calls
 * it), tensor i from its R sums (sums[i * R ..]: q1, q2, den, and where R = 5 x1, x2):
 * num = den - (q2 - q1); R = 5: num <- num - (x2 - x1) wd, q1 <- q1 + x1 wd; gap_on (lr != 0):
 * num <- num + (q1 prev [times c = 1 + wd lr where R = 5]) / lr; beta = min(max(den > 0 ?
 * num / den : 0, 0), beta_max). hp = (prev, wd, c, lr, beta_max), each the Python float rounded
 * to T (as torch rounds a float multiplied into a tensor). Writes beta, keep = 1 - beta and
 * pi <- pi beta. */
#define AM_TENSOR_BETAS(NAME, T)                                                             \
    void NAME(int64_t n, const T *sums, int R, const T *hp, int gap_on, T *beta_out,        \
              T *keep, T *pi)                                                               \
    {                                                                                       \
        const T prev = hp[0], wd = hp[1], c = hp[2], lr = hp[3], bmax = hp[4];              \
        for (int64_t i = 0; i < n; i++) {                                                   \
            const T *q = sums + i * R;                                                      \
            T q1 = q[0];                                                                    \
            const T diff = q[1] - q1;                                                       \
            T num = q[2] - diff;                                                            \
            if (R == 5) {                                                                   \
                const T dx = q[4] - q[3];                                                   \
                const T wdx = dx * wd;                                                      \
                num = num - wdx;                                                            \
                const T wx1 = q[3] * wd;                                                    \
                q1 = q1 + wx1;                                                              \
            }                                                                               \
            if (gap_on) {                                                                   \
                const T gap = q1 * prev;                                                    \
                const T cc = R == 5 ? gap * c : gap;                                        \
                const T add = cc / lr;                                                      \
                num = num + add;                                                            \
            }                                                                               \
            const T den = q[2];                                                             \
            const T r = num / den;                                                          \
            const T beta = CLAMP_MAX(CLAMP_MIN(den > 0 ? r : (T)0, (T)0), bmax);            \
            beta_out[i] = beta;                                                             \
            keep[i] = (T)1 - beta;                                                          \
            pi[i] = pi[i] * beta;                                                           \
        }                                                                                   \
    }

AM_TENSOR_BETAS(shiftsim_am_tensor_betas_f32, float)
AM_TENSOR_BETAS(shiftsim_am_tensor_betas_f64, double)

/* AM-AdamW's coefficients of its compiled step's passes (shiftsim.optim.adamem._am_shared_scales
 * with float hyperparameters), tensor i from its product of past betas pi[i]: k = 1 - b1 pi,
 * c1 = k s, c2 = k eps (s = 1 / sqrt(1 - b2^t), computed in Python; b1, s and eps each the
 * Python float rounded to T, as torch rounds a float multiplied into a tensor). */
#define AM_TENSOR_SCALES(NAME, T)                                                            \
    void NAME(int64_t n, const T *pi, double b1_d, double s_d, double eps_d, T *c1, T *c2)  \
    {                                                                                       \
        const T b1 = (T)b1_d, s = (T)s_d, eps = (T)eps_d;                                   \
        for (int64_t i = 0; i < n; i++) {                                                   \
            const T bp = pi[i] * b1;                                                        \
            const T k = (T)1 - bp;                                                          \
            c1[i] = k * s;                                                                  \
            c2[i] = k * eps;                                                                \
        }                                                                                   \
    }

AM_TENSOR_SCALES(shiftsim_am_tensor_scales_f32, float)
AM_TENSOR_SCALES(shiftsim_am_tensor_scales_f64, double)

/* Grams's step of the members' rows (shiftsim.optim.grams._grams_blocks with tensor
 * hyperparameters), rows k0 .. k1 - 1, in one pass: m <- lerp(m, g, w1), v <- v b2 + g (g w2)
 * (as ADATAM_STEP), u = m / (sqrt(v) + eps), p <- p shrink (decoupled decay, when shrink is not
 * NULL), p <- p + |u| (sign(g) size) (torch's _foreach_sign: +0 for 0 and NaN; then
 * _foreach_mul_ and _foreach_addcmul_: one fma), each torch operation one expression. x: the
 * tensors P, G, M, V (4 S pointers). -1 for more than MAXSEG segments. */
/* One element of GRAMS_STEP, the momentum's lerp given (MV). */
#define GRAMS_ELEMENT(T, SQRT, FMA, ABS, MV)                                                 \
    {                                                                                       \
        const T gv = gp[e], diff = gv - mp[e];                                              \
        const T mv = MV;                                                                    \
        mp[e] = mv;                                                                         \
        const T tmp = gv * w2k;                                                             \
        const T vv = FMA(gv, tmp, vp[e] * b2k);                                             \
        vp[e] = vv;                                                                         \
        T den = SQRT(vv);                                                                   \
        den = den + ek;                                                                     \
        const T u = ABS(mv / den);                                                          \
        const T sgn = (T)(gv > 0) - (T)(gv < 0); /* +0 for 0 and NaN */                  \
        const T sg = sgn * sk;                                                              \
        pp[e] = FMA(u, sg, pp[e] * fk);                                                     \
    }

#define GRAMS_STEP(NAME, T, SQRT, FMA, ABS)                                                  \
    int NAME(int S, const int64_t *len, T **x, const int64_t *ld, int64_t k0, int64_t k1,    \
             const T *w1, int64_t w1_s, const T *b2, int64_t b2_s, const T *w2,              \
             int64_t w2_s, const T *eps, int64_t eps_s, const T *size, int64_t size_s,       \
             const T *shrink, int64_t shrink_s)                                             \
    {                                                                                       \
        if (S < 1 || S > MAXSEG)                                                            \
            return -1;                                                                      \
        int64_t n = 0;                                                                      \
        for (int s = 0; s < S; s++)                                                         \
            n += len[s];                                                                    \
        FOR_ROWS(4, n) {                                                                    \
            T *row[4 * MAXSEG];                                                             \
            ROW_POINTERS(T, row, x, ld, 4)                                                  \
            const T wk = w1[k * w1_s], wm1 = wk - (T)1;                                     \
            const T b2k = b2[k * b2_s], w2k = w2[k * w2_s], ek = eps[k * eps_s];            \
            /* without decay the factor 1 (p * 1 is p: the same numbers) */                 \
            const T sk = size[k * size_s], fk = shrink ? shrink[k * shrink_s] : (T)1;       \
            for (int s = 0; s < S; s++) {                                                   \
                T *pp = row[s], *mp = row[2 * S + s], *vp = row[3 * S + s];                 \
                const T *gp = row[S + s];                                                   \
                const int64_t m = len[s];                                                   \
                if (ABS(wk) < (T)0.5)                                                       \
                    for (int64_t e = 0; e < m; e++)                                         \
                        GRAMS_ELEMENT(T, SQRT, FMA, ABS, FMA(wk, diff, mp[e]))              \
                else                                                                        \
                    for (int64_t e = 0; e < m; e++)                                         \
                        GRAMS_ELEMENT(T, SQRT, FMA, ABS, FMA(wm1, diff, gv))                \
            }                                                                               \
        }                                                                                   \
        return 0;                                                                           \
    }

GRAMS_STEP(shiftsim_grams_step_f32, float, sqrtf, fmaf, fabsf)
GRAMS_STEP(shiftsim_grams_step_f64, double, sqrt, fma, fabs)
