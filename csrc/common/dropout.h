// Shared by the CPU and CUDA dropout kernels: argument checks and the layout
// rule (definitions in dropout.cpp).
//
// The mask of element-wise dropout is a function of an element's offset in
// memory in the output's layout (contiguous, or channels_last for a 4-D
// channels_last input), so backward must see the gradient in that layout:
// the backward op takes the layout flag and converts the gradient if needed.
// Channel-wise dropout (dropout2d) draws one value per (dim 0, dim 1) pair.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace cnnkernels {

struct DropoutPlan {
  uint32_t threshold = 0;  // elements whose word is below it are dropped
  double scale = 1.0;      // 1 / (1 - p); 0 when p == 1
  bool channels_last = false;
  int64_t groups = 0;      // channel-wise: dim0 * dim1 mask values
  int64_t inner = 1;       // channel-wise, planar: elements per (n, c)
  int64_t C = 1;           // channel-wise, channels_last: channels
  int64_t HWC = 1;         // channel-wise, channels_last: elements per sample
};

void check_dropout_p(const char* op, double p);

// Checks the input and fills the plan; channels_last decides the layout.
DropoutPlan dropout_plan(const char* op, const at::Tensor& input, double p, bool channelwise,
                         bool channels_last, bool cpu);

void check_rng_state(const char* op, const at::Tensor& rng_state, const at::Tensor& like);

}  // namespace cnnkernels
