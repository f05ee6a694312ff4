// AVX2/FMA build of the batch-norm kernels (batch_norm_impl.h), picked at run
// time by batch_norm.cpp. Nothing from torch is included under the target.
#include <cstdint>

#include "batch_norm_kernels.h"

#pragma GCC target("avx2,fma")

#include <immintrin.h>

#define CNNK_BN_NS avx2
#define CNNK_BN_AVX2 1
#include "batch_norm_impl.h"
