"""The ENAS controller: an LSTM with normalization inside its cell, sampling CNN architectures.

Pham et al., "Efficient Neural Architecture Search via Parameter Sharing" (ICML 2018), macro
search space; normalized as in Sec. 4.4 of the SN paper, which compares LN, GN and SN (a
learned mixture of LN and GN) inside the controller's LSTM.

An architecture of ``L`` layers is, per layer ``k``, one operation out of :data:`OPS` and a
0/1 skip connection from every earlier layer ``j < k``::

    {"ops": ["conv3x3", "maxpool3x3", ...], "skips": [[], [1], [0, 1], ...]}

The controller emits these decisions one at a time (batch of one), so its norms see ``(1, C)``
inputs: BN is impossible there and IN on a single vector is degenerate, which is why the
paper's SN mixes LN and GN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import sn

OPS: Tuple[str, ...] = ("conv3x3", "conv5x5", "sepconv3x3", "sepconv5x5", "avgpool3x3", "maxpool3x3")
CONTROLLER_NORMS: Tuple[str, ...] = ("none", "ln", "gn", "sn")
SN_CONTROLLER_STATS: Tuple[str, ...] = ("ln", "gn")  # what SN may mix on (1, C) features


# ---------------------------------------------------------------- architectures


def check_arch(arch, num_layers: int, ops: Sequence[str] = OPS) -> None:
    """Raise ``ValueError`` unless ``arch`` is a valid architecture of ``num_layers`` layers."""
    if not isinstance(arch, dict) or set(arch) != {"ops", "skips"}:
        raise ValueError(f"an architecture is a dict with keys 'ops' and 'skips', got {arch!r}")
    if len(arch["ops"]) != num_layers or len(arch["skips"]) != num_layers:
        raise ValueError(f"architecture {arch!r} does not have {num_layers} layers")
    for k, (op, skips) in enumerate(zip(arch["ops"], arch["skips"])):
        if op not in ops:
            raise ValueError(f"layer {k}: unknown operation {op!r}; known: {', '.join(ops)}")
        if len(skips) != k or any(s not in (0, 1) for s in skips):
            raise ValueError(f"layer {k}: skips must be {k} values out of 0/1, got {skips!r}")


def arch_to_str(arch: Dict) -> str:
    """One line per architecture: ``conv3x3 | maxpool3x3 +0 | sepconv5x5 +0+1``.

    Layer ``k`` is written as its op followed by ``+j`` for every skip input from layer ``j``.
    """
    parts = []
    for op, skips in zip(arch["ops"], arch["skips"]):
        parts.append(op + "".join(f" +{j}" for j, s in enumerate(skips) if s))
    return " | ".join(parts)


# ---------------------------------------------------------------- the normalized LSTM cell


def controller_norm(name: str, num_features: int, *, num_groups: int = 8,
                    sn_stats: Sequence[str] = SN_CONTROLLER_STATS) -> nn.Module:
    """The norm at one site of the controller's cell, for ``(N, num_features)`` features.

    ``name`` is ``none``, ``ln``, ``gn`` (``num_groups`` groups) or ``sn`` (SN over
    ``sn_stats``, by default LN and GN as in the paper, i.e. ``sn.make_norm("sn-lngn")``).
    """
    if name not in CONTROLLER_NORMS:
        raise ValueError(f"unknown controller norm {name!r}; known: {', '.join(CONTROLLER_NORMS)}")
    stats = check_sn_stats(sn_stats)
    uses_groups = name == "gn" or (name == "sn" and "gn" in stats)
    if uses_groups and (isinstance(num_groups, bool) or not isinstance(num_groups, int)
                        or num_groups < 1 or num_features % num_groups):
        raise ValueError(f"num_groups={num_groups!r} must be a positive divisor of {num_features} "
                         "(the hidden size and 4x the hidden size)")
    if name in ("none", "ln"):
        return sn.make_norm(name, num_features, dim=1)
    if name == "gn":
        return sn.make_norm("gn", num_features, dim=1, num_groups=num_groups)
    # no BN branch, hence no running statistics to keep
    if stats == ("ln", "gn"):
        return sn.make_norm("sn-lngn", num_features, dim=1, num_groups=num_groups, track_running_stats=False)
    return sn.SwitchNorm1d(num_features, stats=stats, num_groups=num_groups if "gn" in stats else None,
                           track_running_stats=False)


def check_sn_stats(stats: Sequence[str]) -> Tuple[str, ...]:
    """``stats`` (a tuple or ``"ln,gn"``) as a tuple; ValueError unless distinct names out of ln, gn."""
    if isinstance(stats, str):
        stats = tuple(s.strip() for s in stats.split(",") if s.strip())
    stats = tuple(stats)
    bad = [s for s in stats if s not in SN_CONTROLLER_STATS]
    if not stats or bad or len(set(stats)) != len(stats):
        raise ValueError(f"controller SN stats {stats!r}: choose distinct names out of {SN_CONTROLLER_STATS} "
                         "(BN needs a batch and IN is degenerate on one (1, C) vector)")
    return stats


class NormLSTMCell(nn.Module):
    r"""An LSTM cell with a norm on the gate pre-activations and on the cell state.

    As in layer-normalized LSTMs (Ba et al., 2016), with the norm from :func:`controller_norm`:

    .. math::
        (i, f, g, o) = \mathrm{N}_{4H}(W_x x + W_h h + b),\quad
        c' = \sigma(f) c + \sigma(i) \tanh(g),\quad
        h' = \sigma(o) \tanh(\mathrm{N}_H(c'))

    The cell state ``c'`` is carried unnormalized; only its read-out is normalized.

    Shape:
        - x: :math:`(N, I)`; state: ``(h, c)``, each :math:`(N, H)`
        - Output: ``(h', c')``, each :math:`(N, H)`
    """

    def __init__(self, input_size: int, hidden_size: int, norm: str = "ln", *, num_groups: int = 8,
                 sn_stats: Sequence[str] = SN_CONTROLLER_STATS) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.x2gates = nn.Linear(input_size, 4 * hidden_size)
        self.h2gates = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.norm_gates = controller_norm(norm, 4 * hidden_size, num_groups=num_groups, sn_stats=sn_stats)
        self.norm_cell = controller_norm(norm, hidden_size, num_groups=num_groups, sn_stats=sn_stats)

    def forward(self, x: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        h, c = state
        gates = self.norm_gates(self.x2gates(x) + self.h2gates(h))  # (N, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # each (N, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.norm_cell(c))
        return h, c


# ---------------------------------------------------------------- the controller


@dataclass
class Sample:
    """One sampled (or re-scored) architecture and the quantities REINFORCE needs."""

    arch: Dict
    log_prob: Tensor  # sum of the log-probabilities of every decision, scalar
    entropy: Tensor  # sum of the entropies of every decision, scalar
    skip_penalty: Tensor  # sum over layers of KL(p(skip) || target), scalar
    skip_count: int


class Controller(nn.Module):
    """ENAS macro-search controller: per layer an operation, then skips by attention.

    For layer ``k`` the LSTM reads the previous decision's embedding; the op is sampled from
    ``head(h)``; the LSTM then reads the op's embedding and, for ``k > 0``, every earlier
    layer ``j`` is connected with probability ``softmax([-a_j, a_j])[1]``, where
    ``a_j = v^T tanh(W_prev h_j + W_curr h)`` (attention over the earlier layers' states). The
    next input is the mean of the chosen layers' states (``sum / (1 + #skips)``). Logits are
    divided by ``temperature`` and squashed to ``tanh_constant * tanh(.)``.

    Args:
        num_layers: layers of the sampled CNN. Default: 6
        hidden_size: LSTM size. Default: 64
        norm: ``none``, ``ln``, ``gn`` or ``sn`` (SN over ``sn_stats``). Default: ``"ln"``
        num_groups: GN groups (for ``gn`` and SN's GN branch). Default: 8
        sn_stats: statistics SN mixes. Default: ``("ln", "gn")``
        tanh_constant: ``c`` in ``c * tanh(logits)``; ``None`` disables. Default: 1.5
        temperature: logits are divided by it first; ``None`` disables (as ENAS's macro
            search). Default: None
        skip_target: target skip probability of the skip-density penalty. Default: 0.4
    """

    def __init__(self, num_layers: int = 6, hidden_size: int = 64, norm: str = "ln", *, num_groups: int = 8,
                 sn_stats: Sequence[str] = SN_CONTROLLER_STATS, tanh_constant: Optional[float] = 1.5,
                 temperature: Optional[float] = None, skip_target: float = 0.4, ops: Sequence[str] = OPS) -> None:
        super().__init__()
        for name, value in (("num_layers", num_layers), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < skip_target < 1.0:
            raise ValueError(f"skip_target must be in (0, 1), got {skip_target!r}")
        for name, value in (("tanh_constant", tanh_constant), ("temperature", temperature)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        self.num_layers, self.hidden_size, self.ops = num_layers, hidden_size, tuple(ops)
        self.tanh_constant, self.temperature, self.skip_target = tanh_constant, temperature, skip_target
        h = hidden_size
        self.cell = NormLSTMCell(h, h, norm, num_groups=num_groups, sn_stats=sn_stats)
        self.start = nn.Parameter(torch.empty(1, h))  # input of the first step
        self.op_embedding = nn.Embedding(len(self.ops), h)
        self.op_head = nn.Linear(h, len(self.ops))
        self.attn_prev = nn.Linear(h, h, bias=False)
        self.attn_curr = nn.Linear(h, h, bias=False)
        self.attn_v = nn.Linear(h, 1, bias=False)
        self.register_buffer("baseline", torch.tensor(float("nan")))  # EMA of rewards, NaN until the first
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ENAS's initialisation: every weight uniform in [-0.1, 0.1]; norms keep their own."""
        skip = {id(p) for m in (self.cell.norm_gates, self.cell.norm_cell) for p in m.parameters()}
        for p in self.parameters():
            if id(p) not in skip:
                nn.init.uniform_(p, -0.1, 0.1)

    def _squash(self, logits: Tensor) -> Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def forward(self, arch: Optional[Dict] = None, generator: Optional[torch.Generator] = None) -> Sample:
        """Sample an architecture, or with ``arch`` score the given one (same graph, no sampling)."""
        if arch is not None:
            check_arch(arch, self.num_layers, self.ops)
        dev = self.start.device
        h = c = self.start.new_zeros(1, self.hidden_size)
        x = self.start
        anchors, anchors_w = [], []  # earlier layers' states (1, H) and W_prev h_j (1, H)
        log_probs, entropies, penalties = [], [], []
        ops, all_skips = [], []
        for k in range(self.num_layers):
            h, c = self.cell(x, (h, c))
            logits = self._squash(self.op_head(h))  # (1, n_ops)
            given = None if arch is None else torch.tensor([[self.ops.index(arch["ops"][k])]], device=dev)
            op = self._decide(logits, given, generator, log_probs, entropies)  # (1, 1)
            ops.append(self.ops[int(op)])
            h, c = self.cell(self.op_embedding(op[:, 0]), (h, c))
            if k == 0:
                all_skips.append([])
                x = self.start
            else:
                query = torch.tanh(torch.cat(anchors_w, 0) + self.attn_curr(h))  # (k, H)
                a = self.attn_v(query)  # (k, 1)
                logits = self._squash(torch.cat([-a, a], dim=1))  # (k, 2): no skip / skip
                given = None if arch is None else torch.tensor(arch["skips"][k], device=dev).view(k, 1)
                skip = self._decide(logits, given, generator, log_probs, entropies)  # (k, 1)
                p = logits.softmax(1)  # (k, 2), the probabilities the skips were sampled from
                target = p.new_tensor([1.0 - self.skip_target, self.skip_target])
                penalties.append((p * (p / target).log()).sum())
                all_skips.append([int(s) for s in skip[:, 0]])
                chosen = skip.t().to(h.dtype)  # (1, k)
                x = chosen @ torch.cat(anchors, 0) / (1.0 + chosen.sum())  # (1, H)
            anchors.append(h)
            anchors_w.append(self.attn_prev(h))
        zero = self.start.new_zeros(())
        return Sample(
            arch={"ops": ops, "skips": all_skips},
            log_prob=torch.stack(log_probs).sum(),
            entropy=torch.stack(entropies).sum(),
            skip_penalty=torch.stack(penalties).sum() if penalties else zero,
            skip_count=sum(map(sum, all_skips)),
        )

    @staticmethod
    def _decide(logits: Tensor, given: Optional[Tensor], generator, log_probs: List, entropies: List) -> Tensor:
        """Sample one choice per row of ``logits`` (R, K) (or take ``given``), record log-p and entropy."""
        log_p = logits.log_softmax(1)  # (R, K)
        if given is None:
            with torch.no_grad():
                given = torch.multinomial(log_p.exp(), 1, generator=generator)  # (R, 1)
        log_probs.append(log_p.gather(1, given).sum())
        entropies.append(-(log_p.exp() * log_p).sum())
        return given


# ---------------------------------------------------------------- REINFORCE


def update_baseline(controller: Controller, reward: float, decay: float) -> float:
    """Exponential moving average of the rewards, kept in ``controller.baseline``.

    ``b <- decay * b + (1 - decay) * reward``, starting at the first reward (ENAS starts at
    0, which makes every early sample look good in short runs). Returns the new baseline.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"baseline decay must be in [0, 1), got {decay!r}")
    b = controller.baseline
    if math.isnan(float(b)):
        b.fill_(reward)
    else:
        b.mul_(decay).add_((1.0 - decay) * reward)
    return float(b)


def walk_baseline(controller: Controller, rewards: Sequence[float], decay: float) -> List[float]:
    """:func:`update_baseline` with each of ``rewards`` in turn; returns the baseline after each.

    Under DDP every process walks the same list, the rewards of every process's samples of a
    controller step gathered in rank-major order, so the baseline stays identical on every
    process; process ``r`` (``S`` samples each) uses the entries ``r*S .. r*S + S - 1`` for its
    own samples. With one process this is the sequential update, each sample's reward folded
    in before its loss is formed.
    """
    return [update_baseline(controller, float(r), decay) for r in rewards]


def reinforce_loss(sample: Sample, reward: float, baseline: float, skip_weight: float = 0.8) -> Tensor:
    """REINFORCE loss of one sample: ``-(reward - baseline) * log p(arch) + skip_weight * KL``.

    Minimising it raises the probability of architectures whose reward beats the baseline.
    ENAS's entropy bonus belongs in ``reward`` (``reward = acc + entropy_weight * entropy``).
    """
    return -(reward - baseline) * sample.log_prob + skip_weight * sample.skip_penalty
