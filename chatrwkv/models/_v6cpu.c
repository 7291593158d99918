/* RWKV v6 "Finch": one token in RNN mode on the CPU, in C (the twin of
 * `RWKV6._forward_one_torch`).
 *
 * `v6.py` prepares the weights with torch (fp32 vectors and LoRAs; big matrices fp32, bf16,
 * int8 with per-row scales or int4 with group scales, all row-major [out, in]) and `v6_cpu.py`
 * hands their addresses to `new_model`, keeping the tensors alive as long as the model lives.
 * `step` runs one token: it reads and updates the state tensors (att_x [L, C], wkv
 * [L, H, N, N], ffn_x [L, C]) in place and writes fp32 logits. Activations stay fp32 whatever
 * the weight dtype. Per layer, seven phases run on the pool (_cpukern.h): the token-shift
 * LoRA's first half (tanh); its second half, one product per mix; r, k, v, the gate and the
 * decay LoRA's first half (tanh); the WKV per head, which first forms its own channels' decay
 * from the decay LoRA's second half; the output product; the FFN key and receptance; the FFN
 * value. The serial work between them is a few vector ops of length C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpukern.h"
#include "_cpubind.h"
#include "_v56head.h"

#define CAPSULE "chatrwkv.v6cpu"

#define LN_EPS 1e-5f
#define LN_X_EPS 64e-5f  /* v6.py's _LN_X_EPS: GroupNorm eps 1e-5 * head_size_divisor 8 ** 2 */
#define N_MIX 5          /* the data-dependent mixes, in the checkpoint's order w, k, v, r, g */

typedef struct {
    const float *ln1_w, *ln1_b, *maa_x, *maa /* [5, C] */, *time_decay, *u, *lnx_w, *lnx_b;
    const float *ln2_w, *ln2_b, *fmaa_k, *fmaa_r;
    CkMat mw1, mw2[N_MIX], dw1, dw2, R, K, V, G, O, fK, fR, fV;
} V6Layer;

typedef struct {
    int L, C, H, N, F, V, D, Dd;
    const void *emb;
    int emb_dtype;  /* CK_F32 or CK_BF16: rows with ln0 already folded in */
    const float *ln_out_w, *ln_out_b;
    CkMat head;
    V6Layer *layers;
    CkPool pool;
    /* scratch */
    float *buf, *x, *xx, *sx, *xxx, *lora, *mk, *mix, *r, *k, *v, *g, *hd, *w, *y, *fr, *fv,
        *hk;
    /* the WKV phase's inputs */
    float *S;
    const V6Layer *cur;
} V6Model;

/* Head h: its channels' decay w = exp(-exp(time_decay + decay_w2 tanh(...))) and SiLU gate,
 * then the recurrence, GroupNorm and gate (_v56head.h). */
static void v6_wkv_head(const CkPhase *ph, int h) {
    V6Model *m = (V6Model *)ph->ctx;
    const V6Layer *l = m->cur;
    int N = m->N, o = h * N;
    ck_gemv_rows(&l->dw2, m->hd, NULL, m->w, EP_STORE, o, o + N);
    for (int i = o; i < o + N; i++) {
        m->w[i] = expf(-expf(l->time_decay[i] + m->w[i]));
        m->g[i] *= ck_sigmoid(m->g[i]);
    }
    v56_head(m->S + (size_t)h * N * N, m->r + o, m->k + o, m->v + o, m->w + o, l->u + o,
             l->lnx_w + o, l->lnx_b + o, LN_X_EPS, m->g + o, m->y + o, N);
}

/* sx = prev - xx (the token shift), prev = xx */
static void v6_token_shift(float *prev, const float *xx, float *sx, int C) {
    for (int i = 0; i < C; i++) {
        sx[i] = prev[i] - xx[i];
        prev[i] = xx[i];
    }
}

