"""Dropout and Dropout2d: the drop rate within 5 standard deviations of p,
the 1 / (1 - p) scaling, backward regenerating exactly the forward's mask,
reproducibility under torch.manual_seed, independence from the thread count,
torch's edge cases (p = 0, p = 1, eval, in-place on leaves) and errors,
opcheck and torch.compile. The Philox generator is checked against its
published known-answer vectors."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import cnnkernels
import cnnkernels.functional as CF
import cnnkernels.nn as cnn
from conftest import DEVICES, HAS_CUDA, dtypes_for

ops = torch.ops.cnnkernels


def test_philox_known_answers():
    # Random123's kat_vectors for philox4x32_10: counter {0,0,0,0}, key {0,0}
    # and counter / key all ones.
    assert cnnkernels._C._philox(0, 0, 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = 0xFFFFFFFFFFFFFFFF
    assert cnnkernels._C._philox(ones, ones, ones) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def _half(words, e):
    return (words[e // 2] >> (16 * (e % 2))) & 0xFFFF


def _reference_keep(n, seed, offset, threshold):
    """The documented mask (common/philox.h), element by element in Python."""
    keep = []
    for i in range(n):
        b, e = divmod(i, 8)
        h, t = _half(cnnkernels._C._philox(b, offset, seed), e), threshold >> 16
        if h != t:
            keep.append(h > t)
        else:  # tie: the same half of the tie stream against the low 16 bits
            s = cnnkernels._C._philox(b, offset ^ (1 << 63), seed)
            keep.append(_half(s, e) >= (threshold & 0xFFFF))
    return torch.tensor(keep)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tie_at", [None, 0, 100, 190])
def test_mask_matches_the_documented_stream(device, tie_at):
    # Element-wise masks take 16 bits per element; when an element's value
    # equals the threshold's high half, a second stream decides. A threshold
    # made to tie with element tie_at forces that path (in a vector step for
    # the AVX2 code) and must still give the exact documented mask.
    seed, offset, n = 0x0123456789ABCDEF, (5 << 32) + 8, 203  # both offset words
    if tie_at is None:
        threshold = 0x6B851EB8  # p = 0.42
    else:
        b, e = divmod(tie_at, 8)
        h = _half(cnnkernels._C._philox(b, offset, seed), e)
        tie_low = _half(cnnkernels._C._philox(b, offset ^ (1 << 63), seed), e)
        threshold = (h << 16) | tie_low  # tie broken towards "keep" (>=)
    p = threshold / 2**32  # exact: dropout_threshold(p) == threshold
    want = _reference_keep(n, seed, offset, threshold)
    if tie_at is not None:
        assert bool(want[tie_at])
    state = torch.tensor([seed, offset], dtype=torch.int64, device=device)
    isa = cnnkernels.cpu_isa()
    paths = ["generic"] + (["avx2"] if cnnkernels._C._avx2_available() else [])
    paths += ["avx512"] if cnnkernels._C._avx512_available() else []
    try:
        for path in paths if device == "cpu" else [isa]:
            cnnkernels.set_cpu_isa(path)
            for dtype in dtypes_for(device):
                g = torch.ones(n, dtype=dtype, device=device)
                got = ops.dropout_backward(g, state, p, False, False).cpu()
                assert torch.equal(got != 0, want), (path, dtype)
                torch.testing.assert_close(got[want], torch.full_like(got[want], 1 / (1 - p)))
    finally:
        cnnkernels.set_cpu_isa(isa)
    if tie_at is not None:  # one more in the low half: the tie now drops
        threshold += 1
        want = _reference_keep(n, seed, offset, threshold)
        assert not bool(want[tie_at])
        g = torch.ones(n, device=device)
        got = ops.dropout_backward(g, state, threshold / 2**32, False, False).cpu()
        assert torch.equal(got != 0, want)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("n", [1000, 100003])
def test_drop_rate_and_scale(device_path, p, n):
    device = device_path
    for dtype in dtypes_for(device):
        x = (torch.rand(n, device=device) + 0.5).to(dtype)
        y = CF.dropout(x, p)
        dropped = (y == 0).double().mean().item()
        assert abs(dropped - p) <= 5 * math.sqrt(p * (1 - p) / n)
        kept = y != 0
        torch.testing.assert_close(y[kept], x[kept] * (1.0 / (1.0 - p)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig", "5d", "scalar"])
def test_backward_uses_the_forward_mask(device_path, layout):
    device = device_path
    x = torch.rand(4, 8, 9, 13, device=device) + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontig":
        x = x[:, ::2]
    elif layout == "5d":
        x = x.reshape(2, 2, 8, 9, 13)
    elif layout == "scalar":
        x = x[0, 0, 0, 0]
    x.requires_grad_()
    y = CF.dropout(x, 0.4)
    gy = torch.rand_like(y) + 0.5
    if layout == "channels_last":
        gy = gy.contiguous()  # a gradient in another layout than the output
    (gx,) = torch.autograd.grad(y, x, gy)
    torch.testing.assert_close(gx, gy * (y != 0) / 0.6)


def test_reproducible_and_fresh(device_path):
    device = device_path
    x = torch.randn(10007, device=device)
    torch.manual_seed(123)
    a, b = CF.dropout(x, 0.5), CF.dropout(x, 0.5)
    torch.manual_seed(123)
    c = CF.dropout(x, 0.5)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def test_independent_of_thread_count_and_code_path():
    x = torch.randn(3, 50001)
    threads = torch.get_num_threads()
    isa = cnnkernels.cpu_isa()
    outs = []
    for nthreads, path in [(1, "generic"), (2, "generic")] + (
        [(1, "avx2"), (2, "avx2")] if cnnkernels._C._avx2_available() else []
    ) + ([(1, "avx512"), (2, "avx512")] if cnnkernels._C._avx512_available() else []):
        torch.set_num_threads(nthreads)
        cnnkernels.set_cpu_isa(path)
        torch.manual_seed(7)
        outs.append(CF.dropout(x[:, 3:], 0.3))  # an offset start: partial vectors
    torch.set_num_threads(threads)
    cnnkernels.set_cpu_isa(isa)
    for o in outs[1:]:
        assert torch.equal(outs[0], o)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
def test_same_mask_on_cpu_and_cuda():
    state = torch.tensor([1234567890123, 8], dtype=torch.int64)
    g = torch.ones(5, 7, 33)
    a = ops.dropout_backward(g, state, 0.3, False, False)
    b = ops.dropout_backward(g.cuda(), state.cuda(), 0.3, False, False)
    assert torch.equal(a, b.cpu())
    a = ops.dropout_backward(g, state, 0.3, True, False)
    b = ops.dropout_backward(g.cuda(), state.cuda(), 0.3, True, False)
    assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_edge_cases(device):
    x = torch.randn(6, 7, device=device)
    assert CF.dropout(x, 0.0) is x  # torch returns the input itself
    assert CF.dropout(x, 0.5, training=False) is x
    assert torch.equal(CF.dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(CF.dropout2d(x.view(2, 3, 7), 1.0), torch.zeros(2, 3, 7, device=device))
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(CF.dropout(xr, 1.0).sum(), xr)
    assert torch.equal(g, torch.zeros_like(x))
    e = torch.randn(0, 3, device=device)
    assert CF.dropout(e, 0.5).shape == (0, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace(device):
    x = torch.rand(5, 64, device=device) + 0.5
    ref = x.clone()
    torch.manual_seed(3)
    y = CF.dropout(x, 0.5, inplace=True)
    assert y is x
    torch.manual_seed(3)
    assert torch.equal(y, CF.dropout(ref, 0.5))
    leaf = torch.rand(5, 64, device=device, requires_grad=True)
    with pytest.raises(RuntimeError) as ours:
        CF.dropout(leaf, 0.5, inplace=True)
    with pytest.raises(RuntimeError) as theirs:
        F.dropout(leaf, 0.5, inplace=True)
    assert "leaf Variable that requires grad" in str(ours.value)
    assert "leaf Variable that requires grad" in str(theirs.value)
    # on a non-leaf: gradients flow through the in-place result
    w = torch.rand(5, 64, device=device, requires_grad=True)
    h = w * 2
    out = cnn.Dropout(0.5, inplace=True)(h)
    (gw,) = torch.autograd.grad(out.sum(), w)
    torch.testing.assert_close(gw, 2 * (out != 0) / 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dropout2d_zeroes_whole_channels(device, layout):
    x = torch.rand(8, 32, 5, 6, device=device) + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = cnn.Dropout2d(0.5)(x)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    zero = (y == 0).flatten(2)
    per_channel = zero.all(-1)
    assert torch.equal(per_channel, zero.any(-1))  # a channel is all or nothing
    assert 0.3 < per_channel.float().mean().item() < 0.7
    torch.testing.assert_close(y[~per_channel], (x * 2)[~per_channel])
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, (y != 0).to(gx.dtype) * 2)


def test_dropout2d_layouts_and_code_paths_agree():
    """dropout2d's channel scales applied per plane (NCHW) and per pixel
    (channels_last, parallel chunks that start inside an image), by each CPU
    code path: the same seed gives the same values everywhere."""
    x = torch.randn(3, 5, 67, 67)
    isa = cnnkernels.cpu_isa()
    paths = ["generic"] + (["avx2"] if cnnkernels._C._avx2_available() else [])
    outs = []
    try:
        for path in paths:
            cnnkernels.set_cpu_isa(path)
            for fmt in (torch.contiguous_format, torch.channels_last):
                torch.manual_seed(11)
                y = CF.dropout2d(x.contiguous(memory_format=fmt), 0.4)
                assert y.is_contiguous(memory_format=fmt)
                outs.append(y)
    finally:
        cnnkernels.set_cpu_isa(isa)
    kept = outs[0].flatten(2).ne(0).any(-1)
    assert 0 < kept.sum() < kept.numel()
    scale = kept[..., None, None].float() * torch.tensor(1 / 0.6)  # float32, as the kernel
    torch.testing.assert_close(outs[0], x * scale, rtol=0, atol=0)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_dropout2d_warnings_like_torch():
    with pytest.warns(UserWarning, match="3-D input is taken as \\(N, C, L\\)"):
        y = CF.dropout2d(torch.rand(4, 16, 10) + 1, 0.5)
    assert torch.equal((y == 0).all(-1), (y == 0).any(-1))
    with pytest.warns(UserWarning, match="got a 2-D input"):
        CF.dropout2d(torch.rand(4, 16), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CF.dropout2d(torch.rand(2, 4, 3, 3), 0.5)


def test_modules_are_drop_in():
    for ours, ref in [(cnn.Dropout(0.3, True), torch.nn.Dropout(0.3, True)),
                      (cnn.Dropout2d(0.2), torch.nn.Dropout2d(0.2))]:
        assert isinstance(ours, type(ref))
        assert repr(ours) == repr(ref)
        assert ours.state_dict().keys() == ref.state_dict().keys()
    m = cnn.Dropout(0.5).eval()
    x = torch.randn(3, 3)
    assert m(x) is x


def test_saves_no_mask():
    x = torch.randn(64, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        CF.dropout(x, 0.5)
    assert sum(t.numel() * t.element_size() for t in saved) == 16  # rng_state only


def test_errors():
    x = torch.randn(4, 4)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"dropout probability has to be between 0 and 1, but got {p}"):
            CF.dropout(x, p)
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            CF.dropout2d(x.view(1, 4, 4), p)
    with pytest.raises(RuntimeError, match="dropout: dropout probability p has to be between 0 and 1, but got p=2"):
        ops.dropout_forward(x, 2.0, False, False)
    with pytest.raises(RuntimeError, match="dropout: input dtype should be float32 or float64 on the CPU, but got Half"):
        CF.dropout(x.half(), 0.5)
    with pytest.raises(RuntimeError, match="dropout: channel-wise dropout needs an input of at least 2 dimensions"):
        CF.dropout2d(torch.randn(5), 0.5)
    with pytest.raises(RuntimeError, match="dropout_backward: rng_state should be the int64 tensor of 2 elements"):
        ops.dropout_backward(x, torch.zeros(3, dtype=torch.int64), 0.5, False, False)
    with pytest.raises(RuntimeError, match="dropout_backward: rng_state should be the int64"):
        ops.dropout_backward(x, torch.zeros(2), 0.5, False, False)
    if HAS_CUDA:
        with pytest.raises(RuntimeError, match="dropout_backward: rng_state should be on the gradient's device"):
            ops.dropout_backward(x.cuda(), torch.zeros(2, dtype=torch.int64), 0.5, False, False)


def test_double_backward_raises():
    x = torch.randn(8, 8, requires_grad=True)
    y = CF.dropout(x * x, 0.5)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    # the gradient of x*x is differentiable; dropout's own backward is not
    (gy,) = torch.autograd.grad(CF.dropout(x, 0.5).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="dropout: double backward"):
        gy.sum().backward()


def opcheck_cases(device):
    x = torch.randn(3, 4, 5, 6, device=device)
    xc = x.contiguous(memory_format=torch.channels_last)
    state = torch.tensor([42, 4], dtype=torch.int64, device=device)
    return [
        (ops.dropout_forward, (x, 0.3, False, False)),
        (ops.dropout_forward, (xc, 0.3, True, True)),
        (ops.dropout_forward_, (x.clone(), 0.3, False, False)),
        (ops.dropout_backward, (x, state, 0.3, False, False)),
        (ops.dropout_backward, (xc, state, 0.5, True, True)),
    ]


# The forward ops draw a fresh seed per call, so comparisons between two runs
# (AOT dispatch) cannot hold for them; their schema, fake kernel and autograd
# registration are still checked.
_RANDOM_OPS = {"dropout_forward", "dropout_forward_"}


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in opcheck_cases(device):
        name = op._qualified_op_name.split("::")[1]
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        if name not in _RANDOM_OPS:
            utils = utils + ("test_aot_dispatch_dynamic",)
        torch.library.opcheck(op, args, test_utils=utils)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    m = torch.nn.Sequential(torch.nn.Linear(16, 16), cnn.Dropout(0.5)).to(device)
    x = torch.randn(8, 16, device=device)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    y = compiled(x)
    torch.manual_seed(0)
    yr = m(x)
    torch.testing.assert_close(y, yr)
    y.sum().backward()
