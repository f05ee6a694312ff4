"""Conv2d, Conv1d and ConvTranspose2d against torch.nn: outputs and input /
weight / bias gradients over kernel sizes 1-7 (square and not), stride, every
padding form, dilation, groups (depthwise too), bias or none, padding modes,
output_padding / output_size; NCHW, channels_last, non-contiguous,
unbatched and empty inputs; then gradcheck, opcheck, torch.compile,
determinism and every argument error."""

import pytest
import torch
import torch.nn.functional as F

import cnnkernels
import cnnkernels.functional as CF
import cnnkernels.nn as cnn
from conftest import DEVICES, HAS_CUDA, dtypes_for

ops = torch.ops.cnnkernels


def _tol(dtype):
    return {
        torch.float64: dict(rtol=1e-9, atol=1e-9),
        torch.float32: dict(rtol=1e-4, atol=1e-3),
        torch.float16: dict(rtol=1e-2, atol=5e-2),
        torch.bfloat16: dict(rtol=5e-2, atol=3e-1),
    }[dtype]


def _layout(x, layout):
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontig":
        return torch.stack([x, x], dim=-1).flatten(-2)[..., ::2]  # same values, strided
    return x


def _on_threads(fn, counts=(1, 2, 3)):
    """fn() run with each thread count in turn (the count restored after)."""
    threads = torch.get_num_threads()
    try:
        out = []
        for n in counts:
            torch.set_num_threads(n)
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(threads)


def _run(fn, ref_fn, tensors, device, dtype, layout, grads=(True, True, True)):
    """Calls fn and ref_fn (torch, in float64 on the CPU) on the same values;
    compares outputs and the gradients of every tensor that requires one."""
    ours_in, ref_in = [], []
    for t, g in zip(tensors, grads):
        if t is None:
            ours_in.append(None), ref_in.append(None)
            continue
        o = _layout(t.to(device, dtype), layout if t.dim() >= 3 else "contiguous")
        ours_in.append(o.detach().requires_grad_(g))
        ref_in.append(t.double().detach().requires_grad_(g))
    y = fn(*ours_in)
    r = ref_fn(*ref_in)
    tol = _tol(dtype)
    torch.testing.assert_close(y.double().cpu(), r, **tol)
    gy = torch.randn(r.shape, dtype=torch.float64)
    want = [t for t in ours_in if t is not None and t.requires_grad]
    want_r = [t for t in ref_in if t is not None and t.requires_grad]
    if not want:
        return y
    g_ours = torch.autograd.grad(y, want, gy.to(device, dtype))
    g_ref = torch.autograd.grad(r, want_r, gy)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.double().cpu(), b, **tol)
    return y


# (N, C, H, W), (OC, KH, KW), stride, padding, dilation, groups, bias
CONV_CASES = [
    ((2, 3, 9, 10), (4, 1, 1), 1, 0, 1, 1, True),
    ((2, 5, 9, 10), (7, 3, 3), 1, 1, 1, 1, True),
    ((2, 4, 11, 9), (6, 2, 2), 2, 0, 1, 1, False),
    ((1, 3, 12, 13), (5, 4, 4), 2, 1, 1, 1, True),
    ((2, 2, 13, 12), (3, 5, 5), 1, 2, 1, 1, True),
    ((1, 3, 15, 14), (8, 7, 7), 2, 3, 1, 1, True),        # stem-like
    ((2, 6, 10, 11), (4, 3, 5), (1, 2), (1, 2), 1, 1, True),  # non-square
    ((2, 4, 12, 12), (6, 3, 3), 1, 2, 2, 1, False),       # dilation 2
    ((2, 4, 12, 13), (4, 3, 2), (2, 1), (0, 1), (2, 3), 1, True),
    ((2, 8, 9, 9), (12, 3, 3), 1, 1, 1, 4, True),         # groups
    ((2, 6, 9, 10), (6, 3, 3), 1, 1, 1, 6, True),         # depthwise
    ((2, 4, 10, 9), (8, 3, 3), 2, 1, 1, 4, False),        # depthwise, multiplier 2
    ((2, 5, 11, 10), (5, 5, 5), 2, 2, 2, 5, True),        # depthwise, strided, dilated
    ((2, 20, 9, 11), (20, 3, 3), 1, 1, 1, 20, True),      # depthwise, 8-channel vectors + tail
    ((2, 16, 12, 13), (16, 5, 3), (2, 1), (2, 1), (1, 2), 16, False),  # ... strided, dilated
    ((2, 18, 8, 9), (20, 3, 3), 3, 2, 1, 1, True),        # stride > kernel rows skip
    ((2, 33, 7, 8), (17, 1, 1), 1, 0, 1, 1, True),        # channel tails
    ((3, 1, 12, 12), (6, 5, 5), 1, 0, 1, 1, True),        # LeNet-like
    ((1, 2, 5, 6), (3, 6, 1), 1, (3, 0), 1, 1, True),     # kernel taller than input + padding
    ((2, 4, 9, 9), (4, 3, 3), 1, "same", 1, 2, True),
    ((2, 3, 9, 8), (5, 4, 2), 1, "same", (1, 2), 1, True),  # even kernel: extra padding right
    ((2, 3, 9, 8), (5, 3, 3), 1, "valid", 1, 1, False),
    ((2, 1, 40, 40), (6, 5, 5), 1, 0, 1, 1, False),       # few weight-gradient columns: split reduction
    ((1, 300, 5, 6), (260, 1, 1), 1, 0, 1, 1, True),      # 1x1 with more than 256 channels: chunked GEMM
    ((3, 20, 10, 13), (14, 1, 1), 1, 0, 1, 1, False),     # 1x1 GEMM: 64-pixel items, a short last one per image
    ((1, 100, 6, 7), (8, 3, 3), 1, 1, 1, 1, True),        # a kernel row of 300 (kw, c) steps: split
]


def _conv_args(case):
    shape, (oc, kh, kw), s, p, d, g, bias = case
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(oc, shape[1] // g, kh, kw, dtype=torch.float64)
    b = torch.randn(oc, dtype=torch.float64) if bias else None
    return x, w, b, s, p, d, g


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"c{i}" for i in range(len(CONV_CASES))])
def test_conv2d_matches_torch(device_path, case, layout):
    torch.manual_seed(0)
    x, w, b, s, p, d, g = _conv_args(case)
    for dtype in dtypes_for(device_path):
        _run(lambda x, w, b: CF.conv2d(x, w, b, s, p, d, g),
             lambda x, w, b: F.conv2d(x, w, b, s, p, d, g), (x, w, b), device_path, dtype, layout)


# (N, IC, H, W), (OC/groups, KH, KW), stride, padding, output_padding, groups, dilation, bias
TRANSPOSED_CASES = [
    ((2, 6, 7, 8), (4, 4, 4), 2, 1, 0, 1, 1, True),       # 4x4 stride 2
    ((2, 5, 7, 6), (3, 3, 3), 2, 1, 1, 1, 1, True),       # 3x3 stride 2, output_padding 1
    ((2, 4, 6, 7), (5, 2, 2), 2, 0, 0, 1, 1, False),      # 2x2 stride 2
    ((1, 4, 5, 6), (3, 3, 3), 1, 1, 0, 1, 1, True),
    ((2, 6, 5, 5), (2, 3, 5), (3, 2), (1, 2), (2, 1), 2, 1, True),
    ((2, 4, 6, 5), (3, 3, 3), 1, 2, 1, 2, 2, True),       # output_padding < dilation
    ((2, 4, 5, 6), (1, 3, 3), 2, 1, 1, 4, 1, True),       # depthwise
    ((2, 4, 5, 6), (2, 3, 3), 1, 1, 0, 4, 2, False),      # depthwise, multiplier 2
    ((2, 3, 4, 4), (17, 7, 7), 3, 0, 2, 1, 1, True),      # stride 3, kernel 7
    ((2, 8, 4, 5), (3, 1, 1), 1, 0, 0, 1, 1, True),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", TRANSPOSED_CASES, ids=[f"t{i}" for i in range(len(TRANSPOSED_CASES))])
def test_conv_transpose2d_matches_torch(device_path, case, layout):
    torch.manual_seed(0)
    shape, (ocg, kh, kw), s, p, op, g, d, bias = case
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(shape[1], ocg, kh, kw, dtype=torch.float64)
    b = torch.randn(ocg * g, dtype=torch.float64) if bias else None
    for dtype in dtypes_for(device_path):
        _run(lambda x, w, b: CF.conv_transpose2d(x, w, b, s, p, op, g, d),
             lambda x, w, b: F.conv_transpose2d(x, w, b, s, p, op, g, d),
             (x, w, b), device_path, dtype, layout)


@pytest.mark.parametrize("case", [
    ((2, 4, 17), (6, 3), 1, 1, 1, 1), ((2, 4, 17), (4, 4), 2, 0, 2, 2), ((3, 11), (5, 5), 1, "same", 1, 1),
    ((2, 3, 12), (3, 4), 1, "same", 1, 3),
], ids=["plain", "strided", "unbatched-same", "depthwise-same-even"])
def test_conv1d_matches_torch(device_path, case):
    torch.manual_seed(0)
    shape, (oc, k), s, p, d, g = case
    c = shape[-2]
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(oc, c // g, k, dtype=torch.float64)
    b = torch.randn(oc, dtype=torch.float64)
    for dtype in dtypes_for(device_path):
        _run(lambda x, w, b: CF.conv1d(x, w, b, s, p, d, g),
             lambda x, w, b: F.conv1d(x, w, b, s, p, d, g), (x, w, b), device_path, dtype, "contiguous")


def test_conv_transpose1d_matches_torch(device_path):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, dtype=torch.float64)
    w = torch.randn(4, 3, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    _run(lambda x, w, b: CF.conv_transpose1d(x, w, b, 2, 1, 1),
         lambda x, w, b: F.conv_transpose1d(x, w, b, 2, 1, 1), (x, w, b), device_path,
         torch.float64, "contiguous")


def test_unbatched_input(device_path):
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 8, 9), torch.randn(5, 3, 3, 3), torch.randn(5)
    y = _run(lambda x, w, b: CF.conv2d(x, w, b, 1, 1), lambda x, w, b: F.conv2d(x, w, b, 1, 1),
             (x, w, b), device_path, torch.float32, "contiguous")
    assert y.shape == (5, 8, 9)
    wt = torch.randn(3, 2, 3, 3)
    y = _run(lambda x, w, b: CF.conv_transpose2d(x, w, b, 2), lambda x, w, b: F.conv_transpose2d(x, w, b, 2),
             (x, wt, None), device_path, torch.float32, "contiguous")
    assert y.shape == (2, 17, 19)


@pytest.mark.parametrize("transposed", [False, True])
def test_empty_batch(device_path, transposed):
    x = torch.randn(0, 4, 6, 7, device=device_path, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, device=device_path).mul(100).requires_grad_()
    b = torch.randn(4, device=device_path).add(7).requires_grad_()
    fn, ref = (CF.conv_transpose2d, F.conv_transpose2d) if transposed else (CF.conv2d, F.conv2d)
    y = fn(x, w, b, 2, 1)
    assert y.shape == ref(x, w, b, 2, 1).shape
    gx, gw, gb = torch.autograd.grad(y.sum(), (x, w, b))
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv2d_module_padding_modes(device_path, mode):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), padding_mode=mode, bias=True)
    ours = cnn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), padding_mode=mode, bias=True)
    ours.load_state_dict(ref.state_dict())
    assert repr(ours).replace("Conv2d", "X") == repr(ref).replace("Conv2d", "X")
    ref, ours = ref.to(device_path), ours.to(device_path)
    x = torch.randn(2, 4, 9, 11, device=device_path, requires_grad=True)
    y, r = ours(x), ref(x)
    torch.testing.assert_close(y, r, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(r)
    a = torch.autograd.grad(y, (x, ours.weight, ours.bias), g)
    e = torch.autograd.grad(r, (x, ref.weight, ref.bias), g)
    for u, v in zip(a, e):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


def test_conv1d_module_and_init(device_path):
    torch.manual_seed(3)
    ref = torch.nn.Conv1d(4, 6, 3, padding="same", padding_mode="reflect", groups=2)
    torch.manual_seed(3)
    ours = cnn.Conv1d(4, 6, 3, padding="same", padding_mode="reflect", groups=2)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)  # same init
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ref, ours = ref.to(device_path), ours.to(device_path)
    x = torch.randn(3, 4, 10, device=device_path)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
    assert isinstance(ours, torch.nn.Conv1d)


