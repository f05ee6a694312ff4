"""Whole-model benchmark cases: each model of cnnkernels.models against the
same architecture built from torch.nn with the same weights.

  train  one training step: forward, cross-entropy, backward, SGD step
         (momentum 0.9), in train mode (batch statistics, dropout)
  infer  eval-mode forward under torch.no_grad()

GFLOP/s counts the convolutions' and linear layers' multiply-adds (x2) of
the step, as torch.utils.flop_counter counts them on the torch.nn twin; the
GB/s column counts only the input batch and means little here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cnnkernels import models
from harness import Case

# name, image size, CPU batch (a training step of roughly 0.1-0.6 s on 2 cores)
MODELS = [
    ("lenet", 28, 256),
    ("alexnet", 224, 16),
    ("vgg11", 32, 64),
    ("vgg11_bn", 32, 64),
    ("vgg16", 32, 32),
    ("vgg16_bn", 32, 32),
    ("nin", 224, 16),
    ("googlenet", 96, 32),
    ("resnet18", 224, 8),
]
IN_CHANNELS = {"lenet": 1}


def _case(name, size, batch, fmt, dtype, device, mode):
    def setup():
        build = models.MODELS[name]
        kw = dict(num_classes=10, in_channels=IN_CHANNELS.get(name, 3), image_size=size)
        torch.manual_seed(0)
        ours = build(**kw).to(device=device, dtype=dtype)
        ref = build(layers=torch.nn, **kw).to(device=device, dtype=dtype)
        ref.load_state_dict(ours.state_dict())
        mf = torch.channels_last if fmt == "NHWC" else torch.contiguous_format
        ours, ref = ours.to(memory_format=mf), ref.to(memory_format=mf)
        x = torch.randn(batch, kw["in_channels"], size, size, device=device,
                        dtype=dtype).contiguous(memory_format=mf)
        target = torch.randint(0, 10, (batch,), device=device)

        if mode == "infer":
            ours.eval(), ref.eval()

            def run(m):
                def f():
                    with torch.no_grad():
                        return m(x)
                return f
        else:
            ours.train(), ref.train()

            def run(m):
                opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

                def f():
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(m(x), target).backward()
                    opt.step()
                return f

        counter = FlopCounterMode(display=False)
        with counter:
            run(ref)()
        return run(ours), run(ref), x.numel() * x.element_size(), dict(
            flops=counter.get_total_flops())
    return setup


def cases(device, quick=False):
    dtypes = [torch.float32]
    out = []
    for dtype in dtypes:
        dname = str(dtype).replace("torch.", "")
        for mode in ("train", "infer"):
            for name, size, batch in MODELS:
                if device == "cuda":
                    batch *= 8
                shape = (batch, IN_CHANNELS.get(name, 3), size, size)
                copy_t = lambda shape=shape, dtype=dtype: torch.randn(  # noqa: E731
                    shape, device=device, dtype=dtype)
                out.append(Case(
                    op="model", config=name, fmt="NCHW", mode=mode, dtype=dname, device=device,
                    shape=shape, setup=_case(name, size, batch, "NCHW", dtype, device, mode),
                    copy_tensor=copy_t, copy_key=f"{dname} {'x'.join(map(str, shape))}"))
    return out
