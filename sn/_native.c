/* SN's CPU kernels: forward (training and inference) and the Appendix backward, each in
 * BatchNorm's passes over the data, with every (N, C)-sized step in plain loops.
 *
 * Built and loaded by sn/native.py (one compile per machine, cached). The body below is
 * written once for a type REAL and a suffix SFX; native.py instantiates it for float and
 * double. Layout: the input is an (N, C, L) array, row r = n * C + c, either contiguous
 * (NCHW: element (n, c, t) at (n * C + c) * L + t) or channels-last (NHWC: at (n * L + t) * C + c;
 * the `cl` argument). The per-row (N, C) arrays are the same in both.
 *
 * Numerics: every statistic and gradient sum accumulates in double. A row's moments come from
 * one pass over values shifted by the row's first one (float) or two passes (double), see
 * row_moments; LN, GN and BN moments are pooled from the rows' in the parallel-variance form,
 * var_set = mean(var_row + (mean_row - mean_set)^2), which is exact and stable for any offset.
 * The output and dx subtract the mean in two REAL parts before scaling, so that a large common
 * offset cancels exactly (affine_rows).
 *
 * Statistic codes (ops[]): 0 IN, 1 LN, 2 GN, 3 BN. BN uses bn_mean/bn_var (C,) when given
 * (running statistics), else the batch, per chunk of N / devices samples.
 */
#ifndef SN_NATIVE_COMMON
#define SN_NATIVE_COMMON
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

enum { OP_IN = 0, OP_LN = 1, OP_GN = 2, OP_BN = 3 };

/* Below this many elements a call runs on one thread (a parallel region costs more). */
#define SN_PARALLEL_MIN 32768

typedef struct {
    i64 n, c, l, groups, devices, per_group, per_device;
    int has[4];
    double wm[4], wv[4];      /* softmax importance weights by statistic code */
    double *fixed_m, *fixed_v; /* fixed BN statistics (C,), or NULL: the batch's */
    double *pool;             /* LN (2N), GN (2NG), BN (2DC), fixed BN (2C) moments, one allocation */
    double *ln_m, *ln_v, *gn_m, *gn_v, *bn_m, *bn_v;
} Mix;

static int threads_for(i64 elements, int nt) { return elements < SN_PARALLEL_MIN || nt < 1 ? 1 : nt; }

/* Softmax of the logits (2, k) into the weights, and the pooled-moment buffers. */
static int mix_init(Mix *M, i64 n, i64 c, i64 l, i64 groups, i64 devices, int k, const int *ops,
                    const double *logits, int fixed_bn) {
    memset(M, 0, sizeof(*M));
    M->n = n; M->c = c; M->l = l; M->groups = groups; M->devices = devices;
    M->per_group = c / groups; M->per_device = n / devices;
    for (int side = 0; side < 2; side++) {
        const double *lg = logits + side * k;
        double top = lg[0], total = 0.0;
        for (int j = 1; j < k; j++) top = lg[j] > top ? lg[j] : top;
        for (int j = 0; j < k; j++) total += exp(lg[j] - top);
        for (int j = 0; j < k; j++) (side ? M->wv : M->wm)[ops[j]] = exp(lg[j] - top) / total;
    }
    for (int j = 0; j < k; j++) M->has[ops[j]] = 1;
    i64 size = 2 * n + 2 * n * groups + 2 * devices * c + 2 * c;
    M->pool = (double *)malloc(sizeof(double) * (size_t)size);
    if (!M->pool) return -1;
    M->ln_m = M->pool; M->ln_v = M->ln_m + n;
    M->gn_m = M->ln_v + n; M->gn_v = M->gn_m + n * groups;
    M->bn_m = M->gn_v + n * groups; M->bn_v = M->bn_m + devices * c;
    if (fixed_bn) { M->fixed_m = M->bn_v + devices * c; M->fixed_v = M->fixed_m + c; }
    return 0;
}

static void mix_free(Mix *M) { free(M->pool); }

static int batch_bn(const Mix *M) { return M->has[OP_BN] && !M->fixed_m; }

