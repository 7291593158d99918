/* CPU building blocks for the one-token (RNN mode) steps in C: a worker pool that runs
 * "phases" of independent chunks, and matrix-vector products for fp32, bf16 and int8 weights.
 *
 * Why not torch: decoding one token is ~60 matrix-vector products plus a few hundred tiny vector
 * ops. Measured on the 2-core development machine, torch streams fp32 weights at ~17 GB/s in a
 * matrix-vector product (with either thread count) and spends 5-10 us per small op; a plain
 * AVX2 row-dot kernel reads at ~26-35 GB/s over two threads, and a 768-wide vector op costs well
 * under a microsecond in C. The pool's synchronisation is what made the difference: a
 * pthread barrier per product cost ~100 us here (sleeping threads, a virtual machine), so the
 * workers spin between phases and take chunks from an atomic counter, which also keeps a
 * descheduled thread from stalling the others.
 *
 * Weights are row-major [out, in] (torch's F.linear layout, and the checkpoint's own for
 * 16-bit files, which are then used in place). Every product has a scalar twin (no SIMD) that
 * runs where AVX2 is missing; both are tested against torch.
 */
#ifndef CHATRWKV_CPUKERN_H
#define CHATRWKV_CPUKERN_H

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CK_X86 1
#define CK_PAUSE() _mm_pause()
#else
#define CK_X86 0
#define CK_PAUSE() ((void)0)
#endif

enum { CK_F32 = 0, CK_BF16 = 1, CK_I8 = 2 };

typedef struct {
    const void *w;       /* [out, in] in `dtype` */
    const float *scale;  /* [out] for int8, else NULL */
    int dtype, out, in;
} CkMat;

/* What a product does with each output element y: store, or fold it into dst. */
enum { EP_STORE = 0, EP_ADD, EP_TANH, EP_SIGMOID, EP_RELU_SQ };

/* ---- one output row: the dot product of a weight row with x ---------------------------- */

static float ck_dot_f32_scalar(const float *w, const float *x, int n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += w[i] * x[i]; s1 += w[i + 1] * x[i + 1];
        s2 += w[i + 2] * x[i + 2]; s3 += w[i + 3] * x[i + 3];
    }
    for (; i < n; i++) s0 += w[i] * x[i];
    return (s0 + s1) + (s2 + s3);
}

static inline float ck_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float ck_dot_bf16_scalar(const uint16_t *w, const float *x, int n) {
    float s0 = 0, s1 = 0;
    int i = 0;
    for (; i + 2 <= n; i += 2) {
        s0 += ck_bf16_to_f32(w[i]) * x[i];
        s1 += ck_bf16_to_f32(w[i + 1]) * x[i + 1];
    }
    for (; i < n; i++) s0 += ck_bf16_to_f32(w[i]) * x[i];
    return s0 + s1;
}

static float ck_dot_i8_scalar(const int8_t *w, const float *x, int n) {
    float s0 = 0, s1 = 0;
    int i = 0;
    for (; i + 2 <= n; i += 2) {
        s0 += (float)w[i] * x[i];
        s1 += (float)w[i + 1] * x[i + 1];
    }
    for (; i < n; i++) s0 += (float)w[i] * x[i];
    return s0 + s1;
}

#if CK_X86
#define CK_AVX2 __attribute__((target("avx2,fma")))

CK_AVX2 static inline float ck_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

