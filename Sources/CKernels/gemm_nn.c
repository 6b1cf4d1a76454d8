// out = a · b (or out += a · b) for a few dozen rows of a, reading b in place (no packing): the input
// gradients of the backward pass of v*'s optimization, ∂x[R, in] = ∂y[R, out] · W[out, in], and the
// logits' ∂h[L, d] = ∂logits[L, V] · E[V, d].
//
// OpenBLAS copies the whole of b into panels on every call (`sgemm_itcopy`: 20% of a ROME edit's
// samples, the output embedding's 113 MB on every optimization step). Here b is read row by row where
// it lies: a tile of R rows of a times 16–32 columns of b keeps R·C accumulators in registers, and each
// step p broadcasts a[r, p] against b[p, columns]. Only the small matrix a is copied, a block of KB
// columns at a time, so that a tile's R values for one p are adjacent (a's rows, 196 KB apart for
// the logits, would otherwise fall in one L1 set).
//
// Every output is one chain of fused multiply-adds over p = 0, 1, …, k−1 in order, started from 0 (or
// from out's value when accumulating). No lanes are reduced: each output column is its own lane. So
// the result is the same bits on the AVX-512 path and the AVX2 path, for any tile shape, any split of
// the columns between threads and any blocking of k (a block's partial sum is stored in out exactly
// and resumed from there).
#include "ckernels.h"
#include <immintrin.h>
#include <stdlib.h>

// k is taken in blocks of KB: a tile's columns of b for one block (KB · 128 bytes) stay in L1 while
// every row tile of a passes over them.
#define KB 64
// A b larger than the caches (the output embedding: 49152 × 576) is streamed from memory: the tiles of
// the first row block prefetch their columns of the next k block into L2. Without it the strided
// reads of one block's columns wait on memory, and the product is slower than OpenBLAS's packed one.
#define STREAM_FLOATS ((size_t)1 << 22)

// MARK: AVX2 + FMA: R rows × C vectors of 8 columns, the last vector masked by `mask`.

#define AVX2_NN_TILE(R, C)                                                                              \
    static void avx2_nn_##R##_##C(const float *ap, const float *b, size_t ldb, float *c,                  \
                                  size_t ldc, size_t k, int from_zero, __m256i mask) {                    \
        __m256 acc[R][C];                                                                                \
        for (int r = 0; r < R; r++)                                                                      \
            for (int j = 0; j < C; j++)                                                                  \
                acc[r][j] = from_zero ? _mm256_setzero_ps()                                              \
                          : j == C - 1 ? _mm256_maskload_ps(c + r * ldc + 8 * j, mask)                   \
                                       : _mm256_loadu_ps(c + r * ldc + 8 * j);                           \
        for (size_t p = 0; p < k; p++) {                                                                 \
            __m256 bv[C];                                                                                \
            for (int j = 0; j < C; j++)                                                                  \
                bv[j] = j == C - 1 ? _mm256_maskload_ps(b + p * ldb + 8 * j, mask)                       \
                                   : _mm256_loadu_ps(b + p * ldb + 8 * j);                               \
            for (int r = 0; r < R; r++) {                                                                \
                __m256 av = _mm256_broadcast_ss(ap + p * R + r);                                         \
                for (int j = 0; j < C; j++) acc[r][j] = _mm256_fmadd_ps(av, bv[j], acc[r][j]);           \
            }                                                                                            \
        }                                                                                                \
        for (int r = 0; r < R; r++)                                                                      \
            for (int j = 0; j < C; j++) {                                                                \
                if (j == C - 1) _mm256_maskstore_ps(c + r * ldc + 8 * j, mask, acc[r][j]);               \
                else _mm256_storeu_ps(c + r * ldc + 8 * j, acc[r][j]);                                   \
            }                                                                                            \
    }

#define AVX2_NN_ROWS(C) \
    AVX2_NN_TILE(1, C) AVX2_NN_TILE(2, C) AVX2_NN_TILE(3, C) AVX2_NN_TILE(4, C) AVX2_NN_TILE(5, C) AVX2_NN_TILE(6, C)
