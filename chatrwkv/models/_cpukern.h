/* CPU building blocks for the one-token (RNN mode) steps in C: a worker pool that runs
 * "phases" of independent chunks, and matrix-vector products for fp32, bf16, int8 and int4
 * weights, always with fp32 activations.
 *
 * Why not torch: decoding one token is ~60 matrix-vector products plus a few hundred tiny vector
 * ops. Measured on the 2-core development machine, torch streams fp32 weights at ~17 GB/s in a
 * matrix-vector product (with either thread count) and spends 5-10 us per small op; a plain
 * AVX2 row-dot kernel reads at ~26-35 GB/s over two threads, and a 768-wide vector op costs well
 * under a microsecond in C. The pool's synchronisation is what made the difference: a
 * pthread barrier per product cost ~100 us here (sleeping threads, a virtual machine), so the
 * workers spin between phases and take chunks from an atomic counter, which also keeps a
 * descheduled thread from stalling the others.
 *
 * Weights are row-major [out, in] (torch's F.linear layout, and the checkpoint's own for
 * 16-bit files, which are then used in place). Each product has an AVX-512 (F/BW/VL), an AVX2
 * and a scalar kernel; the widest the CPU has runs, chosen at run time (ck_init), and tests run
 * each against the torch twins. int4 is where width matters: its AVX-512 kernel turns a 64-byte
 * block into 128 fp32 weights with 8 table lookups (vpermps), ~23-25 G weights/s on one core
 * here (in L2), 2.4x the AVX2 kernel. int8 rows run, where the CPU has AVX-512 VNNI, against x
 * as four 8-bit digits (CkXd: a 32-bit fixed-point copy, as accurate as fp32) with vpdpbusd:
 * four instructions per 64 weights instead of twelve, measured 0.4B int8 decode +15% and 1.5B
 * +17% (interleaved runs, session 7). BF16 dot products are not used: vdpbf16ps issues slowly
 * on the development CPU (int4 times x as two bf16 halves: 10-13 G weights/s against 24-29 for
 * the vpermps kernel, one thread in L2), and rounding x to one bf16 would not keep fp32
 * activations. int4 has no VNNI path: its packing puts four groups of 32 in each dword, which
 * vpdpbusd would sum together. Tried: a 4 x 4 byte transpose per 128-bit lane (vpshufb) to
 * keep the groups apart, four digits, the digit sums combined in fp32 per block: 23-27 G
 * weights/s against 21-24 for the vpermps kernel (one thread, 4 M weights), no clear gain, not
 * kept. benchmarks/ceiling.c's sketch of an int4 kernel with x rounded to int8 (one digit)
 * streams at ~0.8-0.85 of a plain read.
 *
 * Where the kernels stand (benchmarks/bench_ceiling.py, two threads, rows of 1024): a plain
 * read streams ~30 GB/s, the fp32 kernel 0.96 of it, int8 (fp32 widening) and int4 0.65. int4
 * computes no faster in the caches than from memory (its 3.5 instructions per 16 weights are the
 * limit); int8 computes 2x faster in the caches than it streams, but a core that spends half its
 * time widening bytes keeps too few misses in flight. Tried for int4 and not kept: four loads at
 * byte offsets 0-3 in place of three of every four shifts (misaligned loads split cache lines:
 * 0.75-0.85x).
 *
 * What decides decode speed (one token reads every weight once, from memory): per core the
 * kernels must keep enough cache misses in flight, which the hardware prefetchers alone did
 * for fp32 but not for the narrower dtypes (CK_PF below), and compute faster than their share
 * of the memory bandwidth. Tried and not kept (one thread, Sapphire Rapids class, measured
 * with benchmarks/bench_kernels.py-style loops): bf16 over four rows at once (x loaded once
 * for four products; int4 and int8 gained from it): within noise in L2, slower from memory
 * before prefetching (four streams); bf16 widened
 * as even/odd halves with one shift or mask per 32 weights against an x reordered once per
 * product: +20% in L2, nothing from memory once prefetched.
 */
#ifndef CHATRWKV_CPUKERN_H
#define CHATRWKV_CPUKERN_H

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CK_X86 1
#define CK_PAUSE() _mm_pause()
#else
#define CK_X86 0
#define CK_PAUSE() ((void)0)
#endif

enum { CK_F32 = 0, CK_BF16 = 1, CK_I8 = 2, CK_I4 = 3 };

typedef struct {
    const void *w;            /* [out, in] in `dtype`; int4: packed rows (below) */
    const float *scale;       /* [out] for int8, else NULL */
    const uint16_t *gscale;   /* int4: fp16 [out, groups], one scale per `group` weights */
    int dtype, out, in, group;
} CkMat;

/* An activation vector as four 8-bit digits, for int8 products with AVX-512 VNNI (CK_ISA_VNNI):
 * X_i = round(x_i / scale), |X_i| <= 2^30, and X_i = sum_k d[k][i] 256^(3 - k) with every digit
 * in [-128, 127]. That is a 32-bit fixed-point copy of x: each element's error is at most
 * max|x| 2^-31, below fp32's own rounding of any element within 2^-8 of the largest, so the
 * products keep fp32 activations; each digit row is one vpdpbusd per 64 weights (four per 64
 * against twelve instructions widening int8 to fp32), and the sums are exact integers. */
#define CK_XD_MAX_N 32768  /* keeps a row's int32 sums from overflowing (ck_dot_i8_vnni) */
typedef struct {
    int8_t *d;          /* [4][npad]: digits, the most significant row first, zero past n */
    size_t cap;         /* bytes allocated at d */
    int n, npad, ok;    /* ok: the digits hold x (finite, n <= CK_XD_MAX_N) */
    float scale;
    int32_t dsum[4];    /* each digit row's sum */
} CkXd;

/* What a product does with each output element y: store, or fold it into dst. */
enum { EP_STORE = 0, EP_ADD, EP_TANH, EP_SIGMOID, EP_RELU_SQ };

/* Instruction sets, each a superset of the one before: the kernels run the highest the CPU has
 * (ck_init, at run time) or a lower one a test asks for (ck_set_isa). Every wide path is
 * compiled with a target attribute, so the build itself assumes nothing beyond the compiler's
 * default (x86-64: SSE2). */
enum { CK_ISA_SCALAR = 0, CK_ISA_AVX2 = 1, CK_ISA_AVX512 = 2, CK_ISA_VNNI = 3 };
static int ck_isa = CK_ISA_SCALAR, ck_isa_max = CK_ISA_SCALAR;
static int ck_use_avx2 = 0;  /* ck_isa >= CK_ISA_AVX2: what the per-model WKV kernels test */

/* int4 rows (quant.py): blocks of 128 weights in 64 bytes = 16 little-endian 32-bit words;
 * nibble j of word i is code u of weight 16 j + i of the block; the weight is (u - 8) * d with
 * d the fp16 scale of its group. */
#define CK_I4_BLOCK 128

static inline size_t ck_i4_row_bytes(int n) {
    return (size_t)((n + CK_I4_BLOCK - 1) / CK_I4_BLOCK) * (CK_I4_BLOCK / 2);
}

static inline int ck_i4_groups(int n, int group) { return (n + group - 1) / group; }

static inline int ck_i4_code(const uint8_t *row, int e) {
    int k = e % CK_I4_BLOCK, j = k / 16, i = k % 16;
    uint8_t b = row[(size_t)(e / CK_I4_BLOCK) * 64 + 4 * i + j / 2];
    return (j & 1) ? b >> 4 : b & 15;
}

/* ---- conversions ---------------------------------------------------------------------------- */

static inline float ck_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float ck_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, man = h & 0x3FF, u;
    float f;
    if (e == 0) {  /* zero or subnormal: man * 2^-24, exact in fp32 */
        f = ldexpf((float)man, -24);
        memcpy(&u, &f, 4);
        u |= sign;
    } else if (e == 31) {
        u = sign | 0x7F800000u | (man << 13);
    } else {
        u = sign | ((e + 112) << 23) | (man << 13);
    }
    memcpy(&f, &u, 4);
    return f;
}

