// Every op schema of cnnkernels, in one place, plus the small Python module
// (cnnkernels._C) that loading the library needs.
//
// Forward and backward are separate ops; CPU kernels register in
// csrc/cpu/*.cpp, CUDA kernels in csrc/cuda/*.cu, fake (meta) kernels and
// autograd in Python (cnnkernels/_ops.py, cnnkernels/autograd.py).
#include <torch/extension.h>
#include <torch/library.h>

#include "common/philox.h"
#include "cpu/host_cache.h"
#include "cpu/isa.h"

TORCH_LIBRARY(cnnkernels, m) {
  // ---- pooling (csrc/cpu/pool2d.cpp, csrc/cuda/pool2d.cu)
  m.def(
      "max_pool2d_forward(Tensor self, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, bool ceil_mode) -> Tensor");
  m.def(
      "max_pool2d_with_indices_forward(Tensor self, int[] kernel_size, int[] stride, "
      "int[] padding, int[] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor indices, int[] input_size, "
      "int[] kernel_size, int[] stride, int[] padding, int[] dilation, bool ceil_mode) -> Tensor");
  m.def(
      "max_unpool2d_forward(Tensor self, Tensor indices, int[] kernel_size, int[] stride, "
      "int[] padding, int[]? output_size) -> Tensor");
  m.def("max_unpool2d_backward(Tensor grad_output, Tensor indices) -> Tensor");
  m.def(
      "avg_pool2d_forward(Tensor self, int[] kernel_size, int[] stride, int[] padding, "
      "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, int[] input_size, int[] kernel_size, "
      "int[] stride, int[] padding, bool ceil_mode, bool count_include_pad, "
      "int? divisor_override, bool channels_last) -> Tensor");

  // ---- batch norm with a fused activation (csrc/cpu/batch_norm.cpp, csrc/cuda/batch_norm.cu)
  // activation: 0 none, 1 relu, 2 leaky_relu(negative_slope). Returns the
  // output and the per-channel mean and invstd used (batch statistics when
  // training, else from the running statistics), which backward takes.
  m.def(
      "batch_norm_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps, int activation, "
      "float negative_slope) -> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor save_mean, Tensor save_invstd, bool training, int activation, "
      "float negative_slope, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // The pieces of a batch norm whose statistics span several processes
  // (SyncBatchNormFunction in cnnkernels/autograd.py): this process's
  // per-channel mean and biased variance (in the statistics dtype); and the input
  // gradient from statistics and gradient sums that were reduced over all
  // processes (sum_dy = sum of act'(z) * grad_output, sum_dy_xhat = the same
  // times (x - mean) * invstd; count: the values per channel in all processes).
  // The local sums come from batch_norm_backward(training=False).
  m.def("batch_norm_stats(Tensor input) -> (Tensor, Tensor)");
  m.def(
      "batch_norm_backward_elemt(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor invstd, Tensor sum_dy, Tensor sum_dy_xhat, int count, int activation, "
      "float negative_slope) -> Tensor");

  // ---- convolution (csrc/cpu/conv.cpp, csrc/cuda/conv.cu)
  // Cross-correlation, torch's conv2d. padding: 2 ints (symmetric) or 4
  // (top, bottom, left, right: padding='same' with an even kernel).
  // backward returns (grad_input, grad_weight, grad_bias), each computed only
  // when output_mask asks for it (else an empty tensor).
  m.def(
      "conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[] stride, "
      "int[] padding, int[] dilation, int groups, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // The transposed convolution, torch's conv_transpose2d (argument order too).
  m.def(
      "conv_transpose2d_forward(Tensor input, Tensor weight, Tensor? bias, int[] stride, "
      "int[] padding, int[] output_padding, int groups, int[] dilation) -> Tensor");
  m.def(
      "conv_transpose2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[] stride, "
      "int[] padding, int[] output_padding, int groups, int[] dilation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");

  // ---- dropout (csrc/cpu/dropout.cpp, csrc/cuda/dropout.cu)
  // channelwise: one draw per (dim 0, dim 1) pair (dropout2d). The forward
  // returns rng_state (int64 [seed, offset] on the input's device), from
  // which backward regenerates the mask. channels_last: the layout the mask
  // is laid over (4-D input only; the caller decides, backward repeats it).
  m.def(
      "dropout_forward(Tensor input, float p, bool channelwise, bool channels_last) "
      "-> (Tensor, Tensor)");
  m.def(
      "dropout_forward_(Tensor(a!) self, float p, bool channelwise, bool channels_last) "
      "-> Tensor");
  m.def(
      "dropout_backward(Tensor grad_output, Tensor rng_state, float p, bool channelwise, "
      "bool channels_last) -> Tensor");
}

#ifdef CNNKERNELS_WITH_CUDA
static constexpr bool kCudaBuilt = true;
#else
static constexpr bool kCudaBuilt = false;
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cnnkernels: hand-written CNN kernels (ops live in torch.ops.cnnkernels)";
  m.def("_cuda_built", [] { return kCudaBuilt; }, "whether the CUDA kernels were compiled");
  m.def("_cpu_isa", &cnnkernels::cpu::isa_name, "the CPU code path in use: 'avx512', 'avx2' or 'generic'");
  m.def("_set_cpu_isa", &cnnkernels::cpu::set_isa, "select the CPU code path");
  m.def("_host_cache_release", &cnnkernels::cpu::host_cache_release,
        "give the CPU output cache's free blocks back to the system");
  m.def("_host_cache_stats", &cnnkernels::cpu::host_cache_stats,
        "the CPU output cache's [free bytes, bytes in use, cap]");
  m.def("_llc_bytes", &cnnkernels::cpu::llc_bytes, "the last-level cache size the kernels assume");
  m.def("_set_llc_bytes", &cnnkernels::cpu::set_llc_bytes,
        "override the assumed last-level cache size in bytes (-1: detect; for tests)");
  m.def("_winograd", &cnnkernels::cpu::use_winograd,
        "whether 3x3 unit-stride float32 CPU convolutions may run as Winograd F(2x2, 3x3)");
  m.def("_set_winograd", &cnnkernels::cpu::set_winograd,
        "allow (True) or forbid (False) the Winograd convolution path (for tests)");
  m.def("_wide_tile_blocks", &cnnkernels::cpu::wide_tile_blocks,
        "how many 16-column blocks one AVX-512 convolution tile spans");
  m.def("_set_wide_tile_blocks", &cnnkernels::cpu::set_wide_tile_blocks,
        "set how many 16-column blocks one AVX-512 convolution tile spans (1-4; for tests)");
  m.def("_wgrad_oc", &cnnkernels::cpu::use_wgrad_oc,
        "whether the AVX-512 float32 weight gradient runs along output channels");
  m.def("_set_wgrad_oc", &cnnkernels::cpu::set_wgrad_oc,
        "run the AVX-512 float32 weight gradient along output channels (True) or through "
        "packed GEMM panels (False; for tests)");
  m.def("_force_winograd", &cnnkernels::cpu::force_winograd_for_tests,
        "run Winograd wherever the shape allows, past the size rules (for tests; "
        "_set_winograd undoes it)");
  m.def("_avx2_available", &cnnkernels::cpu::avx2_available,
        "whether this processor has AVX2 and FMA");
  m.def("_avx512_available", &cnnkernels::cpu::avx512_available,
        "whether this processor has AVX2, FMA and AVX-512F");
  m.def(
      "_philox",
      [](uint64_t block, uint64_t offset, uint64_t seed) {
        const auto r = cnnkernels::philox4x32_10(block, offset, seed);
        return std::vector<uint32_t>{r.v[0], r.v[1], r.v[2], r.v[3]};
      },
      "Philox4x32-10 words for a counter {block, offset} and key seed (for tests)");
}
