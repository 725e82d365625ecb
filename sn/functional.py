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
from .inference import ONE_PASS_MAX_RATIO
from .mixing import Mixer

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



def fast_moments(x3: Tensor) -> Tuple[Tensor, Tensor]:
    """Like :func:`instance_moments`, with the kernels that are fastest on CPU.

    On CPU the variance comes from one pass (``vector_norm``, no temporary the size of the
    input) whenever every row's ``mean^2 <= 16 * var``, which is exact to ~20 ulps; otherwise
    (large offsets, constant rows, 1x1 maps) from the two-pass form. On GPUs, where the check
    would synchronize, always two passes. (``torch.var`` along the last dim is ~100x slower
    than a mean on some CPU builds, so it is not used.)
    """
    l = x3.shape[2]
    if l == 1:  # (N, C) features: each row is one value
        return x3[:, :, 0], torch.zeros_like(x3[:, :, 0])
    mean = x3.mean(dim=2)  # (N, C)
    if x3.device.type == "cpu":
        mean_sq = torch.linalg.vector_norm(x3, dim=2).square_().div_(l)  # E[x^2], (N, C)
        var = torch.addcmul(mean_sq, mean, mean, value=-1.0)
        # every row has mean^2 <= 16 var, i.e. var - mean^2 / 16 >= 0 (False for NaN too)
        if torch.addcmul(var, mean, mean, value=-1.0 / ONE_PASS_MAX_RATIO).min().item() >= 0:
            return mean, var
    centered = x3 - mean.unsqueeze(2)
    var = torch.linalg.vector_norm(centered, dim=2).square_().div_(l)
    return mean, var


def _affine_per_row(x3: Tensor, shift: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                    eps: float) -> Tensor:
    """``(x - shift) / sqrt(var + eps) * weight + bias`` with ``(N, C)`` shift/var and
    ``(N, C)``, ``(N * C,)`` or ``None`` weight and bias, in one pass: BatchNorm's inference kernel on the
    ``(1, N*C, L)`` view, where every (sample, channel) row is a channel of its own.

    Returns the ``(1, N*C, L)`` result (not a view, so it can leave an autograd Function)."""
    n, c, l = x3.shape
    # native_batch_norm directly: F.batch_norm's dispatch picks a ~4x slower CPU kernel for
    # inputs that do not require grad
    out, _, _ = torch.native_batch_norm(
        x3.reshape(1, n * c, l),
        None if weight is None else weight.reshape(n * c),
        None if bias is None else bias.reshape(n * c),
        shift.reshape(n * c),
        var.reshape(n * c),
        False,
        0.0,
        eps,
    )
    return out