/* fp32 -> fp16, round to nearest even (as torch's .to(torch.float16)). */
static inline uint16_t ck_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7FFFFFFF;
    if (ax >= 0x7F800000) return (uint16_t)(sign | 0x7C00 | (ax > 0x7F800000 ? 0x200 : 0));
    if (ax >= 0x477FF000) return (uint16_t)(sign | 0x7C00);  /* rounds past 65504: inf */
    if (ax < 0x38800000) {  /* below 2^-14: a subnormal step of 2^-24 (1024 steps: the least
                               normal, whose encoding is the same bits) */
        float v;
        memcpy(&v, &ax, 4);
        return (uint16_t)(sign | (uint32_t)nearbyintf(v * 16777216.0f));
    }
    uint32_t r = ax - 0x38000000;  /* exponent bias 127 -> 15 */
    return (uint16_t)(sign | ((r + 0xFFF + ((r >> 13) & 1)) >> 13));
}

/* fp32 -> bf16, round to nearest even (as torch's .to(torch.bfloat16); no NaN inputs here). */
static inline uint16_t ck_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* ---- int4 quantization (the C twin of quant.py's _quantize_groups) ------------------------- */

/* Shrinkings of max|w| / 8 tried for each group's scale (quant.py's SCALE_SEARCH). */
static const float ck_i4_search[] = {1.0f, 0.975f, 0.95f, 0.925f, 0.9f, 0.875f, 0.85f, 0.8f,
                                     1.05f};

/* Rows of fp32 weights [rows, n] -> packed int4 rows and fp16 scales [rows, groups]: per group
 * the scale d among peak * -f / 8 (peak: the signed largest |w|, d rounded to fp16) with the
 * least squared error, codes u = clamp(round(w / d) + 8, 0, 15). */
static inline void ck_i4_quantize_rows(const float *w, int rows, int n, int group, uint8_t *packed,
                                uint16_t *scales) {
    int ng = ck_i4_groups(n, group);
    size_t rb = ck_i4_row_bytes(n);
    uint8_t codes[1024];  /* one group (group <= 1024) */
    uint8_t best[1024];
    for (int r = 0; r < rows; r++) {
        const float *wr = w + (size_t)r * n;
        uint8_t *pr = packed + (size_t)r * rb;
        memset(pr, 0x88, rb);  /* code 8 (weight 0) everywhere, padding included */
        for (int g = 0; g < ng; g++) {
            int e0 = g * group, len = n - e0 < group ? n - e0 : group;
            float peak = 0;
            for (int i = 0; i < len; i++)
                if (fabsf(wr[e0 + i]) > fabsf(peak)) peak = wr[e0 + i];
            float best_err = INFINITY;
            uint16_t best_d = 0;
            for (size_t c = 0; c < sizeof ck_i4_search / sizeof *ck_i4_search; c++) {
                uint16_t dh = ck_f32_to_f16(peak * (-ck_i4_search[c] / 8.0f));
                float d = ck_f16_to_f32(dh), inv = d != 0 ? 1.0f / d : 0.0f, err = 0;
                for (int i = 0; i < len; i++) {
                    float u = nearbyintf(wr[e0 + i] * inv) + 8.0f;
                    u = u < 0 ? 0 : u > 15 ? 15 : u;
                    codes[i] = (uint8_t)u;
                    float diff = (u - 8.0f) * d - wr[e0 + i];
                    err += diff * diff;
                }
                if (err < best_err) {
                    best_err = err;
                    best_d = dh;
                    memcpy(best, codes, len);
                }
            }
            scales[(size_t)r * ng + g] = best_d;
            for (int i = 0; i < len; i++) {
                int e = e0 + i, k = e % CK_I4_BLOCK, j = k / 16;
                uint8_t *byte = pr + (size_t)(e / CK_I4_BLOCK) * 64 + 4 * (k % 16) + j / 2;
                *byte = (j & 1) ? (uint8_t)((*byte & 0x0F) | (best[i] << 4))
                                : (uint8_t)((*byte & 0xF0) | best[i]);
            }
        }
    }
}

/* ---- one output row: the dot product of a weight row with x: the scalar twins -------------- */

static float ck_dot_f32_scalar(const float *w, const float *x, int n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += w[i] * x[i]; s1 += w[i + 1] * x[i + 1];
        s2 += w[i + 2] * x[i + 2]; s3 += w[i + 3] * x[i + 3];
    }
    for (; i < n; i++) s0 += w[i] * x[i];
    return (s0 + s1) + (s2 + s3);
}

static float ck_dot_bf16_scalar(const uint16_t *w, const float *x, int n) {
    float s0 = 0, s1 = 0;
    int i = 0;
    for (; i + 2 <= n; i += 2) {
        s0 += ck_bf16_to_f32(w[i]) * x[i];
        s1 += ck_bf16_to_f32(w[i + 1]) * x[i + 1];
    }
    for (; i < n; i++) s0 += ck_bf16_to_f32(w[i]) * x[i];
    return s0 + s1;
}

static float ck_dot_i8_scalar(const int8_t *w, const float *x, int n) {
    float s0 = 0, s1 = 0;
    int i = 0;
    for (; i + 2 <= n; i += 2) {
        s0 += (float)w[i] * x[i];
        s1 += (float)w[i + 1] * x[i + 1];
    }
    for (; i < n; i++) s0 += (float)w[i] * x[i];
    return s0 + s1;
}

/* Weights [e0, n) of an int4 row (also the tails of the SIMD kernels). */
static float ck_dot_i4_from(const uint8_t *w, const uint16_t *gs, int group, const float *x,
                            int e0, int n) {
    float s = 0;
    for (int e = e0; e < n; e++)
        s += (float)(ck_i4_code(w, e) - 8) * ck_f16_to_f32(gs[e / group]) * x[e];
    return s;
}

/* Whole blocks word by word (one scale per 16 weights: groups are multiples of 16), then the
 * tail weight by weight. */
static float ck_dot_i4_scalar(const uint8_t *w, const uint16_t *gs, int group, const float *x,
                              int n) {
    float s = 0;
    int nb = n / CK_I4_BLOCK;
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = w + (size_t)b * 64;
        for (int j = 0; j < 8; j++) {
            int e = b * CK_I4_BLOCK + 16 * j;
            float d = ck_f16_to_f32(gs[e / group]), acc = 0;
            for (int i = 0; i < 16; i++) {
                uint8_t byte = q[4 * i + j / 2];
                acc += (float)(((j & 1) ? byte >> 4 : byte & 15) - 8) * d * x[e + i];
            }
            s += acc;
        }
    }
    return s + ck_dot_i4_from(w, gs, group, x, nb * CK_I4_BLOCK, n);
}

#if CK_X86
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define CK_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c,avx512vnni")))

/* The mask of a 16-lane step with `left` elements left: none up to 0, all from 16 on. */
static inline __mmask16 ck_mask16(int left) {
    return (__mmask16)(left <= 0 ? 0u : left >= 16 ? 0xFFFFu : (1u << left) - 1);
}

/* Software prefetch of the weight stream into L2, CK_PF_AHEAD bytes ahead, once per 64-byte
 * line. The hardware prefetchers alone left one core streaming bf16 rows at 9-10 GB/s and int8
 * at 7-9 GB/s while fp32 reached ~15 (fewer bytes per instruction: the core runs out of
 * demand misses in flight); measured one thread over 600 MB of [2048, 1024] bf16 matrices:
 * no prefetch 8.9 GB/s; into L1 1 KiB ahead 12.8, 2 KiB 13.8, 4 KiB 14.5, 8 KiB 14.0; into
 * L2 2 KiB 13.6, 4 KiB 15.4 (int8 and int4 alike within noise at 2-8 KiB). A prefetch past the end of the matrix reads a line it does not need and never
 * faults. */
#ifndef CK_PF_AHEAD  /* -DCK_PF_AHEAD=... to tune */
#define CK_PF_AHEAD 4096
#endif
#ifndef CK_PF_HINT  /* -DCK_PF_HINT=... to tune: T0 and T2 measured level with T1, NTA and no */
#define CK_PF_HINT _MM_HINT_T1  /* prefetch at all 0.6-0.7x (1.5B int8 / int4 decode) */
#endif
#define CK_PF(p) _mm_prefetch((const char *)(p) + CK_PF_AHEAD, CK_PF_HINT)
/* Four-row kernels read four consecutive rows side by side: 4 KiB past a row of 1-4 KiB is a
 * row of the same pass, read already, so half or more of the next pass went unprefetched (an
 * int8 row of 2048 weights, int4 rows of 4096-8192). They prefetch the same place in the next
 * pass. */
