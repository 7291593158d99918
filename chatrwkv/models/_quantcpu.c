/* int8 and int4 matrices (quant.py's `Int8Linear`, `Int4Linear`) outside a model's C step: one
 * matrix-vector product (a token through any version's torch path, or the head after a prefill)
 * with _cpukern.h's kernels; many tokens at once (the sequence path) with _qgemm.h's integer
 * GEMM; both on threads started for the product when it is big. Also the dequantization of a
 * block of int4 rows (the fallback for groups the GEMM does not take) and the load-time
 * kernels of _quantprep.h (the int4 quantizer, the NaN/Inf scan).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpukern.h"
#include "_cpubind.h"
#include "_qgemm.h"
#include "_quantprep.h"
#include "_bgemm.h"

/* The GEMM's threads live for one product (ck_pool_begin): products under
 * QG_MIN_PARALLEL_MACS multiply-adds (~50 us on one core) stay on the calling thread. */
#define QG_MIN_PARALLEL_MACS (1 << 24)

/* gemv(matrix, x address, y address[, threads]): y = M x, fp32 [in] -> fp32 [out]; a big
 * matrix (QG_MIN_PARALLEL_WEIGHTS: a head, a 1.5B FFN) on `threads` threads, in 64 KiB chunks
 * of rows. Measured on the loaded 2-core machine: a [32768, 1024] head 1.1-1.7x faster on two
 * threads; a [4096, 1024] matrix no faster (one core nearly reads at the memory's pace). */
#define QG_MIN_PARALLEL_WEIGHTS (1 << 23)

static PyObject *py_gemv(PyObject *self, PyObject *args) {
    PyObject *mat;
    unsigned long long x, y;
    int threads = 1;
    CkMat m;
    if (!PyArg_ParseTuple(args, "OKK|i", &mat, &x, &y, &threads) || !ck_parse_mat(mat, &m))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    CkPool *pool = ck_pool_begin(threads, (double)m.out * m.in, QG_MIN_PARALLEL_WEIGHTS);
    if (pool) {
        ck_phase_begin(pool);
        int total = ck_phase_add(pool, &m, (const float *)(uintptr_t)x, (float *)(uintptr_t)y,
                                 EP_STORE);
        ck_run_phase(pool, total);
    } else {
        CkXd xd = {0};
        if (m.dtype == CK_I8) ck_xd_prepare(&xd, (const float *)(uintptr_t)x, m.in);
        ck_gemv_rows(&m, (const float *)(uintptr_t)x, &xd, (float *)(uintptr_t)y, EP_STORE, 0,
                     m.out);
        ck_xd_free(&xd);
    }
    ck_pool_end(pool);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* stream_sum(address, nbytes, threads): the sum mod 2^32 of the buffer's little-endian 32-bit
 * words (nbytes a multiple of 4), read once in 1 MiB chunks on `threads` threads: the bench's
 * memory bandwidth (membw.py) times this. ck_stream_sum: one 512-bit load and an integer add per
 * 64 bytes, prefetched as the kernels do (CK_PF); on the 2-core development machine it
 * reads ~30 GB/s where torch's sum of a float buffer, whose reduction is compute-bound there
 * (12 GB/s on one thread, 24 on two), understated the bandwidth by a fifth. */
#define SS_CHUNK (1L << 20)
typedef struct {
    const uint8_t *p;
    size_t n;
    uint32_t *part;
} SsJob;

static void ss_chunk(const CkPhase *ph, int c) {
    const SsJob *j = (const SsJob *)ph->ctx;
    size_t o = (size_t)c * SS_CHUNK, n = j->n - o < (size_t)SS_CHUNK ? j->n - o : (size_t)SS_CHUNK;
    j->part[c] = ck_stream_sum(j->p + o, n);
}

static PyObject *py_stream_sum(PyObject *self, PyObject *args) {
    unsigned long long addr, nbytes;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "KK|i", &addr, &nbytes, &threads)) return NULL;
    if (nbytes % 4) {
        PyErr_SetString(PyExc_ValueError, "stream_sum needs whole 32-bit words");
        return NULL;
    }
    int chunks = (int)((nbytes + SS_CHUNK - 1) / SS_CHUNK);
    uint32_t *part = calloc(chunks ? chunks : 1, sizeof *part);
    if (!part) return PyErr_NoMemory();
    SsJob job = {(const uint8_t *)(uintptr_t)addr, (size_t)nbytes, part};
    uint32_t sum = 0;
    Py_BEGIN_ALLOW_THREADS
    CkPool *pool = ck_pool_begin(threads, (double)nbytes, 2.0 * SS_CHUNK);
    ck_run_on(pool, ss_chunk, &job, chunks);
    ck_pool_end(pool);
    for (int c = 0; c < chunks; c++) sum += part[c];
    Py_END_ALLOW_THREADS
    free(part);
    return PyLong_FromUnsignedLong(sum);
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
/* quantize(w, rows, n, group, packed, scales[, bf16]): int4 rows from fp32 rows, or from bf16
 * rows (`bf16`) widened one row at a time into a buffer of the call's own: no fp32 copy of a
 * block in torch, whose many-MB temporaries, freed on the quantizing threads, glibc kept (a
 * first, converting start of v7 0.4B int4 held 0.5 GB more than its weights to the end). */
