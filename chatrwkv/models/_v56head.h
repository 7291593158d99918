/* The WKV update of one head for RWKV v5 and v6 in RNN mode (include after _cpukern.h): the
 * same recurrence in both (v5 with a decay fixed per layer, v6 with one computed per token),
 * so _v5cpu.c and _v6cpu.c share it. Per head, with the state S [N_k, N_v] as the official
 * package holds it, w the decay (in (0, 1)) and u the bonus along the key dimension:
 *
 *     y = r (diag(u) k^T v + S)        S <- diag(w) S + k^T v
 *
 * then the head's GroupNorm (ln_x) and, where the model has one, the gate. Row i of S is key
 * channel i: y += r_i S_i, then S_i = w_i S_i + k_i v, one pass over the row.
 */
#ifndef CHATRWKV_V56HEAD_H
#define CHATRWKV_V56HEAD_H

#if CK_X86
CK_AVX2 static void v56_row_avx2(float *S, float *y, const float *v, float ri, float wi,
                                 float ki, int n) {
    __m256 vr = _mm256_set1_ps(ri), vw = _mm256_set1_ps(wi), vk = _mm256_set1_ps(ki);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 s = _mm256_loadu_ps(S + j);
        _mm256_storeu_ps(y + j, _mm256_fmadd_ps(vr, s, _mm256_loadu_ps(y + j)));
        _mm256_storeu_ps(S + j, _mm256_fmadd_ps(vk, _mm256_loadu_ps(v + j),
                                                _mm256_mul_ps(s, vw)));
    }
    for (; j < n; j++) {
        y[j] += ri * S[j];
        S[j] = S[j] * wi + ki * v[j];
    }
}
#endif

static void v56_row_scalar(float *S, float *y, const float *v, float ri, float wi, float ki,
                           int n) {
    for (int j = 0; j < n; j++) {
        y[j] += ri * S[j];
        S[j] = S[j] * wi + ki * v[j];
    }
}

/* One head of N channels: S [N, N] advanced in place, y [N] written: the recurrence's output,
 * GroupNorm with weight/bias ln_w/ln_b (eps), times g where g is not NULL. */
static void v56_head(float *S, const float *r, const float *k, const float *v, const float *w,
                     const float *u, const float *ln_w, const float *ln_b, float eps,
                     const float *g, float *y, int N) {
    float bonus = 0;
    for (int i = 0; i < N; i++) bonus += r[i] * u[i] * k[i];
    for (int j = 0; j < N; j++) y[j] = bonus * v[j];
    for (int i = 0; i < N; i++) {
#if CK_X86
        if (ck_use_avx2) {
            v56_row_avx2(S + (size_t)i * N, y, v, r[i], w[i], k[i], N);
            continue;
        }
#endif
        v56_row_scalar(S + (size_t)i * N, y, v, r[i], w[i], k[i], N);
    }
    double mean = 0, var = 0;
    for (int j = 0; j < N; j++) mean += y[j];
    mean /= N;
    for (int j = 0; j < N; j++) var += (y[j] - mean) * (y[j] - mean);
    var /= N;
    float inv = (float)(1.0 / sqrt(var + eps)), mu = (float)mean;
    for (int j = 0; j < N; j++) {
        float yj = (y[j] - mu) * inv * ln_w[j] + ln_b[j];
        y[j] = g ? yj * g[j] : yj;
    }
}

#endif /* CHATRWKV_V56HEAD_H */
