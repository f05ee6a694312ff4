// CUDA batch norm with a fused activation (none / relu / leaky_relu):
// float16, bfloat16, float32, float64 input; statistics, weight and bias
// math in float (double for float64); weight/bias/running statistics in the
// input's dtype or float32.
//
// Training forward: a statistics kernel spreads every channel over several
// blocks (planar input: blocks over (channel, batch range, plane range);
// interleaved input: blocks over (32-channel tile, row range)); each thread
// keeps Welford moments, a block merges them in a fixed order and writes
// one partial; a finalize kernel merges a channel's partials in order (in
// double), writes mean / invstd, updates the running statistics and the
// per-channel scale. Then one elementwise pass normalises and activates.
// Backward: the same reduction structure for sum(gz) and sum(gz * (x - mean)),
// then one elementwise pass for the input gradient. No atomics: results
// repeat bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <tuple>

#include "../common/batch_norm.h"

namespace cnnkernels {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

struct Partial {
  double n, a, b;  // statistics: count, mean, m2; gradients: -, sum gz, sum gz*(x-mean)
};

template <typename A>
struct Welford {
  A n = 0, mean = 0, m2 = 0;
  __device__ void add(A x) {
    n += A(1);
    const A d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
  __device__ void merge(A nb, A mb, A m2b) {
    if (nb == A(0)) return;
    if (n == A(0)) {
      n = nb, mean = mb, m2 = m2b;
      return;
    }
    const A t = n + nb, d = mb - mean;
    mean += d * (nb / t);
    m2 += m2b + d * d * (n * nb / t);
    n = t;
  }
};

// Merges the Welford moments of a block's threads in a fixed order (warp
// shuffles, then warp 0 over the warps' results); thread 0 gets the result.
template <typename A>
__device__ Welford<A> block_merge(Welford<A> w, A* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const A n = __shfl_down_sync(0xffffffffu, w.n, o);
    const A m = __shfl_down_sync(0xffffffffu, w.mean, o);
    const A q = __shfl_down_sync(0xffffffffu, w.m2, o);
    w.merge(n, m, q);
  }
  if (lane == 0) sh[warp * 3] = w.n, sh[warp * 3 + 1] = w.mean, sh[warp * 3 + 2] = w.m2;
  __syncthreads();
  Welford<A> r;
  if (threadIdx.x == 0)
    for (int i = 0; i < nw; ++i) r.merge(sh[i * 3], sh[i * 3 + 1], sh[i * 3 + 2]);
  return r;
}

template <typename A>
__device__ void block_sum2(A& s1, A& s2, A* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    s1 += __shfl_down_sync(0xffffffffu, s1, o);
    s2 += __shfl_down_sync(0xffffffffu, s2, o);
  }
  if (lane == 0) sh[warp * 2] = s1, sh[warp * 2 + 1] = s2;
  __syncthreads();
  if (threadIdx.x == 0) {
    s1 = 0, s2 = 0;
    for (int i = 0; i < nw; ++i) s1 += sh[i * 2], s2 += sh[i * 2 + 1];
  }
}

// ---- how a channel's elements are split over blocks
struct Split {
  int64_t sn = 1, ss = 1;  // planar: batch splits, plane splits
  int64_t sr = 1;          // interleaved: row splits
  __host__ __device__ int64_t parts() const { return sn * ss * sr; }
};

// ---- interleaved ([rows][C]) blocks: tx threads across a tile of channel
// vectors (VEC channels each, 16 bytes when C and the pointers allow) and ty
// across rows, tx * ty <= 256. When the tile spans every channel, a block's
// rows are one contiguous stretch of memory.
struct RowTiles {
  int tx = 1, ty = 1, tiles = 1;
  int64_t cv = 0;  // channel vectors per row
};

RowTiles row_tiles(int64_t C, int vec) {
  RowTiles t;
  t.cv = C / vec;
  t.tiles = static_cast<int>((t.cv + kThreads - 1) / kThreads);
  t.tx = static_cast<int>((t.cv + t.tiles - 1) / t.tiles);
  t.ty = std::max(1, kThreads / t.tx);
  return t;
}

// VEC for elements of `bytes` bytes: a 16-byte vector when a row (C, or a
// plane's S) divides into them and every pointer is 16-byte aligned, else 1.
bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

int row_vec(int64_t C, int64_t bytes, std::initializer_list<const void*> ptrs) {
  const int64_t v = 16 / bytes;
  return C % v == 0 && aligned16(ptrs) ? static_cast<int>(v) : 1;
}

Split make_split(const BnGeometry& g, int64_t elem_bytes) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t target = 4 * sms;
  Split sp;
  if (g.interleaved) {
    // the channel tiles are grid.y of the interleaved kernels
    TORCH_CHECK(g.C <= int64_t(65535) * kThreads, "batch_norm: channels_last or (N, C) input "
                "with more than ", int64_t(65535) * kThreads, " channels is not supported on "
                "CUDA, got C=", g.C);
    // one wave of full blocks (8 per SM), each over at least 32 row steps
    const RowTiles t = row_tiles(g.C, row_vec(g.C, elem_bytes, {}));
    sp.sr = std::max<int64_t>(1, std::min<int64_t>((8 * sms + t.tiles - 1) / t.tiles,
                                                   g.rows / (32 * t.ty)));
  } else {
    sp.sn = std::max<int64_t>(1, std::min<int64_t>((target + g.C - 1) / g.C, g.N));
    sp.ss = std::max<int64_t>(1, std::min<int64_t>((target + g.C * sp.sn - 1) / (g.C * sp.sn),
                                                   (g.S + 4095) / 4096));
  }
  return sp;
}

