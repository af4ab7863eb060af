/* Per-row inner products of (K, n) tensors in one pass: shiftsim's native row sums.
 *
 * out[q * out_ld + k] = sum_i x[a_q][k, i] * x[b_q][k, i] for rows k < K and up to four pairs
 * (a_q, b_q) of up to six tensors. A tensor's row may be split into S segments (the same split
 * for every tensor): segment s of tensor t holds the row's elements seg_start[s] ..
 * seg_start[s] + len[s] - 1, its row k starting at x[t * S + s] + k * ld[t * S + s] (elements
 * contiguous). A fleet keeps each parameter of its members in its own (K, n_s) block, so a
 * member's row is those blocks' rows one after another.
 * Each tensor is read once however many pairs use it, where torch writes a product and then
 * sums it, for every pair.
 *
 * Optionally a tensor is first moved toward another in the same pass: with lt >= 0, each
 * element of tensor lt becomes lerp(x[lt], x[lg], w[k]) (torch's lerp, one fused multiply-add:
 * x + w (y - x) for |w| < 0.5, else y + (w - 1)(y - x)) just before the sums read it, so that
 * the sums are those of the updated tensor (MoMo's first moment, updated and summed in one
 * pass instead of two).
 *
 * The order of the additions is fixed by the element's place i in the whole row alone: 16
 * lanes (element i goes to lane i % 16, each lane adding its elements in order of i), float32
 * lanes summed over blocks of 256 elements and then added into float64 lanes (float64 inputs:
 * float64 lanes throughout), the 16 lanes added pairwise at the end, the result rounded once to
 * the input dtype. No fused multiply-add (built with -ffp-contract=off) and no reassociation,
 * so a row's sums are the same bits whatever the number of rows, the row's place among them,
 * how the row is split into segments, or the vector width the compiler picks. Built by
 * shiftsim.optim._native.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 16
#define BLOCK 256
#define MAXP 4
#define MAXT 6

typedef float v8f __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));

static inline v8f load8f(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline v4d load4d(const double *p) { v4d v; memcpy(&v, p, sizeof v); return v; }

static inline double lanes_total(double *s)
{
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            s[j] += s[j + w];
    return s[0];
}

/* Where the row's elements i .. of row k lie: the segment s holding element i (segments
 * before it span `base` elements), and each tensor's pointer to element i. */
#define SEGMENT_POINTERS(T)                                                                 \
    while (i >= base + len[s]) {                                                            \
        base += len[s];                                                                     \
        s++;                                                                                \
    }                                                                                       \
    const int64_t seg_end = base + len[s];                                                  \
    const T *a[MAXP], *b[MAXP];                                                             \
    for (int q = 0; q < P; q++) {                                                           \
        a[q] = x[pa[q] * S + s] + k * ld[pa[q] * S + s] + (i - base);                       \
        b[q] = x[pb[q] * S + s] + k * ld[pb[q] * S + s] + (i - base);                       \
    }

/* Elements i + e, e + 1, ... one by one while COND holds, each into its lane of ACC (a piece's
 * head up to a lane-0 element, or its tail). */
#define ONE_BY_ONE(ACC, COND)                                                                \
    for (; COND; e++)                                                                       \
        for (int q = 0; q < P; q++)                                                         \
            ACC[q][(i + e) % LANES] += a[q][e] * b[q][e];

/* Tensor lt's elements i .. stop - 1 of row k moved toward tensor lg's (see the top). */
#define LERP_PIECE(T, FMA, ABS)                                                              \
    if (lt >= 0) {                                                                          \
        T *dst = (T *)x[lt * S + s] + k * ld[lt * S + s] + (i - base);                      \
        const T *src = x[lg * S + s] + k * ld[lg * S + s] + (i - base);                     \
        const T wk = lw[k * lw_s], wm1 = wk - (T)1;                                         \
        if (ABS(wk) < (T)0.5)                                                               \
            for (int64_t e = 0; e < stop - i; e++)                                          \
                dst[e] = FMA(wk, src[e] - dst[e], dst[e]);                                  \
        else                                                                                \
            for (int64_t e = 0; e < stop - i; e++)                                          \
                dst[e] = FMA(wm1, src[e] - dst[e], src[e]);                                 \
    }

static inline __attribute__((always_inline)) void zero_lanes(const int P, double total[MAXP][LANES])
{
    for (int q = 0; q < P; q++)
        for (int j = 0; j < LANES; j++)
            total[q][j] = 0.0;
}

