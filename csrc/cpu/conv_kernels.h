// Plain C++ interface of the CPU convolution kernels (no torch types), so that
// conv_impl.h can be compiled twice: portably (conv_generic.cpp) and for
// AVX2/FMA (conv_avx2.cpp); conv.cpp picks one at run time.
//
// The micro-kernel computes one MR x NR tile of a product whose reduction is
// split into "taps" (a kernel offset, an output row ...):
//   out[i][j] = sum_{t < ntaps} sum_{c < len} a[i][a_off[t] + c * a_cs] * b[b_off[t] + c * ldb + j]
// a holds MR row pointers (broadcast operands), b is read NR values at a
// time. Every pass of the convolution (forward, data gradient, weight
// gradient) is this product over different pointers; conv.cpp builds them.
#pragma once

#include <cstdint>

namespace cnnkernels {
namespace cpu {
namespace conv {

constexpr int kMR = 6;
constexpr int kNR = 16;
// outputs (channels) per conv_rows call
constexpr int kRowOuts = 6;

#define CNNK_CONV_DECLARE(T)                                                                   \
  void tile(const T* const* a, const int64_t* a_off, const T* b, const int64_t* b_off,         \
            int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, T* out);                    \
  /* the same, added to out (out += product) */                                                \
  void tile_add(const T* const* a, const int64_t* a_off, const T* b, const int64_t* b_off,     \
                int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, T* out);                \
  /* acc[k] += w * x[k * s] for k < n */                                                       \
  void axpy(T* acc, const T* x, int64_t n, int64_t s, T w);                                    \
  /* acc[k * s] += w * x[k] for k < n */                                                       \
  void axpy_scatter(T* acc, const T* x, int64_t n, int64_t s, T w);                            \
  /* sum_k a[k] * x[k * s], in a fixed order (8 partial sums) */                               \
  double dot(const T* a, const T* x, int64_t n, int64_t s);                                    \
  /* acc[c] += w[c] * x[c] for c < n */                                                        \
  void vmac(T* acc, const T* w, const T* x, int64_t n);                                        \
  /* no (<= kRowOuts) outputs of nrep rows, for q < nrep, j < no, o in [lo, hi):           */ \
  /*   y[q * ystep + j * ys + o] = init[j]                                                  */ \
  /*     + sum_{r < nrows} sum_{k < K} w[r][j * ws + k] * rows[r][q * xstep + o + k * kstep] */ \
  /* (regular stores: non-temporal ones were 8-12 % slower at 12.8-51 MB outputs)        */ \
  void conv_rows(const T* const* rows, const T* const* w, int64_t ws, int64_t nrows, int64_t K, \
                 int64_t kstep, int64_t no, int64_t lo, int64_t hi, const T* init, T* y,  \
                 int64_t ys, int64_t nrep, int64_t xstep, int64_t ystep);                      \
  /* rows r < nrows of width Wp: dst[r * Wp + j] = src[r * ss + (j - j0) * cs] for j in   */ \
  /* [j0, j1), zero elsewhere (zero-bordered copies of activation rows, src at their    */ \
  /* first column)                                                                        */ \
  void pad_rows(const T* src, int64_t ss, int64_t cs, int64_t nrows, int64_t j0, int64_t j1,  \
                T* dst, int64_t Wp);                                                           \
  /* weight gradient along rows: for t < ntaps, lanes l < 8,                              */ \
  /*   acc[t * 8 + l] += sum_{q < nrep} sum_{o < n, o % 8 == l}                           */ \
  /*                       g[q * gstep + o] * x[xoff[t] + q * xstep + o]                  */ \
  void wgrad_rows(const T* g, int64_t gstep, const T* x, const int64_t* xoff, int64_t ntaps,   \
                  int64_t n, int64_t nrep, int64_t xstep, T* acc);                             \
  /* channels_last depthwise, a run of pixels: for j < npix, c < C               */           \
  /*   y[j * C + c] = init[c] (0 if null) + sum_t w[t][c] * x[xoff[t] + j * xs + c] */        \
  /* nt: non-temporal stores (outputs too large to stay in cache)                   */        \
  void dw_pixels(const T* x, const int64_t* xoff, const T* const* w, int64_t ntaps,            \
                 int64_t npix, int64_t xs, int64_t C, const T* init, T* y, bool nt);           \
  /* and its weight gradient: acc[t][c] += sum_j gy[j * gs + c] * x[xoff[t] + j * xs + c] */   \
  void dw_wpixels(const T* gy, int64_t gs, const T* x, const int64_t* xoff, int64_t ntaps,     \
                  int64_t npix, int64_t xs, int64_t C, T* const* acc);                         \
  /* a strip of planar rows to pixel-major order: dst[j * dcs + c] = src[c * scs + j] for  */ \
  /* c < nc, j < nj (an NCHW row of nc channels into NHWC)                                */ \
  void transpose(const T* src, int64_t scs, int64_t nc, int64_t nj, T* dst, int64_t dcs);     \
  /* Winograd F(2x2, 3x3) input transform of one 4x4 tile d[i][j] = x[i * sR + j * sC + c]: */ \
  /* v[xi * vs + c] = (B^T d B)[xi] for xi < 16, c < C                                      */ \
  void wino_in(const T* x, int64_t sR, int64_t sC, int64_t C, T* v, int64_t vs);               \
  /* its output transform for 16 channels j: y[r * yr + c * yc + j] = (A^T m A)[r][c] +     */ \
  /* bias[j] for the tile's 2x2 pixels (r, c), with m[xi] = m[xi * ms + j]                  */ \
  void wino_out(const T* m, int64_t ms, const T* bias, T* y, int64_t yr, int64_t yc);         \
  /* the weight gradient's transform of a 2x2 output-gradient tile (nr x nc inside the      */ \
  /* output, zeros past it): m[xi * ms + k] = (A e A^T)[xi], e[r][c] = g[r*sR + c*sC + k]   */ \
  void wino_gout(const T* g, int64_t sR, int64_t sC, int64_t C, int nr, int nc, T* m,         \
                 int64_t ms);                                                                 \
  /* Winograd F(2x2, 2x2): the input transform of a 3x3 tile, v[xi * vs + c] for xi < 9,   */ \
  /* and the output transform of 9 values m[xi * ms + j] into 2x2 pixels (as wino_out)      */ \
  void wino22_in(const T* x, int64_t sR, int64_t sC, int64_t C, T* v, int64_t vs);             \
  void wino22_out(const T* m, int64_t ms, const T* bias, T* y, int64_t yr, int64_t yc);        \
  void wino22_gout(const T* g, int64_t sR, int64_t sC, int64_t C, int nr, int nc, T* m,       \
                   int64_t ms);

namespace generic {
CNNK_CONV_DECLARE(float)
CNNK_CONV_DECLARE(double)
}  // namespace generic
namespace avx2 {
CNNK_CONV_DECLARE(float)
CNNK_CONV_DECLARE(double)
}  // namespace avx2
// The float32 micro-kernel in 512-bit registers (conv_avx512.cpp): the same
// product as avx2::tile / tile_add, with two sets of six 16-wide
// accumulators (even and odd reduction steps, added at the end).
namespace avx512 {
void tile(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
          int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out);
void tile_add(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
              int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out);
// two tiles at once: a holds 12 row pointers, out 12 x 16 values (rows 0-5
// from a[0..5], then rows 6-11 from a[6..11]), bit for bit two calls of tile
void tile12(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
            int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out);
// ... added to out (bit for bit two calls of tile_add)
void tile12_add(const float* const* a, const int64_t* a_off, const float* b,
                const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb,
                float* out);
// One 6-row tile against nb (2-4) consecutive 16-column blocks of a packed
// panel (block q at b + q * blk, the same b_off), a_cs 1, ldb 16: out holds
// nb tiles of 6 x 16 (block q at out + 96 q), bit for bit nb calls of tile.
// Each broadcast of a serves nb FMAs (one load per 6 x nb / (6 + nb) FMAs
// instead of one per 12 / 13 in tile12).
void tile_wide(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
               int64_t ntaps, int64_t len, int64_t blk, int nb, float* out);
// The weight gradient vectorised along output channels: 6 columns a[0..5]
// (broadcast, a_cs apart a step) against nb (1-4) consecutive blocks of 16
// output channels at b (block q at b + 16 q, ldb apart a step), added to
// out[nb][6][16] (add; else written): out[q][i][j] (+)= sum_t sum_k a[i][a_off[t] + k a_cs] *
// b[b_off[t] + k ldb + 16 q + j], each element one FMA chain in (t, k) order
// (starting from out's value, or from zero).
void tile_wide_acc(const float* const* a, const int64_t* a_off, const float* b,
                   const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb,
                   int nb, bool add, float* out);
// Two packed 6-row panels (rows at p0 + i and p1 + i, 6 values a step)
// against two 16-column panels b0, b1 (16 values a step), len steps:
// out0[12][16] += rows x b0, out1[12][16] += rows x b1; bit for bit
// panels12 (tile12_add) run once per column panel. 14 loads per 24 FMAs.
void panels12x2(const float* p0, const float* p1, const float* b0, const float* b1, int64_t len,
                float* out0, float* out1);
// A tile of rows (<= 6) pixels x ncols (<= 16) channels to channels_last
// output: dst[off[i] + j] = v[i * 16 + j] + bv[j] (one masked store a pixel).
void store_rows(const float* v, const float* bv, float* dst, const int64_t* off, int64_t rows,
                int64_t ncols);
// A 6 x 16 tile of 6 consecutive pixels to planar (NCHW) output:
// dst[j * cs + i] = v[i * 16 + j] + bv[j] for i < 6, j < ncols (<= 16); two
// stores per channel (4 + 2 values) instead of six.
void store_cols6(const float* v, const float* bv, float* dst, int64_t cs, int64_t ncols);
}  // namespace avx512

}  // namespace conv
}  // namespace cpu
}  // namespace cnnkernels