__device__ __forceinline__ void range(int64_t n, int64_t parts, int64_t i, int64_t& a,
                                      int64_t& b) {
  a = n * i / parts;
  b = n * (i + 1) / parts;
}

template <int ACT, typename A>
__device__ __forceinline__ A act_fwd(A z, A slope) {
  if (ACT == 1) return z < A(0) ? A(0) : z;
  if (ACT == 2) return z > A(0) ? z : z * slope;
  return z;
}

template <int ACT, typename A>
__device__ __forceinline__ A act_bwd(A z, A g, A slope) {
  if (ACT == 1) return z <= A(0) ? A(0) : g;
  if (ACT == 2) return z > A(0) ? g : g * slope;
  return g;
}

// z exactly as in forward and backward (an explicit fma: no contraction
// difference between the two kernels).
template <typename A>
__device__ __forceinline__ A pre_act(A x, A mean, A scale, A beta) {
  return fma(x - mean, scale, beta);
}

// ---- statistics
template <typename T, typename A>
__global__ void stats_planar_kernel(const T* __restrict__ x, int64_t N, int64_t C, int64_t S,
                                    Split sp, Partial* __restrict__ out) {
  __shared__ A sh[3 * 32];
  const int64_t c = blockIdx.x, bn = blockIdx.y / sp.ss, bs = blockIdx.y % sp.ss;
  int64_t n0, n1, s0, s1;
  range(N, sp.sn, bn, n0, n1);
  range(S, sp.ss, bs, s0, s1);
  Welford<A> w;
  for (int64_t n = n0; n < n1; ++n) {
    const T* p = x + (n * C + c) * S;
    for (int64_t s = s0 + threadIdx.x; s < s1; s += blockDim.x) w.add(static_cast<A>(p[s]));
  }
  w = block_merge(w, sh);
  if (threadIdx.x == 0) out[c * sp.parts() + blockIdx.y] = Partial{double(w.n), double(w.mean), double(w.m2)};
}

template <typename T, int V>
struct alignas(sizeof(T) * V) VecN {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ VecN<T, V> load_vec(const T* p) {
  return *reinterpret_cast<const VecN<T, V>*>(p);
}

// Folds the ty rows of a block's shared entries ([ty][tx][W] values) into
// row 0 by fold(dst, src), in a fixed tree over threadIdx.y: deterministic,
// and every thread takes part (log2 ty steps).
template <typename A, typename F>
__device__ __forceinline__ void fold_rows(A* sh, int W, F&& fold) {
  const int tx = blockDim.x, ty = blockDim.y, y = threadIdx.y;
  int h = 1;
  while (h < ty) h <<= 1;
  for (h >>= 1; h >= 1; h >>= 1) {
    __syncthreads();
    if (y < h && y + h < ty) fold(sh + (y * tx + threadIdx.x) * W, sh + ((y + h) * tx + threadIdx.x) * W);
  }
  __syncthreads();
}

// Interleaved statistics: block (row range blockIdx.x, channel tile
// blockIdx.y), RowTiles threads. Each thread sums its VEC channels shifted
// by its first row's values (sum d and sum d * d, d = x - shift: no division
// per element, and the shift keeps the cancellation small), four rows'
// loads in flight; then count, mean and M2 per thread, merged over the
// block's rows of threads in a fixed tree (Welford's pairwise merge).
template <typename T, typename A, int VEC>
__global__ void stats_rows_kernel(const T* __restrict__ x, int64_t R, int64_t C, int64_t cv,
                                  Split sp, Partial* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  constexpr int W = 2 * VEC + 1;  // n, mean[VEC], m2[VEC]
  A* sh = reinterpret_cast<A*>(smem_raw);
  const int tx = blockDim.x, ty = blockDim.y;
  const int64_t v = blockIdx.y * int64_t(tx) + threadIdx.x;
  int64_t r0, r1;
  range(R, sp.sr, blockIdx.x, r0, r1);
  A shift[VEC], s1[VEC], s2[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) shift[k] = A(0), s1[k] = A(0), s2[k] = A(0);
  int64_t cnt = 0;
  auto add = [&](const VecN<T, VEC>& in) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const A d = static_cast<A>(in.v[k]) - shift[k];
      s1[k] += d;
      s2[k] = fma(d, d, s2[k]);
    }
  };
  int64_t r = r0 + threadIdx.y;
  if (v < cv && r < r1) {
    const T* p = x + v * VEC;
    const VecN<T, VEC> first = load_vec<T, VEC>(p + r * C);
#pragma unroll
    for (int k = 0; k < VEC; ++k) shift[k] = static_cast<A>(first.v[k]);
    cnt = (r1 - r + ty - 1) / ty;
    for (r += ty; r + 3 * ty < r1; r += 4 * ty) {
      VecN<T, VEC> in[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) in[u] = load_vec<T, VEC>(p + (r + u * ty) * C);
#pragma unroll
      for (int u = 0; u < 4; ++u) add(in[u]);
    }
    for (; r < r1; r += ty) add(load_vec<T, VEC>(p + r * C));
  }
  A* mine = sh + (threadIdx.y * tx + threadIdx.x) * W;
  const A n = static_cast<A>(cnt);
  mine[0] = n;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    mine[1 + k] = cnt > 0 ? shift[k] + s1[k] / n : A(0);
    mine[1 + VEC + k] = cnt > 0 ? fmax(A(0), s2[k] - s1[k] * (s1[k] / n)) : A(0);
  }
  fold_rows(sh, W, [](A* d, const A* e) {
    const A na = d[0], nb = e[0];
    if (nb == A(0)) return;
    if (na == A(0)) {
#pragma unroll
      for (int j = 0; j < W; ++j) d[j] = e[j];
      return;
    }
    const A t = na + nb, f = nb / t, g = na * f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const A dm = e[1 + k] - d[1 + k];
      d[1 + k] += dm * f;
      d[1 + VEC + k] += e[1 + VEC + k] + dm * dm * g;
    }
    d[0] = t;
  });
  if (threadIdx.y != 0 || v >= cv) return;
