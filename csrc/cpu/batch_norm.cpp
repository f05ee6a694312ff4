// CPU batch norm with a fused activation (none / relu / leaky_relu), float32
// and float64: forward (training: statistics + running-stat update + fused
// normalise; eval: one pass) and backward (one reduction pass, one input-
// gradient pass). Kernels: batch_norm_impl.h (portable and AVX2 builds).
//
// Memory traffic per element: training forward reads x twice (statistics,
// normalise) and writes y once; backward reads x and grad_y twice and writes
// grad_x once. Backward needs only the saved input and the per-channel mean
// and invstd: the activation mask is recomputed from x.
//
// Reductions: per plane (planar) or per fixed block of rows (interleaved),
// merged in a fixed order in double: the result does not depend on the
// number of threads and repeats bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../common/batch_norm.h"
#include "batch_norm_kernels.h"
#include "host_cache.h"
#include "isa.h"

namespace cnnkernels {
namespace cpu {
namespace {

using at::Tensor;
using bn::Channel;
using bn::Moments;

constexpr int64_t kRowTasks = 64;  // fixed number of row blocks (interleaved reductions)

// The kernels of the selected code path for scalar type T.
template <typename T>
struct Path {
  bool avx2 = use_avx2();
  void stats_planar(const T* x, int64_t S, int64_t p0, int64_t p1, Moments* o) const {
    avx2 ? bn::avx2::stats_planar(x, S, p0, p1, o) : bn::generic::stats_planar(x, S, p0, p1, o);
  }
  void stats_rows(const T* x, int64_t C, int64_t r0, int64_t r1, Moments* o, T* s) const {
    avx2 ? bn::avx2::stats_rows(x, C, r0, r1, o, s) : bn::generic::stats_rows(x, C, r0, r1, o, s);
  }
  void norm(const T* x, T* y, const BnGeometry& g, int64_t a, int64_t b,
            const Channel<T>& ch) const {
    if (g.interleaved) {
      avx2 ? bn::avx2::norm_rows(x, y, g.C, a, b, ch) : bn::generic::norm_rows(x, y, g.C, a, b, ch);
    } else {
      avx2 ? bn::avx2::norm_planar(x, y, g.S, g.C, a, b, ch)
           : bn::generic::norm_planar(x, y, g.S, g.C, a, b, ch);
    }
  }
  void reduce_planar(const T* gy, const T* x, const BnGeometry& g, int64_t a, int64_t b,
                     const Channel<T>& ch, double* sg, double* sgx) const {
    avx2 ? bn::avx2::reduce_planar(gy, x, g.S, g.C, a, b, ch, sg, sgx)
         : bn::generic::reduce_planar(gy, x, g.S, g.C, a, b, ch, sg, sgx);
  }
  void reduce_rows(const T* gy, const T* x, const BnGeometry& g, int64_t a, int64_t b,
                   const Channel<T>& ch, double* sg, double* sgx, T* s) const {
    avx2 ? bn::avx2::reduce_rows(gy, x, g.C, a, b, ch, sg, sgx, s)
         : bn::generic::reduce_rows(gy, x, g.C, a, b, ch, sg, sgx, s);
  }
  void grad_input(const T* gy, const T* x, T* gx, const BnGeometry& g, int64_t a, int64_t b,
                  const Channel<T>& ch) const {
    if (g.interleaved) {
      avx2 ? bn::avx2::grad_input_rows(gy, x, gx, g.C, a, b, ch)
           : bn::generic::grad_input_rows(gy, x, gx, g.C, a, b, ch);
    } else {
      avx2 ? bn::avx2::grad_input_planar(gy, x, gx, g.S, g.C, a, b, ch)
           : bn::generic::grad_input_planar(gy, x, gx, g.S, g.C, a, b, ch);
    }
  }
};

// Units of parallel work of the elementwise passes: planes or rows, with a
// grain of about 32 K elements.
int64_t units(const BnGeometry& g) { return g.interleaved ? g.rows : g.N * g.C; }
int64_t grain(const BnGeometry& g) {
  const int64_t per = g.interleaved ? g.C : g.S;
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(per, 1));
}

// Planar input with enough channels to keep every thread busy, whose
// tensors (working_set bytes: forward x and y, backward x, grad_y and
// grad_x) do not fit in the last-level cache together: each thread takes
// whole channels and runs both sweeps of a channel back to back, so the
// second reads the channel's planes from L2 (the inputs are read from
// memory once). When everything stays in the last-level cache anyway, two
// sweeps over contiguous ranges are faster: training forward measured
// 0.155-0.165 against 0.18-0.20 ns per element at 16x64x56x56 (12.8 MB;
// 0.65 against 0.92 ms interleaved in one process), long sequential runs
// prefetching better than a channel's 16 separate 12.5 KB planes. The
// backward there (38 MB, over the 32 MB L3) stays by channel: 2.87 against
// 3.09 ms forward+backward. (Those were a Zen 3 VM with a 32 MB L3 of its
// own CCX.) On the Intel Xeon VM of 2026-12-07 sysconf reports the whole
// socket's L3 (480 MB, shared with every tenant), and by channel was as fast
// or faster at every size measured (BatchNormReLU2d training, 2 threads,
// two sweeps -> by channel: 4x64x56x56 forward 0.43 -> 0.37 ms, 8x64x56x56
// 0.76 -> 0.59, forward+backward 1.76 -> 1.38, 16x64x56x56 3.39 -> 3.06), so
// a last-level cache reported over 64 MB (a whole socket's, not one
// tenant's) counts as 4 MB. On an AMD EPYC VM with AVX-512 and a 32 MB L3
// (2026-12-08) the Zen 3 rule held again: 16x64x56x56 training forward
// (25.6 MB, fits) 1.20 ms with two sweeps against 1.41 by channel, medians
// of 40 interleaved calls; forward+backward 3.50 against 4.32.
constexpr int64_t kBnSharedLlc = int64_t(64) << 20;
constexpr int64_t kBnCacheShare = int64_t(4) << 20;
bool by_channel(const BnGeometry& g, int64_t working_set) {
  const int64_t reported = llc_bytes();
  const int64_t llc = reported > kBnSharedLlc ? kBnCacheShare : reported;
  const bool fits = llc > 0 && working_set <= llc;
  return !fits && !g.interleaved && g.C >= 2 * at::get_num_threads();
}

// Row block t of kRowTasks (fixed, independent of the thread count).
inline void row_block(int64_t rows, int64_t tasks, int64_t t, int64_t& r0, int64_t& r1) {
  r0 = rows * t / tasks;
  r1 = rows * (t + 1) / tasks;
}

// Channel c's scale = weight * invstd and beta = bias - mean * scale (the
// kernels compute x * scale + beta). The forward and both backward ops take
// them from here: the backward's ReLU mask recomputes the forward's value,
// so they must round alike.
template <typename T>
inline void channel_affine(const T* w, const T* b, const T* mean, const T* invstd, int64_t c,
                           T* scale, T* beta) {
  scale[c] = (w ? w[c] : T(1)) * invstd[c];
  beta[c] = (b ? b[c] : T(0)) - mean[c] * scale[c];
}

// Per-channel moments of x, merged in a fixed order.
template <typename T>
std::vector<Moments> channel_moments(const Path<T>& path, const T* x, const BnGeometry& g) {
  std::vector<Moments> out(g.C);
  if (g.interleaved) {
    const int64_t tasks = std::min<int64_t>(kRowTasks, std::max<int64_t>(g.rows, 1));
    std::vector<Moments> part(tasks * g.C);
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<T> scratch(2 * g.C);
      for (int64_t t = t0; t < t1; ++t) {
        int64_t r0, r1;
        row_block(g.rows, tasks, t, r0, r1);
        path.stats_rows(x, g.C, r0, r1, part.data() + t * g.C, scratch.data());
      }
    });
    for (int64_t t = 0; t < tasks; ++t)
      for (int64_t c = 0; c < g.C; ++c) {
        const Moments& m = part[t * g.C + c];
        bn::merge(out[c], m.n, m.mean, m.m2);
      }
  } else {
    std::vector<Moments> part(g.N * g.C);
    at::parallel_for(0, g.N * g.C, std::max<int64_t>(1, 16384 / g.S), [&](int64_t a, int64_t b) {
      path.stats_planar(x, g.S, a, b, part.data());
    });
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t c = 0; c < g.C; ++c) {
        const Moments& m = part[n * g.C + c];
        bn::merge(out[c], m.n, m.mean, m.m2);
      }
  }
  return out;
}

