// CUDA dropout (element-wise and channel-wise): float16, bfloat16, float32,
// float64. The seed and offset come from torch's default CUDA generator
// (philox_cuda_state, so torch.manual_seed and CUDA graphs' offset rules
// apply); the kernel unpacks them and writes them to rng_state, a 2-element
// device tensor that backward reads to regenerate the mask (no per-element
// mask is stored). One Philox4x32-10 call yields the 16-bit values of eight
// consecutive elements (common/philox.h: the same mask as the CPU kernels
// for the same seed and offset).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <tuple>

#include "../common/dropout.h"
#include "../common/philox.h"

namespace cnnkernels {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

// Where the seed and offset come from: the generator state (forward) or a
// rng_state tensor (backward).
struct RngSource {
  at::PhiloxCudaState state;
  const int64_t* saved;  // backward: [seed, offset]; nullptr in forward
  int64_t* record;       // forward: where to write [seed, offset]
};

// The call's seed and offset; the forward's first thread also records them.
__device__ __forceinline__ void get_seed(const RngSource& src, uint64_t& seed, uint64_t& offset) {
  if (src.saved != nullptr) {
    seed = static_cast<uint64_t>(src.saved[0]);
    offset = static_cast<uint64_t>(src.saved[1]);
  } else {
    const auto so = at::cuda::philox::unpack(src.state);
    seed = std::get<0>(so);
    offset = std::get<1>(so);
  }
  if (src.record != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    src.record[0] = static_cast<int64_t>(seed);
    src.record[1] = static_cast<int64_t>(offset);
  }
}

template <typename T, int V>
struct alignas(sizeof(T) * V) VecN {
  T v[V];
};

// Out of line: the rare blocks with a tie (common/philox.h).
__device__ __noinline__ uint32_t break_ties(uint32_t keep, uint32_t tie, uint64_t blk,
                                            uint64_t offset, uint64_t seed, uint32_t threshold) {
  return dropout_break_ties(keep, tie, blk, offset, seed, threshold);
}

// Element-wise: a warp takes a chunk of 256 elements, 32 Philox blocks of
// eight. Lane l computes the keep bits of block l, while its loads of the
// chunk are in flight: 16-byte vectors, lane l taking vectors l, l + 32, ...
// (consecutive lanes, consecutive addresses). A shuffle brings each vector
// its bits from the lane that computed them. A partial or misaligned chunk
// goes element by element (element e from lane e % 32), the same bits.
template <typename T>
__global__ void __launch_bounds__(kThreads, 6) dropout_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                               RngSource src, uint32_t threshold, float scale_f, double scale_d,
                               bool aligned) {
  using A = at::opmath_type<T>;
  constexpr int V = 16 / sizeof(T);  // elements per vector
  constexpr int J = 8 / V;           // vectors per lane per chunk
  using Vec = VecN<T, V>;
  uint64_t seed, offset;
  get_seed(src, seed, offset);
  const A scale = sizeof(A) == 8 ? A(scale_d) : A(scale_f);
  const int lane = threadIdx.x & 31;
  const int64_t chunks = (n + 255) / 256;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t ch = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; ch < chunks;
       ch += warps) {
    const int64_t base = ch * 256;
    const bool full = aligned && base + 256 <= n;  // the same for the whole warp
    Vec in[J];
    if (full) {
#pragma unroll
      for (int j = 0; j < J; ++j) in[j] = reinterpret_cast<const Vec*>(x + base)[j * 32 + lane];
    }
    const uint64_t blk = static_cast<uint64_t>(ch) * 32 + lane;
    uint32_t tie;
    uint32_t bits = dropout_keep_bits8(philox4x32_10(blk, offset, seed), threshold, tie);
    if (tie != 0) bits = break_ties(bits, tie, blk, offset, seed, threshold);
    if (full) {
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int q = (j * 32 + lane) * V;  // first element of the vector in the chunk
        const uint32_t kb = __shfl_sync(0xffffffffu, bits, q >> 3) >> (q & 7);
        Vec out;
#pragma unroll
        for (int k = 0; k < V; ++k)
          out.v[k] = static_cast<T>(static_cast<A>(in[j].v[k]) * (((kb >> k) & 1u) ? scale : A(0)));
        reinterpret_cast<Vec*>(y + base)[j * 32 + lane] = out;
      }
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int e = lane + 32 * k;
        const uint32_t kb = __shfl_sync(0xffffffffu, bits, e >> 3);
        const int64_t i = base + e;
        if (i < n) y[i] = static_cast<T>(static_cast<A>(x[i]) * (((kb >> (e & 7)) & 1u) ? scale : A(0)));
      }
    }
  }
}

