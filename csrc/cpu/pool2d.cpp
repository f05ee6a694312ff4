// CPU pooling: max_pool2d (values, or values + int64 indices), max_unpool2d,
// avg_pool2d, forward and backward, float32 and float64.
//
// Layouts: contiguous NCHW and channels_last (NHWC) each have their own
// kernels; any other strides are first made contiguous in the input's
// suggested memory format, and the output keeps that format.
// Parallelisation: at::parallel_for (torch's OpenMP pool, so
// torch.set_num_threads applies) over (n, c) planes for NCHW, over output
// pixels or (n, channel-chunk) pairs for NHWC.
// float32 runs AVX2 kernels (pool2d_avx2.cpp) when the processor has AVX2
// and the portable path is not forced; everything else runs the templated
// C++ below, which is also the reference path the tests run against torch.
//
// Backward:
//   max_pool2d: per plane, zero the plane's gradient (in cache) and scatter
//     grad_output through the saved indices, in output order (torch's order).
//     NCHW 2x2 / stride 2 windows (float32, AVX2) write each plane in one
//     pass instead: every input element lies in at most one window.
//   avg_pool2d: a gather: each input element sums grad_output / divisor over
//     the windows covering it, in output raster order, which reproduces
//     torch's scatter sums exactly and needs no zeroing pass.
//   max_unpool2d: forward scatters, backward gathers, both checking indices.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "../common/pool.h"
#include "host_cache.h"
#include "isa.h"
#include "pool2d_kernels.h"

