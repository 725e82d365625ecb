"""SN's training forward and backward in BatchNorm's passes over the data.

What runs on GPUs (and on CPUs without a C compiler). The data is read in four passes: the
forward takes the rows' moments (``row_moments``), then writes the output (``apply_rows``); the
backward takes the rows' sums of ``g`` and ``g * (x - mu_in)`` (``row_grad_sums``), then writes
``dx`` (``grad_rows``). :class:`TorchPasses` does them with PyTorch's BatchNorm kernels on the
``(1, N * C, L)`` view, where every (sample, channel) row is a channel of its own (Triton
kernels that also fuse the mixing are :mod:`sn.triton_path`). Everything in between is
``(N, C)``-sized: Eqn. 3-5 are :func:`sn.composite.mix_statistics` on the rows'
moments, recorded by autograd on those small tensors, and the backward of the mixing (the
paper's Appendix, softmax included) is autograd's, so no part of it is derived by hand here.
The importance weights stay on the device (no host synchronization per layer).

Under ``create_graph=True`` the backward returns the composite form's gradients as a graph, so
double backward works. ``tests/test_sn_fused.py`` compares this path with :mod:`sn.composite`
in float64.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import composite
from .config import Config
from .moments import row_moments


class _Mixing:
    """The mixing of one call, recorded by autograd on detached ``(N, C)`` leaves (the rows'
    moments and the logits), for :meth:`backward`."""

    def __init__(self, mean_in: Tensor, var_in: Tensor, mean_logits: Tensor, var_logits: Tensor, config: Config,
                 bn_mean: Optional[Tensor], bn_var: Optional[Tensor], record: bool):
        with torch.set_grad_enabled(record):
            self.leaves = [mean_in.requires_grad_(record), var_in.requires_grad_(record),
                           mean_logits.detach().requires_grad_(record), var_logits.detach().requires_grad_(record)]
            self.mean, self.var, self.batch_bn = composite.mix_statistics(*self.leaves, config, bn_mean, bn_var)

    def backward(self, d_mean: Tensor, d_var: Tensor):
        """``(d_mean_in, d_var_in, d_mean_logits, d_var_logits)`` for the mixed moments' gradients."""
        # (retained: the outer graph may be backpropagated again, e.g. by gradcheck; the small graph
        # goes when the autograd function's context does)
        grads = torch.autograd.grad([self.mean, self.var], self.leaves, [d_mean, d_var], allow_unused=True,
                                    retain_graph=True)
        return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, self.leaves)]


class TorchPasses:
    """The four passes over contiguous float32/float64 ``(N, C, L)`` rows with PyTorch's
    BatchNorm kernels (any device)."""

    row_moments = staticmethod(row_moments)

    @staticmethod
    def apply_rows(x3: Tensor, center: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """``(x - center) * scale + shift`` per row: BatchNorm's inference kernel, each row a channel.
        Returned as computed, ``(1, N * C, L)``: a view made here and returned by the autograd
        function could not be written in place afterwards (``ReLU(inplace=True)``)."""
        n, c, l = x3.shape
        ones = torch.ones(n * c, dtype=x3.dtype, device=x3.device)
        out, _, _ = torch.native_batch_norm(x3.view(1, n * c, l), scale.reshape(-1), shift.reshape(-1),
                                            center.reshape(-1), ones, False, 0.0, 0.0)
        return out

    @staticmethod
    def row_grad_sums(g: Tensor, x3: Tensor, mean_in: Tensor):
        """Every row's ``sum(g)`` and ``sum(g * (x - mean_in))``: BatchNorm's backward reductions."""
        n, c, l = x3.shape
        ones = torch.ones(n * c, dtype=x3.dtype, device=x3.device)
        _, s_gx, s_g = torch.ops.aten.native_batch_norm_backward(
            g.reshape(1, n * c, l), x3.view(1, n * c, l), ones, None, None, mean_in.reshape(-1), ones, True, 0.0,
            [False, True, True])
        return s_g.view(n, c), s_gx.view(n, c)

    @staticmethod
    def grad_rows(g: Tensor, x3: Tensor, mean_in: Tensor, a: Tensor, b: Tensor, c0: Tensor) -> Tensor:
        """``dx = a g + b (x - mean_in) + c0`` per row: the last two in BatchNorm's inference kernel."""
        dx = TorchPasses.apply_rows(x3, mean_in, b, c0).view(x3.shape)
        return dx.addcmul_(g.reshape(x3.shape), a.unsqueeze(2))


def mixed_forward(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor],
                  bias: Optional[Tensor], config: Config, bn_mean: Optional[Tensor] = None,
                  bn_var: Optional[Tensor] = None, record: bool = False):
    """SN of ``x3`` ``(N, C, L)`` without a graph: ``(output (viewable as N, C, L), batch BN moments or None,
    the mixing (recorded for a backward when ``record``), mixed variance + eps (N, C))``."""
    n, c, l = x3.shape
    mean_in, var_in = TorchPasses.row_moments(x3)  # (N, C)
    mixing = _Mixing(mean_in, var_in, mean_logits, var_logits, config, bn_mean, bn_var, record)
    stat_dtype = mean_in.dtype
    var_eps = (mixing.var.detach() + config.eps).expand(n, c)
    scale = var_eps.rsqrt()
    if weight is not None:
        scale = scale * weight.detach().to(stat_dtype)
    shift = (torch.zeros((), dtype=stat_dtype, device=x3.device) if bias is None
             else bias.detach().to(stat_dtype)).expand(n, c)
    out = TorchPasses.apply_rows(x3, mixing.mean.detach().expand(n, c), scale, shift)
    batch_bn = None if mixing.batch_bn is None else tuple(t.detach() for t in mixing.batch_bn)
    return out, batch_bn, mixing, var_eps


