# Classic CNNs built from cnnkernels.nn: LeNet, AlexNet, VGG-11/16 (with and
# without BatchNorm), NiN, GoogLeNet and ResNet-18.
#
# Every builder takes `layers=`, the namespace the conv / pool / BatchNorm /
# dropout layers come from: cnnkernels.nn (default) or torch.nn, which builds
# the same architecture in plain torch.nn (the reference twin of tests and
# benchmarks). Both have the same module names, so state_dicts load either way.
# Where a BatchNorm2d is directly followed by a ReLU, cnnkernels.nn gets one
# fused BatchNormReLU2d and an Identity in the ReLU's place (indices and keys
# unchanged). ReLU, Linear, flatten and concatenation are torch's everywhere.
#
# Sizes that depend on the input (the flatten size before the first Linear,
# the global-average-pool kernel) are computed at construction from
# `image_size`; an image too small for the architecture raises a ValueError
# naming the model, the layer where the feature map vanishes and the minimum.

from __future__ import annotations

import inspect
import operator

import torch
from torch import nn as _tnn

from . import nn as _cnn

__all__ = [
    "LeNet", "AlexNet", "VGG", "NiN", "Inception", "GoogLeNet", "BasicBlock", "ResNet",
    "lenet", "alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "nin", "googlenet", "resnet18",
    "MODELS", "DEFAULT_IMAGE_SIZE", "MIN_IMAGE_SIZE",
]


def _relu():
    return _tnn.ReLU(inplace=True)


def _bn_relu(layers, channels):
    """BatchNorm2d then ReLU, as two modules: (BatchNormReLU2d, Identity)
    where `layers` has the fused module, (BatchNorm2d, ReLU) otherwise."""
    if hasattr(layers, "BatchNormReLU2d"):
        return [layers.BatchNormReLU2d(channels), _tnn.Identity()]
    return [layers.BatchNorm2d(channels), _relu()]


