"""Fake (meta) kernels for every op in torch.ops.cnnkernels.

They let torch.compile trace the ops and torch.library.opcheck check them.
Argument checks live in C++ (csrc/common/); a fake kernel only needs the
output size, which follows torch's pooling formula (csrc/common/pool.h), and
the output memory format, which follows the input's suggested format.
opcheck compares the two for every test case.
"""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

_lib = "cnnkernels::"


def _pair(v, name):
    v = list(v)
    if len(v) == 1:
        return v[0], v[0]
    torch._check(len(v) == 2, lambda: f"{name} must have one or two elements, got {v}")
    return v[0], v[1]


def _out_size(i, k, pad, s, d, ceil_mode):
    num = i + 2 * pad - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= i + pad:
        out = out - 1
    return out


def _fmt(x):
    return suggest_memory_format(x) if x.dim() == 4 else torch.contiguous_format


def _pool_out_shape(x, kernel_size, stride, padding, dilation, ceil_mode):
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride") if len(stride) else (kh, kw)
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    oh = _out_size(x.shape[-2], kh, ph, sh, dh, ceil_mode)
    ow = _out_size(x.shape[-1], kw, pw, sw, dw, ceil_mode)
    return (*x.shape[:-2], oh, ow)


def _empty(shape, like, fmt, dtype=None):
    return torch.empty(
        shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt
    )


@torch.library.register_fake(_lib + "max_pool2d_forward")
def _max_pool2d_forward_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_out_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _empty(shape, x, _fmt(x))


@torch.library.register_fake(_lib + "max_pool2d_with_indices_forward")
def _max_pool2d_with_indices_forward_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_out_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    fmt = _fmt(x)
    return _empty(shape, x, fmt), _empty(shape, x, fmt, torch.int64)


