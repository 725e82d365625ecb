"""SN's functional entry point, and the one place that picks the implementation of a call.

:class:`sn.SwitchNorm` holds parameters and buffers and calls :func:`switch_norm`, as
PyTorch's norm modules call ``torch.nn.functional``. :func:`select_implementation` decides,
from the call's context, which of six implementations runs:

==================  ======================================================================
``"native"``        the C kernels (:mod:`sn.native`): eager float32/float64 on CPUs
``"native-op"``     the same kernels as custom operators (:mod:`sn.native_ops`), under
                    ``torch.compile`` on CPUs
``"torch"``         PyTorch operations in BatchNorm's passes (:mod:`sn.fused`): other GPU
                    tensors (float64, older GPUs, no triton), CPUs without a C compiler
``"triton"``        six Triton kernels a training step, the mixing fused into them
                    (:mod:`sn.triton_path`): float32/float16/bfloat16 CUDA tensors on
                    GPUs of compute capability 8.0+ (:func:`triton_by_default`)
``"triton-op"``     the same kernels as custom operators (:mod:`sn.triton_ops`), under
                    ``torch.compile`` where ``"triton"`` would run eagerly
``"composite"``     plain differentiable operations (:mod:`sn.composite`): tracing
                    (``torch.jit.trace``, ``torch.export``, ONNX export), ``torch.func``
                    transforms, synchronized SN across processes, ``torch.compile`` where
                    the C kernels do not apply
==================  ======================================================================

A preference for the eager paths comes from the ``implementation=`` argument, else the
:func:`implementation` context manager, else the environment (``SN_NATIVE=0`` prefers
``"torch"``), else ``"auto"``. Contexts that need ordinary PyTorch operations (tracing, export,
``torch.func``, sync) always take ``"composite"``, whatever the preference. Double backward
works on every path: the fused and C backwards return the composite form's gradients as a
graph when called with ``create_graph=True``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import composite, fused
from . import distributed as SND
from . import native as SNN
from . import native_ops as SNO
from .config import KNOWN_STATS, Config
from .selection import check_selector, effective_logits, max_radius

PREFERENCES = ("auto", "native", "torch", "triton", "composite")
_FULL_PRECISION = (torch.float32, torch.float64)
_PREFERENCE: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("sn_implementation", default=None)
# Before torch 2.14 (checked on 2.7) dynamo cannot trace `ContextVar.get` (a graph break; strict
# torch.export stops). There compiled code reads the preference from this mirror instead, a global
# that dynamo guards on: the innermost `implementation` block entered in any thread. (It only picks
# among implementations, which compute the same function. On 2.7 dynamo also answers
# `torch.compiler.is_exporting()` with True whenever it traces, so compiled SN takes the composite
# form there, as exported SN must.)
_OLD_DYNAMO = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14)
_COMPILED_PREFERENCE: Optional[str] = None


def _environment_preference() -> str:
    off = os.environ.get("SN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")
    return "torch" if off else "auto"


_ENVIRONMENT = _environment_preference()  # (read once, at import)


def check_preference(name) -> str:
    if name not in PREFERENCES:
        raise ValueError(f"implementation must be one of {PREFERENCES}, got {name!r}")
    return name


@contextlib.contextmanager
def implementation(name: str):
    """Prefer an implementation for every SN call in this block (and thread/task)::

        with sn.implementation("torch"):    # the PyTorch-operation paths, also on CPUs
            model(x)

    ``name``: ``"auto"`` (the C kernels on CPUs and the Triton kernels on CUDA where they apply,
    else PyTorch operations), ``"native"``
    (the C kernels; an error where they cannot run), ``"torch"``, ``"triton"`` (Triton kernels
    for CUDA tensors; an error elsewhere) or ``"composite"``. A layer's own ``implementation=``
    argument takes precedence.
    """
    global _COMPILED_PREFERENCE
    token = _PREFERENCE.set(check_preference(name))
    mirrored, _COMPILED_PREFERENCE = _COMPILED_PREFERENCE, name
    try:
        yield
    finally:
        _PREFERENCE.reset(token)
        _COMPILED_PREFERENCE = mirrored


def preference(requested: Optional[str] = None) -> str:
    """The preference in force: ``requested``, else :func:`implementation`'s, else the environment's."""
    if requested is not None:
        return check_preference(requested)
    if _OLD_DYNAMO and torch.compiler.is_compiling():
        return _COMPILED_PREFERENCE or _ENVIRONMENT
    return _PREFERENCE.get() or _ENVIRONMENT


def traced_context() -> Optional[str]:
    """The name of the context that needs SN in ordinary PyTorch operations, or ``None``
    (``torch.compile`` is not one: it takes the C kernels as custom operators)."""
    if torch.jit.is_tracing():
        return "torch.onnx.export" if torch.onnx.is_in_onnx_export() else "torch.jit.trace"
    if torch.compiler.is_exporting():
        return "torch.export"
    if torch.compiler.is_compiling():  # (dynamo's tracing shows a functorch interpreter too)
        return None
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "torch.func"
    return None


def select_implementation(x3: Tensor, *, sync: bool = False, requested: Optional[str] = None) -> str:
    """``"native"``, ``"native-op"``, ``"triton"``, ``"triton-op"``, ``"torch"`` or ``"composite"``
    for SN on ``x3`` (the ``(N, C, L)`` view: float32/float64, or on CUDA also float16/bfloat16,
    which the Triton kernels read as they are) in the current context (see the module
    docstring). Raises ``ValueError`` when ``"native"`` or ``"triton"`` is requested where it
    cannot run."""
    wanted = preference(requested)
    if sync or traced_context() is not None:
        return "composite"
    if torch.compiler.is_compiling():
        if wanted in ("auto", "native") and SNN.loaded_for(x3):
            return "native-op"
        if wanted == "triton" or (wanted == "auto" and triton_by_default(x3)):
            _check_triton(x3)
            return "triton-op"
        return "composite"
    if wanted == "triton":
        _check_triton(x3)
        return "triton"
    if wanted == "auto" and triton_by_default(x3):
        return "triton"
    if wanted in ("auto", "native") and SNN.takes(x3):
        return "native"
    if wanted == "native":
        raise ValueError(f"implementation='native' runs float32/float64 CPU tensors with built kernels; got a "
                         f"{x3.dtype} tensor on {x3.device} (C kernels: {SNN.status()})")
    return "composite" if wanted == "composite" else "torch"


TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # (sn.triton_path reads these two)
TRITON_MAX_ROWS = 2**31 - 64  # N * C at most: the Triton kernels index rows (sample, channel) in int32
_HAS_TRITON = importlib.util.find_spec("triton") is not None  # (without importing it)
TRITON_MIN_CAPABILITY = (8, 0)  # (Ampere: what the kernels were compiled and checked for, sm_80 and sm_90)


def triton_by_default(x3: Tensor) -> bool:
    """Whether ``"auto"`` runs SN on ``x3`` with the Triton kernels: a float32, float16 or
    bfloat16 CUDA tensor (of fewer than 2**31 rows N * C) on an NVIDIA GPU of compute capability
    8.0 or later, with the triton package installed. They were measured ahead of the
    PyTorch-operation path on an H200 (``docs/performance.md``); other tensors keep that path."""
    if not (x3.is_cuda and x3.dtype in TRITON_DTYPES and x3.shape[0] * x3.shape[1] <= TRITON_MAX_ROWS):
        return False
    # (under torch.compile, the uncached check: the device's properties are constants there)
    return (triton_device.__wrapped__ if torch.compiler.is_compiling() else triton_device)(x3.device.index)


@functools.lru_cache(maxsize=None)
def triton_device(index: int) -> bool:
    """Whether CUDA device ``index`` takes the Triton kernels by default (asked once per device)."""
    if torch.version.hip is not None or not _HAS_TRITON:
        return False
    properties = torch.cuda.get_device_properties(index)
    return (properties.major, properties.minor) >= TRITON_MIN_CAPABILITY


def _check_triton(x3: Tensor) -> None:
    """``ValueError`` unless the Triton kernels can run on ``x3``: a CUDA tensor (or a CPU one
    under ``TRITON_INTERPRET=1``, Triton's interpreter) of float32, float16 or bfloat16."""
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1" and x3.is_cpu
    if not (x3.is_cuda or interpreted) or x3.dtype not in TRITON_DTYPES:
        raise ValueError(f"implementation='triton' runs float32/float16/bfloat16 CUDA tensors; got a {x3.dtype} "
                         f"tensor on {x3.device}")
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise ValueError(f"implementation='triton' needs the triton package ({err})") from err


_CHECKED_STATS = set()


def check_stats(stats: Sequence[str]):
    """``stats`` as a tuple of distinct known names (``ValueError``/``TypeError`` otherwise)."""
    if isinstance(stats, str):
        raise TypeError(f"stats must be a tuple of names such as ('in', 'ln', 'bn'), got the string {stats!r}")
    stats = tuple(stats)
    if stats in _CHECKED_STATS:
        return stats
    if not stats:
        raise ValueError("stats must name at least one statistic out of " + repr(KNOWN_STATS))
    unknown = [s for s in stats if s not in KNOWN_STATS]
    if unknown:
        raise ValueError(f"unknown statistics {unknown} in stats={stats}; known: {KNOWN_STATS}")
    if len(set(stats)) != len(stats):
        raise ValueError(f"stats={stats} names a statistic twice")
    _CHECKED_STATS.add(stats)
    return stats


def _check_call(input: Tensor, mean_weight: Tensor, var_weight: Tensor, stats, num_groups: int, devices: int,
                batch_bn: bool, tensors) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"switch_norm expects a Tensor input, got {type(input).__name__}")
    shape = input.shape
    if len(shape) < 2:
        raise ValueError(f"expected an (N, C, *) input, got a {len(shape)}D input of shape {tuple(shape)}")
    if not input.is_floating_point():
        raise TypeError(f"expected a floating-point input, got {input.dtype}")
    n, c = shape[0], shape[1]
    if n == 0:
        raise ValueError("expected a non-empty batch, got batch size 0")
    if input.numel() == 0:
        raise ValueError(f"expected non-empty spatial dimensions, got input of shape {tuple(shape)}")
    k = len(stats)
    if mean_weight.shape != (k,) or var_weight.shape != (k,):
        raise ValueError(f"mean_weight and var_weight must hold one logit per statistic of {stats}, got shapes "
                         f"{tuple(mean_weight.shape)} and {tuple(var_weight.shape)}")
    for name, t in zip(("running_mean", "running_var", "weight", "bias"), tensors):
        if t is not None and t.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},) for an input of {c} channels, got {tuple(t.shape)}")
    if num_groups != 1 and "gn" in stats and (num_groups < 1 or c % num_groups):
        raise ValueError(f"num_groups={num_groups} must be a positive divisor of the {c} channels")
    if batch_bn and devices != 1 and n % devices:
        raise ValueError(f"batch size {n} is not divisible by devices={devices}: per-device statistics "
                         f"need {devices} equal chunks")


