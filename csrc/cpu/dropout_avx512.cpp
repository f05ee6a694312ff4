// AVX-512 dropout kernel: sixteen Philox4x32-10 calls (blocks b .. b+15, 128
// elements at 16 bits each, common/philox.h) per step, in two groups of eight
// with one call per 64-bit lane, as the AVX2 kernel (dropout_avx2.cpp) runs
// four. Only AVX-512F instructions: the 16-bit values are compared as the low
// and high halves of 32-bit words (even and odd elements), and the two
// 16-bit compare masks are interleaved into one keep bit per element, which
// masks the scale vector. A step holding a tie is redone by the portable
// code, which draws the tie-break; the mask is identical to the other builds'.
//
// Why: the Philox rounds, not memory, bound the AVX2 kernel (16x64x56x56
// forward 0.82-0.95 ms against 0.17-0.29 for a copy of the same tensor, AMD
// EPYC VM with AVX-512). Interleaved in one process there: 0.91 -> 0.70 ms
// (best 0.81 -> 0.59).
#include <cstdint>

#include "../common/philox.h"
#include "dropout_kernels.h"

#pragma GCC target("avx512f,avx2,fma")

#include <immintrin.h>

namespace cnnkernels {
namespace cpu {
namespace drop {
namespace avx512 {
namespace {

struct Keys {
  __m512i k[20];  // round r: k[2r] = key word 0, k[2r+1] = key word 1, per 64-bit lane
  explicit Keys(uint64_t seed) {
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      k[2 * r] = _mm512_set1_epi64(k0);
      k[2 * r + 1] = _mm512_set1_epi64(k1);
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
  }
};

// Calls for blocks b .. b+15: out[j] (j = 0..3) holds the 32 16-bit values
// of blocks b+4j .. b+4j+3 in element order (words w0 w1 w2 w3 of each).
inline void philox16(uint64_t b, uint64_t offset, const Keys& keys, __m512i out[4]) {
  const __m512i vb = _mm512_set1_epi64(static_cast<long long>(b));
  const __m512i bA = _mm512_add_epi64(vb, _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  const __m512i bB = _mm512_add_epi64(vb, _mm512_setr_epi64(8, 9, 10, 11, 12, 13, 14, 15));
  // state word q of group A / B in the low 32 bits of each 64-bit lane
  __m512i a0 = bA, a1 = _mm512_srli_epi64(bA, 32), b0 = bB, b1 = _mm512_srli_epi64(bB, 32);
  __m512i a2 = _mm512_set1_epi64(static_cast<uint32_t>(offset));
  __m512i a3 = _mm512_set1_epi64(static_cast<uint32_t>(offset >> 32));
  __m512i b2 = a2, b3 = a3;
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const __m512i k0 = keys.k[2 * r], k1 = keys.k[2 * r + 1];
    const __m512i pa0 = _mm512_mul_epu32(a0, m0), pa1 = _mm512_mul_epu32(a2, m1);
    const __m512i pb0 = _mm512_mul_epu32(b0, m0), pb1 = _mm512_mul_epu32(b2, m1);
    a0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(pa1, 32), a1), k0);
    a2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(pa0, 32), a3), k1);
    a1 = pa1;
    a3 = pa0;
    b0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(pb1, 32), b1), k0);
    b2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(pb0, 32), b3), k1);
    b1 = pb1;
    b3 = pb0;
  }
  // per 64-bit lane j: {w0, w1} and {w2, w3} of call j
  const __m512i a01 = _mm512_mask_blend_epi32(0xAAAA, a0, _mm512_slli_epi64(a1, 32));
  const __m512i a23 = _mm512_mask_blend_epi32(0xAAAA, a2, _mm512_slli_epi64(a3, 32));
  const __m512i b01 = _mm512_mask_blend_epi32(0xAAAA, b0, _mm512_slli_epi64(b1, 32));
  const __m512i b23 = _mm512_mask_blend_epi32(0xAAAA, b2, _mm512_slli_epi64(b3, 32));
  const __m512i lo4 = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i hi4 = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  out[0] = _mm512_permutex2var_epi64(a01, lo4, a23);
  out[1] = _mm512_permutex2var_epi64(a01, hi4, a23);
  out[2] = _mm512_permutex2var_epi64(b01, lo4, b23);
  out[3] = _mm512_permutex2var_epi64(b01, hi4, b23);
}

