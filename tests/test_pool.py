"""Parity of the pooling family with torch.nn.functional: values, indices and
input gradients over kernel / stride / padding / dilation / ceil_mode /
count_include_pad / divisor_override, layouts (NCHW, channels_last,
non-contiguous, unbatched, empty batch), dtypes, NaNs and ties; on the CPU
through both code paths (AVX2 and portable)."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

import cnnkernels
import cnnkernels.functional as CF
from conftest import CPU_ISAS, HAS_CUDA, tol

# (device, dtype, cpu isa) combinations
COMBOS = [pytest.param(("cpu", dt, isa), id=f"cpu-{str(dt)[6:]}-{isa}")
          for dt in (torch.float32, torch.float64) for isa in CPU_ISAS]
COMBOS += [pytest.param(("cuda", dt, None), id=f"cuda-{str(dt)[6:]}",
                        marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build"))
           for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16)]

LAYOUTS = ["nchw", "channels_last", "noncontig", "unbatched"]


@pytest.fixture
def setup(request):
    device, dtype, isa = request.param
    old = cnnkernels.cpu_isa()
    if isa is not None:
        cnnkernels.set_cpu_isa(isa)
    yield device, dtype
    cnnkernels.set_cpu_isa(old)


def make_input(shape, layout, dtype, device, kind="randn", seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    full = (n, c, h, 2 * w) if layout == "noncontig" else shape
    if kind == "ties":
        x = torch.randint(0, 3, full, generator=g).float()
    else:
        x = torch.randn(full, generator=g)
    if kind == "nan":
        mask = torch.rand(full, generator=g) < 0.05
        x[mask] = float("nan")
        x[..., 0, 0] = float("nan")  # a NaN in the first window of every plane
        x[..., -1, -1] = float("-inf")
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontig":
        x = x[..., ::2]
        assert not x.is_contiguous()
    elif layout == "unbatched":
        x = x[0]
    return x


def assert_exact(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


MAX_CONFIGS = [
    # kernel, stride, padding, dilation, ceil_mode
    (2, None, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (3, 1, 1, 1, False),
    ((2, 3), (2, 1), (1, 1), 1, True),
    (3, 3, 0, 2, False),
    (3, 2, 1, 2, True),
    (4, 3, 2, 1, True),
    (5, 3, 2, 1, False),
    (1, 1, 0, 1, False),
    ((3, 1), (1, 3), (1, 0), (2, 1), True),
]
SHAPES = [(2, 3, 13, 17), (1, 2, 9, 43), (2, 3, 8, 12)]  # the last one tiled exactly by 2x2 / 4x3 windows


def _ids(cfgs):
    return ["k{}-s{}-p{}-d{}-c{}".format(*[str(v).replace(" ", "") for v in c]) for c in cfgs]


@pytest.mark.parametrize("setup", COMBOS, indirect=True)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", MAX_CONFIGS, ids=_ids(MAX_CONFIGS))
def test_max_pool2d_parity(setup, layout, cfg):
    device, dtype = setup
    k, s, p, d, ceil = cfg
    for shape in SHAPES:
        x = make_input(shape, layout, dtype, device)
        out, idx = CF.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        ref, ridx = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        assert_exact(out, ref)
        assert idx.dtype == torch.int64
        assert_exact(idx, ridx)
        assert_exact(CF.max_pool2d(x, k, s, p, d, ceil), ref)  # values-only op
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert idx.is_contiguous(memory_format=torch.channels_last)

        xa = x.detach().clone().requires_grad_()
        xb = x.detach().clone().requires_grad_()
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        CF.max_pool2d(xa, k, s, p, d, ceil).backward(g)
        F.max_pool2d(xb, k, s, p, d, ceil).backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, **tol(dtype))
        if layout == "channels_last":
            assert xa.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("setup", COMBOS, indirect=True)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kind", ["nan", "ties"])
@pytest.mark.parametrize("cfg", [(3, 2, 1, 1, True), (2, None, 0, 1, False), (3, 1, 1, 2, False)],
                         ids=["k3s2p1c", "k2", "k3s1p1d2"])
def test_max_pool2d_nan_and_ties(setup, layout, kind, cfg):
    device, dtype = setup
    k, s, p, d, ceil = cfg
    x = make_input((2, 3, 12, 21), layout, dtype, device, kind=kind)
    out, idx = CF.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    ref, ridx = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    assert_exact(out, ref)
    assert_exact(idx, ridx)
    if kind == "nan":
        assert out.isnan().any()


AVG_CONFIGS = [
    # kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
    (2, None, 0, False, True, None),
    (3, 2, 1, False, True, None),
    (3, 2, 1, True, False, None),
    (3, 1, 1, False, False, None),
    (3, 1, 1, True, True, None),
    ((3, 2), (2, 1), (1, 0), True, True, None),
    (2, 2, 0, True, True, 3),
    (3, 3, 1, True, False, 5),
    (5, 3, 2, True, True, None),
    (4, 3, 2, True, False, None),
    (1, 1, 0, False, True, None),
    (3, 4, 0, False, True, None),
]


@pytest.mark.parametrize("setup", COMBOS, indirect=True)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", AVG_CONFIGS,
                         ids=["k{}-s{}-p{}-c{}-i{}-d{}".format(*[str(v).replace(" ", "") for v in c])
                              for c in AVG_CONFIGS])
def test_avg_pool2d_parity(setup, layout, cfg):
    device, dtype = setup
    k, s, p, ceil, cip, div = cfg
    for shape in SHAPES:
        x = make_input(shape, layout, dtype, device)
        out = CF.avg_pool2d(x, k, s, p, ceil, cip, div)
        ref = F.avg_pool2d(x, k, s, p, ceil, cip, div)
        if device == "cpu":
            assert_exact(out, ref)  # same summation order and one division: bit for bit
        else:
            torch.testing.assert_close(out, ref, **tol(dtype))
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last)
        xa = x.detach().clone().requires_grad_()
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        CF.avg_pool2d(xa, k, s, p, ceil, cip, div).backward(g)
        # Reference gradient: torch on the CPU in float64. (torch 2.11's CUDA
        # avg_pool2d backward for channels_last input with padding disagrees
        # with its own CPU result; ours matches the CPU.)
        xb = x.detach().cpu().double().requires_grad_()
        F.avg_pool2d(xb, k, s, p, ceil, cip, div).backward(g.cpu().double())
        torch.testing.assert_close(xa.grad.cpu().double(), xb.grad, **tol(dtype))
        if layout == "channels_last":
            assert xa.grad.is_contiguous(memory_format=torch.channels_last)


UNPOOL_CONFIGS = [(2, None, 0), (3, 2, 1), (3, 3, 0), ((2, 3), (2, 3), (1, 1))]


@pytest.mark.parametrize("setup", COMBOS, indirect=True)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", UNPOOL_CONFIGS, ids=["k2", "k3s2p1", "k3s3", "k23s23p1"])
@pytest.mark.parametrize("explicit_size", [False, True])
def test_max_unpool2d_parity(setup, layout, cfg, explicit_size):
    device, dtype = setup
    k, s, p = cfg
    x = make_input((2, 3, 12, 17), layout, dtype, device)
    pooled, idx = F.max_pool2d(x, k, s, p, return_indices=True)
    size = x.shape[-2:] if explicit_size else None
    # torch is the reference on the CPU: its CUDA kernel reports bad indices
    # with a device-side assert, which would poison the CUDA context.
    pc, ic = pooled.cpu(), idx.cpu()
    try:
        ref = F.max_unpool2d(pc, ic, k, s, p, output_size=size)
    except ValueError:  # output_size out of torch's accepted range
        with pytest.raises(ValueError, match="max_unpool2d: invalid output_size"):
            CF.max_unpool2d(pooled, idx, k, s, p, output_size=size)
        return
    except RuntimeError:  # the default size is too small for these indices
        with pytest.raises(RuntimeError, match="max_unpool2d: found an invalid index"):
            CF.max_unpool2d(pooled, idx, k, s, p, output_size=size)
        return
    out = CF.max_unpool2d(pooled, idx, k, s, p, output_size=size)
    assert_exact(out.cpu(), ref)
    ya = pooled.detach().clone().requires_grad_()
    yb = pc.detach().clone().requires_grad_()
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    CF.max_unpool2d(ya, idx, k, s, p, output_size=size).backward(g.to(device))
    F.max_unpool2d(yb, ic, k, s, p, output_size=size).backward(g)
    assert_exact(ya.grad.cpu(), yb.grad)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_unpool2d_backward_gather_cpu(layout):
    """The backward gathers grad_output[n, c, indices[n, c, q]] row by row (a
    plane, or a pixel's channels): exact against torch's gather on a batch
    of several images and channels, and an index past the plane is an
    error naming the op."""
    x = make_input((3, 5, 10, 12), layout, torch.float32, "cpu")
    _, idx = F.max_pool2d(x, 2, return_indices=True)
    g = make_input((3, 5, 10, 12), layout, torch.float32, "cpu", seed=1)
    got = torch.ops.cnnkernels.max_unpool2d_backward(g, idx)
    want = g.contiguous().flatten(2).gather(2, idx.contiguous().flatten(2)).view(idx.shape)
    assert torch.equal(got, want)
    bad = idx.clone()
    bad[2, 4, 1, 1] = 10 * 12
    with pytest.raises(RuntimeError, match="max_unpool2d_backward: found an invalid index 120"):
        torch.ops.cnnkernels.max_unpool2d_backward(g, bad)


@pytest.mark.parametrize("setup", COMBOS, indirect=True)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch(setup, layout):
    device, dtype = setup
    x = torch.randn(0, 3, 8, 9, device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out, idx = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert out.shape == F.max_pool2d(x, 3, 2, 1).shape == (0, 3, 4, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape
    a = CF.avg_pool2d(x, 2)
    assert a.shape == (0, 3, 4, 4)
    u = CF.max_unpool2d(out, idx, 3, 2, 1, output_size=(8, 9))
    assert u.shape == (0, 3, 8, 9)


@pytest.mark.parametrize("setup", COMBOS[:len(CPU_ISAS) * 2], indirect=True)
def test_large_plane_and_many_blocks(setup):
    """Planes wide enough for several 8-wide vector blocks per row, with and
    without a partial last block, through both strides with fast paths."""
    device, dtype = setup
    for w in (64, 67, 8, 7, 15, 150):
        x = make_input((1, 2, 11, w), "nchw", dtype, device, seed=w)
        for k, s, p in ((2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), (3, 3, 1)):
            o, i = CF.max_pool2d(x, k, s, p, return_indices=True)
            r, ri = F.max_pool2d(x, k, s, p, return_indices=True)
            assert_exact(o, r)
            assert_exact(i, ri)
            assert_exact(CF.avg_pool2d(x, k, s, p), F.avg_pool2d(x, k, s, p))


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("shape", [(18, 32, 64, 64), (48, 64, 27, 27)])
@pytest.mark.parametrize("llc", [0, 1 << 40], ids=["stream", "cached"])
def test_scatter_over_stream_threshold_cpu(isa, shape, llc):
    """max_pool2d backward through the general scatter and max_unpool2d
    forward with outputs over 8 MB (with a last-level cache small against
    them, planes of whole cache lines are built in a buffer and streamed
    out; 27x27 planes are scattered in place): torch's results bit for
    bit."""
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(isa)
    cnnkernels._C._set_llc_bytes(llc)
    try:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
        assert x.numel() * 4 > (8 << 20)
        y, i = F.max_pool2d(x, 3, 2, 0, return_indices=True)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(8))
        args = ([3, 3], [2, 2], [0, 0], [1, 1], False)
        ours = torch.ops.cnnkernels.max_pool2d_backward(g, i, list(x.shape), *args)
        ref = torch.ops.aten.max_pool2d_with_indices_backward(g, x, *args, i)
        assert torch.equal(ours, ref)
        assert torch.equal(CF.max_unpool2d(y, i, 3, 2, 0, output_size=shape[2:]),
                           F.max_unpool2d(y, i, 3, 2, 0, output_size=shape[2:]))
    finally:
        cnnkernels._C._set_llc_bytes(-1)
        cnnkernels.set_cpu_isa(old)


def test_threads_give_identical_results():
    """Results do not depend on the number of CPU threads."""
    x = torch.randn(4, 8, 20, 20).requires_grad_()
    old = torch.get_num_threads()
    outs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        o, i = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
        a = CF.avg_pool2d(x, 3, 1, 1)
        (o.sum() + a.sum()).backward()
        outs.append((o, i, a, x.grad.clone()))
        x.grad = None
    torch.set_num_threads(old)
    for u, v in zip(*outs):
        assert_exact(u, v)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("cfg", [(3, 1, 1, False, True, None), (3, 1, 1, True, False, None),
                                 ((3, 2), 1, (1, 0), False, True, 7), (2, 1, 0, True, True, None),
                                 (5, (2, 1), 2, False, False, None)])
def test_avg_pool2d_backward_bitwise_cpu(isa, layout, cfg):
    """float32 avg_pool2d backward on the CPU is torch's, bit for bit: the
    deltas (one division each) summed per input element in output raster
    order, 8 columns at a time (rows of 56, 13 and 5 columns: full blocks,
    a last block shifted back, rows narrower than a vector)."""
    k, s, p, ceil, cip, div = cfg
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(isa)
    try:
        for w in (56, 13, 5):
            x = make_input((2, 3, 9, w), layout, torch.float32, "cpu").requires_grad_()
            ref = F.avg_pool2d(x, k, s, p, ceil, cip, div)
            g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
            ours, = torch.autograd.grad(CF.avg_pool2d(x, k, s, p, ceil, cip, div), x, g)
            theirs, = torch.autograd.grad(ref, x, g)
            assert_exact(ours, theirs)
    finally:
        cnnkernels.set_cpu_isa(old)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("shape", [(2, 3, 13, 17), (1, 2, 8, 48), (1, 1, 4, 30)])
def test_max_pool2d_backward_k2_bitwise_cpu(isa, shape):
    """2x2 / stride 2 NCHW max_pool2d backward (written plane by plane in one
    pass on AVX2): torch's result bit for bit, signed zeros included (torch
    adds to a zeroed plane: -0 becomes +0), also for indices that point
    outside their window (those planes take the scatter)."""
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(isa)
    try:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        y, i = F.max_pool2d(x, 2, return_indices=True)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
        g[..., 0, :3] = -0.0
        args = ([2, 2], [2, 2], [0, 0], [1, 1], False)
        moved = i.clone()
        moved[0, 0, 1, 2] = i[0, 0, 0, 0]  # a second gradient for one position
        for ind in (i, moved):
            ours = torch.ops.cnnkernels.max_pool2d_backward(g, ind, list(x.shape), *args)
            ref = torch.ops.aten.max_pool2d_with_indices_backward(g, x, *args, ind)
            assert torch.equal(ours.view(torch.int32), ref.view(torch.int32))
    finally:
        cnnkernels.set_cpu_isa(old)


def _kind_input(shape, kind, gen):
    """A float32 NCHW input of one kind: randn, ties (values 0-2), nan (10 %
    NaNs), ninf (-inf with 10 % NaNs) or negzero (all -0)."""
    x = (torch.randint(0, 3, shape, generator=gen).float() if kind == "ties"
         else torch.randn(shape, generator=gen))
    if kind == "negzero":
        x.fill_(-0.0)
    if kind in ("nan", "ninf"):
        if kind == "ninf":
            x.fill_(float("-inf"))
        x[torch.rand(shape, generator=gen) < 0.1] = float("nan")
    return x


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 2, 17, 18), (2, 2, 9, 34), (1, 2, 12, 56),
                                   (1, 1, 5, 17)])
@pytest.mark.parametrize("kind", ["randn", "ties"])
def test_max_pool2d_backward_k3s2p1_bitwise_cpu(isa, shape, kind):
    """3x3 / stride 2 / padding 1 NCHW max_pool2d backward (ResNet's stem
    pool; written plane by plane in one pass on AVX2 when W is even): torch's
    result bit for bit, with ties (one element the maximum of up to four
    windows, added in torch's order), signed zeros, an even or odd height, a
    last block that overlaps its neighbour (OW % 8 != 0), and indices that
    leave their window, including one naming the element left of the first
    window's padding column (the previous row's last), which must not be
    taken for that padding position."""
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(isa)
    try:
        gen = torch.Generator().manual_seed(5)
        x = _kind_input(shape, kind, gen)
        y, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        g = torch.randn(y.shape, generator=gen)
        g[..., 0, :3] = -0.0
        args = ([3, 3], [2, 2], [1, 1], [1, 1], False)
        moved = i.clone()
        moved[0, 0, 1, 2] = i[0, 0, 0, 0]
        left = i.clone()
        left[0, 0, 2, 0] = 3 * shape[3] - 1  # window (2, 0) covers rows 3-5 from column -1
        for ind in (i, moved, left):
            ours = torch.ops.cnnkernels.max_pool2d_backward(g, ind, list(x.shape), *args)
            ref = torch.ops.aten.max_pool2d_with_indices_backward(g, x, *args, ind)
            assert torch.equal(ours.view(torch.int32), ref.view(torch.int32))
        if shape[2] % 2:  # the bottom padding row: past the plane, an error
            bottom = i.clone()
            bottom[0, 0, -1, 3] = shape[2] * shape[3] + 6
            with pytest.raises(RuntimeError, match="invalid index"):
                torch.ops.cnnkernels.max_pool2d_backward(g, bottom, list(x.shape), *args)
    finally:
        cnnkernels.set_cpu_isa(old)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 2, 17, 18), (2, 2, 9, 34), (1, 1, 2, 16),
                                   (1, 1, 1, 16), (2, 3, 15, 32), (1, 2, 12, 56), (2, 1, 7, 170),
                                   (1, 1, 1, 32), (1, 1, 2, 32)])
@pytest.mark.parametrize("kind", ["randn", "ties", "nan", "ninf"])
def test_max_pool2d_k3s2p1_forward_cpu(isa, shape, kind):
    """3x3 / stride 2 / padding 1 NCHW max_pool2d forward (its own AVX2
    kernel when W is even and OW >= 8, AVX-512 when OW >= 16; blocks of 8 or
    16 columns, four at a time, so OW = 28 and 85 leave partial groups and an
    overlapping last block): values and indices equal torch's,
    with ties (first maximum in window order), NaNs (the last NaN wins),
    windows of -inf only (the first valid position), one-row and two-row
    inputs, and a last block that overlaps its neighbour; with and without
    indices."""
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(isa)
    try:
        x = _kind_input(shape, kind, torch.Generator().manual_seed(6))
        o, i = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
        r, ri = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        assert torch.equal(i, ri)
        assert_exact(o, r)
        assert_exact(CF.max_pool2d(x, 3, 2, 1), r)
    finally:
        cnnkernels.set_cpu_isa(old)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 2, 17, 17), (2, 2, 9, 34), (1, 1, 2, 16),
                                   (2, 3, 15, 33)])
@pytest.mark.parametrize("kind", ["randn", "ties", "nan", "ninf", "negzero"])
def test_pool2d_k2_forward_cpu(isa, shape, kind):
    """2x2 / stride 2 NCHW max_pool2d and avg_pool2d forward (their own AVX2
    kernel when OW >= 8): torch's values and indices bit for bit, with ties,
    NaNs, -inf windows, -0 (the average's sum starts at +0), an odd
    width or height (last column / row unused), an overlapping last block
    and divisor_override."""
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(isa)
    try:
        x = _kind_input(shape, kind, torch.Generator().manual_seed(9))
        bits = lambda t: t.nan_to_num(7.5).view(torch.int32)  # noqa: E731
        o, i = CF.max_pool2d(x, 2, return_indices=True)
        r, ri = F.max_pool2d(x, 2, return_indices=True)
        assert torch.equal(i, ri)
        assert torch.equal(bits(o), bits(r))
        assert torch.equal(bits(CF.max_pool2d(x, 2)), bits(r))
        for div in (None, 3):
            assert torch.equal(bits(CF.avg_pool2d(x, 2, divisor_override=div)),
                               bits(F.avg_pool2d(x, 2, divisor_override=div)))
    finally:
        cnnkernels.set_cpu_isa(old)


def _at_page_end(shape, seed=0):
    """A float32 NCHW tensor whose last byte is followed by an inaccessible
    page (a read past the end faults), and the mapping that holds it."""
    import ctypes
    import mmap

    import numpy as np

    n = math.prod(shape)
    pages = (4 * n + 4095) // 4096 + 1
    mm = mmap.mmap(-1, pages * 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    buf = (ctypes.c_char * (pages * 4096)).from_buffer(mm)
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(ctypes.addressof(buf) + (pages - 1) * 4096, 4096, 0) == 0, \
        "could not make the guard page inaccessible"
    arr = np.frombuffer(mm, dtype=np.float32, count=n, offset=(pages - 1) * 4096 - 4 * n)
    arr[...] = np.random.default_rng(seed).standard_normal(n)
    return torch.from_numpy(arr).view(shape), (mm, buf)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="places the input before a guard page with Linux's mmap and libc mprotect")
@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("shape", [(1, 1, 56, 56), (1, 2, 13, 17), (1, 1, 9, 43)])
def test_pool_reads_stay_inside_the_input(isa, shape):
    """The NCHW forward kernels read no element past the input's end: the
    input ends where an inaccessible page begins. (An 8-block group used to
    take in the last block, shifted back to end at the output width, and
    read it as if it followed the others: past a 56-wide row.)"""
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(isa)
    try:
        x, keep = _at_page_end(shape)
        for k, s, p in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 1, 0)]:
            assert_exact(CF.max_pool2d(x, k, s, p, return_indices=True)[1],
                         F.max_pool2d(x, k, s, p, return_indices=True)[1])
            assert_exact(CF.max_pool2d(x, k, s, p, ceil_mode=True),
                         F.max_pool2d(x, k, s, p, ceil_mode=True))
            assert_exact(CF.avg_pool2d(x, k, s, p), F.avg_pool2d(x, k, s, p))
        del keep
    finally:
        cnnkernels.set_cpu_isa(old)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("channels", [16, 40, 64, 70, 136])
@pytest.mark.parametrize("kind", ["randn", "ties", "nan", "ninf"])
def test_max_pool2d_channels_last_blocks_cpu(isa, channels, kind):
    """channels_last max_pool2d and avg_pool2d forward run along channels in register blocks
    (32 channels on AVX2, 64 on AVX-512, the last block masked): channel
    counts that fill blocks exactly, leave a partial vector, or a partial
    block of several vectors, with padding, stride, dilation and ceil_mode
    (AVX-512: interior pixels two at a time, edge ones alone); values and
    indices equal torch's."""
    old = cnnkernels.cpu_isa()
    cnnkernels.set_cpu_isa(isa)
    try:
        x = _kind_input((2, channels, 9, 11), kind, torch.Generator().manual_seed(8))
        x = x.contiguous(memory_format=torch.channels_last)
        for k, s, p, d, c in ((3, 2, 1, 1, False), (2, 2, 0, 1, True), (3, 1, 1, 1, False),
                              (3, 2, 1, 2, True)):
            o, i = CF.max_pool2d(x, k, s, p, d, c, return_indices=True)
            r, ri = F.max_pool2d(x, k, s, p, d, c, return_indices=True)
            assert torch.equal(i, ri)
            assert_exact(o, r)
            assert o.is_contiguous(memory_format=torch.channels_last)
            if d == 1:  # avg_pool2d: the same blocks (AVX-512: neighbours in step two at a time)
                for cip, div in ((True, None), (False, None), (True, 5)):
                    a = CF.avg_pool2d(x, k, s, p, c, cip, div)
                    assert_exact(a, F.avg_pool2d(x, k, s, p, c, cip, div))
                    assert a.is_contiguous(memory_format=torch.channels_last)
    finally:
        cnnkernels.set_cpu_isa(old)