namespace cnnkernels {
namespace cpu {
namespace {

using at::Tensor;
using c10::IntArrayRef;

PoolPlan make_plan(const Pool2dGeometry& g) {
  return PoolPlan{g.C, g.H, g.W, g.OH, g.OW, g.kH, g.kW, g.sH, g.sW, g.pH, g.pW, g.dH, g.dW};
}

bool is_nhwc(const Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// Valid window taps [k0, k1) along one axis for a window starting at `start`.
inline void valid_range(int64_t start, int64_t k, int64_t d, int64_t n, int64_t& k0,
                        int64_t& k1) {
  k0 = start < 0 ? (-start + d - 1) / d : 0;
  k1 = start + (k - 1) * d < n ? k : (n - 1 - start) / d + 1;
  if (k1 < k0) k1 = k0;
}

// Divisor of avg_pool2d's window (oh, ow), torch's rule.
inline int64_t avg_divisor(const PoolPlan& p, int64_t oh, int64_t ow, bool count_include_pad,
                           int64_t divisor) {
  if (divisor != 0) return divisor;
  const int64_t hs = oh * p.sH - p.pH, ws = ow * p.sW - p.pW;
  const int64_t he = std::min(hs + p.kH, p.H + p.pH), we = std::min(ws + p.kW, p.W + p.pW);
  if (count_include_pad) return (he - hs) * (we - ws);
  return (std::min(he, p.H) - std::max<int64_t>(hs, 0)) *
         (std::min(we, p.W) - std::max<int64_t>(ws, 0));
}

// Outputs whose windows cover input position i along one axis: [o0, o1).
inline void covering_outputs(int64_t i, int64_t k, int64_t s, int64_t pad, int64_t out,
                             int64_t& o0, int64_t& o1) {
  const int64_t num = i + pad - k + 1;
  o0 = num <= 0 ? 0 : (num + s - 1) / s;
  o1 = std::min(out, (i + pad) / s + 1);
}

// ---------------------------------------------------------------- max pool

// One window of a max pool; `sp` is the element distance between spatial
// neighbours (1 for NCHW planes, C for NHWC).
template <typename T>
inline void max_window(const T* base, int64_t sp, const PoolPlan& p, int64_t oh, int64_t ow,
                       T& best, int64_t& best_i) {
  using acc_t = at::opmath_type<T>;
  const int64_t hs = oh * p.sH - p.pH, ws = ow * p.sW - p.pW;
  int64_t kh0, kh1, kw0, kw1;
  valid_range(hs, p.kH, p.dH, p.H, kh0, kh1);
  valid_range(ws, p.kW, p.dW, p.W, kw0, kw1);
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  int64_t mi = (hs + kh0 * p.dH) * p.W + ws + kw0 * p.dW;
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const int64_t row = (hs + kh * p.dH) * p.W;
    for (int64_t kw = kw0; kw < kw1; ++kw) {
      const int64_t pos = row + ws + kw * p.dW;
      const acc_t v = static_cast<acc_t>(base[pos * sp]);
      if (v > m || std::isnan(v)) {
        m = v;
        mi = pos;
      }
    }
  }
  best = static_cast<T>(m);
  best_i = mi;
}

template <typename T>
void max_pool_nchw_generic(const T* in, T* out, int64_t* ind, int64_t p0, int64_t p1,
                           const PoolPlan& p) {
  for (int64_t plane = p0; plane < p1; ++plane) {
    const T* src = in + plane * p.H * p.W;
    for (int64_t oh = 0; oh < p.OH; ++oh)
      for (int64_t ow = 0; ow < p.OW; ++ow) {
        const int64_t o = (plane * p.OH + oh) * p.OW + ow;
        int64_t mi;
        max_window(src, 1, p, oh, ow, out[o], mi);
        if (ind) ind[o] = mi;
      }
  }
}

template <typename T>
void max_pool_nhwc_generic(const T* in, T* out, int64_t* ind, int64_t q0, int64_t q1,
                           const PoolPlan& p) {
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / (p.OH * p.OW), oh = (q / p.OW) % p.OH, ow = q % p.OW;
    const T* base = in + n * p.H * p.W * p.C;
    for (int64_t c = 0; c < p.C; ++c) {
      int64_t mi;
      max_window(base + c, p.C, p, oh, ow, out[q * p.C + c], mi);
      if (ind) ind[q * p.C + c] = mi;
    }
  }
}

// first_iw / col_count tables (padded to a multiple of 8 entries).
struct Tables {
  std::vector<int32_t> first_iw;
  std::vector<float> col_count;
  std::vector<int32_t> seg;
  Tables(const PoolPlan& p, bool count_include_pad) {
    // Row plan (see PoolTables): block starts, the last shifted to end at OW.
    std::vector<int64_t> starts;
    if (p.OW < 8) {
      starts.push_back(0);
    } else {
      for (int64_t ob = 0; ob + 8 <= p.OW; ob += 8) starts.push_back(ob);
      if (p.OW % 8) starts.push_back(p.OW - 8);
    }
    auto is_edge = [&](int64_t ob) {
      if (p.OW < 8) return true;
      const int64_t lo = ob * p.sW - p.pW;
      const int64_t hi = (ob + 7) * p.sW - p.pW + (p.kW - 1) * p.dW;
      return lo < 0 || hi >= p.W;
    };
    for (size_t i = 0; i < starts.size();) {
      if (is_edge(starts[i])) {
        seg.insert(seg.end(), {(int32_t)starts[i], 1, 1});
        ++i;
        continue;
      }
      // a group's blocks must be consecutive (ob, ob + 8, ...): the last
      // start, shifted back to end at OW, forms its own group (kernels read
      // a group's blocks at ob + 8 b, so including it would read past the row)
      size_t j = i + 1;
      while (j < starts.size() && j - i < 4 && !is_edge(starts[j]) &&
             starts[j] == starts[j - 1] + 8)
        ++j;
      seg.insert(seg.end(), {(int32_t)starts[i], (int32_t)(j - i), 0});
      i = j;
    }
    const int64_t n = (p.OW + 7) / 8 * 8;
    first_iw.assign(n, 0);
    col_count.assign(n, 1.0f);
    for (int64_t ow = 0; ow < p.OW; ++ow) {
      const int64_t ws = ow * p.sW - p.pW;
      int64_t k0, k1;
      valid_range(ws, p.kW, p.dW, p.W, k0, k1);
      first_iw[ow] = (int32_t)(ws + k0 * p.dW);
      const int64_t we = std::min(ws + p.kW, p.W + p.pW);
      col_count[ow] = (float)(count_include_pad
                                  ? we - ws
                                  : std::min(we, p.W) - std::max<int64_t>(ws, 0));
    }
  }
  PoolTables view() const {
    return PoolTables{first_iw.data(), col_count.data(), seg.data(), (int64_t)seg.size() / 3};
  }
};

bool avx2_nchw_ok(const PoolPlan& p) {
  return (p.H + 1) * (p.W + 16) < (int64_t(1) << 31);
}

void max_pool_run(const Tensor& x, const Pool2dGeometry& g, const Tensor& out,
                  const Tensor* ind) {
  const PoolPlan p = make_plan(g);
  const int64_t planes = g.N * g.C;
  if (planes == 0) return;
  const bool nhwc = is_nhwc(out);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool2d", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    int64_t* oi = ind ? ind->mutable_data_ptr<int64_t>() : nullptr;
    const bool fast = std::is_same<scalar_t, float>::value && use_avx2();
    if (nhwc) {
      const bool fast_nhwc = fast && p.H * p.W < (int64_t(1) << 31);
      at::parallel_for(0, g.N * g.OH * g.OW, 16, [&](int64_t q0, int64_t q1) {
        if (fast_nhwc && use_avx512())
          avx512::max_pool2d_nhwc((const float*)in, (float*)o, oi, q0, q1, p);
        else if (fast_nhwc)
          avx2::max_pool2d_nhwc((const float*)in, (float*)o, oi, q0, q1, p);
        else
          max_pool_nhwc_generic(in, o, oi, q0, q1, p);
      });
    } else if (fast && use_avx512() && avx2_nchw_ok(p) && is_k3s2p1(p) && p.OW >= 16) {
      at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
        avx512::max_pool2d_nchw_k3s2p1((const float*)in, (float*)o, oi, p0, p1, p);
      });
    } else if (fast && avx2_nchw_ok(p)) {
      const Tables t(p, true);
      at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
        avx2::max_pool2d_nchw((const float*)in, (float*)o, oi, p0, p1, p, t.view());
      });
    } else {
      at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
        max_pool_nchw_generic(in, o, oi, p0, p1, p);
      });
    }
  });
}