#ifndef CK_PF4_PASSES
#define CK_PF4_PASSES 1
#endif
#define CK_PF4_BYTES(row_bytes) (CK_PF4_PASSES * 4 * (size_t)(row_bytes))
#define CK_PF4_AHEAD(row_bytes) \
    (CK_PF4_BYTES(row_bytes) > CK_PF_AHEAD ? CK_PF4_BYTES(row_bytes) : (size_t)CK_PF_AHEAD)
#define CK_PF_AT(p, ahead) _mm_prefetch((const char *)(p) + (ahead), CK_PF_HINT)

/* ---- AVX2 + FMA ---- */

CK_AVX2 static inline float ck_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

CK_AVX2 static float ck_dot_f32_avx2(const float *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        CK_PF(w + i);
        CK_PF(w + i + 16);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float s = ck_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

CK_AVX2 static inline __m256 ck_bf16x8(const uint16_t *p) {  /* 8 bf16 -> 8 fp32 */
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

CK_AVX2 static float ck_dot_bf16_avx2(const uint16_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        CK_PF(w + i);
        a0 = _mm256_fmadd_ps(ck_bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(ck_bf16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(ck_bf16x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(ck_bf16x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(ck_bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
    float s = ck_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += ck_bf16_to_f32(w[i]) * x[i];
    return s;
}

CK_AVX2 static inline __m256 ck_i8x8(const int8_t *p) {  /* 8 int8 -> 8 fp32 */
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

CK_AVX2 static float ck_dot_i8_avx2(const int8_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        if (!(i & 32)) CK_PF(w + i);
        a0 = _mm256_fmadd_ps(ck_i8x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(ck_i8x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(ck_i8x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(ck_i8x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(ck_i8x8(w + i), _mm256_loadu_ps(x + i), a0);
    float s = ck_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += (float)w[i] * x[i];
    return s;
}

/* int4, 8 lanes: the low nibble of each word is a code; (u - 8) d = u d - 8 d exactly (the
 * product is representable), so the weights equal the twin's bit for bit. */
CK_AVX2 static float ck_dot_i4_avx2(const uint8_t *w, const uint16_t *gs, int group,
                                    const float *x, int n) {
    const __m256i low = _mm256_set1_epi32(15);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, d = a0, off = a0;
    int nb = n / CK_I4_BLOCK, g_end = 0, g = 0;
    for (int b = 0; b < nb; b++) {
        CK_PF(w + (size_t)b * 64);
        __m256i q0 = _mm256_loadu_si256((const __m256i *)(w + (size_t)b * 64));
        __m256i q1 = _mm256_loadu_si256((const __m256i *)(w + (size_t)b * 64 + 32));
        const float *xb = x + (size_t)b * CK_I4_BLOCK;
        for (int j = 0; j < 8; j++) {
            if (b * CK_I4_BLOCK + 16 * j == g_end) {
                float s = _cvtsh_ss(gs[g++]);
                d = _mm256_set1_ps(s);
                off = _mm256_set1_ps(-8.0f * s);
                g_end += group;
            }
            __m256 w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q0, low)), d, off);
            __m256 w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q1, low)), d, off);
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb + 16 * j), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 16 * j + 8), a1);
            q0 = _mm256_srli_epi32(q0, 4);
            q1 = _mm256_srli_epi32(q1, 4);
        }
    }
    return ck_hsum(_mm256_add_ps(a0, a1)) +
           ck_dot_i4_from(w, gs, group, x, nb * CK_I4_BLOCK, n);
}

/* ---- AVX-512 F/BW/VL ---- */

CK_AVX512 static float ck_dot_f32_avx512(const float *w, const float *x, int n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        CK_PF(w + i);
        CK_PF(w + i + 16);
        CK_PF(w + i + 32);
        CK_PF(w + i + 48);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < n) {
        __mmask16 k = ck_mask16(n - i);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, w + i), _mm512_maskz_loadu_ps(k, x + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

CK_AVX512 static inline __m512 ck_bf16x16(__m256i h) {  /* 16 bf16 -> 16 fp32 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

CK_AVX512 static float ck_dot_bf16_avx512(const uint16_t *w, const float *x, int n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
#define CK_LD16(p) _mm256_loadu_si256((const __m256i *)(p))
    for (; i + 64 <= n; i += 64) {
        CK_PF(w + i);
        CK_PF(w + i + 32);
        a0 = _mm512_fmadd_ps(ck_bf16x16(CK_LD16(w + i)), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(ck_bf16x16(CK_LD16(w + i + 16)), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(ck_bf16x16(CK_LD16(w + i + 32)), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(ck_bf16x16(CK_LD16(w + i + 48)), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(ck_bf16x16(CK_LD16(w + i)), _mm512_loadu_ps(x + i), a0);
#undef CK_LD16
    if (i < n) {
        __mmask16 k = ck_mask16(n - i);
        __m256i h = _mm256_maskz_loadu_epi16(k, w + i);
        a1 = _mm512_fmadd_ps(ck_bf16x16(h), _mm512_maskz_loadu_ps(k, x + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

CK_AVX512 static inline __m512 ck_i8x16(__m128i b) {  /* 16 int8 -> 16 fp32 */
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}

CK_AVX512 static float ck_dot_i8_avx512(const int8_t *w, const float *x, int n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
#define CK_LD8(p) _mm_loadu_si128((const __m128i *)(p))
    for (; i + 64 <= n; i += 64) {
        CK_PF(w + i);
        a0 = _mm512_fmadd_ps(ck_i8x16(CK_LD8(w + i)), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(ck_i8x16(CK_LD8(w + i + 16)), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(ck_i8x16(CK_LD8(w + i + 32)), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(ck_i8x16(CK_LD8(w + i + 48)), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(ck_i8x16(CK_LD8(w + i)), _mm512_loadu_ps(x + i), a0);
#undef CK_LD8
    if (i < n) {
        __mmask16 k = ck_mask16(n - i);
        __m128i b = _mm_maskz_loadu_epi8(k, w + i);
        a1 = _mm512_fmadd_ps(ck_i8x16(b), _mm512_maskz_loadu_ps(k, x + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* Four int8 rows at once: each x vector is loaded once for four products, and the loop and the
 * reductions are paid once per four rows. Measured one thread, [256, 768] in L2: 22.4 -> 25.6
 * GB/s. y[k] is row k's sum before its scale. */
CK_AVX512 static void ck_dot4_i8_avx512(const int8_t *w, size_t ld, const float *x, int n,
                                        float *y) {
    __m512 a0 = _mm512_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
    const int8_t *w0 = w, *w1 = w + ld, *w2 = w + 2 * ld, *w3 = w + 3 * ld;
    const size_t ahead = CK_PF4_AHEAD(ld);
    int i = 0;
#define CK_LD8(p) ck_i8x16(_mm_loadu_si128((const __m128i *)(p)))
    for (; i + 32 <= n; i += 32) {
        if (!(i & 32)) {
            CK_PF_AT(w0 + i, ahead);
            CK_PF_AT(w1 + i, ahead);
            CK_PF_AT(w2 + i, ahead);
            CK_PF_AT(w3 + i, ahead);
        }
        __m512 xa = _mm512_loadu_ps(x + i), xb = _mm512_loadu_ps(x + i + 16);
        a0 = _mm512_fmadd_ps(CK_LD8(w0 + i), xa, a0);
        b0 = _mm512_fmadd_ps(CK_LD8(w0 + i + 16), xb, b0);
        a1 = _mm512_fmadd_ps(CK_LD8(w1 + i), xa, a1);
        b1 = _mm512_fmadd_ps(CK_LD8(w1 + i + 16), xb, b1);
        a2 = _mm512_fmadd_ps(CK_LD8(w2 + i), xa, a2);
        b2 = _mm512_fmadd_ps(CK_LD8(w2 + i + 16), xb, b2);
        a3 = _mm512_fmadd_ps(CK_LD8(w3 + i), xa, a3);
        b3 = _mm512_fmadd_ps(CK_LD8(w3 + i + 16), xb, b3);
    }
#undef CK_LD8
    for (; i < n; i += 16) {
        __mmask16 k = ck_mask16(n - i);
        __m512 xa = _mm512_maskz_loadu_ps(k, x + i);
#define CK_LD8M(p) ck_i8x16(_mm_maskz_loadu_epi8(k, p))
        a0 = _mm512_fmadd_ps(CK_LD8M(w0 + i), xa, a0);
        a1 = _mm512_fmadd_ps(CK_LD8M(w1 + i), xa, a1);
        a2 = _mm512_fmadd_ps(CK_LD8M(w2 + i), xa, a2);
        a3 = _mm512_fmadd_ps(CK_LD8M(w3 + i), xa, a3);
#undef CK_LD8M
    }
    y[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
    y[1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
    y[2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, b2));
    y[3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, b3));
}

/* int4, 16 lanes: one 64-byte load is a whole block; vpermps looks each word's low nibble up
 * in a 16-entry table of (u - 8) d, and ignores the higher bits, so the block's 8 vectors are 8
 * shifts of the same register. The tables cost: building one per group from an fp16 scale
 * (load, widen, broadcast, multiply) took as many instructions as the block's products, so the
 * row's scales are first widened 16 at a time into `sf` and each table is one multiply by a
 * broadcast memory operand; with the usual group of 32 the four tables of a block are
 * unrolled. Measured one thread in L2: [64, 4096] 17 -> 25 G weights/s, [256, 768] 16 -> 19. */
CK_AVX512 static float ck_dot_i4_avx512(const uint8_t *w, const uint16_t *gs, int group,
                                        const float *x, int n) {
    const __m512 codes = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, tab = a0;
    float sf[64];  /* fp32 scales of the groups of one span of blocks */
    int nb = n / CK_I4_BLOCK, ng = ck_i4_groups(n, group);
    int span = group / 2;  /* blocks per 64 groups (a group is a multiple of 16 weights) */
    for (int b0 = 0; b0 < nb; b0 += span) {
        int g0 = b0 * CK_I4_BLOCK / group, cnt = ng - g0 < 64 ? ng - g0 : 64;
        for (int k = 0; k < cnt; k += 16) {
            __mmask16 mk = ck_mask16(cnt - k);
            _mm512_storeu_ps(sf + k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, gs + g0 + k)));
        }
        int b1 = b0 + span < nb ? b0 + span : nb, g_last = -1;
        for (int b = b0; b < b1; b++) {
            CK_PF(w + (size_t)b * 64);
            __m512i q = _mm512_loadu_si512((const void *)(w + (size_t)b * 64));
            const float *xb = x + (size_t)b * CK_I4_BLOCK;
#define CK_I4_FMA(j, acc, t)                                                                   \
            acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, t), _mm512_loadu_ps(xb + 16 * (j)), acc); \
            q = _mm512_srli_epi32(q, 4);
            if (group == 32) {
                const float *sb = sf + 4 * (b - b0);
                __m512 t0 = _mm512_mul_ps(codes, _mm512_set1_ps(sb[0]));
                __m512 t1 = _mm512_mul_ps(codes, _mm512_set1_ps(sb[1]));
                __m512 t2 = _mm512_mul_ps(codes, _mm512_set1_ps(sb[2]));
                __m512 t3 = _mm512_mul_ps(codes, _mm512_set1_ps(sb[3]));
                CK_I4_FMA(0, a0, t0) CK_I4_FMA(1, a1, t0) CK_I4_FMA(2, a2, t1)
                CK_I4_FMA(3, a3, t1) CK_I4_FMA(4, a0, t2) CK_I4_FMA(5, a1, t2)
                CK_I4_FMA(6, a2, t3) CK_I4_FMA(7, a3, t3)
                continue;
            }
            for (int j = 0; j < 8; j += 4) {
#define CK_I4_TAB(jj)                                                                          \
                {                                                                              \
                    int g = (b * CK_I4_BLOCK + 16 * (jj)) / group - g0;                        \
                    if (g != g_last) {                                                         \
                        tab = _mm512_mul_ps(codes, _mm512_set1_ps(sf[g]));                     \
                        g_last = g;                                                            \
                    }                                                                          \
                }
                CK_I4_TAB(j) CK_I4_FMA(j, a0, tab)
                CK_I4_TAB(j + 1) CK_I4_FMA(j + 1, a1, tab)
                CK_I4_TAB(j + 2) CK_I4_FMA(j + 2, a2, tab)
                CK_I4_TAB(j + 3) CK_I4_FMA(j + 3, a3, tab)
#undef CK_I4_TAB
            }
#undef CK_I4_FMA
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))) +
           ck_dot_i4_from(w, gs, group, x, nb * CK_I4_BLOCK, n);
}

/* Four int4 rows with groups of 32 at once (the default group): the same instructions per
 * weight as ck_dot_i4_avx512, but one pass of loop control, scale widening and reduction per
 * four rows and each x vector loaded once for four products, which matters in short rows (a
 * 768-wide row is 6 blocks). y[k] gets row k's whole-block sum (the caller adds the tail). */
CK_AVX512 static void ck_dot4_i4g32_avx512(const uint8_t *w, size_t row_bytes, const uint16_t *gs,
                                           int ng, const float *x, int n, float *y) {
    const __m512 codes = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    __m512 a0 = _mm512_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
    float sf[4][64];
    int nb = n / CK_I4_BLOCK;
    const uint8_t *w0 = w, *w1 = w + row_bytes, *w2 = w + 2 * row_bytes, *w3 = w + 3 * row_bytes;
    const size_t ahead = CK_PF4_AHEAD(row_bytes);
    for (int s0 = 0; s0 < nb; s0 += 16) {  /* 16 blocks: 64 groups */
        int g0 = 4 * s0, cnt = ng - g0 < 64 ? ng - g0 : 64;
        for (int r = 0; r < 4; r++)
            for (int k = 0; k < cnt; k += 16) {
                __mmask16 mk = ck_mask16(cnt - k);
                __m256i h = _mm256_maskz_loadu_epi16(mk, gs + (size_t)r * ng + g0 + k);
                _mm512_storeu_ps(sf[r] + k, _mm512_cvtph_ps(h));
            }
        int s1 = s0 + 16 < nb ? s0 + 16 : nb;
        for (int b = s0; b < s1; b++) {
            const float *xb = x + (size_t)b * CK_I4_BLOCK;
            int o = 4 * (b - s0);
#define CK_I4_ROW(wr, sr, a, c)                                                                \
            {                                                                                  \
                CK_PF_AT(wr + (size_t)b * 64, ahead);                                          \
                __m512i q = _mm512_loadu_si512((const void *)(wr + (size_t)b * 64));           \
                for (int t = 0; t < 4; t++) {                                                  \
                    __m512 tab = _mm512_mul_ps(codes, _mm512_set1_ps(sr[o + t]));              \
                    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, tab),                         \
                                        _mm512_loadu_ps(xb + 32 * t), a);                      \
                    q = _mm512_srli_epi32(q, 4);                                               \
                    c = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, tab),                         \
                                        _mm512_loadu_ps(xb + 32 * t + 16), c);                 \
                    q = _mm512_srli_epi32(q, 4);                                               \
                }                                                                              \
            }
            CK_I4_ROW(w0, sf[0], a0, b0) CK_I4_ROW(w1, sf[1], a1, b1)
            CK_I4_ROW(w2, sf[2], a2, b2) CK_I4_ROW(w3, sf[3], a3, b3)
#undef CK_I4_ROW
        }
    }
    y[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
    y[1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
    y[2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, b2));
    y[3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, b3));
}

/* max |x_i|, or -1 where x holds a NaN or an Inf. */
CK_AVX512 static float ck_absmax_avx512(const float *x, int n) {
    __m512 m = _mm512_setzero_ps();
    const __m512 big = _mm512_set1_ps(3.4e38f);
    __mmask16 bad = 0;
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = ck_mask16(n - i);
        __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i));
        bad |= _mm512_cmp_ps_mask(a, big, _CMP_NLE_UQ);  /* > max float, or unordered: NaN */
        m = _mm512_max_ps(m, a);
    }
    return bad ? -1.0f : _mm512_reduce_max_ps(m);
}

/* x -> xd's digits (CkXd), 16 elements at a time; the caller has set xd's shape and scale. */
CK_AVX512 static void ck_xd_digits_avx512(const float *x, int n, CkXd *xd, float inv) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    const __m512 vinv = _mm512_set1_ps(inv);
    int8_t *d = xd->d;
    const size_t np = (size_t)xd->npad;
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = ck_mask16(n - i);
        __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vinv));
        __m512i d3 = _mm512_srai_epi32(_mm512_slli_epi32(r, 24), 24);  /* low byte, signed */
        r = _mm512_srai_epi32(_mm512_sub_epi32(r, d3), 8);
        __m512i d2 = _mm512_srai_epi32(_mm512_slli_epi32(r, 24), 24);
        r = _mm512_srai_epi32(_mm512_sub_epi32(r, d2), 8);
        __m512i d1 = _mm512_srai_epi32(_mm512_slli_epi32(r, 24), 24);
        __m512i d0 = _mm512_srai_epi32(_mm512_sub_epi32(r, d1), 8);
        _mm_storeu_si128((__m128i *)(d + i), _mm512_cvtepi32_epi8(d0));
        _mm_storeu_si128((__m128i *)(d + np + i), _mm512_cvtepi32_epi8(d1));
        _mm_storeu_si128((__m128i *)(d + 2 * np + i), _mm512_cvtepi32_epi8(d2));
        _mm_storeu_si128((__m128i *)(d + 3 * np + i), _mm512_cvtepi32_epi8(d3));
        s0 = _mm512_add_epi32(s0, d0);
        s1 = _mm512_add_epi32(s1, d1);
        s2 = _mm512_add_epi32(s2, d2);
        s3 = _mm512_add_epi32(s3, d3);
    }
    xd->dsum[0] = _mm512_reduce_add_epi32(s0);
    xd->dsum[1] = _mm512_reduce_add_epi32(s1);
    xd->dsum[2] = _mm512_reduce_add_epi32(s2);
    xd->dsum[3] = _mm512_reduce_add_epi32(s3);
}