def switch_norm(input: Tensor, mean_weight: Tensor, var_weight: Tensor, running_mean: Optional[Tensor] = None,
                running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                training: bool = False, momentum=0.1, eps: float = 1e-5,
                stats: Sequence[str] = ("in", "ln", "bn"), num_groups: int = 1, devices: int = 1,
                sync: bool = False, process_group=None, implementation: Optional[str] = None,
                selector: str = "softmax", radius=None) -> Tensor:
    r"""Switchable Normalization of an ``(N, C, *)`` input (see :class:`sn.SwitchNorm`).

    Like ``torch.nn.functional.batch_norm``: the BN branch uses the batch's statistics when
    ``training`` or when no running statistics are given, else ``running_mean``/``running_var``;
    in training with running statistics those are updated in place by the per-device batch
    statistics' average, ``new = (1 - momentum) * old + momentum * batch`` with the unbiased
    batch variance (``momentum`` a number or a 0-d tensor).

    Args:
        input: ``(N, C, *)``, any floating dtype (half precision: statistics in float32).
        mean_weight, var_weight: the importance logits, one per entry of ``stats``.
        running_mean, running_var: ``(C,)`` BN statistics, or ``None``.
        weight, bias: the ``(C,)`` affine parameters, or ``None``.
        stats: the statistics mixed, out of ``"in"``, ``"ln"``, ``"bn"``, ``"gn"``.
        num_groups: GN's groups; devices: equal batch chunks of the BN statistics.
        sync: pool the BN statistics over the processes of ``process_group`` (DDP).
        implementation: the preferred implementation (:data:`PREFERENCES`); see the module docstring.
        selector: how the logits become weights: ``"softmax"`` (the paper) or ``"sparsestmax"``
            (SSN, :func:`sn.selection.sparsestmax` at ``radius``, separately for the means'
            and the variances' logits).
        radius: the sparsestmax radius, a number or a 0-d tensor in ``[0, sqrt((K-1)/K)]``.

    Returns:
        the output, with the input's shape, dtype and memory format.
    """
    stats = check_stats(stats)
    check_selector(selector)
    if selector == "sparsestmax":
        _check_radius(radius, len(stats))
    elif radius is not None:
        raise ValueError(f"radius={radius!r} is given but selector={selector!r}; a radius applies to 'sparsestmax'")
    batch_bn = "bn" in stats and (training or running_mean is None)
    checked = (input, mean_weight, var_weight, stats, num_groups, devices, batch_bn,
               (running_mean, running_var, weight, bias))
    if torch.jit.is_tracing():  # the checks look at the example input once; the trace keeps none of them
        with warnings.catch_warnings():  # (nor the logits' count, a constant K, which sparsestmax reads)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            _check_call(*checked)
            mean_weight, var_weight = _selected_logits(mean_weight, var_weight, selector, radius)
    else:
        _check_call(*checked)
        mean_weight, var_weight = _selected_logits(mean_weight, var_weight, selector, radius)
    device_type = "cpu" if input.is_cpu else input.device.type
    if (device_type == "cpu" or torch.amp.is_autocast_available(device_type)) and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            return _switch_norm(input, mean_weight, var_weight, running_mean, running_var, weight, bias, training,
                                momentum, eps, stats, num_groups, devices, sync, process_group, implementation)
    return _switch_norm(input, mean_weight, var_weight, running_mean, running_var, weight, bias, training, momentum,
                        eps, stats, num_groups, devices, sync, process_group, implementation)


