// CUDA convolution and transposed convolution ops: argument checks, output
// allocation and the dtype dispatch to the per-dtype launchers
// (conv_launch.h; kernels in conv_kernels.cuh, see there for which run when).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../common/conv.h"
#include "conv_launch.h"

namespace cnnkernels {
namespace cuda {
namespace {

using at::Tensor;

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
    conv_forward_t<scalar_t>(cg, x, w, b, y, fmt == at::MemoryFormat::ChannelsLast);
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor> grads(const ConvGeometry& cg, const Tensor& gy,
                                         const Tensor& x, const Tensor& w, at::MemoryFormat fmt,
                                         std::array<bool, 3> mask, bool transposed) {
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  Tensor g0 = at::empty({0}, x.options()), g1 = at::empty({0}, x.options()),
         g2 = at::empty({0}, x.options());
  if (mask[0]) g0 = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (mask[1]) g1 = at::empty({cg.OC, cg.Cg(), cg.KH, cg.KW}, x.options());
  if (mask[2]) g2 = at::empty({transposed ? cg.C : cg.OC}, x.options());
  CNNK_CONV_DISPATCH(x.scalar_type(), "cnnkernels_conv_backward_cuda", [&] {
    conv_backward_t<scalar_t>(cg, gy, x, w, cl, mask, transposed, g0, g1, g2);
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
    conv_dgrad_t<scalar_t>(cg, x, w, b, out, fmt == at::MemoryFormat::ChannelsLast);
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
