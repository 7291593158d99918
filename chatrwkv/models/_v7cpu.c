/* RWKV v7 "Goose": one token in RNN mode on the CPU, in C (the twin of `RWKV7._forward_one`).
 *
 * `v7.py` prepares the weights with torch (fp32 vectors; big matrices fp32, bf16 or int8 with
 * per-row scales, all row-major [out, in]) and hands their addresses to `new_model`; it keeps
 * the tensors alive for as long as the model lives. `step` then runs one token: it reads and
 * updates the state tensors in place and writes fp32 logits. Per layer, five phases run on the
 * pool (_cpukern.h): r/k/v and the first LoRA halves; the second LoRA halves; the WKV update per
 * head with its GroupNorm; the output projection; the two FFN products. The serial work between
 * them is a few vector ops of length C.
 *
 * DeepEmbed (rwkv7a, `v7_de.py`): each token first forms its folded s_emb row of every layer
 * (s_emb[token] + ln0(emb[token]) @ s_emb_x^T, the products in phases of up to CK_MAX_TASKS
 * layers); in the channel mix the squared key activation is then scaled by
 * (x @ s1) @ S.view(D, D) @ s2 + s0, whose s2 product runs in the FFN key phase.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpukern.h"
#include "_cpubind.h"

#define CAPSULE "chatrwkv.v7cpu"

#define DECAY_SCALE 0.6065306597126334f  /* exp(-0.5), as v7.py */
#define LN_EPS 1e-5f
#define LN_X_EPS 64e-5f

typedef struct {
    const float *ln1_w, *ln1_b, *maa, *w0, *a0, *v0, *k_k, *k_a, *r_k, *ln_x_w, *ln_x_b;
    const float *ln2_w, *ln2_b, *ffn_x_k;
    CkMat R, K, V, O, fK, fV, w1, w2, a1, a2, v1, v2, g1, g2;
    /* DeepEmbed, when s_emb != NULL: s_emb [V, D*D] raw (CK_F32 or CK_BF16), s1 [D, C],
     * s0 [F], s_emb_x [D*D, C], s2 [F, D] */
    const void *s_emb;
    int s_emb_dtype;
    const float *s1, *s0;
    CkMat sx, s2;
} V7Layer;

typedef struct {
    int L, C, H, N, F, V;
    int D;  /* DeepEmbed rank (0: plain v7) */
    const void *emb;
    int emb_dtype;  /* CK_F32 or CK_BF16: the raw rows, ln0 applied as they are read */
    const float *ln0_w, *ln0_b, *ln_out_w, *ln_out_b;
    CkMat head;
    V7Layer *layers;
    CkPool pool;
    /* scratch */
    float *buf, *x, *xx, *mix, *r, *k, *v, *v_first, *hw, *ha, *hv, *hg, *w, *a, *vl, *g;
    float *kk, *b, *aneg, *y, *hk;
    /* DeepEmbed: folded rows [L, D*D], s1 x [D], S^T (s1 x) [D], the s2 product [F] */
    float *se, *ss, *st, *sc;
    /* the WKV phase's inputs */
    float *S;
    const V7Layer *cur;
} V7Model;

/* ---- the WKV update of one head --------------------------------------------------------- */

#if CK_X86
CK_AVX2 static float v7_row_avx2(float *S, const float *w, const float *b, const float *k,
                                 const float *r, float sa, float vi, int n) {
    __m256 vsa = _mm256_set1_ps(sa), vv = _mm256_set1_ps(vi), acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 s = _mm256_mul_ps(_mm256_loadu_ps(S + j), _mm256_loadu_ps(w + j));
        s = _mm256_fmadd_ps(vsa, _mm256_loadu_ps(b + j), s);
        s = _mm256_fmadd_ps(vv, _mm256_loadu_ps(k + j), s);
        _mm256_storeu_ps(S + j, s);
        acc = _mm256_fmadd_ps(s, _mm256_loadu_ps(r + j), acc);
    }
    float y = ck_hsum(acc);
    for (; j < n; j++) {
        S[j] = S[j] * w[j] + sa * b[j] + vi * k[j];
        y += S[j] * r[j];
    }
    return y;
}
#endif

static float v7_row_scalar(float *S, const float *w, const float *b, const float *k,
                           const float *r, float sa, float vi, int n) {
    float y = 0;
    for (int j = 0; j < n; j++) {
        S[j] = S[j] * w[j] + sa * b[j] + vi * k[j];
        y += S[j] * r[j];
    }
    return y;
}

