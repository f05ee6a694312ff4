"""Op-level checks: torch.library.opcheck for every registered op (schema,
fake kernel vs real kernel, AOT dispatch), float64 gradcheck through the
autograd Functions, torch.compile(fullgraph=True), double-backward errors,
the drop-in nn modules, and the build (one OpenMP runtime)."""

import pytest
import torch
import torch.nn.functional as F

import cnnkernels
import cnnkernels.functional as CF
import cnnkernels.nn as cnn
from conftest import DEVICES
from test_batch_norm import opcheck_cases as batch_norm_opcheck_cases
from test_dropout import opcheck_cases as dropout_opcheck_cases
from test_conv import opcheck_cases as conv_opcheck_cases
from test_sync_batch_norm import opcheck_cases as sync_bn_opcheck_cases

ops = torch.ops.cnnkernels


def _sample_inputs(device):
    g = torch.Generator().manual_seed(0)
    out = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 3, 10, 11, generator=g).to(device).contiguous(memory_format=fmt)
        y, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        gy = torch.randn(y.shape, generator=g).to(device).contiguous(memory_format=fmt)
        a = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
        ga = torch.randn(a.shape, generator=g).to(device).contiguous(memory_format=fmt)
        cl = fmt == torch.channels_last
        x2 = x[..., :10].contiguous(memory_format=fmt)
        y2, i2 = F.max_pool2d(x2, 2, return_indices=True)
        out += [
            (ops.max_pool2d_forward, (x, [3, 3], [2, 2], [1, 1], [1, 1], False)),
            (ops.max_pool2d_forward, (x, [2], [], [0], [1], True)),
            (ops.max_pool2d_with_indices_forward, (x, [3, 3], [2, 2], [1, 1], [1, 1], False)),
            (ops.max_pool2d_with_indices_forward, (x[0], [2, 3], [1, 2], [1, 1], [2, 1], True)),
            (ops.max_pool2d_backward, (gy, i, list(x.shape), [3, 3], [2, 2], [1, 1], [1, 1], False)),
            (ops.max_unpool2d_forward, (y2, i2, [2, 2], [], [0, 0], None)),
            (ops.max_unpool2d_forward, (y, i, [3, 3], [2, 2], [1, 1], [10, 11])),
            (ops.max_unpool2d_backward, (x, i)),
            (ops.avg_pool2d_forward, (x, [3, 3], [2, 2], [1, 1], True, False, None)),
            (ops.avg_pool2d_forward, (x, [2], [], [0], False, True, 3)),
            (ops.avg_pool2d_backward, (ga, list(x.shape), [3, 3], [2, 2], [1, 1], True, True, None, cl)),
        ]
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    cases = _sample_inputs(device)
    seen = set()
    for op, args in cases:
        torch.library.opcheck(op, args)
        seen.add(op._qualified_op_name)
    registered = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("cnnkernels::")}
    # batch norm and dropout ops are opchecked in their own test files
    for op, _ in (batch_norm_opcheck_cases(device) + dropout_opcheck_cases(device) + conv_opcheck_cases(device)
                  + sync_bn_opcheck_cases(device)):
        seen.add(op._qualified_op_name)
    assert len(registered) == 18 and registered <= seen, f"ops without an opcheck case: {registered - seen}"


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    # distinct values: max pooling is differentiable away from ties
    x = torch.randperm(2 * 2 * 7 * 8, generator=g).double().reshape(2, 2, 7, 8).div(10).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: CF.max_pool2d(t, 3, 2, 1, ceil_mode=True), (x,))
    assert torch.autograd.gradcheck(lambda t: CF.max_pool2d(t, 2, dilation=2), (x,))
    assert torch.autograd.gradcheck(lambda t: CF.avg_pool2d(t, 3, 2, 1, True, False), (x,))
    assert torch.autograd.gradcheck(lambda t: CF.avg_pool2d(t, 2, divisor_override=3), (x,))
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: CF.avg_pool2d(t, 3, 1, 1), (xcl,))
    assert torch.autograd.gradcheck(lambda t: CF.max_pool2d(t, 3, 1, 1), (xcl,))
    y, i = F.max_pool2d(x.detach(), 2, return_indices=True)
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: CF.max_unpool2d(t, i, 2, output_size=(7, 8)), (y,))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    def f(x):
        y, i = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
        z = CF.max_unpool2d(y, i, 3, 2, 1, output_size=x.shape[-2:])
        return CF.avg_pool2d(z + x, 2, ceil_mode=True).sum() + CF.max_pool2d(x, 2).sum()

    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 3, 9, 10, device=device).contiguous(memory_format=fmt).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        f(x).backward()
        cf(x2).backward()
        torch.testing.assert_close(x.grad, x2.grad)
        torch.testing.assert_close(f(x.detach()), cf(x.detach()))


