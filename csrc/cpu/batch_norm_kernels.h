// Plain C++ interface of the CPU batch-norm kernels (no torch types), so that
// batch_norm_impl.h can be compiled twice: portably (batch_norm_generic.cpp)
// and for AVX2/FMA (batch_norm_avx2.cpp); batch_norm.cpp picks one at run time.
//
// Two layouts cover every input:
//   planar       [N][C][S], S > 1 (contiguous NCHW, NCL): a plane is (n, c)
//   interleaved  [R][C]         (channels_last, (N, C)): a row is one pixel
// Every kernel works on a range of planes or rows; the caller splits the
// range over threads (at::parallel_for) and merges partial results in a
// fixed order, so results do not depend on the number of threads.
#pragma once

#include <cstdint>

namespace cnnkernels {
namespace cpu {
namespace bn {

enum Act : int { kActNone = 0, kActRelu = 1, kActLeaky = 2 };

// Count, mean and sum of squared deviations (Welford/Chan), in double.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
};

inline void merge(Moments& a, double nb, double mb, double m2b) {
  if (nb == 0) return;
  if (a.n == 0) {
    a.n = nb, a.mean = mb, a.m2 = m2b;
    return;
  }
  const double n = a.n + nb, d = mb - a.mean;
  a.mean += d * nb / n;
  a.m2 += m2b + d * d * a.n * nb / n;
  a.n = n;
}

// Per-channel constants of one call, all of length C.
//   z = x * scale + beta, y = act(z)                   (forward)
//   gz = act'(z) * gy                                  (backward)
//   gx = scale * (gz - k2 - (x - mean) * k3)           (k2 = k3 = 0 in eval)
template <typename T>
struct Channel {
  const T* mean;
  const T* scale;  // weight * invstd
  // bias - mean * scale: the normalised value is x * scale + beta, one
  // multiply and one add as torch's CPU kernels compute it (backward
  // recomputes the activation's input the same way, so its mask matches
  // the forward's output)
  const T* beta;
  const T* k2;
  const T* k3;
  int act;
  T slope;
  // write the elementwise outputs with non-temporal stores (outputs larger
  // than the caches, stream_stores in isa.h: saves reading every output
  // line before writing it)
  bool stream = false;
};

#define CNNK_BN_DECLARE(T)                                                                    \
  void stats_planar(const T* x, int64_t S, int64_t p0, int64_t p1, Moments* out);             \
  void stats_rows(const T* x, int64_t C, int64_t r0, int64_t r1, Moments* out, T* scratch);    \
  void norm_planar(const T* x, T* y, int64_t S, int64_t C, int64_t p0, int64_t p1,            \
                   const Channel<T>& ch);                                                     \
  void norm_rows(const T* x, T* y, int64_t C, int64_t r0, int64_t r1, const Channel<T>& ch);  \
  void reduce_planar(const T* gy, const T* x, int64_t S, int64_t C, int64_t p0, int64_t p1,   \
                     const Channel<T>& ch, double* sg, double* sgx);                          \
  void reduce_rows(const T* gy, const T* x, int64_t C, int64_t r0, int64_t r1,                \
                   const Channel<T>& ch, double* sg, double* sgx, T* scratch);                \
  void grad_input_planar(const T* gy, const T* x, T* gx, int64_t S, int64_t C, int64_t p0,    \
                         int64_t p1, const Channel<T>& ch);                                   \
  void grad_input_rows(const T* gy, const T* x, T* gx, int64_t C, int64_t r0, int64_t r1,     \
                       const Channel<T>& ch);

namespace generic {
CNNK_BN_DECLARE(float)
CNNK_BN_DECLARE(double)
}  // namespace generic

namespace avx2 {
CNNK_BN_DECLARE(float)
CNNK_BN_DECLARE(double)
}  // namespace avx2

#undef CNNK_BN_DECLARE

// Rows per chunk of the interleaved kernels (a chunk of about 16 KB stays in
// L1 between the sum and the squared-deviation sweeps).
inline int64_t rows_per_chunk(int64_t C) {
  int64_t r = 4096 / (C > 0 ? C : 1);
  return r < 4 ? 4 : r;
}

// Rows per chunk of the interleaved statistics: about 16384 values (64 KB
// in float), swept twice from L2. Each chunk costs a double-precision merge
// per channel, which at 4096 values per chunk took as long as the sweeps.
inline int64_t rows_per_stats_chunk(int64_t C) {
  int64_t r = 16384 / (C > 0 ? C : 1);
  return r < 4 ? 4 : r;
}

constexpr int64_t kPlanarChunk = 2048;  // elements per chunk of a plane

}  // namespace bn
}  // namespace cpu
}  // namespace cnnkernels
