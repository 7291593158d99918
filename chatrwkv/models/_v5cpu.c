/* RWKV v5 (5.0, 5.1, 5.2): one token in RNN mode on the CPU, in C (the twin of
 * `RWKV5._forward_one_torch`).
 *
 * `v5.py` settles the sub-versions at load time (decay and bonus expanded to [H, N]; 5.0 has
 * no gate), so one step serves all three. It prepares the weights with torch (fp32 vectors;
 * big matrices fp32, bf16, int8 with per-row scales or int4 with group scales, all row-major
 * [out, in]) and `v5_cpu.py` hands their addresses to `new_model`, keeping the tensors alive as
 * long as the model lives. `step` runs one token: it reads and updates the state tensors
 * (att_x [L, C], wkv [L, H, N, N], ffn_x [L, C]) in place and writes fp32 logits. Activations
 * stay fp32 whatever the weight dtype. Per layer, five phases run on the pool (_cpukern.h):
 * r, k, v and the gate; the WKV per head (_v56head.h, shared with v6); the output product; the
 * FFN key and receptance; the FFN value. The serial work between them is a few vector ops of
 * length C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpukern.h"
#include "_cpubind.h"
#include "_v56head.h"

#define CAPSULE "chatrwkv.v5cpu"

#define LN_EPS 1e-5f
#define LN_X_EPS 64e-5f  /* v5.py's LN_X_EPS: GroupNorm eps 1e-5 * head_size_divisor 8 ** 2 */

typedef struct {
    const float *ln1_w, *ln1_b, *att_mix /* [M, C]: r, k, v (, g) */, *decay, *bonus;
    const float *lnx_w, *lnx_b, *ln2_w, *ln2_b, *ffn_mix /* [2, C]: r, k */;
    CkMat R, K, V, G, O, fK, fR, fV;  /* G.w == NULL: no gate (5.0) */
} V5Layer;

typedef struct {
    int L, C, H, N, F, V;
    const void *emb;
    int emb_dtype;  /* CK_F32 or CK_BF16: rows with ln0 already folded in */
    const float *ln_out_w, *ln_out_b;
    CkMat head;
    V5Layer *layers;
    CkPool pool;
    /* scratch */
    float *buf, *x, *xx, *xr, *xk, *xv, *xg, *r, *k, *v, *g, *y, *fr, *fv, *hk;
    /* the WKV phase's inputs */
    float *S;
    const V5Layer *cur;
} V5Model;

