"""SN's training forward and backward with few operations: the fused autograd function.

The data is read in BatchNorm's passes (forward: per-row sum and sum of squares, then the
output; backward: the per-row sums of ``g`` and ``g * (x - mean_in)``, then ``dx``), and
everything else is ``(N, C)``-sized: Eqn. 3-5 and the paper's Appendix on per-row sums. On
small inputs each of those operations costs about as much as a pass over the data, so the
code is written to need few of them: sums rather than means (the ``1 / count`` factors go into
the scalar arguments of the next operation), Python-float importance weights, in-place
accumulation, and signs and constants folded into ``alpha``/``value`` arguments.

Every statistic ``k`` but IN pools the rows' moments over a set of rows (LN: a sample's
channels; GN: a group of them; BN: the samples of a device chunk), described by a view of the
``(N, C)`` tensors and the dimension pooled (:class:`Pool`):

    mu_k  = mean over the set of mu_in
    var_k = mean over the set of (var_in + (mu_in - mu_k)^2)     (exact, stable)

and for upstream gradients ``d_mu``, ``d_var`` of the mixed moments (rows), with ``P`` the
set's size:

    d_mu_in  += w_k / P * sum_set(d_mu) + 2 w'_k / P * (mu_in - mu_k) * sum_set(d_var)
    d_var_in += w'_k / P * sum_set(d_var)

:mod:`sn.composite` is the same computation in plain differentiable operations;
``tests/test_sn_fused.py`` compares the two in float64. Under ``create_graph=True`` the backward
returns the composite form's gradients as a graph, so double backward works.

The importance weights are Python floats on CPUs (fewer, cheaper operations) and 0-d tensors
elsewhere (reading them on the host would wait for the GPU at every layer): ``host_weights``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import composite
from .config import Config
from .moments import Pool, repeat_rows, row_moments


def _acc(dst: Tensor, src: Tensor, w, scale: float = 1.0) -> Tensor:
    """``dst += w * scale * src`` in place, ``w`` a Python float or a 0-d tensor."""
    if isinstance(w, float):
        return dst.add_(src, alpha=w * scale)
    return dst.addcmul_(src, w, value=scale)


def _scaled(src: Tensor, w, scale: float) -> Tensor:
    """``w * scale * src`` (a new tensor), ``w`` a Python float or a 0-d tensor."""
    return src * (w * scale) if isinstance(w, float) else torch.mul(src, w).mul_(scale)


def _acc_product(dst: Tensor, t1: Tensor, t2: Tensor, w, scale: float) -> Tensor:
    """``dst += w * scale * t1 * t2`` in place, ``w`` a Python float or a 0-d tensor."""
    if isinstance(w, float):
        return dst.addcmul_(t1, t2, value=w * scale)
    return dst.addcmul_(t1 * t2, w, value=scale)


_SIGNS = {}


def _signs(like: Tensor) -> Tensor:
    """``[[-1], [-0.5]]`` in ``like``'s dtype and device (cached): d_mu = -a, d_var = -b / 2."""
    key = (like.dtype, like.device)
    if key not in _SIGNS:
        _SIGNS[key] = torch.tensor([[-1.0], [-0.5]], dtype=like.dtype, device=like.device)
    return _SIGNS[key]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Sum of the elementwise product of two contiguous tensors of the same size."""
    return torch.dot(a.view(-1), b.reshape(-1))


class SumMixer:
    """Eqn. 3-5 from the rows' sums, forward and backward (see the module docstring).

    ``forward`` returns the mixed ``(N, C)`` mean and variance and the BN branch's batch
    moments per device chunk ``(D, C)`` (or None); it keeps what ``backward`` needs.
    """

    def __init__(self, config: Config, n: int, c: int, fixed_bn: Optional[Tuple[Tensor, Tensor]], host_weights: bool):
        self.stats = config.stats
        self.fixed_bn = fixed_bn
        self.host_weights = host_weights
        # per statistic: None for IN (the rows themselves) and BN with fixed statistics
        self.pools = [None if op == "in" or (op == "bn" and fixed_bn is not None)
                      else Pool(op, n, c, config.num_groups, config.devices) for op in self.stats]

    def forward(self, x3: Tensor, mean_logits: Tensor, var_logits: Tensor):
        n, c, l = x3.shape
        logits = torch.stack([mean_logits.detach(), var_logits.detach()])
        self.weights = torch.softmax(logits if logits.dtype == x3.dtype else logits.to(x3.dtype), 1)
        if self.host_weights:
            self.w_mean, self.w_var = self.weights.tolist()
        else:
            self.w_mean, self.w_var = list(self.weights[0]), list(self.weights[1])
        self.mean_in, self.var_in = mean_in, var_in = row_moments(x3)  # (N, C)
        mean = var = batch_bn = None
        self.moments: List[Tuple[Tensor, Tensor]] = []  # per statistic, broadcastable against its view
        self.centered = {}  # per pooled statistic: mu_in - mu_k, in its view
        for op, pool, wm, wv in zip(self.stats, self.pools, self.w_mean, self.w_var):
            if op == "in":
                m, v = mean_in, var_in
            elif pool is None:  # BN with fixed (running) statistics, (C,)
                m, v = (t if t.dtype == x3.dtype else t.to(x3.dtype) for t in self.fixed_bn)
            else:
                m, v, centered = pool.moments(mean_in, var_in)  # (centered kept: the backward needs it)
                if op == "bn":
                    batch_bn = (m.view(-1, c), v.view(-1, c))
                self.centered[op] = centered
            self.moments.append((m, v))
            if mean is None:  # the first statistic: made (N, C) whatever its shape
                if op == "in":
                    mean, var = m * wm, v * wv
                else:
                    shape = (n, c) if pool is None or pool.flat else pool.shape
                    mean = torch.mul(m, wm).expand(shape).contiguous().view(n, c)  # (a copy, written in place below)
                    var = torch.mul(v, wv).expand(shape).contiguous().view(n, c)
            elif pool is None:
                _acc(mean, m, wm)
                _acc(var, v, wv)
            else:
                _acc(pool.view(mean), m, wm)
                _acc(pool.view(var), v, wv)
        return mean, var, batch_bn

    def backward(self, a: Tensor, b: Tensor, l: int):
        """From ``a = -d_mu`` and ``b = -2 d_var`` of the rows ``(N, C)``: ``(d_mu_in / L,
        2 d_var_in / L, d_mean_logits, d_var_logits)`` (the first two as ``dx`` takes them)."""
        d_mu = d_var = None  # d_mu_in / L and 2 d_var_in / L, accumulated
        inner_mean, inner_var = [], []  # <a, mu_k> and <b, var_k>, for the logits
        for op, pool, (m, v), wm, wv in zip(self.stats, self.pools, self.moments, self.w_mean, self.w_var):
            if op == "in":  # d_mu_in += wm d_mu, d_var_in += wv d_var
                inner_mean.append(_dot(a, m))
                inner_var.append(_dot(b, v))
                if d_mu is None:
                    d_mu, d_var = _scaled(a, wm, -1.0 / l), _scaled(b, wv, -1.0 / l)
                else:
                    _acc(d_mu, a, wm, -1.0 / l)
                    _acc(d_var, b, wv, -1.0 / l)
            elif pool is None:  # BN with fixed statistics: a gradient for the logits only
                inner_mean.append(_dot(a.sum(0), m))
                inner_var.append(_dot(b.sum(0), v))
            else:
                sa, sb = pool.sum(a), pool.sum(b)  # set sums of -d_mu and -2 d_var
                inner_mean.append(_dot(sa, m))
                inner_var.append(_dot(sb, v))
                scale = 1.0 / (pool.size * l)
                # d_mu_in += wm / P sum(d_mu) + 2 wv / P (mu_in - mu_k) sum(d_var); d_var_in += wv / P sum(d_var)
                if d_mu is None:
                    d_mu, d_var = torch.zeros_like(a), torch.zeros_like(b)
                d_mu_view = pool.view(d_mu)
                _acc_product(d_mu_view, self.centered[pool.op], sb, wv, -scale)
                _acc(d_mu_view, sa, wm, -scale)
                _acc(pool.view(d_var), sb, wv, -scale)
        # softmax backward: d_logit = w * (inner - <w, inner>), with inner of d_mu = -a, of d_var = -b / 2
        inner = torch.stack(inner_mean + inner_var).view(2, -1)
        w = self.weights
        d_logits = (inner - (w * inner).sum(1, keepdim=True)).mul_(w).mul_(_signs(inner))
        if d_mu is None:  # only BN with fixed statistics: the rows' moments get no gradient
            d_mu, d_var = torch.zeros_like(a), torch.zeros_like(b)
        return d_mu, d_var, d_logits[0], d_logits[1]


def mixed_forward(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor],
                  bias: Optional[Tensor], config: Config, bn_mean: Optional[Tensor] = None,
                  bn_var: Optional[Tensor] = None, host_weights: Optional[bool] = None):
    """The forward of :class:`FusedSwitchNorm` (no graph): ``(output (1, N * C, L), batch BN
    moments or None, the mixer, mixed mean, mixed variance + eps)``."""
    n, c, l = x3.shape
    fixed = None if bn_mean is None else (bn_mean.detach(), bn_var.detach())
    mixer = SumMixer(config, n, c, fixed, x3.is_cpu if host_weights is None else host_weights)
    mean, var, batch_bn = mixer.forward(x3, mean_logits, var_logits)
    var.add_(config.eps)
    # BatchNorm's inference kernel on the (1, N*C, L) view: every row is a channel of its own
    out, _, _ = torch.native_batch_norm(x3.view(1, n * c, l), repeat_rows(weight, n, x3.dtype, None),
                                        repeat_rows(bias, n, x3.dtype, None), mean.view(-1), var.view(-1),
                                        False, 0.0, 0.0)
    return out, batch_bn, mixer, mean, var


class FusedSwitchNorm(torch.autograd.Function):
    """SN forward and backward in BatchNorm's passes over the data, saving only the input (and
    references to the parameters).

    ``apply(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var, host_weights)``
    with ``x3`` contiguous ``(N, C, L)``; returns the output ``(1, N * C, L)`` and, when the BN
    branch uses the batch, its per-device moments.
    """

    @staticmethod
    def forward(ctx, x3, mean_logits, var_logits, weight, bias, config, bn_mean=None, bn_var=None,
                host_weights=None):
        out, batch_bn, mixer, mean, var = mixed_forward(x3, mean_logits, var_logits, weight, bias, config, bn_mean,
                                                        bn_var, host_weights)
        ctx.save_for_backward(x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var)
        ctx.config = config
        ctx.mixer, ctx.mean, ctx.var_eps = mixer, mean, var
        ctx.mark_non_differentiable(*(batch_bn or ()))
        ctx.set_materialize_grads(False)  # (no zero gradients made for the batch moments)
        return (out,) + (batch_bn or ())

    @staticmethod
    def backward(ctx, grad_out, *unused):
        if grad_out is None:  # the output was not used
            return (None,) * 9
        x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradients as a graph (double backward)
            grads = composite.input_gradients((x3, mean_logits, var_logits, weight, bias), grad_out, ctx.config,
                                              bn_mean, bn_var)
            return tuple(g if g is None or ctx.needs_input_grad[i] else None for i, g in enumerate(grads)) + (None,) * 4
        grads = _backward(ctx, grad_out, x3, weight)
        dtypes = [None if t is None else t.dtype for t in (x3, mean_logits, var_logits, weight, bias)]
        return tuple(g if g is None or g.dtype == dtype else g.to(dtype) for g, dtype in zip(grads, dtypes)) + (None,) * 4


def _backward(ctx, grad_out: Tensor, x3: Tensor, weight: Optional[Tensor]):
    """The Appendix backward in BatchNorm's passes: ``(dx, d_mean_logits, d_var_logits, d_weight, d_bias)``."""
    mixer, mean = ctx.mixer, ctx.mean
    mean_in = mixer.mean_in
    n, c, l = x3.shape
    g = grad_out.contiguous().view(1, n * c, l)
    x1 = x3.view(1, n * c, l)
    ones = torch.ones(n * c, dtype=x3.dtype, device=x3.device)
    # per row: sum(g * (x - mean_in)) and sum(g), one pass (BatchNorm's backward reductions)
    _, s_gx, s_g = torch.ops.aten.native_batch_norm_backward(
        g, x1, ones, None, None, mean_in.view(-1), ones, True, 0.0, [False, True, True])
    s_gx, s_g = s_gx.view(n, c), s_g.view(n, c)
    rstd = ctx.var_eps.rsqrt()  # (N, C)
    gamma_rstd = rstd if weight is None else rstd * (weight.detach() if weight.dtype == x3.dtype
                                                      else weight.detach().to(x3.dtype))
    s_gxc = torch.addcmul(s_gx, mean_in - mean, s_g)  # sum(g * (x - mean)) per row
    a = gamma_rstd * s_g  # -d_mean
    b = torch.mul(gamma_rstd, rstd).mul_(rstd).mul_(s_gxc)  # -2 d_var
    d_mu, d_var, d_mean_logits, d_var_logits = mixer.backward(a, b, l)
    d_x = None
    if ctx.needs_input_grad[0]:
        # dx = gamma rstd g + d_mu_in / L + 2 d_var_in / L (x - mean_in): one pass for the last two
        d_x, _, _ = torch.native_batch_norm(x1, d_var.view(-1), d_mu.view(-1), mean_in.view(-1), ones, False,
                                            0.0, 0.0)
        d_x = d_x.view(n, c, l).addcmul_(g.view(n, c, l), gamma_rstd.unsqueeze(2))
    d_weight = (rstd * s_gxc).sum(0) if ctx.needs_input_grad[3] else None
    d_bias = s_g.sum(0) if ctx.needs_input_grad[4] else None
    return d_x, d_mean_logits, d_var_logits, d_weight, d_bias
