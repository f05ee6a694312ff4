// AVX2/FMA pooling kernels for float32 (picked at run time, see pool2d.cpp).
//
// NCHW forward: vectors run along the output width, 8 output columns per
// block, reading the input rows in place (no copy). Stride 1 is one unaligned
// load per tap, stride 2 two loads and one shuffle (lanes stay permuted until
// the block is stored), other strides a gather. Blocks that touch the padding
// or the ceil_mode overhang use masked loads (no access outside the row) with
// -inf (max) or 0 (avg) in the masked lanes. Window order is kh-major then
// kw and the update rule is torch's (v > max || isnan(v)); avg sums in the
// same order and divides once, so values and indices match torch bit for bit.
// Indices are kept as int32 (plane offset, H * W < 2^31) and widened on store.
// ResNet's 3x3 / stride 2 / padding 1 pool and the 2x2 / stride 2 pools have
// their own kernels (fixed rows, no per-row tables).
//
// NHWC forward: vectors run along channels, 32 channels per register block.
//
// Only <immintrin.h> and our plain header are included: nothing inline from
// torch or the standard library is instantiated under the AVX2 target.
#include "pool2d_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include <cstdint>

#pragma GCC target("avx2,fma")

namespace cnnkernels {
namespace cpu {
namespace avx2 {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

inline __m256i lane_ids() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }

inline __m256i tail_mask32(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)n), lane_ids());
}

// Store n (<= 8) int32 indices widened to int64. Partial blocks go through
// a stack buffer: AMD's masked stores (vmaskmov) are slow.
inline void store_idx(int64_t* dst, __m256i idx, int64_t n) {
  const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(idx));
  const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(idx, 1));
  if (n == 8) {
    _mm256_storeu_si256((__m256i*)dst, lo);
    _mm256_storeu_si256((__m256i*)(dst + 4), hi);
    return;
  }
  alignas(32) int64_t tmp[8];
  _mm256_store_si256((__m256i*)tmp, lo);
  _mm256_store_si256((__m256i*)(tmp + 4), hi);
  for (int64_t j = 0; j < n; ++j) dst[j] = tmp[j];
}

inline void store_vals(float* dst, __m256 v, int64_t n) {
  if (n == 8) {
    _mm256_storeu_ps(dst, v);
    return;
  }
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, v);
  for (int64_t j = 0; j < n; ++j) dst[j] = tmp[j];
}

// Valid window range [k0, k1) along one axis for a window starting at `start`.
inline void valid_range(int64_t start, int64_t k, int64_t d, int64_t n, int64_t& k0, int64_t& k1) {
  k0 = start < 0 ? (-start + d - 1) / d : 0;
  k1 = start + (k - 1) * d < n ? k : (n - 1 - start) / d + 1;
  if (k1 < k0) k1 = k0;
}

// torch's rule: take v when v > m or v is NaN (so the first maximum wins and
// the last NaN wins).
inline __m256 take_mask(__m256 v, __m256 m) {
  return _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

// Lane order of an 8-wide block. Stride 2 de-interleaves two loads with one
// shuffle and leaves the lanes in the order [0 1 4 5 2 3 6 7] (one permute
// at the end restores it; the permutation is its own inverse). Other strides
// keep the natural order.
inline __m256i lane_order(int S) {
  return S == 2 ? _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7) : lane_ids();
}
inline __m256 unpermute_s2(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}
inline __m256i unpermute_s2(__m256i v) {
  return _mm256_permute4x64_epi64(v, _MM_SHUFFLE(3, 1, 2, 0));
}

// Lanes whose column c0 + offs[lane] lies in [0, W).
inline __m256i col_mask(int64_t c0, __m256i offs, int64_t W) {
  const __m256i cols = _mm256_add_epi32(_mm256_set1_epi32((int32_t)c0), offs);
  return _mm256_and_si256(_mm256_cmpgt_epi32(cols, _mm256_set1_epi32(-1)),
                          _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)W), cols));
}

// The 8 columns c0 + j * stride (j = 0..7, in lane_order) of one input row.
// Edge blocks mask out columns outside [0, W) (no memory access there) and
// put `fill` in their lanes: -inf for max (never taken), 0 for avg.
template <int S, bool Edge>
inline __m256 load_block(const float* row, int64_t c0, int64_t W, __m256i vsidx, __m256 fill) {
  if (S == 1) {
    if (!Edge) return _mm256_loadu_ps(row + c0);
    const __m256i m = col_mask(c0, lane_ids(), W);
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(row + c0, m), _mm256_castsi256_ps(m));
  }
  if (S == 2) {
    __m256 a, b;
    if (!Edge) {
      a = _mm256_loadu_ps(row + c0);
      b = _mm256_loadu_ps(row + c0 + 8);
    } else {
      const __m256i ma = col_mask(c0, lane_ids(), W), mb = col_mask(c0 + 8, lane_ids(), W);
      a = _mm256_blendv_ps(fill, _mm256_maskload_ps(row + c0, ma), _mm256_castsi256_ps(ma));
      b = _mm256_blendv_ps(fill, _mm256_maskload_ps(row + c0 + 8, mb), _mm256_castsi256_ps(mb));
    }
    return _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // cols 0 2 8 10 | 4 6 12 14
  }
  if (!Edge) return _mm256_i32gather_ps(row + c0, vsidx, 4);
  const __m256i m = col_mask(c0, vsidx, W);
  return _mm256_mask_i32gather_ps(fill, row + c0, vsidx, _mm256_castsi256_ps(m), 4);
}


// Stride 2, dilation 1: the taps kw and kw + 1 come from the same two loads
// (even and odd columns), halving the loads.
template <bool Edge>
inline void load_pair_s2(const float* row, int64_t c, int64_t W, __m256 fill, __m256& even,
                         __m256& odd) {
  __m256 a, b;
  if (!Edge) {
    a = _mm256_loadu_ps(row + c);
    b = _mm256_loadu_ps(row + c + 8);
  } else {
    const __m256i ma = col_mask(c, lane_ids(), W), mb = col_mask(c + 8, lane_ids(), W);
    a = _mm256_blendv_ps(fill, _mm256_maskload_ps(row + c, ma), _mm256_castsi256_ps(ma));
    b = _mm256_blendv_ps(fill, _mm256_maskload_ps(row + c + 8, mb), _mm256_castsi256_ps(mb));
  }
  even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // cols 0 2 8 10 | 4 6 12 14
  odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));   // cols 1 3 9 11 | 5 7 13 15
}