#pragma unroll
  for (int k = 0; k < VEC; ++k)
    out[(v * VEC + k) * sp.parts() + blockIdx.x] =
        Partial{double(mine[0]), double(mine[1 + k]), double(mine[1 + VEC + k])};
}

// Runs f(std::integral_constant<int, V>) with V = vec (16 / sizeof(T)) or 1.
template <typename T, typename F>
void with_vec(int vec, F&& f) {
  constexpr int kV = 16 / sizeof(T);
  if (vec == kV) {
    f(std::integral_constant<int, kV>());
  } else {
    f(std::integral_constant<int, 1>());
  }
}

// The statistics kernel for the layout: one Partial per (channel, block).
template <typename T, typename A>
void launch_stats(const BnGeometry& g, const Split& sp, const T* x, Partial* pp,
                  cudaStream_t stream) {
  if (g.interleaved) {
    with_vec<T>(row_vec(g.C, sizeof(T), {x}), [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      const RowTiles t = row_tiles(g.C, V);
      const size_t smem = size_t(t.tx) * t.ty * (2 * V + 1) * sizeof(A);
      stats_rows_kernel<T, A, V><<<dim3(sp.sr, t.tiles), dim3(t.tx, t.ty), smem, stream>>>(
          x, g.rows, g.C, t.cv, sp, pp);
    });
  } else {
    dim3 grid(g.C, sp.sn * sp.ss);
    stats_planar_kernel<T, A><<<grid, kThreads, 0, stream>>>(x, g.N, g.C, g.S, sp, pp);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- finalizing: a warp per channel. Lane l takes partials l, l + 32, ...;
// the lanes' sums meet in a fixed shuffle tree (in double): the same result
// on every run, no single thread walks hundreds of partials, and no
// division per partial. The channel's moments from its partials (n_i, mean_i,
// M2_i): mean = sum n_i mean_i / n, M2 = sum M2_i + n_i (mean_i - mean)^2.
struct Moments {
  double n = 0, m = 0, q = 0;
};

__device__ __forceinline__ double warp_total(double v) {  // lane 0's sum, sent to every lane
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return __shfl_sync(0xffffffffu, v, 0);
}

__device__ __forceinline__ Moments warp_moments(const Partial* __restrict__ part, int64_t parts) {
  const int lane = threadIdx.x & 31;
  double n = 0, s = 0;
  for (int64_t i = lane; i < parts; i += 32) n += part[i].n, s += part[i].n * part[i].a;
  Moments w;
  w.n = warp_total(n);
  const double sum = warp_total(s);
  w.m = w.n > 0 ? sum / w.n : 0.0;
  double q = 0;
  for (int64_t i = lane; i < parts; i += 32) {
    const double d = part[i].a - w.m;
    q += part[i].b + part[i].n * d * d;
  }
  w.q = warp_total(q);
  return w;
}

__device__ __forceinline__ void warp_sums(const Partial* __restrict__ part, int64_t parts,
                                          double& sa, double& sb) {
  const int lane = threadIdx.x & 31;
  sa = 0, sb = 0;
  for (int64_t i = lane; i < parts; i += 32) sa += part[i].a, sb += part[i].b;
  for (int o = 16; o > 0; o >>= 1) {
    sa += __shfl_down_sync(0xffffffffu, sa, o);
    sb += __shfl_down_sync(0xffffffffu, sb, o);
  }
}

// The channel of this warp (warp-uniform), for kWarpsPerBlock warps a block.
constexpr int kWarpsPerBlock = kThreads / 32;

__device__ __forceinline__ int64_t warp_channel() {
  return (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
}

int warp_blocks(int64_t C) { return static_cast<int>((C + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// A warp per channel: merge its partials; mean, invstd, the running-statistics
// update and the normalisation constants.
template <typename A, typename R>
__global__ void finalize_stats_kernel(const Partial* __restrict__ part, int64_t parts, int64_t C,
                                      double eps, double momentum, R* running_mean,
                                      R* running_var, const A* __restrict__ w,
                                      const A* __restrict__ b, A* mean, A* invstd, A* scale,
                                      A* beta) {
  const int64_t c = warp_channel();
  if (c >= C) return;
  const Moments mo = warp_moments(part + c * parts, parts);
  if ((threadIdx.x & 31) != 0) return;
  const double n = mo.n, m = mo.m, q = mo.q;
  const double var = q / n;
  const A is = static_cast<A>(1.0 / sqrt(var + eps));
  mean[c] = static_cast<A>(m);
  invstd[c] = is;
  scale[c] = (w ? w[c] : A(1)) * is;
  beta[c] = b ? b[c] : A(0);
  if (running_mean != nullptr) {
    const double unbiased = n > 1 ? q / (n - 1) : var;
    running_mean[c] = static_cast<R>((1.0 - momentum) * double(running_mean[c]) + momentum * m);
    running_var[c] = static_cast<R>((1.0 - momentum) * double(running_var[c]) + momentum * unbiased);
  }
}

template <typename A, typename R>
__global__ void finalize_eval_kernel(const R* __restrict__ running_mean,
                                     const R* __restrict__ running_var, int64_t C, double eps,
                                     const A* __restrict__ w, const A* __restrict__ b, A* mean,
                                     A* invstd, A* scale, A* beta) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const A is = static_cast<A>(1.0 / sqrt(double(running_var[c]) + eps));
  mean[c] = static_cast<A>(running_mean[c]);
  invstd[c] = is;
  scale[c] = (w ? w[c] : A(1)) * is;
  beta[c] = b ? b[c] : A(0);
}

// A warp per channel: a channel's partials merged into its mean and biased
// variance (batch_norm_stats).
template <typename A>
__global__ void finalize_moments_kernel(const Partial* __restrict__ part, int64_t parts,
                                        int64_t C, A* mean, A* var) {
  const int64_t c = warp_channel();
  if (c >= C) return;
  const Moments w = warp_moments(part + c * parts, parts);
  if ((threadIdx.x & 31) != 0) return;
  mean[c] = static_cast<A>(w.m);
  var[c] = static_cast<A>(w.n > 0 ? w.q / w.n : 0.0);
}

// Input-gradient constants from sums reduced over all processes
// (batch_norm_backward_elemt): as finalize_grads_kernel's training ones,
// with sum_dy_xhat = invstd * sum(gz * (x - mean)).
template <typename A>
__global__ void elemt_consts_kernel(int64_t C, const A* __restrict__ w, const A* __restrict__ b,
                                    const A* __restrict__ invstd, const A* __restrict__ sg,
                                    const A* __restrict__ sgxh, double count, A* scale, A* beta,
                                    A* k2, A* k3) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  scale[c] = (w ? w[c] : A(1)) * invstd[c];
  beta[c] = b ? b[c] : A(0);
  k2[c] = static_cast<A>(double(sg[c]) / count);
  k3[c] = static_cast<A>(double(invstd[c]) * double(sgxh[c]) / count);
}

// ---- elementwise passes. Planar: a block takes a chunk of one plane (no
// per-element division). Interleaved: the channel index advances by the
// block size modulo C (one modulo per thread).
// The VEC per-channel values of channels v * VEC ... v * VEC + VEC - 1.
template <typename A, int VEC>
__device__ __forceinline__ void channel_vec(const void* arr, int64_t v, A (&out)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = static_cast<const A*>(arr)[v * VEC + k];
}

struct ChannelArrays {
  const void* mean;
  const void* scale;
  const void* beta;
  const void* k2;
  const void* k3;
  // mean, scale and beta of channel vector v
  template <typename A, int VEC>
  __device__ __forceinline__ void get(int64_t v, A (&m)[VEC], A (&a)[VEC], A (&b)[VEC]) const {
    channel_vec(mean, v, m);
    channel_vec(scale, v, a);
    channel_vec(beta, v, b);
  }
};

// One output of the elementwise pass: forward y = act(z), backward the
// input gradient; z = (x - mean) * scale + beta.
template <int ACT, bool BWD, typename A>
__device__ __forceinline__ A bn_out(A xv, A gv, A m, A a, A b, A k2, A k3, A slope) {
  const A z = pre_act(xv, m, a, b);
  if (!BWD) return act_fwd<ACT>(z, slope);
  return a * (act_bwd<ACT>(z, gv, slope) - k2 - (xv - m) * k3);
}

// Planar: a block takes a chunk of one plane, in VEC-element vectors
// (S % VEC == 0), with the channel's constants in registers.
template <int ACT, bool BWD, typename T, typename A, int VEC>
__global__ void planar_kernel(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ out,
                              int64_t C, int64_t S, int64_t chunks, ChannelArrays ch, A slope) {
  const int64_t plane = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t c = plane % C;
  const A m = static_cast<const A*>(ch.mean)[c];
  const A a = static_cast<const A*>(ch.scale)[c];
  const A b = static_cast<const A*>(ch.beta)[c];
  const A k2 = BWD ? static_cast<const A*>(ch.k2)[c] : A(0);
  const A k3 = BWD ? static_cast<const A*>(ch.k3)[c] : A(0);
  int64_t s0, s1;
  range(S / VEC, chunks, chunk, s0, s1);
  using Vec = VecN<T, VEC>;
  const int64_t base = plane * S;
  for (int64_t s = s0 + threadIdx.x; s < s1; s += blockDim.x) {
    const int64_t i = base + s * VEC;
    const Vec xin = load_vec<T, VEC>(x + i);
    const Vec gin = BWD ? load_vec<T, VEC>(gy + i) : xin;
    Vec o;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      o.v[k] = static_cast<T>(bn_out<ACT, BWD>(static_cast<A>(xin.v[k]), static_cast<A>(gin.v[k]),
                                              m, a, b, k2, k3, slope));
    *reinterpret_cast<Vec*>(out + i) = o;
  }
}

// Interleaved: thread (x, y) of block (bx, by) takes channel vector
// by * tx + x, with its channels' constants in registers, and rows
// bx * ty + y, stepping gridDim.x * ty; two rows' loads in flight.
template <int ACT, bool BWD, typename T, typename A, int VEC>
__global__ void rows_kernel(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ out,
                            int64_t R, int64_t C, int64_t cv, ChannelArrays ch, A slope) {
  const int64_t v = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (v >= cv) return;
  A m[VEC], a[VEC], b[VEC], k2[VEC] = {}, k3[VEC] = {};
  ch.get(v, m, a, b);
  if (BWD) {
    channel_vec(ch.k2, v, k2);
    channel_vec(ch.k3, v, k3);
  }
  using Vec = VecN<T, VEC>;
  auto one = [&](const Vec& xin, const Vec& gin, int64_t i) {
    Vec o;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      o.v[k] = static_cast<T>(bn_out<ACT, BWD>(static_cast<A>(xin.v[k]), static_cast<A>(gin.v[k]),
                                              m[k], a[k], b[k], k2[k], k3[k], slope));
    *reinterpret_cast<Vec*>(out + i) = o;
  };
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  int64_t r = blockIdx.x * int64_t(blockDim.y) + threadIdx.y;
  for (; r + step < R; r += 2 * step) {
    const int64_t i0 = r * C + v * VEC, i1 = (r + step) * C + v * VEC;
    const Vec x0 = load_vec<T, VEC>(x + i0), x1 = load_vec<T, VEC>(x + i1);
    Vec g0 = x0, g1 = x1;
    if (BWD) g0 = load_vec<T, VEC>(gy + i0), g1 = load_vec<T, VEC>(gy + i1);
    one(x0, g0, i0);
    one(x1, g1, i1);
  }
  if (r < R) {
    const int64_t i0 = r * C + v * VEC;
    const Vec x0 = load_vec<T, VEC>(x + i0);
    one(x0, BWD ? load_vec<T, VEC>(gy + i0) : x0, i0);
  }
}

template <bool BWD, typename T, typename A>
void launch_elementwise(const BnGeometry& g, const T* x, const T* gy, T* out,
                        const ChannelArrays& ch, int64_t act, A slope, cudaStream_t stream) {
  const int64_t total = g.N * g.C * g.S;
  if (total == 0) return;
#define CNNK_ELEM(ACT)                                                                          \
  if (g.interleaved) {                                                                          \
    with_vec<T>(row_vec(g.C, sizeof(T), {x, gy, out}), [&](auto vc) {                           \
      constexpr int V = decltype(vc)::value;                                                    \
      const RowTiles t = row_tiles(g.C, V);                                                     \
      const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;          \
      const int64_t bx = std::max<int64_t>(                                                     \
          1, std::min<int64_t>((g.rows + t.ty - 1) / t.ty, (16 * sms + t.tiles - 1) / t.tiles)); \
      rows_kernel<ACT, BWD, T, A, V><<<dim3(bx, t.tiles), dim3(t.tx, t.ty), 0, stream>>>(        \
          x, gy, out, g.rows, g.C, t.cv, ch, slope);                                            \
    });                                                                                         \
  } else {                                                                                      \
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(g.S / 2048, 64));             \
    with_vec<T>(row_vec(g.S, sizeof(T), {x, gy, out}), [&](auto vc) {                           \
      planar_kernel<ACT, BWD, T, A, decltype(vc)::value>                                        \
          <<<g.N * g.C * chunks, kThreads, 0, stream>>>(x, gy, out, g.C, g.S, chunks, ch, slope); \
    });                                                                                         \
  }                                                                                             \
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (act == kBnActRelu) {
    CNNK_ELEM(1)
  } else if (act == kBnActLeakyRelu) {
    CNNK_ELEM(2)
  } else {
    CNNK_ELEM(0)
  }
#undef CNNK_ELEM
}

// ---- backward reductions: sum gz and sum gz * (x - mean)
template <int ACT, typename T, typename A>
__global__ void grad_sums_planar_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                        int64_t N, int64_t C, int64_t S, Split sp,
                                        ChannelArrays ch, A slope, Partial* __restrict__ out) {
  __shared__ A sh[2 * 32];
  const int64_t c = blockIdx.x, bn = blockIdx.y / sp.ss, bs = blockIdx.y % sp.ss;
  int64_t n0, n1, s0, s1;
  range(N, sp.sn, bn, n0, n1);
  range(S, sp.ss, bs, s0, s1);
  const A m = static_cast<const A*>(ch.mean)[c], a = static_cast<const A*>(ch.scale)[c];
  const A b = static_cast<const A*>(ch.beta)[c];
  A s1v = 0, s2v = 0;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t base = (n * C + c) * S;
    for (int64_t s = s0 + threadIdx.x; s < s1; s += blockDim.x) {
      const A xv = static_cast<A>(x[base + s]);
      const A gz = act_bwd<ACT>(pre_act(xv, m, a, b), static_cast<A>(gy[base + s]), slope);
      s1v += gz;
      s2v += gz * (xv - m);
    }
  }
  block_sum2(s1v, s2v, sh);
  if (threadIdx.x == 0) out[c * sp.parts() + blockIdx.y] = Partial{0, double(s1v), double(s2v)};
}

// Interleaved gradient sums: the blocks of stats_rows_kernel; the block
// adds its ty rows of threads in a fixed tree.
template <int ACT, typename T, typename A, int VEC>
__global__ void grad_sums_rows_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                      int64_t R, int64_t C, int64_t cv, Split sp,
                                      ChannelArrays ch, A slope, Partial* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  A* sh = reinterpret_cast<A*>(smem_raw);  // [ty][tx][VEC][2]
  const int tx = blockDim.x, ty = blockDim.y;
  const int64_t v = blockIdx.y * int64_t(tx) + threadIdx.x;
  int64_t r0, r1;
  range(R, sp.sr, blockIdx.x, r0, r1);
  A s1[VEC], s2[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) s1[k] = A(0), s2[k] = A(0);
  if (v < cv) {
    A m[VEC], a[VEC], b[VEC];
    ch.get(v, m, a, b);
    auto add = [&](const VecN<T, VEC>& xin, const VecN<T, VEC>& gin) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const A xv = static_cast<A>(xin.v[k]);
        const A gz = act_bwd<ACT>(pre_act(xv, m[k], a[k], b[k]), static_cast<A>(gin.v[k]), slope);
        s1[k] += gz;
        s2[k] += gz * (xv - m[k]);
      }
    };
    const int64_t off = v * VEC;
    int64_t r = r0 + threadIdx.y;
    for (; r + ty < r1; r += 2 * ty) {
      const VecN<T, VEC> x0 = load_vec<T, VEC>(x + r * C + off);
      const VecN<T, VEC> x1 = load_vec<T, VEC>(x + (r + ty) * C + off);
      const VecN<T, VEC> g0 = load_vec<T, VEC>(gy + r * C + off);
      const VecN<T, VEC> g1 = load_vec<T, VEC>(gy + (r + ty) * C + off);
      add(x0, g0);
      add(x1, g1);
    }
    if (r < r1) add(load_vec<T, VEC>(x + r * C + off), load_vec<T, VEC>(gy + r * C + off));
  }
  A* mine = sh + (threadIdx.y * tx + threadIdx.x) * VEC * 2;
