// Definitions of the shared batch-norm checks (see batch_norm.h).
#include "batch_norm.h"

#include <ATen/ops/zeros.h>

#include "pool.h"  // int_list_str

namespace cnnkernels {

namespace {

void check_param(const char* op, const at::Tensor& input, const c10::optional<at::Tensor>& p,
                 const char* name, int64_t C) {
  if (!p.has_value() || !p->defined()) return;
  const at::Tensor& t = *p;
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", name, " should be a 1-D tensor of C=", C,
              " elements (the input's channel count), but got a tensor of shape ",
              int_list_str(t.sizes()));
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " should be on the input's device ",
              input.device(), ", but is on ", t.device());
  const auto it = input.scalar_type(), pt = t.scalar_type();
  const bool reduced = it == at::kHalf || it == at::kBFloat16;
  TORCH_CHECK(pt == it || (reduced && pt == at::kFloat), op, ": ", name,
              " should have the input's dtype ", it,
              reduced ? " or float32" : "", ", but got ", pt);
}

}  // namespace

void check_float_dtype(const char* op, const at::Tensor& t, const char* name, bool cpu) {
  const auto dt = t.scalar_type();
  if (cpu) {
    TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, op, ": ", name,
                " dtype should be float32 or float64 on the CPU, but got ", dt);
  } else {
    TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                op, ": ", name, " dtype should be float16, bfloat16, float32 or float64 on CUDA, but got ",
                dt);
  }
}

void check_batch_norm_backward(const char* op, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& save_mean,
                               const at::Tensor& save_invstd, int64_t C) {
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op,
              ": grad_output should have the input's shape ", input.sizes(), ", but got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op,
              ": grad_output should have the input's dtype ", input.scalar_type(), ", but got ",
              grad_output.scalar_type());
  TORCH_CHECK(grad_output.device() == input.device(), op,
              ": grad_output should be on the input's device ", input.device(), ", but is on ",
              grad_output.device());
  check_batch_norm_saved(op, input, save_mean, "save_mean", C);
  check_batch_norm_saved(op, input, save_invstd, "save_invstd", C);
}

BnGeometry batch_norm_stats_geometry(const char* op, const at::Tensor& input, bool cpu,
                                     at::Tensor& mean, at::Tensor& var) {
  TORCH_CHECK(input.dim() >= 2, op, ": input should have at least 2 dimensions (N, C, ...), but got ",
              input.dim());
  check_float_dtype(op, input, "input", cpu);
  const auto opts = input.options().dtype(batch_norm_acc_type(input.scalar_type()));
  mean = at::zeros({input.size(1)}, opts);
  var = at::zeros({input.size(1)}, opts);
  // as eval-mode statistics: no "more than 1 value per channel" rule here
  return batch_norm_geometry(op, input, c10::nullopt, c10::nullopt, mean, var,
                             /*training=*/false, 0, cpu);
}

std::pair<at::Tensor, at::Tensor> batch_norm_elemt_sums(const char* op, const at::Tensor& input,
                                                        const at::Tensor& sum_dy,
                                                        const at::Tensor& sum_dy_xhat,
                                                        int64_t count, int64_t C) {
  const auto acc = batch_norm_acc_type(input.scalar_type());
  at::Tensor out[2];
  const at::Tensor* in[2] = {&sum_dy, &sum_dy_xhat};
  const char* names[2] = {"sum_dy", "sum_dy_xhat"};
  for (int i = 0; i < 2; ++i) {
    const at::Tensor& t = *in[i];
    TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", names[i],
                " should be a 1-D tensor of C=", C, " elements, but got a tensor of shape ",
                int_list_str(t.sizes()));
    TORCH_CHECK(t.device() == input.device(), op, ": ", names[i],
                " should be on the input's device ", input.device(), ", but is on ", t.device());
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", names[i],
                " should have a floating dtype, but got ", t.scalar_type());
    out[i] = t.to(acc).contiguous();
  }
  const int64_t local = C > 0 ? input.numel() / C : 0;
  TORCH_CHECK(count >= local && count >= 1, op,
              ": count (the values per channel over all processes) should be at least this "
              "input's ", local, " and at least 1, but got ", count);
  return {out[0], out[1]};
}

at::ScalarType batch_norm_acc_type(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

BnGeometry batch_norm_geometry(const char* op, const at::Tensor& input,
                               const c10::optional<at::Tensor>& weight,
                               const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& running_mean,
                               const c10::optional<at::Tensor>& running_var, bool training,
                               int64_t activation, bool cpu) {
  TORCH_CHECK(input.dim() >= 2, op,
              ": input should have at least 2 dimensions (N, C, ...), but got a ", input.dim(),
              "-D input of shape ", int_list_str(input.sizes()));
  check_float_dtype(op, input, "input", cpu);
  TORCH_CHECK(activation == kBnActNone || activation == kBnActRelu ||
                  activation == kBnActLeakyRelu,
              op, ": activation should be 0 (none), 1 (relu) or 2 (leaky_relu), but got ",
              activation);
  BnGeometry g;
  g.N = input.size(0);
  g.C = input.size(1);
  for (int64_t d = 2; d < input.dim(); ++d) g.S *= input.size(d);
  g.count = g.N * g.S;
  check_param(op, input, weight, "weight", g.C);
  check_param(op, input, bias, "bias", g.C);
  check_param(op, input, running_mean, "running_mean", g.C);
  check_param(op, input, running_var, "running_var", g.C);
  const bool has_rm = running_mean.has_value() && running_mean->defined();
  const bool has_rv = running_var.has_value() && running_var->defined();
  TORCH_CHECK(has_rm == has_rv, op,
              ": running_mean and running_var should be given together, but got only ",
              has_rm ? "running_mean" : "running_var");
  TORCH_CHECK(training || has_rm, op,
              ": running_mean and running_var are required when training=False");
  if (training) {
    TORCH_CHECK_VALUE(g.count != 1, op,
                      ": expected more than 1 value per channel when training, got input size ",
                      int_list_str(input.sizes()));
  }
  const auto fmt = input.suggest_memory_format();
  g.interleaved = input.dim() == 2 || g.S == 1 ||
                  (input.dim() == 4 && fmt == at::MemoryFormat::ChannelsLast) ||
                  (input.dim() == 5 && fmt == at::MemoryFormat::ChannelsLast3d);
  g.fmt = g.interleaved && input.dim() >= 4 && g.S > 1 ? fmt : at::MemoryFormat::Contiguous;
  g.rows = g.N * g.S;
  return g;
}

at::Tensor batch_norm_layout(const at::Tensor& t, const BnGeometry& g) {
  return t.contiguous(g.fmt);
}

void check_batch_norm_saved(const char* op, const at::Tensor& input, const at::Tensor& t,
                            const char* name, int64_t C) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", name, " should be a 1-D tensor of C=", C,
              " elements, but got a tensor of shape ", int_list_str(t.sizes()));
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " should be on the input's device ",
              input.device(), ", but is on ", t.device());
  const auto want = batch_norm_acc_type(input.scalar_type());
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " should have dtype ", want, ", but got ",
              t.scalar_type());
}

}  // namespace cnnkernels
