"""SN's forward when nothing needs a gradient and the BN branch uses fixed statistics.

This is the inference path of a layer in eval mode. Everything that depends only on the
layer's state (the softmax of the logits, the running statistics weighted by their
importance, ``eps``) is folded into a few constant tensors, :class:`Constants`, which the
layer caches until its parameters or buffers change. A call then costs two reads of the
input (its per-row sum and sum of squares), one read and write for the output (BatchNorm's
inference kernel), and about fifteen operations on ``(N, C)``-sized tensors, with the mixing
weights as Python numbers (on small inputs each operation costs about as much as a pass).

Numerics (:func:`row_sums`, shared with the training path): the variance comes from one pass
(``E[x^2] - mean^2``) only where every row's ``mean^2 <= 16 var``, which bounds the
cancellation to a few ulps, also for the pooled LN/GN statistics (a group's squared mean is at
most the mean of its rows' squared means, so at most 16 times its variance); otherwise, and on
GPUs, from two passes, with the pooled statistics in the parallel-variance form.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

# One-pass moments are used where the mean is small against the spread: the rounding error of
# E[x^2] - mean^2 relative to the variance is about (1 + mean^2 / var) ulps, so below this ratio
# it is within ~20 ulps (well inside float32 accuracy of the output); above, two passes.
ONE_PASS_MAX_RATIO = 16.0


def softmax_weights(mean_logits: Tensor, var_logits: Tensor) -> Tuple[List[float], List[float]]:
    """The importance weights (softmax of the logits, in float64) as two lists of Python floats."""
    both = torch.stack([mean_logits.detach(), var_logits.detach()])
    w_mean, w_var = torch.softmax(both.double(), dim=1).tolist()
    return w_mean, w_var


def repeat_rows(param: Optional[Tensor], n: int, dtype, device) -> Optional[Tensor]:
    """A ``(C,)`` parameter repeated for each of ``n`` samples, ``(N * C,)``, or ``None``."""
    if param is None:
        return None
    if param.requires_grad and torch.is_grad_enabled():
        param = param.detach()
    if param.dtype != dtype or (device is not None and param.device != device):
        param = param.to(dtype=dtype, device=device)
    return torch.cat([param] * n)  # (much cheaper than Tensor.repeat for small tensors)


class Constants(NamedTuple):
    """What Eqn. 3 needs besides the input, for a fixed layer state.

    ``w_in``: IN's (mean, variance) weights, or ``None`` without ``"in"``; ``pooled``:
    ``(op, groups, mean weight, variance weight)`` of LN (one group) and GN; ``mean_base`` and
    ``var_base``: ``(C,)`` tensors, the importance-weighted BN running mean and variance (zeros
    without ``"bn"``), ``eps`` added to the latter.
    """

    w_in: Optional[Tuple[float, float]]
    pooled: Tuple[Tuple[str, int, float, float], ...]
    mean_base: Tensor
    var_base: Tensor


def constants(stats: Sequence[str], w_mean: Sequence[float], w_var: Sequence[float], num_features: int,
              num_groups: int, bn_mean: Optional[Tensor], bn_var: Optional[Tensor], eps: float, dtype,
              device) -> Constants:
    """The :class:`Constants` of a layer mixing ``stats`` with softmax weights ``w_mean``/``w_var``."""
    w_in, pooled = None, []
    mean_base = torch.zeros(num_features, dtype=dtype, device=device)
    var_base = torch.full((num_features,), eps, dtype=dtype, device=device)
    for k, op in enumerate(stats):
        if op == "in":
            w_in = (w_mean[k], w_var[k])
        elif op in ("ln", "gn"):
            pooled.append((op, 1 if op == "ln" else num_groups, w_mean[k], w_var[k]))
        else:  # bn: the fixed statistics, weighted
            mean_base.add_(bn_mean.detach().to(dtype=dtype, device=device), alpha=w_mean[k])
            var_base.add_(bn_var.detach().to(dtype=dtype, device=device), alpha=w_var[k])
    return Constants(w_in, tuple(pooled), mean_base, var_base)


def row_sums(x3: Tensor) -> Tuple[Tensor, Tensor, bool]:
    """For every (sample, channel) row of ``x3`` ``(N, C, L)``: ``sum(x)`` and, where the one-pass
    form is safe, ``sum(x^2)`` (flag True); otherwise ``sum((x - mean)^2)`` (two passes, flag
    False). Two ``(N, C)`` tensors; sums rather than means, the ``1 / L`` factors are folded
    into later operations.
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


