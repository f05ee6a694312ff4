"""Drop-in modules: subclasses of the torch.nn classes (same constructor,
attributes, repr and state_dict) whose forward runs cnnkernels' kernels."""

from __future__ import annotations

import torch

from . import functional as fn

__all__ = [
    "MaxPool2d",
    "MaxUnpool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNormReLU2d",
    "Dropout",
    "Dropout2d",
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


def _batch_norm_forward(self, input, activation):
    """torch.nn.modules.batchnorm._BatchNorm.forward's bookkeeping (momentum,
    num_batches_tracked, which statistics to use), then the fused kernel."""
    self._check_input_dim(input)
    factor = 0.0 if self.momentum is None else self.momentum
    if self.training and self.track_running_stats and self.num_batches_tracked is not None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / float(self.num_batches_tracked)
    use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
    track = not self.training or self.track_running_stats
    return fn.batch_norm(
        input,
        self.running_mean if track else None,
        self.running_var if track else None,
        self.weight,
        self.bias,
        use_batch_stats,
        factor,
        self.eps,
        activation=activation,
    )


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
    only the input for backward (the ReLU mask is recomputed)."""

    def forward(self, input):
        return _batch_norm_forward(self, input, "relu")


class Dropout(torch.nn.Dropout):
    """torch.nn.Dropout on cnnkernels' Philox kernels (no mask stored)."""

    def forward(self, input):
        return fn.dropout(input, self.p, self.training, self.inplace)


class Dropout2d(torch.nn.Dropout2d):
    """torch.nn.Dropout2d (whole channels) on cnnkernels' kernels."""

    def forward(self, input):
        return fn.dropout2d(input, self.p, self.training, self.inplace)
