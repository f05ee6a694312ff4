"""BatchNorm (with fused none / relu / leaky_relu activation) against torch.nn:
outputs, input/weight/bias gradients, running statistics and
num_batches_tracked through several training steps, for every module flag,
layout and dtype; then eval, empty batches, saved bytes, determinism,
gradcheck, opcheck, torch.compile and every argument error."""

import copy

import pytest
import torch
import torch.nn.functional as F

import cnnkernels
import cnnkernels.functional as CF
import cnnkernels.nn as cnn
from conftest import DEVICES, HAS_CUDA, dtypes_for

ops = torch.ops.cnnkernels


def _tol(dtype, kind):
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-9)
    if dtype == torch.float32:
        return dict(rtol=1e-4, atol=1e-4) if kind == "grad" else dict(rtol=1e-5, atol=2e-5)
    if dtype == torch.float16:
        return dict(rtol=1e-2, atol=1e-2) if kind == "grad" else dict(rtol=2e-3, atol=4e-3)
    return dict(rtol=5e-2, atol=5e-2) if kind == "grad" else dict(rtol=2e-2, atol=3e-2)


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontig":
        return torch.cat([x, x], dim=-1)[..., ::2]  # same values, strided view
    return x


class _TorchBNAct(torch.nn.Module):
    """torch's reference: BatchNorm followed by the activation."""

    def __init__(self, bn, act, slope=0.01):
        super().__init__()
        self.bn, self.act, self.slope = bn, act, slope

    def forward(self, x):
        y = self.bn(x)
        if self.act == "relu":
            return F.relu(y)
        if self.act == "leaky_relu":
            return F.leaky_relu(y, self.slope)
        return y


class _OursBNAct(torch.nn.Module):
    def __init__(self, bn, act, slope=0.01):
        super().__init__()
        self.bn, self.act, self.slope = bn, act, slope

    def forward(self, x):
        if self.act == "leaky_relu":  # the module bookkeeping with the leaky activation
            return cnn._batch_norm_forward(self.bn, x, "leaky_relu")
        return self.bn(x)