static PyObject *py_quantize(PyObject *self, PyObject *args) {
    unsigned long long w, packed, scales;
    int rows, n, group, bf16 = 0, ok = 1;
    if (!PyArg_ParseTuple(args, "KiiiKK|p", &w, &rows, &n, &group, &packed, &scales, &bf16))
        return NULL;
    if (rows < 0 || n < 1 || group < 16 || group % 16 || group > 1024) {
        PyErr_SetString(PyExc_ValueError, "bad shape or group for int4");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (!bf16) {
        ck_i4_quantize((const float *)(uintptr_t)w, rows, n, group, (uint8_t *)(uintptr_t)packed,
                       (uint16_t *)(uintptr_t)scales);
    } else {
        float *row = malloc((size_t)n * sizeof(float));
        size_t rb = ck_i4_row_bytes(n), ng = (size_t)ck_i4_groups(n, group);
        if (row == NULL) ok = 0;
        for (int r = 0; ok && r < rows; r++) {
            const uint16_t *src = (const uint16_t *)(uintptr_t)w + (size_t)r * n;
            for (int i = 0; i < n; i++) row[i] = ck_bf16_to_f32(src[i]);
            ck_i4_quantize(row, 1, n, group, (uint8_t *)(uintptr_t)packed + r * rb,
                           (uint16_t *)(uintptr_t)scales + r * ng);
        }
        free(row);
    }
    Py_END_ALLOW_THREADS
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* gemm(matrix, x address, T, y address, threads, wsum address): y [T, out] = x [T, in] M^T
 * for an int8 matrix (wsum: int32 [out] row sums, from rowsum) or an int4 one with groups of a
 * multiple of 32 (wsum 0). */
static PyObject *py_gemm(PyObject *self, PyObject *args) {
    PyObject *mat;
    unsigned long long x, y, wsum;
    int T, threads, rc;
    CkMat m;
    if (!PyArg_ParseTuple(args, "OKiKiK", &mat, &x, &T, &y, &threads, &wsum) ||
        !ck_parse_mat(mat, &m))
        return NULL;
    if (T < 1 || (m.dtype != CK_I8 && m.dtype != CK_I4) ||
        (m.dtype == CK_I4 && !qg_i4_group_ok(m.group)) || (m.dtype == CK_I8 && !wsum)) {
        PyErr_SetString(PyExc_ValueError, "gemm needs an int8 matrix with its row sums or an "
                        "int4 one with groups of a multiple of 32, and at least one row");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    CkPool *pool = ck_pool_begin(threads, (double)T * m.out * m.in, QG_MIN_PARALLEL_MACS);
    rc = qg_gemm(&m, (const float *)(uintptr_t)x, T, (float *)(uintptr_t)y,
                 (const int32_t *)(uintptr_t)wsum, pool);
    ck_pool_end(pool);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* rowsum(w address, rows, n, out address): int32 row sums of an int8 [rows, n] matrix. */
static PyObject *py_rowsum(PyObject *self, PyObject *args) {
    unsigned long long w, out;
    int rows, n;
    if (!PyArg_ParseTuple(args, "KiiK", &w, &rows, &n, &out)) return NULL;
    if (rows < 0 || n < 0 || n > (1 << 23)) {
        PyErr_SetString(PyExc_ValueError, "bad shape for rowsum");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    qg_i8_rowsum((const int8_t *)(uintptr_t)w, rows, n, (int32_t *)(uintptr_t)out);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* gemm_level(): what gemm runs now (0 scalar, 1 AVX2, 2 AVX-512 VNNI). */
static PyObject *py_gemm_level(PyObject *self, PyObject *args) {
    return PyLong_FromLong(qg_level());
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

/* bgemm(w address, out, in, x address, T, y address, threads): y [T, out] = x [T, in] W^T
 * for bf16 W [out, in] (row-major) and fp32 x and y, all contiguous (_bgemm.h). */
static PyObject *py_bgemm(PyObject *self, PyObject *args) {
    unsigned long long w, x, y;
    int out, in, T, threads, rc;
    if (!PyArg_ParseTuple(args, "KiiKiKi", &w, &out, &in, &x, &T, &y, &threads)) return NULL;
    if (out < 1 || in < 1 || T < 1) {
        PyErr_SetString(PyExc_ValueError, "bgemm needs at least one row, input and token");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    CkPool *pool = ck_pool_begin(threads, (double)T * out * in, BG_MIN_PARALLEL_MACS);
    rc = bg_gemm((const uint16_t *)(uintptr_t)w, out, in, (const float *)(uintptr_t)x, T,
                 (float *)(uintptr_t)y, pool);
    ck_pool_end(pool);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"gemm", py_gemm, METH_VARARGS, "y = x M^T for many rows of x (integer dot products)."},
    {"rowsum", py_rowsum, METH_VARARGS, "int32 row sums of an int8 matrix."},
    {"gemm_level", py_gemm_level, METH_NOARGS, "The GEMM's instruction level now."},
    {"quantize8", py_quantize8, METH_VARARGS, "fp32/bf16 rows -> int8 rows and scales."},
    {"nonfinite", py_nonfinite, METH_VARARGS, "Whether a buffer holds NaN or Inf."},
    {"quantize", py_quantize, METH_VARARGS,
     "fp32 or bf16 rows -> packed int4 rows and fp16 scales."},
    {"gemv", py_gemv, METH_VARARGS, "y = M x for one described matrix (fp32 vectors)."},
    {"stream_sum", py_stream_sum, METH_VARARGS,
     "Sum mod 2^32 of a buffer's 32-bit words, read once on threads (the bandwidth probe)."},
    {"dequant", py_dequant, METH_VARARGS, "Rows of an int4 matrix as fp32 or bf16."},
    {"bgemm", py_bgemm, METH_VARARGS, "y = x W^T for many rows of x, bf16 W (fp32 FMAs)."},
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
