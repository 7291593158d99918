/* Many tokens times an int8 or int4 matrix (the sequence path: prefill) with integer dot
 * products, reading the same rows the one-token kernels of _cpukern.h read: int8 [out, in] with
 * an fp32 scale per row, or the packed int4 rows of quant.py (blocks of 128 weights in 64 bytes,
 * nibble j of 32-bit word i = weight 16 j + i; an fp16 scale per group). No second copy of the
 * weights (fbgemm kept its own packed one: twice the int8 memory).
 *
 * Activations: each token's row is rounded to int8 with one scale, max|x| / 127 (symmetric,
 * round to nearest even), once per product; then y[t, r] = s_x[t] * (integer dot of row r) *
 * the weight scales. Levels, chosen at run time (qg_level, below _cpukern.h's ck_isa):
 *
 *  - VNNI (AVX-512 VNNI): vpdpbusd multiplies unsigned by signed bytes, 4 per 32-bit lane.
 *    The activations go unsigned (x_q + 128), the weights stay signed (int4: code - 8), and
 *    128 * (sum of the weights) comes off: the caller's row sums (`wsum`) for int8, per group
 *    for int4. A chunk transposes its 32 rows into a panel (below, "VNNI: panels"), so each
 *    32-bit lane is one output row and a tile of 12 (int8) / 6 (int4) tokens broadcasts 4
 *    bytes of a token into both vectors of a step: no horizontal sums, no unpacking per token.
 *    int8 products of a few tokens (QG_V8_FEW) keep 4 x 4 tiles on the rows as they are.
 *  - AVX2: int8 widens both sides to 16 bits (vpmaddwd: no saturation). int4: the 4-bit codes u
 *    (0..15) are the unsigned side, (u - 8) x = u x - 8 x (each block starts from -8 * (sum of
 *    its activations)); a 64-byte block splits into low and high nibbles (a byte of word i
 *    holds weights 32 b + i and 32 b + 16 + i) and one in-lane byte shuffle (a 4x4 transpose in
 *    each 128-bit lane) puts in dword b of every lane 4 weights of group b of the block, so the
 *    32-bit sums never mix two groups (with groups of a multiple of 32); each block's sums are
 *    converted and scaled by [d0 d1 d2 d3]. vpmaddubsw (15 * 127 * 2 fits 16 bits) then
 *    vpmaddwd with ones; the activations are stored in the same permuted order.
 *  - scalar: the twin, in plain order. Every level computes the same integers; int8 results
 *    are bit-identical across levels, int4 ones differ only in the order of fp32 sums.
 *
 * Blocking (AVX2, scalar, few-token VNNI): a chunk is (rows_per_chunk rows) x (QG_TOK_CHUNK
 * tokens), the pool's unit of work; inside, tiles of up to 4 rows x 4 (int8) or 3 (int4)
 * tokens run over the whole input, so a tile's weights stay in L1 while the chunk's
 * activations (64 tokens x in) stay in L2. VNNI: a chunk is a panel x up to QG_V_TOKS tokens.
 */
#ifndef CHATRWKV_QGEMM_H
#define CHATRWKV_QGEMM_H

enum { QG_SCALAR = 0, QG_AVX2 = 1, QG_VNNI = 2 };

#define QG_TOK_CHUNK 64  /* int8; int4 takes 63, a multiple of its tile */
#define QG_ROWS 4     /* rows of a tile */
#define QG_I8_TOKS 4  /* tokens of an int8 tile */
#define QG_I4_TOKS 3  /* tokens of an int4 tile (registers: 4 x 3 fp32 sums + 8 unpacked) */

/* The level that runs: below the kernels' ck_isa (set_simd lowers both), VNNI only with it. */
static int qg_level(void) {
#if CK_X86
    if (ck_isa >= CK_ISA_AVX512 && __builtin_cpu_supports("avx512vnni")) return QG_VNNI;
    if (ck_isa >= CK_ISA_AVX2) return QG_AVX2;
#endif
    return QG_SCALAR;
}

/* Whether the int4 product handles this group size (blocks' 32-bit lanes within one group). */
static inline int qg_i4_group_ok(int group) { return group >= 32 && group % 32 == 0; }

/* The quantized activations of one product. Layouts by level and dtype:
 *   VNNI (both): uint8 x_q + 128 in tiles of `tt` tokens, [ceil(T / tt), kp / 4, tt, 4]: the
 *              4 bytes of one step of one token side by side, the steps of a tile in a row
 *              (kp = in rounded up to 64 (int8) or nb * 128 (int4); padding and the tokens
 *              past T: 128, i.e. x = 0)
 *   int8 AVX2: int16 [T, kp] (kp = in)
 *   int8 scalar: int8 [T, kp] (kp = in)
 *   int4 AVX2: int8 [T, nb * 128] in the permuted block order above (zero padded), and
 *              corr int32 [T, nb, 16]
 *   int4 scalar: int8 [T, nb * 128] in plain order (zero padded) */
typedef struct {
    int level, dtype, T, in, kp, nb, tt;
    float *sx;        /* [T]: x ~ x_q * sx */
    void *xq;
    int32_t *corr;
    size_t row_bytes; /* bytes of one token's xq */
} QgActs;

/* ---- activation quantization (the same numbers at every level) ---------------------------- */

static float qg_amax_scalar(const float *x, int n) {
    float m = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        m = a > m ? a : m;
    }
    return m;
}

static void qg_round_scalar(const float *x, int n, float inv, int8_t *q) {
    for (int i = 0; i < n; i++) q[i] = (int8_t)nearbyintf(x[i] * inv);
}

#if CK_X86
CK_AVX512 static float qg_amax_avx512(const float *x, int n) {
    __m512 m = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    float r = _mm512_reduce_max_ps(m);
    for (; i < n; i++) r = fabsf(x[i]) > r ? fabsf(x[i]) : r;
    return r;
}

