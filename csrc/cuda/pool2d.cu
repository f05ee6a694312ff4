// CUDA pooling: max_pool2d (values, or values + int64 indices), max_unpool2d,
// avg_pool2d, forward and backward; float16, bfloat16, float32, float64,
// accumulating in at::opmath_type (float for the 16-bit types).
//
// Layouts: contiguous NCHW and channels_last (NHWC) have their own kernels;
// other strides are made contiguous in the input's suggested format first.
// One thread per output element (forward) or per input element (backward),
// grid-stride loops, 32-bit index math when every tensor fits.
// Backward is a gather (each input element sums over the windows covering
// it, in output raster order): deterministic, no atomics, no zeroing pass;
// when the windows tile the input exactly, a thread per window writes it.
// max_unpool2d's forward is a scatter (zero fill, then one write per input);
// out-of-range indices are caught on the device and reported as an error
// (one device-to-host copy of a flag per call).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <limits>
#include <tuple>
#include <vector>

#include "../common/pool.h"

namespace cnnkernels {
namespace cuda {
namespace {

using at::Tensor;
using c10::IntArrayRef;

// Division by a run-time constant. With 32-bit indices: a multiply-high and
// a shift (Granlund-Montgomery; exact for 0 <= x < 2^31), since integer
// division is the most expensive part of these memory-bound kernels.
template <typename I>
struct Divider {
  int64_t d = 1;
  Divider() = default;
  explicit Divider(int64_t v) : d(v) {}
  __device__ __forceinline__ I div(I x) const { return x / (I)d; }
};

template <>
struct Divider<int32_t> {
  uint32_t d = 1, magic = 0, shift = 0;
  Divider() = default;
  explicit Divider(int64_t v) : d((uint32_t)v) {
    if (d == 1) return;
    uint32_t l = 0;
    while ((uint64_t(1) << l) < d) ++l;  // ceil(log2(d))
    shift = l;
    magic = (uint32_t)(((uint64_t(1) << 32) * ((uint64_t(1) << l) - d)) / d + 1);
  }
  __device__ __forceinline__ int32_t div(int32_t x) const {
    const uint32_t t = __umulhi((uint32_t)x, magic);
    return (int32_t)((t + (uint32_t)x) >> shift);
  }
};

template <typename I>
struct Geo {
  int64_t N, C, H, W, OH, OW, kH, kW, sH, sW, pH, pW, dH, dW;
  Divider<I> divC, divH, divW, divOH, divOW, divSH, divSW;
};

template <typename I>
Geo<I> make_geo(const Pool2dGeometry& g) {
  Geo<I> r{g.N, g.C, g.H, g.W, g.OH, g.OW, g.kH, g.kW, g.sH, g.sW, g.pH, g.pW, g.dH, g.dW};
  r.divC = Divider<I>(g.C);
  r.divH = Divider<I>(g.H);
  r.divW = Divider<I>(g.W);
  r.divOH = Divider<I>(g.OH);
  r.divOW = Divider<I>(g.OW);
  r.divSH = Divider<I>(g.sH);
  r.divSW = Divider<I>(g.sW);
  return r;
}

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t b = (n + kThreads - 1) / kThreads;
  const int64_t cap = sms * 32;  // grid-stride beyond this
  return (int)(b < cap ? (b < 1 ? 1 : b) : cap);
}

bool is_nhwc(const Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

template <typename I>
__device__ __forceinline__ I dmin(I a, I b) { return a < b ? a : b; }
template <typename I>
__device__ __forceinline__ I dmax(I a, I b) { return a > b ? a : b; }

// Decompose a flat output/input index into (n, c, h, w) for either layout.
template <typename I, bool NHWC>
__device__ __forceinline__ void unflatten(I i, const Divider<I>& dC, I C, const Divider<I>& dH, I H,
                                          const Divider<I>& dW, I W, I& n, I& c, I& h, I& w) {
  if (NHWC) {
    I r = dC.div(i);
    c = i - r * C;
    I r2 = dW.div(r);
    w = r - r2 * W;
    n = dH.div(r2);
    h = r2 - n * H;
  } else {
    I r = dW.div(i);
    w = i - r * W;
    I r2 = dH.div(r);
    h = r - r2 * H;
    n = dC.div(r2);
    c = r2 - n * C;
  }
}

// Offset of spatial position `pos` (= h * W + w) of (n, c) in either layout.
template <typename I, bool NHWC>
__device__ __forceinline__ I offset(I n, I c, I pos, I C, I HW) {
  return NHWC ? (n * HW + pos) * C + c : (n * C + c) * HW + pos;
}

// ------------------------------------------------------------ max forward

template <typename T, typename I, bool NHWC, bool WithIdx>
__global__ void max_pool_fwd_kernel(const T* __restrict__ in, T* __restrict__ out,
                                    int64_t* __restrict__ ind, I total, Geo<I> g) {
  using acc_t = at::opmath_type<T>;
  const I C = g.C, H = g.H, W = g.W, OH = g.OH, OW = g.OW;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
    I n, c, oh, ow;
    unflatten<I, NHWC>(i, g.divC, C, g.divOH, OH, g.divOW, OW, n, c, oh, ow);
    const I hs = oh * (I)g.sH - (I)g.pH, ws = ow * (I)g.sW - (I)g.pW;
    I he = hs + (I)((g.kH - 1) * g.dH + 1), we = ws + (I)((g.kW - 1) * g.dW + 1);
    I h0 = hs, w0 = ws;
    while (h0 < 0) h0 += (I)g.dH;
    while (w0 < 0) w0 += (I)g.dW;
    he = dmin(he, H);
    we = dmin(we, W);
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    I mi = h0 * W + w0;
    const T* base = in + offset<I, NHWC>(n, c, (I)0, C, H * W);
    const I sp = NHWC ? C : 1;
    for (I ih = h0; ih < he; ih += (I)g.dH)
      for (I iw = w0; iw < we; iw += (I)g.dW) {
        const I pos = ih * W + iw;
        const acc_t v = static_cast<acc_t>(base[pos * sp]);
        if (v > m || isnan(v)) {
          m = v;
          mi = pos;
        }
      }
    out[i] = static_cast<T>(m);
    if (WithIdx) ind[i] = mi;
  }
}

// ----------------------------------------------------------- max backward

// Gather: input element (ih, iw) sums grad_output over the windows whose
// saved index points at it.
template <typename T, typename I, bool NHWC>
__global__ void max_pool_bwd_kernel(const T* __restrict__ go, const int64_t* __restrict__ ind,
                                    T* __restrict__ gi, I total, Geo<I> g) {
  using acc_t = at::opmath_type<T>;
  const I C = g.C, H = g.H, W = g.W, OH = g.OH, OW = g.OW;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
    I n, c, ih, iw;
    unflatten<I, NHWC>(i, g.divC, C, g.divH, H, g.divW, W, n, c, ih, iw);
    const I ekH = (I)((g.kH - 1) * g.dH + 1), ekW = (I)((g.kW - 1) * g.dW + 1);
    const I nh = ih + (I)g.pH - ekH + 1, nw = iw + (I)g.pW - ekW + 1;
    const I oh0 = nh <= 0 ? 0 : g.divSH.div(nh + (I)g.sH - 1);
    const I ow0 = nw <= 0 ? 0 : g.divSW.div(nw + (I)g.sW - 1);
    const I oh1 = dmin(OH, g.divSH.div(ih + (I)g.pH) + 1);
    const I ow1 = dmin(OW, g.divSW.div(iw + (I)g.pW) + 1);
    const I pos = ih * W + iw;
    acc_t s = 0;
    for (I oh = oh0; oh < oh1; ++oh)
      for (I ow = ow0; ow < ow1; ++ow) {
        const I o = offset<I, NHWC>(n, c, oh * OW + ow, C, OH * OW);
        if (ind[o] == pos) s += static_cast<acc_t>(go[o]);
      }
    gi[i] = static_cast<T>(s);
  }
}

// Backward when the windows tile the input exactly (stride = kernel size,
// no padding or dilation, H = OH * kH, W = OW * kW): every input element lies
// in exactly one window, so a thread per output element writes its whole
// window (no gather over covering windows; each gradient and index read
// once). Max: grad_output where the saved index points, zero elsewhere.
// Average: grad_output / divisor everywhere, the value the gather computes
// for a single window.
template <typename T, typename I, bool NHWC, bool AVG>
__global__ void tiled_bwd_kernel(const T* __restrict__ go, const int64_t* __restrict__ ind,
                                 T* __restrict__ gi, I total, Geo<I> g, int64_t divisor) {
  using acc_t = at::opmath_type<T>;
  const I C = g.C, W = g.W, HW = g.H * g.W, OH = g.OH, OW = g.OW, kH = (I)g.kH, kW = (I)g.kW;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
    I n, c, oh, ow;
    unflatten<I, NHWC>(i, g.divC, C, g.divOH, OH, g.divOW, OW, n, c, oh, ow);
    const int64_t k = AVG ? -1 : ind[i];
    const T gv = AVG ? static_cast<T>(static_cast<acc_t>(go[i]) / static_cast<acc_t>(divisor))
                     : go[i];
    auto val = [&](I pos) { return AVG || (int64_t)pos == k ? gv : T(0); };
    const I w0 = ow * kW;
    for (I h = oh * kH; h < (oh + 1) * kH; ++h) {
      const I row = h * W;
      if (!NHWC && kW == 2) {  // one aligned pair (W and w0 are even)
        struct alignas(2 * sizeof(T)) Pair { T a, b; };
        *reinterpret_cast<Pair*>(gi + offset<I, NHWC>(n, c, row + w0, C, HW)) =
            Pair{val(row + w0), val(row + w0 + 1)};
      } else {
        for (I w = w0; w < w0 + kW; ++w) gi[offset<I, NHWC>(n, c, row + w, C, HW)] = val(row + w);
      }
    }
  }
}

