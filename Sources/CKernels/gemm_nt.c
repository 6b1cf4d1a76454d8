// out = x · wᵀ for a few rows of x, reading w in place (no packing).
//
// OpenBLAS packs the whole of w into panels on every sgemm call. With a handful of rows (the
// prompts of scoring, the canary set, a query) that copy costs two to three times the arithmetic:
// 62–67% of a sequential evaluation's samples were sgemm_incopy. Here each tile of four rows of w
// is read once from memory and kept in L1 while every row of x passes over it.
//
// Every output is the same sum in the same order on both paths: lane l (0..15) accumulates
// x[i]·w[i] with fused multiply-adds over i ≡ l (mod 16), i < k16 = k & ~15, in increasing i; the
// 16 lanes are reduced as l + (l+8), then + (l+4), + (l+2), + (l+1); the tail i ≥ k16 is added last,
// in order, with fused multiply-adds. The AVX-512 path keeps the 16 lanes in one register, the AVX2
// path in two, so the results agree bit for bit on any x86-64 CPU with AVX2 and FMA, and do not
// depend on the tile shapes or on how the output columns are split between threads.
#include "ckernels.h"
#include <immintrin.h>

static inline float hsum8(__m256 v) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

static inline float tail_dot(const float *x, const float *w, size_t from, size_t k, float s) {
    for (size_t i = from; i < k; i++) s = __builtin_fmaf(x[i], w[i], s);
    return s;
}

// MARK: AVX2 + FMA (two 8-lane halves per output)

// R rows of x against C rows of w: 2·R·C accumulators, 2·C + 2 loads, within the 16 registers.
#define AVX2_TILE(R, C)                                                                                 \
    static void avx2_tile_##R##_##C(const float *x, size_t ldx, const float *w, size_t ldw, float *out,  \
                                    size_t ldo, size_t k) {                                              \
        __m256 lo[R][C], hi[R][C];                                                                       \
        for (int r = 0; r < R; r++)                                                                      \
            for (int c = 0; c < C; c++) { lo[r][c] = _mm256_setzero_ps(); hi[r][c] = _mm256_setzero_ps(); } \
        size_t k16 = k & ~(size_t)15;                                                                    \
        for (size_t i = 0; i < k16; i += 16) {                                                           \
            __m256 wl[C], wh[C];                                                                         \
            for (int c = 0; c < C; c++) {                                                                \
                wl[c] = _mm256_loadu_ps(w + c * ldw + i);                                                \
                wh[c] = _mm256_loadu_ps(w + c * ldw + i + 8);                                            \
            }                                                                                            \
            for (int r = 0; r < R; r++) {                                                                \
                __m256 xl = _mm256_loadu_ps(x + r * ldx + i), xh = _mm256_loadu_ps(x + r * ldx + i + 8); \
                for (int c = 0; c < C; c++) {                                                            \
                    lo[r][c] = _mm256_fmadd_ps(xl, wl[c], lo[r][c]);                                     \
                    hi[r][c] = _mm256_fmadd_ps(xh, wh[c], hi[r][c]);                                     \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
        for (int r = 0; r < R; r++)                                                                      \
            for (int c = 0; c < C; c++) {                                                                \
                float s = hsum8(_mm256_add_ps(lo[r][c], hi[r][c]));                                      \
                out[r * ldo + c] = tail_dot(x + r * ldx, w + c * ldw, k16, k, s);                        \
            }                                                                                            \
    }

AVX2_TILE(1, 1)
AVX2_TILE(2, 1)
AVX2_TILE(1, 2)
AVX2_TILE(2, 2)

typedef void (*tile_fn)(const float *, size_t, const float *, size_t, float *, size_t, size_t);

static void avx2_gemm_nt(const float *x, size_t ldx, const float *w, size_t ldw, float *out, size_t ldo,
                         size_t rows, size_t n, size_t k) {
    static const tile_fn by2[3] = {0, avx2_tile_1_2, avx2_tile_2_2};
    static const tile_fn by1[3] = {0, avx2_tile_1_1, avx2_tile_2_1};
    size_t c = 0;
    for (; c + 2 <= n; c += 2)
        for (size_t r = 0; r < rows; r += 2) {
            size_t rr = rows - r < 2 ? rows - r : 2;
            by2[rr](x + r * ldx, ldx, w + c * ldw, ldw, out + r * ldo + c, ldo, k);
        }
    for (; c < n; c++)
        for (size_t r = 0; r < rows; r += 2) {
            size_t rr = rows - r < 2 ? rows - r : 2;
            by1[rr](x + r * ldx, ldx, w + c * ldw, ldw, out + r * ldo + c, ldo, k);
        }
}

// MARK: AVX-512 (16 lanes per output)

#define AVX512_TILE(R, C)                                                                               \
    __attribute__((target("avx512f"))) static void avx512_tile_##R##_##C(                                \
        const float *x, size_t ldx, const float *w, size_t ldw, float *out, size_t ldo, size_t k, int pf) {  \
        __m512 acc[R][C];                                                                                \
        for (int r = 0; r < R; r++)                                                                      \
            for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();                                 \
        size_t k16 = k & ~(size_t)15;                                                                    \
        for (size_t i = 0; i < k16; i += 16) {                                                           \
            __m512 wv[C];                                                                                \
            for (int c = 0; c < C; c++) {                                                                \
                wv[c] = _mm512_loadu_ps(w + c * ldw + i);                                                \
                if (pf) _mm_prefetch((const char *)(w + (c + C) * ldw + i), _MM_HINT_T1);               \
            }                                                                                            \
            for (int r = 0; r < R; r++) {                                                                \
                __m512 xv = _mm512_loadu_ps(x + r * ldx + i);                                            \
                for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);           \
            }                                                                                            \
        }                                                                                                \
        for (int r = 0; r < R; r++)                                                                      \
            for (int c = 0; c < C; c++) {                                                                \
                __m256 l = _mm512_castps512_ps256(acc[r][c]);                                            \
                __m256 h = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r][c]), 1));     \
                float s = hsum8(_mm256_add_ps(l, h));                                                    \
                out[r * ldo + c] = tail_dot(x + r * ldx, w + c * ldw, k16, k, s);                        \
            }                                                                                            \
    }

