// Run-time choice of the CPU code path: AVX2/FMA kernels when the processor
// has them, else (or when forced) the portable C++ kernels. The environment
// variable CNNKERNELS_CPU_ISA=generic forces the portable path at import;
// cnnkernels._C._set_cpu_isa("generic" | "avx2") switches it at run time
// (the tests run every pooling case through both).
#pragma once

#include <cstdint>
#include <string>

namespace cnnkernels {
namespace cpu {

bool avx2_available();          // the processor supports AVX2 and FMA
bool use_avx2();                // the AVX2 path is selected
void set_isa(const std::string& name);
std::string isa_name();

// Bytes of the last-level cache (sysconf; 0 when unknown), which some
// kernels use to pick between a cache-resident and a streaming schedule.
// set_llc_bytes overrides it (tests force both schedules); -1 restores it.
int64_t llc_bytes();
void set_llc_bytes(int64_t bytes);

// Outputs larger than this are written with non-temporal stores (the conv
// kernels' NCHW output rows and channels_last depthwise, the NCHW pooling
// scatters): they would not stay in the caches anyway, and streaming them
// saves the read-for-ownership of every line (measured: channels_last
// 8x128x56x56 depthwise forward 2.3 -> 1.05 ms on 2 threads; 2 images,
// 1.6 MB, unchanged).
constexpr int64_t kStreamBytes = int64_t(8) << 20;

}  // namespace cpu
}  // namespace cnnkernels
