// CUDA convolution and transposed convolution: float16, bfloat16, float32,
// float64 (accumulation in float, double for float64). Which kernels run:
//   - dense layers whose channel counts divide by the 16-byte vector, in
//     float16 / bfloat16, or float32 with TF32 allowed: the pipelined
//     tensor-core implicit GEMM (conv_igemm.cuh, host side in ig_host) for
//     the forward, the data gradient (by stride phases; conv_transpose2d's
//     forward) and the weight gradient;
//   - depthwise layers: strip kernels (NCHW, unit stride) or direct kernels
//     (namespace dw);
//   - everything else: a generic implicit GEMM with table-driven gathers
//     (namespace gemm), or the direct one-thread-per-output kernels below
//     when the sizes overflow its 32-bit indices.
// Reductions (weight and bias gradients) use fixed-order partial sums and no
// atomics: results repeat bit for bit.
//
// This header holds the kernels and their launchers; conv_<dtype>.cu
// instantiate them for one dtype each, conv.cu has the ops.
#pragma once
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <array>
#include <mutex>
#include <set>
#include <utility>
#include <numeric>
#include <tuple>

#include "../common/conv.h"
#include "conv_launch.h"

namespace cnnkernels {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

struct Geo {
  int64_t N, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, G;
};

struct Str {
  int64_t n, c, h, w;
};

Geo to_geo(const ConvGeometry& g) {
  return {g.N, g.C, g.H, g.W, g.OC, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, g.G};
}

Str strides(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// (n, c, h, w) of linear index i over an (N, C, H, W) tensor, channels
// innermost when cl (so that consecutive threads touch consecutive memory).
__device__ __forceinline__ void decode(int64_t i, int64_t C, int64_t H, int64_t W, bool cl,
                                       int64_t& n, int64_t& c, int64_t& h, int64_t& w) {
  if (cl) {
    c = i % C;
    i /= C;
    w = i % W;
    i /= W;
    h = i % H;
    n = i / H;
  } else {
    w = i % W;
    i /= W;
    h = i % H;
    i /= H;
    c = i % C;
    n = i / C;
  }
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, Str xs, const T* __restrict__ w,
                               const T* __restrict__ b, T* __restrict__ y, Str ys, Geo g,
                               bool cl, int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t Cg = g.C / g.G, OCg = g.OC / g.G;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, oc, oh, ow;
    decode(i, g.OC, g.OH, g.OW, cl, n, oc, oh, ow);
    const int64_t c0 = (oc / OCg) * Cg;
    A acc = b ? static_cast<A>(b[oc]) : A(0);
    for (int64_t c = 0; c < Cg; ++c) {
      const T* xc = x + n * xs.n + (c0 + c) * xs.c;
      const T* wc = w + (oc * Cg + c) * g.KH * g.KW;
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t ih = oh * g.sh + kh * g.dh - g.pt;
        if (ih < 0 || ih >= g.H) continue;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t iw = ow * g.sw + kw * g.dw - g.pl;
          if (iw < 0 || iw >= g.W) continue;
          acc += static_cast<A>(wc[kh * g.KW + kw]) * static_cast<A>(xc[ih * xs.h + iw * xs.w]);
        }
      }
    }
    y[n * ys.n + oc * ys.c + oh * ys.h + ow * ys.w] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void dgrad_kernel(const T* __restrict__ gy, Str gs, const T* __restrict__ w,
                             const T* __restrict__ b, T* __restrict__ gx, Str xs, Geo g,
                             bool cl, int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t Cg = g.C / g.G, OCg = g.OC / g.G;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, ih, iw;
    decode(i, g.C, g.H, g.W, cl, n, c, ih, iw);
    const int64_t grp = c / Cg, cc = c % Cg;
    A acc = b ? static_cast<A>(b[c]) : A(0);
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t vh = ih + g.pt - kh * g.dh;
      if (vh < 0 || vh % g.sh != 0 || vh / g.sh >= g.OH) continue;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t vw = iw + g.pl - kw * g.dw;
        if (vw < 0 || vw % g.sw != 0 || vw / g.sw >= g.OW) continue;
        const T* gp = gy + n * gs.n + (vh / g.sh) * gs.h + (vw / g.sw) * gs.w;
        for (int64_t o = 0; o < OCg; ++o) {
          const int64_t oc = grp * OCg + o;
          acc += static_cast<A>(w[((oc * Cg + cc) * g.KH + kh) * g.KW + kw]) *
                 static_cast<A>(gp[oc * gs.c]);
        }
      }
    }
    gx[n * xs.n + c * xs.c + ih * xs.h + iw * xs.w] = static_cast<T>(acc);
  }
}

// Sums a block's per-thread values in a fixed tree order; thread 0 gets it.
template <typename A>
__device__ A block_sum(A v, A* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

template <typename T>
__global__ void wgrad_kernel(const T* __restrict__ gy, Str gs, const T* __restrict__ x, Str xs,
                             T* __restrict__ gw, Geo g) {
  using A = at::opmath_type<T>;
  __shared__ A sh[kThreads];
  const int64_t Cg = g.C / g.G, OCg = g.OC / g.G, KK = g.KH * g.KW;
  const int64_t widx = blockIdx.x;  // (oc, c, kh, kw), contiguous weight order
  const int64_t kw = widx % g.KW, kh = (widx / g.KW) % g.KH, c = (widx / KK) % Cg,
                oc = widx / (KK * Cg);
  const int64_t xc = (oc / OCg) * Cg + c;
  const int64_t P = g.OH * g.OW, total = g.N * P;
  A acc = A(0);
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int64_t n = i / P, oh = (i % P) / g.OW, ow = i % g.OW;
    const int64_t ih = oh * g.sh + kh * g.dh - g.pt, iw = ow * g.sw + kw * g.dw - g.pl;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
    acc += static_cast<A>(gy[n * gs.n + oc * gs.c + oh * gs.h + ow * gs.w]) *
           static_cast<A>(x[n * xs.n + xc * xs.c + ih * xs.h + iw * xs.w]);
  }
  const A s = block_sum(acc, sh);
  if (threadIdx.x == 0) gw[widx] = static_cast<T>(s);
}

template <typename T>
__global__ void bias_grad_kernel(const T* __restrict__ gy, Str gs, T* __restrict__ gb,
                                 int64_t N, int64_t H, int64_t W) {
  using A = at::opmath_type<T>;
  __shared__ A sh[kThreads];
  const int64_t c = blockIdx.x, P = H * W;
  A acc = A(0);
  for (int64_t i = threadIdx.x; i < N * P; i += kThreads) {
    const int64_t n = i / P, h = (i % P) / W, w = i % W;
    acc += static_cast<A>(gy[n * gs.n + c * gs.c + h * gs.h + w * gs.w]);
  }
  const A s = block_sum(acc, sh);
  if (threadIdx.x == 0) gb[c] = static_cast<T>(s);
}

