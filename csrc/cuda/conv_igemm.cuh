// Pipelined tensor-core implicit GEMM for dense convolutions (included by
// conv.cu inside its anonymous namespace; uses gemm::mma_tf32 / mma_16816).
//
// Operands are read from channels_last (NHWC) tensors, so that one 16-byte
// cp.async moves 4 float32 or 8 float16/bfloat16 consecutive channels of one
// pixel; NCHW callers pass a channels_last copy (one transpose pass) and get
// their output written in NCHW directly by the epilogue.
//   fwd_kernel   C[m = (n, oh, ow)][o] = sum over k = (kh, kw, c) of
//                X[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, c] * B[o][k]
//                forward: X = x, B = w as (OC, KH, KW, Cg);
//                data gradient, one launch per stride phase: X = gy, B = the
//                phase's taps of w as (C, KH', KW', OCg), unit stride, a
//                negative dilation (tap j reads q + off - j * dd) and output
//                strides stride * (those of gx) from the phase's first pixel.
//   wgrad_kernel C[o][j = (kh, kw, c)] = sum over pixels p of gy[p][o] * x at
//                p's window tap (kh, kw), channel c; pixels are split into
//                fixed chunks whose partial sums are added in chunk order by
//                gemm::reduce_splits_kernel (no atomics: bitwise repeatable).
// Each block keeps STAGES k slices of 128-byte rows in flight (cp.async with
// zero fill for padding and tails), reads fragments with ldmatrix (swizzled
// rows, no bank conflicts) and multiplies with mma.sync: TF32 m16n8k8 for
// float32 (each fragment rounded once with cvt.rna after it is loaded, as the
// old path rounded), m16n8k16 with float accumulation for float16 / bfloat16.
namespace ig {

constexpr int NT = 128;  // 4 warps
constexpr int RW = 32;   // 32-bit words in one k-slice row of the forward kernel (128 bytes)

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; zero-filled (nothing read) when !valid.
__device__ __forceinline__ void cp16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm4t(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Word offset of (row, word) in rows of 32 words whose 16-byte chunks are
// XOR-swizzled by the row: 8 consecutive rows read at one word land in 8
// different chunks (all 32 banks).
__device__ __forceinline__ int swz(int row, int word) {
  return row * RW + ((((word >> 2) ^ (row & 7)) << 2) | (word & 3));
}

// float32 fragments rounded to TF32 once, after they are loaded (not per mma)
template <typename T, int MI, int NI>
__device__ __forceinline__ void round_frags(uint32_t (&a)[MI][4], uint32_t (&b)[NI][2]) {
  if constexpr (std::is_same<T, float>::value) {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int q = 0; q < 4; ++q) a[i][q] = gemm::to_tf32(__uint_as_float(a[i][q]));
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int q = 0; q < 2; ++q) b[j][q] = gemm::to_tf32(__uint_as_float(b[j][q]));
  }
}

template <typename T>
__device__ __forceinline__ void mma(float* c, const uint32_t* a, const uint32_t* b) {
  if constexpr (std::is_same<T, float>::value) {
    gemm::mma_tf32(c, a, b);
  } else {
    gemm::mma_16816<T>(c, a, b);
  }
}

// Two adjacent outputs (n, n + 1) as one 8- or 4-byte store.
template <typename T>
__device__ __forceinline__ void store2(T* dst, float v0, float v1) {
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
  } else {
    const T a = static_cast<T>(v0), b = static_cast<T>(v1);
    *reinterpret_cast<uint32_t*>(dst) = uint32_t(a.x) | (uint32_t(b.x) << 16);
  }
}

struct FP {
  int M, K, NoutG, CinG, IH, IW, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw;
  int xn, xh, xw;      // input strides in elements (channel stride 1)
  int yn, yc, yh, yw;  // output strides
  int y0;              // offset of output pixel (0, 0)
  int64_t wg;          // elements between two groups' weight matrices
  bool pair;           // outputs n, n + 1 adjacent and 8/4-byte aligned
};