at::MemoryFormat out_format(const Tensor& x) { return pool_memory_format(x); }

Tensor max_pool2d_forward_cpu(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                              IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  const char* op = "max_pool2d";
  check_pool_dtype(op, input, "input");
  const Pool2dGeometry g =
      pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode, false);
  const auto fmt = out_format(input);
  const Tensor x = input.contiguous(fmt);
  Tensor out = empty_output(pool_output_sizes(g, g.C, g.OH, g.OW), input.options().memory_format(fmt));
  max_pool_run(x, g, out, nullptr);
  return out;
}

std::tuple<Tensor, Tensor> max_pool2d_with_indices_forward_cpu(const Tensor& input,
                                                               IntArrayRef kernel_size,
                                                               IntArrayRef stride,
                                                               IntArrayRef padding,
                                                               IntArrayRef dilation,
                                                               bool ceil_mode) {
  const char* op = "max_pool2d";
  check_pool_dtype(op, input, "input");
  const Pool2dGeometry g =
      pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode, false);
  const auto fmt = out_format(input);
  const Tensor x = input.contiguous(fmt);
  const auto sizes = pool_output_sizes(g, g.C, g.OH, g.OW);
  Tensor out = empty_output(sizes, input.options().memory_format(fmt));
  Tensor ind = empty_output(sizes, input.options().dtype(at::kLong).memory_format(fmt));
  max_pool_run(x, g, out, &ind);
  return std::make_tuple(out, ind);
}

// An out-of-range index seen by a kernel (any one of them, if several).
struct BadIndex {
  std::atomic<bool> found{false};
  std::atomic<int64_t> value{0};
  void report(int64_t v) {
    value.store(v);
    found.store(true);
  }
};

// Scatter src through idx into dst planes (dst zeroed first): the max_pool2d
// backward (accumulate) and the max_unpool2d forward (assign). Planes of src
// have `src_plane` elements, planes of dst `dst_plane`. Out-of-range indices
// are skipped and reported in `bad`. NCHW: direct(plane, out) may write the
// whole output plane itself with plain stores (returning false leaves it to
// the scatter).
struct NoDirect {
  template <typename T>
  bool operator()(int64_t, T*) const { return false; }
};

// Four scatters d[k[i] * es + i * lo] (+)= s[i], i < 4 (NCHW: es 1, lo 0;
// NHWC: es C, lo 1), after one check of all four indices (one
// well-predicted branch); false, with nothing written, when one is out of
// range (the caller then goes on one by one).
template <bool Accumulate, typename T>
inline bool scatter4(T* d, const int64_t* k, const T* s, int64_t es, int64_t lo,
                     uint64_t limit) {
  if (((uint64_t)k[0] >= limit) | ((uint64_t)k[1] >= limit) | ((uint64_t)k[2] >= limit) |
      ((uint64_t)k[3] >= limit))
    return false;
  for (int i = 0; i < 4; ++i) {  // in order: equal indices add in output order
    T& v = d[k[i] * es + i * lo];
    if (Accumulate)
      v += s[i];
    else
      v = s[i];
  }
  return true;
}