AVX2_NN_ROWS(1)
AVX2_NN_ROWS(2)

typedef void (*avx2_nn_fn)(const float *, const float *, size_t, float *, size_t, size_t, int, __m256i);

// ap[t][p][r] = a[t·RT + r, p0 + p] for the row tiles t of RT rows (the last one rr = m − t·RT rows),
// p < kk: each tile's block of a, its R values for one p adjacent.
static void pack_a(const float *a, size_t lda, size_t m, size_t p0, size_t kk, size_t RT, float *ap) {
    for (size_t t = 0; t * RT < m; t++) {
        size_t r0 = t * RT, rr = m - r0 < RT ? m - r0 : RT;
        float *dst = ap + r0 * kk;
        for (size_t r = 0; r < rr; r++) {
            const float *src = a + (r0 + r) * lda + p0;
            for (size_t p = 0; p < kk; p++) dst[p * rr + r] = src[p];
        }
    }
}

static void avx2_gemm_nn(const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc,
                         size_t m, size_t n, size_t k, int accumulate, float *ap) {
    static const avx2_nn_fn tiles[3][7] = {
        {0},
        {0, avx2_nn_1_1, avx2_nn_2_1, avx2_nn_3_1, avx2_nn_4_1, avx2_nn_5_1, avx2_nn_6_1},
        {0, avx2_nn_1_2, avx2_nn_2_2, avx2_nn_3_2, avx2_nn_4_2, avx2_nn_5_2, avx2_nn_6_2}};
    for (size_t p0 = 0; p0 < k; p0 += KB) {
        size_t kk = k - p0 < KB ? k - p0 : KB;
        int from_zero = !accumulate && p0 == 0;
        pack_a(a, lda, m, p0, kk, 6, ap);
        for (size_t j = 0; j < n; j += 16) {
            size_t w = n - j < 16 ? n - j : 16, C = w > 8 ? 2 : 1, tail = w - 8 * (C - 1);
            int lanes[8];
            for (int l = 0; l < 8; l++) lanes[l] = (size_t)l < tail ? -1 : 0;
            __m256i mask = _mm256_loadu_si256((const __m256i *)lanes);
            for (size_t r = 0; r < m; r += 6) {
                size_t rr = m - r < 6 ? m - r : 6;
                tiles[C][rr](ap + r * kk, b + p0 * ldb + j, ldb, c + r * ldc + j, ldc, kk, from_zero, mask);
            }
        }
    }
}

// MARK: AVX-512: R rows × C vectors of 16 columns (up to 12 × 2: 24 accumulators).

#define AVX512_NN_TILE(R, C)                                                                            \
    __attribute__((target("avx512f"))) static void avx512_nn_##R##_##C(                                  \
        const float *ap, const float *b, size_t ldb, float *c, size_t ldc, size_t k, int from_zero,      \
        __mmask16 mask, int pf) {                                                                        \
        __m512 acc[R][C];                                                                                \
        for (int r = 0; r < R; r++)                                                                      \
            for (int j = 0; j < C; j++)                                                                  \
                acc[r][j] = from_zero ? _mm512_setzero_ps()                                              \
                          : j == C - 1 ? _mm512_maskz_loadu_ps(mask, c + r * ldc + 16 * j)               \
                                       : _mm512_loadu_ps(c + r * ldc + 16 * j);                          \
        for (size_t p = 0; p < k; p++) {                                                                 \
            __m512 bv[C];                                                                                \
            for (int j = 0; j < C; j++) {                                                                \
                bv[j] = j == C - 1 ? _mm512_maskz_loadu_ps(mask, b + p * ldb + 16 * j)                   \
                                   : _mm512_loadu_ps(b + p * ldb + 16 * j);                              \
                if (pf) _mm_prefetch((const char *)(b + (p + KB) * ldb + 16 * j), _MM_HINT_T1);          \
            }                                                                                            \
            for (int r = 0; r < R; r++) {                                                                \
                __m512 av = _mm512_set1_ps(ap[p * R + r]);                                               \
                for (int j = 0; j < C; j++) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);           \
            }                                                                                            \
        }                                                                                                \
        for (int r = 0; r < R; r++)                                                                      \
            for (int j = 0; j < C; j++) {                                                                \
                if (j == C - 1) _mm512_mask_storeu_ps(c + r * ldc + 16 * j, mask, acc[r][j]);            \
                else _mm512_storeu_ps(c + r * ldc + 16 * j, acc[r][j]);                                  \
            }                                                                                            \
    }