// Word k of r, by selects (an indexed read would put r in local memory).
__device__ __forceinline__ uint32_t word(const Philox4& r, int64_t k) {
  const uint32_t lo = (k & 1) ? r.v[1] : r.v[0], hi = (k & 1) ? r.v[3] : r.v[2];
  return (k & 2) ? hi : lo;
}

// Channel-wise: the word of group g = (n, c) decides the whole group.
template <typename T>
__global__ void dropout_channel_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                                       RngSource src, uint32_t threshold, float scale_f,
                                       double scale_d, bool channels_last, int64_t inner,
                                       int64_t C, int64_t HWC) {
  using A = at::opmath_type<T>;
  uint64_t seed, offset;
  get_seed(src, seed, offset);
  const A scale = sizeof(A) == 8 ? A(scale_d) : A(scale_f);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t g = channels_last ? (i / HWC) * C + i % C : i / inner;
    const Philox4 r = philox4x32_10(static_cast<uint64_t>(g) >> 2, offset, seed);
    y[i] = static_cast<T>(static_cast<A>(x[i]) * (word(r, g) >= threshold ? scale : A(0)));
  }
}

// Channel-wise, four elements per thread and one Philox call for them: in
// NCHW the four lie in one group (inner % 4 == 0), in channels_last they are
// four consecutive channels whose words are the four of one call (C % 4 == 0).
template <typename T>
__global__ void dropout_channel4_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                                        RngSource src, uint32_t threshold, float scale_f,
                                        double scale_d, bool channels_last, int64_t inner,
                                        int64_t C, int64_t HWC) {
  using A = at::opmath_type<T>;
  uint64_t seed, offset;
  get_seed(src, seed, offset);
  const A scale = sizeof(A) == 8 ? A(scale_d) : A(scale_f);
  const int64_t blocks = n / 4;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks; b += stride) {
    const int64_t i = b * 4;
    const int64_t g = channels_last ? (i / HWC) * C + i % C : i / inner;
    const Philox4 r = philox4x32_10(static_cast<uint64_t>(g) >> 2, offset, seed);
    A keep[4];
    if (channels_last) {
#pragma unroll
      for (int k = 0; k < 4; ++k) keep[k] = r.v[k] >= threshold ? scale : A(0);
    } else {
      const A kv = word(r, g) >= threshold ? scale : A(0);
#pragma unroll
      for (int k = 0; k < 4; ++k) keep[k] = kv;
    }
    VecN<T, 4> in = *reinterpret_cast<const VecN<T, 4>*>(x + i), out;
#pragma unroll
    for (int k = 0; k < 4; ++k) out.v[k] = static_cast<T>(static_cast<A>(in.v[k]) * keep[k]);
    *reinterpret_cast<VecN<T, 4>*>(y + i) = out;
  }
}

