/* Greedy longest-match tokenization over bytes, for the World tokenizer (see world.py).
 *
 * Trie(pairs) builds, once, a byte trie from (token bytes, id) pairs; Trie.encode(data) walks it
 * from each position and takes the longest token that matches, exactly as the official trie
 * tokenizer does. Tokens may hold any byte (NUL, invalid UTF-8); ids are any Python ints and are
 * returned as the very objects that were passed in.
 *
 * Layout: nodes are numbered in breadth-first order, so the children of a node are consecutive
 * nodes [first, first + count) with sorted labels; a child is found by a short scan or a binary
 * search over those labels, or through a 256-entry table for nodes with many children (the root
 * and the common first bytes). Node 0 is the root and is nobody's child, so 0 also means "none".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define DENSE_MIN 16      /* nodes with this many children get a 256-entry table */
#define NO_TOKEN UINT32_MAX
#define RELEASE_GIL_MIN 16384  /* below this, releasing the GIL costs more than it lends */

typedef struct {
    uint32_t first;  /* index of the first child */
    uint32_t token;  /* ordinal of the token that ends here, or NO_TOKEN */
    int32_t dense;   /* row in the dense tables, or -1 */
    uint16_t count;  /* number of children (at most 256) */
} Node;

typedef struct {
    PyObject_HEAD
    Node *nodes;
    uint8_t *labels;   /* label of each node (the byte leading to it) */
    uint32_t *dense;   /* rows of 256 child indices (0: none) */
    PyObject **ids;    /* id object of each token ordinal (strong references) */
    Py_ssize_t n_nodes, n_tokens;
} TrieObject;

static inline uint32_t
child_of(const TrieObject *t, const Node *node, uint8_t byte)
{
    if (node->dense >= 0)
        return t->dense[(size_t)node->dense * 256 + byte];
    uint32_t lo = node->first, hi = node->first + node->count;  /* search [lo, hi) */
    const uint8_t *labels = t->labels;
    while (hi - lo > 8) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (labels[mid] <= byte)
            lo = mid;
        else
            hi = mid;
    }
    for (; lo < hi; lo++) {
        if (labels[lo] == byte)
            return lo;
        if (labels[lo] > byte)
            break;
    }
    return 0;
}

/* -- building ------------------------------------------------------------------------------- */

/* A temporary trie with sorted sibling lists, renumbered breadth-first into the final one. */
typedef struct {
    uint32_t *first_child, *next_sibling, *token;
    uint8_t *label;
    size_t size, capacity;
} Draft;

static void
draft_free(Draft *d)
{
    PyMem_Free(d->first_child);
    PyMem_Free(d->next_sibling);
    PyMem_Free(d->token);
    PyMem_Free(d->label);
}

static int
draft_insert(Draft *d, const uint8_t *bytes, size_t len, uint32_t token)
{
    uint32_t node = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t byte = bytes[i];
        uint32_t prev = 0, child = d->first_child[node];
        while (child && d->label[child] < byte) {
            prev = child;
            child = d->next_sibling[child];
        }
        if (!child || d->label[child] != byte) {
            if (d->size >= d->capacity) {  /* cannot happen: capacity counts every byte */
                PyErr_SetString(PyExc_RuntimeError, "trie capacity exceeded");
                return -1;
            }
            uint32_t fresh = (uint32_t)d->size++;
            d->label[fresh] = byte;
            d->first_child[fresh] = 0;
            d->token[fresh] = NO_TOKEN;
            d->next_sibling[fresh] = child;
            if (prev)
                d->next_sibling[prev] = fresh;
            else
                d->first_child[node] = fresh;
            child = fresh;
        }
        node = child;
    }
    d->token[node] = token;  /* a repeated token: the last id wins, as in a dict */
    return 0;
}

