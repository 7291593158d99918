/* Many tokens times a bf16 matrix (the sequence path: prefill) with fp32 multiply-adds: bf16
 * weights [out, in] exactly as stored (row-major; no second copy), fp32 activations [T, in],
 * fp32 results [T, out]. Each weight is widened to fp32 in registers (bf16 is the top half of
 * an fp32), so y = x W^T exactly as torch's F.linear(x, W.float()) up to the order of fp32
 * sums; the activations are never rounded (torch's bf16 GEMM rounds them to bf16).
 *
 * Why not vdpbf16ps: on the development CPU (Xeon, Sapphire/Emerald Rapids class, AVX-512
 * BF16, no AMX) it issues at ~1.6 G/s per core against ~6.4 G/s for fp32 FMAs on two ports, so
 * a bf16 dot product of 32 pairs costs more than two fp32 FMAs of 16: widening and FMA wins.
 *
 * Widening without shuffles: a 64-byte load of 32 bf16 is 16 dwords, dword i holding weights
 * 2i (low half) and 2i + 1 (high half); `w << 16` is weights 2i as fp32, `w & 0xFFFF0000`
 * weights 2i + 1 (AVX-512: a move zeroing the low halves under a mask register, which keeps a
 * vector register free). The activations are stored once per product in the matching order: per block
 * of 32, the 16 even elements then the 16 odd ones (zero padded to a multiple of 32). AVX2
 * reads the same layout in halves of 16 weights.
 *
 * Levels (run time, below _cpukern.h's ck_isa): AVX-512 (tiles of 4 rows x 6 tokens: 24 fp32
 * accumulators, 4 widened weight vectors and one activation vector in 32 registers), AVX2
 * (2 rows x 4 tokens), scalar (plain order, the twin). Blocking: a chunk (the pool's unit) is
 * up to 128 rows x BG_TOK_CHUNK tokens; inside, K runs in blocks of BG_KB, the token tiles of a
 * block over the chunk's row tiles (a tile's activations are re-read from L1/L2 by each row
 * tile, the weights of the block from L2). Each tile ends with a transposing reduction of its
 * 24 sums into y; K blocks of 512 made that ~15% of the time (one thread, 768 x 768: 105-130
 * GFLOP/s), 2048 amortizes it (150-160; 4096 no better).
 */
#ifndef CHATRWKV_BGEMM_H
#define CHATRWKV_BGEMM_H

enum { BG_SCALAR = 0, BG_AVX2 = 1, BG_AVX512 = 2 };

#define BG_STEP 32        /* weights per step (64 bytes of bf16) and per block of the layout */
#define BG_KB 2048        /* K block: a multiple of BG_STEP (below) */
#define BG_ROWS 4         /* AVX-512 tile */
#define BG_TOKS 6
#define BG_ROWS2 2        /* AVX2 tile */
#define BG_TOKS2 4
#define BG_TOK_CHUNK 96   /* a multiple of both tiles' tokens */
/* Products from this many multiply-adds use the pool (a thread starts in ~15 us). Measured, one
 * thread / two: 768 x 768 x 8 tokens (4.7 M) 150 / 159 us, 1024 x 1024 x 8 (8.4 M) 244 / 209,
 * 768 x 768 x 32 (18.9 M) 405 / 290. _qgemm.h's 2^24 kept 16 tokens x 768 x 768 on one core. */
#define BG_MIN_PARALLEL_MACS (1 << 23)
#define BG_PF_MAX_K 1024  /* software prefetch of the weights for rows up to this long */

static int bg_level(void) {
    return ck_isa >= CK_ISA_AVX512 ? BG_AVX512 : ck_isa >= CK_ISA_AVX2 ? BG_AVX2 : BG_SCALAR;
}

typedef struct {
    const uint16_t *w;  /* bf16 [out, in] */
    const float *x;     /* [T, in] */
    float *y;           /* [T, out] */
    float *xp;          /* [T, kp]: the activations in the layout above (SIMD levels) */
    int out, in, T, kp, level, rows_per_chunk, n_tc;
} BgJob;

static inline float bg_f32(uint16_t b) {
    union { uint32_t u; float f; } v = {(uint32_t)b << 16};
    return v.f;
}

/* ---- scalar twin ------------------------------------------------------------------------- */

