// AVX-512 builds of the float32 max pool forward, picked at run time by
// pool2d.cpp on processors with AVX-512F: NCHW with 3x3 windows, stride 2
// and padding 1 (ResNet's stem pool) when OW >= 16, and channels_last (any
// geometry). Nothing from torch is included under the target (see
// pool2d_kernels.h).
//
// The same plan as the AVX2 kernel (pool2d_avx2.cpp, max_k3s2p1_impl), 16
// output columns a register: per input row, two loads and two two-source
// permutes give the window's middle (even) and right (odd) input columns,
// two more loads one column to the left its left column (the first block's
// padding lane masked: no access there, -inf in it). Each tap is two
// compares into a mask (v > m, or v is NaN: torch's rule, the first maximum
// and the last NaN win) and two masked moves, where AVX2 needs a compare, an
// unordered compare, an or and two variable blends on 8 lanes: about a third
// of the instructions per output, and four blocks' chains in flight.
#include <algorithm>
#include <cstdint>

#include "pool2d_kernels.h"

#pragma GCC target("avx512f,avx2,fma")
// GCC 12's 256-bit extracts and widening moves pass an undefined source
// under a full mask, which -Wmaybe-uninitialized reports at every use: a
// false positive of the header (as in conv_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

namespace cnnkernels {
namespace cpu {
namespace avx512 {
namespace {

template <bool Idx>
void k3s2p1_impl(const float* in, float* out, int64_t* ind, int64_t p0, int64_t p1,
                 const PoolPlan& p) {
  const int64_t H = p.H, W = p.W, OH = p.OH, OW = p.OW;
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i two_j = even;  // 2 j per lane
  constexpr int NB = 4;
  const int64_t nblk = (OW + 15) / 16;  // starts 16 i, the last at OW - 16
  auto start = [&](int64_t i) { return i == nblk - 1 ? OW - 16 : 16 * i; };
  for (int64_t plane = p0; plane < p1; ++plane) {
    const float* src = in + plane * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t top = 2 * oh - 1;  // input row of kh = 0
      const int64_t kh0 = oh == 0 ? 1 : 0, kh1 = top + 2 < H ? 3 : 2;
      float* orow = out + (plane * OH + oh) * OW;
      int64_t* irow = Idx ? ind + (plane * OH + oh) * OW : nullptr;
      for (int64_t i = 0; i < nblk; i += NB) {
        const int nb = (int)(nblk - i < NB ? nblk - i : NB);
        int64_t ows[NB];
        __m512 m[NB];
        __m512i mi[NB];
        for (int b = 0; b < NB; ++b) {
          ows[b] = b < nb ? start(i + b) : 0;
          m[b] = ninf;
          // the first valid position: row max(top, 0), column max(2 (ow + j) - 1, 0)
          mi[b] = _mm512_set1_epi32((int32_t)(kh0 * W));
        }
        const bool first = i == 0;
        if (first) mi[0] = _mm512_mask_add_epi32(mi[0], 1, mi[0], _mm512_set1_epi32(1));
        for (int64_t kh = kh0; kh < kh1; ++kh) {
          const __m512i offs[3] = {_mm512_set1_epi32((int32_t)(kh * W)),
                                   _mm512_set1_epi32((int32_t)(kh * W + 1)),
                                   _mm512_set1_epi32((int32_t)(kh * W + 2))};
          __m512 v[NB][3];
#pragma GCC unroll 4
          for (int b = 0; b < NB; ++b) {
            if (b >= nb) break;
            const float* row = src + (top + kh) * W + 2 * ows[b];
            const __m512 a = _mm512_loadu_ps(row), c = _mm512_loadu_ps(row + 16);
            const __m512 la = b == 0 && first ? _mm512_mask_loadu_ps(ninf, 0xFFFE, row - 1)
                                              : _mm512_loadu_ps(row - 1);
            const __m512 lc = _mm512_loadu_ps(row + 15);
            v[b][0] = _mm512_permutex2var_ps(la, even, lc);
            v[b][1] = _mm512_permutex2var_ps(a, even, c);
            v[b][2] = _mm512_permutex2var_ps(a, odd, c);
          }
#pragma GCC unroll 3
          for (int kw = 0; kw < 3; ++kw) {
#pragma GCC unroll 4
            for (int b = 0; b < NB; ++b) {
              if (b >= nb) break;
              const __mmask16 take = _mm512_cmp_ps_mask(v[b][kw], m[b], _CMP_GT_OQ) |
                                     _mm512_cmp_ps_mask(v[b][kw], v[b][kw], _CMP_UNORD_Q);
              m[b] = _mm512_mask_mov_ps(m[b], take, v[b][kw]);
              if (Idx) mi[b] = _mm512_mask_mov_epi32(mi[b], take, offs[kw]);
            }
          }
        }
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b) {
          if (b >= nb) break;
          _mm512_storeu_ps(orow + ows[b], m[b]);
          if (Idx) {
            const __m512i corner =
                _mm512_add_epi32(_mm512_set1_epi32((int32_t)(top * W + 2 * ows[b] - 1)), two_j);
            const __m512i idx = _mm512_add_epi32(mi[b], corner);
            _mm512_storeu_si512(irow + ows[b], _mm512_cvtepi32_epi64(_mm512_castsi512_si256(idx)));
            _mm512_storeu_si512(irow + ows[b] + 8,
                                _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(idx, 1)));
          }
        }
      }
    }
  }
}

// torch's rule on 16 lanes: take v where v > m or v is NaN
inline __mmask16 take16(__m512 v, __m512 m) {
  return _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
}

// n (<= 16) int32 indices widened to int64
inline void store_idx16(int64_t* dst, __m512i idx, int64_t n) {
  const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(idx));
  const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(idx, 1));
  if (n == 16) {
    _mm512_storeu_si512(dst, lo);
    _mm512_storeu_si512(dst + 8, hi);
    return;
  }
  const __mmask8 mlo = (__mmask8)(n >= 8 ? 0xFF : (1u << n) - 1u);
  const __mmask8 mhi = (__mmask8)(n <= 8 ? 0 : (1u << (n - 8)) - 1u);
  _mm512_mask_storeu_epi64(dst, mlo, lo);
  _mm512_mask_storeu_epi64(dst + 8, mhi, hi);
}

