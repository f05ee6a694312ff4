"""Benchmark cases of Conv2d and ConvTranspose2d: forward and forward+backward,
NCHW and channels_last, ours (cnnkernels.nn) against torch.nn with the same
weights. Each row reports GFLOP/s (2 x multiply-adds of the forward; three
times that for forward+backward with the input gradient, twice without) and
the fraction of a large matmul's GFLOP/s measured in the same run.

The first-layer cases (7x7 stem, LeNet) do not ask for the input gradient,
as in training (the images need none); every other case does.
"""

from __future__ import annotations

import torch

import cnnkernels.nn as cnn
from harness import Case

# name, module kwargs (in, out, kernel, ...), input (N, C, H, W), input needs grad
CONV = [
    ("3x3 64ch 56x56", dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, bias=False), (8, 64, 56, 56), True),
    ("3x3 128ch 28x28", dict(in_channels=128, out_channels=128, kernel_size=3, padding=1, bias=False), (8, 128, 28, 28), True),
    ("3x3 s2 64->128", dict(in_channels=64, out_channels=128, kernel_size=3, stride=2, padding=1, bias=False), (8, 64, 56, 56), True),
    ("1x1 256->64", dict(in_channels=256, out_channels=64, kernel_size=1, bias=False), (8, 256, 56, 56), True),
    ("7x7 s2 stem 3->64", dict(in_channels=3, out_channels=64, kernel_size=7, stride=2, padding=3, bias=False), (8, 3, 224, 224), False),
    ("depthwise 3x3 128ch", dict(in_channels=128, out_channels=128, kernel_size=3, padding=1, groups=128, bias=False), (8, 128, 56, 56), True),
    ("LeNet 5x5 1->6 N=256", dict(in_channels=1, out_channels=6, kernel_size=5), (256, 1, 28, 28), False),
    ("3x3 dilation 2 64ch", dict(in_channels=64, out_channels=64, kernel_size=3, padding=2, dilation=2, bias=False), (8, 64, 56, 56), True),
    ("3x3 groups 4 128ch", dict(in_channels=128, out_channels=128, kernel_size=3, padding=1, groups=4, bias=False), (8, 128, 56, 56), True),
]
TRANSPOSED = [
    ("4x4 s2 128->64", dict(in_channels=128, out_channels=64, kernel_size=4, stride=2, padding=1), (8, 128, 28, 28)),
    ("3x3 s2 op1 128->64", dict(in_channels=128, out_channels=64, kernel_size=3, stride=2, padding=1, output_padding=1), (8, 128, 28, 28)),
    ("2x2 s2 128->64", dict(in_channels=128, out_channels=64, kernel_size=2, stride=2), (8, 128, 28, 28)),
]


def _flops(module, x, y):
    """2 x multiply-adds of the forward pass."""
    w = module.weight
    if isinstance(module, torch.nn.ConvTranspose2d):
        return 2 * x.numel() * w.shape[1] * w.shape[2] * w.shape[3]
    return 2 * y.numel() * w.shape[1] * w.shape[2] * w.shape[3]


def _case(ref_cls, our_cls, kw, shape, x_grad, fmt, dtype, device, mode):
    def setup():
        torch.manual_seed(0)
        ref = ref_cls(**kw).to(device=device, dtype=dtype)
        ours = our_cls(**kw).to(device=device, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        mf = torch.channels_last if fmt == "NHWC" else torch.contiguous_format
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=mf)
        with torch.no_grad():
            y = ref(x)
        flops = _flops(ref, x, y)
        nbytes = (x.numel() + y.numel()) * x.element_size()
        if mode == "fwd":
            return (lambda: ours(x)), (lambda: ref(x)), nbytes, dict(flops=flops)
        g = torch.randn_like(y)
        xg = x.detach().requires_grad_(x_grad)

        def run(m):
            params = [p for p in m.parameters()] + ([xg] if x_grad else [])
            return lambda: torch.autograd.grad(m(xg), params, g)

        return run(ours), run(ref), 3 * nbytes, dict(flops=flops * (3 if x_grad else 2))
    return setup


def cases(device, quick=False):
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.float16]
    out = []
    for dtype in dtypes:
        dname = str(dtype).replace("torch.", "")
        for fmt in ("NCHW", "NHWC"):
            for mode in ("fwd", "fwd+bwd"):
                items = [(n, torch.nn.Conv2d, cnn.Conv2d, kw, s, xg) for n, kw, s, xg in CONV]
                items += [(n, torch.nn.ConvTranspose2d, cnn.ConvTranspose2d, kw, s, True)
                          for n, kw, s in TRANSPOSED]
                for name, rc, oc, kw, shape, xg in items:
                    if device == "cuda":
                        shape = (shape[0] * 4,) + tuple(shape[1:])
                    mf = torch.channels_last if fmt == "NHWC" else torch.contiguous_format
                    copy_t = lambda shape=shape, mf=mf, dtype=dtype: torch.randn(  # noqa: E731
                        shape, device=device, dtype=dtype).contiguous(memory_format=mf)
                    out.append(Case(
                        op=rc.__name__, config=name, fmt=fmt, mode=mode, dtype=dname, device=device,
                        shape=shape, setup=_case(rc, oc, kw, shape, xg, fmt, dtype, device, mode),
                        copy_tensor=copy_t, copy_key=f"{dname} {'x'.join(map(str, shape))} {fmt}"))
    return out