static int
trie_compact(TrieObject *t, const Draft *d)
{
    size_t n = d->size;
    uint32_t *order = PyMem_Malloc(n * sizeof(uint32_t));  /* breadth-first: new -> draft */
    t->nodes = PyMem_Malloc(n * sizeof(Node));
    t->labels = PyMem_Malloc(n);
    if (!order || !t->nodes || !t->labels) {
        PyMem_Free(order);
        PyErr_NoMemory();
        return -1;
    }
    size_t head = 0, tail = 1, n_dense = 0;
    order[0] = 0;
    while (head < tail) {
        uint32_t old = order[head];
        Node *node = &t->nodes[head];
        t->labels[head] = d->label[old];
        node->token = d->token[old];
        node->first = (uint32_t)tail;
        node->count = 0;
        for (uint32_t c = d->first_child[old]; c; c = d->next_sibling[c]) {
            order[tail++] = c;
            node->count++;
        }
        node->dense = node->count >= DENSE_MIN || head == 0 ? (int32_t)n_dense++ : -1;
        head++;
    }
    PyMem_Free(order);
    t->n_nodes = (Py_ssize_t)n;
    t->dense = PyMem_Calloc(n_dense * 256, sizeof(uint32_t));
    if (!t->dense) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const Node *node = &t->nodes[i];
        if (node->dense < 0)
            continue;
        uint32_t *row = t->dense + (size_t)node->dense * 256;
        for (uint32_t c = node->first; c < node->first + node->count; c++)
            row[t->labels[c]] = c;
    }
    return 0;
}

static void
trie_release(TrieObject *t)
{
    PyMem_Free(t->nodes);
    PyMem_Free(t->labels);
    PyMem_Free(t->dense);
    t->nodes = NULL;
    t->labels = NULL;
    t->dense = NULL;
    if (t->ids) {
        for (Py_ssize_t i = 0; i < t->n_tokens; i++)
            Py_XDECREF(t->ids[i]);
        PyMem_Free(t->ids);
        t->ids = NULL;
    }
    t->n_nodes = t->n_tokens = 0;
}

static int
Trie_init(TrieObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pairs", NULL};
    PyObject *pairs_arg;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Trie", kwlist, &pairs_arg))
        return -1;
    if (self->nodes || self->ids) {  /* a second __init__ could free a trie in use elsewhere */
        PyErr_SetString(PyExc_RuntimeError, "Trie is already initialised");
        return -1;
    }
    PyObject *pairs = PySequence_Fast(pairs_arg, "pairs must be an iterable of (bytes, int)");
    if (!pairs)
        return -1;

    Py_ssize_t n = PySequence_Fast_GET_SIZE(pairs);
    PyObject **items = PySequence_Fast_ITEMS(pairs);
    size_t total = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = items[i];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2
                || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))
                || !PyLong_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "pairs must be (bytes, int) tuples");
            Py_DECREF(pairs);
            return -1;
        }
        total += (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0));
    }
    if (total >= NO_TOKEN || (size_t)n >= NO_TOKEN) {
        PyErr_SetString(PyExc_OverflowError, "vocabulary too large for the trie");
        Py_DECREF(pairs);
        return -1;
    }

    Draft d = {0};
    d.capacity = total;
    d.first_child = PyMem_Malloc(total * sizeof(uint32_t));
    d.next_sibling = PyMem_Malloc(total * sizeof(uint32_t));
    d.token = PyMem_Malloc(total * sizeof(uint32_t));
    d.label = PyMem_Malloc(total);
    self->ids = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    int ok = d.first_child && d.next_sibling && d.token && d.label && self->ids;
    if (!ok)
        PyErr_NoMemory();
    if (ok) {
        d.size = 1;
        d.first_child[0] = 0;
        d.token[0] = NO_TOKEN;  /* the empty token is never matched */
        d.label[0] = 0;
        for (Py_ssize_t i = 0; ok && i < n; i++) {
            PyObject *token = PyTuple_GET_ITEM(items[i], 0);
            PyObject *id = PyTuple_GET_ITEM(items[i], 1);
            Py_INCREF(id);
            self->ids[i] = id;
            self->n_tokens = i + 1;
            if (PyBytes_GET_SIZE(token) > 0)
                ok = draft_insert(&d, (const uint8_t *)PyBytes_AS_STRING(token),
                                  (size_t)PyBytes_GET_SIZE(token), (uint32_t)i) == 0;
        }
    }
    Py_DECREF(pairs);
    if (ok)
        ok = trie_compact(self, &d) == 0;
    draft_free(&d);
    if (!ok) {
        trie_release(self);
        return -1;
    }
    return 0;
}

