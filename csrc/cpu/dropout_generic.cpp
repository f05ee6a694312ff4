// Portable dropout kernel: one Philox4x32-10 call per eight elements.
#include <algorithm>

#include "../common/philox.h"
#include "dropout_kernels.h"

namespace cnnkernels {
namespace cpu {
namespace drop {
namespace generic {
namespace {

template <typename T>
void apply_t(const T* x, T* y, int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
             uint32_t threshold, T scale) {
  int64_t i = i0;
  while (i < i1) {
    const uint64_t block = static_cast<uint64_t>(i) >> 3;
    const uint32_t keep =
        dropout_keep8(philox4x32_10(block, offset, seed), block, offset, seed, threshold);
    const int64_t end = std::min<int64_t>(static_cast<int64_t>(block * 8 + 8), i1);
    for (; i < end; ++i) y[i] = x[i] * (((keep >> (i & 7)) & 1u) ? scale : T(0));
  }
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

}  // namespace generic
}  // namespace drop
}  // namespace cpu
}  // namespace cnnkernels