// The valid window taps of one output pixel: rows [kh0, kh1), columns
// [kw0, kw1), from input row hs and column ws (as pool2d_avx2.cpp's
// valid_range).
struct Taps {
  int64_t hs, ws, kh0, kh1, kw0, kw1;
};

inline Taps taps_of(int64_t oh, int64_t ow, const PoolPlan& p) {
  Taps t;
  t.hs = oh * p.sH - p.pH;
  t.ws = ow * p.sW - p.pW;
  t.kh0 = t.hs < 0 ? (-t.hs + p.dH - 1) / p.dH : 0;
  t.kw0 = t.ws < 0 ? (-t.ws + p.dW - 1) / p.dW : 0;
  t.kh1 = t.hs + (p.kH - 1) * p.dH < p.H ? p.kH : (p.H - 1 - t.hs) / p.dH + 1;
  t.kw1 = t.ws + (p.kW - 1) * p.dW < p.W ? p.kW : (p.W - 1 - t.ws) / p.dW + 1;
  if (t.kh1 < t.kh0) t.kh1 = t.kh0;
  if (t.kw1 < t.kw0) t.kw1 = t.kw0;
  return t;
}

// P output pixels side by side in one row (pixel j's window is pixel 0's
// moved j strides right, with the same valid taps), 64 channels from c:
// 4 P independent compare-and-move chains, unmasked. Each tap is a chain
// step of a compare into a mask, an or and a masked move, whose latency
// bounds the kernel: with one pixel's four chains, on an AMD EPYC (Zen 4)
// VM the 512-bit kernel ran at half the speed of the AVX2 one
// (16x64x56x56 2x2: 1.11 against 0.47 ms).
template <int P>
inline void nhwc_block64(const float* base, float* o, int64_t* oi, int64_t C, const Taps& t,
                         const PoolPlan& p) {
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  const int32_t first = (int32_t)((t.hs + t.kh0 * p.dH) * p.W + t.ws + t.kw0 * p.dW);
  __m512 m[P][4];
  __m512i mi[P][4];
#pragma GCC unroll 8
  for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      m[j][v] = ninf;
      mi[j][v] = _mm512_set1_epi32(first + (int32_t)(j * p.sW));
    }
  for (int64_t kh = t.kh0; kh < t.kh1; ++kh) {
    const int64_t ih = t.hs + kh * p.dH;
    for (int64_t kw = t.kw0; kw < t.kw1; ++kw) {
      const int64_t pos = ih * p.W + t.ws + kw * p.dW;
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        const float* src = base + (pos + j * p.sW) * C;
        const __m512i cand = _mm512_set1_epi32((int32_t)(pos + j * p.sW));
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          const __m512 x = _mm512_loadu_ps(src + 16 * v);
          const __mmask16 k = take16(x, m[j][v]);
          m[j][v] = _mm512_mask_mov_ps(m[j][v], k, x);
          mi[j][v] = _mm512_mask_mov_epi32(mi[j][v], k, cand);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      _mm512_storeu_ps(o + j * C + 16 * v, m[j][v]);
      if (oi) store_idx16(oi + j * C + 16 * v, mi[j][v], 16);
    }
}