/* torch.lerp(a, b, w) exactly as torch evaluates it (two forms, for accuracy near w = 1). */
static inline float lerp(float a, float b, float w) {
    return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

/* Head h: its channels' SiLU gate (when there is one), then the recurrence, GroupNorm and
 * gate (_v56head.h). */
static void v5_wkv_head(const CkPhase *ph, int h) {
    V5Model *m = (V5Model *)ph->ctx;
    const V5Layer *l = m->cur;
    int N = m->N, o = h * N;
    const float *g = NULL;
    if (l->G.w) {
        for (int i = o; i < o + N; i++) m->g[i] *= ck_sigmoid(m->g[i]);
        g = m->g + o;
    }
    v56_head(m->S + (size_t)h * N * N, m->r + o, m->k + o, m->v + o, l->decay + o,
             l->bonus + o, l->lnx_w + o, l->lnx_b + o, LN_X_EPS, g, m->y + o, N);
}

static void v5_step(V5Model *m, int token, float *att_x, float *wkv, float *ffn_x,
                    float *logits) {
    int C = m->C, H = m->H, N = m->N;
    CkPool *p = &m->pool;
    float *x = m->x, *xx = m->xx;
    if (m->emb_dtype == CK_F32) {
        memcpy(x, (const float *)m->emb + (size_t)token * C, C * sizeof(float));
    } else {
        const uint16_t *e = (const uint16_t *)m->emb + (size_t)token * C;
        for (int i = 0; i < C; i++) x[i] = ck_bf16_to_f32(e[i]);
    }
    for (int li = 0; li < m->L; li++) {
        const V5Layer *l = &m->layers[li];
        int gated = l->G.w != NULL;
        /* time mix: static token-shift mixes, then r, k, v (and the gate) */
        ck_layer_norm(x, l->ln1_w, l->ln1_b, xx, C, LN_EPS);
        float *prev = att_x + (size_t)li * C;
        const float *mr = l->att_mix, *mk = mr + C, *mv = mk + C, *mg = mv + C;
        for (int i = 0; i < C; i++) {
            m->xr[i] = lerp(prev[i], xx[i], mr[i]);
            m->xk[i] = lerp(prev[i], xx[i], mk[i]);
            m->xv[i] = lerp(prev[i], xx[i], mv[i]);
            if (gated) m->xg[i] = lerp(prev[i], xx[i], mg[i]);
            prev[i] = xx[i];
        }
        ck_phase_begin(p);
        ck_phase_add(p, &l->R, m->xr, m->r, EP_STORE);
        ck_phase_add(p, &l->K, m->xk, m->k, EP_STORE);
        ck_phase_add(p, &l->V, m->xv, m->v, EP_STORE);
        ck_run_phase(p, ck_phase_add(p, &l->G, m->xg, m->g, EP_STORE));  /* no gate: skipped */
        /* the WKV update, one chunk per head */
        m->S = wkv + (size_t)li * H * N * N;
        m->cur = l;
        p->phase.fn = v5_wkv_head;
        p->phase.ctx = m;
        ck_run_phase(p, H);
        ck_phase_begin(p);
        ck_run_phase(p, ck_phase_add(p, &l->O, m->y, x, EP_ADD));
        /* channel mix */
        ck_layer_norm(x, l->ln2_w, l->ln2_b, xx, C, LN_EPS);
        prev = ffn_x + (size_t)li * C;
        for (int i = 0; i < C; i++) {
            m->xr[i] = lerp(prev[i], xx[i], l->ffn_mix[i]);
            m->xk[i] = lerp(prev[i], xx[i], l->ffn_mix[C + i]);
            prev[i] = xx[i];
        }
        ck_ffn_gated(p, &l->fR, &l->fK, &l->fV, m->xr, m->xk, m->hk, m->fr, m->fv, x, C);
    }
    ck_layer_norm(x, m->ln_out_w, m->ln_out_b, xx, C, LN_EPS);
    ck_phase_begin(p);
    ck_run_phase(p, ck_phase_add(p, &m->head, xx, logits, EP_STORE));
}

/* ---- Python binding ----------------------------------------------------------------------- */

/* ck_parse_mat's description of the expected shape; None where `optional` (5.0's absent
 * gate). */
#define parse_mat ck_parse_mat_as

CK_MODEL_FREE(V5Model)

#define N_VECS 10
#define N_MATS 8

/* new_model(dims, emb, emb_dtype, ln_out_w, ln_out_b, head, layers, n_threads)
 * dims = (L, C, H, N, F, V); layers = one tuple per layer: 10 vector addresses (ln1 w/b,
 * time_mix r/k/v(/g) [M, C], decay w [H * N], bonus u [H * N], ln_x w/b, ln2 w/b, ffn
 * time_mix r/k [2, C]) then 8 matrices (receptance, key, value, gate or None, output, ffn key,
 * receptance, value). A gated layer's time_mix has the fourth row. */
static PyObject *py_new_model(PyObject *self, PyObject *args) {
    PyObject *dims, *head, *layers;
    unsigned long long emb, ln_w, ln_b;
    int emb_dtype, n_threads;
    if (!PyArg_ParseTuple(args, "O!KiKKOO!i", &PyTuple_Type, &dims, &emb, &emb_dtype, &ln_w,
                          &ln_b, &head, &PyList_Type, &layers, &n_threads))
        return NULL;
    V5Model *m = calloc(1, sizeof *m);
    if (!m) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(dims, "iiiiii", &m->L, &m->C, &m->H, &m->N, &m->F, &m->V)) goto fail;
    if (m->L < 1 || m->C < 1 || m->H < 1 || m->H * m->N != m->C || m->F < 1 || m->V < 1 ||
        PyList_GET_SIZE(layers) != m->L || (emb_dtype != CK_F32 && emb_dtype != CK_BF16) ||
        emb == 0 || !ln_w || !ln_b) {
        PyErr_SetString(PyExc_ValueError, "bad model description");
        goto fail;
    }
    if (!parse_mat(head, &m->head, m->V, m->C, 0)) goto fail;
    int C = m->C, F = m->F;
    m->emb = (const void *)(uintptr_t)emb;
    m->emb_dtype = emb_dtype;
    m->ln_out_w = (const float *)(uintptr_t)ln_w;
    m->ln_out_b = (const float *)(uintptr_t)ln_b;
    m->layers = calloc(m->L, sizeof(V5Layer));
    if (!m->layers) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < m->L; i++) {
        PyObject *t = PyList_GET_ITEM(layers, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != N_VECS + N_MATS) {
            PyErr_SetString(PyExc_ValueError, "bad layer description");
            goto fail;
        }
        V5Layer *l = &m->layers[i];
        const float **vecs[N_VECS] = {&l->ln1_w, &l->ln1_b, &l->att_mix, &l->decay, &l->bonus,
                                      &l->lnx_w, &l->lnx_b, &l->ln2_w, &l->ln2_b, &l->ffn_mix};
        for (int j = 0; j < N_VECS; j++) {
            *vecs[j] = ck_addr(t, j);
            if (!*vecs[j] && !PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a null vector address");
        }
        if (PyErr_Occurred()) goto fail;
        CkMat *mats[N_MATS] = {&l->R, &l->K, &l->V, &l->G, &l->O, &l->fK, &l->fR, &l->fV};
        const int outs[N_MATS] = {C, C, C, C, C, F, C, C}, ins[N_MATS] = {C, C, C, C, C, C, C, F};
        for (int j = 0; j < N_MATS; j++)
            if (!parse_mat(PyTuple_GET_ITEM(t, N_VECS + j), mats[j], outs[j], ins[j], j == 3))
                goto fail;
    }
    /* scratch: 13 vectors of C and hk of F */
    m->buf = calloc((size_t)13 * C + (size_t)F, sizeof(float));
    if (!m->buf) { PyErr_NoMemory(); goto fail; }
    float *q = m->buf;
    float **slots[] = {&m->x, &m->xx, &m->xr, &m->xk, &m->xv, &m->xg, &m->r, &m->k, &m->v,
                       &m->g, &m->y, &m->fr, &m->fv};
    for (size_t j = 0; j < sizeof slots / sizeof *slots; j++, q += C) *slots[j] = q;
    m->hk = q;
    ck_pool_start(&m->pool, n_threads);
    PyObject *cap = PyCapsule_New(m, CAPSULE, capsule_free);
    if (!cap) model_free(m);
    return cap;
fail:
    model_free(m);  /* the pool has not started */
    return NULL;
}

/* step(model, token, att_x, wkv, ffn_x, logits): addresses of contiguous fp32 tensors. */
static void v5_step_ptrs(V5Model *m, int token, void **p) {
    v5_step(m, token, p[0], p[1], p[2], p[3]);
}

CK_MODEL_BINDINGS(V5Model, 4, v5_step_ptrs)

static PyMethodDef methods[] = CK_METHODS(py_new_model, py_step, py_threads, py_pool);

CK_MODULE(_v5cpu, "RWKV v5 one-token step on the CPU.")