/* Moments of the union of equal-sized rows: rows r0 + i * stride, i < count. */
static void pool_rows(const double *mean, const double *var, i64 r0, i64 stride, i64 count,
                      double *m_out, double *v_out) {
    double m = 0.0, v = 0.0;
    for (i64 i = 0; i < count; i++) m += mean[r0 + i * stride];
    m /= (double)count;
    for (i64 i = 0; i < count; i++) {
        double d = mean[r0 + i * stride] - m;
        v += var[r0 + i * stride] + d * d;
    }
    *m_out = m;
    *v_out = v / (double)count;
}

/* LN, GN and batch-BN moments from the rows' moments. */
static void mix_pool(Mix *M, const double *mean_in, const double *var_in) {
    i64 n = M->n, c = M->c, G = M->groups, P = M->per_group, S = M->per_device;
    if (M->has[OP_LN])
        for (i64 i = 0; i < n; i++) pool_rows(mean_in, var_in, i * c, 1, c, M->ln_m + i, M->ln_v + i);
    if (M->has[OP_GN])
        for (i64 i = 0; i < n * G; i++) pool_rows(mean_in, var_in, i * P, 1, P, M->gn_m + i, M->gn_v + i);
    if (batch_bn(M))
        for (i64 d = 0; d < M->devices; d++)
            for (i64 j = 0; j < c; j++)
                pool_rows(mean_in, var_in, d * S * c + j, c, S, M->bn_m + d * c + j, M->bn_v + d * c + j);
}

/* Mean and variance of statistic `op` for row (i, j). */
static inline void stat_of(const Mix *M, int op, i64 i, i64 j, const double *mean_in, const double *var_in,
                           double *m, double *v) {
    i64 r = i * M->c + j;
    switch (op) {
    case OP_IN: *m = mean_in[r]; *v = var_in[r]; break;
    case OP_LN: *m = M->ln_m[i]; *v = M->ln_v[i]; break;
    case OP_GN: *m = M->gn_m[i * M->groups + j / M->per_group]; *v = M->gn_v[i * M->groups + j / M->per_group]; break;
    default:
        if (M->fixed_m) { *m = M->fixed_m[j]; *v = M->fixed_v[j]; }
        else { i64 q = (i / M->per_device) * M->c + j; *m = M->bn_m[q]; *v = M->bn_v[q]; }
    }
}

/* Eqn. 3: the mixed mean and variance of every row. */
static void mix_rows(const Mix *M, const double *mean_in, const double *var_in, double *mean, double *var) {
    for (i64 i = 0; i < M->n; i++)
        for (i64 j = 0; j < M->c; j++) {
            double am = 0.0, av = 0.0, m, v;
            for (int op = 0; op < 4; op++) {
                if (!M->has[op]) continue;
                stat_of(M, op, i, j, mean_in, var_in, &m, &v);
                am += M->wm[op] * m;
                av += M->wv[op] * v;
            }
            mean[i * M->c + j] = am;
            var[i * M->c + j] = av;
        }
}

/* Sums of the values of `t` (N, C) over the sets of statistic `op` (LN: N, GN: N*G, BN: D*C). */
static void set_sums(const Mix *M, int op, const double *t, double *out) {
    i64 n = M->n, c = M->c;
    if (op == OP_LN) {
        for (i64 i = 0; i < n; i++) { double s = 0.0; for (i64 j = 0; j < c; j++) s += t[i * c + j]; out[i] = s; }
    } else if (op == OP_GN) {
        for (i64 q = 0; q < n * M->groups; q++) {
            double s = 0.0;
            for (i64 j = 0; j < M->per_group; j++) s += t[q * M->per_group + j];
            out[q] = s;
        }
    } else {
        memset(out, 0, sizeof(double) * (size_t)(M->devices * c));
        for (i64 i = 0; i < n; i++)
            for (i64 j = 0; j < c; j++) out[(i / M->per_device) * c + j] += t[i * c + j];
    }
}

static i64 set_index(const Mix *M, int op, i64 i, i64 j) {
    if (op == OP_LN) return i;
    if (op == OP_GN) return i * M->groups + j / M->per_group;
    return (i / M->per_device) * M->c + j;
}