// One output pixel, channels [c, C) in masked 16-channel vectors (C - c < 64).
inline void nhwc_tail(const float* base, float* o, int64_t* oi, int64_t C, int64_t c,
                      const Taps& t, const PoolPlan& p) {
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  const int32_t first = (int32_t)((t.hs + t.kh0 * p.dH) * p.W + t.ws + t.kw0 * p.dW);
  for (; c < C; c += 16) {
    const int64_t k = C - c;
    const __mmask16 lm = (__mmask16)(k >= 16 ? 0xFFFF : (1u << k) - 1u);
    __m512 m = ninf;
    __m512i mi = _mm512_set1_epi32(first);
    for (int64_t kh = t.kh0; kh < t.kh1; ++kh) {
      const int64_t ih = t.hs + kh * p.dH;
      for (int64_t kw = t.kw0; kw < t.kw1; ++kw) {
        const int64_t pos = ih * p.W + t.ws + kw * p.dW;
        const __m512 x = _mm512_maskz_loadu_ps(lm, base + pos * C + c);
        const __mmask16 tk = take16(x, m) & lm;
        m = _mm512_mask_mov_ps(m, tk, x);
        mi = _mm512_mask_mov_epi32(mi, tk, _mm512_set1_epi32((int32_t)pos));
      }
    }
    _mm512_mask_storeu_ps(o + c, lm, m);
    if (oi) store_idx16(oi + c, mi, k >= 16 ? 16 : k);
  }
}

}  // namespace

// channels_last: output pixels two at a time where two neighbours in a row
// have the same valid taps (8 chains in flight), 64 channels a block, the
// window's taps in torch's order with its rule; channels past the last
// whole block one masked vector at a time.
// 16x64x56x56, two threads, interleaved medians, AMD EPYC (Zen 4) VM:
// 3x3 / 2 / 1 with indices 1.39 -> 0.52 ms, 2x2 1.11 -> 0.28 (in the same
// process the AVX2 kernel 0.80 and 0.39, torch 0.93 and 0.64). On the Intel Xeon VM of 2026-12-07 the
// one-pixel version ran 0.81 (0.94-0.99) ms against torch's 1.08 (1.18-1.28).
void max_pool2d_nhwc(const float* in, float* out, int64_t* ind, int64_t q0, int64_t q1,
                     const PoolPlan& p) {
  const int64_t C = p.C, C64 = C / 64 * 64;
  for (int64_t q = q0; q < q1;) {
    const int64_t n = q / (p.OH * p.OW);
    const int64_t oh = (q / p.OW) % p.OH, ow = q % p.OW;
    const Taps t = taps_of(oh, ow, p);
    const float* base = in + n * p.H * p.W * C;
    float* o = out + q * C;
    int64_t* oi = ind ? ind + q * C : nullptr;
    int np = 1;
    Taps u;
    if (ow + 1 < p.OW && q + 1 < q1) {
      u = taps_of(oh, ow + 1, p);
      if (u.kw0 == t.kw0 && u.kw1 == t.kw1) np = 2;
    }
    for (int64_t c = 0; c < C64; c += 64) {
      if (np == 2)
        nhwc_block64<2>(base + c, o + c, oi ? oi + c : nullptr, C, t, p);
      else
        nhwc_block64<1>(base + c, o + c, oi ? oi + c : nullptr, C, t, p);
    }
    if (C64 < C) {
      nhwc_tail(base, o, oi, C, C64, t, p);
      if (np == 2) nhwc_tail(base, o + C, oi ? oi + C : nullptr, C, C64, u, p);
    }
    q += np;
  }
}

// ---------------------------------------------------------------- avg pool
//
// The channels_last avg pool adds a window's taps in torch's order (rows,
// then columns) into one chain per output vector, as the AVX2 kernel does,
// then divides once: the same bits. The chains are latency bound (a 3x3
// window is nine dependent adds), so eight are kept in flight. (An NCHW
// version, 16-column blocks with masked edge loads and two rows at a time,
// ran 2.0-2.5 ms against the AVX2 kernel's 1.2-1.4 at 16x64x56x56 3x3 / 1 /
// 1 on the AMD EPYC VM, and was dropped.)

