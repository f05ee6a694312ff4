"""Every argument check: bad input gets a clear error naming the op, the
argument and the value (never a crash or silent garbage)."""

import pytest
import torch
import torch.nn.functional as F

import cnnkernels.functional as CF
from conftest import HAS_CUDA

ops = torch.ops.cnnkernels
x4 = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: CF.max_pool2d(torch.randn(8, 8), 2), RuntimeError,
         r"max_pool2d: expected a 3-D \(C, H, W\) or 4-D \(N, C, H, W\) input, but got a 2-D input"),
        (lambda: CF.max_pool2d(torch.randn(1, 1, 1, 8, 8), 2), RuntimeError, r"max_pool2d: .* got a 5-D input"),
        (lambda: CF.max_pool2d(torch.randn(2, 0, 8, 8), 2), RuntimeError,
         r"max_pool2d: expected an input with non-zero channel and spatial sizes"),
        (lambda: CF.max_pool2d(x4, 0), RuntimeError,
         r"max_pool2d: kernel_size must be greater than zero, but got kernel_size=\(0, 0\)"),
        (lambda: CF.max_pool2d(x4, 2, 0), RuntimeError,
         r"max_pool2d: stride must be greater than zero, but got stride=\(0, 0\)"),
        (lambda: CF.max_pool2d(x4, 2, 1, 0, 0), RuntimeError,
         r"max_pool2d: dilation must be greater than zero, but got dilation=\(0, 0\)"),
        (lambda: CF.max_pool2d(x4, 3, 1, -1), RuntimeError,
         r"max_pool2d: padding must be non-negative, but got padding=\(-1, -1\)"),
        (lambda: CF.max_pool2d(x4, 3, 1, 2), RuntimeError,
         r"max_pool2d: padding should be at most half of the effective kernel size, but got "
         r"padding=\(2, 2\), kernel_size=\(3, 3\) and dilation=\(1, 1\)"),
        (lambda: CF.max_pool2d(x4, (2, 2, 2)), RuntimeError,
         r"max_pool2d: kernel_size must be a single int or a tuple of two ints, but got \[2, 2, 2\]"),
        (lambda: CF.max_pool2d(x4, 2, (1, 1, 1)), RuntimeError, r"max_pool2d: stride must be a single int"),
        (lambda: CF.max_pool2d(x4, 9), RuntimeError,
         r"max_pool2d: the output would be smaller than 1x1: input size \[2, 3, 8, 8\] gives output size \(0x0\)"),
        (lambda: CF.max_pool2d(x4, "3"), TypeError, r"max_pool2d: kernel_size must be an int or a tuple of ints"),
        (lambda: CF.max_pool2d(x4, 2.5), TypeError, r"max_pool2d: kernel_size must be an int"),
        (lambda: CF.max_pool2d(x4.int(), 2), RuntimeError,
         r"max_pool2d: input must be float32 or float64 on the CPU, but got Int"),
        (lambda: CF.max_pool2d(x4.half(), 2), RuntimeError,
         r"max_pool2d: input must be float32 or float64 on the CPU, but got Half"),
        (lambda: CF.avg_pool2d(x4, 3, 1, 2), RuntimeError,
         r"avg_pool2d: padding should be at most half of kernel_size, but got padding=\(2, 2\) and "
         r"kernel_size=\(3, 3\)"),
        (lambda: CF.avg_pool2d(x4, 2, divisor_override=0), RuntimeError,
         r"avg_pool2d: divisor_override must be non-zero, but got 0"),
        (lambda: CF.avg_pool2d(x4, 2, divisor_override=1.5), TypeError,
         r"avg_pool2d: divisor_override must be an int or None"),
        (lambda: CF.avg_pool2d(x4, -1), RuntimeError, r"avg_pool2d: kernel_size must be greater than zero"),
        (lambda: CF.avg_pool2d(torch.randn(3, 3), 2), RuntimeError, r"avg_pool2d: expected a 3-D"),
        (lambda: CF.avg_pool2d(x4.long(), 2), RuntimeError, r"avg_pool2d: input must be float32 or float64"),
    ],
)
def test_pool_argument_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _pooled():
    return F.max_pool2d(x4, 2, return_indices=True)