AVX512_TILE(1, 1)
AVX512_TILE(2, 1)
AVX512_TILE(3, 1)
AVX512_TILE(4, 1)
AVX512_TILE(1, 4)
AVX512_TILE(2, 4)
AVX512_TILE(3, 4)
AVX512_TILE(4, 4)

typedef void (*wide_tile_fn)(const float *, size_t, const float *, size_t, float *, size_t, size_t, int);

// A w larger than the caches (the output embedding: 49152 × 576) is streamed from memory: the first
// pass of rows over a tile then prefetches the next tile into L2. Smaller ones stay cached, and there
// the prefetches only evicted the tile in use.
__attribute__((target("avx512f"))) static void avx512_gemm_nt(const float *x, size_t ldx, const float *w, size_t ldw,
                                                               float *out, size_t ldo, size_t rows, size_t n, size_t k) {
    static const wide_tile_fn by4[5] = {0, avx512_tile_1_4, avx512_tile_2_4, avx512_tile_3_4, avx512_tile_4_4};
    static const wide_tile_fn by1[5] = {0, avx512_tile_1_1, avx512_tile_2_1, avx512_tile_3_1, avx512_tile_4_1};
    int stream = n * k > ((size_t)1 << 22);
    size_t c = 0;
    for (; c + 4 <= n; c += 4)
        for (size_t r = 0; r < rows; r += 4) {
            size_t rr = rows - r < 4 ? rows - r : 4;
            by4[rr](x + r * ldx, ldx, w + c * ldw, ldw, out + r * ldo + c, ldo, k, stream && r == 0);
        }
    for (; c < n; c++)
        for (size_t r = 0; r < rows; r += 4) {
            size_t rr = rows - r < 4 ? rows - r : 4;
            by1[rr](x + r * ldx, ldx, w + c * ldw, ldw, out + r * ldo + c, ldo, k, 0);
        }
}

static int has_avx512 = -1;

int mesa_gemm_nt_uses_avx512(void) {
    if (has_avx512 < 0) {
        __builtin_cpu_init();
        has_avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return has_avx512;
}

void mesa_gemm_nt(const float *x, size_t ldx, const float *w, size_t ldw, float *out, size_t ldo,
                  size_t rows, size_t n, size_t k, int path) {
    int wide = path == 1 ? 1 : (path == 2 ? 0 : mesa_gemm_nt_uses_avx512());
    if (wide) avx512_gemm_nt(x, ldx, w, ldw, out, ldo, rows, n, k);
    else avx2_gemm_nt(x, ldx, w, ldw, out, ldo, rows, n, k);
}
