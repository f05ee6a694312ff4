// AVX-512 build of the convolution's float32 GEMM micro-kernel (see
// conv_kernels.h), picked at run time by conv.cpp on processors with
// AVX-512F. Nothing from torch is included under the target.
//
// The 6 x 16 tile is one 16-wide register per row, one FMA chain per row,
// the reduction in order (bit for bit the sums of the portable tile's loop
// with fused multiply-adds; they differ from the AVX2 tile's, whose
// multiply-adds are fused too, only where the compiler orders differently).
// Where two tiles share the weight panel and the taps, tile12 runs both.
#include <cstdint>

#include "conv_kernels.h"

#pragma GCC target("avx512f,avx2,fma")
// GCC 12's _mm512_unpack{lo,hi}_ps pass _mm512_undefined_ps() as the masked
// source under a full mask, which -Wuninitialized reports at every use
// (store_cols6): a false positive of the header.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>

namespace cnnkernels {
namespace cpu {
namespace conv {
namespace avx512 {
namespace {

// The 12 accumulators of the assembly loops below (zmm0-11) from and to the
// 12 x 16 values at %[op].
#define CNNK_LD(I) "vmovups " #I "*64(%[op]), %%zmm" #I "\n\t"
#define CNNK_ST(I) "vmovups %%zmm" #I ", " #I "*64(%[op])\n\t"
#define CNNK_LOAD12                                                              \
  CNNK_LD(0) CNNK_LD(1) CNNK_LD(2) CNNK_LD(3) CNNK_LD(4) CNNK_LD(5) CNNK_LD(6)   \
  CNNK_LD(7) CNNK_LD(8) CNNK_LD(9) CNNK_LD(10) CNNK_LD(11)
#define CNNK_STORE12                                                             \
  CNNK_ST(0) CNNK_ST(1) CNNK_ST(2) CNNK_ST(3) CNNK_ST(4) CNNK_ST(5) CNNK_ST(6)   \
  CNNK_ST(7) CNNK_ST(8) CNNK_ST(9) CNNK_ST(10) CNNK_ST(11)

template <bool Add>
inline void tile_impl(const float* const* a, const int64_t* a_off, const float* b,
                      const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs,
                      int64_t ldb, float* out) {
  __m512 c[6];
  for (int i = 0; i < 6; ++i) c[i] = Add ? _mm512_loadu_ps(out + 16 * i) : _mm512_setzero_ps();
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* ap[6];
    for (int i = 0; i < 6; ++i) ap[i] = a[i] + a_off[t];
    const float* bp = b + b_off[t];
    for (int64_t k = 0, off = 0; k < len; ++k, off += a_cs, bp += ldb) {
      const __m512 bv = _mm512_loadu_ps(bp);
      for (int i = 0; i < 6; ++i) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][off]), bv, c[i]);
    }
  }
  for (int i = 0; i < 6; ++i) _mm512_storeu_ps(out + 16 * i, c[i]);
}

// Two tiles that share b and the taps: 12 rows a[0..11], out[12][16]. One
// load of b per 12 FMAs (the 6-row tile needs one per 6: from L2, where a
// 3x3 layer's packed weight panel lives, that halves the traffic), and 12
// FMA chains in flight (the 6-row tile's 6 leave the two FMA units waiting
// on the 4-cycle latency). Each row's sum is taken in the same order as in
// tile_impl, so the two give the same bits (which of them computes a tile
// depends on how the work was cut). The unit-stride loop is inline assembly
// with the 12 row pointers, the step index (counting up to zero) and the b
// pointer in registers: compiled from intrinsics, two of the row pointers
// lived in xmm registers and came back through vmovq on the FMA ports every
// step.
inline void tile12_impl(const float* const* a, const int64_t* a_off, const float* b,
                        const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs,
                        int64_t ldb, float* out) {
  for (int i = 0; i < 12; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_setzero_ps());
  if (len <= 0 || ntaps <= 0) return;
  if (a_cs == 1 && ldb == 16) {
    // Per tap: the 12 row pointers, b, and the step counts, read by the
    // assembly loop below, which keeps the accumulators in zmm0-11 across
    // all the taps of a chunk of up to kChunk taps (a 7x7 stem with 3
    // channels runs 7 taps of 21 steps: loading and storing the
    // accumulators per tap cost a fifth of its time).
    struct Tap {
      const float* rows[12];
      const float* b;
      int64_t n4, n1;
    };
    static_assert(sizeof(Tap) == 120, "the assembly reads Tap at fixed offsets");
    constexpr int64_t kChunk = 32;
    Tap taps[kChunk];
    for (int64_t t0 = 0; t0 < ntaps; t0 += kChunk) {
      const int64_t nt = ntaps - t0 < kChunk ? ntaps - t0 : kChunk;
      for (int64_t t = 0; t < nt; ++t) {
        for (int i = 0; i < 12; ++i) taps[t].rows[i] = a[i] + a_off[t0 + t];
        taps[t].b = b + b_off[t0 + t];
        taps[t].n4 = len / 4;
        taps[t].n1 = len % 4;
      }
      // Registers: rows in r8-r15, rax, rdx and the two operands that
      // brought out and the tap array (out stashed in xmm30, the tap cursor
      // in xmm29, its end in xmm28); b and the step counter: 14 general
      // registers in all. Four steps per loop turn with displacements (0, 4,
      // 8, 12 bytes from each row pointer, 0-192 from b), the pointers
      // advanced once per turn: indexed addresses cost about 10 % in a loop
      // of this shape (measured 140 against 150 GFLOP/s).
      const Tap* arr = taps;
      const Tap* end = taps + nt;
      float* op = out;
      const float* bp = nullptr;
      int64_t n4 = 0;
#define CNNK_F(I, R, D) "vfmadd231ps " #D "(" R ")%{1to16%}, %%zmm31, %%zmm" #I "\n\t"
#define CNNK_STEP(D, BD)                                                               \
  "vmovups " #BD "(%[bp]), %%zmm31\n\t"                                                 \
  CNNK_F(0, "%%r8", D) CNNK_F(1, "%%r9", D) CNNK_F(2, "%%r10", D) CNNK_F(3, "%%r11", D) \
  CNNK_F(4, "%%r12", D) CNNK_F(5, "%%r13", D) CNNK_F(6, "%%r14", D) CNNK_F(7, "%%r15", D) \
  CNNK_F(8, "%%rax", D) CNNK_F(9, "%%rdx", D) CNNK_F(10, "%[op]", D) CNNK_F(11, "%[arr]", D)
#define CNNK_ADV(B)                                                                       \
  "add $" #B ", %%r8\n\tadd $" #B ", %%r9\n\tadd $" #B ", %%r10\n\tadd $" #B ", %%r11\n\t" \
  "add $" #B ", %%r12\n\tadd $" #B ", %%r13\n\tadd $" #B ", %%r14\n\tadd $" #B ", %%r15\n\t" \
  "add $" #B ", %%rax\n\tadd $" #B ", %%rdx\n\tadd $" #B ", %[op]\n\tadd $" #B ", %[arr]\n\t"
      asm volatile(
          CNNK_LOAD12
          "vmovq %[op], %%xmm30\n\t"
          "vmovq %[arr], %%xmm29\n\t"
          "vmovq %[end], %%xmm28\n\t"
          "5:\n\t"  // a tap
          "mov 96(%[arr]), %[bp]\n\t"
          "mov 104(%[arr]), %[n4]\n\t"
          "mov 0(%[arr]), %%r8\n\t"
          "mov 8(%[arr]), %%r9\n\t"
          "mov 16(%[arr]), %%r10\n\t"
          "mov 24(%[arr]), %%r11\n\t"
          "mov 32(%[arr]), %%r12\n\t"
          "mov 40(%[arr]), %%r13\n\t"
          "mov 48(%[arr]), %%r14\n\t"
          "mov 56(%[arr]), %%r15\n\t"
          "mov 64(%[arr]), %%rax\n\t"
          "mov 72(%[arr]), %%rdx\n\t"
          "mov 80(%[arr]), %[op]\n\t"
          "mov 88(%[arr]), %[arr]\n\t"
          "test %[n4], %[n4]\n\t"
          "jz 2f\n\t"
          "1:\n\t"
          CNNK_STEP(0, 0) CNNK_STEP(4, 64) CNNK_STEP(8, 128) CNNK_STEP(12, 192)
          "add $256, %[bp]\n\t"
          CNNK_ADV(16)
          "dec %[n4]\n\t"
          "jnz 1b\n\t"
          "2:\n\t"
          "vmovq %%xmm29, %[n4]\n\t"
          "mov 112(%[n4]), %[n4]\n\t"  // the tap's single steps
          "test %[n4], %[n4]\n\t"
          "jz 4f\n\t"
          "3:\n\t"
          CNNK_STEP(0, 0)
          "add $64, %[bp]\n\t"
          CNNK_ADV(4)
          "dec %[n4]\n\t"
          "jnz 3b\n\t"
          "4:\n\t"
          "vmovq %%xmm29, %[arr]\n\t"  // the next tap
          "add $120, %[arr]\n\t"
          "vmovq %[arr], %%xmm29\n\t"
          "vmovq %%xmm28, %[bp]\n\t"
          "cmp %[bp], %[arr]\n\t"
          "jb 5b\n\t"
          "vmovq %%xmm30, %[op]\n\t"
          CNNK_STORE12
          : [bp] "+r"(bp), [n4] "+r"(n4), [op] "+r"(op), [arr] "+r"(arr)
          : [end] "m"(end)
          : "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rax", "rdx", "xmm0", "xmm1",
            "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
            "xmm28", "xmm29", "xmm30", "xmm31", "memory", "cc");
#undef CNNK_F
#undef CNNK_STEP
#undef CNNK_ADV
    }
    return;
  }
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* bp = b + b_off[t];
    __m512 c[12];
    for (int i = 0; i < 12; ++i) c[i] = _mm512_loadu_ps(out + 16 * i);
    const float* ap[12];
    for (int i = 0; i < 12; ++i) ap[i] = a[i] + a_off[t];
    for (int64_t k = 0, off = 0; k < len; ++k, off += a_cs, bp += ldb) {
      const __m512 bv = _mm512_loadu_ps(bp);
      for (int i = 0; i < 12; ++i) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][off]), bv, c[i]);
    }
    for (int i = 0; i < 12; ++i) _mm512_storeu_ps(out + 16 * i, c[i]);
  }
}