// Per-channel sums of gz and gz * (x - mean), merged in a fixed order.
template <typename T>
void channel_grad_sums(const Path<T>& path, const T* gy, const T* x, const BnGeometry& g,
                       const Channel<T>& ch, std::vector<double>& sg, std::vector<double>& sgx) {
  sg.assign(g.C, 0.0);
  sgx.assign(g.C, 0.0);
  if (g.interleaved) {
    const int64_t tasks = std::min<int64_t>(kRowTasks, std::max<int64_t>(g.rows, 1));
    std::vector<double> p1(tasks * g.C, 0.0), p2(tasks * g.C, 0.0);
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<T> scratch(2 * g.C);
      for (int64_t t = t0; t < t1; ++t) {
        int64_t r0, r1;
        row_block(g.rows, tasks, t, r0, r1);
        path.reduce_rows(gy, x, g, r0, r1, ch, p1.data() + t * g.C, p2.data() + t * g.C,
                         scratch.data());
      }
    });
    for (int64_t t = 0; t < tasks; ++t)
      for (int64_t c = 0; c < g.C; ++c) sg[c] += p1[t * g.C + c], sgx[c] += p2[t * g.C + c];
  } else {
    std::vector<double> p1(g.N * g.C), p2(g.N * g.C);
    at::parallel_for(0, g.N * g.C, std::max<int64_t>(1, 16384 / g.S), [&](int64_t a, int64_t b) {
      path.reduce_planar(gy, x, g, a, b, ch, p1.data(), p2.data());
    });
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t c = 0; c < g.C; ++c) sg[c] += p1[n * g.C + c], sgx[c] += p2[n * g.C + c];
  }
}

