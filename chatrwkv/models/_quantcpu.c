/* int4 matrices (quant.py's `Int4Linear`) outside a model's C step: one matrix-vector product
 * (a token through any version's torch path, or the head after a prefill) and the dequantization
 * of a block of rows to fp32 or bf16 (the sequence path then runs torch's GEMM on the block).
 * Both use _cpukern.h's kernels, with the same run-time dispatch, on the calling thread: a
 * dequantized block is a few milliseconds next to the GEMM that consumes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpukern.h"
#include "_cpubind.h"
#include "_quantprep.h"

/* gemv(matrix, x address, y address): y = M x, fp32 [in] -> fp32 [out]. */
static PyObject *py_gemv(PyObject *self, PyObject *args) {
    PyObject *mat;
    unsigned long long x, y;
    CkMat m;
    if (!PyArg_ParseTuple(args, "OKK", &mat, &x, &y) || !ck_parse_mat(mat, &m)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ck_gemv_rows(&m, (const float *)(uintptr_t)x, (float *)(uintptr_t)y, EP_STORE, 0, m.out);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* dequant(matrix, r0, r1, out address, dtype): rows [r0, r1) of an int4 matrix as fp32
 * (dtype 0) or bf16 (1) into a contiguous [r1 - r0, in] buffer. */
static PyObject *py_dequant(PyObject *self, PyObject *args) {
    PyObject *mat;
    int r0, r1, dtype;
    unsigned long long out;
    CkMat m;
    if (!PyArg_ParseTuple(args, "OiiKi", &mat, &r0, &r1, &out, &dtype) || !ck_parse_mat(mat, &m))
        return NULL;
    if (m.dtype != CK_I4 || r0 < 0 || r1 > m.out || r0 > r1 ||
        (dtype != CK_F32 && dtype != CK_BF16)) {
        PyErr_SetString(PyExc_ValueError, "dequant needs an int4 matrix, rows within it, fp32 "
                        "or bf16");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    ck_i4_dequant_rows(&m, r0, r1, (void *)(uintptr_t)out, dtype);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* quantize(w address, rows, n, group, packed address, scales address): fp32 [rows, n] ->
 * packed int4 rows and fp16 group scales (quant.py's layout and search). */
static PyObject *py_quantize(PyObject *self, PyObject *args) {
    unsigned long long w, packed, scales;
    int rows, n, group;
    if (!PyArg_ParseTuple(args, "KiiiKK", &w, &rows, &n, &group, &packed, &scales)) return NULL;
    if (rows < 0 || n < 1 || group < 16 || group % 16 || group > 1024) {
        PyErr_SetString(PyExc_ValueError, "bad shape or group for int4");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    ck_i4_quantize((const float *)(uintptr_t)w, rows, n, group, (uint8_t *)(uintptr_t)packed,
                   (uint16_t *)(uintptr_t)scales);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* quantize8(w address, rows, n, bf16, q address, scale address): fp32 (bf16 = 0) or bf16 rows
 * [rows, n] -> int8 rows and fp32 per-row scales (quant.py's quantize_rows); False where a row
 * holds NaN or Inf. */
static PyObject *py_quantize8(PyObject *self, PyObject *args) {
    unsigned long long w, q, scale;
    int rows, n, bf16, bad;
    if (!PyArg_ParseTuple(args, "KiipKK", &w, &rows, &n, &bf16, &q, &scale)) return NULL;
    if (rows < 0 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "bad shape for int8");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    bad = ck_i8_quantize((const void *)(uintptr_t)w, rows, n, bf16, (int8_t *)(uintptr_t)q,
                         (float *)(uintptr_t)scale);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(!bad);
}

/* nonfinite(address, count, dtype): whether any of `count` values (dtype 0 fp32, 1 bf16,
 * 4 fp16) is NaN or infinite. */
static PyObject *py_nonfinite(PyObject *self, PyObject *args) {
    unsigned long long p, n;
    int dtype, hit;
    if (!PyArg_ParseTuple(args, "KKi", &p, &n, &dtype)) return NULL;
    if (dtype != CK_F32 && dtype != CK_BF16 && dtype != 4) {
        PyErr_SetString(PyExc_ValueError, "nonfinite scans fp32, bf16 or fp16");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    hit = ck_nonfinite((const void *)(uintptr_t)p, (size_t)n, dtype);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(hit);
}

static PyMethodDef methods[] = {
    {"quantize8", py_quantize8, METH_VARARGS, "fp32/bf16 rows -> int8 rows and scales."},
    {"nonfinite", py_nonfinite, METH_VARARGS, "Whether a buffer holds NaN or Inf."},
    {"quantize", py_quantize, METH_VARARGS, "fp32 rows -> packed int4 rows and fp16 scales."},
    {"gemv", py_gemv, METH_VARARGS, "y = M x for one described matrix (fp32 vectors)."},
    {"dequant", py_dequant, METH_VARARGS, "Rows of an int4 matrix as fp32 or bf16."},
    {"set_simd", ck_py_set_simd, METH_VARARGS,
     "Kernels of at most this level (True: the best, False: scalar); returns what runs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_quantcpu",
                                    "int4 products and dequantization on the CPU.", -1, methods};

PyMODINIT_FUNC PyInit__quantcpu(void) {
    ck_init();
    return PyModule_Create(&module);
}