static void bg_tile_scalar(const BgJob *j, int r0, int r1, int t0, int t1) {
    for (int t = t0; t < t1; t++) {
        const float *x = j->x + (size_t)t * j->in;
        for (int r = r0; r < r1; r++) {
            const uint16_t *w = j->w + (size_t)r * j->in;
            float s = 0;
            for (int k = 0; k < j->in; k++) s += bg_f32(w[k]) * x[k];
            j->y[(size_t)t * j->out + r] = s;
        }
    }
}

/* Token t into the SIMD layout (per 32: evens, then odds; zeros past `in`). */
static void bg_prep_token_scalar(const BgJob *j, int t) {
    const float *x = j->x + (size_t)t * j->in;
    float *o = j->xp + (size_t)t * j->kp;
    int full = j->in / BG_STEP * BG_STEP;
    for (int b = 0; b < full; b += BG_STEP)
        for (int i = 0; i < BG_STEP / 2; i++) {
            o[b + i] = x[b + 2 * i];
            o[b + BG_STEP / 2 + i] = x[b + 2 * i + 1];
        }
    for (int b = full; b < j->kp; b += BG_STEP)
        for (int i = 0; i < BG_STEP / 2; i++) {
            int e = b + 2 * i;
            o[b + i] = e < j->in ? x[e] : 0.0f;
            o[b + BG_STEP / 2 + i] = e + 1 < j->in ? x[e + 1] : 0.0f;
        }
}

#if CK_X86
/* [sum a, sum b, sum c, sum d]: the 4 rows of one token, reduced and transposed at once. */
CK_AVX512 static inline __m128 bg_sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    /* 128-bit blocks: [a, b, c, d] partials of 4 each */
    __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88),
                             _mm512_shuffle_f32x4(ab, cd, 0xDD));
    __m256 lo = _mm512_castps512_ps256(s);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1));
    __m256 h = _mm256_hadd_ps(lo, hi);  /* lanes: [a01 a23 c01 c23 | b01 b23 d01 d23] */
    h = _mm256_hadd_ps(h, h);           /* [a c a c | b d b d] */
    return _mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* bg_prep_token_scalar with two-source permutes (the scalar loop cost a fifth of a 768 x 768
 * product at T = 256). */
CK_AVX512 static void bg_prep_token_avx512(const BgJob *j, int t) {
    const float *x = j->x + (size_t)t * j->in;
    float *o = j->xp + (size_t)t * j->kp;
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                         30);
    const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
    for (int b = 0; b < j->kp; b += BG_STEP) {
        int n = j->in - b;
        __m512 lo, hi;
        if (n >= BG_STEP) {
            lo = _mm512_loadu_ps(x + b);
            hi = _mm512_loadu_ps(x + b + 16);
        } else {
            lo = _mm512_maskz_loadu_ps(ck_mask16(n), x + b);
            hi = _mm512_maskz_loadu_ps(ck_mask16(n - 16), x + b + 16);
        }
        _mm512_storeu_ps(o + b, _mm512_permutex2var_ps(lo, ie, hi));
        _mm512_storeu_ps(o + b + 16, _mm512_permutex2var_ps(lo, io, hi));
    }
}

/* Folds 4 rows' sums of token t into y (store on the first K block, else add); R valid rows. */
static inline void bg_put4(const BgJob *j, int first, int t, int r0, int R, __m128 v) {
    float *y = j->y + (size_t)t * j->out + r0;
    if (R == 4) {
        _mm_storeu_ps(y, first ? v : _mm_add_ps(_mm_loadu_ps(y), v));
        return;
    }
    float s[4];
    _mm_storeu_ps(s, v);
    for (int i = 0; i < R; i++) y[i] = first ? s[i] : y[i] + s[i];
}

/* The main tile spelled out (24 accumulators in registers; with arrays gcc spilled them).
 * A step: 32 weights of 4 rows, the evens (w << 16) then the odds (low halves zeroed; the
 * weights loaded again from L1: one register per row, not two), each against 6 tokens. */
#define BG_ACC6(i) __m512 a##i##0 = z, a##i##1 = z, a##i##2 = z, a##i##3 = z, a##i##4 = z, \
                          a##i##5 = z
#define BG_FMA4(j, xv)                                                                       \
    do {                                                                                     \
        __m512 x_ = (xv);                                                                    \
        a0##j = _mm512_fmadd_ps(w0, x_, a0##j);                                              \
        a1##j = _mm512_fmadd_ps(w1, x_, a1##j);                                              \
        a2##j = _mm512_fmadd_ps(w2, x_, a2##j);                                              \
        a3##j = _mm512_fmadd_ps(w3, x_, a3##j);                                              \
    } while (0)