// ---------------------------------------------------------------------------
// Implicit GEMM. Every pass is C[m, n] = sum_k A[m, k] * B[k, n] over one
// group, with A and B gathered from the tensors on the fly (no im2col):
//   forward (MODE 0)  m = (n, oh, ow), n = oc, k = (c, kh, kw): A = x, B = w
//   data grad (1)     m = (n, ih, iw), n = c,  k = (oc, kh, kw): A = gy, B = w
//                     (a tap counts when the stride divides ih + pad - kh*dil)
//   weight grad (2)   m = oc, n = (c, kh, kw), k = (n, oh, ow): A = gy, B = x,
//                     K split into fixed chunks, partial sums reduced in order
// A block owns a BM x BN tile of C; each K step gathers a BM x BK slice of A
// and a BN x BK slice of B into shared memory through per-row and per-k
// tables (offset, h, w) so that a gathered element costs two table reads, an
// add and a bounds test. The next slice is loaded into registers while the
// current one is multiplied. float16/bfloat16 multiply on the tensor cores
// (mma m16n8k16, float accumulation); float32 too, as TF32 (m16n8k8), when
// torch.backends.cudnn.allow_tf32 is on, as torch's own convolutions do;
// otherwise float32 and float64 use CUDA-core FMAs.
namespace gemm {

constexpr int BM = 128, BN = 64, NT = 256;
constexpr int kBad = -(1 << 30);  // h of an entry that is out of range

struct Ent {
  int64_t off;
  int h, w;
};

struct Operand {
  int limH, limW;  // the gathered element exists when 0 <= h < limH, 0 <= w < limW
  int sh, sw;      // strided (data grad, stride > 1): h must be a multiple of sh
  int64_t sH, sW;  // then the element is at off + (h / sh) * sH + (w / sw) * sW
  bool strided, kfast;  // kfast: consecutive threads load consecutive k
};

struct Params {
  int M, Nn, K, kchunk, splits;
  int N, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, Cg, OCg, KK;
  Str xs, ys;  // strides of the convolution's input side (x / gx) and output side (y / gy)
  bool cfast;  // k (or n) orders channels fastest (channels_last)
  Operand a, b;
  int64_t split_stride;  // weight grad: elements between two K chunks' partial sums
  int bias_base;         // bias index of n = 0 is bias_base * group + n
};

__device__ __forceinline__ void split3(int k, int inner, bool cfast, int KH, int KW,
                                       int& c, int& kh, int& kw) {
  // k over (c, kh, kw); channels fastest when cfast, else kw fastest
  if (cfast) {
    c = k % inner;
    const int t = k / inner;
    kw = t % KW;
    kh = t / KW;
  } else {
    kw = k % KW;
    const int t = k / KW;
    kh = t % KH;
    c = t / KH;
  }
}

template <int MODE>
__device__ __forceinline__ Ent row_a(const Params& p, int g, int m) {
  if (m >= p.M) return {0, kBad, kBad};
  if (MODE == 2) return {int64_t(g * p.OCg + m) * p.ys.c, 0, 0};
  const int P = MODE == 0 ? p.OH * p.OW : p.H * p.W, Wd = MODE == 0 ? p.OW : p.W;
  const int n = m / P, r = m - n * P, y = r / Wd, x = r - y * Wd;
  if (MODE == 0) {
    const int h = y * p.sh - p.pt, w = x * p.sw - p.pl;
    return {n * p.xs.n + int64_t(g) * p.Cg * p.xs.c + h * p.xs.h + w * p.xs.w, h, w};
  }
  const int h = y + p.pt, w = x + p.pl;
  int64_t off = n * p.ys.n + int64_t(g) * p.OCg * p.ys.c;
  if (!p.a.strided) off += h * p.ys.h + w * p.ys.w;
  return {off, h, w};
}

template <int MODE>
__device__ __forceinline__ Ent k_a(const Params& p, int k, int kend) {
  if (k >= kend) return {0, kBad, kBad};
  if (MODE == 2) {
    const int P = p.OH * p.OW, n = k / P, r = k - n * P, oh = r / p.OW, ow = r - oh * p.OW;
    return {n * p.ys.n + oh * p.ys.h + ow * p.ys.w, 0, 0};
  }
  int c, kh, kw;
  split3(k, MODE == 0 ? p.Cg : p.OCg, p.cfast, p.KH, p.KW, c, kh, kw);
  if (MODE == 0) {
    const int h = kh * p.dh, w = kw * p.dw;
    return {c * p.xs.c + h * p.xs.h + w * p.xs.w, h, w};
  }
  const int h = -kh * p.dh, w = -kw * p.dw;
  int64_t off = c * p.ys.c;
  if (!p.a.strided) off += h * p.ys.h + w * p.ys.w;
  return {off, h, w};
}

// Forward and data grad: B is a dense [G][Nn][K] matrix (the weight,
// permuted on the host into the k order when needed).
template <int MODE>
__device__ __forceinline__ Ent row_b(const Params& p, int g, int n) {
  if (n >= p.Nn) return {0, kBad, kBad};
  if (MODE != 2) return {(int64_t(g) * p.Nn + n) * p.K, 0, 0};
  int c, kh, kw;
  split3(n, p.Cg, p.cfast, p.KH, p.KW, c, kh, kw);
  const int h = kh * p.dh, w = kw * p.dw;
  return {int64_t(g * p.Cg + c) * p.xs.c + h * p.xs.h + w * p.xs.w, h, w};
}

template <int MODE>
__device__ __forceinline__ Ent k_b(const Params& p, int k, int kend) {
  if (k >= kend) return {0, kBad, kBad};
  if (MODE != 2) return {k, 0, 0};
  const int P = p.OH * p.OW, n = k / P, r = k - n * P, oh = r / p.OW, ow = r - oh * p.OW;
  const int h = oh * p.sh - p.pt, w = ow * p.sw - p.pl;
  return {n * p.xs.n + h * p.xs.h + w * p.xs.w, h, w};
}

template <int MODE>
__device__ __forceinline__ int64_t out_m(const Params& p, int g, int m) {
  if (m >= p.M) return 0;
  if (MODE == 2) return int64_t(g * p.OCg + m) * p.Cg * p.KK;
  const int P = MODE == 0 ? p.OH * p.OW : p.H * p.W, Wd = MODE == 0 ? p.OW : p.W;
  const int n = m / P, r = m - n * P, y = r / Wd, x = r - y * Wd;
  const Str& s = MODE == 0 ? p.ys : p.xs;
  return n * s.n + y * s.h + x * s.w;
}

template <int MODE>
__device__ __forceinline__ int64_t out_n(const Params& p, int g, int n) {
  if (n >= p.Nn) return 0;
  if (MODE == 0) return int64_t(g * p.OCg + n) * p.ys.c;
  if (MODE == 1) return int64_t(g * p.Cg + n) * p.xs.c;
  int c, kh, kw;
  split3(n, p.Cg, p.cfast, p.KH, p.KW, c, kh, kw);
  return int64_t(c) * p.KK + kh * p.KW + kw;
}

// One gathered element: its offset, or -1 when it lies in the padding.
__device__ __forceinline__ int64_t gather_off(const Operand& o, const Ent& r, const Ent& k) {
  const int v = r.h + k.h, u = r.w + k.w;
  if (!o.strided) {
    if ((unsigned)v >= (unsigned)o.limH || (unsigned)u >= (unsigned)o.limW) return -1;
    return r.off + k.off;
  }
  if (v < 0 || u < 0 || v % o.sh != 0 || u % o.sw != 0) return -1;
  const int qv = v / o.sh, qu = u / o.sw;
  if (qv >= o.limH || qu >= o.limW) return -1;
  return r.off + k.off + qv * o.sH + qu * o.sW;
}

__device__ __forceinline__ uint32_t to_tf32(float f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
  return r;
}

template <typename T>
__device__ __forceinline__ void mma_16816(float* c, const uint32_t* a, const uint32_t* b);

template <>
__device__ __forceinline__ void mma_16816<at::Half>(float* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_16816<at::BFloat16>(float* c, const uint32_t* a,
                                                        const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_tf32(float* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// KIND: 0 CUDA-core FMAs, 1 TF32 mma (float), 2 16-bit mma (half, bfloat16)
template <typename T, int KIND>
struct Cfg {
  static constexpr int BK = sizeof(T) == 8 ? 16 : 32;
  static constexpr int PAD = sizeof(T) == 2 ? 8 : (sizeof(T) == 8 ? 2 : 4);
  static constexpr int LD = BK + PAD;
};

// Stores C (accumulated in A) at out[om[m] + on[n]], plus the bias.
template <typename T, typename A, typename O>
__device__ __forceinline__ void store_c(O* out, const T* bias, int bias0, const int64_t* om,
                                        const int64_t* on, int ml, int nl, int M, int Nn,
                                        int m0, int n0, A v) {
  if (m0 + ml >= M || n0 + nl >= Nn) return;
  if (bias) v += static_cast<A>(bias[bias0 + n0 + nl]);
  out[om[ml] + on[nl]] = static_cast<O>(v);
}

// VEC: A and B are loaded as 16-byte vectors of consecutive k (channels_last
// forward / data grad with channel counts divisible by the vector width).
template <typename T, int KIND, int MODE, typename O, bool VEC>
__global__ void __launch_bounds__(NT) conv_gemm_kernel(const T* __restrict__ asrc,
                                                       const T* __restrict__ bsrc,
                                                       const T* __restrict__ bias,
                                                       O* __restrict__ out, Params p) {
  using C = Cfg<T, KIND>;
  using Acc = at::opmath_type<T>;
  constexpr int BK = C::BK, LD = C::LD;
  constexpr int EA = BM * BK / NT, EB = BN * BK / NT;
  __shared__ __align__(16) T As[BM][LD];
  __shared__ __align__(16) T Bs[BN][LD];
  __shared__ Ent ra[BM], rb[BN], ka[BK], kb[BK];
  __shared__ int64_t om[BM], on[BN];

  const int tid = threadIdx.x;
  const int g = blockIdx.z / p.splits, s = blockIdx.z % p.splits;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int kbeg = s * p.kchunk, kend = min(p.K, kbeg + p.kchunk);
  for (int i = tid; i < BM; i += NT) {
    ra[i] = row_a<MODE>(p, g, m0 + i);
    om[i] = out_m<MODE>(p, g, m0 + i);
  }
  for (int i = tid; i < BN; i += NT) {
    rb[i] = row_b<MODE>(p, g, n0 + i);
    on[i] = out_n<MODE>(p, g, n0 + i);
  }
  if (tid < BK) ka[tid] = k_a<MODE>(p, kbeg + tid, kend);
  else if (tid < 2 * BK) kb[tid - BK] = k_b<MODE>(p, kbeg + tid - BK, kend);
  __syncthreads();

  constexpr int VW = VEC ? 16 / int(sizeof(T)) : 1, KV = BK / VW;
  constexpr int EAV = EA / VW, EBV = EB / VW;
  using V = std::conditional_t<VEC, uint4, T>;
  V ra_reg[EAV], rb_reg[EBV];
  auto a_rk = [&](int e, int& r, int& k) {
    if (VEC || p.a.kfast) r = tid / KV + (NT / KV) * e, k = (tid % KV) * VW;
    else r = tid % BM, k = tid / BM + (NT / BM) * e;
  };
  auto b_rk = [&](int e, int& r, int& k) {
    if (VEC || p.b.kfast) r = tid / KV + (NT / KV) * e, k = (tid % KV) * VW;
    else r = tid % BN, k = tid / BN + (NT / BN) * e;
  };
  auto fetch = [&](const T* src, int64_t o) -> V {
    if constexpr (VEC) {
      return o >= 0 ? *reinterpret_cast<const uint4*>(src + o) : make_uint4(0, 0, 0, 0);
    } else {
      return o >= 0 ? src[o] : T(0);
    }
  };
  auto put = [&](T* dst, const V& v) {
    if constexpr (VEC) {
      if constexpr (KIND == 1) {
        uint4 t = v;
        t.x = to_tf32(__uint_as_float(t.x)), t.y = to_tf32(__uint_as_float(t.y));
        t.z = to_tf32(__uint_as_float(t.z)), t.w = to_tf32(__uint_as_float(t.w));
        *reinterpret_cast<uint4*>(dst) = t;
      } else {
        *reinterpret_cast<uint4*>(dst) = v;
      }
    } else {
      T t = v;
      if constexpr (KIND == 1) t = __uint_as_float(to_tf32(t));
      *dst = t;
    }
  };
  auto load = [&]() {
#pragma unroll
    for (int e = 0; e < EAV; ++e) {
      int r, k;
      a_rk(e, r, k);
      ra_reg[e] = fetch(asrc, gather_off(p.a, ra[r], ka[k]));
    }
#pragma unroll
    for (int e = 0; e < EBV; ++e) {
      int r, k;
      b_rk(e, r, k);
      rb_reg[e] = fetch(bsrc, gather_off(p.b, rb[r], kb[k]));
    }
  };
  auto stash = [&]() {
#pragma unroll
    for (int e = 0; e < EAV; ++e) {
      int r, k;
      a_rk(e, r, k);
      put(&As[r][k], ra_reg[e]);
    }
#pragma unroll
    for (int e = 0; e < EBV; ++e) {
      int r, k;
      b_rk(e, r, k);
      put(&Bs[r][k], rb_reg[e]);
    }
  };

  const int warp = tid / 32, lane = tid % 32, gid = lane / 4, tig = lane % 4;
  const int wm = (warp % 4) * 32, wn = (warp / 4) * 32;
  float acc_mma[2][4][4];
  Acc acc_f[8][4];
  if constexpr (KIND == 0) {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc_f[i][j] = Acc(0);
  } else {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc_mma[i][j][q] = 0.f;
  }

  load();
  for (int k0 = kbeg; k0 < kend; k0 += BK) {
    __syncthreads();  // the previous slice has been multiplied
    stash();
    __syncthreads();  // slice in shared memory; the k tables are free
    if (k0 + BK < kend) {
      if (tid < BK) ka[tid] = k_a<MODE>(p, k0 + BK + tid, kend);
      else if (tid < 2 * BK) kb[tid - BK] = k_b<MODE>(p, k0 + BK + tid - BK, kend);
      __syncthreads();
      load();  // in flight while this slice is multiplied
    }
    if constexpr (KIND == 0) {
      const int tm = tid % 16, tn = tid / 16;
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        Acc av[8], bv[4];
#pragma unroll
        for (int i = 0; i < 8; ++i) av[i] = static_cast<Acc>(As[tm + 16 * i][k]);
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = static_cast<Acc>(Bs[tn + 16 * j][k]);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc_f[i][j] = fma(av[i], bv[j], acc_f[i][j]);
      }
    } else if constexpr (KIND == 1) {
#pragma unroll
      for (int kk = 0; kk < BK; kk += 8) {
        uint32_t af[2][4], bf[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int r = wm + mi * 16 + gid;
          af[mi][0] = __float_as_uint(As[r][kk + tig]);
          af[mi][1] = __float_as_uint(As[r + 8][kk + tig]);
          af[mi][2] = __float_as_uint(As[r][kk + tig + 4]);
          af[mi][3] = __float_as_uint(As[r + 8][kk + tig + 4]);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const int c = wn + ni * 8 + gid;
          bf[ni][0] = __float_as_uint(Bs[c][kk + tig]);
          bf[ni][1] = __float_as_uint(Bs[c][kk + tig + 4]);
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) mma_tf32(acc_mma[mi][ni], af[mi], bf[ni]);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        uint32_t af[2][4], bf[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int r = wm + mi * 16 + gid;
          af[mi][0] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 2 * tig]);
          af[mi][1] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 2 * tig]);
          af[mi][2] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 2 * tig + 8]);
          af[mi][3] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 2 * tig + 8]);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const int c = wn + ni * 8 + gid;
          bf[ni][0] = *reinterpret_cast<const uint32_t*>(&Bs[c][kk + 2 * tig]);
          bf[ni][1] = *reinterpret_cast<const uint32_t*>(&Bs[c][kk + 2 * tig + 8]);
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) mma_16816<T>(acc_mma[mi][ni], af[mi], bf[ni]);
      }
    }
  }

  O* dst = out + (MODE == 2 ? s * p.split_stride : 0);
  const T* bptr = MODE == 2 ? nullptr : bias;
  const int bias0 = p.bias_base * g;
  if constexpr (KIND == 0) {
    const int tm = tid % 16, tn = tid / 16;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        store_c<T, Acc, O>(dst, bptr, bias0, om, on, tm + 16 * i, tn + 16 * j, p.M, p.Nn, m0,
                           n0, acc_f[i][j]);
  } else {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int ml = wm + mi * 16 + gid + (q >= 2 ? 8 : 0);
          const int nl = wn + ni * 8 + 2 * tig + (q & 1);
          store_c<T, float, O>(dst, bptr, bias0, om, on, ml, nl, p.M, p.Nn, m0, n0,
                               acc_mma[mi][ni][q]);
        }
  }
}