@pytest.mark.parametrize("output_size", [None, (13, 16), (14, 15), [2, 6, 14, 16]])
def test_conv_transpose2d_module_output_size(device_path, output_size):
    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, dilation=1)
    ours = cnn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, dilation=1)
    ours.load_state_dict(ref.state_dict())
    ref, ours = ref.to(device_path), ours.to(device_path)
    x = torch.randn(2, 6, 7, 8, device=device_path, requires_grad=True)
    y, r = ours(x, output_size), ref(x, output_size)
    assert y.shape == r.shape
    torch.testing.assert_close(y, r, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(r)
    for u, v in zip(torch.autograd.grad(y, (x, ours.weight), g), torch.autograd.grad(r, (x, ref.weight), g)):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        ours(x, (20, 20))  # torch's own output_size check


def test_conv_transpose2d_module_rejects_padding_mode():
    m = cnn.ConvTranspose2d(2, 2, 3)
    m.padding_mode = "reflect"
    with pytest.raises(ValueError, match="zeros"):
        m(torch.randn(1, 2, 5, 5))


def test_only_requested_gradients_are_computed():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    gy = torch.randn(2, 4, 6, 6)
    gx, gw, gb = ops.conv2d_backward(gy, x, w, [1, 1], [0, 0], [1, 1], 1, [False, True, False])
    assert gx.numel() == 0 and gb.numel() == 0
    torch.testing.assert_close(gw, torch.nn.grad.conv2d_weight(x, w.shape, gy), rtol=1e-4, atol=1e-4)
    # a frozen weight: only the input gradient flows
    xr = x.clone().requires_grad_()
    y = CF.conv2d(xr, w, None)
    (g,) = torch.autograd.grad(y, (xr,), gy)
    torch.testing.assert_close(g, torch.nn.grad.conv2d_input(x.shape, w, gy), rtol=1e-4, atol=1e-4)


def test_output_layout_follows_torch(device_path):
    x = torch.randn(2, 3, 8, 8, device=device_path)
    w = torch.randn(4, 3, 3, 3, device=device_path)
    for xi, wi in [(x, w), (x.contiguous(memory_format=torch.channels_last), w),
                   (x, w.contiguous(memory_format=torch.channels_last))]:
        y, r = CF.conv2d(xi, wi), F.conv2d(xi, wi)
        assert y.is_contiguous(memory_format=torch.channels_last) == r.is_contiguous(
            memory_format=torch.channels_last)
        assert y.is_contiguous() == r.is_contiguous()


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_deterministic(device_path, transposed, layout):
    torch.manual_seed(0)
    x = _layout(torch.randn(4, 32, 20, 21, device=device_path), layout).requires_grad_()
    if transposed:
        w = torch.randn(32, 24, 3, 3, device=device_path, requires_grad=True)
        fn = lambda: CF.conv_transpose2d(x, w, None, 2, 1, 1)  # noqa: E731
    else:
        w = torch.randn(24, 32, 3, 3, device=device_path, requires_grad=True)
        fn = lambda: CF.conv2d(x, w, None, 1, 1)  # noqa: E731
    runs = []
    for _ in range(2):
        y = fn()
        runs.append((y,) + torch.autograd.grad(y, (x, w), torch.ones_like(y)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_gradcheck_float64():
    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    x, w, b = torch.randn(2, 4, 6, 7, **d), torch.randn(6, 2, 3, 2, **d), torch.randn(6, **d)
    assert torch.autograd.gradcheck(lambda x, w, b: CF.conv2d(x, w, b, (2, 1), 1, (1, 2), 2), (x, w, b))
    wt = torch.randn(4, 3, 3, 3, **d)
    assert torch.autograd.gradcheck(lambda x, w, b: CF.conv_transpose2d(x, w, b, 2, 1, 1), (x, wt, b[:3]))
    xd, wd = torch.randn(1, 4, 5, 5, **d), torch.randn(4, 1, 3, 3, **d)
    assert torch.autograd.gradcheck(lambda x, w: CF.conv2d(x, w, None, 2, 1, groups=4), (xd, wd))
    x1, w1 = torch.randn(2, 3, 9, **d), torch.randn(2, 3, 4, **d)
    assert torch.autograd.gradcheck(lambda x, w: CF.conv1d(x, w, None, 1, "same"), (x1, w1))


def opcheck_cases(device):
    g = torch.Generator().manual_seed(0)
    out = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 4, 7, 8, generator=g).to(device).contiguous(memory_format=fmt)
        w = torch.randn(6, 2, 3, 3, generator=g).to(device)
        b = torch.randn(6, generator=g).to(device)
        gy = torch.randn(2, 6, 4, 8, generator=g).to(device).contiguous(memory_format=fmt)
        wt = torch.randn(4, 3, 3, 3, generator=g).to(device)
        gt = torch.randn(2, 6, 14, 16, generator=g).to(device).contiguous(memory_format=fmt)
        out += [
            (ops.conv2d_forward, (x, w, b, [2, 1], [1, 1], [1, 1], 2)),
            (ops.conv2d_forward, (x, w, None, [1, 1], [0, 1, 2, 1], [1, 2], 2)),
            (ops.conv2d_backward, (gy, x, w, [2, 1], [1, 1], [1, 1], 2, [True, True, True])),
            (ops.conv2d_backward, (gy, x, w, [2, 1], [1, 1], [1, 1], 2, [False, True, False])),
            (ops.conv_transpose2d_forward, (x, wt, b, [2, 2], [1, 1], [1, 1], 2, [1, 1])),
            (ops.conv_transpose2d_backward, (gt, x, wt, [2, 2], [1, 1], [1, 1], 2, [1, 1], [True, True, True])),
        ]
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_conv_opcheck(device):
    for op, args in opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_conv_compile_fullgraph(device):
    torch.manual_seed(0)
    m = torch.nn.Sequential(cnn.Conv2d(3, 8, 3, padding=1), cnn.ConvTranspose2d(8, 4, 2, 2)).to(device)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ConvTranspose2d(8, 4, 2, 2)).to(device)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 6, 7, device=device, requires_grad=True)
    y = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    yr = ref(x)
    (gr,) = torch.autograd.grad(yr.sum(), x)
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, gr, rtol=1e-4, atol=1e-4)


def test_double_backward_raises():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    (g,) = torch.autograd.grad(CF.conv2d(x, w).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="conv2d: double backward"):
        g.sum().backward()


def _x(*s, **k):
    return torch.randn(*s, **k)