// Stride 2, dilation 1, a last even tap with no odd partner: the 8 even
// columns c, c + 2, ..., c + 14 without reading column c + 15 (which may lie
// past the end of the input). Same lane order as load_pair_s2.
inline __m256 load_even_s2(const float* row, int64_t c) {
  const __m256 a = _mm256_loadu_ps(row + c), b = _mm256_loadu_ps(row + c + 7);
  return _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 2, 0));  // cols 0 2 8 10 | 4 6 12 14
}

// Calls tap(kw, v) for every kw of one input row in order, v holding the 8
// columns c0 + kw * dW + j * stride of each of NB blocks (v[b]). KW > 0 fixes
// the kernel width at compile time.
template <int S, bool Edge, int NB, int KW, typename Tap>
inline void row_taps(const float* row, int64_t c0, const PoolPlan& p, __m256i vsidx, __m256 fill,
                     Tap&& tap) {
  const int64_t kW = KW > 0 ? KW : p.kW;
  const int64_t bstep = 8 * p.sW;
  if (S == 2 && p.dW == 1) {
#pragma GCC unroll 4
    for (int64_t kw = 0; kw < kW; kw += 2) {
      __m256 ev[NB], od[NB];
      if (Edge || kw + 1 < kW) {
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b)
          load_pair_s2<Edge>(row, c0 + kw + b * bstep, p.W, fill, ev[b], od[b]);
        tap(kw, ev);
        if (kw + 1 < kW) tap(kw + 1, od);
      } else {
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b) ev[b] = load_even_s2(row, c0 + kw + b * bstep);
        tap(kw, ev);
      }
    }
    return;
  }
#pragma GCC unroll 4
  for (int64_t kw = 0; kw < kW; ++kw) {
    __m256 v[NB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b)
      v[b] = load_block<S, Edge>(row, c0 + kw * p.dW + b * bstep, p.W, vsidx, fill);
    tap(kw, v);
  }
}

// NB consecutive 8-wide blocks (NB * 8 output columns starting at ob) of one
// max pool output row (window top hs, valid taps kh0..kh1) of one plane.
// Several blocks at once give independent compare/blend chains (the chain of
// one block is latency bound). Edge blocks run with NB = 1.
template <int S, bool Edge, int NB, int KW>
inline void max_blocks(const float* plane, float* orow, int64_t* irow, const PoolPlan& p,
                       const PoolTables& t, int64_t hs, int64_t kh0, int64_t kh1, int64_t ob,
                       __m256i vsidx) {
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff());
  const int32_t bstep = (int32_t)(8 * p.sW);  // input columns between blocks
  const int64_t c0 = ob * p.sW - p.pW;
  // Indices are tracked as offsets from each lane's window start column
  // (c0 + b * bstep + lane * sW): tap (ih, kw) has offset ih * W + kw * dW,
  // the same for every lane and block (one broadcast per tap).
  const __m256i lane_col = _mm256_add_epi32(_mm256_set1_epi32((int32_t)c0), vsidx);
  __m256 m[NB];
  __m256i mi[NB];
  const __m256i row0 = _mm256_set1_epi32((int32_t)((hs + kh0 * p.dH) * p.W));
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    m[b] = ninf;
    __m256i first = _mm256_loadu_si256((const __m256i*)(t.first_iw + ob + 8 * b));
    if (S == 2) first = unpermute_s2(first);  // natural -> lane order
    const __m256i col = _mm256_add_epi32(lane_col, _mm256_set1_epi32(b * bstep));
    mi[b] = _mm256_add_epi32(row0, _mm256_sub_epi32(first, col));
  }
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const int64_t ih = hs + kh * p.dH;
    row_taps<S, Edge, NB, KW>(plane + ih * p.W, c0, p, vsidx, ninf, [&](int64_t kw, const __m256* v) {
      const __m256 off = _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)(ih * p.W + kw * p.dW)));
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) {
        const __m256 take = take_mask(v[b], m[b]);
        m[b] = _mm256_blendv_ps(m[b], v[b], take);
        mi[b] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(mi[b]), off, take));
      }
    });
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    mi[b] = _mm256_add_epi32(mi[b], _mm256_add_epi32(lane_col, _mm256_set1_epi32(b * bstep)));
    if (S == 2) {
      m[b] = unpermute_s2(m[b]);
      mi[b] = unpermute_s2(mi[b]);
    }
    const int64_t o = ob + 8 * b;
    const int64_t n = imin(8, p.OW - o);
    store_vals(orow + o, m[b], n);
    if (irow) store_idx(irow + o, mi[b], n);
  }
}

// Walks one output row along the precomputed plan: f(ob, nb, edge).
template <typename F>
inline void for_row_blocks(const PoolTables& t, F&& f) {
  for (int64_t i = 0; i < t.nseg; ++i) f(t.seg[3 * i], t.seg[3 * i + 1], t.seg[3 * i + 2] != 0);
}

template <int S, int KW>
void max_nchw_impl(const float* in, float* out, int64_t* ind, int64_t p0, int64_t p1,
                   const PoolPlan& p, const PoolTables& t) {
  // Column offsets of the lanes (lane order), also the index-candidate offsets.
  const __m256i vsidx = _mm256_mullo_epi32(lane_order(S), _mm256_set1_epi32((int32_t)p.sW));
  for (int64_t plane = p0; plane < p1; ++plane) {
    const float* src = in + plane * p.H * p.W;
    for (int64_t oh = 0; oh < p.OH; ++oh) {
      const int64_t hs = oh * p.sH - p.pH;
      int64_t kh0, kh1;
      valid_range(hs, p.kH, p.dH, p.H, kh0, kh1);
      float* orow = out + (plane * p.OH + oh) * p.OW;
      int64_t* irow = ind ? ind + (plane * p.OH + oh) * p.OW : nullptr;
      for_row_blocks(t, [&](int64_t ob, int nb, bool edge) {
        if (edge)
          max_blocks<S, true, 1, KW>(src, orow, irow, p, t, hs, kh0, kh1, ob, vsidx);
        else if (nb == 4)
          max_blocks<S, false, 4, KW>(src, orow, irow, p, t, hs, kh0, kh1, ob, vsidx);
        else if (nb == 3)
          max_blocks<S, false, 3, KW>(src, orow, irow, p, t, hs, kh0, kh1, ob, vsidx);
        else if (nb == 2)
          max_blocks<S, false, 2, KW>(src, orow, irow, p, t, hs, kh0, kh1, ob, vsidx);
        else
          max_blocks<S, false, 1, KW>(src, orow, irow, p, t, hs, kh0, kh1, ob, vsidx);
      });
    }
  }
}

