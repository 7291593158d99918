/* Python-binding helpers shared by _v4cpu.c and _v7cpu.c (include after Python.h and
 * _cpukern.h). The two modules expose the same shape of API (new_model / step / threads /
 * set_simd) over a capsule that owns a model with a pool, layers and one scratch buffer; the
 * argument parsing, weight-address and matrix-description checks, teardown and the set_simd
 * switch were identical, so they live here once and each module keeps only what is its own
 * (model layout, shape checks, the step itself). Error messages match the modules' documented
 * behaviour; everything here is `static`, one copy per extension.
 */
#ifndef CHATRWKV_CPUBIND_H
#define CHATRWKV_CPUBIND_H

/* (address, scale address, dtype, out, in[, group]): a sane dtype, positive shape, int8 with
 * per-row fp32 scales, int4 with fp16 group scales (the scale address) and a group of a
 * multiple of 16 weights. */
static inline int ck_parse_mat(PyObject *o, CkMat *m) {
    memset(m, 0, sizeof *m);
    unsigned long long w, scale;
    m->group = 0;
    if (!PyArg_ParseTuple(o, "KKiii|i", &w, &scale, &m->dtype, &m->out, &m->in, &m->group))
        return 0;
    m->w = (const void *)(uintptr_t)w;
    if (m->dtype == CK_I4) m->gscale = (const uint16_t *)(uintptr_t)scale;
    else m->scale = (const float *)(uintptr_t)scale;
    if (m->dtype < CK_F32 || m->dtype > CK_I4 || m->out < 1 || m->in < 1 ||
        (m->dtype == CK_I8 && m->scale == NULL) || m->out >= (1 << 20) ||
        (m->dtype == CK_I4 && (m->gscale == NULL || m->group < 16 || m->group % 16))) {
        PyErr_SetString(PyExc_ValueError, "bad matrix description");
        return 0;
    }
    return 1;
}

/* The fp32 vector whose address is item i of a tuple (sets an error on a bad item). */
static inline const float *ck_addr(PyObject *tuple, Py_ssize_t i) {
    return (const float *)(uintptr_t)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(tuple, i));
}

/* Stops the pool if it runs and frees a model's layers, scratch and the model itself. */
static inline void ck_free_model(CkPool *pool, void *layers, void *buf, void *model) {
    if (pool->n_threads > 0) ck_pool_stop(pool);
    free(layers);
    free(buf);
    free(model);
}

/* (model) as METH_VARARGS: the capsule's model, or NULL with an error set. */
static inline void *ck_arg_model(PyObject *args, const char *capsule) {
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    return PyCapsule_GetPointer(cap, capsule);
}

/* step(model, token, n_ptrs addresses...) as METH_FASTCALL: the model, the token and the
 * addresses, or NULL with an error set. The token is checked against the vocabulary with
 * ck_token_ok once the caller has the model. */
static inline void *ck_step_args(PyObject *const *args, Py_ssize_t nargs, const char *capsule,
                          int n_ptrs, long *token, void **ptr) {
    if (nargs != 2 + n_ptrs) {
        PyErr_Format(PyExc_TypeError, "step takes %d arguments", 2 + n_ptrs);
        return NULL;
    }
    void *m = PyCapsule_GetPointer(args[0], capsule);
    if (!m) return NULL;
    *token = PyLong_AsLong(args[1]);
    for (int i = 0; i < n_ptrs; i++) ptr[i] = PyLong_AsVoidPtr(args[2 + i]);
    return PyErr_Occurred() ? NULL : m;
}

static inline int ck_token_ok(long token, int V) {
    if (token >= 0 && token < V) return 1;
    PyErr_Format(PyExc_IndexError, "token %ld is outside the vocabulary (%d)", token, V);
    return 0;
}

/* set_simd(level): the kernels of at most `level` (True: the best the CPU has, False or 0:
 * the scalar twins, 1: AVX2, 2: AVX-512); returns the level that runs. */
static inline PyObject *ck_py_set_simd(PyObject *self, PyObject *args) {
    int level;
    if (!PyArg_ParseTuple(args, "i", &level)) return NULL;
    return PyLong_FromLong(ck_set_isa(level == 1 && PyBool_Check(PyTuple_GET_ITEM(args, 0))
                                          ? CK_ISA_VNNI : level));
}

/* kernels(): the name of the kernels that run now ("AVX-512", "AVX2" or "scalar"), so the
 * banner, `+show` and the bench name exactly what runs rather than guess from CPU flags. */
static inline PyObject *ck_py_kernels(PyObject *self, PyObject *unused) {
    static const char *names[] = {"scalar", "AVX2", "AVX-512", "AVX-512 VNNI"};
    return PyUnicode_FromString(names[ck_isa]);
}

/* pool(model[, stall_ns, solo_ns, solo_first_ns]): sets the pool's stall time, longest and
 * first solo time where given (>= 0);
 * returns (threads, phases, phases run by the caller alone, stalls). */
