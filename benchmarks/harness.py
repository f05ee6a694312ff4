"""Timing helpers shared by the benchmark families.

time_pair runs ours and torch's callables interleaved (alternating which goes
first each round) and returns the median seconds per call of each. Each side
is timed in blocks of about target_s (at least one call), sized by its own
speed: sized by the slower side, a fast op would be timed on single calls,
each right after the slow one had evicted its input from the caches (a
12.8 MB dropout: 1.0 ms that way against 0.8 ms in steady state), while the
copy ceiling is always timed in steady state. On CUDA it times with events
and synchronises; on the CPU with perf_counter.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Case:
    op: str                    # op name, e.g. "max_pool2d"
    config: str                # short config, e.g. "k3 s2 p1 +idx"
    fmt: str                   # "NCHW" or "NHWC"
    mode: str                  # "fwd", "bwd" or "fwd+bwd"
    dtype: str
    device: str
    shape: tuple
    setup: Callable            # -> (ours_fn, torch_fn, bytes_moved, extra_dict)
    copy_tensor: Callable      # -> the tensor whose plain copy sets the ceiling
    copy_key: str = ""
    extra: dict = field(default_factory=dict)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time_block(fn, n, device):
    if device == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def time_pair(ours, ref, device, rounds, target_s=None):
    """Median seconds per call of ours and ref, interleaved."""
    target_s = target_s or (0.01 if device == "cuda" else 0.03)
    # warm-up: at least 3 calls each and 0.2 s together (the first case of
    # a CPU run, measured right after the copy ceiling, came out 30-50 %
    # slower than the same kernel timed later in the run with 3 calls)
    t_end = time.perf_counter() + 0.2
    k = 0
    while k < 3 or time.perf_counter() < t_end:
        ours()
        ref()
        k += 1
    _sync(device)
    def calls(fn):
        one = max(_time_block(fn, 1, device), 1e-6)
        return max(1, min(1000, int(target_s / one)))

    n_ours, n_ref = calls(ours), calls(ref)
    t_ours, t_ref = [], []
    for r in range(rounds):
        if r % 2 == 0:
            t_ours.append(_time_block(ours, n_ours, device))
            t_ref.append(_time_block(ref, n_ref, device))
        else:
            t_ref.append(_time_block(ref, n_ref, device))
            t_ours.append(_time_block(ours, n_ours, device))
    return statistics.median(t_ours), statistics.median(t_ref)


def copy_bandwidth(x, device, rounds):
    """GB/s (bytes read + bytes written) of a plain copy of x into a fresh
    tensor, the same allocation pattern the ops under test have."""
    fn = lambda: x.clone()  # noqa: E731
    t, _ = time_pair(fn, fn, device, rounds)
    return 2 * x.numel() * x.element_size() / t / 1e9
