"""Benchmark cases of the pooling family: max_pool2d (with and without
indices), avg_pool2d, max_unpool2d; forward, backward and forward+backward;
NCHW and channels_last.

CPU: 16x64x56x56 float32 (12.8 MB), the ResNet stem's pooling input.
CUDA: 64x64x112x112 (float32 205 MB, float16 103 MB): large enough to fill
the GPU and to spill out of its L2 cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import cnnkernels.functional as CF
from harness import Case

_ops = torch.ops.cnnkernels
_aten = torch.ops.aten


def _mk(shape, fmt, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last if fmt == "NHWC" else torch.contiguous_format)


def _nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts)


# (op, config label, kwargs)
MAX_CONFIGS = [
    ("max_pool2d", "k3 s2 p1 +idx", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
    ("max_pool2d", "k2", dict(kernel_size=2)),
]
AVG_CONFIGS = [
    ("avg_pool2d", "k2", dict(kernel_size=2)),
    ("avg_pool2d", "k3 s1 p1", dict(kernel_size=3, stride=1, padding=1)),
]


def _max_cases(shape, fmt, dtype, device, label, kw):
    ks, st, pad = kw["kernel_size"], kw.get("stride") or kw["kernel_size"], kw.get("padding", 0)
    ret = kw.get("return_indices", False)

    def fwd():
        x = _mk(shape, fmt, dtype, device)
        ours = lambda: CF.max_pool2d(x, **kw)  # noqa: E731
        ref = lambda: F.max_pool2d(x, **kw)  # noqa: E731
        y, i = F.max_pool2d(x, ks, st, pad, return_indices=True)
        return ours, ref, _nbytes(x, y) + (_nbytes(i) if ret else 0), {}

    def bwd():
        x = _mk(shape, fmt, dtype, device)
        y, i = F.max_pool2d(x, ks, st, pad, return_indices=True)
        g = _mk(y.shape, fmt, dtype, device, seed=1)
        args = ([ks, ks], [st, st], [pad, pad], [1, 1], False)
        ours = lambda: _ops.max_pool2d_backward(g, i, list(x.shape), *args)  # noqa: E731
        ref = lambda: _aten.max_pool2d_with_indices_backward(g, x, *args, i)  # noqa: E731
        return ours, ref, _nbytes(g, i, x), {}

    def fwdbwd():
        x = _mk(shape, fmt, dtype, device).requires_grad_()
        y, i = F.max_pool2d(x, ks, st, pad, return_indices=True)
        g = _mk(y.shape, fmt, dtype, device, seed=1)

        def ours():
            CF.max_pool2d(x, ks, st, pad).backward(g)
            x.grad = None

        def ref():
            F.max_pool2d(x, ks, st, pad).backward(g)
            x.grad = None

        return ours, ref, _nbytes(x, y, i) + _nbytes(g, i, x), {}

    return [("fwd", fwd), ("bwd", bwd), ("fwd+bwd", fwdbwd)]


def _avg_cases(shape, fmt, dtype, device, label, kw):
    ks, st, pad = kw["kernel_size"], kw.get("stride") or kw["kernel_size"], kw.get("padding", 0)

    def fwd():
        x = _mk(shape, fmt, dtype, device)
        y = F.avg_pool2d(x, **kw)
        return (lambda: CF.avg_pool2d(x, **kw)), (lambda: F.avg_pool2d(x, **kw)), _nbytes(x, y), {}

    def bwd():
        x = _mk(shape, fmt, dtype, device)
        y = F.avg_pool2d(x, **kw)
        g = _mk(y.shape, fmt, dtype, device, seed=1)
        args = ([ks, ks], [st, st], [pad, pad], False, True, None)
        cl = fmt == "NHWC"
        ours = lambda: _ops.avg_pool2d_backward(g, list(x.shape), *args, cl)  # noqa: E731
        ref = lambda: _aten.avg_pool2d_backward(g, x, *args)  # noqa: E731
        return ours, ref, _nbytes(g, x), {}

    def fwdbwd():
        x = _mk(shape, fmt, dtype, device).requires_grad_()
        y = F.avg_pool2d(x, **kw)
        g = _mk(y.shape, fmt, dtype, device, seed=1)

        def ours():
            CF.avg_pool2d(x, **kw).backward(g)
            x.grad = None

        def ref():
            F.avg_pool2d(x, **kw).backward(g)
            x.grad = None

        return ours, ref, _nbytes(x, y) + _nbytes(g, x), {}

    return [("fwd", fwd), ("bwd", bwd), ("fwd+bwd", fwdbwd)]


def _unpool_cases(shape, fmt, dtype, device):
    def pooled():
        x = _mk(shape, fmt, dtype, device)
        y, i = F.max_pool2d(x, 2, return_indices=True)
        return x, y, i

    def fwd():
        x, y, i = pooled()
        ours = lambda: CF.max_unpool2d(y, i, 2)  # noqa: E731
        ref = lambda: F.max_unpool2d(y, i, 2)  # noqa: E731
        return ours, ref, _nbytes(y, i, x), {}

    def fwdbwd():
        x, y, i = pooled()
        y = y.detach().requires_grad_()
        g = _mk(x.shape, fmt, dtype, device, seed=1)

        def ours():
            CF.max_unpool2d(y, i, 2).backward(g)
            y.grad = None

        def ref():
            F.max_unpool2d(y, i, 2).backward(g)
            y.grad = None

        return ours, ref, _nbytes(y, i, x) + _nbytes(y, i, y), {}

    return [("fwd", fwd), ("fwd+bwd", fwdbwd)]


def cases(device, quick=False):
    if device == "cpu":
        shape, dtypes = (16, 64, 56, 56), [torch.float32]
    else:
        shape, dtypes = (64, 64, 112, 112), [torch.float32, torch.float16]
    out = []
    for dtype in dtypes:
        dname = str(dtype).replace("torch.", "")
        for fmt in ("NCHW", "NHWC"):
            copy_t = lambda fmt=fmt, dtype=dtype: _mk(shape, fmt, dtype, device)  # noqa: E731
            key = f"{dname} {'x'.join(map(str, shape))}"

            def add(op, label, mode, setup):
                out.append(Case(op=op, config=label, fmt=fmt, mode=mode, dtype=dname, device=device,
                                shape=shape, setup=setup, copy_tensor=copy_t, copy_key=key))

            for op, label, kw in MAX_CONFIGS:
                for mode, setup in _max_cases(shape, fmt, dtype, device, label, kw):
                    add(op, label, mode, setup)
            for op, label, kw in AVG_CONFIGS:
                for mode, setup in _avg_cases(shape, fmt, dtype, device, label, kw):
                    add(op, label, mode, setup)
            for mode, setup in _unpool_cases(shape, fmt, dtype, device):
                add("max_unpool2d", "k2", mode, setup)
    return out