// NCHW outputs over kStreamBytes (isa.h; AVX2) in planes of whole cache
// lines: each plane is built in a small per-task buffer that stays in L1/L2
// and streamed out with non-temporal stores, instead of zeroing and
// scattering in place (whose first touch of every line reads it from memory
// first); one store fence per task.
template <bool Accumulate, typename T, typename Direct = NoDirect>
void scatter_planes(const T* src, const int64_t* idx, T* dst, int64_t N, int64_t C,
                    int64_t src_plane, int64_t dst_plane, bool nhwc, BadIndex& bad,
                    Direct direct = Direct()) {
  const uint64_t limit = (uint64_t)dst_plane;
  if (!nhwc) {
    // Only whole cache lines: a line shared by two planes, written partly
    // with non-temporal stores, costs more than the plain stores saved
    // (AlexNet's 16x192x27x27 max pool backward: 0.87-0.97 ms streamed,
    // 0.57-0.61 in place; 56x56 planes, 196 lines each, gain).
    const int64_t plane_bytes = dst_plane * int64_t(sizeof(T));
    const bool stream = use_avx2() && stream_stores(N * C * plane_bytes) &&
                        plane_bytes <= (int64_t(256) << 10) && plane_bytes % 64 == 0 &&
                        reinterpret_cast<uintptr_t>(dst) % 64 == 0;
    at::parallel_for(0, N * C, 1, [&](int64_t p0, int64_t p1) {
      bool any_bad = false;
      int64_t local_bad = 0;
      std::vector<T> buf(stream ? size_t(dst_plane) : 0);
      for (int64_t plane = p0; plane < p1; ++plane) {
        T* const out = dst + plane * dst_plane;
        if (direct(plane, out)) continue;
        T* d = stream ? buf.data() : out;
        std::memset((void*)d, 0, sizeof(T) * dst_plane);  // the plane stays in cache
        const T* s = src + plane * src_plane;
        const int64_t* ix = idx + plane * src_plane;
        // four at a time; from a block holding a bad index on, one by one
        int64_t j = 0;
        while (j + 4 <= src_plane && scatter4<Accumulate>(d, ix + j, s + j, 1, 0, limit)) j += 4;
        for (; j < src_plane; ++j) {
          const int64_t k = ix[j];
          if ((uint64_t)k >= limit) {
            any_bad = true;
            local_bad = k;
            continue;
          }
          if (Accumulate)
            d[k] += s[j];
          else
            d[k] = s[j];
        }
        if (stream) avx2::stream_copy(out, d, int64_t(sizeof(T)) * dst_plane);
      }
      if (stream) avx2::store_fence();
      if (any_bad) bad.report(local_bad);
    });
  } else {
    // Tasks: (n, channel range); one range per n unless N is smaller than
    // the thread count. Channels of a pixel are contiguous in src/idx.
    const int64_t nthreads = at::get_num_threads();
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(C, (nthreads + N - 1) / std::max<int64_t>(N, 1)));
    const int64_t cw = (C + parts - 1) / parts;
    at::parallel_for(0, N * parts, 1, [&](int64_t t0, int64_t t1) {
      bool any_bad = false;
      int64_t local_bad = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / parts, c0 = (t % parts) * cw, c1 = std::min(C, c0 + cw);
        if (c0 >= c1) continue;
        T* d = dst + n * dst_plane * C;
        if (c0 == 0 && c1 == C)
          std::memset((void*)d, 0, sizeof(T) * dst_plane * C);
        else
          for (int64_t q = 0; q < dst_plane; ++q)
            std::memset((void*)(d + q * C + c0), 0, sizeof(T) * (c1 - c0));
        const T* s = src + n * src_plane * C;
        const int64_t* ix = idx + n * src_plane * C;
        for (int64_t j = 0; j < src_plane; ++j) {
          const T* sj = s + j * C;
          const int64_t* ij = ix + j * C;
          int64_t c = c0;
          while (c + 4 <= c1 && scatter4<Accumulate>(d + c, ij + c, sj + c, C, 1, limit)) c += 4;
          for (; c < c1; ++c) {
            const int64_t k = ij[c];
            if ((uint64_t)k >= limit) {
              any_bad = true;
              local_bad = k;
              continue;
            }
            if (Accumulate)
              d[k * C + c] += sj[c];
            else
              d[k * C + c] = sj[c];
          }
        }
      }
      if (any_bad) bad.report(local_bad);
    });
  }
}

