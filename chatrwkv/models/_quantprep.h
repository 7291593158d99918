/* Load-time kernels: the scan for NaN/Inf in a checkpoint's tensors and the AVX-512 int4
 * quantizer. Both run once per weight at load, so at 7B they decide how long a first start takes:
 * measured on the 2-core development machine (one thread, loaded), torch's `sum` (the old scan)
 * read about 0.26 G bf16 weights/s and the scalar quantizer (ck_i4_quantize_rows: 9 candidate
 * scales a group) about 22 M weights/s; a 7.2B model was 30 s and 330 s of one core's time.
 * Included by _quantcpu.c after _cpukern.h (its ISA detection, conversions and int4 layout).
 */
#ifndef CHATRWKV_QUANTPREP_H
#define CHATRWKV_QUANTPREP_H

/* ---- non-finite scan ------------------------------------------------------------------------
 * A value is NaN or infinite iff its exponent bits are all ones: for fp32 (0x7f80_0000),
 * bf16 (0x7f80) and fp16 (0x7c00) alike, so the scan is integer masks, at memory speed. */

static int ck_nonfinite_scalar(const void *p, size_t n, int dtype) {
    if (dtype == CK_F32) {
        const uint32_t *u = (const uint32_t *)p;
        for (size_t i = 0; i < n; i++)
            if ((u[i] & 0x7f800000u) == 0x7f800000u) return 1;
    } else {
        const uint16_t *h = (const uint16_t *)p;
        uint16_t e = dtype == CK_BF16 ? 0x7f80 : 0x7c00;
        for (size_t i = 0; i < n; i++)
            if ((h[i] & e) == e) return 1;
    }
    return 0;
}

#if CK_X86
/* 64 bytes at a time: AND with the exponent mask, compare equal to it (per 32- or 16-bit lane);
 * the loop keeps going to the end of each 4 KiB stretch before it tests (few branches). */
CK_AVX512 static int ck_nonfinite_avx512(const void *p, size_t n, int dtype) {
    size_t bytes = n * (dtype == CK_F32 ? 4 : 2), i = 0;
    const char *b = (const char *)p;
    __m512i e = dtype == CK_F32 ? _mm512_set1_epi32(0x7f800000)
                                : _mm512_set1_epi16(dtype == CK_BF16 ? 0x7f80 : 0x7c00);
    int wide = dtype == CK_F32;
    for (; i + 256 <= bytes; i += 256) {
        __m512i v0 = _mm512_and_si512(_mm512_loadu_si512((const void *)(b + i)), e);
        __m512i v1 = _mm512_and_si512(_mm512_loadu_si512((const void *)(b + i + 64)), e);
        __m512i v2 = _mm512_and_si512(_mm512_loadu_si512((const void *)(b + i + 128)), e);
        __m512i v3 = _mm512_and_si512(_mm512_loadu_si512((const void *)(b + i + 192)), e);
        int hit = wide ? (_mm512_cmpeq_epi32_mask(v0, e) | _mm512_cmpeq_epi32_mask(v1, e) |
                          _mm512_cmpeq_epi32_mask(v2, e) | _mm512_cmpeq_epi32_mask(v3, e)) != 0
                       : (_mm512_cmpeq_epi16_mask(v0, e) | _mm512_cmpeq_epi16_mask(v1, e) |
                          _mm512_cmpeq_epi16_mask(v2, e) | _mm512_cmpeq_epi16_mask(v3, e)) != 0;
        if (hit) return 1;
    }
    size_t done = i / (dtype == CK_F32 ? 4 : 2);
    return ck_nonfinite_scalar(b + i, n - done, dtype);
}
#endif

/* Whether any of the n values at p (dtype CK_F32, CK_BF16, or 4 for fp16) is NaN or infinite. */
static int ck_nonfinite(const void *p, size_t n, int dtype) {
#if CK_X86
    if (ck_isa >= CK_ISA_AVX512) return ck_nonfinite_avx512(p, n, dtype);
#endif
    return ck_nonfinite_scalar(p, n, dtype);
}

/* ---- int4 quantization, AVX-512 ------------------------------------------------------------
 * The same result as ck_i4_quantize_rows (and quant.py's _quantize_groups), bit for bit: per
 * group the same candidate scales, each rounded to fp16, the same codes (round to nearest even,
 * clamp), the first candidate with the least squared error. The error is summed in 16 lanes
 * (an order the scalar code does not use), which could only matter on an exact tie of two
 * candidates' errors. 16 weights a vector: groups are multiples of 16 (quant.py refuses others).
 */
