"""convert(): swap the torch.nn layers of a model for cnnkernels' twins.

Each replaced module is a new instance of the cnnkernels class that shares
the old module's parameters, buffers, hooks and attributes (its __dict__ is
copied, the tensors are not), so the state_dict keys and values stay as they
were: a checkpoint saved from either model loads into the other. Only exact
torch.nn types are replaced; user subclasses (which may have their own
forward) and modules that already are cnnkernels' are left alone.

With fuse_bn_relu, a BatchNorm2d followed directly by a ReLU inside a plain
nn.Sequential (not a subclass, which may have its own forward), neither of
them with hooks, becomes one BatchNormReLU2d and the ReLU an nn.Identity, so
module indices (and the keys) do not move. A BatchNormReLU2d is a
torch.nn.BatchNorm2d subclass: convert a fused model to synchronised batch
norm with cnnkernels.nn.SyncBatchNorm.convert_sync_batchnorm (which keeps the
ReLU), not torch.nn.SyncBatchNorm's (which would drop it).

The kernels run float32/float64 on the CPU (and also float16/bfloat16 on
CUDA): a model kept in bfloat16 on the CPU fails with the op's dtype error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import nn as knn

__all__ = ["convert", "Change"]

# torch.nn class -> cnnkernels.nn class (exact type match only)
_TWINS = {
    torch.nn.Conv1d: knn.Conv1d,
    torch.nn.Conv2d: knn.Conv2d,
    torch.nn.ConvTranspose2d: knn.ConvTranspose2d,
    torch.nn.MaxPool2d: knn.MaxPool2d,
    torch.nn.MaxUnpool2d: knn.MaxUnpool2d,
    torch.nn.AvgPool2d: knn.AvgPool2d,
    torch.nn.BatchNorm1d: knn.BatchNorm1d,
    torch.nn.BatchNorm2d: knn.BatchNorm2d,
    torch.nn.Dropout: knn.Dropout,
    torch.nn.Dropout2d: knn.Dropout2d,
}


@dataclass(frozen=True)
class Change:
    """One replacement made by convert(): the module's qualified name and the
    class names before and after."""

    name: str
    before: str
    after: str

    def __str__(self):
        return f"{self.name or '<root>'}: {self.before} -> {self.after}"


def _twin(module, cls):
    """A cls instance sharing module's state (parameters, buffers, hooks)."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    return new


def _has_hooks(module):
    """Whether anything observes the module's input or output (hooks): fusing
    BN + ReLU would change what a BN hook sees and drop the ReLU's hooks."""
    return any(getattr(module, name, None) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _qualname(cls):
    mod = cls.__module__
    if mod.startswith("torch.nn.modules"):
        mod = "torch.nn"
    return f"{mod}.{cls.__name__}"


def convert(model: torch.nn.Module, fuse_bn_relu: bool = True, *, return_report: bool = False):
    """Replace every torch.nn Conv1d, Conv2d, ConvTranspose2d, MaxPool2d,
    MaxUnpool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Dropout and Dropout2d in
    `model` (in place) with its cnnkernels.nn twin, carrying the same
    parameters and buffers.

    fuse_bn_relu: a torch.nn.BatchNorm2d directly followed by a torch.nn.ReLU
    in an nn.Sequential becomes cnnkernels.nn.BatchNormReLU2d, and the ReLU an
    nn.Identity.

    Returns the model (a new object only when `model` itself is one of the
    replaced layers), or (model, report) with return_report=True, where
    report lists the Change made to each module, in model order.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert: model should be a torch.nn.Module, but got {type(model).__name__}")
    report: list[Change] = []
    # a module shared by two places stays shared (per target class: a shared
    # BatchNorm2d fused in one place only is two modules over one state)
    memo: dict[tuple[int, type], torch.nn.Module] = {}

    def swap(module, cls, name):
        key = (id(module), cls)
        if key not in memo:
            memo[key] = _twin(module, cls)
            report.append(Change(name, _qualname(type(module)), _qualname(cls)))
        return memo[key]

    def visit(parent, prefix):
        # _modules, not named_children(): that skips a module seen before
        children = [(n, m) for n, m in parent._modules.items() if m is not None]
        fuse_next = set()  # names of ReLUs to replace with Identity
        if fuse_bn_relu and type(parent) is torch.nn.Sequential:
            for (n1, m1), (n2, m2) in zip(children, children[1:]):
                if (type(m1) is torch.nn.BatchNorm2d and type(m2) is torch.nn.ReLU
                        and not _has_hooks(m1) and not _has_hooks(m2)):
                    fuse_next.add(n2)
        for i, (name, child) in enumerate(children):
            qual = f"{prefix}{name}"
            if name in fuse_next:
                new = torch.nn.Identity()
                report.append(Change(qual, "torch.nn.ReLU", "torch.nn.Identity"))
            elif (fuse_bn_relu and i + 1 < len(children) and children[i + 1][0] in fuse_next
                  and type(child) is torch.nn.BatchNorm2d):
                new = swap(child, knn.BatchNormReLU2d, qual)
            elif type(child) in _TWINS:
                new = swap(child, _TWINS[type(child)], qual)
            else:
                visit(child, qual + ".")
                continue
            setattr(parent, name, new)

    if type(model) in _TWINS:
        model = swap(model, _TWINS[type(model)], "")
    else:
        visit(model, "")
    return (model, report) if return_report else model
