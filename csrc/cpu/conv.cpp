// CPU convolution and transposed convolution, float32 and float64: forward,
// data gradient, weight gradient and bias gradient.
//
// Dense and grouped convolutions run as implicit GEMMs on one register-tiled
// micro-kernel (conv_impl.h: 6 x 16 tile, AVX2/FMA or portable), reading
// activations in NHWC order:
//   forward   tile = 6 output pixels x 16 output channels; reduction over
//             (kernel tap, input channel); a = input pixels, b = packed weights.
//   data grad tile = 6 input pixels of one stride phase x 16 input channels;
//             reduction over the taps that hit that phase and the output
//             channels; a = grad_output pixels, b = packed transposed weights.
//             (conv_transpose2d's forward is this pass.)
//   weight    tile = 6 output channels x 16 (tap, input channel) columns;
//   grad      reduction over output pixels, in fixed chunks of output rows.
// An NCHW activation is copied once into a zero-bordered NHWC buffer (the
// size of the input plus its padding, never input x kernel area); a
// channels_last input without padding is read in place. When groups == 1 and
// the width dilation is 1, the kw taps of one kernel row are contiguous in
// NHWC and merge into one reduction run (long runs for 3-channel stems); the
// data gradient merges them too when the width stride is also 1.
//
// Few output channels per group (at most 8: LeNet's 1 -> 6 first layer,
// depthwise layers) with width stride 1 run along output rows instead
// (conv_rows: up to 6 channels x 8-wide column vectors in registers), as do
// the data gradient when the input has few channels per group (a convolution
// of grad_output with the weights transposed and the taps reversed: NCHW
// depthwise layers, LeNet's 6 -> 16 layer), and the NCHW depthwise weight
// gradient (wgrad_rows; also channels_last with one input channel). Other
// depthwise cases have their own loops: NHWC along channels, the rest per tap.
//
// The forward and the data gradient skip the taps that read padding: pixels
// are grouped by the taps inside the image, each group with its own tap list
// (see "pixel groups" below).
//
// Parallelism: independent output tiles (at::parallel_for); every output
// element is reduced by one thread in a fixed order, and the weight/bias
// gradients merge fixed blocks in a fixed order, so results repeat bit for
// bit whatever the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/conv.h"
#include "conv_kernels.h"
#include "host_cache.h"
#include "isa.h"

namespace cnnkernels {
namespace cpu {
namespace {

using at::Tensor;
using conv::kMR;
using conv::kNR;
using conv::kRowOuts;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// The kernels of the selected code path.
template <typename T>
struct Kern {
  bool avx2 = use_avx2();
  bool avx512 = std::is_same<T, float>::value && use_avx512();
  void tile(const T* const* a, const int64_t* ao, const T* b, const int64_t* bo, int64_t nt,
            int64_t len, int64_t acs, int64_t ldb, T* out) const {
    if constexpr (std::is_same<T, float>::value) {
      if (avx512) return conv::avx512::tile(a, ao, b, bo, nt, len, acs, ldb, out);
    }
    avx2 ? conv::avx2::tile(a, ao, b, bo, nt, len, acs, ldb, out)
         : conv::generic::tile(a, ao, b, bo, nt, len, acs, ldb, out);
  }
  // two tiles sharing b and the taps: a[0..5] and a[6..11] -> out[0..95], out[96..191]
  void tile12(const T* const* a, const int64_t* ao, const T* b, const int64_t* bo, int64_t nt,
              int64_t len, int64_t acs, int64_t ldb, T* out) const {
    if constexpr (std::is_same<T, float>::value) {
      if (avx512) return conv::avx512::tile12(a, ao, b, bo, nt, len, acs, ldb, out);
    }
    tile(a, ao, b, bo, nt, len, acs, ldb, out);
    tile(a + kMR, ao, b, bo, nt, len, acs, ldb, out + kMR * kNR);
  }
  void tile12_add(const T* const* a, const int64_t* ao, const T* b, const int64_t* bo, int64_t nt,
                  int64_t len, int64_t acs, int64_t ldb, T* out) const {
    if constexpr (std::is_same<T, float>::value) {
      if (avx512) return conv::avx512::tile12_add(a, ao, b, bo, nt, len, acs, ldb, out);
    }
    tile_add(a, ao, b, bo, nt, len, acs, ldb, out);
    tile_add(a + kMR, ao, b, bo, nt, len, acs, ldb, out + kMR * kNR);
  }
  // one 6-row tile against nb blocks of 16 columns, blk values apart (a_cs
  // 1, ldb 16), out[nb][6][16]: one pass on the AVX-512 float32 path (the
  // only one that asks for nb > 1: `wide` is 1 elsewhere), else nb tiles
  int wide = avx512 ? wide_tile_blocks() : 1;
  void tile_wide(const T* const* a, const int64_t* ao, const T* b, const int64_t* bo, int64_t nt,
                 int64_t len, int64_t blk, int nb, T* out) const {
    if constexpr (std::is_same<T, float>::value) {
      if (avx512) return conv::avx512::tile_wide(a, ao, b, bo, nt, len, blk, nb, out);
    }
    for (int q = 0; q < nb; ++q) tile(a, ao, b + q * blk, bo, nt, len, 1, kNR, out + q * kMR * kNR);
  }
  // 6 columns against nb blocks of 16 output channels, 16 values apart, added
  // to out[nb][6][16] (written when !add; the weight gradient along output
  // channels): one pass on the AVX-512 float32 path, else nb tile(_add) calls
  void tile_wide_acc(const T* const* a, const int64_t* ao, const T* b, const int64_t* bo,
                     int64_t nt, int64_t len, int64_t acs, int64_t ldb, int nb, bool add,
                     T* out) const {
    if constexpr (std::is_same<T, float>::value) {
      if (avx512)
        return conv::avx512::tile_wide_acc(a, ao, b, bo, nt, len, acs, ldb, nb, add, out);
    }
    for (int q = 0; q < nb; ++q)
      add ? tile_add(a, ao, b + q * kNR, bo, nt, len, acs, ldb, out + q * kMR * kNR)
          : tile(a, ao, b + q * kNR, bo, nt, len, acs, ldb, out + q * kMR * kNR);
  }
  void tile_add(const T* const* a, const int64_t* ao, const T* b, const int64_t* bo, int64_t nt,
                int64_t len, int64_t acs, int64_t ldb, T* out) const {
    if constexpr (std::is_same<T, float>::value) {
      if (avx512) return conv::avx512::tile_add(a, ao, b, bo, nt, len, acs, ldb, out);
    }
    avx2 ? conv::avx2::tile_add(a, ao, b, bo, nt, len, acs, ldb, out)
         : conv::generic::tile_add(a, ao, b, bo, nt, len, acs, ldb, out);
  }
  void axpy(T* acc, const T* x, int64_t n, int64_t s, T w) const {
    avx2 ? conv::avx2::axpy(acc, x, n, s, w) : conv::generic::axpy(acc, x, n, s, w);
  }
  void axpy_scatter(T* acc, const T* x, int64_t n, int64_t s, T w) const {
    avx2 ? conv::avx2::axpy_scatter(acc, x, n, s, w) : conv::generic::axpy_scatter(acc, x, n, s, w);
  }
  double dot(const T* a, const T* x, int64_t n, int64_t s) const {
    return avx2 ? conv::avx2::dot(a, x, n, s) : conv::generic::dot(a, x, n, s);
  }
  void vmac(T* acc, const T* w, const T* x, int64_t n) const {
    avx2 ? conv::avx2::vmac(acc, w, x, n) : conv::generic::vmac(acc, w, x, n);
  }
  void conv_rows(const T* const* rows, const T* const* w, int64_t ws, int64_t nrows, int64_t K,
                 int64_t kstep, int64_t no, int64_t lo, int64_t hi, const T* init, T* y,
                 int64_t ys, int64_t nrep = 1, int64_t xstep = 0, int64_t ystep = 0) const {
    avx2 ? conv::avx2::conv_rows(rows, w, ws, nrows, K, kstep, no, lo, hi, init, y, ys, nrep, xstep,
                                 ystep)
         : conv::generic::conv_rows(rows, w, ws, nrows, K, kstep, no, lo, hi, init, y, ys, nrep,
                                    xstep, ystep);
  }
  void pad_rows(const T* src, int64_t ss, int64_t cs, int64_t nrows, int64_t j0, int64_t j1,
                T* dst, int64_t Wp) const {
    avx2 ? conv::avx2::pad_rows(src, ss, cs, nrows, j0, j1, dst, Wp)
         : conv::generic::pad_rows(src, ss, cs, nrows, j0, j1, dst, Wp);
  }
  void wgrad_rows(const T* g, int64_t gstep, const T* x, const int64_t* xoff, int64_t nt,
                  int64_t n, int64_t nrep, int64_t xstep, T* acc) const {
    avx2 ? conv::avx2::wgrad_rows(g, gstep, x, xoff, nt, n, nrep, xstep, acc)
         : conv::generic::wgrad_rows(g, gstep, x, xoff, nt, n, nrep, xstep, acc);
  }
  void dw_pixels(const T* x, const int64_t* xoff, const T* const* w, int64_t nt, int64_t npix,
                 int64_t xs, int64_t C, const T* init, T* y, bool stream) const {
    avx2 ? conv::avx2::dw_pixels(x, xoff, w, nt, npix, xs, C, init, y, stream)
         : conv::generic::dw_pixels(x, xoff, w, nt, npix, xs, C, init, y, stream);
  }
  void transpose(const T* src, int64_t scs, int64_t nc, int64_t nj, T* dst, int64_t dcs) const {
    avx2 ? conv::avx2::transpose(src, scs, nc, nj, dst, dcs)
         : conv::generic::transpose(src, scs, nc, nj, dst, dcs);
  }
  void dw_wpixels(const T* gy, int64_t gs, const T* x, const int64_t* xoff, int64_t nt,
                  int64_t npix, int64_t xs, int64_t C, T* const* acc) const {
    avx2 ? conv::avx2::dw_wpixels(gy, gs, x, xoff, nt, npix, xs, C, acc)
         : conv::generic::dw_wpixels(gy, gs, x, xoff, nt, npix, xs, C, acc);
  }
  void wino_in(const T* x, int64_t sR, int64_t sC, int64_t C, T* v, int64_t vs) const {
    avx2 ? conv::avx2::wino_in(x, sR, sC, C, v, vs) : conv::generic::wino_in(x, sR, sC, C, v, vs);
  }
  void wino_gout(const T* g, int64_t sR, int64_t sC, int64_t C, int nr, int nc, T* m,
                 int64_t ms) const {
    avx2 ? conv::avx2::wino_gout(g, sR, sC, C, nr, nc, m, ms)
         : conv::generic::wino_gout(g, sR, sC, C, nr, nc, m, ms);
  }
  void wino_out(const T* m, int64_t ms, const T* bias, T* y, int64_t yr, int64_t yc) const {
    avx2 ? conv::avx2::wino_out(m, ms, bias, y, yr, yc)
         : conv::generic::wino_out(m, ms, bias, y, yr, yc);
  }
  void wino22_in(const T* x, int64_t sR, int64_t sC, int64_t C, T* v, int64_t vs) const {
    avx2 ? conv::avx2::wino22_in(x, sR, sC, C, v, vs)
         : conv::generic::wino22_in(x, sR, sC, C, v, vs);
  }
  void wino22_out(const T* m, int64_t ms, const T* bias, T* y, int64_t yr, int64_t yc) const {
    avx2 ? conv::avx2::wino22_out(m, ms, bias, y, yr, yc)
         : conv::generic::wino22_out(m, ms, bias, y, yr, yc);
  }
  void wino22_gout(const T* g, int64_t sR, int64_t sC, int64_t C, int nr, int nc, T* m,
                   int64_t ms) const {
    avx2 ? conv::avx2::wino22_gout(g, sR, sC, C, nr, nc, m, ms)
         : conv::generic::wino22_gout(g, sR, sC, C, nr, nc, m, ms);
  }
};

// An activation read in NHWC order: (n, row, col, ch) at p + n*sN + row*sR + col*sC + ch,
// the channels of convolution group grp from p + grp * sG.
template <typename T>
struct Nhwc {
  const T* p = nullptr;
  int64_t sN = 0, sR = 0, sC = 0, sG = 0;
};

// Rows [r0, r0 + R) x cols [c0, c0 + Cn) of an (N, C, H, W) activation `t`
// (contiguous NCHW, or channels_last when cl) in NHWC order, zero outside the
// image. A channels_last tensor that covers the window is read in place
// (unless `copy`), and so is one with one group whose caller reads only the
// pixels inside the image (`inside_only`: the window's origin may then lie
// outside the tensor, its border never dereferenced); otherwise the window is copied (see below; plus kNR
// elements of slack, so that a 16-wide read past the last channel stays
// inside the allocation). With G > 1 groups the copy is group-major,
// [G][N][R][Cn][C / G]: a pixel's channels of one group are then contiguous
// with its neighbours' along the row (runs over kw merge, and no cache line
// holds other groups' channels).
//
// The copy goes to kept scratch memory (below), in slot kWindowSlot, or
// kGradWindowSlot for the weight gradient's grad_output window (alive beside
// the input's); larger windows get a fresh tensor in `buf`.
//
// Kept scratch: memory kept from call to call, per calling thread and slot,
// up to kScratchCacheBytes per slot. A fresh multi-MB buffer is memory glibc
// often takes from the system anew, paying a page fault per 4 KB page on
// first touch: with torch's calls interleaved (as in the benchmark suite),
// our 3x3 64ch 56x56 NCHW forward+backward at batch 8 took 5015 page faults
// and 49-50 ms per call; with the windows kept, 0-1536 faults and 42-45 ms.
constexpr int64_t kScratchCacheBytes = int64_t(32) << 20;
// kWinoSlot: the per-thread tile buffers of the Winograd convolution (taken
// inside parallel workers; the calling thread is one of them, so no other
// slot may be used there).
enum ScratchSlot {
  kWindowSlot = 0,
  kGradWindowSlot = 1,
  kWeightSlot = 2,
  kWinoSlot = 3,
  kStageSlot = 4,
  kScratchSlots = 5
};

void* kept_scratch(int slot, int64_t bytes) {
  struct Slot {
    void* p = nullptr;
    int64_t n = 0;
    ~Slot() { std::free(p); }
  };
  thread_local Slot slots[kScratchSlots];
  Slot& s = slots[slot];
  if (s.n < bytes) {
    std::free(s.p);
    s.p = nullptr, s.n = 0;
    const int64_t n = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, n);
    TORCH_CHECK(p != nullptr, "cnnkernels: could not allocate ", n, " bytes of scratch memory");
    s.p = p, s.n = n;
  }
  return s.p;
}

// n values of scratch: the kept memory of `slot` when it fits, else owned;
// uninitialised either way (no zero-filling pass over a large buffer).
template <typename T>
struct ScratchBuf {
  T* p;
  std::unique_ptr<T[]> own;
  ScratchBuf(const ScratchBuf&) = delete;
  ScratchBuf& operator=(const ScratchBuf&) = delete;
  ScratchBuf(int slot, int64_t n) {
    if (n * int64_t(sizeof(T)) <= kScratchCacheBytes) {
      p = static_cast<T*>(kept_scratch(slot, n * int64_t(sizeof(T))));
    } else {
      own.reset(new T[n]);
      p = own.get();
    }
  }
  T* data() const { return p; }
  T& operator[](int64_t i) const { return p[i]; }
};

template <typename T>
Nhwc<T> nhwc_window(const Tensor& t, bool cl, int64_t r0, int64_t R, int64_t c0, int64_t Cn,
                    bool copy, Tensor& buf, int64_t G = 1, int slot = kWindowSlot,
                    bool inside_only = false) {
  const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3), Cg = C / G;
  const T* src = t.data_ptr<T>();
  const Kern<T> K;
  if (G == 1 && cl && !copy &&
      (inside_only || (r0 >= 0 && c0 >= 0 && r0 + R <= H && c0 + Cn <= W))) {
    return {src + (r0 * W + c0) * C, H * W * C, W * C, C, Cg};
  }
  const int64_t gsz = N * R * Cn * Cg;  // one group's elements
  const int64_t bytes = (G * gsz + kNR) * int64_t(sizeof(T));
  T* dst;
  if (bytes <= kScratchCacheBytes) {
    dst = static_cast<T*>(kept_scratch(slot, bytes));
  } else {
    buf = empty_output({G * gsz + kNR}, t.options().memory_format(at::MemoryFormat::Contiguous));
    dst = buf.data_ptr<T>();
  }
  std::fill(dst + G * gsz, dst + G * gsz + kNR, T(0));
  const int64_t lo = std::min(Cn, std::max<int64_t>(0, -c0));
  const int64_t hi = std::max(lo, std::min(Cn, W - c0));
  at::parallel_for(0, G * N * R, 4, [&](int64_t b, int64_t e) {
    for (int64_t gnr = b; gnr < e; ++gnr) {
      const int64_t grp = gnr / (N * R), nr = gnr % (N * R), n = nr / R, r = nr % R, ih = r0 + r;
      T* d = dst + gnr * Cn * Cg;
      if (ih < 0 || ih >= H || lo >= hi) {
        std::fill(d, d + Cn * Cg, T(0));
        continue;
      }
      std::fill(d, d + lo * Cg, T(0));
      std::fill(d + hi * Cg, d + Cn * Cg, T(0));
      if (cl && G == 1) {
        std::memcpy(d + lo * C, src + ((n * H + ih) * W + c0 + lo) * C, (hi - lo) * C * sizeof(T));
      } else if (cl) {
        const T* s = src + ((n * H + ih) * W + c0) * C + grp * Cg;
        for (int64_t col = lo; col < hi; ++col)
          std::memcpy(d + col * Cg, s + col * C, Cg * sizeof(T));
      } else {  // transpose a Cg x (hi - lo) strip
        const T* s = src + ((n * C + grp * Cg) * H + ih) * W + c0;
        K.transpose(s + lo, H * W, Cg, hi - lo, d + lo * Cg, Cg);
      }
    }
  });
  return {dst, R * Cn * Cg, Cn * Cg, Cg, G > 1 ? gsz : Cg};
}

// ------------------------------------------- pixel groups (skipping padding)
// The forward and the data gradient reduce, for every pixel of a grid, over
// the kernel taps that land inside the image; near the border that is fewer
// than all of them (a 3x3, padding-1 layer spends 11 % of its multiply-adds on
// padding at 12x12, 31 % at 4x4 and 56 % at 2x2). Grid rows are grouped by
// the taps they need along the height, columns along the width (columns
// only for reductions of 256+ steps, see group_columns); every pair of a row
// group and a column group is a pixel group with its own tap list, so no
// multiply-add reads padding rows (nor padding columns, where columns are
// grouped). A tile takes kMR consecutive pixels of
// one group in (image, row, column) order, across images, so small images
// fill their tiles (at 2x2 the four positions of 32 images make 4 x 6 tiles,
// instead of 32 tiles with 4 of 6 rows used).
// A group's pixels are (image n, row r, column c) for its rows and columns;
// per row and per column, the part of the pixel's a offset and of its output
// offset (pixel (n, r, c) of conv group grp: a at a0 + n * a_sN + grp * a_sG
// + a_r[r] + a_c[c], output at n * o_sN + grp * o_sG + o_r[r] + o_c[c]).
struct PixelGroup {
  std::vector<int64_t> a_r, a_c, o_r, o_c;
  std::vector<int64_t> a_off, b_off;  // its taps (micro-kernel offsets)
  int64_t len = 0;                    // reduction run of every tap
  int64_t rows() const { return (int64_t)a_r.size(); }
  int64_t cols() const { return (int64_t)a_c.size(); }
};
template <typename T>
struct PixelLayout {
  const T* a0;
  int64_t a_sN, a_sG, o_sN, o_sG;
  const T* y;   // the output (prefetched for writing before each tile)
  int64_t ocs;  // its channel stride (1: channels_last)
};

// Asks for the cache lines of a channels_last tile's outputs (pixels
// po[0..rows), the channels [c0, c0 + nc) of every one) in the state for
// writing, before the tile's reduction runs: its stores then find them in L1
// instead of filling the store buffer with misses (2-8 % on most
// channels_last layers of the benchmark in interleaved runs; for NCHW
// outputs, two lines per channel, it gained nothing).
template <typename T>
void prefetch_tile_out(const PixelLayout<T>& L, int64_t c0, int64_t nc, int64_t rows,
                       const int64_t* po) {
  for (int64_t i = 0; i < rows; ++i) {
    const char* a = reinterpret_cast<const char*>(L.y + po[i] + c0);
    const char* e = reinterpret_cast<const char*>(L.y + po[i] + c0 + nc);
    for (a -= reinterpret_cast<uintptr_t>(a) & 63; a < e; a += 64) prefetch_line(a, true);
  }
}

// Whether to group columns too, for a reduction of `len` steps per pixel.
// Row groups are runs of whole rows; a column group's tile holds pixels of
// one column in 6 rows, whose NCHW output lines the other groups fill later.
// With short reductions that scatter costs more than the padding it skips
// (LeNet's 5x5 first layer, 25 steps: 3.4 -> 3.9 ms forward on one thread).
inline bool group_columns(int64_t len) { return len >= 256; }

// Indices 0 .. keys.size() - 1 grouped by equal key, in order of first appearance.
std::vector<std::vector<int64_t>> group_by_key(const std::vector<std::vector<int64_t>>& keys) {
  std::vector<std::vector<int64_t>> groups, gkeys;
  for (int64_t i = 0; i < (int64_t)keys.size(); ++i) {
    const auto it = std::find(gkeys.begin(), gkeys.end(), keys[i]);
    if (it == gkeys.end()) {
      gkeys.push_back(keys[i]);
      groups.push_back({i});
    } else {
      groups[it - gkeys.begin()].push_back(i);
    }
  }
  return groups;
}

// The bias (or zeros) as [G][column block][16], zero past each group's channels.
template <typename T>
std::vector<T> padded_bias(const T* bias, int64_t G, int64_t Cg, int64_t ncb) {
  std::vector<T> b(G * ncb * kNR, T(0));
  if (bias != nullptr)
    for (int64_t grp = 0; grp < G; ++grp)
      for (int64_t c = 0; c < Cg; ++c) b[(grp * ncb + c / kNR) * kNR + c % kNR] = bias[grp * Cg + c];
  return b;
}

// Stores a tile: dst[off[i] + j * cs] = v[i * kNR + j] + bv[j] for i < rows,
// j < ncols (cs: the channel stride, 1 for channels_last, H * W for NCHW).
// AVX-512: channels_last one masked 16-wide store a pixel (the portable loop
// compiled to 4-wide moves here: channels_last data gradients 1x1 256->64
// 4.77 -> 4.14 ms, 3x3 stride 2 4.59 -> 4.38, groups 4 8.61 -> 8.29;
// forwards 1-5 %), NCHW store_cols6.
template <typename T>
inline void store_tile(T* __restrict dst, int64_t cs, int64_t ncols, int64_t rows,
                       const int64_t* __restrict off, const T* __restrict bv,
                       const T* __restrict v) {
  if constexpr (std::is_same<T, float>::value) {
    if (cs == 1 && use_avx512()) return conv::avx512::store_rows(v, bv, dst, off, rows, ncols);
    if (cs != 1 && rows == kMR && off[5] == off[0] + 5 && off[4] == off[0] + 4 &&
        off[3] == off[0] + 3 && off[2] == off[0] + 2 && off[1] == off[0] + 1 && use_avx512())
      return conv::avx512::store_cols6(v, bv, dst + off[0], cs, ncols);
  }
  if (cs == 1) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < ncols; ++j) dst[off[i] + j] = v[i * kNR + j] + bv[j];
  } else if (rows == kMR) {
    const int64_t o0 = off[0], o1 = off[1], o2 = off[2], o3 = off[3], o4 = off[4], o5 = off[5];
    for (int64_t j = 0; j < ncols; ++j) {
      T* __restrict d = dst + j * cs;
      const T b = bv[j];
      d[o0] = v[j] + b, d[o1] = v[kNR + j] + b, d[o2] = v[2 * kNR + j] + b;
      d[o3] = v[3 * kNR + j] + b, d[o4] = v[4 * kNR + j] + b, d[o5] = v[5 * kNR + j] + b;
    }
  } else {
    for (int64_t j = 0; j < ncols; ++j)
      for (int64_t i = 0; i < rows; ++i) dst[off[i] + j * cs] = v[i * kNR + j] + bv[j];
  }
}