// Weight grad: sums the K chunks' partial results in chunk order.
template <typename T, typename A>
__global__ void reduce_splits_kernel(const A* __restrict__ part, int splits, int64_t n,
                                     T* __restrict__ out) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    A s = part[i];
    for (int j = 1; j < splits; ++j) s += part[j * n + i];
    out[i] = static_cast<T>(s);
  }
}

}  // namespace gemm

int blocks_for(int64_t total) {
  return (int)std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 32);
}

// A weight gradient summed over splits: fill(part) launches the kernel that
// writes a fresh [splits][n] buffer of partial sums in A; they are then
// added in split order into out's n values (deterministic, no atomics).
template <typename T, typename A, typename F>
void sum_of_splits(int64_t splits, int64_t n, const Tensor& out, F&& fill) {
  Tensor part = at::empty({splits * n}, out.options().dtype(c10::CppTypeToScalarType<A>::value));
  fill(part.data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gemm::reduce_splits_kernel<T, A><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      part.data_ptr<A>(), int(splits), n, out.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#include "conv_igemm.cuh"

// Host side of the pipelined implicit GEMM (conv_igemm.cuh): float16,
// bfloat16, and float32 when TF32 is allowed (torch.backends.cudnn.allow_tf32,
// the switch torch's own convolutions follow); every channel count the
// kernel reads along a multiple of the 16-byte vector. false: not handled.
namespace ig_host {

constexpr int64_t kLim = (int64_t(1) << 31) - 1;

// the types the kernels are compiled for
template <typename T>
constexpr bool kTypeBuilt = std::is_same<T, float>::value || std::is_same<T, at::Half>::value ||
                            std::is_same<T, at::BFloat16>::value;

template <typename T>
bool type_ok() {
  if constexpr (std::is_same<T, at::Half>::value || std::is_same<T, at::BFloat16>::value) {
    return true;
  } else if constexpr (std::is_same<T, float>::value) {
    return at::globalContext().allowTF32CuDNN();
  } else {
    return false;
  }
}

// Largest element offset of t (so int32 offsets suffice when below kLim).
int64_t max_off(const Tensor& t) {
  int64_t o = 0;
  for (int64_t d = 0; d < t.dim(); ++d) o += (t.size(d) - 1) * t.stride(d);
  return o;
}

// NCHW -> NHWC through 32 x 32 shared-memory tiles: both the reads (along a
// plane) and the writes (along the channels) are coalesced. torch's generic
// permuted copy moved the 102 MB input of a 1x1 256-channel layer at about a
// third of the bandwidth.
template <typename T>
__global__ void nchw_to_nhwc_kernel(const T* __restrict__ in, T* __restrict__ out, int C,
                                    int HW) {
  __shared__ T tile[32][33];
  const int64_t plane = int64_t(C) * HW;
  const T* src = in + blockIdx.z * plane;
  T* dst = out + blockIdx.z * plane;
  const int p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
  for (int i = threadIdx.y; i < 32; i += 8) {
    const int c = c0 + i, q = p0 + threadIdx.x;
    if (c < C && q < HW) tile[i][threadIdx.x] = src[int64_t(c) * HW + q];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += 8) {
    const int q = p0 + i, c = c0 + threadIdx.x;
    if (q < HW && c < C) dst[int64_t(q) * C + c] = tile[threadIdx.x][i];
  }
}

// While a scope is open (one backward call), the channels_last copy of a
// tensor is made once and reused: the data gradient and the weight gradient
// of an NCHW call both read grad_output in NHWC. Keyed by the tensor itself
// (TensorImpl identity; a different view misses) and its version, so an
// in-place change is never missed; inference tensors (no version) skip it.
struct NhwcCache {
  bool on = false;
  int next = 0;
  Tensor src[2], copy[2];
  int64_t version[2] = {-1, -1};
};
thread_local NhwcCache nhwc_cache;

struct NhwcScope {
  NhwcScope() { nhwc_cache.on = true; }
  ~NhwcScope() { nhwc_cache = NhwcCache(); }
};

Tensor to_channels_last(const Tensor& t) {
  auto& cc = nhwc_cache;
  const bool cached = cc.on && !t.is_inference();
  if (cached)
    for (int i = 0; i < 2; ++i)
      if (cc.src[i].defined() && cc.src[i].is_same(t) && cc.version[i] == int64_t(t._version()))
        return cc.copy[i];
  Tensor c = at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t N = t.size(0), C = t.size(1), HW = t.size(2) * t.size(3);
  if (t.is_contiguous() && N <= 65535 && (C + 31) / 32 <= 65535 && C * HW < kLim && C > 1 &&
      HW > 1) {
    const dim3 grid(unsigned((HW + 31) / 32), unsigned((C + 31) / 32), unsigned(N));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "cnnkernels_nhwc", [&] {
      nchw_to_nhwc_kernel<scalar_t><<<grid, dim3(32, 8), 0, at::cuda::getCurrentCUDAStream()>>>(
          t.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), int(C), int(HW));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    c.copy_(t);
  }
  if (cached) {
    cc.src[cc.next] = t, cc.copy[cc.next] = c, cc.version[cc.next] = int64_t(t._version());
    cc.next ^= 1;
  }
  return c;
}

// t with channel stride 1, the other strides multiples of vw and a 16-byte
// aligned base (dense: the strides of a contiguous channels_last tensor);
// a channels_last copy when t is not.
Tensor nhwc(const Tensor& t, int64_t vw, bool dense) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && (C == 1 || t.stride(1) == 1);
  if (dense) {
    ok = ok && (W == 1 || t.stride(3) == C) && (H == 1 || t.stride(2) == W * C) &&
         (t.size(0) == 1 || t.stride(0) == H * W * C);
  } else {
    for (int d : {0, 2, 3}) ok = ok && (t.size(d) == 1 || t.stride(d) % vw == 0);
  }
  return ok ? t : to_channels_last(t);
}

// cp.async stages in flight (4 measured no faster on the H100: 2 blocks per
// SM at 96 KB instead of 3 at 72 KB; see NOTES.md)
constexpr int kStages = 3;

void allow_smem(const void* kernel, int bytes) {
  // once per kernel and device: blocks may take more than 48 KB of shared memory
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  const std::pair<const void*, int> key{kernel, int(c10::cuda::current_device())};
  const std::lock_guard<std::mutex> lock(mu);
  if (done.count(key)) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.insert(key);
}

// The taps of one output phase of a strided data gradient along one axis:
// input position i = ph + s * q receives from the taps k with
// (ph + pad - k * d) divisible by s, an arithmetic run k0, k0 + step, ...;
// tap number j reads grad_output at q + off - j * dd.
struct PhaseTaps {
  int64_t k0 = 0, step = 1, count = 0, off = 0, dd = 0;
};

PhaseTaps phase_taps(int64_t ph, int64_t s, int64_t pad, int64_t d, int64_t K) {
  PhaseTaps t;
  int64_t k = 0;
  while (k < K && ((ph + pad - k * d) % s + s) % s != 0) ++k;
  if (k >= K) return t;
  t.k0 = k;
  t.step = s / std::gcd(s, d);
  t.count = (K - 1 - k) / t.step + 1;
  t.off = (ph + pad - k * d) / s;
  t.dd = t.step * d / s;
  return t;
}

// forward (src = x, out = y) or data gradient (src = gy, out = gx). The data
// gradient runs as stride_h x stride_w phases (the output pixels congruent to
// (ph, pw) modulo the stride), each a stride-1 convolution of grad_output with
// the taps that reach it: no work on taps the stride skips.
template <typename T>
bool conv(const ConvGeometry& cg, bool dgrad, const Tensor& src, const Tensor& w,
          const Tensor& bias, Tensor& out) {
  if constexpr (!kTypeBuilt<T>) {
    return false;
  } else {
    constexpr int64_t vw = 16 / int64_t(sizeof(T));
    if (!type_ok<T>() || cg.depthwise()) return false;
    const int64_t cin = dgrad ? cg.OC : cg.C, cinG = dgrad ? cg.OCg() : cg.Cg();
    const int64_t noutG = dgrad ? cg.Cg() : cg.OCg();
    const int64_t K = cg.KH * cg.KW * cinG;
    if (cin % vw || cinG % vw || K == 0) return false;
    if (out.numel() == 0) return true;
    if (K > kLim - 128 || w.numel() > kLim || cg.G > 65535 || max_off(out) > kLim ||
        src.numel() > kLim || (noutG + 63) / 64 > 65535)
      return false;
    const Tensor X = nhwc(src, vw, false);
    if (max_off(X) > kLim) return false;
    auto stream = at::cuda::getCurrentCUDAStream();
    const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
    ig::FP p{};
    p.NoutG = int(noutG), p.CinG = int(cinG);
    p.IH = int(dgrad ? cg.OH : cg.H), p.IW = int(dgrad ? cg.OW : cg.W);
    p.xn = int(X.stride(0)), p.xh = int(X.stride(2)), p.xw = int(X.stride(3));
    p.yn = int(out.stride(0)), p.yc = int(out.stride(1));
    auto launch = [&](const Tensor& wmat, int64_t oh, int64_t ow) {
      // wmat: (G, noutG, KH, KW, cinG) for the taps in p (any of them may be 0)
      p.OH = int(oh), p.OW = int(ow), p.M = int(cg.N * oh * ow);
      p.K = p.KH * p.KW * p.CinG;
      if (p.K == 0) p.KH = 0, p.KW = 1;  // no tap reaches these pixels: bias (or 0) only
      p.wg = int64_t(noutG) * p.K;
      p.pair = out.stride(1) == 1 && noutG % 2 == 0 && p.y0 % 2 == 0 &&
               reinterpret_cast<uintptr_t>(out.data_ptr()) % (2 * sizeof(T)) == 0;
      for (int64_t st : {int64_t(p.yn), int64_t(p.yh), int64_t(p.yw)}) p.pair = p.pair && st % 2 == 0;
      if (p.M == 0) return;
      const dim3 grid(unsigned((p.M + 127) / 128), unsigned((noutG + 63) / 64), unsigned(cg.G));
      const T* wp = wmat.numel() ? wmat.data_ptr<T>() : X.data_ptr<T>();
      const auto kernel = ig::fwd_kernel<T, kStages>;
      const int bytes = kStages * (128 + 64) * ig::RW * 4;
      allow_smem(reinterpret_cast<const void*>(kernel), bytes);
      kernel<<<grid, ig::NT, bytes, stream>>>(X.data_ptr<T>(), wp, bp, out.data_ptr<T>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (!dgrad) {
      p.KH = int(cg.KH), p.KW = int(cg.KW), p.sh = int(cg.sh), p.sw = int(cg.sw);
      p.dh = int(cg.dh), p.dw = int(cg.dw), p.pt = int(cg.pt), p.pl = int(cg.pl);
      p.yh = int(out.stride(2)), p.yw = int(out.stride(3)), p.y0 = 0;
      Tensor wmat = w.permute({0, 2, 3, 1}).contiguous();  // for 1x1: w itself
      if (reinterpret_cast<uintptr_t>(wmat.data_ptr()) % 16) wmat = wmat.clone();  // 16-byte loads
      launch(wmat, cg.OH, cg.OW);
      return true;
    }
    const Tensor wv = w.view({cg.G, cg.OCg(), cg.Cg(), cg.KH, cg.KW});
    for (int64_t ph = 0; ph < std::min(cg.sh, cg.H); ++ph)
      for (int64_t pw = 0; pw < std::min(cg.sw, cg.W); ++pw) {
        const PhaseTaps th = phase_taps(ph, cg.sh, cg.pt, cg.dh, cg.KH);
        const PhaseTaps tw = phase_taps(pw, cg.sw, cg.pl, cg.dw, cg.KW);
        p.KH = int(th.count), p.KW = int(tw.count), p.sh = 1, p.sw = 1;
        p.pt = int(-th.off), p.pl = int(-tw.off), p.dh = int(-th.dd), p.dw = int(-tw.dd);
        p.yh = int(cg.sh * out.stride(2)), p.yw = int(cg.sw * out.stride(3));
        p.y0 = int(ph * out.stride(2) + pw * out.stride(3));
        Tensor wmat;
        if (th.count && tw.count)
          wmat = wv.slice(3, th.k0, cg.KH, th.step)
                     .slice(4, tw.k0, cg.KW, tw.step)
                     .permute({0, 2, 3, 4, 1})
                     .contiguous();
        launch(wmat, (cg.H - ph + cg.sh - 1) / cg.sh, (cg.W - pw + cg.sw - 1) / cg.sw);
      }
    return true;
  }
}

// weight gradient: gy (N, OC, OH, OW), x (N, C, H, W) -> gw (OC, Cg, KH, KW)
template <typename T>
bool wgrad(const ConvGeometry& cg, const Tensor& gy_in, const Tensor& x_in, Tensor& gw) {
  if constexpr (!kTypeBuilt<T>) {
    return false;
  } else {
    constexpr int64_t vw = 16 / int64_t(sizeof(T));
    if (!type_ok<T>() || cg.depthwise()) return false;
    if (cg.OC % vw || cg.OCg() % vw || cg.C % vw || cg.Cg() % vw) return false;
    if (gw.numel() == 0) return true;
    const int64_t P = cg.N * cg.OH * cg.OW;
    if (P == 0) {
      gw.zero_();
      return true;
    }
    if (gy_in.numel() > kLim || x_in.numel() > kLim || gw.numel() > kLim || P > kLim / 2)
      return false;
    const Tensor gy = nhwc(gy_in, vw, true), x = nhwc(x_in, vw, false);
    if (max_off(x) > kLim) return false;
    ig::WP p{};
    p.Mo = int(cg.OCg()), p.Cg = int(cg.Cg()), p.KH = int(cg.KH), p.KW = int(cg.KW);
    p.Nj = int(cg.KH * cg.KW * cg.Cg());
    p.OH = int(cg.OH), p.OW = int(cg.OW), p.H = int(cg.H), p.W = int(cg.W);
    p.sh = int(cg.sh), p.sw = int(cg.sw), p.pt = int(cg.pt), p.pl = int(cg.pl);
    p.dh = int(cg.dh), p.dw = int(cg.dw);
    p.Ptot = int(P), p.MT = int((cg.OCg() + ig::WBM - 1) / ig::WBM), p.gyp = int(cg.OC);
    p.xn = int(x.stride(0)), p.xh = int(x.stride(2)), p.xw = int(x.stride(3));
    p.KKC = int(cg.Cg() * cg.KH * cg.KW);
    const int64_t nt = (p.Nj + ig::WBN - 1) / ig::WBN, tiles = nt * p.MT * cg.G;
    if (int64_t(p.MT) * cg.G > 65535) return false;
    const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    // about four blocks per multiprocessor, each at least 8 slices long, and
    // at most 256 MB of partial sums
    int64_t splits = std::min<int64_t>({(4 * sms + tiles - 1) / tiles, (P + 255) / 256,
                                        std::max<int64_t>(1, (int64_t(1) << 26) / gw.numel()),
                                        65535});
    splits = std::max<int64_t>(splits, 1);
    const int64_t chunk = ((P + splits - 1) / splits + ig::WBK - 1) / ig::WBK * ig::WBK;
    splits = (P + chunk - 1) / chunk;
    p.kchunk = int(chunk);
    const int64_t n = gw.numel();
    p.split_stride = n;
    const dim3 grid(unsigned(nt), unsigned(splits), unsigned(p.MT * cg.G));
    auto stream = at::cuda::getCurrentCUDAStream();
    const auto kernel = ig::wgrad_kernel<T, kStages>;
    const int bytes = kStages * ig::wgrad_stage_bytes<T>();
    allow_smem(reinterpret_cast<const void*>(kernel), bytes);
    sum_of_splits<T, float>(splits, n, gw, [&](float* part) {
      kernel<<<grid, ig::NT, bytes, stream>>>(gy.data_ptr<T>(), x.data_ptr<T>(), part, p);
    });
    return true;
  }
}

}  // namespace ig_host

bool gemm_fits(const ConvGeometry& g) {
  if (g.depthwise()) return false;  // one channel per group: the direct kernels
  const int64_t lim = (int64_t(1) << 31) - 4096;
  const int64_t P = std::max(g.OH * g.OW, g.H * g.W);
  return g.N * P < lim && g.Cg() * g.KH * g.KW < lim && g.OC * g.KH * g.KW < lim &&
         g.G <= 65535 && g.H < (1 << 28) && g.W < (1 << 28) &&
         g.Cg() * g.KH * g.KW < 65535LL * 64 && g.OCg() < 65535LL * 64;
}

// MODE 0: asrc = x, bsrc = w, out = y; 1: asrc = gy, bsrc = w, out = gx;
// 2: asrc = gy, bsrc = x, out = gw (partial sums in the accumulation type).
template <typename T, int MODE>
void launch_gemm(const ConvGeometry& cg, const Tensor& asrc, const Tensor& bsrc, const Tensor& bias,
                 Tensor& out, bool cl) {
  using A = at::opmath_type<T>;
  gemm::Params p{};
  const int KK = int(cg.KH * cg.KW);
  p.N = int(cg.N), p.C = int(cg.C), p.H = int(cg.H), p.W = int(cg.W), p.OC = int(cg.OC);
  p.OH = int(cg.OH), p.OW = int(cg.OW), p.KH = int(cg.KH), p.KW = int(cg.KW);
  p.sh = int(cg.sh), p.sw = int(cg.sw), p.pt = int(cg.pt), p.pl = int(cg.pl);
  p.dh = int(cg.dh), p.dw = int(cg.dw), p.Cg = int(cg.Cg()), p.OCg = int(cg.OCg()), p.KK = KK;
  p.cfast = cl;
  const int big = std::numeric_limits<int>::max();
  const bool strided = cg.sh > 1 || cg.sw > 1;
  if (MODE == 0) {
    p.M = p.N * p.OH * p.OW, p.Nn = p.OCg, p.K = p.Cg * KK;
    p.xs = strides(asrc), p.ys = strides(out);
    p.a = {p.H, p.W, 1, 1, 0, 0, false, cl};
    p.b = {big, big, 1, 1, 0, 0, false, true};
    p.bias_base = p.OCg;
  } else if (MODE == 1) {
    p.M = p.N * p.H * p.W, p.Nn = p.Cg, p.K = p.OCg * KK;
    p.xs = strides(out), p.ys = strides(asrc);
    p.a = {p.OH, p.OW, p.sh, p.sw, p.ys.h, p.ys.w, strided, cl};
    p.b = {big, big, 1, 1, 0, 0, false, true};
    p.bias_base = p.Cg;
  } else {
    p.M = p.OCg, p.Nn = p.Cg * KK, p.K = p.N * p.OH * p.OW;
    p.xs = strides(bsrc), p.ys = strides(asrc);
    p.a = {big, big, 1, 1, 0, 0, false, !cl};
    p.b = {p.H, p.W, 1, 1, 0, 0, false, !cl};
  }
  if (p.M == 0 || p.Nn == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int gx = (p.M + gemm::BM - 1) / gemm::BM, gy = (p.Nn + gemm::BN - 1) / gemm::BN;
  constexpr int BK = sizeof(T) == 8 ? 16 : 32;
  int splits = 1;
  if (MODE == 2) {
    if (p.K == 0) {
      out.zero_();
      return;
    }
    const int64_t tiles = int64_t(gx) * gy * cg.G;
    const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int64_t want = (2 * sms + tiles - 1) / tiles;
    splits = int(std::max<int64_t>(1, std::min<int64_t>({want, p.K / 512, 64, 65535 / cg.G})));
  }
  p.kchunk = int(((int64_t(p.K) + splits - 1) / splits + BK - 1) / BK * BK);
  p.splits = splits = int((p.K + p.kchunk - 1) / p.kchunk);
  const dim3 grid(gx, gy, unsigned(cg.G * splits));
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  const bool tf32 = std::is_same<T, float>::value && at::globalContext().allowTF32CuDNN();
  // Forward / data grad: B as a dense [G][Nn][K] matrix in the k order.
  Tensor bmat = bsrc;
  if (MODE == 0 && cl) bmat = bsrc.permute({0, 2, 3, 1}).contiguous();
  if (MODE == 1) {
    const Tensor wv = bsrc.view({cg.G, cg.OCg(), cg.Cg(), cg.KH, cg.KW});
    bmat = (cl ? wv.permute({0, 2, 3, 4, 1}) : wv.permute({0, 2, 1, 3, 4})).contiguous();
  }
  const int64_t vw = 16 / int64_t(sizeof(T));
  auto aligned = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  const int64_t vch = MODE == 0 ? cg.Cg() : cg.OCg(), vall = MODE == 0 ? cg.C : cg.OC;
  const bool vec = sizeof(T) <= 4 && MODE != 2 && cl && vch % vw == 0 && vall % vw == 0 &&
                   aligned(asrc) && aligned(bmat);
  auto go = [&](auto* dst) {
    using O = std::remove_pointer_t<decltype(dst)>;
    const T* a = asrc.data_ptr<T>();
    const T* b = bmat.data_ptr<T>();
#define CNNK_GEMM(KIND, VEC) \
  gemm::conv_gemm_kernel<T, KIND, MODE, O, VEC><<<grid, gemm::NT, 0, stream>>>(a, b, bp, dst, p)
    if constexpr (std::is_same<T, at::Half>::value || std::is_same<T, at::BFloat16>::value) {
      if (vec) CNNK_GEMM(2, true); else CNNK_GEMM(2, false);
    } else if constexpr (std::is_same<T, float>::value) {
      if (tf32) {
        if (vec) CNNK_GEMM(1, true); else CNNK_GEMM(1, false);
      } else {
        if (vec) CNNK_GEMM(0, true); else CNNK_GEMM(0, false);
      }
    } else {
      CNNK_GEMM(0, false);
    }
#undef CNNK_GEMM
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if constexpr (MODE != 2) {
    go(out.data_ptr<T>());
    return;
  }
  const int64_t n = out.numel();
  p.split_stride = n;
  sum_of_splits<T, A>(splits, n, out, go);
}

// ---------------------------------------------------------------------------
// Depthwise (one input channel per group, any channel multiplier M = OC / C):
// direct kernels with 32-bit indices and no divisions in the inner loops.
//   forward: y[n, oc, oh, ow] = sum over (kh, kw) of w[oc, kh, kw] * x[n, oc / M, ...]
//   data grad: gx[n, c, ih, iw] = sum over m < M and the taps whose output
//   pixel exists of w[c*M + m, kh, kw] * gy[n, c*M + m, oh, ow]
//   weight grad: per output channel, every tap's sum over (n, oh, ow), in
//   fixed-order partial sums (no atomics).
// NCHW: a block is 32 x 8 pixels of one plane; channels_last: 32 channels x
// 8 pixels of one row, so that a warp reads consecutive addresses.
namespace dw {

struct P {
  int N, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, M;
  Str xs, ys;
};

P make(const ConvGeometry& g, const Tensor& x_side, const Tensor& y_side) {
  return {int(g.N), int(g.C), int(g.H), int(g.W), int(g.OC), int(g.OH), int(g.OW), int(g.KH),
          int(g.KW), int(g.sh), int(g.sw), int(g.pt), int(g.pl), int(g.dh), int(g.dw),
          int(g.OC / g.C), strides(x_side), strides(y_side)};
}

// The first output point this thread computes: (n, ch, y, x) over (rows of)
// an (N, CH, HH, WW) tensor. A thread computes kPer points, 8 apart along y
// (NCHW) or x (channels_last), which spreads its index arithmetic.
constexpr int kPer = 4;

template <bool CL>
__device__ __forceinline__ bool point(int CH, int HH, int WW, int64_t z, int& n, int& ch, int& y,
                                      int& x) {
  if (CL) {
    ch = blockIdx.x * 32 + threadIdx.x;
    x = blockIdx.y * (8 * kPer) + threadIdx.y;
    n = int(z / HH), y = int(z - int64_t(n) * HH);
    return ch < CH;
  }
  x = blockIdx.x * 32 + threadIdx.x;
  y = blockIdx.y * (8 * kPer) + threadIdx.y;
  n = int(z / CH), ch = int(z - int64_t(n) * CH);
  return x < WW;
}

// KH_/KW_: the kernel size when known at compile time (0: read from p), so
// that the taps unroll and their loads are all in flight together.
template <typename T, bool CL, int KH_, int KW_>
__global__ void __launch_bounds__(256) forward_kernel(const T* __restrict__ x,
                                                      const T* __restrict__ w,
                                                      const T* __restrict__ b, T* __restrict__ y,
                                                      P p, int64_t planes) {
  using A = at::opmath_type<T>;
  const int KH = KH_ ? KH_ : p.KH, KW = KW_ ? KW_ : p.KW;
  for (int64_t z = blockIdx.z; z < planes; z += gridDim.z) {
    int n, oc, oh0, ow0;
    if (!point<CL>(p.OC, p.OH, p.OW, z, n, oc, oh0, ow0)) continue;
    const T* xp = x + n * p.xs.n + int64_t(oc / p.M) * p.xs.c;
    const T* wp = w + int64_t(oc) * KH * KW;
    const A bv = b ? static_cast<A>(b[oc]) : A(0);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
    const int oh = CL ? oh0 : oh0 + 8 * i, ow = CL ? ow0 + 8 * i : ow0;
    if (oh >= p.OH || ow >= p.OW) break;
    A acc = bv;
    const int h0 = oh * p.sh - p.pt, w0 = ow * p.sw - p.pl;
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
      const int ih = h0 + kh * p.dh;
      const bool hok = (unsigned)ih < (unsigned)p.H;
      const T* row = xp + int64_t(ih) * p.xs.h;
#pragma unroll
      for (int kw = 0; kw < KW; ++kw) {
        const int iw = w0 + kw * p.dw;
        if (hok && (unsigned)iw < (unsigned)p.W)
          acc += static_cast<A>(wp[kh * KW + kw]) * static_cast<A>(row[int64_t(iw) * p.xs.w]);
      }
    }
    y[n * p.ys.n + int64_t(oc) * p.ys.c + int64_t(oh) * p.ys.h + int64_t(ow) * p.ys.w] =
        static_cast<T>(acc);
    }
  }
}

template <typename T, bool CL, int KH_, int KW_>
__global__ void __launch_bounds__(256) dgrad_kernel(const T* __restrict__ gy,
                                                    const T* __restrict__ w,
                                                    const T* __restrict__ b, T* __restrict__ gx,
                                                    P p, int64_t planes) {
  using A = at::opmath_type<T>;
  const int KH = KH_ ? KH_ : p.KH, KW = KW_ ? KW_ : p.KW;
  const bool s1 = p.sh == 1 && p.sw == 1;
  for (int64_t z = blockIdx.z; z < planes; z += gridDim.z) {
    int n, c, ih0, iw0;
    if (!point<CL>(p.C, p.H, p.W, z, n, c, ih0, iw0)) continue;
    const A bv = b ? static_cast<A>(b[c]) : A(0);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
    const int ih = CL ? ih0 : ih0 + 8 * i, iw = CL ? iw0 + 8 * i : iw0;
    if (ih >= p.H || iw >= p.W) break;
    A acc = bv;
    const int vh0 = ih + p.pt, vw0 = iw + p.pl;
    for (int m = 0; m < p.M; ++m) {
      const int oc = c * p.M + m;
      const T* gp = gy + n * p.ys.n + int64_t(oc) * p.ys.c;
      const T* wp = w + int64_t(oc) * KH * KW;
#pragma unroll
      for (int kh = 0; kh < KH; ++kh) {
        const int vh = vh0 - kh * p.dh;
        const int oh = s1 ? vh : (vh >= 0 ? vh / p.sh : -1);
        const bool hok = vh >= 0 && oh * p.sh == vh && oh < p.OH;
        const T* row = gp + int64_t(oh) * p.ys.h;
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) {
          const int vw = vw0 - kw * p.dw;
          const int ow = s1 ? vw : (vw >= 0 ? vw / p.sw : -1);
          if (hok && vw >= 0 && ow * p.sw == vw && ow < p.OW)
            acc += static_cast<A>(wp[kh * KW + kw]) * static_cast<A>(row[int64_t(ow) * p.ys.w]);
        }
      }
    }
    gx[n * p.xs.n + int64_t(c) * p.xs.c + int64_t(ih) * p.xs.h + int64_t(iw) * p.xs.w] =
        static_cast<T>(acc);
    }
  }
}

// Weight grad, at most KMAX taps per channel. NCHW: block (blockIdx.x = oc,
// blockIdx.y = a slice of the images), threads over the slice's output
// pixels. channels_last: block = 32 channels x 8 lanes over the output
// pixels of a slice. Partial sums go to part[slice][oc][tap].
template <typename T, bool CL, int KMAX>
__global__ void __launch_bounds__(256) wgrad_kernel(const T* __restrict__ gy,
                                                    const T* __restrict__ x, P p, int slices,
                                                    at::opmath_type<T>* __restrict__ part) {
  using A = at::opmath_type<T>;
  __shared__ A red1[256];
  const int KK = p.KH * p.KW;
  const int64_t P_ = int64_t(p.N) * p.OH * p.OW;
  const int64_t per = (P_ + slices - 1) / slices;
  const int64_t q0 = blockIdx.y * per, q1 = min(P_, q0 + per);
  A acc[KMAX];
#pragma unroll
  for (int t = 0; t < KMAX; ++t) acc[t] = A(0);
  int oc;
  int64_t q, step;
  if (CL) {
    oc = blockIdx.x * 32 + threadIdx.x;
    q = q0 + threadIdx.y, step = 8;
  } else {
    oc = blockIdx.x;
    q = q0 + threadIdx.y * 32 + threadIdx.x, step = 256;
  }
  if (oc < p.OC) {
    const int c = oc / p.M;
    for (; q < q1; q += step) {
      const int qi = int(q), P2 = p.OH * p.OW;  // < 2^30, checked at launch
      const int n = qi / P2, r = qi - n * P2, oh = r / p.OW, ow = r - oh * p.OW;
      const A g = static_cast<A>(
          gy[n * p.ys.n + int64_t(oc) * p.ys.c + int64_t(oh) * p.ys.h + int64_t(ow) * p.ys.w]);
      const T* xp = x + n * p.xs.n + int64_t(c) * p.xs.c;
      const int h0 = oh * p.sh - p.pt, w0 = ow * p.sw - p.pl;
#pragma unroll
      for (int t = 0; t < KMAX; ++t) {
        if (t < KK) {
          const int kh = t / p.KW, kw = t - kh * p.KW;
          const int ih = h0 + kh * p.dh, iw = w0 + kw * p.dw;
          if ((unsigned)ih < (unsigned)p.H && (unsigned)iw < (unsigned)p.W)
            acc[t] += g * static_cast<A>(xp[int64_t(ih) * p.xs.h + int64_t(iw) * p.xs.w]);
        }
      }
    }
  }
  // fixed-order block reduction, tap by tap
  const int tid = threadIdx.y * 32 + threadIdx.x;
  for (int t = 0; t < KK; ++t) {
    A v = A(0);
#pragma unroll
    for (int u = 0; u < KMAX; ++u)
      if (u == t) v = acc[u];
    red1[tid] = v;
    __syncthreads();
    if (CL) {
      if (threadIdx.y == 0 && oc < p.OC) {
        A s = red1[threadIdx.x];
        for (int i = 1; i < 8; ++i) s += red1[i * 32 + threadIdx.x];
        part[(int64_t(blockIdx.y) * p.OC + oc) * KK + t] = s;
      }
    } else {
      for (int s = 128; s > 0; s >>= 1) {
        if (tid < s) red1[tid] += red1[tid + s];
        __syncthreads();
      }
      if (tid == 0) part[(int64_t(blockIdx.y) * p.OC + oc) * KK + t] = red1[0];
    }
    __syncthreads();
  }
}


// NCHW, unit stride and dilation, one output channel per input channel: a
// thread computes 4 adjacent outputs in each of RB rows of one plane, walking
// down its column strip, so that every input row it reads (4 + KW - 1 values)
// feeds up to KH output rows from registers. Forward, and the data gradient
// as the same convolution of grad_output with the taps reversed.
struct StripP {
  int C, H, W, OH, OW, pt, pl, cg, rg;
  int64_t items;  // planes * rg * cg
  bool flip;      // read the taps reversed (data gradient)
};

constexpr int kStripRows = 8;

// Walks the RB + KH - 1 input rows under a strip of 4 x RB outputs at
// (oh0, ow0): loads each row's 4 + KW - 1 values once (zero outside the plane)
// and calls f(o, kh, v) for every strip row o = r - kh that the row reaches.
template <typename T, typename A, int RB, int KH, int KW, typename F>
__device__ __forceinline__ void strip_rows(const T* xp, int oh0, int ow0, const StripP& p, F&& f) {
  constexpr int VN = 4 + KW - 1;
#pragma unroll
  for (int r = 0; r < RB + KH - 1; ++r) {
    const int ih = oh0 - p.pt + r;
    A v[VN];
    const bool hok = unsigned(ih) < unsigned(p.H);
    const T* row = xp + int64_t(hok ? ih : 0) * p.W;
#pragma unroll
    for (int j = 0; j < VN; ++j) {
      const int iw = ow0 - p.pl + j;
      v[j] = hok && unsigned(iw) < unsigned(p.W) ? static_cast<A>(row[iw]) : A(0);
    }
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
      const int o = r - kh;
      if (o >= 0 && o < RB) f(o, kh, v);
    }
  }
}

template <typename T, int KH, int KW>
__global__ void __launch_bounds__(256) strip_kernel(const T* __restrict__ x,
                                                    const T* __restrict__ w,
                                                    const T* __restrict__ b, T* __restrict__ y,
                                                    StripP p) {
  using A = at::opmath_type<T>;
  constexpr int RB = kStripRows;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < p.items;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int cgi = int(t % p.cg);
    const int64_t t2 = t / p.cg;
    const int rgi = int(t2 % p.rg);
    const int64_t plane = t2 / p.rg;
    const int c = int(plane % p.C);
    const int ow0 = cgi * 4, oh0 = rgi * RB;
    const T* xp = x + plane * p.H * p.W;
    A wr[KH][KW];
#pragma unroll
    for (int kh = 0; kh < KH; ++kh)
#pragma unroll
      for (int kw = 0; kw < KW; ++kw)
        wr[kh][kw] = static_cast<A>(
            w[c * KH * KW + (p.flip ? (KH - 1 - kh) * KW + (KW - 1 - kw) : kh * KW + kw)]);
    const A bv = b ? static_cast<A>(b[c]) : A(0);
    A acc[RB][4];
#pragma unroll
    for (int o = 0; o < RB; ++o)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[o][j] = bv;
    strip_rows<T, A, RB, KH, KW>(xp, oh0, ow0, p, [&](int o, int kh, const A* v) {
#pragma unroll
      for (int kw = 0; kw < KW; ++kw)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[o][j] += wr[kh][kw] * v[j + kw];
    });
    T* yp = y + plane * p.OH * p.OW;
#pragma unroll
    for (int o = 0; o < RB; ++o) {
      const int oh = oh0 + o;
      if (oh >= p.OH) break;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (ow0 + j < p.OW) yp[int64_t(oh) * p.OW + ow0 + j] = static_cast<T>(acc[o][j]);
    }
  }
}

