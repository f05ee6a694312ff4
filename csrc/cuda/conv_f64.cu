// The CUDA convolution kernels for double (one dtype per translation unit).
#include "conv_kernels.cuh"

namespace cnnkernels {
namespace cuda {
CNNK_CONV_INSTANTIATE(double)
}  // namespace cuda
}  // namespace cnnkernels