constexpr int64_t kTilesPerItem = 16;

// How many 16-column blocks a wide tile takes next, of rem left, with up to
// `wide` a pass: where four would leave two (96 channels: 4 + 2), three and
// three (NiN's 5x5 data gradient into 96 channels 52.4-54.7 -> 50.2-51.4 ms;
// 4 + 1 against 3 + 2, and 4 + 4 + 4 + 1 against 4 + 3 + 3 + 3, measured no
// better).
inline int64_t wide_step(int64_t rem, int64_t wide) {
  return wide == 4 && rem >= 6 && rem % 4 == 2 ? 3 : std::min(wide, rem);
}

// Runs every group's tiles against every 16-column block of the packed
// panel wp ([G][column block][...], blk values per block):
//   L                             where pixels read and write (see PixelGroup),
//   store(grp, cb, rows, off[], vals)  a tile's values (rows x 16).
// The tiles of all groups, in order, are cut into one contiguous run per
// thread by their multiply-add count (groups differ in taps), and each run
// into work items of up to 16 tiles (each 16-column weight panel is reused
// by the item's tiles whatever the group sizes; fewer when there would be
// under 8 items per thread: with items cut at group boundaries, or 5 items
// split 3 / 2 between two threads, a 7x7 512-channel layer at batch 8 was
// 15 % slower than before the grouping). Nothing is stored per tile
// (LeNet's first layer has 33k tiles of 25 steps: a serial per-tile setup
// cost it a third of its time on two threads). Each output is computed by
// one tile, in a fixed order: results do not depend on the thread count.
template <typename T, typename Store>
void run_pixel_groups(const Kern<T>& K, int64_t N, int64_t G, const std::vector<PixelGroup>& groups,
                      int64_t ncb, const T* wp, int64_t blk, const PixelLayout<T>& L,
                      const Store& store) {
  // Segments: the pixels of one group in one block of nb images, block by
  // block, so that each image's outputs are written close together in time
  // (LeNet's 28x28 first layer was 10 % slower with each border row group
  // spread over the whole batch), with nb large enough that every group
  // fills its tiles: at least 24 pixels of the smallest group (AlexNet's
  // 26x26 5x5 layer has 1-pixel corner groups: one image per block gave
  // back the whole gain of the grouping) and 384 pixels in all.
  if (groups.empty()) return;  // (a data gradient of an empty input)
  int64_t ppi = 0, pmin = INT64_MAX;  // grid pixels per image, of the smallest group
  for (const PixelGroup& pg : groups) ppi += pg.rows() * pg.cols(), pmin = std::min(pmin, pg.rows() * pg.cols());
  const int64_t nb = std::clamp<int64_t>(
      std::max(ceil_div(384, std::max<int64_t>(1, ppi)), ceil_div(24, std::max<int64_t>(1, pmin))), 1,
      std::max<int64_t>(1, N));
  const int64_t ngrp = (int64_t)groups.size(), ng = ceil_div(N, nb) * ngrp;
  // per segment: pixels, first tile, cost per tile and the cost before it
  std::vector<int64_t> gq(ng), gfirst(ng + 1, 0);
  std::vector<double> gcost(ng), gcum(ng + 1, 0.0);
  for (int64_t gi = 0; gi < ng; ++gi) {
    const PixelGroup& pg = groups[gi % ngrp];
    const int64_t n0 = gi / ngrp * nb;
    gq[gi] = std::min(nb, N - n0) * pg.rows() * pg.cols();
    gcost[gi] = (double)pg.a_off.size() * pg.len + 32.0;  // + store, setup
    gfirst[gi + 1] = gfirst[gi] + ceil_div(gq[gi], kMR);
    gcum[gi + 1] = gcum[gi] + gcost[gi] * (gfirst[gi + 1] - gfirst[gi]);
  }
  const int64_t ntl = gfirst[ng];
  auto cost_before = [&](int64_t t) {  // of tiles [0, t)
    const int64_t gi = std::upper_bound(gfirst.begin(), gfirst.end(), t) - gfirst.begin() - 1;
    return gi >= ng ? gcum[ng] : gcum[gi] + gcost[gi] * (t - gfirst[gi]);
  };
  // Each thread takes a contiguous run of the G * ntl tiles (conv group
  // major) of about equal cost, in items of up to tpi tiles (fewer where
  // there would be under 8 items per thread). Runs cut at tiles, not at
  // items: AlexNet's 12x12 layers have 24 items of 16 tiles, and cut at
  // items the two threads' shares could differ by one.
  // Few tiles and many column blocks (512-channel layers at 7x7: 65 tiles
  // of 32 blocks, each block's weight panel 295 KB): the threads split the
  // column blocks instead (CS column ranges), each running every tile
  // against its own panels, which it then reads from L3 once per item of 16
  // tiles instead of once per item of 4 (8x512x7x7 forward on two threads
  // 10.9 -> 8.4 ms). Each output is still one tile's: the cut does not
  // change results.
  const int64_t nthreads = at::get_num_threads(), total = G * ntl;
  const int64_t CS = (ncb >= 2 * nthreads && total < 64 * nthreads) ? nthreads : 1;
  const int64_t nthr_t = std::max<int64_t>(1, nthreads / CS);
  const int64_t tpi = std::max<int64_t>(1, std::min<int64_t>(kTilesPerItem, total / (8 * nthr_t)));
  auto tiles_cost_before = [&](int64_t t) {  // of tiles [0, t) of the G * ntl
    return (t / ntl) * gcum[ng] + cost_before(t % ntl);
  };
  const int64_t nth = std::max<int64_t>(1, std::min<int64_t>(nthr_t, ceil_div(total, tpi)));
  std::vector<int64_t> cut(nth + 1, total);
  for (int64_t k = 0; k < nth; ++k) {  // first tile whose cost before reaches k / nth
    int64_t lo = 0, hi = total;
    const double target = G * gcum[ng] * k / nth;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (tiles_cost_before(mid) < target) lo = mid + 1; else hi = mid;
    }
    cut[k] = lo;
  }
  at::parallel_for(0, nth * CS, 1, [&](int64_t wb, int64_t we) {
   for (int64_t w = wb; w < we; ++w) {
    const int64_t kb = w % nth, ke = kb + 1, cs = w / nth;
    const int64_t cb_lo = ncb * cs / CS, cb_hi = ncb * (cs + 1) / CS;
    T out[2 * kMR * kNR], outw[4 * kMR * kNR];
    const T* ap[kTilesPerItem][kMR];
    int64_t po[kTilesPerItem][kMR];
    int64_t tg[kTilesPerItem], trows[kTilesPerItem];
    for (int64_t u0 = cut[kb]; u0 < cut[ke];) {  // an item: tiles [u0, u1) of one conv group
      const int64_t grp = u0 / ntl, u1 = std::min({cut[ke], u0 + tpi, (grp + 1) * ntl});
      const int64_t t0 = u0 % ntl, t1 = t0 + (u1 - u0);
      u0 = u1;
      // the item's pixels and their a pointers, decoded once (divisions only
      // where a group starts: the counters carry on across its tiles)
      int64_t gi = std::upper_bound(gfirst.begin(), gfirst.end(), t0) - gfirst.begin() - 1;
      int64_t n = 0, ri = 0, ci = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t j = t - t0;
        bool start = t == t0;
        while (t >= gfirst[gi + 1]) ++gi, start = true;
        const PixelGroup& pg = groups[gi % ngrp];
        const int64_t R = pg.rows(), C = pg.cols();
        const int64_t q0 = (t - gfirst[gi]) * kMR;
        if (start) n = gi / ngrp * nb + q0 / (R * C), ri = (q0 / C) % R, ci = q0 % C;
        tg[j] = gi % ngrp, trows[j] = std::min<int64_t>(kMR, gq[gi] - q0);
        for (int64_t i = 0; i < kMR; ++i) {
          ap[j][i] = L.a0 + n * L.a_sN + grp * L.a_sG + pg.a_r[ri] + pg.a_c[ci];
          po[j][i] = n * L.o_sN + grp * L.o_sG + pg.o_r[ri] + pg.o_c[ci];
          if (i + 1 < trows[j] && ++ci == C) {  // short tiles repeat their last pixel
            ci = 0;
            if (++ri == R) ri = 0, ++n;
          }
        }
        if (trows[j] == kMR && ++ci == C) {  // the next tile's first pixel
          ci = 0;
          if (++ri == R) ri = 0, ++n;
        }
      }
      for (int64_t cb = cb_lo, nbw = 1; cb < cb_hi; cb += nbw) {
        const T* bw = wp + (grp * ncb + cb) * blk;
        nbw = wide_step(cb_hi - cb, K.wide);  // up to K.wide blocks a pass
        if (nbw >= 2) {  // each tile against nbw column blocks at once
          for (int64_t j = 0; j < t1 - t0; ++j) {
            const PixelGroup& pg = groups[tg[j]];
            const int64_t ntaps = (int64_t)pg.a_off.size();
            if (L.ocs == 1) prefetch_tile_out(L, cb * kNR, nbw * kNR, trows[j], po[j]);
            if (ntaps > 0)
              K.tile_wide(ap[j], pg.a_off.data(), bw, pg.b_off.data(), ntaps, pg.len, blk, (int)nbw,
                          outw);
            else
              std::fill(outw, outw + nbw * kMR * kNR, T(0));
            for (int q = 0; q < nbw; ++q) store(grp, cb + q, trows[j], po[j], outw + q * kMR * kNR);
          }
          continue;
        }
        for (int64_t j = 0; j < t1 - t0; ++j) {
          const PixelGroup& pg = groups[tg[j]];
          const int64_t ntaps = (int64_t)pg.a_off.size();
          if (ntaps > 0 && K.avx512 && j + 1 < t1 - t0 && tg[j + 1] == tg[j]) {
            // two tiles of one pixel group: one pass over the weight panel
            const T* a12[2 * kMR];
            std::copy(ap[j], ap[j] + kMR, a12);
            std::copy(ap[j + 1], ap[j + 1] + kMR, a12 + kMR);
            K.tile12(a12, pg.a_off.data(), bw, pg.b_off.data(), ntaps, pg.len, 1, kNR, out);
            store(grp, cb, trows[j], po[j], out);
            store(grp, cb, trows[j + 1], po[j + 1], out + kMR * kNR);
            ++j;
            continue;
          }
          if (ntaps > 0)
            K.tile(ap[j], pg.a_off.data(), bw, pg.b_off.data(), ntaps, pg.len, 1, kNR, out);
          else
            std::fill(out, out + kMR * kNR, T(0));
          store(grp, cb, trows[j], po[j], out);
        }
      }
    }
   }
  });
}

// ---------------------------------------------------------------- forward

// The kernel offsets k < K along one axis whose input index o * s - p + k * d
// lies in [0, size): a contiguous range.
std::vector<int64_t> taps_inside(int64_t o, int64_t s, int64_t p, int64_t d, int64_t K,
                                 int64_t size) {
  std::vector<int64_t> v;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t i = o * s - p + k * d;
    if (i >= 0 && i < size) v.push_back(k);
  }
  return v;
}

template <typename T>
void conv_forward(const ConvGeometry& g, const Tensor& x, bool cl, const T* w, const T* bias,
                  T* y) {
  const Kern<T> K;
  const int64_t Cg = g.Cg(), OCg = g.OCg(), KK = g.KH * g.KW, P = g.OH * g.OW;
  const int64_t R = (g.OH - 1) * g.sh + (g.KH - 1) * g.dh + 1;
  const int64_t Cn = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1;
  Tensor xbuf;
  // channels_last with one group, where columns are grouped by their taps
  // too (group_columns below): no pixel group reads a padding row or column,
  // so the input is read in place through a window origin (-pt, -pl) outside
  // it (never dereferenced there) instead of a zero-bordered copy (3x3
  // stride 2 64->128 at 56x56, batch 8: 3.7-3.8 -> 3.2-3.4 ms; NiN's 5x5
  // 43.4-43.6 -> 41.4-42.5; 512 channels at 7x7 within 2 %; dilation 2 1-2 %
  // slower, so dilated layers keep the copy)
  const Nhwc<T> xp = nhwc_window<T>(x, cl, -g.pt, R, -g.pl, Cn, false, xbuf, g.G, kWindowSlot,
                                    g.dh == 1 && g.dw == 1 && group_columns(KK * Cg));

  // weights packed as [G][column block][kh][kw][c][16 output channels]
  const int64_t ncb = ceil_div(OCg, kNR), blk = KK * Cg * kNR;
  const ScratchBuf<T> wp(kWeightSlot, g.G * ncb * blk);  // every value written below
  at::parallel_for(0, g.G * ncb, 1, [&](int64_t b, int64_t e) {
    for (int64_t gc = b; gc < e; ++gc) {
      const int64_t grp = gc / ncb, cb = gc % ncb;
      T* d = wp.data() + gc * blk;
      for (int64_t t = 0; t < KK; ++t)
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t j = 0; j < kNR; ++j) {
            const int64_t oc = cb * kNR + j;
            *d++ = oc < OCg ? w[((grp * OCg + oc) * Cg + c) * KK + t] : T(0);
          }
    }
  });

  // Pixel groups by the taps inside the image. When the width dilation is 1,
  // a kernel row's (kw, c) values are contiguous in the (group-major) NHWC
  // window and run as one reduction (long runs for 3-channel stems), cut to
  // the kw range inside the image.
  const bool merged = g.dw == 1;
  std::vector<std::vector<int64_t>> rkey(g.OH), ckey(g.OW);
  for (int64_t oh = 0; oh < g.OH; ++oh) rkey[oh] = taps_inside(oh, g.sh, g.pt, g.dh, g.KH, g.H);
  for (int64_t ow = 0; ow < g.OW; ++ow) ckey[ow] = taps_inside(ow, g.sw, g.pl, g.dw, g.KW, g.W);
  if (!group_columns(KK * Cg))
    for (auto& k : ckey) {  // every kw: one column group
      k.clear();
      for (int64_t kw = 0; kw < g.KW; ++kw) k.push_back(kw);
    }
  std::vector<PixelGroup> groups;
  for (const auto& rg : group_by_key(rkey))
    for (const auto& cg : group_by_key(ckey)) {
      PixelGroup pg;
      for (int64_t oh : rg)
        pg.a_r.push_back(oh * g.sh * xp.sR), pg.o_r.push_back(oh * g.OW * (cl ? g.OC : 1));
      for (int64_t ow : cg)
        pg.a_c.push_back(ow * g.sw * xp.sC), pg.o_c.push_back(ow * (cl ? g.OC : 1));
      const auto &khs = rkey[rg[0]], &kws = ckey[cg[0]];
      if (!khs.empty() && !kws.empty()) {
        if (merged) {
          for (int64_t kh : khs) {
            pg.a_off.push_back(kh * g.dh * xp.sR + kws[0] * xp.sC);
            pg.b_off.push_back((kh * g.KW + kws[0]) * Cg * kNR);
          }
          pg.len = (int64_t)kws.size() * Cg;
        } else {
          for (int64_t kh : khs)
            for (int64_t kw : kws) {
              pg.a_off.push_back(kh * g.dh * xp.sR + kw * g.dw * xp.sC);
              pg.b_off.push_back((kh * g.KW + kw) * Cg * kNR);
            }
          pg.len = Cg;
        }
      }
      groups.push_back(std::move(pg));
    }

  const std::vector<T> bpad = padded_bias(bias, g.G, OCg, ncb);
  run_pixel_groups<T>(
      K, g.N, g.G, groups, ncb, wp.data(), blk,
      PixelLayout<T>{xp.p, xp.sN, xp.sG, g.OC * P, cl ? OCg : OCg * P, y, cl ? 1 : P},
      [&](int64_t grp, int64_t cb, int64_t rows, const int64_t* off, const T* v) {
        const int64_t ncols = std::min<int64_t>(kNR, OCg - cb * kNR), cs = cl ? 1 : P;
        store_tile(y + cb * kNR * cs, cs, ncols, rows, off, bpad.data() + (grp * ncb + cb) * kNR, v);
      });
}

// nn images of pixel-major (channels_last order) values, C channels a pixel,
// into NCHW planes at dst (the staged data gradients' last pass), a run of
// 256 pixels of one image per transpose.
template <typename T>
void pixels_to_planes(const Kern<T>& K, const T* src, int64_t nn, int64_t HW, int64_t C, T* dst) {
  constexpr int64_t kRun = 256;
  const int64_t runs = ceil_div(HW, kRun);
  at::parallel_for(0, nn * runs, 1, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const int64_t n = q / runs, p0 = q % runs * kRun, np = std::min(kRun, HW - p0);
      K.transpose(src + (n * HW + p0) * C, C, np, C, dst + n * C * HW + p0, HW);
    }
  });
}

