// Definitions of the shared convolution checks and shape math (see conv.h).
#include "conv.h"

#include "batch_norm.h"  // check_float_dtype
#include "pool.h"        // int_list_str, read_pair

namespace cnnkernels {

namespace {

void check_tensors(const char* op, const at::Tensor& input, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& bias, int64_t bias_len, bool cpu) {
  TORCH_CHECK(input.dim() == 4, op, ": expected a 4-D (N, C, H, W) input, but got a ",
              input.dim(), "-D input of size ", int_list_str(input.sizes()));
  TORCH_CHECK(weight.dim() == 4, op, ": expected a 4-D weight, but got a ", weight.dim(),
              "-D weight of size ", int_list_str(weight.sizes()));
  check_float_dtype(op, input, "input", cpu);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op,
              ": weight should have the input's dtype ", input.scalar_type(), ", but got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), op, ": weight should be on the input's device ",
              input.device(), ", but is on ", weight.device());
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == bias_len, op,
                ": bias should be a 1-D tensor of ", bias_len,
                " elements (the output channels), but got a tensor of shape ",
                int_list_str(b.sizes()));
    TORCH_CHECK(b.scalar_type() == input.scalar_type(), op,
                ": bias should have the input's dtype ", input.scalar_type(), ", but got ",
                b.scalar_type());
    TORCH_CHECK(b.device() == input.device(), op, ": bias should be on the input's device ",
                input.device(), ", but is on ", b.device());
  }
}

void read_common(const char* op, ConvGeometry& g, c10::IntArrayRef stride,
                 c10::IntArrayRef dilation, int64_t groups) {
  read_pair(op, "stride", stride, g.sh, g.sw);
  read_pair(op, "dilation", dilation, g.dh, g.dw);
  TORCH_CHECK(g.sh > 0 && g.sw > 0, op, ": stride should be positive, but got stride=",
              int_list_str(stride));
  TORCH_CHECK(g.dh > 0 && g.dw > 0, op, ": dilation should be positive, but got dilation=",
              int_list_str(dilation));
  TORCH_CHECK(groups > 0, op, ": groups should be positive, but got groups=", groups);
  g.G = groups;
}

}  // namespace

ConvGeometry conv2d_geometry(const char* op, const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation,
                             int64_t groups, bool cpu) {
  check_tensors(op, input, weight, bias, weight.dim() == 4 ? weight.size(0) : 0, cpu);
  ConvGeometry g;
  read_common(op, g, stride, dilation, groups);
  int64_t pb = 0, pr = 0;
  if (padding.size() == 4) {
    g.pt = padding[0], pb = padding[1], g.pl = padding[2], pr = padding[3];
  } else {
    read_pair(op, "padding", padding, g.pt, g.pl);
    pb = g.pt, pr = g.pl;
  }
  TORCH_CHECK(g.pt >= 0 && g.pl >= 0 && pb >= 0 && pr >= 0, op,
              ": padding should be non-negative, but got padding=", int_list_str(padding));
  g.N = input.size(0), g.C = input.size(1), g.H = input.size(2), g.W = input.size(3);
  g.OC = weight.size(0), g.KH = weight.size(2), g.KW = weight.size(3);
  TORCH_CHECK(g.KH > 0 && g.KW > 0, op, ": weight should have a non-empty kernel, but got weight of size ",
              int_list_str(weight.sizes()));
  TORCH_CHECK(g.OC % groups == 0, op, ": groups=", groups,
              " should divide the output channels (weight dimension 0), but got weight of size ",
              int_list_str(weight.sizes()));
  TORCH_CHECK(g.OC > 0, op, ": weight should have at least one output channel, but got weight of size ",
              int_list_str(weight.sizes()));
  TORCH_CHECK(g.C == weight.size(1) * groups, op, ": with groups=", groups, " and weight of size ",
              int_list_str(weight.sizes()), ", the input should have ", weight.size(1) * groups,
              " channels, but got input of size ", int_list_str(input.sizes()));
  TORCH_CHECK(g.N == 0 || (g.H > 0 && g.W > 0), op,
              ": only a zero batch may have an empty image (as in torch), but got input of size ",
              int_list_str(input.sizes()));
  const int64_t eh = g.dh * (g.KH - 1) + 1, ew = g.dw * (g.KW - 1) + 1;
  const int64_t hp = g.H + g.pt + pb, wp = g.W + g.pl + pr;
  TORCH_CHECK(hp >= eh && wp >= ew, op, ": the padded input (", hp, " x ", wp,
              ") is smaller than the dilated kernel (", eh, " x ", ew,
              "): the output would be empty; input of size ", int_list_str(input.sizes()),
              ", padding=", int_list_str(padding));
  g.OH = (hp - eh) / g.sh + 1;
  g.OW = (wp - ew) / g.sw + 1;
  return g;
}