/* cvtps_epi32 rounds to nearest even under the default rounding mode, as nearbyintf. */
CK_AVX512 static void qg_round_avx512(const float *x, int n, float inv, int8_t *q) {
    __m512 vi = _mm512_set1_ps(inv);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vi));
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtsepi32_epi8(v));
    }
    for (; i < n; i++) q[i] = (int8_t)nearbyintf(x[i] * inv);
}

CK_AVX2 static float qg_amax_avx2(const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    float t[8], r = 0;
    _mm256_storeu_ps(t, m);
    for (int k = 0; k < 8; k++) r = t[k] > r ? t[k] : r;
    for (; i < n; i++) r = fabsf(x[i]) > r ? fabsf(x[i]) : r;
    return r;
}

CK_AVX2 static void qg_round_avx2(const float *x, int n, float inv, int8_t *q) {
    __m256 vi = _mm256_set1_ps(inv);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_storel_epi64((__m128i *)(q + i), _mm_packs_epi16(w, w));
    }
    for (; i < n; i++) q[i] = (int8_t)nearbyintf(x[i] * inv);
}
#endif

/* Token t of x [T, in] into the level's layout; `tmp`: in bytes of scratch. */
static void qg_prep_token(QgActs *a, const float *x, int t, int8_t *tmp) {
    const float *xr = x + (size_t)t * a->in;
    int n = a->in;
    float amax;
#if CK_X86
    if (a->level >= QG_VNNI) amax = qg_amax_avx512(xr, n);
    else if (a->level >= QG_AVX2) amax = qg_amax_avx2(xr, n);
    else
#endif
        amax = qg_amax_scalar(xr, n);
    float inv = amax > 0 ? 127.0f / amax : 0.0f;
    a->sx[t] = amax > 0 ? amax / 127.0f : 0.0f;
    int8_t *q = a->dtype == CK_I8 && a->level == QG_SCALAR
                    ? (int8_t *)a->xq + (size_t)t * a->row_bytes : tmp;
#if CK_X86
    if (a->level >= QG_VNNI) qg_round_avx512(xr, n, inv, q);
    else if (a->level >= QG_AVX2) qg_round_avx2(xr, n, inv, q);
    else
#endif
        qg_round_scalar(xr, n, inv, q);
    if (a->level == QG_VNNI && !a->tt) {
        uint8_t *u = (uint8_t *)a->xq + (size_t)t * a->kp;
        for (int i = 0; i < n; i++) u[i] = (uint8_t)(q[i] + 128);
        memset(u + n, 128, a->kp - n);
        return;
    }
    if (a->level == QG_VNNI) {  /* x_q + 128 = x_q ^ 0x80, a step (4 bytes) at a time */
        memset(q + n, 0, a->kp - n);
        uint8_t *u = (uint8_t *)a->xq + (size_t)(t / a->tt) * a->kp * a->tt + 4 * (t % a->tt);
        for (int k = 0; k < a->kp; k += 4) {
            uint32_t v;
            memcpy(&v, q + k, 4);
            v ^= 0x80808080u;
            memcpy(u + (size_t)k * a->tt, &v, 4);
        }
        return;
    }
    if (a->dtype == CK_I8) {
        if (a->level == QG_AVX2) {
            int16_t *s = (int16_t *)a->xq + (size_t)t * a->kp;
            for (int i = 0; i < n; i++) s[i] = q[i];
        }
        return;
    }
    int8_t *o = (int8_t *)a->xq + (size_t)t * a->row_bytes;
    if (a->level == QG_SCALAR) {
        memcpy(o, q, n);
        memset(o + n, 0, a->row_bytes - n);
        return;
    }
    int32_t *corr = a->corr + (size_t)t * a->nb * 16;
    for (int b = 0; b < a->nb; b++) {
        int8_t *ob = o + (size_t)b * 128;
        for (int c = 0; c < 4; c++)
            for (int g = 0; g < 4; g++) {
                int sum = 0;
                for (int m = 0; m < 4; m++) {
                    int el = b * 128 + 32 * g + 4 * c + m, eh = el + 16;
                    int8_t vl = el < n ? q[el] : 0, vh = eh < n ? q[eh] : 0;
                    ob[c * 16 + 4 * g + m] = vl;
                    ob[64 + c * 16 + 4 * g + m] = vh;
                    sum += vl + vh;
                }
                corr[b * 16 + 4 * c + g] = -8 * sum;
            }
    }
}

/* ---- int8 tiles: rows [r0, r0 + R) x tokens [t0, t0 + TT) -> y [T, out] ------------------ */

static inline void qg_i8_store(const CkMat *m, const QgActs *a, const int32_t *wsum, float *y,
                               int r, int t, int32_t acc) {
    if (wsum) acc -= 128 * wsum[r];
    y[(size_t)t * m->out + r] = a->sx[t] * m->scale[r] * (float)acc;
}

static void qg_i8_tile_scalar(const CkMat *m, const QgActs *a, float *y, int r0, int R, int t0,
                              int TT) {
    int n = m->in;
    for (int i = 0; i < R; i++) {
        const int8_t *w = (const int8_t *)m->w + (size_t)(r0 + i) * n;
        for (int j = 0; j < TT; j++) {
            const int8_t *x = (const int8_t *)a->xq + (size_t)(t0 + j) * a->row_bytes;
            int32_t acc = 0;
            for (int k = 0; k < n; k++) acc += (int32_t)w[k] * x[k];
            qg_i8_store(m, a, NULL, y, r0 + i, t0 + j, acc);
        }
    }
}

#if CK_X86

CK_AVX2 static inline int32_t qg_hsum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

