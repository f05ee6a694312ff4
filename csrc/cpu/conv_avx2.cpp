// AVX2/FMA build of the convolution kernels (conv_impl.h), picked at run time
// by conv.cpp. Nothing from torch is included under the target.
#include <cstdint>

#include "conv_kernels.h"

#pragma GCC target("avx2,fma")

#include <immintrin.h>

#define CNNK_CONV_NS avx2
#define CNNK_CONV_AVX2 1
#include "conv_impl.h"
