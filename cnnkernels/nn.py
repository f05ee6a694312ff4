"""Drop-in modules: subclasses of the torch.nn classes (same constructor,
attributes, repr and state_dict) whose forward runs cnnkernels' kernels."""

from __future__ import annotations

import torch

from . import functional as fn
from .autograd import SyncBatchNormFunction, activation_code

__all__ = [
    "MaxPool2d",
    "MaxUnpool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNormReLU2d",
    "SyncBatchNorm",
    "SyncBatchNormReLU2d",
    "Dropout",
    "Dropout2d",
    "Conv1d",
    "Conv2d",
    "ConvTranspose2d",
]


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d on cnnkernels' kernels."""

    def forward(self, input):
        return fn.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class MaxUnpool2d(torch.nn.MaxUnpool2d):
    """torch.nn.MaxUnpool2d on cnnkernels' kernels."""

    def forward(self, input, indices, output_size=None):
        return fn.max_unpool2d(
            input, indices, self.kernel_size, self.stride, self.padding, output_size
        )


class AvgPool2d(torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d on cnnkernels' kernels."""

    def forward(self, input):
        return fn.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


def _batch_norm_state(self, input):
    """torch.nn.modules.batchnorm._BatchNorm.forward's bookkeeping: checks,
    num_batches_tracked, the momentum factor, whether to use batch statistics,
    and the running statistics to pass (None when not tracked)."""
    self._check_input_dim(input)
    factor = 0.0 if self.momentum is None else self.momentum
    if self.training and self.track_running_stats and self.num_batches_tracked is not None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / float(self.num_batches_tracked)
    use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
    track = not self.training or self.track_running_stats
    rm = self.running_mean if track else None
    rv = self.running_var if track else None
    return factor, use_batch_stats, rm, rv


def _batch_norm_forward(self, input, activation):
    """_BatchNorm.forward with the fused kernel."""
    factor, use_batch_stats, rm, rv = _batch_norm_state(self, input)
    return fn.batch_norm(input, rm, rv, self.weight, self.bias, use_batch_stats, factor, self.eps,
                         activation=activation)


class BatchNorm1d(torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d ((N, C) or (N, C, L) input) on cnnkernels' kernels."""

    def forward(self, input):
        return _batch_norm_forward(self, input, None)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on cnnkernels' kernels."""

    def forward(self, input):
        return _batch_norm_forward(self, input, None)


class BatchNormReLU2d(torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d followed by ReLU, fused into one kernel: same
    constructor, parameters, buffers and state_dict as BatchNorm2d; saves
    only the input for backward (the ReLU mask is recomputed).

    Being a BatchNorm2d subclass, it is also what isinstance-based tools
    see: torch.nn.SyncBatchNorm.convert_sync_batchnorm would turn it into a
    plain SyncBatchNorm and lose the ReLU; use
    cnnkernels.nn.SyncBatchNorm.convert_sync_batchnorm (SyncBatchNormReLU2d)."""

    def forward(self, input):
        return _batch_norm_forward(self, input, "relu")


class SyncBatchNorm(torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on cnnkernels' kernels: in training, with a
    torch.distributed process group of more than one process, the batch
    statistics and the input gradient's sums are reduced over the group
    (gloo on the CPU, nccl on CUDA); otherwise (eval, one process, no
    process group) it is a plain BatchNorm. Same constructor, parameters,
    buffers and state_dict as torch.nn.SyncBatchNorm; also runs on the CPU."""

    _activation = None

    def forward(self, input):
        if input.dim() >= 2 and input.shape[1] == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        factor, use_batch_stats, rm, rv = _batch_norm_state(self, input)
        group, world = None, 1
        if use_batch_stats and self.training:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                group = self.process_group or dist.group.WORLD
                world = dist.get_world_size(group)
        if world <= 1:
            return fn.batch_norm(input, rm, rv, self.weight, self.bias, use_batch_stats, factor,
                                 self.eps, activation=self._activation)
        (input,) = fn._autocast(False, input)
        return SyncBatchNormFunction.apply(
            input, self.weight, self.bias, rm, rv, float(factor), float(self.eps),
            activation_code(self._activation), 0.0, group, world,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Like torch.nn.SyncBatchNorm.convert_sync_batchnorm: every
        BatchNorm1d/2d/3d and SyncBatchNorm (torch.nn's or cnnkernels')
        becomes a cnnkernels SyncBatchNorm, and every cnnkernels
        BatchNormReLU2d a SyncBatchNormReLU2d, sharing parameters and
        buffers (state_dict keys unchanged). Exact types only: user
        subclasses are left alone. Returns the module (a new object when
        `module` itself was converted)."""
        target = _SYNC_TWINS.get(type(module))
        if target is not None:
            new = target.__new__(target)
            new.__dict__.update(module.__dict__)
            new.process_group = process_group
            return new
        for name, child in module._modules.items():
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child, process_group)
        return module


class SyncBatchNormReLU2d(SyncBatchNorm):
    """SyncBatchNorm followed by ReLU in one fused kernel, for 4-D input
    (the distributed form of BatchNormReLU2d)."""

    _activation = "relu"

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class Dropout(torch.nn.Dropout):
    """torch.nn.Dropout on cnnkernels' Philox kernels (no mask stored)."""

    def forward(self, input):
        return fn.dropout(input, self.p, self.training, self.inplace)


class Dropout2d(torch.nn.Dropout2d):
    """torch.nn.Dropout2d (whole channels) on cnnkernels' kernels."""

    def forward(self, input):
        return fn.dropout2d(input, self.p, self.training, self.inplace)


def _conv_input(self, input):
    """The input and padding to convolve: non-zero padding modes pad first
    (F.pad, as torch.nn does) and then convolve without padding."""
    if self.padding_mode != "zeros":
        input = torch.nn.functional.pad(
            input, self._reversed_padding_repeated_twice, mode=self.padding_mode
        )
        return input, 0
    return input, self.padding


class Conv2d(torch.nn.Conv2d):
    """Drop-in torch.nn.Conv2d (same parameters, init, repr and state_dict)."""

    def _conv_forward(self, input, weight, bias):
        input, padding = _conv_input(self, input)
        return fn.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups)


class Conv1d(torch.nn.Conv1d):
    """Drop-in torch.nn.Conv1d, running on the 2-D kernels."""

    def _conv_forward(self, input, weight, bias):
        input, padding = _conv_input(self, input)
        return fn.conv1d(input, weight, bias, self.stride, padding, self.dilation, self.groups)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """Drop-in torch.nn.ConvTranspose2d; forward(input, output_size=None)
    resolves output_size to output_padding exactly as torch does."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        num_spatial_dims = 2
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size,
            num_spatial_dims, self.dilation,
        )
        return fn.conv_transpose2d(
            input, self.weight, self.bias, self.stride, self.padding, output_padding,
            self.groups, self.dilation,
        )


_SYNC_TWINS = {
    torch.nn.BatchNorm1d: SyncBatchNorm,
    torch.nn.BatchNorm2d: SyncBatchNorm,
    torch.nn.BatchNorm3d: SyncBatchNorm,
    torch.nn.SyncBatchNorm: SyncBatchNorm,
    SyncBatchNorm: SyncBatchNorm,
    SyncBatchNormReLU2d: SyncBatchNormReLU2d,
    BatchNorm1d: SyncBatchNorm,
    BatchNorm2d: SyncBatchNorm,
    BatchNormReLU2d: SyncBatchNormReLU2d,
}