static void v6_step(V6Model *m, int token, float *att_x, float *wkv, float *ffn_x,
                    float *logits) {
    int C = m->C, H = m->H, N = m->N, D = m->D;
    CkPool *p = &m->pool;
    float *x = m->x, *xx = m->xx, *sx = m->sx;
    if (m->emb_dtype == CK_F32) {
        memcpy(x, (const float *)m->emb + (size_t)token * C, C * sizeof(float));
    } else {
        const uint16_t *e = (const uint16_t *)m->emb + (size_t)token * C;
        for (int i = 0; i < C; i++) x[i] = ck_bf16_to_f32(e[i]);
    }
    for (int li = 0; li < m->L; li++) {
        const V6Layer *l = &m->layers[li];
        /* time mix: the data-dependent token shift (a LoRA of xx + sx * maa_x per mix) */
        ck_layer_norm(x, l->ln1_w, l->ln1_b, xx, C, LN_EPS);
        v6_token_shift(att_x + (size_t)li * C, xx, sx, C);
        for (int i = 0; i < C; i++) m->xxx[i] = xx[i] + sx[i] * l->maa_x[i];
        ck_phase_begin(p);
        ck_run_phase(p, ck_phase_add(p, &l->mw1, m->xxx, m->lora, EP_TANH));
        ck_phase_begin(p);
        int n = 0;
        for (int s = 0; s < N_MIX; s++)
            n = ck_phase_add(p, &l->mw2[s], m->lora + (size_t)s * D, m->mk + (size_t)s * C,
                             EP_STORE);
        ck_run_phase(p, n);
        for (int s = 0; s < N_MIX; s++) {
            const float *maa = l->maa + (size_t)s * C, *mk = m->mk + (size_t)s * C;
            float *out = m->mix + (size_t)s * C;
            for (int i = 0; i < C; i++) out[i] = xx[i] + sx[i] * (maa[i] + mk[i]);
        }
        const float *xw = m->mix, *xk = xw + C, *xv = xk + C, *xr = xv + C, *xg = xr + C;
        ck_phase_begin(p);
        ck_phase_add(p, &l->R, xr, m->r, EP_STORE);
        ck_phase_add(p, &l->K, xk, m->k, EP_STORE);
        ck_phase_add(p, &l->V, xv, m->v, EP_STORE);
        ck_phase_add(p, &l->G, xg, m->g, EP_STORE);
        ck_run_phase(p, ck_phase_add(p, &l->dw1, xw, m->hd, EP_TANH));
        /* the WKV update, one chunk per head */
        m->S = wkv + (size_t)li * H * N * N;
        m->cur = l;
        p->phase.fn = v6_wkv_head;
        p->phase.ctx = m;
        ck_run_phase(p, H);
        ck_phase_begin(p);
        ck_run_phase(p, ck_phase_add(p, &l->O, m->y, x, EP_ADD));
        /* channel mix */
        ck_layer_norm(x, l->ln2_w, l->ln2_b, xx, C, LN_EPS);
        v6_token_shift(ffn_x + (size_t)li * C, xx, sx, C);
        float *xfk = m->mix, *xfr = m->mix + C;
        for (int i = 0; i < C; i++) {
            xfk[i] = xx[i] + sx[i] * l->fmaa_k[i];
            xfr[i] = xx[i] + sx[i] * l->fmaa_r[i];
        }
        ck_ffn_gated(p, &l->fR, &l->fK, &l->fV, xfr, xfk, m->hk, m->fr, m->fv, x, C);
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

CK_MODEL_FREE(V6Model)

#define N_VECS 12
#define N_MATS (3 + N_MIX + 8)

/* new_model(dims, emb, emb_dtype, ln_out_w, ln_out_b, head, layers, n_threads)
 * dims = (L, C, H, N, F, V, D_mix, D_decay); layers = one tuple per layer: 12 vector addresses
 * (ln1 w/b, time_maa_x, time_maa_wkvrg [5, C], time_decay, time_faaaa [H * N], ln_x w/b, ln2
 * w/b, ffn time_maa_k/r) then 16 matrices (time_maa_w1 [5 D, C], the five time_maa_w2 [C, D],
 * time_decay_w1 [Dd, C], time_decay_w2 [C, Dd], receptance, key, value, gate, output, ffn key,
 * receptance, value). */
static PyObject *py_new_model(PyObject *self, PyObject *args) {
    PyObject *dims, *head, *layers;
    unsigned long long emb, ln_w, ln_b;
    int emb_dtype, n_threads;
    if (!PyArg_ParseTuple(args, "O!KiKKOO!i", &PyTuple_Type, &dims, &emb, &emb_dtype, &ln_w,
                          &ln_b, &head, &PyList_Type, &layers, &n_threads))
        return NULL;
    V6Model *m = calloc(1, sizeof *m);
    if (!m) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(dims, "iiiiiiii", &m->L, &m->C, &m->H, &m->N, &m->F, &m->V, &m->D,
                          &m->Dd))
        goto fail;
    if (m->L < 1 || m->C < 1 || m->H < 1 || m->H * m->N != m->C || m->F < 1 || m->V < 1 ||
        m->D < 1 || m->Dd < 1 || PyList_GET_SIZE(layers) != m->L ||
        (emb_dtype != CK_F32 && emb_dtype != CK_BF16) || emb == 0 || !ln_w || !ln_b) {
        PyErr_SetString(PyExc_ValueError, "bad model description");
        goto fail;
    }
    if (!parse_mat(head, &m->head, m->V, m->C)) goto fail;
    int C = m->C, F = m->F, D = m->D, Dd = m->Dd;
    m->emb = (const void *)(uintptr_t)emb;
    m->emb_dtype = emb_dtype;
    m->ln_out_w = (const float *)(uintptr_t)ln_w;
    m->ln_out_b = (const float *)(uintptr_t)ln_b;
    m->layers = calloc(m->L, sizeof(V6Layer));
    if (!m->layers) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < m->L; i++) {
        PyObject *t = PyList_GET_ITEM(layers, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != N_VECS + N_MATS) {
            PyErr_SetString(PyExc_ValueError, "bad layer description");
            goto fail;
        }
        V6Layer *l = &m->layers[i];
        const float **vecs[N_VECS] = {&l->ln1_w, &l->ln1_b, &l->maa_x, &l->maa, &l->time_decay,
                                      &l->u, &l->lnx_w, &l->lnx_b, &l->ln2_w, &l->ln2_b,
                                      &l->fmaa_k, &l->fmaa_r};
        for (int j = 0; j < N_VECS; j++) {
            *vecs[j] = ck_addr(t, j);
            if (!*vecs[j] && !PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a null vector address");
        }
        if (PyErr_Occurred()) goto fail;
        CkMat *mats[N_MATS] = {&l->mw1, &l->mw2[0], &l->mw2[1], &l->mw2[2], &l->mw2[3],
                               &l->mw2[4], &l->dw1, &l->dw2, &l->R, &l->K, &l->V, &l->G,
                               &l->O, &l->fK, &l->fR, &l->fV};
        const int outs[N_MATS] = {N_MIX * D, C, C, C, C, C, Dd, C, C, C, C, C, C, F, C, C};
        const int ins[N_MATS] = {C, D, D, D, D, D, C, Dd, C, C, C, C, C, C, C, F};
        for (int j = 0; j < N_MATS; j++)
            if (!parse_mat(PyTuple_GET_ITEM(t, N_VECS + j), mats[j], outs[j], ins[j])) goto fail;
    }
    /* scratch: x, xx, sx, xxx, r, k, v, g, w, y, fr, fv (C each); the LoRA halves (5 D, Dd);
     * the mixes' LoRA outputs and the mixes (5 C each); hk (F) */
    m->buf = calloc((size_t)12 * C + (size_t)N_MIX * D + Dd + (size_t)10 * C + F,
                    sizeof(float));
    if (!m->buf) { PyErr_NoMemory(); goto fail; }
    float *q = m->buf;
    float **slots[] = {&m->x, &m->xx, &m->sx, &m->xxx, &m->r, &m->k, &m->v, &m->g, &m->w,
                       &m->y, &m->fr, &m->fv};
    for (size_t j = 0; j < sizeof slots / sizeof *slots; j++, q += C) *slots[j] = q;
    m->lora = q;
    q += (size_t)N_MIX * D;
    m->hd = q;
    q += Dd;
    m->mk = q;
    q += (size_t)N_MIX * C;
    m->mix = q;
    q += (size_t)N_MIX * C;
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
static void v6_step_ptrs(V6Model *m, int token, void **p) {
    v6_step(m, token, p[0], p[1], p[2], p[3]);
}

CK_MODEL_BINDINGS(V6Model, 4, v6_step_ptrs)

static PyMethodDef methods[] = CK_METHODS(py_new_model, py_step, py_threads, py_pool);

CK_MODULE(_v6cpu, "RWKV v6 one-token step on the CPU.")
