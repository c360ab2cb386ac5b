/* Bi-WKV (Restore-RWKV, Eq. 8) on CPU: fused forward and backward sweeps.
 *
 * Layout: tokens (B, T, C) float32, channels contiguous. Each parallel task owns one batch
 * element and a block of W channels and sweeps the tokens in scan order (row-major or
 * column-major scan of the image), keeping float64 running sums in W-wide local arrays that
 * the compiler vectorises. Weights are a = exp(k - max_t k), so the sweeps need no exponentials:
 *   y_t = (P_t + S_t + e^u a_t v_t) / (Pd_t + Sd_t + e^u a_t),
 *   P_t = sum_{i<t} d^{t-1-i} a_i v_i, S_t = sum_{i>t} d^{i-t-1} a_i v_i, d = e^{-w}.
 * `rewkv_infer` runs all Re-WKV steps of one channel block in one task (weights included) on
 * block-local buffers that stay in cache; the V-scan walks image rows in lockstep (see
 * sweep_columns), so no array is ever transposed.
 * Part of restore-rwkv; compiled on first use (see _native_cpu.py).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define W 16
#define TILE 256

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* exp(x) for x <= 0 in float32, vectorisable: x = n ln2 + r with |r| <= ln2/2, e^r by its
 * degree-7 Taylor polynomial (error below 1e-8 relative), 2^n through the exponent bits.
 * Returns 0 below -87 (where float32 would go subnormal); NaN stays NaN. */
static inline float exp_nonpositive(float x) {
    const float xc = x > -87.0f ? x : -87.0f; /* NaN becomes -87 here (no undefined conversion) */
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = xc - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    const float e = p * scale;
    return x > -87.0f ? e : (x != x ? x : 0.0f);
}

/* Weights of n channels: a[t * W + j] = exp(k[t * sk + j] - max_t k[t * sk + j]). */
static inline void block_weights(const float *k, int64_t sk, float *a, int64_t T, const int64_t n) {
    float m[W];
    for (int j = 0; j < W; j++) m[j] = -INFINITY;
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < n; j++) m[j] = k[t * sk + j] > m[j] ? k[t * sk + j] : m[j];
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < n; j++) a[t * W + j] = exp_nonpositive(k[t * sk + j] - m[j]);
}

/* One bidirectional sweep over T tokens in memory order, n channels; token t of a, x and y sits at
 * t * sa, t * sx, t * sy floats. Tiled: pass 1 records the prefix state at each tile start; pass 2
 * walks the tiles right to left, rebuilds the tile's prefixes in a cache-resident buffer and combines
 * them with the running suffix. Scratch: starts 2W * ceil(T / TILE), pre 2W * TILE doubles. */
static inline void sweep_sequence(const float *a, int64_t sa, const float *x, int64_t sx, float *y, int64_t sy,
                                  const double *decay, const double *bonus, int64_t T, double *starts,
                                  double *pre, const int64_t n) {
    const int64_t ntiles = (T + TILE - 1) / TILE;
    double d[W], bo[W], num[W], den[W], snum[W], sden[W];
    for (int j = 0; j < W; j++) {
        d[j] = j < n ? decay[j] : 0.0;
        bo[j] = j < n ? bonus[j] : 0.0;
        num[j] = den[j] = snum[j] = sden[j] = 0.0;
    }
    for (int64_t tile = 0; tile < ntiles; tile++) {
        memcpy(starts + 2 * W * tile, num, sizeof num);
        memcpy(starts + 2 * W * tile + W, den, sizeof den);
        for (int64_t t = tile * TILE; t < min64(T, (tile + 1) * TILE); t++)
            for (int j = 0; j < n; j++) {
                double e = a[t * sa + j];
                num[j] = num[j] * d[j] + e * x[t * sx + j];
                den[j] = den[j] * d[j] + e;
            }
    }
    for (int64_t tile = ntiles - 1; tile >= 0; tile--) {
        const int64_t lo = tile * TILE, hi = min64(T, lo + TILE);
        memcpy(num, starts + 2 * W * tile, sizeof num);
        memcpy(den, starts + 2 * W * tile + W, sizeof den);
        for (int64_t t = lo; t < hi; t++) {
            double *p = pre + 2 * W * (t - lo);
            for (int j = 0; j < W; j++) {
                p[j] = num[j];
                p[W + j] = den[j];
            }
            for (int j = 0; j < n; j++) {
                double e = a[t * sa + j];
                num[j] = num[j] * d[j] + e * x[t * sx + j];
                den[j] = den[j] * d[j] + e;
            }
        }
        for (int64_t t = hi - 1; t >= lo; t--) {
            const double *p = pre + 2 * W * (t - lo);
            for (int j = 0; j < n; j++) {
                double e = a[t * sa + j], vt = x[t * sx + j], own = bo[j] * e;
                y[t * sy + j] = (float)((p[j] + snum[j] + own * vt) / (p[W + j] + sden[j] + own));
                snum[j] = snum[j] * d[j] + e * vt;
                sden[j] = sden[j] * d[j] + e;
            }
        }
    }
}

