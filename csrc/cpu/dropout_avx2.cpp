// AVX2 dropout kernel: eight Philox4x32-10 streams per vector (blocks b .. b+7,
// 32 elements), the 32x32->64-bit products from _mm256_mul_epu32 on the even
// and odd lanes. The four output vectors are transposed into element order
// and the mask is applied as a select of scale or 0 and one multiply.
// Elements before the first 32-aligned index and after the last use the
// portable single-stream code; the words are identical either way.
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

inline void mulhilo(__m256i a, __m256i m, __m256i& lo, __m256i& hi) {
  const __m256i pe = _mm256_mul_epu32(a, m);                          // lanes 0,2,4,6
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);   // lanes 1,3,5,7
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

// Words of blocks b .. b+7 in element order: out[k] holds elements 4b+8k .. 4b+8k+7.
inline void philox8(uint64_t b, uint64_t offset, uint64_t seed, __m256i out[4]) {
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b))),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  // the high word of the block, with the carry of b + lane into it
  const uint32_t blo = static_cast<uint32_t>(b), bhi = static_cast<uint32_t>(b >> 32);
  __m256i c1 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  c1 = _mm256_add_epi32(
      _mm256_set1_epi32(static_cast<int>(bhi)),
      _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(blo ^ 0x80000000u)),
                                          _mm256_xor_si256(c0, _mm256_set1_epi32(INT32_MIN))),
                       _mm256_set1_epi32(1)));
  __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int r = 0; r < 10; ++r) {
    __m256i lo0, hi0, lo1, hi1;
    mulhilo(c0, m0, lo0, hi0);
    mulhilo(c2, m1, lo1, hi1);
    const __m256i vk0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i vk1 = _mm256_set1_epi32(static_cast<int>(k1));
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), vk0);
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), vk1);
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // 4 x 8 -> element order (block j's four words consecutive)
  const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
  const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  out[0] = _mm256_permute2x128_si256(u0, u1, 0x20);
  out[1] = _mm256_permute2x128_si256(u2, u3, 0x20);
  out[2] = _mm256_permute2x128_si256(u0, u1, 0x31);
  out[3] = _mm256_permute2x128_si256(u2, u3, 0x31);
}

// lanes where word >= threshold (unsigned), as all-ones
inline __m256i keep_mask(__m256i w, __m256i thr) {
  return _mm256_cmpeq_epi32(_mm256_max_epu32(w, thr), w);
}

void apply_f32(const float* x, float* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
               uint32_t threshold, float scale) {
  int64_t a = (i0 + 31) & ~int64_t(31);
  if (a > i1) a = i1;
  generic::apply(x, y, i0, a, seed, offset, threshold, scale);
  const __m256i thr = _mm256_set1_epi32(static_cast<int>(threshold));
  const __m256 vs = _mm256_set1_ps(scale);
  int64_t i = a;
  for (; i + 32 <= i1; i += 32) {
    __m256i w[4];
    philox8(static_cast<uint64_t>(i) >> 2, offset, seed, w);
    for (int k = 0; k < 4; ++k) {
      const __m256 m = _mm256_and_ps(_mm256_castsi256_ps(keep_mask(w[k], thr)), vs);
      _mm256_storeu_ps(y + i + 8 * k, _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * k), m));
    }
  }
  generic::apply(x, y, i, i1, seed, offset, threshold, scale);
}

void apply_f64(const double* x, double* y, int64_t i0, int64_t i1, uint64_t seed,
               uint64_t offset, uint32_t threshold, double scale) {
  int64_t a = (i0 + 31) & ~int64_t(31);
  if (a > i1) a = i1;
  generic::apply(x, y, i0, a, seed, offset, threshold, scale);
  const __m256i thr = _mm256_set1_epi32(static_cast<int>(threshold));
  const __m256d vs = _mm256_set1_pd(scale);
  int64_t i = a;
  for (; i + 32 <= i1; i += 32) {
    __m256i w[4];
    philox8(static_cast<uint64_t>(i) >> 2, offset, seed, w);
    for (int k = 0; k < 4; ++k) {
      const __m256i keep = keep_mask(w[k], thr);  // 8 x 32-bit
      const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(keep));
      const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(keep, 1));
      const __m256d m0 = _mm256_and_pd(_mm256_castsi256_pd(lo), vs);
      const __m256d m1 = _mm256_and_pd(_mm256_castsi256_pd(hi), vs);
      double* yo = y + i + 8 * k;
      const double* xo = x + i + 8 * k;
      _mm256_storeu_pd(yo, _mm256_mul_pd(_mm256_loadu_pd(xo), m0));
      _mm256_storeu_pd(yo + 4, _mm256_mul_pd(_mm256_loadu_pd(xo + 4), m1));
    }
  }
  generic::apply(x, y, i, i1, seed, offset, threshold, scale);
}

}  // namespace

void apply(const float* x, float* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
           uint32_t threshold, float scale) {
  apply_f32(x, y, i0, i1, seed, offset, threshold, scale);
}
void apply(const double* x, double* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
           uint32_t threshold, double scale) {
  apply_f64(x, y, i0, i1, seed, offset, threshold, scale);
}

}  // namespace avx2
}  // namespace drop
}  // namespace cpu
}  // namespace cnnkernels
