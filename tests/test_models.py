"""cnnkernels.models against their torch.nn twins (layers=torch.nn, loaded
from our state_dict): module names and types, state_dict keys and loading
both ways, eval outputs and one SGD training step (outputs, every gradient,
BatchNorm buffers, parameters after the step) in float64, a float32 run per
device path for a small model, and the image-size validation."""

import copy

import pytest
import torch
import torch.nn.functional as F

import cnnkernels.models as M
import cnnkernels.nn as cnn


# (model, kwargs, batch): each at the smallest image it accepts, or 32 for the
# models that accept any size. dropout=0: our Dropout draws from its own Philox
# stream, so training runs compare without it (eval mode does not drop).
CASES = [
    ("lenet", dict(image_size=(28, 24), in_channels=3, num_classes=7)),
    ("alexnet", dict(image_size=65, dropout=0.0)),
    ("vgg11", dict(image_size=32, dropout=0.0)),
    ("vgg11_bn", dict(image_size=32, dropout=0.0)),
    ("vgg16", dict(image_size=32, dropout=0.0)),
    ("vgg16_bn", dict(image_size=32, dropout=0.0)),
    ("nin", dict(image_size=67, dropout=0.0)),
    ("nin", dict(image_size=15, dropout=0.0, small_input=True)),
    ("googlenet", dict(image_size=32, dropout=0.0)),
    ("resnet18", dict(image_size=32)),
    ("resnet18", dict(image_size=8, small_input=True)),
]
IDS = [f"{n}-small" if kw.get("small_input") else n for n, kw in CASES]

# BatchNorm2d + ReLU pairs that cnnkernels fuses into BatchNormReLU2d.
FUSED = {"vgg11_bn": 8, "vgg16_bn": 13, "resnet18": 9}

# Our module type -> its torch.nn twin's type at the same name.
TWIN_TYPE = {
    cnn.Conv2d: torch.nn.Conv2d,
    cnn.MaxPool2d: torch.nn.MaxPool2d,
    cnn.AvgPool2d: torch.nn.AvgPool2d,
    cnn.BatchNorm2d: torch.nn.BatchNorm2d,
    cnn.BatchNormReLU2d: torch.nn.BatchNorm2d,
    cnn.Dropout: torch.nn.Dropout,
    torch.nn.Identity: torch.nn.ReLU,  # where the ReLU went into BatchNormReLU2d
}

# atol is scaled by the reference's largest magnitude (see _close). ResNet-18
# at 32 with a batch of 2 normalises 2 values per channel in layer4: there
# torch disagrees with itself (NCHW vs channels_last) by ~5e-11 of the largest
# gradient, and we with torch by ~3e-11; elsewhere the differences are ~1e-15.
F64 = dict(rtol=1e-9, atol=1e-9)


def _build(name, kwargs, layers, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return M.MODELS[name](**kwargs, layers=layers).to(dtype)


def _input(name, kwargs, dtype, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    hw = kwargs["image_size"]
    hw = hw if isinstance(hw, tuple) else (hw, hw)
    c = kwargs.get("in_channels", 1 if name == "lenet" else 3)
    x = torch.randn(n, c, *hw, generator=g, dtype=dtype)
    y = torch.randint(0, kwargs.get("num_classes", 10), (n,), generator=g)
    return x, y


def _close(a, b, **tol):
    """assert_close with atol scaled by the reference's magnitude (gradients
    range from 1e-17, for conv biases in front of a BatchNorm, to 1e2)."""
    tol = dict(tol)
    tol["atol"] = tol["atol"] * max(1.0, b.abs().max().item()) if b.numel() else tol["atol"]
    torch.testing.assert_close(a, b, **tol)


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def pair(request):
    """(name, kwargs, ours, twin) in float64; twin loaded from ours (strict).
    Tests that train work on copies."""
    name, kwargs = request.param
    ours = _build(name, kwargs, cnn)
    twin = _build(name, kwargs, torch.nn, seed=1)
    twin.load_state_dict(ours.state_dict(), strict=True)
    return name, kwargs, ours, twin


def test_module_names_and_types(pair):
    name, _, ours, twin = pair
    om, tm = dict(ours.named_modules()), dict(twin.named_modules())
    assert list(om) == list(tm)
    fused = 0
    for key, o in om.items():
        t = tm[key]
        assert type(t).__module__ != "cnnkernels.nn", (key, type(t))
        if type(o) in TWIN_TYPE and type(t) is not type(o):
            assert type(t) is TWIN_TYPE[type(o)], (key, type(o), type(t))
        else:
            assert type(o) is type(t), (key, type(o), type(t))
        fused += type(o) is cnn.BatchNormReLU2d
    assert fused == FUSED.get(name, 0)
    # Every conv / pool / BN / dropout is cnnkernels' (none of torch's own left).
    n_conv = sum(type(m) is cnn.Conv2d for m in ours.modules())
    assert n_conv == sum(isinstance(m, torch.nn.Conv2d) for m in twin.modules()) > 0
    for m in ours.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d,
                          torch.nn.BatchNorm2d, torch.nn.Dropout)):
            assert type(m).__module__ == "cnnkernels.nn", type(m)
    # Global average pool: our AvgPool2d over the whole final map.
    if name in ("nin", "googlenet", "resnet18"):
        assert type(ours.avgpool) is cnn.AvgPool2d


