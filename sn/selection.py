r"""How SN turns its importance logits into weights: softmax (the paper) or sparsestmax (SSN).

Sparsestmax (Shao et al., "SSN: Learning Sparse Switchable Normalization via SparsestMax",
CVPR 2019) maps logits :math:`z \in \mathbb{R}^K` to the closest point of the simplex that is
at least ``radius`` away from its centre :math:`u = \mathbf{1}/K`:

.. math::
    \mathrm{sparsestmax}(z; r) = \arg\min_{p \in \Delta^{K-1},\ \|p - u\|_2 \ge r} \|p - z\|_2^2 .

At :math:`r = 0` it is sparsemax (the Euclidean projection onto the simplex); as :math:`r`
grows towards :math:`r_{max} = \sqrt{(K-1)/K}` (the distance from :math:`u` to a vertex) the
feasible set shrinks to the vertices, so the weights end exactly one-hot.

The minimiser lies in the relative interior of one face :math:`F_S` of the simplex (support
:math:`S`), either away from the sphere (then it is the projection of :math:`z` onto the
face's affine hull) or on the sphere's intersection with that hull, a sphere of centre
:math:`u_S` and radius :math:`\sqrt{r^2 - (1/|S| - 1/K)}` (then it is the point of that sphere
in the direction of the projection). :func:`sparsestmax` evaluates both candidates on every
face (15 for :math:`K = 4`) with plain tensor operations, keeps the feasible ones and takes the
closest: exact, branch-free (so it traces, exports and vectorizes under ``torch.func``), and
differentiable almost everywhere by autograd.

The layers hand every implementation (C kernels included) logits, and take a softmax of them:
:func:`as_logits` turns selected weights :math:`p` into logits :math:`\log p` (``-inf`` where
:math:`p = 0`), whose softmax is :math:`p` again, with the gradient of the weights themselves.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import torch
from torch import Tensor

SELECTORS = ("softmax", "sparsestmax")


def check_selector(selector) -> str:
    if selector not in SELECTORS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {selector!r}")
    return selector


def max_radius(k: int) -> float:
    """The distance from the simplex's centre to a vertex, :math:`\\sqrt{(K-1)/K}`: at this
    radius sparsestmax is one-hot."""
    return math.sqrt((k - 1) / k)


# K -> the supports of the simplex's 2^K - 1 faces, as rows of K booleans (SN mixes at most 4 statistics)
_FACES = {k: [[j in s for j in range(k)] for size in range(1, k + 1) for s in itertools.combinations(range(k), size)]
          for k in range(1, 5)}


def _host_value(radius) -> float:
    """The radius as a number when reading it costs nothing and records nothing (eager mode, a
    number or a CPU tensor); -1 otherwise (traced, compiled, under torch.func, or on a GPU)."""
    if isinstance(radius, (int, float)):
        return float(radius)
    if (not radius.is_cpu or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return -1.0
    return float(radius)


def sparsestmax(z: Tensor, radius) -> Tensor:
    """Sparsestmax of logits ``z`` (``(..., K)``) at ``radius`` (a number or a 0-d tensor, in
    ``[0, sqrt((K-1)/K)]``; larger values act as the maximum): weights on the simplex, at least
    ``radius`` from its centre, closest to ``z``. See the module docstring."""
    k = int(z.shape[-1])  # (a constant: under tracing, the example's)
    dtype = z.dtype
    r_max = max_radius(k)
    if _host_value(radius) >= r_max * (1 - 1e-6):  # (eager, radius on the host) the schedule's end: one-hot
        vertex = (torch.arange(k, device=z.device) == z.argmax(-1, keepdim=True)).to(dtype)
        return vertex + 0.0 * z  # (the logits stay in the graph with a zero gradient, as on the full path: DDP
        # counts a parameter outside the graph as unused)
    r = torch.as_tensor(radius, dtype=dtype, device=z.device)
    r = r.clamp(0.0, r_max)
    if k not in _FACES:
        raise ValueError(f"sparsestmax takes 1 to 4 logits (SN's statistics), got {k}")
    faces = torch.tensor(_FACES[k], device=z.device)  # (F, K)
    size = faces.sum(-1).to(dtype)  # (F,)
    zs = z.unsqueeze(-2)  # (..., 1, K)
    # projection of z onto each face's affine hull {p_j = 0 off S, sum p = 1}
    mean_s = torch.where(faces, zs, 0.0).sum(-1) / size  # (..., F)
    proj = torch.where(faces, zs - mean_s.unsqueeze(-1) + (1.0 / size).unsqueeze(-1), 0.0)  # (..., F, K)
    u = 1.0 / k
    inside = ((proj >= 0) | ~faces).all(-1)
    far = ((proj - u) ** 2).sum(-1) >= r * r
    # the point of the sphere ||p - u|| = r within the face's hull, in the projection's direction
    centre = torch.where(faces, (1.0 / size).unsqueeze(-1), 0.0)  # (F, K)
    sphere_r2 = r * r - (1.0 / size - u)  # (F,)
    direction = proj - centre
    norm2 = (direction ** 2).sum(-1, keepdim=True)
    tiny = torch.finfo(dtype).tiny
    norm = norm2.clamp_min(tiny).sqrt()  # (no sqrt at 0: its gradient would be NaN, even where unused)
    on_sphere = centre + sphere_r2.clamp_min(0.0).sqrt().unsqueeze(-1) * direction / norm
    sphere_ok = ((size >= 2) & (sphere_r2 >= 0)) & (norm2.squeeze(-1) > tiny) \
        & ((on_sphere >= 0) | ~faces).all(-1)
    candidates = torch.cat([proj, on_sphere], -2)  # (..., 2F, K)
    feasible = torch.cat([inside & far, sphere_ok], -1)  # (..., 2F)
    distance = torch.where(feasible, ((candidates - zs) ** 2).sum(-1), math.inf)
    best = distance.argmin(-1, keepdim=True)  # (..., 1)
    p = torch.gather(candidates, -2, best.unsqueeze(-1).expand(*best.shape, k)).squeeze(-2)
    # at the largest radius only the vertices are feasible: the one nearest z (no rounding residue)
    vertex = (torch.arange(k, device=z.device) == z.argmax(-1, keepdim=True)).to(dtype)
    return torch.where(r >= r_max * (1 - 1e-6), vertex, p)


def select(logits: Tensor, selector: str = "softmax", radius=None) -> Tensor:
    """The importance weights of ``logits`` (``(K,)`` or ``(..., K)``) under ``selector``."""
    if selector == "softmax":
        return torch.softmax(logits, -1)
    if radius is None:
        raise ValueError("selector='sparsestmax' needs a radius (the layer's `radius` buffer)")
    return sparsestmax(logits, radius)


def as_logits(weights: Tensor) -> Tensor:
    """Logits whose softmax is ``weights`` (points of the simplex): ``log p``, ``-inf`` where
    ``p = 0``. Their gradient is the weights' gradient, centred on the support (which every
    selector's Jacobian ignores, its outputs summing to one), and zero off it."""
    positive = weights > 0
    return torch.where(positive, torch.log(torch.where(positive, weights, 1.0)), -math.inf)


def effective_logits(logits: Tensor, selector: str, radius: Optional[Tensor]) -> Tensor:
    """What the implementations take (they apply a softmax): ``logits`` themselves for the
    softmax, the log of the sparsestmax weights otherwise."""
    if selector == "softmax":
        return logits
    return as_logits(select(logits, selector, radius))


def radius_at(progress: float, k: int, start: float = 0.0, end: float = 0.8) -> float:
    """The sparsestmax radius schedule: 0 until ``start`` (a fraction of training), growing
    linearly to :func:`max_radius` at ``end``, where the weights become one-hot, and held there."""
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"the radius schedule needs 0 <= start < end <= 1, got start={start}, end={end}")
    t = min(max((progress - start) / (end - start), 0.0), 1.0)
    return t * max_radius(k)