static i64 set_size(const Mix *M, int op) {
    return op == OP_LN ? M->c : op == OP_GN ? M->per_group : M->per_device;
}
#endif /* SN_NATIVE_COMMON */

/* ---- per type: REAL, SFX ---- */
#define SN_CAT2(a, b) a##_##b
#define SN_CAT(a, b) SN_CAT2(a, b)
#define SN_FN(name) SN_CAT(name, SFX)

/* Checks the sizes (-2 if bad), then mix_init from REAL logits (k each) and fixed BN statistics
 * (C,) or NULL (-1: no memory). */
static int SN_FN(mix_setup)(Mix *M, i64 n, i64 c, i64 l, i64 groups, i64 devices, int k, const int *ops,
                            const REAL *mean_logits, const REAL *var_logits, const REAL *bn_mean,
                            const REAL *bn_var) {
    if (n < 1 || c < 1 || l < 1 || groups < 1 || c % groups || devices < 1 || n % devices || k < 1 || k > 4)
        return -2;
    for (int j = 0; j < k; j++)
        if (ops[j] < OP_IN || ops[j] > OP_BN) return -2;
    double logits[8];
    for (int j = 0; j < k; j++) {
        logits[j] = (double)mean_logits[j];
        logits[k + j] = (double)var_logits[j];
    }
    if (mix_init(M, n, c, l, groups, devices, k, ops, logits, bn_mean != NULL)) return -1;
    if (bn_mean)
        for (i64 j = 0; j < c; j++) {
            M->fixed_m[j] = (double)bn_mean[j];
            M->fixed_v[j] = (double)bn_var[j];
        }
    return 0;
}

/* Per row: mean and biased variance, accumulated in double. For float data (ONE_PASS), in one
 * pass over the values shifted by the row's first one: with 29 more bits in the accumulators
 * than in the data, the cancellation in sum(d^2) - sum(d)^2 / L costs nothing visible unless
 * the first value lies ~1e4 standard deviations from the mean. For double data, two passes
 * (the row is still in cache for the second). */
static void SN_FN(row_moments)(const REAL *x, i64 rows, i64 l, double *mean, double *var, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (i64 r = 0; r < rows; r++) {
        const REAL *p = x + r * l;
        double s = 0.0, q = 0.0;
#if ONE_PASS
        const double k = (double)p[0];
#pragma omp simd reduction(+ : s, q)
        for (i64 t = 0; t < l; t++) { double d = (double)p[t] - k; s += d; q += d * d; }
        double m = s / (double)l, v = q / (double)l - m * m;
        mean[r] = k + m;
        var[r] = v > 0.0 ? v : 0.0;
#else
#pragma omp simd reduction(+ : s)
        for (i64 t = 0; t < l; t++) s += (double)p[t];
        double m = s / (double)l;
#pragma omp simd reduction(+ : q)
        for (i64 t = 0; t < l; t++) { double d = (double)p[t] - m; q += d * d; }
        mean[r] = m;
        var[r] = q / (double)l;
#endif
    }
}

/* y = (x - center) * scale + shift, per row. The center is split into a REAL and the REAL
 * of its remainder: x - hi is exact for x near the center (Sterbenz), so a large common offset
 * cancels exactly and the output keeps REAL's accuracy relative to the spread, not the offset. */
static void SN_FN(affine_rows)(const REAL *x, REAL *y, i64 rows, i64 l, const double *center,
                               const double *scale, const double *shift, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (i64 r = 0; r < rows; r++) {
        const REAL *p = x + r * l;
        REAL *o = y + r * l;
        const REAL hi = (REAL)center[r], lo = (REAL)(center[r] - (double)hi);
        const REAL a = (REAL)scale[r], b = (REAL)shift[r];
#pragma omp simd
        for (i64 t = 0; t < l; t++) o[t] = ((p[t] - hi) - lo) * a + b;
    }
}

/* Channels-last twins of the passes above: the rows of one sample are interleaved, so each
 * thread takes a sample and a block of channels, walks the pixels, and keeps one accumulator
 * per channel of its block (contiguous in memory: the inner loop vectorizes over channels). */