def test_state_dict_both_ways(pair):
    name, kwargs, ours, twin = pair
    assert list(ours.state_dict()) == list(twin.state_dict())
    # Other values (the twin's plus one) into ours, then from ours into a twin.
    other = {k: v + 1 for k, v in twin.state_dict().items()}
    mine = copy.deepcopy(ours)
    mine.load_state_dict(other, strict=True)
    for k, v in mine.state_dict().items():
        assert torch.equal(v, other[k]), k
    back = copy.deepcopy(twin)
    back.load_state_dict(mine.state_dict(), strict=True)
    for k, v in back.state_dict().items():
        assert torch.equal(v, other[k]), k


def test_eval_matches_torch(pair):
    name, kwargs, ours, twin = pair
    x, _ = _input(name, kwargs, torch.float64)
    ours.eval(), twin.eval()
    with torch.no_grad():
        y, r = ours(x), twin(x)
    assert y.shape == (2, kwargs.get("num_classes", 10))
    _close(y, r, **F64)


def _train_step(ours, twin, x, y, tol):
    """One SGD step (lr 0.1, momentum 0.9) on both; compares outputs, loss,
    every gradient, every buffer (running stats, num_batches_tracked) and the
    parameters after the step."""
    results = []
    for m in (ours, twin):
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        opt.zero_grad()
        out = m(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in m.named_parameters()}
        opt.step()
        results.append((out.detach(), loss.detach(), grads))
    (yo, lo, go), (yt, lt, gt) = results
    _close(yo, yt, **tol)
    _close(lo, lt, **tol)
    assert list(go) == list(gt)
    for k in go:
        _close(go[k], gt[k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")
    ob, tb = dict(ours.named_buffers()), dict(twin.named_buffers())
    assert list(ob) == list(tb)
    for k in ob:
        if ob[k].is_floating_point():
            _close(ob[k], tb[k], **tol, msg=lambda m, k=k: f"buffer {k}: {m}")
        else:
            assert torch.equal(ob[k], tb[k]), k
    for (k, p), (_, q) in zip(ours.named_parameters(), twin.named_parameters()):
        _close(p.detach(), q.detach(), **tol, msg=lambda m, k=k: f"param {k}: {m}")


def test_training_step_matches_torch(pair):
    name, kwargs, ours, twin = pair
    x, y = _input(name, kwargs, torch.float64)
    _train_step(copy.deepcopy(ours), copy.deepcopy(twin), x, y, F64)


@pytest.mark.parametrize("name, kwargs", [
    ("lenet", dict(image_size=28)),
    ("resnet18", dict(image_size=16, small_input=True)),
], ids=["lenet", "resnet18-small"])
def test_float32(device_path, name, kwargs):
    """Ours in float32 on each device path against the twin in float64."""
    ours = _build(name, kwargs, cnn, torch.float32).to(device_path)
    twin = _build(name, kwargs, torch.nn, torch.float64, seed=1)
    twin.load_state_dict(ours.state_dict())
    x, y = _input(name, kwargs, torch.float64)
    ours.eval(), twin.eval()
    with torch.no_grad():
        _close(ours(x.to(device_path, torch.float32)).double().cpu(), twin(x), rtol=1e-4, atol=1e-5)
    # A training step: compare after casting ours back to float64.
    ours.train(), twin.train()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(ours(x.to(device_path, torch.float32)), y.to(device_path)).backward()
    opt.step()
    opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(twin(x), y).backward()
    opt.step()
    for (k, p), (_, q) in zip(ours.state_dict().items(), twin.state_dict().items()):
        if q.is_floating_point():
            _close(p.double().cpu(), q, rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_fused_bn_relu_math():
    """ResNet-18 with fusion equals our own layers without it: BatchNorm2d
    then ReLU from a namespace that is cnnkernels.nn minus BatchNormReLU2d."""

    class Unfused:
        def __getattr__(self, attr):
            if attr == "BatchNormReLU2d":
                raise AttributeError(attr)
            return getattr(cnn, attr)

    kwargs = dict(image_size=8, in_channels=1, small_input=True)
    fused = _build("resnet18", kwargs, cnn)
    plain = _build("resnet18", kwargs, Unfused(), seed=1)
    plain.load_state_dict(fused.state_dict())
    assert sum(type(m) is cnn.BatchNorm2d for m in plain.modules()) == 20
    assert sum(type(m) is torch.nn.ReLU for m in plain.modules()) == 9
    assert not any(type(m) is cnn.BatchNormReLU2d for m in plain.modules())
    x, _ = _input("resnet18", kwargs, torch.float64)
    fused.train(), plain.train()
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-12, atol=1e-12)


# Smallest square image each model builds for; one pixel less must raise.
@pytest.mark.parametrize("name", [n for n in M.MODELS if M.MIN_IMAGE_SIZE[n] > 1])
def test_image_size_boundary(name):
    least = M.MIN_IMAGE_SIZE[name]
    with torch.device("meta"):  # shapes only: no memory, no init cost
        M.MODELS[name](image_size=least)
        M.MODELS[name](image_size=(least, 2 * least))
        with pytest.raises(ValueError, match=rf"^{name}: image_size={least - 1} is too small: .*"
                                             rf"{name} needs image_size >= {least}$"):
            M.MODELS[name](image_size=least - 1)
        with pytest.raises(ValueError, match=rf"^{name}: image_size=\({least}, {least - 1}\) is too small"):
            M.MODELS[name](image_size=(least, least - 1))


@pytest.mark.parametrize("name", list(M.MODELS))
def test_image_size_errors(name):
    with torch.device("meta"):
        with pytest.raises(ValueError, match=rf"^{name}: image_size should be positive, but got 0"):
            M.MODELS[name](image_size=0)
        with pytest.raises(ValueError, match=rf"^{name}: image_size should be positive"):
            M.MODELS[name](image_size=(32, -1))
        with pytest.raises(TypeError, match=rf"^{name}: image_size should be an int or a pair"):
            M.MODELS[name](image_size=32.0)


def test_small_input_minimum():
    with torch.device("meta"):
        M.nin(image_size=15, small_input=True)
        with pytest.raises(ValueError, match=r"^nin: image_size=14 .* needs image_size >= 15$"):
            M.nin(image_size=14, small_input=True)
        with pytest.raises(ValueError, match=r"^nin: image_size=32 .* needs image_size >= 67$"):
            M.nin(image_size=32)


def test_sizes_follow_image_size():
    """The computed flatten size and global-pool kernel for known shapes."""
    with torch.device("meta"):
        assert M.lenet(image_size=28).classifier[0].in_features == 16 * 5 * 5
        assert M.alexnet(image_size=224).classifier[0].in_features == 256 * 5 * 5
        assert M.vgg16(image_size=224).classifier[0].in_features == 512 * 7 * 7
        assert M.vgg11(image_size=(32, 64)).classifier[0].in_features == 512 * 1 * 2
        assert M.resnet18(image_size=224).avgpool.kernel_size == (7, 7)
        assert M.resnet18(image_size=32, small_input=True).avgpool.kernel_size == (4, 4)
        assert M.googlenet(image_size=224).avgpool.kernel_size == (7, 7)
        assert M.googlenet(image_size=96).avgpool.kernel_size == (3, 3)
        assert M.nin(image_size=224).avgpool.kernel_size == (5, 5)
        assert M.nin(image_size=32, small_input=True).avgpool.kernel_size == (3, 3)


def test_dropout_argument():
    with torch.device("meta"):
        for name in ("alexnet", "vgg11", "vgg16_bn", "nin", "googlenet"):
            ps = [m.p for m in M.MODELS[name](dropout=0.25).modules() if isinstance(m, torch.nn.Dropout)]
            assert ps and all(p == 0.25 for p in ps), (name, ps)
            assert all(type(m) is cnn.Dropout for m in M.MODELS[name]().modules()
                       if isinstance(m, torch.nn.Dropout))
