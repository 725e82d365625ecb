"""SN in plain differentiable PyTorch operations: the composite form.

Slower than the fused and C paths (the autograd graph holds every ``(N, C)``-sized step and
the input-sized intermediates), but it is ordinary PyTorch: differentiable any number of
times, traceable by ``torch.jit.trace``, ``torch.export`` and the ONNX exporters, and usable
under ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``). :func:`sn.functional.switch_norm`
takes it in those contexts, for synchronized SN, and as the readable reference the other
paths are tested against.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .config import Config
from .moments import instance_moments, pool_moments


def _pool(mean_in: Tensor, var_in: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    m, v, _ = pool_moments(mean_in, var_in, lambda t: t.sum(dim, keepdim=True), mean_in.shape[dim])
    return m, v


def _group_moments(mean_in: Tensor, var_in: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    """GN statistics from the rows' moments ``(N, C)``, broadcast back to ``(N, C)``."""
    n, c = mean_in.shape
    shape = (n, num_groups, c // num_groups)
    m, v = _pool(mean_in.reshape(shape), var_in.reshape(shape), 2)  # (N, G, 1)
    return m.expand(shape).reshape(n, c), v.expand(shape).reshape(n, c)


def _batch_moments(mean_in: Tensor, var_in: Tensor, devices: int) -> Tuple[Tensor, Tensor]:
    """BN statistics ``(D, C)`` per device chunk of ``N / devices`` consecutive samples."""
    n, c = mean_in.shape
    shape = (devices, n // devices, c)
    m, v = _pool(mean_in.reshape(shape), var_in.reshape(shape), 1)  # (D, 1, C)
    return m.squeeze(1), v.squeeze(1)


def _per_sample(stat: Tensor, n: int) -> Tensor:
    """``(D, C)`` per-device statistics -> ``(N, C)``, one row per sample."""
    d, c = stat.shape
    return stat.unsqueeze(1).expand(d, n // d, c).reshape(n, c)


def mix_statistics(mean_in: Tensor, var_in: Tensor, mean_logits: Tensor, var_logits: Tensor, config: Config,
                   bn_mean: Optional[Tensor] = None, bn_var: Optional[Tensor] = None, bn_reduce=None):
    """The mixed mean and variance of Eqn. 3 for every row, from the rows' moments ``(N, C)``.

    ``bn_mean``/``bn_var`` ``(C,)`` replace the batch's BN statistics (running statistics);
    ``bn_reduce(mean, var) -> (mean, var)`` pools the batch's ``(1, C)`` BN moments further
    (synchronized SN, across processes; only with ``devices=1``). Returns ``(mean, var,
    batch_bn)``: ``(N, C)`` tensors and the BN branch's per-device batch moments ``(D, C)``
    (detached, for the running averages) when it used the batch, else ``None``.
    """
    n, c = mean_in.shape
    means, variances, batch_bn = [], [], None
    for op in config.stats:
        if op == "in":
            m, v = mean_in, var_in
        elif op == "ln":
            m, v = _pool(mean_in, var_in, 1)  # (N, 1)
        elif op == "gn":
            m, v = _group_moments(mean_in, var_in, config.num_groups)
        elif bn_mean is not None:  # bn, fixed statistics
            m, v = bn_mean.to(mean_in.dtype).unsqueeze(0), bn_var.to(mean_in.dtype).unsqueeze(0)
        elif config.devices == 1:  # bn over the batch
            m, v = _pool(mean_in, var_in, 0)  # (1, C)
            if bn_reduce is not None:
                m, v = bn_reduce(m, v)
            batch_bn = (m.detach(), v.detach())
        else:  # bn per device chunk
            m, v = _batch_moments(mean_in, var_in, config.devices)  # (D, C)
            batch_bn = (m.detach(), v.detach())
            m, v = _per_sample(m, n), _per_sample(v, n)
        means.append(m)
        variances.append(v)
    dtype = mean_in.dtype
    weights = torch.softmax(torch.stack([mean_logits.to(dtype), var_logits.to(dtype)]), dim=1)  # (2, K)
    if len(means) == 1:
        return means[0].expand(n, c) * weights[0, 0], variances[0].expand(n, c) * weights[1, 0], batch_bn
    # sum_k w_k stat_k over the statistics, each broadcast to (N, C): (K,) x (K, N, C) -> (N, C)
    mean = torch.tensordot(weights[0], torch.stack([m.expand(n, c) for m in means]), 1)
    var = torch.tensordot(weights[1], torch.stack([v.expand(n, c) for v in variances]), 1)
    return mean, var, batch_bn


def normalize(x3: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
              eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` on ``(N, C, L)`` with ``(N, C)`` statistics."""
    scale = torch.rsqrt(var + eps)  # (N, C)
    if weight is not None:
        scale = scale * weight.to(x3.dtype)
    out = (x3 - mean.unsqueeze(2)) * scale.unsqueeze(2)
    if bias is not None:
        out = out + bias.to(x3.dtype).view(1, -1, 1)
    return out


def switch_norm(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], config: Config, bn_mean: Optional[Tensor] = None,
                bn_var: Optional[Tensor] = None, bn_reduce=None):
    """SN of ``x3`` ``(N, C, L)`` in plain operations: ``(output (N, C, L), batch BN moments or None)``."""
    mean_in, var_in = instance_moments(x3)
    mean, var, batch_bn = mix_statistics(mean_in, var_in, mean_logits, var_logits, config, bn_mean, bn_var,
                                         bn_reduce)
    return normalize(x3, mean, var, weight, bias, config.eps), batch_bn


def input_gradients(inputs, grad_out: Tensor, config: Config, bn_mean=None, bn_var=None):
    """Gradients of :func:`switch_norm` with respect to ``inputs = (x3, mean_logits, var_logits,
    weight, bias)`` for the output gradient ``grad_out``, as a differentiable graph: what the
    fused and C paths' backwards return under ``create_graph=True`` (double backward).
    ``None`` for inputs that need no gradient."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    with torch.enable_grad():
        out, _ = switch_norm(*inputs, config, bn_mean, bn_var)
        grads = torch.autograd.grad(out, wanted, grad_out.reshape(out.shape), create_graph=True, allow_unused=True)
    found = iter(grads)
    result = []
    for t in inputs:
        if t is not None and t.requires_grad:
            g = next(found)
            result.append(torch.zeros_like(t) if g is None else g)
        else:
            result.append(None)
    return tuple(result)


__all__ = ["input_gradients", "mix_statistics", "normalize", "switch_norm"]
