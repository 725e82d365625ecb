"""Plain-autograd SN forms written from the paper, the baselines our fused layer is measured against.

Neither is used by the library; they exist so the benchmark can say how much faster the fused
path is than the obvious implementations.
"""
import torch
from torch import nn


class _PlainSN(nn.Module):
    """Parameters, running statistics and the IN/LN/BN mix shared by the two forms below;
    they differ only in how they compute the moments (and the shape they keep them in)."""

    def __init__(self, c, stat_shape, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(1, c, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(stat_shape))
        self.register_buffer("running_var", torch.ones(stat_shape))

    def mix(self, moments_in, moments_ln, batch_moments):
        """Mixed mean and variance; ``batch_moments()`` is only called in training."""
        if self.training:
            mean_bn, var_bn = batch_moments()
            with torch.no_grad():
                self.running_mean.lerp_(mean_bn, self.momentum)
                self.running_var.lerp_(var_bn, self.momentum)
        else:
            mean_bn, var_bn = self.running_mean, self.running_var
        (mean_in, var_in), (mean_ln, var_ln) = moments_in, moments_ln
        mw = torch.softmax(self.mean_weight, 0)
        vw = torch.softmax(self.var_weight, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        return mean, var


class PublishedFormSN(_PlainSN):
    """Eqn. 5 as printed, the form of the published implementation: IN moments by ``mean`` and
    ``var`` (unbiased) over H*W, LN and BN derived through ``E[x^2] - mean^2``."""

    def __init__(self, c, eps=1e-5, momentum=0.1):
        super().__init__(c, (1, c, 1), eps, momentum)

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.view(n, c, -1)
        mean_in = x.mean(-1, keepdim=True)
        var_in = x.var(-1, keepdim=True)
        mean_ln = mean_in.mean(1, keepdim=True)
        temp = var_in + mean_in ** 2
        var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2

        def batch_moments():
            mean_bn = mean_in.mean(0, keepdim=True)
            return mean_bn, temp.mean(0, keepdim=True) - mean_bn ** 2

        mean, var = self.mix((mean_in, var_in), (mean_ln, var_ln), batch_moments)
        x = (x - mean) / (var + self.eps).sqrt()
        return x.view(n, c, h, w) * self.weight + self.bias


class ThreeMomentsSN(_PlainSN):
    """The paper's Fig. 7 (TensorFlow) in torch: three separate moment calls over the axes of
    IN, LN and BN, then the weighted mix."""

    def __init__(self, c, eps=1e-5, momentum=0.1):
        super().__init__(c, (1, c, 1, 1), eps, momentum)

    @staticmethod
    def moments(x, dims):
        mean = x.mean(dims, keepdim=True)
        return mean, (x - mean).square().mean(dims, keepdim=True)

    def forward(self, x):
        mean, var = self.mix(self.moments(x, (2, 3)), self.moments(x, (1, 2, 3)),
                             lambda: self.moments(x, (0, 2, 3)))
        return (x - mean) / (var + self.eps).sqrt() * self.weight + self.bias
