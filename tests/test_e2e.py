"""End to end: whole models built from cnnkernels under torch.compile
(fullgraph training matches eager), autocast (the documented dtype rules),
channels_last from input to output, torch.export of an inference model, and
bit-for-bit repeatable training with torch.use_deterministic_algorithms."""

import copy

import pytest
import torch
import torch.nn as tnn

import cnnkernels
import cnnkernels.functional as CF
import cnnkernels.nn as knn
from cnnkernels import models
from conftest import HAS_CUDA


def small_cnn(num_classes=5):
    """A small CNN with every layer family: conv, fused BN+ReLU, max/avg
    pooling, dropout (converted from torch.nn)."""
    torch.manual_seed(0)
    m = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Conv2d(8, 8, 3, padding=1, groups=8), tnn.BatchNorm2d(8), tnn.ReLU(),
        tnn.Dropout2d(0.2),
        tnn.Conv2d(8, 16, 1), tnn.BatchNorm2d(16),
        tnn.AvgPool2d(8), tnn.Flatten(), tnn.Dropout(0.3), tnn.Linear(16, num_classes),
    )
    return cnnkernels.convert(m)


def train_steps(model, x, target, steps=2, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    outs = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, target)
        loss.backward()
        opt.step()
        outs.append(out.detach())
    return outs


# ---- torch.compile

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_compiled_training_matches_eager(channels_last):
    torch._dynamo.reset()
    eager = small_cnn()
    compiled_src = copy.deepcopy(eager)
    compiled = torch.compile(compiled_src, fullgraph=True)
    x = torch.randn(8, 3, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 5, (8,))
    # dropout draws from torch's generator: the same seed gives the same masks
    torch.manual_seed(3)
    out_e = train_steps(eager, x, target)
    torch.manual_seed(3)
    out_c = train_steps(compiled, x, target)
    for a, b in zip(out_c, out_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for (k, p), q in zip(compiled_src.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=k)


def test_compiled_model_zoo_member_has_no_graph_break():
    torch._dynamo.reset()
    model = models.resnet18(num_classes=4, image_size=32)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


# ---- autocast

def test_autocast_cpu_runs_float32():
    x = torch.randn(2, 3, 8, 8).bfloat16().requires_grad_()
    w = torch.randn(4, 3, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = CF.conv2d(x, w, padding=1)
        p = CF.max_pool2d(x, 2)
        a = CF.avg_pool2d(x, 2)
        bn = CF.batch_norm(x, None, None, training=True)
        d = CF.dropout(x, 0.5)
    for t in (y, p, a, bn, d):
        assert t.dtype == torch.float32
    torch.testing.assert_close(y, CF.conv2d(x.detach().float(), w, padding=1))
    torch.testing.assert_close(p, CF.max_pool2d(x.detach().float(), 2))
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    # outside autocast a bfloat16 CPU input is an error that names the op
    with pytest.raises(RuntimeError, match="dtype should be float32 or float64 on the CPU"):
        CF.conv2d(x.detach(), w.bfloat16())


def test_autocast_cpu_mixed_model():
    torch.manual_seed(0)
    model = tnn.Sequential(tnn.Linear(12, 3 * 16 * 16), tnn.Unflatten(1, (3, 16, 16)), small_cnn())
    x = torch.randn(4, 12)
    torch.manual_seed(5)  # the same dropout masks in both runs
    ref = model(x)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16  # the last Linear runs in bfloat16
    out.float().sum().backward()
    assert model[2][0].weight.grad.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, device="cuda")
    conv = knn.Conv2d(3, 8, 3, padding=1).cuda()
    ref_conv = tnn.Conv2d(3, 8, 3, padding=1).cuda()
    ref_conv.load_state_dict(conv.state_dict())
    bn = knn.BatchNormReLU2d(8).cuda()
    with torch.autocast("cuda", dtype=dtype):
        y = conv(x)
        y_ref = ref_conv(x)
        z = bn(y)
        p = CF.max_pool2d(z, 2)
    assert y.dtype == dtype and z.dtype == dtype and p.dtype == dtype
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    p.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32


# ---- channels_last, export, determinism

@pytest.mark.parametrize("name", ["lenet", "nin", "resnet18"])
def test_channels_last_stays_channels_last(name):
    builder, size = models.MODELS[name], models.DEFAULT_IMAGE_SIZE.get(name, 32)
    # as torch's channels_last recipe: the input and the model (a 1-channel
    # input alone cannot say which layout it is in)
    model = builder(num_classes=4, image_size=size).eval().to(memory_format=torch.channels_last)
    in_ch = 1 if name == "lenet" else 3
    x = torch.randn(2, in_ch, size, size).contiguous(memory_format=torch.channels_last)
    seen = []

    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
            seen.append((type(mod).__name__, out.is_contiguous(memory_format=torch.channels_last)))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m).__module__.startswith("cnnkernels")]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert seen and all(cl for _, cl in seen), [s for s in seen if not s[1]]


def test_torch_export_inference():
    model = small_cnn().eval()
    x = torch.randn(2, 3, 16, 16)
    ep = torch.export.export(model, (x,))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("cnnkernels.conv2d_forward" in o for o in ops)
    assert any("cnnkernels.batch_norm_forward" in o for o in ops)
    torch.testing.assert_close(ep.module()(x), model(x))
    x2 = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ep.module()(x2), model(x2))


def test_deterministic_training_repeats_bit_for_bit():
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(8, 3, 16, 16)
        target = torch.randint(0, 5, (8,))
        states = []
        for _ in range(2):
            model = small_cnn()
            torch.manual_seed(11)  # dropout masks
            train_steps(model, x, target, steps=3)
            states.append(model.state_dict())
        for k in states[0]:
            assert torch.equal(states[0][k], states[1][k]), k
    finally:
        torch.use_deterministic_algorithms(old)


def test_autocast_cpu_inplace_dropout():
    torch.manual_seed(0)
    lin = tnn.Linear(8, 64)
    drop = knn.Dropout(0.5, inplace=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(torch.randn(4, 8))
        assert h.dtype == torch.bfloat16
        out = drop(h)
    assert out is h and out.dtype == torch.bfloat16  # in place, as torch's
    zeros = (out == 0).float().mean().item()
    assert 0.2 < zeros < 0.8