__attribute__((always_inline)) CK_AVX2 static inline void qg_i8_avx2_body(
    const CkMat *m, const QgActs *a, float *y, int r0, const int R, int t0, const int TT) {
    int n = m->in, full = n / 16 * 16;
    const int8_t *w[QG_ROWS];
    const int16_t *x[QG_I8_TOKS];
    __m256i acc[QG_ROWS][QG_I8_TOKS];
    for (int i = 0; i < R; i++) w[i] = (const int8_t *)m->w + (size_t)(r0 + i) * n;
    for (int j = 0; j < TT; j++) x[j] = (const int16_t *)a->xq + (size_t)(t0 + j) * a->kp;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) acc[i][j] = _mm256_setzero_si256();
    for (int k = 0; k < full; k += 16) {
        __m256i wv[QG_ROWS];
        for (int i = 0; i < R; i++)
            wv[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w[i] + k)));
        for (int j = 0; j < TT; j++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x[j] + k));
            for (int i = 0; i < R; i++)
                acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(xv, wv[i]));
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) {
            int32_t s = qg_hsum256(acc[i][j]);
            for (int k = full; k < n; k++) s += (int32_t)w[i][k] * x[j][k];
            qg_i8_store(m, a, NULL, y, r0 + i, t0 + j, s);
        }
}

CK_AVX2 static void qg_i8_tile_avx2(const CkMat *m, const QgActs *a, float *y, int r0, int R,
                                    int t0, int TT) {
    if (R == QG_ROWS && TT == QG_I8_TOKS) {
        qg_i8_avx2_body(m, a, y, r0, QG_ROWS, t0, QG_I8_TOKS);
        return;
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) qg_i8_avx2_body(m, a, y, r0 + i, 1, t0 + j, 1);
}
#endif

/* ---- int4 tiles ------------------------------------------------------------------------------ */

#if CK_X86
/* The 4 scales of block b's 32-weight quarters (padding past the last group: the last scale;
 * its weights and activations are zero), through the hardware's fp16 conversion (exact, as
 * ck_f16_to_f32) and no library call: a call in the tiles' loop made gcc keep the tile's sums
 * in memory (1.8x slower). */
CK_AVX2 static inline __m128 qg_i4_block_scales_f16c(const uint16_t *gs, int group, int ng,
                                                      int b) {
    int g[4];
    for (int q = 0; q < 4; q++) {
        g[q] = (b * 128 + 32 * q) / group;
        g[q] = g[q] < ng ? g[q] : ng - 1;
    }
    return _mm_cvtph_ps(_mm_setr_epi16((short)gs[g[0]], (short)gs[g[1]], (short)gs[g[2]],
                                       (short)gs[g[3]], 0, 0, 0, 0));
}
#endif

static void qg_i4_tile_scalar(const CkMat *m, const QgActs *a, float *y, int r0, int R, int t0,
                              int TT) {
    int n = m->in, ng = ck_i4_groups(n, m->group);
    for (int i = 0; i < R; i++) {
        int r = r0 + i;
        const uint8_t *w = (const uint8_t *)m->w + (size_t)r * ck_i4_row_bytes(n);
        const uint16_t *gs = m->gscale + (size_t)r * ng;
        for (int j = 0; j < TT; j++) {
            const int8_t *x = (const int8_t *)a->xq + (size_t)(t0 + j) * a->row_bytes;
            float s = 0;
            for (int g = 0; g < ng; g++) {
                int e1 = (g + 1) * m->group < n ? (g + 1) * m->group : n, acc = 0;
                for (int e = g * m->group; e < e1; e++) acc += (ck_i4_code(w, e) - 8) * x[e];
                s += ck_f16_to_f32(gs[g]) * (float)acc;
            }
            y[(size_t)(t0 + j) * m->out + r] = a->sx[t0 + j] * s;
        }
    }
}

#if CK_X86
__attribute__((always_inline)) CK_AVX2 static inline void qg_i4_avx2_body(
    const CkMat *m, const QgActs *a, float *y, int r0, const int R, int t0, const int TT) {
    int n = m->in, ng = ck_i4_groups(n, m->group), nb = a->nb;
    size_t rb = ck_i4_row_bytes(n);
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const __m256i tr = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m256 f[QG_ROWS][QG_I4_TOKS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) f[i][j] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i lo[QG_ROWS][2], hi[QG_ROWS][2];
        __m256 d[QG_ROWS];
        for (int i = 0; i < R; i++) {
            int r = r0 + i;
            const uint8_t *p = (const uint8_t *)m->w + r * rb + (size_t)b * 64;
            for (int h = 0; h < 2; h++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(p + 32 * h));
                lo[i][h] = _mm256_shuffle_epi8(_mm256_and_si256(q, low), tr);
                hi[i][h] = _mm256_shuffle_epi8(_mm256_and_si256(_mm256_srli_epi16(q, 4), low),
                                               tr);
            }
            const uint16_t *gs = m->gscale + (size_t)r * ng;
            __m128 v;
            if (m->group == 32 && 4 * b + 3 < ng) {
                v = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(gs + 4 * b)));
            } else {
                v = qg_i4_block_scales_f16c(gs, m->group, ng, b);
            }
            d[i] = _mm256_set_m128(v, v);
        }
        for (int j = 0; j < TT; j++) {
            const int8_t *x = (const int8_t *)a->xq + (size_t)(t0 + j) * a->row_bytes +
                              (size_t)b * 128;
            const int32_t *c = a->corr + ((size_t)(t0 + j) * nb + b) * 16;
            for (int h = 0; h < 2; h++) {
                __m256i xl = _mm256_loadu_si256((const __m256i *)(x + 32 * h));
                __m256i xh = _mm256_loadu_si256((const __m256i *)(x + 64 + 32 * h));
                __m256i cv = _mm256_loadu_si256((const __m256i *)(c + 8 * h));
                for (int i = 0; i < R; i++) {
                    __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[i][h], xl),
                                                   _mm256_maddubs_epi16(hi[i][h], xh));
                    __m256i s = _mm256_add_epi32(cv, _mm256_madd_epi16(p16, ones));
                    f[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d[i], f[i][j]);
                }
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++)
            y[(size_t)(t0 + j) * m->out + r0 + i] = a->sx[t0 + j] * ck_hsum(f[i][j]);
}

