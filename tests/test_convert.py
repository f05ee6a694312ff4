"""cnnkernels.convert: which modules it swaps, that the state (keys, values,
tensors themselves) carries over, BN -> ReLU fusion rules, and that the
converted model computes what the torch.nn model does (forward, gradients,
running statistics after a training step)."""

import copy

import pytest
import torch
import torch.nn as tnn

import cnnkernels
import cnnkernels.nn as knn


class MyConv(tnn.Conv2d):
    """A user subclass with its own forward: convert must leave it alone."""

    def forward(self, x):
        return super().forward(x) * 2.0


class Block(tnn.Module):
    """BN then ReLU outside a Sequential: not fused (forward order unknown)."""

    def __init__(self, c):
        super().__init__()
        self.conv = tnn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = tnn.BatchNorm2d(c)
        self.relu = tnn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x))) + x


def make_model():
    torch.manual_seed(0)
    return tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1),            # 0
        tnn.BatchNorm2d(8),                        # 1 fused with 2
        tnn.ReLU(inplace=True),                    # 2
        tnn.MaxPool2d(2),                          # 3
        Block(8),                                  # 4
        MyConv(8, 8, 1),                           # 5
        tnn.BatchNorm2d(8),                        # 6 not followed by ReLU
        tnn.Dropout2d(0.0),                        # 7
        tnn.AvgPool2d(2),                          # 8
        tnn.Sequential(tnn.ConvTranspose2d(8, 4, 2, stride=2), tnn.BatchNorm2d(4), tnn.ReLU()),
        tnn.Flatten(2),                            # 10
        tnn.Conv1d(4, 4, 3, padding=1),            # 11
        tnn.BatchNorm1d(4),                        # 12
        tnn.ReLU(),                                # 13 (BN1d: not fused)
        tnn.Flatten(),                             # 14
        tnn.Dropout(0.0),                          # 15
        tnn.Linear(4 * 64, 5),                     # 16
    )


def test_types_after_convert():
    model, report = cnnkernels.convert(make_model(), return_report=True)
    assert type(model[0]) is knn.Conv2d
    assert type(model[1]) is knn.BatchNormReLU2d and type(model[2]) is tnn.Identity
    assert type(model[3]) is knn.MaxPool2d
    assert type(model[4]) is Block
    assert type(model[4].conv) is knn.Conv2d and type(model[4].bn) is knn.BatchNorm2d
    assert type(model[4].relu) is tnn.ReLU
    assert type(model[5]) is MyConv
    assert type(model[6]) is knn.BatchNorm2d
    assert type(model[7]) is knn.Dropout2d and type(model[8]) is knn.AvgPool2d
    assert type(model[9][0]) is knn.ConvTranspose2d
    assert type(model[9][1]) is knn.BatchNormReLU2d and type(model[9][2]) is tnn.Identity
    assert type(model[11]) is knn.Conv1d and type(model[12]) is knn.BatchNorm1d
    assert type(model[13]) is tnn.ReLU and type(model[15]) is knn.Dropout
    assert type(model[16]) is tnn.Linear
    names = [c.name for c in report]
    assert names == ["0", "1", "2", "3", "4.conv", "4.bn", "6", "7", "8", "9.0", "9.1", "9.2",
                     "11", "12", "15"]
    assert str(report[1]) == "1: torch.nn.BatchNorm2d -> cnnkernels.nn.BatchNormReLU2d"
    assert str(report[2]) == "2: torch.nn.ReLU -> torch.nn.Identity"


def test_no_fusion():
    model = cnnkernels.convert(make_model(), fuse_bn_relu=False)
    assert type(model[1]) is knn.BatchNorm2d and type(model[2]) is tnn.ReLU
    assert type(model[9][1]) is knn.BatchNorm2d


def test_state_carries_over():
    ref = make_model()
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    params = {k: v for k, v in ref.named_parameters()}
    model = cnnkernels.convert(ref)
    assert model is ref  # in place
    assert list(model.state_dict().keys()) == list(sd.keys())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)
    for k, p in model.named_parameters():
        assert p is params[k]  # the same Parameter objects (optimizers keep working)
    # a checkpoint of either loads into the other, strictly
    make_model().load_state_dict(model.state_dict())
    model.load_state_dict(make_model().state_dict())


def test_shared_module_stays_shared():
    conv = tnn.Conv2d(2, 2, 1)
    model = tnn.Sequential(conv, tnn.ReLU(), conv)
    model = cnnkernels.convert(model)
    assert model[0] is model[2] and type(model[0]) is knn.Conv2d


def test_root_layer_and_bad_input():
    conv = tnn.Conv2d(2, 3, 3)
    new = cnnkernels.convert(conv)
    assert type(new) is knn.Conv2d and new.weight is conv.weight
    with pytest.raises(TypeError, match="convert: model should be a torch.nn.Module"):
        cnnkernels.convert("resnet")


def test_hooks_carried():
    seen = []
    model = tnn.Sequential(tnn.Conv2d(1, 1, 1))
    model[0].register_forward_hook(lambda m, i, o: seen.append(type(m)))
    cnnkernels.convert(model)(torch.randn(1, 1, 2, 2))
    assert seen == [knn.Conv2d]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_training_step_matches_torch(channels_last):
    torch.manual_seed(1)
    ref = make_model().double()
    ours = cnnkernels.convert(copy.deepcopy(ref))
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 5, (4,))
    outs = []
    for m in (ref, ours):
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        out = m(x)
        torch.nn.functional.cross_entropy(out, target).backward()
        opt.step()
        outs.append(out)
    tol = dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(outs[1], outs[0], **tol)
    grads = dict(ref.named_parameters())
    for k, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[k].grad, **tol, msg=k)
    ref_sd = ref.state_dict()
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, ref_sd[k], **tol, msg=k)
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), **tol)


def test_no_fusion_where_it_would_be_observable():
    class Taps(tnn.Sequential):  # a Sequential subclass may use its children its own way
        def forward(self, x):
            return [m(x) for m in self]

    model = Taps(tnn.BatchNorm2d(4), tnn.ReLU())
    cnnkernels.convert(model)
    assert type(model[0]) is knn.BatchNorm2d and type(model[1]) is tnn.ReLU
    seen = []
    hooked = tnn.Sequential(tnn.BatchNorm2d(4), tnn.ReLU())
    hooked[0].register_forward_hook(lambda m, i, o: seen.append(float(o.min())))
    cnnkernels.convert(hooked)
    assert type(hooked[0]) is knn.BatchNorm2d and type(hooked[1]) is tnn.ReLU
    hooked(torch.randn(2, 4, 3, 3))
    assert seen[0] < 0  # the hook still sees the BatchNorm's own output
    relu_hooked = tnn.Sequential(tnn.BatchNorm2d(4), tnn.ReLU())
    relu_hooked[1].register_forward_pre_hook(lambda m, i: None)
    cnnkernels.convert(relu_hooked)
    assert type(relu_hooked[1]) is tnn.ReLU
