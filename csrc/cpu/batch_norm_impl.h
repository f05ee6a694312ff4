// Batch-norm CPU kernel bodies, compiled twice: batch_norm_generic.cpp (the
// portable build) and batch_norm_avx2.cpp (under an AVX2/FMA target), each
// defining CNNK_BN_NS to its namespace. The loops are written for the
// compiler's vectoriser (`omp simd` reductions along the contiguous axis).
//
// Statistics: planes are cut into chunks of 2048 elements, rows into chunks
// of about 16384. Planes: one sweep of shifted sums, sum(x - k) and
// sum((x - k)^2) with k the plane's first value, in float per chunk (four
// vectors of independent partial sums), turned into the chunk's mean and
// squared deviations in double. Rows: a chunk's mean from a float sum, its
// squared deviations from a second sweep while the chunk is in L2 (sums of
// 32 float channels in registers). Chunks merge into double-precision moments (Chan's formula): one read
// of the input from memory, and no sum-of-squares cancellation.
//
// The forward computes z = x * scale + beta (beta = bias - mean * scale, as
// torch's CPU kernels: where |mean| is large against the standard deviation
// the two products cancel, losing about |mean| / std ulps, as torch's do)
// and backward recomputes z with the same expression from the saved input,
// so the activation mask in backward is exactly the forward's (built with
// -ffp-contract=off).
#ifndef CNNK_BN_NS
#error "define CNNK_BN_NS before including batch_norm_impl.h"
#endif

#pragma GCC diagnostic ignored "-Wpsabi"

