/* How fast the decode kernels can stream, next to a plain read and to an int4 kernel with 8-bit
 * activations: the measurement behind issue 14's decode/bw figures. bench_ceiling.py compiles
 * it, runs every kind and prints the table; by hand:
 *
 *     cc -O2 -pthread -Ichatrwkv/models benchmarks/ceiling.c -o /tmp/ceiling -lm
 *     /tmp/ceiling KIND MIB REPS THREADS COLS
 *
 * KIND: read (_cpukern.h's ck_stream_sum, the bench's bandwidth probe: a 512-bit load and an
 * integer add per 64 bytes, the memory system alone), fp32, int8, int4 (the C step's kernels
 * from _cpukern.h, fp32 activations), int4q8 (a sketch, not a
 * chatrwkv kernel: int4 weights times activations rounded to int8 per group of 32, with
 * AVX-512 VNNI's vpdpbusd, as llama.cpp's Q4_0 x Q8_0 dot product does). MIB of [rows, COLS]
 * weights are split between THREADS threads by rows and read REPS times after one warm-up
 * read; prints the weight bytes per second (int4: packed nibbles and fp16 scales). A MIB of 1-2
 * stays in the caches: what the kernel computes; thousands stream from memory. Exits 3 where
 * the CPU lacks AVX-512 (or VNNI, for int4q8). Before timing, int4q8 is checked against a
 * double-precision sum of its own weights and activations.
 */
#define _GNU_SOURCE
#include "_cpukern.h"

#include <stdio.h>
#include <time.h>

#define CK_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c,avx512vnni")))

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* int4q8 layout, per block of 128 weights (64 bytes, 16 dwords): the low nibbles of dwords 0-7
 * are group 0 (byte j of dword i: weight 4 i + j), of dwords 8-15 group 1, the high nibbles
 * groups 2 and 3; codes u = w / d + 8 with d the row's fp16 scale of the group (gs). xq holds
 * the activations in the same order as int8, xs[g] the scale of group g's activations, sum8[g]
 * 8 times the sum of its int8 activations (the code offset, as a float). */
static int q8_code(const uint8_t *row, int e) {
    int b = e / 128, k = e % 128, g = k / 32, r = k % 32, dword = (g & 1) * 8 + r / 4;
    uint8_t byte = row[(size_t)b * 64 + 4 * dword + r % 4];
    return g < 2 ? byte & 15 : byte >> 4;
}

CK_VNNI static float dot_int4q8(const uint8_t *w, const uint16_t *gs, const float *xs,
                                const float *sum8, const int8_t *xq, int n) {
    const __m512i low = _mm512_set1_epi8(15);
    const __m512i first = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i second = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    __m128 off = _mm_setzero_ps();
    for (int b = 0; b < n / 128; b++) {
        CK_PF(w + (size_t)b * 64);
        __m512i q = _mm512_loadu_si512((const void *)(w + (size_t)b * 64));
        __m512i lo = _mm512_and_si512(q, low), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low);
        __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo,
                                         _mm512_loadu_si512((const void *)(xq + b * 128)));
        __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi,
                                         _mm512_loadu_si512((const void *)(xq + b * 128 + 64)));
        __m128 d = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(gs + 4 * b))),
                              _mm_loadu_ps(xs + 4 * b));
        off = _mm_fmadd_ps(d, _mm_loadu_ps(sum8 + 4 * b), off);
        __m512 sc = _mm512_castps128_ps512(d);
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_permutexvar_ps(first, sc), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_permutexvar_ps(second, sc), a1);
    }
    off = _mm_add_ps(off, _mm_movehl_ps(off, off));
    off = _mm_add_ss(off, _mm_movehdup_ps(off));
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) - _mm_cvtss_f32(off);
}

typedef struct {
    int kind, n, reps;
    size_t rb;               /* bytes a row */
    long r0, r1;
    const uint8_t *w;        /* the weights, in the kind's format */
    const uint16_t *gs;      /* int4: fp16 scales [rows, n / 32] */
    const float *x, *xs, *sum8;
    const int8_t *xq;
    float *y;
    long long sink;
} Job;

enum { READ, FP32, INT8, INT4, INT4Q8 };

static void *run(void *arg) {
    Job *j = arg;
    int n = j->n, ng = n / 32;
    size_t rb = j->rb;
    for (int k = 0; k < j->reps; k++) {
        if (j->kind == READ) {
            j->sink += ck_stream_sum(j->w + j->r0 * rb, (j->r1 - j->r0) * rb);
            continue;
        }
        for (long r = j->r0; r < j->r1;) {
            const uint8_t *wr = j->w + r * rb;
            switch (j->kind) {
            case FP32: j->y[r] = ck_dot_f32_avx512((const float *)wr, j->x, n); r++; break;
            case INT8: ck_dot4_i8_avx512((const int8_t *)wr, rb, j->x, n, j->y + r); r += 4; break;
            case INT4:
                ck_dot4_i4g32_avx512(wr, rb, j->gs + r * ng, ng, j->x, n, j->y + r);
                r += 4;
                break;
            default: j->y[r] = dot_int4q8(wr, j->gs + r * ng, j->xs, j->sum8, j->xq, n); r++; break;
            }
        }
    }
    return NULL;
}