// Weight gradient of the same layers: a thread sums, for every tap, grad_output
// times input over its 4 x RB strip (each input row read once); a block owns
// one channel and a slice of its strips and reduces in a fixed order; the
// slices' partial sums are added in order afterwards.
template <typename T, int KH, int KW>
__global__ void __launch_bounds__(256) strip_wgrad_kernel(const T* __restrict__ gy,
                                                          const T* __restrict__ x, StripP p,
                                                          int N, int slices,
                                                          at::opmath_type<T>* __restrict__ part) {
  using A = at::opmath_type<T>;
  constexpr int RB = kStripRows, KK = KH * KW;
  const int c = blockIdx.x, slice = blockIdx.y;
  const int64_t per = int64_t(N) * p.rg * p.cg;  // strips of this channel
  A acc[KH][KW];
#pragma unroll
  for (int kh = 0; kh < KH; ++kh)
#pragma unroll
    for (int kw = 0; kw < KW; ++kw) acc[kh][kw] = A(0);
  for (int64_t t = int64_t(slice) * blockDim.x + threadIdx.x; t < per;
       t += int64_t(slices) * blockDim.x) {
    const int cgi = int(t % p.cg);
    const int64_t t2 = t / p.cg;
    const int rgi = int(t2 % p.rg);
    const int64_t n = t2 / p.rg, plane = n * p.C + c;
    const int ow0 = cgi * 4, oh0 = rgi * RB;
    const T* xp = x + plane * p.H * p.W;
    const T* gp = gy + plane * p.OH * p.OW;
    A g[RB][4];
#pragma unroll
    for (int o = 0; o < RB; ++o)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        g[o][j] = oh0 + o < p.OH && ow0 + j < p.OW
                      ? static_cast<A>(gp[int64_t(oh0 + o) * p.OW + ow0 + j])
                      : A(0);
    strip_rows<T, A, RB, KH, KW>(xp, oh0, ow0, p, [&](int o, int kh, const A* v) {
#pragma unroll
      for (int kw = 0; kw < KW; ++kw)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[kh][kw] += g[o][j] * v[j + kw];
    });
  }
  // fixed-order reduction: within each warp by shuffles, then over the 8 warps
  __shared__ A red[KK][8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int kh = 0; kh < KH; ++kh)
#pragma unroll
    for (int kw = 0; kw < KW; ++kw) {
      A v = acc[kh][kw];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
      if (lane == 0) red[kh * KW + kw][warp] = v;
    }
  __syncthreads();
  if (threadIdx.x < KK) {
    A s = A(0);
    for (int i = 0; i < 8; ++i) s += red[threadIdx.x][i];
    part[(int64_t(slice) * p.C + c) * KK + threadIdx.x] = s;
  }
}