def _as_pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class _Sizes:
    """The feature-map size (H, W) through the spatial layers, as they are
    built: `track(module)` records a Conv2d / MaxPool2d / AvgPool2d (ceil_mode
    off) and returns it; `check()` returns the final (H, W) or raises."""

    def __init__(self, model, image_size):
        self.model = model
        self.image_size = image_size
        try:
            hw = _as_pair(image_size)
            if len(hw) != 2 or any(isinstance(n, bool) for n in hw):
                raise TypeError
            self.hw = tuple(operator.index(n) for n in hw)
        except TypeError:
            raise TypeError(f"{model}: image_size should be an int or a pair (H, W) of ints, "
                            f"but got {image_size!r}") from None
        if min(self.hw) < 1:
            raise ValueError(f"{model}: image_size should be positive, but got {image_size!r}")
        self.steps = []  # (module, kernel, stride, padding, dilation), each a (H, W) pair

    def track(self, module):
        self.steps.append((module,) + tuple(
            _as_pair(getattr(module, a, 1)) for a in ("kernel_size", "stride", "padding", "dilation")))
        return module

    def check(self):
        hw = self.hw
        for m, k, s, p, d in self.steps:
            hw = tuple((n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(hw))
            if min(hw) < 1:
                # Smallest input giving every layer an output of at least 1, walking back.
                need = [1, 1]
                for _, k2, s2, p2, d2 in reversed(self.steps):
                    need = [max(1, (need[i] - 1) * s2[i] + d2[i] * (k2[i] - 1) + 1 - 2 * p2[i])
                            for i in range(2)]
                least = need[0] if need[0] == need[1] else tuple(need)
                raise ValueError(
                    f"{self.model}: image_size={self.image_size!r} is too small: the feature map "
                    f"would be {hw[0]}x{hw[1]} after {type(m).__name__}({m.extra_repr()}); "
                    f"{self.model} needs image_size >= {least!r}")
        return hw


class _FeaturesClassifier(_tnn.Module):
    """forward: features, flatten, classifier (torchvision's VGG / AlexNet layout)."""

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class LeNet(_FeaturesClassifier):
    """LeNet-5 as in Dive into Deep Learning, with ReLU instead of sigmoid:
    conv 5x5 pad 2 -> 6, avgpool 2, conv 5x5 -> 16, avgpool 2, FC 120, 84,
    num_classes. Needs image_size >= 12 (28 is the classic MNIST size)."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28, layers=_cnn, name="lenet"):
        super().__init__()
        t = _Sizes(name, image_size)
        self.features = _tnn.Sequential(
            t.track(layers.Conv2d(in_channels, 6, kernel_size=5, padding=2)), _relu(),
            t.track(layers.AvgPool2d(kernel_size=2, stride=2)),
            t.track(layers.Conv2d(6, 16, kernel_size=5)), _relu(),
            t.track(layers.AvgPool2d(kernel_size=2, stride=2)),
        )
        h, w = t.check()
        self.classifier = _tnn.Sequential(
            _tnn.Linear(16 * h * w, 120), _relu(),
            _tnn.Linear(120, 84), _relu(),
            _tnn.Linear(84, num_classes),
        )


class AlexNet(_FeaturesClassifier):
    """AlexNet as in Dive into Deep Learning: conv 11x11/4 pad 1 -> 96,
    maxpool 3/2, conv 5x5 pad 2 -> 256, maxpool 3/2, conv 3x3 -> 384, 384,
    256, maxpool 3/2, FC 4096, 4096 with dropout, num_classes.
    Needs image_size >= 65 (the 11x11/4 stem and three 3/2 pools)."""

    def __init__(self, num_classes=10, in_channels=3, image_size=224, dropout=0.5, layers=_cnn,
                 name="alexnet"):
        super().__init__()
        t = _Sizes(name, image_size)
        self.features = _tnn.Sequential(
            t.track(layers.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1)), _relu(),
            t.track(layers.MaxPool2d(kernel_size=3, stride=2)),
            t.track(layers.Conv2d(96, 256, kernel_size=5, padding=2)), _relu(),
            t.track(layers.MaxPool2d(kernel_size=3, stride=2)),
            t.track(layers.Conv2d(256, 384, kernel_size=3, padding=1)), _relu(),
            t.track(layers.Conv2d(384, 384, kernel_size=3, padding=1)), _relu(),
            t.track(layers.Conv2d(384, 256, kernel_size=3, padding=1)), _relu(),
            t.track(layers.MaxPool2d(kernel_size=3, stride=2)),
        )
        h, w = t.check()
        self.classifier = _tnn.Sequential(
            _tnn.Linear(256 * h * w, 4096), _relu(), layers.Dropout(dropout),
            _tnn.Linear(4096, 4096), _relu(), layers.Dropout(dropout),
            _tnn.Linear(4096, num_classes),
        )


VGG_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(_FeaturesClassifier):
    """VGG from a cfg list (channels of 3x3 pad-1 convs, "M" for maxpool
    2/2), each conv followed by ReLU, or by BatchNorm2d + ReLU when
    batch_norm; classifier FC 4096, 4096 with dropout, num_classes. The
    flatten size comes from image_size (no adaptive pool): five pools need
    image_size >= 32. Module names are torchvision's (features.N,
    classifier.N)."""

    def __init__(self, cfg, batch_norm=False, num_classes=10, in_channels=3, image_size=224,
                 dropout=0.5, layers=_cnn, name="vgg"):
        super().__init__()
        t = _Sizes(name, image_size)
        mods, c = [], in_channels
        for v in cfg:
            if v == "M":
                mods.append(t.track(layers.MaxPool2d(kernel_size=2, stride=2)))
                continue
            mods.append(t.track(layers.Conv2d(c, v, kernel_size=3, padding=1)))
            mods += _bn_relu(layers, v) if batch_norm else [_relu()]
            c = v
        self.features = _tnn.Sequential(*mods)
        h, w = t.check()
        self.classifier = _tnn.Sequential(
            _tnn.Linear(c * h * w, 4096), _relu(), layers.Dropout(dropout),
            _tnn.Linear(4096, 4096), _relu(), layers.Dropout(dropout),
            _tnn.Linear(4096, num_classes),
        )


class NiN(_tnn.Module):
    """Network in Network as in Dive into Deep Learning: NiN blocks (a conv
    then two 1x1 convs, each with ReLU) of 96 (11x11/4), 256 (5x5 pad 2) and
    384 (3x3 pad 1) channels, each followed by maxpool 3/2; dropout; a block
    to num_classes channels; global average pool. Needs image_size >= 67.
    small_input=True makes the first conv 5x5 stride 1 pad 2 (for CIFAR-sized
    images; needs image_size >= 15)."""

    def __init__(self, num_classes=10, in_channels=3, image_size=224, dropout=0.5, small_input=False,
                 layers=_cnn, name="nin"):
        super().__init__()
        t = _Sizes(name, image_size)

        def block(cin, cout, k, s, p):
            return _tnn.Sequential(
                t.track(layers.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p)), _relu(),
                layers.Conv2d(cout, cout, kernel_size=1), _relu(),
                layers.Conv2d(cout, cout, kernel_size=1), _relu(),
            )

        stem = (5, 1, 2) if small_input else (11, 4, 0)
        self.features = _tnn.Sequential(
            block(in_channels, 96, *stem), t.track(layers.MaxPool2d(kernel_size=3, stride=2)),
            block(96, 256, 5, 1, 2), t.track(layers.MaxPool2d(kernel_size=3, stride=2)),
            block(256, 384, 3, 1, 1), t.track(layers.MaxPool2d(kernel_size=3, stride=2)),
            layers.Dropout(dropout),
            block(384, num_classes, 3, 1, 1),
        )
        h, w = t.check()
        self.avgpool = layers.AvgPool2d(kernel_size=(h, w))

    def forward(self, x):
        return torch.flatten(self.avgpool(self.features(x)), 1)


def _conv_relu(layers, cin, cout, **kw):
    return _tnn.Sequential(layers.Conv2d(cin, cout, **kw), _relu())


class Inception(_tnn.Module):
    """GoogLeNet's Inception block: four branches (1x1; 1x1 -> 3x3; 1x1 ->
    5x5; maxpool 3/1/1 -> 1x1), each conv with ReLU, concatenated along
    channels: c1 + c2[1] + c3[1] + c4 output channels, same H and W."""

    def __init__(self, in_channels, c1, c2, c3, c4, layers=_cnn):
        super().__init__()
        self.branch1 = _conv_relu(layers, in_channels, c1, kernel_size=1)
        self.branch2 = _tnn.Sequential(_conv_relu(layers, in_channels, c2[0], kernel_size=1),
                                       _conv_relu(layers, c2[0], c2[1], kernel_size=3, padding=1))
        self.branch3 = _tnn.Sequential(_conv_relu(layers, in_channels, c3[0], kernel_size=1),
                                       _conv_relu(layers, c3[0], c3[1], kernel_size=5, padding=2))
        self.branch4 = _tnn.Sequential(layers.MaxPool2d(kernel_size=3, stride=1, padding=1),
                                       _conv_relu(layers, in_channels, c4, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


# GoogLeNet's Inception blocks (paper, Table 1): name, in, 1x1, (3x3 reduce, 3x3),
# (5x5 reduce, 5x5), pool proj; "M" is maxpool 3/2/1.
GOOGLENET_BLOCKS = [
    ("inception3a", 192, 64, (96, 128), (16, 32), 32),
    ("inception3b", 256, 128, (128, 192), (32, 96), 64),
    "M",
    ("inception4a", 480, 192, (96, 208), (16, 48), 64),
    ("inception4b", 512, 160, (112, 224), (24, 64), 64),
    ("inception4c", 512, 128, (128, 256), (24, 64), 64),
    ("inception4d", 512, 112, (144, 288), (32, 64), 64),
    ("inception4e", 528, 256, (160, 320), (32, 128), 128),
    "M",
    ("inception5a", 832, 256, (160, 320), (32, 128), 128),
    ("inception5b", 832, 384, (192, 384), (48, 128), 128),
]


class GoogLeNet(_tnn.Module):
    """GoogLeNet (Inception v1, without BatchNorm and auxiliary heads, as in
    the paper and Dive into Deep Learning): conv 7x7/2 -> 64, maxpool 3/2/1,
    conv 1x1 -> 64, conv 3x3 -> 192, maxpool 3/2/1, Inception 3a-3b, maxpool,
    4a-4e, maxpool, 5a-5b, global average pool, dropout (the paper's 40%),
    FC. Every downsampling is padded, so any image_size >= 1 works (at 32 the
    last blocks run at 1x1). small_input=True makes the stem conv 3x3 stride
    1 and drops the first maxpool (4x4 before the global pool at 32)."""

    def __init__(self, num_classes=10, in_channels=3, image_size=224, dropout=0.4, small_input=False,
                 layers=_cnn, name="googlenet"):
        super().__init__()
        t = _Sizes(name, image_size)
        stem = dict(kernel_size=3, stride=1, padding=1) if small_input else \
            dict(kernel_size=7, stride=2, padding=3)
        self.conv1 = _conv_relu(layers, in_channels, 64, **stem)
        t.track(self.conv1[0])
        self.maxpool1 = _tnn.Identity() if small_input else \
            t.track(layers.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = _conv_relu(layers, 64, 64, kernel_size=1)
        self.conv3 = _conv_relu(layers, 64, 192, kernel_size=3, padding=1)
        self.maxpool2 = t.track(layers.MaxPool2d(kernel_size=3, stride=2, padding=1))
        pools = 2
        for b in GOOGLENET_BLOCKS:
            if b == "M":
                pools += 1
                setattr(self, f"maxpool{pools}", t.track(layers.MaxPool2d(3, stride=2, padding=1)))
            else:
                setattr(self, b[0], Inception(*b[1:], layers=layers))
        h, w = t.check()
        self.avgpool = layers.AvgPool2d(kernel_size=(h, w))
        self.dropout = layers.Dropout(dropout)
        self.fc = _tnn.Linear(1024, num_classes)

    def forward(self, x):
        for m in self.children():  # conv1 ... inception5b, in registration order
            if m is self.avgpool:
                break
            x = m(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


class BasicBlock(_tnn.Module):
    """torchvision's ResNet BasicBlock: conv3x3(stride), bn1, relu, conv3x3,
    bn2, + identity (downsample: conv1x1(stride) + BN when the shape
    changes), relu. With cnnkernels layers bn1 is BatchNormReLU2d and the
    ReLU after it is part of it; self.relu is then only the one after the
    addition."""

    def __init__(self, in_planes, planes, stride=1, layers=_cnn):
        super().__init__()
        self.conv1 = layers.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1, relu1 = _bn_relu(layers, planes)
        self._bn1_fused = isinstance(relu1, _tnn.Identity)  # bn1 applies the ReLU itself
        self.relu = _relu()
        self.conv2 = layers.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = layers.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = _tnn.Sequential(
                layers.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                layers.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        if not self._bn1_fused:
            out = self.relu(out)
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class ResNet(_tnn.Module):
    """ResNet with BasicBlocks in torchvision's layout and module names
    (conv1 7x7/2, bn1, relu, maxpool 3/2/1, layer1..layer4, avgpool, fc:
    torchvision's state_dict keys). avgpool is a
    global AvgPool2d whose kernel is the final feature map. Every
    downsampling is padded, so any image_size >= 1 works (1x1 from layer4 on
    at 32). small_input=True makes conv1 3x3 stride 1 and maxpool an Identity
    (the CIFAR stem; 4x4 before the pool at 32)."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes=10, in_channels=3, image_size=224,
                 small_input=False, layers=_cnn, name="resnet"):
        super().__init__()
        t = _Sizes(name, image_size)
        stem = dict(kernel_size=3, stride=1, padding=1) if small_input else \
            dict(kernel_size=7, stride=2, padding=3)
        self.conv1 = t.track(layers.Conv2d(in_channels, 64, bias=False, **stem))
        self.bn1, self.relu = _bn_relu(layers, 64)
        self.maxpool = _tnn.Identity() if small_input else \
            t.track(layers.MaxPool2d(kernel_size=3, stride=2, padding=1))
        c = 64
        for i, n in enumerate(blocks):
            planes, stride = 64 << i, 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c, planes, stride if j == 0 else 1, layers=layers))
                t.track(stage[-1].conv1)
                c = planes
            setattr(self, f"layer{i + 1}", _tnn.Sequential(*stage))
        h, w = t.check()
        self.avgpool = layers.AvgPool2d(kernel_size=(h, w))
        self.fc = _tnn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# Builders: the classic configurations under their usual names.

