// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011): a counter-based generator, the same on the host and the device.
// One call maps a 128-bit counter and a 64-bit key to four 32-bit words.
//
// cnnkernels' dropout uses key = the seed drawn from torch's generator and
// counter = {block, block >> 32, offset, offset >> 32}. Element-wise dropout
// takes 16 bits per element (dropout_keep8 below: block = element_index / 8);
// channel-wise dropout takes word g % 4 of block g / 4 for channel g. The mask
// of an element therefore depends on (seed, offset, index) only: not on the
// number of threads, the launch configuration or the device.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CNNK_HD __host__ __device__ __forceinline__
#else
#define CNNK_HD inline
#endif

namespace cnnkernels {

struct Philox4 {
  uint32_t v[4];
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key schedule (golden ratio)
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // key schedule (sqrt(3) - 1)

CNNK_HD Philox4 philox4x32_10(uint64_t block, uint64_t offset, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Element-wise dropout: element i takes the 16-bit half (i % 2) of word
// (i % 8) / 2 of the call at block i / 8, so one call covers eight elements.
// It is kept when that value is above the threshold's high 16 bits, dropped
// when below; on a tie (probability 2^-16) the same half of the same word of
// the tie stream (counter offset with its top bit flipped) is compared with
// the threshold's low 16 bits. The drop probability is therefore exactly
// threshold / 2^32, as with a 32-bit word, at half the Philox calls.
constexpr uint64_t kDropoutTieBit = uint64_t(1) << 63;

CNNK_HD uint32_t philox_half(const Philox4& r, int e) {
  return (r.v[(e >> 1) & 3] >> ((e & 1) * 16)) & 0xFFFFu;
}

// Keep bits (bit e for element e = 0..7) of a block whose stream call is r,
// and in `tie` the elements whose 16-bit value equals the threshold's high
// half; those are settled by dropout_break_ties.
CNNK_HD uint32_t dropout_keep_bits8(const Philox4& r, uint32_t threshold, uint32_t& tie) {
  const uint32_t t = threshold >> 16;
  uint32_t keep = 0;
  tie = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int e = 0; e < 8; ++e) {
    const uint32_t h = philox_half(r, e);
    keep |= uint32_t(h > t) << e;
    tie |= uint32_t(h == t) << e;
  }
  return keep;
}

// The tied elements of block `block` compared on the tie stream (one more
// Philox call, needed with probability about 8 * 2^-16 per block).
CNNK_HD uint32_t dropout_break_ties(uint32_t keep, uint32_t tie, uint64_t block, uint64_t offset,
                                    uint64_t seed, uint32_t threshold) {
  const Philox4 s = philox4x32_10(block, offset ^ kDropoutTieBit, seed);
  for (int e = 0; e < 8; ++e)
    if ((tie >> e) & 1u) keep |= uint32_t(philox_half(s, e) >= (threshold & 0xFFFFu)) << e;
  return keep;
}

// Keep bits (bit e for element e = 0..7) of block `block`, whose stream
// call is r; the tie stream is called once, only when some element ties.
CNNK_HD uint32_t dropout_keep8(const Philox4& r, uint64_t block, uint64_t offset, uint64_t seed,
                               uint32_t threshold) {
  uint32_t tie;
  const uint32_t keep = dropout_keep_bits8(r, threshold, tie);
  return tie != 0 ? dropout_break_ties(keep, tie, block, offset, seed, threshold) : keep;
}

// An element is kept when its 32-bit value (element-wise: the 16-bit value
// and its tie-break above) is at or above this threshold, so the drop
// probability is threshold / 2^32, the nearest such value to p.
CNNK_HD uint32_t dropout_threshold(double p) {
  if (p <= 0.0) return 0u;
  const double t = p * 4294967296.0;
  if (t >= 4294967295.0) return 0xFFFFFFFFu;
  return static_cast<uint32_t>(t + 0.5);
}

}  // namespace cnnkernels