def _selected_logits(mean_weight: Tensor, var_weight: Tensor, selector: str, radius):
    """Every implementation takes logits and applies a softmax: sparsestmax's weights go in as their log."""
    if selector == "softmax":
        return mean_weight, var_weight
    return effective_logits(mean_weight, selector, radius), effective_logits(var_weight, selector, radius)


def _check_radius(radius, k: int) -> None:
    if radius is None:
        raise ValueError("selector='sparsestmax' needs a radius (a number or a 0-d tensor; SwitchNorm layers keep "
                         "it in their `radius` buffer, set by sn.set_radius)")
    if isinstance(radius, Tensor):
        if radius.dim() != 0 or not radius.is_floating_point():
            raise ValueError(f"radius must be a number or a floating 0-d tensor, got {radius.dtype} of shape "
                             f"{tuple(radius.shape)}")
        if (not radius.is_cpu or torch.jit.is_tracing() or traced_context() is not None
                or torch.compiler.is_compiling()):
            return  # (not read on the host, no synchronization: sparsestmax clamps it into range)
        radius = float(radius)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0.0 <= radius <= max_radius(k) + 1e-6:
        raise ValueError(f"radius must be in [0, sqrt((K-1)/K)] = [0, {max_radius(k):.4f}] for K={k} statistics, "
                         f"got {radius!r}")