// Small windows only: a thread writes its whole window serially (global
// pooling would leave a few threads writing whole planes).
bool tiles_exactly(const Pool2dGeometry& pg) {
  return pg.sH == pg.kH && pg.sW == pg.kW && pg.pH == 0 && pg.pW == 0 && pg.dH == 1 &&
         pg.dW == 1 && pg.H == pg.OH * pg.kH && pg.W == pg.OW * pg.kW && pg.kH * pg.kW <= 16;
}

// ----------------------------------------------------------- avg pool

template <typename I>
__device__ __forceinline__ I avg_div(const Geo<I>& g, I oh, I ow, bool cip, int64_t divisor) {
  if (divisor != 0) return (I)divisor;
  const I hs = oh * (I)g.sH - (I)g.pH, ws = ow * (I)g.sW - (I)g.pW;
  const I he = dmin(hs + (I)g.kH, (I)(g.H + g.pH)), we = dmin(ws + (I)g.kW, (I)(g.W + g.pW));
  if (cip) return (he - hs) * (we - ws);
  return (dmin(he, (I)g.H) - dmax(hs, (I)0)) * (dmin(we, (I)g.W) - dmax(ws, (I)0));
}

template <typename T, typename I, bool NHWC>
__global__ void avg_pool_fwd_kernel(const T* __restrict__ in, T* __restrict__ out, I total, Geo<I> g,
                                    bool cip, int64_t divisor) {
  using acc_t = at::opmath_type<T>;
  const I C = g.C, H = g.H, W = g.W, OH = g.OH, OW = g.OW;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
    I n, c, oh, ow;
    unflatten<I, NHWC>(i, g.divC, C, g.divOH, OH, g.divOW, OW, n, c, oh, ow);
    const I hs = oh * (I)g.sH - (I)g.pH, ws = ow * (I)g.sW - (I)g.pW;
    const I h0 = dmax(hs, (I)0), w0 = dmax(ws, (I)0);
    const I h1 = dmin(hs + (I)g.kH, H), w1 = dmin(ws + (I)g.kW, W);
    const T* base = in + offset<I, NHWC>(n, c, (I)0, C, H * W);
    const I sp = NHWC ? C : 1;
    acc_t s = 0;
    for (I ih = h0; ih < h1; ++ih)
      for (I iw = w0; iw < w1; ++iw) s += static_cast<acc_t>(base[(ih * W + iw) * sp]);
    const I dv = avg_div<I>(g, oh, ow, cip, divisor);
    out[i] = (h0 < h1 && w0 < w1) ? static_cast<T>(s / static_cast<acc_t>(dv)) : T(0);
  }
}

