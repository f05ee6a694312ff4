"""Where the time of a few CUDA calls goes (GPU machine): per-kernel device
time from torch.profiler, and the wall time per call, ours and torch's.

    python benchmarks/gpu_prof.py [conv] [norm]     (default: both)
"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import cnnkernels.nn as cnn

CL, NCHW = torch.channels_last, torch.contiguous_format
DW = dict(in_channels=128, out_channels=128, kernel_size=3, padding=1, groups=128, bias=False)
C3 = dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, bias=False)


class Unpool(torch.nn.Module):
    """max_unpool2d of its input with fixed indices (those of a 2x2 max pool
    of a random tensor of the output's size)."""

    def __init__(self, cls, shape):
        super().__init__()
        self.unpool = cls(2)
        big = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], device="cuda")
        self.register_buffer("idx", torch.nn.functional.max_pool2d(big, 2, return_indices=True)[1])

    def forward(self, x):
        return self.unpool(x, self.idx)


UP = (64, 64, 56, 56)
# (name, ours factory, torch factory, input shape, memory format, dtype)
CASES = {
    "conv": [
        ("depthwise NCHW", lambda: cnn.Conv2d(**DW), lambda: torch.nn.Conv2d(**DW), (32, 128, 56, 56), NCHW, torch.float32),
        ("depthwise NHWC", lambda: cnn.Conv2d(**DW), lambda: torch.nn.Conv2d(**DW), (32, 128, 56, 56), CL, torch.float32),
        ("3x3 64 NHWC", lambda: cnn.Conv2d(**C3), lambda: torch.nn.Conv2d(**C3), (32, 64, 56, 56), CL, torch.float32),
        ("3x3 64 NCHW", lambda: cnn.Conv2d(**C3), lambda: torch.nn.Conv2d(**C3), (32, 64, 56, 56), NCHW, torch.float32),
    ],
    "norm": [
        (f"BNReLU {f} {str(dt)[6:]}", lambda: cnn.BatchNormReLU2d(64),
         lambda: torch.nn.Sequential(torch.nn.BatchNorm2d(64), torch.nn.ReLU()), (64, 64, 112, 112), mf, dt)
        for f, mf in (("NHWC", CL), ("NCHW", NCHW)) for dt in (torch.float32, torch.float16)
    ],
    "pool": [
        ("max_unpool2d NCHW", lambda: Unpool(cnn.MaxUnpool2d, UP), lambda: Unpool(torch.nn.MaxUnpool2d, UP),
         UP, NCHW, torch.float32),
    ],
}


def profile_case(name, lib, make, shape, mf, dtype):
    m = make().cuda()
    x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=mf).requires_grad_()
    params = [p for p in m.parameters()]
    y = m(x)
    g = torch.randn_like(y)
    for mode in ("fwd", "fwd+bwd"):
        def step():
            out = m(x)
            if mode == "fwd+bwd":
                torch.autograd.grad(out, [x, *params], g)
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(50):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 50 * 1e3
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                step()
            torch.cuda.synchronize()
        rows = []
        for e in prof.key_averages():
            dt = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if dt > 0:
                rows.append((dt / 10 / 1e3, e.key[:60]))
        rows.sort(reverse=True)
        print(f"{name:20s} {lib:5s} {mode:8s} wall {wall:.3f} ms/call; device: "
              + "; ".join(f"{t:.3f} {k}" for t, k in rows[:5]))


for fam in sys.argv[1:] or list(CASES):
    for name, ours, ref, shape, mf, dtype in CASES[fam]:
        for lib, make in (("ours", ours), ("torch", ref)):
            profile_case(name, lib, make, shape, mf, dtype)