// NB blocks of R avg pool output rows (row r's window rows are row 0's
// moved r strides down, as many): sums in torch's order (rows, then
// columns; padding adds +0), then one exact division. Each block's sum is
// one dependent chain of adds (kH kW of them), so NB x R chains run side by
// side: one row's few blocks (a 56-wide row is an edge block, a group of 4, a
// single one and an edge block) left the adds latency bound; two rows at a
// time, 16x64x56x56 3x3 / 1 / 1 on two threads (AMD EPYC VM, medians):
// 1.64 -> 1.41 ms (best 1.49 -> 1.12), 80 calls each in one process. The
// edge blocks (masked loads) now take about a third of the time.
template <int S, bool Edge, int NB, int KW, int R>
inline void avg_blocks(const float* plane, float* orow, const PoolPlan& p, const PoolTables& t,
                       int64_t h0, int64_t h1, float rc, int64_t divisor, int64_t ob,
                       __m256i vsidx) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 s[R][NB];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) s[r][b] = zero;
  const int64_t c0 = ob * p.sW - p.pW;
  for (int64_t ih = h0; ih < h1; ++ih) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      row_taps<S, Edge, NB, KW>(plane + (ih + r * p.sH) * p.W, c0, p, vsidx, zero,
                                [&](int64_t, const __m256* v) {
#pragma GCC unroll 4
                                  for (int b = 0; b < NB; ++b) s[r][b] = _mm256_add_ps(s[r][b], v[b]);
                                });
    }
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    const int64_t o = ob + 8 * b;
    const __m256 div = divisor != 0 ? _mm256_set1_ps((float)divisor)
                                    : _mm256_mul_ps(_mm256_set1_ps(rc),
                                                    _mm256_loadu_ps(t.col_count + o));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 sum = S == 2 ? unpermute_s2(s[r][b]) : s[r][b];
      store_vals(orow + r * p.OW + o, _mm256_div_ps(sum, div), imin(8, p.OW - o));
    }
  }
}

template <int S, int KW, int R>
inline void avg_rows(const float* src, float* orow, const PoolPlan& p, const PoolTables& t,
                     int64_t h0, int64_t h1, float rc, int64_t divisor, __m256i vsidx) {
  for_row_blocks(t, [&](int64_t ob, int nb, bool edge) {
    if (edge)
      avg_blocks<S, true, 1, KW, R>(src, orow, p, t, h0, h1, rc, divisor, ob, vsidx);
    else if (nb == 4)
      avg_blocks<S, false, 4, KW, R>(src, orow, p, t, h0, h1, rc, divisor, ob, vsidx);
    else if (nb == 3)
      avg_blocks<S, false, 3, KW, R>(src, orow, p, t, h0, h1, rc, divisor, ob, vsidx);
    else if (nb == 2)
      avg_blocks<S, false, 2, KW, R>(src, orow, p, t, h0, h1, rc, divisor, ob, vsidx);
    else
      avg_blocks<S, false, 1, KW, R>(src, orow, p, t, h0, h1, rc, divisor, ob, vsidx);
  });
}

template <int S, int KW>
void avg_nchw_impl(const float* in, float* out, int64_t p0, int64_t p1, const PoolPlan& p,
                   const PoolTables& t, bool count_include_pad, int64_t divisor) {
  const __m256i vsidx = _mm256_mullo_epi32(lane_order(S), _mm256_set1_epi32((int32_t)p.sW));
  // window rows [h0, h1) of output row oh, and its row count
  auto rows_of = [&](int64_t oh, int64_t& h0, int64_t& h1) {
    const int64_t hs = oh * p.sH - p.pH;
    const int64_t he = imin(hs + p.kH, p.H + p.pH);
    h0 = imax(hs, 0), h1 = imin(he, p.H);
    return (float)(count_include_pad ? he - hs : h1 - h0);
  };
  for (int64_t plane = p0; plane < p1; ++plane) {
    const float* src = in + plane * p.H * p.W;
    for (int64_t oh = 0; oh < p.OH;) {
      int64_t h0, h1, g0, g1;
      const float rc = rows_of(oh, h0, h1);
      float* orow = out + (plane * p.OH + oh) * p.OW;
      // the next row in step: its window rows this one's moved one stride down
      if (oh + 1 < p.OH && rows_of(oh + 1, g0, g1) == rc && g0 == h0 + p.sH && g1 == h1 + p.sH) {
        avg_rows<S, KW, 2>(src, orow, p, t, h0, h1, rc, divisor, vsidx);
        oh += 2;
      } else {
        avg_rows<S, KW, 1>(src, orow, p, t, h0, h1, rc, divisor, vsidx);
        oh += 1;
      }
    }
  }
}

}  // namespace