#define BG_HALF(LOAD, WIDEN, off)                                                            \
    do {                                                                                     \
        __m512 w0 = WIDEN(LOAD(p0 + k)), w1 = WIDEN(LOAD(p1 + k));                           \
        __m512 w2 = WIDEN(LOAD(p2 + k)), w3 = WIDEN(LOAD(p3 + k));                           \
        BG_FMA4(0, _mm512_loadu_ps(x0 + k + (off)));                                         \
        BG_FMA4(1, _mm512_loadu_ps(x1 + k + (off)));                                         \
        BG_FMA4(2, _mm512_loadu_ps(x2 + k + (off)));                                         \
        BG_FMA4(3, _mm512_loadu_ps(x3 + k + (off)));                                         \
        BG_FMA4(4, _mm512_loadu_ps(x4 + k + (off)));                                         \
        BG_FMA4(5, _mm512_loadu_ps(x5 + k + (off)));                                         \
    } while (0)
#define BG_LD(p) _mm512_loadu_si512((const void *)(p))
#define BG_LDM(p) _mm512_maskz_loadu_epi16(mk, (const void *)(p))
#define BG_EVEN(v) _mm512_castsi512_ps(_mm512_slli_epi32((v), 16))
#define BG_ODD(v) _mm512_castsi512_ps(_mm512_maskz_mov_epi16(odd, (v)))

/* Rows [r0, r0 + R) x tokens [t0, t0 + TT) over K [k0, k1) (R <= 4, TT <= 6: the missing
 * rows and tokens repeat valid ones and are not stored). */
CK_AVX512 static void bg_tile_avx512(const BgJob *j, int r0, int R, int t0, int TT, int k0,
                                     int k1) {
    const uint16_t *p0 = j->w + (size_t)r0 * j->in;
    const uint16_t *p1 = j->w + (size_t)(r0 + (R > 1)) * j->in;
    const uint16_t *p2 = j->w + (size_t)(r0 + (R > 2 ? 2 : 0)) * j->in;
    const uint16_t *p3 = j->w + (size_t)(r0 + (R > 3 ? 3 : 0)) * j->in;
    const float *x0 = j->xp + (size_t)t0 * j->kp;
    const float *x1 = x0 + (TT > 1 ? (size_t)j->kp : 0);
    const float *x2 = x0 + (TT > 2 ? 2 * (size_t)j->kp : 0);
    const float *x3 = x0 + (TT > 3 ? 3 * (size_t)j->kp : 0);
    const float *x4 = x0 + (TT > 4 ? 4 * (size_t)j->kp : 0);
    const float *x5 = x0 + (TT > 5 ? 5 * (size_t)j->kp : 0);
    const __mmask32 odd = _cvtu32_mask32(0xAAAAAAAAu);
    const __m512 z = _mm512_setzero_ps();
    BG_ACC6(0);
    BG_ACC6(1);
    BG_ACC6(2);
    BG_ACC6(3);
    int full = k0 + (k1 - k0) / BG_STEP * BG_STEP, k = k0;
    /* Short rows (<= BG_PF_MAX_K weights in the block) end before the hardware's stream
     * prefetcher ramps up: fetch the next tile's rows at the same K ourselves. Measured, one
     * thread, GFLOP/s without / with: 3072 x 768 at T = 4 52 / 92, T = 256 116 / 123; the
     * 65536 x 768 head at T = 16 62 / 97; 2048 x 2048 at T = 256 119 / 102 (long rows: off). */
    size_t pf = (size_t)BG_ROWS * j->in;
    int prefetch = k1 - k0 <= BG_PF_MAX_K;
    for (; k < full; k += BG_STEP) {
        if (prefetch) {
            _mm_prefetch((const char *)(p0 + pf + k), _MM_HINT_T0);
            _mm_prefetch((const char *)(p1 + pf + k), _MM_HINT_T0);
            _mm_prefetch((const char *)(p2 + pf + k), _MM_HINT_T0);
            _mm_prefetch((const char *)(p3 + pf + k), _MM_HINT_T0);
        }
        BG_HALF(BG_LD, BG_EVEN, 0);
        BG_HALF(BG_LD, BG_ODD, BG_STEP / 2);
    }
    if (k < k1) {  /* the row's last partial step: masked weights, zero-padded activations */
        __mmask32 mk = _cvtu32_mask32(~0u >> (BG_STEP - (k1 - k)));
        BG_HALF(BG_LDM, BG_EVEN, 0);
        BG_HALF(BG_LDM, BG_ODD, BG_STEP / 2);
    }
    int first = k0 == 0;
    bg_put4(j, first, t0, r0, R, bg_sum4(a00, a10, a20, a30));
    if (TT > 1) bg_put4(j, first, t0 + 1, r0, R, bg_sum4(a01, a11, a21, a31));
    if (TT > 2) bg_put4(j, first, t0 + 2, r0, R, bg_sum4(a02, a12, a22, a32));
    if (TT > 3) bg_put4(j, first, t0 + 3, r0, R, bg_sum4(a03, a13, a23, a33));
    if (TT > 4) bg_put4(j, first, t0 + 4, r0, R, bg_sum4(a04, a14, a24, a34));
    if (TT > 5) bg_put4(j, first, t0 + 5, r0, R, bg_sum4(a05, a15, a25, a35));
}