Tensor max_pool2d_backward_cpu(const Tensor& grad_output, const Tensor& indices,
                               IntArrayRef input_size, IntArrayRef kernel_size, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  const char* op = "max_pool2d_backward";
  check_pool_dtype(op, grad_output, "grad_output");
  const Pool2dGeometry g = pool2d_backward_geometry(op, grad_output, input_size, kernel_size,
                                                    stride, padding, dilation, ceil_mode, false);
  check_indices(op, grad_output, indices, "grad_output");
  const auto fmt = out_format(indices);
  const Tensor go = grad_output.contiguous(fmt);
  const Tensor ix = indices.contiguous(fmt);
  Tensor gi = empty_output(input_size, grad_output.options().memory_format(fmt));
  if (gi.numel() == 0) return gi;
  BadIndex bad;
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  // 2x2 windows, stride 2, no padding (VGG's and LeNet's pools): each input
  // element is in at most one window, so an NCHW float32 plane is written in
  // one pass, no zeroing, when every index lies in its window
  const PoolPlan p = make_plan(g);
  const bool vec = !nhwc && go.scalar_type() == at::kFloat && use_avx2() &&
                   g.H * g.W < (int64_t(1) << 31);
  const bool k2s2 = vec && is_k2s2(p);
  // ResNet's stem pool: odd input rows and columns shared by two windows
  const bool k3s2p1 = vec && is_k3s2p1(p) && g.OW <= avx2::kK3S2MaxOW;
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "cnnkernels_pool", [&] {
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    const int64_t* ixp = ix.const_data_ptr<int64_t>();
    scalar_t* gip = gi.mutable_data_ptr<scalar_t>();
    if (k2s2 || k3s2p1)
      scatter_planes<true>(gop, ixp, gip, g.N, g.C, g.OH * g.OW, g.H * g.W, nhwc, bad,
                           [&](int64_t plane, scalar_t* d) {
                             return k2s2 ? avx2::max_pool2d_backward_nchw_k2s2(
                                               (const float*)gop, ixp, (float*)d, plane, p)
                                         : avx2::max_pool2d_backward_nchw_k3s2p1(
                                               (const float*)gop, ixp, (float*)d, plane, p);
                           });
    else
      scatter_planes<true>(gop, ixp, gip, g.N, g.C, g.OH * g.OW, g.H * g.W, nhwc, bad);
  });
  TORCH_CHECK(!bad.found.load(), op, ": found an invalid index ", bad.value.load(),
              " in indices (each input plane has ", g.H, "x", g.W, " = ", g.H * g.W,
              " elements)");
  return gi;
}

// -------------------------------------------------------------- max unpool

Tensor max_unpool2d_forward_cpu(const Tensor& input, const Tensor& indices,
                                IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                                at::OptionalIntArrayRef output_size) {
  const char* op = "max_unpool2d";
  check_pool_dtype(op, input, "input");
  check_indices(op, input, indices, "input");
  int64_t OH, OW;
  max_unpool2d_output_size(op, input, kernel_size, stride, padding, output_size, OH, OW);
  const bool batched = input.dim() == 4;
  const int64_t N = batched ? input.size(0) : 1, C = input.size(-3);
  const int64_t H = input.size(-2), W = input.size(-1);
  const auto fmt = out_format(input);
  const Tensor x = input.contiguous(fmt);
  const Tensor ix = indices.contiguous(fmt);
  std::vector<int64_t> sizes = batched ? std::vector<int64_t>{N, C, OH, OW}
                                       : std::vector<int64_t>{C, OH, OW};
  Tensor out = empty_output(sizes, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  BadIndex bad;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkernels_pool", [&] {
    scatter_planes<false>(x.const_data_ptr<scalar_t>(), ix.const_data_ptr<int64_t>(),
                          out.mutable_data_ptr<scalar_t>(), N, C, H * W, OH * OW,
                          fmt == at::MemoryFormat::ChannelsLast, bad);
  });
  TORCH_CHECK(!bad.found.load(), op, ": found an invalid index ", bad.value.load(),
              " in indices (each output plane has ", OH, "x", OW, " = ", OH * OW,
              " elements)");
  return out;
}

Tensor max_unpool2d_backward_cpu(const Tensor& grad_output, const Tensor& indices) {
  const char* op = "max_unpool2d_backward";
  check_pool_dtype(op, grad_output, "grad_output");
  check_pool_input_dims(op, indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, but got ",
              indices.scalar_type());
  check_same_device(op, grad_output, "grad_output", indices, "indices");
  TORCH_CHECK(grad_output.dim() == indices.dim() &&
                  grad_output.size(0) == indices.size(0) &&
                  grad_output.size(-3) == indices.size(-3),
              op, ": grad_output of size ", int_list_str(grad_output.sizes()),
              " does not match indices of size ", int_list_str(indices.sizes()));
  const bool batched = indices.dim() == 4;
  const int64_t N = batched ? indices.size(0) : 1, C = indices.size(-3);
  const int64_t plane = indices.size(-2) * indices.size(-1);
  const int64_t oplane = grad_output.size(-2) * grad_output.size(-1);
  const auto fmt = out_format(indices);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const Tensor go = grad_output.contiguous(fmt);
  const Tensor ix = indices.contiguous(fmt);
  Tensor gi = empty_output(indices.sizes(), grad_output.options().memory_format(fmt));
  if (gi.numel() == 0) return gi;
  BadIndex bad;
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "cnnkernels_pool", [&] {
    const scalar_t* g = go.const_data_ptr<scalar_t>();
    const int64_t* k = ix.const_data_ptr<int64_t>();
    scalar_t* d = gi.mutable_data_ptr<scalar_t>();
    // Element (n, c, q) gathers grad_output[n, c, indices[n, c, q]]: by
    // rows of elements of one image (NCHW: one plane; NHWC: one pixel's C
    // channels), no division per element (with a 64-bit division per
    // element, 16x64x28x28 from 56x56 planes took 1.87 ms NCHW, 3.16 ms
    // channels_last; by rows 0.75 and 0.83).
    const int64_t rows = nhwc ? N * plane : N * C, len = nhwc ? C : plane;
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, len));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t* kr = k + r * len;
        scalar_t* dr = d + r * len;
        // NHWC: image r / plane, channel c at stride C; NCHW: plane r
        const scalar_t* gb = nhwc ? g + (r / plane) * oplane * C : g + r * oplane;
        const int64_t es = nhwc ? C : 1;
        for (int64_t q = 0; q < len; ++q) {
          const int64_t j = kr[q];
          if ((uint64_t)j >= (uint64_t)oplane) {
            bad.report(j);
            dr[q] = 0;
            continue;
          }
          dr[q] = gb[j * es + (nhwc ? q : 0)];
        }
      }
    });
  });
  TORCH_CHECK(!bad.found.load(), op, ": found an invalid index ", bad.value.load(),
              " in indices (each output plane has ", oplane, " elements)");
  return gi;
}