// channels_last, unit stride and dilation, one output channel per input
// channel, C % 4 == 0: a thread takes 4 adjacent channels (one 16-byte
// vector for float32) of a strip of kClRows x kClW outputs. Each input row
// under the strip is loaded once (kClW + K - 1 vectors, coalesced across the
// warp's channel groups) and feeds every output row it reaches; the taps
// come from a [K * K][C] copy of the weights (one vector per tap). Forward,
// and the data gradient with the taps reversed in that copy.
constexpr int kClW = 4, kClRows = 2;

struct StripCL {
  int C, H, W, OH, OW, pt, pl, cgs, wgs, rgs;  // cgs: C / 4, wgs / rgs: column / row groups
  int64_t items;                               // N * rgs * wgs * cgs
};

template <typename T>
struct alignas(4 * sizeof(T)) Ch4 {
  T v[4];
};

template <typename T, typename A>
__device__ __forceinline__ void load4(const T* p, bool ok, A (&out)[4]) {
  if (ok) {
    const Ch4<T> q = *reinterpret_cast<const Ch4<T>*>(p);
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = static_cast<A>(q.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = A(0);
  }
}

template <typename T, int K>
__global__ void __launch_bounds__(256, 2) strip_cl_kernel(const T* __restrict__ x,
                                                       const T* __restrict__ wt,
                                                       const T* __restrict__ b, T* __restrict__ y,
                                                       StripCL p) {
  using A = at::opmath_type<T>;
  constexpr int VN = kClW + K - 1;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < p.items;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int c0 = int(t % p.cgs) * 4;
    int64_t r = t / p.cgs;
    const int ow0 = int(r % p.wgs) * kClW;
    r /= p.wgs;
    const int oh0 = int(r % p.rgs) * kClRows;
    const int64_t n = r / p.rgs;
    const T* xp = x + n * p.H * p.W * p.C + c0;
    A bv[4];
    load4(b + c0, b != nullptr, bv);
    A acc[kClRows][kClW][4];
#pragma unroll
    for (int o = 0; o < kClRows; ++o)
#pragma unroll
      for (int j = 0; j < kClW; ++j)
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[o][j][k] = bv[k];
#pragma unroll
    for (int rr = 0; rr < kClRows + K - 1; ++rr) {
      const int ih = oh0 - p.pt + rr;
      const bool hok = unsigned(ih) < unsigned(p.H);
      A v[VN][4];
#pragma unroll
      for (int j = 0; j < VN; ++j) {
        const int iw = ow0 - p.pl + j;
        load4(xp + (int64_t(ih) * p.W + iw) * p.C, hok && unsigned(iw) < unsigned(p.W), v[j]);
      }
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        const int o = rr - kh;
        if (o < 0 || o >= kClRows) continue;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          A wv[4];
          load4(wt + int64_t(kh * K + kw) * p.C + c0, true, wv);
#pragma unroll
          for (int j = 0; j < kClW; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[o][j][k] += wv[k] * v[j + kw][k];
        }
      }
    }
#pragma unroll
    for (int o = 0; o < kClRows; ++o) {
      const int oh = oh0 + o;
      if (oh >= p.OH) break;
#pragma unroll
      for (int j = 0; j < kClW; ++j) {
        if (ow0 + j >= p.OW) break;
        Ch4<T> q;
#pragma unroll
        for (int k = 0; k < 4; ++k) q.v[k] = static_cast<T>(acc[o][j][k]);
        *reinterpret_cast<Ch4<T>*>(y + ((n * p.OH + oh) * p.OW + ow0 + j) * p.C + c0) = q;
      }
    }
  }
}

