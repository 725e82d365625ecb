"""An independent float64 reference of Eqn. 3: every statistic computed directly from its
own set of pixels (Eqn. 2), not derived from IN statistics as the library does."""
import torch


def direct_moments(x3, op, num_groups=1, devices=1):
    """Mean and biased variance of each (sample, channel)'s pixel set for ``op``; (N, C)."""
    n, c, l = x3.shape
    if op == "in":
        m, v = x3.mean(2), x3.var(2, unbiased=False)
    elif op == "ln":
        flat = x3.reshape(n, c * l)
        m = flat.mean(1, keepdim=True).expand(n, c)
        v = flat.var(1, unbiased=False, keepdim=True).expand(n, c)
    elif op == "gn":
        g = x3.reshape(n, num_groups, (c // num_groups) * l)
        m = g.mean(2, keepdim=True).expand(n, num_groups, c // num_groups).reshape(n, c)
        v = g.var(2, unbiased=False, keepdim=True).expand(n, num_groups, c // num_groups).reshape(n, c)
    elif op == "bn":
        s = n // devices
        chunks = x3.reshape(devices, s, c, l).transpose(1, 2).reshape(devices, c, s * l)
        m = chunks.mean(2).repeat_interleave(s, 0)
        v = chunks.var(2, unbiased=False).repeat_interleave(s, 0)
    else:
        raise ValueError(op)
    return m, v


def reference_switch_norm(x, mean_logits, var_logits, stats, weight=None, bias=None, eps=1e-5,
                          num_groups=1, devices=1, bn_mean=None, bn_var=None, weights=None):
    """Float64 SN output; ``bn_mean``/``bn_var`` (C,) replace the batch's BN statistics (eval);
    ``weights=(mean_weights, var_weights)`` replace the logits' softmax (e.g. sparsestmax's)."""
    x64 = x.detach().double()
    n, c = x64.shape[:2]
    x3 = x64.reshape(n, c, -1)
    if weights is None:
        wm = torch.softmax(mean_logits.detach().double(), 0)
        wv = torch.softmax(var_logits.detach().double(), 0)
    else:
        wm, wv = (w.detach().double() for w in weights)
    mean = torch.zeros(n, c, dtype=torch.float64)
    var = torch.zeros(n, c, dtype=torch.float64)
    for k, op in enumerate(stats):
        if op == "bn" and bn_mean is not None:
            m, v = bn_mean.double().expand(n, c), bn_var.double().expand(n, c)
        else:
            m, v = direct_moments(x3, op, num_groups, devices)
        mean += wm[k] * m
        var += wv[k] * v
    out = (x3 - mean[..., None]) / torch.sqrt(var[..., None] + eps)
    if weight is not None:
        out = out * weight.detach().double()[None, :, None] + bias.detach().double()[None, :, None]
    return out.reshape(x64.shape)


def one_hot_logits(stats, op, size=50.0):
    """Logits whose softmax is one-hot on ``op`` to double precision."""
    return torch.tensor([size if s == op else -size for s in stats], dtype=torch.float64)
