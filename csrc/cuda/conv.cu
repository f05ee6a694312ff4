// CUDA convolution and transposed convolution: float16, bfloat16, float32,
// float64 (accumulation in float, double for float64).
//
// Direct kernels, one thread per output value, reading any NCHW or
// channels_last layout through element strides:
//   forward     y[n, oc, oh, ow]  = bias + sum over (c, kh, kw)
//   data grad   x[n, c, ih, iw]   = sum over (oc, kh, kw) of the taps whose
//               output pixel exists (the stride divides ih + pad - kh*dil);
//               conv_transpose2d's forward is this pass (plus bias)
//   weight grad one block per weight value, threads over (n, oh, ow), a
//               fixed-order shared-memory tree: no atomics, results repeat
//               bit for bit; the bias gradient likewise, one block per channel.
// This is the correctness baseline: no shared-memory tiling and no tensor
// cores yet (see benchmarks/results/NOTES.md).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "../common/conv.h"

namespace cnnkernels {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

struct Geo {
  int64_t N, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, G;
};

struct Str {
  int64_t n, c, h, w;
};

Geo to_geo(const ConvGeometry& g) {
  return {g.N, g.C, g.H, g.W, g.OC, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, g.G};
}

Str strides(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// (n, c, h, w) of linear index i over an (N, C, H, W) tensor, channels
// innermost when cl (so that consecutive threads touch consecutive memory).
__device__ __forceinline__ void decode(int64_t i, int64_t C, int64_t H, int64_t W, bool cl,
                                       int64_t& n, int64_t& c, int64_t& h, int64_t& w) {
  if (cl) {
    c = i % C;
    i /= C;
    w = i % W;
    i /= W;
    h = i % H;
    n = i / H;
  } else {
    w = i % W;
    i /= W;
    h = i % H;
    i /= H;
    c = i % C;
    n = i / C;
  }
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, Str xs, const T* __restrict__ w,
                               const T* __restrict__ b, T* __restrict__ y, Str ys, Geo g,
                               bool cl, int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t Cg = g.C / g.G, OCg = g.OC / g.G;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, oc, oh, ow;
    decode(i, g.OC, g.OH, g.OW, cl, n, oc, oh, ow);
    const int64_t c0 = (oc / OCg) * Cg;
    A acc = b ? static_cast<A>(b[oc]) : A(0);
    for (int64_t c = 0; c < Cg; ++c) {
      const T* xc = x + n * xs.n + (c0 + c) * xs.c;
      const T* wc = w + (oc * Cg + c) * g.KH * g.KW;
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t ih = oh * g.sh + kh * g.dh - g.pt;
        if (ih < 0 || ih >= g.H) continue;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t iw = ow * g.sw + kw * g.dw - g.pl;
          if (iw < 0 || iw >= g.W) continue;
          acc += static_cast<A>(wc[kh * g.KW + kw]) * static_cast<A>(xc[ih * xs.h + iw * xs.w]);
        }
      }
    }
    y[n * ys.n + oc * ys.c + oh * ys.h + ow * ys.w] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void dgrad_kernel(const T* __restrict__ gy, Str gs, const T* __restrict__ w,
                             const T* __restrict__ b, T* __restrict__ gx, Str xs, Geo g,
                             bool cl, int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t Cg = g.C / g.G, OCg = g.OC / g.G;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, ih, iw;
    decode(i, g.C, g.H, g.W, cl, n, c, ih, iw);
    const int64_t grp = c / Cg, cc = c % Cg;
    A acc = b ? static_cast<A>(b[c]) : A(0);
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t vh = ih + g.pt - kh * g.dh;
      if (vh < 0 || vh % g.sh != 0 || vh / g.sh >= g.OH) continue;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t vw = iw + g.pl - kw * g.dw;
        if (vw < 0 || vw % g.sw != 0 || vw / g.sw >= g.OW) continue;
        const T* gp = gy + n * gs.n + (vh / g.sh) * gs.h + (vw / g.sw) * gs.w;
        for (int64_t o = 0; o < OCg; ++o) {
          const int64_t oc = grp * OCg + o;
          acc += static_cast<A>(w[((oc * Cg + cc) * g.KH + kh) * g.KW + kw]) *
                 static_cast<A>(gp[oc * gs.c]);
        }
      }
    }
    gx[n * xs.n + c * xs.c + ih * xs.h + iw * xs.w] = static_cast<T>(acc);
  }
}

