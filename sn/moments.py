"""The rows' moments and their pooling: the statistics every SN implementation is built on.

A *row* is one (sample, channel) of the ``(N, C, L)`` view of the input (``L`` the product of
the spatial sizes). IN's statistics are the rows' moments; LN, GN and BN pool them over a set
of rows (LN: a sample's channels; GN: a group of them; BN: the samples of a device chunk, or of
every process). Pooling uses the "parallel variance" form (:func:`pool_moments`, the one place
it is written in Python; ``_native.c`` has its C twin)::

    mu_set  = mean over the set of mu_row
    var_set = mean over the set of (var_row + (mu_row - mu_set)^2)

instead of the paper's printed ``mean(var_row + mu_row^2) - mu_set^2``, which cancels
catastrophically for inputs with a large mean (at a mean of 1e4 in float32 it loses every
digit and can go negative). All variances are biased (divide by the count), so a 1x1 map or a
batch of one gives a variance of exactly zero, never NaN.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor

# One-pass row moments are used where the mean is small against the spread: the rounding error
# of E[x^2] - mean^2 relative to the variance is about (1 + mean^2 / var) ulps, so below this
# ratio it is within ~20 ulps (well inside float32 accuracy of the output); above, two passes.
ONE_PASS_MAX_RATIO = 16.0


def pool_moments(mean: Tensor, var: Tensor, set_sum: Callable[[Tensor], Tensor], set_size) -> Tuple[Tensor, Tensor, Tensor]:
    """Moments of the union of equal-sized sets of rows, from each row's mean and biased variance.

    ``set_sum(t)`` sums ``t`` over each set, keeping the result broadcastable against ``t``
    (``t.sum(dim, keepdim=True)``, a sum over a view, or an all-reduce over processes);
    ``set_size`` is the number of rows in a set (a number or a tensor). Returns the sets' mean
    and variance and ``mean - set mean`` (which the hand-written backwards reuse). Stable for any
    offset: the spread of the means is measured from their own average.
    """
    pooled_mean = set_sum(mean) / set_size
    centered = mean - pooled_mean
    pooled_var = set_sum(torch.addcmul(var, centered, centered)) / set_size
    return pooled_mean, pooled_var, centered


def instance_moments(x3: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and biased variance over the last dim of ``x3`` ``(N, C, L)``, two passes, in plain
    differentiable operations. Returns two ``(N, C)`` tensors."""
    mean = x3.mean(dim=2)  # (N, C)
    var = (x3 - mean.unsqueeze(2)).square().mean(dim=2)  # (N, C)
    return mean, var


def row_sums(x3: Tensor) -> Tuple[Tensor, Tensor, bool]:
    """For every row of ``x3`` ``(N, C, L)``: ``sum(x)`` and, where the one-pass form is safe,
    ``sum(x^2)`` (flag True); otherwise ``sum((x - mean)^2)`` (two passes, flag False). Two
    ``(N, C)`` tensors; sums rather than means (the fewest operations on small inputs). Not
    differentiable (the fused and inference paths call it without a graph).
    """
    l = x3.shape[2]
    if l == 1:  # (N, C) features: each row is one value, its variance zero
        first = x3[:, :, 0]
        return first, torch.zeros_like(first), False
    first = x3.sum(2)
    if x3.is_cpu:  # the check would synchronize a GPU
        second = torch.linalg.vector_norm(x3, dim=2)
        second.mul_(second)
        # every row: L var = sum(x^2) - sum(x)^2 / L >= L mean^2 / RATIO  (False for NaN too)
        if torch.addcmul(second, first, first, value=-(1.0 + 1.0 / ONE_PASS_MAX_RATIO) / l).min().item() >= 0:
            return first, second, True
    second = torch.linalg.vector_norm(x3 - first.unsqueeze(2) / l, dim=2)
    return first, second.mul_(second), False


def row_moments(x3: Tensor) -> Tuple[Tensor, Tensor]:
    """The rows' mean and biased variance ``(N, C)`` from :func:`row_sums` (no graph)."""
    l = x3.shape[2]
    first, second, raw = row_sums(x3)
    if raw:
        second.addcmul_(first, first, value=-1.0 / l)  # -> sum((x - mean)^2)
    return first * (1.0 / l), second.mul_(1.0 / l)


class Pool:
    """One pooled statistic on ``(N, C)`` row tensors: ``shape`` views them so that a set of rows
    lies along ``dim``; ``size`` rows per set. ``op`` is ``"ln"``, ``"gn"`` or ``"bn"``."""

    def __init__(self, op: str, n: int, c: int, num_groups: int = 1, devices: int = 1):
        self.op = op
        if op == "ln":
            self.shape, self.dim, self.size = (n, c), 1, c
        elif op == "gn":
            self.shape, self.dim, self.size = (n, num_groups, c // num_groups), 2, c // num_groups
        elif op == "bn" and devices == 1:  # over the batch
            self.shape, self.dim, self.size = (n, c), 0, n
        elif op == "bn":  # per device chunk of S = N / devices samples
            self.shape, self.dim, self.size = (devices, n // devices, c), 1, n // devices
        else:
            raise AssertionError(f"no pooled statistic {op!r}")
        self.flat = len(self.shape) == 2  # the (N, C) tensors need no view (views are not free)

    def view(self, t: Tensor) -> Tensor:
        """An ``(N, C)`` tensor seen with the sets along ``dim``."""
        return t if self.flat else t.view(self.shape)

    def sum(self, t: Tensor) -> Tensor:
        """Sum over each set of an ``(N, C)`` tensor (or one already in :meth:`view` form)."""
        return self.view(t).sum(self.dim, keepdim=True)

    def moments(self, mean_in: Tensor, var_in: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """:func:`pool_moments` of the rows' moments ``(N, C)``: the sets' mean and variance and
        the rows' centred means, in :meth:`view` form."""
        return pool_moments(self.view(mean_in), self.view(var_in), lambda t: t.sum(self.dim, keepdim=True), self.size)


__all__ = ["ONE_PASS_MAX_RATIO", "Pool", "instance_moments", "pool_moments", "row_moments",
           "row_sums"]