@pytest.mark.parametrize("call,match", [
    (lambda: CF.conv2d(_x(5, 5), _x(3, 1, 3, 3)), r"Expected 3D \(unbatched\) or 4D"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3)), "conv2d: expected a 4-D weight"),
    (lambda: CF.conv2d(_x(1, 4, 5, 5), _x(3, 2, 3, 3)), "conv2d: with groups=1 and weight of size"),
    (lambda: CF.conv2d(_x(1, 4, 5, 5), _x(3, 2, 3, 3), groups=2), "conv2d: groups=2 should divide the output"),
    (lambda: CF.conv2d(_x(1, 4, 5, 5), _x(4, 2, 3, 3), groups=0), "conv2d: groups should be positive"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), _x(4)), "conv2d: bias should be a 1-D tensor of 3"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), stride=0), "conv2d: stride should be positive"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), padding=-1), "conv2d: padding should be non-negative"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), dilation=0), "conv2d: dilation should be positive"),
    (lambda: CF.conv2d(_x(1, 2, 2, 5), _x(3, 2, 3, 3)), r"conv2d: the padded input \(2 x 5\) is smaller"),
    (lambda: CF.conv2d(_x(1, 2, 0, 3), _x(3, 2, 3, 3), padding=2), "conv2d: only a zero batch may have an empty image"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), stride=2, padding="same"), "not supported for strided"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), padding="full"), "Invalid padding string: 'full'"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3, dtype=torch.float64)), "conv2d: weight should have the input's dtype"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), _x(3, dtype=torch.float64)), "conv2d: bias should have the input's dtype"),
    (lambda: CF.conv2d(torch.ones(1, 2, 5, 5, dtype=torch.int32), torch.ones(3, 2, 3, 3, dtype=torch.int32)),
     "conv2d: input dtype should be float32 or float64"),
    (lambda: CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), stride=(1, 2, 3)), "conv2d: stride must be a single int or a tuple of two"),
    (lambda: CF.conv1d(_x(5), _x(3, 1, 3)), r"Expected 2D \(unbatched\) or 3D"),
    (lambda: CF.conv1d(_x(1, 1, 5), _x(3, 1, 3, 3)), "conv1d: expected a 3-D weight"),
    (lambda: CF.conv_transpose2d(_x(1, 4, 5, 5), _x(3, 2, 3, 3)), "conv_transpose2d: weight dimension 0 \\(3\\) should equal"),
    (lambda: CF.conv_transpose2d(_x(1, 4, 5, 5), _x(4, 2, 3, 3), groups=3), "conv_transpose2d: groups=3 should divide"),
    (lambda: CF.conv_transpose2d(_x(1, 4, 5, 5), _x(4, 2, 3, 3), stride=2, output_padding=2),
     "conv_transpose2d: output_padding should be smaller than stride or dilation"),
    (lambda: CF.conv_transpose2d(_x(1, 4, 2, 2), _x(4, 2, 1, 1), padding=1), "conv_transpose2d: the output would be empty"),
    (lambda: CF.conv_transpose2d(_x(1, 4, 5, 5), _x(4, 2, 3, 3), _x(3)), "conv_transpose2d: bias should be a 1-D tensor of 2"),
    (lambda: ops.conv2d_backward(_x(1, 3, 4, 4), _x(1, 2, 5, 5), _x(3, 2, 3, 3), [1], [0], [1], 1, [True] * 3),
     r"conv2d_backward: grad_output should have size \[1, 3, 3, 3\]"),
    (lambda: ops.conv_transpose2d_backward(_x(1, 2, 6, 6), _x(1, 4, 5, 5), _x(4, 2, 3, 3), [1], [0], [0], 1, [1],
                                           [True] * 3), r"conv_transpose2d_backward: grad_output should have size \[1, 2, 7, 7\]"),
])
def test_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
def test_device_mismatch():
    with pytest.raises(RuntimeError, match="conv2d: weight should be on the input's device"):
        CF.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3, device="cuda"))


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def _check_conv_and_transposed(case, seed, layout, runs, device="cuda"):
    """The convolution of `case` and the transposed convolution of the same
    geometry, per (dtype, tf32, bound) in runs: the output and every gradient
    as ||ours - ref|| / ||ref|| against float64 on the CPU, the output finite
    and in the input's memory format."""
    shape, (oc, kh, kw), stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    w = torch.randn(oc, shape[1] // groups, kh, kw, generator=g) / (shape[1] // groups * kh * kw) ** 0.5
    b = torch.randn(oc, generator=g)
    args = (stride, padding, dilation, groups)
    targs = (stride, padding, 0, groups, dilation)
    xt = torch.randn(F.conv2d(x, w, None, *args).shape, generator=g)  # the transposed op's input
    bt = torch.randn(shape[1], generator=g)
    pairs = [(False, (x, w, b), lambda *t: CF.conv2d(*t, *args), lambda *t: F.conv2d(*t, *args)),
             (True, (xt, w, bt), lambda *t: CF.conv_transpose2d(*t, *targs),
              lambda *t: F.conv_transpose2d(*t, *targs))]
    try:
        for transposed, tensors, fn, ref_fn in pairs:
            ref_in = [t.double().requires_grad_() for t in tensors]
            r = ref_fn(*ref_in)
            gy = torch.randn(r.shape, generator=g, dtype=torch.float64)
            ref_grads = torch.autograd.grad(r, ref_in, gy)
            for dtype, tf32, bound in runs:
                torch.backends.cudnn.allow_tf32 = tf32
                ins = [_layout(t.to(device, dtype), layout if t.dim() == 4 else "contiguous").requires_grad_()
                       for t in tensors]
                y = fn(*ins)
                grads = torch.autograd.grad(y, ins, gy.to(device, dtype))
                errs = [_rel(y, r)] + [_rel(a, e) for a, e in zip(grads, ref_grads)]
                assert max(errs) < bound, (transposed, dtype, tf32, errs)
                assert torch.isfinite(y).all()
                assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    finally:
        torch.backends.cudnn.allow_tf32 = False


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [
    # (N, C, H, W), (OC, KH, KW), stride, padding, dilation, groups
    ((4, 70, 20, 19), (100, 3, 3), 1, 1, 1, 1),
    ((3, 64, 21, 22), (130, 3, 3), 2, 1, 1, 2),
    ((2, 48, 17, 18), (64, 5, 5), (2, 1), (2, 1), (1, 2), 1),
    ((5, 200, 9, 9), (72, 1, 1), 1, 0, 1, 1),
])
def test_cuda_large_tiles_all_dtypes(case, layout):
    """Shapes that span several GEMM tiles in every dimension (and several K
    chunks in the weight gradient), per dtype, as ||ours - ref|| / ||ref||
    against float64 on the CPU; float32 both exact and as TF32."""
    _check_conv_and_transposed(case, 3, layout, [
        (torch.float64, False, 1e-12), (torch.float32, False, 1e-5), (torch.float32, True, 3e-3),
        (torch.float16, False, 3e-3), (torch.bfloat16, False, 2e-2)])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", [
    # (N, C, H, W), (OC, KH, KW), stride, padding, dilation, groups
    ((3, 16, 13, 11), (24, 3, 3), 1, 1, 1, 1),            # M, N and K tails of every tile
    ((2, 40, 9, 10), (72, 5, 3), (2, 1), (2, 0), (1, 2), 1),  # slices spanning taps, two N tiles
    ((2, 32, 8, 8), (48, 3, 3), 1, 1, 1, 2),              # groups
    ((2, 64, 7, 7), (136, 1, 1), 2, 0, 1, 1),             # strided 1x1, three N tiles
    ((1, 8, 6, 6), (8, 2, 2), 1, 2, 1, 1),                # padding beyond the kernel's reach
    ((8, 16, 30, 30), (80, 3, 3), 1, 1, 1, 1),            # weight grad split over pixels, two M tiles
    ((2, 16, 11, 12), (24, 3, 3), 3, 1, 2, 1),            # stride 3, dilation 2: one tap per phase
    ((2, 8, 10, 9), (16, 3, 3), 2, 1, 2, 1),              # stride 2, dilation 2: a phase no tap reaches
    ((2, 24, 8, 8), (32, 4, 4), 2, 1, 1, 1),              # ConvTranspose2d-style 4x4 stride 2
])
def test_cuda_pipelined_igemm(case, layout):
    """Channel counts that are multiples of the 16-byte vector take the
    pipelined tensor-core implicit GEMM (forward, data gradient by stride
    phases, weight gradient) in TF32 float32, float16 and bfloat16: output and every
    gradient against float64 on the CPU, NCHW, channels_last and strided
    inputs; transposed convolution of the same geometry too."""
    _check_conv_and_transposed(case, 11, layout, [
        (torch.float32, True, 3e-3), (torch.float16, False, 3e-3), (torch.bfloat16, False, 2e-2)])


def _odd_inputs_check(device, dtype, bound):
    g = torch.Generator().manual_seed(13)
    w = torch.randn(1 + 64 * 64, generator=g).to(device, dtype)[1:].view(64, 64, 1, 1)
    assert w.data_ptr() % 16 != 0
    x = torch.randn(2, 64, 8, 8, generator=g).to(device, dtype)
    assert _rel(CF.conv2d(x, w), F.conv2d(x.double().cpu(), w.double().cpu())) < bound
    with torch.inference_mode():
        gy, xx, ww = (torch.randn(s, generator=g).to(device, dtype) for s in ((1, 8, 4, 4), (1, 8, 4, 4), (8, 8, 1, 1)))
        ours = ops.conv2d_backward(gy, xx, ww, [1, 1], [0, 0], [1, 1], 1, [True, True, True])
    ref = torch.ops.aten.convolution_backward(gy.double().cpu(), xx.double().cpu(), ww.double().cpu(), [8], [1, 1],
                                              [0, 0], [1, 1], False, [0, 0], 1, [True, True, True])
    for a, e in zip(ours, ref):
        assert _rel(a, e) < bound


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
def test_cuda_igemm_odd_inputs():
    """A 1x1 weight whose storage offset is not 16-byte aligned (the implicit
    GEMM reads the weight with 16-byte loads: it takes an aligned copy), and
    the backward op under inference_mode (inference tensors have no version
    counter for the channels_last cache): float16 against float64."""
    _odd_inputs_check("cuda", torch.float16, 3e-3)


