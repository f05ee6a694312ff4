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