def lenet(num_classes=10, in_channels=1, image_size=28, layers=_cnn):
    """LeNet-5 with ReLU (see LeNet); image_size >= 12."""
    return LeNet(num_classes, in_channels, image_size, layers=layers, name="lenet")


def alexnet(num_classes=10, in_channels=3, image_size=224, dropout=0.5, layers=_cnn):
    """AlexNet (see AlexNet); image_size >= 65."""
    return AlexNet(num_classes, in_channels, image_size, dropout, layers=layers, name="alexnet")


def _vgg(name, batch_norm):
    def build(num_classes=10, in_channels=3, image_size=224, dropout=0.5, layers=_cnn):
        return VGG(VGG_CFGS[name.removesuffix("_bn")], batch_norm, num_classes, in_channels,
                   image_size, dropout, layers=layers, name=name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name.upper().replace('_BN', ' with BatchNorm')} (see VGG); image_size >= 32."
                     + (" With cnnkernels layers each BatchNorm2d + ReLU is one BatchNormReLU2d."
                        if batch_norm else ""))
    return build


vgg11 = _vgg("vgg11", False)
vgg11_bn = _vgg("vgg11_bn", True)
vgg16 = _vgg("vgg16", False)
vgg16_bn = _vgg("vgg16_bn", True)


def nin(num_classes=10, in_channels=3, image_size=224, dropout=0.5, small_input=False, layers=_cnn):
    """Network in Network (see NiN); image_size >= 67, or >= 15 with small_input."""
    return NiN(num_classes, in_channels, image_size, dropout, small_input, layers=layers, name="nin")