ConvGeometry conv_transpose2d_geometry(const char* op, const at::Tensor& input,
                                       const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding,
                                       c10::IntArrayRef output_padding, int64_t groups,
                                       c10::IntArrayRef dilation, bool cpu) {
  const int64_t ocg = weight.dim() == 4 ? weight.size(1) : 0;
  check_tensors(op, input, weight, bias, ocg * (groups > 0 ? groups : 1), cpu);
  ConvGeometry g;
  read_common(op, g, stride, dilation, groups);
  read_pair(op, "padding", padding, g.pt, g.pl);
  TORCH_CHECK(g.pt >= 0 && g.pl >= 0, op, ": padding should be non-negative, but got padding=",
              int_list_str(padding));
  int64_t oph = 0, opw = 0;
  read_pair(op, "output_padding", output_padding, oph, opw);
  TORCH_CHECK(oph >= 0 && opw >= 0, op,
              ": output_padding should be non-negative, but got output_padding=",
              int_list_str(output_padding));
  TORCH_CHECK((oph < g.sh || oph < g.dh) && (opw < g.sw || opw < g.dw), op,
              ": output_padding should be smaller than stride or dilation, but got output_padding=",
              int_list_str(output_padding), ", stride=", int_list_str(stride),
              ", dilation=", int_list_str(dilation));
  // the convolution's output is this op's input
  g.N = input.size(0), g.OC = input.size(1), g.OH = input.size(2), g.OW = input.size(3);
  g.KH = weight.size(2), g.KW = weight.size(3);
  TORCH_CHECK(g.KH > 0 && g.KW > 0, op, ": weight should have a non-empty kernel, but got weight of size ",
              int_list_str(weight.sizes()));
  TORCH_CHECK(weight.size(0) == g.OC, op, ": weight dimension 0 (", weight.size(0),
              ") should equal the input's channels, but got input of size ",
              int_list_str(input.sizes()), " and weight of size ", int_list_str(weight.sizes()));
  TORCH_CHECK(g.OC % groups == 0, op, ": groups=", groups,
              " should divide the input channels, but got input of size ",
              int_list_str(input.sizes()));
  TORCH_CHECK(ocg > 0, op, ": weight should have at least one output channel, but got weight of size ",
              int_list_str(weight.sizes()));
  TORCH_CHECK(g.OH > 0 && g.OW > 0, op, ": the input should have a non-empty image, but got input of size ",
              int_list_str(input.sizes()));
  g.C = ocg * groups;
  g.H = (g.OH - 1) * g.sh - 2 * g.pt + g.dh * (g.KH - 1) + oph + 1;
  g.W = (g.OW - 1) * g.sw - 2 * g.pl + g.dw * (g.KW - 1) + opw + 1;
  TORCH_CHECK(g.H > 0 && g.W > 0, op, ": the output would be empty: output size (", g.H, " x ",
              g.W, ") computed from input of size ", int_list_str(input.sizes()), ", stride=",
              int_list_str(stride), ", padding=", int_list_str(padding),
              ", output_padding=", int_list_str(output_padding), " is too small");
  return g;
}

void check_conv_grad(const char* op, const at::Tensor& grad, const char* name,
                     c10::IntArrayRef expected_sizes, const at::Tensor& ref) {
  TORCH_CHECK(grad.sizes() == expected_sizes, op, ": ", name, " should have size ",
              int_list_str(expected_sizes), ", but got ", int_list_str(grad.sizes()));
  TORCH_CHECK(grad.scalar_type() == ref.scalar_type(), op, ": ", name,
              " should have the input's dtype ", ref.scalar_type(), ", but got ",
              grad.scalar_type());
  TORCH_CHECK(grad.device() == ref.device(), op, ": ", name, " should be on the input's device ",
              ref.device(), ", but is on ", grad.device());
}

at::MemoryFormat conv_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  if (input.dim() == 4 && input.suggest_memory_format() == cl) return cl;
  if (weight.dim() == 4 && weight.suggest_memory_format() == cl) return cl;
  return at::MemoryFormat::Contiguous;
}

}  // namespace cnnkernels