#define SN_CL_BLOCK 64

static void SN_FN(row_moments_cl)(const REAL *x, i64 n, i64 c, i64 l, double *mean, double *var, int nt) {
    i64 blocks = (c + SN_CL_BLOCK - 1) / SN_CL_BLOCK;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (i64 job = 0; job < n * blocks; job++) {
        i64 i = job / blocks, j0 = (job % blocks) * SN_CL_BLOCK, w = c - j0 < SN_CL_BLOCK ? c - j0 : SN_CL_BLOCK;
        const REAL *p = x + i * l * c + j0;
        double s[SN_CL_BLOCK] = {0}, q[SN_CL_BLOCK] = {0}, k[SN_CL_BLOCK];
#if ONE_PASS
        for (i64 j = 0; j < w; j++) k[j] = (double)p[j];
        for (i64 t = 0; t < l; t++) {
            const REAL *pt = p + t * c;
#pragma omp simd
            for (i64 j = 0; j < w; j++) { double d = (double)pt[j] - k[j]; s[j] += d; q[j] += d * d; }
        }
        for (i64 j = 0; j < w; j++) {
            double m = s[j] / (double)l, v = q[j] / (double)l - m * m;
            mean[i * c + j0 + j] = k[j] + m;
            var[i * c + j0 + j] = v > 0.0 ? v : 0.0;
        }
#else
        for (i64 t = 0; t < l; t++) {
            const REAL *pt = p + t * c;
#pragma omp simd
            for (i64 j = 0; j < w; j++) s[j] += (double)pt[j];
        }
        for (i64 j = 0; j < w; j++) k[j] = s[j] / (double)l;
        for (i64 t = 0; t < l; t++) {
            const REAL *pt = p + t * c;
#pragma omp simd
            for (i64 j = 0; j < w; j++) { double d = (double)pt[j] - k[j]; q[j] += d * d; }
        }
        for (i64 j = 0; j < w; j++) { mean[i * c + j0 + j] = k[j]; var[i * c + j0 + j] = q[j] / (double)l; }
#endif
    }
}

/* o = a * g + b * ((x - hi) - lo) + c0 per element, the five coefficients per row, REAL (rows,)
 * each: affine_rows (g NULL, a = 0) and grad_rows in the channels-last layout. */
static void SN_FN(rows_apply_cl)(const REAL *g, const REAL *x, REAL *o, i64 n, i64 c, i64 l, const REAL *A,
                                 const REAL *B, const REAL *C0, const REAL *HI, const REAL *LO, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (i64 job = 0; job < n * l; job++) {
        i64 i = job / l;
        const REAL *xp = x + job * c, *a = A + i * c, *b = B + i * c, *c0 = C0 + i * c, *hi = HI + i * c,
                   *lo = LO + i * c;
        REAL *op = o + job * c;
        if (g) {
            const REAL *gp = g + job * c;
#pragma omp simd
            for (i64 j = 0; j < c; j++) op[j] = a[j] * gp[j] + b[j] * ((xp[j] - hi[j]) - lo[j]) + c0[j];
        } else {
#pragma omp simd
            for (i64 j = 0; j < c; j++) op[j] = b[j] * ((xp[j] - hi[j]) - lo[j]) + c0[j];
        }
    }
}

/* The REAL coefficients of rows_apply_cl: hi/lo split of the centers, and b, c0 (and a). */
static void SN_FN(cl_coefficients)(i64 rows, const double *center, const double *a, const double *b,
                                   const double *c0, REAL *out) {
    REAL *A = out, *B = out + rows, *C0 = out + 2 * rows, *HI = out + 3 * rows, *LO = out + 4 * rows;
    for (i64 r = 0; r < rows; r++) {
        HI[r] = (REAL)center[r];
        LO[r] = (REAL)(center[r] - (double)HI[r]);
        A[r] = a ? (REAL)a[r] : (REAL)0;
        B[r] = (REAL)b[r];
        C0[r] = (REAL)c0[r];
    }
}

