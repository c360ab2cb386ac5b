/* Bi-WKV (Restore-RWKV, Eq. 8) on CPU: fused forward and backward sweeps.
 *
 * Layout: tokens (B, T, C) float32, channels contiguous. Each parallel task owns one batch
 * element and a block of W channels and sweeps the tokens in the order given by `rows`
 * (row-major or column-major scan of the image), keeping float64 running sums in W-wide
 * local arrays that the compiler vectorises. Weights are a = exp(k - max_t k), so the sweeps
 * need no exponentials:
 *   y_t = (P_t + S_t + e^u a_t v_t) / (Pd_t + Sd_t + e^u a_t),
 *   P_t = sum_{i<t} d^{t-1-i} a_i v_i, S_t = sum_{i>t} d^{i-t-1} a_i v_i, d = e^{-w}.
 * Part of restore-rwkv; compiled on first use (see _native_cpu.py).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define W 16
#define TILE 256

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Forward, tiled: pass 1 records the prefix state at each tile start; pass 2 walks the
 * tiles right to left, rebuilds the tile's prefixes in a cache-resident buffer and
 * combines them with the running suffix. */
static inline void forward_task(const float *a, const float *v, const double *decay, const double *bonus,
                                const int64_t *rows, float *y, int64_t b, int64_t c0, int64_t T, int64_t C,
                                const int64_t n) {
        const int64_t ntiles = (T + TILE - 1) / TILE;
        const float *ab = a + b * T * C + c0, *vb = v + b * T * C + c0;
        float *yb = y + b * T * C + c0;
        double d[W], bo[W], num[W], den[W], snum[W], sden[W];
        double *starts = (double *)malloc(sizeof(double) * 2 * W * ntiles);
        double *pre = (double *)malloc(sizeof(double) * 2 * W * TILE);
        for (int j = 0; j < W; j++) {
            d[j] = j < n ? decay[c0 + j] : 0.0;
            bo[j] = j < n ? bonus[c0 + j] : 0.0;
            num[j] = den[j] = snum[j] = sden[j] = 0.0;
        }
        for (int64_t tile = 0; tile < ntiles; tile++) {
            memcpy(starts + 2 * W * tile, num, sizeof num);
            memcpy(starts + 2 * W * tile + W, den, sizeof den);
            for (int64_t t = tile * TILE; t < min64(T, (tile + 1) * TILE); t++) {
                const int64_t off = rows[t] * C;
                for (int j = 0; j < n; j++) {
                    double e = ab[off + j];
                    num[j] = num[j] * d[j] + e * vb[off + j];
                    den[j] = den[j] * d[j] + e;
                }
            }
        }
        for (int64_t tile = ntiles - 1; tile >= 0; tile--) {
            const int64_t lo = tile * TILE, hi = min64(T, lo + TILE);
            memcpy(num, starts + 2 * W * tile, sizeof num);
            memcpy(den, starts + 2 * W * tile + W, sizeof den);
            for (int64_t t = lo; t < hi; t++) {
                const int64_t off = rows[t] * C;
                double *p = pre + 2 * W * (t - lo);
                for (int j = 0; j < W; j++) {
                    p[j] = num[j];
                    p[W + j] = den[j];
                }
                for (int j = 0; j < n; j++) {
                    double e = ab[off + j];
                    num[j] = num[j] * d[j] + e * vb[off + j];
                    den[j] = den[j] * d[j] + e;
                }
            }
            for (int64_t t = hi - 1; t >= lo; t--) {
                const int64_t off = rows[t] * C;
                const double *p = pre + 2 * W * (t - lo);
                for (int j = 0; j < n; j++) {
                    double e = ab[off + j], vt = vb[off + j], own = bo[j] * e;
                    yb[off + j] = (float)((p[j] + snum[j] + own * vt) / (p[W + j] + sden[j] + own));
                    snum[j] = snum[j] * d[j] + e * vt;
                    sden[j] = sden[j] * d[j] + e;
                }
            }
        }
        free(starts);
        free(pre);
}

void wkv_forward(const float *a, const float *v, const double *decay, const double *bonus,
                 const int64_t *rows, float *y, int64_t B, int64_t T, int64_t C, int threads) {
    const int64_t nblocks = (C + W - 1) / W;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t task = 0; task < B * nblocks; task++) {
        const int64_t b = task / nblocks, c0 = (task % nblocks) * W;
        if (C - c0 >= W) /* the full-width case, with a constant trip count the compiler vectorises */
            forward_task(a, v, decay, bonus, rows, y, b, c0, T, C, W);
        else
            forward_task(a, v, decay, bonus, rows, y, b, c0, T, C, C - c0);
    }
}

/* Backward: three sweeps per task (see docs/bi_wkv.md for the formulas).
 * dk, dv: (B, T, C) float32 outputs; dw_part, du_part: (B, C) float64 outputs. */