// 12 rows from two packed 6-row panels (row i of panel q at pq + i, the
// next step kMR values on: the weight gradient's and the 1x1 GEMM's packed
// operand), ldb 16, one tap: out[12][16] += sum_k a[k] b[k]. Rows by
// displacement from two pointers, four steps per loop turn.
inline void panels12(const float* p0, const float* p1, const float* bp, int64_t len, float* out) {
  int64_t n4 = len / 4;
  const int64_t n1 = len % 4;
#define CNNK_F(I, R, S, D) "vfmadd231ps " S #D "(%[" R "])%{1to16%}, %%zmm31, %%zmm" #I "\n\t"
#define CNNK_STEP(S, BD)                                                                      \
  "vmovups " #BD "(%[bp]), %%zmm31\n\t"                                                        \
  CNNK_F(0, "p0", S, 0) CNNK_F(1, "p0", S, 4) CNNK_F(2, "p0", S, 8) CNNK_F(3, "p0", S, 12)     \
  CNNK_F(4, "p0", S, 16) CNNK_F(5, "p0", S, 20) CNNK_F(6, "p1", S, 0) CNNK_F(7, "p1", S, 4)    \
  CNNK_F(8, "p1", S, 8) CNNK_F(9, "p1", S, 12) CNNK_F(10, "p1", S, 16) CNNK_F(11, "p1", S, 20)
  float* op = out;
  asm volatile(
      CNNK_LOAD12
      "test %[n4], %[n4]\n\t"
      "jz 2f\n\t"
      "1:\n\t"
      CNNK_STEP("", 0) CNNK_STEP("24+", 64) CNNK_STEP("48+", 128) CNNK_STEP("72+", 192)
      "add $256, %[bp]\n\t"
      "add $96, %[p0]\n\t"
      "add $96, %[p1]\n\t"
      "dec %[n4]\n\t"
      "jnz 1b\n\t"
      "2:\n\t"
      "mov %[n1], %[n4]\n\t"
      "test %[n4], %[n4]\n\t"
      "jz 4f\n\t"
      "3:\n\t"
      CNNK_STEP("", 0)
      "add $64, %[bp]\n\t"
      "add $24, %[p0]\n\t"
      "add $24, %[p1]\n\t"
      "dec %[n4]\n\t"
      "jnz 3b\n\t"
      "4:\n\t"
      CNNK_STORE12
      : [bp] "+r"(bp), [n4] "+r"(n4), [p0] "+r"(p0), [p1] "+r"(p1)
      : [op] "r"(op), [n1] "m"(n1)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm31", "memory", "cc");
#undef CNNK_F
#undef CNNK_STEP
}

// 6 rows x NB blocks, the accumulators in registers across all taps; each
// element one FMA chain in step order (the bits of tile_impl).
template <int NB, bool PF>
inline void tile_wide_impl(const float* const* a, const int64_t* a_off, const float* b,
                           const int64_t* b_off, int64_t ntaps, int64_t len, int64_t blk,
                           float* out) {
  __m512 c[NB][6];
  for (int q = 0; q < NB; ++q)
    for (int i = 0; i < 6; ++i) c[q][i] = _mm512_setzero_ps();
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* ap[6];
    for (int i = 0; i < 6; ++i) ap[i] = a[i] + a_off[t];
    const float* bp = b + b_off[t];
    for (int64_t k = 0; k < len; ++k, bp += 16) {
      __m512 bv[NB];
      if (PF)
        for (int q = 0; q < NB; ++q)
          _mm_prefetch(reinterpret_cast<const char*>(bp + q * blk + 256), _MM_HINT_T0);
      for (int q = 0; q < NB; ++q) bv[q] = _mm512_loadu_ps(bp + q * blk);
      for (int i = 0; i < 6; ++i) {
        const __m512 av = _mm512_set1_ps(ap[i][k]);
        for (int q = 0; q < NB; ++q) c[q][i] = _mm512_fmadd_ps(av, bv[q], c[q][i]);
      }
    }
  }
  for (int q = 0; q < NB; ++q)
    for (int i = 0; i < 6; ++i) _mm512_storeu_ps(out + 96 * q + 16 * i, c[q][i]);
}