// 3x3 windows, stride 2, padding 1 (ResNet's stem pool), W even, OW = W / 2
// >= 8, OH = (H + 1) / 2: every window row is one block loop over three
// fixed input rows, without the per-row tables of the general kernel. Per
// input row, two loads give the window's middle and right columns (even and
// odd, de-interleaved) and two more, one column to the left, its left column;
// the first block masks that column's padding lane. Taps in torch's order
// (kh, then kw) with its update rule; indices as offsets from each lane's
// window corner, made absolute at the end.
template <bool Idx>
void max_k3s2p1_impl(const float* in, float* out, int64_t* ind, int64_t p0, int64_t p1,
                     const PoolPlan& p) {
  const int64_t H = p.H, W = p.W, OH = p.OH, OW = p.OW;
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff());
  // each lane's window column j (lane order of a stride-2 block)
  const __m256i jl = lane_order(2);
  const __m256i two_j = _mm256_add_epi32(jl, jl);
  const __m256i not_first = _mm256_cmpgt_epi32(lane_ids(), _mm256_setzero_si256());
  const __m256i first_lane = _mm256_cmpeq_epi32(jl, _mm256_setzero_si256());
  // NB blocks at a time: each block's nine updates form one dependent chain
  // (compare, or, blend: about 5 cycles a tap), so groups keep NB chains in
  // flight (4 against 2: 16x64x56x56 on two threads 1.22 -> 1.08 ms, best of
  // 60; 3: 1.19). Block starts 0, 8, ..., and OW - 8 last (shifted back when
  // OW % 8 != 0; it rewrites a few outputs with the same values).
  constexpr int NB = 4;
  auto blocks = [&](const float* src, float* orow, int64_t* irow, int64_t top, int64_t kh0,
                    int64_t kh1, const int64_t* ows, int nb, bool first) {
    __m256 m[NB];
    __m256i mi[NB];
    // the first valid position: row max(top, 0), column max(2 (ow + j) - 1, 0)
    for (int b = 0; b < NB; ++b) m[b] = ninf, mi[b] = _mm256_set1_epi32((int32_t)(kh0 * W));
    if (first) mi[0] = _mm256_sub_epi32(mi[0], first_lane);
    for (int64_t kh = kh0; kh < kh1; ++kh) {
      const __m256 off = _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)(kh * W)));
      const __m256 one = _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)(kh * W + 1)));
      const __m256 two_ = _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)(kh * W + 2)));
      const __m256 offs[3] = {off, one, two_};
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b) {
          if (b >= nb) break;
          const float* row = src + (top + kh) * W + 2 * ows[b];
          __m256 v;
          if (kw == 0) {
            const __m256 la =
                b == 0 && first
                    ? _mm256_blendv_ps(ninf, _mm256_maskload_ps(row - 1, not_first),
                                       _mm256_castsi256_ps(not_first))
                    : _mm256_loadu_ps(row - 1);
            v = _mm256_shuffle_ps(la, _mm256_loadu_ps(row + 7), _MM_SHUFFLE(2, 0, 2, 0));
          } else if (kw == 1) {
            v = _mm256_shuffle_ps(_mm256_loadu_ps(row), _mm256_loadu_ps(row + 8),
                                  _MM_SHUFFLE(2, 0, 2, 0));
          } else {
            v = _mm256_shuffle_ps(_mm256_loadu_ps(row), _mm256_loadu_ps(row + 8),
                                  _MM_SHUFFLE(3, 1, 3, 1));
          }
          const __m256 take = take_mask(v, m[b]);
          m[b] = _mm256_blendv_ps(m[b], v, take);
          if (Idx)
            mi[b] = _mm256_castps_si256(
                _mm256_blendv_ps(_mm256_castsi256_ps(mi[b]), offs[kw], take));
        }
      }
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      if (b >= nb) break;
      _mm256_storeu_ps(orow + ows[b], unpermute_s2(m[b]));
      if (Idx) {
        const __m256i corner =
            _mm256_add_epi32(_mm256_set1_epi32((int32_t)(top * W + 2 * ows[b] - 1)), two_j);
        store_idx(irow + ows[b], unpermute_s2(_mm256_add_epi32(mi[b], corner)), 8);
      }
    }
  };
  const int64_t nblk = (OW + 7) / 8;  // starts 8 i, the last at OW - 8
  auto start = [&](int64_t i) { return i == nblk - 1 ? OW - 8 : 8 * i; };
  for (int64_t plane = p0; plane < p1; ++plane) {
    const float* src = in + plane * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t top = 2 * oh - 1;  // input row of kh = 0
      const int64_t kh0 = oh == 0 ? 1 : 0, kh1 = top + 2 < H ? 3 : 2;
      float* orow = out + (plane * OH + oh) * OW;
      int64_t* irow = Idx ? ind + (plane * OH + oh) * OW : nullptr;
      for (int64_t i = 0; i < nblk; i += NB) {
        int64_t ows[NB];
        const int nb = (int)imin(NB, nblk - i);
        for (int b = 0; b < NB; ++b) ows[b] = b < nb ? start(i + b) : 0;
        blocks(src, orow, irow, top, kh0, kh1, ows, nb, i == 0);
      }
    }
  }
}

// 2x2 windows, stride 2, no padding, OW >= 8, every window inside the input
// (VGG's, LeNet's and AlexNet-style pools): two rows, two loads each, split
// into even and odd columns; taps in torch's order (0,0), (0,1), (1,0), (1,1).
// Mode 0: average (sum from +0, then one division by div); 1: max values;
// 2: max values and indices. Two blocks at a time (independent chains).
template <int Mode>
void k2s2_impl(const float* in, float* out, int64_t* ind, int64_t p0, int64_t p1,
               const PoolPlan& p, float div) {
  const int64_t H = p.H, W = p.W, OH = p.OH, OW = p.OW;
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff()), zero = _mm256_setzero_ps();
  const __m256 vdiv = _mm256_set1_ps(div);
  const __m256i jl = lane_order(2);
  const __m256i two_j = _mm256_add_epi32(jl, jl);
  const __m256 offs[4] = {_mm256_castsi256_ps(_mm256_set1_epi32(0)),
                          _mm256_castsi256_ps(_mm256_set1_epi32(1)),
                          _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)W)),
                          _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)W + 1))};
  const int64_t nblk = (OW + 7) / 8;  // starts 8 i, the last at OW - 8
  auto start = [&](int64_t i) { return i == nblk - 1 ? OW - 8 : 8 * i; };
  for (int64_t plane = p0; plane < p1; ++plane) {
    const float* src = in + plane * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      float* orow = out + (plane * OH + oh) * OW;
      int64_t* irow = Mode == 2 ? ind + (plane * OH + oh) * OW : nullptr;
      for (int64_t i = 0; i < nblk; i += 2) {
        const int nb = i + 1 < nblk ? 2 : 1;
        const int64_t ows[2] = {start(i), nb == 2 ? start(i + 1) : 0};
#pragma GCC unroll 2
        for (int b = 0; b < 2; ++b) {
          if (b >= nb) break;
          const float* r0 = src + 2 * oh * W + 2 * ows[b];
          const float* r1 = r0 + W;
          const __m256 a0 = _mm256_loadu_ps(r0), c0 = _mm256_loadu_ps(r0 + 8);
          const __m256 a1 = _mm256_loadu_ps(r1), c1 = _mm256_loadu_ps(r1 + 8);
          const __m256 v[4] = {_mm256_shuffle_ps(a0, c0, _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm256_shuffle_ps(a0, c0, _MM_SHUFFLE(3, 1, 3, 1)),
                               _mm256_shuffle_ps(a1, c1, _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm256_shuffle_ps(a1, c1, _MM_SHUFFLE(3, 1, 3, 1))};
          if (Mode == 0) {
            __m256 sum = zero;
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) sum = _mm256_add_ps(sum, v[k]);
            _mm256_storeu_ps(orow + ows[b], unpermute_s2(_mm256_div_ps(sum, vdiv)));
          } else {
            __m256 m = ninf, mi = offs[0];
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
              const __m256 take = take_mask(v[k], m);
              m = _mm256_blendv_ps(m, v[k], take);
              if (Mode == 2) mi = _mm256_blendv_ps(mi, offs[k], take);
            }
            _mm256_storeu_ps(orow + ows[b], unpermute_s2(m));
            if (Mode == 2) {
              const __m256i corner =
                  _mm256_add_epi32(_mm256_set1_epi32((int32_t)(2 * oh * W + 2 * ows[b])), two_j);
              store_idx(irow + ows[b],
                        unpermute_s2(_mm256_add_epi32(_mm256_castps_si256(mi), corner)), 8);
            }
          }
        }
      }
    }
  }
}

