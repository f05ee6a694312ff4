"""One torch.autograd.Function per op family, calling torch.ops.cnnkernels.

Forwards take ctx (the classic style): with a separate setup_context, torch's
Function.apply binds default arguments through inspect.signature on every
call, which costs ~50 us per call.

What each saves for backward (less than torch.nn saves):
  MaxPool2dFunction   the int64 indices only (torch also keeps the input)
  MaxUnpool2dFunction the int64 indices only
  AvgPool2dFunction   nothing but the input's shape and layout flag
                      (torch keeps the input)
Double backward is not supported: asking for it raises a clear error.
"""

from __future__ import annotations

import torch

_ops = torch.ops.cnnkernels


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose backward raises: marks a gradient that cannot be
    differentiated again (create_graph=True through a cnnkernels op)."""

    @staticmethod
    def forward(ctx, name, grad):
        ctx.name = name
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"cnnkernels.{ctx.name}: double backward (differentiating the gradient "
            "again, e.g. backward with create_graph=True) is not supported"
        )


def _guard_double_backward(name, grad_in, grad_out):
    if torch.is_grad_enabled() and grad_out.requires_grad:
        return _NoDoubleBackward.apply(name, grad_in)
    return grad_in


def _is_channels_last(t):
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class MaxPool2dFunction(torch.autograd.Function):
    """max_pool2d returning (values, int64 indices); backward scatters the
    gradient through the indices."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        out, indices = _ops.max_pool2d_with_indices_forward(
            x, kernel_size, stride, padding, dilation, ceil_mode
        )
        ctx.mark_non_differentiable(indices)
        # No zero-filled gradient for the indices output (6.4 MB of writes at
        # 16x64x56x56 that the backward never reads).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(indices)
        ctx.args = (list(x.shape), kernel_size, stride, padding, dilation, ceil_mode)
        return out, indices

    @staticmethod
    def backward(ctx, grad_out, _grad_indices):
        (indices,) = ctx.saved_tensors
        grad_in = None
        if ctx.needs_input_grad[0] and grad_out is not None:
            grad_in = _ops.max_pool2d_backward(grad_out, indices, *ctx.args)
            grad_in = _guard_double_backward("max_pool2d", grad_in, grad_out)
        return grad_in, None, None, None, None, None


class MaxUnpool2dFunction(torch.autograd.Function):
    """max_unpool2d: forward scatters the values to their indices; backward
    gathers the gradient from them."""

    @staticmethod
    def forward(ctx, x, indices, kernel_size, stride, padding, output_size):
        ctx.save_for_backward(indices)
        return _ops.max_unpool2d_forward(x, indices, kernel_size, stride, padding, output_size)

    @staticmethod
    def backward(ctx, grad_out):
        (indices,) = ctx.saved_tensors
        grad_in = None
        if ctx.needs_input_grad[0]:
            grad_in = _ops.max_unpool2d_backward(grad_out, indices)
            grad_in = _guard_double_backward("max_unpool2d", grad_in, grad_out)
        return grad_in, None, None, None, None, None


class AvgPool2dFunction(torch.autograd.Function):
    """avg_pool2d; backward needs only the input's shape and layout."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        output = _ops.avg_pool2d_forward(
            x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
        ctx.args = (
            list(x.shape),
            kernel_size,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
            divisor_override,
            _is_channels_last(output),
        )
        return output

    @staticmethod
    def backward(ctx, grad_out):
        grad_in = None
        if ctx.needs_input_grad[0]:
            grad_in = _ops.avg_pool2d_backward(grad_out, *ctx.args)
            grad_in = _guard_double_backward("avg_pool2d", grad_in, grad_out)
        return grad_in, None, None, None, None, None, None
