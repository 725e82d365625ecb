"""What one SN call normalizes with, as a named structure the implementations share."""
from __future__ import annotations

from typing import NamedTuple, Tuple

KNOWN_STATS = ("in", "ln", "bn", "gn")


class Config(NamedTuple):
    """The static part of an SN call (everything but tensors).

    ``stats``: the statistics mixed, in the order of the importance logits; ``num_groups``: GN's
    groups (1 without ``"gn"``); ``devices``: equal chunks of the batch the BN statistics are
    computed in, when they come from the batch; ``eps``: added to the mixed variance.
    """

    stats: Tuple[str, ...]
    num_groups: int = 1
    devices: int = 1
    eps: float = 1e-5


__all__ = ["Config", "KNOWN_STATS"]