// Sums a block's per-thread values in a fixed tree order; thread 0 gets it.
template <typename A>
__device__ A block_sum(A v, A* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

template <typename T>
__global__ void wgrad_kernel(const T* __restrict__ gy, Str gs, const T* __restrict__ x, Str xs,
                             T* __restrict__ gw, Geo g) {
  using A = at::opmath_type<T>;
  __shared__ A sh[kThreads];
  const int64_t Cg = g.C / g.G, OCg = g.OC / g.G, KK = g.KH * g.KW;
  const int64_t widx = blockIdx.x;  // (oc, c, kh, kw), contiguous weight order
  const int64_t kw = widx % g.KW, kh = (widx / g.KW) % g.KH, c = (widx / KK) % Cg,
                oc = widx / (KK * Cg);
  const int64_t xc = (oc / OCg) * Cg + c;
  const int64_t P = g.OH * g.OW, total = g.N * P;
  A acc = A(0);
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int64_t n = i / P, oh = (i % P) / g.OW, ow = i % g.OW;
    const int64_t ih = oh * g.sh + kh * g.dh - g.pt, iw = ow * g.sw + kw * g.dw - g.pl;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
    acc += static_cast<A>(gy[n * gs.n + oc * gs.c + oh * gs.h + ow * gs.w]) *
           static_cast<A>(x[n * xs.n + xc * xs.c + ih * xs.h + iw * xs.w]);
  }
  const A s = block_sum(acc, sh);
  if (threadIdx.x == 0) gw[widx] = static_cast<T>(s);
}

template <typename T>
__global__ void bias_grad_kernel(const T* __restrict__ gy, Str gs, T* __restrict__ gb,
                                 int64_t N, int64_t H, int64_t W) {
  using A = at::opmath_type<T>;
  __shared__ A sh[kThreads];
  const int64_t c = blockIdx.x, P = H * W;
  A acc = A(0);
  for (int64_t i = threadIdx.x; i < N * P; i += kThreads) {
    const int64_t n = i / P, h = (i % P) / W, w = i % W;
    acc += static_cast<A>(gy[n * gs.n + c * gs.c + h * gs.h + w * gs.w]);
  }
  const A s = block_sum(acc, sh);
  if (threadIdx.x == 0) gb[c] = static_cast<T>(s);
}

int blocks_for(int64_t total) {
  return (int)std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 32);
}

