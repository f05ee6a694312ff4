// Portable build of the convolution kernels (conv_impl.h).
#include <cstdint>

#include "conv_kernels.h"

#define CNNK_CONV_NS generic
#include "conv_impl.h"
