"""Drop-in modules: subclasses of the torch.nn classes (same constructor,
attributes, repr and state_dict) whose forward runs cnnkernels' kernels."""

from __future__ import annotations

import torch

from . import functional as fn

__all__ = ["MaxPool2d", "MaxUnpool2d", "AvgPool2d"]


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