static void
Trie_dealloc(TrieObject *self)
{
    trie_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* -- encoding ------------------------------------------------------------------------------- */

/* Token ordinals of the greedy longest match of data[0:n] into *out (PyMem_Raw, caller frees).
 * Returns the count, or -1 when out of memory, or -2 when no token matches at some byte. Runs
 * without the GIL: it touches no Python object. */
static Py_ssize_t
greedy(const TrieObject *t, const uint8_t *data, Py_ssize_t n, uint32_t **out)
{
    size_t capacity = (size_t)n / 3 + 16, count = 0;
    uint32_t *buf = PyMem_RawMalloc(capacity * sizeof(uint32_t));
    if (!buf)
        return -1;
    const Node *nodes = t->nodes;
    const uint32_t *root = t->dense;  /* the root always has the first dense row */
    Py_ssize_t i = 0;
    while (i < n) {
        uint32_t best = NO_TOKEN;
        Py_ssize_t best_end = i, j = i + 1;
        uint32_t v = root[data[i]];
        while (v) {
            const Node *node = &nodes[v];
            if (node->token != NO_TOKEN) {
                best = node->token;
                best_end = j;
            }
            if (j >= n || node->count == 0)
                break;
            v = child_of(t, node, data[j]);
            j++;
        }
        if (best == NO_TOKEN) {
            PyMem_RawFree(buf);
            return -2;
        }
        if (count == capacity) {
            capacity *= 2;
            uint32_t *grown = PyMem_RawRealloc(buf, capacity * sizeof(uint32_t));
            if (!grown) {
                PyMem_RawFree(buf);
                return -1;
            }
            buf = grown;
        }
        buf[count++] = best;
        i = best_end;
    }
    *out = buf;
    return (Py_ssize_t)count;
}

static PyObject *
Trie_encode(TrieObject *self, PyObject *arg)
{
    Py_buffer view;
    if (!self->nodes) {
        PyErr_SetString(PyExc_ValueError, "Trie is not initialised");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t *ordinals = NULL;
    Py_ssize_t count;
    if (view.len >= RELEASE_GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        count = greedy(self, view.buf, view.len, &ordinals);
        Py_END_ALLOW_THREADS
    } else {
        count = greedy(self, view.buf, view.len, &ordinals);
    }
    PyBuffer_Release(&view);
    if (count == -1)
        return PyErr_NoMemory();
    if (count == -2) {
        PyErr_SetString(PyExc_ValueError, "no token matches a byte: the vocabulary lacks it");
        return NULL;
    }
    PyObject *list = PyList_New(count);
    if (list) {
        for (Py_ssize_t k = 0; k < count; k++) {
            PyObject *id = self->ids[ordinals[k]];
            Py_INCREF(id);
            PyList_SET_ITEM(list, k, id);
        }
    }
    PyMem_RawFree(ordinals);
    return list;
}

static PyObject *
Trie_sizeof(TrieObject *self, PyObject *Py_UNUSED(ignored))
{
    size_t n_dense = 0;
    for (Py_ssize_t i = 0; i < self->n_nodes; i++)
        n_dense += self->nodes[i].dense >= 0;
    size_t size = sizeof(TrieObject) + (size_t)self->n_nodes * (sizeof(Node) + 1)
                  + n_dense * 256 * sizeof(uint32_t) + (size_t)self->n_tokens * sizeof(PyObject *);
    return PyLong_FromSize_t(size);
}

static PyObject *
Trie_get_nodes(TrieObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->n_nodes);
}

static PyMethodDef Trie_methods[] = {
    {"encode", (PyCFunction)Trie_encode, METH_O,
     "encode(data) -> list of ids: greedy longest match of a bytes-like object."},
    {"__sizeof__", (PyCFunction)Trie_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Trie_getset[] = {
    {"nodes", (getter)Trie_get_nodes, NULL, "number of trie nodes, the root included", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TrieType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "chatrwkv.tokenizer._worldtrie.Trie",
    .tp_doc = PyDoc_STR("Trie(pairs): greedy longest-match tokenizer over (bytes, id) pairs."),
    .tp_basicsize = sizeof(TrieObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Trie_init,
    .tp_dealloc = (destructor)Trie_dealloc,
    .tp_methods = Trie_methods,
    .tp_getset = Trie_getset,
};

static struct PyModuleDef worldtrie_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "chatrwkv.tokenizer._worldtrie",
    .m_doc = PyDoc_STR("Greedy longest-match tokenization over bytes (World tokenizer core)."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__worldtrie(void)
{
    if (PyType_Ready(&TrieType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&worldtrie_module);
    if (!module)
        return NULL;
    Py_INCREF(&TrieType);
    if (PyModule_AddObject(module, "Trie", (PyObject *)&TrieType) < 0) {
        Py_DECREF(&TrieType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