// ------------------------------------------------- Winograd F(2x2, 3x3)
// A 3x3 convolution with unit stride and dilation and one group, float32:
//   y[n][o][oh][ow] = bias[o] + sum_{i, kh, kw} wget(o, i, kh, kw) * x[n][i][oh + kh - pt][ow + kw - pl]
// computed on 2x2 output tiles: per tile and input channel the 4x4 input
// patch d becomes V = B^T d B, per (output, input) channel pair the weights
// g become U = G g G^T, and the tile's 16 transformed outputs are
//   M[xi][o] = sum_i V[xi][i] U[xi][i][o]        (16 independent GEMMs)
// from which A^T M A gives the 2x2 outputs: 16 multiply-adds per tile and
// channel pair instead of the direct convolution's 36 (2.25x fewer).
// The forward (x = the input) and the data gradient (x = grad_output, the
// weights transposed with the taps reversed, padding 2 - p) both run here.
//
// Layout: x is read through a zero-bordered NHWC window (nhwc_window);
// U is packed as [xi][16-column block][i][16] (kept scratch); the tiles of
// all images, in (n, th, tw) order, are cut into work items of TB tiles
// (a multiple of 6, the micro-kernel's rows), each with its own
// V [xi][tile][i] and M [xi][6-tile block][column block][6][16] in
// per-thread kept scratch, sized to stay in L2 (about 384 KB together). The
// GEMMs run on the wide 6-row tiles, against up to 4 column blocks at once
// (the U panels of one xi and those blocks are reused by every 6-tile block
// of the item). Each output is computed by one item in
// a fixed order: results repeat bit for bit whatever the thread count.
//
// Rounding differs from the direct convolution's (the transforms add and
// subtract inputs before the products): measured against float64, the same
// order of error as the direct sum (tests/test_conv.py).
//
// Where it applies: outputs of 8x8 or more per dilation phase and, per
// group, at least 16 channels on both sides (shorter reductions leave the
// GEMMs to the transforms). On small images the direct convolution skips
// the taps that read padding (31 % of them at 4x4, 18 % at 7x7) while the
// tiles compute theirs, and a last tile can hang past the image:
// multiply-adds per output, direct over Winograd, are 1.56 at 4x4, 1.78 at
// 6x6, 1.41 at 7x7, 1.89 at 8x8, 2.04 at 14x14. Beyond that, the tile count
// N x ceil(OH / 2) x ceil(OW / 2) (the GEMMs' row count, per group) decides,
// measured against the direct path with its wide AVX-512 tiles (two
// threads, interleaved, ms Winograd / direct):
//   forward and data gradient: 512+ tiles (16x128x8x8, 256 tiles: 1.72 /
//   1.36; 8x256x14x14, 392: 7.7 / 7.3; 32x512x8x8, 512: 35.3 / 37.9;
//   16x256x14x14, 784: 13.0 / 13.8; 32x256x16x16: 28.3 / 37.1), and 32+
//   channels per group (64 channels in 4 groups at 56x56, NCHW 3.2 / 3.0;
//   channels_last, whose direct path needs no NCHW transposes, asked for
//   64+ until the GEMMs ran on wide tiles: 128 channels in 4 groups, 10.6 /
//   8.9 then, 7.6 / 8.3 since; 8x32->32 at 56x56 1.7 / 1.9);
//   weight gradient: 1024+ tiles (8x512x14x14, 392: 46.2 / 39.7;
//   16x256x14x14, 784: 17.5 / 17.4; 8x128x28x28, 1568: 8.8 / 10.3;
//   32x256x16x16: 40.4 / 46.8), and over 32 channels per group on both
//   sides (with its GEMMs on wide tiles: 16x32->32 at 56x56 4.6 / 4.1,
//   32->64 at 28x28 2.0 / 2.0, 128 channels in 4 groups at 56x56 9.9 / 9.0,
//   8x40->40 at 56x56 3.5 / 4.7, 16x48->48 7.4 / 8.5).
// With the wide-tile GEMMs both passes also win from 384 tiles where the
// output is 12x12 or more (forward: 8x512x14x14, 392 tiles, 22.7 / 26.2,
// 8x256x14x14 6.2 / 6.5; weight gradient: AlexNet's 12x12 layers at batch
// 16, 576 tiles, 256->384 14.6 / 17.6, 384->384 19.8 / 28.2, 384->256 15.1
// / 19.8; 16x256x14x14 12.3 / 17.2; 8x512x14x14 31.6 / 33.4), but not
// on smaller outputs, where the direct path skips the padding taps
// (forward 12x256x10x10, 300 tiles, 5.2 / 4.9; weight gradient
// 32x128x8x8, 512 tiles, 3.6 / 3.1, 16x256x8x8 5.6 / 5.7).
// The choice depends on the shapes only (not on the memory format or the
// thread count): results are the same whatever the number of threads.
enum class WinoPass { kForward, kWeight };
bool winograd_applies(const ConvGeometry& g, WinoPass pass) {
  // (dilation d: the outputs of each of the d x d phases form a plain 3x3
  // convolution over the inputs of that phase)
  const int64_t d = g.dh;
  if (!(use_winograd() && g.KH == 3 && g.KW == 3 && g.sh == 1 && g.sw == 1 && g.dh == g.dw &&
        d >= 1 && d <= 4 && g.OH >= 8 * d && g.OW >= 8 * d))
    return false;
  const int64_t cmin = std::min(g.Cg(), g.OCg());
  const int64_t tiles = g.N * ceil_div(g.OH, 2) * ceil_div(g.OW, 2);
  if (force_winograd()) return cmin >= 16;
  // (from 384 tiles where each phase's output is 12x12 or more)
  const bool mid = tiles >= 384 && g.OH >= 12 * d && g.OW >= 12 * d;
  if (pass == WinoPass::kWeight) return cmin > 32 && (tiles >= 1024 || mid);
  return cmin >= 32 && (tiles >= 512 || mid);
}

// The tiles of one call: for image n, phase (a, b) of the d x d dilation
// phases, tile row th and column tw, the 2x2 outputs (a + d (2 th + i),
// b + d (2 tw + k)); every phase has the same TH x TW grid (tiles past the
// output of a shorter phase compute nothing that is stored).
struct WinoTiles {
  int64_t N, OH, OW, d, TH, TW, NT;
  // fixed >= 0: the tiles of one stride phase only (of a 4x4 stride-2
  // transposed convolution: index a * d + b, its outputs (a + d i, b + d j)),
  // reading the window with unit steps from row ir0 + 2 th, column ic0 + 2 tw;
  // else all d x d dilation phases, reading the window at the output's own
  // coordinates (the window's origin at minus the padding), d apart
  int64_t fixed = -1, ir0 = 0, ic0 = 0;
  WinoTiles(int64_t N_, int64_t OH_, int64_t OW_, int64_t d_)
      : N(N_), OH(OH_), OW(OW_), d(d_), TH(ceil_div(ceil_div(OH_, d_), 2)),
        TW(ceil_div(ceil_div(OW_, d_), 2)), NT(N_ * d_ * d_ * TH * TW) {}
  WinoTiles(int64_t N_, int64_t OH_, int64_t OW_, int64_t d_, int64_t phase, int64_t ir0_,
            int64_t ic0_)
      : WinoTiles(N_, OH_, OW_, d_) {
    fixed = phase, ir0 = ir0_, ic0 = ic0_, NT = N * TH * TW;
  }
  int64_t step() const { return fixed >= 0 ? 1 : d; }  // between a tile's input rows
  // tile q: image, first output row and column, its column index tw, and
  // its first input row and column in the window
  void at(int64_t q, int64_t& n, int64_t& oh0, int64_t& ow0, int64_t& tw, int64_t& ir,
          int64_t& ic) const {
    const int64_t per = TH * TW, nph = fixed >= 0 ? 1 : d * d;
    const int64_t ph = fixed >= 0 ? fixed : q / per % nph, th = q % per / TW;
    n = q / (per * nph);
    tw = q % TW;
    oh0 = ph / d + 2 * d * th;
    ow0 = ph % d + 2 * d * tw;
    ir = fixed >= 0 ? ir0 + 2 * th : oh0;
    ic = fixed >= 0 ? ic0 + 2 * tw : ow0;
  }
  void at(int64_t q, int64_t& n, int64_t& oh0, int64_t& ow0, int64_t& tw) const {
    int64_t ir, ic;
    at(q, n, oh0, ow0, tw, ir, ic);
  }
};

// Output addressing: (n, o, oh, ow) at y + n * sN + o * sC + (oh * OW + ow) * sP.
template <typename T>
struct WinoOut {
  T* y;
  int64_t sN, sC, sP;
};

// One group of the convolution (see above): x through the NHWC view xp (its
// first channel the group's), Cin / Cout channels, outputs at out. R: the
// filter's taps per axis, 3 (F(2x2, 3x3): 4x4 input tiles, 16 positions xi)
// or 2 (F(2x2, 2x2): 3x3 tiles, 9 positions; wget's kh, kw < 2).
template <int R, typename T, typename WGet>
void winograd_group(const Kern<T>& K, const Nhwc<T>& xp, const WinoTiles& tl, int64_t Cin,
                    int64_t Cout, WGet wget, const T* bias, const WinoOut<T>& out) {
  static_assert(R == 2 || R == 3, "F(2x2, 3x3) or F(2x2, 2x2)");
  constexpr int A = R + 1, NX = A * A;  // input tile side, positions
  const int64_t OH = tl.OH, OW = tl.OW, d = tl.d, NT = tl.NT, TW = tl.TW;
  const int64_t ncb = ceil_div(Cout, kNR);

  // U = G g G^T, packed [xi][cb][i][16]; F(2x2, 3x3): G = [1 0 0; 1/2 1/2
  // 1/2; 1/2 -1/2 1/2; 0 0 1], F(2x2, 2x2): G = [1 0; 1 1; 0 1]
  const ScratchBuf<T> u(kWeightSlot, NX * ncb * Cin * kNR);  // every value written below
  at::parallel_for(0, ncb * Cin, 16, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const int64_t cb = q / Cin, i = q % Cin;
      for (int64_t j = 0; j < kNR; ++j) {
        const int64_t o = cb * kNR + j;
        T gg[4][3], uu[4][4];
        if (o >= Cout) {
          for (int xi = 0; xi < NX; ++xi) u[((xi * ncb + cb) * Cin + i) * kNR + j] = T(0);
          continue;
        }
        if (R == 2) {
          for (int kw = 0; kw < 2; ++kw) {  // G g (rows)
            const T g0 = wget(o, i, 0, kw), g1 = wget(o, i, 1, kw);
            gg[0][kw] = g0, gg[1][kw] = g0 + g1, gg[2][kw] = g1;
          }
          for (int r = 0; r < 3; ++r)  // (G g) G^T (columns)
            uu[r][0] = gg[r][0], uu[r][1] = gg[r][0] + gg[r][1], uu[r][2] = gg[r][1];
          for (int xi = 0; xi < NX; ++xi)
            u[((xi * ncb + cb) * Cin + i) * kNR + j] = uu[xi / A][xi % A];
          continue;
        }
        for (int kw = 0; kw < 3; ++kw) {  // G g (rows)
          const T g0 = wget(o, i, 0, kw), g1 = wget(o, i, 1, kw), g2 = wget(o, i, 2, kw);
          gg[0][kw] = g0;
          gg[1][kw] = T(0.5) * (g0 + g1 + g2);
          gg[2][kw] = T(0.5) * (g0 - g1 + g2);
          gg[3][kw] = g2;
        }
        for (int r = 0; r < 4; ++r) {  // (G g) G^T (columns)
          uu[r][0] = gg[r][0];
          uu[r][1] = T(0.5) * (gg[r][0] + gg[r][1] + gg[r][2]);
          uu[r][2] = T(0.5) * (gg[r][0] - gg[r][1] + gg[r][2]);
          uu[r][3] = gg[r][2];
        }
        for (int xi = 0; xi < 16; ++xi) u[((xi * ncb + cb) * Cin + i) * kNR + j] = uu[xi / 4][xi % 4];
      }
    }
  });
  std::vector<T> bpad(ncb * kNR, T(0));
  if (bias != nullptr) std::copy(bias, bias + Cout, bpad.begin());

  // Tiles per work item: up to 96, the items an equal number per thread
  // (every item streams all of U: few large items beat many small ones on
  // 512-channel layers). Measured on one thread at batch 8 (64ch 56x56, 128ch 28x28,
  // 256ch 14x14 forwards): 24 tiles 11.3 / 10.5 / 13.1 ms, 48 10.7 / 9.9 /
  // 12.8, 96 10.6 / 10.0 / 12.3 (V and M of an item then live in L2 and L3;
  // the U panels of each xi and group of column blocks are reused by the 16
  // 6-tile blocks). The NX slices of V and of M are each one cache line
  // longer than a multiple of the slice (streams a multiple of 4 KB apart would share
  // one set of L1). The cut does not change any result (each output is one
  // tile's; the GEMM rows are independent).
  const int64_t OCp = ncb * kNR, nth = at::get_num_threads();
  const int64_t per_thread = ceil_div(NT, 96 * nth);
  const int64_t TB = std::max<int64_t>(kMR, ceil_div(ceil_div(NT, per_thread * nth), kMR) * kMR);
  const int64_t vs = TB * Cin + 16, ms = ncb * TB * kNR + 16;
  const int64_t nitems = ceil_div(NT, TB);
  const int64_t xsR = tl.step() * xp.sR, xsC = tl.step() * xp.sC;
  at::parallel_for(0, nitems, 1, [&](int64_t b, int64_t e) {
    // V, M, and the outputs of one run of tiles along a tile row, NHWC: [2][2 TB][OCp]
    const ScratchBuf<T> buf(kWinoSlot, NX * (vs + ms) + 4 * TB * OCp);
    T* V = buf.data();
    T* M = V + NX * vs;
    T* stage = M + NX * ms;
    const int64_t zero = 0;
    for (int64_t item = b; item < e; ++item) {
      const int64_t t0 = item * TB, nt = std::min(TB, NT - t0);
      for (int64_t t = 0; t < nt; ++t) {
        int64_t n, oh0, ow0, tw, ir, ic;
        tl.at(t0 + t, n, oh0, ow0, tw, ir, ic);
        const T* x0 = xp.p + n * xp.sN + ir * xp.sR + ic * xp.sC;
        if (R == 3)
          K.wino_in(x0, xsR, xsC, Cin, V + t * Cin, vs);
        else
          K.wino22_in(x0, xsR, xsC, Cin, V + t * Cin, vs);
      }
      for (int64_t xi = 0; xi < NX; ++xi)
        for (int64_t cb = 0, nbw = 1; cb < ncb; cb += nbw) {
          nbw = wide_step(ncb - cb, K.wide);
          const T* bp = u.data() + (xi * ncb + cb) * Cin * kNR;
          for (int64_t r0 = 0; r0 < nt; r0 += kMR) {
            const T* a[kMR];
            for (int64_t i = 0; i < kMR; ++i) a[i] = V + xi * vs + std::min(r0 + i, nt - 1) * Cin;
            K.tile_wide(a, &zero, bp, &zero, 1, Cin, Cin * kNR, (int)nbw,
                        M + xi * ms + (r0 / kMR * ncb + cb) * kMR * kNR);
          }
        }
      // outputs, one run of tiles of one tile row at a time: transformed into
      // the NHWC stage, then copied (channels_last) or transposed (NCHW) out;
      // dilated outputs (every d-th column) one pixel at a time
      for (int64_t t = 0; t < nt;) {
        int64_t n, oh0, ow0, tw;
        tl.at(t0 + t, n, oh0, ow0, tw);
        const int64_t run = std::min(nt - t, TW - tw), sr = 2 * run * OCp;
        if (oh0 >= OH || ow0 >= OW) {  // past a shorter phase's outputs
          t += run;
          continue;
        }
        for (int64_t k = 0; k < run; ++k)
          for (int64_t cb = 0; cb < ncb; ++cb) {
            const T* m = M + (((t + k) / kMR * ncb + cb) * kMR + (t + k) % kMR) * kNR;
            T* st = stage + 2 * k * OCp + cb * kNR;
            if (R == 3)
              K.wino_out(m, ms, bpad.data() + cb * kNR, st, sr, OCp);
            else
              K.wino22_out(m, ms, bpad.data() + cb * kNR, st, sr, OCp);
          }
        const int64_t ncol = std::min(2 * run, ceil_div(OW - ow0, d));
        for (int64_t i = 0; i < 2 && oh0 + d * i < OH; ++i) {
          const int64_t oh = oh0 + d * i;
          const T* src = stage + i * sr;
          T* row = out.y + n * out.sN + (oh * OW + ow0) * out.sP;
          if (out.sC == 1) {
            for (int64_t c = 0; c < ncol; ++c)
              std::memcpy(row + c * d * out.sP, src + c * OCp, Cout * sizeof(T));
          } else if (d == 1) {
            K.transpose(src, OCp, ncol, Cout, row, out.sC);
          } else {
            for (int64_t c = 0; c < ncol; ++c)
              for (int64_t j = 0; j < Cout; ++j) row[j * out.sC + c * d] = src[c * OCp + j];
          }
        }
        t += run;
      }
    }
  });
}

// Every group of a Winograd convolution (winograd_group<R>) over the
// group-major NHWC view xw, into y (N, G Cout, OH, OW) in layout cl;
// wget(o, i, kh, kw) with o of the whole layer, i of the group.
template <int R, typename T, typename WGet>
void winograd_groups(const Nhwc<T>& xw, const WinoTiles& tl, bool cl, int64_t G, int64_t Cin,
                     int64_t Cout, const WGet& wget, const T* bias, T* y) {
  const Kern<T> K;
  const int64_t Ct = G * Cout, P = tl.OH * tl.OW;
  for (int64_t grp = 0; grp < G; ++grp) {
    Nhwc<T> xp = xw;
    xp.p += grp * xw.sG;
    const WinoOut<T> out = cl ? WinoOut<T>{y + grp * Cout, P * Ct, 1, Ct}
                              : WinoOut<T>{y + grp * Cout * P, Ct * P, P, 1};
    winograd_group<R, T>(
        K, xp, tl, Cin, Cout,
        [&](int64_t o, int64_t i, int64_t kh, int64_t kw) { return wget(grp * Cout + o, i, kh, kw); },
        bias == nullptr ? nullptr : bias + grp * Cout, out);
  }
}

// y = conv(x, w) of a 3x3 layer (x: N x (G Cin) x H x W in layout cl; its
// output (N, G Cout, OH, OW) in the same layout), unit stride, dilation d,
// padding pt / pl, weights wget(o, i, kh, kw) (o, i: channels of the whole
// layer and of its group).
template <typename T, typename WGet>
void winograd_conv(const Tensor& x, bool cl, int64_t G, int64_t Cin, int64_t Cout, int64_t OH,
                   int64_t OW, int64_t d, int64_t pt, int64_t pl, WGet wget, const T* bias,
                   T* y) {
  Tensor xbuf;
  const Nhwc<T> xw = nhwc_window<T>(x, cl, -pt, OH + 4 * d, -pl, OW + 4 * d, false, xbuf, G);
  winograd_groups<3, T>(xw, WinoTiles(x.size(0), OH, OW, d), cl, G, Cin, Cout, wget, bias, y);
}

// ------------------------------------ Winograd F(2x2, 2x2), stride phases
// The data gradient of a 4x4, stride-2 convolution, which is also
// conv_transpose2d 4x4 stride 2's forward (DCGAN's and U-Net's upsampling
// layer):
//   gx[n][c][ih][iw] = sum_{oc, kh, kw} gy[n][oc][oh][ow] w[oc][c][kh][kw],
//   ih = 2 oh - pt + kh (iw likewise).
// The input pixels of stride phase (rh, rw) (ih = 2 th + rh) are reached by
// two taps per axis, kh = k0 + 2 and k0 with k0 = (rh + pt) mod 2, from
// grad_output rows th + v0 - 1 and th + v0 (v0 = floor((rh + pt) / 2)): each
// phase is a 2x2 convolution of grad_output (stride 1), run on Winograd
// F(2x2, 2x2) tiles (winograd_group<2>): 9 multiply-adds per 2x2 outputs
// and channel pair instead of 16 (1.78x fewer). The phase's 2x2 tiles step
// by 2 along its own grid (outputs 4 input pixels apart). Outputs go to the
// channels_last result, or, for NCHW, to a channels_last staging copy (kept
// scratch when it fits) that is transposed into the planes at the end.
// (So channels_last and NCHW 3x3 stride-2 layers no longer give the same
// bits: their rounding differs, tested against float64.)
// Where it applies: 4x4 (or 3x3 channels_last, below), stride 2, no
// dilation, float32, a grad_output (the transposed convolution's input) of
// 12x12 or more with 128+ tiles per phase (8x8 or more with 1024+), 32+
// channels per group on both sides and 64+ on one. Measured, two threads,
// conv_transpose2d forward, ms Winograd / direct: 8x128->64 at
// 28x28 NCHW 5.96 / 7.46, channels_last 4.98 / 6.02; 16x64->32 at 32x32
// 5.45 / 6.27; 16x128->64 at 16x16 4.40 / 4.76; 64x256->128 at 8x8 14.4 /
// 15.9, 16x256->128 4.36 / 4.38; 8x32->32 at 28x28 1.18 / 1.10; 8x512->256
// at 7x7 9.9 / 8.4 (short phases: the transforms and NCHW transposes, 14 %
// of the samples at 28x28, weigh more).
// The channel and size rule of every 4x4 stride-2 path, by its tiles (per
// stride phase) and the convolution's output, OH x OW (the transposed
// convolution's input); the weight gradient asks for 1024+ tiles
// (measurements at winograd_s2k4_conv_applies).
bool winograd_s2k4_sizes(const ConvGeometry& g, int64_t tiles, WinoPass pass) {
  const int64_t cmin = std::min(g.Cg(), g.OCg()), cmax = std::max(g.Cg(), g.OCg());
  if (force_winograd()) return cmin >= 16;
  if (cmin < 32 || cmax < 64) return false;
  if (pass == WinoPass::kWeight) return tiles >= 1024;
  return (tiles >= 128 && g.OH >= 12 && g.OW >= 12) || (tiles >= 1024 && g.OH >= 8 && g.OW >= 8);
}

bool winograd_s2k4_applies(const ConvGeometry& g, bool cl) {
  if (!(use_winograd() && (g.KH == 4 || (g.KH == 3 && cl)) && g.KW == g.KH && g.sh == 2 &&
        g.sw == 2 && g.dh == 1 && g.dw == 1 && g.H >= 8 && g.W >= 8))
    return false;
  return winograd_s2k4_sizes(
      g, g.N * ceil_div(ceil_div(g.H, 2), 2) * ceil_div(ceil_div(g.W, 2), 2), WinoPass::kForward);
}

// 3x3 kernels, channels_last (conv_transpose2d 3x3 stride 2, the data
// gradient of a 3x3 stride-2 convolution): one stride phase per axis
// reaches two taps (0 and 2), the other one (tap 1); the phase with two on
// both axes, 4 of the 9 taps' work, runs on F(2x2, 2x2), the other three on
// the direct path (conv_dgrad, told to skip it), both into the result.
// Interleaved, ms with / without: conv_transpose2d 8x128->64 at 28x28,
// output_padding 1, 3.49 / 3.84, 0: 3.44 / 3.47; 8x64->64 1.90 / 2.06. NCHW
// was even or slower (4.53 / 4.51; output_padding 0 4.32 / 3.90: the
// direct path stages a block of images at a time, transposed from the
// caches; here the second grad_output window and whole-batch staging).
template <typename T>
void conv_dgrad(const ConvGeometry& g, const Tensor& gy, bool cl, const T* w, const T* bias,
                T* gx, int64_t skip_rh = -1, int64_t skip_rw = -1, bool pm = false);