static inline void backward_task(const float *a, const float *v, const float *g, const double *decay,
                                 const double *bonus, const int64_t *rows, float *dk, float *dv, double *dw_part,
                                 double *du_part, int64_t b, int64_t c0, int64_t T, int64_t C, const int64_t n) {
        const float *ab = a + b * T * C + c0, *vb = v + b * T * C + c0, *gb = g + b * T * C + c0;
        float *dkb = dk + b * T * C + c0, *dvb = dv + b * T * C + c0;
        double d[W], bo[W], s0[W], s1[W], s2[W], s3[W], accw[W], accu[W];
        /* per token: [suffix num, suffix den] then reused for [prefix q, prefix r]; [prefix num, prefix den]; [q, r] */
        double *suf = (double *)malloc(sizeof(double) * 2 * W * T);
        double *pref = (double *)malloc(sizeof(double) * 2 * W * T);
        double *qr = (double *)malloc(sizeof(double) * 2 * W * T);
        for (int j = 0; j < W; j++) {
            d[j] = j < n ? decay[c0 + j] : 0.0;
            bo[j] = j < n ? bonus[c0 + j] : 0.0;
            s0[j] = s1[j] = s2[j] = s3[j] = accw[j] = accu[j] = 0.0;
        }
        for (int64_t t = T - 1; t >= 0; t--) { /* sweep 1: sums over later tokens */
            const int64_t off = rows[t] * C;
            double *s = suf + 2 * W * t;
            for (int j = 0; j < n; j++) {
                s[j] = s0[j];
                s[W + j] = s1[j];
                double e = ab[off + j];
                s0[j] = s0[j] * d[j] + e * vb[off + j];
                s1[j] = s1[j] * d[j] + e;
            }
        }
        for (int j = 0; j < W; j++) s0[j] = s1[j] = 0.0;
        for (int64_t t = 0; t < T; t++) { /* sweep 2: y, D, q = g / D, r = q y; prefix sums */
            const int64_t off = rows[t] * C;
            double *s = suf + 2 * W * t, *p = pref + 2 * W * t, *x = qr + 2 * W * t;
            for (int j = 0; j < n; j++) {
                double e = ab[off + j], vt = vb[off + j], own = bo[j] * e;
                double num = s0[j] + s[j] + own * vt, den = s1[j] + s[W + j] + own;
                double yt = num / den, qt = gb[off + j] / den, rt = qt * yt;
                accw[j] += s[j] * s2[j] - s[W + j] * s3[j]; /* pairs: later source, earlier target */
                accu[j] += own * qt * (vt - yt);
                p[j] = s0[j];
                p[W + j] = s1[j];
                s[j] = s2[j];
                s[W + j] = s3[j];
                x[j] = qt;
                x[W + j] = rt;
                s0[j] = s0[j] * d[j] + e * vt;
                s1[j] = s1[j] * d[j] + e;
                s2[j] = s2[j] * d[j] + qt;
                s3[j] = s3[j] * d[j] + rt;
            }
        }
        for (int j = 0; j < W; j++) s2[j] = s3[j] = 0.0;
        for (int64_t t = T - 1; t >= 0; t--) { /* sweep 3: suffix sums of q and r; dk, dv */
            const int64_t off = rows[t] * C;
            const double *s = suf + 2 * W * t, *p = pref + 2 * W * t, *x = qr + 2 * W * t;
            for (int j = 0; j < n; j++) {
                double e = ab[off + j];
                accw[j] += p[j] * s2[j] - p[W + j] * s3[j]; /* pairs: earlier source, later target */
                double pall = s[j] + s2[j] + bo[j] * x[j];
                double rall = s[W + j] + s3[j] + bo[j] * x[W + j];
                dvb[off + j] = (float)(e * pall);
                dkb[off + j] = (float)(e * (vb[off + j] * pall - rall));
                s2[j] = s2[j] * d[j] + x[j];
                s3[j] = s3[j] * d[j] + x[W + j];
            }
        }
        for (int j = 0; j < n; j++) {
            dw_part[b * C + c0 + j] = -d[j] * accw[j];
            du_part[b * C + c0 + j] = accu[j];
        }
        free(suf);
        free(pref);
        free(qr);
}

void wkv_backward(const float *a, const float *v, const float *g, const double *decay, const double *bonus,
                  const int64_t *rows, float *dk, float *dv, double *dw_part, double *du_part,
                  int64_t B, int64_t T, int64_t C, int threads) {
    const int64_t nblocks = (C + W - 1) / W;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t task = 0; task < B * nblocks; task++) {
        const int64_t b = task / nblocks, c0 = (task % nblocks) * W;
        if (C - c0 >= W)
            backward_task(a, v, g, decay, bonus, rows, dk, dv, dw_part, du_part, b, c0, T, C, W);
        else
            backward_task(a, v, g, decay, bonus, rows, dk, dv, dw_part, du_part, b, c0, T, C, C - c0);
    }
}