template <typename T>
const T* opt_ptr(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_forward_cpu(
    const Tensor& input, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    const c10::optional<Tensor>& running_mean, const c10::optional<Tensor>& running_var,
    bool training, double momentum, double eps, int64_t activation, double negative_slope) {
  const char* op = "batch_norm";
  const BnGeometry g = batch_norm_geometry(op, input, weight, bias, running_mean, running_var,
                                           training, activation, /*cpu=*/true);
  const Tensor x = batch_norm_layout(input, g);
  Tensor y = empty_output(input.sizes(), input.options().memory_format(g.fmt));
  Tensor save_mean = at::empty({g.C}, input.options());
  Tensor save_invstd = at::empty({g.C}, input.options());
  for (const auto* p : {&weight, &bias, &running_mean, &running_var}) {
    if (p->has_value() && (*p)->defined())
      TORCH_CHECK((*p)->is_contiguous(), op, ": parameters and running statistics should be contiguous");
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkernels::batch_norm_forward", [&] {
    using T = scalar_t;
    const Path<T> path;
    T* mean = save_mean.data_ptr<T>();
    T* invstd = save_invstd.data_ptr<T>();
    T* rm = const_cast<T*>(opt_ptr<T>(running_mean));
    T* rv = const_cast<T*>(opt_ptr<T>(running_var));
    const T* w = opt_ptr<T>(weight);
    const T* b = opt_ptr<T>(bias);
    if (g.count == 0) {  // empty batch: nothing to normalise, statistics untouched
      std::fill(mean, mean + g.C, T(0));
      std::fill(invstd, invstd + g.C, T(0));
      return;
    }
    std::vector<T> scale(g.C), beta(g.C);
    // The forward's output is not streamed: measured, it gained nothing at
    // 12.8 MB and cost 40 % at 8.8 MB (an output that still fits in L3).
    const Channel<T> ch{mean, scale.data(), beta.data(), nullptr, nullptr, int(activation),
                        T(negative_slope), false};
    // Per-channel constants from the channel's moments (training) or the
    // running statistics (eval); updates the running statistics.
    auto finish_channel = [&](int64_t c, const Moments* mo) {
      if (mo != nullptr) {
        const double var = mo->m2 / mo->n;
        mean[c] = T(mo->mean);
        invstd[c] = T(1.0 / std::sqrt(var + eps));
        if (rm != nullptr) {
          const double unbiased = mo->n > 1 ? mo->m2 / (mo->n - 1) : var;
          rm[c] = T((1.0 - momentum) * double(rm[c]) + momentum * mo->mean);
          rv[c] = T((1.0 - momentum) * double(rv[c]) + momentum * unbiased);
        }
      } else {
        mean[c] = rm[c];
        invstd[c] = T(1.0 / std::sqrt(double(rv[c]) + eps));
      }
      channel_affine(w, b, mean, invstd, c, scale.data(), beta.data());
    };
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    if (training && by_channel(g, 2 * x.nbytes())) {
      // Statistics and normalisation of one channel back to back: its planes
      // are still in L2 for the second sweep (one read of x from memory).
      std::vector<Moments> part(g.N * g.C);  // indexed by plane, like stats_planar's output
      at::parallel_for(0, g.C, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          Moments mo;
          for (int64_t n = 0; n < g.N; ++n) {
            const int64_t p = n * g.C + c;
            path.stats_planar(xp, g.S, p, p + 1, part.data());
            bn::merge(mo, part[p].n, part[p].mean, part[p].m2);
          }
          finish_channel(c, &mo);
          for (int64_t n = 0; n < g.N; ++n) path.norm(xp, yp, g, n * g.C + c, n * g.C + c + 1, ch);
        }
      });
      return;
    }
    if (training) {
      const std::vector<Moments> mo = channel_moments(path, xp, g);
      for (int64_t c = 0; c < g.C; ++c) finish_channel(c, &mo[c]);
    } else {
      for (int64_t c = 0; c < g.C; ++c) finish_channel(c, nullptr);
    }
    at::parallel_for(0, units(g), grain(g),
                     [&](int64_t a, int64_t e) { path.norm(xp, yp, g, a, e, ch); });
  });
  return {y, save_mean, save_invstd};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_backward_cpu(
    const Tensor& grad_output, const Tensor& input, const c10::optional<Tensor>& weight,
    const c10::optional<Tensor>& bias, const Tensor& save_mean, const Tensor& save_invstd,
    bool training, int64_t activation, double negative_slope, std::array<bool, 3> mask) {
  const char* op = "batch_norm_backward";
  const BnGeometry g = batch_norm_geometry(op, input, weight, bias, c10::nullopt, c10::nullopt,
                                           /*training=*/true, activation, /*cpu=*/true);
  check_batch_norm_backward(op, grad_output, input, save_mean, save_invstd, g.C);
  const Tensor x = batch_norm_layout(input, g);
  const Tensor gy = batch_norm_layout(grad_output, g);
  const bool has_w = weight.has_value() && weight->defined();
  const auto popts = has_w ? weight->options() : input.options();
  Tensor gx = mask[0] ? empty_output(input.sizes(), input.options().memory_format(g.fmt))
                      : at::empty({0}, input.options());
  Tensor gw = mask[1] ? at::empty({g.C}, popts) : at::empty({0}, popts);
  Tensor gb = mask[2] ? at::empty({g.C}, popts) : at::empty({0}, popts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkernels::batch_norm_backward", [&] {
    using T = scalar_t;
    const Path<T> path;
    const T* mean = save_mean.data_ptr<T>();
    const T* invstd = save_invstd.data_ptr<T>();
    const T* w = opt_ptr<T>(weight);
    const T* b = opt_ptr<T>(bias);
    std::vector<T> scale(g.C), beta(g.C), k2(g.C, T(0)), k3(g.C, T(0));
    for (int64_t c = 0; c < g.C; ++c)
      channel_affine(w, b, mean, invstd, c, scale.data(), beta.data());
    Channel<T> ch{mean, scale.data(), beta.data(), k2.data(), k3.data(), int(activation),
                  T(negative_slope), stream_stores(x.nbytes())};
    const T* xp = x.data_ptr<T>();
    const T* gp = gy.data_ptr<T>();
    T* gxp = mask[0] ? gx.data_ptr<T>() : nullptr;
    const bool need_sums = mask[1] || mask[2] || (training && mask[0]);
    if (g.count == 0) {
      if (mask[1]) gw.zero_();
      if (mask[2]) gb.zero_();
      return;
    }
    auto finish_channel = [&](int64_t c, double sg, double sgx) {
      if (mask[1]) gw.data_ptr<T>()[c] = T(sgx * double(invstd[c]));
      if (mask[2]) gb.data_ptr<T>()[c] = T(sg);
      if (training) {
        const double is = double(invstd[c]);
        k2[c] = T(sg / double(g.count));
        k3[c] = T(is * is * sgx / double(g.count));
      }
    };
    if (need_sums && by_channel(g, (gxp != nullptr ? 3 : 2) * x.nbytes())) {
      // Both sweeps of one channel back to back (its planes stay in L2).
      std::vector<double> part1(g.N * g.C), part2(g.N * g.C);
      at::parallel_for(0, g.C, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          double sg = 0, sgx = 0;
          for (int64_t n = 0; n < g.N; ++n) {
            const int64_t p = n * g.C + c;
            path.reduce_planar(gp, xp, g, p, p + 1, ch, part1.data(), part2.data());
            sg += part1[p], sgx += part2[p];
          }
          finish_channel(c, sg, sgx);
          if (gxp != nullptr)
            for (int64_t n = 0; n < g.N; ++n)
              path.grad_input(gp, xp, gxp, g, n * g.C + c, n * g.C + c + 1, ch);
        }
      });
      return;
    }
    std::vector<double> sg(g.C, 0.0), sgx(g.C, 0.0);
    if (need_sums) channel_grad_sums(path, gp, xp, g, ch, sg, sgx);
    for (int64_t c = 0; c < g.C; ++c) finish_channel(c, sg[c], sgx[c]);
    if (gxp != nullptr) {
      at::parallel_for(0, units(g), grain(g),
                       [&](int64_t a, int64_t e) { path.grad_input(gp, xp, gxp, g, a, e, ch); });
    }
  });
  return {gx, gw, gb};
}