namespace cnnkernels {
namespace cpu {
namespace bn {
namespace CNNK_BN_NS {
namespace {

// acc + d * d: fused on the AVX2 build (the square then runs on the FMA
// pipes, leaving the add pipes to the sums); separate in the portable one.
template <typename T>
inline T add_square(T acc, T d) {
#if defined(CNNK_BN_AVX2)
  if constexpr (sizeof(T) == 4)
    return __builtin_fmaf(d, d, acc);
  else
    return __builtin_fma(d, d, acc);
#else
  return acc + d * d;
#endif
}

// 32-byte vectors (GCC vector extensions: AVX registers on the AVX2 build,
// pairs of SSE registers on the portable one, where passing them to these
// inline helpers would warn about the ABI: -Wpsabi is off in this file).
template <typename T>
constexpr int kVecLanes = int(32 / sizeof(T));
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
inline Vec<T> load_vec(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline Vec<T> add_square_vec(Vec<T> acc, Vec<T> d) {
#if defined(CNNK_BN_AVX2)
  if constexpr (sizeof(T) == 4)
    return (Vec<T>)_mm256_fmadd_ps((__m256)d, (__m256)d, (__m256)acc);
  else
    return (Vec<T>)_mm256_fmadd_pd((__m256d)d, (__m256d)d, (__m256d)acc);
#else
  return acc + d * d;
#endif
}

template <int ACT, typename T>
inline T act_fwd(T z, T slope) {
  if (ACT == kActRelu) return z < T(0) ? T(0) : z;  // NaN stays NaN
  if (ACT == kActLeaky) return z > T(0) ? z : z * slope;
  return z;
}

template <int ACT, typename T>
inline T act_bwd(T z, T g, T slope) {
  if (ACT == kActRelu) return z <= T(0) ? T(0) : g;  // torch: threshold_backward
  if (ACT == kActLeaky) return z > T(0) ? g : g * slope;
  return g;
}

template <typename T>
void stats_planar_t(const T* x, int64_t S, int64_t p0, int64_t p1, Moments* out) {
  for (int64_t p = p0; p < p1; ++p) {
    const T* xp = x + p * S;
    const T k = xp[0];  // shift: sums of (x - k) do not cancel
    Moments m;
    for (int64_t s0 = 0; s0 < S; s0 += kPlanarChunk) {
      const int64_t L = S - s0 < kPlanarChunk ? S - s0 : kPlanarChunk;
      const T* xc = xp + s0;
      // kLanes independent partial sums: one accumulator chain would bound
      // the sweep by the add latency, not by the loads
      constexpr int kLanes = int(128 / sizeof(T));  // four 256-bit vectors
      T v1[kLanes] = {}, v2[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= L; i += kLanes) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const T d = xc[i + j] - k;
          v1[j] += d;
          v2[j] = add_square(v2[j], d);
        }
      }
      T s1 = 0, s2 = 0;
      for (; i < L; ++i) {
        const T d = xc[i] - k;
        s1 += d;
        s2 = add_square(s2, d);
      }
      for (int j = 0; j < kLanes; ++j) s1 += v1[j], s2 += v2[j];
      const double mu = double(s1) / double(L);
      const double q = double(s2) - double(s1) * mu;
      merge(m, double(L), double(k) + mu, q > 0 ? q : 0.0);
    }
    out[p] = m;
  }
}

template <typename T>
void stats_rows_t(const T* x, int64_t C, int64_t r0, int64_t r1, Moments* out, T* scratch) {
  constexpr int B = 4 * kVecLanes<T>;  // channels per register block
  const int64_t RB = rows_per_stats_chunk(C);
  T* sum = scratch;
  T* q = scratch + C;
  for (int64_t a = r0; a < r1; a += RB) {
    const int64_t L = r1 - a < RB ? r1 - a : RB;
    // Blocks of B channels with their sums in registers (four 32-byte GCC
    // vectors: written out, the compiler kept array sums on the stack): the
    // chunk's rows (in L2) are swept once for the means, once for the
    // squared deviations.
    int64_t c0 = 0;
    for (; c0 + B <= C; c0 += B) {
      Vec<T> s1[4] = {}, s2[4] = {};
      for (int64_t r = a; r < a + L; ++r) {
        const T* xr = x + r * C + c0;
        for (int k = 0; k < 4; ++k) s1[k] += load_vec(xr + k * kVecLanes<T>);
      }
      for (int k = 0; k < 4; ++k) s1[k] /= T(L);
      for (int64_t r = a; r < a + L; ++r) {
        const T* xr = x + r * C + c0;
        for (int k = 0; k < 4; ++k) s2[k] = add_square_vec<T>(s2[k], load_vec(xr + k * kVecLanes<T>) - s1[k]);
      }
      for (int k = 0; k < 4; ++k)
        for (int e = 0; e < kVecLanes<T>; ++e)
          merge(out[c0 + k * kVecLanes<T> + e], double(L), double(s1[k][e]), double(s2[k][e]));
    }
    if (c0 == C) continue;
    // the remaining channels, sums through scratch
    for (int64_t c = c0; c < C; ++c) sum[c] = 0, q[c] = 0;
    for (int64_t r = a; r < a + L; ++r) {
      const T* xr = x + r * C;
#pragma omp simd
      for (int64_t c = c0; c < C; ++c) sum[c] += xr[c];
    }
#pragma omp simd
    for (int64_t c = c0; c < C; ++c) sum[c] /= T(L);
    for (int64_t r = a; r < a + L; ++r) {
      const T* xr = x + r * C;
#pragma omp simd
      for (int64_t c = c0; c < C; ++c) q[c] = add_square(q[c], xr[c] - sum[c]);
    }
    for (int64_t c = c0; c < C; ++c) merge(out[c], double(L), double(sum[c]), double(q[c]));
  }
}

// dst[0, n) = src[0, n) with non-temporal stores where dst is 32-byte
// aligned (AVX2 build; a plain copy otherwise). src is a small L1-resident
// buffer the elementwise loop has just filled.
template <typename T>
inline void stream_out(T* dst, const T* src, int64_t n) {
#ifdef CNNK_BN_AVX2
  int64_t i = 0;
  while (i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0) dst[i] = src[i], ++i;
  constexpr int64_t V = 32 / sizeof(T);
  for (; i + V <= n; i += V) {
    if constexpr (sizeof(T) == 4)
      _mm256_stream_ps(reinterpret_cast<float*>(dst + i),
                       _mm256_loadu_ps(reinterpret_cast<const float*>(src + i)));
    else
      _mm256_stream_pd(reinterpret_cast<double*>(dst + i),
                       _mm256_loadu_pd(reinterpret_cast<const double*>(src + i)));
  }
  for (; i < n; ++i) dst[i] = src[i];
#else
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
#endif
}

inline void stream_fence() {
#ifdef CNNK_BN_AVX2
  _mm_sfence();
#endif
}

// Runs body(out, i0, i1), which writes element i to out[i - i0], over [0, n):
// at once into dst, or (stream) in chunks of kPlanarChunk into an L1 buffer
// that is then streamed to dst.
template <typename T, typename F>
inline void write_chunked(T* dst, int64_t n, bool stream, F body) {
  if (!stream) {
    body(dst, int64_t(0), n);
    return;
  }
  alignas(32) T buf[kPlanarChunk];
  for (int64_t s0 = 0; s0 < n; s0 += kPlanarChunk) {
    const int64_t L = n - s0 < kPlanarChunk ? n - s0 : kPlanarChunk;
    body(buf, s0, s0 + L);
    stream_out(dst + s0, buf, L);
  }
}

template <int ACT, typename T>
void norm_planar_t(const T* x, T* y, int64_t S, int64_t C, int64_t p0, int64_t p1,
                   const Channel<T>& ch) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % C;
    const T a = ch.scale[c], b = ch.beta[c], sl = ch.slope;
    const T* xp = x + p * S;
    write_chunked(y + p * S, S, ch.stream, [&](T* yp, int64_t i0, int64_t i1) {
      // the constants as locals: write_chunked is not inlined, and through
      // the captured references every vector step reloaded them (yp might
      // alias them). 16x64x56x56, against torch.relu / torch.add of the
      // same bytes in one process: eval 1.135 -> 1.07-1.08x relu's time,
      // backward (grad_input_planar_t) 1.52 -> 1.28-1.41x add's
      const T aa = a, bb = b, ss = sl;
      const T* __restrict xq = xp;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) yp[i - i0] = act_fwd<ACT>(xq[i] * aa + bb, ss);
    });
  }
  if (ch.stream) stream_fence();
}

template <int ACT, typename T>
void norm_rows_t(const T* x, T* y, int64_t C, int64_t r0, int64_t r1, const Channel<T>& ch) {
  const T* __restrict a = ch.scale;
  const T* __restrict b = ch.beta;
  const T sl = ch.slope;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = act_fwd<ACT>(xr[c] * a[c] + b[c], sl);
  }
}

