"""BatchNorm with per-device statistics, the BN baseline of the paper's batch settings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import check_devices, check_divisible


class PerDeviceBatchNorm(_BatchNorm):
    r"""Batch Normalization whose training statistics come from ``devices`` equal chunks.

    With ``devices=1`` it is exactly :class:`torch.nn.BatchNorm2d` (for any ``(N, C, *)``
    input). With ``devices=G`` a batch of ``G * S`` samples is normalized as ``G`` separate
    batches of ``S`` samples, like ``G`` GPUs each running BatchNorm on its own samples (the
    paper's (#GPUs, samples per GPU) setting on one process). The running statistics move
    towards the average of the chunks' statistics (what each GPU's copy would hold on average).
    Eval mode uses the running statistics and ignores ``devices``.

    Args:
        num_features: number of channels :math:`C`.
        eps, momentum, affine, track_running_stats: as in :class:`torch.nn.BatchNorm2d`.
        devices: number of equal chunks of the batch. Default: 1

    Shape:
        - Input: :math:`(N, C, *)`, N divisible by ``devices`` in training
        - Output: same shape as the input

    Examples::

        >>> bn = PerDeviceBatchNorm(64, devices=8)   # the paper's (8, 2) for a batch of 16
        >>> out = bn(torch.randn(16, 64, 8, 8))
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, devices: int = 1, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.devices = check_devices(devices)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, *) input, got a {input.dim()}D input")
        if input.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (dim 1), got input of shape {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        use_batch = self.training or not self.track_running_stats
        if self.devices == 1 or not use_batch:
            return super().forward(input)
        self._check_input_dim(input)
        check_divisible(input.shape[0], self.devices)
        d, c = self.devices, self.num_features
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        s = input.shape[0] // d
        spatial = input.shape[2:]
        # (D*S, C, *) -> (S, D*C, *): each device chunk becomes its own group of channels
        x = input.reshape(d, s, c, *spatial).transpose(0, 1).reshape(s, d * c, *spatial)
        run_mean = self.running_mean.repeat(d) if self.track_running_stats else None
        run_var = self.running_var.repeat(d) if self.track_running_stats else None
        weight = self.weight.repeat(d) if self.affine else None
        bias = self.bias.repeat(d) if self.affine else None
        out = F.batch_norm(x, run_mean, run_var, weight, bias, True, factor, self.eps)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(run_mean.view(d, c).mean(0))
                self.running_var.copy_(run_var.view(d, c).mean(0))
        return out.reshape(s, d, c, *spatial).transpose(0, 1).reshape(input.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", devices={self.devices}" if self.devices != 1 else "")