def _pair(kind, C, act, dtype, device, **kw):
    """(ours, torch) modules with identical, non-trivial parameters."""
    torch_cls = {"1d": torch.nn.BatchNorm1d, "2d": torch.nn.BatchNorm2d}[kind]
    if kind == "1d":
        ours_cls = cnn.BatchNorm1d
    else:
        ours_cls = cnn.BatchNormReLU2d if act == "relu" else cnn.BatchNorm2d
    half = dtype in (torch.float16, torch.bfloat16)
    pdtype = torch.float32 if half else dtype
    # float16/bfloat16: the reference is torch in float64 on the CPU (torch's
    # own CUDA half kernels are further from it than ours, see _run_steps)
    ref = torch_cls(C, **kw).to(device="cpu" if half else device, dtype=torch.float64 if half else pdtype)
    ours = ours_cls(C, **kw).to(device=device, dtype=pdtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.copy_(torch.rand(C, generator=g) + 0.5)
            ref.bias.copy_(torch.randn(C, generator=g))
        if ref.running_mean is not None:
            ref.running_mean.copy_(torch.randn(C, generator=g))
            ref.running_var.copy_(torch.rand(C, generator=g) + 0.5)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _close(a, b, dtype, kind):
    torch.testing.assert_close(a.detach().to(b.device, b.dtype), b.detach(), **_tol(dtype, kind))


def _run_steps(ours, ref, act, shape, layout, dtype, device, steps=3, train=True):
    g = torch.Generator().manual_seed(2)
    wrap_o = _OursBNAct(ours, act) if act == "leaky_relu" else ours
    wrap_r = _TorchBNAct(ref, act)
    for step in range(steps):
        base = (torch.randn(shape, generator=g) * 2 + 0.5).to(device=device, dtype=dtype)
        half = dtype in (torch.float16, torch.bfloat16)  # reference in float64 on the CPU
        rdev, rdtype = ("cpu", torch.float64) if half else (device, dtype)
        xo = _layout(base.clone(), layout).requires_grad_()
        xr = _layout(base.clone().to(rdev, rdtype), layout).requires_grad_()
        ours.train(train)
        ref.train(train)
        yo, yr = wrap_o(xo), wrap_r(xr)
        _close(yo, yr, dtype, "out")
        if layout == "channels_last":
            assert yo.is_contiguous(memory_format=torch.channels_last)
        gy = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        yo.backward(gy)
        yr.backward(gy.to(rdev, rdtype))
        _close(xo.grad, xr.grad, dtype, "grad")
        if ref.weight is not None:
            _close(ours.weight.grad, ref.weight.grad, dtype, "grad")
            _close(ours.bias.grad, ref.bias.grad, dtype, "grad")
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            a, b = getattr(ours, name), getattr(ref, name)
            if b is None:
                assert a is None
            else:
                _close(a, b, dtype, "out")


FLAGS = [
    dict(),
    dict(affine=False),
    dict(track_running_stats=False),
    dict(momentum=None),
    dict(momentum=0.3, eps=1e-3),
]


@pytest.mark.parametrize("act", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "default")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig"])
def test_batch_norm2d_matches_torch(device_path, act, flags, layout):
    device = device_path
    for dtype in dtypes_for(device):
        ours, ref = _pair("2d", 6, act, dtype, device, **flags)
        _run_steps(ours, ref, act, (4, 6, 7, 9), layout, dtype, device)
        _run_steps(ours, ref, act, (4, 6, 7, 9), layout, dtype, device, steps=1, train=False)


@pytest.mark.parametrize(
    "shape", [(2, 3, 5, 5), (16, 64, 3, 3), (3, 40, 1, 1), (5, 3, 33, 65)]
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_relu2d_shapes(device_path, shape, layout):
    """Few and many channels (the per-channel and the split paths; channel
    counts with and without a remainder after the 32- or 16-channel register
    blocks of the channels_last statistics), 1x1 planes, planes longer than
    a chunk."""
    device = device_path
    for dtype in (torch.float32, torch.float64):
        ours, ref = _pair("2d", shape[1], "relu", dtype, device)
        _run_steps(ours, ref, "relu", shape, layout, dtype, device, steps=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(16, 64, 3, 3), (2, 1032, 3, 3), (3, 2056, 2, 1), (4, 24, 9, 7),
                                   (5, 12, 1, 1), (40, 1032)])
def test_batch_norm_interleaved_tiles(device, shape):
    """channels_last and (N, C) input in every dtype, with channel counts
    that fill a 16-byte vector (4 float32 / 8 float16 channels) or not, and
    rows wider than one block of channel vectors (CUDA: 1032 float32
    channels are 258 vectors, two tiles of 129; 2056 float16 channels
    257). Training steps then eval."""
    layout = "channels_last" if len(shape) == 4 else "contiguous"
    kind = "2d" if len(shape) == 4 else "1d"
    act = "relu" if kind == "2d" else None
    for dtype in dtypes_for(device):
        ours, ref = _pair(kind, shape[1], act, dtype, device)
        _run_steps(ours, ref, act, shape, layout, dtype, device, steps=2)
        _run_steps(ours, ref, act, shape, layout, dtype, device, steps=1, train=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_norm_channels_last_long_row_blocks(dtype):
    """channels_last rows per task (rows / 64) longer than a statistics chunk
    (16384 / C rows) and a reduction chunk, with C = 40 (register blocks plus
    a remainder). The reference is torch in float64: at this size torch's own
    float32 channels_last backward is ~1e-3 off it (ours ~1e-7)."""
    g = torch.Generator().manual_seed(5)
    shape = (16, 40, 48, 48)
    base = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    gy = torch.randn(shape, generator=g, dtype=torch.float64)
    ours, ref = _pair("2d", 40, "relu", dtype, "cpu")
    ref = ref.double()
    cl = torch.channels_last
    xo = base.to(dtype).contiguous(memory_format=cl).requires_grad_()
    xr = base.contiguous(memory_format=cl).requires_grad_()
    yo, yr = ours(xo), torch.relu(ref(xr))
    go = torch.autograd.grad(yo, (xo, ours.weight, ours.bias), gy.to(dtype).contiguous(memory_format=cl))
    gr = torch.autograd.grad(yr, (xr, ref.weight, ref.bias), gy.contiguous(memory_format=cl))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, b in [(yo, yr), *zip(go, gr), (ours.running_mean, ref.running_mean),
                 (ours.running_var, ref.running_var)]:
        torch.testing.assert_close(a.double(), b.detach(), **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 11), (3, 70, 1)])
