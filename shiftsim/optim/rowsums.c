/* Per-row inner products of (K, n) tensors in one pass: shiftsim's native row sums.
 *
 * out[q * out_ld + k] = sum_i x[a_q][k, i] * x[b_q][k, i] for rows k < K and up to four pairs
 * (a_q, b_q) of up to six row-major tensors (row k of tensor t starts at x[t] + k * ld[t];
 * elements contiguous).
 * Each tensor is read once however many pairs use it, where torch writes a product and then
 * sums it, for every pair.
 *
 * The order of the additions is fixed by n alone: 16 lanes (element i goes to lane i % 16),
 * float32 lanes summed over blocks of 256 elements and then added into float64 lanes (float64
 * inputs: float64 lanes throughout), the 16 lanes added pairwise at the end, the result rounded
 * once to the input dtype. No fused multiply-add (built with -ffp-contract=off) and no
 * reassociation, so a row's sums are the same bits whatever the number of rows, the row's
 * place among them, or the vector width the compiler picks. Built by shiftsim.optim._native.
 */
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

static inline __attribute__((always_inline)) void
rows_f32(const int P, const float **x, const int64_t *ld, const int *pa, const int *pb,
         int64_t K, int64_t n, float *out, int64_t out_ld)
{
    for (int64_t k = 0; k < K; k++) {
        const float *a[MAXP], *b[MAXP];
        double total[MAXP][LANES];
        for (int q = 0; q < P; q++) {
            a[q] = x[pa[q]] + k * ld[pa[q]];
            b[q] = x[pb[q]] + k * ld[pb[q]];
            for (int j = 0; j < LANES; j++)
                total[q][j] = 0.0;
        }
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
            const int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
            v8f lo[MAXP], hi[MAXP];
            for (int q = 0; q < P; q++) {
                lo[q] = (v8f){0};
                hi[q] = (v8f){0};
            }
            int64_t i = i0;
            for (; i + LANES <= i1; i += LANES)
                for (int q = 0; q < P; q++) {
                    lo[q] += load8f(a[q] + i) * load8f(b[q] + i);
                    hi[q] += load8f(a[q] + i + 8) * load8f(b[q] + i + 8);
                }
            float part[MAXP][LANES];
            for (int q = 0; q < P; q++) {
                memcpy(part[q], &lo[q], sizeof lo[q]);
                memcpy(part[q] + 8, &hi[q], sizeof hi[q]);
            }
            for (; i < i1; i++)
                for (int q = 0; q < P; q++)
                    part[q][i % LANES] += a[q][i] * b[q][i];
            for (int q = 0; q < P; q++)
                for (int j = 0; j < LANES; j++)
                    total[q][j] += (double)part[q][j];
        }
        for (int q = 0; q < P; q++)
            out[q * out_ld + k] = (float)lanes_total(total[q]);
    }
}

static inline __attribute__((always_inline)) void
rows_f64(const int P, const double **x, const int64_t *ld, const int *pa, const int *pb,
         int64_t K, int64_t n, double *out, int64_t out_ld)
{
    for (int64_t k = 0; k < K; k++) {
        const double *a[MAXP], *b[MAXP];
        v4d acc[MAXP][LANES / 4];
        for (int q = 0; q < P; q++) {
            a[q] = x[pa[q]] + k * ld[pa[q]];
            b[q] = x[pb[q]] + k * ld[pb[q]];
            for (int v = 0; v < LANES / 4; v++)
                acc[q][v] = (v4d){0};
        }
        int64_t i = 0;
        for (; i + LANES <= n; i += LANES)
            for (int q = 0; q < P; q++)
                for (int v = 0; v < LANES / 4; v++)
                    acc[q][v] += load4d(a[q] + i + 4 * v) * load4d(b[q] + i + 4 * v);
        double total[MAXP][LANES];
        for (int q = 0; q < P; q++)
            memcpy(total[q], acc[q], sizeof total[q]);
        for (; i < n; i++)
            for (int q = 0; q < P; q++)
                total[q][i % LANES] += a[q][i] * b[q][i];
        for (int q = 0; q < P; q++)
            out[q * out_ld + k] = lanes_total(total[q]);
    }
}

/* The entry points, one per dtype: 0 when done, -1 for a pair count outside 1..MAXP (each
 * count its own instance of the loops, so that the accumulators stay in registers). */
#define ENTRY(T, SUFFIX)                                                                     \
    int shiftsim_rowsums_##SUFFIX(const T **x, const int64_t *ld, int npairs, const int *pa, \
                                  const int *pb, int64_t K, int64_t n, T *out,               \
                                  int64_t out_ld)                                            \
    {                                                                                        \
        switch (npairs) {                                                                    \
        case 1: rows_##SUFFIX(1, x, ld, pa, pb, K, n, out, out_ld); return 0;                \
        case 2: rows_##SUFFIX(2, x, ld, pa, pb, K, n, out, out_ld); return 0;                \
        case 3: rows_##SUFFIX(3, x, ld, pa, pb, K, n, out, out_ld); return 0;                \
        case 4: rows_##SUFFIX(4, x, ld, pa, pb, K, n, out, out_ld); return 0;                \
        default: return -1;                                                                  \
        }                                                                                    \
    }

ENTRY(float, f32)
ENTRY(double, f64)

/* The source's version, part of the cache key (bump on any change of the numbers). */
int shiftsim_rowsums_version(void) { return 2; }