/* AVX2: 2 rows x 4 tokens, 16 weights a half-step (dword i: weights 2i, 2i + 1 of the 16; in
 * the 32-layout, evens at offset h * 8 and odds at 16 + h * 8 for half h). The row's tail is
 * copied into a zero-padded buffer (no 16-bit masked loads in AVX2). */
/* One step of 32 weights (W: row i's 32 weights, an expression in i) against the tokens at k. */
#define BG2_STEP(W)                                                                          \
    do {                                                                                     \
        for (int h = 0; h < 2; h++) {                                                        \
            __m256 we[BG_ROWS2], wo[BG_ROWS2];                                               \
            for (int i = 0; i < R; i++) {                                                    \
                __m256i v = _mm256_loadu_si256((const __m256i *)((W) + 16 * h));             \
                we[i] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));                       \
                wo[i] = _mm256_castsi256_ps(_mm256_and_si256(v, hm));                        \
            }                                                                                \
            for (int t = 0; t < TT; t++) {                                                   \
                __m256 xe = _mm256_loadu_ps(x[t] + k + 8 * h);                               \
                __m256 xo = _mm256_loadu_ps(x[t] + k + 16 + 8 * h);                          \
                for (int i = 0; i < R; i++)                                                  \
                    a[i][t] = _mm256_fmadd_ps(wo[i], xo, _mm256_fmadd_ps(we[i], xe, a[i][t])); \
            }                                                                                \
        }                                                                                    \
    } while (0)

__attribute__((always_inline)) CK_AVX2 static inline void bg_avx2_body(
    const BgJob *j, int r0, const int R, int t0, const int TT, int k0, int k1) {
    const uint16_t *p[BG_ROWS2];
    const float *x[BG_TOKS2];
    __m256 a[BG_ROWS2][BG_TOKS2];
    const __m256i hm = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int i = 0; i < R; i++) p[i] = j->w + (size_t)(r0 + i) * j->in;
    for (int t = 0; t < TT; t++) x[t] = j->xp + (size_t)(t0 + t) * j->kp;
    for (int i = 0; i < R; i++)
        for (int t = 0; t < TT; t++) a[i][t] = _mm256_setzero_ps();
    int full = k0 + (k1 - k0) / BG_STEP * BG_STEP;
    for (int k = k0; k < full; k += BG_STEP) BG2_STEP(p[i] + k);
    if (full < k1) {
        uint16_t tail[BG_ROWS2][BG_STEP];
        for (int i = 0; i < R; i++) {
            memset(tail[i], 0, sizeof tail[i]);
            memcpy(tail[i], p[i] + full, sizeof(uint16_t) * (size_t)(k1 - full));
        }
        int k = full;
        BG2_STEP(tail[i]);
    }
    for (int t = 0; t < TT; t++) {
        float *y = j->y + (size_t)(t0 + t) * j->out + r0;
        for (int i = 0; i < R; i++) {
            float s = ck_hsum(a[i][t]);
            y[i] = k0 == 0 ? s : y[i] + s;
        }
    }
}

CK_AVX2 static void bg_tile_avx2(const BgJob *j, int r0, int R, int t0, int TT, int k0,
                                 int k1) {
    if (R == BG_ROWS2 && TT == BG_TOKS2) {
        bg_avx2_body(j, r0, BG_ROWS2, t0, BG_TOKS2, k0, k1);
        return;
    }
    for (int i = 0; i < R; i++)
        for (int t = 0; t < TT; t++) bg_avx2_body(j, r0 + i, 1, t0 + t, 1, k0, k1);
}
#endif

