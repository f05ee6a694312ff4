// The CPU kernels' output memory: a cache of large blocks that outlive their
// tensors, so that an op called again (every training step) writes into
// memory that is already mapped.
//
// Why: glibc serves large allocations with fresh mmap'd pages and gives
// freed ones back to the system, so every call of a 12.8 MB op paid a page
// fault per 4 KB page of its output on first touch (1-2 us each on these
// VMs, thousands per call: BatchNormReLU2d forward+backward at 16x64x56x56
// took 700-1100 faults per call when torch's ops ran in between). A cached
// block is mapped once, with transparent huge pages requested.
//
// Outputs under kHostCacheMinBytes come from torch's CPU allocator as
// before. Freed blocks are kept up to a cap of cached free bytes (default
// 2 GiB or an eighth of the physical memory, whichever is smaller;
// CNNKERNELS_CPU_CACHE_MB at import sets it, 0 turns the cache off);
// cnnkernels.empty_cpu_cache() gives them back to the system.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cnnkernels {
namespace cpu {

constexpr int64_t kHostCacheMinBytes = int64_t(1) << 20;

// at::empty(sizes, options) (options' memory format honoured) in cached
// memory; a CPU tensor like any other (resizable, its storage's allocator
// the cache's).
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Gives every cached free block back to the system.
void host_cache_release();

// {bytes in cached free blocks, bytes of blocks handed out, cap}.
std::vector<int64_t> host_cache_stats();

}  // namespace cpu
}  // namespace cnnkernels
