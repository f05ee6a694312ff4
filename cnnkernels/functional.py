"""torch.nn.functional-style entry points with torch's signatures and defaults.

These only normalise arguments (ints to pairs, stride=None to the kernel
size); every check and all shape math happen in C++ (csrc/common/).

Autocast (torch.autocast), applied here so that autograd records the casts:
  CUDA  conv1d/conv2d/conv_transpose1d/conv_transpose2d run in the autocast
        dtype (float16 or bfloat16; float64 tensors are left alone), as
        torch's convolutions do. Pooling, batch norm and dropout run in their
        input's dtype (batch norm keeps float32 weights and statistics), as
        torch's do.
  CPU   the CPU kernels are float32/float64 only: under CPU autocast, float16
        and bfloat16 inputs of every cnnkernels op are cast to float32 and the
        op runs (and returns) float32. (torch would run conv in bfloat16.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as _forward_ad

import warnings

from .autograd import (
    AvgPool2dFunction,
    BatchNormFunction,
    ConvFunction,
    ConvTransposeFunction,
    DropoutFunction,
    DropoutInplaceFunction,
    MaxPool2dFunction,
    MaxUnpool2dFunction,
    _is_channels_last,
    activation_code,
)

__all__ = [
    "max_pool2d",
    "max_unpool2d",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_relu",
    "dropout",
    "dropout2d",
    "conv1d",
    "conv2d",
    "conv_transpose1d",
    "conv_transpose2d",
]

_ops = torch.ops.cnnkernels


def _int_list(v, name, op):
    """An int, or a sequence of ints, as a list (C++ checks the length)."""
    if type(v) is int:
        return [v]
    if isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be an int or a tuple of ints, but got {v!r}")
    if isinstance(v, int) or isinstance(v, torch.SymInt):
        return [v]
    if isinstance(v, Sequence) and not isinstance(v, str):
        out = list(v)
        for e in out:
            if not isinstance(e, (int, torch.SymInt)) or isinstance(e, bool):
                raise TypeError(f"{op}: {name} must be an int or a tuple of ints, but got {v!r}")
        return out
    raise TypeError(f"{op}: {name} must be an int or a tuple of ints, but got {v!r}")


def _stride_list(stride, op):
    # torch.nn.functional: stride None (or empty) means stride = kernel_size.
    if stride is None:
        return []
    return _int_list(stride, "stride", op)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _autocast(lower, *tensors):
    """The tensors as the autocast rule above casts them (unchanged outside
    autocast). lower: the op runs in the autocast dtype on CUDA (conv)."""
    t0 = tensors[0]  # (is_cpu / is_cuda: cheaper than device.type, on every call)
    dev = "cpu" if t0.is_cpu else "cuda" if t0.is_cuda else None
    if dev is None or not torch.is_autocast_enabled(dev):
        return tensors
    if dev == "cpu":
        return tuple(t.float() if t is not None and t.dtype in _LOW_PRECISION else t
                     for t in tensors)
    if not lower:
        return tensors
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if t is not None and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def _needs_grad(*tensors):
    """Whether autograd records a call on these tensors (None ones ignored).
    Where it does not, the functions below call the op directly instead of
    through its autograd.Function: the same result, without the Function's
    Python bookkeeping, which after a large parallel op (caches cold) cost
    20-50 us a call, 10-15 % of a 0.4 ms pool."""
    if torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0:
        return True  # (jvp / vmap / dual tensors: the Function decides, as before)
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def max_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode=False,
    return_indices=False,
):
    """Like torch.nn.functional.max_pool2d; indices (int64, flattened per
    (N, C) plane) match torch's exactly."""
    op = "max_pool2d"
    (input,) = _autocast(False, input)
    args = (
        _int_list(kernel_size, "kernel_size", op),
        _stride_list(stride, op),
        _int_list(padding, "padding", op),
        _int_list(dilation, "dilation", op),
        bool(ceil_mode),
    )
    if not return_indices and not _needs_grad(input):
        return _ops.max_pool2d_forward(input, *args)  # values only: no index traffic
    out, indices = MaxPool2dFunction.apply(input, *args)
    return (out, indices) if return_indices else out


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Like torch.nn.functional.max_unpool2d."""
    op = "max_unpool2d"
    (input,) = _autocast(False, input)
    if output_size is not None:
        output_size = _int_list(output_size, "output_size", op)
    args = (
        _int_list(kernel_size, "kernel_size", op),
        _stride_list(stride, op),
        _int_list(padding, "padding", op),
        output_size,
    )
    if not _needs_grad(input):
        return _ops.max_unpool2d_forward(input, indices, *args)
    return MaxUnpool2dFunction.apply(input, indices, *args)


def avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    """Like torch.nn.functional.avg_pool2d."""
    op = "avg_pool2d"
    if divisor_override is not None and (
        isinstance(divisor_override, bool) or not isinstance(divisor_override, (int, torch.SymInt))
    ):
        raise TypeError(f"{op}: divisor_override must be an int or None, but got {divisor_override!r}")
    (input,) = _autocast(False, input)
    args = (
        _int_list(kernel_size, "kernel_size", op),
        _stride_list(stride, op),
        _int_list(padding, "padding", op),
        bool(ceil_mode),
        bool(count_include_pad),
        divisor_override,
    )
    if not _needs_grad(input):
        return _ops.avg_pool2d_forward(input, *args)
    return AvgPool2dFunction.apply(input, *args)


def _verify_batch_size(size):
    values = size[0]
    for s in size[2:]:
        values *= s
    if values == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    activation=None,
    negative_slope=0.01,
):
    """torch.nn.functional.batch_norm, with an optional fused activation:
    None, 'relu' or 'leaky_relu' (with negative_slope)."""
    act = activation_code(activation)
    if training:
        _verify_batch_size(input.size())
    input, weight, bias = _autocast(False, input, weight, bias)  # running stats: in place
    args = (running_mean, running_var, bool(training),
            float(momentum if momentum is not None else 0.0), float(eps), act, float(negative_slope))
    if not _needs_grad(input, weight, bias):
        return _ops.batch_norm_forward(input, weight, bias, *args)[0]
    return BatchNormFunction.apply(input, weight, bias, *args)


def batch_norm_relu(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
    eps=1e-5,
):
    """relu(batch_norm(...)) in one fused pass."""
    return batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps, activation="relu"
    )


def _check_p(p):
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _dropout(input, p, training, inplace, channelwise):
    if not training or p == 0 or input.numel() == 0:
        return input  # torch returns the input itself here
    (cast,) = _autocast(False, input)
    if cast is not input:  # CPU autocast of a low-precision input: runs in float32
        y = DropoutFunction.apply(cast, float(p), channelwise)
        return input.copy_(y) if inplace else y
    if not inplace and not _needs_grad(input):
        return _ops.dropout_forward(input, float(p), channelwise, _is_channels_last(input))[0]
    fn = DropoutInplaceFunction if inplace else DropoutFunction
    return fn.apply(input, float(p), channelwise)


def dropout(input, p=0.5, training=True, inplace=False):
    """torch.nn.functional.dropout: zero each element with probability p and
    scale the rest by 1 / (1 - p)."""
    _check_p(p)
    return _dropout(input, p, training, inplace, False)


def dropout2d(input, p=0.5, training=True, inplace=False):
    """torch.nn.functional.dropout2d: zero whole channels (one draw per
    (dim 0, dim 1) pair). As in torch, a 3-D input is taken as (N, C, L)."""
    _check_p(p)
    dim = input.dim()
    if dim not in (3, 4):
        warnings.warn(
            f"dropout2d: got a {dim}-D input; dropout2d is meant for 3-D or 4-D input "
            "(torch deprecates other ranks); zeroing whole (dim 0, dim 1) slices",
            stacklevel=2,
        )
    if dim == 3:
        warnings.warn(
            "dropout2d: a 3-D input is taken as (N, C, L) with channel-wise 1-D dropout, "
            "as torch.nn.functional.dropout2d does today",
            stacklevel=2,
        )
    return _dropout(input, p, training, inplace, True)


def _conv_padding(padding, weight, dilation, stride, nd, op):
    """torch's padding argument (int, tuple, 'same', 'valid') as a list of
    nd symmetric values or, for 'same' with an even dilated kernel, of 2*nd
    (before, after) values with the extra one after."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0] * nd
        if padding != "same":
            raise RuntimeError(f"Invalid padding string: '{padding}'")
        if any(s != 1 for s in stride):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        before, after = [], []
        for d, k in zip(dilation, weight.shape[2:]):
            total = d * (k - 1)
            before.append(total // 2)
            after.append(total - total // 2)
        if before == after:
            return before
        return [v for pair in zip(before, after) for v in pair]
    return _int_list(padding, "padding", op)


def _ntuple(v, n, name, op):
    v = _int_list(v, name, op)
    return v * n if len(v) == 1 else v


def _batched(input, nd, op):
    """(input with a batch dimension, whether one was added)."""
    if input.dim() == nd + 2:
        return input, False
    if input.dim() == nd + 1:
        return input.unsqueeze(0), True
    raise RuntimeError(
        f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to {op}, "
        f"but got input of size: {list(input.shape)}"
    )


def _conv(x, weight, bias, *args):
    if not _needs_grad(x, weight, bias):
        return _ops.conv2d_forward(x, weight, bias, *args)
    return ConvFunction.apply(x, weight, bias, *args)


def _conv_transpose(x, weight, bias, *args):
    if not _needs_grad(x, weight, bias):
        return _ops.conv_transpose2d_forward(x, weight, bias, *args)
    return ConvTransposeFunction.apply(x, weight, bias, *args)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d (cross-correlation), with padding as an int,
    a pair, 'same' or 'valid'."""
    stride = _ntuple(stride, 2, "stride", "conv2d")
    dilation = _ntuple(dilation, 2, "dilation", "conv2d")
    padding = _conv_padding(padding, weight, dilation, stride, 2, "conv2d")
    input, weight, bias = _autocast(True, input, weight, bias)
    x, added = _batched(input, 2, "conv2d")
    y = _conv(x, weight, bias, stride, padding, dilation, groups)
    return y.squeeze(0) if added else y


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv1d, run as a 2-D convolution over (1, L)."""
    stride = _ntuple(stride, 1, "stride", "conv1d")
    dilation = _ntuple(dilation, 1, "dilation", "conv1d")
    if weight.dim() != 3:
        raise RuntimeError(
            f"conv1d: expected a 3-D weight (out_channels, in_channels/groups, kernel), "
            f"but got weight of size {list(weight.shape)}"
        )
    padding = _conv_padding(padding, weight, dilation, stride, 1, "conv1d")
    pad2 = [0, padding[0]] if len(padding) == 1 else [0, 0, padding[0], padding[1]]
    input, weight, bias = _autocast(True, input, weight, bias)
    x, added = _batched(input, 1, "conv1d")
    y = _conv(
        x.unsqueeze(2), weight.unsqueeze(2), bias, [1, stride[0]], pad2, [1, dilation[0]], groups
    ).squeeze(2)
    return y.squeeze(0) if added else y


def conv_transpose2d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """torch.nn.functional.conv_transpose2d."""
    op = "conv_transpose2d"
    args = [_ntuple(v, 2, name, op) for v, name in
            ((stride, "stride"), (padding, "padding"), (output_padding, "output_padding"))]
    input, weight, bias = _autocast(True, input, weight, bias)
    x, added = _batched(input, 2, op)
    y = _conv_transpose(x, weight, bias, *args, groups, _ntuple(dilation, 2, "dilation", op))
    return y.squeeze(0) if added else y


def conv_transpose1d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """torch.nn.functional.conv_transpose1d, run as a 2-D one over (1, L)."""
    op = "conv_transpose1d"
    if weight.dim() != 3:
        raise RuntimeError(
            f"{op}: expected a 3-D weight (in_channels, out_channels/groups, kernel), "
            f"but got weight of size {list(weight.shape)}"
        )
    s, p, o, d = (_ntuple(v, 1, name, op)[0] for v, name in (
        (stride, "stride"), (padding, "padding"), (output_padding, "output_padding"),
        (dilation, "dilation")))
    input, weight, bias = _autocast(True, input, weight, bias)
    x, added = _batched(input, 1, op)
    y = _conv_transpose(
        x.unsqueeze(2), weight.unsqueeze(2), bias, [1, s], [0, p], [0, o], groups, [1, d]
    ).squeeze(2)
    return y.squeeze(0) if added else y