CK_AVX2 static void qg_i4_tile_avx2(const CkMat *m, const QgActs *a, float *y, int r0, int R,
                                    int t0, int TT) {
    if (R == QG_ROWS && TT == QG_I4_TOKS) {
        qg_i4_avx2_body(m, a, y, r0, QG_ROWS, t0, QG_I4_TOKS);
        return;
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) qg_i4_avx2_body(m, a, y, r0 + i, 1, t0 + j, 1);
}
#endif

/* ---- the product: activations, then chunks of rows x tokens on the pool ------------------- */

typedef struct {
    const CkMat *m;
    QgActs *a;
    const float *x;
    float *y;
    const int32_t *wsum;
    int rows_per_chunk, n_tc, toks_per_chunk;
} QgJob;

/* ---- VNNI: panels of 32 rows repacked for the chunk ------------------------------------------
 *
 * A chunk repacks its 32 rows ("panel") into [kp / 4, 32] dwords: one zmm per 16 rows per step
 * of 4 inputs, lanes = rows (int4 unpacked to signed codes u - 8). A tile of tt tokens then
 * broadcasts one token's 4 activation bytes and multiplies them into both zmm: 2 x tt sums, one
 * output row per lane, no horizontal sums at the end and a vector store per token. The copy
 * lives for the chunk only (32 x kp bytes, 24 KiB at in = 768); its cost, a 16 x 16 transpose
 * of dwords per 16 rows and 64 inputs, is shared by the chunk's tokens (up to QG_V_TOKS).
 *   int8: 2 x 12 int32 sums; y = s_x * scale * (sum - 128 rowsum), as the other levels.
 *   int4: per group, 2 x 6 int32 sums, converted and multiplied-added by the group's scales
 *         into 2 x 6 fp32 sums; the activations' +128 adds 128 * (the group's code sum) to
 *         every token's sum: the panel's sum over groups of -128 * code sum * scale, per row,
 *         comes off at the end. (A tile of 12 int32 + 12 fp32 sums: gcc spilled at more.)
 * A short last tile computes fewer tokens (4 / 8 of 12, 2 / 4 of 6). */
#define QG_PANEL 32
#define QG_V8_TOKS 12  /* tokens of an int8 tile: 24 sums + 2 weights + 1 broadcast */
#define QG_V4_TOKS 6   /* int4: 12 int32 + 12 fp32 sums + 2 weights + 1 broadcast */
#define QG_V_TOKS 264  /* tokens of a chunk at most (a multiple of both tiles) */
#define QG_V8_FEW 6    /* int8 products of at most this many tokens: no panels */

#if CK_X86
/* 16 rows of 16 dwords -> 16 columns: r[d] lane i = row i's dword d. */
__attribute__((always_inline)) CK_VNNI static inline void qg_tr16(__m512i *r) {
    __m512i t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {  /* r[4 i + c], 128-bit lane L: rows 4 i.., dword 4 L + c */
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {  /* a 4 x 4 transpose of 128-bit lanes */
        __m512i a0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44);
        __m512i a1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xEE);
        __m512i b0 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
        __m512i b1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xEE);
        t[c] = _mm512_shuffle_i32x4(a0, b0, 0x88);
        t[4 + c] = _mm512_shuffle_i32x4(a0, b0, 0xDD);
        t[8 + c] = _mm512_shuffle_i32x4(a1, b1, 0x88);
        t[12 + c] = _mm512_shuffle_i32x4(a1, b1, 0xDD);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* The int8 panel: rows [r0, r0 + 32) (zero past out) into wp [kp / 4, 32] dwords. */
CK_VNNI static void qg_v8_pack(const CkMat *m, int r0, int kp, uint8_t *wp) {
    int n = m->in;
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < kp; k += 64) {
            __m512i v[16];
            __mmask64 mk = _cvtu64_mask64(n - k >= 64 ? ~0ULL : ~0ULL >> (64 - (n - k)));
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                int r = r0 + 16 * h + i;
                v[i] = r < m->out ? _mm512_maskz_loadu_epi8(mk, (const int8_t *)m->w +
                                                                    (size_t)r * n + k)
                                  : _mm512_setzero_si512();
            }
            qg_tr16(v);
#pragma GCC unroll 16
            for (int d = 0; d < 16; d++)
                _mm512_store_si512((void *)(wp + ((size_t)(k / 4 + d) * QG_PANEL + 16 * h) * 4),
                                   v[d]);
        }
}

/* The int4 panel: codes - 8 into wp [kp / 4, 32] dwords (steps in plain input order), per
 * group g -128 * sum(codes - 8) into corr [ng, 32], the scales into d [ng, 32], and after
 * them (d + ng * 32) the per-row sum over groups of corr * d. */