template <typename T>
void winograd_dgrad_s2k4(const ConvGeometry& g, const Tensor& gy, bool cl, const T* w,
                         const T* bias, T* gx) {
  const Kern<T> K;
  const int64_t Cg = g.Cg(), OCg = g.OCg(), HW = g.H * g.W;
  auto k0 = [](int64_t r, int64_t p) { return ((r + p) % 2 + 2) % 2; };
  auto v0 = [](int64_t r, int64_t p) { return floor_div(r + p, 2); };
  Tensor gbuf;
  const ScratchBuf<T> stage(kStageSlot, cl ? 0 : g.N * HW * g.C);
  T* dst = cl ? gx : stage.data();
  // the phases on F(2x2, 2x2): all four for 4x4; for 3x3 the one whose taps
  // start at 0 (k0 == 0), the others direct first (its window, in the same
  // kept slot, is made before ours)
  std::vector<std::array<int64_t, 2>> phases;
  if (g.KH == 4) {
    phases = {{0, 0}, {0, 1}, {1, 0}, {1, 1}};
  } else {
    phases = {{g.pt % 2, g.pl % 2}};
    conv_dgrad<T>(g, gy, cl, w, bias, dst, phases[0][0], phases[0][1], true);
  }
  // the grad_output window: from the first row (column) phase 0 reads to the
  // last one phase 1's last tile reads (zeros outside grad_output)
  const int64_t TH = ceil_div(ceil_div(g.H, 2), 2), TW = ceil_div(ceil_div(g.W, 2), 2);
  const int64_t r_lo = v0(0, g.pt) - 1, c_lo = v0(0, g.pl) - 1;
  const int64_t Rw = 2 * TH + 1 + v0(1, g.pt) - v0(0, g.pt);
  const int64_t Cw = 2 * TW + 1 + v0(1, g.pl) - v0(0, g.pl);
  const Nhwc<T> win = nhwc_window<T>(gy, cl, r_lo, Rw, c_lo, Cw, false, gbuf, g.G);
  const int64_t KH = g.KH, KW = g.KW;
  for (int64_t grp = 0; grp < g.G; ++grp) {
    Nhwc<T> xp = win;
    xp.p += grp * win.sG;
    const WinoOut<T> out{dst + grp * Cg, HW * g.C, 1, g.C};
    for (const auto& ph : phases) {
      const int64_t rh = ph[0], rw = ph[1];
      const WinoTiles tl(g.N, g.H, g.W, 2, rh * 2 + rw, v0(rh, g.pt) - 1 - r_lo,
                         v0(rw, g.pl) - 1 - c_lo);
      const int64_t kh0 = k0(rh, g.pt), kw0 = k0(rw, g.pl);
      winograd_group<2, T>(
          K, xp, tl, OCg, Cg,
          [&](int64_t c, int64_t oc, int64_t u, int64_t v) {
            return w[(((grp * OCg + oc) * Cg + c) * KH + kh0 + 2 * (1 - u)) * KW + kw0 +
                     2 * (1 - v)];
          },
          bias == nullptr ? nullptr : bias + grp * Cg, out);
    }
  }
  if (!cl) pixels_to_planes(K, dst, g.N, HW, g.C, gx);
}

// The forward of a 4x4, stride-2 convolution (also conv_transpose2d 4x4
// stride 2's input gradient) as a 2x2, stride-1 convolution over the
// input's 2x2 space-to-depth rearrangement
//   z[n][j][i][(qh, qw, c)] = x[n][c][2 j + qh - pt][2 i + qw - pl]  (0 outside)
// with 4 C channels, weights w'[o][(qh, qw, c)][u][v] = w[o][c][2 u + qh][2 v + qw]:
//   y[n][o][oh][ow] = sum_{u, v, qh, qw, c} z[oh + u][ow + v][(qh, qw, c)] w'[...]
// run on Winograd F(2x2, 2x2) tiles (9 multiply-adds per 2x2 outputs and
// channel pair instead of 16). z is built per group (group-major, as the
// NHWC windows), OH + 2 rows and OW + 2 columns (tiles past an odd output
// read one more); an NCHW row is transposed to pixels first, then each
// pixel's channels copied (a scalar deinterleave cost 10 % of the samples).
// The weight gradient runs on the same z (winograd_wgrad_s2k4).
// Where the forward applies: as winograd_s2k4_applies, the sizes those of
// the output. Two threads, ms Winograd / direct: 8x64->128 at 56x56 NCHW 5.0 /
// 6.5, channels_last 4.1 / 5.1; 16x128->256 at 32x32 11.4 / 15.7;
// 16x256->512 at 16x16 12.8 / 17.5; 16x64->64 at 24x24 1.2 / 1.5.
// The weight gradient (winograd_wgrad_s2k4) asks for 1024+ tiles (two
// threads, ms Winograd / direct: 8x64->128 at 56x56 7.6 / 9.3, 16x128->256
// at 32x32 18.4 / 22.0, 64x64->128 at 16x16 5.2 / 5.7; 16x256->512 at
// 16x16, 256 tiles, 31.2 / 21.8; 16x64->64 at 24x24, 576, 2.4 / 2.1).
bool winograd_s2k4_conv_applies(const ConvGeometry& g, WinoPass pass = WinoPass::kForward) {
  if (!(use_winograd() && g.KH == 4 && g.KW == 4 && g.sh == 2 && g.sw == 2 && g.dh == 1 &&
        g.dw == 1 && g.OH >= 8 && g.OW >= 8))
    return false;
  return winograd_s2k4_sizes(g, g.N * ceil_div(g.OH, 2) * ceil_div(g.OW, 2), pass);
}

// z of the comment above, in kept scratch (slot kWindowSlot) or zbuf.
template <typename T>
Nhwc<T> space_to_depth2(const ConvGeometry& g, const Tensor& x, bool cl, Tensor& zbuf) {
  const Kern<T> K;
  const int64_t Cg = g.Cg(), C4 = 4 * Cg;
  const int64_t ZH = g.OH + 2, ZW = g.OW + 2, gsz = g.N * ZH * ZW * C4;
  const int64_t bytes = (g.G * gsz + kNR) * int64_t(sizeof(T));
  T* z;
  if (bytes <= kScratchCacheBytes) {
    z = static_cast<T*>(kept_scratch(kWindowSlot, bytes));
  } else {
    zbuf = empty_output({g.G * gsz + kNR}, x.options().memory_format(at::MemoryFormat::Contiguous));
    z = zbuf.data_ptr<T>();
  }
  std::fill(z + g.G * gsz, z + g.G * gsz + kNR, T(0));
  const T* xs = x.data_ptr<T>();
  // rows (grp, n, j, qh): the 2 ZW pixels x Cg channels of input row 2 j + qh - pt
  at::parallel_for(0, g.G * g.N * ZH * 2, 2, [&](int64_t b, int64_t e) {
    std::vector<T> px(cl ? 0 : g.W * Cg);  // NCHW: the row's pixels [iw][c]
    for (int64_t r = b; r < e; ++r) {
      const int64_t qh = r % 2, j = r / 2 % ZH, n = r / (2 * ZH) % g.N, grp = r / (2 * ZH * g.N);
      const int64_t ih = 2 * j + qh - g.pt;
      T* zr = z + grp * gsz + (n * ZH + j) * ZW * C4 + qh * 2 * Cg;  // + i C4 + qw Cg + c
      if (ih < 0 || ih >= g.H) {
        for (int64_t i = 0; i < ZW; ++i) std::fill(zr + i * C4, zr + i * C4 + 2 * Cg, T(0));
        continue;
      }
      // the row's pixels, Cg channels each (in place, or transposed from the planes)
      const T* src = xs + ((n * g.H + ih) * g.W) * g.C + grp * Cg;
      int64_t ps = g.C;
      if (!cl) {
        K.transpose(xs + ((n * g.C + grp * Cg) * g.H + ih) * g.W, g.H * g.W, Cg, g.W, px.data(), Cg);
        src = px.data(), ps = Cg;
      }
      for (int64_t i = 0; i < ZW; ++i)
        for (int64_t qw = 0; qw < 2; ++qw) {
          const int64_t iw = 2 * i + qw - g.pl;
          T* d = zr + i * C4 + qw * Cg;
          if (iw < 0 || iw >= g.W)
            std::fill(d, d + Cg, T(0));
          else
            std::memcpy(d, src + iw * ps, Cg * sizeof(T));
        }
    }
  });
  return {z, ZH * ZW * C4, ZW * C4, C4, gsz};
}

template <typename T>
void winograd_forward_s2k4(const ConvGeometry& g, const Tensor& x, bool cl, const T* w,
                           const T* bias, T* y) {
  const int64_t Cg = g.Cg();
  Tensor zbuf;
  const Nhwc<T> zw = space_to_depth2<T>(g, x, cl, zbuf);
  winograd_groups<2, T>(zw, WinoTiles(g.N, g.OH, g.OW, 1), cl, g.G, 4 * Cg, g.OCg(),
                        [&](int64_t o, int64_t i, int64_t u, int64_t v) {
                          const int64_t q = i / Cg, c = i % Cg;
                          return w[((o * Cg + c) * 4 + 2 * u + q / 2) * 4 + 2 * v + q % 2];
                        },
                        bias, y);
}

// The weight gradient of the Winograd convolutions (x the input, gy the
// output gradient), through the same tiles: Y = A^T (U . V) A gives dU[xi] =
// sum over tiles of V[xi] (x) dM[xi], dM = A dY A^T, and dg = G^T dU G. Per
// item of 96 tiles V [xi][tile][i] (as the forward's) and dM [xi][tile][16-
// column blocks] are formed, then NX GEMMs add V[xi]^T dM[xi] (reduction
// over the item's tiles, 6 input channels x up to 64 output channels per
// micro-kernel call) into dU [xi][6-row block][column block][6][16].
// The core, for R = 3 (F(2x2, 3x3)) or 2 (F(2x2, 2x2)): the input through
// the NHWC view xw (read as tl says), grad_output through gw_ (both
// group-major), the weight gradient of group grp, channels (o, i), taps
// (kh, kw) handed to put(grp, o, i, kh, kw, value).
template <int R, typename T, typename Put>
void winograd_wgrad_core(const Kern<T>& K, const Nhwc<T>& xw, const Nhwc<T>& gw_,
                         const WinoTiles& tl, int64_t G, int64_t Cin, int64_t Cout,
                         const Put& put) {
  constexpr int A = R + 1, NX = A * A;
  const int64_t OH = tl.OH, OW = tl.OW, d = tl.d, NT = tl.NT;
  const int64_t ncb = ceil_div(Cout, kNR), OCp = ncb * kNR, nrb = ceil_div(Cin, kMR);
  const int64_t TB = 96;
  const int64_t nitems = ceil_div(NT, TB);
  const int64_t du_size = NX * nrb * ncb * kMR * kNR;
  // Units of work: S chunks of the tiles (up to 8, at least 4 items each,
  // their dU together in at most 32 MB of kept scratch; even) times X groups
  // of the NX transformed positions (X = 4 / S when S < 4: a group computes
  // the transforms of its chunk again, cheap where channels are many and dU
  // large). Fixed by the shapes: results do not depend on the thread count.
  int64_t S = std::min<int64_t>({8, std::max<int64_t>(1, nitems / 4),
                                 std::max<int64_t>(1, (int64_t(8) << 20) / du_size)});
  if (S > 1) S -= S % 2;
  const int64_t X = S >= 4 ? 1 : 4 / S;  // (groups of positions: NX / X or more each)
  const ScratchBuf<T> du(kWeightSlot, S * du_size);  // zeroed per unit below
  const int64_t vs = TB * Cin + 16, ms = TB * OCp + 16;
  const int64_t xsR = tl.step() * xw.sR, xsC = tl.step() * xw.sC;
  const int64_t gsR = d * gw_.sR, gsC = d * gw_.sC;
  for (int64_t grp = 0; grp < G; ++grp) {
    const T* xg = xw.p + grp * xw.sG;
    const T* gg = gw_.p + grp * gw_.sG;
    at::parallel_for(0, S * X, 1, [&](int64_t ub, int64_t ue) {
      const ScratchBuf<T> buf(kWinoSlot, NX * (vs + ms));
      T* V = buf.data();
      T* M = V + NX * vs;
      if (OCp > Cout)  // the padding columns of dM stay zero
        for (int64_t q = 0; q < NX * TB; ++q)
          std::fill(M + (q / TB) * ms + (q % TB) * OCp + Cout,
                    M + (q / TB) * ms + (q % TB + 1) * OCp, T(0));
      for (int64_t u = ub; u < ue; ++u) {
        const int64_t sc = u / X, xg_ = u % X, xi0 = NX * xg_ / X, xi1 = NX * (xg_ + 1) / X;
        T* dus = du.data() + sc * du_size;
        const int64_t per_xi = nrb * ncb * kMR * kNR;
        std::fill(dus + xi0 * per_xi, dus + xi1 * per_xi, T(0));
        for (int64_t item = nitems * sc / S; item < nitems * (sc + 1) / S; ++item) {
          const int64_t t0 = item * TB, nt = std::min(TB, NT - t0);
          for (int64_t t = 0; t < nt; ++t) {
            int64_t n, oh0, ow0, tw, ir, ic;
            tl.at(t0 + t, n, oh0, ow0, tw, ir, ic);
            const T* x0 = xg + n * xw.sN + ir * xw.sR + ic * xw.sC;
            if (R == 3)
              K.wino_in(x0, xsR, xsC, Cin, V + t * Cin, vs);
            else
              K.wino22_in(x0, xsR, xsC, Cin, V + t * Cin, vs);
            const int64_t nr = oh0 >= OH ? 0 : oh0 + d < OH ? 2 : 1;
            const int64_t nc = ow0 >= OW ? 0 : ow0 + d < OW ? 2 : 1;
            if (nr == 0 || nc == 0) {  // past a shorter phase's outputs: dM = 0
              for (int64_t xi = 0; xi < NX; ++xi)
                std::fill(M + xi * ms + t * OCp, M + xi * ms + t * OCp + Cout, T(0));
              continue;
            }
            const T* g0 = gg + n * gw_.sN + oh0 * gw_.sR + ow0 * gw_.sC;
            if (R == 3)
              K.wino_gout(g0, gsR, gsC, Cout, int(nr), int(nc), M + t * OCp, ms);
            else
              K.wino22_gout(g0, gsR, gsC, Cout, int(nr), int(nc), M + t * OCp, ms);
          }
          const int64_t zero = 0;
          for (int64_t xi = xi0; xi < xi1; ++xi)
            for (int64_t rb = 0; rb < nrb; ++rb) {
              const T* a[kMR];
              for (int64_t i = 0; i < kMR; ++i)
                a[i] = V + xi * vs + std::min(rb * kMR + i, Cin - 1);
              // up to K.wide column blocks a pass (their tiles are adjacent
              // in dU, tile_wide_acc's [nb][6][16]): 6 broadcasts and nb
              // loads for 6 nb FMAs instead of 6 and 1 for 6 (ms, one block
              // a pass / wide: 16x64->192 at 56x56 52.1 / 45.7, 16x128->64
              // 28.2 / 22.6, 8x128x28x28 6.8 / 5.9)
              for (int64_t cb = 0, nbw = 1; cb < ncb; cb += nbw) {
                nbw = wide_step(ncb - cb, K.wide);
                K.tile_wide_acc(a, &zero, M + xi * ms + cb * kNR, &zero, 1, nt, Cin, OCp,
                                (int)nbw, true, dus + ((xi * nrb + rb) * ncb + cb) * kMR * kNR);
              }
            }
        }
      }
    });
    if (S > 1) {  // the chunks' dU added in order, one pass over the elements
      T* dst = du.data();
      at::parallel_for(0, du_size, 4096, [&](int64_t b, int64_t e) {
        for (int64_t sc = 1; sc < S; ++sc) {
          const T* src = du.data() + sc * du_size;
          for (int64_t k = b; k < e; ++k) dst[k] += src[k];
        }
      });
    }
    // dg = G^T dU G; F(2x2, 3x3): G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2
    // 1/2 1], F(2x2, 2x2): G^T = [1 1 0; 0 1 1]
    at::parallel_for(0, Cout * Cin, 64, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) {
        const int64_t o = q / Cin, i = q % Cin, rb = i / kMR, r = i % kMR, cb = o / kNR,
                      j = o % kNR;
        T dd[4][4], rr[3][4];
        for (int xi = 0; xi < NX; ++xi)
          dd[xi / A][xi % A] = du[(((xi * nrb + rb) * ncb + cb) * kMR + r) * kNR + j];
        if (R == 2) {
          for (int c = 0; c < 3; ++c) rr[0][c] = dd[0][c] + dd[1][c], rr[1][c] = dd[1][c] + dd[2][c];
          for (int k = 0; k < 2; ++k) {
            put(grp, o, i, k, 0, rr[k][0] + rr[k][1]);
            put(grp, o, i, k, 1, rr[k][1] + rr[k][2]);
          }
          continue;
        }
        for (int c = 0; c < 4; ++c) {
          rr[0][c] = dd[0][c] + T(0.5) * (dd[1][c] + dd[2][c]);
          rr[1][c] = T(0.5) * (dd[1][c] - dd[2][c]);
          rr[2][c] = T(0.5) * (dd[1][c] + dd[2][c]) + dd[3][c];
        }
        for (int k = 0; k < 3; ++k) {
          put(grp, o, i, k, 0, rr[k][0] + T(0.5) * (rr[k][1] + rr[k][2]));
          put(grp, o, i, k, 1, T(0.5) * (rr[k][1] - rr[k][2]));
          put(grp, o, i, k, 2, T(0.5) * (rr[k][1] + rr[k][2]) + rr[k][3]);
        }
      }
    });
  }
}

template <typename T>
void winograd_wgrad(const Tensor& x, const Tensor& gy, bool cl, int64_t G, int64_t Cin,
                    int64_t Cout, int64_t OH, int64_t OW, int64_t d, int64_t pt, int64_t pl,
                    T* gw) {
  const WinoTiles tl(x.size(0), OH, OW, d);
  Tensor xbuf, gbuf;
  const Nhwc<T> xw = nhwc_window<T>(x, cl, -pt, OH + 4 * d, -pl, OW + 4 * d, false, xbuf, G);
  const Nhwc<T> gw_ = nhwc_window<T>(gy, cl, 0, OH, 0, OW, false, gbuf, G, kGradWindowSlot);
  winograd_wgrad_core<3, T>(Kern<T>(), xw, gw_, tl, G, Cin, Cout,
                            [&](int64_t grp, int64_t o, int64_t i, int kh, int kw, T v) {
                              gw[(((grp * Cout + o) * Cin + i) * 3 + kh) * 3 + kw] = v;
                            });
}

// The weight gradient of a 4x4, stride-2 convolution: that of the 2x2
// convolution over the space-to-depth z (see winograd_forward_s2k4), on
// F(2x2, 2x2) tiles, each (u, v, qh, qw, c) put back as tap (2u + qh, 2v + qw)
// of channel c.
template <typename T>
void winograd_wgrad_s2k4(const ConvGeometry& g, const Tensor& x, const Tensor& gy, bool cl,
                         T* gw) {
  const int64_t Cg = g.Cg(), OCg = g.OCg();
  Tensor zbuf, gbuf;
  const Nhwc<T> zw = space_to_depth2<T>(g, x, cl, zbuf);
  const Nhwc<T> gw_ =
      nhwc_window<T>(gy, cl, 0, g.OH, 0, g.OW, false, gbuf, g.G, kGradWindowSlot);
  winograd_wgrad_core<2, T>(Kern<T>(), zw, gw_, WinoTiles(g.N, g.OH, g.OW, 1), g.G, 4 * Cg, OCg,
                            [&](int64_t grp, int64_t o, int64_t i, int u, int v, T val) {
                              const int64_t q = i / Cg, c = i % Cg;
                              gw[(((grp * OCg + o) * Cg + c) * 4 + 2 * u + q / 2) * 4 + 2 * v +
                                 q % 2] = val;
                            });
}

// ---------------------------------------------------------- data gradient