/* Sums over a head (N = 64 values) in four interleaved partial sums: one running sum is a
 * chain of N dependent additions, which made these a third of the prefill's per-head work. */
static double v7_sum(const float *x, int n) {
    double s[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++) s[l] += x[i + l];
    for (; i < n; i++) s[0] += x[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* sum of (x - c)^2 */
static double v7_sumsq(const float *x, int n, double c) {
    double s[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++) s[l] += (x[i + l] - c) * (x[i + l] - c);
    for (; i < n; i++) s[0] += (x[i] - c) * (x[i] - c);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* sum of a b c (fp32, as the torch twin) */
static float v7_dot3(const float *a, const float *b, const float *c, int n) {
    float s[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++) s[l] += a[i + l] * b[i + l] * c[i + l];
    for (; i < n; i++) s[0] += a[i] * b[i] * c[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* A head's output after the recurrence, in place on y [N]: the GroupNorm (ln_x), the bonus
 * (r . (k * r_k)) v, times g. */
static void v7_head_tail(float *y, const float *r, const float *k, const float *v,
                         const float *g, const float *r_k, const float *ln_w, const float *ln_b,
                         int N) {
    double mean = v7_sum(y, N) / N, var = v7_sumsq(y, N, mean) / N;
    float inv = (float)(1.0 / sqrt(var + LN_X_EPS)), mu = (float)mean;
    float bonus = v7_dot3(r, k, r_k, N);
    for (int i = 0; i < N; i++) {
        float yi = (y[i] - mu) * inv * ln_w[i] + ln_b[i];
        y[i] = (yi + bonus * v[i]) * g[i];
    }
}

/* Head h: S = S diag(w) + (S a) b^T + v k^T, y = S r, GroupNorm, the r_k bonus, times g. */
static void v7_wkv_head(const CkPhase *ph, int h) {
    V7Model *m = (V7Model *)ph->ctx;
    const V7Layer *l = m->cur;
    int N = m->N, o = h * N;
    float *S = m->S + (size_t)h * N * N;
    const float *r = m->r + o, *w = m->w + o, *k = m->k + o, *v = m->v + o;
    const float *a = m->aneg + o, *b = m->b + o;
    float *y = m->y + o;
    for (int i = 0; i < N; i++) {
        float sa = ck_dot_f32(S + (size_t)i * N, a, N);
#if CK_X86
        if (ck_use_avx2) {
            y[i] = v7_row_avx2(S + (size_t)i * N, w, b, k, r, sa, v[i], N);
            continue;
        }
#endif
        y[i] = v7_row_scalar(S + (size_t)i * N, w, b, k, r, sa, v[i], N);
    }
    v7_head_tail(y, r, k, v, m->g + o, l->r_k + o, l->ln_x_w + o, l->ln_x_b + o, N);
}

#include "_v7wkv.h"

/* ---- DeepEmbed ---------------------------------------------------------------------------- */

/* Every layer's folded s_emb row of `token`: s_emb[token] + s_emb_x x0 (x0 = ln0(emb[token])). */
static void v7_de_rows(V7Model *m, int token, const float *x0) {
    CkPool *p = &m->pool;
    int DD = m->D * m->D, n = 0;
    ck_phase_begin(p);
    for (int li = 0; li < m->L; li++) {
        n = ck_phase_add(p, &m->layers[li].sx, x0, m->se + (size_t)li * DD, EP_STORE);
        if (p->phase.n_tasks == CK_MAX_TASKS) {
            ck_run_phase(p, n);
            ck_phase_begin(p);
            n = 0;
        }
    }
    if (p->phase.n_tasks) ck_run_phase(p, n);
    for (int li = 0; li < m->L; li++) {
        const V7Layer *l = &m->layers[li];
        float *se = m->se + (size_t)li * DD;
        if (l->s_emb_dtype == CK_F32) {
            const float *e = (const float *)l->s_emb + (size_t)token * DD;
            for (int j = 0; j < DD; j++) se[j] += e[j];
        } else {
            const uint16_t *e = (const uint16_t *)l->s_emb + (size_t)token * DD;
            for (int j = 0; j < DD; j++) se[j] += ck_bf16_to_f32(e[j]);
        }
    }
}

/* st = S^T (s1 x) for layer li, x = ln2's output: the input of the s2 product. */
static void v7_de_mix(V7Model *m, int li, const float *x) {
    const V7Layer *l = &m->layers[li];
    int D = m->D, C = m->C;
    const float *S = m->se + (size_t)li * D * D;
    for (int i = 0; i < D; i++) m->ss[i] = ck_dot_f32(l->s1 + (size_t)i * C, x, C);
    for (int j = 0; j < D; j++) m->st[j] = 0;
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) m->st[j] += m->ss[i] * S[(size_t)i * D + j];
}

/* ---- one token ---------------------------------------------------------------------------- */

/* Decay and in-context learning rate of C channels in place: w = exp(-DECAY_SCALE sigmoid(w0 +
 * w)), a = sigmoid(a0 + a); then the value residual v += (v_first - v) sigmoid(v0 + vl) where
 * v0 is given (layers after the first). AVX-512 lanes (ck_exp_avx512), the rest in scalar. */
#if CK_X86
CK_AVX512 static int v7_rates_avx512(float *w, float *a, const float *w0, const float *a0,
                                     float *v, const float *v_first, const float *v0,
                                     const float *vl, int C) {
    const __m512 scale = _mm512_set1_ps(-DECAY_SCALE);
    int i = 0;
    for (; i + 16 <= C; i += 16) {
        __m512 sw = ck_sigmoid_avx512(_mm512_add_ps(_mm512_loadu_ps(w0 + i),
                                                    _mm512_loadu_ps(w + i)));
        _mm512_storeu_ps(w + i, ck_exp_avx512(_mm512_mul_ps(scale, sw)));
        _mm512_storeu_ps(a + i, ck_sigmoid_avx512(_mm512_add_ps(_mm512_loadu_ps(a0 + i),
                                                                _mm512_loadu_ps(a + i))));
        if (v0) {
            __m512 vi = _mm512_loadu_ps(v + i);
            __m512 mix = ck_sigmoid_avx512(_mm512_add_ps(_mm512_loadu_ps(v0 + i),
                                                         _mm512_loadu_ps(vl + i)));
            _mm512_storeu_ps(v + i, _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(v_first + i), vi),
                                                    mix, vi));
        }
    }
    return i;
}
#endif

static void v7_rates(float *w, float *a, const float *w0, const float *a0, float *v,
                     const float *v_first, const float *v0, const float *vl, int C) {
    int i = 0;
#if CK_X86
    if (ck_isa >= CK_ISA_AVX512) i = v7_rates_avx512(w, a, w0, a0, v, v_first, v0, vl, C);
#endif
    for (; i < C; i++) {
        w[i] = expf(-DECAY_SCALE * ck_sigmoid(w0[i] + w[i]));
        a[i] = ck_sigmoid(a0[i] + a[i]);
        if (v0) v[i] += (v_first[i] - v[i]) * ck_sigmoid(v0[i] + vl[i]);
    }
}

static void v7_token_shift(float *prev, const float *xx, float *dx, int C) {
    for (int i = 0; i < C; i++) {
        dx[i] = prev[i] - xx[i];
        prev[i] = xx[i];
    }
}

static void v7_step(V7Model *m, int token, float *att_x, float *wkv, float *ffn_x,
                    float *logits) {
    int C = m->C, H = m->H, N = m->N;
    CkPool *p = &m->pool;
    float *x = m->x, *xx = m->xx, *dx = m->kk;  /* kk doubles as scratch before it is used */
    if (m->emb_dtype == CK_F32) {
        memcpy(xx, (const float *)m->emb + (size_t)token * C, C * sizeof(float));
    } else {
        const uint16_t *e = (const uint16_t *)m->emb + (size_t)token * C;
        for (int i = 0; i < C; i++) xx[i] = ck_bf16_to_f32(e[i]);
    }
    ck_layer_norm(xx, m->ln0_w, m->ln0_b, x, C, LN_EPS);
    if (m->D) v7_de_rows(m, token, x);
    for (int li = 0; li < m->L; li++) {
        const V7Layer *l = &m->layers[li];
        /* time mix: the six token-shift mixes, then r, k, v and the first LoRA halves */
        ck_layer_norm(x, l->ln1_w, l->ln1_b, xx, C, LN_EPS);
        v7_token_shift(att_x + (size_t)li * C, xx, dx, C);
        for (int s = 0; s < 6; s++) {
            const float *maa = l->maa + (size_t)s * C;
            float *out = m->mix + (size_t)s * C;
            for (int i = 0; i < C; i++) out[i] = xx[i] + dx[i] * maa[i];
        }
        const float *xr = m->mix, *xw = xr + C, *xk = xw + C, *xv = xk + C, *xa = xv + C,
                    *xg = xa + C;
        ck_phase_begin(p);
        ck_phase_add(p, &l->R, xr, m->r, EP_STORE);
        ck_phase_add(p, &l->K, xk, m->k, EP_STORE);
        ck_phase_add(p, &l->V, xv, m->v, EP_STORE);
        ck_phase_add(p, &l->w1, xw, m->hw, EP_TANH);
        ck_phase_add(p, &l->a1, xa, m->ha, EP_STORE);
        ck_phase_add(p, &l->g1, xg, m->hg, EP_SIGMOID);
        ck_run_phase(p, ck_phase_add(p, &l->v1, xv, m->hv, EP_STORE));
        ck_phase_begin(p);
        ck_phase_add(p, &l->w2, m->hw, m->w, EP_STORE);
        ck_phase_add(p, &l->a2, m->ha, m->a, EP_STORE);
        ck_phase_add(p, &l->g2, m->hg, m->g, EP_STORE);
        ck_run_phase(p, ck_phase_add(p, &l->v2, m->hv, m->vl, EP_STORE));
        /* decay, in-context learning rate, value residual, normalized key */
        if (li == 0) memcpy(m->v_first, m->v, C * sizeof(float));
        v7_rates(m->w, m->a, l->w0, l->a0, m->v, m->v_first, li ? l->v0 : NULL, m->vl, C);
        for (int h = 0; h < H; h++) {  /* k becomes k' in place */
            int o = h * N;
            v7s_prep(m->k + o, m->a + o, l->k_k + o, l->k_a + o, N, m->kk + o, m->k + o,
                     m->aneg + o, m->b + o);
        }
        /* the WKV update, one chunk per head */
        m->S = wkv + (size_t)li * H * N * N;
        m->cur = l;
        p->phase.fn = v7_wkv_head;
        p->phase.ctx = m;
        ck_run_phase(p, H);
        ck_phase_begin(p);
        ck_run_phase(p, ck_phase_add(p, &l->O, m->y, x, EP_ADD));
        /* channel mix */
        ck_layer_norm(x, l->ln2_w, l->ln2_b, xx, C, LN_EPS);
        v7_token_shift(ffn_x + (size_t)li * C, xx, dx, C);
        if (l->s_emb) v7_de_mix(m, li, xx);
        for (int i = 0; i < C; i++) xx[i] += dx[i] * l->ffn_x_k[i];
        ck_phase_begin(p);
        if (l->s_emb) ck_phase_add(p, &l->s2, m->st, m->sc, EP_STORE);
        ck_run_phase(p, ck_phase_add(p, &l->fK, xx, m->hk, EP_RELU_SQ));
        if (l->s_emb)
            for (int i = 0; i < m->F; i++) m->hk[i] *= m->sc[i] + l->s0[i];
        ck_phase_begin(p);
        ck_run_phase(p, ck_phase_add(p, &l->fV, m->hk, x, EP_ADD));
    }
    ck_layer_norm(x, m->ln_out_w, m->ln_out_b, xx, C, LN_EPS);
    ck_phase_begin(p);
    ck_run_phase(p, ck_phase_add(p, &m->head, xx, logits, EP_STORE));
}

/* ---- Python binding ----------------------------------------------------------------------- */

/* None (an absent LoRA), or ck_parse_mat's (address, scale address, dtype, out, in). */
static int parse_mat(PyObject *o, CkMat *m) {
    if (o != Py_None) return ck_parse_mat(o, m);
    memset(m, 0, sizeof *m);
    return 1;
}

CK_MODEL_FREE(V7Model)

#define N_VECS 14
#define N_MATS 14

/* A layer's DeepEmbed item: None, or (D, s_emb, s_emb dtype, s1, s0, s_emb_x, s2). */
static int parse_de(PyObject *o, V7Layer *l, int *D) {
    if (o == Py_None) return 1;
    unsigned long long s_emb, s1, s0;
    PyObject *sx, *s2;
    int d;
    if (!PyArg_ParseTuple(o, "iKiKKOO", &d, &s_emb, &l->s_emb_dtype, &s1, &s0, &sx, &s2) ||
        !ck_parse_mat(sx, &l->sx) || !ck_parse_mat(s2, &l->s2))
        return 0;
    l->s_emb = (const void *)(uintptr_t)s_emb;
    l->s1 = (const float *)(uintptr_t)s1;
    l->s0 = (const float *)(uintptr_t)s0;
    if (d < 1 || (*D && d != *D) || !l->s_emb || !l->s1 || !l->s0 || l->sx.out != d * d ||
        l->s2.in != d || (l->s_emb_dtype != CK_F32 && l->s_emb_dtype != CK_BF16)) {
        PyErr_SetString(PyExc_ValueError, "bad DeepEmbed description");
        return 0;
    }
    *D = d;
    return 1;
}

/* new_model(dims, emb, emb_dtype, ln0_w, ln0_b, ln_out_w, ln_out_b, head, layers, n_threads)
 * dims = (L, C, H, N, F, V); layers = one tuple per layer: 14 vector addresses then 14 matrices
 * (R, K, V, O, ffn K, ffn V, w1, w2, a1, a2, v1, v2, g1, g2), then the DeepEmbed item. */
static PyObject *py_new_model(PyObject *self, PyObject *args) {
    PyObject *dims, *head, *layers;
    unsigned long long emb, ln0_w, ln0_b, ln_w, ln_b;
    int emb_dtype, n_threads;
    if (!PyArg_ParseTuple(args, "O!KiKKKKOO!i", &PyTuple_Type, &dims, &emb, &emb_dtype, &ln0_w,
                          &ln0_b, &ln_w, &ln_b, &head, &PyList_Type, &layers, &n_threads))
        return NULL;
    V7Model *m = calloc(1, sizeof *m);
    if (!m) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(dims, "iiiiii", &m->L, &m->C, &m->H, &m->N, &m->F, &m->V) ||
        !parse_mat(head, &m->head))
        goto fail;
    if (m->L < 1 || m->C < 1 || m->H * m->N != m->C || PyList_GET_SIZE(layers) != m->L ||
        (emb_dtype != CK_F32 && emb_dtype != CK_BF16)) {
        PyErr_SetString(PyExc_ValueError, "bad model description");
        goto fail;
    }
    m->emb = (const void *)(uintptr_t)emb;
    m->emb_dtype = emb_dtype;
    m->ln0_w = (const float *)(uintptr_t)ln0_w;
    m->ln0_b = (const float *)(uintptr_t)ln0_b;
    m->ln_out_w = (const float *)(uintptr_t)ln_w;
    m->ln_out_b = (const float *)(uintptr_t)ln_b;
    m->layers = calloc(m->L, sizeof(V7Layer));
    if (!m->layers) { PyErr_NoMemory(); goto fail; }
    int maxd = m->C;
    for (int i = 0; i < m->L; i++) {
        PyObject *t = PyList_GET_ITEM(layers, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != N_VECS + N_MATS + 1) {
            PyErr_SetString(PyExc_ValueError, "bad layer description");
            goto fail;
        }
        V7Layer *l = &m->layers[i];
        const float **vecs[N_VECS] = {&l->ln1_w, &l->ln1_b, &l->maa, &l->w0, &l->a0, &l->v0,
                                      &l->k_k, &l->k_a, &l->r_k, &l->ln_x_w, &l->ln_x_b,
                                      &l->ln2_w, &l->ln2_b, &l->ffn_x_k};
        for (int j = 0; j < N_VECS; j++) *vecs[j] = ck_addr(t, j);
        CkMat *mats[N_MATS] = {&l->R, &l->K, &l->V, &l->O, &l->fK, &l->fV, &l->w1, &l->w2,
                               &l->a1, &l->a2, &l->v1, &l->v2, &l->g1, &l->g2};
        for (int j = 0; j < N_MATS; j++)
            if (!parse_mat(PyTuple_GET_ITEM(t, N_VECS + j), mats[j])) goto fail;
        if (!parse_de(PyTuple_GET_ITEM(t, N_VECS + N_MATS), l, &m->D)) goto fail;
        if (PyErr_Occurred()) goto fail;
        if (l->fK.out > maxd) maxd = l->fK.out;
        if (l->w1.out > maxd) maxd = l->w1.out;
        if (l->a1.out > maxd) maxd = l->a1.out;
        if (l->v1.out > maxd) maxd = l->v1.out;
        if (l->g1.out > maxd) maxd = l->g1.out;
    }
    for (int i = 0; i < m->L; i++) {
        const V7Layer *l = &m->layers[i];
        if ((m->D != 0) != (l->s_emb != NULL) || (l->s_emb && l->s2.out != l->fK.out)) {
            PyErr_SetString(PyExc_ValueError, "bad DeepEmbed description (some layers only?)");
            goto fail;
        }
    }
    /* scratch: 6C mixes + 16 vectors of C + hk, each slot maxd long; DeepEmbed's rows */
    int C = m->C;
    size_t de = m->D ? (size_t)m->L * m->D * m->D + 2 * (size_t)m->D + m->F : 0;
    m->buf = calloc((size_t)(22 + 6) * maxd + (size_t)m->F + 64 + de, sizeof(float));
    if (!m->buf) { PyErr_NoMemory(); goto fail; }
    float *q = m->buf;
    float **slots[] = {&m->x, &m->xx, &m->r, &m->k, &m->v, &m->v_first, &m->hw, &m->ha, &m->hv,
                       &m->hg, &m->w, &m->a, &m->vl, &m->g, &m->kk, &m->b, &m->aneg, &m->y};
    for (size_t j = 0; j < sizeof slots / sizeof *slots; j++, q += maxd) *slots[j] = q;
    m->mix = q;
    q += (size_t)6 * C;
    m->hk = q;
    if (m->D) {
        m->se = m->hk + m->F;
        m->ss = m->se + (size_t)m->L * m->D * m->D;
        m->st = m->ss + m->D;
        m->sc = m->st + m->D;
    }
    ck_pool_start(&m->pool, n_threads);
    PyObject *cap = PyCapsule_New(m, CAPSULE, capsule_free);
    if (!cap) model_free(m);
    return cap;
fail:
    model_free(m);  /* the pool has not started */
    return NULL;
}

/* step(model, token, att_x, wkv, ffn_x, logits): addresses of contiguous fp32 tensors. */
static void v7_step_ptrs(V7Model *m, int token, void **p) {
    v7_step(m, token, p[0], p[1], p[2], p[3]);
}

CK_MODEL_BINDINGS(V7Model, 4, v7_step_ptrs)

/* time_mix_seq(S, (r, w, k, v, a, g), (k_k, k_a, r_k, ln_x_w, ln_x_b), y, B, T, H, N,
 * threads): _v7wkv.h over T tokens; addresses of contiguous fp32 tensors (S [B, H, N, N] in
 * place; the six inputs and y [B, T, H * N]; the five vectors [H * N]). */
#define V7S_MIN_PARALLEL_FLOPS 2e5  /* ~20 us on one core */
static PyObject *py_time_mix_seq(PyObject *self, PyObject *args) {
    unsigned long long S, in[6], vec[5], y;
    int B, T, H, N, threads;
    if (!PyArg_ParseTuple(args, "K(KKKKKK)(KKKKK)Kiiiii", &S, &in[0], &in[1], &in[2], &in[3],
                          &in[4], &in[5], &vec[0], &vec[1], &vec[2], &vec[3], &vec[4], &y, &B,
                          &T, &H, &N, &threads))
        return NULL;
    int null = !S || !y;
    for (int i = 0; i < 6; i++) null |= !in[i];
    for (int i = 0; i < 5; i++) null |= !vec[i];
    if (null) return PyErr_Format(PyExc_ValueError, "time_mix_seq: a null address");
    if (B < 1 || T < 1 || H < 1 || N < 1)
        return PyErr_Format(PyExc_ValueError, "time_mix_seq: bad shape");
#define F_(a) ((const float *)(uintptr_t)(a))
    V7Seq q = {(float *)(uintptr_t)S, F_(in[0]), F_(in[1]), F_(in[2]), F_(in[3]), F_(in[4]),
               F_(in[5]), F_(vec[0]), F_(vec[1]), F_(vec[2]), F_(vec[3]), F_(vec[4]),
               (float *)(uintptr_t)y, B, T, H, N};
#undef F_
    Py_BEGIN_ALLOW_THREADS
    int chunks = B * H;
    CkPool *pool = ck_pool_begin(threads < chunks ? threads : chunks,
                                 5.0 * N * N * (double)T * chunks, V7S_MIN_PARALLEL_FLOPS);
    ck_run_on(pool, v7s_head, &q, chunks);
    ck_pool_end(pool);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    CK_METHOD_LIST(py_new_model, py_step, py_threads, py_pool),
    {"time_mix_seq", py_time_mix_seq, METH_VARARGS,
     "The time mix's recurrence and its per-head work over a sequence (_v7wkv.h)."},
    {NULL, NULL, 0, NULL},
};

CK_MODULE(_v7cpu, "RWKV v7 one-token step on the CPU.")
