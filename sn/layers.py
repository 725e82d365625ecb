"""Switchable Normalization layers."""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import functional as SNF
from . import native as SNN
from . import selection as SNS

DEFAULT_GROUPS = 32


def default_num_groups(num_features: int, max_groups: int = DEFAULT_GROUPS) -> int:
    """The largest divisor of ``num_features`` that is at most ``max_groups`` (GN's usual 32)."""
    return max(g for g in range(1, min(max_groups, num_features) + 1) if num_features % g == 0)


def check_devices(devices: int) -> int:
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive integer, got {devices!r}")
    return devices


def check_divisible(batch: int, devices: int) -> None:
    if batch % devices != 0:
        raise ValueError(
            f"batch size {batch} is not divisible by devices={devices}: per-device statistics "
            f"need {devices} equal chunks"
        )


class SwitchNorm(nn.Module):
    r"""Applies Switchable Normalization over an ``(N, C, *)`` input.

    From "Differentiable Learning-to-Normalize via Switchable Normalization"
    (Luo et al., ICLR 2019). Every output is normalized by a learned mixture of the means and
    variances of several normalizers:

    .. math::
        y = \gamma \frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma^2_k + \epsilon}} + \beta,
        \qquad w_k = \mathrm{softmax}(\lambda)_k,\; w'_k = \mathrm{softmax}(\lambda')_k

    where :math:`k` runs over ``stats``: ``"in"`` (per sample and channel), ``"ln"`` (per
    sample), ``"gn"`` (per sample and group of channels) and ``"bn"`` (per channel over the
    batch, or over each of ``devices`` equal chunks of it). The mean logits :math:`\lambda`
    (``mean_weight``) and variance logits :math:`\lambda'` (``var_weight``) are learned, shared
    by all channels, and initialised to 1 as in the paper.

    The per-(sample, channel) statistics are computed once in float32 (float64 for float64
    input) and the others derived from them in a numerically stable way; variances are biased,
    so a 1x1 input or a batch of one never yields NaN.

    In training the BN branch uses the batch statistics and, if ``track_running_stats``,
    updates ``running_mean`` and ``running_var`` exactly as :class:`torch.nn.BatchNorm2d` does
    (``new = (1 - momentum) * old + momentum * batch``, unbiased running variance; the average
    over the device chunks). In eval mode it uses the running statistics, which either follow
    that moving average or are set by :func:`sn.update_stats`, the paper's batch average.
    IN, LN and GN always use the current sample.

    Args:
        num_features: number of channels :math:`C`.
        eps: added to the variance for numerical stability. Default: 1e-5
        momentum: factor of the running statistics' moving average, or ``None`` for a
            cumulative average. Default: 0.1
        affine: learn a per-channel scale ``weight`` and shift ``bias``. Default: ``True``
        track_running_stats: keep running statistics for the BN branch (otherwise the BN branch
            uses batch statistics in eval mode too). Default: ``True``
        stats: statistics mixed, a tuple out of ``"in"``, ``"ln"``, ``"bn"``, ``"gn"``.
            Default: ``("in", "ln", "bn")``
        num_groups: groups of the ``"gn"`` statistics; must divide ``num_features``.
            Default: the largest divisor of ``num_features`` up to 32
        devices: number of equal chunks of the batch the BN statistics are computed in, to
            reproduce the paper's (#GPUs, samples per GPU) settings on one process. Default: 1
        sync: compute the BN statistics over the whole batch of all processes of
            ``process_group`` (synchronized SN; differentiable all-reduces, any backend: gloo,
            NCCL). Without an initialised process group it changes nothing. Default: ``False``
        process_group: the group ``sync`` reduces over. Default: the world
        implementation: the preferred implementation of this layer's calls, ``"auto"``,
            ``"native"`` (the C kernels), ``"torch"`` (PyTorch operations), ``"triton"``
            (Triton kernels for CUDA tensors: what ``"auto"`` runs on GPUs of compute
            capability 8.0+) or ``"composite"``
            (plain differentiable operations); ``None`` defers to :func:`sn.implementation`
            and the environment. Tracing, export and ``torch.func`` always take
            ``"composite"`` (see :mod:`sn.functional`). Default: ``None``
        selector: how the logits become weights: ``"softmax"`` (the paper) or
            ``"sparsestmax"`` (Sparse SN, Shao et al. 2019: the weights closest to the logits on
            the simplex at least ``radius`` from its centre, separately for means and variances;
            one-hot once ``radius`` reaches ``sqrt((K-1)/K)``). The radius is the buffer
            ``radius`` (0 at construction: sparsemax), set by :func:`sn.set_radius` or a
            training loop's schedule (:func:`sn.selection.radius_at`). Default: ``"softmax"``

    Shape:
        - Input: :math:`(N, C, *)`
        - Output: same shape and dtype as the input

    Examples::

        >>> norm = SwitchNorm(64)
        >>> out = norm(torch.randn(8, 64, 7, 7))
    """

    _version = 2
    default_stats: Tuple[str, ...] = ("in", "ln", "bn")

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        stats: Optional[Sequence[str]] = None,
        num_groups: Optional[int] = None,
        devices: int = 1,
        sync: bool = False,
        process_group=None,
        implementation: Optional[str] = None,
        selector: str = "softmax",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        self.stats = SNF.check_stats(self.default_stats if stats is None else stats)
        if "gn" in self.stats:
            num_groups = default_num_groups(num_features) if num_groups is None else num_groups
            if not isinstance(num_groups, int) or num_groups < 1 or num_features % num_groups:
                raise ValueError(f"num_groups={num_groups!r} must be a positive divisor of num_features={num_features}")
        elif num_groups is not None:
            raise ValueError(f"num_groups={num_groups} given but 'gn' is not in stats={self.stats}")
        self.num_groups = num_groups
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.devices = check_devices(devices)
        if sync and "bn" not in self.stats:
            raise ValueError(f"sync=True synchronizes BN statistics, but stats={self.stats} has no 'bn'")
        if sync and devices != 1:
            raise ValueError(f"sync=True pools the BN statistics of every process; it excludes devices={devices}")
        self.sync = bool(sync)
        self.process_group = process_group
        self.implementation = None if implementation is None else SNF.check_preference(implementation)
        self.selector = SNS.check_selector(selector)
        factory = {"device": device, "dtype": dtype}
        self.mean_weight = nn.Parameter(torch.empty(len(self.stats), **factory))
        self.var_weight = nn.Parameter(torch.empty(len(self.stats), **factory))
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        if selector == "sparsestmax":  # saved with the model, so that a resumed run continues its schedule
            self.register_buffer("radius", torch.zeros((), dtype=torch.float32, device=device))
        self.reset_parameters()
        if self.mean_weight.device.type == "cpu" and SNF.preference(implementation) in ("auto", "native"):
            SNN.library()  # build or load the C kernels now, so that a compiled first call finds them

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, *) input, got a {input.dim()}D input of shape {tuple(input.shape)}")

    def _check_input(self, input: Tensor) -> None:
        if not isinstance(input, Tensor):
            raise TypeError(f"{type(self).__name__} expects a Tensor, got {type(input).__name__}")
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"expected {self.num_features} channels (dim 1), got input of shape {tuple(input.shape)}"
            )

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_tracing():  # (checks of the example input, which the trace does not keep)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                self._check_input(input)
        else:
            self._check_input(input)
        params, buffers = self._parameters, self._buffers  # (nn.Module's __getattr__ is slow)
        momentum = 0.0
        if self.training and self.track_running_stats and "bn" in self.stats:
            momentum = self._count_batch(buffers["num_batches_tracked"])
        # running statistics: updated in training, used in eval (as BatchNorm passes them)
        running = self.track_running_stats and "bn" in self.stats
        return SNF.switch_norm(
            input, params["mean_weight"], params["var_weight"], buffers["running_mean"] if running else None,
            buffers["running_var"] if running else None, params["weight"], params["bias"],
            training=self.training or not self.track_running_stats, momentum=momentum, eps=self.eps,
            stats=self.stats, num_groups=self.num_groups or 1, devices=self.devices, sync=self.sync,
            process_group=self.process_group, implementation=self.implementation,
            selector=self.selector, radius=buffers.get("radius"))

    def _count_batch(self, num_batches_tracked: Tensor):
        """``num_batches_tracked += 1``; returns the running statistics' factor for this batch
        (``momentum``, or ``1 / num_batches_tracked`` for a cumulative average)."""
        try:
            num_batches_tracked.add_(1)
        except RuntimeError as err:
            if SNF.traced_context() == "torch.func":
                raise RuntimeError(f"{type(self).__name__} in training mode counts batches and updates its running "
                                   f"statistics in place; {SNF.FUNCTORCH_IN_PLACE_HINT} ({err})") from err
            raise
        if self.momentum is not None:
            return self.momentum
        if SNF.traced_context() is None and not torch.compiler.is_compiling():
            return 1.0 / float(num_batches_tracked)
        return 1.0 / num_batches_tracked  # (a tensor: traced, not read on the host)

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script (TorchScript is in maintenance mode and "
            f"cannot express SN's implementations); use torch.export.export(model, (x,)) or "
            f"torch.onnx.export(model, (x,), dynamo=True) for a deployable graph, or torch.jit.trace(model, x), "
            f"which records SN's plain operations")

    def importance(self) -> dict:
        """The importance weights this layer applies (after its softmax or sparsestmax):
        ``{"mean": {op: w}, "var": {op: w}}``."""
        with torch.no_grad():
            radius = self._buffers.get("radius")
            wm, wv = (SNS.select(logits.double(), self.selector, radius).tolist()
                      for logits in (self.mean_weight, self.var_weight))
        return {"mean": dict(zip(self.stats, wm)), "var": dict(zip(self.stats, wv))}

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
        s += f"track_running_stats={self.track_running_stats}, stats={self.stats}"
        if self.num_groups is not None:
            s += f", num_groups={self.num_groups}"
        if self.devices != 1:
            s += f", devices={self.devices}"
        if self.sync:
            s += ", sync=True"
        if self.selector != "softmax":
            s += f", selector={self.selector!r}"
        return s

    def __setstate__(self, state):
        state.setdefault("implementation", None)  # (modules pickled before the options existed)
        state.setdefault("selector", "softmax")
        super().__setstate__(state)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # The published implementation stores weight/bias as (1, C, 1, 1) or (1, C) and running
        # statistics as (1, C, 1); ours are (C,). It has no num_batches_tracked.
        for name in ("weight", "bias", "running_mean", "running_var"):
            key = prefix + name
            value = state_dict.get(key)
            if value is not None and value.dim() > 1 and value.numel() == self.num_features:
                state_dict[key] = value.reshape(self.num_features)
        version = local_metadata.get("version", None)
        nbt = prefix + "num_batches_tracked"
        if self.track_running_stats and nbt not in state_dict and (version is None or version < 2):
            state_dict[nbt] = torch.tensor(0, dtype=torch.long)
        for name in ("mean_weight", "var_weight"):
            value = state_dict.get(prefix + name)
            if value is not None and value.shape != (len(self.stats),):
                error_msgs.append(
                    f"{prefix}{name} has {value.numel()} logits but this layer mixes "
                    f"{len(self.stats)} statistics {self.stats}; create it with matching stats="
                )
                state_dict.pop(prefix + name)
                missing_keys.append(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


class SwitchNorm1d(SwitchNorm):
    r"""Switchable Normalization over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input.

    For fully connected and LSTM features. The default mixes LN and GN, as the paper does in
    the ENAS LSTM controller (Sec. 4.4): there IN coincides with LN on fully connected features
    and BN is not applicable to one sample at a time. Pass ``stats=("ln", "bn")`` for the
    mixture of the published ``SwitchNorm1d``. Arguments as in :class:`SwitchNorm`.

    Shape:
        - Input: :math:`(N, C)` or :math:`(N, C, L)`
        - Output: same shape as the input

    Examples::

        >>> norm = SwitchNorm1d(256)
        >>> out = norm(torch.randn(1, 256))
    """

    default_stats = ("ln", "gn")

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected a 2D (N, C) or 3D (N, C, L) input, got {input.dim()}D of shape {tuple(input.shape)}")


class SwitchNorm2d(SwitchNorm):
    r"""Switchable Normalization over a 4D ``(N, C, H, W)`` input.

    Mixes IN, LN and BN statistics by default, as in the paper. Arguments as in
    :class:`SwitchNorm`.

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: :math:`(N, C, H, W)` (same shape as input)

    Examples::

        >>> norm = SwitchNorm2d(64)
        >>> out = norm(torch.randn(8, 64, 32, 32))
        >>> sn.switch_weights(norm)  # what it chose, after training
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected a 4D (N, C, H, W) input, got {input.dim()}D of shape {tuple(input.shape)}")


class SwitchNorm3d(SwitchNorm):
    r"""Switchable Normalization over a 5D ``(N, C, D, H, W)`` input.

    Arguments as in :class:`SwitchNorm`.

    Shape:
        - Input: :math:`(N, C, D, H, W)`
        - Output: same shape as the input

    Examples::

        >>> norm = SwitchNorm3d(16)
        >>> out = norm(torch.randn(2, 16, 4, 8, 8))
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected a 5D (N, C, D, H, W) input, got {input.dim()}D of shape {tuple(input.shape)}")