/* An int8 row times x's digits: four exact int32 sums of u d (u = w + 128, unsigned, as
 * vpdpbusd takes it; u d = w d + 128 d), combined in 64 bits. Single rows stream faster here
 * than four at a time (measured 24-25 against 23-24 GB/s over two threads, rows of 1024). */
CK_VNNI static float ck_dot_i8_vnni(const int8_t *w, const CkXd *xd, int n) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int8_t *d = xd->d;
    const size_t np = (size_t)xd->npad;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        CK_PF(w + i);
        __m512i u = _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + i)), flip);
        a0 = _mm512_dpbusd_epi32(a0, u, _mm512_loadu_si512((const void *)(d + i)));
        a1 = _mm512_dpbusd_epi32(a1, u, _mm512_loadu_si512((const void *)(d + np + i)));
        a2 = _mm512_dpbusd_epi32(a2, u, _mm512_loadu_si512((const void *)(d + 2 * np + i)));
        a3 = _mm512_dpbusd_epi32(a3, u, _mm512_loadu_si512((const void *)(d + 3 * np + i)));
    }
    if (i < n) {  /* the digits are zero past n: the tail's u = 128 there adds nothing */
        __mmask64 k = ~0ULL >> (64 - (n - i));
        __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, w + i), flip);
        a0 = _mm512_dpbusd_epi32(a0, u, _mm512_loadu_si512((const void *)(d + i)));
        a1 = _mm512_dpbusd_epi32(a1, u, _mm512_loadu_si512((const void *)(d + np + i)));
        a2 = _mm512_dpbusd_epi32(a2, u, _mm512_loadu_si512((const void *)(d + 2 * np + i)));
        a3 = _mm512_dpbusd_epi32(a3, u, _mm512_loadu_si512((const void *)(d + 3 * np + i)));
    }
    int64_t t = (int64_t)_mm512_reduce_add_epi32(a0) - 128LL * xd->dsum[0];
    t = t * 256 + (int64_t)_mm512_reduce_add_epi32(a1) - 128LL * xd->dsum[1];
    t = t * 256 + (int64_t)_mm512_reduce_add_epi32(a2) - 128LL * xd->dsum[2];
    t = t * 256 + (int64_t)_mm512_reduce_add_epi32(a3) - 128LL * xd->dsum[3];
    return (float)((double)t * xd->scale);
}

