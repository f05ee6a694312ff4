// The CUDA convolution kernels for float (one dtype per translation unit).
#include "conv_kernels.cuh"

namespace cnnkernels {
namespace cuda {
CNNK_CONV_INSTANTIATE(float)
}  // namespace cuda
}  // namespace cnnkernels
