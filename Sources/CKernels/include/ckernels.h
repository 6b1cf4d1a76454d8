#ifndef MESA_CKERNELS_H
#define MESA_CKERNELS_H
#include <stddef.h>
#include <stdint.h>

/// exp(x) for x in [-87.3, 88]; 0 below, clamped above. Max relative error ~2 ulp.
float mesa_expf(float x);

/// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i], i < n. out may alias up.
void mesa_silu_gate(const float *gate, const float *up, float *out, size_t n);

/// In-place softmax of x[0..<valid]; x[valid..<n] is set to 0.
void mesa_softmax(float *x, size_t valid, size_t n);

/// In-place GELU, tanh approximation.
void mesa_gelu_tanh(float *x, size_t n);
/// Gradients of out = silu(gate) * up: dgate = dout * up * silu'(gate), dup = dout * silu(gate), i < n.
void mesa_silu_gate_backward(const float *gate, const float *up, const float *dout, float *dgate, float *dup, size_t n);

/// Gradient of the tanh-approximated GELU at pre-activation x: dx = dout * gelu'(x), i < n. dx may alias dout.
void mesa_gelu_tanh_backward(const float *x, const float *dout, float *dx, size_t n);

/// The 64 SHA-256 round constants K (FIPS 180-4 §4.2.2).
const uint32_t *mesa_sha256_constants(void);

/// 1 when the CPU has the SHA extensions (SHA-NI) that `mesa_sha256_blocks` uses, else 0.
int mesa_sha256_has_shani(void);

/// SHA-256 compression of `blocks` 64-byte blocks into state[8] (FIPS 180-4 word order), with the
/// SHA-NI instructions. Call only when `mesa_sha256_has_shani()` is 1.
void mesa_sha256_blocks(uint32_t state[8], const uint8_t *data, size_t blocks);
/// Returns the free pages of every malloc arena to the kernel (glibc's malloc_trim(0)); 1 if any were.
int mesa_release_free_memory(void);


/// out[r, c] = Σ_i x[r, i] · w[c, i] for r < rows, c < n, i < k (row strides ldx, ldw, ldo): x · wᵀ
/// with w read in place, for few rows. The same bits on the AVX-512 and the AVX2 path (gemm_nt.c
/// states the summation order). path: 0 = the CPU's best, 1 = AVX-512 (the CPU must have it), 2 = AVX2.
void mesa_gemm_nt(const float *x, size_t ldx, const float *w, size_t ldw, float *out, size_t ldo,
                  size_t rows, size_t n, size_t k, int path);

/// 1 when `mesa_gemm_nt` takes the AVX-512 path on this CPU, else 0.
int mesa_gemm_nt_uses_avx512(void);

/// c[r, j] = Σ_p a[r, p] · b[p, j] for r < m, j < n, p < k (row strides lda, ldb, ldc), or c += that
/// when `accumulate` is 1: a · b with b read in place, for a few dozen rows. Each output is one chain of
/// fused multiply-adds in increasing p, so the result is the same bits on every path, tiling and column
/// split (gemm_nn.c). path: 0 = the CPU's best, 1 = AVX-512 (the CPU must have it), 2 = AVX2.
void mesa_gemm_nn(const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc,
                  size_t m, size_t n, size_t k, int accumulate, int path);

#endif
