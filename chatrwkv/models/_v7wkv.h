/* RWKV v7's WKV recurrence over a whole sequence (the sequence path: prefill), in C, with
 * what surrounds it in the time mix: the normalized key and in-context scaling before (as the
 * one-token step forms them), the GroupNorm, bonus and gate after (v7_head_tail).
 *
 * For each batch row and head, token by token, exactly the official recurrence (the `rwkv`
 * package's RWKV_x070 torch loop and CUDA kernel; v7.py's `wkv_loop` is its torch twin):
 *     S = S diag(w) + (S a) b^T + v k^T,    y = S r
 * with S [N, N] (value index i, key index j), w the decay itself, a = -kk, b = kk * a.
 *
 * Why not v7.py's chunked form: in torch it is dozens of small operations a chunk (measured on
 * the 2-core development machine: ~30% of a 0.1B prefill), while the recurrence itself is about
 * 5 N^2 flops a token and head, ~1% of the token's matrix products. Here the state of one head
 * is held transposed (ST[j][i] = S[i][j], 16 KiB for N = 64, in L1), so both products S a and
 * S r are vertical sums of rows scaled by one broadcast scalar: no horizontal reductions. A
 * token is two passes over ST: sa = sum_j a_j ST[j]; then ST[j] = ST[j] w_j + b_j sa + k_j v
 * and y += r_j ST[j].
 *
 * Heads (and batch rows) are the pool's chunks. Levels: AVX-512 (N a multiple of 16), AVX2
 * (N a multiple of 8), scalar for any N; every lane sums in the scalar loop's order, so the
 * levels differ only by fused vs separate multiply-adds.
 */
#ifndef CHATRWKV_V7WKV_H
#define CHATRWKV_V7WKV_H

typedef struct {
    float *S;        /* [B, H, N, N], updated in place */
    /* [B, T, H * N]: r; w, the decay itself; k, the key before its in-context scaling; v
     * after the value residual; a, the in-context learning rate (sigmoid applied); g */
    const float *r, *w, *k, *v, *a, *g;
    const float *k_k, *k_a, *r_k, *ln_w, *ln_b;  /* [H * N] */
    float *y;        /* [B, T, H * N]: the time mix's input to its output projection */
    int B, T, H, N;
} V7Seq;

/* A token's per-head inputs of the recurrence (here and in the one-token step, v7_step):
 * kk = normalize(k * k_k), k' = k (1 + (a - 1) k_a), a' = -kk, b = kk a. kk is scratch (left
 * unnormalized); kp may be k itself. */
static void v7s_prep(const float *k, const float *a, const float *k_k, const float *k_a,
                     int N, float *kk, float *kp, float *an, float *b) {
    for (int j = 0; j < N; j++) kk[j] = k[j] * k_k[j];
    float nrm = (float)sqrt(v7_sumsq(kk, N, 0.0));
    float inv = 1.0f / (nrm > 1e-12f ? nrm : 1e-12f);
    for (int j = 0; j < N; j++) {
        float kn = kk[j] * inv;
        kp[j] = k[j] * (1 + (a[j] - 1) * k_a[j]);
        an[j] = -kn;
        b[j] = kn * a[j];
    }
}

static void v7s_token_scalar(float *ST, const float *r, const float *w, const float *k,
                             const float *v, const float *a, const float *b, float *y, int N,
                             float *sa) {
    for (int i = 0; i < N; i++) sa[i] = 0, y[i] = 0;
    for (int j = 0; j < N; j++) {
        const float *row = ST + (size_t)j * N;
        for (int i = 0; i < N; i++) sa[i] += a[j] * row[i];
    }
    for (int j = 0; j < N; j++) {
        float *row = ST + (size_t)j * N;
        for (int i = 0; i < N; i++) {
            float s = row[i] * w[j] + b[j] * sa[i] + k[j] * v[i];
            row[i] = s;
            y[i] += r[j] * s;
        }
    }
}

#if CK_X86
/* NV = N / 16 vectors a row; a compile-time constant where it is inlined (N = 64: all of sa,
 * v and y in 12 registers). */
__attribute__((always_inline)) CK_AVX512 static inline void v7s_token_avx512(
    float *ST, const float *r, const float *w, const float *k, const float *v, const float *a,
    const float *b, float *y, const int NV) {
    const int N = NV * 16;
    __m512 sa[16], vv[16], yy[16];
    for (int u = 0; u < NV; u++) {
        sa[u] = _mm512_setzero_ps();
        yy[u] = _mm512_setzero_ps();
        vv[u] = _mm512_loadu_ps(v + 16 * u);
    }
    for (int j = 0; j < N; j++) {
        const float *row = ST + (size_t)j * N;
        __m512 aj = _mm512_set1_ps(a[j]);
        for (int u = 0; u < NV; u++) sa[u] = _mm512_fmadd_ps(aj, _mm512_loadu_ps(row + 16 * u), sa[u]);
    }
    for (int j = 0; j < N; j++) {
        float *row = ST + (size_t)j * N;
        __m512 wj = _mm512_set1_ps(w[j]), bj = _mm512_set1_ps(b[j]);
        __m512 kj = _mm512_set1_ps(k[j]), rj = _mm512_set1_ps(r[j]);
        for (int u = 0; u < NV; u++) {
            __m512 s = _mm512_mul_ps(_mm512_loadu_ps(row + 16 * u), wj);
            s = _mm512_fmadd_ps(bj, sa[u], s);
            s = _mm512_fmadd_ps(kj, vv[u], s);
            _mm512_storeu_ps(row + 16 * u, s);
            yy[u] = _mm512_fmadd_ps(rj, s, yy[u]);
        }
    }
    for (int u = 0; u < NV; u++) _mm512_storeu_ps(y + 16 * u, yy[u]);
}

