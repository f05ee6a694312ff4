"""Build of cnnkernels' C++/CUDA extension (cnnkernels._C).

CPU kernels always build (C++17, OpenMP through torch's own runtime).
CUDA kernels build when the installed torch has CUDA and nvcc is found;
CNNKERNELS_CUDA=0 turns them off, CNNKERNELS_CUDA=1 requires them (the build
fails loudly when CUDA can't be built). Architectures come from
TORCH_CUDA_ARCH_LIST, by default "8.0;9.0+PTX".
"""

import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """CUDA_HOME from the environment, else from the real nvcc behind PATH.

    The nvcc on PATH may be a wrapper script that execs the toolkit's nvcc;
    torch would then take the wrapper's folder for the toolkit root and fail
    to link cudart. Read the wrapper to find the real one.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        real = os.path.realpath(nvcc)
        try:
            with open(real, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):
                m = re.search(rb"exec\s+(\S+/bin/nvcc)", head)
                if m:
                    real = m.group(1).decode()
        except OSError:
            pass
        candidates.append(os.path.dirname(os.path.dirname(real)))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and (
            glob.glob(os.path.join(home, "lib64", "libcudart*"))
            or glob.glob(os.path.join(home, "targets", "*", "lib", "libcudart*"))
        ):
            return home
    return None


_cuda_env = os.environ.get("CNNKERNELS_CUDA", "").strip()
if _cuda_env not in ("", "0", "1"):
    sys.exit(f"cnnkernels: CNNKERNELS_CUDA must be 0 or 1, got {_cuda_env!r}")

_cuda_home = None if _cuda_env == "0" else _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home  # before torch.utils.cpp_extension reads it

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _use_cuda():
    if _cuda_env == "0":
        return False
    why = None
    if torch.version.cuda is None:
        why = f"the installed torch {torch.__version__} is a CPU-only build"
    elif _cuda_home is None:
        why = "nvcc / the CUDA toolkit was not found (set CUDA_HOME)"
    if why is None:
        return True
    if _cuda_env == "1":
        sys.exit(f"cnnkernels: CNNKERNELS_CUDA=1 but the CUDA kernels cannot be built: {why}")
    print(f"cnnkernels: building without CUDA: {why}")
    return False


def _extension():
    use_cuda = _use_cuda()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "common", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wno-unused-function"]
    # OpenMP: compile with -fopenmp but link against torch's own libgomp (its
    # soname is libgomp.so.1 like the system's, and torch loads it first), so
    # the process has one OpenMP runtime and torch.set_num_threads applies.
    link = ["-Wl,-rpath," + torch_lib, "-L" + torch_lib, "-l:libgomp.so.1"]
    if not os.path.exists(os.path.join(torch_lib, "libgomp.so.1")):
        link = ["-fopenmp"]
    kwargs = dict(
        name="cnnkernels._C",
        sources=sources,
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
        include_dirs=[os.path.join(ROOT, "csrc")],
    )
    if not use_cuda:
        return CppExtension(**kwargs)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    kwargs["sources"] += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    kwargs["extra_compile_args"]["cxx"].append("-DCNNKERNELS_WITH_CUDA")
    kwargs["extra_compile_args"]["nvcc"] = [
        "-O3",
        "-DCNNKERNELS_WITH_CUDA",
        "--expt-relaxed-constexpr",
        "-lineinfo",
    ]
    try:  # pip's CUDA headers (cusparse.h etc.) that the toolkit may lack
        import nvidia

        for sub in ("cu13", "cu12"):
            inc = os.path.join(nvidia.__path__[0], sub, "include")
            if os.path.isdir(inc):
                kwargs["include_dirs"].append(inc)
    except ImportError:
        pass
    print(f"cnnkernels: building with CUDA from {_cuda_home} for "
          f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    return CUDAExtension(**kwargs)


# Metadata lives in pyproject.toml; this file only describes the extension.
setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
