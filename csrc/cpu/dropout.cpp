// CPU dropout (element-wise and channel-wise), float32 and float64.
//
// Randomness: a 64-bit seed drawn from torch's default CPU generator per call
// (so torch.manual_seed reproduces runs and successive calls differ) keys a
// Philox4x32-10 stream indexed by element (common/philox.h); the mask does
// not depend on the number of threads. The forward returns the seed as
// rng_state and backward regenerates the mask from it: nothing per element
// is saved.
// Element-wise: dropout_kernels.h (16 bits per element; AVX2: four Philox
// calls per vector).
// Channel-wise: one word per (n, c), then a broadcast multiply.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <mutex>
#include <tuple>
#include <vector>

#include "../common/dropout.h"
#include "../common/philox.h"
#include "dropout_kernels.h"
#include "host_cache.h"
#include "isa.h"

namespace cnnkernels {
namespace cpu {
namespace {

using at::Tensor;

uint64_t draw_seed() {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      c10::nullopt, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

Tensor rng_state_tensor(uint64_t seed, uint64_t offset) {
  Tensor s = at::empty({2}, at::TensorOptions().dtype(at::kLong));
  s.data_ptr<int64_t>()[0] = static_cast<int64_t>(seed);
  s.data_ptr<int64_t>()[1] = static_cast<int64_t>(offset);
  return s;
}

// y = x * mask (x and y in the plan's layout, same numel; y may be x).
void run(const Tensor& x, Tensor& y, const DropoutPlan& plan, bool channelwise, uint64_t seed,
         uint64_t offset) {
  const int64_t n = x.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkernels::dropout", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    const T scale = T(plan.scale);
    const bool avx2 = use_avx2();
    if (!channelwise) {
      const bool avx512 = use_avx512();
      // grain: a multiple of 64 elements so that chunks start on whole steps
      at::parallel_for(0, (n + 63) / 64, 512, [&](int64_t a, int64_t b) {
        const int64_t i0 = a * 64, i1 = std::min(n, b * 64);
        if (avx512) {
          drop::avx512::apply(xp, yp, i0, i1, seed, offset, plan.threshold, scale);
        } else if (avx2) {
          drop::avx2::apply(xp, yp, i0, i1, seed, offset, plan.threshold, scale);
        } else {
          drop::generic::apply(xp, yp, i0, i1, seed, offset, plan.threshold, scale);
        }
      });
      return;
    }
    std::vector<T> m(plan.groups);
    for (int64_t j = 0; j < plan.groups; j += 4) {
      const Philox4 r = philox4x32_10(static_cast<uint64_t>(j) >> 2, offset, seed);
      for (int64_t k = j; k < std::min(plan.groups, j + 4); ++k)
        m[k] = r.v[k & 3] >= plan.threshold ? scale : T(0);
    }
    if (plan.channels_last) {
      const int64_t C = plan.C, pixels = n / C, HW = plan.HWC / C;
      at::parallel_for(0, pixels, std::max<int64_t>(1, 16384 / C), [&](int64_t a, int64_t b) {
        avx2 ? drop::avx2::scale_pixels(xp, yp, m.data(), C, HW, a, b)
             : drop::generic::scale_pixels(xp, yp, m.data(), C, HW, a, b);
      });
    } else {
      const int64_t S = plan.inner;
      at::parallel_for(0, plan.groups, std::max<int64_t>(1, 16384 / std::max<int64_t>(S, 1)),
                       [&](int64_t a, int64_t b) {
                         avx2 ? drop::avx2::scale_planes(xp, yp, m.data(), S, a, b)
                              : drop::generic::scale_planes(xp, yp, m.data(), S, a, b);
                       });
    }
  });
}

at::MemoryFormat layout(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

std::tuple<Tensor, Tensor> dropout_forward_cpu(const Tensor& input, double p, bool channelwise,
                                               bool channels_last) {
  const bool cl = channels_last && input.dim() == 4;
  const DropoutPlan plan = dropout_plan("dropout", input, p, channelwise, cl, /*cpu=*/true);
  const Tensor x = input.contiguous(layout(cl));
  Tensor y = empty_output(input.sizes(), input.options().memory_format(layout(cl)));
  const uint64_t seed = draw_seed();
  run(x, y, plan, channelwise, seed, 0);
  return {y, rng_state_tensor(seed, 0)};
}

Tensor dropout_forward_inplace_cpu(Tensor& self, double p, bool channelwise, bool channels_last) {
  const bool cl = channels_last && self.dim() == 4;
  const DropoutPlan plan = dropout_plan("dropout_", self, p, channelwise, cl, /*cpu=*/true);
  const uint64_t seed = draw_seed();
  if (self.is_contiguous(layout(cl))) {
    run(self, self, plan, channelwise, seed, 0);
  } else {
    Tensor tmp = self.contiguous(layout(cl));
    run(tmp, tmp, plan, channelwise, seed, 0);
    self.copy_(tmp);
  }
  return rng_state_tensor(seed, 0);
}

Tensor dropout_backward_cpu(const Tensor& grad_output, const Tensor& rng_state, double p,
                            bool channelwise, bool channels_last) {
  const char* op = "dropout_backward";
  check_rng_state(op, rng_state, grad_output);
  const bool cl = channels_last && grad_output.dim() == 4;
  const DropoutPlan plan = dropout_plan(op, grad_output, p, channelwise, cl, /*cpu=*/true);
  const Tensor g = grad_output.contiguous(layout(cl));
  Tensor gx = empty_output(g.sizes(), g.options().memory_format(layout(cl)));
  const Tensor st = rng_state.contiguous();
  const int64_t* s = st.data_ptr<int64_t>();
  run(g, gx, plan, channelwise, static_cast<uint64_t>(s[0]), static_cast<uint64_t>(s[1]));
  return gx;
}

}  // namespace
}  // namespace cpu
}  // namespace cnnkernels

TORCH_LIBRARY_IMPL(cnnkernels, CPU, m) {
  m.impl("dropout_forward", &cnnkernels::cpu::dropout_forward_cpu);
  m.impl("dropout_forward_", &cnnkernels::cpu::dropout_forward_inplace_cpu);
  m.impl("dropout_backward", &cnnkernels::cpu::dropout_backward_cpu);
}