void max_pool2d_nchw(const float* in, float* out, int64_t* ind, int64_t p0, int64_t p1,
                     const PoolPlan& p, const PoolTables& t) {
  if (is_k3s2p1(p)) {
    if (ind)
      max_k3s2p1_impl<true>(in, out, ind, p0, p1, p);
    else
      max_k3s2p1_impl<false>(in, out, ind, p0, p1, p);
    return;
  }
  if (is_k2s2(p)) {
    if (ind)
      k2s2_impl<2>(in, out, ind, p0, p1, p, 0.f);
    else
      k2s2_impl<1>(in, out, ind, p0, p1, p, 0.f);
    return;
  }
  // Kernel widths 2 and 3 (the common ones) are compiled with kW fixed.
  if (p.sW == 1)
    max_nchw_impl<1, 0>(in, out, ind, p0, p1, p, t);
  else if (p.sW == 2 && p.kW == 2)
    max_nchw_impl<2, 2>(in, out, ind, p0, p1, p, t);
  else if (p.sW == 2 && p.kW == 3)
    max_nchw_impl<2, 3>(in, out, ind, p0, p1, p, t);
  else if (p.sW == 2)
    max_nchw_impl<2, 0>(in, out, ind, p0, p1, p, t);
  else
    max_nchw_impl<0, 0>(in, out, ind, p0, p1, p, t);
}

void avg_pool2d_nchw(const float* in, float* out, int64_t p0, int64_t p1, const PoolPlan& p,
                     const PoolTables& t, bool count_include_pad, int64_t divisor) {
  if (is_k2s2(p)) {  // no padding, no overhang: every window counts 4
    k2s2_impl<0>(in, out, nullptr, p0, p1, p, divisor != 0 ? (float)divisor : 4.f);
    return;
  }
  if (p.sW == 1 && p.kW == 3)
    avg_nchw_impl<1, 3>(in, out, p0, p1, p, t, count_include_pad, divisor);
  else if (p.sW == 1)
    avg_nchw_impl<1, 0>(in, out, p0, p1, p, t, count_include_pad, divisor);
  else if (p.sW == 2 && p.kW == 2)
    avg_nchw_impl<2, 2>(in, out, p0, p1, p, t, count_include_pad, divisor);
  else if (p.sW == 2 && p.kW == 3)
    avg_nchw_impl<2, 3>(in, out, p0, p1, p, t, count_include_pad, divisor);
  else if (p.sW == 2)
    avg_nchw_impl<2, 0>(in, out, p0, p1, p, t, count_include_pad, divisor);
  else
    avg_nchw_impl<0, 0>(in, out, p0, p1, p, t, count_include_pad, divisor);
}

void max_pool2d_nhwc(const float* in, float* out, int64_t* ind, int64_t q0, int64_t q1,
                     const PoolPlan& p) {
  const int64_t C = p.C;
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff());
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / (p.OH * p.OW);
    const int64_t oh = (q / p.OW) % p.OH, ow = q % p.OW;
    const int64_t hs = oh * p.sH - p.pH, ws = ow * p.sW - p.pW;
    int64_t kh0, kh1, kw0, kw1;
    valid_range(hs, p.kH, p.dH, p.H, kh0, kh1);
    valid_range(ws, p.kW, p.dW, p.W, kw0, kw1);
    const float* base = in + n * p.H * p.W * C;
    float* o = out + q * C;
    int64_t* oi = ind ? ind + q * C : nullptr;
    const int32_t init = (int32_t)((hs + kh0 * p.dH) * p.W + ws + kw0 * p.dW);
    int64_t c = 0;
    for (; c + 32 <= C; c += 32) {
      __m256 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
      __m256 i0 = _mm256_castsi256_ps(_mm256_set1_epi32(init)), i1 = i0, i2 = i0, i3 = i0;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ih = hs + kh * p.dH;
        for (int64_t kw = kw0; kw < kw1; ++kw) {
          const int64_t pos = ih * p.W + ws + kw * p.dW;
          const float* src = base + pos * C + c;
          const __m256 cand = _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)pos));
          const __m256 v0 = _mm256_loadu_ps(src), v1 = _mm256_loadu_ps(src + 8);
          const __m256 v2 = _mm256_loadu_ps(src + 16), v3 = _mm256_loadu_ps(src + 24);
          const __m256 t0 = take_mask(v0, m0), t1 = take_mask(v1, m1);
          const __m256 t2 = take_mask(v2, m2), t3 = take_mask(v3, m3);
          m0 = _mm256_blendv_ps(m0, v0, t0);
          m1 = _mm256_blendv_ps(m1, v1, t1);
          m2 = _mm256_blendv_ps(m2, v2, t2);
          m3 = _mm256_blendv_ps(m3, v3, t3);
          i0 = _mm256_blendv_ps(i0, cand, t0);
          i1 = _mm256_blendv_ps(i1, cand, t1);
          i2 = _mm256_blendv_ps(i2, cand, t2);
          i3 = _mm256_blendv_ps(i3, cand, t3);
        }
      }
      _mm256_storeu_ps(o + c, m0);
      _mm256_storeu_ps(o + c + 8, m1);
      _mm256_storeu_ps(o + c + 16, m2);
      _mm256_storeu_ps(o + c + 24, m3);
      if (oi) {
        store_idx(oi + c, _mm256_castps_si256(i0), 8);
        store_idx(oi + c + 8, _mm256_castps_si256(i1), 8);
        store_idx(oi + c + 16, _mm256_castps_si256(i2), 8);
        store_idx(oi + c + 24, _mm256_castps_si256(i3), 8);
      }
    }
    for (; c < C; c += 8) {
      const int64_t nc = imin(8, C - c);
      const __m256i lm = tail_mask32(nc);
      __m256 m = ninf;
      __m256 mi = _mm256_castsi256_ps(_mm256_set1_epi32(init));
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ih = hs + kh * p.dH;
        for (int64_t kw = kw0; kw < kw1; ++kw) {
          const int64_t pos = ih * p.W + ws + kw * p.dW;
          const __m256 v = nc == 8 ? _mm256_loadu_ps(base + pos * C + c)
                                   : _mm256_maskload_ps(base + pos * C + c, lm);
          const __m256 tk = take_mask(v, m);
          m = _mm256_blendv_ps(m, v, tk);
          mi = _mm256_blendv_ps(mi, _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)pos)), tk);
        }
      }
      store_vals(o + c, m, nc);
      if (oi) store_idx(oi + c, _mm256_castps_si256(mi), nc);
    }
  }
}