/* Whole blocks of an int4 row as fp32 (`of`) or bf16 (`oh`, round to nearest even); returns
 * how many weights it wrote (the caller does the rest). */
CK_AVX512 static int ck_i4_dequant_avx512(const uint8_t *w, const uint16_t *gs, int group, int n,
                                          float *of, uint16_t *oh) {
    const __m512 codes = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i half = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
    __m512 tab = _mm512_setzero_ps();
    int nb = n / CK_I4_BLOCK, g_end = 0, g = 0;
    for (int b = 0; b < nb; b++) {
        __m512i q = _mm512_loadu_si512((const void *)(w + (size_t)b * 64));
        for (int j = 0; j < 8; j++) {
            int e = b * CK_I4_BLOCK + 16 * j;
            if (e == g_end) {
                tab = _mm512_mul_ps(codes, _mm512_set1_ps(_cvtsh_ss(gs[g++])));
                g_end += group;
            }
            __m512 v = _mm512_permutexvar_ps(q, tab);
            q = _mm512_srli_epi32(q, 4);
            if (of) {
                _mm512_storeu_ps(of + e, v);
            } else {
                __m512i u = _mm512_castps_si512(v);
                __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
                u = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, half), lsb), 16);
                _mm256_storeu_si256((__m256i *)(oh + e), _mm512_cvtepi32_epi16(u));
            }
        }
    }
    return nb * CK_I4_BLOCK;
}
#endif

static void ck_init(void) {
#if CK_X86
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    int vnni = avx512 && __builtin_cpu_supports("avx512vnni");
    ck_isa_max = vnni ? CK_ISA_VNNI : avx512 ? CK_ISA_AVX512 : avx2 ? CK_ISA_AVX2 : CK_ISA_SCALAR;
#endif
    ck_isa = ck_isa_max;
    ck_use_avx2 = ck_isa >= CK_ISA_AVX2;
}

/* Runs at most `level` (tests compare each level with the scalar twins); returns what runs. */
static int ck_set_isa(int level) {
    ck_init();
    if (level < ck_isa) ck_isa = level < 0 ? 0 : level;
    ck_use_avx2 = ck_isa >= CK_ISA_AVX2;
    return ck_isa;
}

/* xd <- x's digits where int8 products take them (CK_ISA_VNNI, n <= CK_XD_MAX_N, x finite:
 * a NaN or Inf must reach the outputs as the fp32 kernels give it); else xd->ok = 0. */
static void ck_xd_prepare(CkXd *xd, const float *x, int n) {
    xd->ok = 0;
#if CK_X86
    if (ck_isa < CK_ISA_VNNI || n < 1 || n > CK_XD_MAX_N) return;
    size_t np = ((size_t)n + 63) & ~(size_t)63, need = 4 * np;
    if (xd->cap < need) {
        free(xd->d);
        xd->d = aligned_alloc(64, need);
        xd->cap = xd->d ? need : 0;
        if (!xd->d) return;
    }
    float mx = ck_absmax_avx512(x, n);
    if (mx < 0) return;  /* NaN or Inf */
    size_t done = ((size_t)n + 15) & ~(size_t)15;  /* what the digit stores cover */
    for (int k = 0; k < 4; k++) memset(xd->d + k * np + done, 0, np - done);
    xd->n = n;
    xd->npad = (int)np;
    xd->scale = mx > 0 ? mx / 1073741824.0f : 1.0f;  /* max|X| = 2^30 */
    ck_xd_digits_avx512(x, n, xd, 1.0f / xd->scale);
    xd->ok = 1;
#else
    (void)x, (void)n;
#endif
}

static inline void ck_xd_free(CkXd *xd) {
    free(xd->d);
    memset(xd, 0, sizeof *xd);
}

static inline float ck_epilogue(int ep, float y) {
    switch (ep) {
    case EP_TANH: return tanhf(y);
    case EP_SIGMOID: return 1.0f / (1.0f + expf(-y));
    case EP_RELU_SQ: return y > 0 ? y * y : 0.0f;
    default: return y;
    }
}