static void SN_FN(row_grad_sums_cl)(const REAL *g, const REAL *x, i64 n, i64 c, i64 l, const double *mean_in,
                                    double *sg, double *sgx, int nt) {
    i64 blocks = (c + SN_CL_BLOCK - 1) / SN_CL_BLOCK;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (i64 job = 0; job < n * blocks; job++) {
        i64 i = job / blocks, j0 = (job % blocks) * SN_CL_BLOCK, w = c - j0 < SN_CL_BLOCK ? c - j0 : SN_CL_BLOCK;
        const REAL *gp = g + i * l * c + j0, *xp = x + i * l * c + j0;
        double s[SN_CL_BLOCK] = {0}, q[SN_CL_BLOCK] = {0}, m[SN_CL_BLOCK];
        for (i64 j = 0; j < w; j++) m[j] = mean_in[i * c + j0 + j];
        for (i64 t = 0; t < l; t++) {
            const REAL *gt = gp + t * c, *xt = xp + t * c;
#pragma omp simd
            for (i64 j = 0; j < w; j++) {
                double gv = (double)gt[j];
                s[j] += gv;
                q[j] += gv * ((double)xt[j] - m[j]);
            }
        }
        for (i64 j = 0; j < w; j++) { sg[i * c + j0 + j] = s[j]; sgx[i * c + j0 + j] = q[j]; }
    }
}

/* Forward. mean_in/var_in (N, C) receive the rows' moments (for the backward) or are NULL;
 * bn_out (2, D, C) receives the batch BN moments or is NULL. Returns 0, -1 (no memory) or -2
 * (bad sizes: the caller checks them; this guards the memory). */
int SN_FN(sn_forward)(const REAL *x, REAL *y, i64 n, i64 c, i64 l, i64 groups, i64 devices, int k,
                      const int *ops, const REAL *mean_logits, const REAL *var_logits, const REAL *bn_mean,
                      const REAL *bn_var, const REAL *gamma, const REAL *beta, double eps, double *mean_in,
                      double *var_in, REAL *bn_out, int cl, int nt) {
    Mix M;
    i64 rows = n * c;
    nt = threads_for(rows * l, nt);
    int err = SN_FN(mix_setup)(&M, n, c, l, groups, devices, k, ops, mean_logits, var_logits, bn_mean, bn_var);
    if (err) return err;
    /* 5 rows-sized doubles, and for channels-last 5 rows-sized REALs of coefficients */
    double *work = (double *)malloc(sizeof(double) * (size_t)(rows * 5) + (cl ? sizeof(REAL) * (size_t)(rows * 5) : 0));
    if (!work) { mix_free(&M); return -1; }
    double *mean = work, *scale = work + rows, *shift = work + 2 * rows;
    if (!mean_in) { mean_in = work + 3 * rows; var_in = work + 4 * rows; }
    if (cl) SN_FN(row_moments_cl)(x, n, c, l, mean_in, var_in, nt);
    else SN_FN(row_moments)(x, rows, l, mean_in, var_in, nt);
    mix_pool(&M, mean_in, var_in);
    mix_rows(&M, mean_in, var_in, mean, scale);
    for (i64 i = 0; i < n; i++)
        for (i64 j = 0; j < c; j++) {
            i64 r = i * c + j;
            scale[r] = (gamma ? (double)gamma[j] : 1.0) / sqrt(scale[r] + eps);
            shift[r] = beta ? (double)beta[j] : 0.0;
        }
    if (cl) {
        REAL *coef = (REAL *)(work + 5 * rows);
        SN_FN(cl_coefficients)(rows, mean, NULL, scale, shift, coef);
        SN_FN(rows_apply_cl)(NULL, x, y, n, c, l, coef, coef + rows, coef + 2 * rows, coef + 3 * rows,
                             coef + 4 * rows, nt);
    } else {
        SN_FN(affine_rows)(x, y, rows, l, mean, scale, shift, nt);
    }
    if (bn_out && batch_bn(&M))
        for (i64 q = 0; q < devices * c; q++) {
            bn_out[q] = (REAL)M.bn_m[q];
            bn_out[devices * c + q] = (REAL)M.bn_v[q];
        }
    free(work);
    mix_free(&M);
    return 0;
}

