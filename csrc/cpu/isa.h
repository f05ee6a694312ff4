// Run-time choice of the CPU code path: AVX2/FMA kernels when the processor
// has them, else (or when forced) the portable C++ kernels; on a processor
// with AVX-512F the "avx512" path is the AVX2 one with the convolution's
// GEMM micro-kernel in 512-bit registers (conv_avx512.cpp). The environment
// variable CNNKERNELS_CPU_ISA=generic | avx2 caps the path at import;
// cnnkernels._C._set_cpu_isa("generic" | "avx2" | "avx512") switches it at
// run time (the tests run their CPU cases through each available path).
#pragma once

#include <cstdint>
#include <string>

namespace cnnkernels {
namespace cpu {

bool avx2_available();          // the processor supports AVX2 and FMA
bool avx512_available();        // ... and AVX-512F
bool use_avx2();                // the AVX2 (or AVX-512) path is selected
bool use_avx512();              // the AVX-512 path is selected
void set_isa(const std::string& name);
std::string isa_name();

// Whether 3x3 unit-stride float32 convolutions may run as Winograd F(2x2, 3x3)
// (conv.cpp). On by default; CNNKERNELS_WINOGRAD=0 turns it off at import,
// cnnkernels._C._set_winograd at run time (the tests run both).
bool use_winograd();
void set_winograd(bool on);
// Winograd wherever the layer's shape allows it, past the size rules that
// pick the faster algorithm (so that small test layers run it); undone by
// set_winograd.
bool force_winograd();
void force_winograd_for_tests();

// Whether the AVX-512 float32 weight gradient runs along output channels
// (conv_wgrad_oc in conv.cpp) where it applies, rather than through the packed
// GEMM panels. On by default; CNNKERNELS_WGRAD_OC=0 at import,
// cnnkernels._C._set_wgrad_oc at run time (the tests compare the two).
bool use_wgrad_oc();
void set_wgrad_oc(bool on);

// How many 16-column blocks the AVX-512 forward and data-gradient tiles
// span (1-4; 1: the 6- and 12-row tiles only). CNNKERNELS_WIDE_TILES at
// import, cnnkernels._C._set_wide_tile_blocks at run time (results are the
// same bits for every value: the tests compare them).
int wide_tile_blocks();
void set_wide_tile_blocks(int n);

// Bytes of the last-level cache (sysconf; 0 when unknown), which some
// kernels use to pick between a cache-resident and a streaming schedule.
// set_llc_bytes overrides it (tests force both schedules); -1 restores it.
int64_t llc_bytes();
void set_llc_bytes(int64_t bytes);

// Outputs larger than this may be written with non-temporal stores (channels_last
// depthwise, the NCHW pooling scatters, batch-norm backward; not the NCHW
// output-row kernels, where streaming measured 8-12 % slower at 12.8-51 MB):
// they would not stay in the caches anyway, and streaming them saves the
// read-for-ownership of every line (measured on a Zen 3 VM with a 32 MB L3:
// channels_last 8x128x56x56 depthwise forward 2.3 -> 1.05 ms on 2 threads;
// 2 images, 1.6 MB, unchanged).
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// Whether an output of `bytes` is to be streamed: over kStreamBytes and
// over a quarter of the last-level cache (the Zen 3 rule above, where a
// quarter of the L3 is 8 MB). Where the LLC is far larger than the working
// set, the output stays in it for its reader, and streaming sends it to
// memory instead: on an Intel Xeon VM whose sysconf reports a 480 MB L3,
// interleaved in one process, channels_last 8x128x56x56 depthwise forward
// ran 2.26-2.31 ms streamed against 1.80-1.87 with plain stores, batch-norm
// backward at 16x64x56x56 1.87-1.89 against 1.66-1.81, max_unpool2d to
// 16x64x56x56 1.38-1.43 against 1.39-1.47.
bool stream_stores(int64_t bytes);

// Software prefetch of the cache line holding p into L1 (a hint: no fault,
// no effect on results). Inline assembly on x86: GCC 12 left out every
// __builtin_prefetch of nchw_gemm's prefetch loop (no prefetch instruction
// in conv.o), while the same call in a small file compiled to prefetcht0.
// write: the line in the state for writing (prefetchw), for stores to come.
inline void prefetch_line(const void* p, bool write = false) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if (write)
    asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
  else
    asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  write ? __builtin_prefetch(p, 1, 3) : __builtin_prefetch(p, 0, 3);
#endif
}

// Every cache line holding a value of [p, p + n).
template <typename T>
inline void prefetch_span(const T* p, int64_t n) {
  if (n <= 0) return;
  const char* a = reinterpret_cast<const char*>(p);
  const char* end = reinterpret_cast<const char*>(p + n);
  a -= reinterpret_cast<uintptr_t>(a) & 63;
  for (; a < end; a += 64) prefetch_line(a);
}

}  // namespace cpu
}  // namespace cnnkernels