static int check_int4q8(void) {
    enum { N = 1024, NG = N / 32 };
    uint8_t w[N / 2];
    uint16_t gs[NG];
    int8_t xq[N];
    float xs[NG], sum8[NG];
    srand(7);
    for (int i = 0; i < N / 2; i++) w[i] = (uint8_t)rand();
    for (int i = 0; i < N; i++) xq[i] = (int8_t)(rand() % 255 - 127);
    for (int g = 0; g < NG; g++) {
        gs[g] = ck_f32_to_f16(0.001f * (1 + rand() % 100));
        xs[g] = 0.01f * (1 + rand() % 10);
        int s = 0;
        for (int i = 0; i < 32; i++) s += xq[32 * g + i];
        sum8[g] = 8.0f * s;
    }
    double want = 0, mag = 0;
    for (int e = 0; e < N; e++) {
        double t = (double)(q8_code(w, e) - 8) * ck_f16_to_f32(gs[e / 32]) * xs[e / 32] * xq[e];
        want += t;
        mag += fabs(t);
    }
    float got = dot_int4q8(w, gs, xs, sum8, xq, N);
    double rel = fabs(got - want) / mag;
    fprintf(stderr, "int4q8 check: %.6g vs %.6g (error %.2g of the sum of |terms|)\n", got, want,
            rel);
    return rel < 1e-5;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: ceiling read|fp32|int8|int4|int4q8 MIB REPS THREADS COLS\n");
        return 2;
    }
    const char *names[] = {"read", "fp32", "int8", "int4", "int4q8"};
    int kind = -1;
    for (int i = 0; i < 5; i++)
        if (!strcmp(argv[1], names[i])) kind = i;
    long mib = atol(argv[2]);
    int reps = atoi(argv[3]), threads = atoi(argv[4]), n = atoi(argv[5]);
    if (kind < 0 || mib < 1 || reps < 1 || threads < 1 || threads > 64 || n < 128 || n % 128) {
        fprintf(stderr, "ceiling: bad arguments (COLS: a multiple of 128)\n");
        return 2;
    }
    ck_init();
    if (ck_isa < (kind == INT4Q8 ? CK_ISA_VNNI : CK_ISA_AVX512)) {
        fprintf(stderr, "ceiling: this CPU lacks AVX-512%s\n", kind == INT4Q8 ? " VNNI" : "");
        return 3;
    }
    if (kind == INT4Q8 && !check_int4q8()) return 1;
    int ng = n / 32;
    size_t rb = kind == FP32 ? 4 * (size_t)n : kind == INT8 || kind == READ ? (size_t)n : (size_t)n / 2;
    long rows = (mib << 20) / (long)rb / (4L * threads) * (4L * threads);
    if (rows < 4L * threads) rows = 4L * threads;
    uint8_t *w = aligned_alloc(64, rows * rb);
    uint16_t *gs = malloc(rows * ng * sizeof(uint16_t));
    float *x = malloc(n * sizeof(float)), *y = malloc(rows * sizeof(float)),
          *xs = malloc(ng * sizeof(float)), *sum8 = malloc(ng * sizeof(float));
    int8_t *xq = malloc(n);
    if (!w || !gs || !x || !y || !xs || !xq || !sum8) {
        fprintf(stderr, "ceiling: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < rows * rb; i++) w[i] = (uint8_t)(i * 2654435761u >> 24) & 0x77;
    if (kind == FP32)  /* normal numbers: a denormal operand costs an FMA a microcode assist */
        for (size_t i = 0; i < rows * (size_t)n; i++) ((float *)w)[i] = 0.001f * (float)(w[i] & 7);
    for (long i = 0; i < rows * ng; i++) gs[i] = 0x2000;  /* fp16 2^-7 */
    for (int i = 0; i < n; i++) x[i] = 0.5f, xq[i] = 3;
    for (int g = 0; g < ng; g++) xs[g] = 0.01f, sum8[g] = 8.0f * 3 * 32;
    Job jobs[64];
    pthread_t tid[64];
    for (int t = 0; t < threads; t++)
        jobs[t] = (Job){kind, n, 1, rb, rows / threads * t, rows / threads * (t + 1), w, gs, x,
                        xs, sum8, xq, y, 0};
    for (int t = 0; t < threads; t++) run(&jobs[t]);  /* warm-up: pages touched, caches filled */
    for (int t = 0; t < threads; t++) jobs[t].reps = reps;
    double t0 = now_s();
    for (int t = 1; t < threads; t++) pthread_create(&tid[t], NULL, run, &jobs[t]);
    run(&jobs[0]);
    for (int t = 1; t < threads; t++) pthread_join(tid[t], NULL);
    double dt = now_s() - t0;
    size_t bytes = rows * (rb + (kind == INT4 || kind == INT4Q8 ? 2 * (size_t)ng : 0));
    printf("%.4g\n", (double)bytes * reps / dt);
    return 0;
}