/* Per row: sum(g) and sum(g * (x - mean_in)), in double. */
static void SN_FN(row_grad_sums)(const REAL *g, const REAL *x, i64 rows, i64 l, const double *mean_in,
                                 double *sg, double *sgx, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (i64 r = 0; r < rows; r++) {
        const REAL *gp = g + r * l, *xp = x + r * l;
        const double m = mean_in[r];
        double s = 0.0, q = 0.0;
#pragma omp simd reduction(+ : s, q)
        for (i64 t = 0; t < l; t++) {
            double gt = (double)gp[t];
            s += gt;
            q += gt * ((double)xp[t] - m);
        }
        sg[r] = s;
        sgx[r] = q;
    }
}

/* dx = A g + B (x - mean_in) + C0, per row. */
static void SN_FN(grad_rows)(const REAL *g, const REAL *x, REAL *dx, i64 rows, i64 l, const double *mean_in,
                             const double *A, const double *B, const double *C0, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (i64 r = 0; r < rows; r++) {
        const REAL *gp = g + r * l, *xp = x + r * l;
        REAL *o = dx + r * l;
        const REAL hi = (REAL)mean_in[r], lo = (REAL)(mean_in[r] - (double)hi); /* as in affine_rows */
        const REAL a = (REAL)A[r], b = (REAL)B[r], c0 = (REAL)C0[r];
#pragma omp simd
        for (i64 t = 0; t < l; t++) o[t] = a * gp[t] + b * ((xp[t] - hi) - lo) + c0;
    }
}

/* The Appendix backward from the forward's row moments. Writes d_logits (2, k) and, where
 * not NULL, dx (N, C, L), d_gamma and d_beta (C,). Returns 0, -1 (no memory) or -2 (bad sizes). */