// The weight gradient's tile (see tile_wide_acc in conv_kernels.h): 6
// columns x NB blocks of 16 output channels, added to out; per step NB loads
// of b and 6 broadcasts of a for 6 NB FMAs. Consec: the 6 columns are 6
// consecutive values (a[i] = a[0] + i: most tiles of channels within one kernel
// tap) and b a packed panel (ldb = 16 NB), read with one a pointer and
// constant displacements, two steps a turn: scalar additions share ports 0
// and 5 with the 512-bit FMAs (one pointer per column and an index each step
// measured 134 against 160 GFLOP/s in L1).
template <int NB, bool Consec>
__attribute__((optimize("no-ivopts"))) inline void tile_wide_acc_impl(
    const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
    int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, bool add, float* out) {
  __m512 c[NB][6];
  for (int q = 0; q < NB; ++q)
    for (int i = 0; i < 6; ++i)
      c[q][i] = add ? _mm512_loadu_ps(out + 96 * q + 16 * i) : _mm512_setzero_ps();
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* bp = b + b_off[t];
    if (Consec) {
      const float* x = a[0] + a_off[t];
      int64_t k = 0;
      for (; k + 2 <= len; k += 2, x += 2 * a_cs, bp += 32 * NB) {
        for (int u = 0; u < 2; ++u) {
          __m512 bv[NB];
          for (int q = 0; q < NB; ++q) bv[q] = _mm512_loadu_ps(bp + 16 * NB * u + 16 * q);
          for (int i = 0; i < 6; ++i) {
            const __m512 av = _mm512_set1_ps(x[u * a_cs + i]);
            for (int q = 0; q < NB; ++q) c[q][i] = _mm512_fmadd_ps(av, bv[q], c[q][i]);
          }
        }
      }
      if (k < len) {
        __m512 bv[NB];
        for (int q = 0; q < NB; ++q) bv[q] = _mm512_loadu_ps(bp + 16 * q);
        for (int i = 0; i < 6; ++i) {
          const __m512 av = _mm512_set1_ps(x[i]);
          for (int q = 0; q < NB; ++q) c[q][i] = _mm512_fmadd_ps(av, bv[q], c[q][i]);
        }
      }
      continue;
    }
    const float* ap[6];
    for (int i = 0; i < 6; ++i) ap[i] = a[i] + a_off[t];
    for (int64_t k = 0, off = 0; k < len; ++k, off += a_cs, bp += ldb) {
      __m512 bv[NB];
      for (int q = 0; q < NB; ++q) bv[q] = _mm512_loadu_ps(bp + 16 * q);
      for (int i = 0; i < 6; ++i) {
        const __m512 av = _mm512_set1_ps(ap[i][off]);
        for (int q = 0; q < NB; ++q) c[q][i] = _mm512_fmadd_ps(av, bv[q], c[q][i]);
      }
    }
  }
  for (int q = 0; q < NB; ++q)
    for (int i = 0; i < 6; ++i) _mm512_storeu_ps(out + 96 * q + 16 * i, c[q][i]);
}