CK_VNNI static void qg_v4_pack(const CkMat *m, int r0, int kp, uint8_t *wp, int32_t *corr,
                               float *d) {
    int n = m->in, nb = kp / 128, ng = ck_i4_groups(n, m->group);
    size_t rb = ck_i4_row_bytes(n);
    const __m512i low = _mm512_set1_epi8(15), eight = _mm512_set1_epi8(8);
    const __m512i tr = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    memset(corr, 0, sizeof(int32_t) * ng * QG_PANEL);
    for (int h = 0; h < 2; h++)
        for (int b = 0; b < nb; b++) {
            __m512i sum[4];  /* 128 * (the codes' sum) of the block's 4 quarters, per row */
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) sum[c] = _mm512_setzero_si512();
            for (int nib = 0; nib < 2; nib++) {  /* low nibbles, then high (+ 16 inputs) */
                __m512i v[16];
#pragma GCC unroll 16
                for (int i = 0; i < 16; i++) {
                    int r = r0 + 16 * h + i;
                    if (r < m->out) {
                        __m512i q = _mm512_loadu_si512((const void *)((const uint8_t *)m->w +
                                                                      (size_t)r * rb + b * 64));
                        q = _mm512_and_si512(nib ? _mm512_srli_epi16(q, 4) : q, low);
                        /* dword c of 128-bit lane L: weights 32 c + 4 L + 0..3 (+ 16 nib) */
                        v[i] = _mm512_sub_epi8(_mm512_shuffle_epi8(q, tr), eight);
                    } else {
                        v[i] = _mm512_setzero_si512();
                    }
                }
                qg_tr16(v);
#pragma GCC unroll 16
                for (int j = 0; j < 16; j++) {  /* dword j = 4 L + c: step 8 c + L (+ 4 nib) */
                    size_t s = (size_t)b * 32 + 8 * (j & 3) + (j >> 2) + 4 * nib;
                    _mm512_store_si512((void *)(wp + (s * QG_PANEL + 16 * h) * 4), v[j]);
                    sum[j & 3] = _mm512_dpbusd_epi32(sum[j & 3], k128, v[j]);
                }
            }
            for (int c = 0; c < 4; c++) {  /* quarters past the last group: never read */
                int g = (b * 128 + 32 * c) / m->group;
                int32_t *o = corr + g * QG_PANEL + 16 * h;
                if (g < ng) _mm512_store_si512((void *)o, _mm512_sub_epi32(
                                 _mm512_load_si512((const void *)o), sum[c]));
            }
        }
    for (int h = 0; h < 2; h++)  /* scales: 16 rows x 16 groups converted, then transposed */
        for (int g0 = 0; g0 < ng; g0 += 16) {
            __mmask16 mk = ck_mask16(ng - g0);
            __m512i v[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                int r = r0 + 16 * h + i;
                v[i] = r < m->out ? _mm512_castps_si512(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                                        mk, m->gscale + (size_t)r * ng + g0)))
                                  : _mm512_setzero_si512();
            }
            qg_tr16(v);
            for (int j = 0; j < 16 && g0 + j < ng; j++)
                _mm512_store_si512((void *)(d + (size_t)(g0 + j) * QG_PANEL + 16 * h), v[j]);
        }
    /* the starts' share of every token's sum: sum over groups of scale x start, per row */
    float *c = d + (size_t)ng * QG_PANEL;
    for (int h = 0; h < 2; h++) {
        __m512 v = _mm512_setzero_ps();
        for (int g = 0; g < ng; g++)
            v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(
                                    (const void *)(corr + g * QG_PANEL + 16 * h))),
                                _mm512_load_ps(d + g * QG_PANEL + 16 * h), v);
        _mm512_store_ps(c + 16 * h, v);
    }
}

/* Tokens [t0, t0 + TT) (those below T stored) x the int8 panel at r0; TT <= QG_V8_TOKS (a
 * compile-time constant: the last tile of a product may take fewer tokens). */
__attribute__((always_inline)) CK_VNNI static inline void qg_v8_body(
    const CkMat *m, const QgActs *a, const int32_t *wsum, const uint8_t *wp, float *y, int r0,
    int t0, const int TT) {
    const uint8_t *xp = (const uint8_t *)a->xq + (size_t)(t0 / QG_V8_TOKS) * a->kp * QG_V8_TOKS;
    __m512i s0[QG_V8_TOKS], s1[QG_V8_TOKS];
#pragma GCC unroll 16
    for (int j = 0; j < TT; j++) s0[j] = s1[j] = _mm512_setzero_si512();
    for (int k = 0; k < a->kp / 4; k++) {
        __m512i w0 = _mm512_load_si512((const void *)(wp + (size_t)k * QG_PANEL * 4));
        __m512i w1 = _mm512_load_si512((const void *)(wp + (size_t)k * QG_PANEL * 4 + 64));
        const uint8_t *xk = xp + (size_t)k * QG_V8_TOKS * 4;
#pragma GCC unroll 16
        for (int j = 0; j < TT; j++) {
            int32_t v;
            memcpy(&v, xk + 4 * j, 4);
            __m512i xb = _mm512_set1_epi32(v);
            s0[j] = _mm512_dpbusd_epi32(s0[j], xb, w0);
            s1[j] = _mm512_dpbusd_epi32(s1[j], xb, w1);
        }
    }
    int nr = m->out - r0 < QG_PANEL ? m->out - r0 : QG_PANEL;
    __mmask16 k0 = ck_mask16(nr);
    __mmask16 k1 = ck_mask16(nr - 16);
    __m512i c0 = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(k0, wsum + r0), 7);
    __m512i c1 = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(k1, wsum + r0 + 16), 7);
    __m512 d0 = _mm512_maskz_loadu_ps(k0, m->scale + r0);
    __m512 d1 = _mm512_maskz_loadu_ps(k1, m->scale + r0 + 16);
#pragma GCC unroll 16
    for (int j = 0; j < TT; j++) {
        int t = t0 + j;
        if (t >= a->T) break;
        __m512 sx = _mm512_set1_ps(a->sx[t]);
        float *yt = y + (size_t)t * m->out + r0;
        __m512 v0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(s0[j], c0));
        __m512 v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(s1[j], c1));
        _mm512_mask_storeu_ps(yt, k0, _mm512_mul_ps(_mm512_mul_ps(sx, d0), v0));
        _mm512_mask_storeu_ps(yt + 16, k1, _mm512_mul_ps(_mm512_mul_ps(sx, d1), v1));
    }
}

CK_VNNI static void qg_v8_tile12(const CkMat *m, const QgActs *a, const int32_t *wsum,
                                 const uint8_t *wp, float *y, int r0, int t0) {
    qg_v8_body(m, a, wsum, wp, y, r0, t0, 12);
}