// grad x (or conv_transpose2d's output, plus `bias` over its channels).
// skip_rh, skip_rw: one stride phase left out (computed elsewhere); pm:
// gx written pixel-major (channels_last order) whatever cl says.
template <typename T>
void conv_dgrad(const ConvGeometry& g, const Tensor& gy, bool cl, const T* w, const T* bias,
                T* gx, int64_t skip_rh, int64_t skip_rw, bool pm) {
  const Kern<T> K;
  const int64_t Cg = g.Cg(), OCg = g.OCg(), KK = g.KH * g.KW;
  // output rows / cols any input pixel reads (through any tap)
  const int64_t oh_lo = floor_div(g.pt - (g.KH - 1) * g.dh, g.sh);
  const int64_t oh_hi = floor_div(g.H - 1 + g.pt, g.sh);
  const int64_t ow_lo = floor_div(g.pl - (g.KW - 1) * g.dw, g.sw);
  const int64_t ow_hi = floor_div(g.W - 1 + g.pl, g.sw);
  Tensor gbuf;
  // channels_last with one group and tap-grouped columns: read in place, as
  // the forward does (every tap of every pixel group reads an existing
  // grad_output pixel). Two threads, copy -> in place, ms: 3x3 stride 2
  // 4.1-4.2 -> 3.7; conv_transpose2d stride 2 3x3 4.2-4.3 -> 3.7, 4x4 6.4-6.5
  // -> 5.8-5.9, 2x2 2.0 -> 1.8-1.9; 1x1 256->64 4-5 %; NiN's 5x5 2-4 %.
  // Dilated layers keep the copy (1-2 % slower in place, forward too).
  const Nhwc<T> gp =
      nhwc_window<T>(gy, cl, oh_lo, oh_hi - oh_lo + 1, ow_lo, ow_hi - ow_lo + 1, false, gbuf,
                     g.G, kWindowSlot, g.dh == 1 && g.dw == 1 && group_columns(KK * OCg));

  // transposed weights packed as [G][column block][kh][kw][oc][16 input channels].
  // With unit stride and dilation along the width, the kw taps of a kernel
  // row read consecutive grad_output pixels (kw descending), whose (pixel,
  // oc) values are contiguous in the (group-major) NHWC window: packed in
  // descending kw, a kernel row runs as one reduction of (kw range) x OCg
  // steps, as in the forward (64-channel layers: 3 runs of 192 instead of 9
  // of 64).
  const bool merged = g.sw == 1 && g.dw == 1;
  const int64_t ncb = ceil_div(Cg, kNR), blk = KK * OCg * kNR;
  const ScratchBuf<T> wp(kWeightSlot, g.G * ncb * blk);  // every value written below
  at::parallel_for(0, g.G * ncb, 1, [&](int64_t b, int64_t e) {
    for (int64_t gc = b; gc < e; ++gc) {
      const int64_t grp = gc / ncb, cb = gc % ncb;
      T* d = wp.data() + gc * blk;
      for (int64_t t = 0; t < KK; ++t) {
        const int64_t src = merged ? t / g.KW * g.KW + (g.KW - 1 - t % g.KW) : t;
        for (int64_t oc = 0; oc < OCg; ++oc)
          for (int64_t j = 0; j < kNR; ++j) {
            const int64_t c = cb * kNR + j;
            *d++ = c < Cg ? w[((grp * OCg + oc) * Cg + c) * KK + src] : T(0);
          }
      }
    }
  });

  // Stride phases: the input pixels (rh + th * sh, rw + tw * sw) of a phase
  // are reached by the taps kh with (rh + pt - kh * dh) a multiple of sh (and
  // kw likewise), each from output pixel (th + vh / sh, tw + vw / sw). Within
  // a phase, pixels are grouped by the taps whose output pixel exists.
  // NCHW with stride phases and reductions of 256+ steps a phase: the tiles
  // are computed into a channels_last staging copy, a block of images at a
  // time, then transposed into the planes. Written in place, a tile's six
  // pixels are every sw-th element of a row in 16 planes, and each cache
  // line of the output is written by sw phases at different times. Two
  // threads, interleaved, ms in place / staged: conv_transpose2d 128->64 at
  // 8x28x28, stride 2, 3x3 5.97 / 4.90, 4x4 7.96 / 7.03; the stride-2 3x3
  // data gradient 128->64 at 56x56 6.22 / 4.97. With 128 steps a phase
  // (2x2 stride 2) staging was 10-15 % slower: the transposes cost more
  // than the short tiles' scattered stores.
  const bool stage =
      !cl && !pm && (g.sh > 1 || g.sw > 1) && KK * OCg >= 256 * g.sh * g.sw && g.C > 0;
  const bool ocl = cl || stage || pm;  // outputs pixel-major
  std::vector<PixelGroup> groups;
  // the taps of one axis reaching phase r at grid index t: (k, v / s) pairs,
  // only those whose output index lies in [0, out) unless `all`
  auto axis_taps = [](int64_t r, int64_t t, int64_t s, int64_t p, int64_t d, int64_t K,
                      int64_t out, bool all) {
    std::vector<int64_t> v;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t vk = r + p - k * d;
      if (((vk % s) + s) % s != 0) continue;
      const int64_t o = t + floor_div(vk, s);
      if (all || (o >= 0 && o < out)) v.push_back(k), v.push_back(floor_div(vk, s));
    }
    return v;
  };
  for (int64_t rh = 0; rh < std::min(g.sh, g.H); ++rh)
    for (int64_t rw = 0; rw < std::min(g.sw, g.W); ++rw) {
      if (rh == skip_rh && rw == skip_rw) continue;
      const int64_t TH = ceil_div(g.H - rh, g.sh), TW = ceil_div(g.W - rw, g.sw);
      std::vector<std::vector<int64_t>> rkey(TH), ckey(TW);
      // (without column groups, every tap of the phase for every column)
      const bool all_cols = !group_columns(KK * OCg);
      for (int64_t th = 0; th < TH; ++th)
        rkey[th] = axis_taps(rh, th, g.sh, g.pt, g.dh, g.KH, g.OH, false);
      for (int64_t tw = 0; tw < TW; ++tw)
        ckey[tw] = axis_taps(rw, tw, g.sw, g.pl, g.dw, g.KW, g.OW, all_cols);
      for (const auto& rg : group_by_key(rkey))
        for (const auto& cg : group_by_key(ckey)) {
          PixelGroup pg;
          pg.len = OCg;
          for (int64_t th : rg) {
            const int64_t ih = rh + th * g.sh;
            pg.a_r.push_back(th * gp.sR), pg.o_r.push_back(ih * g.W * (ocl ? g.C : 1));
          }
          for (int64_t tw : cg) {
            const int64_t iw = rw + tw * g.sw;
            pg.a_c.push_back(tw * gp.sC), pg.o_c.push_back(iw * (ocl ? g.C : 1));
          }
          const auto &hs = rkey[rg[0]], &ws = ckey[cg[0]];
          if (merged && !ws.empty()) {  // ws: kw ascending, output column descending
            const int64_t kw_hi = ws[ws.size() - 2], v_lo = ws.back(), nkw = (int64_t)ws.size() / 2;
            for (size_t i = 0; i < hs.size(); i += 2) {
              pg.a_off.push_back((hs[i + 1] - oh_lo) * gp.sR + (v_lo - ow_lo) * gp.sC);
              pg.b_off.push_back((hs[i] * g.KW + g.KW - 1 - kw_hi) * OCg * kNR);
            }
            pg.len = nkw * OCg;
          } else {
            for (size_t i = 0; i < hs.size(); i += 2)
              for (size_t j = 0; j < ws.size(); j += 2) {
                pg.a_off.push_back((hs[i + 1] - oh_lo) * gp.sR + (ws[j + 1] - ow_lo) * gp.sC);
                pg.b_off.push_back((hs[i] * g.KW + ws[j]) * OCg * kNR);
              }
          }
          groups.push_back(std::move(pg));
        }
    }

  const std::vector<T> bpad = padded_bias(bias, g.G, Cg, ncb);
  const int64_t HW = g.H * g.W;
  // images [n0, n0 + nn) into dst (pixel-major where ocl)
  auto run = [&](int64_t n0, int64_t nn, T* dst) {
    run_pixel_groups<T>(
        K, nn, g.G, groups, ncb, wp.data(), blk,
        PixelLayout<T>{gp.p + n0 * gp.sN, gp.sN, gp.sG, g.C * HW, ocl ? Cg : Cg * HW, dst,
                       ocl ? 1 : HW},
        [&](int64_t grp, int64_t cb, int64_t rows, const int64_t* off, const T* v) {
          const int64_t ncols = std::min<int64_t>(kNR, Cg - cb * kNR), cs = ocl ? 1 : HW;
          store_tile(dst + cb * kNR * cs, cs, ncols, rows, off, bpad.data() + (grp * ncb + cb) * kNR,
                     v);
        });
  };
  if (!stage) {
    run(0, g.N, gx);
    return;
  }
  // a block of images at a time, about 2 MB of staging per thread (at most
  // the kept scratch's 32 MB), so that the transposes read it from the caches
  const int64_t img = HW * g.C * int64_t(sizeof(T));
  const int64_t nbk = std::clamp<int64_t>(
      std::min(at::get_num_threads() * ((int64_t(2) << 20) / img), kScratchCacheBytes / img), 1, g.N);
  const ScratchBuf<T> sbuf(kStageSlot, nbk * HW * g.C);
  for (int64_t n0 = 0; n0 < g.N; n0 += nbk) {
    const int64_t nn = std::min(nbk, g.N - n0);
    run(n0, nn, sbuf.data());
    pixels_to_planes(K, sbuf.data(), nn, HW, g.C, gx + n0 * g.C * HW);
  }
}

// -------------------------------------------------------- weight gradient

// The end of a weight gradient computed as rows [oc][(kh, kw, c)] (the
// columns in the input's order) in gw and the other pixel splits' sums in
// partial (ksplit - 1 of gw's size): the splits added in order, per element,
// then each row permuted to gw's [c][kh][kw].
template <typename T>
void finish_wgrad(const ConvGeometry& g, T* gw, const std::vector<T>& partial, int64_t ksplit) {
  const int64_t Cg = g.Cg(), KK = g.KH * g.KW, wsize = g.OC * Cg * KK;
  if (ksplit > 1) {
    at::parallel_for(0, wsize, 16384, [&](int64_t b, int64_t e) {
      for (int64_t s2 = 1; s2 < ksplit; ++s2) {
        const T* src = partial.data() + (s2 - 1) * wsize;
        for (int64_t i = b; i < e; ++i) gw[i] += src[i];
      }
    });
  }
  if (KK > 1) {
    at::parallel_for(0, g.OC, 8, [&](int64_t b, int64_t e) {
      std::vector<T> row(Cg * KK);
      for (int64_t oc = b; oc < e; ++oc) {
        T* wr = gw + oc * Cg * KK;
        std::memcpy(row.data(), wr, Cg * KK * sizeof(T));
        for (int64_t t = 0; t < KK; ++t)  // column (t, c) of the row to c * KK + t
          for (int64_t c = 0; c < Cg; ++c) wr[c * KK + t] = row[t * Cg + c];
      }
    });
  }
}

// The weight gradient vectorised along output channels (AVX-512 float32,
// output channels per group a multiple of 16):
//   gw[oc][(kh, kw, c)] = sum over output pixels of gy[pixel][oc] * x[pixel's (kh, kw) input][c]
// with grad_output as the 16-wide operand, packed per chunk of output rows
// into [pixel][up to 64 channels] panels (copied from channels_last,
// transposed from the NCHW planes: never a whole transposed copy), and the
// input's zero-bordered NHWC window as the broadcast one, read in place:
// tile_wide_acc's 6 columns are 6 consecutive (kh, kw, c) of the window, each
// stepping sw pixels along an output row, against up to 4 blocks of 16
// output channels (10 loads per 24 FMAs; the GEMM-shaped path below packs
// both operands and loads 14 per 24). Taps: output rows (n, oh), OW steps
// each, in chunks of about 128 pixels (a 32 KB panel per 4 blocks, kept in
// L1 while every column tile of the work item reads it). Each value sums
// its pixels in row order within a pixel split; the splits (a count fixed
// by the shapes) are added in order: results repeat bit for bit whatever
// the number of threads, which only cut the column tiles.
template <typename T>
void conv_wgrad_oc(const ConvGeometry& g, const Tensor& gy, const Tensor& x, bool cl, T* gw,
                   T* gb) {
  const Kern<T> K;
  const int64_t Cg = g.Cg(), OCg = g.OCg(), KK = g.KH * g.KW;
  const int64_t R = (g.OH - 1) * g.sh + (g.KH - 1) * g.dh + 1;
  const int64_t Cn = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1;
  Tensor xbuf;
  const Nhwc<T> xp = nhwc_window<T>(x, cl, -g.pt, R, -g.pl, Cn, false, xbuf, g.G);
  const T* gyp = gy.data_ptr<T>();
  const int64_t ncolumns = Cg * KK, nct = ceil_div(ncolumns, kMR), nob = OCg / kNR;
  std::vector<int64_t> coff(nct * kMR);  // column q = (kh, kw, c): its offset in the window
  for (int64_t q = 0; q < nct * kMR; ++q) {
    const int64_t qq = std::min(q, ncolumns - 1);  // (a short last tile repeats its last column)
    const int64_t t = qq / Cg, c = qq % Cg;
    coff[q] = (t / g.KW) * g.dh * xp.sR + (t % g.KW) * g.dw * xp.sC + c;
  }
  // blocks of 16 output channels in groups of up to 4 (6 as 3 + 3, as the
  // forward's wide tiles): {first block, blocks}
  std::vector<std::array<int64_t, 2>> ogs;
  for (int64_t ob = 0, nb = 1; ob < nob; ob += nb) {
    nb = wide_step(nob - ob, 4);
    ogs.push_back({ob, nb});
  }
  const int64_t nrows = g.N * g.OH, wsize = g.OC * ncolumns;
  // chunk: rows of about 128 pixels (a 4-block grad_output panel of 32 KB,
  // which stays in L1 across the column tiles; 64, 256 and 512 measured no
  // better on NiN's 5x5, AlexNet's 3x3 and ResNet's 14x14 and 7x7 layers;
  // nor did padding the input window's pixels off multiples of 256 bytes)
  const int64_t crow =
      std::clamp<int64_t>(128 / std::max<int64_t>(1, g.OW), 1, std::max<int64_t>(1, nrows));
  // Work items: pixel splits (a count fixed by the shapes) x column ranges
  // (one per thread). Every column range packs the grad_output of its pixels
  // again, every split but the first adds a copy of the gradient to sum at the
  // end: splits where grad_output is large beside the gradient (first
  // layers: a 7x7 stem's 25.7 MB against 38 KB), column ranges elsewhere
  // (NiN's 5x5: 11 MB against 2.5 MB).
  const int64_t ksplit = std::clamp<int64_t>(
      std::min(gy.numel() / std::max<int64_t>(1, 4 * wsize), ceil_div(nrows, crow)), 1, 8);
  const int64_t ncr = std::clamp<int64_t>(ceil_div(at::get_num_threads(), g.G * ksplit), 1,
                                          std::max<int64_t>(1, nct));  // (nct 0: no input channels)
  std::vector<T> partial((ksplit - 1) * wsize);  // (every value written below)
  // the bias gradient (gb not null): per pixel split, the sums of the packed
  // panels of its first column range, per chunk in float, across chunks in
  // double; the splits added in order at the end (torch's oneDNN path
  // computes it inside its weight gradient; a separate pass over an NCHW
  // 16x96x54x54 grad_output took 1.4 ms, 8 % of that layer's weight gradient)
  std::vector<double> bpart(gb != nullptr ? ksplit * g.OC : 0, 0.0);
  float zero16[kNR];  // -0: x + (-0) is x, zeros' signs included
  std::fill(zero16, zero16 + kNR, -0.0f);
  at::parallel_for(0, g.G * ksplit * ncr, 1, [&](int64_t b, int64_t e) {
    // acc: per channel group (ob, nb), per column tile, nb x [6][16]; gpk: the
    // chunk's grad_output per channel group, [pixel][nb * 16]
    const ScratchBuf<T> acc(kWinoSlot, (ceil_div(nct, ncr) + 1) * nob * kMR * kNR);
    std::vector<T> gpk(crow * g.OW * OCg);
    std::vector<int64_t> aoff(crow), boff(crow);
    const T* ap[kMR];
    for (int64_t item = b; item < e; ++item) {
      const int64_t grp = item / (ksplit * ncr), sp = (item / ncr) % ksplit, cr = item % ncr;
      const int64_t c_lo = nct * cr / ncr, c_hi = nct * (cr + 1) / ncr, nci = c_hi - c_lo;
      const int64_t r_lo = nrows * sp / ksplit, r_hi = nrows * (sp + 1) / ksplit;
      T* dst = sp == 0 ? gw : partial.data() + (sp - 1) * wsize;
      const T* xb = xp.p + grp * xp.sG;
      if (r_lo == r_hi) std::fill(acc.data(), acc.data() + nci * nob * kMR * kNR, T(0));  // (no pixels)
      for (int64_t r0 = r_lo; r0 < r_hi; r0 += crow) {
        const int64_t nt = std::min(crow, r_hi - r0), npix = nt * g.OW;
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t n = (r0 + t) / g.OH, oh = (r0 + t) % g.OH;
          aoff[t] = n * xp.sN + oh * g.sh * xp.sR;
          for (const auto& og : ogs) {  // the row's pixels into each group's panel
            const int64_t w = og[1] * kNR, oc0 = grp * OCg + og[0] * kNR;
            T* d = gpk.data() + og[0] * kNR * npix + t * g.OW * w;
            if (cl) {
              const T* src = gyp + ((n * g.OH + oh) * g.OW) * g.OC + oc0;
              for (int64_t ow = 0; ow < g.OW; ++ow)
                std::memcpy(d + ow * w, src + ow * g.OC, w * sizeof(T));
            } else {  // from the planes (no transposed copy of the whole gradient)
              K.transpose(gyp + (n * g.OC + oc0) * g.OH * g.OW + oh * g.OW, g.OH * g.OW, w, g.OW,
                          d, w);
            }
          }
        }
        if (gb != nullptr && cr == 0) {
          for (const auto& og : ogs) {
            const int64_t w = og[1] * kNR;
            const T* pn = gpk.data() + og[0] * kNR * npix;
            T sum[4 * kNR] = {};
            for (int64_t q = 0; q < npix; ++q)
              for (int64_t c = 0; c < w; ++c) sum[c] += pn[q * w + c];
            double* bp = bpart.data() + sp * g.OC + grp * OCg + og[0] * kNR;
            for (int64_t c = 0; c < w; ++c) bp[c] += sum[c];
          }
        }
        for (const auto& og : ogs) {
          const int64_t w = og[1] * kNR;
          for (int64_t t = 0; t < nt; ++t) boff[t] = t * g.OW * w;
          const T* panel = gpk.data() + og[0] * kNR * npix;
          T* accg = acc.data() + og[0] * nci * kMR * kNR;
          for (int64_t ct = c_lo; ct < c_hi; ++ct) {
            for (int i = 0; i < kMR; ++i) ap[i] = xb + coff[ct * kMR + i];
            K.tile_wide_acc(ap, aoff.data(), panel, boff.data(), nt, g.OW, g.sw * xp.sC, w,
                            (int)og[1], r0 > r_lo, accg + (ct - c_lo) * og[1] * kMR * kNR);
          }
        }
      }
      for (const auto& og : ogs)  // into rows [oc][column]
        for (int64_t ct = c_lo; ct < c_hi; ++ct)
          for (int64_t q = 0; q < og[1]; ++q) {
            const T* tv = acc.data() + (og[0] * nci + (ct - c_lo) * og[1] + q) * kMR * kNR;
            T* wr = dst + (grp * OCg + (og[0] + q) * kNR) * ncolumns + ct * kMR;
            if constexpr (std::is_same<T, float>::value) {
              if (ct * kMR + kMR <= ncolumns) {  // 2 stores a row (4 + 2 values)
                conv::avx512::store_cols6(tv, zero16, wr, ncolumns, kNR);
                continue;
              }
            }
            for (int64_t j = 0; j < kNR; ++j)
              for (int64_t i = 0; i < kMR && ct * kMR + i < ncolumns; ++i)
                wr[j * ncolumns + i] = tv[i * kNR + j];
          }
    }
  });
  finish_wgrad(g, gw, partial, ksplit);
  if (gb != nullptr)
    for (int64_t c = 0; c < g.OC; ++c) {
      double acc = 0;
      for (int64_t s2 = 0; s2 < ksplit; ++s2) acc += bpart[s2 * g.OC + c];
      gb[c] = (T)acc;
    }
}

