// Plain C++ interface of the CPU dropout kernels (no torch types): a portable
// build (dropout_generic.cpp), an AVX2 build that runs four Philox calls per
// instruction (dropout_avx2.cpp) and an AVX-512 build that runs eight
// (dropout_avx512.cpp); dropout.cpp picks at run time.
#pragma once

#include <cstdint>

namespace cnnkernels {
namespace cpu {
namespace drop {

// For element indices i in [i0, i1): y[i] = x[i] * (keep(i) ? scale : 0),
// keep(i) being bit i % 8 of dropout_keep8 for the call at block i / 8
// (common/philox.h). x may equal y (in place). Backward applies the same to
// the gradient.
// Channel-wise (dropout2d), y = x * m[g]: scale_planes over planes [g0, g1)
// of S elements (NCHW); scale_pixels over channels_last pixels [q0, q1) of C
// channels, pixel q scaled by m[(q / HW) * C + c] (dropout_scale.h).
#define CNNK_DROP_DECLARE(T)                                                                \
  void apply(const T* x, T* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,      \
             uint32_t threshold, T scale);                                                  \
  void scale_planes(const T* x, T* y, const T* m, int64_t S, int64_t g0, int64_t g1);       \
  void scale_pixels(const T* x, T* y, const T* m, int64_t C, int64_t HW, int64_t q0, int64_t q1);

namespace generic {
CNNK_DROP_DECLARE(float)
CNNK_DROP_DECLARE(double)
}  // namespace generic

namespace avx2 {
CNNK_DROP_DECLARE(float)
CNNK_DROP_DECLARE(double)
}  // namespace avx2

namespace avx512 {  // element-wise only
void apply(const float* x, float* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
           uint32_t threshold, float scale);
void apply(const double* x, double* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
           uint32_t threshold, double scale);
}  // namespace avx512

#undef CNNK_DROP_DECLARE

}  // namespace drop
}  // namespace cpu
}  // namespace cnnkernels