template <int NB>
inline void tile_wide_acc_nb(const float* const* a, const int64_t* a_off, const float* b,
                             const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs,
                             int64_t ldb, bool add, float* out) {
  bool consec = ldb == 16 * NB;
  for (int i = 1; i < 6; ++i) consec = consec && a[i] == a[0] + i;
  if (consec)
    return tile_wide_acc_impl<NB, true>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, add, out);
  tile_wide_acc_impl<NB, false>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, add, out);
}

// Whether rows a[0..5] and a[6..11] are two packed panels (see panels12).
inline bool two_panels(const float* const* a, int64_t a_cs, int64_t ldb, int64_t ntaps) {
  if (a_cs != 6 || ldb != 16 || ntaps != 1) return false;
  for (int i = 1; i < 6; ++i)
    if (a[i] != a[0] + i || a[6 + i] != a[6] + i) return false;
  return true;
}

#undef CNNK_LD
#undef CNNK_ST
#undef CNNK_LOAD12
#undef CNNK_STORE12

}  // namespace

void tile12(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
            int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out) {
  if (two_panels(a, a_cs, ldb, ntaps)) {
    for (int i = 0; i < 12; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_setzero_ps());
    return panels12(a[0] + a_off[0], a[6] + a_off[0], b + b_off[0], len, out);
  }
  tile12_impl(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);
}