#pragma unroll
  for (int k = 0; k < VEC; ++k) mine[2 * k] = s1[k], mine[2 * k + 1] = s2[k];
  fold_rows(sh, 2 * VEC, [](A* d, const A* e) {
#pragma unroll
    for (int j = 0; j < 2 * VEC; ++j) d[j] += e[j];
  });
  if (threadIdx.y != 0 || v >= cv) return;
#pragma unroll
  for (int k = 0; k < VEC; ++k)
    out[(v * VEC + k) * sp.parts() + blockIdx.x] = Partial{0, double(mine[2 * k]), double(mine[2 * k + 1])};
}

template <typename T, typename A>
void launch_grad_sums(const BnGeometry& g, const Split& sp, const T* gy, const T* x,
                      const ChannelArrays& ch, int64_t act, A slope, Partial* pp,
                      cudaStream_t stream) {
#define CNNK_SUMS(ACT)                                                                        \
  if (g.interleaved) {                                                                        \
    with_vec<T>(row_vec(g.C, sizeof(T), {x, gy}), [&](auto vc) {                              \
      constexpr int V = decltype(vc)::value;                                                  \
      const RowTiles t = row_tiles(g.C, V);                                                   \
      const size_t smem = size_t(t.tx) * t.ty * V * 2 * sizeof(A);                            \
      grad_sums_rows_kernel<ACT, T, A, V><<<dim3(sp.sr, t.tiles), dim3(t.tx, t.ty), smem,      \
                                            stream>>>(gy, x, g.rows, g.C, t.cv, sp, ch, slope, \
                                                      pp);                                    \
    });                                                                                       \
  } else {                                                                                    \
    dim3 grid(g.C, sp.sn * sp.ss);                                                            \
    grad_sums_planar_kernel<ACT, T, A><<<grid, kThreads, 0, stream>>>(gy, x, g.N, g.C, g.S,   \
                                                                      sp, ch, slope, pp);     \
  }
  if (act == kBnActRelu) {
    CNNK_SUMS(1)
  } else if (act == kBnActLeakyRelu) {
    CNNK_SUMS(2)
  } else {
    CNNK_SUMS(0)
  }
#undef CNNK_SUMS
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename A>
__global__ void finalize_grads_kernel(const Partial* __restrict__ part, int64_t parts, int64_t C,
                                      double count, bool training, const A* __restrict__ invstd,
                                      A* gw, A* gb, A* k2, A* k3) {
  const int64_t c = warp_channel();
  if (c >= C) return;
  double sg, sgx;
  warp_sums(part + c * parts, parts, sg, sgx);
  if ((threadIdx.x & 31) != 0) return;
  const double is = double(invstd[c]);
  gw[c] = static_cast<A>(sgx * is);
  gb[c] = static_cast<A>(sg);
  k2[c] = training ? static_cast<A>(sg / count) : A(0);
  k3[c] = training ? static_cast<A>(is * is * sgx / count) : A(0);
}

// scale = weight * invstd and beta = bias, as the forward computed them.
template <typename A>
__global__ void scale_beta_kernel(int64_t C, const A* __restrict__ w, const A* __restrict__ b,
                                  const A* __restrict__ invstd, A* scale, A* beta) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  scale[c] = (w ? w[c] : A(1)) * invstd[c];
  beta[c] = b ? b[c] : A(0);
}

