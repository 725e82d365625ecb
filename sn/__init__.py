"""Switchable Normalization for PyTorch.

Luo, Ren, Peng, Zhang, Li: "Differentiable Learning-to-Normalize via Switchable
Normalization", ICLR 2019. Depends on torch only; on CPUs it builds its C kernels
(sn/native.py) with the system C compiler on first use, and runs without them if there is none.
The layers call :func:`switch_norm` (sn/functional.py), where one function picks the
implementation for the call's context: C kernels on CPUs, Triton kernels on CUDA, PyTorch
operations elsewhere, or plain differentiable operations for tracing, export and ``torch.func``.
"""
from .batchnorm import PerDeviceBatchNorm
from .convert import SwitchNormAct, SwitchNormAct2d, convert, set_devices
from .config import KNOWN_STATS
from .freeze import freeze, freeze_plan
from .functional import implementation, switch_norm
from .layers import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from .registry import NORMS, make_norm, norm_names
from .stats import update_stats
from .selection import sparsestmax
from .weights import param_groups, set_radius, switch_norm_layers, switch_weights
from . import triton_launch  # (sn.triton_launch.direct(); imports no triton)

__version__ = "0.1.0"

__all__ = [
    "KNOWN_STATS",
    "NORMS",
    "PerDeviceBatchNorm",
    "SwitchNorm",
    "SwitchNorm1d",
    "SwitchNorm2d",
    "SwitchNorm3d",
    "SwitchNormAct",
    "SwitchNormAct2d",
    "convert",
    "freeze",
    "freeze_plan",
    "implementation",
    "make_norm",
    "norm_names",
    "param_groups",
    "set_devices",
    "set_radius",
    "sparsestmax",
    "switch_norm",
    "switch_norm_layers",
    "switch_weights",
    "update_stats",
]