void tile12_add(const float* const* a, const int64_t* a_off, const float* b,
                const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb,
                float* out) {
  if (two_panels(a, a_cs, ldb, ntaps))
    return panels12(a[0] + a_off[0], a[6] + a_off[0], b + b_off[0], len, out);
  tile_impl<true>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);
  tile_impl<true>(a + 6, a_off, b, b_off, ntaps, len, a_cs, ldb, out + 96);
}

void panels12x2(const float* p0, const float* p1, const float* b0, const float* b1, int64_t len,
                float* out0, float* out1) {
  __m512 c0[12], c1[12];
  for (int i = 0; i < 12; ++i) c0[i] = _mm512_loadu_ps(out0 + 16 * i);
  for (int i = 0; i < 12; ++i) c1[i] = _mm512_loadu_ps(out1 + 16 * i);
  for (int64_t k = 0; k < len; ++k, p0 += 6, p1 += 6, b0 += 16, b1 += 16) {
    const __m512 x0 = _mm512_loadu_ps(b0), x1 = _mm512_loadu_ps(b1);
    for (int i = 0; i < 6; ++i) {
      const __m512 av = _mm512_set1_ps(p0[i]);
      c0[i] = _mm512_fmadd_ps(av, x0, c0[i]);
      c1[i] = _mm512_fmadd_ps(av, x1, c1[i]);
    }
    for (int i = 0; i < 6; ++i) {
      const __m512 av = _mm512_set1_ps(p1[i]);
      c0[6 + i] = _mm512_fmadd_ps(av, x0, c0[6 + i]);
      c1[6 + i] = _mm512_fmadd_ps(av, x1, c1[6 + i]);
    }
  }
  for (int i = 0; i < 12; ++i) _mm512_storeu_ps(out0 + 16 * i, c0[i]);
  for (int i = 0; i < 12; ++i) _mm512_storeu_ps(out1 + 16 * i, c1[i]);
}

void store_rows(const float* v, const float* bv, float* dst, const int64_t* off, int64_t rows,
                int64_t ncols) {
  const __mmask16 m = (__mmask16)((1u << ncols) - 1u);
  const __m512 b = _mm512_maskz_loadu_ps(m, bv);
  for (int64_t i = 0; i < rows; ++i)
    _mm512_mask_storeu_ps(dst + off[i], m, _mm512_add_ps(_mm512_loadu_ps(v + 16 * i), b));
}

