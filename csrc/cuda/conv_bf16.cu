// The CUDA convolution kernels for c10::BFloat16 (one dtype per translation unit).
#include "conv_kernels.cuh"

namespace cnnkernels {
namespace cuda {
CNNK_CONV_INSTANTIATE(c10::BFloat16)
}  // namespace cuda
}  // namespace cnnkernels