@torch.library.register_fake(_lib + "max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, indices, input_size, *args):
    return _empty(list(input_size), grad_output, _fmt(indices))


@torch.library.register_fake(_lib + "max_unpool2d_forward")
def _max_unpool2d_forward_fake(x, indices, kernel_size, stride, padding, output_size):
    if output_size is not None:
        oh, ow = list(output_size)[-2:]
    else:
        kh, kw = _pair(kernel_size, "kernel_size")
        sh, sw = _pair(stride, "stride") if len(stride) else (kh, kw)
        ph, pw = _pair(padding, "padding")
        oh = (x.shape[-2] - 1) * sh + kh - 2 * ph
        ow = (x.shape[-1] - 1) * sw + kw - 2 * pw
    return _empty((*x.shape[:-2], oh, ow), x, _fmt(x))


@torch.library.register_fake(_lib + "max_unpool2d_backward")
def _max_unpool2d_backward_fake(grad_output, indices):
    return _empty(indices.shape, grad_output, _fmt(indices))


@torch.library.register_fake(_lib + "avg_pool2d_forward")
def _avg_pool2d_forward_fake(
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    shape = _pool_out_shape(x, kernel_size, stride, padding, [1, 1], ceil_mode)
    return _empty(shape, x, _fmt(x))


@torch.library.register_fake(_lib + "avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input_size, *args):
    channels_last = args[-1]
    fmt = torch.channels_last if channels_last and len(input_size) == 4 else torch.contiguous_format
    return _empty(list(input_size), grad_output, fmt)


def _bn_fmt(x):
    """The layout batch_norm's output takes (csrc/common/batch_norm.cpp)."""
    spatial = 1
    for s in x.shape[2:]:
        spatial *= s
    if spatial > 1 and not x.is_contiguous():
        if x.dim() == 4 and suggest_memory_format(x) == torch.channels_last:
            return torch.channels_last
        if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
    return torch.contiguous_format


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake(_lib + "batch_norm_forward")
def _batch_norm_forward_fake(x, weight, bias, running_mean, running_var, training, momentum,
                             eps, activation, negative_slope):
    C = x.shape[1]
    stat = _acc_dtype(x.dtype)
    return (_empty(x.shape, x, _bn_fmt(x)), x.new_empty((C,), dtype=stat),
            x.new_empty((C,), dtype=stat))


@torch.library.register_fake(_lib + "batch_norm_backward")
def _batch_norm_backward_fake(grad_output, x, weight, bias, save_mean, save_invstd, training,
                              activation, negative_slope, output_mask):
    C = x.shape[1]
    pdtype = weight.dtype if weight is not None else x.dtype
    gx = _empty(x.shape, x, _bn_fmt(x)) if output_mask[0] else x.new_empty((0,))
    gw = x.new_empty((C,) if output_mask[1] else (0,), dtype=pdtype)
    gb = x.new_empty((C,) if output_mask[2] else (0,), dtype=pdtype)
    return gx, gw, gb


@torch.library.register_fake(_lib + "batch_norm_stats")
def _batch_norm_stats_fake(x):
    C = x.shape[1]
    stat = _acc_dtype(x.dtype)
    return x.new_empty((C,), dtype=stat), x.new_empty((C,), dtype=stat)


@torch.library.register_fake(_lib + "batch_norm_backward_elemt")
def _batch_norm_backward_elemt_fake(grad_output, x, weight, bias, mean, invstd, sum_dy,
                                    sum_dy_xhat, count, activation, negative_slope):
    return _empty(x.shape, x, _bn_fmt(x))


def _drop_fmt(x, channels_last):
    return torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format


@torch.library.register_fake(_lib + "dropout_forward")
def _dropout_forward_fake(x, p, channelwise, channels_last):
    return _empty(x.shape, x, _drop_fmt(x, channels_last)), x.new_empty((2,), dtype=torch.int64)


@torch.library.register_fake(_lib + "dropout_forward_")
def _dropout_forward_inplace_fake(x, p, channelwise, channels_last):
    return x.new_empty((2,), dtype=torch.int64)


@torch.library.register_fake(_lib + "dropout_backward")
def _dropout_backward_fake(grad_output, rng_state, p, channelwise, channels_last):
    return _empty(grad_output.shape, grad_output, _drop_fmt(grad_output, channels_last))


def _conv_fmt(x, weight):
    """The layout of conv outputs and input gradients (csrc/common/conv.cpp):
    channels_last when the input or the weight suggests it."""
    for t in (x, weight):
        if t.dim() == 4 and suggest_memory_format(t) == torch.channels_last:
            return torch.channels_last
    return torch.contiguous_format


def _conv_out_size(i, k, s, d, before, after):
    return (i + before + after - d * (k - 1) - 1) // s + 1


def _conv_pads(padding):
    p = list(padding)
    if len(p) == 4:
        return p
    ph, pw = _pair(p, "padding")
    return [ph, ph, pw, pw]


@torch.library.register_fake(_lib + "conv2d_forward")
def _conv2d_forward_fake(x, weight, bias, stride, padding, dilation, groups):
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pb, pl, pr = _conv_pads(padding)
    kh, kw = weight.shape[2], weight.shape[3]
    shape = (x.shape[0], weight.shape[0], _conv_out_size(x.shape[2], kh, sh, dh, pt, pb),
             _conv_out_size(x.shape[3], kw, sw, dw, pl, pr))
    return _empty(shape, x, _conv_fmt(x, weight))


def _conv_grads_fake(x, weight, output_mask, bias_len):
    gx = _empty(x.shape, x, _conv_fmt(x, weight)) if output_mask[0] else x.new_empty((0,))
    gw = x.new_empty(weight.shape if output_mask[1] else (0,))
    gb = x.new_empty((bias_len,) if output_mask[2] else (0,))
    return gx, gw, gb


@torch.library.register_fake(_lib + "conv2d_backward")
def _conv2d_backward_fake(grad_output, x, weight, stride, padding, dilation, groups, output_mask):
    return _conv_grads_fake(x, weight, output_mask, weight.shape[0])


@torch.library.register_fake(_lib + "conv_transpose2d_forward")
def _conv_transpose2d_forward_fake(x, weight, bias, stride, padding, output_padding, groups,
                                   dilation):
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    ph, pw = _pair(padding, "padding")
    oph, opw = _pair(output_padding, "output_padding")
    kh, kw = weight.shape[2], weight.shape[3]
    shape = (x.shape[0], weight.shape[1] * groups,
             (x.shape[2] - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1,
             (x.shape[3] - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1)
    return _empty(shape, x, _conv_fmt(x, weight))


@torch.library.register_fake(_lib + "conv_transpose2d_backward")
def _conv_transpose2d_backward_fake(grad_output, x, weight, stride, padding, output_padding,
                                    groups, dilation, output_mask):
    return _conv_grads_fake(x, weight, output_mask, weight.shape[1] * groups)