at::MemoryFormat layout(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void launch(const Tensor& x, Tensor& y, const DropoutPlan& plan, bool channelwise,
            const RngSource& src) {
  const int64_t n = x.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "cnnkernels::dropout_cuda", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    if (!channelwise) {
      const bool aligned = reinterpret_cast<uintptr_t>(xp) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(yp) % 16 == 0;
      const int64_t warps = std::max<int64_t>(1, (n + 255) / 256);
      const int64_t grid = std::min<int64_t>((warps + kThreads / 32 - 1) / (kThreads / 32),
                                             int64_t(sms) * 32);
      dropout_kernel<T><<<grid, kThreads, 0, stream>>>(xp, yp, n, src, plan.threshold,
                                                       float(plan.scale), plan.scale, aligned);
    } else if ((plan.channels_last ? plan.C % 4 == 0 : std::max<int64_t>(plan.inner, 1) % 4 == 0) &&
               n % 4 == 0 && reinterpret_cast<uintptr_t>(xp) % (4 * sizeof(T)) == 0 &&
               reinterpret_cast<uintptr_t>(yp) % (4 * sizeof(T)) == 0) {
      const int64_t grid = std::min<int64_t>(std::max<int64_t>(1, (n / 4 + kThreads - 1) / kThreads),
                                             int64_t(sms) * 32);
      dropout_channel4_kernel<T><<<grid, kThreads, 0, stream>>>(
          xp, yp, n, src, plan.threshold, float(plan.scale), plan.scale, plan.channels_last,
          std::max<int64_t>(plan.inner, 1), plan.C, plan.HWC);
    } else {
      const int64_t grid = std::min<int64_t>(std::max<int64_t>(1, (n + kThreads - 1) / kThreads),
                                             int64_t(sms) * 32);
      dropout_channel_kernel<T><<<grid, kThreads, 0, stream>>>(
          xp, yp, n, src, plan.threshold, float(plan.scale), plan.scale, plan.channels_last,
          std::max<int64_t>(plan.inner, 1), plan.C, plan.HWC);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

RngSource forward_source(Tensor& state) {
  auto gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      c10::nullopt, at::cuda::detail::getDefaultCUDAGenerator());
  RngSource src{};
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    src.state = gen->philox_cuda_state(4);
  }
  src.saved = nullptr;
  src.record = state.data_ptr<int64_t>();
  return src;
}

std::tuple<Tensor, Tensor> dropout_forward_cuda(const Tensor& input, double p, bool channelwise,
                                                bool channels_last) {
  const bool cl = channels_last && input.dim() == 4;
  const DropoutPlan plan = dropout_plan("dropout", input, p, channelwise, cl, /*cpu=*/false);
  c10::cuda::CUDAGuard guard(input.device());
  const Tensor x = input.contiguous(layout(cl));
  Tensor y = at::empty(input.sizes(), input.options().memory_format(layout(cl)));
  Tensor state = at::empty({2}, input.options().dtype(at::kLong));
  RngSource src = forward_source(state);
  if (x.numel() > 0) {
    launch(x, y, plan, channelwise, src);
  } else {
    state.zero_();
  }
  return {y, state};
}

Tensor dropout_forward_inplace_cuda(Tensor& self, double p, bool channelwise, bool channels_last) {
  const bool cl = channels_last && self.dim() == 4;
  const DropoutPlan plan = dropout_plan("dropout_", self, p, channelwise, cl, /*cpu=*/false);
  c10::cuda::CUDAGuard guard(self.device());
  Tensor state = at::empty({2}, self.options().dtype(at::kLong));
  RngSource src = forward_source(state);
  if (self.numel() == 0) {
    state.zero_();
  } else if (self.is_contiguous(layout(cl))) {
    launch(self, self, plan, channelwise, src);
  } else {
    Tensor tmp = self.contiguous(layout(cl));
    launch(tmp, tmp, plan, channelwise, src);
    self.copy_(tmp);
  }
  return state;
}

Tensor dropout_backward_cuda(const Tensor& grad_output, const Tensor& rng_state, double p,
                             bool channelwise, bool channels_last) {
  const char* op = "dropout_backward";
  check_rng_state(op, rng_state, grad_output);
  const bool cl = channels_last && grad_output.dim() == 4;
  const DropoutPlan plan = dropout_plan(op, grad_output, p, channelwise, cl, /*cpu=*/false);
  c10::cuda::CUDAGuard guard(grad_output.device());
  const Tensor g = grad_output.contiguous(layout(cl));
  Tensor gx = at::empty(g.sizes(), g.options().memory_format(layout(cl)));
  const Tensor st = rng_state.contiguous();
  RngSource src{};
  src.saved = st.data_ptr<int64_t>();
  src.record = nullptr;
  if (g.numel() > 0) launch(g, gx, plan, channelwise, src);
  return gx;
}

}  // namespace
}  // namespace cuda
}  // namespace cnnkernels

TORCH_LIBRARY_IMPL(cnnkernels, CUDA, m) {
  m.impl("dropout_forward", &cnnkernels::cuda::dropout_forward_cuda);
  m.impl("dropout_forward_", &cnnkernels::cuda::dropout_forward_inplace_cuda);
  m.impl("dropout_backward", &cnnkernels::cuda::dropout_backward_cuda);
}
