// AVX2 dropout kernel: eight Philox4x32-10 calls (blocks b .. b+7, 64
// elements at 16 bits each, common/philox.h) per step, in two groups of four
// with one call per 64-bit lane: _mm256_mul_epu32 then gives each call's
// full 32x32->64-bit products with no shuffles, and the high garbage it
// leaves in the upper half of each lane never reaches a low half. The 16-bit
// values are compared with the threshold's high half; a step holding a tie
// (probability ~1/1000 per 64 elements) is redone by the portable code, which
// draws the tie-break. The 16-bit keep masks widen to 32-bit lanes with an
// in-lane unpack, which is why the words are arranged as below.
// Elements before the first 64-aligned index and after the last use the
// portable code; the mask is identical either way.
#include <immintrin.h>

#include <cstdint>

#include "../common/philox.h"
#include "dropout_kernels.h"

#pragma GCC target("avx2,fma")

namespace cnnkernels {
namespace cpu {
namespace drop {
namespace avx2 {
namespace {

struct Keys {
  __m256i k[20];  // round r: k[2r] = key word 0, k[2r+1] = key word 1, per 64-bit lane
  explicit Keys(uint64_t seed) {
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      k[2 * r] = _mm256_set1_epi64x(k0);
      k[2 * r + 1] = _mm256_set1_epi64x(k1);
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
  }
};

// Calls for blocks b .. b+7. out[j] holds blocks b+2j and b+2j+1 as 32-bit
// words {B.w0, B.w1, B'.w0, B'.w1 | B.w2, B.w3, B'.w2, B'.w3}: read as 16-bit
// lanes, the low 128 bits are elements 0-3 of B and of B', the high 128 bits
// elements 4-7, so unpacklo/hi_epi16 of a mask give elements 0-7 and 8-15.
inline void philox8(uint64_t b, uint64_t offset, const Keys& keys, __m256i out[4]) {
  const __m256i vb = _mm256_set1_epi64x(static_cast<long long>(b));
  const __m256i bA = _mm256_add_epi64(vb, _mm256_setr_epi64x(0, 1, 2, 3));
  const __m256i bB = _mm256_add_epi64(vb, _mm256_setr_epi64x(4, 5, 6, 7));
  // state word q of group A / B in the low 32 bits of each 64-bit lane
  __m256i a0 = bA, a1 = _mm256_srli_epi64(bA, 32), b0 = bB, b1 = _mm256_srli_epi64(bB, 32);
  __m256i a2 = _mm256_set1_epi64x(static_cast<uint32_t>(offset));
  __m256i a3 = _mm256_set1_epi64x(static_cast<uint32_t>(offset >> 32));
  __m256i b2 = a2, b3 = a3;
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const __m256i k0 = keys.k[2 * r], k1 = keys.k[2 * r + 1];
    const __m256i pa0 = _mm256_mul_epu32(a0, m0), pa1 = _mm256_mul_epu32(a2, m1);
    const __m256i pb0 = _mm256_mul_epu32(b0, m0), pb1 = _mm256_mul_epu32(b2, m1);
    a0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa1, 32), a1), k0);
    a2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa0, 32), a3), k1);
    a1 = pa1;
    a3 = pa0;
    b0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb1, 32), b1), k0);
    b2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb0, 32), b3), k1);
    b1 = pb1;
    b3 = pb0;
  }
  const __m256i a01 = _mm256_blend_epi32(a0, _mm256_slli_epi64(a1, 32), 0xAA);
  const __m256i a23 = _mm256_blend_epi32(a2, _mm256_slli_epi64(a3, 32), 0xAA);
  const __m256i b01 = _mm256_blend_epi32(b0, _mm256_slli_epi64(b1, 32), 0xAA);
  const __m256i b23 = _mm256_blend_epi32(b2, _mm256_slli_epi64(b3, 32), 0xAA);
  out[0] = _mm256_permute2x128_si256(a01, a23, 0x20);
  out[1] = _mm256_permute2x128_si256(a01, a23, 0x31);
  out[2] = _mm256_permute2x128_si256(b01, b23, 0x20);
  out[3] = _mm256_permute2x128_si256(b01, b23, 0x31);
}

// The 32-bit keep masks of elements 64*step + 16j .. +15 (m[2j], m[2j+1]);
// false when a value ties with the threshold's high half (the caller then
// takes the portable code for these 64 elements).
inline bool keep_masks(uint64_t b, uint64_t offset, const Keys& keys, __m256i thi, __m256i m[8]) {
  __m256i w[4];
  philox8(b, offset, keys, w);
  __m256i tie = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i ge = _mm256_cmpeq_epi16(_mm256_max_epu16(w[j], thi), w[j]);
    tie = _mm256_or_si256(tie, _mm256_cmpeq_epi16(w[j], thi));
    m[2 * j] = _mm256_unpacklo_epi16(ge, ge);
    m[2 * j + 1] = _mm256_unpackhi_epi16(ge, ge);
  }
  return _mm256_testz_si256(tie, tie);
}

inline int64_t first_step(int64_t i0, int64_t i1) {
  int64_t a = (i0 + 63) & ~int64_t(63);
  return a > i1 ? i1 : a;
}

// y[0, 8) = x[0, 8) * (keep ? scale : 0) for one 8-element keep mask.
inline void apply8(const float* x, float* y, __m256i keep, float scale) {
  const __m256 mk = _mm256_and_ps(_mm256_castsi256_ps(keep), _mm256_set1_ps(scale));
  _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_loadu_ps(x), mk));
}

inline void apply8(const double* x, double* y, __m256i keep, double scale) {
  const __m256d vs = _mm256_set1_pd(scale);
  const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(keep));
  const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(keep, 1));
  _mm256_storeu_pd(y, _mm256_mul_pd(_mm256_loadu_pd(x), _mm256_and_pd(_mm256_castsi256_pd(lo), vs)));
  _mm256_storeu_pd(y + 4,
                   _mm256_mul_pd(_mm256_loadu_pd(x + 4), _mm256_and_pd(_mm256_castsi256_pd(hi), vs)));
}

template <typename T>
void apply_t(const T* x, T* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
             uint32_t threshold, T scale) {
  const int64_t a = first_step(i0, i1);
  generic::apply(x, y, i0, a, seed, offset, threshold, scale);
  const Keys keys(seed);
  const __m256i thi = _mm256_set1_epi16(static_cast<short>(threshold >> 16));
  int64_t i = a;
  for (; i + 64 <= i1; i += 64) {
    __m256i m[8];
    if (!keep_masks(static_cast<uint64_t>(i) >> 3, offset, keys, thi, m)) {
      generic::apply(x, y, i, i + 64, seed, offset, threshold, scale);
      continue;
    }
    for (int k = 0; k < 8; ++k) apply8(x + i + 8 * k, y + i + 8 * k, m[k], scale);
  }
  generic::apply(x, y, i, i1, seed, offset, threshold, scale);
}

}  // namespace

#include "dropout_scale.h"  // scale_planes, scale_pixels

void apply(const float* x, float* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
           uint32_t threshold, float scale) {
  apply_t(x, y, i0, i1, seed, offset, threshold, scale);
}
void apply(const double* x, double* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
           uint32_t threshold, double scale) {
  apply_t(x, y, i0, i1, seed, offset, threshold, scale);
}

}  // namespace avx2
}  // namespace drop
}  // namespace cpu
}  // namespace cnnkernels