CK_AVX2 static float ck_dot_f32_avx2(const float *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float s = ck_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

CK_AVX2 static inline __m256 ck_bf16x8(const uint16_t *p) {  /* 8 bf16 -> 8 fp32 */
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

CK_AVX2 static float ck_dot_bf16_avx2(const uint16_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(ck_bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(ck_bf16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(ck_bf16x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(ck_bf16x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(ck_bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
    float s = ck_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += ck_bf16_to_f32(w[i]) * x[i];
    return s;
}

CK_AVX2 static inline __m256 ck_i8x8(const int8_t *p) {  /* 8 int8 -> 8 fp32 */
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

CK_AVX2 static float ck_dot_i8_avx2(const int8_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(ck_i8x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(ck_i8x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(ck_i8x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(ck_i8x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(ck_i8x8(w + i), _mm256_loadu_ps(x + i), a0);
    float s = ck_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += (float)w[i] * x[i];
    return s;
}
#endif

/* 1 where the AVX2 kernels run; set once by ck_init (0: scalar twins, also forced by tests). */
static int ck_use_avx2 = 0;

static void ck_init(void) {
#if CK_X86
    __builtin_cpu_init();
    ck_use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}

static inline float ck_epilogue(int ep, float y) {
    switch (ep) {
    case EP_TANH: return tanhf(y);
    case EP_SIGMOID: return 1.0f / (1.0f + expf(-y));
    case EP_RELU_SQ: return y > 0 ? y * y : 0.0f;
    default: return y;
    }
}

/* Rows [r0, r1) of y = M x, each passed through `ep` (EP_ADD: dst[r] += y). */
static void ck_gemv_rows(const CkMat *m, const float *x, float *dst, int ep, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        float y;
        size_t off = (size_t)r * m->in;
        if (m->dtype == CK_F32) {
            const float *w = (const float *)m->w + off;
#if CK_X86
            y = ck_use_avx2 ? ck_dot_f32_avx2(w, x, m->in) : ck_dot_f32_scalar(w, x, m->in);
#else
            y = ck_dot_f32_scalar(w, x, m->in);
#endif
        } else if (m->dtype == CK_BF16) {
            const uint16_t *w = (const uint16_t *)m->w + off;
#if CK_X86
            y = ck_use_avx2 ? ck_dot_bf16_avx2(w, x, m->in) : ck_dot_bf16_scalar(w, x, m->in);
#else
            y = ck_dot_bf16_scalar(w, x, m->in);
#endif
        } else {
            const int8_t *w = (const int8_t *)m->w + off;
#if CK_X86
            y = ck_use_avx2 ? ck_dot_i8_avx2(w, x, m->in) : ck_dot_i8_scalar(w, x, m->in);
#else
            y = ck_dot_i8_scalar(w, x, m->in);
#endif
            y *= m->scale[r];
        }
        if (ep == EP_ADD) dst[r] += y;
        else dst[r] = ck_epilogue(ep, y);
    }
}

/* fp32 dot product through the fastest kernel available. */
static inline float ck_dot_f32(const float *w, const float *x, int n) {
#if CK_X86
    if (ck_use_avx2) return ck_dot_f32_avx2(w, x, n);
#endif
    return ck_dot_f32_scalar(w, x, n);
}

/* ---- the pool ---------------------------------------------------------------------------
 *
 * The calling thread runs a step as a sequence of phases. A phase is `total` independent chunks
 * (rows of products, or heads); it is published by storing one 64-bit ticket
 * (seq << 40 | total << 20 | next). Every thread, the caller included, takes chunks by
 * compare-and-swap on the ticket, so a thread that is late (asleep, descheduled) finds the
 * chunks taken and skips the phase: nobody waits for a thread that is not there. The caller
 * waits until `done` reaches `total`, does the serial work between phases, and publishes the
 * next. Workers spin on the ticket for a while after each phase, then sleep on a condition
 * variable until the next step wakes them.
 *
 * A busy machine (one other CPU-bound process on 2 cores) breaks the one assumption left: a
 * worker that took a chunk and was then descheduled makes the caller wait for it, a whole time
 * slice (milliseconds) for a phase that takes microseconds. The caller yields while it waits,
 * so a worker sharing its core can finish, and a wait that long (`stall_ns`) makes it run the
 * next phases alone for `solo_ns` (the workers, unfed, go to sleep), then try the pool again:
 * on a quiet machine no wait comes near it and every phase runs in parallel.
 */

#define CK_MAX_TASKS 8
#define CK_MAX_THREADS 64
#define CK_SPIN_NS 2000000L  /* how long an idle worker spins before it sleeps */
#define CK_STALL_NS 300000L  /* a straggler wait this long: a worker was descheduled */
#define CK_SOLO_NS 100000000L /* then the caller runs phases alone this long */

typedef struct CkPhase CkPhase;
typedef void (*CkChunkFn)(const CkPhase *ph, int chunk);

typedef struct {
    const CkMat *m;
    const float *x;
    float *dst;
    int ep, rows_per_chunk, first_chunk, n_chunks;
} CkTask;

struct CkPhase {
    CkChunkFn fn;          /* NULL: products (tasks); else fn(phase, chunk) */
    void *ctx;             /* for fn */
    int n_tasks;
    CkTask tasks[CK_MAX_TASKS];
};

typedef struct {
    uint64_t ticket;       /* atomic: seq << 40 | total << 20 | next */
    int done;              /* atomic: chunks finished in the current phase */
    CkPhase phase;
    int n_threads;         /* workers + the caller */
    int stop;
    int sleeping;          /* atomic: workers waiting on `wake` */
    long stall_ns, solo_ns;  /* CK_STALL_NS, CK_SOLO_NS (tests change them) */
    long solo_until;       /* the caller runs phases alone until then (0: not) */
    long n_phases, n_solo, n_stalls;  /* counts, for tests and tuning */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_t threads[CK_MAX_THREADS];
} CkPool;

#define CK_TICKET(seq, total, next) \
    (((uint64_t)(seq) << 40) | ((uint64_t)(total) << 20) | (uint64_t)(next))
#define CK_SEQ(t) ((t) >> 40)
#define CK_TOTAL(t) ((int)(((t) >> 20) & 0xFFFFF))
#define CK_NEXT(t) ((int)((t) & 0xFFFFF))

static void ck_run_chunk(const CkPhase *ph, int chunk) {
    if (ph->fn) {
        ph->fn(ph, chunk);
        return;
    }
    for (int i = 0; i < ph->n_tasks; i++) {
        const CkTask *t = &ph->tasks[i];
        if (chunk < t->first_chunk + t->n_chunks) {
            int r0 = (chunk - t->first_chunk) * t->rows_per_chunk;
            int r1 = r0 + t->rows_per_chunk;
            if (r1 > t->m->out) r1 = t->m->out;
            ck_gemv_rows(t->m, t->x, t->dst, t->ep, r0, r1);
            return;
        }
    }
}

/* Takes and runs chunks of the current phase until none is left; returns how many it ran. */
static int ck_work(CkPool *p) {
    int ran = 0;
    for (;;) {
        uint64_t t = __atomic_load_n(&p->ticket, __ATOMIC_ACQUIRE);
        if (CK_NEXT(t) >= CK_TOTAL(t)) return ran;
        if (!__atomic_compare_exchange_n(&p->ticket, &t, t + 1, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        /* The phase cannot end (nor its descriptor change) before this chunk is done. */
        ck_run_chunk(&p->phase, CK_NEXT(t));
        __atomic_add_fetch(&p->done, 1, __ATOMIC_RELEASE);
        ran++;
    }
}

static inline long ck_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *ck_worker(void *arg) {
    CkPool *p = (CkPool *)arg;
    uint64_t seen = 0;
    long idle_since = ck_now_ns();
    int spins = 0;
    while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
        uint64_t t = __atomic_load_n(&p->ticket, __ATOMIC_ACQUIRE);
        if (CK_SEQ(t) != CK_SEQ(seen) || CK_NEXT(t) < CK_TOTAL(t)) {
            seen = t;
            ck_work(p);
            idle_since = ck_now_ns();
            spins = 0;
            continue;
        }
        CK_PAUSE();
        if (++spins < 256) continue;
        spins = 0;
        if (ck_now_ns() - idle_since < CK_SPIN_NS) {
            sched_yield();  /* an overloaded machine: let whoever we wait for run */
            continue;
        }
        pthread_mutex_lock(&p->mu);
        __atomic_add_fetch(&p->sleeping, 1, __ATOMIC_SEQ_CST);
        while (!__atomic_load_n(&p->stop, __ATOMIC_SEQ_CST) &&
               CK_SEQ(__atomic_load_n(&p->ticket, __ATOMIC_SEQ_CST)) == CK_SEQ(seen))
            pthread_cond_wait(&p->wake, &p->mu);
        __atomic_sub_fetch(&p->sleeping, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&p->mu);
        idle_since = ck_now_ns();
    }
    return NULL;
}

static int ck_pool_start(CkPool *p, int n_threads) {
    memset(p, 0, sizeof *p);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > CK_MAX_THREADS) n_threads = CK_MAX_THREADS;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->stall_ns = CK_STALL_NS;
    p->solo_ns = CK_SOLO_NS;
    p->n_threads = 1;
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&p->threads[i], NULL, ck_worker, p) != 0) break;
        p->n_threads++;
    }
    return p->n_threads;
}

static void ck_pool_stop(CkPool *p) {
    __atomic_store_n(&p->stop, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    p->n_threads = 1;
}

/* Runs the phase described in p->phase with `total` chunks, the caller taking part (or alone,
 * after a stall: see the pool's comment). */
static void ck_run_phase(CkPool *p, int total) {
    if (total <= 0) return;
    p->n_phases++;
    if (p->solo_until && ck_now_ns() >= p->solo_until) p->solo_until = 0;
    if (p->n_threads == 1 || p->solo_until) {
        for (int c = 0; c < total; c++) ck_run_chunk(&p->phase, c);
        p->n_solo++;
        return;
    }
    uint64_t old = __atomic_load_n(&p->ticket, __ATOMIC_RELAXED);
    __atomic_store_n(&p->done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->ticket, CK_TICKET(CK_SEQ(old) + 1, total, 0), __ATOMIC_SEQ_CST);
    if (p->n_threads > 1 && __atomic_load_n(&p->sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    ck_work(p);
    long waited = 0;
    if (__atomic_load_n(&p->done, __ATOMIC_ACQUIRE) < total) {
        long t0 = ck_now_ns();
        for (int spins = 1; __atomic_load_n(&p->done, __ATOMIC_ACQUIRE) < total; spins++) {
            CK_PAUSE();
            if (spins % 256 == 0) sched_yield();  /* a descheduled worker may share our core */
        }
        waited = ck_now_ns() - t0;
    }
    if (waited >= p->stall_ns) {  /* stall_ns 0: every phase (tests) */
        p->n_stalls++;
        p->solo_until = ck_now_ns() + p->solo_ns;
    }
}

/* ---- products as phases ------------------------------------------------------------------ */

/* Rows per chunk: about 64 KiB of weights, so a chunk is a few microseconds of streaming. */
static int ck_rows_per_chunk(const CkMat *m) {
    int bytes = m->dtype == CK_F32 ? 4 : m->dtype == CK_BF16 ? 2 : 1;
    long row = (long)m->in * bytes;
    long rows = (65536 + row - 1) / row;
    if (rows < 1) rows = 1;
    return (int)rows;
}

static void ck_phase_begin(CkPool *p) {
    p->phase.fn = NULL;
    p->phase.n_tasks = 0;
}

/* Adds y = M x (through `ep`) to the phase being built; returns the phase's chunk count. */
static int ck_phase_add(CkPool *p, const CkMat *m, const float *x, float *dst, int ep) {
    CkPhase *ph = &p->phase;
    int first = 0;
    if (ph->n_tasks > 0) {
        CkTask *last = &ph->tasks[ph->n_tasks - 1];
        first = last->first_chunk + last->n_chunks;
    }
    if (m == NULL || m->w == NULL || ph->n_tasks == CK_MAX_TASKS) return first;
    CkTask *t = &ph->tasks[ph->n_tasks++];
    t->m = m;
    t->x = x;
    t->dst = dst;
    t->ep = ep;
    t->rows_per_chunk = ck_rows_per_chunk(m);
    t->first_chunk = first;
    t->n_chunks = (m->out + t->rows_per_chunk - 1) / t->rows_per_chunk;
    return first + t->n_chunks;
}

/* ---- small vector helpers (serial: C is a few thousand at most) ------------------------- */

static void ck_layer_norm(const float *x, const float *w, const float *b, float *out, int n,
                          float eps) {
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= n;
    float inv = (float)(1.0 / sqrt(var + eps));
    float m = (float)mean;
    for (int i = 0; i < n; i++) out[i] = (x[i] - m) * inv * w[i] + b[i];
}

static inline float ck_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#endif /* CHATRWKV_CPUKERN_H */