int SN_FN(sn_backward)(const REAL *g, const REAL *x, REAL *dx, i64 n, i64 c, i64 l, i64 groups, i64 devices,
                       int k, const int *ops, const REAL *mean_logits, const REAL *var_logits,
                       const REAL *bn_mean, const REAL *bn_var, const REAL *gamma, double eps,
                       const double *mean_in, const double *var_in, REAL *d_mean_logits, REAL *d_var_logits,
                       REAL *d_gamma, REAL *d_beta, int cl, int nt) {
    Mix M;
    i64 rows = n * c;
    nt = threads_for(rows * l, nt);
    int err = SN_FN(mix_setup)(&M, n, c, l, groups, devices, k, ops, mean_logits, var_logits, bn_mean, bn_var);
    if (err) return err;
    i64 sets = n * groups > devices * c ? n * groups : devices * c;
    sets = sets > n ? sets : n;
    double *work = (double *)malloc(sizeof(double) * (size_t)(8 * rows + 2 * sets + 2 * c) +
                                    (cl ? sizeof(REAL) * (size_t)(5 * rows) : 0));
    if (!work) { mix_free(&M); return -1; }
    double *mean = work, *rstd = work + rows, *sg = work + 2 * rows, *sgx = work + 3 * rows;
    double *dmean = work + 4 * rows, *dvar = work + 5 * rows, *dmu_in = work + 6 * rows;
    double *dvar_in = work + 7 * rows, *sum_dm = work + 8 * rows, *sum_dv = sum_dm + sets;
    double *dg = sum_dv + sets, *db = dg + c; /* d_gamma, d_beta accumulated in double */
    mix_pool(&M, mean_in, var_in);
    mix_rows(&M, mean_in, var_in, mean, rstd);
    for (i64 r = 0; r < rows; r++) rstd[r] = 1.0 / sqrt(rstd[r] + eps);
    if (cl) SN_FN(row_grad_sums_cl)(g, x, n, c, l, mean_in, sg, sgx, nt);
    else SN_FN(row_grad_sums)(g, x, rows, l, mean_in, sg, sgx, nt);
    /* upstream gradients of the mixed moments, and the affine parameters' */
    memset(dg, 0, sizeof(double) * (size_t)(2 * c));
    for (i64 i = 0; i < n; i++)
        for (i64 j = 0; j < c; j++) {
            i64 r = i * c + j;
            double gr = (gamma ? (double)gamma[j] : 1.0) * rstd[r];
            double sgxc = sgx[r] + (mean_in[r] - mean[r]) * sg[r]; /* sum(g * (x - mean)) */
            dmean[r] = -gr * sg[r];
            dvar[r] = -0.5 * gr * rstd[r] * rstd[r] * sgxc;
            dg[j] += rstd[r] * sgxc;
            db[j] += sg[r];
            dmu_in[r] = M.wm[OP_IN] * dmean[r]; /* (zero weight without IN) */
            dvar_in[r] = M.wv[OP_IN] * dvar[r];
        }
    /* softmax backward: d_logit_j = w_j (inner_j - sum_i w_i inner_i), inner_j = <d_moment, moment_j> */
    double inner_m[4] = {0}, inner_v[4] = {0};
    for (int op = 0; op < 4; op++) {
        if (!M.has[op]) continue;
        for (i64 i = 0; i < n; i++)
            for (i64 j = 0; j < c; j++) {
                double m, v;
                stat_of(&M, op, i, j, mean_in, var_in, &m, &v);
                inner_m[op] += dmean[i * c + j] * m;
                inner_v[op] += dvar[i * c + j] * v;
            }
    }
    double avg_m = 0.0, avg_v = 0.0;
    for (int op = 0; op < 4; op++) { avg_m += M.wm[op] * inner_m[op]; avg_v += M.wv[op] * inner_v[op]; }
    for (int j = 0; j < k; j++) {
        d_mean_logits[j] = (REAL)(M.wm[ops[j]] * (inner_m[ops[j]] - avg_m));
        d_var_logits[j] = (REAL)(M.wv[ops[j]] * (inner_v[ops[j]] - avg_v));
    }
    for (i64 j = 0; j < c; j++) {
        if (d_gamma) d_gamma[j] = (REAL)dg[j];
        if (d_beta) d_beta[j] = (REAL)db[j];
    }
    if (dx) {
        /* pooled statistics pass their gradient to every row of their set */
        for (int op = OP_LN; op <= OP_BN; op++) {
            if (!M.has[op] || (op == OP_BN && M.fixed_m)) continue;
            set_sums(&M, op, dmean, sum_dm);
            set_sums(&M, op, dvar, sum_dv);
            double p = (double)set_size(&M, op);
            for (i64 i = 0; i < n; i++)
                for (i64 j = 0; j < c; j++) {
                    i64 r = i * c + j, q = set_index(&M, op, i, j);
                    double m, v;
                    stat_of(&M, op, i, j, mean_in, var_in, &m, &v);
                    dmu_in[r] += (M.wm[op] * sum_dm[q] + 2.0 * M.wv[op] * (mean_in[r] - m) * sum_dv[q]) / p;
                    dvar_in[r] += M.wv[op] * sum_dv[q] / p;
                }
        }
        /* dx = gamma rstd g + d_mu_in / L + 2 d_var_in / L (x - mean_in) */
        double *A = dmean, *B = dvar, *C0 = sg; /* (reused) */
        for (i64 i = 0; i < n; i++)
            for (i64 j = 0; j < c; j++) {
                i64 r = i * c + j;
                A[r] = (gamma ? (double)gamma[j] : 1.0) * rstd[r];
                B[r] = 2.0 * dvar_in[r] / (double)l;
                C0[r] = dmu_in[r] / (double)l;
            }
        if (cl) {
            REAL *coef = (REAL *)(db + c);
            SN_FN(cl_coefficients)(rows, mean_in, A, B, C0, coef);
            SN_FN(rows_apply_cl)(g, x, dx, n, c, l, coef, coef + rows, coef + 2 * rows, coef + 3 * rows,
                                 coef + 4 * rows, nt);
        } else {
            SN_FN(grad_rows)(g, x, dx, rows, l, mean_in, A, B, C0, nt);
        }
    }
    free(work);
    mix_free(&M);
    return 0;
}
#undef SN_FN