// Weight gradient, K x K taps: block (channel tile blockIdx.x of blockDim.x
// groups of 4 channels, pixel slice blockIdx.y); a thread walks strips of
// kClW outputs of its slice, each grad_output vector times the K rows of
// kClW + K - 1 input vectors under it; the block adds its blockDim.y threads
// per channel group in order, tap by tap, into part[slice][c][tap].
template <typename T, int K>
__global__ void __launch_bounds__(256) strip_cl_wgrad_kernel(const T* __restrict__ gy,
                                                             const T* __restrict__ x, StripCL p,
                                                             int N, int slices,
                                                             at::opmath_type<T>* __restrict__ part) {
  using A = at::opmath_type<T>;
  constexpr int VN = kClW + K - 1;
  __shared__ A red[256 * 4];
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  const int c0 = g * 4;
  A acc[K * K][4];
#pragma unroll
  for (int tp = 0; tp < K * K; ++tp)
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[tp][k] = A(0);
  const int64_t strips = int64_t(N) * p.OH * p.wgs;
  const int64_t per = (strips + slices - 1) / slices;
  const int64_t q0 = blockIdx.y * per, q1 = min(strips, q0 + per);
  if (g < p.cgs) {
    for (int64_t q = q0 + threadIdx.y; q < q1; q += blockDim.y) {
      const int ow0 = int(q % p.wgs) * kClW;
      const int64_t r = q / p.wgs;
      const int oh = int(r % p.OH);
      const int64_t n = r / p.OH;
      A gv[kClW][4];
#pragma unroll
      for (int j = 0; j < kClW; ++j)
        load4(gy + ((n * p.OH + oh) * p.OW + ow0 + j) * p.C + c0, ow0 + j < p.OW, gv[j]);
      const T* xp = x + n * p.H * p.W * p.C + c0;
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        const int ih = oh - p.pt + kh;
        if (unsigned(ih) >= unsigned(p.H)) continue;
        A v[VN][4];
#pragma unroll
        for (int j = 0; j < VN; ++j) {
          const int iw = ow0 - p.pl + j;
          load4(xp + (int64_t(ih) * p.W + iw) * p.C, unsigned(iw) < unsigned(p.W), v[j]);
        }
#pragma unroll
        for (int kw = 0; kw < K; ++kw)
#pragma unroll
          for (int j = 0; j < kClW; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[kh * K + kw][k] += gv[j][k] * v[j + kw][k];
      }
    }
  }
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
  for (int tp = 0; tp < K * K; ++tp) {
#pragma unroll
    for (int k = 0; k < 4; ++k) red[tid * 4 + k] = acc[tp][k];
    __syncthreads();
    if (threadIdx.y == 0 && g < p.cgs) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        A sum = red[threadIdx.x * 4 + k];
        for (int i = 1; i < int(blockDim.y); ++i) sum += red[(i * blockDim.x + threadIdx.x) * 4 + k];
        part[(int64_t(blockIdx.y) * p.C + c0 + k) * (K * K) + tp] = sum;
      }
    }
    __syncthreads();
  }
}

}  // namespace dw