template <typename T, typename I, bool NHWC>
__global__ void avg_pool_bwd_kernel(const T* __restrict__ go, T* __restrict__ gi, I total, Geo<I> g,
                                    bool cip, int64_t divisor) {
  using acc_t = at::opmath_type<T>;
  const I C = g.C, H = g.H, W = g.W, OH = g.OH, OW = g.OW;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
    I n, c, ih, iw;
    unflatten<I, NHWC>(i, g.divC, C, g.divH, H, g.divW, W, n, c, ih, iw);
    const I nh = ih + (I)g.pH - (I)g.kH + 1, nw = iw + (I)g.pW - (I)g.kW + 1;
    const I oh0 = nh <= 0 ? 0 : g.divSH.div(nh + (I)g.sH - 1);
    const I ow0 = nw <= 0 ? 0 : g.divSW.div(nw + (I)g.sW - 1);
    const I oh1 = dmin(OH, g.divSH.div(ih + (I)g.pH) + 1);
    const I ow1 = dmin(OW, g.divSW.div(iw + (I)g.pW) + 1);
    acc_t s = 0;
    for (I oh = oh0; oh < oh1; ++oh)
      for (I ow = ow0; ow < ow1; ++ow) {
        const I o = offset<I, NHWC>(n, c, oh * OW + ow, C, OH * OW);
        s += static_cast<acc_t>(go[o]) / static_cast<acc_t>(avg_div<I>(g, oh, ow, cip, divisor));
      }
    gi[i] = static_cast<T>(s);
  }
}

