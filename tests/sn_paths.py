"""Direct calls of SN's implementations on the ``(N, C, L)`` rows, for tests that compare them."""
import torch

from sn import composite
from sn import functional as SNF
from sn import fused
from sn import native as SNN
from sn.config import Config


def _config(stats, eps, num_groups, devices):
    return Config(tuple(stats), num_groups, devices, eps)


def rows(x3, mean_logits, var_logits, weight, bias, stats, *, eps=1e-5, num_groups=1, devices=1, bn_mean=None,
         bn_var=None):
    """SN of ``x3`` on the eager implementation preferred now (the ``implementation`` fixture's):
    ``(output, per-device batch BN moments or None)``."""
    config = _config(stats, eps, num_groups, devices)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x3, mean_logits, var_logits, weight, bias))
    if SNF.select_implementation(x3) == "native":
        return SNN.switch_norm(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var,
                               needs_grad=needs_grad)
    x3 = x3.contiguous()
    if needs_grad:
        out, *moments = fused.FusedSwitchNorm.apply(x3, mean_logits, var_logits, weight, bias, config, bn_mean,
                                                    bn_var)
        return out, (tuple(moments) if moments else None)
    out, moments, _, _ = fused.mixed_forward(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var)
    return out, moments


def composite_rows(x3, mean_logits, var_logits, weight, bias, stats, *, eps=1e-5, num_groups=1, devices=1,
                   bn_mean=None, bn_var=None):
    """The composite (plain differentiable operations) form of :func:`rows`."""
    return composite.switch_norm(x3, mean_logits, var_logits, weight, bias, _config(stats, eps, num_groups, devices),
                                 bn_mean, bn_var)