@pytest.mark.parametrize("flags", FLAGS[:3], ids=["default", "affine=False", "no_running"])
def test_batch_norm1d_matches_torch(device, shape, flags):
    for dtype in dtypes_for(device):
        ours, ref = _pair("1d", shape[1], None, dtype, device, **flags)
        _run_steps(ours, ref, None, shape, "contiguous", dtype, device)
        _run_steps(ours, ref, None, shape, "contiguous", dtype, device, steps=1, train=False)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_5d_and_functional(device):
    x = torch.randn(2, 3, 4, 5, 6, device=device, dtype=torch.float64)
    rm, rv = torch.zeros(3, device=device, dtype=x.dtype), torch.ones(3, device=device, dtype=x.dtype)
    rm2, rv2 = rm.clone(), rv.clone()
    w, b = torch.rand(3, device=device, dtype=x.dtype), torch.randn(3, device=device, dtype=x.dtype)
    y = CF.batch_norm_relu(x, rm, rv, w, b, training=True, momentum=0.2)
    ref = F.relu(F.batch_norm(x, rm2, rv2, w, b, training=True, momentum=0.2))
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)
    # eval: running statistics, no update
    y = CF.batch_norm(x, rm, rv, w, b, training=False)
    torch.testing.assert_close(y, F.batch_norm(x, rm2, rv2, w, b, training=False))
    torch.testing.assert_close(rm, rm2)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_empty_batch(device):
    ours, ref = _pair("2d", 3, "relu", torch.float32, device)
    xo = torch.randn(0, 3, 4, 4, device=device, requires_grad=True)
    xr = xo.detach().clone().requires_grad_()
    yo, yr = ours(xo), F.relu(ref(xr))
    assert yo.shape == yr.shape == (0, 3, 4, 4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))
    yo.sum().backward()
    yr.sum().backward()
    assert xo.grad.shape == (0, 3, 4, 4)
    torch.testing.assert_close(ours.weight.grad, torch.zeros(3, device=device))
    torch.testing.assert_close(ours.bias.grad, torch.zeros(3, device=device))


def _saved_bytes(fn, x):
    """Bytes of distinct tensors autograd saves during fn(x), per input element."""
    seen = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        seen[key] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values()) / x.numel()


def test_batch_norm_relu_saves_less_than_torch():
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    ours = _saved_bytes(cnn.BatchNormReLU2d(16), x)
    bn, relu = torch.nn.BatchNorm2d(16), torch.nn.ReLU()
    theirs = _saved_bytes(lambda t: relu(bn(t)), x)
    assert ours <= theirs
    assert ours < 4.1 and theirs > 7.9  # input only, against input + ReLU output


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_deterministic(device, layout):
    g = torch.Generator().manual_seed(0)
    x = _layout(torch.randn(8, 32, 9, 9, generator=g).to(device), layout).requires_grad_()
    gy = torch.randn(x.shape, generator=g).to(device)
    results = []
    threads = torch.get_num_threads()
    for nthreads in (1, max(threads, 2), max(threads, 2)):
        torch.set_num_threads(nthreads)
        m = cnn.BatchNormReLU2d(32).to(device)
        y = m(x)
        (gx,) = torch.autograd.grad(y, x, gy)
        results.append((y, gx, m.running_var))
    torch.set_num_threads(threads)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_norm_cpu_schedules_agree(dtype):
    # Planar training runs channel by channel (both sweeps of a channel back
    # to back) when its tensors exceed the last-level cache, else as two
    # sweeps over contiguous ranges. Both must give the same bits, and
    # torch's result: the assumed cache size is forced both ways.
    # (by channel also needs C >= 2 x threads: two threads, 8 channels)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 8, 11, 13, generator=g, dtype=dtype) * 2 + 1).requires_grad_()
    gy = torch.randn(x.shape, generator=g, dtype=dtype)
    results = []
    threads, isa = torch.get_num_threads(), cnnkernels.cpu_isa()
    paths = ["generic"] + (["avx2"] if cnnkernels._C._avx2_available() else [])
    try:
        torch.set_num_threads(2)
        for path in paths:
            cnnkernels.set_cpu_isa(path)
            for llc in (0, 1 << 40):  # nothing fits / everything fits
                cnnkernels._C._set_llc_bytes(llc)
                m = cnn.BatchNormReLU2d(8).to(dtype)
                y = m(x)
                grads = torch.autograd.grad(y, (x, m.weight, m.bias), gy)
                results.append((y, *grads, m.running_mean, m.running_var))
    finally:
        cnnkernels._C._set_llc_bytes(-1)
        cnnkernels.set_cpu_isa(isa)
        torch.set_num_threads(threads)
    for i in range(0, len(results), 2):  # per code path: both schedules agree bit for bit
        for a, b in zip(results[i], results[i + 1]):
            assert torch.equal(a, b)
    ref = torch.nn.BatchNorm2d(8).to(dtype)
    y = torch.relu(ref(x))
    want = (y, *torch.autograd.grad(y, (x, ref.weight, ref.bias), gy), ref.running_mean,
            ref.running_var)
    for r in results:
        for a, b in zip(r, want):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_large_input_both_store_paths_cpu(layout):
    """An input over 8 MB: with a last-level cache small against it (llc 0)
    the input gradient is written with non-temporal stores, with a large one
    with plain stores; training forward and backward of BatchNormReLU2d
    against torch, and the two paths bit for bit."""
    g = torch.Generator().manual_seed(9)
    x = _layout(torch.randn(4, 16, 192, 176, generator=g) * 3 - 1, layout).requires_grad_()
    gy = _layout(torch.randn(x.shape, generator=g), layout)
    assert x.numel() * 4 > (8 << 20)
    results = []
    try:
        for llc in (0, 1 << 40):
            cnnkernels._C._set_llc_bytes(llc)
            m = cnn.BatchNormReLU2d(16)
            y = m(x)
            results.append((y, *torch.autograd.grad(y, (x, m.weight, m.bias), gy)))
    finally:
        cnnkernels._C._set_llc_bytes(-1)
    for a, b in zip(*results):
        assert torch.equal(a, b)
    ref = torch.nn.BatchNorm2d(16)
    z = ref(x)
    y = torch.relu(z)
    want = (y, *torch.autograd.grad(y, (x, ref.weight, ref.bias), gy))
    torch.testing.assert_close(results[0][0], want[0], **_tol(torch.float32, "out"))
    # over 2 M elements, a z within rounding of 0 can fall on the other side
    # of the ReLU in torch's BatchNorm: such elements (and their channels'
    # weight and bias gradients) are left out
    near = z.detach().abs() < 1e-5
    clear = ~near.any(dim=(0, 2, 3))
    torch.testing.assert_close(results[0][1][~near], want[1][~near], **_tol(torch.float32, "grad"))
    for a, b in zip(results[0][2:], want[2:]):
        torch.testing.assert_close(a[clear], b[clear], **_tol(torch.float32, "grad"))
    assert clear.sum() >= 4