void avg_pool2d_nhwc(const float* in, float* out, int64_t q0, int64_t q1, const PoolPlan& p,
                     bool count_include_pad, int64_t divisor) {
  const int64_t C = p.C;
  // With a stride, each window's rows two output pixels ahead are
  // prefetched: the rows' streams cross a 4 KB page every 16 input pixels of
  // 64 channels, where the hardware prefetcher stops. 16x64x56x56 2x2, 2
  // threads, 1000 interleaved calls, median us: 416 without, 374-383 one to
  // three pixels ahead (torch 399); 3x3 stride 2 797 -> 754. With stride 1
  // the windows overlap and the prefetches mostly hit lines already fetched:
  // 3x3 stride 1 2339 without, 2510 with.
  constexpr int64_t pfd = 2;
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / (p.OH * p.OW);
    const int64_t oh = (q / p.OW) % p.OH, ow = q % p.OW;
    const int64_t hs = oh * p.sH - p.pH, ws = ow * p.sW - p.pW;
    const int64_t he = imin(hs + p.kH, p.H + p.pH), we = imin(ws + p.kW, p.W + p.pW);
    const int64_t pool = (he - hs) * (we - ws);
    const int64_t h0 = imax(hs, 0), w0 = imax(ws, 0), h1 = imin(he, p.H), w1 = imin(we, p.W);
    const int64_t dv = divisor != 0 ? divisor : (count_include_pad ? pool : (h1 - h0) * (w1 - w0));
    const __m256 vdiv = _mm256_set1_ps((float)dv);
    const float* base = in + n * p.H * p.W * C;
    float* o = out + q * C;
    int64_t c = 0;
    if (p.sW > 1) {  // the window's rows pfd pixels ahead (past the row end: harmless)
      const int64_t ahead = pfd * p.sW * C;
      for (int64_t ih = h0; ih < h1; ++ih) {
        const char* r = reinterpret_cast<const char*>(base + (ih * p.W + w0) * C + ahead);
        for (int64_t b = 0; b < (w1 - w0) * C * 4; b += 64) _mm_prefetch(r + b, _MM_HINT_T0);
      }
    }
    for (; c + 32 <= C; c += 32) {
      __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t ih = h0; ih < h1; ++ih)
        for (int64_t iw = w0; iw < w1; ++iw) {
          const float* src = base + (ih * p.W + iw) * C + c;
          s0 = _mm256_add_ps(s0, _mm256_loadu_ps(src));
          s1 = _mm256_add_ps(s1, _mm256_loadu_ps(src + 8));
          s2 = _mm256_add_ps(s2, _mm256_loadu_ps(src + 16));
          s3 = _mm256_add_ps(s3, _mm256_loadu_ps(src + 24));
        }
      _mm256_storeu_ps(o + c, _mm256_div_ps(s0, vdiv));
      _mm256_storeu_ps(o + c + 8, _mm256_div_ps(s1, vdiv));
      _mm256_storeu_ps(o + c + 16, _mm256_div_ps(s2, vdiv));
      _mm256_storeu_ps(o + c + 24, _mm256_div_ps(s3, vdiv));
    }
    for (; c < C; c += 8) {
      const int64_t nc = imin(8, C - c);
      const __m256i lm = tail_mask32(nc);
      __m256 s = _mm256_setzero_ps();
      for (int64_t ih = h0; ih < h1; ++ih)
        for (int64_t iw = w0; iw < w1; ++iw)
          s = _mm256_add_ps(s, _mm256_maskload_ps(base + (ih * p.W + iw) * C + c, lm));
      store_vals(o + c, _mm256_div_ps(s, vdiv), nc);
    }
  }
}

void avg_pool2d_backward_nchw_k2s2(const float* go, float* gi, int64_t p0, int64_t p1,
                                   const PoolPlan& p, bool count_include_pad, int64_t divisor) {
  (void)count_include_pad;  // no padding: both counts are the clipped window size
  const __m256 two = _mm256_set1_ps(2.0f);
  for (int64_t plane = p0; plane < p1; ++plane) {
    const float* g = go + plane * p.OH * p.OW;
    float* d = gi + plane * p.H * p.W;
    for (int64_t ih = 0; ih < p.H; ++ih) {
      float* row = d + ih * p.W;
      const int64_t oh = ih / 2;
      if (oh >= p.OH) {
        for (int64_t iw = 0; iw < p.W; ++iw) row[iw] = 0.0f;
        continue;
      }
      const float rc = (float)imin(2, p.H - 2 * oh);
      const float* grow = g + oh * p.OW;
      int64_t ow = 0;
      // Full 8-column blocks whose 16 input columns lie inside the row.
      for (; ow + 8 <= p.OW && 2 * (ow + 8) <= p.W; ow += 8) {
        __m256 div;
        if (divisor != 0) {
          div = _mm256_set1_ps((float)divisor);
        } else {
          div = _mm256_mul_ps(_mm256_set1_ps(rc), two);
        }
        const __m256 v = _mm256_div_ps(_mm256_loadu_ps(grow + ow), div);
        const __m256 lo = _mm256_unpacklo_ps(v, v);  // g0 g0 g1 g1 | g4 g4 g5 g5
        const __m256 hi = _mm256_unpackhi_ps(v, v);  // g2 g2 g3 g3 | g6 g6 g7 g7
        _mm256_storeu_ps(row + 2 * ow, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(row + 2 * ow + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
      }
      for (int64_t iw = 2 * ow; iw < p.W; ++iw) {
        const int64_t o2 = iw / 2;
        if (o2 >= p.OW) {
          row[iw] = 0.0f;
          continue;
        }
        const int64_t cc = imin(2, p.W - 2 * o2);
        const float dv = divisor != 0 ? (float)divisor : rc * (float)cc;
        row[iw] = grow[o2] / dv;
      }
    }
  }
}

void avg_backward_row_s1(const float* dpad, int64_t PW, int64_t oh0, int64_t oh1, int64_t kW,
                         int64_t pW, int64_t W, float* grow) {
  // 8 columns at a time, the sums in a register; a last partial block is
  // shifted back to end at W (it recomputes a few columns: same values)
  auto block = [&](int64_t iw) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const float* d = dpad + oh * PW + pW + kW + iw;
      for (int64_t t = kW - 1; t >= 0; --t) acc = _mm256_add_ps(acc, _mm256_loadu_ps(d - t));
    }
    _mm256_storeu_ps(grow + iw, acc);
  };
  if (W < 8) {
    for (int64_t iw = 0; iw < W; ++iw) {
      float acc = 0.f;
      for (int64_t oh = oh0; oh < oh1; ++oh)
        for (int64_t t = kW - 1; t >= 0; --t) acc += dpad[oh * PW + pW - t + kW + iw];
      grow[iw] = acc;
    }
    return;
  }
  int64_t iw = 0;
  for (; iw + 8 <= W; iw += 8) block(iw);
  if (iw < W) block(W - 8);
}