def _switch_norm(input, mean_weight, var_weight, running_mean, running_var, weight, bias, training, momentum, eps,
                 stats, num_groups, devices, sync, process_group, requested):
    n, c = input.shape[0], input.shape[1]
    x3 = input.reshape(n, c, -1)  # (N, C, L)
    if x3.dtype not in _FULL_PRECISION and not x3.is_cuda and preference(requested) != "triton":
        x3 = x3.float()  # half / bfloat16: statistics in float32 (the Triton kernels read them as they are)
    use_batch = "bn" in stats and (training or running_mean is None)
    bn_mean, bn_var = (None, None) if use_batch or "bn" not in stats else (running_mean, running_var)
    config = Config(stats, num_groups if "gn" in stats else 1, devices if use_batch else 1, eps)
    count = (n // config.devices) * x3.shape[2]  # elements per channel in one BN chunk
    world = SND.group_size(process_group) if sync and use_batch else 1
    path = select_implementation(x3, sync=world > 1, requested=requested)
    if path not in ("triton", "triton-op") and x3.dtype not in _FULL_PRECISION:
        x3 = x3.float()
    args = (x3, mean_weight, var_weight, weight, bias, config, bn_mean, bn_var)
    if path == "native":
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x3, mean_weight, var_weight, weight, bias))
        out, moments = SNN.switch_norm(*args, needs_grad=needs_grad)
    elif path == "native-op":
        out, moments = SNO.switch_norm(*args)
    elif path == "triton-op":
        from . import triton_ops  # (imports triton: only when asked for)
        out, moments = triton_ops.switch_norm(*args)
    elif path == "triton":
        from . import triton_path  # (imports triton: only when asked for)
        running = None
        if training and use_batch and running_mean is not None and isinstance(momentum, (int, float)):
            running = (running_mean, running_var, momentum, count / max(count - 1, 1))  # (updated in the kernels)
        out, moments = triton_path.switch_norm(*args, running=running)
    elif path == "torch":
        out, moments = _fused(*args)
    elif world > 1:
        out, moments = composite.switch_norm(*args, bn_reduce=lambda m, v: SND.sync_moments(m, v, count,
                                                                                            process_group))
        count *= world  # equal batches per process, as DDP gives
    else:
        out, moments = composite.switch_norm(*args)
    if moments is not None and training and running_mean is not None:
        update_running_stats(running_mean, running_var, *moments, momentum, count, config.devices)
    try:  # (N, C, L) -> the input's shape; contiguous and channels-last outputs both view
        out = out.view_as(input)  # (view_as: view(torch.Size) costs three times as much)
    except RuntimeError:  # an output laid out like an unusually strided input
        out = out.reshape(input.shape)
    if out.dtype != input.dtype:
        out = out.to(input.dtype)
    return _like(out, input)