template <typename T, int STAGES>
__global__ void __launch_bounds__(NT) fwd_kernel(const T* __restrict__ x,
                                                 const T* __restrict__ wmat,
                                                 const T* __restrict__ bias, T* __restrict__ y,
                                                 FP p) {
  constexpr int BM = 128, BN = 64;
  constexpr int VW = 16 / int(sizeof(T)), BK = RW * 4 / int(sizeof(T));
  constexpr int SA = BM * RW, SB = BN * RW;
  extern __shared__ __align__(16) uint32_t sm[];
  uint32_t* As = sm;
  uint32_t* Bs = sm + STAGES * SA;
  const int tid = threadIdx.x, g = blockIdx.z;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int cc = tid & 7, r0 = tid >> 3;  // this thread's chunk column; rows r0 + 16 e

  int abase[8], aih[8], aiw[8];
  const int P = p.OH * p.OW;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int m = m0 + r0 + 16 * e;
    if (m < p.M) {
      const int n = m / P, r = m - n * P, oh = r / p.OW, ow = r - oh * p.OW;
      abase[e] = n * p.xn + g * p.CinG;
      aih[e] = oh * p.sh - p.pt;
      aiw[e] = ow * p.sw - p.pl;
    } else {
      abase[e] = 0, aih[e] = -(1 << 30), aiw[e] = 0;
    }
  }
  const T* wrow[4];
  bool wok[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int n = n0 + r0 + 16 * e;
    wok[e] = n < p.NoutG;
    wrow[e] = wmat + g * p.wg + int64_t(wok[e] ? n : 0) * p.K;
  }
  // (kr, ks, kc): tap row, tap column and channel of this thread's chunk in
  // the next slice to load; kb the same position as a flat k.
  int kb = cc * VW, kc = kb % p.CinG, kr, ks;
  {
    const int t = kb / p.CinG;
    ks = t % p.KW;
    kr = t / p.KW;
  }
  auto load = [&](int s) {
    uint32_t* a = As + s * SA;
    uint32_t* b = Bs + s * SB;
    const bool kin = kr < p.KH;
    const int dih = kr * p.dh, diw = ks * p.dw;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int ih = aih[e] + dih, iw = aiw[e] + diw;
      const bool v = kin && unsigned(ih) < unsigned(p.IH) && unsigned(iw) < unsigned(p.IW);
      const T* src = v ? x + (abase[e] + ih * p.xh + iw * p.xw + kc) : x;
      cp16(smem_u32(a + swz(r0 + 16 * e, cc * 4)), src, v);
    }
    const bool kbin = kb < p.K;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool v = wok[e] && kbin;
      cp16(smem_u32(b + swz(r0 + 16 * e, cc * 4)), v ? wrow[e] + kb : wmat, v);
    }
    kb += BK;
    kc += BK;
    while (kc >= p.CinG) {
      kc -= p.CinG;
      if (++ks == p.KW) ks = 0, ++kr;
    }
  };

  const int KT = (p.K + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load(s);
    cp_commit();
  }
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = (warp & 1) * 64, wn = (warp >> 1) * 32;
  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;
  // ldmatrix lane roles: A matrices (rows +0/+8, words +0/+4), B (words +0/+4, rows +0/+8)
  const int lr = lane & 7, a_r8 = ((lane >> 3) & 1) * 8, a_w4 = (lane >> 4) * 4;
  const int b_w4 = ((lane >> 3) & 1) * 4, b_r8 = (lane >> 4) * 8;

  for (int kt = 0; kt < KT; ++kt) {
    cp_wait<STAGES - 2>();
    __syncthreads();  // slice kt has landed for every thread; slice kt - 1 is no longer read
    if (kt + STAGES - 1 < KT) load((kt + STAGES - 1) % STAGES);
    cp_commit();
    const int s = kt % STAGES;
    const uint32_t abase_s = smem_u32(As + s * SA), bbase_s = smem_u32(Bs + s * SB);
#pragma unroll
    for (int kk = 0; kk < RW; kk += 8) {
      uint32_t af[4][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
        ldsm4(af[mi], abase_s + 4 * swz(wm + mi * 16 + lr + a_r8, kk + a_w4));
#pragma unroll
      for (int pj = 0; pj < 2; ++pj) {
        uint32_t t[4];
        ldsm4(t, bbase_s + 4 * swz(wn + pj * 16 + lr + b_r8, kk + b_w4));
        bf[2 * pj][0] = t[0], bf[2 * pj][1] = t[1];
        bf[2 * pj + 1][0] = t[2], bf[2 * pj + 1][1] = t[3];
      }
      round_frags<T>(af, bf);
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma<T>(acc[mi][ni], af[mi], bf[ni]);
    }
  }
  cp_wait<0>();

  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm + mi * 16 + gid + 8 * h;
      if (m >= p.M) continue;
      const int n = m / P, r = m - n * P, oh = r / p.OW, ow = r - oh * p.OW;
      T* ym = y + (p.y0 + n * p.yn + oh * p.yh + ow * p.yw);
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int nn = n0 + wn + ni * 8 + 2 * tig;
        if (nn >= p.NoutG) continue;
        const int oc = g * p.NoutG + nn;
        float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
        const bool two = nn + 1 < p.NoutG;
        if (bias) {
          v0 += static_cast<float>(bias[oc]);
          if (two) v1 += static_cast<float>(bias[oc + 1]);
        }
        if (p.pair && two) {
          store2<T>(ym + oc, v0, v1);
        } else {
          ym[oc * p.yc] = static_cast<T>(v0);
          if (two) ym[(oc + 1) * p.yc] = static_cast<T>(v1);
        }
      }
    }
}