void avg_backward_pixel_nhwc(const float* delta, int64_t OW, int64_t C, int64_t oh0,
                             int64_t oh1, int64_t ow0, int64_t ow1, float* out) {
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) {  // four registers of sums
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const float* d = delta + (oh * OW + ow) * C + c;
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(d));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(d + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(d + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(d + 24));
      }
    _mm256_storeu_ps(out + c, a0);
    _mm256_storeu_ps(out + c + 8, a1);
    _mm256_storeu_ps(out + c + 16, a2);
    _mm256_storeu_ps(out + c + 24, a3);
  }
  for (; c + 8 <= C; c += 8) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow)
        a = _mm256_add_ps(a, _mm256_loadu_ps(delta + (oh * OW + ow) * C + c));
    _mm256_storeu_ps(out + c, a);
  }
  for (; c < C; ++c) {
    float a = 0.f;
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow) a += delta[(oh * OW + ow) * C + c];
    out[c] = a;
  }
}

namespace {
// The eight int64 indices at ix as int32 lanes in order, and whether their
// upper halves are all zero.
inline __m256i pack_indices(const int64_t* ix, bool& fits) {
  const __m256 a = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i*)ix));
  const __m256 b = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i*)(ix + 4)));
  const __m256i hi = _mm256_castps_si256(_mm256_shuffle_ps(a, b, 0xDD));
  fits = _mm256_testz_si256(hi, hi);
  return _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, 0x88)), 0xD8);
}

inline __m256 eq(__m256i a, __m256i b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)); }

// Stores even / odd column lanes interleaved: row[2j] = even[j], row[2j+1] = odd[j].
inline void store_interleaved(float* row, __m256 even, __m256 odd) {
  const __m256 l = _mm256_unpacklo_ps(even, odd), h = _mm256_unpackhi_ps(even, odd);
  _mm256_storeu_ps(row, _mm256_permute2f128_ps(l, h, 0x20));
  _mm256_storeu_ps(row + 8, _mm256_permute2f128_ps(l, h, 0x31));
}
}  // namespace

bool max_pool2d_backward_nchw_k2s2(const float* go, const int64_t* idx, float* d, int64_t plane,
                                   const PoolPlan& p) {
  const int64_t W = p.W, OHW = p.OH * p.OW;
  const float* g = go + plane * OHW;
  const int64_t* ix = idx + plane * OHW;
  const __m256 zero = _mm256_setzero_ps();
  const __m256i two_lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i c1 = _mm256_set1_epi32(1), cw = _mm256_set1_epi32((int32_t)W),
                cw1 = _mm256_set1_epi32((int32_t)W + 1);
  for (int64_t oh = 0; oh < p.OH; ++oh) {
    float* r0 = d + 2 * oh * W;
    float* r1 = r0 + W;
    auto block = [&](int64_t ow) {
      const int64_t q = oh * p.OW + ow;
      bool fits;
      const __m256i lo = pack_indices(ix + q, fits);
      // each lane's index relative to its window's top-left position
      const __m256i rel = _mm256_sub_epi32(
          lo, _mm256_add_epi32(_mm256_set1_epi32((int32_t)(2 * oh * W + 2 * ow)), two_lanes));
      const __m256 m00 = eq(rel, _mm256_setzero_si256()), m01 = eq(rel, c1);
      const __m256 m10 = eq(rel, cw), m11 = eq(rel, cw1);
      const __m256 any = _mm256_or_ps(_mm256_or_ps(m00, m01), _mm256_or_ps(m10, m11));
      if (!fits || _mm256_movemask_ps(any) != 0xFF) return false;
      const __m256 gv = _mm256_loadu_ps(g + q);
      // 0 + g as torch's zeroed-then-added plane has it (-0 becomes +0)
      store_interleaved(r0 + 2 * ow, _mm256_add_ps(zero, _mm256_and_ps(m00, gv)),
                        _mm256_add_ps(zero, _mm256_and_ps(m01, gv)));
      store_interleaved(r1 + 2 * ow, _mm256_add_ps(zero, _mm256_and_ps(m10, gv)),
                        _mm256_add_ps(zero, _mm256_and_ps(m11, gv)));
      return true;
    };
    int64_t ow = 0;
    for (; ow + 8 <= p.OW; ow += 8)
      if (!block(ow)) return false;
    if (ow < p.OW && !block(p.OW - 8)) return false;  // shifted back: same values again
    for (int64_t c = 2 * p.OW; c < W; ++c) r0[c] = 0.f, r1[c] = 0.f;  // columns no window covers
  }
  for (int64_t i = 2 * p.OH * W; i < p.H * W; ++i) d[i] = 0.f;  // rows no window covers
  return true;
}

