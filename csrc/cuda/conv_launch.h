// Per-dtype entry points of the CUDA convolution (defined in
// conv_kernels.cuh, instantiated in conv_<dtype>.cu, called by conv.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>

#include "../common/conv.h"

namespace cnnkernels {
namespace cuda {

// y = conv(x, w) + b (b may be undefined); cl: NHWC tensors.
template <typename T>
void conv_forward_t(const ConvGeometry& cg, const at::Tensor& x, const at::Tensor& w,
                    const at::Tensor& b, at::Tensor& y, bool cl);

// gx = the data gradient of gy (conv_transpose2d's forward), plus b.
template <typename T>
void conv_dgrad_t(const ConvGeometry& cg, const at::Tensor& gy, const at::Tensor& w,
                  const at::Tensor& b, at::Tensor& gx, bool cl);

// The gradients picked by mask into g0 (data), g1 (weight), g2 (bias),
// allocated by the caller; transposed: conv_transpose2d's backward.
template <typename T>
void conv_backward_t(const ConvGeometry& cg, const at::Tensor& gy, const at::Tensor& x,
                     const at::Tensor& w, bool cl, std::array<bool, 3> mask, bool transposed,
                     at::Tensor& g0, at::Tensor& g1, at::Tensor& g2);

}  // namespace cuda
}  // namespace cnnkernels