/* Row r of M times x, through the kernel of the current instruction set. */
static float ck_dot_row(const CkMat *m, int r, const float *x) {
    int n = m->in;
    switch (m->dtype) {
    case CK_F32: {
        const float *w = (const float *)m->w + (size_t)r * n;
#if CK_X86
        if (ck_isa >= CK_ISA_AVX512) return ck_dot_f32_avx512(w, x, n);
        if (ck_isa >= CK_ISA_AVX2) return ck_dot_f32_avx2(w, x, n);
#endif
        return ck_dot_f32_scalar(w, x, n);
    }
    case CK_BF16: {
        const uint16_t *w = (const uint16_t *)m->w + (size_t)r * n;
#if CK_X86
        if (ck_isa >= CK_ISA_AVX512) return ck_dot_bf16_avx512(w, x, n);
        if (ck_isa >= CK_ISA_AVX2) return ck_dot_bf16_avx2(w, x, n);
#endif
        return ck_dot_bf16_scalar(w, x, n);
    }
    case CK_I8: {
        const int8_t *w = (const int8_t *)m->w + (size_t)r * n;
        float y;
#if CK_X86
        if (ck_isa >= CK_ISA_AVX512) y = ck_dot_i8_avx512(w, x, n);
        else if (ck_isa >= CK_ISA_AVX2) y = ck_dot_i8_avx2(w, x, n);
        else
#endif
            y = ck_dot_i8_scalar(w, x, n);
        return y * m->scale[r];
    }
    default: {
        const uint8_t *w = (const uint8_t *)m->w + (size_t)r * ck_i4_row_bytes(n);
        const uint16_t *gs = m->gscale + (size_t)r * ck_i4_groups(n, m->group);
#if CK_X86
        if (ck_isa >= CK_ISA_AVX512) return ck_dot_i4_avx512(w, gs, m->group, x, n);
        if (ck_isa >= CK_ISA_AVX2) return ck_dot_i4_avx2(w, gs, m->group, x, n);
#endif
        return ck_dot_i4_scalar(w, gs, m->group, x, n);
    }
    }
}

/* Rows [r0, r1) of y = M x, each passed through `ep` (EP_ADD: dst[r] += y); `xd`: x's digits
 * for an int8 M (ck_xd_prepare), or NULL. */
static void ck_gemv_rows(const CkMat *m, const float *x, const CkXd *xd, float *dst, int ep,
                         int r0, int r1) {
#if CK_X86
    if (m->dtype == CK_I8 && xd && xd->ok && xd->n == m->in && ck_isa >= CK_ISA_VNNI) {
        for (; r0 < r1; r0++) {
            float v = ck_dot_i8_vnni((const int8_t *)m->w + (size_t)r0 * m->in, xd, m->in) *
                      m->scale[r0];
            if (ep == EP_ADD) dst[r0] += v;
            else dst[r0] = ck_epilogue(ep, v);
        }
        return;
    }
    if (m->dtype == CK_I8 && ck_isa >= CK_ISA_AVX512) {
        int n = m->in;
        for (; r0 + 4 <= r1; r0 += 4) {
            float y[4];
            ck_dot4_i8_avx512((const int8_t *)m->w + (size_t)r0 * n, (size_t)n, x, n, y);
            for (int k = 0; k < 4; k++) {
                float v = y[k] * m->scale[r0 + k];
                if (ep == EP_ADD) dst[r0 + k] += v;
                else dst[r0 + k] = ck_epilogue(ep, v);
            }
        }
    }
    if (m->dtype == CK_I4 && m->group == 32 && ck_isa >= CK_ISA_AVX512) {
        int n = m->in, ng = ck_i4_groups(n, 32), tail = n / CK_I4_BLOCK * CK_I4_BLOCK;
        size_t rb = ck_i4_row_bytes(n);
        for (; r0 + 4 <= r1; r0 += 4) {
            const uint8_t *w = (const uint8_t *)m->w + (size_t)r0 * rb;
            const uint16_t *gs = m->gscale + (size_t)r0 * ng;
            float y[4];
            ck_dot4_i4g32_avx512(w, rb, gs, ng, x, n, y);
            for (int k = 0; k < 4; k++) {
                if (tail < n)
                    y[k] += ck_dot_i4_from(w + k * rb, gs + (size_t)k * ng, 32, x, tail, n);
                if (ep == EP_ADD) dst[r0 + k] += y[k];
                else dst[r0 + k] = ck_epilogue(ep, y[k]);
            }
        }
    }
#endif
    for (int r = r0; r < r1; r++) {
        float y = ck_dot_row(m, r, x);
        if (ep == EP_ADD) dst[r] += y;
        else dst[r] = ck_epilogue(ep, y);
    }
}

/* fp32 dot product through the fastest kernel available. */
static inline float ck_dot_f32(const float *w, const float *x, int n) {
#if CK_X86
    if (ck_isa >= CK_ISA_AVX512) return ck_dot_f32_avx512(w, x, n);
    if (ck_isa >= CK_ISA_AVX2) return ck_dot_f32_avx2(w, x, n);
#endif
    return ck_dot_f32_scalar(w, x, n);
}

/* Rows [r0, r1) of an int4 matrix as fp32 or bf16 (dtype CK_F32 / CK_BF16) into `out`
 * [r1 - r0, in]: the sequence path multiplies many tokens by such a block. */
static inline void ck_i4_dequant_rows(const CkMat *m, int r0, int r1, void *out, int dtype) {
    int n = m->in, ng = ck_i4_groups(n, m->group);
    for (int r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)m->w + (size_t)r * ck_i4_row_bytes(n);
        const uint16_t *gs = m->gscale + (size_t)r * ng;
        float *of = dtype == CK_F32 ? (float *)out + (size_t)(r - r0) * n : NULL;
        uint16_t *oh = dtype == CK_F32 ? NULL : (uint16_t *)out + (size_t)(r - r0) * n;
        int e = 0;
#if CK_X86
        if (ck_isa >= CK_ISA_AVX512) {
            e = ck_i4_dequant_avx512(w, gs, m->group, n, of, oh);
        }
#endif
        for (; e < n; e++) {
            float v = (float)(ck_i4_code(w, e) - 8) * ck_f16_to_f32(gs[e / m->group]);
            if (of) of[e] = v;
            else oh[e] = ck_f32_to_bf16(v);
        }
    }
}

/* ---- a plain read ------------------------------------------------------------------------ */

static uint32_t ck_stream_sum_scalar(const uint8_t *p, size_t n) {
    uint32_t s = 0, w;
    for (size_t i = 0; i < n; i += 4) {
        memcpy(&w, p + i, 4);
        s += w;
    }
    return s;
}

#if CK_X86
CK_AVX512 static uint32_t ck_stream_sum_avx512(const uint8_t *p, size_t n) {
    __m512i s = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        CK_PF(p + i);
        s = _mm512_add_epi32(s, _mm512_loadu_si512((const void *)(p + i)));
    }
    return (uint32_t)_mm512_reduce_add_epi32(s) + ck_stream_sum_scalar(p + i, n - i);
}

CK_AVX2 static uint32_t ck_stream_sum_avx2(const uint8_t *p, size_t n) {
    __m256i s = _mm256_setzero_si256(), t = s;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        CK_PF(p + i);
        s = _mm256_add_epi32(s, _mm256_loadu_si256((const __m256i *)(p + i)));
        t = _mm256_add_epi32(t, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
    }
    uint32_t lanes[8], r = 0;
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi32(s, t));
    for (int k = 0; k < 8; k++) r += lanes[k];
    return r + ck_stream_sum_scalar(p + i, n - i);
}
#endif

/* The sum mod 2^32 of n bytes' little-endian 32-bit words (n a multiple of 4), read once
 * through the widest kernel: a plain streaming read, the bench's memory bandwidth probe
 * (_quantcpu.stream_sum) and benchmarks/ceiling.c's yardstick. */
static inline uint32_t ck_stream_sum(const uint8_t *p, size_t n) {
#if CK_X86
    if (ck_isa >= CK_ISA_AVX512) return ck_stream_sum_avx512(p, n);
    if (ck_isa >= CK_ISA_AVX2) return ck_stream_sum_avx2(p, n);
#endif
    return ck_stream_sum_scalar(p, n);
}

