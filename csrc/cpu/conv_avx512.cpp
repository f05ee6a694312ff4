// AVX-512 build of the convolution's float32 GEMM micro-kernel (see
// conv_kernels.h), picked at run time by conv.cpp on processors with
// AVX-512F. Nothing from torch is included under the target.
//
// The 6 x 16 tile is one 16-wide register per row. Six accumulators would
// leave the two FMA units waiting on the four-cycle FMA latency (a chain per
// row), so even and odd reduction steps go to two sets of six (12 chains in
// flight), added at the end: per two steps 2 loads of b, 12 broadcasts of a
// and 12 FMAs. The sum is taken in a fixed order, so results repeat bit for
// bit (they differ from the AVX2 tile's in the last bits: another order).
#include <cstdint>

#include "conv_kernels.h"

#pragma GCC target("avx512f,avx2,fma")

#include <immintrin.h>

namespace cnnkernels {
namespace cpu {
namespace conv {
namespace avx512 {
namespace {

template <bool Add>
inline void tile_impl(const float* const* a, const int64_t* a_off, const float* b,
                      const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs,
                      int64_t ldb, float* out) {
  __m512 c0, c1, c2, c3, c4, c5;
  if (Add) {
    c0 = _mm512_loadu_ps(out), c1 = _mm512_loadu_ps(out + 16), c2 = _mm512_loadu_ps(out + 32);
    c3 = _mm512_loadu_ps(out + 48), c4 = _mm512_loadu_ps(out + 64), c5 = _mm512_loadu_ps(out + 80);
  } else {
    c0 = c1 = c2 = c3 = c4 = c5 = _mm512_setzero_ps();
  }
  __m512 d0 = _mm512_setzero_ps(), d1 = d0, d2 = d0, d3 = d0, d4 = d0, d5 = d0;
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* a0 = a[0] + a_off[t];
    const float* a1 = a[1] + a_off[t];
    const float* a2 = a[2] + a_off[t];
    const float* a3 = a[3] + a_off[t];
    const float* a4 = a[4] + a_off[t];
    const float* a5 = a[5] + a_off[t];
    const float* bp = b + b_off[t];
    int64_t c = 0, off = 0;
    for (; c + 2 <= len; c += 2, off += 2 * a_cs, bp += 2 * ldb) {
      const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + ldb);
      c0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[off]), b0, c0);
      c1 = _mm512_fmadd_ps(_mm512_set1_ps(a1[off]), b0, c1);
      c2 = _mm512_fmadd_ps(_mm512_set1_ps(a2[off]), b0, c2);
      c3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[off]), b0, c3);
      c4 = _mm512_fmadd_ps(_mm512_set1_ps(a4[off]), b0, c4);
      c5 = _mm512_fmadd_ps(_mm512_set1_ps(a5[off]), b0, c5);
      d0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[off + a_cs]), b1, d0);
      d1 = _mm512_fmadd_ps(_mm512_set1_ps(a1[off + a_cs]), b1, d1);
      d2 = _mm512_fmadd_ps(_mm512_set1_ps(a2[off + a_cs]), b1, d2);
      d3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[off + a_cs]), b1, d3);
      d4 = _mm512_fmadd_ps(_mm512_set1_ps(a4[off + a_cs]), b1, d4);
      d5 = _mm512_fmadd_ps(_mm512_set1_ps(a5[off + a_cs]), b1, d5);
    }
    if (c < len) {
      const __m512 b0 = _mm512_loadu_ps(bp);
      c0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[off]), b0, c0);
      c1 = _mm512_fmadd_ps(_mm512_set1_ps(a1[off]), b0, c1);
      c2 = _mm512_fmadd_ps(_mm512_set1_ps(a2[off]), b0, c2);
      c3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[off]), b0, c3);
      c4 = _mm512_fmadd_ps(_mm512_set1_ps(a4[off]), b0, c4);
      c5 = _mm512_fmadd_ps(_mm512_set1_ps(a5[off]), b0, c5);
    }
  }
  _mm512_storeu_ps(out, _mm512_add_ps(c0, d0));
  _mm512_storeu_ps(out + 16, _mm512_add_ps(c1, d1));
  _mm512_storeu_ps(out + 32, _mm512_add_ps(c2, d2));
  _mm512_storeu_ps(out + 48, _mm512_add_ps(c3, d3));
  _mm512_storeu_ps(out + 64, _mm512_add_ps(c4, d4));
  _mm512_storeu_ps(out + 80, _mm512_add_ps(c5, d5));
}

// Two tiles that share b and the taps: 12 rows a[0..11], out[12][16]. One
// load of b per 12 FMAs (the 6-row tile needs one per 6: from L2, where a
// 3x3 layer's packed weight panel lives, that halves the traffic). Even and
// odd steps in separate accumulators as in tile_impl, so that every row's
// sum is bit for bit the one tile_impl gives (which of the two computes a
// tile must not change results: it depends on how the work was cut).
inline void tile12_impl(const float* const* a, const int64_t* a_off, const float* b,
                        const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs,
                        int64_t ldb, float* out) {
  __m512 c[12], d[12];
  for (int i = 0; i < 12; ++i) c[i] = d[i] = _mm512_setzero_ps();
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* ap[12];
    for (int i = 0; i < 12; ++i) ap[i] = a[i] + a_off[t];
    const float* bp = b + b_off[t];
    int64_t k = 0, off = 0;
    for (; k + 2 <= len; k += 2, off += 2 * a_cs, bp += 2 * ldb) {
      const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + ldb);
      for (int i = 0; i < 12; ++i) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][off]), b0, c[i]);
      for (int i = 0; i < 12; ++i)
        d[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][off + a_cs]), b1, d[i]);
    }
    if (k < len) {
      const __m512 b0 = _mm512_loadu_ps(bp);
      for (int i = 0; i < 12; ++i) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][off]), b0, c[i]);
    }
  }
  for (int i = 0; i < 12; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_add_ps(c[i], d[i]));
}

}  // namespace

void tile12(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
            int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out) {
  tile12_impl(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);
}

void tile(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
          int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out) {
  tile_impl<false>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);
}

void tile_add(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
              int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out) {
  tile_impl<true>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);
}

}  // namespace avx512
}  // namespace conv
}  // namespace cpu
}  // namespace cnnkernels