// ---------------------------------------------------------- max unpool

// out[n, c, indices[e]] = in[e]; bad indices are skipped and reported.
template <typename T, typename I, bool NHWC>
__global__ void unpool_fwd_kernel(const T* __restrict__ in, const int64_t* __restrict__ ind,
                                  T* __restrict__ out, I total, I C, I HW, I OHW,
                                  Divider<I> dC, Divider<I> dHW, int64_t* __restrict__ bad) {
  for (I e = blockIdx.x * (I)blockDim.x + threadIdx.x; e < total; e += (I)gridDim.x * blockDim.x) {
    const int64_t k = ind[e];
    if (k < 0 || k >= (int64_t)OHW) {
      bad[1] = k;
      bad[0] = 1;
      continue;
    }
    I o;
    if (NHWC) {
      const I pix = dC.div(e);  // n * HW + position
      const I c = e - pix * C, n = dHW.div(pix);
      o = (n * OHW + (I)k) * C + c;
    } else {
      o = dHW.div(e) * OHW + (I)k;
    }
    out[o] = in[e];
  }
}

template <typename T, typename I, bool NHWC>
__global__ void unpool_bwd_kernel(const T* __restrict__ go, const int64_t* __restrict__ ind,
                                  T* __restrict__ gi, I total, I C, I HW, I OHW,
                                  Divider<I> dC, Divider<I> dHW, int64_t* __restrict__ bad) {
  for (I e = blockIdx.x * (I)blockDim.x + threadIdx.x; e < total; e += (I)gridDim.x * blockDim.x) {
    const int64_t k = ind[e];
    if (k < 0 || k >= (int64_t)OHW) {
      bad[1] = k;
      bad[0] = 1;
      gi[e] = T(0);
      continue;
    }
    I o;
    if (NHWC) {
      const I pix = dC.div(e);  // n * HW + position
      const I c = e - pix * C, n = dHW.div(pix);
      o = (n * OHW + (I)k) * C + c;
    } else {
      o = dHW.div(e) * OHW + (I)k;
    }
    gi[e] = go[o];
  }
}

// ------------------------------------------------------------- launchers

bool fits_int32(std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes)
    if (s >= std::numeric_limits<int32_t>::max()) return false;
  return true;
}

// Calls f.template operator()<I, NHWC>() with the index type and layout.
#define CNNK_LAUNCH_VARIANTS(use32, nhwc, ...)                   \
  do {                                                          \
    if (use32) {                                                \
      using index_t = int32_t;                                  \
      if (nhwc) {                                               \
        constexpr bool kNHWC = true;                            \
        __VA_ARGS__();                                          \
      } else {                                                  \
        constexpr bool kNHWC = false;                           \
        __VA_ARGS__();                                          \
      }                                                         \
    } else {                                                    \
      using index_t = int64_t;                                  \
      if (nhwc) {                                               \
        constexpr bool kNHWC = true;                            \
        __VA_ARGS__();                                          \
      } else {                                                  \
        constexpr bool kNHWC = false;                           \
        __VA_ARGS__();                                          \
      }                                                         \
    }                                                           \
  } while (0)

#define CNNK_DISPATCH(T, name, ...)                                                  \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, T, \
                                  name, __VA_ARGS__)