namespace {

// The avg pool window of output pixel (oh, ow): rows [h0, h1), columns
// [w0, w1) inside the input, and its divisor.
struct AvgWin {
  int64_t h0, h1, w0, w1;
  float div;
};

inline AvgWin avg_win(int64_t oh, int64_t ow, const PoolPlan& p, bool count_include_pad,
                      int64_t divisor) {
  const int64_t hs = oh * p.sH - p.pH, ws = ow * p.sW - p.pW;
  const int64_t he = std::min(hs + p.kH, p.H + p.pH), we = std::min(ws + p.kW, p.W + p.pW);
  AvgWin w;
  w.h0 = std::max<int64_t>(hs, 0), w.w0 = std::max<int64_t>(ws, 0);
  w.h1 = std::min(he, p.H), w.w1 = std::min(we, p.W);
  const int64_t pool = (he - hs) * (we - ws);
  w.div = (float)(divisor != 0 ? divisor
                               : (count_include_pad ? pool : (w.h1 - w.h0) * (w.w1 - w.w0)));
  return w;
}

// P neighbouring output pixels of a row (pixel j's window is pixel 0's moved
// j strides right, with the same divisor), 64 channels: 4 P chains.
template <int P>
inline void avg_nhwc_block64(const float* base, float* o, int64_t C, const AvgWin& w,
                             const PoolPlan& p) {
  __m512 s[P][4];
#pragma GCC unroll 8
  for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) s[j][v] = _mm512_setzero_ps();
  for (int64_t ih = w.h0; ih < w.h1; ++ih)
    for (int64_t iw = w.w0; iw < w.w1; ++iw) {
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        const float* src = base + (ih * p.W + iw + j * p.sW) * C;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) s[j][v] = _mm512_add_ps(s[j][v], _mm512_loadu_ps(src + 16 * v));
      }
    }
  const __m512 vd = _mm512_set1_ps(w.div);
#pragma GCC unroll 8
  for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(o + j * C + 16 * v, _mm512_div_ps(s[j][v], vd));
}

// One output pixel, channels [c, C) in masked 16-channel vectors.
inline void avg_nhwc_tail(const float* base, float* o, int64_t C, int64_t c, const AvgWin& w,
                          const PoolPlan& p) {
  const __m512 vd = _mm512_set1_ps(w.div);
  for (; c < C; c += 16) {
    const int64_t k = C - c;
    const __mmask16 lm = (__mmask16)(k >= 16 ? 0xFFFF : (1u << k) - 1u);
    __m512 s = _mm512_setzero_ps();
    for (int64_t ih = w.h0; ih < w.h1; ++ih)
      for (int64_t iw = w.w0; iw < w.w1; ++iw)
        s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(lm, base + (ih * p.W + iw) * C + c));
    _mm512_mask_storeu_ps(o + c, lm, _mm512_div_ps(s, vd));
  }
}

}  // namespace

// channels_last: output pixels two at a time where neighbours in a row have
// windows in step, 64 channels a block (8 chains); the rest one at a time.
// With a width stride the window rows two pixels ahead are prefetched (as in
// avx2::avg_pool2d_nhwc: the hardware prefetcher stops at 4 KB pages).
void avg_pool2d_nhwc(const float* in, float* out, int64_t q0, int64_t q1, const PoolPlan& p,
                     bool count_include_pad, int64_t divisor) {
  const int64_t C = p.C, C64 = C / 64 * 64;
  for (int64_t q = q0; q < q1;) {
    const int64_t n = q / (p.OH * p.OW);
    const int64_t oh = (q / p.OW) % p.OH, ow = q % p.OW;
    const AvgWin w = avg_win(oh, ow, p, count_include_pad, divisor);
    const float* base = in + n * p.H * p.W * C;
    float* o = out + q * C;
    if (p.sW > 1) {
      const int64_t ahead = 2 * p.sW * C;
      for (int64_t ih = w.h0; ih < w.h1; ++ih) {
        const char* r = reinterpret_cast<const char*>(base + (ih * p.W + w.w0) * C + ahead);
        for (int64_t b = 0; b < (w.w1 - w.w0) * C * 4; b += 64) _mm_prefetch(r + b, _MM_HINT_T0);
      }
    }
    int np = 1;
    AvgWin u;
    if (ow + 1 < p.OW && q + 1 < q1) {
      u = avg_win(oh, ow + 1, p, count_include_pad, divisor);
      if (u.w0 == w.w0 + p.sW && u.w1 == w.w1 + p.sW && u.div == w.div) np = 2;
    }
    for (int64_t c = 0; c < C64; c += 64) {
      if (np == 2)
        avg_nhwc_block64<2>(base + c, o + c, C, w, p);
      else
        avg_nhwc_block64<1>(base + c, o + c, C, w, p);
    }
    if (C64 < C) {
      avg_nhwc_tail(base, o, C, C64, w, p);
      if (np == 2) avg_nhwc_tail(base, o + C, C, C64, u, p);
    }
    q += np;
  }
}

void max_pool2d_nchw_k3s2p1(const float* in, float* out, int64_t* ind, int64_t p0, int64_t p1,
                            const PoolPlan& p) {
  ind ? k3s2p1_impl<true>(in, out, ind, p0, p1, p) : k3s2p1_impl<false>(in, out, ind, p0, p1, p);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace cnnkernels
