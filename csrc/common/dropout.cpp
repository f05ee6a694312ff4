// Definitions of the shared dropout checks (see dropout.h).
#include "dropout.h"

#include "batch_norm.h"  // check_float_dtype
#include "philox.h"
#include "pool.h"  // int_list_str

namespace cnnkernels {

void check_dropout_p(const char* op, double p) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, op,
              ": dropout probability p has to be between 0 and 1, but got p=", p);
}

DropoutPlan dropout_plan(const char* op, const at::Tensor& input, double p, bool channelwise,
                         bool channels_last, bool cpu) {
  check_dropout_p(op, p);
  check_float_dtype(op, input, "input", cpu);
  DropoutPlan plan;
  plan.threshold = dropout_threshold(p);
  plan.scale = p >= 1.0 ? 0.0 : 1.0 / (1.0 - p);
  plan.channels_last = channels_last;
  if (channelwise) {
    TORCH_CHECK(input.dim() >= 2, op,
                ": channel-wise dropout needs an input of at least 2 dimensions (N, C, ...), but got "
                "shape ",
                int_list_str(input.sizes()));
    plan.groups = input.size(0) * input.size(1);
    plan.C = input.size(1);
    plan.inner = 1;
    for (int64_t d = 2; d < input.dim(); ++d) plan.inner *= input.size(d);
    plan.HWC = plan.inner * plan.C;
  }
  return plan;
}

void check_rng_state(const char* op, const at::Tensor& rng_state, const at::Tensor& like) {
  TORCH_CHECK(rng_state.dim() == 1 && rng_state.size(0) == 2 &&
                  rng_state.scalar_type() == at::kLong,
              op, ": rng_state should be the int64 tensor of 2 elements that the forward returned, "
              "but got dtype ", rng_state.scalar_type(), " and shape ",
              int_list_str(rng_state.sizes()));
  TORCH_CHECK(rng_state.device() == like.device(), op,
              ": rng_state should be on the gradient's device ", like.device(), ", but is on ",
              rng_state.device());
}

}  // namespace cnnkernels