def test_batch_norm_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 3, 5, generator=g, dtype=torch.float64).requires_grad_()
    w = (torch.rand(4, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_()
    for act in (None, "relu", "leaky_relu"):
        for training in (True, False):
            rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
            fn = lambda x, w, b: CF.batch_norm(  # noqa: E731
                x, rm, rv, w, b, training, 0.0, 1e-5, activation=act, negative_slope=0.1
            )
            assert torch.autograd.gradcheck(fn, (x, w, b))


def opcheck_cases(device):
    g = torch.Generator().manual_seed(0)
    out = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(3, 4, 5, 6, generator=g).to(device).contiguous(memory_format=fmt)
        gy = torch.randn(x.shape, generator=g).to(device).contiguous(memory_format=fmt)
        w, b = torch.rand(4, device=device) + 0.5, torch.randn(4, device=device)
        rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
        _, mean, invstd = ops.batch_norm_forward(x, w, b, rm.clone(), rv.clone(), True, 0.1, 1e-5, 1, 0.0)
        out += [
            (ops.batch_norm_forward, (x, w, b, rm, rv, True, 0.1, 1e-5, 1, 0.0)),
            (ops.batch_norm_forward, (x, None, None, None, None, True, 0.1, 1e-5, 0, 0.0)),
            (ops.batch_norm_forward, (x, w, b, rm, rv, False, 0.1, 1e-5, 2, 0.2)),
            (ops.batch_norm_backward, (gy, x, w, b, mean, invstd, True, 1, 0.0, [True, True, True])),
            (ops.batch_norm_backward, (gy, x, None, None, mean, invstd, False, 2, 0.1, [True, False, False])),
        ]
    x1 = torch.randn(6, 5, device=device)
    out.append((ops.batch_norm_forward, (x1, None, None, None, None, True, 0.1, 1e-5, 1, 0.0)))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_opcheck(device):
    for op, args in opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_compile_fullgraph(device):
    m = cnn.BatchNormReLU2d(4).to(device)
    ref = copy.deepcopy(m)
    x = torch.randn(2, 4, 5, 5, device=device, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    yr = ref(x)
    (gr,) = torch.autograd.grad(yr.sum(), x)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(gx, gr)
    torch.testing.assert_close(m.running_mean, ref.running_mean)
    torch.testing.assert_close(m.num_batches_tracked, ref.num_batches_tracked)


def test_batch_norm_modules_are_drop_in():
    for ours_cls, torch_cls in [
        (cnn.BatchNorm2d, torch.nn.BatchNorm2d),
        (cnn.BatchNormReLU2d, torch.nn.BatchNorm2d),
        (cnn.BatchNorm1d, torch.nn.BatchNorm1d),
    ]:
        ours, ref = ours_cls(8, eps=1e-3, momentum=None), torch_cls(8, eps=1e-3, momentum=None)
        assert isinstance(ours, torch_cls)
        assert ours.state_dict().keys() == ref.state_dict().keys()
        assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]
        ours.load_state_dict(ref.state_dict())


def test_batch_norm_double_backward_raises():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = cnn.BatchNormReLU2d(3)(x)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="batch_norm: double backward"):
        gx.sum().backward()


def test_batch_norm_errors():
    x = torch.randn(2, 3, 4, 4)
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        cnn.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"batch_norm: expected more than 1 value per channel when training, got input size \[1, 3\]"):
        ops.batch_norm_forward(torch.randn(1, 3), None, None, None, None, True, 0.1, 1e-5, 0, 0.0)
    with pytest.raises(ValueError, match="batch_norm: activation should be None, 'relu' or 'leaky_relu', but got 'gelu'"):
        CF.batch_norm(x, rm, rv, activation="gelu")
    with pytest.raises(RuntimeError, match=r"batch_norm: weight should be a 1-D tensor of C=3 elements .* shape \[4\]"):
        CF.batch_norm(x, rm, rv, torch.ones(4), training=True)
    with pytest.raises(RuntimeError, match=r"batch_norm: running_mean should be a 1-D tensor of C=3"):
        CF.batch_norm(x, torch.zeros(2), rv, training=True)
    with pytest.raises(RuntimeError, match="batch_norm: bias should have the input's dtype Float, but got Double"):
        CF.batch_norm(x, rm, rv, None, torch.zeros(3, dtype=torch.float64), training=True)
    with pytest.raises(RuntimeError, match="batch_norm: running_mean and running_var are required when training=False"):
        CF.batch_norm(x, None, None, training=False)
    with pytest.raises(RuntimeError, match=r"batch_norm: input should have at least 2 dimensions .* 1-D input of shape \[5\]"):
        CF.batch_norm(torch.randn(5), None, None, training=True)
    with pytest.raises(RuntimeError, match="batch_norm: input dtype should be float32 or float64 on the CPU, but got Half"):
        CF.batch_norm(x.half(), None, None, training=True)
    with pytest.raises(RuntimeError, match="batch_norm: activation should be 0 .* but got 7"):
        ops.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5, 7, 0.0)
    with pytest.raises(RuntimeError, match="batch_norm_backward: grad_output should have the input's shape"):
        ops.batch_norm_backward(torch.randn(2, 3, 4, 5), x, None, None, rm, rv, True, 0, 0.0, [True, False, False])
    with pytest.raises(RuntimeError, match="batch_norm_backward: save_mean should be a 1-D tensor of C=3"):
        ops.batch_norm_backward(x, x, None, None, torch.zeros(2), rv, True, 0, 0.0, [True, False, False])
    with pytest.raises(ValueError, match="expected 4D input"):
        cnn.BatchNormReLU2d(3)(torch.randn(3, 4, 4))  # torch's own module check
    if HAS_CUDA:
        with pytest.raises(RuntimeError, match="batch_norm: weight should be on the input's device"):
            CF.batch_norm(x.cuda(), None, None, torch.ones(3), training=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_statistics_robust_to_large_mean(device, layout):
    """Mean 1000, std 1: sums of squares in float would lose the variance."""
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(8, 4, 33, 47, generator=g, dtype=torch.float64) + 1000
    x = _layout(x64.float().to(device), layout)
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    y = CF.batch_norm(x, rm, rv, training=True, momentum=1.0)
    xr = x.double().cpu()
    mean = xr.mean(dim=(0, 2, 3))
    var = xr.var(dim=(0, 2, 3), unbiased=False)
    ref = (xr - mean[None, :, None, None]) / (var[None, :, None, None] + 1e-5).sqrt()
    torch.testing.assert_close(y.double().cpu(), ref, rtol=0, atol=2e-3)
    torch.testing.assert_close(rv.double().cpu(), xr.var(dim=(0, 2, 3)), rtol=1e-4, atol=0)