static inline __attribute__((always_inline)) void
rows_f32(const int P, const float **x, const int64_t *ld, const int S, const int64_t *len,
         const int *pa, const int *pb, int64_t K, int64_t n, float *out, int64_t out_ld,
         const int lt, const int lg, const float *lw, const int64_t lw_s)
{
    for (int64_t k = 0; k < K; k++) {
        double total[MAXP][LANES];
        zero_lanes(P, total);
        int s = 0;
        int64_t base = 0;
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
            const int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
            float part[MAXP][LANES];
            for (int q = 0; q < P; q++)
                for (int j = 0; j < LANES; j++)
                    part[q][j] = 0.0f;
            for (int64_t i = i0; i < i1;) {
                SEGMENT_POINTERS(float)
                const int64_t stop = seg_end < i1 ? seg_end : i1;
                LERP_PIECE(float, fmaf, fabsf)
                int64_t e = 0; /* elements of this piece done */
                ONE_BY_ONE(part, i + e < stop && (i + e) % LANES)
                if (i + e + LANES <= stop) {
                    v8f lo[MAXP], hi[MAXP];
                    for (int q = 0; q < P; q++) {
                        memcpy(&lo[q], part[q], sizeof lo[q]);
                        memcpy(&hi[q], part[q] + 8, sizeof hi[q]);
                    }
                    for (; i + e + LANES <= stop; e += LANES)
                        for (int q = 0; q < P; q++) {
                            lo[q] += load8f(a[q] + e) * load8f(b[q] + e);
                            hi[q] += load8f(a[q] + e + 8) * load8f(b[q] + e + 8);
                        }
                    for (int q = 0; q < P; q++) {
                        memcpy(part[q], &lo[q], sizeof lo[q]);
                        memcpy(part[q] + 8, &hi[q], sizeof hi[q]);
                    }
                }
                ONE_BY_ONE(part, i + e < stop)
                i += e;
            }
            for (int q = 0; q < P; q++)
                for (int j = 0; j < LANES; j++)
                    total[q][j] += (double)part[q][j];
        }
        for (int q = 0; q < P; q++)
            out[q * out_ld + k] = (float)lanes_total(total[q]);
    }
}

static inline __attribute__((always_inline)) void
rows_f64(const int P, const double **x, const int64_t *ld, const int S, const int64_t *len,
         const int *pa, const int *pb, int64_t K, int64_t n, double *out, int64_t out_ld,
         const int lt, const int lg, const double *lw, const int64_t lw_s)
{
    for (int64_t k = 0; k < K; k++) {
        double total[MAXP][LANES];
        zero_lanes(P, total);
        int s = 0;
        int64_t base = 0;
        for (int64_t i = 0; i < n;) {
            SEGMENT_POINTERS(double)
            const int64_t stop = seg_end;
            LERP_PIECE(double, fma, fabs)
            int64_t e = 0;
            ONE_BY_ONE(total, i + e < seg_end && (i + e) % LANES)
            if (i + e + LANES <= seg_end) {
                v4d acc[MAXP][LANES / 4];
                for (int q = 0; q < P; q++)
                    memcpy(acc[q], total[q], sizeof acc[q]);
                for (; i + e + LANES <= seg_end; e += LANES)
                    for (int q = 0; q < P; q++)
                        for (int v = 0; v < LANES / 4; v++)
                            acc[q][v] += load4d(a[q] + e + 4 * v) * load4d(b[q] + e + 4 * v);
                for (int q = 0; q < P; q++)
                    memcpy(total[q], acc[q], sizeof total[q]);
            }
            ONE_BY_ONE(total, i + e < seg_end)
            i += e;
        }
        for (int q = 0; q < P; q++)
            out[q * out_ld + k] = lanes_total(total[q]);
    }
}

/* The entry points, one per dtype: 0 when done, -1 for a pair count outside 1..MAXP or a
 * segment count below 1 (each pair count its own instance of the loops, so that the
 * accumulators stay in registers). n: the row's length, the sum of the S segments' lengths.
 * lt, lg, lw, lw_s: the optional lerp (lt = -1: none; lw: one weight per row, lw_s = 1, or
 * one for all, lw_s = 0). */
#define ENTRY(T, SUFFIX)                                                                     \
    int shiftsim_rowsums_##SUFFIX(const T **x, const int64_t *ld, int S, const int64_t *len, \
                                  int npairs, const int *pa, const int *pb, int64_t K,       \
                                  int64_t n, T *out, int64_t out_ld, int lt, int lg,         \
                                  const T *lw, int64_t lw_s)                                 \
    {                                                                                        \
        if (S < 1)                                                                           \
            return -1;                                                                       \
        switch (npairs) {                                                                    \
        case 1: rows_##SUFFIX(1, x, ld, S, len, pa, pb, K, n, out, out_ld, lt, lg, lw, lw_s); \
                return 0;                                                                    \
        case 2: rows_##SUFFIX(2, x, ld, S, len, pa, pb, K, n, out, out_ld, lt, lg, lw, lw_s); \
                return 0;                                                                    \
        case 3: rows_##SUFFIX(3, x, ld, S, len, pa, pb, K, n, out, out_ld, lt, lg, lw, lw_s); \
                return 0;                                                                    \
        case 4: rows_##SUFFIX(4, x, ld, S, len, pa, pb, K, n, out, out_ld, lt, lg, lw, lw_s); \
                return 0;                                                                    \
        default: return -1;                                                                  \
        }                                                                                    \
    }

ENTRY(float, f32)
ENTRY(double, f64)

/* The source's version, part of the cache key (bump on any change of the numbers or of the
 * entry points' arguments). */
int shiftsim_rowsums_version(void) { return 4; }
