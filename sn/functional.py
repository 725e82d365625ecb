"""Functional core of Switchable Normalization.

Everything here works on a 3-d view ``(N, C, L)`` of the input (``L`` is the product of the
spatial sizes, 1 for ``(N, C)`` features). The per-(sample, channel) statistics of IN are
computed once; LN, GN and BN statistics are derived from them (Eqn. 5 of the paper), but in
the numerically stable "parallel variance" form

    var_group = mean(var_in) + mean((mu_in - mu_group) ** 2)

instead of the printed ``mean(var_in + mu_in ** 2) - mu_group ** 2``, which cancels
catastrophically for inputs with a large mean (at a mean of 1e4 in float32 the printed form
loses every digit and can go negative, giving NaN under the square root). All variances are
biased (divide by the number of elements), so a 1x1 map or a batch of one gives a variance of
exactly zero instead of NaN.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import inference as SNI
from . import native as SNN
from .fused import FusedSwitchNorm, mixed_forward

KNOWN_STATS = ("in", "ln", "bn", "gn")


def instance_moments(x3: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and biased variance over the last dim of ``x3`` ``(N, C, L)``, two-pass.

    Returns two ``(N, C)`` tensors.
    """
    mean = x3.mean(dim=2)  # (N, C)
    var = (x3 - mean.unsqueeze(2)).square().mean(dim=2)  # (N, C)
    return mean, var