std::tuple<Tensor, Tensor> batch_norm_stats_cpu(const Tensor& input) {
  const char* op = "batch_norm_stats";
  Tensor mean, var;
  const BnGeometry g = batch_norm_stats_geometry(op, input, /*cpu=*/true, mean, var);
  const Tensor x = batch_norm_layout(input, g);
  if (g.count == 0) return {mean, var};  // no values: zeros, weighted by a count of 0
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkernels::batch_norm_stats", [&] {
    using T = scalar_t;
    const std::vector<Moments> mo = channel_moments(Path<T>(), x.data_ptr<T>(), g);
    T* m = mean.data_ptr<T>();
    T* v = var.data_ptr<T>();
    for (int64_t c = 0; c < g.C; ++c) m[c] = T(mo[c].mean), v[c] = T(mo[c].m2 / mo[c].n);
  });
  return {mean, var};
}

Tensor batch_norm_backward_elemt_cpu(const Tensor& grad_output, const Tensor& input,
                                     const c10::optional<Tensor>& weight,
                                     const c10::optional<Tensor>& bias, const Tensor& save_mean,
                                     const Tensor& save_invstd, const Tensor& sum_dy,
                                     const Tensor& sum_dy_xhat, int64_t count, int64_t activation,
                                     double negative_slope) {
  const char* op = "batch_norm_backward_elemt";
  const BnGeometry g = batch_norm_geometry(op, input, weight, bias, c10::nullopt, c10::nullopt,
                                           /*training=*/true, activation, /*cpu=*/true);
  check_batch_norm_backward(op, grad_output, input, save_mean, save_invstd, g.C);
  const auto sums = batch_norm_elemt_sums(op, input, sum_dy, sum_dy_xhat, count, g.C);
  const Tensor x = batch_norm_layout(input, g);
  const Tensor gy = batch_norm_layout(grad_output, g);
  Tensor gx = empty_output(input.sizes(), input.options().memory_format(g.fmt));
  if (g.count == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkernels::batch_norm_backward_elemt", [&] {
    using T = scalar_t;
    const Path<T> path;
    const T* mean = save_mean.data_ptr<T>();
    const T* invstd = save_invstd.data_ptr<T>();
    const T* w = opt_ptr<T>(weight);
    const T* b = opt_ptr<T>(bias);
    const T* sg = sums.first.data_ptr<T>();
    const T* sgxh = sums.second.data_ptr<T>();
    std::vector<T> scale(g.C), beta(g.C), k2(g.C), k3(g.C);
    for (int64_t c = 0; c < g.C; ++c) {
      channel_affine(w, b, mean, invstd, c, scale.data(), beta.data());
      // as batch_norm_backward's training constants, with sum_dy_xhat =
      // invstd * sum(gz * (x - mean))
      k2[c] = T(double(sg[c]) / double(count));
      k3[c] = T(double(invstd[c]) * double(sgxh[c]) / double(count));
    }
    const Channel<T> ch{mean, scale.data(), beta.data(), k2.data(), k3.data(), int(activation),
                        T(negative_slope), stream_stores(x.nbytes())};
    const T* xp = x.data_ptr<T>();
    const T* gp = gy.data_ptr<T>();
    T* gxp = gx.data_ptr<T>();
    at::parallel_for(0, units(g), grain(g),
                     [&](int64_t a, int64_t e) { path.grad_input(gp, xp, gxp, g, a, e, ch); });
  });
  return gx;
}

}  // namespace
}  // namespace cpu
}  // namespace cnnkernels

TORCH_LIBRARY_IMPL(cnnkernels, CPU, m) {
  m.impl("batch_norm_stats", &cnnkernels::cpu::batch_norm_stats_cpu);
  m.impl("batch_norm_backward_elemt", &cnnkernels::cpu::batch_norm_backward_elemt_cpu);
  m.impl("batch_norm_forward", &cnnkernels::cpu::batch_norm_forward_cpu);
  m.impl("batch_norm_backward", &cnnkernels::cpu::batch_norm_backward_cpu);
}