template <typename A>
__global__ void eval_grad_consts_kernel(int64_t C, A* k2, A* k3) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c < C) k2[c] = A(0), k3[c] = A(0);
}

const void* opt_ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

Tensor as_acc(const c10::optional<Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return Tensor();
  return t->to(acc).contiguous();
}

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

std::tuple<Tensor, Tensor, Tensor> batch_norm_forward_cuda(
    const Tensor& input, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    const c10::optional<Tensor>& running_mean, const c10::optional<Tensor>& running_var,
    bool training, double momentum, double eps, int64_t activation, double negative_slope) {
  const char* op = "batch_norm";
  const BnGeometry g = batch_norm_geometry(op, input, weight, bias, running_mean, running_var,
                                           training, activation, /*cpu=*/false);
  c10::cuda::CUDAGuard guard(input.device());
  const bool has_rm = running_mean.has_value() && running_mean->defined();
  if (has_rm) {
    TORCH_CHECK(running_mean->is_contiguous() && running_var->is_contiguous(), op,
                ": running_mean and running_var should be contiguous");
    TORCH_CHECK(running_mean->scalar_type() == running_var->scalar_type(), op,
                ": running_mean and running_var should have one dtype, but got ",
                running_mean->scalar_type(), " and ", running_var->scalar_type());
  }
  const Tensor x = batch_norm_layout(input, g);
  const auto acc = batch_norm_acc_type(input.scalar_type());
  Tensor y = at::empty(input.sizes(), input.options().memory_format(g.fmt));
  Tensor consts = at::empty({4, g.C}, input.options().dtype(acc));  // mean, invstd, scale, beta
  Tensor save_mean = consts[0], save_invstd = consts[1];
  const Tensor w = as_acc(weight, acc), b = as_acc(bias, acc);
  auto stream = at::cuda::getCurrentCUDAStream();
  if ((training && g.count == 0) || g.C == 0) {
    consts.zero_();
    return {y, save_mean.clone(), save_invstd.clone()};
  }
  const Split sp = make_split(g, input.element_size());
  Tensor part = training ? at::empty({g.C * sp.parts() * 3}, input.options().dtype(at::kDouble))
                         : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "cnnkernels::batch_norm_forward_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    A* cm = consts.data_ptr<A>();
    const int64_t C = g.C;
    const A* wp = static_cast<const A*>(opt_ptr(w));
    const A* bp = static_cast<const A*>(opt_ptr(b));
    const bool r_acc = has_rm && running_mean->scalar_type() == acc;
    if (training) {
      Partial* pp = reinterpret_cast<Partial*>(part.data_ptr<double>());
      launch_stats<T, A>(g, sp, x.data_ptr<T>(), pp, stream);
      if (r_acc || !has_rm) {
        A* rm = has_rm ? running_mean->data_ptr<A>() : nullptr;
        A* rv = has_rm ? running_var->data_ptr<A>() : nullptr;
        finalize_stats_kernel<A, A><<<warp_blocks(C), kThreads, 0, stream>>>(
            pp, sp.parts(), C, eps, momentum, rm, rv, wp, bp, cm, cm + C, cm + 2 * C, cm + 3 * C);
      } else {
        finalize_stats_kernel<A, T><<<warp_blocks(C), kThreads, 0, stream>>>(
            pp, sp.parts(), C, eps, momentum, running_mean->data_ptr<T>(),
            running_var->data_ptr<T>(), wp, bp, cm, cm + C, cm + 2 * C, cm + 3 * C);
      }
    } else if (r_acc) {
      finalize_eval_kernel<A, A><<<blocks_for(C), kThreads, 0, stream>>>(
          running_mean->data_ptr<A>(), running_var->data_ptr<A>(), C, eps, wp, bp, cm, cm + C,
          cm + 2 * C, cm + 3 * C);
    } else {
      finalize_eval_kernel<A, T><<<blocks_for(C), kThreads, 0, stream>>>(
          running_mean->data_ptr<T>(), running_var->data_ptr<T>(), C, eps, wp, bp, cm, cm + C,
          cm + 2 * C, cm + 3 * C);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const ChannelArrays ch{cm, cm + 2 * C, cm + 3 * C, nullptr, nullptr};
    launch_elementwise<false, T, A>(g, x.data_ptr<T>(), nullptr, y.data_ptr<T>(), ch, activation,
                                    static_cast<A>(negative_slope), stream);
  });
  return {y, save_mean.clone(), save_invstd.clone()};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_backward_cuda(
    const Tensor& grad_output, const Tensor& input, const c10::optional<Tensor>& weight,
    const c10::optional<Tensor>& bias, const Tensor& save_mean, const Tensor& save_invstd,
    bool training, int64_t activation, double negative_slope, std::array<bool, 3> mask) {
  const char* op = "batch_norm_backward";
  const BnGeometry g = batch_norm_geometry(op, input, weight, bias, c10::nullopt, c10::nullopt,
                                           /*training=*/true, activation, /*cpu=*/false);
  check_batch_norm_backward(op, grad_output, input, save_mean, save_invstd, g.C);
  c10::cuda::CUDAGuard guard(input.device());
  const Tensor x = batch_norm_layout(input, g);
  const Tensor gy = batch_norm_layout(grad_output, g);
  const auto acc = batch_norm_acc_type(input.scalar_type());
  const bool has_w = weight.has_value() && weight->defined();
  const auto pdtype = has_w ? weight->scalar_type() : input.scalar_type();
  Tensor gx = mask[0] ? at::empty(input.sizes(), input.options().memory_format(g.fmt))
                      : at::empty({0}, input.options());
  const Tensor w = as_acc(weight, acc), b = as_acc(bias, acc);
  const Tensor mean = save_mean.contiguous(), invstd = save_invstd.contiguous();
  // scale, beta, k2, k3, grad_weight, grad_bias
  Tensor consts = at::empty({6, g.C}, input.options().dtype(acc));
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool need_sums = mask[1] || mask[2] || (training && mask[0]);
  if (g.count == 0 || g.C == 0) {
    consts.zero_();
  } else {
    const Split sp = make_split(g, input.element_size());
    Tensor part = need_sums ? at::empty({g.C * sp.parts() * 3}, input.options().dtype(at::kDouble))
                            : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "cnnkernels::batch_norm_backward_cuda", [&] {
      using T = scalar_t;
      using A = at::opmath_type<T>;
      const int64_t C = g.C;
      A* cm = consts.data_ptr<A>();
      const A* wp = static_cast<const A*>(opt_ptr(w));
      const A* bp = static_cast<const A*>(opt_ptr(b));
      const A* ip = invstd.data_ptr<A>();
      scale_beta_kernel<A><<<blocks_for(C), kThreads, 0, stream>>>(C, wp, bp, ip, cm, cm + C);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      ChannelArrays ch{mean.data_ptr<A>(), cm, cm + C, cm + 2 * C, cm + 3 * C};
      const A slope = static_cast<A>(negative_slope);
      if (need_sums) {
        Partial* pp = reinterpret_cast<Partial*>(part.data_ptr<double>());
        launch_grad_sums<T, A>(g, sp, gy.data_ptr<T>(), x.data_ptr<T>(), ch, activation, slope, pp,
                              stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        finalize_grads_kernel<A><<<warp_blocks(C), kThreads, 0, stream>>>(
            pp, sp.parts(), C, double(g.count), training, ip, cm + 4 * C, cm + 5 * C, cm + 2 * C,
            cm + 3 * C);
      } else {
        eval_grad_consts_kernel<A><<<blocks_for(C), kThreads, 0, stream>>>(C, cm + 2 * C, cm + 3 * C);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (mask[0])
        launch_elementwise<true, T, A>(g, x.data_ptr<T>(), gy.data_ptr<T>(), gx.data_ptr<T>(), ch,
                                       activation, slope, stream);
    });
  }
  const auto empty = at::empty({0}, input.options().dtype(pdtype));
  Tensor gw = mask[1] ? consts[4].to(pdtype, false, /*copy=*/true) : empty;
  Tensor gb = mask[2] ? consts[5].to(pdtype, false, /*copy=*/true) : empty.clone();
  return {gx, gw, gb};
}

std::tuple<Tensor, Tensor> batch_norm_stats_cuda(const Tensor& input) {
  const char* op = "batch_norm_stats";
  Tensor mean, var;
  const BnGeometry g = batch_norm_stats_geometry(op, input, /*cpu=*/false, mean, var);
  if (g.count == 0 || g.C == 0) return {mean, var};
  c10::cuda::CUDAGuard guard(input.device());
  const Tensor x = batch_norm_layout(input, g);
  auto stream = at::cuda::getCurrentCUDAStream();
  const Split sp = make_split(g, input.element_size());
  Tensor part = at::empty({g.C * sp.parts() * 3}, input.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "cnnkernels::batch_norm_stats_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const int64_t C = g.C;
    Partial* pp = reinterpret_cast<Partial*>(part.data_ptr<double>());
    launch_stats<T, A>(g, sp, x.data_ptr<T>(), pp, stream);
    finalize_moments_kernel<A><<<warp_blocks(C), kThreads, 0, stream>>>(
        pp, sp.parts(), C, mean.data_ptr<A>(), var.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, var};
}

Tensor batch_norm_backward_elemt_cuda(const Tensor& grad_output, const Tensor& input,
                                      const c10::optional<Tensor>& weight,
                                      const c10::optional<Tensor>& bias, const Tensor& save_mean,
                                      const Tensor& save_invstd, const Tensor& sum_dy,
                                      const Tensor& sum_dy_xhat, int64_t count,
                                      int64_t activation, double negative_slope) {
  const char* op = "batch_norm_backward_elemt";
  const BnGeometry g = batch_norm_geometry(op, input, weight, bias, c10::nullopt, c10::nullopt,
                                           /*training=*/true, activation, /*cpu=*/false);
  check_batch_norm_backward(op, grad_output, input, save_mean, save_invstd, g.C);
  const auto sums = batch_norm_elemt_sums(op, input, sum_dy, sum_dy_xhat, count, g.C);
  Tensor gx = at::empty(input.sizes(), input.options().memory_format(g.fmt));
  if (g.count == 0 || g.C == 0) return gx;
  c10::cuda::CUDAGuard guard(input.device());
  const Tensor x = batch_norm_layout(input, g);
  const Tensor gy = batch_norm_layout(grad_output, g);
  const auto acc = batch_norm_acc_type(input.scalar_type());
  const Tensor w = as_acc(weight, acc), b = as_acc(bias, acc);
  const Tensor mean = save_mean.contiguous(), invstd = save_invstd.contiguous();
  Tensor consts = at::empty({4, g.C}, input.options().dtype(acc));  // scale, beta, k2, k3
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "cnnkernels::batch_norm_backward_elemt_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const int64_t C = g.C;
    A* cm = consts.data_ptr<A>();
    elemt_consts_kernel<A><<<blocks_for(C), kThreads, 0, stream>>>(
        C, static_cast<const A*>(opt_ptr(w)), static_cast<const A*>(opt_ptr(b)),
        invstd.data_ptr<A>(), sums.first.data_ptr<A>(), sums.second.data_ptr<A>(), double(count),
        cm, cm + C, cm + 2 * C, cm + 3 * C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const ChannelArrays ch{mean.data_ptr<A>(), cm, cm + C, cm + 2 * C, cm + 3 * C};
    launch_elementwise<true, T, A>(g, x.data_ptr<T>(), gy.data_ptr<T>(), gx.data_ptr<T>(), ch,
                                   activation, static_cast<A>(negative_slope), stream);
  });
  return gx;
}

}  // namespace
}  // namespace cuda
}  // namespace cnnkernels

TORCH_LIBRARY_IMPL(cnnkernels, CUDA, m) {
  m.impl("batch_norm_stats", &cnnkernels::cuda::batch_norm_stats_cuda);
  m.impl("batch_norm_backward_elemt", &cnnkernels::cuda::batch_norm_backward_elemt_cuda);
  m.impl("batch_norm_forward", &cnnkernels::cuda::batch_norm_forward_cuda);
  m.impl("batch_norm_backward", &cnnkernels::cuda::batch_norm_backward_cuda);
}