// Bits 0..15 of x moved to the even bits 0, 2, .., 30.
inline uint32_t spread16(uint32_t x) {
  x = (x | (x << 8)) & 0x00FF00FFu;
  x = (x | (x << 4)) & 0x0F0F0F0Fu;
  x = (x | (x << 2)) & 0x33333333u;
  x = (x | (x << 1)) & 0x55555555u;
  return x;
}

// Keep bits of the 128 elements from 8 b (keep[j]: elements 32j .. 32j+31);
// false when a value ties with the threshold's high half.
inline bool keep_bits(uint64_t b, uint64_t offset, const Keys& keys, __m512i thi,
                      uint32_t keep[4]) {
  __m512i w[4];
  philox16(b, offset, keys, w);
  const __m512i low = _mm512_set1_epi32(0xFFFF);
  __mmask16 tie = 0;
  for (int j = 0; j < 4; ++j) {
    const __m512i ev = _mm512_and_si512(w[j], low), od = _mm512_srli_epi32(w[j], 16);
    tie |= _mm512_cmpeq_epu32_mask(ev, thi) | _mm512_cmpeq_epu32_mask(od, thi);
    const uint32_t ke = _mm512_cmpgt_epu32_mask(ev, thi), ko = _mm512_cmpgt_epu32_mask(od, thi);
    keep[j] = spread16(ke) | (spread16(ko) << 1);
  }
  return tie == 0;
}

// y[0, 32) = x[0, 32) * (keep ? scale : 0), bit e of k for element e.
inline void apply32(const float* x, float* y, uint32_t k, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  for (int h = 0; h < 2; ++h) {
    const __m512 mk = _mm512_maskz_mov_ps(static_cast<__mmask16>(k >> (16 * h)), vs);
    _mm512_storeu_ps(y + 16 * h, _mm512_mul_ps(_mm512_loadu_ps(x + 16 * h), mk));
  }
}

inline void apply32(const double* x, double* y, uint32_t k, double scale) {
  const __m512d vs = _mm512_set1_pd(scale);
  for (int q = 0; q < 4; ++q) {
    const __m512d mk = _mm512_maskz_mov_pd(static_cast<__mmask8>(k >> (8 * q)), vs);
    _mm512_storeu_pd(y + 8 * q, _mm512_mul_pd(_mm512_loadu_pd(x + 8 * q), mk));
  }
}

template <typename T>
void apply_t(const T* x, T* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
             uint32_t threshold, T scale) {
  int64_t a = (i0 + 63) & ~int64_t(63);
  if (a > i1) a = i1;
  generic::apply(x, y, i0, a, seed, offset, threshold, scale);
  const Keys keys(seed);
  const __m512i thi = _mm512_set1_epi32(static_cast<int>(threshold >> 16));
  int64_t i = a;
  for (; i + 128 <= i1; i += 128) {
    uint32_t k[4];
    if (!keep_bits(static_cast<uint64_t>(i) >> 3, offset, keys, thi, k)) {
      generic::apply(x, y, i, i + 128, seed, offset, threshold, scale);
      continue;
    }
    for (int j = 0; j < 4; ++j) apply32(x + i + 32 * j, y + i + 32 * j, k[j], scale);
  }
  avx2::apply(x, y, i, i1, seed, offset, threshold, scale);  // the last < 128
}

}  // namespace

void apply(const float* x, float* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
           uint32_t threshold, float scale) {
  apply_t(x, y, i0, i1, seed, offset, threshold, scale);
}
void apply(const double* x, double* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
           uint32_t threshold, double scale) {
  apply_t(x, y, i0, i1, seed, offset, threshold, scale);
}

}  // namespace avx512
}  // namespace drop
}  // namespace cpu
}  // namespace cnnkernels
