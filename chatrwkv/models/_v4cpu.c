/* RWKV v4: one token in RNN mode on the CPU, in C (the twin of `RWKV4._forward_one_torch`).
 *
 * `v4.py` prepares the weights with torch (fp32 vectors; big matrices fp32, bf16 or int8 with
 * per-row scales, all row-major [out, in]) and `v4_cpu.py` hands their addresses to
 * `new_model`, keeping the tensors alive as long as the model lives. `step` runs one token: it
 * reads and updates the five [L, C] fp32 state tensors in place and writes fp32 logits.
 * Activations stay fp32 throughout, whatever the weight dtype. Per layer, five phases run on the
 * pool (_cpukern.h): k/v/r; the WKV over channel chunks (v4 has no heads: every channel is its
 * own recurrence); the output product; the FFN key and receptance; the FFN value. The serial
 * work between them is a few vector ops of length C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpukern.h"
#include "_cpubind.h"

#define CAPSULE "chatrwkv.v4cpu"

#define LN_EPS 1e-5f
#define WKV_CHUNK 128  /* channels per WKV chunk: a few microseconds of expf each */
#define EMB_F16 3      /* fp16 embedding rows (an fp32 model keeps a 16-bit file's table) */

typedef struct {
    const float *ln1_w, *ln1_b, *mix_k, *mix_v, *mix_r, *decay, *first;
    const float *ln2_w, *ln2_b, *fmix_k, *fmix_r;
    CkMat K, V, R, O, fK, fR, fV;
} V4Layer;

typedef struct {
    int L, C, F, V;
    const void *emb;
    int emb_dtype;  /* CK_F32, CK_BF16 or EMB_F16 */
    const float *ln_out_w, *ln_out_b;
    CkMat head;
    V4Layer *layers;
    CkPool pool;
    /* scratch */
    float *buf, *x, *xx, *xk, *xv, *xr, *k, *v, *r, *y, *fr, *hk;
    /* the WKV phase's state rows */
    float *aa, *bb, *pp;
    const V4Layer *cur;
} V4Model;