def googlenet(num_classes=10, in_channels=3, image_size=224, dropout=0.4, small_input=False, layers=_cnn):
    """GoogLeNet (see GoogLeNet); any image_size >= 1."""
    return GoogLeNet(num_classes, in_channels, image_size, dropout, small_input, layers=layers,
                     name="googlenet")


def resnet18(num_classes=10, in_channels=3, image_size=224, small_input=False, layers=_cnn):
    """ResNet-18 (see ResNet); any image_size >= 1."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, image_size, small_input, layers=layers,
                  name="resnet18")


# name -> builder. DEFAULT_IMAGE_SIZE: each builder's image_size default, the
# model's usual size (28 for LeNet, 224 for the ImageNet models).
# MIN_IMAGE_SIZE: the smallest square image each builds for (default stem).
MODELS = {
    "lenet": lenet,
    "alexnet": alexnet,
    "vgg11": vgg11,
    "vgg11_bn": vgg11_bn,
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
    "nin": nin,
    "googlenet": googlenet,
    "resnet18": resnet18,
}

DEFAULT_IMAGE_SIZE = {
    name: inspect.signature(build).parameters["image_size"].default for name, build in MODELS.items()
}

MIN_IMAGE_SIZE = {
    "lenet": 12, "alexnet": 65, "vgg11": 32, "vgg11_bn": 32, "vgg16": 32, "vgg16_bn": 32,
    "nin": 67, "googlenet": 1, "resnet18": 1,
}
