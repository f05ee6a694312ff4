"""cnnkernels: hand-written CPU (OpenMP, AVX2) and CUDA kernels for CNN layers.

    import cnnkernels
    pool = cnnkernels.nn.MaxPool2d(3, 2, 1)          # drop-in for torch.nn.MaxPool2d
    model = cnnkernels.convert(model)                 # swap a model's torch.nn layers
    avg = cnnkernels.functional.avg_pool2d            # torch.nn.functional signature

The ops themselves live in torch.ops.cnnkernels (forward and backward
separately), with fake kernels for torch.compile and opcheck.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.cnnkernels)
from . import _ops  # noqa: F401  (fake kernels)
from . import autograd, functional, models, nn
from .convert import convert

__version__ = "0.1.0"


def cuda_built() -> bool:
    """Whether the CUDA kernels were compiled into this build."""
    return bool(_C._cuda_built())


def cpu_isa() -> str:
    """The CPU code path in use: 'avx512' (the AVX2 kernels with the
    convolution's micro-kernel in 512-bit registers), 'avx2' or 'generic'
    (portable C++)."""
    return _C._cpu_isa()


def set_cpu_isa(name: str) -> None:
    """Select the CPU code path ('avx512', 'avx2' or 'generic'); also capped
    at import with the environment variable CNNKERNELS_CPU_ISA=generic|avx2."""
    _C._set_cpu_isa(name)


def empty_cpu_cache() -> None:
    """Give the memory the CPU kernels keep for their outputs back to the
    system. Large outputs (1 MB and more) live in blocks that are kept
    mapped when their tensors are freed, so that the next call of an op
    does not pay a page fault per 4 KB of output; up to 2 GiB (or an eighth
    of the physical memory) of free blocks are kept. The environment variable
    CNNKERNELS_CPU_CACHE_MB, read at import, sets that cap (0 turns the
    cache off)."""
    _C._host_cache_release()


def cpu_cache_stats() -> dict:
    """The CPU output cache: bytes in free blocks, in blocks in use, and the cap."""
    free, used, cap = _C._host_cache_stats()
    return {"free_bytes": free, "used_bytes": used, "cap_bytes": cap}


__all__ = ["autograd", "functional", "models", "nn", "convert", "cuda_built", "cpu_isa", "set_cpu_isa",
           "empty_cpu_cache", "cpu_cache_stats"]