bool max_pool2d_backward_nchw_k3s2p1(const float* go, const int64_t* idx, float* d,
                                     int64_t plane, const PoolPlan& p) {
  const int64_t W = p.W, OW = p.OW, OH = p.OH, OHW = OH * OW;
  const float* g = go + plane * OHW;
  const int64_t* ix = idx + plane * OHW;
  // Odd input row 2 oh + 1 gets the bottom row of window row oh and the top
  // row of window row oh + 1. The first part waits in buf[oh & 1] (even and
  // odd columns apart, indexed by window column): two buffers, because the
  // last block of a row overlaps its neighbour and reads what that one read.
  alignas(32) float buf[2][2][kK3S2MaxOW];
  const __m256 zero = _mm256_setzero_ps();
  const __m256i two_lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i rot = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7);
  const __m256i c1 = _mm256_set1_epi32(1), c2 = _mm256_set1_epi32(2);
  const __m256i w0 = _mm256_set1_epi32((int32_t)W), w1 = _mm256_set1_epi32((int32_t)W + 1),
                w2 = _mm256_set1_epi32((int32_t)W + 2), v0 = _mm256_set1_epi32(2 * (int32_t)W),
                v1 = _mm256_set1_epi32(2 * (int32_t)W + 1),
                v2 = _mm256_set1_epi32(2 * (int32_t)W + 2);
  const __m256 all_in = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  const __m256 first_col_out = _mm256_blend_ps(all_in, zero, 0x01);
  for (int64_t oh = 0; oh < OH; ++oh) {
    float* top = d + (2 * oh - 1) * W;  // row 2 oh - 1 (none for oh = 0)
    float* mid = top + W;
    const float* prev = buf[(oh + 1) & 1][0];
    float* next = buf[oh & 1][0];
    const __m256 bottom_ok = 2 * oh + 1 < p.H ? all_in : zero;
    auto block = [&](int64_t ow, bool last) {
      const int64_t q = oh * OW + ow;
      bool fits;
      const __m256i lo = pack_indices(ix + q, fits);
      // each lane's index relative to its window's top-left corner (row
      // 2 oh - 1, column 2 (ow + j) - 1): r W + c for window position (r, c)
      const __m256i base = _mm256_add_epi32(
          _mm256_set1_epi32((int32_t)((2 * oh - 1) * W + 2 * ow - 1)), two_lanes);
      const __m256i rel = _mm256_sub_epi32(lo, base);
      const __m256 m00 = eq(rel, _mm256_setzero_si256()), m01 = eq(rel, c1), m02 = eq(rel, c2);
      const __m256 m10 = eq(rel, w0), m11 = eq(rel, w1), m12 = eq(rel, w2);
      const __m256 m20 = eq(rel, v0), m21 = eq(rel, v1), m22 = eq(rel, v2);
      // a position in the left padding column (first window) or the bottom
      // padding row (last window row, H odd) names a real element of another
      // row: not this window's
      const __m256 left_ok = ow == 0 ? first_col_out : all_in;
      const __m256 any = _mm256_or_ps(
          _mm256_or_ps(_mm256_or_ps(m01, m02), _mm256_or_ps(m11, m12)),
          _mm256_or_ps(_mm256_and_ps(_mm256_or_ps(m00, m10), left_ok),
                       _mm256_and_ps(_mm256_or_ps(_mm256_or_ps(m21, m22),
                                                  _mm256_and_ps(m20, left_ok)),
                                     bottom_ok)));
      if (!fits || _mm256_movemask_ps(any) != 0xFF) return false;
      const __m256 gv = _mm256_loadu_ps(g + q);
      // the next window's index and gradient in each lane (its left column
      // is this window's right one); none after the row's last window
      __m256i nlo = _mm256_permutevar8x32_epi32(lo, rot);
      __m256 ng = _mm256_permutevar8x32_ps(gv, rot);
      if (last) {
        ng = _mm256_blend_ps(ng, zero, 0x80);
      } else {
        nlo = _mm256_blend_epi32(nlo, _mm256_set1_epi32((int32_t)ix[q + 8]), 0x80);
        ng = _mm256_blend_ps(ng, _mm256_broadcast_ss(g + q + 8), 0x80);
      }
      const __m256i nrel = _mm256_sub_epi32(nlo, _mm256_add_epi32(base, c2));
      const __m256 n0 = _mm256_and_ps(eq(nrel, _mm256_setzero_si256()), ng);
      const __m256 n1 = _mm256_and_ps(eq(nrel, w0), ng);
      const __m256 n2 = _mm256_and_ps(eq(nrel, v0), ng);
      // torch adds in output raster order onto zeros: window (oh - 1, j),
      // (oh - 1, j + 1), (oh, j), (oh, j + 1); 0 + g turns -0 into +0
      if (oh > 0) {
        const __m256 pe = _mm256_loadu_ps(prev + ow);
        const __m256 po = _mm256_loadu_ps(prev + kK3S2MaxOW + ow);
        store_interleaved(top + 2 * ow, _mm256_add_ps(pe, _mm256_and_ps(m01, gv)),
                          _mm256_add_ps(_mm256_add_ps(po, _mm256_and_ps(m02, gv)), n0));
      }
      store_interleaved(mid + 2 * ow, _mm256_add_ps(zero, _mm256_and_ps(m11, gv)),
                        _mm256_add_ps(_mm256_add_ps(zero, _mm256_and_ps(m12, gv)), n1));
      _mm256_storeu_ps(next + ow, _mm256_add_ps(zero, _mm256_and_ps(m21, gv)));
      _mm256_storeu_ps(next + kK3S2MaxOW + ow,
                       _mm256_add_ps(_mm256_add_ps(zero, _mm256_and_ps(m22, gv)), n2));
      return true;
    };
    int64_t ow = 0;
    for (; ow + 8 < OW; ow += 8)
      if (!block(ow, false)) return false;
    if (!block(OW - 8, true)) return false;  // shifted back when OW % 8 != 0
  }
  if (2 * OH == p.H) {  // the last row is odd: its second part never comes
    const float* prev = buf[(OH + 1) & 1][0];
    float* top = d + (2 * OH - 1) * W;
    for (int64_t ow = 0;; ow = std::min(ow + 8, OW - 8)) {
      store_interleaved(top + 2 * ow, _mm256_loadu_ps(prev + ow),
                        _mm256_loadu_ps(prev + kK3S2MaxOW + ow));
      if (ow == OW - 8) break;
    }
  }
  return true;
}

void stream_copy(void* dst, const void* src, int64_t bytes) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  const int64_t head = std::min<int64_t>(bytes, (32 - int64_t(reinterpret_cast<uintptr_t>(d) & 31)) & 31);
  std::memcpy(d, s, size_t(head));
  int64_t i = head;
  for (; i + 32 <= bytes; i += 32)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
  std::memcpy(d + i, s + i, size_t(bytes - i));
}

void store_fence() { _mm_sfence(); }

}  // namespace avx2
}  // namespace cpu
}  // namespace cnnkernels