def pool_moments(mean: Tensor, var: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    """Moments of the union of equal-sized groups, from each group's mean and biased variance.

    ``mean`` and ``var`` hold the moments of equal-sized groups along ``dim``; returns the
    moments of their union, with ``dim`` kept (size 1). Stable for large offsets because the
    spread of the means is measured from their own average.
    """
    pooled_mean = mean.mean(dim=dim, keepdim=True)
    pooled_var = (var + (mean - pooled_mean).square()).mean(dim=dim, keepdim=True)
    return pooled_mean, pooled_var


def group_moments(mean_in: Tensor, var_in: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    """GN statistics from IN statistics ``(N, C)``, broadcast back to ``(N, C)``."""
    n, c = mean_in.shape
    m, v = pool_moments(
        mean_in.reshape(n, num_groups, c // num_groups),  # (N, G, C/G)
        var_in.reshape(n, num_groups, c // num_groups),
        dim=2,
    )  # (N, G, 1)
    return m.expand(n, num_groups, c // num_groups).reshape(n, c), v.expand(
        n, num_groups, c // num_groups
    ).reshape(n, c)


def batch_moments(mean_in: Tensor, var_in: Tensor, devices: int) -> Tuple[Tensor, Tensor]:
    """BN statistics per device chunk from IN statistics ``(N, C)``.

    The batch is split into ``devices`` equal consecutive chunks of ``S = N / devices`` samples,
    as the paper computes BN statistics within each GPU. Returns two ``(devices, C)`` tensors.
    """
    n, c = mean_in.shape
    m, v = pool_moments(
        mean_in.reshape(devices, n // devices, c),  # (D, S, C)
        var_in.reshape(devices, n // devices, c),
        dim=1,
    )  # (D, 1, C)
    return m.squeeze(1), v.squeeze(1)


def expand_devices(stat: Tensor, n: int) -> Tensor:
    """``(D, C)`` per-device statistics -> ``(N, C)``, one row per sample."""
    d, c = stat.shape
    return stat.unsqueeze(1).expand(d, n // d, c).reshape(n, c)


def mix_statistics(
    mean_in: Tensor,
    var_in: Tensor,
    mean_logits: Tensor,
    var_logits: Tensor,
    stats: Sequence[str],
    *,
    num_groups: int = 1,
    devices: int = 1,
    bn_mean: Optional[Tensor] = None,
    bn_var: Optional[Tensor] = None,
    bn_reduce=None,
) -> Tuple[Tensor, Tensor, Optional[Tuple[Tensor, Tensor]]]:
    """The mixed mean and variance of Eqn. 3 for every (sample, channel), from IN moments.

    Args:
        mean_in, var_in: ``(N, C)`` per-(sample, channel) mean and biased variance.
        mean_logits, var_logits: importance logits, one per entry of ``stats``.
        stats: names of the statistics mixed, out of ``KNOWN_STATS``.
        num_groups: groups of the GN statistics.
        devices: chunks for the BN statistics when they come from the batch.
        bn_mean, bn_var: ``(C,)`` statistics used for the BN branch instead of the batch's
            (running statistics in eval mode).
        bn_reduce: ``f(mean, var) -> (mean, var)`` applied to the batch's ``(1, C)`` BN moments
            (synchronized SN pools them across processes); only with ``devices=1``.

    Returns:
        ``(mean, var, batch_bn)``: mixed ``(N, C)`` mean and variance, and the per-device
        batch statistics ``(D, C)`` of the BN branch when they were computed from the batch
        (for the running averages), else ``None``.
    """
    n, c = mean_in.shape
    means, variances, batch_bn = [], [], None
    for op in stats:
        if op == "in":
            m, v = mean_in, var_in
        elif op == "ln":
            m, v = pool_moments(mean_in, var_in, dim=1)  # (N, 1)
        elif op == "gn":
            m, v = group_moments(mean_in, var_in, num_groups)
        elif op == "bn":
            if bn_mean is not None:
                m, v = bn_mean.to(mean_in.dtype).unsqueeze(0), bn_var.to(mean_in.dtype).unsqueeze(0)
            elif devices == 1:
                m, v = pool_moments(mean_in, var_in, dim=0)  # (1, C)
                if bn_reduce is not None:
                    m, v = bn_reduce(m, v)
                batch_bn = (m.detach(), v.detach())
            else:
                m, v = batch_moments(mean_in, var_in, devices)  # (D, C)
                batch_bn = (m.detach(), v.detach())
                m, v = expand_devices(m, n), expand_devices(v, n)
        else:  # validated by the module; a bug if reached
            raise AssertionError(f"unknown statistic {op!r}")
        means.append(m)
        variances.append(v)
    w_mean = torch.softmax(mean_logits.to(mean_in.dtype), dim=0)
    w_var = torch.softmax(var_logits.to(mean_in.dtype), dim=0)
    mean = means[0] * w_mean[0]
    var = variances[0] * w_var[0]
    for k in range(1, len(means)):
        mean = mean + means[k] * w_mean[k]
        var = var + variances[k] * w_var[k]
    return mean.expand(n, c), var.expand(n, c), batch_bn



def switch_norm(
    x3: Tensor,
    mean_logits: Tensor,
    var_logits: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    stats: Sequence[str],
    *,
    eps: float = 1e-5,
    num_groups: int = 1,
    devices: int = 1,
    bn_mean: Optional[Tensor] = None,
    bn_var: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor]]]:
    """SN on ``x3`` ``(N, C, L)`` (float32/float64): ``(output, per-device BN batch moments or None)``.

    On the CPU in float32/float64, the C kernels of :mod:`sn.native` (when they could be built).
    Otherwise the fused autograd function when a gradient is needed, a no-graph path otherwise
    (:mod:`sn.inference` when the BN branch, if any, uses ``bn_mean``/``bn_var``).
    Not twice differentiable; :func:`switch_norm_autograd` is (and is the readable reference).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x3, mean_logits, var_logits, weight, bias)
    )
    if SNN.applies(x3):  # float32/float64 on the CPU: the C kernels
        return SNN.switch_norm(x3, mean_logits, var_logits, weight, bias, stats, eps=eps, num_groups=num_groups,
                               devices=devices, bn_mean=bn_mean, bn_var=bn_var, needs_grad=needs_grad)
    if needs_grad:
        config = (tuple(stats), num_groups, devices, bn_mean, bn_var, eps)
        out, *batch_bn = FusedSwitchNorm.apply(x3.contiguous(), mean_logits, var_logits, weight, bias, config)
        return out, (tuple(batch_bn) if batch_bn else None)
    n, c, _ = x3.shape
    dtype = x3.dtype
    if bn_mean is not None or "bn" not in stats:  # inference: no batch statistics to return
        consts = SNI.constants(stats, *SNI.softmax_weights(mean_logits, var_logits), c, num_groups, bn_mean,
                               bn_var, eps, dtype, x3.device)
        rows = [SNI.repeat_rows(p, n, dtype, x3.device) for p in (weight, bias)]
        return SNI.switch_norm_inference(x3, consts, *rows), None
    config = (tuple(stats), num_groups, devices, bn_mean, bn_var, eps)
    out, batch_bn, _, _, _ = mixed_forward(x3.contiguous(), mean_logits, var_logits, weight, bias, config)
    return out, batch_bn


def switch_norm_autograd(x3, mean_logits, var_logits, weight, bias, stats, *, eps=1e-5, num_groups=1, devices=1,
                         bn_mean=None, bn_var=None, bn_reduce=None):
    """The same as :func:`switch_norm` in plain differentiable torch ops (slower, twice
    differentiable, and the path of synchronized SN through ``bn_reduce``)."""
    mean_in, var_in = instance_moments(x3)
    mean, var, batch_bn = mix_statistics(mean_in, var_in, mean_logits, var_logits, stats, num_groups=num_groups,
                                         devices=devices, bn_mean=bn_mean, bn_var=bn_var, bn_reduce=bn_reduce)
    return normalize(x3, mean, var, weight, bias, eps), batch_bn


def normalize(
    x3: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` on ``(N, C, L)`` with ``(N, C)`` stats."""
    scale = torch.rsqrt(var + eps)  # (N, C)
    if weight is not None:
        scale = scale * weight.to(x3.dtype)
    out = (x3 - mean.unsqueeze(2)) * scale.unsqueeze(2)
    if bias is not None:
        out = out + bias.to(x3.dtype).view(1, -1, 1)
    return out