def _fused(x3, mean_weight, var_weight, weight, bias, config, bn_mean, bn_var):
    """The four-pass path (:mod:`sn.fused`): :class:`sn.fused.FusedSwitchNorm` when a gradient is
    needed, its forward alone otherwise."""
    x3 = x3.contiguous()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x3, mean_weight, var_weight, weight, bias)):
        out, *moments = fused.FusedSwitchNorm.apply(x3, mean_weight, var_weight, weight, bias, config, bn_mean,
                                                    bn_var)
        return out, (tuple(moments) if moments else None)
    out, moments, _, _ = fused.mixed_forward(x3, mean_weight, var_weight, weight, bias, config, bn_mean, bn_var)
    return out, moments


def _like(out: Tensor, input: Tensor) -> Tensor:
    """``out`` in ``input``'s memory format (channels-last inputs give channels-last outputs)."""
    if input.dim() in (4, 5) and not input.is_contiguous() and traced_context() != "torch.func":
        # (under vmap memory formats cannot be queried)
        fmt = torch.channels_last if input.dim() == 4 else torch.channels_last_3d
        if input.is_contiguous(memory_format=fmt):
            return out.contiguous(memory_format=fmt)
    return out


FUNCTORCH_IN_PLACE_HINT = (
    "torch.func transforms allow in-place updates only of buffers transformed alongside the input: vmap over "
    "stacked models (torch.func.stack_module_state + functional_call) works; otherwise use eval mode or "
    "track_running_stats=False, as for BatchNorm")


@torch.no_grad()
def update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, momentum,
                         count: int, devices: int = 1) -> None:
    """Moving average of the per-device batch statistics ``(devices, C)`` into the running ones,
    as BatchNorm does (unbiased variance); ``momentum`` a number or a 0-d tensor."""
    mean = mean[0] if devices == 1 else mean.mean(0)  # average over the device chunks
    var = var[0] if devices == 1 else var.mean(0)
    if mean.dtype != running_mean.dtype:
        mean, var = mean.to(running_mean.dtype), var.to(running_var.dtype)
    if torch.jit.is_tracing():  # (the trace keeps the example's count, as BatchNorm's trace does)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            unbias = float(count / max(count - 1, 1))
    else:
        unbias = count / max(count - 1, 1)
    try:
        running_mean.lerp_(mean, momentum)
        # (1 - momentum) * running + momentum * unbiased batch variance
        if isinstance(momentum, Tensor):
            running_var.mul_(1.0 - momentum).addcmul_(var, momentum, value=unbias)
        else:
            running_var.mul_(1.0 - momentum).add_(var, alpha=momentum * unbias)
    except RuntimeError as err:
        if traced_context() == "torch.func":
            raise RuntimeError(f"SwitchNorm in training mode updates running_mean/running_var in place; "
                               f"{FUNCTORCH_IN_PLACE_HINT} ({err})") from err
        raise


__all__ = ["PREFERENCES", "check_stats", "implementation", "preference", "select_implementation", "switch_norm",
           "traced_context", "update_running_stats"]
