"""Shared fixtures: devices (CUDA cases skip cleanly without a GPU), dtypes
per device, and the CPU code path (every CPU pooling and convolution case
runs through the portable C++ kernels, the AVX2 kernels and, where the
processor has AVX-512F, the AVX-512 convolution micro-kernel)."""

import pytest
import torch

import cnnkernels

HAS_CUDA = torch.cuda.is_available() and cnnkernels.cuda_built()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")),
]


def dtypes_for(device):
    if device == "cuda":
        return [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    return [torch.float32, torch.float64]


CPU_ISAS = (["generic"] + (["avx2"] if cnnkernels._C._avx2_available() else [])
            + (["avx512"] if cnnkernels._C._avx512_available() else []))


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs the test with the given CPU code path selected."""
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(request.param)
    yield request.param
    cnnkernels.set_cpu_isa(old)


def tol(dtype):
    """assert_close tolerances for gradients / averages in a dtype."""
    return {
        torch.float16: dict(rtol=2e-3, atol=2e-3),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
        torch.float32: dict(rtol=1e-5, atol=1e-6),
        torch.float64: dict(rtol=1e-10, atol=1e-12),
    }[dtype]


# Where a test runs: the CPU once per code path, CUDA once.
DEVICE_PATHS = [pytest.param(("cpu", isa), id=f"cpu-{isa}") for isa in CPU_ISAS] + [
    pytest.param(("cuda", None), id="cuda",
                 marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build"))
]


@pytest.fixture(params=DEVICE_PATHS)
def device_path(request):
    """The device to run on, with the CPU code path selected for CPU runs."""
    device, isa = request.param
    old = cnnkernels.cpu_isa()
    if isa is not None:
        cnnkernels.set_cpu_isa(isa)
    yield device
    cnnkernels.set_cpu_isa(old)


@pytest.fixture(autouse=True)
def _exact_float32_conv():
    """torch's CUDA convolutions (and ours, which follow the same switch) run
    float32 as TF32 by default; the parity tests compare at float32
    precision, so they turn it off. test_conv.py checks the TF32 mode itself."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old
