"""One registry for every normalizer the experiments compare."""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from .batchnorm import PerDeviceBatchNorm
from .layers import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, check_devices, default_num_groups

_SN_CLASSES = {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d}
_IN_CLASSES = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _bn(c, dim, **kw):
    return PerDeviceBatchNorm(c, **kw)


def _gn(c, dim, num_groups=None, **kw):
    return nn.GroupNorm(default_num_groups(c) if num_groups is None else num_groups, c, **kw)


def _ln(c, dim, **kw):
    # LN as the paper uses it in CNNs: statistics over (C, *) of each sample, a per-channel affine.
    return nn.GroupNorm(1, c, **kw)


def _in(c, dim, affine=True, **kw):
    return _IN_CLASSES[dim](c, affine=affine, **kw)


def _sn(stats, **fixed):
    def build(c, dim, **kw):
        return _SN_CLASSES[dim](c, stats=stats, **fixed, **kw)

    build.stats = stats
    return build


def _none(c, dim, **kw):
    if kw:
        raise TypeError(f"make_norm('none') takes no options, got {sorted(kw)}")
    return nn.Identity()


# name -> constructor(num_features, dim, **kw)
NORMS: Dict[str, Callable[..., nn.Module]] = {
    "bn": _bn,
    "gn": _gn,
    "in": _in,
    "ln": _ln,
    "sn": _sn(("in", "ln", "bn")),
    "sn-inln": _sn(("in", "ln")),  # the paper's SN without BN, for one sample per device (8x1)
    "sn-lngn": _sn(("ln", "gn")),  # the paper's LSTM controller mixture (Sec. 4.4)
    "sn-lnbn": _sn(("ln", "bn")),  # the published SwitchNorm1d mixture for FC features
    "sn-all": _sn(("in", "ln", "bn", "gn")),
    "sn-sync": _sn(("in", "ln", "bn"), sync=True),  # BN statistics over all processes (DDP)
    # Sparse SN (Shao et al. 2019): sparsestmax weights, one-hot at the end of the radius schedule
    "ssn": _sn(("in", "ln", "bn"), selector="sparsestmax"),
    "ssn-inln": _sn(("in", "ln"), selector="sparsestmax"),
    "none": _none,
}

# norms whose training statistics span the batch, so `devices` (per-device chunks) applies
BATCH_NORMS = frozenset(name for name, build in NORMS.items() if name == "bn" or "bn" in getattr(build, "stats", ()))
# synchronized norms pool the whole batch of every process: per-device chunks do not apply
SYNC_NORMS = frozenset({"sn-sync"})


def norm_names():
    """The names :func:`make_norm` knows, sorted."""
    return sorted(NORMS)


def make_norm(name: str, num_features: int, *, dim: int = 2, devices: int = 1, **kw) -> nn.Module:
    """Build the normalizer called ``name`` for ``num_features`` channels.

    Args:
        name: one of :func:`norm_names`: ``bn`` (BatchNorm with per-device statistics), ``gn``
            (GroupNorm, ``num_groups`` default up to 32), ``in`` (InstanceNorm, affine), ``ln``
            (LayerNorm over (C, *) with a per-channel affine, i.e. GroupNorm(1, C)), ``sn``
            (IN+LN+BN), ``sn-inln``, ``sn-lngn``, ``sn-lnbn``, ``sn-all`` (IN+LN+BN+GN), ``sn-sync``
            (IN+LN+BN with BN statistics synchronized across processes), ``ssn`` and ``ssn-inln``
            (Sparse SN: sparsestmax instead of softmax, see :func:`sn.set_radius`), ``none``.
        num_features: number of channels.
        dim: spatial rank of the features: 1 for ``(N, C)``/``(N, C, L)``, 2 for images, 3 for volumes.
        devices: per-device chunks of the batch statistics (``bn`` and SN variants with BN);
            ignored by normalizers that use no batch statistics.
        **kw: passed to the constructor (``eps``, ``momentum``, ``affine``, ``num_groups``, ...).

    Raises:
        ValueError: unknown ``name`` or ``dim``.
    """
    if not isinstance(name, str) or name.lower() not in NORMS:
        raise ValueError(f"unknown norm {name!r}; known norms: {', '.join(norm_names())}")
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
    name = name.lower()
    check_devices(devices)
    if name in SYNC_NORMS and devices != 1:
        raise ValueError(f"norm {name!r} synchronizes BN statistics across processes; it excludes devices={devices}")
    if name in BATCH_NORMS and name not in SYNC_NORMS:
        kw["devices"] = devices
    return NORMS[name](num_features, dim, **kw)
