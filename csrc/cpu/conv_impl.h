// Convolution kernels, compiled once per code path (see conv_kernels.h).
// CNNK_CONV_NS names the namespace; CNNK_CONV_AVX2 adds the float32 FMA tile.
//
// tile: an MR x NR (6 x 16) register tile; the float32 AVX2 version keeps the
// 12 accumulators in ymm registers and per reduction step issues 2 loads of
// b, 6 broadcasts of a and 12 FMAs (the BLIS-style outer product; the
// unit-stride loop in inline assembly, as BLIS does). The
// portable version is the same loop nest in plain C++. tile_add starts from
// out instead of zero (weight-gradient chunks accumulate in place, without a
// second pass adding a separate tile).
#include <algorithm>
#include <cstring>

namespace cnnkernels {
namespace cpu {
namespace conv {
namespace CNNK_CONV_NS {

namespace {

template <bool Add, typename T>
inline void tile_portable(const T* const* a, const int64_t* a_off, const T* b,
                          const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs,
                          int64_t ldb, T* out) {
  T acc[kMR][kNR];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = Add ? out[i * kNR + j] : T(0);
  for (int64_t t = 0; t < ntaps; ++t) {
    const T* ap[kMR];
    for (int i = 0; i < kMR; ++i) ap[i] = a[i] + a_off[t];
    const T* bp = b + b_off[t];
    for (int64_t c = 0; c < len; ++c) {
      const T* br = bp + c * ldb;
      for (int i = 0; i < kMR; ++i) {
        const T av = ap[i][c * a_cs];
        for (int j = 0; j < kNR; ++j) acc[i][j] += av * br[j];
      }
    }
  }
  std::memcpy(out, acc, sizeof(acc));
}

template <typename T>
inline void axpy_impl(T* acc, const T* x, int64_t n, int64_t s, T w) {
  if (s == 1) {
    for (int64_t k = 0; k < n; ++k) acc[k] += w * x[k];
  } else {
    for (int64_t k = 0; k < n; ++k) acc[k] += w * x[k * s];
  }
}

template <typename T>
inline void axpy_scatter_impl(T* acc, const T* x, int64_t n, int64_t s, T w) {
  if (s == 1) {
    for (int64_t k = 0; k < n; ++k) acc[k] += w * x[k];
  } else {
    for (int64_t k = 0; k < n; ++k) acc[k * s] += w * x[k];
  }
}

template <typename T>
inline double dot_impl(const T* a, const T* x, int64_t n, int64_t s) {
  T p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  if (s == 1) {
    for (; k + 8 <= n; k += 8)
      for (int l = 0; l < 8; ++l) p[l] += a[k + l] * x[k + l];
  } else {
    for (; k + 8 <= n; k += 8)
      for (int l = 0; l < 8; ++l) p[l] += a[k + l] * x[(k + l) * s];
  }
  for (; k < n; ++k) p[k & 7] += a[k] * x[k * s];
  double r = 0;
  for (int l = 0; l < 8; ++l) r += (double)p[l];
  return r;
}

template <typename T>
inline void vmac_impl(T* acc, const T* w, const T* x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += w[c] * x[c];
}

template <typename T>
inline void conv_rows_portable(const T* const* rows, const T* const* w, int64_t ws,
                               int64_t nrows, int64_t K, int64_t kstep, int64_t no,
                               int64_t lo, int64_t hi, const T* init, T* y, int64_t ys,
                               int64_t nrep, int64_t xstep, int64_t ystep) {
  for (int64_t q = 0; q < nrep; ++q)
    for (int64_t o = lo; o < hi; o += 8) {
      const int64_t b = o + 8 <= hi || hi - lo < 8 ? o : hi - 8;  // last block shifted back
      const int nl = (int)std::min<int64_t>(8, hi - b);
      for (int64_t j = 0; j < no; ++j) {
        T acc[8];
        for (int l = 0; l < 8; ++l) acc[l] = init[j];
        for (int64_t r = 0; r < nrows; ++r)
          for (int64_t k = 0; k < K; ++k) {
            const T wk = w[r][j * ws + k];
            const T* xp = rows[r] + q * xstep + b + k * kstep;
            for (int l = 0; l < nl; ++l) acc[l] += wk * xp[l];
          }
        for (int l = 0; l < nl; ++l) y[q * ystep + j * ys + b + l] = acc[l];
      }
    }
}

template <typename T>
inline void pad_rows_impl(const T* src, int64_t ss, int64_t cs, int64_t nrows, int64_t j0,
                          int64_t j1, T* dst, int64_t Wp) {
  for (int64_t r = 0; r < nrows; ++r) {
    const T* s = src + r * ss;
    T* d = dst + r * Wp;
    for (int64_t j = 0; j < j0; ++j) d[j] = T(0);
    if (cs == 1) {
      for (int64_t j = j0; j < j1; ++j) d[j] = s[j - j0];  // vectorised by the compiler
    } else {
      for (int64_t j = j0; j < j1; ++j) d[j] = s[(j - j0) * cs];
    }
    for (int64_t j = std::max(j0, j1); j < Wp; ++j) d[j] = T(0);
  }
}

// 8 channels at a time, for locality of the strided reads
template <typename T>
inline void transpose_portable(const T* src, int64_t scs, int64_t nc, int64_t nj, T* dst,
                               int64_t dcs) {
  for (int64_t cb = 0; cb < nc; cb += 8) {
    const int64_t ce = std::min<int64_t>(nc, cb + 8);
    for (int64_t j = 0; j < nj; ++j)
      for (int64_t c = cb; c < ce; ++c) dst[j * dcs + c] = src[c * scs + j];
  }
}

template <typename T>
inline void wgrad_rows_portable(const T* g, int64_t gstep, const T* x, const int64_t* xoff,
                                int64_t ntaps, int64_t n, int64_t nrep, int64_t xstep, T* acc) {
  for (int64_t t = 0; t < ntaps; ++t)
    for (int64_t q = 0; q < nrep; ++q) {
      const T* gq = g + q * gstep;
      const T* xq = x + xoff[t] + q * xstep;
      for (int64_t o = 0; o < n; ++o) acc[t * 8 + o % 8] += gq[o] * xq[o];
    }
}

template <typename T>
inline void dw_pixels_portable(const T* x, const int64_t* xoff, const T* const* w, int64_t ntaps,
                               int64_t npix, int64_t xs, int64_t C, const T* init, T* y,
                               int64_t c0 = 0) {
  for (int64_t j = 0; j < npix; ++j) {
    T* yj = y + j * C;
    for (int64_t c = c0; c < C; ++c) yj[c] = init ? init[c] : T(0);
    for (int64_t t = 0; t < ntaps; ++t) {
      const T* xp = x + xoff[t] + j * xs;
      const T* wp = w[t];
      for (int64_t c = c0; c < C; ++c) yj[c] += wp[c] * xp[c];
    }
  }
}

template <typename T>
inline void dw_wpixels_portable(const T* gy, int64_t gs, const T* x, const int64_t* xoff,
                                int64_t ntaps, int64_t npix, int64_t xs, int64_t C, T* const* acc,
                                int64_t c0 = 0) {
  for (int64_t j = 0; j < npix; ++j) {
    const T* g = gy + j * gs;
    for (int64_t t = 0; t < ntaps; ++t) {
      const T* xp = x + xoff[t] + j * xs;
      T* a = acc[t];
      for (int64_t c = c0; c < C; ++c) a[c] += g[c] * xp[c];
    }
  }
}

}  // namespace

#ifdef CNNK_CONV_AVX2
// NO outputs x NV 8-wide column vectors (columns o .. o + 8 NV) in registers;
// per tap NV loads of the row, NO weight broadcasts, NO x NV FMAs. KC: the
// taps per kernel row when known at compile time (0: K at run time).
// The vectors sit at columns o + 8 i, except the last, at o + last (shifted
// back to end a row: it then recomputes a few outputs of its neighbour,
// from init, so both write the same values).
template <int NO, int NV, int KC>
inline void conv_rows_block(const float* const* rows, const float* const* w, int64_t ws,
                            int64_t nrows, int64_t K, int64_t kstep, int64_t o, int64_t last,
                            int64_t xo, const float* init, float* y, int64_t ys) {
  auto off = [last](int i) { return i == NV - 1 ? last : int64_t(8) * i; };
  __m256 acc[NO][NV];
#pragma GCC unroll 8
  for (int j = 0; j < NO; ++j) {
    const __m256 v = _mm256_set1_ps(init[j]);
#pragma GCC unroll 8
    for (int i = 0; i < NV; ++i) acc[j][i] = v;
  }
  const int64_t kn = KC ? KC : K;
  for (int64_t r = 0; r < nrows; ++r) {
    const float* xp = rows[r] + xo + o;
    const float* wr = w[r];
#pragma GCC unroll 8
    for (int64_t k = 0; k < kn; ++k, xp += kstep) {
      __m256 xv[NV];
#pragma GCC unroll 8
      for (int i = 0; i < NV; ++i) xv[i] = _mm256_loadu_ps(xp + off(i));
#pragma GCC unroll 8
      for (int j = 0; j < NO; ++j) {
        const __m256 wv = _mm256_broadcast_ss(wr + j * ws + k);
#pragma GCC unroll 8
        for (int i = 0; i < NV; ++i) acc[j][i] = _mm256_fmadd_ps(wv, xv[i], acc[j][i]);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NO; ++j)
#pragma GCC unroll 8
    for (int i = 0; i < NV; ++i) _mm256_storeu_ps(y + j * ys + o + off(i), acc[j][i]);
}

// Per output row q: the row's ceil((hi - lo) / 8) vectors in as few blocks
// of at most NV vectors as possible, split evenly (56 columns, one channel:
// one block of 7), the last vector shifted back to end at hi. NV gives 8 to
// 12 accumulators: each one's FMAs wait on each other (4 cycles), so fewer
// than 8 leave FMA slots empty (a 28-wide row used to run as 3 vectors plus a
// lone shifted one, each a chain of its own). Needs hi - lo >= 8.
template <int NO, int KC>
void conv_rows_no(const float* const* rows, const float* const* w, int64_t ws, int64_t nrows,
                  int64_t K, int64_t kstep, int64_t lo, int64_t hi, const float* init, float* y,
                  int64_t ys, int64_t nrep, int64_t xstep, int64_t ystep) {
  constexpr int NV = NO == 1 ? 8 : NO == 2 ? 4 : NO == 3 ? 3 : 2;
  const int64_t n8 = (hi - lo + 7) / 8, nb = (n8 + NV - 1) / NV;
  for (int64_t q = 0; q < nrep; ++q) {
    const int64_t xo = q * xstep;
    float* yq = y + q * ystep;
    int64_t o = lo;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t nv = n8 * (b + 1) / nb - n8 * b / nb;
      const int64_t last = b == nb - 1 ? hi - 8 - o : 8 * (nv - 1);
      switch (nv) {
#define CNNK_ROWS_NV(N)                                                                     \
  case N:                                                                                   \
    conv_rows_block<NO, (NV >= N ? N : 1), KC>(rows, w, ws, nrows, K, kstep, o, last, xo, init, \
                                               yq, ys);                                     \
    break;
        CNNK_ROWS_NV(1) CNNK_ROWS_NV(2) CNNK_ROWS_NV(3) CNNK_ROWS_NV(4)
        CNNK_ROWS_NV(5) CNNK_ROWS_NV(6) CNNK_ROWS_NV(7) CNNK_ROWS_NV(8)
#undef CNNK_ROWS_NV
        default: break;
      }
      o += 8 * nv;
    }
  }
}

template <int KC>
void conv_rows_kc(const float* const* rows, const float* const* w, int64_t ws, int64_t nrows,
                  int64_t K, int64_t kstep, int64_t no, int64_t lo, int64_t hi,
                  const float* init, float* y, int64_t ys, int64_t nrep, int64_t xstep,
                  int64_t ystep) {
  switch (no) {
#define CNNK_ROWS_NO(N)                                                                    \
  case N:                                                                                  \
    return conv_rows_no<N, KC>(rows, w, ws, nrows, K, kstep, lo, hi, init, y, ys, nrep, xstep, \
                               ystep);
    CNNK_ROWS_NO(1) CNNK_ROWS_NO(2) CNNK_ROWS_NO(3) CNNK_ROWS_NO(4) CNNK_ROWS_NO(5) CNNK_ROWS_NO(6)
#undef CNNK_ROWS_NO
    default: return;
  }
}

void conv_rows(const float* const* rows, const float* const* w, int64_t ws, int64_t nrows,
               int64_t K, int64_t kstep, int64_t no, int64_t lo, int64_t hi, const float* init,
               float* y, int64_t ys, int64_t nrep, int64_t xstep, int64_t ystep) {
  if (hi - lo < 8)
    return conv_rows_portable(rows, w, ws, nrows, K, kstep, no, lo, hi, init, y, ys, nrep, xstep,
                              ystep);
  switch (K) {  // the common kernel widths with their taps unrolled
    case 3: conv_rows_kc<3>(rows, w, ws, nrows, K, kstep, no, lo, hi, init, y, ys, nrep, xstep, ystep); break;
    case 5: conv_rows_kc<5>(rows, w, ws, nrows, K, kstep, no, lo, hi, init, y, ys, nrep, xstep, ystep); break;
    default: conv_rows_kc<0>(rows, w, ws, nrows, K, kstep, no, lo, hi, init, y, ys, nrep, xstep, ystep); break;
  }
}
#else
void conv_rows(const float* const* rows, const float* const* w, int64_t ws, int64_t nrows,
               int64_t K, int64_t kstep, int64_t no, int64_t lo, int64_t hi,
               const float* init, float* y, int64_t ys, int64_t nrep, int64_t xstep,
               int64_t ystep) {
  conv_rows_portable(rows, w, ws, nrows, K, kstep, no, lo, hi, init, y, ys, nrep, xstep, ystep);
}
#endif

#ifdef CNNK_CONV_AVX2
// channels_last depthwise: 8 channels x NB pixels of accumulators, one
// weight vector per tap reused across the NB pixels.
template <int NB>
inline void dw_pix_block(const float* x, const int64_t* xoff, const float* const* w,
                         int64_t ntaps, int64_t xs, int64_t c, const float* init, float* y,
                         int64_t C, bool nt) {
  __m256 acc[NB];
  const __m256 i0 = init ? _mm256_loadu_ps(init + c) : _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) acc[j] = i0;
  for (int64_t t = 0; t < ntaps; ++t) {
    const __m256 wv = _mm256_loadu_ps(w[t] + c);
    const float* xp = x + xoff[t] + c;
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) acc[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp + j * xs), acc[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    if (nt && (reinterpret_cast<uintptr_t>(y + j * C + c) & 31) == 0)
      _mm256_stream_ps(y + j * C + c, acc[j]);
    else
      _mm256_storeu_ps(y + j * C + c, acc[j]);
  }
}

void dw_pixels(const float* x, const int64_t* xoff, const float* const* w, int64_t ntaps,
               int64_t npix, int64_t xs, int64_t C, const float* init, float* y, bool nt) {
  int64_t j = 0;
  for (; j + 6 <= npix; j += 6)
    for (int64_t c = 0; c + 8 <= C; c += 8)
      dw_pix_block<6>(x + j * xs, xoff, w, ntaps, xs, c, init, y + j * C, C, nt);
  for (int64_t c = 0; c + 8 <= C; c += 8) {
    switch (npix - j) {
      case 1: dw_pix_block<1>(x + j * xs, xoff, w, ntaps, xs, c, init, y + j * C, C, nt); break;
      case 2: dw_pix_block<2>(x + j * xs, xoff, w, ntaps, xs, c, init, y + j * C, C, nt); break;
      case 3: dw_pix_block<3>(x + j * xs, xoff, w, ntaps, xs, c, init, y + j * C, C, nt); break;
      case 4: dw_pix_block<4>(x + j * xs, xoff, w, ntaps, xs, c, init, y + j * C, C, nt); break;
      case 5: dw_pix_block<5>(x + j * xs, xoff, w, ntaps, xs, c, init, y + j * C, C, nt); break;
      default: break;
    }
  }
  if (C % 8) dw_pixels_portable(x, xoff, w, ntaps, npix, xs, C, init, y, C - C % 8);
  if (nt) _mm_sfence();  // order the streamed stores before whatever follows
}

// Weight gradient: NT taps' accumulators (8 channels each) stay in registers
// over the run of pixels.
template <int NT>
inline void dw_wpix_block(const float* gy, int64_t gs, const float* x, const int64_t* xoff,
                          int64_t npix, int64_t xs, int64_t c, float* const* acc) {
  __m256 a[NT];
  int64_t off[NT];
#pragma GCC unroll 9
  for (int t = 0; t < NT; ++t) a[t] = _mm256_loadu_ps(acc[t] + c), off[t] = xoff[t];
  for (int64_t j = 0; j < npix; ++j) {
    const __m256 g = _mm256_loadu_ps(gy + j * gs + c);
    const float* xp = x + j * xs + c;
#pragma GCC unroll 9
    for (int t = 0; t < NT; ++t) a[t] = _mm256_fmadd_ps(g, _mm256_loadu_ps(xp + off[t]), a[t]);
  }
#pragma GCC unroll 9
  for (int t = 0; t < NT; ++t) _mm256_storeu_ps(acc[t] + c, a[t]);
}

void dw_wpixels(const float* gy, int64_t gs, const float* x, const int64_t* xoff, int64_t ntaps,
                int64_t npix, int64_t xs, int64_t C, float* const* acc) {
  for (int64_t t0 = 0; t0 < ntaps; t0 += 9) {
    const int64_t nt = std::min<int64_t>(9, ntaps - t0);
    for (int64_t c = 0; c + 8 <= C; c += 8) {
      switch (nt) {
#define CNNK_WPIX(N) \
  case N: dw_wpix_block<N>(gy, gs, x, xoff + t0, npix, xs, c, acc + t0); break;
        CNNK_WPIX(1) CNNK_WPIX(2) CNNK_WPIX(3) CNNK_WPIX(4) CNNK_WPIX(5)
        CNNK_WPIX(6) CNNK_WPIX(7) CNNK_WPIX(8) CNNK_WPIX(9)
#undef CNNK_WPIX
        default: break;
      }
    }
  }
  if (C % 8) dw_wpixels_portable(gy, gs, x, xoff, ntaps, npix, xs, C, acc, C - C % 8);
}

// NT taps' 8-lane sums in registers over the rows; the last n % 8 columns
// through masked loads (nothing read past the row).
template <int NT>
inline void wgrad_rows_block(const float* g, int64_t gstep, const float* x, const int64_t* xoff,
                             int64_t n, int64_t nrep, int64_t xstep, float* acc) {
  __m256 a[NT];
  int64_t off[NT];  // the taps' offsets from one moving base (GCC otherwise
                    // kept a pointer per tap and advanced each one per vector)
#pragma GCC unroll 12
  for (int t = 0; t < NT; ++t) a[t] = _mm256_loadu_ps(acc + 8 * t), off[t] = xoff[t];
  const int64_t nv = n / 8, rem = n % 8;
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int64_t q = 0; q < nrep; ++q) {
    const float* gq = g + q * gstep;
    const float* xb = x + q * xstep;
    for (int64_t v = 0; v < nv; ++v, gq += 8, xb += 8) {
      const __m256 gv = _mm256_loadu_ps(gq);
#pragma GCC unroll 12
      for (int t = 0; t < NT; ++t) a[t] = _mm256_fmadd_ps(gv, _mm256_loadu_ps(xb + off[t]), a[t]);
    }
    if (rem) {
      const __m256 gv = _mm256_maskload_ps(gq, mask);
#pragma GCC unroll 12
      for (int t = 0; t < NT; ++t)
        a[t] = _mm256_fmadd_ps(gv, _mm256_maskload_ps(xb + off[t], mask), a[t]);
    }
  }
#pragma GCC unroll 12
  for (int t = 0; t < NT; ++t) _mm256_storeu_ps(acc + 8 * t, a[t]);
}

void wgrad_rows(const float* g, int64_t gstep, const float* x, const int64_t* xoff, int64_t ntaps,
                int64_t n, int64_t nrep, int64_t xstep, float* acc) {
  // chunks of at most 12 taps, as even as possible (25 taps: 9 + 8 + 8, not
  // 12 + 12 + 1, whose single accumulator would wait on its own FMAs)
  const int64_t nch = (ntaps + 11) / 12;
  for (int64_t i = 0, t0 = 0; i < nch; ++i) {
    const int64_t t1 = ntaps * (i + 1) / nch;
    switch (t1 - t0) {
#define CNNK_WROWS(N) \
  case N: wgrad_rows_block<N>(g, gstep, x, xoff + t0, n, nrep, xstep, acc + 8 * t0); break;
      CNNK_WROWS(1) CNNK_WROWS(2) CNNK_WROWS(3) CNNK_WROWS(4) CNNK_WROWS(5) CNNK_WROWS(6)
      CNNK_WROWS(7) CNNK_WROWS(8) CNNK_WROWS(9) CNNK_WROWS(10) CNNK_WROWS(11) CNNK_WROWS(12)
#undef CNNK_WROWS
      default: break;
    }
    t0 = t1;
  }
}
#else
void wgrad_rows(const float* g, int64_t gstep, const float* x, const int64_t* xoff, int64_t ntaps,
                int64_t n, int64_t nrep, int64_t xstep, float* acc) {
  wgrad_rows_portable(g, gstep, x, xoff, ntaps, n, nrep, xstep, acc);
}
void dw_pixels(const float* x, const int64_t* xoff, const float* const* w, int64_t ntaps,
               int64_t npix, int64_t xs, int64_t C, const float* init, float* y, bool) {
  dw_pixels_portable(x, xoff, w, ntaps, npix, xs, C, init, y);
}
void dw_wpixels(const float* gy, int64_t gs, const float* x, const int64_t* xoff, int64_t ntaps,
                int64_t npix, int64_t xs, int64_t C, float* const* acc) {
  dw_wpixels_portable(gy, gs, x, xoff, ntaps, npix, xs, C, acc);
}
#endif

#ifdef CNNK_CONV_AVX2
// 8 x 8 blocks transposed in registers (8 row loads, 24 shuffles, 8 stores);
// leftover channels and columns element by element.
void transpose(const float* src, int64_t scs, int64_t nc, int64_t nj, float* dst, int64_t dcs) {
  const int64_t nc8 = nc / 8 * 8, nj8 = nj / 8 * 8;
  for (int64_t cb = 0; cb < nc8; cb += 8) {
    const float* s = src + cb * scs;
    float* d = dst + cb;
    for (int64_t j = 0; j < nj8; j += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * scs + j);
      __m256 t[8];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      // t0 = a0 b0 a1 b1 | a4 b4 a5 b5, t1 = a2 b2 a3 b3 | a6 b6 a7 b7 (a, b: rows 0, 1)
      const __m256 u0 = _mm256_shuffle_ps(t[0], t[2], _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 u1 = _mm256_shuffle_ps(t[0], t[2], _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 u2 = _mm256_shuffle_ps(t[1], t[3], _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 u3 = _mm256_shuffle_ps(t[1], t[3], _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 u4 = _mm256_shuffle_ps(t[4], t[6], _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 u5 = _mm256_shuffle_ps(t[4], t[6], _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 u6 = _mm256_shuffle_ps(t[5], t[7], _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 u7 = _mm256_shuffle_ps(t[5], t[7], _MM_SHUFFLE(3, 2, 3, 2));
      // u0 = column 0 (rows 0-3) | column 4, u4 = column 0 (rows 4-7) | column 4, ...
      _mm256_storeu_ps(d + (j + 0) * dcs, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + (j + 1) * dcs, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + (j + 2) * dcs, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + (j + 3) * dcs, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + (j + 4) * dcs, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + (j + 5) * dcs, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + (j + 6) * dcs, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + (j + 7) * dcs, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (int64_t j = nj8; j < nj; ++j)
      for (int64_t c = 0; c < 8; ++c) d[j * dcs + c] = s[c * scs + j];
  }
  if (nc8 < nc) transpose_portable(src + nc8 * scs, scs, nc - nc8, nj, dst + nc8, dcs);
}
#else
void transpose(const float* src, int64_t scs, int64_t nc, int64_t nj, float* dst, int64_t dcs) {
  transpose_portable(src, scs, nc, nj, dst, dcs);
}
#endif
void transpose(const double* src, int64_t scs, int64_t nc, int64_t nj, double* dst,
               int64_t dcs) {
  transpose_portable(src, scs, nc, nj, dst, dcs);
}

void wgrad_rows(const double* g, int64_t gstep, const double* x, const int64_t* xoff,
                int64_t ntaps, int64_t n, int64_t nrep, int64_t xstep, double* acc) {
  wgrad_rows_portable(g, gstep, x, xoff, ntaps, n, nrep, xstep, acc);
}
void dw_pixels(const double* x, const int64_t* xoff, const double* const* w, int64_t ntaps,
               int64_t npix, int64_t xs, int64_t C, const double* init, double* y, bool) {
  dw_pixels_portable(x, xoff, w, ntaps, npix, xs, C, init, y);
}
void dw_wpixels(const double* gy, int64_t gs, const double* x, const int64_t* xoff, int64_t ntaps,
                int64_t npix, int64_t xs, int64_t C, double* const* acc) {
  dw_wpixels_portable(gy, gs, x, xoff, ntaps, npix, xs, C, acc);
}

void conv_rows(const double* const* rows, const double* const* w, int64_t ws, int64_t nrows,
               int64_t K, int64_t kstep, int64_t no, int64_t lo, int64_t hi,
               const double* init, double* y, int64_t ys, int64_t nrep, int64_t xstep,
               int64_t ystep) {
  conv_rows_portable(rows, w, ws, nrows, K, kstep, no, lo, hi, init, y, ys, nrep, xstep, ystep);
}

#ifdef CNNK_CONV_AVX2
template <bool Add>
inline void tile_avx2(const float* const* a, const int64_t* a_off, const float* b,
                      const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs,
                      int64_t ldb, float* out) {
#define CNNK_INIT(K) (Add ? _mm256_loadu_ps(out + 8 * (K)) : _mm256_setzero_ps())
  __m256 c00 = CNNK_INIT(0), c01 = CNNK_INIT(1);
  __m256 c10 = CNNK_INIT(2), c11 = CNNK_INIT(3);
  __m256 c20 = CNNK_INIT(4), c21 = CNNK_INIT(5);
  __m256 c30 = CNNK_INIT(6), c31 = CNNK_INIT(7);
  __m256 c40 = CNNK_INIT(8), c41 = CNNK_INIT(9);
  __m256 c50 = CNNK_INIT(10), c51 = CNNK_INIT(11);
#undef CNNK_INIT
#define CNNK_STEP(OFF)                                                   \
  {                                                                      \
    const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8); \
    bp += ldb;                                                           \
    __m256 av = _mm256_broadcast_ss(a0 + (OFF));                         \
    c00 = _mm256_fmadd_ps(av, b0, c00);                                  \
    c01 = _mm256_fmadd_ps(av, b1, c01);                                  \
    av = _mm256_broadcast_ss(a1 + (OFF));                                \
    c10 = _mm256_fmadd_ps(av, b0, c10);                                  \
    c11 = _mm256_fmadd_ps(av, b1, c11);                                  \
    av = _mm256_broadcast_ss(a2 + (OFF));                                \
    c20 = _mm256_fmadd_ps(av, b0, c20);                                  \
    c21 = _mm256_fmadd_ps(av, b1, c21);                                  \
    av = _mm256_broadcast_ss(a3 + (OFF));                                \
    c30 = _mm256_fmadd_ps(av, b0, c30);                                  \
    c31 = _mm256_fmadd_ps(av, b1, c31);                                  \
    av = _mm256_broadcast_ss(a4 + (OFF));                                \
    c40 = _mm256_fmadd_ps(av, b0, c40);                                  \
    c41 = _mm256_fmadd_ps(av, b1, c41);                                  \
    av = _mm256_broadcast_ss(a5 + (OFF));                                \
    c50 = _mm256_fmadd_ps(av, b0, c50);                                  \
    c51 = _mm256_fmadd_ps(av, b1, c51);                                  \
  }
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* a0 = a[0] + a_off[t];
    const float* a1 = a[1] + a_off[t];
    const float* a2 = a[2] + a_off[t];
    const float* a3 = a[3] + a_off[t];
    const float* a4 = a[4] + a_off[t];
    const float* a5 = a[5] + a_off[t];
    const float* bp = b + b_off[t];
    if (len <= 0) continue;
    if (a_cs == 1) {
      // Unit-stride steps in inline assembly, every register named: 12
      // accumulators, the two b vectors in ymm12/13, the broadcasts
      // alternating in ymm14/15, the a pointers advanced by len and indexed
      // from -len up to 0 (one counter). GCC's own allocation of the same
      // intrinsics spilled an accumulator to the stack every 4 steps; this
      // loop made dense forwards and data gradients 5-7 % faster.
      const float* ae[6] = {a0 + len, a1 + len, a2 + len, a3 + len, a4 + len, a5 + len};
      int64_t idx = -len;
      const int64_t ldb_bytes = ldb * (int64_t)sizeof(float);
      asm volatile(
          "mov (%[ae]), %%r8\n\t"
          "mov 8(%[ae]), %%r9\n\t"
          "mov 16(%[ae]), %%r10\n\t"
          "mov 24(%[ae]), %%r11\n\t"
          "mov 32(%[ae]), %%r12\n\t"
          "mov 40(%[ae]), %%r13\n\t"
          "1:\n\t"
          "vmovups (%[bp]), %%ymm12\n\t"
          "vmovups 32(%[bp]), %%ymm13\n\t"
          "add %[ldbb], %[bp]\n\t"
          "vbroadcastss (%%r8,%[idx],4), %%ymm14\n\t"
          "vbroadcastss (%%r9,%[idx],4), %%ymm15\n\t"
          "vfmadd231ps %%ymm12, %%ymm14, %[c00]\n\t"
          "vfmadd231ps %%ymm13, %%ymm14, %[c01]\n\t"
          "vfmadd231ps %%ymm12, %%ymm15, %[c10]\n\t"
          "vfmadd231ps %%ymm13, %%ymm15, %[c11]\n\t"
          "vbroadcastss (%%r10,%[idx],4), %%ymm14\n\t"
          "vbroadcastss (%%r11,%[idx],4), %%ymm15\n\t"
          "vfmadd231ps %%ymm12, %%ymm14, %[c20]\n\t"
          "vfmadd231ps %%ymm13, %%ymm14, %[c21]\n\t"
          "vfmadd231ps %%ymm12, %%ymm15, %[c30]\n\t"
          "vfmadd231ps %%ymm13, %%ymm15, %[c31]\n\t"
          "vbroadcastss (%%r12,%[idx],4), %%ymm14\n\t"
          "vbroadcastss (%%r13,%[idx],4), %%ymm15\n\t"
          "vfmadd231ps %%ymm12, %%ymm14, %[c40]\n\t"
          "vfmadd231ps %%ymm13, %%ymm14, %[c41]\n\t"
          "vfmadd231ps %%ymm12, %%ymm15, %[c50]\n\t"
          "vfmadd231ps %%ymm13, %%ymm15, %[c51]\n\t"
          "inc %[idx]\n\t"
          "jnz 1b\n\t"
          : [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11),
            [c20] "+x"(c20), [c21] "+x"(c21), [c30] "+x"(c30), [c31] "+x"(c31),
            [c40] "+x"(c40), [c41] "+x"(c41), [c50] "+x"(c50), [c51] "+x"(c51),
            [bp] "+r"(bp), [idx] "+r"(idx)
          : [ae] "r"(ae), [ldbb] "r"(ldb_bytes)
          : "r8", "r9", "r10", "r11", "r12", "r13", "ymm12", "ymm13", "ymm14", "ymm15",
            "memory", "cc");
    } else {
      for (int64_t c = 0, off = 0; c < len; ++c, off += a_cs) CNNK_STEP(off)
    }
  }
#undef CNNK_STEP
  _mm256_storeu_ps(out + 0, c00);
  _mm256_storeu_ps(out + 8, c01);
  _mm256_storeu_ps(out + 16, c10);
  _mm256_storeu_ps(out + 24, c11);
  _mm256_storeu_ps(out + 32, c20);
  _mm256_storeu_ps(out + 40, c21);
  _mm256_storeu_ps(out + 48, c30);
  _mm256_storeu_ps(out + 56, c31);
  _mm256_storeu_ps(out + 64, c40);
  _mm256_storeu_ps(out + 72, c41);
  _mm256_storeu_ps(out + 80, c50);
  _mm256_storeu_ps(out + 88, c51);
}
#endif

// tile / tile_add of type T on the implementation IMPL<Add>
#define CNNK_TILE_DEFINE(T, IMPL)                                                            \
  void tile(const T* const* a, const int64_t* a_off, const T* b, const int64_t* b_off,       \
            int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, T* out) {                 \
    IMPL<false>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);                             \
  }                                                                                          \
  void tile_add(const T* const* a, const int64_t* a_off, const T* b, const int64_t* b_off,   \
                int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, T* out) {             \
    IMPL<true>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);                              \
  }
#ifdef CNNK_CONV_AVX2
CNNK_TILE_DEFINE(float, tile_avx2)
#else
CNNK_TILE_DEFINE(float, tile_portable)
#endif
CNNK_TILE_DEFINE(double, tile_portable)
#undef CNNK_TILE_DEFINE

// Winograd F(2x2, 3x3) transforms (Lavin and Gray, 2016), vectorised along
// the channels:
//   input   B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   output  A^T m A, A^T = [1 1 1 0; 0 1 -1 -1]
// (the weight transform G g G^T runs once per call, in conv.cpp).
template <typename T>
inline void wino_in_impl(const T* __restrict x, int64_t sR, int64_t sC, int64_t C,
                         T* __restrict v, int64_t vs) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    T t[4][4];
    for (int j = 0; j < 4; ++j) {
      const T d0 = x[j * sC + c], d1 = x[sR + j * sC + c];
      const T d2 = x[2 * sR + j * sC + c], d3 = x[3 * sR + j * sC + c];
      t[0][j] = d0 - d2;
      t[1][j] = d1 + d2;
      t[2][j] = d2 - d1;
      t[3][j] = d1 - d3;
    }
    for (int i = 0; i < 4; ++i) {
      v[(4 * i + 0) * vs + c] = t[i][0] - t[i][2];
      v[(4 * i + 1) * vs + c] = t[i][1] + t[i][2];
      v[(4 * i + 2) * vs + c] = t[i][2] - t[i][1];
      v[(4 * i + 3) * vs + c] = t[i][1] - t[i][3];
    }
  }
}

template <typename T>
inline void wino_out_impl(const T* __restrict m, int64_t ms, const T* __restrict bias,
                          T* __restrict y, int64_t yr, int64_t yc) {
#pragma omp simd
  for (int j = 0; j < 16; ++j) {
    T s0[4], s1[4];
    for (int q = 0; q < 4; ++q) {
      const T m0 = m[q * ms + j], m1 = m[(4 + q) * ms + j];
      const T m2 = m[(8 + q) * ms + j], m3 = m[(12 + q) * ms + j];
      s0[q] = m0 + m1 + m2;
      s1[q] = m1 - m2 - m3;
    }
    const T b = bias[j];
    y[j] = s0[0] + s0[1] + s0[2] + b;
    y[yc + j] = s0[1] - s0[2] - s0[3] + b;
    y[yr + j] = s1[0] + s1[1] + s1[2] + b;
    y[yr + yc + j] = s1[1] - s1[2] - s1[3] + b;
  }
}

// Winograd F(2x2, 2x2) (the stride phases of a 4x4, stride-2 transposed
// convolution), vectorised along the channels:
//   input   B^T d B, B^T = [1 -1 0; 0 1 0; 0 -1 1]  (a 3x3 tile, 9 values)
//   output  A^T m A, A^T = [1 1 0; 0 1 1]
// (weights G g G^T, G = [1 0; 1 1; 0 1], in conv.cpp): 9 multiplies per 2x2
// outputs and channel pair instead of 16.
template <typename T>
inline void wino22_in_impl(const T* __restrict x, int64_t sR, int64_t sC, int64_t C,
                           T* __restrict v, int64_t vs) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    T t[3][3];
    for (int j = 0; j < 3; ++j) {
      const T d0 = x[j * sC + c], d1 = x[sR + j * sC + c], d2 = x[2 * sR + j * sC + c];
      t[0][j] = d0 - d1;
      t[1][j] = d1;
      t[2][j] = d2 - d1;
    }
    for (int i = 0; i < 3; ++i) {
      v[(3 * i + 0) * vs + c] = t[i][0] - t[i][1];
      v[(3 * i + 1) * vs + c] = t[i][1];
      v[(3 * i + 2) * vs + c] = t[i][2] - t[i][1];
    }
  }
}

template <typename T>
inline void wino22_out_impl(const T* __restrict m, int64_t ms, const T* __restrict bias,
                            T* __restrict y, int64_t yr, int64_t yc) {
#pragma omp simd
  for (int j = 0; j < 16; ++j) {
    T s0[3], s1[3];
    for (int q = 0; q < 3; ++q) {
      const T m0 = m[q * ms + j], m1 = m[(3 + q) * ms + j], m2 = m[(6 + q) * ms + j];
      s0[q] = m0 + m1;
      s1[q] = m1 + m2;
    }
    const T b = bias[j];
    y[j] = s0[0] + s0[1] + b;
    y[yc + j] = s0[1] + s0[2] + b;
    y[yr + j] = s1[0] + s1[1] + b;
    y[yr + yc + j] = s1[1] + s1[2] + b;
  }
}

// F(2x2, 2x2)'s weight-gradient transform of a 2x2 output-gradient tile (as
// wino_gout's): m[xi * ms + k] = (A e A^T)[xi], A = [1 0; 1 1; 0 1].
template <typename T>
inline void wino22_gout_impl(const T* __restrict g, int64_t sR, int64_t sC, int64_t C, int nr,
                             int nc, T* __restrict m, int64_t ms) {
#pragma omp simd
  for (int64_t k = 0; k < C; ++k) {
    const T e00 = g[k], e01 = nc > 1 ? g[sC + k] : T(0);
    const T e10 = nr > 1 ? g[sR + k] : T(0), e11 = nr > 1 && nc > 1 ? g[sR + sC + k] : T(0);
    const T r[3][2] = {{e00, e01}, {e00 + e10, e01 + e11}, {e10, e11}};
    for (int i = 0; i < 3; ++i) {
      m[(3 * i + 0) * ms + k] = r[i][0];
      m[(3 * i + 1) * ms + k] = r[i][0] + r[i][1];
      m[(3 * i + 2) * ms + k] = r[i][1];
    }
  }
}

// The weight gradient's transform of a 2x2 output-gradient tile e[r][c] =
// g[r * sR + c * sC + k] (zero where the tile leaves the output: nr / nc
// rows / columns inside): m[xi * ms + k] = (A e A^T)[xi], A = [1 0; 1 1;
// 1 -1; 0 -1], for k < C.
template <typename T>
inline void wino_gout_impl(const T* __restrict g, int64_t sR, int64_t sC, int64_t C, int nr,
                           int nc, T* __restrict m, int64_t ms) {
#pragma omp simd
  for (int64_t k = 0; k < C; ++k) {
    const T e00 = g[k], e01 = nc > 1 ? g[sC + k] : T(0);
    const T e10 = nr > 1 ? g[sR + k] : T(0), e11 = nr > 1 && nc > 1 ? g[sR + sC + k] : T(0);
    // rows of A e: [e00 e01], [e00+e10 e01+e11], [e00-e10 e01-e11], [-e10 -e11]
    const T r[4][2] = {{e00, e01}, {e00 + e10, e01 + e11}, {e00 - e10, e01 - e11}, {-e10, -e11}};
    for (int i = 0; i < 4; ++i) {
      m[(4 * i + 0) * ms + k] = r[i][0];
      m[(4 * i + 1) * ms + k] = r[i][0] + r[i][1];
      m[(4 * i + 2) * ms + k] = r[i][0] - r[i][1];
      m[(4 * i + 3) * ms + k] = -r[i][1];
    }
  }
}

#define CNNK_CONV_DEFINE(T)                                                      \
  void pad_rows(const T* src, int64_t ss, int64_t cs, int64_t nrows, int64_t j0, int64_t j1, \
                T* dst, int64_t Wp) {                                                    \
    pad_rows_impl(src, ss, cs, nrows, j0, j1, dst, Wp);                                  \
  }                                                                                      \
  void axpy(T* acc, const T* x, int64_t n, int64_t s, T w) {                    \
    axpy_impl(acc, x, n, s, w);                                                  \
  }                                                                              \
  void axpy_scatter(T* acc, const T* x, int64_t n, int64_t s, T w) {            \
    axpy_scatter_impl(acc, x, n, s, w);                                          \
  }                                                                              \
  double dot(const T* a, const T* x, int64_t n, int64_t s) { return dot_impl(a, x, n, s); } \
  void vmac(T* acc, const T* w, const T* x, int64_t n) { vmac_impl(acc, w, x, n); }            \
  void wino_in(const T* x, int64_t sR, int64_t sC, int64_t C, T* v, int64_t vs) {               \
    wino_in_impl(x, sR, sC, C, v, vs);                                                         \
  }                                                                                            \
  void wino_out(const T* m, int64_t ms, const T* bias, T* y, int64_t yr, int64_t yc) {          \
    wino_out_impl(m, ms, bias, y, yr, yc);                                                     \
  }                                                                                            \
  void wino_gout(const T* g, int64_t sR, int64_t sC, int64_t C, int nr, int nc, T* m,          \
                 int64_t ms) {                                                                 \
    wino_gout_impl(g, sR, sC, C, nr, nc, m, ms);                                               \
  }                                                                                            \
  void wino22_in(const T* x, int64_t sR, int64_t sC, int64_t C, T* v, int64_t vs) {             \
    wino22_in_impl(x, sR, sC, C, v, vs);                                                       \
  }                                                                                            \
  void wino22_out(const T* m, int64_t ms, const T* bias, T* y, int64_t yr, int64_t yc) {        \
    wino22_out_impl(m, ms, bias, y, yr, yc);                                                   \
  }                                                                                            \
  void wino22_gout(const T* g, int64_t sR, int64_t sC, int64_t C, int nr, int nc, T* m,        \
                   int64_t ms) {                                                               \
    wino22_gout_impl(g, sR, sC, C, nr, nc, m, ms);                                             \
  }

CNNK_CONV_DEFINE(float)
CNNK_CONV_DEFINE(double)
#undef CNNK_CONV_DEFINE

}  // namespace CNNK_CONV_NS
}  // namespace conv
}  // namespace cpu
}  // namespace cnnkernels