/* The V-scan of an H x Wd image held row-major: the scan visits column 0 top to bottom, then
 * column 1, ... Reading one column at a time would touch a new row (cache line and page) per token,
 * so columns are processed LANES at a time in lockstep, reading image rows front to back.
 * Column c's contribution to the other columns enters through two carries per channel:
 *   Cin_c  = d^H Cin_{c-1}  + F_{c-1},  F_c = sum_y d^{H-1-y} a v  (sum of columns < c, decayed to c's top),
 *   Cout_c = d^H Cout_{c+1} + G_{c+1},  G_c = sum_y d^y a v        (sum of columns > c, decayed to c's bottom),
 * (likewise for the denominators with a alone). Pass A accumulates F, G and the zero-start prefix at
 * each tile start (STEPS rows); pass B walks tiles bottom to top, rebuilding each tile's prefixes
 * (zero-start prefix + d^y Cin) and combining them with the running suffix started from Cout. */
#define LANES 16
#define STEPS 32

typedef struct {
    int64_t H, Wd, sa, sx, sy; /* image size; floats between neighbouring tokens of a, x, y */
    double *starts;            /* (Wd / LANES blocks, H / STEPS tiles, LANES, 2W) zero-start prefixes */
    double *sums;              /* (Wd, 4, W): F, Fd, G, Gd, then the carries Cin, Cind, Cout, Coutd */
    double *pre;               /* (STEPS, LANES, 2W) a tile's prefixes */
    double *tile_power;        /* (H / STEPS, W): d^(first row of tile) */
} Columns;

static inline void columns_pass_a(const float *a, const float *x, const double *d, const Columns *g, int64_t c0,
                                  int64_t nl, double *starts, const int64_t n) {
    double pn[LANES][W], pd[LANES][W], gn[LANES][W], gd[LANES][W], power[W];
    for (int l = 0; l < LANES; l++)
        for (int j = 0; j < W; j++) pn[l][j] = pd[l][j] = gn[l][j] = gd[l][j] = 0.0;
    for (int j = 0; j < W; j++) power[j] = 1.0;
    for (int64_t row = 0; row < g->H; row++) {
        if (row % STEPS == 0) {
            double *st = starts + (row / STEPS) * LANES * 2 * W;
            for (int64_t l = 0; l < nl; l++) {
                memcpy(st + 2 * W * l, pn[l], sizeof pn[l]);
                memcpy(st + 2 * W * l + W, pd[l], sizeof pd[l]);
            }
        }
        for (int64_t l = 0; l < nl; l++) {
            const int64_t tok = row * g->Wd + c0 + l;
            const float *ap = a + tok * g->sa, *xp = x + tok * g->sx;
            for (int j = 0; j < n; j++) {
                double e = ap[j], ex = e * xp[j];
                pn[l][j] = pn[l][j] * d[j] + ex;
                pd[l][j] = pd[l][j] * d[j] + e;
                gn[l][j] += power[j] * ex;
                gd[l][j] += power[j] * e;
            }
        }
        for (int j = 0; j < W; j++) power[j] *= d[j];
    }
    for (int64_t l = 0; l < nl; l++) {
        double *sm = g->sums + (c0 + l) * 4 * W;
        memcpy(sm, pn[l], sizeof pn[l]);
        memcpy(sm + W, pd[l], sizeof pd[l]);
        memcpy(sm + 2 * W, gn[l], sizeof gn[l]);
        memcpy(sm + 3 * W, gd[l], sizeof gd[l]);
    }
}