// The strip kernels (dw::strip_kernel, dw::strip_wgrad_kernel): contiguous
// NCHW, unit stride and dilation, multiplier 1, square 3 / 5 / 7 taps.
template <typename T>
bool launch_dw_strip(int which, const ConvGeometry& cg, const Tensor& a, const Tensor& b,
                     const Tensor& bias, Tensor& out, bool cl) {
  if (cl || !cg.depthwise() || cg.OC != cg.C || cg.sh != 1 || cg.sw != 1 || cg.dh != 1 ||
      cg.dw != 1 || cg.KH != cg.KW || (cg.KH != 3 && cg.KH != 5 && cg.KH != 7))
    return false;
  const Tensor& src = which == 2 ? b : a;  // x for forward / wgrad, gy for dgrad
  if (!src.is_contiguous() || !out.is_contiguous() || (which == 2 && !a.is_contiguous()))
    return false;
  dw::StripP p{};
  p.C = int(cg.C);
  if (which == 1) {  // gx = conv(gy, reversed taps), padding K - 1 - pad, output H x W
    p.H = int(cg.OH), p.W = int(cg.OW), p.OH = int(cg.H), p.OW = int(cg.W);
    p.pt = int(cg.KH - 1 - cg.pt), p.pl = int(cg.KW - 1 - cg.pl);
    p.flip = true;
  } else {
    p.H = int(cg.H), p.W = int(cg.W), p.OH = int(cg.OH), p.OW = int(cg.OW);
    p.pt = int(cg.pt), p.pl = int(cg.pl);
  }
  p.cg = (p.OW + 3) / 4, p.rg = (p.OH + dw::kStripRows - 1) / dw::kStripRows;
  const int64_t planes = cg.N * cg.C;
  p.items = planes * p.rg * p.cg;
  if (cg.N * cg.C * std::max(cg.H * cg.W, cg.OH * cg.OW) >= (int64_t(1) << 31)) return false;
  auto stream = at::cuda::getCurrentCUDAStream();
  if (which != 2) {
    if (out.numel() == 0) return true;
    const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
    const int blocks = int(std::min<int64_t>((p.items + 255) / 256, 65535LL * 16));
#define CNNK_STRIP(K)                                                                         \
  dw::strip_kernel<T, K, K><<<blocks, 256, 0, stream>>>(src.data_ptr<T>(), b.data_ptr<T>(), bp, \
                                                        out.data_ptr<T>(), p)
    if (cg.KH == 3) CNNK_STRIP(3); else if (cg.KH == 5) CNNK_STRIP(5); else CNNK_STRIP(7);
#undef CNNK_STRIP
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
  // weight gradient: a = gy, b = x, out = gw (C, 1, K, K)
  if (out.numel() == 0) return true;
  if (cg.N * cg.OH * cg.OW == 0) {
    out.zero_();
    return true;
  }
  if (cg.C > 65535 * 64) return false;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t per = cg.N * p.rg * p.cg;
  const int slices = int(std::max<int64_t>(
      1, std::min<int64_t>({(4 * sms + cg.C - 1) / cg.C, (per + 255) / 256, 65535})));
  const int64_t KK = cg.KH * cg.KW, n = cg.C * KK;
  using A = at::opmath_type<T>;
  const dim3 grid(unsigned(cg.C), unsigned(slices));
  sum_of_splits<T, A>(slices, n, out, [&](A* part) {
#define CNNK_STRIPW(K)                                                                         \
  dw::strip_wgrad_kernel<T, K, K><<<grid, 256, 0, stream>>>(a.data_ptr<T>(), b.data_ptr<T>(), p, \
                                                            int(cg.N), slices, part)
    if (cg.KH == 3) CNNK_STRIPW(3); else if (cg.KH == 5) CNNK_STRIPW(5); else CNNK_STRIPW(7);
#undef CNNK_STRIPW
  });
  return true;
}

// The channels_last strip kernels (dw::strip_cl_kernel,
// dw::strip_cl_wgrad_kernel): one output channel per input channel, unit
// stride and dilation, square 3x3 / 5x5 (weight gradient: 3x3; 7x7 spills
// registers at two blocks per SM and stays on the direct kernels),
// C % 4 == 0, channels_last tensors aligned to the 4-channel vector and
// sizes within int. which as in launch_depthwise. false: not handled.
template <typename T>
bool launch_dw_strip_cl(int which, const ConvGeometry& cg, const Tensor& a, const Tensor& b,
                        const Tensor& bias, Tensor& out, bool cl) {
  if (!cl || !cg.depthwise() || cg.OC != cg.C || cg.C % 4 != 0 || cg.sh != 1 || cg.sw != 1 ||
      cg.dh != 1 || cg.dw != 1 || cg.KH != cg.KW || (cg.KH != 3 && cg.KH != 5) ||
      (which == 2 && cg.KH != 3))
    return false;
  const auto fmt = at::MemoryFormat::ChannelsLast;
  const Tensor& act = which == 2 ? b : a;  // the NHWC operand besides `out` / gy
  const size_t vb = 4 * sizeof(T);
  auto ok = [&](const Tensor& t) {
    return t.is_contiguous(fmt) && reinterpret_cast<uintptr_t>(t.data_ptr()) % vb == 0;
  };
  if (!ok(act) || (which == 2 ? !ok(a) : !ok(out))) return false;
  if (bias.defined() && reinterpret_cast<uintptr_t>(bias.data_ptr()) % vb != 0) return false;
  if (cg.N * cg.C * std::max(cg.H * cg.W, cg.OH * cg.OW) >= (int64_t(1) << 31)) return false;
  dw::StripCL p{};
  p.C = int(cg.C);
  if (which == 1) {  // gx = conv(gy, reversed taps), padding K - 1 - pad, output H x W
    p.H = int(cg.OH), p.W = int(cg.OW), p.OH = int(cg.H), p.OW = int(cg.W);
    p.pt = int(cg.KH - 1 - cg.pt), p.pl = int(cg.KW - 1 - cg.pl);
  } else {
    p.H = int(cg.H), p.W = int(cg.W), p.OH = int(cg.OH), p.OW = int(cg.OW);
    p.pt = int(cg.pt), p.pl = int(cg.pl);
  }
  p.cgs = p.C / 4, p.wgs = (p.OW + dw::kClW - 1) / dw::kClW;
  p.rgs = (p.OH + dw::kClRows - 1) / dw::kClRows;
  p.items = cg.N * p.rgs * p.wgs * p.cgs;
  auto stream = at::cuda::getCurrentCUDAStream();
  if (which != 2) {
    if (out.numel() == 0) return true;
    // the taps as [K * K][C] (reversed for the data gradient)
    const Tensor w = which == 1 ? b.flip({2, 3}) : b;
    const Tensor wt = w.reshape({cg.C, cg.KH * cg.KW}).t().contiguous();
    const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
    const int blocks = int(std::min<int64_t>((p.items + 255) / 256, 65535LL * 16));
#define CNNK_STRIPCL(K)                                                                   \
  dw::strip_cl_kernel<T, K><<<blocks, 256, 0, stream>>>(act.data_ptr<T>(), wt.data_ptr<T>(), bp, \
                                                        out.data_ptr<T>(), p)
    if (cg.KH == 3) CNNK_STRIPCL(3); else CNNK_STRIPCL(5);
#undef CNNK_STRIPCL
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
  // weight gradient: a = gy, b = x, out = gw (C, 1, 3, 3)
  if (out.numel() == 0) return true;
  if (cg.N * cg.OH * cg.OW == 0) {
    out.zero_();
    return true;
  }
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int tx = int(std::min<int64_t>(p.cgs, 32)), ty = 256 / tx;
  const int64_t ctiles = (p.cgs + tx - 1) / tx;
  if (ctiles > 65535LL * 32768) return false;
  const int64_t strips = cg.N * p.OH * p.wgs;
  // about two blocks per SM, each thread over at least 8 strips (the slices'
  // partials are summed serially per weight afterwards)
  const int slices = int(std::max<int64_t>(
      1, std::min<int64_t>({(2 * sms + ctiles - 1) / ctiles, (strips + 8 * ty - 1) / (8 * ty), 65535})));
  constexpr int64_t KK = 9;
  const int64_t n = cg.C * KK;
  using A = at::opmath_type<T>;
  sum_of_splits<T, A>(slices, n, out, [&](A* part) {
    dw::strip_cl_wgrad_kernel<T, 3><<<dim3(unsigned(ctiles), unsigned(slices)), dim3(tx, ty), 0,
                                      stream>>>(a.data_ptr<T>(), b.data_ptr<T>(), p, int(cg.N),
                                                slices, part);
  });
  return true;
}

template <typename T>
bool launch_depthwise(int which, const ConvGeometry& cg, const Tensor& a, const Tensor& b,
                      const Tensor& bias, Tensor& out, bool cl) {
  // which: 0 forward (a = x, b = w, out = y), 1 data grad (a = gy, b = w,
  // out = gx), 2 weight grad (a = gy, b = x, out = gw). false: not handled.
  if (!cg.depthwise()) return false;
  if (launch_dw_strip<T>(which, cg, a, b, bias, out, cl)) return true;
  if (launch_dw_strip_cl<T>(which, cg, a, b, bias, out, cl)) return true;
  const int64_t lim = int64_t(1) << 30;
  if (cg.N * std::max(cg.OH * cg.OW, cg.H * cg.W) >= lim || cg.OC >= lim) return false;
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 block(32, 8);
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  if (which == 0 || which == 1) {
    const dw::P p = which == 0 ? dw::make(cg, a, out) : dw::make(cg, out, a);
    const int64_t CH = which == 0 ? cg.OC : cg.C, HH = which == 0 ? cg.OH : cg.H,
                  WW = which == 0 ? cg.OW : cg.W;
    if (cg.N * CH * HH * WW == 0) return true;
    const int64_t planes = cl ? cg.N * HH : cg.N * CH;
    const dim3 grid(unsigned(cl ? (CH + 31) / 32 : (WW + 31) / 32),
                    unsigned(cl ? (WW + 8 * dw::kPer - 1) / (8 * dw::kPer)
                                : (HH + 8 * dw::kPer - 1) / (8 * dw::kPer)),
                    unsigned(std::min<int64_t>(planes, 65535)));
    if (grid.x > 65535u * 32768u || grid.y > 65535u) return false;
#define CNNK_DW1(K, CLV, KS1, KS2)                                                    \
  dw::K<T, CLV, KS1, KS2><<<grid, block, 0, stream>>>(a.data_ptr<T>(), b.data_ptr<T>(), bp, \
                                                      out.data_ptr<T>(), p, planes)
#define CNNK_DW(K, CLV)                                        \
  if (cg.KH == 3 && cg.KW == 3) {                              \
    CNNK_DW1(K, CLV, 3, 3);                                    \
  } else if (cg.KH == 5 && cg.KW == 5) {                       \
    CNNK_DW1(K, CLV, 5, 5);                                    \
  } else if (cg.KH == 7 && cg.KW == 7) {                       \
    CNNK_DW1(K, CLV, 7, 7);                                    \
  } else {                                                     \
    CNNK_DW1(K, CLV, 0, 0);                                    \
  }
    if (which == 0) {
      if (cl) {
        CNNK_DW(forward_kernel, true)
      } else {
        CNNK_DW(forward_kernel, false)
      }
    } else {
      if (cl) {
        CNNK_DW(dgrad_kernel, true)
      } else {
        CNNK_DW(dgrad_kernel, false)
      }
    }
#undef CNNK_DW
#undef CNNK_DW1
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
  const int KK = int(cg.KH * cg.KW);
  if (KK > 49) return false;
  using A = at::opmath_type<T>;
  const dw::P p = dw::make(cg, b, a);
  const int64_t P_ = cg.N * cg.OH * cg.OW;
  if (P_ == 0) {
    out.zero_();
    return true;
  }
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t cblocks = cl ? (cg.OC + 31) / 32 : cg.OC;
  const int64_t per_min = cl ? 64 : 1024;  // pixels per slice, at least
  const int slices = int(std::max<int64_t>(1, std::min<int64_t>({(4 * sms + cblocks - 1) / cblocks,
                                                                  (P_ + per_min - 1) / per_min, 1024})));
  if (cblocks > 65535 * 32768LL) return false;
  const dim3 grid{unsigned(cblocks), unsigned(slices), 1u};
  sum_of_splits<T, A>(slices, cg.OC * KK, out, [&](A* part) {
#define CNNK_DWW(KM)                                                                           \
  if (cl)                                                                                      \
    dw::wgrad_kernel<T, true, KM><<<grid, block, 0, stream>>>(a.data_ptr<T>(), b.data_ptr<T>(), \
                                                               p, slices, part);               \
  else                                                                                         \
    dw::wgrad_kernel<T, false, KM><<<grid, block, 0, stream>>>(a.data_ptr<T>(), b.data_ptr<T>(), \
                                                                p, slices, part)
    if (KK <= 9) {
      CNNK_DWW(9);
    } else if (KK <= 25) {
      CNNK_DWW(25);
    } else {
      CNNK_DWW(49);
    }
#undef CNNK_DWW
  });
  return true;
}

template <typename T>
void launch_forward(const ConvGeometry& cg, const Tensor& x, const Tensor& w, const Tensor& b,
                    Tensor& y, bool cl) {
  if (launch_depthwise<T>(0, cg, x, w, b, y, cl)) return;
  if (ig_host::conv<T>(cg, false, x, w, b, y)) return;
  if (gemm_fits(cg)) return launch_gemm<T, 0>(cg, x, w, b, y, cl);
  const Geo g = to_geo(cg);
  const int64_t total = g.N * g.OC * g.OH * g.OW;
  if (total == 0) return;
  forward_kernel<T><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<T>(), strides(x), w.data_ptr<T>(), b.defined() ? b.data_ptr<T>() : nullptr,
      y.data_ptr<T>(), strides(y), g, cl, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_dgrad(const ConvGeometry& cg, const Tensor& gy, const Tensor& w, const Tensor& b,
                  Tensor& gx, bool cl) {
  if (launch_depthwise<T>(1, cg, gy, w, b, gx, cl)) return;
  if (ig_host::conv<T>(cg, true, gy, w, b, gx)) return;
  if (gemm_fits(cg)) return launch_gemm<T, 1>(cg, gy, w, b, gx, cl);
  const Geo g = to_geo(cg);
  const int64_t total = g.N * g.C * g.H * g.W;
  if (total == 0) return;
  dgrad_kernel<T><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      gy.data_ptr<T>(), strides(gy), w.data_ptr<T>(), b.defined() ? b.data_ptr<T>() : nullptr,
      gx.data_ptr<T>(), strides(gx), g, cl, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_wgrad(const ConvGeometry& cg, const Tensor& gy, const Tensor& x, Tensor& gw, bool cl) {
  if (launch_depthwise<T>(2, cg, gy, x, Tensor(), gw, cl)) return;
  if (ig_host::wgrad<T>(cg, gy, x, gw)) return;
  if (gemm_fits(cg)) return launch_gemm<T, 2>(cg, gy, x, Tensor(), gw, cl);
  const Geo g = to_geo(cg);
  wgrad_kernel<T><<<(unsigned)gw.numel(), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      gy.data_ptr<T>(), strides(gy), x.data_ptr<T>(), strides(x), gw.data_ptr<T>(), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_bias_grad(const Tensor& gy, Tensor& gb) {
  bias_grad_kernel<T><<<(unsigned)gb.numel(), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      gy.data_ptr<T>(), strides(gy), gb.data_ptr<T>(), gy.size(0), gy.size(2), gy.size(3));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// The per-dtype entry points (conv_launch.h), instantiated one dtype per
// translation unit (conv_<dtype>.cu) so that the four compile in parallel.
template <typename T>
void conv_forward_t(const ConvGeometry& cg, const Tensor& x, const Tensor& w, const Tensor& b,
                    Tensor& y, bool cl) {
  launch_forward<T>(cg, x, w, b, y, cl);
}

template <typename T>
void conv_dgrad_t(const ConvGeometry& cg, const Tensor& gy, const Tensor& w, const Tensor& b,
                  Tensor& gx, bool cl) {
  launch_dgrad<T>(cg, gy, w, b, gx, cl);
}

template <typename T>
void conv_backward_t(const ConvGeometry& cg, const Tensor& gy, const Tensor& x, const Tensor& w,
                     bool cl, std::array<bool, 3> mask, bool transposed, Tensor& g0, Tensor& g1,
                     Tensor& g2) {
  // conv2d: (grad x, grad w, grad b over OC); conv_transpose2d: gy is the
  // transposed op's grad_output (the convolution's x), x its input (the
  // convolution's y).
  const ig_host::NhwcScope nhwc_scope;  // one channels_last copy of gy for both gradients
  if (transposed) {
    if (mask[0]) launch_forward<T>(cg, gy, w, Tensor(), g0, cl);
    if (mask[1]) launch_wgrad<T>(cg, x, gy, g1, cl);
  } else {
    if (mask[0]) launch_dgrad<T>(cg, gy, w, Tensor(), g0, cl);
    if (mask[1]) launch_wgrad<T>(cg, gy, x, g1, cl);
  }
  if (mask[2]) launch_bias_grad<T>(gy, g2);
}

#define CNNK_CONV_INSTANTIATE(T)                                                                 \
  template void conv_forward_t<T>(const ConvGeometry&, const Tensor&, const Tensor&,            \
                                  const Tensor&, Tensor&, bool);                                \
  template void conv_dgrad_t<T>(const ConvGeometry&, const Tensor&, const Tensor&, const Tensor&, \
                                Tensor&, bool);                                                 \
  template void conv_backward_t<T>(const ConvGeometry&, const Tensor&, const Tensor&,           \
                                   const Tensor&, bool, std::array<bool, 3>, bool, Tensor&,     \
                                   Tensor&, Tensor&);

}  // namespace cuda
}  // namespace cnnkernels
