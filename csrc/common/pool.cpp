// Definitions of the shared pooling checks and shape math (see pool.h).
// Compiled once, by the host C++ compiler, and called from both the CPU and
// the CUDA files: nothing non-trivial is defined inline in a header that
// nvcc also compiles.
#include "pool.h"

namespace cnnkernels {

std::string int_list_str(c10::IntArrayRef v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  return s + "]";
}

void read_pair(const char* op, const char* name, c10::IntArrayRef v, int64_t& a,
                      int64_t& b) {
  TORCH_CHECK(v.size() == 1 || v.size() == 2, op, ": ", name,
              " must be a single int or a tuple of two ints, but got ", int_list_str(v));
  a = v[0];
  b = v.size() == 2 ? v[1] : v[0];
}

void check_pool_input_dims(const char* op, c10::IntArrayRef sizes) {
  const int64_t dim = (int64_t)sizes.size();
  TORCH_CHECK(dim == 3 || dim == 4, op,
              ": expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got a ", dim,
              "-D input of size ", int_list_str(sizes));
  for (int64_t d = dim - 3; d < dim; ++d) {
    TORCH_CHECK(sizes[d] > 0, op,
                ": expected an input with non-zero channel and spatial sizes (only the batch "
                "dimension may be 0), but got input of size ",
                int_list_str(sizes));
  }
}

Pool2dGeometry pool2d_geometry(const char* op, c10::IntArrayRef in_sizes,
                                      c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                      c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                      bool ceil_mode, bool is_avg) {
  Pool2dGeometry g;
  read_pair(op, "kernel_size", kernel_size, g.kH, g.kW);
  if (stride.empty()) {
    g.sH = g.kH;
    g.sW = g.kW;
  } else {
    read_pair(op, "stride", stride, g.sH, g.sW);
  }
  read_pair(op, "padding", padding, g.pH, g.pW);
  read_pair(op, "dilation", dilation, g.dH, g.dW);
  g.ceil_mode = ceil_mode;

  TORCH_CHECK(g.kH > 0 && g.kW > 0, op, ": kernel_size must be greater than zero, but got kernel_size=(",
              g.kH, ", ", g.kW, ")");
  TORCH_CHECK(g.sH > 0 && g.sW > 0, op, ": stride must be greater than zero, but got stride=(", g.sH,
              ", ", g.sW, ")");
  TORCH_CHECK(g.dH > 0 && g.dW > 0, op, ": dilation must be greater than zero, but got dilation=(",
              g.dH, ", ", g.dW, ")");
  TORCH_CHECK(g.pH >= 0 && g.pW >= 0, op, ": padding must be non-negative, but got padding=(", g.pH,
              ", ", g.pW, ")");
  const int64_t ekH = (g.kH - 1) * g.dH + 1, ekW = (g.kW - 1) * g.dW + 1;
  if (is_avg) {
    TORCH_CHECK(g.pH <= g.kH / 2 && g.pW <= g.kW / 2, op,
                ": padding should be at most half of kernel_size, but got padding=(", g.pH, ", ",
                g.pW, ") and kernel_size=(", g.kH, ", ", g.kW, ")");
  } else {
    TORCH_CHECK(g.pH <= ekH / 2 && g.pW <= ekW / 2, op,
                ": padding should be at most half of the effective kernel size, but got padding=(",
                g.pH, ", ", g.pW, "), kernel_size=(", g.kH, ", ", g.kW, ") and dilation=(", g.dH,
                ", ", g.dW, ")");
  }

  check_pool_input_dims(op, in_sizes);
  g.batched = in_sizes.size() == 4;
  g.N = g.batched ? in_sizes[0] : 1;
  g.C = in_sizes[in_sizes.size() - 3];
  g.H = in_sizes[in_sizes.size() - 2];
  g.W = in_sizes[in_sizes.size() - 1];
  g.OH = pooling_output_size(g.H, g.kH, g.pH, g.sH, g.dH, ceil_mode);
  g.OW = pooling_output_size(g.W, g.kW, g.pW, g.sW, g.dW, ceil_mode);
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, op, ": the output would be smaller than 1x1: input size ",
              int_list_str(in_sizes), " gives output size (", g.OH, "x", g.OW,
              ") with kernel_size=(", g.kH, ", ", g.kW, "), stride=(", g.sH, ", ", g.sW,
              "), padding=(", g.pH, ", ", g.pW, "), dilation=(", g.dH, ", ", g.dW, ")");
  return g;
}

at::MemoryFormat pool_memory_format(const at::Tensor& t) {
  return t.dim() == 4 ? t.suggest_memory_format() : at::MemoryFormat::Contiguous;
}

std::vector<int64_t> pool_output_sizes(const Pool2dGeometry& g, int64_t C, int64_t H,
                                              int64_t W) {
  if (g.batched) return {g.N, C, H, W};
  return {C, H, W};
}

