// Portable build of the batch-norm kernels (batch_norm_impl.h).
#include <cstdint>

#include "batch_norm_kernels.h"

#define CNNK_BN_NS generic
#include "batch_norm_impl.h"