/* ---- the pool ---------------------------------------------------------------------------
 *
 * The calling thread runs a step as a sequence of phases. A phase is `total` independent chunks
 * (rows of products, or heads); it is published by storing one 64-bit ticket
 * (seq << 40 | total << 20 | next). Every thread, the caller included, takes chunks by
 * compare-and-swap on the ticket, so a thread that is late (asleep, descheduled) finds the
 * chunks taken and skips the phase: nobody waits for a thread that is not there. The caller
 * waits until `done` reaches `total`, does the serial work between phases, and publishes the
 * next. Workers spin on the ticket for a while after each phase, then sleep on a condition
 * variable until the next step wakes them.
 *
 * A busy machine (one other CPU-bound process on 2 cores) breaks the one assumption left: a
 * worker that took a chunk and was then descheduled makes the caller wait for it, a whole time
 * slice (milliseconds) for a phase that takes microseconds. The caller yields while it waits,
 * so a worker sharing its core can finish, and a wait that long (`stall_ns`) makes it run the
 * next phases alone for a while (the workers, unfed, go to sleep), then try the pool again.
 * That while starts at `solo_first_ns` and doubles, up to `solo_ns`, with each stall that
 * comes within CK_SOLO_WINDOW_NS of the last solo time's end: a busy machine stalls again at
 * once and soon runs alone for the whole `solo_ns`, while a quiet one (a shared VM whose
 * threads are still descheduled now and then: a stall every few hundred ms was measured on a
 * 1.5B decode) loses a couple of ms at half speed per stall. A fixed 100 ms made each such
 * stall cost ~2 tokens at half speed (1.5B int4 decode 14.5 -> 17+ tok/s with the ramp).
 */

#define CK_MAX_TASKS 8
#define CK_MAX_THREADS 64
#define CK_SPIN_NS 2000000L  /* how long an idle worker spins before it sleeps */
#define CK_STALL_NS 300000L  /* a straggler wait this long: a worker was descheduled */
#define CK_SOLO_NS 100000000L /* then the caller runs phases alone at most this long */
#define CK_SOLO_FIRST_NS 2000000L /* ... first this long, doubling with each stall that */
#define CK_SOLO_WINDOW_NS 50000000L /* comes this soon after the last solo time ended */

typedef struct CkPhase CkPhase;
typedef void (*CkChunkFn)(const CkPhase *ph, int chunk);

typedef struct {
    const CkMat *m;
    const float *x;
    const CkXd *xd;        /* x's digits for an int8 m (VNNI), or NULL */
    float *dst;
    int ep, rows_per_chunk, first_chunk, n_chunks;
} CkTask;

struct CkPhase {
    CkChunkFn fn;          /* NULL: products (tasks); else fn(phase, chunk) */
    void *ctx;             /* for fn */
    int n_tasks;
    CkTask tasks[CK_MAX_TASKS];
};

typedef struct {
    uint64_t ticket;       /* atomic: seq << 40 | total << 20 | next */
    int done;              /* atomic: chunks finished in the current phase */
    CkPhase phase;
    int n_threads;         /* workers + the caller */
    int stop;
    int sleeping;          /* atomic: workers waiting on `wake` */
    long stall_ns, solo_ns, solo_first_ns;  /* CK_STALL_NS, CK_SOLO_NS, CK_SOLO_FIRST_NS */
    long solo_until;       /* the caller runs phases alone until then (0: not) */
    long solo_len, solo_end;  /* the last solo time's length and end (ns) */
    long n_phases, n_solo, n_stalls;  /* counts, for tests and tuning */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_t threads[CK_MAX_THREADS];
    CkXd xd[CK_MAX_TASKS];  /* the digits of the phase's int8 tasks' inputs */
} CkPool;

#define CK_TICKET(seq, total, next) \
    (((uint64_t)(seq) << 40) | ((uint64_t)(total) << 20) | (uint64_t)(next))
#define CK_SEQ(t) ((t) >> 40)
#define CK_TOTAL(t) ((int)(((t) >> 20) & 0xFFFFF))
#define CK_NEXT(t) ((int)((t) & 0xFFFFF))

static void ck_run_chunk(const CkPhase *ph, int chunk) {
    if (ph->fn) {
        ph->fn(ph, chunk);
        return;
    }
    for (int i = 0; i < ph->n_tasks; i++) {
        const CkTask *t = &ph->tasks[i];
        if (chunk < t->first_chunk + t->n_chunks) {
            int r0 = (chunk - t->first_chunk) * t->rows_per_chunk;
            int r1 = r0 + t->rows_per_chunk;
            if (r1 > t->m->out) r1 = t->m->out;
            ck_gemv_rows(t->m, t->x, t->xd, t->dst, t->ep, r0, r1);
            return;
        }
    }
}

/* The chunk that ticket k of `total` runs on a pool of n threads: the chunks are split into n
 * contiguous runs and the tickets deal them out in turn (k = 0, 1 are the starts of runs 0
 * and 1, k = 2, 3 their second chunks, ...). Threads that take tickets in turn, as two equal
 * threads do, each stream through one run of rows, where each chunk's look-ahead prefetch
 * (past its last rows) fetches the start of that thread's next chunk; dealt in plain order,
 * the next rows were the other thread's, and every chunk started with cold misses.
 * A bijection for any total: a thread that takes two tickets in a row only jumps runs. */
static inline int ck_chunk_order(int k, int total, int n) {
    if (n < 2 || total <= n) return k;
    int q = total / n, r = total % n;
    int i, s;
    if (k < q * n) {
        i = k / n;
        s = k % n;
    } else {
        i = q;
        s = k - q * n;  /* the last chunk of one of the first r runs */
    }
    return s * q + (s < r ? s : r) + i;
}

/* Takes and runs chunks of the current phase until none is left; returns how many it ran. */
static int ck_work(CkPool *p) {
    int ran = 0;
    for (;;) {
        uint64_t t = __atomic_load_n(&p->ticket, __ATOMIC_ACQUIRE);
        if (CK_NEXT(t) >= CK_TOTAL(t)) return ran;
        if (!__atomic_compare_exchange_n(&p->ticket, &t, t + 1, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        /* The phase cannot end (nor its descriptor change) before this chunk is done. */
        ck_run_chunk(&p->phase, ck_chunk_order(CK_NEXT(t), CK_TOTAL(t), p->n_threads));
        __atomic_add_fetch(&p->done, 1, __ATOMIC_RELEASE);
        ran++;
    }
}

static inline long ck_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *ck_worker(void *arg) {
    CkPool *p = (CkPool *)arg;
    uint64_t seen = 0;
    long idle_since = ck_now_ns();
    int spins = 0;
    while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
        uint64_t t = __atomic_load_n(&p->ticket, __ATOMIC_ACQUIRE);
        if (CK_SEQ(t) != CK_SEQ(seen) || CK_NEXT(t) < CK_TOTAL(t)) {
            seen = t;
            ck_work(p);
            idle_since = ck_now_ns();
            spins = 0;
            continue;
        }
        CK_PAUSE();
        if (++spins < 256) continue;
        spins = 0;
        if (ck_now_ns() - idle_since < CK_SPIN_NS) {
            sched_yield();  /* an overloaded machine: let whoever we wait for run */
            continue;
        }
        pthread_mutex_lock(&p->mu);
        __atomic_add_fetch(&p->sleeping, 1, __ATOMIC_SEQ_CST);
        while (!__atomic_load_n(&p->stop, __ATOMIC_SEQ_CST) &&
               CK_SEQ(__atomic_load_n(&p->ticket, __ATOMIC_SEQ_CST)) == CK_SEQ(seen))
            pthread_cond_wait(&p->wake, &p->mu);
        __atomic_sub_fetch(&p->sleeping, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&p->mu);
        idle_since = ck_now_ns();
    }
    return NULL;
}

static int ck_pool_start(CkPool *p, int n_threads) {
    memset(p, 0, sizeof *p);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > CK_MAX_THREADS) n_threads = CK_MAX_THREADS;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->stall_ns = CK_STALL_NS;
    p->solo_ns = CK_SOLO_NS;
    p->solo_first_ns = CK_SOLO_FIRST_NS;
    p->n_threads = 1;
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&p->threads[i], NULL, ck_worker, p) != 0) break;
        p->n_threads++;
    }
    return p->n_threads;
}

