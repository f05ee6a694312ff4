// Shared by the CPU and CUDA convolution kernels: argument checks and shape
// math for conv2d and conv_transpose2d, written once (definitions in conv.cpp).
//
// Both ops are described by one geometry, in the terms of the convolution
// (cross-correlation) y = conv(x, w):
//   x: (N, C, H, W)   w: (OC, C / G, KH, KW)   y: (N, OC, OH, OW)
//   y[n, oc, oh, ow] = sum w[oc, c, kh, kw] * x[n, g*Cg + c, oh*sh + kh*dh - pt, ow*sw + kw*dw - pl]
// conv2d forward computes y; its backward computes grad x (the "data
// gradient"), grad w and grad bias. conv_transpose2d is the data gradient:
// its input is the convolution's y (N, OC, OH, OW), its weight (OC, C / G, KH,
// KW) is read as the convolution's, and its output is the convolution's x.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace cnnkernels {

struct ConvGeometry {
  int64_t N = 0, C = 0, H = 0, W = 0;  // convolution input
  int64_t OC = 0, OH = 0, OW = 0;      // convolution output
  int64_t KH = 1, KW = 1;
  int64_t sh = 1, sw = 1, pt = 0, pl = 0, dh = 1, dw = 1;  // pt/pl: top/left padding
  int64_t G = 1;
  int64_t Cg() const { return C / G; }
  int64_t OCg() const { return OC / G; }
  // groups == input channels, one input channel per group (any multiplier)
  bool depthwise() const { return C == G; }
};

// conv2d: x (N, C, H, W), w (OC, C/G, KH, KW), optional bias (OC).
// padding has 2 (symmetric) or 4 (top, bottom, left, right) elements.
ConvGeometry conv2d_geometry(const char* op, const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation,
                             int64_t groups, bool cpu);

// conv_transpose2d: input (N, IC, H, W), weight (IC, OC/G, KH, KW), optional
// bias (OC), output (N, OC, (H-1)*s - 2p + d*(K-1) + output_padding + 1, ...).
// Returned in the convolution's terms (C = OC of the transposed op, and so on).
ConvGeometry conv_transpose2d_geometry(const char* op, const at::Tensor& input,
                                       const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding,
                                       c10::IntArrayRef output_padding, int64_t groups,
                                       c10::IntArrayRef dilation, bool cpu);

// Checks a gradient passed to a backward op: shape, dtype and device of `ref`.
void check_conv_grad(const char* op, const at::Tensor& grad, const char* name,
                     c10::IntArrayRef expected_sizes, const at::Tensor& ref);

// The layout of every activation tensor of one call: channels_last when the
// input or the weight suggests it (torch's rule), else contiguous.
at::MemoryFormat conv_memory_format(const at::Tensor& input, const at::Tensor& weight);

}  // namespace cnnkernels
