// Every op schema of cnnkernels, in one place, plus the small Python module
// (cnnkernels._C) that loading the library needs.
//
// Forward and backward are separate ops; CPU kernels register in
// csrc/cpu/*.cpp, CUDA kernels in csrc/cuda/*.cu, fake (meta) kernels and
// autograd in Python (cnnkernels/_ops.py, cnnkernels/autograd.py).
#include <torch/extension.h>
#include <torch/library.h>

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
}

#ifdef CNNKERNELS_WITH_CUDA
static constexpr bool kCudaBuilt = true;
#else
static constexpr bool kCudaBuilt = false;
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cnnkernels: hand-written CNN kernels (ops live in torch.ops.cnnkernels)";
  m.def("_cuda_built", [] { return kCudaBuilt; }, "whether the CUDA kernels were compiled");
  m.def("_cpu_isa", &cnnkernels::cpu::isa_name, "the CPU code path in use: 'avx2' or 'generic'");
  m.def("_set_cpu_isa", &cnnkernels::cpu::set_isa, "select the CPU code path");
  m.def("_avx2_available", &cnnkernels::cpu::avx2_available,
        "whether this processor has AVX2 and FMA");
}