void max_pool_launch(const Tensor& x, const Pool2dGeometry& pg, const Tensor& out,
                     const Tensor* ind) {
  const int64_t total = out.numel();
  if (total == 0) return;
  const bool nhwc = is_nhwc(out);
  const bool use32 = fits_int32({x.numel(), total});
  auto stream = at::cuda::getCurrentCUDAStream();
  CNNK_DISPATCH(x.scalar_type(), "max_pool2d", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    int64_t* oi = ind ? ind->mutable_data_ptr<int64_t>() : nullptr;
    CNNK_LAUNCH_VARIANTS(use32, nhwc, [&] {
      const Geo<index_t> g = make_geo<index_t>(pg);
      if (oi)
        max_pool_fwd_kernel<scalar_t, index_t, kNHWC, true>
            <<<blocks_for(total), kThreads, 0, stream>>>(in, o, oi, (index_t)total, g);
      else
        max_pool_fwd_kernel<scalar_t, index_t, kNHWC, false>
            <<<blocks_for(total), kThreads, 0, stream>>>(in, o, oi, (index_t)total, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void check_cuda_input(const char* op, const Tensor& t, const char* name) {
  check_pool_dtype(op, t, name);
}

Tensor max_pool2d_forward_cuda(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  const char* op = "max_pool2d";
  check_cuda_input(op, input, "input");
  const Pool2dGeometry g =
      pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode, false);
  c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = pool_memory_format(input);
  const Tensor x = input.contiguous(fmt);
  Tensor out = at::empty(pool_output_sizes(g, g.C, g.OH, g.OW), input.options().memory_format(fmt));
  max_pool_launch(x, g, out, nullptr);
  return out;
}

std::tuple<Tensor, Tensor> max_pool2d_with_indices_forward_cuda(const Tensor& input,
                                                                IntArrayRef kernel_size,
                                                                IntArrayRef stride,
                                                                IntArrayRef padding,
                                                                IntArrayRef dilation,
                                                                bool ceil_mode) {
  const char* op = "max_pool2d";
  check_cuda_input(op, input, "input");
  const Pool2dGeometry g =
      pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode, false);
  c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = pool_memory_format(input);
  const Tensor x = input.contiguous(fmt);
  const auto sizes = pool_output_sizes(g, g.C, g.OH, g.OW);
  Tensor out = at::empty(sizes, input.options().memory_format(fmt));
  Tensor ind = at::empty(sizes, input.options().dtype(at::kLong).memory_format(fmt));
  max_pool_launch(x, g, out, &ind);
  return std::make_tuple(out, ind);
}

Tensor max_pool2d_backward_cuda(const Tensor& grad_output, const Tensor& indices,
                                IntArrayRef input_size, IntArrayRef kernel_size,
                                IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                bool ceil_mode) {
  const char* op = "max_pool2d_backward";
  check_cuda_input(op, grad_output, "grad_output");
  const Pool2dGeometry pg = pool2d_backward_geometry(op, grad_output, input_size, kernel_size,
                                                     stride, padding, dilation, ceil_mode, false);
  check_indices(op, grad_output, indices, "grad_output");
  c10::cuda::CUDAGuard guard(grad_output.device());
  const auto fmt = pool_memory_format(indices);
  const Tensor go = grad_output.contiguous(fmt);
  const Tensor ix = indices.contiguous(fmt);
  Tensor gi = at::empty(input_size, grad_output.options().memory_format(fmt));
  const int64_t total = gi.numel();
  if (total == 0) return gi;
  const bool use32 = fits_int32({total, go.numel()});
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool tiled = tiles_exactly(pg);
  CNNK_DISPATCH(go.scalar_type(), "cnnkernels_pool", [&] {
    CNNK_LAUNCH_VARIANTS(use32, nhwc, [&] {
      const Geo<index_t> g = make_geo<index_t>(pg);
      if (tiled) {
        const int64_t outs = go.numel();
        tiled_bwd_kernel<scalar_t, index_t, kNHWC, false><<<blocks_for(outs), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), ix.const_data_ptr<int64_t>(),
            gi.mutable_data_ptr<scalar_t>(), (index_t)outs, g, 0);
      } else {
        max_pool_bwd_kernel<scalar_t, index_t, kNHWC><<<blocks_for(total), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), ix.const_data_ptr<int64_t>(),
            gi.mutable_data_ptr<scalar_t>(), (index_t)total, g);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gi;
}

Tensor avg_pool2d_forward_cuda(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                               IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               c10::optional<int64_t> divisor_override) {
  const char* op = "avg_pool2d";
  check_cuda_input(op, input, "input");
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must be non-zero, but got 0");
  const int64_t one[2] = {1, 1};
  const Pool2dGeometry pg =
      pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, one, ceil_mode, true);
  c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = pool_memory_format(input);
  const Tensor x = input.contiguous(fmt);
  Tensor out =
      at::empty(pool_output_sizes(pg, pg.C, pg.OH, pg.OW), input.options().memory_format(fmt));
  const int64_t total = out.numel();
  if (total == 0) return out;
  const bool use32 = fits_int32({x.numel(), total});
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const int64_t divisor = divisor_override.value_or(0);
  auto stream = at::cuda::getCurrentCUDAStream();
  CNNK_DISPATCH(x.scalar_type(), "cnnkernels_pool", [&] {
    CNNK_LAUNCH_VARIANTS(use32, nhwc, [&] {
      const Geo<index_t> g = make_geo<index_t>(pg);
      avg_pool_fwd_kernel<scalar_t, index_t, kNHWC><<<blocks_for(total), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), (index_t)total, g,
          count_include_pad, divisor);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

Tensor avg_pool2d_backward_cuda(const Tensor& grad_output, IntArrayRef input_size,
                                IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                                bool ceil_mode, bool count_include_pad,
                                c10::optional<int64_t> divisor_override, bool channels_last) {
  const char* op = "avg_pool2d_backward";
  check_cuda_input(op, grad_output, "grad_output");
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must be non-zero, but got 0");
  const int64_t one[2] = {1, 1};
  const Pool2dGeometry pg = pool2d_backward_geometry(op, grad_output, input_size, kernel_size,
                                                     stride, padding, one, ceil_mode, true);
  c10::cuda::CUDAGuard guard(grad_output.device());
  const bool nhwc = channels_last && input_size.size() == 4;
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const Tensor go = grad_output.contiguous(fmt);
  Tensor gi = at::empty(input_size, grad_output.options().memory_format(fmt));
  const int64_t total = gi.numel();
  if (total == 0) return gi;
  const bool use32 = fits_int32({total, go.numel()});
  const int64_t divisor = divisor_override.value_or(0);
  auto stream = at::cuda::getCurrentCUDAStream();
  CNNK_DISPATCH(go.scalar_type(), "cnnkernels_pool", [&] {
    CNNK_LAUNCH_VARIANTS(use32, nhwc, [&] {
      const Geo<index_t> g = make_geo<index_t>(pg);
      if (tiles_exactly(pg)) {  // no padding: the divisor is the window's size
        const int64_t outs = go.numel();
        tiled_bwd_kernel<scalar_t, index_t, kNHWC, true><<<blocks_for(outs), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), nullptr, gi.mutable_data_ptr<scalar_t>(),
            (index_t)outs, g, divisor != 0 ? divisor : pg.kH * pg.kW);
      } else {
        avg_pool_bwd_kernel<scalar_t, index_t, kNHWC><<<blocks_for(total), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), gi.mutable_data_ptr<scalar_t>(), (index_t)total, g,
            count_include_pad, divisor);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gi;
}

// The device-side "bad index" record: {found (0/1), one bad index}.
Tensor new_bad_flag(const Tensor& like) {
  Tensor flag = at::empty({2}, like.options().dtype(at::kLong));
  C10_CUDA_CHECK(cudaMemsetAsync(flag.mutable_data_ptr<int64_t>(), 0, 2 * sizeof(int64_t),
                                 at::cuda::getCurrentCUDAStream()));
  return flag;
}

// Reads the record back (one small copy and a stream sync); true if found.
bool read_bad_flag(const Tensor& flag, int64_t& value) {
  int64_t host[2] = {0, 0};
  auto stream = at::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(cudaMemcpyAsync(host, flag.const_data_ptr<int64_t>(), 2 * sizeof(int64_t),
                                 cudaMemcpyDeviceToHost, stream));
  C10_CUDA_CHECK(cudaStreamSynchronize(stream));
  value = host[1];
  return host[0] != 0;
}

Tensor max_unpool2d_forward_cuda(const Tensor& input, const Tensor& indices,
                                 IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                                 at::OptionalIntArrayRef output_size) {
  const char* op = "max_unpool2d";
  check_cuda_input(op, input, "input");
  check_indices(op, input, indices, "input");
  int64_t OH, OW;
  max_unpool2d_output_size(op, input, kernel_size, stride, padding, output_size, OH, OW);
  c10::cuda::CUDAGuard guard(input.device());
  const bool batched = input.dim() == 4;
  const int64_t N = batched ? input.size(0) : 1, C = input.size(-3);
  const int64_t HW = input.size(-2) * input.size(-1);
  const auto fmt = pool_memory_format(input);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const Tensor x = input.contiguous(fmt);
  const Tensor ix = indices.contiguous(fmt);
  std::vector<int64_t> sizes = batched ? std::vector<int64_t>{N, C, OH, OW}
                                       : std::vector<int64_t>{C, OH, OW};
  Tensor out = at::empty(sizes, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.numel() * out.element_size(), stream));
  const int64_t total = x.numel();
  if (total == 0) return out;
  Tensor flag = new_bad_flag(x);
  const bool use32 = fits_int32({total, out.numel()});
  CNNK_DISPATCH(x.scalar_type(), "cnnkernels_pool", [&] {
    CNNK_LAUNCH_VARIANTS(use32, nhwc, [&] {
      unpool_fwd_kernel<scalar_t, index_t, kNHWC><<<blocks_for(total), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), ix.const_data_ptr<int64_t>(),
          out.mutable_data_ptr<scalar_t>(), (index_t)total, (index_t)C, (index_t)HW,
          (index_t)(OH * OW), Divider<index_t>(C), Divider<index_t>(HW),
          flag.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  int64_t bad = 0;
  TORCH_CHECK(!read_bad_flag(flag, bad), op, ": found an invalid index ", bad,
              " in indices (each output plane has ", OH, "x", OW, " = ", OH * OW, " elements)");
  return out;
}

Tensor max_unpool2d_backward_cuda(const Tensor& grad_output, const Tensor& indices) {
  const char* op = "max_unpool2d_backward";
  check_cuda_input(op, grad_output, "grad_output");
  check_pool_input_dims(op, indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, but got ",
              indices.scalar_type());
  check_same_device(op, grad_output, "grad_output", indices, "indices");
  TORCH_CHECK(grad_output.dim() == indices.dim() && grad_output.size(0) == indices.size(0) &&
                  grad_output.size(-3) == indices.size(-3),
              op, ": grad_output of size ", int_list_str(grad_output.sizes()),
              " does not match indices of size ", int_list_str(indices.sizes()));
  c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t C = indices.size(-3);
  const int64_t HW = indices.size(-2) * indices.size(-1);
  const int64_t OHW = grad_output.size(-2) * grad_output.size(-1);
  const auto fmt = pool_memory_format(indices);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const Tensor go = grad_output.contiguous(fmt);
  const Tensor ix = indices.contiguous(fmt);
  Tensor gi = at::empty(indices.sizes(), grad_output.options().memory_format(fmt));
  const int64_t total = gi.numel();
  if (total == 0) return gi;
  Tensor flag = new_bad_flag(go);
  const bool use32 = fits_int32({total, go.numel()});
  auto stream = at::cuda::getCurrentCUDAStream();
  CNNK_DISPATCH(go.scalar_type(), "cnnkernels_pool", [&] {
    CNNK_LAUNCH_VARIANTS(use32, nhwc, [&] {
      unpool_bwd_kernel<scalar_t, index_t, kNHWC><<<blocks_for(total), kThreads, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), ix.const_data_ptr<int64_t>(),
          gi.mutable_data_ptr<scalar_t>(), (index_t)total, (index_t)C, (index_t)HW,
          (index_t)OHW, Divider<index_t>(C), Divider<index_t>(HW), flag.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  int64_t bad = 0;
  TORCH_CHECK(!read_bad_flag(flag, bad), op, ": found an invalid index ", bad,
              " in indices (each output plane has ", OHW, " elements)");
  return gi;
}

}  // namespace
}  // namespace cuda
}  // namespace cnnkernels

TORCH_LIBRARY_IMPL(cnnkernels, CUDA, m) {
  using namespace cnnkernels::cuda;
  m.impl("max_pool2d_forward", &max_pool2d_forward_cuda);
  m.impl("max_pool2d_with_indices_forward", &max_pool2d_with_indices_forward_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
  m.impl("max_unpool2d_forward", &max_unpool2d_forward_cuda);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cuda);
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_cuda);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cuda);
}