static void ck_pool_stop(CkPool *p) {
    __atomic_store_n(&p->stop, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    p->n_threads = 1;
    for (int i = 0; i < CK_MAX_TASKS; i++) ck_xd_free(&p->xd[i]);
}

/* Runs the phase described in p->phase with `total` chunks, the caller taking part (or alone,
 * after a stall: see the pool's comment). */
static void ck_run_phase(CkPool *p, int total) {
    if (total <= 0) return;
    p->n_phases++;
    if (p->solo_until && ck_now_ns() >= p->solo_until) p->solo_until = 0;
    if (p->n_threads == 1 || p->solo_until) {
        for (int c = 0; c < total; c++) ck_run_chunk(&p->phase, c);
        p->n_solo++;
        return;
    }
    uint64_t old = __atomic_load_n(&p->ticket, __ATOMIC_RELAXED);
    __atomic_store_n(&p->done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->ticket, CK_TICKET(CK_SEQ(old) + 1, total, 0), __ATOMIC_SEQ_CST);
    if (p->n_threads > 1 && __atomic_load_n(&p->sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    ck_work(p);
    long waited = 0;
    if (__atomic_load_n(&p->done, __ATOMIC_ACQUIRE) < total) {
        long t0 = ck_now_ns();
        for (int spins = 1; __atomic_load_n(&p->done, __ATOMIC_ACQUIRE) < total; spins++) {
            CK_PAUSE();
            if (spins % 256 == 0) sched_yield();  /* a descheduled worker may share our core */
        }
        waited = ck_now_ns() - t0;
    }
    if (waited >= p->stall_ns) {  /* stall_ns 0: every phase (tests) */
        long now = ck_now_ns(), len = p->solo_first_ns;
        p->n_stalls++;
        if (p->solo_end && now - p->solo_end < CK_SOLO_WINDOW_NS)  /* stalled again: busy */
            len = p->solo_len > len / 2 ? 2 * p->solo_len : len;
        if (len > p->solo_ns) len = p->solo_ns;
        p->solo_len = len;
        p->solo_until = p->solo_end = now + len;
    }
}

/* A pool for one call (a product, a sequence's WKV) that is worth `work` units, or NULL (one
 * thread: small work, or no thread could start): started, run, joined (~15 us measured, next
 * to calls of milliseconds). A pool kept between calls would spin on its cores while torch
 * runs the operations between them on its own threads (the two-core machine has no core to
 * spare). Stopped and freed by ck_pool_end. */
static inline CkPool *ck_pool_begin(int threads, double work, double min_work) {
    CkPool *pool;
    if (threads < 2 || work < min_work || (pool = malloc(sizeof *pool)) == NULL) return NULL;
    if (ck_pool_start(pool, threads) < 2) {
        ck_pool_stop(pool);
        free(pool);
        return NULL;
    }
    return pool;
}

static inline void ck_pool_end(CkPool *pool) {
    if (pool) {
        ck_pool_stop(pool);
        free(pool);
    }
}

/* Runs `total` chunks of fn(ctx) on `pool`, or on the calling thread when pool is NULL. */
static inline void ck_run_on(CkPool *pool, CkChunkFn fn, void *ctx, int total) {
    if (!pool) {
        CkPhase ph;
        memset(&ph, 0, sizeof ph);
        ph.fn = fn;
        ph.ctx = ctx;
        for (int c = 0; c < total; c++) fn(&ph, c);
        return;
    }
    pool->phase.fn = fn;
    pool->phase.ctx = ctx;
    ck_run_phase(pool, total);
}

/* ---- products as phases ------------------------------------------------------------------ */

/* Rows per chunk: about 64 KiB of weights, so a chunk is a few microseconds of streaming, but
 * at least 16 chunks in a matrix while they stay above 8 KiB: a phase ends when its last chunk
 * does, and a small matrix (768 x 768 in int4: 330 KB, five chunks of 64 KiB) left one thread
 * idle for up to a fifth of it. A multiple of 4 rows: the int4 kernel takes rows four at a
 * time. */
#define CK_CHUNK_BYTES 65536L
#define CK_CHUNK_MIN_BYTES 8192L
#define CK_CHUNKS_PER_MATRIX 16
static int ck_rows_per_chunk(const CkMat *m) {
    long row = m->dtype == CK_F32 ? 4L * m->in : m->dtype == CK_BF16 ? 2L * m->in :
               m->dtype == CK_I8 ? (long)m->in : (long)ck_i4_row_bytes(m->in);
    long target = row * m->out / CK_CHUNKS_PER_MATRIX;
    if (target > CK_CHUNK_BYTES) target = CK_CHUNK_BYTES;
    if (target < CK_CHUNK_MIN_BYTES) target = CK_CHUNK_MIN_BYTES;
    long rows = (target + row - 1) / row;
    if (rows > 4) rows = (rows + 3) / 4 * 4;
    if (rows < 1) rows = 1;
    return (int)rows;
}

static void ck_phase_begin(CkPool *p) {
    p->phase.fn = NULL;
    p->phase.n_tasks = 0;
}

/* Adds y = M x (through `ep`) to the phase being built; returns the phase's chunk count. */
static int ck_phase_add(CkPool *p, const CkMat *m, const float *x, float *dst, int ep) {
    CkPhase *ph = &p->phase;
    int first = 0;
    if (ph->n_tasks > 0) {
        CkTask *last = &ph->tasks[ph->n_tasks - 1];
        first = last->first_chunk + last->n_chunks;
    }
    if (m == NULL || m->w == NULL || ph->n_tasks == CK_MAX_TASKS) return first;
    CkTask *t = &ph->tasks[ph->n_tasks];
    t->m = m;
    t->x = x;
    t->xd = NULL;
    if (m->dtype == CK_I8 && ck_isa >= CK_ISA_VNNI) {  /* digits once per input vector */
        for (int i = 0; i < ph->n_tasks && !t->xd; i++)
            if (ph->tasks[i].x == x && ph->tasks[i].xd && ph->tasks[i].xd->n == m->in)
                t->xd = ph->tasks[i].xd;
        if (!t->xd) {
            CkXd *xd = &p->xd[ph->n_tasks];
            ck_xd_prepare(xd, x, m->in);
            if (xd->ok) t->xd = xd;
        }
    }
    ph->n_tasks++;
    t->dst = dst;
    t->ep = ep;
    t->rows_per_chunk = ck_rows_per_chunk(m);
    t->first_chunk = first;
    t->n_chunks = (m->out + t->rows_per_chunk - 1) / t->rows_per_chunk;
    return first + t->n_chunks;
}

/* The receptance-gated channel mix of v4, v5 and v6 from its two mixed inputs:
 * x += sigmoid(R xr) * (V relu(K xk)^2); hk [F], fr and fv [C] are scratch. */
static inline void ck_ffn_gated(CkPool *p, const CkMat *R, const CkMat *K, const CkMat *V,
                                const float *xr, const float *xk, float *hk, float *fr,
                                float *fv, float *x, int C) {
    ck_phase_begin(p);
    ck_phase_add(p, R, xr, fr, EP_SIGMOID);
    ck_run_phase(p, ck_phase_add(p, K, xk, hk, EP_RELU_SQ));
    ck_phase_begin(p);
    ck_run_phase(p, ck_phase_add(p, V, hk, fv, EP_STORE));
    for (int i = 0; i < C; i++) x[i] += fr[i] * fv[i];
}

/* ---- small vector helpers (serial: C is a few thousand at most) ------------------------- */

static void ck_layer_norm(const float *x, const float *w, const float *b, float *out, int n,
                          float eps) {
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= n;
    float inv = (float)(1.0 / sqrt(var + eps));
    float m = (float)mean;
    for (int i = 0; i < n; i++) out[i] = (x[i] - m) * inv * w[i] + b[i];
}

static inline float ck_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#if CK_X86
/* e^x in 16 lanes: x = n ln2 + r (Cody-Waite, |r| <= ln2 / 2), Cephes' degree-6 polynomial for
 * e^r, times 2^n by vscalefps; within 2 ulp of expf. x is first clamped to [-104, 89], where
 * e^x is already 0 or inf in fp32 (past it the reduction would lose r: e^-1e30 came out inf),
 * in the operand order that lets NaN through. For the one-token steps' element-wise exps and
 * sigmoids: scalar expf over v7's three per-channel sigmoids and exp was ~60 us of a 1.5B
 * layer. */
CK_AVX512 static inline __m512 ck_exp_avx512(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

CK_AVX512 static inline __m512 ck_sigmoid_avx512(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = ck_exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(one, _mm512_add_ps(one, e));
}
#endif

#endif /* CHATRWKV_CPUKERN_H */
