"""The CPU output cache (csrc/cpu/host_cache.cpp): large outputs of the CPU
kernels live in blocks that are kept mapped when their tensors die and serve
the next call of a similar size."""

import os
import subprocess
import sys

import torch

import cnnkernels
import cnnkernels.functional as CF


def _x(shape=(4, 16, 64, 64), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_large_output_is_cached_and_reused():
    cnnkernels.empty_cpu_cache()
    x = _x()  # 1 MB: the output of avg_pool2d(1) is as large
    base = cnnkernels.cpu_cache_stats()
    assert base["free_bytes"] == 0
    y = CF.avg_pool2d(x, 1)
    torch.testing.assert_close(y, torch.nn.functional.avg_pool2d(x, 1), rtol=0, atol=0)
    s = cnnkernels.cpu_cache_stats()
    assert s["used_bytes"] >= base["used_bytes"] + x.nbytes
    ptr = y.data_ptr()
    del y
    s = cnnkernels.cpu_cache_stats()
    assert s["free_bytes"] >= x.nbytes
    # the next output of that size takes the same block, and is written anew
    y = CF.avg_pool2d(x * 2, 1)
    assert y.data_ptr() == ptr
    torch.testing.assert_close(y, x * 2, rtol=0, atol=0)
    del y
    cnnkernels.empty_cpu_cache()
    assert cnnkernels.cpu_cache_stats()["free_bytes"] == 0


def test_cached_output_behaves_as_a_plain_tensor():
    x = _x()
    y = CF.avg_pool2d(x.contiguous(memory_format=torch.channels_last), 1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    y = CF.avg_pool2d(x, 1)
    y.resize_(8, 16, 64, 64)  # grows through the cache's allocator, keeping the data
    torch.testing.assert_close(y[:4], x, rtol=0, atol=0)
    y.fill_(3.0)
    assert torch.all(y == 3.0)
    assert float(y.numpy().sum()) == 3.0 * y.numel()
    y.add_(1)  # in place, and through autograd like any tensor
    w = y.requires_grad_()
    (w * 2).sum().backward()
    assert torch.all(w.grad == 2)


def test_small_outputs_bypass_the_cache():
    cnnkernels.empty_cpu_cache()
    before = cnnkernels.cpu_cache_stats()["used_bytes"]
    y = CF.avg_pool2d(_x((2, 4, 16, 16)), 2)  # 2 KB
    assert cnnkernels.cpu_cache_stats()["used_bytes"] == before
    del y
    assert cnnkernels.cpu_cache_stats()["free_bytes"] == 0


def _run_with_cache_mb(mb, body):
    """Runs body (Python source) in a fresh process with CNNKERNELS_CPU_CACHE_MB=mb."""
    code = "import torch, cnnkernels, cnnkernels.functional as CF\n" + body
    env = dict(os.environ, CNNKERNELS_CPU_CACHE_MB=str(mb))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cache_can_be_turned_off():
    _run_with_cache_mb(0, (
        "x = torch.randn(4, 16, 64, 64)\n"
        "y = CF.avg_pool2d(x, 1)\n"
        "assert torch.equal(y, x)\n"
        "s = cnnkernels.cpu_cache_stats()\n"
        "assert s['cap_bytes'] == 0 and s['used_bytes'] == 0, s\n"
        "del y\n"
        "assert cnnkernels.cpu_cache_stats()['free_bytes'] == 0\n"))


def test_cache_cap_holds():
    _run_with_cache_mb(8, (
        "xs = [torch.randn(4, 16, 64, 64 * k) for k in range(1, 6)]\n"
        "ys = [CF.avg_pool2d(x, 1) for x in xs]\n"
        "del ys\n"
        "s = cnnkernels.cpu_cache_stats()\n"
        "assert s['cap_bytes'] == 8 << 20, s\n"
        "assert 0 < s['free_bytes'] <= 8 << 20, s\n"))


def test_the_block_freed_last_is_reused_first():
    # LIFO among blocks of a size: the one freed last may still be in the
    # caches (oldest-first cycled through all of them)
    x = _x()
    a, b, c = (CF.avg_pool2d(x, 1) for _ in range(3))
    pb = b.data_ptr()
    del a, c
    del b
    assert CF.avg_pool2d(x, 1).data_ptr() == pb


def test_forked_child_uses_the_cache():
    # the cache's lock is held across fork() (pthread_atfork) so that a child
    # never inherits it locked; the child allocates and frees through it
    x = _x()
    keep = CF.avg_pool2d(x, 1)  # a block in use, and one free after this:
    del keep
    pid = os.fork()
    if pid == 0:  # child (one thread: GNU OpenMP's pool does not survive fork)
        ok = False
        try:
            torch.set_num_threads(1)
            y = CF.avg_pool2d(x, 1)
            ok = torch.equal(y, x)
            del y
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
