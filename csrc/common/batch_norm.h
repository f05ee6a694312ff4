// Shared by the CPU and CUDA batch-norm kernels: argument checks and the
// layout decision, written once (definitions in batch_norm.cpp).
//
// Layout: an input whose channels are innermost in memory (2-D (N, C),
// channels_last 4-D, channels_last_3d 5-D, or any input with one element per
// plane) is "interleaved": rows of C values. Anything else is made
// contiguous and is "planar": N planes of C x S values. Outputs and
// gradients take the input's layout.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <utility>

namespace cnnkernels {

struct BnGeometry {
  int64_t N = 0, C = 0, S = 1;  // planar view [N][C][S]
  int64_t rows = 0;             // interleaved view [rows][C] (rows = N * S)
  int64_t count = 0;            // values per channel (N * S)
  bool interleaved = false;
  at::MemoryFormat fmt = at::MemoryFormat::Contiguous;
};

enum BnActivation : int64_t { kBnActNone = 0, kBnActRelu = 1, kBnActLeakyRelu = 2 };

// Checks input, parameters and the activation code; fills the geometry.
// Parameters may be undefined; defined ones must be 1-D with C elements, on
// the input's device, in the input's dtype or (for float16/bfloat16 input)
// float32. `cpu` restricts dtypes to float32/float64.
BnGeometry batch_norm_geometry(const char* op, const at::Tensor& input,
                               const c10::optional<at::Tensor>& weight,
                               const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& running_mean,
                               const c10::optional<at::Tensor>& running_var, bool training,
                               int64_t activation, bool cpu);

// batch_norm_stats' checks (one process's share of a batch may hold a single
// value per channel) and its zero-filled outputs, mean and var, of C values
// in the statistics dtype.
BnGeometry batch_norm_stats_geometry(const char* op, const at::Tensor& input, bool cpu,
                                     at::Tensor& mean, at::Tensor& var);

// The input (or a gradient) in the layout the kernels read.
at::Tensor batch_norm_layout(const at::Tensor& t, const BnGeometry& g);

// Checks the per-channel mean / invstd passed to backward.
void check_batch_norm_saved(const char* op, const at::Tensor& input, const at::Tensor& t,
                            const char* name, int64_t C);

// float32/float64 (cpu) or also float16/bfloat16 (CUDA); shared with dropout.
void check_float_dtype(const char* op, const at::Tensor& t, const char* name, bool cpu);

// Checks grad_output (shape, dtype, device) and the saved mean / invstd.
void check_batch_norm_backward(const char* op, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& save_mean,
                               const at::Tensor& save_invstd, int64_t C);

// Checks batch_norm_backward_elemt's reduced gradient sums (1-D, C values,
// the input's device, a floating dtype) and count (positive when the input
// has elements); returns the sums in the statistics dtype.
std::pair<at::Tensor, at::Tensor> batch_norm_elemt_sums(const char* op, const at::Tensor& input,
                                                        const at::Tensor& sum_dy,
                                                        const at::Tensor& sum_dy_xhat,
                                                        int64_t count, int64_t C);

// The dtype per-channel statistics are kept in: float for float16/bfloat16/
// float32 input, double for float64.
at::ScalarType batch_norm_acc_type(at::ScalarType input);

}  // namespace cnnkernels