CK_AVX512 static void v7s_token_avx512_64(float *ST, const float *r, const float *w,
                                          const float *k, const float *v, const float *a,
                                          const float *b, float *y) {
    v7s_token_avx512(ST, r, w, k, v, a, b, y, 4);
}

CK_AVX512 static void v7s_token_avx512_n(float *ST, const float *r, const float *w,
                                         const float *k, const float *v, const float *a,
                                         const float *b, float *y, int NV) {
    v7s_token_avx512(ST, r, w, k, v, a, b, y, NV);
}

CK_AVX2 static void v7s_token_avx2(float *ST, const float *r, const float *w, const float *k,
                                   const float *v, const float *a, const float *b, float *y,
                                   int NV) {
    const int N = NV * 8;
    __m256 sa[32], yy[32];
    for (int u = 0; u < NV; u++) sa[u] = yy[u] = _mm256_setzero_ps();
    for (int j = 0; j < N; j++) {
        const float *row = ST + (size_t)j * N;
        __m256 aj = _mm256_set1_ps(a[j]);
        for (int u = 0; u < NV; u++) sa[u] = _mm256_fmadd_ps(aj, _mm256_loadu_ps(row + 8 * u), sa[u]);
    }
    for (int j = 0; j < N; j++) {
        float *row = ST + (size_t)j * N;
        __m256 wj = _mm256_set1_ps(w[j]), bj = _mm256_set1_ps(b[j]);
        __m256 kj = _mm256_set1_ps(k[j]), rj = _mm256_set1_ps(r[j]);
        for (int u = 0; u < NV; u++) {
            __m256 s = _mm256_mul_ps(_mm256_loadu_ps(row + 8 * u), wj);
            s = _mm256_fmadd_ps(bj, sa[u], s);
            s = _mm256_fmadd_ps(kj, _mm256_loadu_ps(v + 8 * u), s);
            _mm256_storeu_ps(row + 8 * u, s);
            yy[u] = _mm256_fmadd_ps(rj, s, yy[u]);
        }
    }
    for (int u = 0; u < NV; u++) _mm256_storeu_ps(y + 8 * u, yy[u]);
}
#endif

/* Chunk = one (batch row, head): the head's state transposed into scratch, T tokens, back. */
static void v7s_head(const CkPhase *ph, int chunk) {
    const V7Seq *q = (const V7Seq *)ph->ctx;
    int N = q->N, C = q->H * N, bi = chunk / q->H, h = chunk % q->H, hn = h * N;
    float *S = q->S + (size_t)chunk * N * N;
    float *ST = aligned_alloc(64, ((size_t)N * N * sizeof(float) + 63) / 64 * 64 + 64);
    float *tmp = malloc(sizeof(float) * 5 * (size_t)N);
    if (!ST || !tmp) abort();
    float *sa = tmp, *kk = tmp + N, *kp = tmp + 2 * N, *an = tmp + 3 * N, *b = tmp + 4 * N;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) ST[(size_t)j * N + i] = S[(size_t)i * N + j];
#if CK_X86
    int level = ck_isa >= CK_ISA_AVX512 && N % 16 == 0 && N <= 256 ? 2
                : ck_isa >= CK_ISA_AVX2 && N % 8 == 0 && N <= 256 ? 1 : 0;
#else
    int level = 0;
#endif
    for (int t = 0; t < q->T; t++) {
        size_t o = ((size_t)bi * q->T + t) * C + (size_t)hn;
        const float *r = q->r + o, *w = q->w + o, *v = q->v + o;
        float *y = q->y + o;
        v7s_prep(q->k + o, q->a + o, q->k_k + hn, q->k_a + hn, N, kk, kp, an, b);
#if CK_X86
        if (level == 2 && N == 64) v7s_token_avx512_64(ST, r, w, kp, v, an, b, y);
        else if (level == 2) v7s_token_avx512_n(ST, r, w, kp, v, an, b, y, N / 16);
        else if (level == 1) v7s_token_avx2(ST, r, w, kp, v, an, b, y, N / 8);
        else
#endif
            v7s_token_scalar(ST, r, w, kp, v, an, b, y, N, sa);
        v7_head_tail(y, r, kp, v, q->g + o, q->r_k + hn, q->ln_w + hn, q->ln_b + hn, N);
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) S[(size_t)i * N + j] = ST[(size_t)j * N + i];
    free(tmp);
    free(ST);
}

#endif /* CHATRWKV_V7WKV_H */