/* ---- the product: activations, then chunks of rows x tokens on the pool ------------------- */

static void bg_chunk(const CkPhase *ph, int chunk) {
    const BgJob *j = (const BgJob *)ph->ctx;
    int r_begin = chunk / j->n_tc * j->rows_per_chunk, r_end = r_begin + j->rows_per_chunk;
    int t_begin = chunk % j->n_tc * BG_TOK_CHUNK, t_end = t_begin + BG_TOK_CHUNK;
    if (r_end > j->out) r_end = j->out;
    if (t_end > j->T) t_end = j->T;
    if (j->level == BG_SCALAR) {
        bg_tile_scalar(j, r_begin, r_end, t_begin, t_end);
        return;
    }
#if CK_X86
    int rows = j->level == BG_AVX512 ? BG_ROWS : BG_ROWS2;
    int toks = j->level == BG_AVX512 ? BG_TOKS : BG_TOKS2;
    for (int k0 = 0; k0 < j->in; k0 += BG_KB) {
        int k1 = k0 + BG_KB < j->in ? k0 + BG_KB : j->in;
        for (int t = t_begin; t < t_end; t += toks) {
            int TT = t_end - t < toks ? t_end - t : toks;
            for (int r = r_begin; r < r_end; r += rows) {
                int R = r_end - r < rows ? r_end - r : rows;
                if (j->level == BG_AVX512) bg_tile_avx512(j, r, R, t, TT, k0, k1);
                else bg_tile_avx2(j, r, R, t, TT, k0, k1);
            }
        }
    }
#endif
}

#define BG_PREP_TOKS 16

static void bg_prep_chunk(const CkPhase *ph, int chunk) {
    const BgJob *j = (const BgJob *)ph->ctx;
    int t1 = (chunk + 1) * BG_PREP_TOKS < j->T ? (chunk + 1) * BG_PREP_TOKS : j->T;
    for (int t = chunk * BG_PREP_TOKS; t < t1; t++) {
#if CK_X86
        if (j->level == BG_AVX512) {
            bg_prep_token_avx512(j, t);
            continue;
        }
#endif
        bg_prep_token_scalar(j, t);
    }
}

static void bg_run(CkPool *pool, CkChunkFn fn, BgJob *job, int total) {
    if (pool) {
        pool->phase.fn = fn;
        pool->phase.ctx = job;
        ck_run_phase(pool, total);
        return;
    }
    CkPhase ph;
    memset(&ph, 0, sizeof ph);
    ph.fn = fn;
    ph.ctx = job;
    for (int c = 0; c < total; c++) fn(&ph, c);
}

/* y [T, out] = x [T, in] W^T for bf16 W [out, in] (row-major), on `pool` (NULL: the calling
 * thread). Returns 0, or -1 when out of memory. */
static int bg_gemm(const uint16_t *w, int out, int in, const float *x, int T, float *y,
                   CkPool *pool) {
    BgJob job;
    memset(&job, 0, sizeof job);
    job.w = w;
    job.x = x;
    job.y = y;
    job.out = out;
    job.in = in;
    job.T = T;
    job.level = bg_level();
    job.kp = (in + BG_STEP - 1) / BG_STEP * BG_STEP;
    job.n_tc = (T + BG_TOK_CHUNK - 1) / BG_TOK_CHUNK;
    if (job.level != BG_SCALAR) {
        job.xp = aligned_alloc(64, ((size_t)T * job.kp * sizeof(float) + 63) / 64 * 64);
        if (!job.xp) return -1;
        bg_run(pool, bg_prep_chunk, &job, (T + BG_PREP_TOKS - 1) / BG_PREP_TOKS);
    }
    /* rows per chunk: a multiple of 4 (both tiles), up to 128, ~4 chunks a thread at least */
    int threads = pool ? pool->n_threads : 1;
    int rpc = out * job.n_tc / (8 * threads);
    rpc = rpc < 4 ? 4 : rpc > 128 ? 128 : rpc / 4 * 4;
    job.rows_per_chunk = rpc;
    bg_run(pool, bg_chunk, &job, (out + rpc - 1) / rpc * job.n_tc);
    free(job.xp);
    return 0;
}

#endif /* CHATRWKV_BGEMM_H */