/* torch.lerp(a, b, w) exactly as torch evaluates it (two forms, for accuracy near w = 1). */
static inline float lerp(float a, float b, float w) {
    return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

/* Channels [c0, c1) of the stabilised WKV: the output times r, and the state update, in the
 * order of the torch twin (aa, bb: numerator and denominator over exp(pp)). */
static void v4_wkv_chunk(const CkPhase *ph, int chunk) {
    V4Model *m = (V4Model *)ph->ctx;
    const V4Layer *l = m->cur;
    int c0 = chunk * WKV_CHUNK, c1 = c0 + WKV_CHUNK;
    if (c1 > m->C) c1 = m->C;
    float *aa = m->aa, *bb = m->bb, *pp = m->pp;
    for (int i = c0; i < c1; i++) {
        float k = m->k[i], v = m->v[i];
        float ww = l->first[i] + k;
        float p = pp[i] > ww ? pp[i] : ww;
        float e1 = expf(pp[i] - p), e2 = expf(ww - p);
        m->y[i] = m->r[i] * ((e1 * aa[i] + e2 * v) / (e1 * bb[i] + e2));
        ww = l->decay[i] + pp[i];
        p = ww > k ? ww : k;
        e1 = expf(ww - p);
        e2 = expf(k - p);
        aa[i] = aa[i] * e1 + e2 * v;
        bb[i] = bb[i] * e1 + e2;
        pp[i] = p;
    }
}

static void v4_step(V4Model *m, int token, float *att_x, float *att_num, float *att_den,
                    float *att_max, float *ffn_x, float *logits) {
    int C = m->C;
    CkPool *p = &m->pool;
    float *x = m->x, *xx = m->xx, *xk = m->xk, *xv = m->xv, *xr = m->xr;
    if (m->emb_dtype == CK_F32) {
        memcpy(x, (const float *)m->emb + (size_t)token * C, C * sizeof(float));
    } else {
        const uint16_t *e = (const uint16_t *)m->emb + (size_t)token * C;
        for (int i = 0; i < C; i++)
            x[i] = m->emb_dtype == CK_BF16 ? ck_bf16_to_f32(e[i]) : ck_f16_to_f32(e[i]);
    }
    for (int li = 0; li < m->L; li++) {
        const V4Layer *l = &m->layers[li];
        size_t o = (size_t)li * C;
        /* time mix: token shift, then k, v, r in one phase */
        ck_layer_norm(x, l->ln1_w, l->ln1_b, xx, C, LN_EPS);
        float *sx = att_x + o;
        for (int i = 0; i < C; i++) {
            xk[i] = lerp(sx[i], xx[i], l->mix_k[i]);
            xv[i] = lerp(sx[i], xx[i], l->mix_v[i]);
            xr[i] = lerp(sx[i], xx[i], l->mix_r[i]);
            sx[i] = xx[i];
        }
        ck_phase_begin(p);
        ck_phase_add(p, &l->K, xk, m->k, EP_STORE);
        ck_phase_add(p, &l->V, xv, m->v, EP_STORE);
        ck_run_phase(p, ck_phase_add(p, &l->R, xr, m->r, EP_SIGMOID));
        m->aa = att_num + o;
        m->bb = att_den + o;
        m->pp = att_max + o;
        m->cur = l;
        p->phase.fn = v4_wkv_chunk;
        p->phase.ctx = m;
        ck_run_phase(p, (C + WKV_CHUNK - 1) / WKV_CHUNK);
        ck_phase_begin(p);
        ck_run_phase(p, ck_phase_add(p, &l->O, m->y, x, EP_ADD));
        /* channel mix: x += sigmoid(R xr) * (V relu(K xk)^2) */
        ck_layer_norm(x, l->ln2_w, l->ln2_b, xx, C, LN_EPS);
        sx = ffn_x + o;
        for (int i = 0; i < C; i++) {
            xk[i] = lerp(sx[i], xx[i], l->fmix_k[i]);
            xr[i] = lerp(sx[i], xx[i], l->fmix_r[i]);
            sx[i] = xx[i];
        }
        ck_ffn_gated(p, &l->fR, &l->fK, &l->fV, xr, xk, m->hk, m->fr, m->y, x, C);
    }
    ck_layer_norm(x, m->ln_out_w, m->ln_out_b, xx, C, LN_EPS);
    ck_phase_begin(p);
    ck_run_phase(p, ck_phase_add(p, &m->head, xx, logits, EP_STORE));
}

/* ---- Python binding ----------------------------------------------------------------------- */

/* ck_parse_mat's description of the expected [out, in] shape. */
static int parse_mat(PyObject *o, CkMat *m, int out, int in) {
    return ck_parse_mat_as(o, m, out, in, 0);
}

CK_MODEL_FREE(V4Model)

#define N_VECS 11
#define N_MATS 7

/* new_model(dims, emb, emb_dtype, ln_out_w, ln_out_b, head, layers, n_threads)
 * dims = (L, C, F, V); layers = one tuple per layer: 11 vector addresses (ln1 w/b, time mix
 * k/v/r, -exp(time_decay), time_first, ln2 w/b, ffn time mix k/r) then 7 matrices (att key,
 * value, receptance, output, ffn key, receptance, value). */
static PyObject *py_new_model(PyObject *self, PyObject *args) {
    PyObject *dims, *head, *layers;
    unsigned long long emb, ln_w, ln_b;
    int emb_dtype, n_threads;
    if (!PyArg_ParseTuple(args, "O!KiKKOO!i", &PyTuple_Type, &dims, &emb, &emb_dtype, &ln_w,
                          &ln_b, &head, &PyList_Type, &layers, &n_threads))
        return NULL;
    V4Model *m = calloc(1, sizeof *m);
    if (!m) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(dims, "iiii", &m->L, &m->C, &m->F, &m->V)) goto fail;
    if (m->L < 1 || m->C < 1 || m->F < 1 || m->V < 1 || PyList_GET_SIZE(layers) != m->L ||
        (emb_dtype != CK_F32 && emb_dtype != CK_BF16 && emb_dtype != EMB_F16) || emb == 0) {
        PyErr_SetString(PyExc_ValueError, "bad model description");
        goto fail;
    }
    if (!parse_mat(head, &m->head, m->V, m->C)) goto fail;
    int C = m->C, F = m->F;
    m->emb = (const void *)(uintptr_t)emb;
    m->emb_dtype = emb_dtype;
    m->ln_out_w = (const float *)(uintptr_t)ln_w;
    m->ln_out_b = (const float *)(uintptr_t)ln_b;
    m->layers = calloc(m->L, sizeof(V4Layer));
    if (!m->layers) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < m->L; i++) {
        PyObject *t = PyList_GET_ITEM(layers, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != N_VECS + N_MATS) {
            PyErr_SetString(PyExc_ValueError, "bad layer description");
            goto fail;
        }
        V4Layer *l = &m->layers[i];
        const float **vecs[N_VECS] = {&l->ln1_w, &l->ln1_b, &l->mix_k, &l->mix_v, &l->mix_r,
                                      &l->decay, &l->first, &l->ln2_w, &l->ln2_b, &l->fmix_k,
                                      &l->fmix_r};
        for (int j = 0; j < N_VECS; j++) *vecs[j] = ck_addr(t, j);
        if (PyErr_Occurred()) goto fail;
        CkMat *mats[N_MATS] = {&l->K, &l->V, &l->R, &l->O, &l->fK, &l->fR, &l->fV};
        const int outs[N_MATS] = {C, C, C, C, F, C, C}, ins[N_MATS] = {C, C, C, C, C, C, F};
        for (int j = 0; j < N_MATS; j++)
            if (!parse_mat(PyTuple_GET_ITEM(t, N_VECS + j), mats[j], outs[j], ins[j])) goto fail;
    }
    /* scratch: 10 vectors of C and hk of F */
    m->buf = calloc((size_t)10 * C + (size_t)F, sizeof(float));
    if (!m->buf) { PyErr_NoMemory(); goto fail; }
    float *q = m->buf;
    float **slots[] = {&m->x, &m->xx, &m->xk, &m->xv, &m->xr, &m->k, &m->v, &m->r, &m->y,
                       &m->fr};
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

/* step(model, token, att_x, att_num, att_den, att_max, ffn_x, logits): addresses of contiguous
 * fp32 tensors, the five state fields [L, C] and the logits [V]. */
static void v4_step_ptrs(V4Model *m, int token, void **p) {
    v4_step(m, token, p[0], p[1], p[2], p[3], p[4], p[5]);
}

CK_MODEL_BINDINGS(V4Model, 6, v4_step_ptrs)

static PyMethodDef methods[] = CK_METHODS(py_new_model, py_step, py_threads, py_pool);

CK_MODULE(_v4cpu, "RWKV v4 one-token step on the CPU.")