CK_VNNI static void qg_v8_tile8(const CkMat *m, const QgActs *a, const int32_t *wsum,
                                const uint8_t *wp, float *y, int r0, int t0) {
    qg_v8_body(m, a, wsum, wp, y, r0, t0, 8);
}

CK_VNNI static void qg_v8_tile4(const CkMat *m, const QgActs *a, const int32_t *wsum,
                                const uint8_t *wp, float *y, int r0, int t0) {
    qg_v8_body(m, a, wsum, wp, y, r0, t0, 4);
}

/* Tokens [t0, t0 + TT) x the int4 panel at r0 (corr, d: qg_v4_pack's); TT <= QG_V4_TOKS. */
__attribute__((always_inline)) CK_VNNI static inline void qg_v4_body(
    const CkMat *m, const QgActs *a, const uint8_t *wp, const int32_t *corr, const float *d,
    float *y, int r0, int t0, const int TT) {
    const uint8_t *xp = (const uint8_t *)a->xq + (size_t)(t0 / QG_V4_TOKS) * a->kp * QG_V4_TOKS;
    int ng = ck_i4_groups(m->in, m->group), kq = a->kp / 4;
    __m512 f0[QG_V4_TOKS], f1[QG_V4_TOKS];
#pragma GCC unroll 8
    for (int j = 0; j < TT; j++) f0[j] = f1[j] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        int k0 = g * m->group / 4, k1 = k0 + m->group / 4 < kq ? k0 + m->group / 4 : kq;
        __m512i s0[QG_V4_TOKS], s1[QG_V4_TOKS];
#pragma GCC unroll 8
        for (int j = 0; j < TT; j++) s0[j] = s1[j] = _mm512_setzero_si512();
        for (int k8 = k0; k8 < k1; k8 += 8)  /* 32 inputs (groups: a multiple of 32) */
#pragma GCC unroll 8
        for (int k = k8; k < k8 + 8; k++) {
            __m512i w0 = _mm512_load_si512((const void *)(wp + (size_t)k * QG_PANEL * 4));
            __m512i w1 = _mm512_load_si512((const void *)(wp + (size_t)k * QG_PANEL * 4 + 64));
            const uint8_t *xk = xp + (size_t)k * QG_V4_TOKS * 4;
#pragma GCC unroll 8
            for (int j = 0; j < TT; j++) {
                int32_t v;
                memcpy(&v, xk + 4 * j, 4);
                __m512i xb = _mm512_set1_epi32(v);
                s0[j] = _mm512_dpbusd_epi32(s0[j], xb, w0);
                s1[j] = _mm512_dpbusd_epi32(s1[j], xb, w1);
            }
        }
        __m512 d0 = _mm512_load_ps(d + g * QG_PANEL), d1 = _mm512_load_ps(d + g * QG_PANEL + 16);
#pragma GCC unroll 8
        for (int j = 0; j < TT; j++) {
            f0[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0[j]), d0, f0[j]);
            f1[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[j]), d1, f1[j]);
        }
    }
    int nr = m->out - r0 < QG_PANEL ? m->out - r0 : QG_PANEL;
    __mmask16 m0 = ck_mask16(nr);
    __mmask16 m1 = ck_mask16(nr - 16);
    __m512 cs0 = _mm512_load_ps(d + ng * QG_PANEL), cs1 = _mm512_load_ps(d + ng * QG_PANEL + 16);
#pragma GCC unroll 8
    for (int j = 0; j < TT; j++) {
        int t = t0 + j;
        if (t >= a->T) break;
        __m512 sx = _mm512_set1_ps(a->sx[t]);
        float *yt = y + (size_t)t * m->out + r0;
        _mm512_mask_storeu_ps(yt, m0, _mm512_mul_ps(sx, _mm512_add_ps(f0[j], cs0)));
        _mm512_mask_storeu_ps(yt + 16, m1, _mm512_mul_ps(sx, _mm512_add_ps(f1[j], cs1)));
    }
}

CK_VNNI static void qg_v4_tile6(const CkMat *m, const QgActs *a, const uint8_t *wp,
                                const int32_t *corr, const float *d, float *y, int r0, int t0) {
    qg_v4_body(m, a, wp, corr, d, y, r0, t0, 6);
}

CK_VNNI static void qg_v4_tile4(const CkMat *m, const QgActs *a, const uint8_t *wp,
                                const int32_t *corr, const float *d, float *y, int r0, int t0) {
    qg_v4_body(m, a, wp, corr, d, y, r0, t0, 4);
}

CK_VNNI static void qg_v4_tile2(const CkMat *m, const QgActs *a, const uint8_t *wp,
                                const int32_t *corr, const float *d, float *y, int r0, int t0) {
    qg_v4_body(m, a, wp, corr, d, y, r0, t0, 2);
}

CK_AVX512 static inline int32_t qg_hsum512(__m512i v) { return _mm512_reduce_add_epi32(v); }
/* Few tokens (T <= QG_V8_FEW): the panels' transposition would cost more than it saves; R x TT
 * tiles (R <= 4, TT <= 4: compile-time constants where inlined) read the rows as they are, on
 * activations x_q + 128 in plain order ([T, kp], a->tt = 0), each sum reduced at the end. */