#define AVX512_NN_ROWS(C)                                                                                 \
    AVX512_NN_TILE(1, C) AVX512_NN_TILE(2, C) AVX512_NN_TILE(3, C) AVX512_NN_TILE(4, C) AVX512_NN_TILE(5, C) \
    AVX512_NN_TILE(6, C) AVX512_NN_TILE(7, C) AVX512_NN_TILE(8, C) AVX512_NN_TILE(9, C) AVX512_NN_TILE(10, C) \
    AVX512_NN_TILE(11, C) AVX512_NN_TILE(12, C)
AVX512_NN_ROWS(1)
AVX512_NN_ROWS(2)

typedef void (*avx512_nn_fn)(const float *, const float *, size_t, float *, size_t, size_t, int, __mmask16, int);

__attribute__((target("avx512f"))) static void avx512_gemm_nn(const float *a, size_t lda, const float *b, size_t ldb,
                                                               float *c, size_t ldc, size_t m, size_t n, size_t k,
                                                               int accumulate, float *ap) {
    int stream = n * k > STREAM_FLOATS;
    static const avx512_nn_fn tiles[3][13] = {
        {0},
        {0, avx512_nn_1_1, avx512_nn_2_1, avx512_nn_3_1, avx512_nn_4_1, avx512_nn_5_1, avx512_nn_6_1, avx512_nn_7_1,
         avx512_nn_8_1, avx512_nn_9_1, avx512_nn_10_1, avx512_nn_11_1, avx512_nn_12_1},
        {0, avx512_nn_1_2, avx512_nn_2_2, avx512_nn_3_2, avx512_nn_4_2, avx512_nn_5_2, avx512_nn_6_2, avx512_nn_7_2,
         avx512_nn_8_2, avx512_nn_9_2, avx512_nn_10_2, avx512_nn_11_2, avx512_nn_12_2}};
    for (size_t p0 = 0; p0 < k; p0 += KB) {
        size_t kk = k - p0 < KB ? k - p0 : KB;
        int from_zero = !accumulate && p0 == 0;
        pack_a(a, lda, m, p0, kk, 12, ap);
        for (size_t j = 0; j < n; j += 32) {
            size_t w = n - j < 32 ? n - j : 32, C = w > 16 ? 2 : 1, tail = w - 16 * (C - 1);
            __mmask16 mask = tail == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << tail) - 1);
            for (size_t r = 0; r < m; r += 12) {
                size_t rr = m - r < 12 ? m - r : 12;
                tiles[C][rr](ap + r * kk, b + p0 * ldb + j, ldb, c + r * ldc + j, ldc, kk, from_zero, mask,
                             stream && r == 0 && p0 + KB < k);
            }
        }
    }
}

void mesa_gemm_nn(const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc,
                  size_t m, size_t n, size_t k, int accumulate, int path) {
    if (m == 0 || n == 0) return;
    if (k == 0) {
        if (!accumulate)
            for (size_t r = 0; r < m; r++)
                for (size_t j = 0; j < n; j++) c[r * ldc + j] = 0;
        return;
    }
    int wide = path == 1 ? 1 : (path == 2 ? 0 : mesa_gemm_nt_uses_avx512());
    float *ap = malloc(m * (k < KB ? k : KB) * sizeof(float));
    if (!ap) abort();
    if (wide) avx512_gemm_nn(a, lda, b, ldb, c, ldc, m, n, k, accumulate, ap);
    else avx2_gemm_nn(a, lda, b, ldb, c, ldc, m, n, k, accumulate, ap);
    free(ap);
}