class Pool:
    """One pooled statistic: ``shape`` views an ``(N, C)`` tensor so that its sets are along
    ``dim``; ``size`` rows per set."""

    def __init__(self, op: str, n: int, c: int, num_groups: int, devices: int):
        self.op = op
        if op == "ln":
            self.shape, self.dim, self.size = (n, c), 1, c
        elif op == "gn":
            self.shape, self.dim, self.size = (n, num_groups, c // num_groups), 2, c // num_groups
        elif devices == 1:  # bn over the batch
            self.shape, self.dim, self.size = (n, c), 0, n
        else:  # bn per device chunk of S = N / devices samples
            self.shape, self.dim, self.size = (devices, n // devices, c), 1, n // devices
        self.flat = len(self.shape) == 2  # the (N, C) tensors need no view (views are not free)

    def view(self, t: Tensor) -> Tensor:
        """An ``(N, C)`` tensor seen with the sets along ``dim``."""
        return t if self.flat else t.view(self.shape)

    def sum(self, t: Tensor) -> Tensor:
        return self.view(t).sum(self.dim, keepdim=True)


def _pool(first: Tensor, second: Tensor, pool: Pool, l: int, raw_second: bool) -> Tuple[Tensor, Tensor]:
    """Sums over ``pool``'s sets of rows, ``sum(x)`` and ``sum((x - set mean)^2)``, from the
    rows' sums ``(N, C)``, kept broadcastable against ``pool.view``."""
    p_first = pool.sum(first)
    if raw_second:  # sum(x^2) - sum(x)^2 / k: safe where the rows' one-pass form is
        return p_first, pool.sum(second).addcmul_(p_first, p_first, value=-1.0 / (pool.size * l))
    centered = pool.view(first) - p_first / pool.size  # L (mean - set mean); parallel form:
    return p_first, pool.sum(torch.addcmul(pool.view(second), centered, centered, value=1.0 / l))


def mixed_moments(x3: Tensor, consts: Constants) -> Tuple[Tensor, Tensor]:
    """The mixed mean and variance (plus eps) of Eqn. 3 for every row of ``x3`` ``(N, C, L)``:
    two ``(N, C)`` tensors.

    Works on sums over pixel sets: a set of ``k`` pixels is described by ``sum(x)`` and
    ``sum((x - mean)^2)``, its mean and variance being these over ``k``. (Written for few
    operations: on small inputs each costs about as much as a pass over the data.)
    """
    n, c, l = x3.shape
    first, second, raw_second = row_sums(x3)  # (N, C) each
    pooled = []
    for op, groups, w_mean, w_var in consts.pooled:
        pool = Pool(op, n, c, groups, 1)
        pooled.append((pool, w_mean / (pool.size * l), w_var / (pool.size * l),
                       *_pool(first, second, pool, l, raw_second)))
    if raw_second:  # rows: sum(x^2) -> sum((x - mean)^2)
        second.addcmul_(first, first, value=-1.0 / l)
    w_in = consts.w_in
    if w_in is not None:
        mean = torch.add(consts.mean_base, first, alpha=w_in[0] / l)  # (N, C)
        var = torch.add(consts.var_base, second, alpha=w_in[1] / l)
    else:
        mean = consts.mean_base.expand(n, c).clone()
        var = consts.var_base.expand(n, c).clone()
    for pool, w_mean, w_var, p_first, p_second in pooled:
        pool.view(mean).add_(p_first, alpha=w_mean)
        pool.view(var).add_(p_second, alpha=w_var)
    return mean, var


def _state_tensors(layer) -> Tuple[Optional[Tensor], ...]:
    params, buffers = layer._parameters, layer._buffers  # (nn.Module's __getattr__ is slow)
    return (params["mean_weight"], params["var_weight"], params["weight"], params["bias"],
            buffers["running_mean"], buffers["running_var"])


def state_key(layer, x: Tensor):
    """What an SN ``layer``'s inference constants for ``x`` depend on: its parameters' and
    buffers' identities and versions (in-place updates bump a tensor's ``_version``; assignments
    change the tensor), ``eps``, statistics, and ``x``'s dtype and device. ``None`` for
    inference tensors (made under ``torch.inference_mode``), which keep no version."""
    try:
        return (x.dtype, x.get_device(), layer.eps, layer.stats, layer.num_groups) + tuple(
            None if t is None else (id(t), t.data_ptr(), t._version) for t in _state_tensors(layer))
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


def cached_constants(layer, x: Tensor) -> Tuple[Constants, Optional[Tensor], Optional[Tensor]]:
    """:class:`Constants` of the SN ``layer`` for ``x``'s dtype and device, and the affine
    parameters repeated for ``x``'s batch size; cached on the layer until its :func:`state_key`
    changes (not cached where the key is ``None``)."""
    tensors = _state_tensors(layer)
    key = state_key(layer, x)
    cache = layer.__dict__.get("_inference_cache")
    if key is None or cache is None or cache[0] != key:
        w_mean, w_var = softmax_weights(tensors[0], tensors[1])
        consts = constants(layer.stats, w_mean, w_var, layer.num_features, layer.num_groups or 1, tensors[4],
                           tensors[5], layer.eps, x.dtype, x.device)
        cache = (key, consts, {})
        layer.__dict__["_inference_cache"] = cache
    rows, n = cache[2], x.shape[0]
    if n not in rows:
        if len(rows) >= 8:  # a few batch sizes are common; do not grow without bound
            rows.clear()
        rows[n] = tuple(repeat_rows(p, n, x.dtype, x.device) for p in tensors[2:4])
    return (cache[1],) + rows[n]


def switch_norm_inference(x: Tensor, consts: Constants, weight_rows: Optional[Tensor],
                          bias_rows: Optional[Tensor]) -> Tensor:
    """SN of ``x`` ``(N, C, *)`` (float32/float64) with fixed statistics; ``weight_rows`` and
    ``bias_rows``: the affine parameters repeated for every sample, ``(N * C,)``."""
    x = x.contiguous()  # (channels-last and strided inputs: one copy, not one per reshape)
    n, c = x.shape[0], x.shape[1]
    mean, var = mixed_moments(x.view(n, c, -1), consts)
    # BatchNorm's inference kernel on the (1, N*C, L) view: each (sample, channel) row is a
    # channel of its own; eps is already in the variances
    out, _, _ = torch.native_batch_norm(x.view(1, n * c, -1), weight_rows, bias_rows, mean.view(-1),
                                        var.view(-1), False, 0.0, 0.0)
    return out.view(x.shape)


__all__: List[str] = ["Constants", "Pool", "cached_constants", "constants", "mixed_moments", "repeat_rows",
                      "row_sums", "softmax_weights", "state_key", "switch_norm_inference"]
