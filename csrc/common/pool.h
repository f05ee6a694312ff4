// Shared by the CPU and CUDA pooling kernels: argument checks and output-size
// math for max_pool2d, avg_pool2d and max_unpool2d, written once. Defined in
// pool.cpp (compiled once by the host compiler, not inline in every file).
//
// Every check names the op, the argument, the rule and the value it got.
// The output-size formula is torch's (ATen/native/Pool.h), so shapes agree
// with torch.nn.functional for every kernel/stride/padding/dilation/ceil_mode.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/OptionalArrayRef.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cnnkernels {

// Everything a 2-D pooling kernel needs to know about one call.
struct Pool2dGeometry {
  int64_t N = 1, C = 0, H = 0, W = 0;   // input (N = 1 for unbatched input)
  int64_t OH = 0, OW = 0;               // output
  int64_t kH = 1, kW = 1, sH = 1, sW = 1, pH = 0, pW = 0, dH = 1, dW = 1;
  bool ceil_mode = false;
  bool batched = true;                  // 4-D input (false: 3-D, unbatched)
};

std::string int_list_str(c10::IntArrayRef v);

// torch's pooling_output_shape (floor division, then the ceil_mode rule that
// the last window must start inside the input or the left padding).
inline int64_t pooling_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride,
                                   int64_t dilation, bool ceil_mode) {
  int64_t num = in + 2 * pad - dilation * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t q = num / stride;
  if ((num % stride != 0) && ((num < 0) != (stride < 0))) --q;  // round toward -inf
  int64_t out = q + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// Reads a 2-element list argument (python normalises ints to pairs; a
// 1-element list is broadcast, as torch's own IntArrayRef[2] arguments do).
void read_pair(const char* op, const char* name, c10::IntArrayRef v, int64_t& a,
                      int64_t& b);

void check_pool_input_dims(const char* op, c10::IntArrayRef sizes);

// Checks the arguments of max_pool2d (is_avg = false) or avg_pool2d (is_avg =
// true: no dilation, padding bounded by half the kernel) and fills geometry.
Pool2dGeometry pool2d_geometry(const char* op, c10::IntArrayRef in_sizes,
                                      c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                      c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                      bool ceil_mode, bool is_avg);

// The memory format an output (or gradient) takes: the input's suggested one.
at::MemoryFormat pool_memory_format(const at::Tensor& t);

std::vector<int64_t> pool_output_sizes(const Pool2dGeometry& g, int64_t C, int64_t H,
                                              int64_t W);

// Checks the (N, C, H, W) sizes passed to a backward op against the gradient
// it receives, and fills geometry for the kernel.
Pool2dGeometry pool2d_backward_geometry(const char* op, const at::Tensor& grad_output,
                                               c10::IntArrayRef input_size,
                                               c10::IntArrayRef kernel_size,
                                               c10::IntArrayRef stride, c10::IntArrayRef padding,
                                               c10::IntArrayRef dilation, bool ceil_mode,
                                               bool is_avg);

// Checks the indices tensor of max_pool2d backward / max_unpool2d.
void check_indices(const char* op, const at::Tensor& values, const at::Tensor& indices,
                          const char* values_name);

// max_unpool2d: output spatial size from output_size, else torch's default
// (in - 1) * stride + kernel - 2 * padding, validated like torch.nn.functional.
void max_unpool2d_output_size(const char* op, const at::Tensor& input,
                                     c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                     c10::IntArrayRef padding,
                                     c10::OptionalArrayRef<int64_t> output_size, int64_t& OH,
                                     int64_t& OW);

void check_same_device(const char* op, const at::Tensor& a, const char* an,
                              const at::Tensor& b, const char* bn);

void check_pool_dtype(const char* op, const at::Tensor& t, const char* name);

}  // namespace cnnkernels