template <typename T>
void launch_forward(const Geo& g, const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y,
                    bool cl) {
  const int64_t total = g.N * g.OC * g.OH * g.OW;
  if (total == 0) return;
  forward_kernel<T><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<T>(), strides(x), w.data_ptr<T>(), b.defined() ? b.data_ptr<T>() : nullptr,
      y.data_ptr<T>(), strides(y), g, cl, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_dgrad(const Geo& g, const Tensor& gy, const Tensor& w, const Tensor& b, Tensor& gx,
                  bool cl) {
  const int64_t total = g.N * g.C * g.H * g.W;
  if (total == 0) return;
  dgrad_kernel<T><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      gy.data_ptr<T>(), strides(gy), w.data_ptr<T>(), b.defined() ? b.data_ptr<T>() : nullptr,
      gx.data_ptr<T>(), strides(gx), g, cl, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_wgrad(const Geo& g, const Tensor& gy, const Tensor& x, Tensor& gw) {
  wgrad_kernel<T><<<(unsigned)gw.numel(), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      gy.data_ptr<T>(), strides(gy), x.data_ptr<T>(), strides(x), gw.data_ptr<T>(), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_bias_grad(const Tensor& gy, Tensor& gb) {
  bias_grad_kernel<T><<<(unsigned)gb.numel(), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      gy.data_ptr<T>(), strides(gy), gb.data_ptr<T>(), gy.size(0), gy.size(2), gy.size(3));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Tensor opt_contig(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

#define CNNK_CONV_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

Tensor conv2d_forward_cuda(const Tensor& input, const Tensor& weight,
                           const c10::optional<Tensor>& bias, c10::IntArrayRef stride,
                           c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  const ConvGeometry cg =
      conv2d_geometry("conv2d", input, weight, bias, stride, padding, dilation, groups, false);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = conv_memory_format(input, weight);
  Tensor y = at::empty({cg.N, cg.OC, cg.OH, cg.OW}, input.options().memory_format(fmt));
  const Tensor x = input.contiguous(fmt), w = weight.contiguous(), b = opt_contig(bias);
  CNNK_CONV_DISPATCH(input.scalar_type(), "cnnkernels_conv2d_forward_cuda", [&] {
    launch_forward<scalar_t>(to_geo(cg), x, w, b, y, fmt == at::MemoryFormat::ChannelsLast);
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor> grads(const ConvGeometry& cg, const Tensor& gy,
                                         const Tensor& x, const Tensor& w, at::MemoryFormat fmt,
                                         std::array<bool, 3> mask, bool transposed) {
  // conv2d: (grad x, grad w, grad b over OC); conv_transpose2d: gy is the
  // transposed op's grad_output (the convolution's x), x its input (the
  // convolution's y).
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const Geo g = to_geo(cg);
  Tensor g0 = at::empty({0}, x.options()), g1 = at::empty({0}, x.options()),
         g2 = at::empty({0}, x.options());
  if (mask[0]) g0 = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (mask[1]) g1 = at::empty({cg.OC, cg.Cg(), cg.KH, cg.KW}, x.options());
  if (mask[2]) g2 = at::empty({transposed ? cg.C : cg.OC}, x.options());
  CNNK_CONV_DISPATCH(x.scalar_type(), "cnnkernels_conv_backward_cuda", [&] {
    if (transposed) {
      if (mask[0]) launch_forward<scalar_t>(g, gy, w, Tensor(), g0, cl);
      if (mask[1]) launch_wgrad<scalar_t>(g, x, gy, g1);
    } else {
      if (mask[0]) launch_dgrad<scalar_t>(g, gy, w, Tensor(), g0, cl);
      if (mask[1]) launch_wgrad<scalar_t>(g, gy, x, g1);
    }
    if (mask[2]) launch_bias_grad<scalar_t>(gy, g2);
  });
  return {g0, g1, g2};
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward_cuda(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const char* op = "conv2d_backward";
  const ConvGeometry cg =
      conv2d_geometry(op, input, weight, c10::nullopt, stride, padding, dilation, groups, false);
  check_conv_grad(op, grad_output, "grad_output", {cg.N, cg.OC, cg.OH, cg.OW}, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = conv_memory_format(input, weight);
  return grads(cg, grad_output.contiguous(fmt), input.contiguous(fmt), weight.contiguous(), fmt,
               output_mask, false);
}

Tensor conv_transpose2d_forward_cuda(const Tensor& input, const Tensor& weight,
                                     const c10::optional<Tensor>& bias, c10::IntArrayRef stride,
                                     c10::IntArrayRef padding, c10::IntArrayRef output_padding,
                                     int64_t groups, c10::IntArrayRef dilation) {
  const ConvGeometry cg = conv_transpose2d_geometry("conv_transpose2d", input, weight, bias, stride,
                                                    padding, output_padding, groups, dilation, false);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = conv_memory_format(input, weight);
  Tensor out = at::empty({cg.N, cg.C, cg.H, cg.W}, input.options().memory_format(fmt));
  const Tensor x = input.contiguous(fmt), w = weight.contiguous(), b = opt_contig(bias);
  CNNK_CONV_DISPATCH(input.scalar_type(), "cnnkernels_conv_transpose2d_forward_cuda", [&] {
    launch_dgrad<scalar_t>(to_geo(cg), x, w, b, out, fmt == at::MemoryFormat::ChannelsLast);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> conv_transpose2d_backward_cuda(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef output_padding,
    int64_t groups, c10::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  const char* op = "conv_transpose2d_backward";
  const ConvGeometry cg = conv_transpose2d_geometry(op, input, weight, c10::nullopt, stride, padding,
                                                    output_padding, groups, dilation, false);
  check_conv_grad(op, grad_output, "grad_output", {cg.N, cg.C, cg.H, cg.W}, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = conv_memory_format(input, weight);
  return grads(cg, grad_output.contiguous(fmt), input.contiguous(fmt), weight.contiguous(), fmt,
               output_mask, true);
}

}  // namespace
}  // namespace cuda
}  // namespace cnnkernels

TORCH_LIBRARY_IMPL(cnnkernels, CUDA, m) {
  m.impl("conv2d_forward", &cnnkernels::cuda::conv2d_forward_cuda);
  m.impl("conv2d_backward", &cnnkernels::cuda::conv2d_backward_cuda);
  m.impl("conv_transpose2d_forward", &cnnkernels::cuda::conv_transpose2d_forward_cuda);
  m.impl("conv_transpose2d_backward", &cnnkernels::cuda::conv_transpose2d_backward_cuda);
}