void store_cols6(const float* v, const float* bv, float* dst, int64_t cs, int64_t ncols) {
  const __m512 b = _mm512_loadu_ps(bv);
  const __m512 r0 = _mm512_add_ps(_mm512_loadu_ps(v), b);
  const __m512 r1 = _mm512_add_ps(_mm512_loadu_ps(v + 16), b);
  const __m512 r2 = _mm512_add_ps(_mm512_loadu_ps(v + 32), b);
  const __m512 r3 = _mm512_add_ps(_mm512_loadu_ps(v + 48), b);
  const __m512 r4 = _mm512_add_ps(_mm512_loadu_ps(v + 64), b);
  const __m512 r5 = _mm512_add_ps(_mm512_loadu_ps(v + 80), b);
  // per 128-bit lane L (columns 4L .. 4L + 3): u[k] holds rows 0-3 of
  // column 4L + k, w[k] rows 4-5 in its low half
  const __m512 t0 = _mm512_unpacklo_ps(r0, r1), t1 = _mm512_unpackhi_ps(r0, r1);
  const __m512 t2 = _mm512_unpacklo_ps(r2, r3), t3 = _mm512_unpackhi_ps(r2, r3);
  const __m512 t4 = _mm512_unpacklo_ps(r4, r5), t5 = _mm512_unpackhi_ps(r4, r5);
  const __m512 u[4] = {_mm512_shuffle_ps(t0, t2, 0x44), _mm512_shuffle_ps(t0, t2, 0xEE),
                       _mm512_shuffle_ps(t1, t3, 0x44), _mm512_shuffle_ps(t1, t3, 0xEE)};
  const __m512 w[4] = {t4, _mm512_shuffle_ps(t4, t4, 0xEE), t5, _mm512_shuffle_ps(t5, t5, 0xEE)};
  alignas(64) float uu[4][16], ww[4][16];
  for (int k = 0; k < 4; ++k) _mm512_store_ps(uu[k], u[k]), _mm512_store_ps(ww[k], w[k]);
  for (int64_t j = 0; j < ncols; ++j) {
    const int L = (int)(j >> 2), k = (int)(j & 3);
    float* d = dst + j * cs;
    _mm_storeu_ps(d, _mm_load_ps(uu[k] + 4 * L));
    _mm_storel_pi(reinterpret_cast<__m64*>(d + 4), _mm_load_ps(ww[k] + 4 * L));
  }
}

void tile_wide(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
               int64_t ntaps, int64_t len, int64_t blk, int nb, float* out) {
  // Panels past 32 KB stream from L2 on every tile; prefetched 16 steps
  // ahead (microbenchmark, 5 taps of 1280 steps: 4 blocks, 1.6 MB, 112 ->
  // 141 GFLOP/s per core; 3 blocks 124 -> 140; an L1-resident panel 166 ->
  // 157, hence the size test). Layers, two threads, three runs each: NiN's
  // 5x5 data gradient 57.4-58.5 -> 50.4-52.6 ms, forward 50.0-52.6 ->
  // 49.2-55.6 (noise); 512 channels at 7x7 forward 8.6-9.5 -> 8.0-8.3, data
  // gradient 9.4-10.3 -> 8.7-9.4; AlexNet's 3x3 at 12x12 2-5 % faster.
  // The size is the part of the panels this tile reads (its taps): one
  // stride phase of a transposed convolution reads a quarter of them
  // (conv_transpose2d 2x2 stride 2 channels_last, 32 KB a phase: 1.82 ->
  // 1.71 ms without the prefetches; 3x3 and 4x4 within 1 %).
  const bool pf = ntaps * len * nb * int64_t(16 * sizeof(float)) > 32768;
  switch (nb) {
    case 2:
      return pf ? tile_wide_impl<2, true>(a, a_off, b, b_off, ntaps, len, blk, out)
                : tile_wide_impl<2, false>(a, a_off, b, b_off, ntaps, len, blk, out);
    case 3:
      return pf ? tile_wide_impl<3, true>(a, a_off, b, b_off, ntaps, len, blk, out)
                : tile_wide_impl<3, false>(a, a_off, b, b_off, ntaps, len, blk, out);
    case 4:
      return pf ? tile_wide_impl<4, true>(a, a_off, b, b_off, ntaps, len, blk, out)
                : tile_wide_impl<4, false>(a, a_off, b, b_off, ntaps, len, blk, out);
    default: return tile_impl<false>(a, a_off, b, b_off, ntaps, len, 1, 16, out);
  }
}

void tile_wide_acc(const float* const* a, const int64_t* a_off, const float* b,
                   const int64_t* b_off, int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb,
                   int nb, bool add, float* out) {
  switch (nb) {
    case 1: return tile_wide_acc_nb<1>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, add, out);
    case 2: return tile_wide_acc_nb<2>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, add, out);
    case 3: return tile_wide_acc_nb<3>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, add, out);
    default: return tile_wide_acc_nb<4>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, add, out);
  }
}

void tile(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
          int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out) {
  tile_impl<false>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);
}

void tile_add(const float* const* a, const int64_t* a_off, const float* b, const int64_t* b_off,
              int64_t ntaps, int64_t len, int64_t a_cs, int64_t ldb, float* out) {
  tile_impl<true>(a, a_off, b, b_off, ntaps, len, a_cs, ldb, out);
}

}  // namespace avx512
}  // namespace conv
}  // namespace cpu
}  // namespace cnnkernels