@pytest.mark.parametrize(
    "fn",
    [
        lambda t: CF.max_pool2d(t, 2),
        lambda t: CF.avg_pool2d(t, 2),
        lambda t: CF.max_unpool2d(*F.max_pool2d(t, 2, return_indices=True), 2),
    ],
    ids=["max_pool2d", "avg_pool2d", "max_unpool2d"],
)
def test_double_backward_raises(fn):
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* is not supported"):
        g.sum().backward()


def test_modules_are_drop_in():
    pairs = [
        (cnn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        (cnn.MaxPool2d((2, 3), dilation=(1, 2), return_indices=True),
         torch.nn.MaxPool2d((2, 3), dilation=(1, 2), return_indices=True)),
        (cnn.AvgPool2d(3, 2, 1, count_include_pad=False), torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        (cnn.AvgPool2d(2, divisor_override=3), torch.nn.AvgPool2d(2, divisor_override=3)),
    ]
    x = torch.randn(2, 3, 11, 12)
    for ours, ref in pairs:
        assert isinstance(ours, type(ref))
        assert repr(ours) == repr(ref)
        assert ours.state_dict().keys() == ref.state_dict().keys()
        a, b = ours(x), ref(x)
        if isinstance(a, tuple):
            for u, v in zip(a, b):
                torch.testing.assert_close(u, v, rtol=0, atol=0)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    pool, unpool, tunpool = cnn.MaxPool2d(2, return_indices=True), cnn.MaxUnpool2d(2), torch.nn.MaxUnpool2d(2)
    assert repr(unpool) == repr(tunpool) and isinstance(unpool, torch.nn.MaxUnpool2d)
    y, i = pool(x[..., :10, :10])
    torch.testing.assert_close(unpool(y, i, output_size=(11, 11)), tunpool(y, i, output_size=(11, 11)))
    torch.testing.assert_close(unpool(y, i), tunpool(y, i))
    # a model using them trains like the torch.nn one
    m = torch.nn.Sequential(cnn.MaxPool2d(2), cnn.AvgPool2d(2))
    xr = torch.randn(1, 1, 8, 8, requires_grad=True)
    m(xr).sum().backward()
    xt = xr.detach().clone().requires_grad_()
    torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.AvgPool2d(2))(xt).sum().backward()
    torch.testing.assert_close(xr.grad, xt.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_calls_match_recorded_calls(device):
    """Where autograd records nothing (no input needs a gradient, or grad mode
    is off), the functions call the ops directly instead of through their
    autograd.Function: the same values as the recorded call (and torch's),
    no grad_fn, and the same running-statistics update."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 12, 10, generator=g).to(device)
    w = torch.randn(6, 8, 3, 3, generator=g).to(device)
    wt = torch.randn(8, 6, 3, 3, generator=g).to(device)
    b = torch.randn(6, generator=g).to(device)
    bw, bb = torch.rand(8, generator=g).to(device) + 0.5, torch.randn(8, generator=g).to(device)
    y, i = F.max_pool2d(x, 2, return_indices=True)
    calls = [
        (lambda x: CF.conv2d(x, w, b, 1, 1), lambda x: F.conv2d(x, w, b, 1, 1)),
        (lambda x: CF.conv_transpose2d(x, wt, b, 2, 1, 1), lambda x: F.conv_transpose2d(x, wt, b, 2, 1, 1)),
        (lambda x: CF.conv1d(x[:, :, 0], w[..., 0], b), lambda x: F.conv1d(x[:, :, 0], w[..., 0], b)),
        (lambda x: CF.avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1)),
        (lambda x: CF.max_unpool2d(x[..., ::2, ::2].contiguous(), i, 2),
         lambda x: F.max_unpool2d(x[..., ::2, ::2].contiguous(), i, 2)),
        (lambda x: CF.batch_norm(x, None, None, bw, bb, True, activation="relu"),
         lambda x: F.relu(F.batch_norm(x, None, None, bw, bb, True))),
    ]
    for ours, ref in calls:
        recorded = ours(x.clone().requires_grad_())
        assert recorded.grad_fn is not None
        with torch.no_grad():
            direct_nograd = ours(x.clone().requires_grad_())
        direct = ours(x)
        for d in (direct, direct_nograd):
            assert d.grad_fn is None
            assert torch.equal(d, recorded.detach())
        torch.testing.assert_close(direct, ref(x), rtol=1e-4, atol=1e-4)
    # running statistics, eval and training, through both paths
    stats = []
    for rec in (True, False):
        rm, rv = torch.zeros(8, device=device), torch.ones(8, device=device)
        xi = x.clone().requires_grad_(rec)
        yt = CF.batch_norm(xi, rm, rv, bw, bb, True, 0.2)
        ye = CF.batch_norm(xi, rm, rv, bw, bb, False)
        stats.append((yt.detach(), ye.detach(), rm, rv))
    for a, e in zip(*stats):
        assert torch.equal(a, e)
    # dropout: the same draws for the same generator state
    outs = []
    for rec in (True, False):
        torch.manual_seed(11)
        outs.append(CF.dropout(x.clone().requires_grad_(rec), 0.3).detach())
        outs.append(CF.dropout2d(x.clone().requires_grad_(rec), 0.3).detach())
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    assert (outs[0] == 0).any() and (outs[0] != 0).any()
    # only a parameter needs a gradient: recorded
    wg = w.clone().requires_grad_()
    y = CF.conv2d(x, wg, b, 1, 1)
    assert y.grad_fn is not None
    (gw,) = torch.autograd.grad(y.sum(), wg)
    torch.testing.assert_close(gw, torch.autograd.grad(F.conv2d(x, wg, b, 1, 1).sum(), wg)[0],
                               rtol=1e-4, atol=1e-3)
    # forward-mode AD still goes through the Function (which has no jvp: an
    # error, never a silently dropped tangent)
    with pytest.raises(Exception, match="jvp"):
        torch.func.jvp(lambda t: CF.avg_pool2d(t, 2), (x,), (torch.ones_like(x),))


def test_single_openmp_runtime():
    """The extension uses torch's own OpenMP runtime: one libgomp/libiomp in
    the process, so torch.set_num_threads governs our kernels too."""
    # in a fresh interpreter: other tests import libraries (scikit-learn)
    # that bring their own runtime into this process
    import subprocess
    import sys

    code = ("import torch, cnnkernels\n"
            "cnnkernels.functional.max_pool2d(torch.randn(1, 1, 4, 4), 2)\n"
            "libs = {l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l or 'iomp' in l}\n"
            "print(len(libs), sorted(libs))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "1", f"OpenMP runtimes loaded: {out.stdout}"


def test_cpu_isa_switch():
    old = cnnkernels.cpu_isa()
    try:
        cnnkernels.set_cpu_isa("generic")
        assert cnnkernels.cpu_isa() == "generic"
        with pytest.raises(RuntimeError, match="unknown CPU code path 'sse9'"):
            cnnkernels.set_cpu_isa("sse9")
    finally:
        cnnkernels.set_cpu_isa(old)


def test_cpu_only_build_imports_without_gpu():
    """Whatever the build, the package imports and runs on the CPU."""
    assert isinstance(cnnkernels.cuda_built(), bool)
    assert CF.max_pool2d(torch.ones(1, 1, 2, 2), 2).item() == 1.0
