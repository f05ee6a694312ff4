"""Benchmark cases of BatchNorm (plain and with fused ReLU) and Dropout /
Dropout2d: training forward, forward+backward and eval, NCHW and
channels_last, ours against torch.nn (BatchNorm2d followed by ReLU is the
baseline of the fused module). Each row also reports the bytes per element
that autograd saves for backward, ours and torch's, measured with
saved-tensor hooks.

GB/s counts the bytes a one-pass kernel must move: forward reads x and
writes y; forward+backward adds reading grad_y and writing grad_x (BatchNorm
backward also re-reads x).

CPU: 16x64x56x56 float32 (12.8 MB). CUDA: 64x64x112x112 float32 and float16
(float32 parameters with float16 activations, as under autocast).
"""

from __future__ import annotations

import torch

import cnnkernels.nn as cnn
from harness import Case


def _mk(shape, fmt, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last if fmt == "NHWC" else torch.contiguous_format)


def saved_bytes_per_element(fn, x):
    """Bytes of the distinct tensors autograd saves during fn(x), per element of x."""
    seen = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        seen[key] = t.numel() * t.element_size()
        return t

    x = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values()) / x.numel()


def _bn_pair(C, relu, device, fused):
    ref = torch.nn.BatchNorm2d(C).to(device)
    ours = (cnn.BatchNormReLU2d if fused else cnn.BatchNorm2d)(C).to(device)
    ours.load_state_dict(ref.state_dict())
    ref_fn = torch.nn.Sequential(ref, torch.nn.ReLU()) if relu else ref
    return ours, ref_fn, ref


def _bn_cases(shape, fmt, dtype, device, fused):
    n = shape[0] * shape[1] * shape[2] * shape[3]
    esize = torch.empty((), dtype=dtype).element_size()

    def saved(ours, ref_fn, x):
        return dict(saved_ours=saved_bytes_per_element(ours, x),
                    saved_torch=saved_bytes_per_element(ref_fn, x))

    def train_fwd():
        x = _mk(shape, fmt, dtype, device)
        ours, ref_fn, _ = _bn_pair(shape[1], fused, device, fused)
        extra = saved(ours, ref_fn, x)
        return (lambda: ours(x)), (lambda: ref_fn(x)), 2 * n * esize, extra

    def train_fwdbwd():
        x = _mk(shape, fmt, dtype, device).requires_grad_()
        g = _mk(shape, fmt, dtype, device, seed=1)
        ours, ref_fn, ref = _bn_pair(shape[1], fused, device, fused)
        extra = saved(ours, ref_fn, x)
        po, pr = (x, ours.weight, ours.bias), (x, ref.weight, ref.bias)
        return ((lambda: torch.autograd.grad(ours(x), po, g)),
                (lambda: torch.autograd.grad(ref_fn(x), pr, g)), 5 * n * esize, extra)

    def eval_fwd():
        x = _mk(shape, fmt, dtype, device)
        ours, ref_fn, _ = _bn_pair(shape[1], fused, device, fused)
        ours.eval(), ref_fn.eval()
        return (lambda: ours(x)), (lambda: ref_fn(x)), 2 * n * esize, {}

    return [("train fwd", train_fwd), ("train fwd+bwd", train_fwdbwd), ("eval", eval_fwd)]


def _dropout_cases(shape, fmt, dtype, device, two_d):
    n = shape[0] * shape[1] * shape[2] * shape[3]
    esize = torch.empty((), dtype=dtype).element_size()
    ours = (cnn.Dropout2d if two_d else cnn.Dropout)(0.5)
    ref = (torch.nn.Dropout2d if two_d else torch.nn.Dropout)(0.5)

    def fwd():
        x = _mk(shape, fmt, dtype, device)
        extra = dict(saved_ours=saved_bytes_per_element(ours, x),
                     saved_torch=saved_bytes_per_element(ref, x))
        return (lambda: ours(x)), (lambda: ref(x)), 2 * n * esize, extra

    def fwdbwd():
        x = _mk(shape, fmt, dtype, device).requires_grad_()
        g = _mk(shape, fmt, dtype, device, seed=1)
        extra = dict(saved_ours=saved_bytes_per_element(ours, x),
                     saved_torch=saved_bytes_per_element(ref, x))
        return ((lambda: torch.autograd.grad(ours(x), x, g)),
                (lambda: torch.autograd.grad(ref(x), x, g)), 4 * n * esize, extra)

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

            for fused, op in ((True, "BatchNormReLU2d"), (False, "BatchNorm2d")):
                for mode, setup in _bn_cases(shape, fmt, dtype, device, fused):
                    add(op, "vs BN+ReLU" if fused else "", mode, setup)
            for two_d, op in ((False, "Dropout"), (True, "Dropout2d")):
                for mode, setup in _dropout_cases(shape, fmt, dtype, device, two_d):
                    add(op, "p=0.5", mode, setup)
    return out
