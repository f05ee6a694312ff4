"""Where the time of a few CUDA convolution calls goes (GPU machine):
per-kernel device time from torch.profiler, and the wall time per call."""
import time

import torch
from torch.profiler import ProfilerActivity, profile

import cnnkernels.nn as cnn

CASES = [
    ("depthwise NCHW", dict(in_channels=128, out_channels=128, kernel_size=3, padding=1, groups=128, bias=False),
     (32, 128, 56, 56), torch.contiguous_format),
    ("depthwise NHWC", dict(in_channels=128, out_channels=128, kernel_size=3, padding=1, groups=128, bias=False),
     (32, 128, 56, 56), torch.channels_last),
    ("LeNet", dict(in_channels=1, out_channels=6, kernel_size=5), (1024, 1, 28, 28), torch.contiguous_format),
    ("3x3 64 NHWC", dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, bias=False),
     (32, 64, 56, 56), torch.channels_last),
    ("3x3 64 NCHW", dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, bias=False),
     (32, 64, 56, 56), torch.contiguous_format),
]

for name, kw, shape, mf in CASES:
    for lib, cls in (("ours", cnn.Conv2d), ("torch", torch.nn.Conv2d)):
        m = cls(**kw).cuda()
        x = torch.randn(shape, device="cuda").contiguous(memory_format=mf).requires_grad_()
        y = m(x)
        g = torch.randn_like(y)
        for mode in ("fwd", "fwd+bwd"):
            def step():
                out = m(x)
                if mode == "fwd+bwd":
                    torch.autograd.grad(out, [x, m.weight], g)
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
                    rows.append((dt / 10 / 1e3, e.key[:70]))
            rows.sort(reverse=True)
            print(f"{name:16s} {lib:5s} {mode:8s} wall {wall:.3f} ms/call; device: "
                  + "; ".join(f"{t:.3f} {k}" for t, k in rows[:4]))