class _FusedSwitchNorm(torch.autograd.Function):
    """SN forward and backward in a few passes over the input, saving only the input.

    Forward: per-(sample, channel) moments, the (N, C)-sized mixing of Eqn. 3-5
    (:class:`sn.mixing.Mixer`), one pass for the output.
    Backward (the paper's Appendix, by rows): the two reductions per (sample, channel),
    ``sum(g)`` and ``sum(g * (x - mean_in))``, in one pass; gradients of the mixed mean and
    variance; the mixer maps them to the logits and the IN moments; one pass writes
    ``dx = a * g + b * (x - mean_in) + c`` with ``(N, C)`` coefficients.
    """

    @staticmethod
    def forward(ctx, x3, mean_logits, var_logits, weight, bias, config):
        stats, num_groups, devices, bn_mean, bn_var, eps = config
        n, c, l = x3.shape
        mean_in, var_in = fast_moments(x3)
        mixer = Mixer(stats, n, c, num_groups, devices, bn_mean, bn_var)
        mean, var, batch_bn = mixer.forward(mean_in, var_in, mean_logits, var_logits)
        out = _affine_per_row(x3, mean, var, _repeat(weight, n, x3.dtype), _repeat(bias, n, x3.dtype), eps)
        ctx.save_for_backward(x3, weight)
        ctx.mixer, ctx.mean, ctx.var, ctx.eps = mixer, mean, var, eps
        ctx.dtypes = [None if t is None else t.dtype for t in (x3, mean_logits, var_logits, weight, bias)]
        ctx.mark_non_differentiable(*(batch_bn or ()))
        return (out,) + (batch_bn or ())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, *unused):
        x3, weight = ctx.saved_tensors
        mixer, mean, var = ctx.mixer, ctx.mean, ctx.var
        mean_in = mixer.mean_in
        n, c, l = x3.shape
        g = grad_out.contiguous().view(n, c, l)
        ones = torch.ones(n * c, dtype=x3.dtype, device=x3.device)
        # per row: sum(g * (x - mean_in)) and sum(g), one pass (BatchNorm's backward reductions)
        _, s_gx, s_g = torch.ops.aten.native_batch_norm_backward(
            g.view(1, n * c, l), x3.view(1, n * c, l), ones, None, None,
            mean_in.reshape(n * c), ones, True, 0.0, [False, True, True],
        )
        s_gx, s_g = s_gx.view(n, c), s_g.view(n, c)
        rstd = torch.rsqrt(var + ctx.eps)  # (N, C)
        gamma_rstd = rstd * weight.to(x3.dtype) if weight is not None else rstd
        s_gxc = torch.addcmul(s_gx, mean_in - mean, s_g)  # sum(g * (x - mean)) per row
        d_mean = -gamma_rstd * s_g
        d_var = (-0.5 * gamma_rstd * rstd.square()) * s_gxc
        d_mean_in, d_var_in, d_mean_logits, d_var_logits = mixer.backward(d_mean, d_var)
        d_x = None
        if ctx.needs_input_grad[0]:
            # dx = gamma*rstd*g + d_mean_in/L + 2/L*d_var_in*(x - mean_in)
            d_x = _affine_per_row(x3, mean_in, torch.ones_like(mean_in), (2.0 / l) * d_var_in, d_mean_in / l, 0.0)
            d_x = d_x.view(n, c, l).addcmul_(g, gamma_rstd.unsqueeze(2))
        d_weight = (rstd * s_gxc).sum(0) if ctx.needs_input_grad[3] else None
        d_bias = s_g.sum(0) if ctx.needs_input_grad[4] else None
        grads = (d_x, d_mean_logits, d_var_logits, d_weight, d_bias)
        return tuple(g if g is None or g.dtype == dtype else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)) + (None,)


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

    Uses the fused autograd function when a gradient is needed, a no-graph path otherwise
    (:mod:`sn.inference` when the BN branch, if any, uses ``bn_mean``/``bn_var``).
    Not twice differentiable; :func:`switch_norm_autograd` is (and is the readable reference).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x3, mean_logits, var_logits, weight, bias)
    )
    if needs_grad:
        config = (tuple(stats), num_groups, devices, bn_mean, bn_var, eps)
        out, *batch_bn = _FusedSwitchNorm.apply(x3.contiguous(), mean_logits, var_logits, weight, bias, config)
        return out, (tuple(batch_bn) if batch_bn else None)
    n, c, _ = x3.shape
    dtype = x3.dtype
    if bn_mean is not None or "bn" not in stats:  # inference: no batch statistics to return
        consts = SNI.constants(stats, *SNI.softmax_weights(mean_logits, var_logits), c, num_groups, bn_mean,
                               bn_var, eps, dtype, x3.device)
        rows = [SNI.repeat_rows(p, n, dtype, x3.device) for p in (weight, bias)]
        return SNI.switch_norm_inference(x3, consts, *rows), None
    mean_in, var_in = fast_moments(x3)
    mixer = Mixer(stats, n, c, num_groups, devices, bn_mean, bn_var)
    mean, var, batch_bn = mixer.forward(mean_in, var_in, mean_logits, var_logits)
    return _affine_per_row(x3, mean, var, _repeat(weight, n, dtype), _repeat(bias, n, dtype), eps), batch_bn


def _repeat(param: Optional[Tensor], n: int, dtype) -> Optional[Tensor]:
    """A ``(C,)`` parameter repeated for each of ``n`` samples: ``(N * C,)``."""
    return SNI.repeat_rows(param, n, dtype, None)


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