template <int ACT, typename T>
void reduce_planar_t(const T* gy, const T* x, int64_t S, int64_t C, int64_t p0, int64_t p1,
                     const Channel<T>& ch, double* sg, double* sgx) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % C;
    const T m = ch.mean[c], a = ch.scale[c], b = ch.beta[c], sl = ch.slope;
    const T* xp = x + p * S;
    const T* gp = gy + p * S;
    double dg = 0, dgx = 0;
    for (int64_t s0 = 0; s0 < S; s0 += kPlanarChunk) {
      const int64_t L = S - s0 < kPlanarChunk ? S - s0 : kPlanarChunk;
      constexpr int kLanes = int(128 / sizeof(T));  // independent chains, as in stats_planar_t
      T v1[kLanes] = {}, v2[kLanes] = {};
      int64_t i = s0;
      for (; i + kLanes <= s0 + L; i += kLanes) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const T d = xp[i + j] - m;
          const T gz = act_bwd<ACT>(xp[i + j] * a + b, gp[i + j], sl);
          v1[j] += gz;
          v2[j] += gz * d;
        }
      }
      T g1 = 0, g2 = 0;
      for (; i < s0 + L; ++i) {
        const T d = xp[i] - m;
        const T gz = act_bwd<ACT>(xp[i] * a + b, gp[i], sl);
        g1 += gz;
        g2 += gz * d;
      }
      for (int j = 0; j < kLanes; ++j) g1 += v1[j], g2 += v2[j];
      dg += double(g1);
      dgx += double(g2);
    }
    sg[p] = dg;
    sgx[p] = dgx;
  }
}

template <int ACT, typename T>
void reduce_rows_t(const T* gy, const T* x, int64_t C, int64_t r0, int64_t r1,
                   const Channel<T>& ch, double* sg, double* sgx, T* scratch) {
  const int64_t RB = rows_per_chunk(C);
  const T* __restrict m = ch.mean;
  const T* __restrict a = ch.scale;
  const T* __restrict b = ch.beta;
  const T sl = ch.slope;
  T* __restrict g1 = scratch;
  T* __restrict g2 = scratch + C;
  for (int64_t s = r0; s < r1; s += RB) {
    const int64_t e = r1 - s < RB ? r1 : s + RB;
    for (int64_t c = 0; c < C; ++c) g1[c] = 0, g2[c] = 0;
    for (int64_t r = s; r < e; ++r) {
      const T* xr = x + r * C;
      const T* gr = gy + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T d = xr[c] - m[c];
        const T gz = act_bwd<ACT>(xr[c] * a[c] + b[c], gr[c], sl);
        g1[c] += gz;
        g2[c] += gz * d;
      }
    }
    for (int64_t c = 0; c < C; ++c) sg[c] += double(g1[c]), sgx[c] += double(g2[c]);
  }
}

template <int ACT, typename T>
void grad_input_planar_t(const T* gy, const T* x, T* gx, int64_t S, int64_t C, int64_t p0,
                         int64_t p1, const Channel<T>& ch) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % C;
    const T m = ch.mean[c], a = ch.scale[c], b = ch.beta[c], k2 = ch.k2[c], k3 = ch.k3[c];
    const T sl = ch.slope;
    const T* xp = x + p * S;
    const T* gp = gy + p * S;
    write_chunked(gx + p * S, S, ch.stream, [&](T* op, int64_t i0, int64_t i1) {
      const T mm = m, aa = a, bb = b, kk2 = k2, kk3 = k3, ss = sl;  // (see norm_planar_t)
      const T* __restrict xq = xp;
      const T* __restrict gq = gp;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T d = xq[i] - mm;
        const T gz = act_bwd<ACT>(xq[i] * aa + bb, gq[i], ss);
        op[i - i0] = aa * (gz - kk2 - d * kk3);
      }
    });
  }
  if (ch.stream) stream_fence();
}