def test_odd_inputs_cpu():
    """The same calls on the CPU, float32 against float64."""
    _odd_inputs_check("cpu", torch.float32, 1e-5)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
@pytest.mark.parametrize("case", [
    # (N, C, H, W), K, padding
    ((2, 6, 19, 13), 3, 1),    # rows not a multiple of the 8-row strip, widths not of 4
    ((3, 4, 8, 8), 3, 0),      # exact strips, no padding
    ((1, 5, 23, 9), 5, 2),
    ((2, 3, 12, 30), 7, 3),
    ((2, 2, 5, 5), 5, (0, 2)),  # one output row, padding on one axis
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_depthwise_strips(case, layout):
    """Depthwise layers with unit stride and dilation run on the strip
    kernels (NCHW: 4 x 8 outputs per thread; channels_last, when C % 4 == 0:
    4 channels x 2 x 4 outputs, the weight gradient for 3x3; the data
    gradient with reversed taps; the weight gradient reduced per channel in
    a fixed order): every dtype against float64 on the CPU, and the weight
    gradient bit for bit the same twice."""
    shape, k, padding = case
    if layout == "channels_last":  # channel counts that fill the 4-channel vector
        shape = (shape[0], 4 * shape[1], *shape[2:])
    c = shape[1]
    g = torch.Generator().manual_seed(12)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    ref_in = [t.clone().requires_grad_() for t in (x, w, b)]
    r = F.conv2d(*ref_in, 1, padding, 1, c)
    gy = torch.randn(r.shape, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(r, ref_in, gy)
    for dtype, bound in [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 3e-3),
                         (torch.bfloat16, 2e-2)]:
        ins = [t.to("cuda", dtype).requires_grad_() for t in (x, w, b)]
        y = CF.conv2d(*ins, 1, padding, 1, c)
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
        grads = torch.autograd.grad(y, ins, gy.to("cuda", dtype))
        errs = [_rel(y, r)] + [_rel(a, e) for a, e in zip(grads, ref_grads)]
        assert max(errs) < bound, (dtype, errs)
        again = torch.autograd.grad(CF.conv2d(*ins, 1, padding, 1, c), ins, gy.to("cuda", dtype))
        assert torch.equal(again[1], grads[1])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("llc", [0, 1 << 40], ids=["stream", "cached"])
def test_depthwise_channels_last_large_output_cpu(cpu_isa, stride, llc):
    """Outputs over 8 MB take the non-temporal-store path of the channels_last
    depthwise kernels (forward and stride-1 data gradient) where the
    last-level cache is small against them (llc 0), plain stores where it is
    large."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 128, 96, 96, generator=g).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(128, 1, 3, 3, generator=g).requires_grad_()
    b = torch.randn(128, generator=g).requires_grad_()
    cnnkernels._C._set_llc_bytes(llc)
    try:
        y = CF.conv2d(x, w, b, stride, 1, 1, 128)
        r = F.conv2d(x, w, b, stride, 1, 1, 128)
        assert y.numel() * 4 > (8 << 20) or stride == 2
        torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-4)
        gy = torch.randn(r.shape, generator=g).contiguous(memory_format=torch.channels_last)
        for a, e in zip(torch.autograd.grad(y, (x, w, b), gy), torch.autograd.grad(r, (x, w, b), gy)):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3)
    finally:
        cnnkernels._C._set_llc_bytes(-1)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_weight_grad_long_reduction_cpu(cpu_isa, layout):
    """A reduction over enough pixels to be split (P / (8 x chunk) = 2),
    chunks spanning image boundaries, and (on two threads: one column group)
    NCHW grad_output packed straight from its planes: a stem-like 7x7
    stride-2 layer, float64 against torch."""
    g = torch.Generator().manual_seed(6)
    x = _layout(torch.randn(8, 3, 66, 66, generator=g, dtype=torch.float64), layout)
    w = torch.randn(16, 3, 7, 7, generator=g, dtype=torch.float64)
    gy = _layout(torch.randn(8, 16, 33, 33, generator=g, dtype=torch.float64), layout)
    ours = torch.ops.cnnkernels.conv2d_backward(gy, x, w, [2, 2], [3, 3], [1, 1], 1,
                                                [False, True, True])
    ref = torch.ops.aten.convolution_backward(gy, x, w, [16], [2, 2], [3, 3], [1, 1], False,
                                              [0, 0], 1, [False, True, True])
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [
    ((5, 1, 28, 28), (6, 5, 5), 1, 0, 1),           # LeNet's first layer, rows read in place
    ((3, 1, 28, 28), (6, 5, 5), 1, 2, 1),           # padded: zero-bordered row copies
    ((2, 3, 13, 37), (7, 3, 4), (2, 1), 1, (1, 2)),  # 7 channels = 4 + 3, tail vectors, dilation
    ((2, 2, 9, 11), (8, 2, 3), 1, "same", 1),      # 4 + 4 channels, extra right padding
    ((1, 4, 6, 20), (1, 7, 1), (3, 1), 3, 1),      # one channel, rows that see only padding
    ((2, 3, 5, 70), (5, 1, 3), 1, (0, 1), (1, 3)),  # wide rows: several vector blocks
])
def test_few_output_channels_rows_cpu(cpu_isa, case, layout):
    """Few output channels (at most 8, width stride 1) run as output rows
    vectorised along the width: float32 and float64 against torch in float64,
    NCHW and channels_last outputs (strides as torch's), and bit for bit the
    same on 1, 2 and 3 threads."""
    shape, (oc, kh, kw), s, p, d = case
    gen = torch.Generator().manual_seed(9)
    x = _layout(torch.randn(shape, generator=gen, dtype=torch.float64), layout)
    w = torch.randn(oc, shape[1], kh, kw, generator=gen, dtype=torch.float64)
    b = torch.randn(oc, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, w, b, s, p, d)
    torch.testing.assert_close(CF.conv2d(x, w, b, s, p, d), ref, rtol=1e-10, atol=1e-10)
    runs = _on_threads(lambda: CF.conv2d(x.float(), w.float(), None, s, p, d))
    torch.testing.assert_close(runs[0].double(), F.conv2d(x, w, None, s, p, d), rtol=1e-4,
                               atol=1e-4)
    assert runs[0].stride() == F.conv2d(x.float(), w.float(), None, s, p, d).stride()
    for other in runs[1:]:
        assert torch.equal(runs[0], other)


@pytest.mark.parametrize("case", [
    # (conv_transpose2d input shape, out channels, (kh, kw), stride, padding, output_padding, groups)
    ((3, 128, 9, 11), 24, (3, 3), 2, 1, 1, 1),       # 3x3 stride 2, a partial column block
    ((2, 128, 7, 6), 40, (4, 4), 2, 1, 0, 2),        # 4x4 stride 2, groups 2
    ((2, 176, 5, 7), 8, (3, 3), (2, 3), (0, 1), (1, 2), 1),  # stride 2 x 3
    ((5, 128, 48, 48), 64, (3, 3), 2, 1, 1, 1),      # images over several staging blocks
])
def test_strided_dgrad_staged_nchw_cpu(cpu_isa, case):
    """NCHW data gradients with stride phases and long reductions (taps x
    grad_output channels >= 256 per phase) are computed into a channels_last
    staging copy, a block of images at a time, and transposed into the
    planes: conv_transpose2d's forward (with bias) and conv2d's data
    gradient against torch, the same bits as channels_last (Winograd off:
    channels_last 3x3 stride 2 may run it) and on 1, 2 and 3 threads."""
    shape, oc, (kh, kw), s, p, op, grp = case
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(shape, generator=gen)
    w = torch.randn(shape[1], oc // grp, kh, kw, generator=gen)
    b = torch.randn(oc, generator=gen)
    big = shape[0] == 5
    dt = torch.float32 if big else torch.float64
    ref = F.conv_transpose2d(x.to(dt), w.to(dt), b.to(dt), s, p, op, grp)
    runs = _on_threads(lambda: CF.conv_transpose2d(x, w, b, s, p, op, grp))
    torch.testing.assert_close(runs[0].to(dt), ref, rtol=1e-4, atol=1e-3 if big else 1e-4)
    for other in runs[1:]:
        assert torch.equal(runs[0], other)
    from cnnkernels import _C
    try:  # (channels_last 3x3 and 4x4 layers may run Winograd, NCHW 3x3 ones do not)
        _C._set_winograd(False)
        cl = CF.conv_transpose2d(x.contiguous(memory_format=torch.channels_last), w, b, s, p, op,
                                 grp)
        nchw = CF.conv_transpose2d(x, w, b, s, p, op, grp)
    finally:
        _C._set_winograd(True)
    assert torch.equal(nchw, cl)
    assert torch.equal(runs[0], nchw)  # (no NCHW case here runs Winograd)
    if big:
        return
    # no input channels: an empty gradient, not a division by zero
    if case[-1] == 1 and not big:
        e = torch.ops.cnnkernels.conv2d_backward(
            x, torch.empty(ref.shape[0], 0, *ref.shape[2:]), w[:, :0], [s, s] if isinstance(s, int) else list(s),
            [p, p] if isinstance(p, int) else list(p), [1, 1], 1, [True, False, False])[0]
        assert e.shape == (ref.shape[0], 0, *ref.shape[2:])
    # the same geometry as conv2d's data gradient (grad_output: x)
    gx = torch.ops.cnnkernels.conv2d_backward(
        x, torch.empty(ref.shape), w, [s, s] if isinstance(s, int) else list(s),
        [p, p] if isinstance(p, int) else list(p), [1, 1], grp, [True, False, False])[0]
    y = torch.zeros(ref.shape, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(F.conv2d(y, w.double(), None, s, p, 1, grp), y, x.double())[0]
    torch.testing.assert_close(gx.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [
    # (input shape, out channels, (kh, kw), stride, padding, dilation, groups)
    ((4, 6, 14, 14), 16, (5, 5), 1, 0, 1, 1),      # LeNet's 6 -> 16: full reversed padding
    ((3, 3, 11, 20), 5, (3, 3), 1, 1, 1, 1),       # 'same' 3x3, 3 channels of gx
    ((2, 8, 9, 17), 4, (3, 5), 1, (2, 1), (1, 2), 1),  # 8 channels, dilation, uneven taps
    ((2, 1, 12, 9), 3, (4, 4), 1, "same", 1, 1),   # one channel, even kernel (extra right pad)
    ((2, 8, 10, 12), 6, (3, 3), 1, 1, 1, 2),       # groups of 4 channels (NCHW on the rows)
    ((2, 4, 8, 10), 5, (3, 3), 1, 3, 1, 1),        # padding past the kernel: GEMM loop
    ((2, 4, 9, 11), 6, (3, 3), (1, 2), 1, 1, 1),   # width stride 2: GEMM loop
])
def test_few_input_channels_dgrad_rows_cpu(cpu_isa, case, layout):
    """Data gradients with few input channels per group and unit strides run
    as a convolution of grad_output on the output-row kernels (weights
    transposed per group, taps reversed); so does conv_transpose2d's forward.
    float64 against torch, float32 bit for bit on 1, 2 and 3 threads."""
    shape, oc, (kh, kw), s, p, d, grp = case
    gen = torch.Generator().manual_seed(12)
    x = _layout(torch.randn(shape, generator=gen, dtype=torch.float64), layout)
    w = torch.randn(oc, shape[1] // grp, kh, kw, generator=gen, dtype=torch.float64)

    def grads(conv, x, w):
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = conv(x, w, None, s, p, d, grp)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(13),
                         dtype=torch.float64).to(y.dtype)
        return torch.autograd.grad(y, (x, w), gy)

    ref = grads(F.conv2d, x, w)
    for ours, r in zip(grads(CF.conv2d, x, w), ref):
        torch.testing.assert_close(ours, r, rtol=1e-10, atol=1e-10)
    runs = _on_threads(lambda: grads(CF.conv2d, x.float(), w.float()))
    for ours, r in zip(runs[0], ref):
        torch.testing.assert_close(ours.double(), r, rtol=1e-4, atol=1e-4)
    assert runs[0][0].stride() == ref[0].stride()
    for other in runs[1:]:
        assert all(torch.equal(a, o) for a, o in zip(runs[0], other))
    if s == 1 and isinstance(p, int):  # the same pass as conv_transpose2d's forward, with bias
        b = torch.randn(shape[1], generator=gen, dtype=torch.float64)
        gy = _layout(torch.randn(F.conv2d(x, w, None, s, p, d, grp).shape, generator=gen,
                                 dtype=torch.float64), layout)
        torch.testing.assert_close(CF.conv_transpose2d(gy, w, b, s, p, 0, grp, d),
                                   F.conv_transpose2d(gy, w, b, s, p, 0, grp, d),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [
    ((5, 1, 28, 28), 6, (5, 5), 1, 2, 1),     # LeNet's first layer: 25 taps in 9 + 8 + 8
    ((40, 1, 7, 7), 2, (3, 3), 1, 1, 1),      # 32 image blocks of 1 or 2 images
    ((1, 1, 5, 30), 8, (7, 7), 1, 3, 1),      # one image, kernel taller than the image
    ((3, 1, 9, 13), 4, (3, 3), (2, 1), 1, 2),  # height stride and dilation
])
def test_single_channel_wgrad_rows_cpu(cpu_isa, case, layout):
    """One input channel (a depthwise layer of one group) takes its weight
    gradient from the row kernels, NCHW and channels_last, in blocks of images
    whose count does not depend on the threads: float64 against torch,
    float32 bit for bit on 1, 2 and 3 threads."""
    shape, oc, (kh, kw), s, p, d = case
    gen = torch.Generator().manual_seed(14)
    x = _layout(torch.randn(shape, generator=gen, dtype=torch.float64), layout)
    w = torch.randn(oc, 1, kh, kw, generator=gen, dtype=torch.float64)
    gy = _layout(torch.randn(F.conv2d(x, w, None, s, p, d).shape, generator=gen,
                             dtype=torch.float64), layout)
    args = ([s, s] if isinstance(s, int) else list(s), [p, p], [d, d], 1, [False, True, False])
    ref = torch.ops.aten.convolution_backward(gy, x, w, None, args[0], args[1], args[2], False,
                                              [0, 0], 1, args[4])[1]
    ours = torch.ops.cnnkernels.conv2d_backward(gy, x, w, *args)[1]
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    runs = _on_threads(
        lambda: torch.ops.cnnkernels.conv2d_backward(gy.float(), x.float(), w.float(), *args)[1])
    torch.testing.assert_close(runs[0].double(), ref, rtol=1e-4, atol=1e-4)
    for other in runs[1:]:
        assert torch.equal(runs[0], other)


@pytest.mark.parametrize("case", [
    ((2, 8, 13, 21), 1, (3, 3), 1, 1, 1),        # 3x3 'same': data gradient as a reversed-tap conv
    ((2, 4, 9, 30), 2, (3, 5), 1, (1, 2), (2, 1)),  # multiplier 2, dilation, masked row tails
    ((3, 6, 11, 17), 1, (5, 3), (2, 1), 2, 1),    # height stride: weight gradient rows only
    ((1, 3, 6, 12), 1, (3, 3), 1, (3, 4), 1),     # padding past the kernel: other data-gradient loop
    ((2, 5, 7, 6), 1, (3, 3), 1, 1, 1),           # rows narrower than a vector
    ((1, 2, 4, 150), 1, (3, 3), 1, 1, 1),         # 19 vectors a row: blocks of 6, 6 and 7
    ((2, 3, 5, 28), 1, (3, 3), 1, 1, 1),          # 28 columns: one block of 4, the last shifted
])
def test_depthwise_rows_cpu(cpu_isa, case):
    """NCHW depthwise layers with width stride 1 run on the output-row kernels:
    forward, data gradient and weight gradient against torch in float64, and
    float32 bit for bit the same on 1, 2 and 3 threads."""
    shape, mult, (kh, kw), s, p, d = case
    c = shape[1]
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    w = torch.randn(c * mult, 1, kh, kw, generator=gen, dtype=torch.float64)
    b = torch.randn(c * mult, generator=gen, dtype=torch.float64)

    def run(conv, x, w, b):
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = conv(x, w, b, s, p, d, c)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(11),
                         dtype=torch.float64).to(y.dtype)
        return (y,) + torch.autograd.grad(y, (x, w), gy)

    for ours, ref in zip(run(CF.conv2d, x, w, b), run(F.conv2d, x, w, b)):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    runs = _on_threads(lambda: run(CF.conv2d, x.float(), w.float(), b.float()))
    for ours, ref in zip(runs[0], run(F.conv2d, x, w, b)):
        torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)
    for other in runs[1:]:
        assert all(torch.equal(a, o) for a, o in zip(runs[0], other))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [
    ((7, 32, 2, 2), (32, 3, 3), 1, 1, 1, 1),      # 2x2 images: every pixel its own tap set
    ((3, 5, 3, 3), (6, 1, 1), 1, 1, 1, 1),        # border outputs read only padding
    ((2, 6, 3, 4), (5, 5, 5), 1, 2, 1, 1),        # kernel larger than the image
    ((3, 4, 6, 7), (8, 3, 3), 2, 2, 2, 1),        # strided, dilated, wide padding
    ((8, 64, 7, 7), (64, 3, 3), 1, 1, 1, 2),      # groups, 7x7 (ResNet's last stage)
    ((4, 3, 9, 9), (5, 3, 3), 1, 1, 1, 1),        # short reductions: rows grouped, columns not
    ((5, 3, 14, 14), (4, 3, 3), 1, 1, 1, 1),      # blocks of 2 images (2, 2, 1)
    ((2, 32, 9, 9), (32, 3, 3), 2, 2, 2, 1),      # column groups, strided and dilated
    ((3, 8, 9, 10), (8, 3, 3), (2, 1), 1, 1, 1),  # merged data-gradient runs, 2 row phases
    ((2, 32, 6, 7), (32, 4, 2), 1, "same", 1, 1),  # uneven padding (extra row / column)
    ((5, 3, 4, 5), (4, 2, 3), (1, 2), (1, 2), 1, 1),  # uneven padding per axis
])
def test_padding_taps_skipped_cpu(cpu_isa, case, layout):
    """The forward and the data gradient group pixels by the taps inside the
    image and skip the rest (columns too for reductions of 256+ steps):
    small images, outputs that see only padding, groups, image blocks.
    float64 against torch, and bit for bit the same on 1, 2 and 3 threads."""
    shape, (oc, kh, kw), s, p, d, g = case
    gen = torch.Generator().manual_seed(7)
    x = _layout(torch.randn(shape, generator=gen, dtype=torch.float64), layout)
    w = torch.randn(oc, shape[1] // g, kh, kw, generator=gen, dtype=torch.float64)
    b = torch.randn(oc, generator=gen, dtype=torch.float64)

    def run(x, w, b, conv):
        x = x.detach().requires_grad_()
        y = conv(x, w, b, s, p, d, g)
        gy = _layout(torch.randn(y.shape, generator=torch.Generator().manual_seed(8),
                                 dtype=y.dtype), layout)
        return y, torch.autograd.grad(y, x, gy)[0]

    y, gx = run(x, w, b, CF.conv2d)
    ry, rgx = run(x, w, b, F.conv2d)
    torch.testing.assert_close(y, ry, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, rgx, rtol=1e-10, atol=1e-10)
    runs = _on_threads(lambda: run(x.float(), w.float(), b.float(), CF.conv2d))
    for other in runs[1:]:
        assert torch.equal(runs[0][0], other[0]) and torch.equal(runs[0][1], other[1])


# ---------------------------------------------------------------- Winograd
# (N, C, H, W), OC, padding, bias, dilation, groups: 3x3 unit-stride
# float32 layers with at least 16 channels per group on both sides, run as
# Winograd F(2x2, 3x3) past the size rules (forward, data gradient and
# weight gradient; conv_transpose2d's too): odd sizes (last
# tiles cut), channel counts off the 6- and 16-wide blocks, padding 0-3,
# dilation (each phase of outputs a plain 3x3 convolution), groups.
WINOGRAD_CASES = [
    ((4, 16, 16, 16), 16, 1, True, 1, 1),
    ((3, 19, 21, 23), 33, 1, False, 1, 1),
    ((2, 40, 26, 27), 24, 0, True, 1, 1),
    ((4, 24, 22, 17), 20, 2, True, 1, 1),
    ((1, 64, 40, 33), 70, 1, True, 1, 1),
    ((2, 24, 17, 18), 96, 1, True, 1, 1),   # 6 column blocks: wide tiles of 3 + 3
    ((4, 16, 26, 26), 20, 1, True, 1, 1),   # weight gradient: 2 tile chunks x 2 position groups
    ((8, 17, 30, 31), 18, 1, False, 1, 1),  # 4 tile chunks
    ((4, 64, 21, 23), 64, 1, True, 1, 4),   # groups (16 channels each)
    ((3, 32, 25, 26), 48, 3, True, 3, 2),   # dilation 3 (9 phases, of 9 and 8 rows), groups
    ((2, 32, 30, 31), 32, 2, False, 2, 1),  # dilation 2, odd width
]


def _winograd_run(x, w, b, p, d, groups, transposed=False):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    if transposed:
        y = CF.conv_transpose2d(x, w, b, 1, p, 0, groups, d)
    else:
        y = CF.conv2d(x, w, b, 1, p, d, groups)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype)
    gy = gy.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) and not x.is_contiguous() else gy
    return (y,) + torch.autograd.grad(y, (x, w), gy)


@pytest.mark.parametrize("case", WINOGRAD_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("transposed", [False, True])
def test_winograd_cpu(cpu_isa, case, layout, transposed):
    """float32 against torch in float64 (output, input and weight gradients)
    with an error at most 4x the direct convolution's, proof that another
    algorithm ran (not bit for bit the direct result), and the same bits on
    1, 2 and 3 threads."""
    shape, oc, p, has_b, d, groups = case
    gen = torch.Generator().manual_seed(11)
    x = _layout(torch.randn(shape, generator=gen), layout)
    cg = shape[1] // groups
    wshape = (shape[1], oc // groups, 3, 3) if transposed else (oc, cg, 3, 3)
    w = torch.randn(wshape, generator=gen) / (3 * cg ** 0.5)
    b = torch.randn(oc, generator=gen) if has_b else None
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    bd = None if b is None else b.double()
    if transposed:
        r = F.conv_transpose2d(xd, wd, bd, 1, p, 0, groups, d)
    else:
        r = F.conv2d(xd, wd, bd, 1, p, d, groups)
    gy = torch.randn(r.shape, generator=torch.Generator().manual_seed(3)).double()
    ref = (r,) + torch.autograd.grad(r, (xd, wd), gy)
    # (past the size rules: test_winograd_size_rules)
    direct, wino = _direct_and_forced_winograd(
        lambda: _winograd_run(x, w, b, p, d, groups, transposed))
    # all three (conv_transpose2d: its forward is the convolution's data
    # gradient, its input gradient the convolution's forward) run on
    # another algorithm
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for k, (name, f) in enumerate(
            (("output", fmt), ("grad_input", fmt), ("grad_weight", torch.contiguous_format))):
        _check_forced_winograd(direct[k], [r[k] for r in wino], ref[k], name, f)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_winograd_size_rules(layout):
    """Where the rules pick Winograd (conv.cpp, winograd_applies), in either
    layout: forward and data gradient from 512 tiles with 32+ channels per
    group, weight gradient from 1024 tiles with over 32 channels per group
    on both sides; both from 384 tiles for outputs of 12x12 or more. A pass that ran direct gives the bits of the run with
    Winograd off; one that ran Winograd does not."""
    from cnnkernels import _C
    gen = torch.Generator().manual_seed(6)
    # shape, groups, which of (output, grad_input, grad_weight) run Winograd
    cases = [
        ((8, 32, 16, 16), 1, (True, True, False)),    # 512 tiles: not the weight gradient
        ((16, 32, 16, 16), 1, (True, True, False)),   # 1024 tiles, 32 channels
        ((16, 48, 16, 16), 1, (True, True, True)),    # 48 channels
        ((16, 64, 16, 16), 2, (True, True, False)),   # 32 channels per group
        ((16, 96, 16, 16), 2, (True, True, True)),    # 48 channels per group
        ((16, 64, 16, 16), 1, (True, True, True)),
        ((4, 64, 16, 16), 1, (False, False, False)),  # 256 tiles
        ((8, 64, 14, 14), 1, (True, True, True)),     # 392 tiles, 14x14 outputs
        ((32, 64, 8, 8), 1, (True, True, False)),     # 512 tiles, 8x8 outputs
        ((16, 64, 16, 16), 4, (False, False, False)), # 16 channels per group
    ]
    for shape, groups, expect in cases:
        x = _layout(torch.randn(shape, generator=gen), layout)
        w = torch.randn(shape[1], shape[1] // groups, 3, 3, generator=gen) / (3 * shape[1] ** 0.5)
        try:
            _C._set_winograd(False)
            direct = _winograd_run(x, w, None, 1, 1, groups)
            _C._set_winograd(True)
            auto = _winograd_run(x, w, None, 1, 1, groups)
        finally:
            _C._set_winograd(True)
        got = tuple(not torch.equal(a, b) for a, b in zip(auto, direct))
        assert got == expect, (shape, groups, got)


def _direct_and_forced_winograd(fn):
    """fn() with Winograd off, and fn() with it forced on 1, 2 and 3 threads."""
    from cnnkernels import _C
    try:
        _C._set_winograd(False)
        direct = fn()
        _C._force_winograd()  # past the size rules
        wino = _on_threads(fn)
    finally:
        _C._set_winograd(True)
    return direct, wino


def _check_forced_winograd(direct, wino, ref, name, memory_format):
    """The forced runs against ref (float64): error at most 4x the direct
    path's, not the direct path's bits, the same bits on every thread count,
    in memory_format."""
    err_d = (direct.double() - ref).abs().max().item()
    err_w = (wino[0].double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err_w <= max(4 * err_d, 1e-6 * scale), (name, err_w, err_d)
    torch.testing.assert_close(wino[0].double(), ref, rtol=1e-4, atol=1e-4 * scale)
    assert not torch.equal(wino[0], direct), name
    for other in wino[1:]:
        assert torch.equal(wino[0], other), name
    assert wino[0].is_contiguous(memory_format=memory_format), name


# conv_transpose2d 4x4 stride 2 (the data gradient of a 4x4 stride-2
# convolution) on Winograd F(2x2, 2x2) per stride phase:
# (N, in, out, H, W, padding, output_padding, groups, bias)
WINOGRAD_S2K4_CASES = [
    ((2, 32, 32, 9, 11), 1, 0, 1, True),
    ((3, 64, 36, 10, 9), 0, 1, 1, False),   # 3 column blocks, odd output
    ((2, 64, 64, 9, 9), 2, 1, 2, True),     # groups
    ((1, 40, 96, 12, 13), 3, 0, 1, True),   # 6 column blocks (3 + 3)
    ((2, 24, 20, 8, 9), 1, 1, 1, False),
    ((4, 16, 16, 26, 26), 1, 0, 1, True),   # weight gradient: 676 tiles, 2 tile chunks
]


@pytest.mark.parametrize("case", WINOGRAD_S2K4_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_winograd_s2k4_cpu(cpu_isa, case, layout):
    """conv_transpose2d 4x4 stride 2, and conv2d 4x4 stride 2 and its input
    gradient, with Winograd forced: against torch in float64 (error at most
    4x the direct path's), not the direct path's bits, the same bits on 1, 2
    and 3 threads, the layout kept."""
    shape, p, op, groups, has_b = case
    gen = torch.Generator().manual_seed(12)
    N, ci, co, H, W = shape
    x = _layout(torch.randn(N, ci, H, W, generator=gen), layout)
    w = torch.randn(ci, co // groups, 4, 4, generator=gen) / (4 * ci ** 0.5)
    b = torch.randn(co, generator=gen) if has_b else None
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    run = _direct_and_forced_winograd

    def check(direct, wino, ref, name):
        _check_forced_winograd(direct, wino, ref, name, fmt)

    ref = F.conv_transpose2d(x.double(), w.double(), None if b is None else b.double(), 2, p, op, groups)
    direct, wino = run(lambda: CF.conv_transpose2d(x, w, b, 2, p, op, groups))
    check(direct, wino, ref, "conv_transpose2d")
    # conv2d 4x4 stride 2 from ref's shape back to x's: its input gradient
    xc = _layout(torch.randn(ref.shape, generator=gen), layout)

    def conv_grad():
        xg = xc.detach().requires_grad_()
        y = CF.conv2d(xg, w, None, 2, p, 1, groups)
        return torch.autograd.grad(y, xg, x)[0]  # (x: grad_output's shape and layout)
    xd = xc.double().requires_grad_()
    yd = F.conv2d(xd, w.double(), None, 2, p, 1, groups)
    assert yd.shape == x.shape
    refg = torch.autograd.grad(yd, xd, x.double())[0]
    direct, wino = run(conv_grad)
    check(direct, wino, refg, "conv2d grad_input")
    # conv2d 4x4 stride 2 forward (space-to-depth, then F(2x2, 2x2))
    w2 = torch.randn(ci, co // groups, 4, 4, generator=gen) / (4 * co ** 0.5)
    b2 = torch.randn(ci, generator=gen) if has_b else None
    ref2 = F.conv2d(xc.double(), w2.double(), None if b2 is None else b2.double(), 2, p, 1, groups)
    direct, wino = run(lambda: CF.conv2d(xc, w2, b2, 2, p, 1, groups))
    check(direct, wino, ref2, "conv2d")
    # its weight gradient (space-to-depth, then F(2x2, 2x2)'s weight gradient)
    gy2 = _layout(torch.randn(ref2.shape, generator=gen), layout)
    w2d = w2.double().requires_grad_()
    refw = torch.autograd.grad(F.conv2d(xc.double(), w2d, None, 2, p, 1, groups), w2d,
                               gy2.double())[0]

    def conv_wgrad():
        wg = w2.detach().requires_grad_()
        return torch.autograd.grad(CF.conv2d(xc, wg, None, 2, p, 1, groups), wg, gy2)[0]
    direct, wino = run(conv_wgrad)  # (weights: always contiguous)
    _check_forced_winograd(direct, wino, refw, "conv2d grad_weight", torch.contiguous_format)


@pytest.mark.parametrize("case", [
    ((2, 32, 32, 9, 11), 1, 1, 1, True),
    ((2, 64, 48, 8, 9), 1, 0, 1, False),
    ((2, 64, 64, 9, 8), 0, 1, 2, True),     # groups, no padding
    ((1, 40, 96, 12, 13), 2, 0, 1, True),
])
def test_winograd_s2k3_channels_last_cpu(cpu_isa, case):
    """conv_transpose2d 3x3 stride 2, channels_last, with Winograd forced: its
    stride phase with 2x2 taps on F(2x2, 2x2), the others direct, into one
    result: against torch in float64, not the direct bits, the same bits on
    1, 2 and 3 threads; and conv2d 3x3 stride 2's input gradient likewise."""
    (N, ci, co, H, W), p, op, groups, has_b = case
    gen = torch.Generator().manual_seed(14)
    x = _layout(torch.randn(N, ci, H, W, generator=gen), "channels_last")
    w = torch.randn(ci, co // groups, 3, 3, generator=gen) / (3 * ci ** 0.5)
    b = torch.randn(co, generator=gen) if has_b else None
    ref = F.conv_transpose2d(x.double(), w.double(), None if b is None else b.double(), 2, p, op,
                             groups)
    xc = _layout(torch.randn(ref.shape, generator=gen), "channels_last")
    xd = xc.double().requires_grad_()
    refg = torch.autograd.grad(F.conv2d(xd, w.double(), None, 2, p, 1, groups), xd, x.double())[0]

    def conv_grad():
        xg = xc.detach().requires_grad_()
        return torch.autograd.grad(CF.conv2d(xg, w, None, 2, p, 1, groups), xg, x)[0]
    for fn, r, name in ((lambda: CF.conv_transpose2d(x, w, b, 2, p, op, groups), ref, "transposed"),
                        (conv_grad, refg, "conv2d grad_input")):
        direct, wino = _direct_and_forced_winograd(fn)
        _check_forced_winograd(direct, wino, r, name, torch.channels_last)


def test_winograd_s2k4_rules():
    """Where conv_transpose2d 4x4 stride 2 and conv2d 4x4 stride 2 run on
    F(2x2, 2x2) by themselves (winograd_s2k4_applies,
    winograd_s2k4_conv_applies): 12x12+ grad_output / output with 128+
    tiles per phase (1024+ from 8x8), 32+
    channels on both sides and 64+ on one; conv2d's weight gradient from 1024
    tiles; the direct path elsewhere."""
    from cnnkernels import _C
    gen = torch.Generator().manual_seed(13)
    cases = [  # (N, in, out, H), whether Winograd runs: transposed, conv2d, its grad_weight
        ((2, 64, 32, 16), (True, True, False)),     # 2 x 8 x 8 = 128 tiles a phase
        ((2, 64, 32, 14), (False, False, False)),   # 2 x 7 x 7 = 98 tiles
        ((2, 32, 32, 16), (False, False, False)),   # no side with 64 channels
        ((2, 64, 16, 16), (False, False, False)),   # 16 channels
        ((64, 64, 64, 8), (True, True, True)),      # 8x8, 64 x 4 x 4 = 1024 tiles
        ((32, 64, 64, 8), (False, False, False)),   # 512 tiles at 8x8
        ((16, 64, 32, 16), (True, True, True)),     # 1024 tiles at 16x16
    ]
    for (N, ci, co, H), expect in cases:
        x = torch.randn(N, ci, H, H, generator=gen)
        w = torch.randn(ci, co, 4, 4, generator=gen)
        # conv2d 4x4 stride 2 from 2H x 2H to H x H: the same rules
        xf = torch.randn(N, co, 2 * H, 2 * H, generator=gen)
        wf = torch.randn(ci, co, 4, 4, generator=gen)
        try:
            _C._set_winograd(False)
            direct = (CF.conv_transpose2d(x, w, None, 2, 1), CF.conv2d(xf, wf, None, 2, 1))
            _C._set_winograd(True)
            auto = (CF.conv_transpose2d(x, w, None, 2, 1), CF.conv2d(xf, wf, None, 2, 1))
        finally:
            _C._set_winograd(True)
        # conv2d's weight gradient (1024+ tiles only)
        gy = torch.randn(N, ci, H, H, generator=gen)

        def wgrad():
            wg = wf.detach().requires_grad_()
            return torch.autograd.grad(CF.conv2d(xf, wg, None, 2, 1), wg, gy)[0]
        try:
            _C._set_winograd(False)
            direct += (wgrad(),)
            _C._set_winograd(True)
            auto += (wgrad(),)
        finally:
            _C._set_winograd(True)
        for a, d, e in zip(auto, direct, expect):
            assert (not torch.equal(a, d)) == e, ((N, ci, co, H), expect)


def test_winograd_not_for_few_tiles_or_float64():
    """Below 256 tiles (and in float64) the direct convolution runs: the
    result is bit for bit the same with Winograd allowed or not."""
    from cnnkernels import _C
    gen = torch.Generator().manual_seed(5)
    for shape, dtype in (((2, 32, 12, 12), torch.float32), ((4, 32, 16, 16), torch.float64)):
        x = torch.randn(shape, generator=gen, dtype=dtype)
        w = torch.randn(32, 32, 3, 3, generator=gen, dtype=dtype)
        try:
            _C._set_winograd(False)
            a = CF.conv2d(x, w, None, 1, 1)
            _C._set_winograd(True)
            b = CF.conv2d(x, w, None, 1, 1)
        finally:
            _C._set_winograd(True)
        assert torch.equal(a, b)


def test_winograd_2x2_not_for_float64():
    """float64 never runs the F(2x2, 2x2) paths, even forced: conv_transpose2d
    4x4 stride 2 (and channels_last 3x3 stride 2), conv2d 4x4 stride 2
    forward and weight gradient give the direct path's bits."""
    from cnnkernels import _C
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(2, 32, 16, 16, generator=gen, dtype=torch.float64)
    xl = x.contiguous(memory_format=torch.channels_last)
    x2 = torch.randn(2, 32, 32, 32, generator=gen, dtype=torch.float64)
    w4 = torch.randn(32, 32, 4, 4, generator=gen, dtype=torch.float64)
    w3 = torch.randn(32, 32, 3, 3, generator=gen, dtype=torch.float64)
    gy = torch.randn(2, 32, 16, 16, generator=gen, dtype=torch.float64)

    def wgrad():
        wg = w4.detach().requires_grad_()
        return torch.autograd.grad(CF.conv2d(x2, wg, None, 2, 1), wg, gy)[0]
    fns = [lambda: CF.conv_transpose2d(x, w4, None, 2, 1),
           lambda: CF.conv_transpose2d(xl, w3, None, 2, 1, 1),
           lambda: CF.conv2d(x2, w4, None, 2, 1), wgrad]
    for fn in fns:
        try:
            _C._set_winograd(False)
            a = fn()
            _C._force_winograd()
            b = fn()
        finally:
            _C._set_winograd(True)
        assert torch.equal(a, b)


def test_winograd_wide_tiles_match_narrow():
    """The Winograd GEMMs run 6 tiles against 1-4 column blocks of 16 at once
    (cnnkernels._C._set_wide_tile_blocks): every count gives the same bits,
    forced on, for F(2x2, 3x3) (forward, input and weight gradients; 96
    channels: 3 + 3 blocks) and F(2x2, 2x2) (conv_transpose2d 4x4 stride 2,
    conv2d 4x4 stride 2 forward and weight gradient; 80 channels: 4 + 1)."""
    if not cnnkernels._C._avx512_available():
        pytest.skip("the wide tiles exist only on AVX-512F processors")
    from cnnkernels import _C
    old_isa, old_wide = cnnkernels.cpu_isa(), _C._wide_tile_blocks()
    gen = torch.Generator().manual_seed(16)
    x3 = torch.randn(2, 40, 12, 13, generator=gen)
    w3 = torch.randn(96, 40, 3, 3, generator=gen) / 20
    xt = torch.randn(2, 48, 9, 10, generator=gen)
    wt = torch.randn(48, 80, 4, 4, generator=gen) / 20
    x4 = torch.randn(2, 48, 20, 18, generator=gen)
    w4 = torch.randn(80, 48, 4, 4, generator=gen) / 20

    def grads(x, w, fn):
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = fn(x, w)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        return (y,) + torch.autograd.grad(y, (x, w), gy)
    try:
        cnnkernels.set_cpu_isa("avx512")
        _C._force_winograd()
        results = []
        for wide in (1, 2, 3, 4):
            _C._set_wide_tile_blocks(wide)
            results.append(grads(x3, w3, lambda x, w: CF.conv2d(x, w, None, 1, 1))
                           + grads(xt, wt, lambda x, w: CF.conv_transpose2d(x, w, None, 2, 1))
                           + grads(x4, w4, lambda x, w: CF.conv2d(x, w, None, 2, 1)))
    finally:
        _C._set_winograd(True)
        _C._set_wide_tile_blocks(old_wide)
        cnnkernels.set_cpu_isa(old_isa)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_avx512_tile_pairs_match_single_tiles():
    """The AVX-512 path runs pairs of 6-pixel tiles in one 12-row kernel
    where two tiles of one pixel group meet in a work item; which tiles pair
    up depends on how the work is cut (thread count), so both kernels must
    give the same bits: 1, 2 and 3 threads agree on a layer with many pixel
    groups (direct path: 5x5, stride 1, 7x7 images)."""
    if not cnnkernels._C._avx512_available():
        pytest.skip("needs AVX-512F")
    old = cnnkernels.cpu_isa()
    try:
        cnnkernels.set_cpu_isa("avx512")
        gen = torch.Generator().manual_seed(9)
        x = torch.randn(7, 24, 7, 9, generator=gen)
        w = torch.randn(40, 24, 5, 5, generator=gen)
        runs = _on_threads(lambda: CF.conv2d(x, w, None, 1, 2))
        for other in runs[1:]:
            assert torch.equal(runs[0], other)
        torch.testing.assert_close(runs[0].double(), F.conv2d(x.double(), w.double(), None, 1, 2),
                                   rtol=1e-4, atol=1e-4)
    finally:
        cnnkernels.set_cpu_isa(old)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [
    # (x shape, out channels, kernel, stride, padding, dilation, groups)
    ((2, 8, 10, 12), 16, (3, 3), 1, 1, 1, 1),      # one block of 16 output channels
    ((4, 3, 40, 40), 32, (7, 7), 2, 3, 1, 1),      # a stem: pixel splits (large grad_output)
    ((2, 10, 9, 9), 96, (5, 5), 1, 2, 1, 1),       # 96 = 3 + 3 blocks; 250 columns: a short tile
    ((2, 8, 9, 9), 32, (3, 3), 1, 2, 2, 2),        # groups of 16 output channels, dilation
    ((2, 5, 11, 13), 48, (3, 5), (2, 1), (0, 2), 1, 1),  # stride, uneven padding, 3 blocks
    ((2, 20, 7, 7), 64, (1, 1), 1, 0, 1, 1),       # 1x1 (channels_last: this path)
    ((8, 4, 24, 24), 16, (1, 1), 1, 0, 1, 1),      # 1x1, pixel splits (channels_last in place)
    ((2, 6, 8, 9), 80, (3, 3), 1, 1, 1, 1),        # 5 blocks: 4 + 1
    ((0, 8, 6, 6), 16, (3, 3), 1, 1, 1, 1),        # empty batch: zeros
])
def test_wgrad_along_output_channels_cpu(case, layout):
    """The AVX-512 float32 weight gradient runs along output channels where
    they come in blocks of 16 (cnnkernels._C._set_wgrad_oc; off: the packed
    GEMM panels), summing the bias gradient on the way. Both against torch in
    float64 (weight and bias gradients), and bit for bit the same on 1, 2 and
    3 threads."""
    if not cnnkernels._C._avx512_available():
        pytest.skip("the output-channel weight gradient exists only on AVX-512F processors")
    shape, oc, (kh, kw), s, p, d, grp = case
    gen = torch.Generator().manual_seed(21)
    x = _layout(torch.randn(shape, generator=gen, dtype=torch.float64), layout)
    w = torch.randn(oc, shape[1] // grp, kh, kw, generator=gen, dtype=torch.float64)
    gy = _layout(torch.randn(F.conv2d(x, w, None, s, p, d, grp).shape, generator=gen,
                             dtype=torch.float64), layout)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    args = (pair(s), pair(p), pair(d), grp, [False, True, True])
    ref = torch.ops.aten.convolution_backward(gy, x, w, [oc], args[0], args[1], args[2], False,
                                              [0, 0], grp, args[4])[1:]
    old_isa, old_mode = cnnkernels.cpu_isa(), cnnkernels._C._wgrad_oc()
    wgrad = lambda: torch.ops.cnnkernels.conv2d_backward(  # noqa: E731
        gy.float(), x.float(), w.float(), *args)[1:]
    try:
        cnnkernels.set_cpu_isa("avx512")
        for mode in (True, False):
            cnnkernels._C._set_wgrad_oc(mode)
            runs = _on_threads(wgrad)
            for got, want in zip(runs[0], ref):
                torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
            for other in runs[1:]:
                assert all(torch.equal(a, b) for a, b in zip(runs[0], other))
    finally:
        cnnkernels.set_cpu_isa(old_isa)
        cnnkernels._C._set_wgrad_oc(old_mode)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_avx512_wide_tiles_match_narrow(layout):
    """The AVX-512 forward and data gradient run each 6-pixel tile against 2-4
    column blocks of 16 channels at once (cnnkernels._C._set_wide_tile_blocks);
    every block count must give the bits of the one-block kernels, on layers
    whose channel counts leave 1-3 blocks over (80 = 4 + 1 blocks, 40 = 2.5,
    96 = 3 + 3), with bias, through conv2d (forward and input gradient; 7x7
    stride 2, 3x3 and 1x1) and conv_transpose2d with stride 2, and match
    torch in float64. The weight gradient's two-column-panel kernel (on when
    the count is 2 or more) is checked the same way on the 40- and
    36-channel layers (the others, 16-channel blocks, run along output
    channels: test_wgrad_along_output_channels_cpu)."""
    if not cnnkernels._C._avx512_available():
        pytest.skip("needs AVX-512F")
    old_isa, old_wide = cnnkernels.cpu_isa(), cnnkernels._C._wide_tile_blocks()
    old_wino = cnnkernels._C._winograd()
    gen = torch.Generator().manual_seed(11)
    cases = [
        (lambda x, w, b: CF.conv2d(x, w, b, 2, 3), lambda x, w, b: F.conv2d(x, w, b, 2, 3),
         (3, 5, 23, 21), (80, 5, 7, 7), 80),
        (lambda x, w, b: CF.conv2d(x, w, b, 1, 1), lambda x, w, b: F.conv2d(x, w, b, 1, 1),
         (2, 40, 9, 11), (40, 40, 3, 3), 40),
        (lambda x, w, b: CF.conv_transpose2d(x, w, b, 2, 1, 1),
         lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1), (2, 48, 7, 8), (48, 56, 3, 3), 56),
        # 96 channels: two passes of 3 blocks
        (lambda x, w, b: CF.conv2d(x, w, b, 1, 1), lambda x, w, b: F.conv2d(x, w, b, 1, 1),
         (2, 8, 9, 10), (96, 8, 3, 3), 96),
        # 1x1 (NCHW: a GEMM over 7 16-pixel blocks, 6-7 row blocks, chunks of 256)
        (lambda x, w, b: CF.conv2d(x, w, b), lambda x, w, b: F.conv2d(x, w, b),
         (2, 300, 9, 11), (36, 300, 1, 1), 36),
    ]
    try:
        cnnkernels.set_cpu_isa("avx512")
        cnnkernels._C._set_winograd(False)
        for ours, ref, xs, ws, nb in cases:
            x = _layout(torch.randn(xs, generator=gen), layout)
            w = torch.randn(ws, generator=gen) / (ws[1] * ws[2] * ws[3]) ** 0.5
            b = torch.randn(nb, generator=gen)
            gy = None
            results = []
            for wide in (1, 2, 3, 4):
                cnnkernels._C._set_wide_tile_blocks(wide)
                xx = x.detach().clone().requires_grad_()
                ww = w.detach().clone().requires_grad_()
                y = ours(xx, ww, b)
                if gy is None:
                    gy = _layout(torch.randn(y.shape, generator=gen), layout)
                y.backward(gy)
                results.append((y.detach(), xx.grad, ww.grad))
            for r in results[1:]:
                for got, want in zip(r, results[0]):
                    assert torch.equal(got, want)
            xd = x.double().requires_grad_()
            wd = w.double().requires_grad_()
            yd = ref(xd, wd, b.double())
            yd.backward(gy.double())
            for got, want in zip(results[0], (yd, xd.grad, wd.grad)):
                torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    finally:
        cnnkernels.set_cpu_isa(old_isa)
        cnnkernels._C._set_wide_tile_blocks(old_wide)
        cnnkernels._C._set_winograd(old_wino)


@pytest.mark.parametrize("case", [
    ((2, 32, 30, 30), 40, 7, 3, 2, 1),   # 49 unmerged taps: more than one chunk of 32
    ((2, 32, 26, 26), 48, 11, 5, 1, 2),  # 11 merged taps of 176 steps, groups
    ((2, 8, 40, 40), 16, 9, 4, 1, 1),    # 9 taps of 72 steps
])
def test_many_taps_cpu(cpu_isa, case):
    """Layers with many kernel taps per tile (the AVX-512 12-row kernel keeps
    its sums in registers across up to 32 taps at a time), all three
    gradients against torch in float64."""
    shape, oc, k, p, d, groups = case
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=gen)
    w = torch.randn(oc, shape[1] // groups, k, k, generator=gen) / (k * (shape[1] // groups) ** 0.5)
    _run(lambda x, w: CF.conv2d(x, w, None, 1, p, d, groups),
         lambda x, w: F.conv2d(x, w, None, 1, p, d, groups), [x, w], "cpu", torch.float32,
         "contiguous")
