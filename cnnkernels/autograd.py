"""One torch.autograd.Function per op family, calling torch.ops.cnnkernels.

Forwards take ctx (the classic style): with a separate setup_context, torch's
Function.apply binds default arguments through inspect.signature on every
call, which costs ~50 us per call.

What each saves for backward (less than torch.nn saves):
  MaxPool2dFunction   the int64 indices only (torch also keeps the input)
  MaxUnpool2dFunction the int64 indices only
  AvgPool2dFunction   nothing but the input's shape and layout flag
                      (torch keeps the input)
  BatchNormFunction   the input and the per-channel mean/invstd (and the
                      weight/bias parameters): 4 bytes per element in float32
                      with or without the fused activation, whose mask is
                      recomputed from the input (torch's BatchNorm2d + ReLU
                      keeps the input and the ReLU output: 8 bytes)
  DropoutFunction     a 2-element rng_state (seed, offset): 0 bytes per element
                      (torch keeps a 1-byte mask per element)
  ConvFunction,       the input and the weight (as torch does); nothing else:
  ConvTranspose-      no im2col buffer, no output
  Function
Double backward is not supported: asking for it raises a clear error.
"""

from __future__ import annotations

import torch

_ops = torch.ops.cnnkernels


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose backward raises: marks a gradient that cannot be
    differentiated again (create_graph=True through a cnnkernels op)."""

    @staticmethod
    def forward(ctx, name, grad, *deps):
        # deps: the tensors the gradient depends on; the output requires a
        # gradient when any of them does
        ctx.name = name
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"cnnkernels.{ctx.name}: double backward (differentiating the gradient "
            "again, e.g. backward with create_graph=True) is not supported"
        )


def _guard_double_backward(name, grad_in, *deps):
    """grad_in, made to raise a clear error if it is differentiated again
    (only when a tensor it depends on, deps, requires a gradient)."""
    if torch.is_grad_enabled() and any(d is not None and d.requires_grad for d in deps):
        return _NoDoubleBackward.apply(name, grad_in, *deps)
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


_ACTIVATIONS = {None: 0, "none": 0, "identity": 0, "relu": 1, "leaky_relu": 2}


def activation_code(activation):
    try:
        return _ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(
            "batch_norm: activation should be None, 'relu' or 'leaky_relu', "
            f"but got {activation!r}"
        ) from None


class BatchNormFunction(torch.autograd.Function):
    """Batch norm with a fused activation (0 none, 1 relu, 2 leaky_relu).
    Training (batch statistics) updates running_mean / running_var in place
    when given; backward recomputes the activation mask from the saved input."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                activation, negative_slope):
        y, mean, invstd = _ops.batch_norm_forward(
            x, weight, bias, running_mean, running_var, training, momentum, eps, activation,
            negative_slope,
        )
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.cfg = (training, activation, negative_slope)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[0], need[1] and weight is not None, need[2] and bias is not None]
        if not any(mask):
            return (None,) * 10
        training, activation, slope = ctx.cfg
        gx, gw, gb = _ops.batch_norm_backward(
            grad_out, x, weight, bias, mean, invstd, training, activation, slope, mask
        )
        if mask[0]:
            gx = _guard_double_backward("batch_norm", gx, grad_out)
        return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
                None, None, None, None, None, None, None)