// The weight gradient through packed GEMM panels (where conv_wgrad_oc does
// not apply): the product gw[oc][(kh, kw, c)] = sum over output pixels p of
// gy[p][oc] * x[p + tap][c], reduced in chunks of kc pixels. Per chunk the
// gradient rows are packed into 6-wide panels ([rb][k][6], all of them, kept
// in L2) and, one column block at a time, the input columns into a 16-wide
// panel ([k][16], kept in L1); the micro-kernel then runs every 6-row block
// against that panel with unit-stride reads. Packing both sides avoids the
// strided, cache-set-conflicting reads of the unpacked operands.
// Work items: (group, reduction split, column range). Each output value is
// summed by one item per split, the splits (a fixed count that depends on
// the shapes only) are added in order: results repeat bit for bit.
template <typename T>
bool conv_wgrad(const ConvGeometry& g, const Tensor& gy, const Tensor& x, bool cl, T* gw,
                T* gb = nullptr) {
  const Kern<T> K;
  if (K.avx512 && g.OCg() % kNR == 0 && use_wgrad_oc()) {
    conv_wgrad_oc<T>(g, gy, x, cl, gw, gb);
    return gb != nullptr;
  }
  const int64_t Cg = g.Cg(), OCg = g.OCg(), KK = g.KH * g.KW;
  const int64_t R = (g.OH - 1) * g.sh + (g.KH - 1) * g.dh + 1;
  const int64_t Cn = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1;
  Tensor xbuf;
  const Nhwc<T> xp = nhwc_window<T>(x, cl, -g.pt, R, -g.pl, Cn, false, xbuf, g.G);
  const int64_t HWo = g.OH * g.OW;

  // The reduction columns, all (kh, kw, c) of one group, in the order the
  // input holds them: each kernel row's (kw, c) run is contiguous in the
  // (group-major) NHWC window when dw == 1. Per column: its offset from a pixel's base and its index
  // in gw's [c][kh][kw]. A block takes 16 consecutive columns, gathered as
  // runs of consecutive offsets (a block may span two kernel rows, so a
  // 3-channel 11x11 kernel needs 23 blocks, not 33).
  std::vector<int64_t> src_off;
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw)
      for (int64_t c = 0; c < Cg; ++c) src_off.push_back(kh * g.dh * xp.sR + kw * g.dw * xp.sC + c);
  struct Seg {
    int64_t pos, off, len;  // columns [pos, pos + len) of a block read from off..off + len
  };
  struct Col {
    int64_t first, ncols, seg0, nseg;
  };
  std::vector<Seg> segs;
  std::vector<Col> cols;
  const int64_t ncolumns = (int64_t)src_off.size();
  for (int64_t first = 0; first < ncolumns; first += kNR) {
    const int64_t n = std::min<int64_t>(kNR, ncolumns - first);
    Col col{first, n, (int64_t)segs.size(), 0};
    for (int64_t j = 0; j < n; ++j) {
      if (j > 0 && src_off[first + j] == src_off[first + j - 1] + 1) {
        ++segs.back().len;
      } else {
        segs.push_back({j, src_off[first + j], 1});
        ++col.nseg;
      }
    }
    cols.push_back(col);
  }
  const int64_t ncol = (int64_t)cols.size(), nrb = ceil_div(OCg, kMR);
  const int64_t P = g.N * g.OH * g.OW, wsize = g.OC * Cg * KK;
  // chunk: the packed gradient panel (nrb x 6 x kc values) up to 128 KB of
  // float32. On the old AVX2 machine 256 KB did 2-5 % better than 128 KB;
  // with the AVX-512 kernel reading two 16-column panels at once (2 x kc x
  // 64 B, beside two 6-row panels of kc x 24 B), 128 KB keeps them in the
  // 48 KB L1 for 192+ channels: AlexNet's 5x5 weight gradient on one
  // thread 70 -> 63 ms, 0-7 % on two threads (interleaved runs).
  const int64_t kc = std::clamp<int64_t>(32768 / (nrb * kMR), 64, 512);
  // Splits of the pixel range (a count fixed by the shapes, never by the
  // thread count, so that the sums repeat bit for bit): enough for 8 work
  // items when there are few column blocks, and, with at most 32 column
  // blocks, one per 8 chunks of a long reduction. Splitting columns instead
  // (below) makes every item pack the same grad_output panel again, which
  // costs about 1 / (its column blocks) of its tiles: with 4 column groups of
  // a 7x7 stem's 10 blocks over 100k pixels, as much as the tiles (stem
  // weight gradients: 7x7 25-27 -> 17-18 ms, AlexNet's 11x11 (23 blocks)
  // 20-22 -> 17 ms, NiN's 27-29 -> 22-23 ms). With many column blocks the
  // repacking costs little, while each split adds a copy of the whole
  // gradient to sum at the end.
  const int64_t ks_cols = g.G * ncol >= 8 ? 1 : std::min(ceil_div(8, g.G * ncol), P / (4 * kc));
  const int64_t ks_pix = ncol <= 32 ? P / (8 * kc) : 1;
  const int64_t ksplit = std::clamp<int64_t>(std::max(ks_cols, ks_pix), 1, 8);
  const int64_t ncg = std::min<int64_t>(
      ncol, std::max<int64_t>(1, ceil_div(2 * at::get_num_threads(), g.G * ksplit)));
  // grad_output: channels_last is read in place. NCHW: when each chunk's
  // panel is packed once (one column group), straight from the planes (a
  // chunk's pixels are contiguous in each; for a 7x7 stem that saves
  // transposing 26 MB per call); when several column groups each pack it,
  // from one NHWC copy (24-byte rows instead of stride-6 element copies:
  // VGG's 64-channel layers lost time to the repeated element copies).
  Tensor gbuf;
  const bool planar = !cl && ncg == 1;
  const Nhwc<T> gp = planar ? Nhwc<T>{}
                            : nhwc_window<T>(gy, cl, 0, g.OH, 0, g.OW, false, gbuf, 1,
                                             kGradWindowSlot);
  const T* gplanes = planar ? gy.data_ptr<T>() : nullptr;
  std::fill(gw, gw + wsize, T(0));  // (every value is written below unless P == 0)
  std::vector<T> partial((ksplit - 1) * wsize, T(0));

  at::parallel_for(0, g.G * ksplit * ncg, 1, [&](int64_t b, int64_t e) {
    std::vector<T> Ap(nrb * kMR * kc), Bp(2 * kc * kNR), acc;  // acc: [col][rb][6][16]
    std::vector<int64_t> xo(kc), go(kc);
    const T* ap[kMR];
    const int64_t zero = 0;
    for (int64_t item = b; item < e; ++item) {
      const int64_t grp = item / (ksplit * ncg), sp = (item / ncg) % ksplit, cg = item % ncg;
      const int64_t c_lo = ncol * cg / ncg, c_hi = ncol * (cg + 1) / ncg;
      const int64_t p_lo = P * sp / ksplit, p_hi = P * (sp + 1) / ksplit;
      T* dst = sp == 0 ? gw : partial.data() + (sp - 1) * wsize;
      acc.assign((c_hi - c_lo) * nrb * kMR * kNR, T(0));
      for (int64_t p0 = p_lo; p0 < p_hi; p0 += kc) {
        const int64_t n = std::min(kc, p_hi - p0);
        // pixel bases of the chunk, walking (image, row, column)
        int64_t img = p0 / HWo, oh = (p0 / g.OW) % g.OH, ow = p0 % g.OW;
        for (int64_t k = 0; k < n; ++k) {
          xo[k] = img * xp.sN + oh * g.sh * xp.sR + ow * g.sw * xp.sC + grp * xp.sG;
          go[k] = img * gp.sN + oh * gp.sR + ow * gp.sC + grp * OCg;
          if (++ow == g.OW) {
            ow = 0;
            if (++oh == g.OH) oh = 0, ++img;
          }
        }
        for (int64_t rb = 0; rb < nrb; ++rb) {
          const int64_t rows = std::min<int64_t>(kMR, OCg - rb * kMR);
          T* a = Ap.data() + rb * kc * kMR;
          if (gplanes != nullptr) {  // NCHW: row i of the panel from plane oc, one run per image
            for (int64_t i = 0; i < kMR; ++i) {
              if (i >= rows) {
                for (int64_t k = 0; k < n; ++k) a[k * kMR + i] = T(0);
                continue;
              }
              for (int64_t k = 0, pp = p0; k < n;) {
                const int64_t im = pp / HWo, off = pp - im * HWo, len = std::min(n - k, HWo - off);
                const T* src = gplanes + (im * g.OC + grp * OCg + rb * kMR + i) * HWo + off;
                for (int64_t q = 0; q < len; ++q) a[(k + q) * kMR + i] = src[q];
                k += len;
                pp += len;
              }
            }
          } else if (rows == kMR) {
            for (int64_t k = 0; k < n; ++k) std::memcpy(a + k * kMR, gp.p + go[k] + rb * kMR, kMR * sizeof(T));
          } else {
            for (int64_t k = 0; k < n; ++k) {
              const T* src = gp.p + go[k] + rb * kMR;
              for (int64_t i = 0; i < kMR; ++i) a[k * kMR + i] = i < rows ? src[i] : T(0);
            }
          }
        }
        // input column block ci packed into bp ([k][16])
        auto pack = [&](int64_t ci, T* __restrict bp) {
          const Col& cs = cols[ci];
          const Seg* sg = segs.data() + cs.seg0;
          if (cs.nseg == 1 && cs.ncols == kNR) {
            const int64_t o0 = sg[0].off;
            for (int64_t k = 0; k < n; ++k) std::memcpy(bp + k * kNR, xp.p + xo[k] + o0, kNR * sizeof(T));
          } else if (cs.nseg == 2 && cs.ncols == kNR) {
            // A block spanning two kernel rows (e.g. 3-channel stems): run 0
            // fills [0, p1), run 1 [p1, 16). Sixteen values from run 0's
            // start and sixteen ending at run 1's end, both inside the span
            // of the two runs, merged by position: fixed-length, vectorised
            // (element loops per run cost as much as the tiles here).
            const int64_t o0 = sg[0].off, p1 = sg[1].pos, o1 = sg[1].off + sg[1].len - kNR;
            for (int64_t k = 0; k < n; ++k) {
              const T* __restrict src = xp.p + xo[k];
              T* __restrict d = bp + k * kNR;
              for (int j = 0; j < kNR; ++j) d[j] = j < p1 ? src[o0 + j] : src[o1 + j];
            }
          } else {
            for (int64_t k = 0; k < n; ++k) {
              const T* src = xp.p + xo[k];
              T* d = bp + k * kNR;
              for (int64_t q = 0; q < cs.nseg; ++q) {  // short runs: no library call
                const T* s = src + sg[q].off;
                T* dd = d + sg[q].pos;
                for (int64_t j = 0; j < sg[q].len; ++j) dd[j] = s[j];
              }
              for (int64_t j = cs.ncols; j < kNR; ++j) d[j] = T(0);
            }
          }
        };
        // AVX-512: two column blocks at a time (panels12x2: each broadcast
        // of a gradient value serves both)
        for (int64_t ci = c_lo, nc = 1; ci < c_hi; ci += nc) {
          nc = K.avx512 && K.wide >= 2 && ci + 1 < c_hi ? 2 : 1;
          for (int64_t q = 0; q < nc; ++q) pack(ci + q, Bp.data() + q * kc * kNR);
          for (int64_t rb = 0; rb < nrb; ++rb) {
            // Slice rb of the lines the next column block packs (its first
            // and last value per pixel): pixels are a channel row apart, 1 KB
            // for 256 channels, and the block reads 64 B of each. Forward +
            // weight gradient, channels_last 1x1 256->64 at batch 8:
            // 12.9 -> 12.0 ms (NCHW 3x3 64ch 27.9 -> 27.3; 128ch 28x28 and
            // the 7x7 stem unchanged).
            for (int64_t q = 0; q < nc && ci + nc + q < c_hi; ++q) {
              const Col& nx = cols[ci + nc + q];
              const Seg* ns = segs.data() + nx.seg0;
              const int64_t first = ns[0].off, last = ns[nx.nseg - 1].off + ns[nx.nseg - 1].len - 1;
              for (int64_t k = n * rb / nrb; k < n * (rb + 1) / nrb; ++k) {
                prefetch_line(xp.p + xo[k] + first);
                prefetch_line(xp.p + xo[k] + last);
              }
            }
            if (K.avx512 && rb % 2 == 1) continue;  // ran with the block before
            T* out0 = acc.data() + ((ci - c_lo) * nrb + rb) * kMR * kNR;
            if (K.avx512 && rb + 1 < nrb) {
              // two row blocks in one 12-row kernel (their tiles are adjacent in acc)
              if (nc == 2) {
                if constexpr (std::is_same<T, float>::value)
                  conv::avx512::panels12x2(Ap.data() + rb * kc * kMR, Ap.data() + (rb + 1) * kc * kMR,
                                           Bp.data(), Bp.data() + kc * kNR, n, out0,
                                           out0 + nrb * kMR * kNR);
                continue;
              }
              const T* ap12[2 * kMR];
              for (int i = 0; i < 2 * kMR; ++i)
                ap12[i] = Ap.data() + (rb + i / kMR) * kc * kMR + i % kMR;
              K.tile12_add(ap12, &zero, Bp.data(), &zero, 1, n, kMR, kNR, out0);
              continue;
            }
            for (int i = 0; i < kMR; ++i) ap[i] = Ap.data() + rb * kc * kMR + i;
            for (int64_t q = 0; q < nc; ++q)
              K.tile_add(ap, &zero, Bp.data() + q * kc * kNR, &zero, 1, n, kMR, kNR,
                         out0 + q * nrb * kMR * kNR);
          }
        }
      }
      // the item's tiles into rows of the columns' order [oc][(kh, kw, c)]
      // (contiguous stores; permuted to gw's [oc][c][kh][kw] at the end: a
      // scatter straight to [c][kh][kw] here took as long as the tiles for a
      // 512-channel 3x3 layer, every 16-column block touching 9 lines of
      // each row)
      for (int64_t ci = c_lo; ci < c_hi; ++ci) {
        const Col& cs = cols[ci];
        for (int64_t rb = 0; rb < nrb; ++rb) {
          const T* t = acc.data() + ((ci - c_lo) * nrb + rb) * kMR * kNR;
          const int64_t rows = std::min<int64_t>(kMR, OCg - rb * kMR);
          for (int64_t i = 0; i < rows; ++i) {
            T* __restrict wr = dst + (grp * OCg + rb * kMR + i) * Cg * KK + cs.first;
            const T* __restrict tv = t + i * kNR;
            if (cs.ncols == kNR) {
              for (int j = 0; j < kNR; ++j) wr[j] = tv[j];  // (a library call per row cost 5 %)
            } else {
              for (int64_t j = 0; j < cs.ncols; ++j) wr[j] = tv[j];
            }
          }
        }
      }
    }
  });
  finish_wgrad(g, gw, partial, ksplit);
  return false;
}

// ---------------------------------------------------------- bias gradient

template <typename T>
void bias_grad(const Tensor& gy, bool cl, T* gb) {
  const int64_t N = gy.size(0), C = gy.size(1), S = gy.size(2) * gy.size(3);
  const T* p = gy.data_ptr<T>();
  if (!cl) {
    at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        double acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          const T* s = p + (n * C + c) * S;
          T part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          int64_t k = 0;
          for (; k + 8 <= S; k += 8)
            for (int l = 0; l < 8; ++l) part[l] += s[k + l];
          for (; k < S; ++k) part[k & 7] += s[k];
          for (int l = 0; l < 8; ++l) acc += part[l];
        }
        gb[c] = (T)acc;
      }
    });
    return;
  }
  const int64_t rows = N * S, nblk = std::min<int64_t>(64, std::max<int64_t>(1, rows));
  std::vector<double> part(nblk * C, 0.0);
  at::parallel_for(0, nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<T> acc(C);
    for (int64_t k = b; k < e; ++k) {
      std::fill(acc.begin(), acc.end(), T(0));
      const int64_t r0 = rows * k / nblk, r1 = rows * (k + 1) / nblk;
      for (int64_t r = r0; r < r1; ++r) {
        const T* s = p + r * C;
        for (int64_t c = 0; c < C; ++c) acc[c] += s[c];
      }
      for (int64_t c = 0; c < C; ++c) part[k * C + c] = acc[c];
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double acc = 0;
    for (int64_t k = 0; k < nblk; ++k) acc += part[k * C + c];
    gb[c] = (T)acc;
  }
}


// ------------------------------- few output channels per group: output rows
// A convolution with few output channels per group (LeNet's first layer,
// 1 -> 6; depthwise layers, 1 per group) would fill few of the GEMM tile's
// 16 columns. Here an output row is computed for up to kRowOuts channels of a
// group at once, vectorised along the width (width stride 1): per (input
// channel, kernel row) one input row, per kw tap an 8-wide read shifted by
// kw * dw, the channels' weights broadcast. Kernel rows that land in the
// padding are skipped; padding columns come from a zero-bordered copy of the
// rows (made only when there is column padding or the input is channels_last,
// which the copy transposes to rows), so no output column needs a scalar
// border case. A channels_last output is computed as rows, then interleaved.
// (A channels_last depthwise layer runs along channels instead: dw_forward.)
constexpr int64_t kRowPathMaxOC = 8;

inline bool rows_path(const ConvGeometry& g, bool cl) {
  return g.sw == 1 && g.OCg() <= kRowPathMaxOC && g.OW >= 8 && !(cl && g.G > 1);
}

// Runs of output rows that see the same kernel rows [klo, khi) inside the
// image: {first row, klo, khi} per run, then {OH, 0, 0}.
inline std::vector<std::array<int64_t, 3>> row_runs(const ConvGeometry& g) {
  std::vector<std::array<int64_t, 3>> runs;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t top = oh * g.sh - g.pt;  // input row of kh = 0
    const int64_t klo = std::min(g.KH, ceil_div(std::max<int64_t>(0, -top), g.dh));
    const int64_t khi =
        std::max(klo, std::min(g.KH, ceil_div(std::max<int64_t>(0, g.H - top), g.dh)));
    if (runs.empty() || runs.back()[1] != klo || runs.back()[2] != khi)
      runs.push_back({oh, klo, khi});
  }
  runs.push_back({g.OH, 0, 0});
  return runs;
}

// Input rows [ih0, ih0 + nr) of channels [c0, c0 + nc) of image n, as rows of
// Wp columns from column -pl, zero outside the image: row (c0 + c, ih) at
// base + c * cs + (ih - ih0) * Wr. Read in place from an NCHW input when no
// column padding is needed, else copied into buf.
template <typename T>
struct PaddedRows {
  const T* base;
  int64_t cs, Wr;
};

template <typename T>
PaddedRows<T> padded_rows(const Kern<T>& K, const ConvGeometry& g, const T* x, bool cl, int64_t n,
                          int64_t c0, int64_t nc, int64_t ih0, int64_t nr, int64_t Wp,
                          std::vector<T>& buf) {
  if (!cl && g.pl == 0 && Wp <= g.W)
    return {x + ((n * g.C + c0) * g.H + ih0) * g.W, g.H * g.W, g.W};
  buf.resize(nc * nr * Wp);
  const int64_t j0 = std::min(Wp, g.pl), j1 = std::min(Wp, g.pl + g.W);  // inside the image
  for (int64_t c = 0; c < nc; ++c) {
    if (cl)
      K.pad_rows(x + (n * g.H + ih0) * g.W * g.C + c0 + c, g.W * g.C, g.C, nr, j0, j1,
                 buf.data() + c * nr * Wp, Wp);
    else
      K.pad_rows(x + ((n * g.C + c0 + c) * g.H + ih0) * g.W, g.W, 1, nr, j0, j1,
                 buf.data() + c * nr * Wp, Wp);
  }
  return {buf.data(), nr * Wp, Wp};
}

// The output-row convolution of one geometry: what every work unit shares,
// and unit(): output rows [oh0, oh1) of convolution group grp of image n.
template <typename T>
struct RowConv {
  const ConvGeometry& g;
  const T* x;
  bool cl;
  const T* w;
  T* y;
  const Kern<T> K;
  const int64_t Cg, OCg, KK, ws, Wp, nob;
  std::vector<T> init;
  const std::vector<std::array<int64_t, 3>> runs;
  struct Scratch {
    std::vector<T> buf, tmp;
    std::vector<const T*> rows, wr;
  };

  RowConv(const ConvGeometry& g_, const T* x_, bool cl_, const T* w_, const T* bias, T* y_)
      : g(g_), x(x_), cl(cl_), w(w_), y(y_), Cg(g.Cg()), OCg(g.OCg()), KK(g.KH * g.KW),
        ws(Cg * KK), Wp(g.OW + (g.KW - 1) * g.dw),  // columns read per row, from column -pl
        nob(ceil_div(OCg, kRowOuts)),               // channel blocks, as even as possible
        init(g.OC, T(0)), runs(row_runs(g)) {
    if (bias) std::copy(bias, bias + g.OC, init.begin());
  }

  void unit(int64_t n, int64_t grp, int64_t oh0, int64_t oh1, Scratch& sc) const {
    const int64_t c0 = grp * Cg, nrr = oh1 - oh0;
    // the input rows [ih0, ih1) these output rows read, clipped to the image
    const int64_t ih0 = std::max<int64_t>(0, oh0 * g.sh - g.pt);
    const int64_t ih1 = std::min(g.H, (oh1 - 1) * g.sh - g.pt + (g.KH - 1) * g.dh + 1);
    const auto pr =
        padded_rows(K, g, x, cl, n, c0, Cg, ih0, std::max<int64_t>(0, ih1 - ih0), Wp, sc.buf);
    if (cl) sc.tmp.resize(OCg * nrr * g.OW);
    // one call per run of output rows (the rows advance by sh input rows)
    // and channel block
    for (size_t ri = 0; ri + 1 < runs.size(); ++ri) {
      const int64_t oh = std::max(oh0, runs[ri][0]), end = std::min(oh1, runs[ri + 1][0]);
      if (oh >= end) continue;
      const int64_t klo = runs[ri][1], khi = runs[ri][2];
      sc.rows.clear(), sc.wr.clear();
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t kh = klo; kh < khi; ++kh) {
          sc.rows.push_back(pr.base + c * pr.cs + (oh * g.sh + kh * g.dh - g.pt - ih0) * pr.Wr);
          sc.wr.push_back(w + grp * OCg * ws + c * KK + kh * g.KW);  // the group's first channel
        }
      const int64_t nrows = (int64_t)sc.rows.size(), nrep = end - oh;
      for (int64_t ob = 0, j0 = 0; ob < nob; ++ob) {
        const int64_t j1 = (ob + 1) * OCg / nob, oc0 = grp * OCg + j0;
        if (cl)
          K.conv_rows(sc.rows.data(), sc.wr.data(), ws, nrows, g.KW, g.dw, j1 - j0, 0, g.OW,
                      init.data() + oc0, sc.tmp.data() + (j0 * nrr + oh - oh0) * g.OW,
                      nrr * g.OW, nrep, g.sh * pr.Wr, g.OW);
        else
          K.conv_rows(sc.rows.data(), sc.wr.data(), ws, nrows, g.KW, g.dw, j1 - j0, 0, g.OW,
                      init.data() + oc0, y + ((n * g.OC + oc0) * g.OH + oh) * g.OW, g.OH * g.OW,
                      nrep, g.sh * pr.Wr, g.OW);
        for (auto& p : sc.wr) p += (j1 - j0) * ws;
        j0 = j1;
      }
    }
    if (cl)
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        T* yr = y + (n * g.OH + oh) * g.OW * g.OC + grp * OCg;
        const T* t = sc.tmp.data() + (oh - oh0) * g.OW;
        for (int64_t ow = 0; ow < g.OW; ++ow)
          for (int64_t j = 0; j < OCg; ++j) yr[ow * g.OC + j] = t[j * nrr * g.OW + ow];
      }
  }
};

template <typename T>
void rows_forward(const ConvGeometry& g, const T* x, bool cl, const T* w, const T* bias, T* y) {
  const RowConv<T> rc(g, x, cl, w, bias, y);
  // work units: (image, group, chunk of output rows), at least 4 per thread
  const int64_t want = 4 * at::get_num_threads(), NG = g.N * g.G;
  const int64_t per = NG >= want ? 1 : std::min(g.OH, ceil_div(want, NG));
  const int64_t rch = ceil_div(g.OH, per), nch = ceil_div(g.OH, rch);
  at::parallel_for(0, NG * nch, 1, [&](int64_t b, int64_t e) {
    typename RowConv<T>::Scratch sc;
    for (int64_t u = b; u < e; ++u) {
      const int64_t n = u / (g.G * nch), grp = u / nch % g.G, oh0 = u % nch * rch;
      rc.unit(n, grp, oh0, std::min(g.OH, oh0 + rch), sc);
    }
  });
}

