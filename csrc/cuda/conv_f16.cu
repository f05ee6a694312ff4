// The CUDA convolution kernels for c10::Half (one dtype per translation unit).
#include "conv_kernels.cuh"

namespace cnnkernels {
namespace cuda {
CNNK_CONV_INSTANTIATE(c10::Half)
}  // namespace cuda
}  // namespace cnnkernels
