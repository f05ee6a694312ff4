// Plain-C++ interface between the CPU pooling dispatcher (pool2d.cpp) and the
// AVX2/FMA kernels (pool2d_avx2.cpp). No torch headers here: the AVX2 file is
// compiled for AVX2 and must not instantiate any inline function that other
// files also use (the linker could keep the AVX2 copy for everybody).
#pragma once

#include <cstdint>

namespace cnnkernels {
namespace cpu {

// One call's geometry, in elements.
struct PoolPlan {
  int64_t C, H, W, OH, OW;
  int64_t kH, kW, sH, sW, pH, pW, dH, dW;
};

// The geometries with their own NCHW float32 kernels (forward and backward),
// OW >= 8 in both:
//   2x2 windows, stride 2, no padding, every window inside the input;
inline bool is_k2s2(const PoolPlan& p) {
  return p.kH == 2 && p.kW == 2 && p.sH == 2 && p.sW == 2 && p.pH == 0 && p.pW == 0 &&
         p.dH == 1 && p.dW == 1 && p.OW >= 8 && 2 * p.OH <= p.H && 2 * p.OW <= p.W;
}
//   3x3 windows, stride 2, padding 1 (ResNet's stem pool), W even, OW = W / 2,
//   OH = (H + 1) / 2 (no ceil_mode overhang).
inline bool is_k3s2p1(const PoolPlan& p) {
  return p.kH == 3 && p.kW == 3 && p.sH == 2 && p.sW == 2 && p.pH == 1 && p.pW == 1 &&
         p.dH == 1 && p.dW == 1 && p.W % 2 == 0 && 2 * p.OW == p.W && p.OH == (p.H + 1) / 2 &&
         p.OW >= 8;
}

// Per-output-column tables computed once per call by the dispatcher.
//   first_iw[ow]: first valid input column of window ow (max pool index init)
//   col_count[ow]: width of window ow as counted by avg_pool2d's divisor
//   seg[3 * i .. 3 * i + 2] = (ob, nb, edge): the NCHW row plan, the same for
//     every output row: nb consecutive 8-wide blocks starting at column ob;
//     edge blocks (nb = 1) read padding / overhang columns and use masked
//     loads. When OW >= 8 every block is full: the last one is shifted left
//     to end at OW (it recomputes a few outputs of its neighbour).
struct PoolTables {
  const int32_t* first_iw;
  const float* col_count;
  const int32_t* seg;
  int64_t nseg;
};

namespace avx2 {

// NCHW max pool over planes [p0, p1) (plane = one (n, c) pair). ind may be null
// (values only). Requires H * W < 2^31.
void max_pool2d_nchw(const float* in, float* out, int64_t* ind, int64_t p0, int64_t p1,
                     const PoolPlan& p, const PoolTables& t);

// NCHW avg pool over planes [p0, p1). row_count(oh) is computed inside from
// count_include_pad; divisor != 0 overrides.
void avg_pool2d_nchw(const float* in, float* out, int64_t p0, int64_t p1, const PoolPlan& p,
                     const PoolTables& t, bool count_include_pad, int64_t divisor);

// NHWC (channels_last) kernels over output pixels [q0, q1) of the flattened
// (N, OH, OW) range; all C channels of each pixel.
void max_pool2d_nhwc(const float* in, float* out, int64_t* ind, int64_t q0, int64_t q1,
                     const PoolPlan& p);
void avg_pool2d_nhwc(const float* in, float* out, int64_t q0, int64_t q1, const PoolPlan& p,
                     bool count_include_pad, int64_t divisor);

// NCHW avg pool backward for non-overlapping 2x2 / stride 2 windows with no
// padding: writes grad_input planes [p0, p1) in one pass (each input element
// gets exactly one or zero contributions).
void avg_pool2d_backward_nchw_k2s2(const float* go, float* gi, int64_t p0, int64_t p1,
                                   const PoolPlan& p, bool count_include_pad, int64_t divisor);

// One input row of the NCHW avg_pool2d backward with width stride 1:
// grow[iw] = sum over oh in [oh0, oh1), then t = kW - 1 down to 0 (torch's
// order), of dpad[oh * PW + pW - t + kW + iw], dpad being the deltas padded
// with kW zero columns on each side (rows of PW = OW + 2 kW).
void avg_backward_row_s1(const float* dpad, int64_t PW, int64_t oh0, int64_t oh1, int64_t kW,
                         int64_t pW, int64_t W, float* grow);

// One input pixel of the NHWC avg_pool2d backward: out[c] = the sum over the
// covering windows (oh in [oh0, oh1), ow in [ow0, ow1), raster order) of
// delta[(oh * OW + ow) * C + c], all C channels.
void avg_backward_pixel_nhwc(const float* delta, int64_t OW, int64_t C, int64_t oh0,
                             int64_t oh1, int64_t ow0, int64_t ow1, float* out);

// NCHW max_pool2d backward of one plane for 2x2 windows, stride 2, no
// padding, OW >= 8, every window inside the input: writes the whole grad_input
// plane d in one pass (each input element lies in at most one window: the
// gradient where the index points, 0 elsewhere). Returns false, having
// written part of the plane, when an index does not name a position of its
// window (the caller then zeroes and scatters that plane).
bool max_pool2d_backward_nchw_k2s2(const float* go, const int64_t* idx, float* d, int64_t plane,
                                   const PoolPlan& p);

// The same for 3x3 windows, stride 2, padding 1 (ResNet's stem pool): W even,
// OW = W / 2 with 8 <= OW <= kK3S2MaxOW, OH = (H + 1) / 2. An input element
// lies in up to four windows; its sum is added in torch's order, so the plane
// equals torch's bit for bit.
constexpr int64_t kK3S2MaxOW = 1024;
bool max_pool2d_backward_nchw_k3s2p1(const float* go, const int64_t* idx, float* d,
                                     int64_t plane, const PoolPlan& p);

// dst[0, bytes) = src[0, bytes) with non-temporal stores for the 32-byte
// aligned part of dst (no read-for-ownership of lines that will not be read
// again soon). No fence: call store_fence() once after the last copy, before
// other threads may read dst (a fence per small plane waits for every
// write-combining buffer to drain each time).
void stream_copy(void* dst, const void* src, int64_t bytes);
void store_fence();

}  // namespace avx2

// AVX-512F (pool2d_avx512.cpp): the 3x3 / stride 2 / padding 1 NCHW max pool
// forward (is_k3s2p1 and OW >= 16), indices when ind is not null.
namespace avx512 {
void max_pool2d_nchw_k3s2p1(const float* in, float* out, int64_t* ind, int64_t p0, int64_t p1,
                            const PoolPlan& p);
// ... and the channels_last max pool forward (any geometry; output pixels
// [q0, q1), 64 channels a register block), as avx2::max_pool2d_nhwc.
void max_pool2d_nhwc(const float* in, float* out, int64_t* ind, int64_t q0, int64_t q1,
                     const PoolPlan& p);
// ... and the channels_last avg pool forward, as avx2::avg_pool2d_nhwc.
void avg_pool2d_nhwc(const float* in, float* out, int64_t q0, int64_t q1, const PoolPlan& p,
                     bool count_include_pad, int64_t divisor);
}  // namespace avx512
}  // namespace cpu
}  // namespace cnnkernels