class FusedSwitchNorm(torch.autograd.Function):
    """SN forward and backward in four passes over the data, saving the input (and references to
    the parameters) and the mixing's ``(N, C)``-sized graph.

    ``apply(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var)`` with ``x3``
    ``(N, C, L)`` contiguous; returns the output (viewable as ``(N, C, L)``) and, when the BN branch
    uses the batch, its per-device moments.
    """

    @staticmethod
    def forward(ctx, x3, mean_logits, var_logits, weight, bias, config, bn_mean=None, bn_var=None):
        out, batch_bn, mixing, var_eps = mixed_forward(x3, mean_logits, var_logits, weight, bias, config, bn_mean,
                                                       bn_var, record=True)
        ctx.save_for_backward(x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var)
        ctx.config, ctx.mixing, ctx.var_eps = config, mixing, var_eps
        ctx.mark_non_differentiable(*(batch_bn or ()))
        ctx.set_materialize_grads(False)  # (no zero gradients made for the batch moments)
        return (out,) + (batch_bn or ())

    @staticmethod
    def backward(ctx, grad_out, *unused):
        if grad_out is None:  # the output was not used
            return (None,) * 8
        x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradients as a graph (double backward)
            grads = composite.input_gradients((x3, mean_logits, var_logits, weight, bias), grad_out, ctx.config,
                                              bn_mean, bn_var)
            return tuple(g if ctx.needs_input_grad[i] else None for i, g in enumerate(grads)) + (None,) * 3
        grads = _backward(ctx, grad_out, x3, weight)
        dtypes = [None if t is None else t.dtype for t in (x3, mean_logits, var_logits, weight, bias)]
        return tuple(g if g is None or g.dtype == dt else g.to(dt) for g, dt in zip(grads, dtypes)) + (None,) * 3


def _backward(ctx, grad_out: Tensor, x3: Tensor, weight: Optional[Tensor]):
    """``(dx, d_mean_logits, d_var_logits, d_weight, d_bias)``: two passes over the data around
    autograd's backward of the ``(N, C)`` mixing."""
    mixing = ctx.mixing
    mean_in = mixing.leaves[0].detach()
    n, c, l = x3.shape
    g = grad_out.reshape(n, c, l).contiguous()
    s_g, s_gx = TorchPasses.row_grad_sums(g, x3, mean_in)  # (N, C) each
    rstd = ctx.var_eps.rsqrt()  # (N, C)
    gamma_rstd = rstd if weight is None else rstd * weight.detach().to(rstd.dtype)
    s_gxc = torch.addcmul(s_gx, mean_in - mixing.mean.detach(), s_g)  # sum(g * (x - mean)) per row
    d_mean = -gamma_rstd * s_g
    d_var = torch.mul(gamma_rstd, rstd).mul_(rstd).mul_(s_gxc).mul_(-0.5)
    d_mean_in, d_var_in, d_mean_logits, d_var_logits = mixing.backward(d_mean, d_var)
    d_x = None
    if ctx.needs_input_grad[0]:
        # dx = gamma rstd g + 2 d_var_in / L (x - mean_in) + d_mean_in / L: one pass
        d_x = TorchPasses.grad_rows(g, x3, mean_in, gamma_rstd, d_var_in * (2.0 / l), d_mean_in * (1.0 / l))
    d_weight = (rstd * s_gxc).sum(0) if ctx.needs_input_grad[3] else None
    d_bias = s_g.sum(0) if ctx.needs_input_grad[4] else None
    return d_x, d_mean_logits, d_var_logits, d_weight, d_bias