static inline void columns_pass_b(const float *a, const float *x, float *y, const double *d, const double *bo,
                                  const Columns *g, int64_t c0, int64_t nl, const double *starts,
                                  const int64_t n) {
    double pn[LANES][W], pd[LANES][W], sn[LANES][W], sd[LANES][W];
    const int64_t ntiles = (g->H + STEPS - 1) / STEPS;
    for (int l = 0; l < LANES; l++)
        for (int j = 0; j < W; j++) sn[l][j] = sd[l][j] = 0.0;
    for (int64_t l = 0; l < nl; l++) {
        memcpy(sn[l], g->sums + (c0 + l) * 4 * W + 2 * W, sizeof sn[l]);
        memcpy(sd[l], g->sums + (c0 + l) * 4 * W + 3 * W, sizeof sd[l]);
    }
    for (int64_t tile = ntiles - 1; tile >= 0; tile--) {
        const int64_t lo = tile * STEPS, hi = min64(g->H, lo + STEPS);
        const double *st = starts + tile * LANES * 2 * W, *power = g->tile_power + tile * W;
        for (int64_t l = 0; l < nl; l++) {
            const double *carry = g->sums + (c0 + l) * 4 * W;
            for (int j = 0; j < n; j++) {
                pn[l][j] = st[2 * W * l + j] + power[j] * carry[j];
                pd[l][j] = st[2 * W * l + W + j] + power[j] * carry[W + j];
            }
        }
        for (int64_t row = lo; row < hi; row++)
            for (int64_t l = 0; l < nl; l++) {
                const int64_t tok = row * g->Wd + c0 + l;
                const float *ap = a + tok * g->sa, *xp = x + tok * g->sx;
                double *p = g->pre + 2 * W * ((row - lo) * LANES + l);
                for (int j = 0; j < n; j++) {
                    double e = ap[j];
                    p[j] = pn[l][j];
                    p[W + j] = pd[l][j];
                    pn[l][j] = pn[l][j] * d[j] + e * xp[j];
                    pd[l][j] = pd[l][j] * d[j] + e;
                }
            }
        for (int64_t row = hi - 1; row >= lo; row--)
            for (int64_t l = 0; l < nl; l++) {
                const int64_t tok = row * g->Wd + c0 + l;
                const float *ap = a + tok * g->sa, *xp = x + tok * g->sx;
                float *yp = y + tok * g->sy;
                const double *p = g->pre + 2 * W * ((row - lo) * LANES + l);
                for (int j = 0; j < n; j++) {
                    double e = ap[j], vt = xp[j], own = bo[j] * e;
                    yp[j] = (float)((p[j] + sn[l][j] + own * vt) / (p[W + j] + sd[l][j] + own));
                    sn[l][j] = sn[l][j] * d[j] + e * vt;
                    sd[l][j] = sd[l][j] * d[j] + e;
                }
            }
    }
}

/* The whole V-scan of n channels (one task, single-threaded). */
static void sweep_columns(const float *a, const float *x, float *y, const double *decay, const double *bonus,
                          Columns *g, const int64_t n) {
    const int64_t ntiles = (g->H + STEPS - 1) / STEPS, per_block = ntiles * LANES * 2 * W;
    double d[W], bo[W];
    for (int j = 0; j < W; j++) {
        d[j] = j < n ? decay[j] : 0.0;
        bo[j] = j < n ? bonus[j] : 0.0;
    }
    for (int j = 0; j < W; j++) {
        const double log_d = j < n ? log(d[j]) : 0.0;
        for (int64_t tile = 0; tile < ntiles; tile++) g->tile_power[tile * W + j] = exp(log_d * (double)(tile * STEPS));
    }
    for (int64_t c0 = 0; c0 < g->Wd; c0 += LANES)
        columns_pass_a(a, x, d, g, c0, min64(LANES, g->Wd - c0), g->starts + (c0 / LANES) * per_block, n);
    for (int j = 0; j < n; j++) { /* carries, in place of the sums */
        const double dh = pow(d[j], (double)g->H);
        double in_n = 0.0, in_d = 0.0, out_n = 0.0, out_d = 0.0;
        for (int64_t c = 0; c < g->Wd; c++) {
            double *sm = g->sums + c * 4 * W + j;
            const double fn = sm[0], fd = sm[W];
            sm[0] = in_n;
            sm[W] = in_d;
            in_n = dh * in_n + fn;
            in_d = dh * in_d + fd;
        }
        for (int64_t c = g->Wd - 1; c >= 0; c--) {
            double *sm = g->sums + c * 4 * W + j;
            const double gn = sm[2 * W], gd = sm[3 * W];
            sm[2 * W] = out_n;
            sm[3 * W] = out_d;
            out_n = dh * out_n + gn;
            out_d = dh * out_d + gd;
        }
    }
    for (int64_t c0 = 0; c0 < g->Wd; c0 += LANES)
        columns_pass_b(a, x, y, d, bo, g, c0, min64(LANES, g->Wd - c0), g->starts + (c0 / LANES) * per_block, n);
}