// ---------------------------------------------------------------- avg pool

template <typename T>
inline T avg_window(const T* base, int64_t sp, const PoolPlan& p, int64_t oh, int64_t ow,
                    bool count_include_pad, int64_t divisor) {
  using acc_t = at::opmath_type<T>;
  const int64_t hs = oh * p.sH - p.pH, ws = ow * p.sW - p.pW;
  const int64_t he = std::min(hs + p.kH, p.H + p.pH), we = std::min(ws + p.kW, p.W + p.pW);
  const int64_t h0 = std::max<int64_t>(hs, 0), w0 = std::max<int64_t>(ws, 0);
  const int64_t h1 = std::min(he, p.H), w1 = std::min(we, p.W);
  if (h0 >= h1 || w0 >= w1) return T(0);
  acc_t s = 0;
  for (int64_t ih = h0; ih < h1; ++ih)
    for (int64_t iw = w0; iw < w1; ++iw) s += static_cast<acc_t>(base[(ih * p.W + iw) * sp]);
  return static_cast<T>(s / avg_divisor(p, oh, ow, count_include_pad, divisor));
}

Tensor avg_pool2d_forward_cpu(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                              IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                              c10::optional<int64_t> divisor_override) {
  const char* op = "avg_pool2d";
  check_pool_dtype(op, input, "input");
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must be non-zero, but got 0");
  const int64_t one[2] = {1, 1};
  const Pool2dGeometry g =
      pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, one, ceil_mode, true);
  const int64_t divisor = divisor_override.value_or(0);
  const auto fmt = out_format(input);
  const Tensor x = input.contiguous(fmt);
  Tensor out = empty_output(pool_output_sizes(g, g.C, g.OH, g.OW), input.options().memory_format(fmt));
  const PoolPlan p = make_plan(g);
  if (out.numel() == 0) return out;
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkernels_pool", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const bool fast = std::is_same<scalar_t, float>::value && use_avx2();
    if (nhwc) {
      at::parallel_for(0, g.N * g.OH * g.OW, 16, [&](int64_t q0, int64_t q1) {
        if (fast && use_avx512()) {
          avx512::avg_pool2d_nhwc((const float*)in, (float*)o, q0, q1, p, count_include_pad,
                                  divisor);
          return;
        }
        if (fast) {
          avx2::avg_pool2d_nhwc((const float*)in, (float*)o, q0, q1, p, count_include_pad,
                                divisor);
          return;
        }
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t n = q / (p.OH * p.OW), oh = (q / p.OW) % p.OH, ow = q % p.OW;
          const scalar_t* base = in + n * p.H * p.W * p.C;
          for (int64_t c = 0; c < p.C; ++c)
            o[q * p.C + c] = avg_window(base + c, p.C, p, oh, ow, count_include_pad, divisor);
        }
      });
    } else if (fast && avx2_nchw_ok(p)) {
      const Tables t(p, count_include_pad);
      at::parallel_for(0, g.N * g.C, 1, [&](int64_t p0, int64_t p1) {
        avx2::avg_pool2d_nchw((const float*)in, (float*)o, p0, p1, p, t.view(),
                              count_include_pad, divisor);
      });
    } else {
      at::parallel_for(0, g.N * g.C, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t plane = p0; plane < p1; ++plane) {
          const scalar_t* src = in + plane * p.H * p.W;
          scalar_t* dst = o + plane * p.OH * p.OW;
          for (int64_t oh = 0; oh < p.OH; ++oh)
            for (int64_t ow = 0; ow < p.OW; ++ow)
              dst[oh * p.OW + ow] = avg_window(src, 1, p, oh, ow, count_include_pad, divisor);
        }
      });
    }
  });
  return out;
}