#if CK_X86
/* u = clamp(round(w * inv) + 8, 0, 15) as fp32 lanes */
CK_AVX512 static inline __m512 ck_i4_codes16(__m512 w, __m512 inv) {
    __m512 u = _mm512_add_ps(_mm512_roundscale_ps(_mm512_mul_ps(w, inv),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                             _mm512_set1_ps(8.0f));
    return _mm512_min_ps(_mm512_max_ps(u, _mm512_setzero_ps()), _mm512_set1_ps(15.0f));
}

CK_AVX512 static void ck_i4_quantize_rows_avx512(const float *w, int rows, int n, int group,
                                                 uint8_t *packed, uint16_t *scales) {
    const int nc = sizeof ck_i4_search / sizeof *ck_i4_search;
    int ng = ck_i4_groups(n, group), nb = (n + CK_I4_BLOCK - 1) / CK_I4_BLOCK;
    size_t rb = ck_i4_row_bytes(n);
    const __m512 eight = _mm512_set1_ps(8.0f);
    for (int r = 0; r < rows; r++) {
        const float *wr = w + (size_t)r * n;
        uint16_t *sr = scales + (size_t)r * ng;
        for (int g = 0; g < ng; g++) {
            int e0 = g * group, len = n - e0 < group ? n - e0 : group;
            int nv = (len + 15) / 16;
            __m512 v[64];  /* group <= 1024 */
            __m512 mx = _mm512_setzero_ps();
            for (int c = 0; c < nv; c++) {
                int rem = len - 16 * c;
                __mmask16 k = ck_mask16(rem);
                v[c] = _mm512_maskz_loadu_ps(k, wr + e0 + 16 * c);
                mx = _mm512_max_ps(mx, _mm512_abs_ps(v[c]));
            }
            /* the signed weight of the largest |w|, the first of equals (as the scalar loop);
             * +0 when the group is all zeros */
            float m = _mm512_reduce_max_ps(mx), peak = 0.0f;
            if (m > 0) {
                __m512 mv = _mm512_set1_ps(m);
                for (int c = 0; c < nv; c++) {
                    __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(v[c]), mv, _CMP_EQ_OQ);
                    if (hit) {
                        peak = wr[e0 + 16 * c + __builtin_ctz(hit)];
                        break;
                    }
                }
            }
            float best_err = INFINITY;
            uint16_t best_d = 0;
            for (int s = 0; s < nc; s++) {
                uint16_t dh = ck_f32_to_f16(peak * (-ck_i4_search[s] / 8.0f));
                float d = ck_f16_to_f32(dh), inv = d != 0 ? 1.0f / d : 0.0f;
                __m512 dv = _mm512_set1_ps(d), iv = _mm512_set1_ps(inv);
                __m512 acc = _mm512_setzero_ps();
                for (int c = 0; c < nv; c++) {
                    __m512 u = ck_i4_codes16(v[c], iv);
                    /* (u - 8) * d - w, each rounded (as the scalar code): no fused multiply */
                    __m512 q = _mm512_mul_round_ps(_mm512_sub_ps(u, eight), dv,
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    __m512 diff = _mm512_sub_ps(q, v[c]);
                    acc = _mm512_add_ps(acc, _mm512_mul_round_ps(
                        diff, diff, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                }
                float err = _mm512_reduce_add_ps(acc);
                if (err < best_err) {
                    best_err = err;
                    best_d = dh;
                }
            }
            sr[g] = best_d;
        }
        /* codes block by block: chunk j (weights 16 j .. 16 j + 15 of the block) is nibble j of
         * the block's 16 words; weights past n are 0 (code 8, as the padding) */
        uint8_t *pr = packed + (size_t)r * rb;
        for (int b = 0; b < nb; b++) {
            __m512i word = _mm512_setzero_si512();
            for (int j = 0; j < 8; j++) {
                int e = b * CK_I4_BLOCK + 16 * j, rem = n - e;
                __m512 u = eight;
                if (rem > 0) {
                    __mmask16 k = ck_mask16(rem);
                    float d = ck_f16_to_f32(sr[e / group]), inv = d != 0 ? 1.0f / d : 0.0f;
                    u = ck_i4_codes16(_mm512_maskz_loadu_ps(k, wr + e), _mm512_set1_ps(inv));
                }
                word = _mm512_or_si512(word, _mm512_slli_epi32(_mm512_cvtps_epi32(u), 4 * j));
            }
            _mm512_storeu_si512((void *)(pr + (size_t)b * 64), word);
        }
    }
}
#endif

/* Rows of fp32 weights -> packed int4 rows and fp16 scales, through the widest kernel. */
static void ck_i4_quantize(const float *w, int rows, int n, int group, uint8_t *packed,
                           uint16_t *scales) {
#if CK_X86
    if (ck_isa >= CK_ISA_AVX512) {
        ck_i4_quantize_rows_avx512(w, rows, n, group, packed, scales);
        return;
    }
#endif
    ck_i4_quantize_rows(w, rows, n, group, packed, scales);
}

/* ---- int8 quantization ----------------------------------------------------------------------
 * quant.py's quantize_rows, bit for bit: per row s = max(max|w| / 127, 1e-12) and
 * q = clamp(round_half_even(w / s), -127, 127) (a true division, as torch's), from fp32 or bf16
 * rows (`bf16`). Returns 1 (and stops) at the first row holding NaN or Inf. */

static inline float ck_i8_load(const void *w, size_t i, int bf16) {
    return bf16 ? ck_bf16_to_f32(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

static int ck_i8_quantize_rows_scalar(const void *w, int rows, int n, int bf16, int8_t *q,
                                      float *scale) {
    for (int r = 0; r < rows; r++) {
        size_t o = (size_t)r * n;
        float m = 0;
        for (int i = 0; i < n; i++) {
            float a = fabsf(ck_i8_load(w, o + i, bf16));
            if (!(a <= 3.402823466e38f)) return 1;  /* NaN or Inf */
            if (a > m) m = a;
        }
        float s = m / 127.0f;
        s = s < 1e-12f ? 1e-12f : s;
        scale[r] = s;
        for (int i = 0; i < n; i++) {
            float u = nearbyintf(ck_i8_load(w, o + i, bf16) / s);
            q[o + i] = (int8_t)(u < -127 ? -127 : u > 127 ? 127 : u);
        }
    }
    return 0;
}

#if CK_X86
CK_AVX512 static inline __m512 ck_i8_load16(const void *w, size_t i, int bf16, __mmask16 k) {
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, (const uint16_t *)w + i)), 16));
    return _mm512_maskz_loadu_ps(k, (const float *)w + i);
}

CK_AVX512 static int ck_i8_quantize_rows_avx512(const void *w, int rows, int n, int bf16,
                                                int8_t *q, float *scale) {
    const __m512i ex = _mm512_set1_epi32(0x7f800000);
    for (int r = 0; r < rows; r++) {
        size_t o = (size_t)r * n;
        __m512 mx = _mm512_setzero_ps();
        __mmask16 bad = 0;
        for (int i = 0; i < n; i += 16) {
            __mmask16 k = ck_mask16(n - i);
            __m512 v = ck_i8_load16(w, o + i, bf16, k);
            bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), ex), ex);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
        }
        if (bad) return 1;
        float s = _mm512_reduce_max_ps(mx) / 127.0f;
        s = s < 1e-12f ? 1e-12f : s;
        scale[r] = s;
        __m512 sv = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
        for (int i = 0; i < n; i += 16) {
            __mmask16 k = ck_mask16(n - i);
            __m512 u = _mm512_roundscale_ps(_mm512_div_ps(ck_i8_load16(w, o + i, bf16, k), sv),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            u = _mm512_min_ps(_mm512_max_ps(u, lo), hi);
            _mm_mask_storeu_epi8(q + o + i, k, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(u)));
        }
    }
    return 0;
}
#endif

static int ck_i8_quantize(const void *w, int rows, int n, int bf16, int8_t *q, float *scale) {
#if CK_X86
    if (ck_isa >= CK_ISA_AVX512) return ck_i8_quantize_rows_avx512(w, rows, n, bf16, q, scale);
#endif
    return ck_i8_quantize_rows_scalar(w, rows, n, bf16, q, scale);
}

#endif
