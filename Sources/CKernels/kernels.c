// Transcendental kernels, written so clang vectorizes each loop (no libm calls in the loops).
#include "ckernels.h"
#include <stdint.h>
#include <string.h>

// Range reduction x = n·ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r,
// and 2^n assembled in the exponent bits.
static inline float exp_core(float x) {
    const float lo = -87.33654f, hi = 88.0f;
    float xc = x < lo ? lo : (x > hi ? hi : x);
    float n = __builtin_rintf(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < lo ? 0.0f : y * scale;
}

float mesa_expf(float x) { return exp_core(x); }

void mesa_silu_gate(const float *gate, const float *up, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + exp_core(-g)) * up[i];
    }
}

void mesa_softmax(float *x, size_t valid, size_t n) {
    float m = -__builtin_inff();
    for (size_t i = 0; i < valid; i++) m = x[i] > m ? x[i] : m;
    float s = 0.0f;
    for (size_t i = 0; i < valid; i++) {
        float e = exp_core(x[i] - m);
        x[i] = e;
        s += e;
    }
    float inv = 1.0f / s;
    for (size_t i = 0; i < valid; i++) x[i] *= inv;
    for (size_t i = valid; i < n; i++) x[i] = 0.0f;
}

void mesa_gelu_tanh(float *x, size_t n) {
    const float c = 0.7978845608028654f;  // sqrt(2/pi)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float u = c * (v + 0.044715f * v * v * v);
        // tanh(u) = 1 - 2 / (1 + e^{2u})
        float t = 1.0f - 2.0f / (1.0f + exp_core(2.0f * u));
        x[i] = 0.5f * v * (1.0f + t);
    }
}

void mesa_silu_gate_backward(const float *gate, const float *up, const float *dout, float *dgate, float *dup, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float s = 1.0f / (1.0f + exp_core(-g));
        float silu = g * s;
        dup[i] = dout[i] * silu;
        dgate[i] = dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

void mesa_gelu_tanh_backward(const float *x, const float *dout, float *dx, size_t n) {
    const float c = 0.7978845608028654f;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float u = c * (v + 0.044715f * v * v * v);
        float t = 1.0f - 2.0f / (1.0f + exp_core(2.0f * u));
        float du = c * (1.0f + 3.0f * 0.044715f * v * v);
        dx[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}


/* ---- SHA-256 with the x86 SHA extensions ------------------------------------------------------
 * The 64 rounds run as 16 groups of 4. Group j adds K[4j..4j+3] to message words M[j%4], runs two
 * sha256rnds2 (2 rounds each), and advances the schedule: msg2 finalizes M[(j+1)%4] (groups 3..14)
 * and msg1 starts M[(j-1)%4] (groups 1..12). State is kept as ABEF / CDGH, the instructions' layout. */
#include <immintrin.h>

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

const uint32_t *mesa_sha256_constants(void) { return sha256_k; }

int mesa_sha256_has_shani(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("ssse3");
}

__attribute__((target("sha,sse4.1,ssse3")))
void mesa_sha256_blocks(uint32_t state[8], const uint8_t *data, size_t blocks) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&state[0]);      /* DCBA */
    __m128i s1 = _mm_loadu_si128((const __m128i *)&state[4]);       /* HGFE */
    tmp = _mm_shuffle_epi32(tmp, 0xB1);                             /* CDAB */
    s1 = _mm_shuffle_epi32(s1, 0x1B);                               /* EFGH */
    __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);                       /* ABEF */
    s1 = _mm_blend_epi16(s1, tmp, 0xF0);                            /* CDGH */

    while (blocks--) {
        const __m128i abef = s0, cdgh = s1;
        __m128i m[4];
        for (int j = 0; j < 16; j++) {
            if (j < 4) m[j] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * j)), bswap);
            __m128i msg = _mm_add_epi32(m[j & 3], _mm_loadu_si128((const __m128i *)&sha256_k[4 * j]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, msg);
            if (j >= 3 && j < 15) {
                __m128i t = _mm_alignr_epi8(m[j & 3], m[(j + 3) & 3], 4);
                m[(j + 1) & 3] = _mm_sha256msg2_epu32(_mm_add_epi32(m[(j + 1) & 3], t), m[j & 3]);
            }
            msg = _mm_shuffle_epi32(msg, 0x0E);
            s0 = _mm_sha256rnds2_epu32(s0, s1, msg);
            if (j >= 1 && j < 13) m[(j + 3) & 3] = _mm_sha256msg1_epu32(m[(j + 3) & 3], m[j & 3]);
        }
        s0 = _mm_add_epi32(s0, abef);
        s1 = _mm_add_epi32(s1, cdgh);
        data += 64;
    }

    tmp = _mm_shuffle_epi32(s0, 0x1B);                              /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);                               /* DCHG */
    s0 = _mm_blend_epi16(tmp, s1, 0xF0);                            /* DCBA */
    s1 = _mm_alignr_epi8(s1, tmp, 8);                               /* HGFE */
    _mm_storeu_si128((__m128i *)&state[0], s0);
    _mm_storeu_si128((__m128i *)&state[4], s1);
}

#ifdef __GLIBC__
#include <malloc.h>
#endif

int mesa_release_free_memory(void) {
#ifdef __GLIBC__
    return malloc_trim(0);
#else
    return 0;
#endif
}