// grad_output / divisor of every window of one (n, c) plane (NCHW, sp = 1)
// or of one image with all its channels (NHWC, sp = C): torch's per-window
// gradient share, computed once per window.
template <typename T>
void avg_deltas(const T* go, T* delta, int64_t sp, const PoolPlan& p, bool count_include_pad,
                int64_t divisor) {
  for (int64_t oh = 0; oh < p.OH; ++oh)
    for (int64_t ow = 0; ow < p.OW; ++ow) {
      const T dv = static_cast<T>(avg_divisor(p, oh, ow, count_include_pad, divisor));
      const T* src = go + (oh * p.OW + ow) * sp;
      T* dst = delta + (oh * p.OW + ow) * sp;
      for (int64_t c = 0; c < sp; ++c) dst[c] = src[c] / dv;
    }
}

// NCHW avg_pool2d backward of planes [p0, p1), any geometry. Each input
// element sums the deltas of the windows covering it in output raster order,
// which is the order torch's scatter adds them in. Stride 1 along W (the
// common overlapping case) runs as vectorisable row sweeps over a delta plane
// padded with kW zero columns on each side (adding +0 changes nothing).
template <typename T>
void avg_backward_nchw(const T* go, T* gi, int64_t p0, int64_t p1, const PoolPlan& p,
                       bool count_include_pad, int64_t divisor) {
  const bool row_sweep = p.sW == 1, fast = use_avx2();
  const int64_t PW = p.OW + 2 * p.kW;  // padded delta row (row_sweep)
  std::vector<T> delta(row_sweep ? 0 : p.OH * p.OW), dpad(row_sweep ? p.OH * PW : 0), acc(p.W);
  // every plane has the same divisors: a table, then one vectorisable
  // division per element (a scalar division per element took half the time)
  std::vector<T> dv(p.OH * p.OW);
  for (int64_t oh = 0; oh < p.OH; ++oh)
    for (int64_t ow = 0; ow < p.OW; ++ow)
      dv[oh * p.OW + ow] = static_cast<T>(avg_divisor(p, oh, ow, count_include_pad, divisor));
  for (int64_t plane = p0; plane < p1; ++plane) {
    // the deltas, straight into the zero-bordered rows when sweeping rows
    const T* src = go + plane * p.OH * p.OW;
    for (int64_t oh = 0; oh < p.OH; ++oh) {
      T* __restrict__ dst = row_sweep ? dpad.data() + oh * PW + p.kW : delta.data() + oh * p.OW;
      const T* __restrict__ s = src + oh * p.OW;
      const T* __restrict__ d = dv.data() + oh * p.OW;
      for (int64_t ow = 0; ow < p.OW; ++ow) dst[ow] = s[ow] / d[ow];
      if (row_sweep) {
        std::fill(dst - p.kW, dst, T(0));
        std::fill(dst + p.OW, dst + p.OW + p.kW, T(0));
      }
    }
    T* g = gi + plane * p.H * p.W;
    for (int64_t ih = 0; ih < p.H; ++ih) {
      int64_t oh0, oh1;
      covering_outputs(ih, p.kH, p.sH, p.pH, p.OH, oh0, oh1);
      T* grow = g + ih * p.W;
      if (row_sweep) {
        // window ow covers iw iff ow = iw + pW - t for t in [0, kW): t falling
        // is ow rising, torch's order.
        if (std::is_same<T, float>::value && fast) {
          avx2::avg_backward_row_s1((const float*)dpad.data(), PW, oh0, oh1, p.kW, p.pW, p.W,
                                    (float*)grow);
          continue;
        }
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t oh = oh0; oh < oh1; ++oh)
          for (int64_t t = p.kW - 1; t >= 0; --t) {
            const T* __restrict__ d = dpad.data() + oh * PW + p.pW - t + p.kW;
            T* __restrict__ a = acc.data();
            for (int64_t iw = 0; iw < p.W; ++iw) a[iw] += d[iw];
          }
        std::copy(acc.begin(), acc.end(), grow);
        continue;
      }
      for (int64_t iw = 0; iw < p.W; ++iw) {
        int64_t ow0, ow1;
        covering_outputs(iw, p.kW, p.sW, p.pW, p.OW, ow0, ow1);
        T sum = 0;
        for (int64_t oh = oh0; oh < oh1; ++oh)
          for (int64_t ow = ow0; ow < ow1; ++ow) sum += delta[oh * p.OW + ow];
        grow[iw] = sum;
      }
    }
  }
}