Pool2dGeometry pool2d_backward_geometry(const char* op, const at::Tensor& grad_output,
                                               c10::IntArrayRef input_size,
                                               c10::IntArrayRef kernel_size,
                                               c10::IntArrayRef stride, c10::IntArrayRef padding,
                                               c10::IntArrayRef dilation, bool ceil_mode,
                                               bool is_avg) {
  TORCH_CHECK(input_size.size() == 3 || input_size.size() == 4, op,
              ": input_size must have 3 or 4 elements, but got ", int_list_str(input_size));
  Pool2dGeometry g =
      pool2d_geometry(op, input_size, kernel_size, stride, padding, dilation, ceil_mode, is_avg);
  TORCH_CHECK(grad_output.dim() == (int64_t)input_size.size(), op, ": grad_output must be ",
              input_size.size(), "-D like the input, but got size ",
              int_list_str(grad_output.sizes()));
  std::vector<int64_t> expect = pool_output_sizes(g, g.C, g.OH, g.OW);
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expect), op,
              ": grad_output has the wrong size: expected ", int_list_str(expect), ", but got ",
              int_list_str(grad_output.sizes()));
  return g;
}

void check_indices(const char* op, const at::Tensor& values, const at::Tensor& indices,
                          const char* values_name) {
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, but got ",
              indices.scalar_type());
  TORCH_CHECK(indices.device() == values.device(), op, ": indices must be on the same device as ",
              values_name, ", but got indices on ", indices.device(), " and ", values_name, " on ",
              values.device());
  TORCH_CHECK(indices.sizes() == values.sizes(), op,
              ": indices must have the same shape as ", values_name, ", but got indices of size ",
              int_list_str(indices.sizes()), " and ", values_name, " of size ",
              int_list_str(values.sizes()));
}

void max_unpool2d_output_size(const char* op, const at::Tensor& input,
                                     c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                     c10::IntArrayRef padding,
                                     c10::OptionalArrayRef<int64_t> output_size, int64_t& OH,
                                     int64_t& OW) {
  int64_t kH, kW, sH, sW, pH, pW;
  read_pair(op, "kernel_size", kernel_size, kH, kW);
  if (stride.empty()) {
    sH = kH;
    sW = kW;
  } else {
    read_pair(op, "stride", stride, sH, sW);
  }
  read_pair(op, "padding", padding, pH, pW);
  TORCH_CHECK(kH > 0 && kW > 0, op, ": kernel_size must be greater than zero, but got kernel_size=(",
              kH, ", ", kW, ")");
  TORCH_CHECK(sH > 0 && sW > 0, op, ": stride must be greater than zero, but got stride=(", sH, ", ",
              sW, ")");
  TORCH_CHECK(pH >= 0 && pW >= 0, op, ": padding must be non-negative, but got padding=(", pH, ", ",
              pW, ")");
  check_pool_input_dims(op, input.sizes());
  const int64_t dH = (input.size(-2) - 1) * sH + kH - 2 * pH;
  const int64_t dW = (input.size(-1) - 1) * sW + kW - 2 * pW;
  if (!output_size.has_value()) {
    OH = dH;
    OW = dW;
  } else {
    c10::IntArrayRef os = output_size.value();
    if (os.size() == 4) os = os.slice(2);
    TORCH_CHECK_VALUE(os.size() == 2, op,
                      ": output_size should be a sequence of 2 or 4 elements, but got ",
                      int_list_str(output_size.value()));
    TORCH_CHECK_VALUE(dH - sH < os[0] && os[0] < dH + sH && dW - sW < os[1] && os[1] < dW + sW, op,
                      ": invalid output_size ", int_list_str(os), " (dim 0 must be between ",
                      dH - sH, " and ", dH + sH, ", dim 1 between ", dW - sW, " and ", dW + sW,
                      ", exclusive)");
    OH = os[0];
    OW = os[1];
  }
  TORCH_CHECK(OH > 0 && OW > 0, op, ": the output would be empty: output size (", OH, ", ", OW,
              ") from input size ", int_list_str(input.sizes()));
}

void check_same_device(const char* op, const at::Tensor& a, const char* an,
                              const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", an, " and ", bn,
              " must be on the same device, but got ", an, " on ", a.device(), " and ", bn,
              " on ", b.device());
}

void check_pool_dtype(const char* op, const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  if (t.is_cuda()) {
    TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
                ": ", name, " must be float16, bfloat16, float32 or float64 on CUDA, but got ", st);
  } else {
    TORCH_CHECK(st == at::kFloat || st == at::kDouble, op, ": ", name,
                " must be float32 or float64 on the CPU, but got ", st);
  }
}

}  // namespace cnnkernels
