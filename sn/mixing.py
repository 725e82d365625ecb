"""Eqn. 3-5 on ``(N, C)`` statistics with a hand-written backward, for the fused path.

:func:`sn.functional.mix_statistics` is the same computation in differentiable torch ops; this
version avoids building and running an autograd graph for the ~30 tiny tensors involved, which
on small inputs costs more than the passes over the data. ``tests/test_sn_fused.py`` checks the
two against each other.

Every statistic ``k`` is described by a *pool*: the mean over the members of its pixel sets
(``in``: the row itself; ``ln``: the channels of a sample; ``gn``: a group of channels; ``bn``:
the samples of a device chunk), whose result broadcasts (after ``unpool``) back to ``(N, C)``:

    mu_k  = pool(mu_in)
    var_k = pool(var_in + (mu_in - mu_k)^2)          (exact for equal-sized sets, stable)

and, for upstream gradients ``d_mu_k``, ``d_var_k`` (already pooled sums over members / |P|):

    d_mu_in  += unpool(pool(d_mu_k)) + 2 (mu_in - mu_k) unpool(pool(d_var_k))
    d_var_in += unpool(pool(d_var_k))
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor


class Pool:
    """Mean over the pixel sets of one statistic, and its broadcast back to ``(N, C)``."""

    def __init__(self, op: str, n: int, c: int, num_groups: int, devices: int):
        self.op, self.n, self.c, self.g, self.d = op, n, c, num_groups, devices

    def pool(self, t: Tensor) -> Tensor:
        n, c = self.n, self.c
        if self.op == "in":
            return t
        if self.op == "ln":
            return t.mean(1, keepdim=True)  # (N, 1)
        if self.op == "gn":
            return t.reshape(n, self.g, c // self.g).mean(2, keepdim=True)  # (N, G, 1)
        if self.d == 1:  # bn
            return t.mean(0, keepdim=True)  # (1, C)
        return t.reshape(self.d, n // self.d, c).mean(1, keepdim=True)  # (D, 1, C)

    def unpool(self, t: Tensor) -> Tensor:
        """Pooled ``t`` as something that broadcasts against ``(N, C)``."""
        n, c = self.n, self.c
        if self.op == "gn":
            return t.expand(n, self.g, c // self.g).reshape(n, c)
        if self.op == "bn" and self.d > 1:
            return t.expand(self.d, n // self.d, c).reshape(n, c)
        return t


class Mixer:
    """The mixed ``(N, C)`` mean and variance of SN, forward and backward by hand."""

    def __init__(self, stats: Sequence[str], n: int, c: int, num_groups: int = 1, devices: int = 1,
                 bn_mean: Optional[Tensor] = None, bn_var: Optional[Tensor] = None):
        self.stats = tuple(stats)
        self.pools = [Pool(op, n, c, num_groups, devices) for op in self.stats]
        self.fixed_bn = None if bn_mean is None else (bn_mean.unsqueeze(0), bn_var.unsqueeze(0))

    def forward(self, mean_in: Tensor, var_in: Tensor, mean_logits: Tensor, var_logits: Tensor):
        """Returns ``(mean, var, batch_bn)`` as :func:`sn.functional.mix_statistics`."""
        dtype = mean_in.dtype
        # the weights as Python floats: a handful of scalars, and scalar arithmetic saves
        # dozens of tiny tensor ops per call (what dominates small inputs)
        weights = torch.softmax(torch.stack([mean_logits.detach(), var_logits.detach()]).to(dtype), 1)
        self.w_mean, self.w_var = weights.tolist()
        self.mean_in = mean_in
        self.means, self.vars = [], []  # per statistic, broadcastable to (N, C)
        batch_bn = None
        for pool in self.pools:
            if pool.op == "in":
                m, v = mean_in, var_in
            elif pool.op == "bn" and self.fixed_bn is not None:
                m, v = (t if t.dtype == dtype else t.to(dtype) for t in self.fixed_bn)
            else:
                m = pool.pool(mean_in)
                centered = mean_in - pool.unpool(m)
                v = pool.pool(torch.addcmul(var_in, centered, centered))
                if pool.op == "bn":
                    batch_bn = (m.reshape(-1, pool.c), v.reshape(-1, pool.c))
                m, v = pool.unpool(m), pool.unpool(v)
            self.means.append(m)
            self.vars.append(v)
        mean = self.means[0] * self.w_mean[0]
        var = self.vars[0] * self.w_var[0]
        for k in range(1, len(self.stats)):
            mean = mean.add(self.means[k], alpha=self.w_mean[k])
            var = var.add(self.vars[k], alpha=self.w_var[k])
        n, c = mean_in.shape
        return mean.expand(n, c), var.expand(n, c), batch_bn

    @staticmethod
    def _softmax_backward(w, inner: Tensor) -> Tensor:
        """Gradient of the logits from ``inner[k] = <d_out, stat_k>`` through ``w = softmax``."""
        w = torch.tensor(w, dtype=inner.dtype, device=inner.device)
        return w * (inner - (w * inner).sum())

    def backward(self, d_mean: Tensor, d_var: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(d_mean_in, d_var_in, d_mean_logits, d_var_logits)`` from ``(N, C)`` gradients."""
        inner_mean = torch.stack([(d_mean * m).sum() for m in self.means])
        inner_var = torch.stack([(d_var * v).sum() for v in self.vars])
        d_mean_in = d_var_in = None
        for k, pool in enumerate(self.pools):
            if pool.op == "bn" and self.fixed_bn is not None:
                continue
            if pool.op == "in":
                dm, dv = d_mean * self.w_mean[k], d_var * self.w_var[k]
            else:
                dm = pool.unpool(pool.pool(d_mean) * self.w_mean[k])
                dv = pool.unpool(pool.pool(d_var) * self.w_var[k])
                # the variance of a pooled set depends on the members' means too
                dm = torch.addcmul(dm, self.mean_in - self.means[k], dv, value=2.0)
            d_mean_in = dm if d_mean_in is None else d_mean_in + dm
            d_var_in = dv if d_var_in is None else d_var_in + dv
        if d_mean_in is None:  # only running BN statistics: the IN moments get no gradient
            d_mean_in, d_var_in = torch.zeros_like(d_mean), torch.zeros_like(d_var)
        return (d_mean_in.expand_as(d_mean), d_var_in.expand_as(d_var),
                self._softmax_backward(self.w_mean, inner_mean), self._softmax_backward(self.w_var, inner_var))