// NHWC avg_pool2d backward of input rows [r0, r1) of the flattened (N, H)
// range, vectors along channels. The deltas of an image are computed when a
// row of a new image comes up. Non-overlapping windows copy their delta.
template <typename T>
void avg_backward_nhwc(const T* go, T* gi, int64_t r0, int64_t r1, const PoolPlan& p,
                       bool count_include_pad, int64_t divisor) {
  const int64_t C = p.C;
  const bool non_overlapping = p.sH >= p.kH && p.sW >= p.kW, fast = use_avx2();
  std::vector<T> delta(p.OH * p.OW * C), local(C);
  int64_t delta_n = -1;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / p.H, ih = r % p.H;
    if (n != delta_n) {
      avg_deltas(go + n * p.OH * p.OW * C, delta.data(), C, p, count_include_pad, divisor);
      delta_n = n;
    }
    T* drow = gi + (n * p.H + ih) * p.W * C;
    int64_t oh0, oh1;
    covering_outputs(ih, p.kH, p.sH, p.pH, p.OH, oh0, oh1);
    for (int64_t iw = 0; iw < p.W; ++iw) {
      int64_t ow0, ow1;
      covering_outputs(iw, p.kW, p.sW, p.pW, p.OW, ow0, ow1);
      T* acc = drow + iw * C;
      if (oh0 >= oh1 || ow0 >= ow1) {
        std::memset((void*)acc, 0, sizeof(T) * C);
        continue;
      }
      if (non_overlapping) {  // exactly one window: gi = its delta
        std::memcpy((void*)acc, delta.data() + (oh0 * p.OW + ow0) * C, sizeof(T) * C);
        continue;
      }
      if (std::is_same<T, float>::value && fast) {
        avx2::avg_backward_pixel_nhwc((const float*)delta.data(), p.OW, C, oh0, oh1, ow0, ow1,
                                      (float*)acc);
        continue;
      }
      // Sum in a local buffer (no aliasing with delta: vectorises).
      T* __restrict__ sum = local.data();
      for (int64_t c = 0; c < C; ++c) sum[c] = 0;
      for (int64_t oh = oh0; oh < oh1; ++oh)
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          const T* __restrict__ d = delta.data() + (oh * p.OW + ow) * C;
          for (int64_t c = 0; c < C; ++c) sum[c] += d[c];
        }
      std::memcpy((void*)acc, sum, sizeof(T) * C);
    }
  }
}

Tensor avg_pool2d_backward_cpu(const Tensor& grad_output, IntArrayRef input_size,
                               IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                               bool ceil_mode, bool count_include_pad,
                               c10::optional<int64_t> divisor_override, bool channels_last) {
  const char* op = "avg_pool2d_backward";
  check_pool_dtype(op, grad_output, "grad_output");
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must be non-zero, but got 0");
  const int64_t one[2] = {1, 1};
  const Pool2dGeometry g = pool2d_backward_geometry(op, grad_output, input_size, kernel_size,
                                                    stride, padding, one, ceil_mode, true);
  const int64_t divisor = divisor_override.value_or(0);
  const bool nhwc = channels_last && input_size.size() == 4;
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const Tensor go = grad_output.contiguous(fmt);
  Tensor gi = empty_output(input_size, grad_output.options().memory_format(fmt));
  if (gi.numel() == 0) return gi;
  const PoolPlan p = make_plan(g);
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "cnnkernels_pool", [&] {
    const scalar_t* g0 = go.const_data_ptr<scalar_t>();
    scalar_t* d = gi.mutable_data_ptr<scalar_t>();
    if (nhwc) {
      at::parallel_for(0, g.N * p.H, 1, [&](int64_t r0, int64_t r1) {
        avg_backward_nhwc(g0, d, r0, r1, p, count_include_pad, divisor);
      });
      return;
    }
    const bool k2s2 = std::is_same<scalar_t, float>::value && use_avx2() && p.kH == 2 &&
                      p.kW == 2 && p.sH == 2 && p.sW == 2 && p.pH == 0 && p.pW == 0;
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t p0, int64_t p1) {
      if (k2s2)
        avx2::avg_pool2d_backward_nchw_k2s2((const float*)g0, (float*)d, p0, p1, p,
                                            count_include_pad, divisor);
      else
        avg_backward_nchw(g0, d, p0, p1, p, count_include_pad, divisor);
    });
  });
  return gi;
}

}  // namespace
}  // namespace cpu
}  // namespace cnnkernels

TORCH_LIBRARY_IMPL(cnnkernels, CPU, m) {
  using namespace cnnkernels::cpu;
  m.impl("max_pool2d_forward", &max_pool2d_forward_cpu);
  m.impl("max_pool2d_with_indices_forward", &max_pool2d_with_indices_forward_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("max_unpool2d_forward", &max_unpool2d_forward_cpu);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cpu);
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
}