template <int ACT, typename T>
void grad_input_rows_t(const T* gy, const T* x, T* gx, int64_t C, int64_t r0, int64_t r1,
                       const Channel<T>& ch) {
  const T* __restrict m = ch.mean;
  const T* __restrict a = ch.scale;
  const T* __restrict b = ch.beta;
  const T* __restrict k2 = ch.k2;
  const T* __restrict k3 = ch.k3;
  const T sl = ch.slope;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * C;
    const T* gr = gy + r * C;
    T* orow = gx + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T d = xr[c] - m[c];
      const T gz = act_bwd<ACT>(xr[c] * a[c] + b[c], gr[c], sl);
      orow[c] = a[c] * (gz - k2[c] - d * k3[c]);
    }
  }
}

}  // namespace

#define CNNK_BN_ACT_SWITCH(act, call)       \
  switch (act) {                            \
    case kActRelu: call(kActRelu); break;   \
    case kActLeaky: call(kActLeaky); break; \
    default: call(kActNone); break;         \
  }

#define CNNK_BN_DEFINE(T)                                                                     \
  void stats_planar(const T* x, int64_t S, int64_t p0, int64_t p1, Moments* out) {            \
    stats_planar_t<T>(x, S, p0, p1, out);                                                     \
  }                                                                                           \
  void stats_rows(const T* x, int64_t C, int64_t r0, int64_t r1, Moments* out, T* scratch) {   \
    stats_rows_t<T>(x, C, r0, r1, out, scratch);                                              \
  }                                                                                           \
  void norm_planar(const T* x, T* y, int64_t S, int64_t C, int64_t p0, int64_t p1,            \
                   const Channel<T>& ch) {                                                    \
    CNNK_BN_ACT_SWITCH(ch.act, CNNK_NP)                                                       \
  }                                                                                           \
  void norm_rows(const T* x, T* y, int64_t C, int64_t r0, int64_t r1, const Channel<T>& ch) { \
    CNNK_BN_ACT_SWITCH(ch.act, CNNK_NR)                                                       \
  }                                                                                           \
  void reduce_planar(const T* gy, const T* x, int64_t S, int64_t C, int64_t p0, int64_t p1,   \
                     const Channel<T>& ch, double* sg, double* sgx) {                         \
    CNNK_BN_ACT_SWITCH(ch.act, CNNK_RP)                                                       \
  }                                                                                           \
  void reduce_rows(const T* gy, const T* x, int64_t C, int64_t r0, int64_t r1,                \
                   const Channel<T>& ch, double* sg, double* sgx, T* scratch) {               \
    CNNK_BN_ACT_SWITCH(ch.act, CNNK_RR)                                                       \
  }                                                                                           \
  void grad_input_planar(const T* gy, const T* x, T* gx, int64_t S, int64_t C, int64_t p0,    \
                         int64_t p1, const Channel<T>& ch) {                                  \
    CNNK_BN_ACT_SWITCH(ch.act, CNNK_GP)                                                       \
  }                                                                                           \
  void grad_input_rows(const T* gy, const T* x, T* gx, int64_t C, int64_t r0, int64_t r1,     \
                       const Channel<T>& ch) {                                                \
    CNNK_BN_ACT_SWITCH(ch.act, CNNK_GR)                                                       \
  }

#define CNNK_NP(A) norm_planar_t<A>(x, y, S, C, p0, p1, ch)
#define CNNK_NR(A) norm_rows_t<A>(x, y, C, r0, r1, ch)
#define CNNK_RP(A) reduce_planar_t<A>(gy, x, S, C, p0, p1, ch, sg, sgx)
#define CNNK_RR(A) reduce_rows_t<A>(gy, x, C, r0, r1, ch, sg, sgx, scratch)
#define CNNK_GP(A) grad_input_planar_t<A>(gy, x, gx, S, C, p0, p1, ch)
#define CNNK_GR(A) grad_input_rows_t<A>(gy, x, gx, C, r0, r1, ch)

CNNK_BN_DEFINE(float)
CNNK_BN_DEFINE(double)

#undef CNNK_NP
#undef CNNK_NR
#undef CNNK_RP
#undef CNNK_RR
#undef CNNK_GP
#undef CNNK_GR
#undef CNNK_BN_DEFINE
#undef CNNK_BN_ACT_SWITCH

}  // namespace CNNK_BN_NS
}  // namespace bn
}  // namespace cpu
}  // namespace cnnkernels