static PyObject *ck_py_pool(PyObject *args, const char *capsule, size_t pool_offset) {
    PyObject *cap;
    long long stall = -1, solo = -1, first = -1;
    if (!PyArg_ParseTuple(args, "O|LLL", &cap, &stall, &solo, &first)) return NULL;
    char *m = PyCapsule_GetPointer(cap, capsule);
    if (!m) return NULL;
    CkPool *p = (CkPool *)(m + pool_offset);
    if (stall >= 0) p->stall_ns = (long)stall;
    if (solo >= 0) p->solo_ns = (long)solo;
    if (first >= 0) p->solo_first_ns = (long)first;
    if (stall >= 0 || solo >= 0 || first >= 0) p->solo_until = p->solo_end = p->solo_len = 0;
    return Py_BuildValue("(illl)", p->n_threads, p->n_phases, p->n_solo, p->n_stalls);
}

/* ck_parse_mat's description, which must be [out, in] as given, at a real address; None
 * gives an empty matrix where `optional`. */
static inline int ck_parse_mat_as(PyObject *o, CkMat *m, int out, int in, int optional) {
    if (o == Py_None && optional) {
        memset(m, 0, sizeof *m);
        return 1;
    }
    if (!ck_parse_mat(o, m)) return 0;
    if (m->out != out || m->in != in || m->w == NULL) {
        PyErr_Format(PyExc_ValueError, "matrix is %d x %d, expected %d x %d", m->out, m->in,
                     out, in);
        return 0;
    }
    return 1;
}

/* model_free and capsule_free of a model module (CAPSULE defined before): MODEL has `pool`,
 * `layers` and `buf`, all freed with it. */
#define CK_MODEL_FREE(MODEL)                                                                   \
    static void model_free(MODEL *m) { ck_free_model(&m->pool, m->layers, m->buf, m); }       \
    static void capsule_free(PyObject *cap) {                                                  \
        MODEL *m = PyCapsule_GetPointer(cap, CAPSULE);                                         \
        if (m) model_free(m);                                                                  \
    }

/* py_step, py_threads and py_pool of a model module (CAPSULE defined before): MODEL is its
 * struct (fields `pool` and `V`), N_PTRS how many addresses step takes (the state tensors, then
 * the logits), STEP(MODEL *, int token, void **ptrs) runs one token without the GIL. */
#define CK_MODEL_BINDINGS(MODEL, N_PTRS, STEP)                                                 \
    static PyObject *py_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {       \
        long token;                                                                            \
        void *ptr[N_PTRS];                                                                     \
        MODEL *m = ck_step_args(args, nargs, CAPSULE, N_PTRS, &token, ptr);                    \
        if (!m || !ck_token_ok(token, m->V)) return NULL;                                      \
        Py_BEGIN_ALLOW_THREADS                                                                 \
        STEP(m, (int)token, ptr);                                                              \
        Py_END_ALLOW_THREADS                                                                   \
        Py_RETURN_NONE;                                                                        \
    }                                                                                          \
    static PyObject *py_threads(PyObject *self, PyObject *args) {                              \
        MODEL *m = ck_arg_model(args, CAPSULE);                                                \
        return m ? PyLong_FromLong(m->pool.n_threads) : NULL;                                  \
    }                                                                                          \
    static PyObject *py_pool(PyObject *self, PyObject *args) {                                 \
        return ck_py_pool(args, CAPSULE, offsetof(MODEL, pool));                               \
    }

/* The module NAME (the extension's last name part) with the `methods` table, kernels chosen
 * for this CPU when it loads. */
#define CK_MODULE(NAME, DOC)                                                                   \
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, #NAME, DOC, -1, methods};      \
    PyMODINIT_FUNC PyInit_##NAME(void) {                                                       \
        ck_init();                                                                             \
        return PyModule_Create(&module);                                                       \
    }

/* The methods every model module exports: new_model, step (fastcall), threads, pool,
 * set_simd, kernels (CK_METHOD_LIST: to add more of its own; CK_METHODS: the whole table). */
#define CK_METHOD_LIST(new_model, step, threads, pool)                                         \
    {"new_model", new_model, METH_VARARGS, "Build a model from weight addresses."},            \
    {"step", (PyCFunction)(void (*)(void))step, METH_FASTCALL, "Run one token."},              \
    {"threads", threads, METH_VARARGS, "Threads the model's pool runs."},                      \
    {"pool", pool, METH_VARARGS, "Pool settings and counts (see _cpubind.h)."},               \
    {"set_simd", ck_py_set_simd, METH_VARARGS,                                                 \
     "Kernels of at most this level (True: the best, False: scalar); returns what runs."},     \
    {"kernels", ck_py_kernels, METH_NOARGS, "The name of the kernels that run now."}
#define CK_METHODS(new_model, step, threads, pool)                                             \
    {CK_METHOD_LIST(new_model, step, threads, pool), {NULL, NULL, 0, NULL}}

#endif