// ---------------------------------------------------------------- depthwise
// One input channel per group; output channel oc reads input channel oc / M.

// Output columns [lo, hi) whose tap kw lands inside the image.
inline void col_range(const ConvGeometry& g, int64_t kw, int64_t& lo, int64_t& hi) {
  const int64_t off = kw * g.dw - g.pl;  // iw = ow * sw + off
  lo = std::max<int64_t>(0, ceil_div(std::max<int64_t>(0, -off), g.sw));
  hi = std::min(g.OW, floor_div(g.W - 1 - off, g.sw) + 1);
}


// Output columns [lo, hi) where every tap kw lands inside the image.
inline void interior_cols(const ConvGeometry& g, int64_t& lo, int64_t& hi) {
  lo = 0, hi = g.OW;
  for (int64_t kw = 0; kw < g.KW; ++kw) {
    int64_t l, h;
    col_range(g, kw, l, h);
    lo = std::max(lo, l), hi = std::min(hi, h);
  }
  if (hi < lo) hi = lo;
}

// The taps of output pixel o0 in row (n, oh) of a channels_last depthwise
// pass (multiplier 1): for each, the offset of its input pixel in x and
// base + tap * C (the tap's weight vector, or its sum vector); with check,
// only the taps inside the image. Returns the number of taps.
template <typename B, typename P>
int64_t nhwc_taps(const ConvGeometry& g, int64_t n, int64_t oh, int64_t o0, bool check, B* base,
                  int64_t* xoff, P** ptr) {
  int64_t nt = 0;
  for (int64_t kh = 0; kh < g.KH; ++kh) {
    const int64_t ih = oh * g.sh + kh * g.dh - g.pt;
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t iw = o0 * g.sw + kw * g.dw - g.pl;
      if (check && (iw < 0 || iw >= g.W)) continue;
      xoff[nt] = ((n * g.H + ih) * g.W + iw) * g.C;
      ptr[nt++] = base + (kh * g.KW + kw) * g.C;
    }
  }
  return nt;
}

template <typename T>
void dw_forward(const ConvGeometry& g, const T* x, bool cl, const T* w, const T* bias, T* y) {
  const Kern<T> K;
  const int64_t M = g.OCg(), KK = g.KH * g.KW;
  if (!cl) {
    at::parallel_for(0, g.N * g.OC, 1, [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const int64_t n = pl / g.OC, oc = pl % g.OC, c = oc / M;
        const T* xs = x + (n * g.C + c) * g.H * g.W;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          T* yr = y + (pl * g.OH + oh) * g.OW;
          std::fill(yr, yr + g.OW, bias ? bias[oc] : T(0));
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            const int64_t ih = oh * g.sh + kh * g.dh - g.pt;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t kw = 0; kw < g.KW; ++kw) {
              int64_t lo, hi;
              col_range(g, kw, lo, hi);
              if (lo < hi)
                K.axpy(yr + lo, xs + ih * g.W + lo * g.sw + kw * g.dw - g.pl, hi - lo, g.sw,
                       w[oc * KK + kh * g.KW + kw]);
            }
          }
        }
      }
    });
    return;
  }
  std::vector<T> wt(KK * g.OC);  // [tap][oc]
  for (int64_t oc = 0; oc < g.OC; ++oc)
    for (int64_t t = 0; t < KK; ++t) wt[t * g.OC + oc] = w[oc * KK + t];
  if (M == 1) {
    // a row of output pixels: the interior (every tap inside) as runs of
    // pixels x 8-channel vectors, the border pixels one by one
    int64_t lo, hi;
    interior_cols(g, lo, hi);
    const int64_t C = g.C;
    const bool stream = stream_stores(g.N * g.OH * g.OW * C * int64_t(sizeof(T)));
    at::parallel_for(0, g.N * g.OH, 1, [&](int64_t b, int64_t e) {
      std::vector<int64_t> xoff(KK);
      std::vector<const T*> wp(KK);
      for (int64_t nr = b; nr < e; ++nr) {
        const int64_t n = nr / g.OH, oh = nr % g.OH;
        T* yrow = y + nr * g.OW * C;
        auto run = [&](int64_t o0, int64_t npix, bool check) {
          const int64_t nt = nhwc_taps(g, n, oh, o0, check, wt.data(), xoff.data(), wp.data());
          K.dw_pixels(x, xoff.data(), wp.data(), nt, npix, g.sw * C, C, bias, yrow + o0 * C,
                      stream);
        };
        if (hi > lo) run(lo, hi - lo, false);
        for (int64_t ow = 0; ow < g.OW; ++ow)
          if (ow < lo || ow >= hi) run(ow, 1, true);
      }
    });
    return;
  }
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t b, int64_t e) {
    std::vector<T> xe(M > 1 ? g.OC : 0);
    for (int64_t nr = b; nr < e; ++nr) {
      const int64_t n = nr / g.OH, oh = nr % g.OH;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        T* yp = y + (nr * g.OW + ow) * g.OC;
        for (int64_t oc = 0; oc < g.OC; ++oc) yp[oc] = bias ? bias[oc] : T(0);
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t ih = oh * g.sh + kh * g.dh - g.pt;
          if (ih < 0 || ih >= g.H) continue;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t iw = ow * g.sw + kw * g.dw - g.pl;
            if (iw < 0 || iw >= g.W) continue;
            const T* xp = x + ((n * g.H + ih) * g.W + iw) * g.C;
            if (M > 1) {
              for (int64_t oc = 0; oc < g.OC; ++oc) xe[oc] = xp[oc / M];
              xp = xe.data();
            }
            K.vmac(yp, wt.data() + (kh * g.KW + kw) * g.OC, xp, g.OC);
          }
        }
      }
    }
  });
}

// The data gradient with unit strides,
//   gx[c][ih][iw] = bias + sum over (oc of c's group, kh, kw) of
//                   w[oc][c'][kh][kw] * gy[oc][ih + pt - kh dh][iw + pl - kw dw]
// (c' = c's index within its group), is a convolution of gy (the same
// groups, OC / G input channels each) with weights transposed within each
// group, taps reversed, and padding (K - 1) d - p: its geometry t and weights
// wf, for the output-row kernels when gx has few channels per group (the
// NCHW depthwise data gradient; LeNet's 6 -> 16 layer). False where that does
// not apply (strides, negative padding, or rows_path refuses t).
template <typename T>
bool dgrad_as_rows(const ConvGeometry& g, const T* w, bool cl, ConvGeometry& t,
                   std::vector<T>& wf) {
  if (g.sh != 1 || g.sw != 1) return false;
  t = g;
  t.C = g.OC, t.H = g.OH, t.W = g.OW, t.OC = g.C, t.OH = g.H, t.OW = g.W;
  t.pt = (g.KH - 1) * g.dh - g.pt, t.pl = (g.KW - 1) * g.dw - g.pl;
  if (t.pt < 0 || t.pl < 0 || !rows_path(t, cl)) return false;
  const int64_t KK = g.KH * g.KW, Cg = g.Cg(), OCg = g.OCg();
  wf.resize(g.OC * Cg * KK);
  for (int64_t grp = 0; grp < g.G; ++grp)
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t o = 0; o < OCg; ++o) {
        const T* src = w + ((grp * OCg + o) * Cg + c) * KK;
        T* dst = wf.data() + ((grp * Cg + c) * OCg + o) * KK;
        for (int64_t k = 0; k < KK; ++k) dst[k] = src[KK - 1 - k];
      }
  return true;
}

// The depthwise weight gradient with unit width stride (NCHW, or
// channels_last with a single input channel: LeNet's first layer), per input
// channel c and image n: the input plane as zero-bordered rows, then for each
// of c's M output channels every tap's 8-lane sums over the output rows (one
// call per run of rows with the same kernel rows inside the image), added in
// double, lane by lane, to acc[(m * KK + tap) * 8 + lane]. A channels_last
// grad_output is read through a per-channel copy of its rows.
template <typename T>
struct DwRowWgrad {
  const ConvGeometry& g;
  const T *gy, *x;
  const bool cl;
  const Kern<T> K;
  const int64_t M, KK, Wp;
  const std::vector<std::array<int64_t, 3>> runs;
  struct Scratch {
    std::vector<T> buf, lanes, grows;
    std::vector<int64_t> xoff;
  };

  DwRowWgrad(const ConvGeometry& g_, const T* gy_, const T* x_, bool cl_)
      : g(g_), gy(gy_), x(x_), cl(cl_), M(g.OCg()), KK(g.KH * g.KW),
        Wp(g.OW + (g.KW - 1) * g.dw), runs(row_runs(g)) {}

  static bool applies(const ConvGeometry& g, bool cl) {
    return g.depthwise() && g.sw == 1 && (!cl || g.C == 1);
  }

  void image(int64_t c, int64_t n, Scratch& sc, double* acc) const {
    const auto pr = padded_rows(K, g, x, cl, n, c, 1, 0, g.H, Wp, sc.buf);
    sc.lanes.resize(8 * KK), sc.xoff.resize(KK);
    for (int64_t oc = c * M; oc < (c + 1) * M; ++oc) {
      const T* gp = gy + (n * g.OC + oc) * g.OH * g.OW;
      if (cl) {
        sc.grows.resize(g.OH * g.OW);
        const T* src = gy + n * g.OH * g.OW * g.OC + oc;
        for (int64_t i = 0; i < g.OH * g.OW; ++i) sc.grows[i] = src[i * g.OC];
        gp = sc.grows.data();
      }
      std::fill(sc.lanes.begin(), sc.lanes.end(), T(0));
      for (size_t ri = 0; ri + 1 < runs.size(); ++ri) {
        const int64_t oh = runs[ri][0], klo = runs[ri][1], khi = runs[ri][2];
        int64_t nt = 0;
        for (int64_t kh = klo; kh < khi; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw)
            sc.xoff[nt++] = (oh * g.sh + kh * g.dh - g.pt) * pr.Wr + kw * g.dw;
        K.wgrad_rows(gp + oh * g.OW, g.OW, pr.base, sc.xoff.data(), nt, g.OW,
                     runs[ri + 1][0] - oh, g.sh * pr.Wr, sc.lanes.data() + 8 * klo * g.KW);
      }
      // lane by lane (independent adds, vectorised), lanes summed in run()
      double* a = acc + (oc - c * M) * KK * 8;
      for (int64_t i = 0; i < KK * 8; ++i) a[i] += (double)sc.lanes[i];
    }
  }

  // The whole weight gradient: work units of (input channel, block of
  // images); the block count depends only on the geometry (enough blocks to
  // share out few channels), and the blocks' sums are added in order.
  void run(T* gw) const {
    const int64_t nb = std::min(g.N, ceil_div(32, g.C)), MK = M * KK;
    std::vector<double> part(g.C * nb * MK);
    at::parallel_for(0, g.C * nb, 1, [&](int64_t b, int64_t e) {
      Scratch sc;
      std::vector<double> lanes(MK * 8);  // 8 lanes per weight, for one unit
      for (int64_t u = b; u < e; ++u) {
        const int64_t c = u / nb, k = u % nb;
        std::fill(lanes.begin(), lanes.end(), 0.0);
        for (int64_t n = g.N * k / nb; n < g.N * (k + 1) / nb; ++n) image(c, n, sc, lanes.data());
        for (int64_t i = 0; i < MK; ++i) {
          double s = 0;
          for (int l = 0; l < 8; ++l) s += lanes[i * 8 + l];
          part[u * MK + i] = s;
        }
      }
    });
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t i = 0; i < MK; ++i) {
        double s = 0;
        for (int64_t k = 0; k < nb; ++k) s += part[(c * nb + k) * MK + i];
        gw[c * MK + i] = (T)s;
      }
  }
};

template <typename T>
void dw_dgrad(const ConvGeometry& g, const T* gy, bool cl, const T* w, const T* bias, T* gx) {
  const Kern<T> K;
  const int64_t M = g.OCg(), KK = g.KH * g.KW;
  if (!cl) {
    ConvGeometry t;
    std::vector<T> wf;
    if (dgrad_as_rows(g, w, false, t, wf)) {
      rows_forward<T>(t, gy, false, wf.data(), bias, gx);
      return;
    }
  }
  if (!cl) {
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const int64_t n = pl / g.C, c = pl % g.C;
        T* xs = gx + pl * g.H * g.W;
        std::fill(xs, xs + g.H * g.W, bias ? bias[c] : T(0));
        for (int64_t m = 0; m < M; ++m) {
          const int64_t oc = c * M + m;
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const T* gr = gy + ((n * g.OC + oc) * g.OH + oh) * g.OW;
            for (int64_t kh = 0; kh < g.KH; ++kh) {
              const int64_t ih = oh * g.sh + kh * g.dh - g.pt;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                int64_t lo, hi;
                col_range(g, kw, lo, hi);
                if (lo < hi)
                  K.axpy_scatter(xs + ih * g.W + lo * g.sw + kw * g.dw - g.pl, gr + lo, hi - lo,
                                 g.sw, w[oc * KK + kh * g.KW + kw]);
              }
            }
          }
        }
      }
    });
    return;
  }
  std::vector<T> wt(KK * g.OC);
  for (int64_t oc = 0; oc < g.OC; ++oc)
    for (int64_t t = 0; t < KK; ++t) wt[t * g.OC + oc] = w[oc * KK + t];
  if (M == 1 && g.sh == 1 && g.sw == 1) {
    // gx[ih][iw] = bias + sum over taps of w * gy[ih + pt - kh*dh][iw + pl - kw*dw]:
    // the forward's pixel runs with the taps mirrored, taken from the last
    // (kh, kw) to the first so that each pixel's reads of gy ascend in
    // memory. In the first-to-last order they descended, and on an AMD EPYC
    // (Zen 4) VM the loads stalled: 8x128x56x56 3.2-3.5 ms against 1.06-1.21
    // (the forward's same loop ascending: 1.05-1.3).
    const int64_t C = g.C;
    int64_t lo = 0, hi = g.W;
    for (int64_t kw = 0; kw < g.KW; ++kw)
      lo = std::max(lo, kw * g.dw - g.pl), hi = std::min(hi, g.OW - g.pl + kw * g.dw);
    if (hi < lo) hi = lo;
    const bool stream = stream_stores(g.N * g.H * g.W * C * int64_t(sizeof(T)));
    at::parallel_for(0, g.N * g.H, 1, [&](int64_t b, int64_t e) {
      std::vector<int64_t> xoff(KK);
      std::vector<const T*> wp(KK);
      for (int64_t nr = b; nr < e; ++nr) {
        const int64_t n = nr / g.H, ih = nr % g.H;
        T* xrow = gx + nr * g.W * C;
        auto run = [&](int64_t i0, int64_t npix, bool check) {
          int64_t nt = 0;
          for (int64_t kh = g.KH - 1; kh >= 0; --kh) {
            const int64_t oh = ih + g.pt - kh * g.dh;
            if (oh < 0 || oh >= g.OH) continue;
            for (int64_t kw = g.KW - 1; kw >= 0; --kw) {
              const int64_t ow = i0 + g.pl - kw * g.dw;
              if (check && (ow < 0 || ow >= g.OW)) continue;
              xoff[nt] = ((n * g.OH + oh) * g.OW + ow) * C;
              wp[nt++] = wt.data() + (kh * g.KW + kw) * C;
            }
          }
          K.dw_pixels(gy, xoff.data(), wp.data(), nt, npix, C, C, bias, xrow + i0 * C, stream);
        };
        if (hi > lo) run(lo, hi - lo, false);
        for (int64_t iw = 0; iw < g.W; ++iw)
          if (iw < lo || iw >= hi) run(iw, 1, true);
      }
    });
    return;
  }
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t b, int64_t e) {
    std::vector<T> acc(g.OC);
    for (int64_t nr = b; nr < e; ++nr) {
      const int64_t n = nr / g.H, ih = nr % g.H;
      for (int64_t iw = 0; iw < g.W; ++iw) {
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t vh = ih + g.pt - kh * g.dh;
          if (vh < 0 || vh % g.sh != 0 || vh / g.sh >= g.OH) continue;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t vw = iw + g.pl - kw * g.dw;
            if (vw < 0 || vw % g.sw != 0 || vw / g.sw >= g.OW) continue;
            K.vmac(acc.data(), wt.data() + (kh * g.KW + kw) * g.OC,
                   gy + ((n * g.OH + vh / g.sh) * g.OW + vw / g.sw) * g.OC, g.OC);
          }
        }
        T* xp = gx + (nr * g.W + iw) * g.C;
        for (int64_t c = 0; c < g.C; ++c) {
          T s = bias ? bias[c] : T(0);
          for (int64_t m = 0; m < M; ++m) s += acc[c * M + m];
          xp[c] = s;
        }
      }
    }
  });
}

template <typename T>
void dw_wgrad(const ConvGeometry& g, const T* gy, const T* x, bool cl, T* gw) {
  const Kern<T> K;
  const int64_t M = g.OCg(), KK = g.KH * g.KW;
  if (DwRowWgrad<T>::applies(g, cl)) {
    DwRowWgrad<T>(g, gy, x, cl).run(gw);
    return;
  }
  if (!cl) {
    at::parallel_for(0, g.OC, 1, [&](int64_t b, int64_t e) {
      std::vector<double> acc(KK);
      for (int64_t oc = b; oc < e; ++oc) {
        std::fill(acc.begin(), acc.end(), 0.0);
        const int64_t c = oc / M;
        for (int64_t n = 0; n < g.N; ++n) {
          const T* xs = x + (n * g.C + c) * g.H * g.W;
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const T* gr = gy + ((n * g.OC + oc) * g.OH + oh) * g.OW;
            for (int64_t kh = 0; kh < g.KH; ++kh) {
              const int64_t ih = oh * g.sh + kh * g.dh - g.pt;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                int64_t lo, hi;
                col_range(g, kw, lo, hi);
                if (lo < hi)
                  acc[kh * g.KW + kw] +=
                      K.dot(gr + lo, xs + ih * g.W + lo * g.sw + kw * g.dw - g.pl, hi - lo, g.sw);
              }
            }
          }
        }
        for (int64_t t = 0; t < KK; ++t) gw[oc * KK + t] = (T)acc[t];
      }
    });
    return;
  }
  // channels_last: fixed blocks of output rows, partial sums merged in order
  const int64_t rows = g.N * g.OH, nblk = std::min<int64_t>(64, rows);
  std::vector<double> part(nblk * KK * g.OC, 0.0);
  int64_t lo, hi;
  interior_cols(g, lo, hi);
  at::parallel_for(0, nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<T> acc(KK * g.OC), xe(M > 1 ? g.OC : 0);
    std::vector<int64_t> xoff(KK);
    std::vector<T*> ap(KK);
    for (int64_t k = b; k < e; ++k) {
      std::fill(acc.begin(), acc.end(), T(0));
      if (M == 1) {  // runs of pixels, each tap's 8-channel sums in registers
        const int64_t C = g.C;
        for (int64_t nr = rows * k / nblk; nr < rows * (k + 1) / nblk; ++nr) {
          const int64_t n = nr / g.OH, oh = nr % g.OH;
          auto run = [&](int64_t o0, int64_t npix, bool check) {
            const int64_t nt = nhwc_taps(g, n, oh, o0, check, acc.data(), xoff.data(), ap.data());
            K.dw_wpixels(gy + (nr * g.OW + o0) * C, C, x, xoff.data(), nt, npix, g.sw * C, C,
                         ap.data());
          };
          if (hi > lo) run(lo, hi - lo, false);
          for (int64_t ow = 0; ow < g.OW; ++ow)
            if (ow < lo || ow >= hi) run(ow, 1, true);
        }
        for (int64_t i = 0; i < KK * g.OC; ++i) part[k * KK * g.OC + i] = acc[i];
        continue;
      }
      for (int64_t nr = rows * k / nblk; nr < rows * (k + 1) / nblk; ++nr) {
        const int64_t n = nr / g.OH, oh = nr % g.OH;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const T* gp = gy + (nr * g.OW + ow) * g.OC;
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            const int64_t ih = oh * g.sh + kh * g.dh - g.pt;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t kw = 0; kw < g.KW; ++kw) {
              const int64_t iw = ow * g.sw + kw * g.dw - g.pl;
              if (iw < 0 || iw >= g.W) continue;
              const T* xp = x + ((n * g.H + ih) * g.W + iw) * g.C;
              if (M > 1) {
                for (int64_t oc = 0; oc < g.OC; ++oc) xe[oc] = xp[oc / M];
                xp = xe.data();
              }
              K.vmac(acc.data() + (kh * g.KW + kw) * g.OC, gp, xp, g.OC);
            }
          }
        }
      }
      for (int64_t i = 0; i < KK * g.OC; ++i) part[k * KK * g.OC + i] = acc[i];
    }
  });
  for (int64_t oc = 0; oc < g.OC; ++oc)
    for (int64_t t = 0; t < KK; ++t) {
      double s = 0;
      for (int64_t k = 0; k < nblk; ++k) s += part[(k * KK + t) * g.OC + oc];
      gw[oc * KK + t] = (T)s;
    }
}