void wkv_forward(const float *a, const float *v, const double *decay, const double *bonus, float *y, int64_t B,
                 int64_t T, int64_t C, int threads) {
    const int64_t nblocks = (C + W - 1) / W, ntiles = (T + TILE - 1) / TILE;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t task = 0; task < B * nblocks; task++) {
        const int64_t b = task / nblocks, c0 = (task % nblocks) * W, off = b * T * C + c0;
        double *starts = (double *)malloc(sizeof(double) * 2 * W * ntiles);
        double *pre = (double *)malloc(sizeof(double) * 2 * W * TILE);
        if (C - c0 >= W) /* the full-width case, with a constant trip count the compiler vectorises */
            sweep_sequence(a + off, C, v + off, C, y + off, C, decay + c0, bonus + c0, T, starts, pre, W);
        else
            sweep_sequence(a + off, C, v + off, C, y + off, C, decay + c0, bonus + c0, T, starts, pre, C - c0);
        free(starts);
        free(pre);
    }
}

/* Re-WKV inference: `steps` Bi-WKV passes over (B, H, Wd, C) tokens k, v -> y (contiguous float32),
 * step s scanning rows when s is even and columns when odd, with d = decay[s * C + c] and e^u =
 * bonus[s * C + c]. One task per batch element and block of W channels does everything for its block:
 * weights, then each step from a block-local buffer (W floats per token) to the next, the first step
 * reading v and the last writing y in place. Returns 0, or -1 if scratch memory ran out. */
int rewkv_infer(const float *k, const float *v, float *y, const double *decay, const double *bonus, int64_t B,
                int64_t H, int64_t Wd, int64_t C, int64_t steps, int threads) {
    const int64_t T = H * Wd, nblocks = (C + W - 1) / W;
    const int64_t row_tiles = (T + TILE - 1) / TILE, col_tiles = (H + STEPS - 1) / STEPS;
    const int64_t col_blocks = (Wd + LANES - 1) / LANES;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t task = 0; task < B * nblocks; task++) {
        const int64_t b = task / nblocks, c0 = (task % nblocks) * W, n = min64(W, C - c0), off = b * T * C + c0;
        float *a = (float *)malloc(sizeof(float) * W * T);
        float *buf0 = (float *)malloc(sizeof(float) * W * T);
        float *buf1 = steps > 2 ? (float *)malloc(sizeof(float) * W * T) : NULL;
        double *starts = (double *)malloc(sizeof(double) * 2 * W * (row_tiles > col_blocks * col_tiles * LANES
                                                                        ? row_tiles : col_blocks * col_tiles * LANES));
        double *sums = (double *)malloc(sizeof(double) * 4 * W * Wd);
        double *pre = (double *)malloc(sizeof(double) * 2 * W * (TILE > STEPS * LANES ? TILE : STEPS * LANES));
        double *tile_power = (double *)malloc(sizeof(double) * W * col_tiles);
        if (!a || !buf0 || (steps > 2 && !buf1) || !starts || !sums || !pre || !tile_power) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        } else {
            block_weights(k + off, C, a, T, n);
            const float *in = v + off;
            int64_t in_stride = C;
            for (int64_t s = 0; s < steps; s++) {
                const int last = s == steps - 1;
                float *out = last ? y + off : (s % 2 == 0 ? buf0 : buf1);
                const int64_t out_stride = last ? C : W;
                const double *ds = decay + s * C + c0, *bs = bonus + s * C + c0;
                if (s % 2 == 0) {
                    if (n == W)
                        sweep_sequence(a, W, in, in_stride, out, out_stride, ds, bs, T, starts, pre, W);
                    else
                        sweep_sequence(a, W, in, in_stride, out, out_stride, ds, bs, T, starts, pre, n);
                } else {
                    Columns g = {H, Wd, W, in_stride, out_stride, starts, sums, pre, tile_power};
                    if (n == W)
                        sweep_columns(a, in, out, ds, bs, &g, W);
                    else
                        sweep_columns(a, in, out, ds, bs, &g, n);
                }
                in = out;
                in_stride = out_stride;
            }
        }
        free(a);
        free(buf0);
        free(buf1);
        free(starts);
        free(sums);
        free(pre);
        free(tile_power);
    }
    return failed ? -1 : 0;
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