class DropoutFunction(torch.autograd.Function):
    """Dropout (channelwise=True: dropout2d's one draw per (N, C) pair).
    Saves only the rng_state; backward regenerates the mask."""

    @staticmethod
    def forward(ctx, x, p, channelwise):
        cl = _is_channels_last(x)
        y, state = _ops.dropout_forward(x, p, channelwise, cl)
        ctx.save_for_backward(state)
        ctx.cfg = (p, channelwise, cl)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        (state,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad_in = _ops.dropout_backward(grad_out, state, *ctx.cfg)
        return _guard_double_backward("dropout", grad_in, grad_out), None, None


class DropoutInplaceFunction(torch.autograd.Function):
    """Dropout writing into its input (inplace=True); autograd's rules for
    in-place ops on leaves and views apply."""

    @staticmethod
    def forward(ctx, x, p, channelwise):
        cl = _is_channels_last(x)
        state = _ops.dropout_forward_(x, p, channelwise, cl)
        ctx.mark_dirty(x)
        ctx.save_for_backward(state)
        ctx.cfg = (p, channelwise, cl)
        return x

    backward = DropoutFunction.backward


class ConvFunction(torch.autograd.Function):
    """conv2d (cross-correlation). backward computes only the gradients asked
    for: input (data gradient), weight, bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, dilation, groups)
        return _ops.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        mask = [bool(m) for m in ctx.needs_input_grad[:3]]
        if not any(mask):
            return None, None, None, None, None, None, None
        gx, gw, gb = _ops.conv2d_backward(grad_out, x, weight, *ctx.args, mask)
        grads = [_guard_double_backward("conv2d", g, grad_out, x, weight) if m else None
                 for g, m in zip((gx, gw, gb), mask)]
        return (*grads, None, None, None, None)


class ConvTransposeFunction(torch.autograd.Function):
    """conv_transpose2d: the convolution's data gradient. Its backward runs the
    convolution forward (input gradient) and weight-gradient kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation):
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, output_padding, groups, dilation)
        return _ops.conv_transpose2d_forward(
            x, weight, bias, stride, padding, output_padding, groups, dilation
        )

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        mask = [bool(m) for m in ctx.needs_input_grad[:3]]
        if not any(mask):
            return (None,) * 8
        gx, gw, gb = _ops.conv_transpose2d_backward(grad_out, x, weight, *ctx.args, mask)
        grads = [_guard_double_backward("conv_transpose2d", g, grad_out, x, weight) if m else None
                 for g, m in zip((gx, gw, gb), mask)]
        return (*grads, None, None, None, None, None)


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm (with a fused activation) whose statistics
    span every process of a torch.distributed group.

    Forward: each process's per-channel mean / biased variance and count
    (batch_norm_stats) are all-gathered and merged (Chan's formula, float64),
    the running statistics are updated from the merged ones, and the kernel
    normalises with them (batch_norm_forward in its eval form).
    Backward: the local sums of act'(z) * grad and of that times x-hat
    (batch_norm_backward without the input gradient) are all-reduced, and
    batch_norm_backward_elemt forms the input gradient. The weight and bias
    gradients returned are this process's (as torch.nn.SyncBatchNorm's:
    DistributedDataParallel sums them). Saves what BatchNormFunction does."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, activation,
                negative_slope, process_group, world_size):
        import torch.distributed as dist

        C = x.shape[1]
        mean, var = _ops.batch_norm_stats(x)
        count = x.numel() // C if C > 0 else 0
        local = torch.cat([mean.double(), var.double(), mean.new_full((1,), count, dtype=torch.float64)])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=process_group)
        g = torch.stack(gathered)
        n = g[:, 2 * C:]
        total = int(n.sum().item())
        if total <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {total} over "
                f"{world_size} processes (this one's input size {list(x.shape)})"
            )
        g_mean = (n * g[:, :C]).sum(0) / total
        m2 = (n * (g[:, C:2 * C] + (g[:, :C] - g_mean) ** 2)).sum(0)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.copy_(running_mean.double() * (1.0 - momentum) + g_mean * momentum)
                running_var.copy_(running_var.double() * (1.0 - momentum)
                                  + (m2 / (total - 1)) * momentum)
        y, smean, sinvstd = _ops.batch_norm_forward(
            x, weight, bias, g_mean.to(mean.dtype), (m2 / total).to(mean.dtype), False, 0.0, eps,
            activation, negative_slope,
        )
        ctx.save_for_backward(x, weight, bias, smean, sinvstd)
        ctx.cfg = (activation, negative_slope, process_group, total)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        import torch.distributed as dist

        x, weight, bias, mean, invstd = ctx.saved_tensors
        activation, slope, process_group, total = ctx.cfg
        need = ctx.needs_input_grad
        C = x.shape[1]
        # local sums (gw = sum(gz * x-hat), gb = sum(gz)), needed for the input
        # gradient as well as for the parameters', kept in the statistics dtype
        # (float32 for half input: the all-reduced sums must not round to half)
        acc = mean.dtype
        w_acc = weight.to(acc) if weight is not None else mean.new_ones(C)
        b_acc = bias.to(acc) if bias is not None else None
        _, sdx, sd = _ops.batch_norm_backward(
            grad_out, x, w_acc, b_acc, mean, invstd, False, activation, slope, [False, True, True]
        )
        gx = None
        if need[0]:
            sums = torch.cat([sd, sdx])
            dist.all_reduce(sums, group=process_group)
            gx = _ops.batch_norm_backward_elemt(
                grad_out, x, weight, bias, mean, invstd, sums[:C], sums[C:], total, activation, slope
            )
            gx = _guard_double_backward("sync_batch_norm", gx, grad_out)
        gw = sdx.to(weight.dtype) if need[1] and weight is not None else None
        gb = sd.to(bias.dtype) if need[2] and bias is not None else None
        return (gx, gw, gb) + (None,) * 8