__attribute__((always_inline)) CK_VNNI static inline void qg_i8_vnni_body(
    const CkMat *m, const QgActs *a, const int32_t *wsum, float *y, int r0, const int R, int t0,
    const int TT) {
    int n = m->in, full = n / 64 * 64;
    const int8_t *w[QG_ROWS];
    const uint8_t *x[QG_I8_TOKS];
    __m512i acc[QG_ROWS][QG_I8_TOKS];
    for (int i = 0; i < R; i++) w[i] = (const int8_t *)m->w + (size_t)(r0 + i) * n;
    for (int j = 0; j < TT; j++) x[j] = (const uint8_t *)a->xq + (size_t)(t0 + j) * a->kp;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) acc[i][j] = _mm512_setzero_si512();
    for (int k = 0; k < full; k += 64) {
        __m512i wv[QG_ROWS];
        for (int i = 0; i < R; i++) wv[i] = _mm512_loadu_si512((const void *)(w[i] + k));
        for (int j = 0; j < TT; j++) {
            __m512i xv = _mm512_loadu_si512((const void *)(x[j] + k));
            for (int i = 0; i < R; i++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[i]);
        }
    }
    if (full < n) {  /* the last partial step: masked weights (nothing read past the row) */
        __mmask64 mk = _cvtu64_mask64(~0ULL >> (64 - (n - full)));
        __m512i wv[QG_ROWS];
        for (int i = 0; i < R; i++) wv[i] = _mm512_maskz_loadu_epi8(mk, w[i] + full);
        for (int j = 0; j < TT; j++) {
            __m512i xv = _mm512_loadu_si512((const void *)(x[j] + full));
            for (int i = 0; i < R; i++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[i]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++)
            qg_i8_store(m, a, wsum, y, r0 + i, t0 + j, qg_hsum512(acc[i][j]));
}

CK_VNNI static void qg_i8_tile_vnni(const CkMat *m, const QgActs *a, const int32_t *wsum,
                                    float *y, int r0, int R, int t0, int TT) {
    if (R == QG_ROWS && TT == QG_I8_TOKS) {
        qg_i8_vnni_body(m, a, wsum, y, r0, QG_ROWS, t0, QG_I8_TOKS);
        return;
    }
    for (int i = 0; i < R; i++)  /* edges: one row at a time */
        for (int j = 0; j < TT; j++) qg_i8_vnni_body(m, a, wsum, y, r0 + i, 1, t0 + j, 1);
}

/* Chunk = (panel, run of tokens): repack the panel, then its tiles. */
static void qg_vchunk(const CkPhase *ph, int chunk) {
    const QgJob *job = (const QgJob *)ph->ctx;
    const CkMat *m = job->m;
    const QgActs *a = job->a;
    int p = chunk / job->n_tc, tc = chunk % job->n_tc, r0 = p * QG_PANEL;
    int t_begin = tc * job->toks_per_chunk, t_end = t_begin + job->toks_per_chunk;
    if (t_end > a->T) t_end = a->T;
    int ng = m->dtype == CK_I4 ? ck_i4_groups(m->in, m->group) : 0;
    size_t wbytes = (size_t)a->kp * QG_PANEL, extra = (size_t)(ng + 1) * QG_PANEL * 8;
    uint8_t *wp = aligned_alloc(64, wbytes + extra + 64);
    if (!wp) abort();
    int32_t *corr = (int32_t *)(wp + wbytes);
    float *d = (float *)(wp + wbytes + (size_t)ng * QG_PANEL * 4);
    if (m->dtype == CK_I8) {
        qg_v8_pack(m, r0, a->kp, wp);
        for (int t = t_begin; t < t_end; t += QG_V8_TOKS) {  /* a short last tile: 4 or 8 */
            if (t_end - t > 8) qg_v8_tile12(m, a, job->wsum, wp, job->y, r0, t);
            else if (t_end - t > 4) qg_v8_tile8(m, a, job->wsum, wp, job->y, r0, t);
            else qg_v8_tile4(m, a, job->wsum, wp, job->y, r0, t);
        }
    } else {
        qg_v4_pack(m, r0, a->kp, wp, corr, d);
        for (int t = t_begin; t < t_end; t += QG_V4_TOKS) {  /* a short last tile: 2 or 4 */
            if (t_end - t > 4) qg_v4_tile6(m, a, wp, corr, d, job->y, r0, t);
            else if (t_end - t > 2) qg_v4_tile4(m, a, wp, corr, d, job->y, r0, t);
            else qg_v4_tile2(m, a, wp, corr, d, job->y, r0, t);
        }
    }
    free(wp);
}
#endif

static void qg_run_tile(const QgJob *job, int r0, int R, int t0, int TT) {
    const QgActs *a = job->a;
    int i8 = a->dtype == CK_I8;
#if CK_X86
    if (a->level == QG_VNNI && i8) qg_i8_tile_vnni(job->m, a, job->wsum, job->y, r0, R, t0, TT);
    else if (a->level == QG_AVX2 && i8) qg_i8_tile_avx2(job->m, a, job->y, r0, R, t0, TT);
    else if (a->level == QG_AVX2) qg_i4_tile_avx2(job->m, a, job->y, r0, R, t0, TT);
    else
#endif
    if (i8) qg_i8_tile_scalar(job->m, a, job->y, r0, R, t0, TT);
    else qg_i4_tile_scalar(job->m, a, job->y, r0, R, t0, TT);
}

static inline int qg_tok_chunk(int dtype) {
    return dtype == CK_I8 ? QG_TOK_CHUNK : QG_TOK_CHUNK / QG_I4_TOKS * QG_I4_TOKS;
}

static void qg_chunk(const CkPhase *ph, int chunk) {
    const QgJob *job = (const QgJob *)ph->ctx;
    int rc = chunk / job->n_tc, tc = chunk % job->n_tc;
    int r_begin = rc * job->rows_per_chunk, r_end = r_begin + job->rows_per_chunk;
    int tok_chunk = qg_tok_chunk(job->a->dtype);
    int t_begin = tc * tok_chunk, t_end = t_begin + tok_chunk;
    if (r_end > job->m->out) r_end = job->m->out;
    if (t_end > job->a->T) t_end = job->a->T;
    int toks = job->a->dtype == CK_I8 ? QG_I8_TOKS : QG_I4_TOKS;
    for (int r = r_begin; r < r_end; r += QG_ROWS) {
        int R = r_end - r < QG_ROWS ? r_end - r : QG_ROWS;
        for (int t = t_begin; t < t_end; t += toks)
            qg_run_tile(job, r, R, t, t_end - t < toks ? t_end - t : toks);
    }
}

/* Activation preparation as a phase: chunk = a run of tokens (its own scratch row). */
#define QG_PREP_TOKS 16

static void qg_prep_chunk(const CkPhase *ph, int chunk) {
    const QgJob *job = (const QgJob *)ph->ctx;
    int8_t *tmp = malloc((size_t)job->a->kp + 64);
    if (!tmp) abort();
    int t1 = (chunk + 1) * QG_PREP_TOKS;
    if (t1 > job->a->T) t1 = job->a->T;
    for (int t = chunk * QG_PREP_TOKS; t < t1; t++) qg_prep_token(job->a, job->x, t, tmp);
    free(tmp);
}

/* y [T, out] = x [T, in] M^T for an int8 or int4 matrix (int4: qg_i4_group_ok(group)), on
 * `pool` (NULL: the calling thread). wsum: int32 [out] row sums of an int8 matrix (used by
 * the VNNI level only). Returns 0, or -1 when out of memory. */
static int qg_gemm(const CkMat *m, const float *x, int T, float *y, const int32_t *wsum,
                   CkPool *pool) {
    QgActs a;
    memset(&a, 0, sizeof a);
    a.level = qg_level();
    a.dtype = m->dtype;
    a.T = T;
    a.in = m->in;
    a.nb = (m->in + 127) / 128;
    size_t elem = 1, xbytes;
    int threads = pool ? pool->n_threads : 1;
    if (m->dtype == CK_I8) {
        a.kp = a.level == QG_VNNI ? (m->in + 63) / 64 * 64 : m->in;
        elem = a.level == QG_AVX2 ? 2 : 1;
        a.row_bytes = (size_t)a.kp * elem;
    } else {
        a.kp = a.nb * 128;
        a.row_bytes = (size_t)a.kp;
    }
    xbytes = (size_t)T * a.row_bytes;
    if (a.level == QG_VNNI && (m->dtype == CK_I4 || T > QG_V8_FEW)) {
        a.tt = m->dtype == CK_I8 ? QG_V8_TOKS : QG_V4_TOKS;
        xbytes = (size_t)((T + a.tt - 1) / a.tt) * a.tt * a.kp;
    }
    a.sx = malloc(sizeof(float) * (size_t)T);
    a.xq = aligned_alloc(64, (xbytes + 63) / 64 * 64 + 64);
    if (m->dtype == CK_I4 && a.level == QG_AVX2)
        a.corr = aligned_alloc(64, (size_t)T * a.nb * 16 * sizeof(int32_t) + 64);
    int ok = a.sx && a.xq && (m->dtype == CK_I8 || a.level != QG_AVX2 || a.corr);
    if (ok) {
        int tok_chunk = qg_tok_chunk(m->dtype);
        QgJob job = {m, &a, x, y, wsum, 0, (T + tok_chunk - 1) / tok_chunk, 0};
        CkChunkFn fn = qg_chunk;
        int n_chunks;
        if (a.tt) {
            /* chunks: a panel x up to QG_V_TOKS tokens (a multiple of the tile), ~4 a thread */
            int n_p = (m->out + QG_PANEL - 1) / QG_PANEL, tiles = (T + a.tt - 1) / a.tt;
            int n_tc = (T + QG_V_TOKS - 1) / QG_V_TOKS, want = (4 * threads + n_p - 1) / n_p;
            n_tc = n_tc > want ? n_tc : want;
            n_tc = n_tc < tiles ? n_tc : tiles;
            job.toks_per_chunk = (tiles + n_tc - 1) / n_tc * a.tt;
            job.n_tc = (T + job.toks_per_chunk - 1) / job.toks_per_chunk;
            n_chunks = n_p * job.n_tc;
            /* the last tile's tokens past T: x = 0 (the tokens below T are written over) */
            memset((uint8_t *)a.xq + (size_t)(tiles - 1) * a.tt * a.kp, 0x80,
                   (size_t)a.tt * a.kp);
#if CK_X86
            fn = qg_vchunk;
#endif
        } else {
            /* rows per chunk: a multiple of the tile, ~4 chunks a thread at least */
            int rpc = m->out * job.n_tc / (8 * threads);
            rpc = rpc < QG_ROWS ? QG_ROWS : rpc > 64 ? 64 : rpc / QG_ROWS * QG_ROWS;
            job.rows_per_chunk = rpc;
            n_chunks = (m->out + rpc - 1) / rpc * job.n_tc;
        }
        int n_prep = (T + QG_PREP_TOKS - 1) / QG_PREP_TOKS;
        if (pool) {
            pool->phase.fn = qg_prep_chunk;
            pool->phase.ctx = &job;
            ck_run_phase(pool, n_prep);
            pool->phase.fn = fn;
            ck_run_phase(pool, n_chunks);
        } else {
            CkPhase ph;
            memset(&ph, 0, sizeof ph);
            ph.fn = qg_prep_chunk;
            ph.ctx = &job;
            for (int c = 0; c < n_prep; c++) qg_prep_chunk(&ph, c);
            ph.fn = fn;
            for (int c = 0; c < n_chunks; c++) fn(&ph, c);
        }
    }
    free(a.sx);
    free(a.xq);
    free(a.corr);
    return ok ? 0 : -1;
}

/* Row sums of an int8 matrix [rows, n] (the VNNI level's correction). */
static void qg_i8_rowsum(const int8_t *w, int rows, int n, int32_t *out) {
    for (int r = 0; r < rows; r++) {
        const int8_t *p = w + (size_t)r * n;
        int32_t s = 0;
        for (int k = 0; k < n; k++) s += p[k];
        out[r] = s;
    }
}

#endif /* CHATRWKV_QGEMM_H */