struct WP {
  int Mo, Nj, Cg, KH, KW, OH, OW, H, W, sh, sw, pt, pl, dh, dw;
  int Ptot, kchunk;
  int MT;          // output-channel tiles per group (blockIdx.z = g * MT + tile)
  int gyp;         // elements between two pixels of gy (dense channels_last: OC)
  int xn, xh, xw;  // x strides (channel stride 1)
  int KKC;         // Cg * KH * KW
  int64_t split_stride;
};

constexpr int WBM = 64, WBN = 128, WBK = 32, WPAD = 8;  // wgrad tile; WBK pixels per slice

template <typename T>
constexpr int wgrad_stage_bytes() {
  return WBK * (WBM + WPAD) * int(sizeof(T)) + WBK * (WBN + WPAD) * int(sizeof(T));
}

template <typename T, int STAGES>
__global__ void __launch_bounds__(NT) wgrad_kernel(const T* __restrict__ gy,
                                                   const T* __restrict__ x,
                                                   float* __restrict__ part, WP p) {
  constexpr int VW = 16 / int(sizeof(T));
  constexpr int LDA = WBM + WPAD, LDB = WBN + WPAD;  // elements per k row
  constexpr int SA = WBK * LDA, SB = WBK * LDB;      // elements per stage
  constexpr int ACH = WBM / VW, BCH = WBN / VW;      // 16-byte chunks per row
  constexpr int AE = WBK * ACH / NT, BE = WBK * BCH / NT;
  extern __shared__ __align__(16) unsigned char smraw[];
  T* As = reinterpret_cast<T*>(smraw);
  T* Bs = As + STAGES * SA;
  const int tid = threadIdx.x;
  const int g = blockIdx.z / p.MT, m0 = (blockIdx.z % p.MT) * WBM;
  const int split = blockIdx.y, n0 = blockIdx.x * WBN;
  const int kbeg = split * p.kchunk, kend = min(p.Ptot, kbeg + p.kchunk);

  // A: rows ra + (NT / ACH) e of the slice, chunk column ca (output channels).
  const int ca = tid % ACH, ra = tid / ACH;
  // B: rows rb + (NT / BCH) e, chunk column cb: j = n0 + cb * VW, a fixed (kh, kw, c).
  const int cb = tid % BCH, rb = tid / BCH;
  const int j = n0 + cb * VW;
  const bool jok = j < p.Nj;
  int jc = 0, jkh = 0, jkw = 0;
  if (jok) {
    jc = j % p.Cg;
    const int t = j / p.Cg;
    jkw = t % p.KW;
    jkh = t / p.KW;
  }
  const int offh = jkh * p.dh - p.pt, offw = jkw * p.dw - p.pl;
  const int xch = g * p.Cg + jc;
  const bool aok = m0 + ca * VW < p.Mo;
  const T* gyc = gy + (g * p.Mo + m0 + ca * VW);
  // pixel position (n, oh, ow) of each B row in the next slice to load
  int bn[BE], boh[BE], bow[BE];
#pragma unroll
  for (int e = 0; e < BE; ++e) {
    const int q = kbeg + rb + (NT / BCH) * e;
    const int P = p.OH * p.OW;
    bn[e] = q / P;
    const int r = q - bn[e] * P;
    boh[e] = r / p.OW;
    bow[e] = r - boh[e] * p.OW;
  }
  int k0 = kbeg;
  auto load = [&](int s) {
    T* a = As + s * SA;
    T* b = Bs + s * SB;
#pragma unroll
    for (int e = 0; e < AE; ++e) {
      const int row = ra + (NT / ACH) * e, q = k0 + row;
      const bool v = aok && q < kend;
      cp16(smem_u32(a + row * LDA + ca * VW), v ? gyc + q * p.gyp : gy, v);
    }
#pragma unroll
    for (int e = 0; e < BE; ++e) {
      const int row = rb + (NT / BCH) * e, q = k0 + row;
      const int ih = boh[e] * p.sh + offh, iw = bow[e] * p.sw + offw;
      const bool v = jok && q < kend && unsigned(ih) < unsigned(p.H) && unsigned(iw) < unsigned(p.W);
      cp16(smem_u32(b + row * LDB + cb * VW),
           v ? x + (bn[e] * p.xn + ih * p.xh + iw * p.xw + xch) : x, v);
      bow[e] += WBK;
      while (bow[e] >= p.OW) {
        bow[e] -= p.OW;
        if (++boh[e] == p.OH) boh[e] = 0, ++bn[e];
      }
    }
    k0 += WBK;
  };

  const int KT = (kend - kbeg + WBK - 1) / WBK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load(s);
    cp_commit();
  }
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = (warp & 1) * 32, wn = (warp >> 1) * 64;
  const int gid = lane >> 2, tig = lane & 3;
  float acc[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int jj = 0; jj < 8; ++jj)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][jj][q] = 0.f;
  const int lr = lane & 7, mat = lane >> 3;

  for (int kt = 0; kt < KT; ++kt) {
    cp_wait<STAGES - 2>();
    __syncthreads();
    if (kt + STAGES - 1 < KT) load((kt + STAGES - 1) % STAGES);
    cp_commit();
    const int s = kt % STAGES;
    const T* a = As + s * SA;
    const T* b = Bs + s * SB;
    if constexpr (std::is_same<T, float>::value) {
      const uint32_t* aw = reinterpret_cast<const uint32_t*>(a);
      const uint32_t* bw = reinterpret_cast<const uint32_t*>(b);
#pragma unroll
      for (int kk = 0; kk < WBK; kk += 8) {
        uint32_t af[2][4], bf[8][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int mm = wm + mi * 16 + gid;
          af[mi][0] = aw[(kk + tig) * LDA + mm];
          af[mi][1] = aw[(kk + tig) * LDA + mm + 8];
          af[mi][2] = aw[(kk + tig + 4) * LDA + mm];
          af[mi][3] = aw[(kk + tig + 4) * LDA + mm + 8];
        }
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
          const int nn = wn + ni * 8 + gid;
          bf[ni][0] = bw[(kk + tig) * LDB + nn];
          bf[ni][1] = bw[(kk + tig + 4) * LDB + nn];
        }
        round_frags<T>(af, bf);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 8; ++ni) mma<T>(acc[mi][ni], af[mi], bf[ni]);
      }
    } else {
      const uint32_t abs_ = smem_u32(a), bbs = smem_u32(b);
#pragma unroll
      for (int kk = 0; kk < WBK; kk += 16) {
        uint32_t af[2][4], bf[8][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int krow = kk + lr + ((mat >> 1) & 1) * 8, mcol = wm + mi * 16 + (mat & 1) * 8;
          ldsm4t(af[mi], abs_ + 2 * (krow * LDA + mcol));
        }
#pragma unroll
        for (int pj = 0; pj < 4; ++pj) {
          uint32_t t[4];
          const int krow = kk + lr + (mat & 1) * 8, ncol = wn + (2 * pj + (mat >> 1)) * 8;
          ldsm4t(t, bbs + 2 * (krow * LDB + ncol));
          bf[2 * pj][0] = t[0], bf[2 * pj][1] = t[1];
          bf[2 * pj + 1][0] = t[2], bf[2 * pj + 1][1] = t[3];
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 8; ++ni) mma<T>(acc[mi][ni], af[mi], bf[ni]);
      }
    }
  }
  cp_wait<0>();

  float* dst = part + split * p.split_stride;
  const int KK = p.KH * p.KW;
#pragma unroll
  for (int ni = 0; ni < 8; ++ni)
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int jj = n0 + wn + ni * 8 + 2 * tig + t;
      if (jj >= p.Nj) continue;
      const int c = jj % p.Cg, tt = jj / p.Cg, kw = tt % p.KW, kh = tt / p.KW;
      const int col = c * KK + kh * p.KW + kw;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int m = m0 + wm + mi * 16 + gid + 8 * h;
          if (m < p.Mo) dst[int64_t(g * p.Mo + m) * p.KKC + col] = acc[mi][ni][2 * h + t];
        }
    }
}

}  // namespace ig