def test_unpool_errors():
    y, i = _pooled()
    bad = i.clone()
    bad[0, 0, 0, 0] = 64
    with pytest.raises(RuntimeError, match=r"max_unpool2d: found an invalid index 64 in indices "
                                           r"\(each output plane has 8x8 = 64 elements\)"):
        CF.max_unpool2d(y, bad, 2)
    bad[0, 0, 0, 0] = -1
    with pytest.raises(RuntimeError, match=r"max_unpool2d: found an invalid index -1"):
        CF.max_unpool2d(y, bad, 2)
    with pytest.raises(RuntimeError, match=r"max_unpool2d: indices must be int64, but got Int"):
        CF.max_unpool2d(y, i.int(), 2)
    with pytest.raises(RuntimeError, match=r"max_unpool2d: indices must have the same shape as input"):
        CF.max_unpool2d(y, i[:, :, :2], 2)
    with pytest.raises(ValueError, match=r"max_unpool2d: invalid output_size \[20, 20\]"):
        CF.max_unpool2d(y, i, 2, output_size=(20, 20))
    with pytest.raises(ValueError, match=r"max_unpool2d: output_size should be a sequence of 2 or 4"):
        CF.max_unpool2d(y, i, 2, output_size=(8,))
    with pytest.raises(RuntimeError, match=r"max_unpool2d: stride must be greater than zero"):
        CF.max_unpool2d(y, i, 2, 0)
    with pytest.raises(RuntimeError, match=r"max_unpool2d: expected a 3-D"):
        CF.max_unpool2d(y[0, 0], i[0, 0], 2)
    # backward checks its indices too
    g = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match=r"max_unpool2d_backward: found an invalid index 99"):
        ops.max_unpool2d_backward(g, torch.full_like(i, 99))
    with pytest.raises(RuntimeError, match=r"max_unpool2d_backward: grad_output of size \[2, 4, 8, 8\] "
                                           r"does not match indices"):
        ops.max_unpool2d_backward(torch.randn(2, 4, 8, 8), i)


def test_backward_op_errors():
    y, i = _pooled()
    args = ([2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match=r"max_pool2d_backward: grad_output has the wrong size: "
                                           r"expected \[2, 3, 4, 4\], but got \[2, 3, 5, 4\]"):
        ops.max_pool2d_backward(torch.randn(2, 3, 5, 4), i, [2, 3, 8, 8], *args)
    with pytest.raises(RuntimeError, match=r"max_pool2d_backward: found an invalid index 64 in indices"):
        ops.max_pool2d_backward(y, torch.full_like(i, 64), [2, 3, 8, 8], *args)
    for pos, bad in (((0, 0, 1, 2), -1), ((1, 2, 3, 1), 1 << 40)):  # one bad among good ones
        for ib in (i.clone(), i.contiguous(memory_format=torch.channels_last)):
            ib[pos] = bad
            with pytest.raises(RuntimeError, match=f"max_pool2d_backward: found an invalid index {bad} "):
                ops.max_pool2d_backward(y, ib, [2, 3, 8, 8], *args)
    with pytest.raises(RuntimeError, match=r"max_pool2d_backward: indices must be int64"):
        ops.max_pool2d_backward(y, i.float(), [2, 3, 8, 8], *args)
    with pytest.raises(RuntimeError, match=r"max_pool2d_backward: input_size must have 3 or 4 elements"):
        ops.max_pool2d_backward(y, i, [8, 8], *args)
    with pytest.raises(RuntimeError, match=r"avg_pool2d_backward: grad_output has the wrong size"):
        ops.avg_pool2d_backward(torch.randn(2, 3, 3, 4), [2, 3, 8, 8], [2, 2], [2, 2], [0, 0],
                                False, True, None, False)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
def test_mismatched_devices():
    y, i = _pooled()
    with pytest.raises(RuntimeError, match=r"max_unpool2d: indices must be on the same device as input"):
        CF.max_unpool2d(y.cuda(), i, 2)
    with pytest.raises(RuntimeError, match=r"max_pool2d_backward: indices must be on the same device"):
        ops.max_pool2d_backward(y.cuda(), i, [2, 3, 8, 8], [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match=r"max_unpool2d: found an invalid index 64"):
        bad = i.clone().cuda()
        bad[1, 2, 3, 3] = 64
        CF.max_unpool2d(y.cuda(), bad, 2)
    with pytest.raises(RuntimeError, match=r"max_pool2d: input must be float16, bfloat16, float32 or float64 on CUDA"):
        CF.max_pool2d(x4.cuda().int(), 2)