// ------------------------------------------- 1x1 convolutions over NCHW
// A 1x1, stride-1, unpadded, ungrouped convolution of NCHW tensors is, per
// image, a plain GEMM over contiguous pixel rows, with no layout change:
//   dst[n][m][p] = bias[m] + sum_k A[m][k] * src[n][k][p]
// (forward: A = W, src = x; data gradient: A = W^T, src = grad_output).
// A is packed once as 6-row panels [rb][k][6]. A work item is 64 pixels of
// one image (kGemmBlocks column blocks of 16): per chunk of K, its src rows
// are packed as [column block][k][16] (each block stays in L1 while every
// row panel runs against it) and the 6x16 tiles are stored straight into
// dst rows. The src rows are HW apart, a pattern no hardware prefetcher
// follows: fetched on demand, the packing took a third of the time of the
// 1x1 256->64 forward at batch 8 (25.7 MB input, beyond L3). While a pack's
// tiles run, the next pack's rows are prefetched, a slice per tile. Measured
// there, 2 threads, interleaved medians: 16-pixel items without prefetch
// 7.2 ms (114 GFLOP/s), 64-pixel items 6.8, with the prefetch 5.5-5.7 ms
// (145-150; 156 when the input is cache-resident); 16- or 32-pixel items with
// the prefetch 5.8-6.0, 128 5.9-6.1. Forward + data gradient 14.6 -> 11.9 ms.
constexpr int64_t kGemmBlocks = 4;
bool nchw_1x1(const ConvGeometry& g, bool cl) {
  return !cl && g.G == 1 && g.KH == 1 && g.KW == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 &&
         g.pl == 0 && g.OH == g.H && g.OW == g.W;
}

template <typename T>
void nchw_gemm(int64_t M, int64_t K, int64_t N, int64_t HW, const T* A, int64_t a_rs,
               int64_t a_cs, const T* src, const T* bias, T* dst) {
  const Kern<T> Kn;
  const int64_t nrb = ceil_div(M, kMR), kc = std::min<int64_t>(K, 256);
  const int64_t W = kGemmBlocks * kNR, npb = ceil_div(HW, W);  // pixels per item, items per image
  const ScratchBuf<T> ap(kWeightSlot, nrb * K * kMR);  // every value written below
  for (int64_t rb = 0; rb < nrb; ++rb)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < kMR; ++i) {
        const int64_t m = rb * kMR + i;
        ap[(rb * K + k) * kMR + i] = m < M ? A[m * a_rs + k * a_cs] : T(0);
      }
  at::parallel_for(0, N * npb, 1, [&](int64_t b, int64_t e) {
    std::vector<T> bp(kGemmBlocks * kc * kNR);
    T out[4 * kMR * kNR];
    const T* a[kMR];
    const int64_t zero = 0, nsteps = kGemmBlocks * nrb;
    // Slice `step` of nsteps of the rows of the pack after (item, k0): this
    // item's next chunk of K, or the next item's first.
    auto prefetch_pack = [&](int64_t item, int64_t k0, int64_t step) {
      if (k0 >= K) ++item, k0 = 0;
      if (item >= e) return;
      const int64_t kn = std::min(kc, K - k0), lo = kn * step / nsteps;
      const int64_t hi = kn * (step + 1) / nsteps;
      const int64_t p0 = (item % npb) * W, np = std::min<int64_t>(W, HW - p0);
      const T* s = src + ((item / npb) * K + k0) * HW + p0;
      for (int64_t k = lo; k < hi; ++k)
        prefetch_span(s + k * HW, np);
    };
    for (int64_t item = b; item < e; ++item) {
      const int64_t n = item / npb, p0 = (item % npb) * W, np = std::min<int64_t>(W, HW - p0);
      const int64_t nb = ceil_div(np, kNR);
      const T* s = src + n * K * HW + p0;
      T* d = dst + n * M * HW + p0;
      for (int64_t k0 = 0; k0 < K; k0 += kc) {
        const int64_t kn = std::min(kc, K - k0);
        for (int64_t k = 0; k < kn; ++k) {  // pack as [column block][k][16]
          const T* row = s + (k0 + k) * HW;
          for (int64_t cb = 0; cb < nb; ++cb) {
            T* dk = bp.data() + (cb * kn + k) * kNR;
            const int64_t c0 = cb * kNR;
            if (c0 + kNR <= np) {
              std::memcpy(dk, row + c0, kNR * sizeof(T));
            } else {
              for (int64_t j = 0; j < kNR; ++j) dk[j] = c0 + j < np ? row[c0 + j] : T(0);
            }
          }
        }
        // a 6 x 16 tile's values into the output (rows rb, column block cb)
        auto store = [&](int64_t cb, int64_t rb, const T* ob) {
          const int64_t c0 = cb * kNR, nc = std::min<int64_t>(kNR, np - c0);
          const int64_t rows = std::min<int64_t>(kMR, M - rb * kMR);
          for (int64_t i = 0; i < rows; ++i) {
            const int64_t m = rb * kMR + i;
            T* dr = d + m * HW + c0;
            const T* o = ob + i * kNR;
            if (k0 == 0) {
              const T b0 = bias ? bias[m] : T(0);
              for (int64_t j = 0; j < nc; ++j) dr[j] = o[j] + b0;
            } else {
              for (int64_t j = 0; j < nc; ++j) dr[j] += o[j];
            }
          }
        };
        // AVX-512: two row blocks (12 rows) against two column blocks at a
        // time where both exist (panels12x2: 14 loads per 24 FMAs), else two
        // row blocks against one (tile12), else single tiles
        int64_t step = 0;
        for (int64_t cb = 0, ncw = 1; cb < nb; cb += ncw) {
          ncw = Kn.avx512 && Kn.wide >= 2 && cb + 1 < nb ? 2 : 1;
          const T* b0 = bp.data() + cb * kn * kNR;
          for (int64_t rb = 0, nrw = 1; rb < nrb; rb += nrw) {
            nrw = Kn.avx512 && rb + 1 < nrb ? 2 : 1;
            for (int64_t q = 0; q < ncw * nrw; ++q) prefetch_pack(item, k0 + kc, step++);
            const T* p0 = ap.data() + (rb * K + k0) * kMR;
            if (nrw == 2 && ncw == 2) {
              if constexpr (std::is_same<T, float>::value) {
                std::fill(out, out + 4 * kMR * kNR, T(0));
                conv::avx512::panels12x2(p0, p0 + K * kMR, b0, b0 + kn * kNR, kn, out,
                                         out + 2 * kMR * kNR);
                for (int q = 0; q < 4; ++q) store(cb + q / 2, rb + q % 2, out + q * kMR * kNR);
              }
              continue;
            }
            for (int64_t cq = cb; cq < cb + ncw; ++cq) {
              const T* bq = bp.data() + cq * kn * kNR;
              if (nrw == 2) {
                const T* a12[2 * kMR];
                for (int i = 0; i < 2 * kMR; ++i) a12[i] = p0 + (i / kMR) * K * kMR + i % kMR;
                Kn.tile12(a12, &zero, bq, &zero, 1, kn, kMR, kNR, out);
                store(cq, rb, out);
                store(cq, rb + 1, out + kMR * kNR);
              } else {
                for (int i = 0; i < kMR; ++i) a[i] = p0 + i;
                Kn.tile(a, &zero, bq, &zero, 1, kn, kMR, kNR, out);
                store(cq, rb, out);
              }
            }
          }
        }
      }
    }
  });
}

// The weight gradient of the same 1x1 NCHW case:
//   gw[oc][c] = sum_n sum_p gy[n][oc][p] * x[n][c][p]
// The 6 gradient rows are read in place (unit stride along p); per chunk of
// 256 pixels, each block of 16 input channels is transposed into a [p][16]
// panel (the 8x8 AVX2 transpose; scalar, the forward + weight gradient took
// 13.1 instead of 12.0-12.3 ms at 256->64, batch 8). Work items are ranges of channel blocks (each output value has one
// owner, summed over (image, chunk) in order: independent of the threads).
// While a chunk's tiles run, the next chunk's rows (the item's input
// channels and the gradient rows, HW apart) are prefetched, a slice per tile
// (256->64 at batch 8, with its forward: 13.3 -> 12.95 ms, interleaved medians).
template <typename T>
void nchw_1x1_wgrad(const ConvGeometry& g, const T* gy, const T* x, T* gw) {
  const Kern<T> Kn;
  const int64_t OC = g.OC, C = g.C, HW = g.H * g.W;
  const int64_t nrb = ceil_div(OC, kMR), ncb = ceil_div(C, kNR), kc = 256;
  const int64_t ncg = std::min<int64_t>(ncb, 2 * at::get_num_threads());
  std::fill(gw, gw + OC * C, T(0));
  at::parallel_for(0, ncg, 1, [&](int64_t b, int64_t e) {
    std::vector<T> bp(kc * kNR), acc;
    const T* a[kMR];
    const int64_t zero = 0;
    for (int64_t cg = b; cg < e; ++cg) {
      const int64_t cb_lo = ncb * cg / ncg, cb_hi = ncb * (cg + 1) / ncg;
      acc.assign((cb_hi - cb_lo) * nrb * kMR * kNR, T(0));
      const int64_t c_lo = cb_lo * kNR, c_hi = std::min(C, cb_hi * kNR);
      const int64_t nrows = c_hi - c_lo + OC, nsteps = (cb_hi - cb_lo) * nrb;
      // Slice `step` of nsteps of the rows (this group's input channels,
      // then every gradient row) of the chunk after (n, p0).
      auto prefetch_chunk = [&](int64_t n, int64_t p0, int64_t step) {
        if ((p0 += kc) >= HW) ++n, p0 = 0;
        if (n >= g.N) return;
        const int64_t pn = std::min(kc, HW - p0);
        for (int64_t r = nrows * step / nsteps; r < nrows * (step + 1) / nsteps; ++r) {
          const T* row = r < c_hi - c_lo ? x + (n * C + c_lo + r) * HW + p0
                                         : gy + (n * OC + r - (c_hi - c_lo)) * HW + p0;
          prefetch_span(row, pn);
        }
      };
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t p0 = 0; p0 < HW; p0 += kc) {
          const int64_t pn = std::min(kc, HW - p0);
          int64_t step = 0;
          for (int64_t cb = cb_lo; cb < cb_hi; ++cb) {
            const int64_t nc = std::min<int64_t>(kNR, C - cb * kNR);
            Kn.transpose(x + (n * C + cb * kNR) * HW + p0, HW, nc, pn, bp.data(), kNR);
            if (nc < kNR)
              for (int64_t p = 0; p < pn; ++p)
                std::fill(bp.data() + p * kNR + nc, bp.data() + (p + 1) * kNR, T(0));
            for (int64_t rb = 0; rb < nrb; ++rb, ++step) {
              prefetch_chunk(n, p0, step);
              const int64_t rows = std::min<int64_t>(kMR, OC - rb * kMR);
              for (int i = 0; i < kMR; ++i)
                a[i] = gy + (n * OC + rb * kMR + std::min<int64_t>(i, rows - 1)) * HW + p0;
              Kn.tile_add(a, &zero, bp.data(), &zero, 1, pn, 1, kNR,
                          acc.data() + ((cb - cb_lo) * nrb + rb) * kMR * kNR);
            }
          }
        }
      for (int64_t cb = cb_lo; cb < cb_hi; ++cb) {
        const int64_t nc = std::min<int64_t>(kNR, C - cb * kNR);
        for (int64_t rb = 0; rb < nrb; ++rb) {
          const T* t = acc.data() + ((cb - cb_lo) * nrb + rb) * kMR * kNR;
          const int64_t rows = std::min<int64_t>(kMR, OC - rb * kMR);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < nc; ++j) gw[(rb * kMR + i) * C + cb * kNR + j] = t[i * kNR + j];
        }
      }
    }
  });
}

// ------------------------------------------------------------ dispatchers

// A single input channel (C == G == 1, LeNet's first layer) counts as
// depthwise: its forward runs on the output rows (rows_path), its weight
// gradient on the depthwise row sums (DwRowWgrad, NCHW and channels_last),
// its data gradient on the depthwise loops.
template <typename T>
void run_forward(const ConvGeometry& g, const Tensor& x, bool cl, const Tensor& w,
                 const Tensor& b, Tensor& y) {
  const T* bias = b.defined() ? b.data_ptr<T>() : nullptr;
  if (rows_path(g, cl))
    rows_forward<T>(g, x.data_ptr<T>(), cl, w.data_ptr<T>(), bias, y.data_ptr<T>());
  else if (g.depthwise() && g.G > 1)
    dw_forward<T>(g, x.data_ptr<T>(), cl, w.data_ptr<T>(), bias, y.data_ptr<T>());
  else if (nchw_1x1(g, cl))
    nchw_gemm<T>(g.OC, g.C, g.N, g.H * g.W, w.data_ptr<T>(), g.C, 1, x.data_ptr<T>(), bias,
                 y.data_ptr<T>());
  else if (std::is_same<T, float>::value &&
           winograd_applies(g, WinoPass::kForward)) {
    const T* wp = w.data_ptr<T>();
    const int64_t Cg = g.Cg();
    winograd_conv<T>(x, cl, g.G, Cg, g.OCg(), g.OH, g.OW, g.dh, g.pt, g.pl,
                     [=](int64_t o, int64_t i, int64_t kh, int64_t kw) {
                       return wp[((o * Cg + i) * 3 + kh) * 3 + kw];
                     },
                     bias, y.data_ptr<T>());
  } else if (std::is_same<T, float>::value && winograd_s2k4_conv_applies(g))
    winograd_forward_s2k4<T>(g, x, cl, w.data_ptr<T>(), bias, y.data_ptr<T>());
  else
    conv_forward<T>(g, x, cl, w.data_ptr<T>(), bias, y.data_ptr<T>());
}

template <typename T>
void run_dgrad(const ConvGeometry& g, const Tensor& gy, bool cl, const Tensor& w,
               const Tensor& b, Tensor& gx) {
  const T* bias = b.defined() ? b.data_ptr<T>() : nullptr;
  ConvGeometry t;
  std::vector<T> wf;
  if (g.depthwise())
    dw_dgrad<T>(g, gy.data_ptr<T>(), cl, w.data_ptr<T>(), bias, gx.data_ptr<T>());
  else if (nchw_1x1(g, cl))
    nchw_gemm<T>(g.C, g.OC, g.N, g.H * g.W, w.data_ptr<T>(), 1, g.C, gy.data_ptr<T>(), bias,
                 gx.data_ptr<T>());
  else if (dgrad_as_rows(g, w.data_ptr<T>(), cl, t, wf))
    rows_forward<T>(t, gy.data_ptr<T>(), cl, wf.data(), bias, gx.data_ptr<T>());
  else if (std::is_same<T, float>::value && winograd_s2k4_applies(g, cl))
    winograd_dgrad_s2k4<T>(g, gy, cl, w.data_ptr<T>(), bias, gx.data_ptr<T>());
  else if (std::is_same<T, float>::value &&
           winograd_applies(g, WinoPass::kForward)) {
    // a convolution of gy with w'[c][oc][kh][kw] = w[oc][c][2 - kh][2 - kw]
    // (per group; c of the whole layer, oc of the group), padding 2d - p
    const T* wp = w.data_ptr<T>();
    const int64_t Cg = g.Cg(), OCg = g.OCg();
    winograd_conv<T>(gy, cl, g.G, OCg, Cg, g.H, g.W, g.dh, 2 * g.dh - g.pt, 2 * g.dw - g.pl,
                     [=](int64_t c, int64_t oc, int64_t kh, int64_t kw) {
                       const int64_t grp = c / Cg;
                       return wp[(((grp * OCg + oc) * Cg + c % Cg) * 3 + 2 - kh) * 3 + 2 - kw];
                     },
                     bias, gx.data_ptr<T>());
  } else
    conv_dgrad<T>(g, gy, cl, w.data_ptr<T>(), bias, gx.data_ptr<T>());
}

// The weight gradient; with gb, the bias gradient too where the path sums it
// on the way (returns whether it did).
template <typename T>
bool run_wgrad(const ConvGeometry& g, const Tensor& gy, const Tensor& x, bool cl, Tensor& gw,
               T* gb = nullptr) {
  if ((g.depthwise() && g.G > 1) || DwRowWgrad<T>::applies(g, cl))
    dw_wgrad<T>(g, gy.data_ptr<T>(), x.data_ptr<T>(), cl, gw.data_ptr<T>());
  else if (nchw_1x1(g, cl))
    nchw_1x1_wgrad<T>(g, gy.data_ptr<T>(), x.data_ptr<T>(), gw.data_ptr<T>());
  else if (std::is_same<T, float>::value &&
           winograd_applies(g, WinoPass::kWeight))
    winograd_wgrad<T>(x, gy, cl, g.G, g.Cg(), g.OCg(), g.OH, g.OW, g.dh, g.pt, g.pl,
                      gw.data_ptr<T>());
  else if (std::is_same<T, float>::value && winograd_s2k4_conv_applies(g, WinoPass::kWeight))
    winograd_wgrad_s2k4<T>(g, x, gy, cl, gw.data_ptr<T>());
  else
    return conv_wgrad<T>(g, gy, x, cl, gw.data_ptr<T>(), gb);
  return false;
}

Tensor opt_contig(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

Tensor empty_act(const Tensor& like, c10::IntArrayRef sizes, at::MemoryFormat fmt) {
  return empty_output(sizes, like.options().memory_format(fmt));
}

// The three gradients of one call (each only when asked for), in layout fmt
// (the weight gradient contiguous).
//   conv2d:           gy = grad of the output, x = the input.
//   conv_transpose2d: gy = its grad_output (the convolution's input), x = its
//   input (the convolution's output): the input gradient is the convolution's
//   forward of gy, the weight gradient the convolution's with x and gy swapped.
std::tuple<Tensor, Tensor, Tensor> conv_grads(const ConvGeometry& g, const Tensor& gy,
                                              const Tensor& x, const Tensor& w,
                                              at::MemoryFormat fmt, std::array<bool, 3> mask,
                                              bool transposed) {
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  Tensor gx = at::empty({0}, x.options()), gw = at::empty({0}, x.options()),
         gb = at::empty({0}, x.options());
  if (mask[0]) gx = empty_act(x, x.sizes(), fmt);
  if (mask[1]) gw = empty_output({g.OC, g.Cg(), g.KH, g.KW}, x.options());
  if (mask[2]) gb = at::empty({gy.size(1)}, x.options());
  if (g.N == 0) {
    if (mask[1]) gw.zero_();
    if (mask[2]) gb.zero_();
    return {gx, gw, gb};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkernels_conv_backward", [&] {
    if (mask[0]) {
      if (transposed)
        run_forward<scalar_t>(g, gy, cl, w, Tensor(), gx);
      else
        run_dgrad<scalar_t>(g, gy, cl, w, Tensor(), gx);
    }
    bool bias_done = false;
    if (mask[1]) {
      if (transposed)
        run_wgrad<scalar_t>(g, x, gy, cl, gw);
      else
        bias_done = run_wgrad<scalar_t>(g, gy, x, cl, gw,
                                        mask[2] ? gb.data_ptr<scalar_t>() : nullptr);
    }
    if (mask[2] && !bias_done) bias_grad<scalar_t>(gy, cl, gb.data_ptr<scalar_t>());
  });
  return {gx, gw, gb};
}

// ----------------------------------------------------------------- the ops

Tensor conv2d_forward_cpu(const Tensor& input, const Tensor& weight,
                          const c10::optional<Tensor>& bias, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  const char* op = "conv2d";
  const ConvGeometry g =
      conv2d_geometry(op, input, weight, bias, stride, padding, dilation, groups, true);
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  Tensor y = empty_act(input, {g.N, g.OC, g.OH, g.OW}, fmt);
  if (g.N == 0) return y;
  const Tensor x = input.contiguous(fmt), w = weight.contiguous(), b = opt_contig(bias);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkernels_conv2d_forward", [&] {
    run_forward<scalar_t>(g, x, fmt == at::MemoryFormat::ChannelsLast, w, b, y);
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward_cpu(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const char* op = "conv2d_backward";
  const ConvGeometry g =
      conv2d_geometry(op, input, weight, c10::nullopt, stride, padding, dilation, groups, true);
  check_conv_grad(op, grad_output, "grad_output", {g.N, g.OC, g.OH, g.OW}, input);
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  return conv_grads(g, grad_output.contiguous(fmt), input.contiguous(fmt), weight.contiguous(),
                    fmt, output_mask, false);
}

Tensor conv_transpose2d_forward_cpu(const Tensor& input, const Tensor& weight,
                                    const c10::optional<Tensor>& bias, c10::IntArrayRef stride,
                                    c10::IntArrayRef padding, c10::IntArrayRef output_padding,
                                    int64_t groups, c10::IntArrayRef dilation) {
  const char* op = "conv_transpose2d";
  const ConvGeometry g = conv_transpose2d_geometry(op, input, weight, bias, stride, padding,
                                                   output_padding, groups, dilation, true);
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  Tensor out = empty_act(input, {g.N, g.C, g.H, g.W}, fmt);
  if (g.N == 0) return out;
  const Tensor x = input.contiguous(fmt), w = weight.contiguous(), b = opt_contig(bias);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkernels_conv_transpose2d_forward", [&] {
    run_dgrad<scalar_t>(g, x, fmt == at::MemoryFormat::ChannelsLast, w, b, out);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> conv_transpose2d_backward_cpu(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef output_padding,
    int64_t groups, c10::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  const char* op = "conv_transpose2d_backward";
  const ConvGeometry g = conv_transpose2d_geometry(op, input, weight, c10::nullopt, stride,
                                                   padding, output_padding, groups, dilation, true);
  check_conv_grad(op, grad_output, "grad_output", {g.N, g.C, g.H, g.W}, input);
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  return conv_grads(g, grad_output.contiguous(fmt), input.contiguous(fmt), weight.contiguous(),
                    fmt, output_mask, true);
}

}  // namespace
}  // namespace cpu
}  // namespace cnnkernels

TORCH_LIBRARY_IMPL(cnnkernels, CPU, m) {
  m.impl("conv2d_forward", &cnnkernels::cpu::conv2d_forward_cpu);
  m.impl("conv2d_backward", &cnnkernels::cpu::conv2d_backward_cpu);
  m.impl("conv_transpose2d_forward", &cnnkernels::cpu::conv_transpose2d_forward_cpu);
  m.impl("conv_transpose2d_backward", &cnnkernels::cpu::conv_transpose2d_backward_cpu);
}
