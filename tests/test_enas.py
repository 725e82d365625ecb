"""ENAS task: normalized LSTM cell, controller sampling and REINFORCE, child network.

References are independent of the code under test: a hand-written float64 LSTM step with
hand-written LN/GN/SN, enumeration of every architecture of a tiny search space, and torch's
own layers. The command line end to end is in ``test_enas_cli.py``.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import sn
from tasks.enas.controller import (OPS, Controller, NormLSTMCell, arch_to_str, check_arch, reinforce_loss,
                                   update_baseline)
from tasks.enas.model import ChildNet, accuracy

H = 8  # hidden size of the small cells in these tests
GROUPS = 2


# ---------------------------------------------------------------- the normalized LSTM cell


def _ref_norm(v, kind, gamma, beta, groups=GROUPS, logits=None, eps=1e-5):
    """Hand-written LN / GN / SN(LN, GN) of one row vector ``v`` (1, C), float64."""
    c = v.shape[1]
    ln_m = v.mean().expand(1, c)
    ln_v = ((v - v.mean()) ** 2).mean().expand(1, c)
    g = v.reshape(groups, c // groups)
    gn_m = g.mean(1, keepdim=True).expand(groups, c // groups).reshape(1, c)
    gn_v = ((g - g.mean(1, keepdim=True)) ** 2).mean(1, keepdim=True).expand(groups, c // groups).reshape(1, c)
    if kind == "none":
        return v
    if kind == "ln":
        m, var = ln_m, ln_v
    elif kind == "gn":
        m, var = gn_m, gn_v
    else:  # sn over (ln, gn)
        wm = torch.softmax(logits[0], 0)
        wv = torch.softmax(logits[1], 0)
        m = wm[0] * ln_m + wm[1] * gn_m
        var = wv[0] * ln_v + wv[1] * gn_v
    return (v - m) / torch.sqrt(var + eps) * gamma + beta


def _randomize(cell):
    """Random, non-trivial values for every parameter (affine and SN logits included)."""
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn_like(p))


def _ref_step(cell, kind, x, h, c):
    """A reference step of the layer-normalized LSTM, written from the equations."""
    p = {k: v.double() for k, v in cell.named_parameters()}

    def norm(v, site):
        if kind == "none":
            return v
        return _ref_norm(v, kind, p[f"{site}.weight"], p[f"{site}.bias"],
                         logits=(p.get(f"{site}.mean_weight"), p.get(f"{site}.var_weight")))

    pre = x @ p["x2gates.weight"].T + p["x2gates.bias"] + h @ p["h2gates.weight"].T
    gates = norm(pre, "norm_gates")
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(norm(c_new, "norm_cell"))
    return h_new, c_new


@pytest.mark.parametrize("kind", ["none", "ln", "gn", "sn"])
def test_cell_matches_hand_written_step(kind):
    torch.manual_seed(0)
    cell = NormLSTMCell(5, H, kind, num_groups=GROUPS).double()
    _randomize(cell)
    x, h, c = torch.randn(1, 5).double(), torch.randn(1, H).double(), torch.randn(1, H).double()
    h1, c1 = cell(x, (h, c))
    rh, rc = _ref_step(cell, kind, x, h, c)
    torch.testing.assert_close(h1, rh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c1, rc, rtol=1e-10, atol=1e-10)


def test_cell_norm_sites_come_from_the_registry():
    cell = NormLSTMCell(4, H, "sn", num_groups=GROUPS)
    assert isinstance(cell.norm_gates, sn.SwitchNorm1d) and cell.norm_gates.stats == ("ln", "gn")
    assert cell.norm_gates.num_features == 4 * H and cell.norm_cell.num_features == H
    assert isinstance(NormLSTMCell(4, H, "gn", num_groups=GROUPS).norm_cell, torch.nn.GroupNorm)


@pytest.mark.parametrize("special", ["ln", "gn"])
def test_sn_cell_with_one_hot_importance_equals_ln_and_gn_cells(special):
    torch.manual_seed(1)
    sn_cell = NormLSTMCell(5, H, "sn", num_groups=GROUPS).double()
    _randomize(sn_cell)
    other = NormLSTMCell(5, H, special, num_groups=GROUPS).double()
    onehot = torch.tensor([100.0, -100.0] if special == "ln" else [-100.0, 100.0])
    state = {k: v for k, v in sn_cell.state_dict().items() if not k.endswith(("mean_weight", "var_weight"))}
    other.load_state_dict(state)
    with torch.no_grad():
        for site in (sn_cell.norm_gates, sn_cell.norm_cell):
            site.mean_weight.copy_(onehot)
            site.var_weight.copy_(onehot)
    x, h, c = torch.randn(1, 5).double(), torch.randn(1, H).double(), torch.randn(1, H).double()
    for a, b in zip(sn_cell(x, (h, c)), other(x, (h, c))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # with mixed weights the SN cell is neither
    with torch.no_grad():
        sn_cell.norm_gates.mean_weight.zero_()
    assert not torch.allclose(sn_cell(x, (h, c))[0], other(x, (h, c))[0])


# ---------------------------------------------------------------- sampling


def _all_archs(num_layers):
    skip_sets = [list(itertools.product((0, 1), repeat=k)) for k in range(num_layers)]
    for ops in itertools.product(OPS, repeat=num_layers):
        for skips in itertools.product(*skip_sets):
            yield {"ops": list(ops), "skips": [list(s) for s in skips]}


@pytest.mark.parametrize("norm", ["ln", "sn"])
def test_probabilities_of_all_architectures_sum_to_one(norm):
    torch.manual_seed(2)
    ctrl = Controller(num_layers=2, hidden_size=H, norm=norm, num_groups=GROUPS, temperature=None).double()
    with torch.no_grad():
        total = sum(math.exp(float(ctrl(arch=a).log_prob)) for a in _all_archs(2))  # 6 * 6 * 2 archs
    assert total == pytest.approx(1.0, abs=1e-9)


def test_sampled_architectures_are_valid_and_rescored_identically():
    torch.manual_seed(3)
    ctrl = Controller(num_layers=5, hidden_size=H, norm="sn", num_groups=GROUPS)
    gen = torch.Generator().manual_seed(0)
    seen_ops = set()
    for _ in range(20):
        s = ctrl(generator=gen)
        check_arch(s.arch, 5)
        assert [len(k) for k in s.arch["skips"]] == [0, 1, 2, 3, 4]
        assert s.skip_count == sum(map(sum, s.arch["skips"]))
        seen_ops.update(s.arch["ops"])
        again = ctrl(arch=s.arch)
        torch.testing.assert_close(again.log_prob, s.log_prob)
        torch.testing.assert_close(again.entropy, s.entropy)
        assert s.log_prob < 0 and s.entropy > 0
    assert len(seen_ops) >= 4  # sampling explores the op choices


def test_one_layer_log_prob_entropy_and_squashing():
    torch.manual_seed(4)
    ctrl = Controller(num_layers=1, hidden_size=H, norm="ln", tanh_constant=1.5, temperature=5.0).double()
    with torch.no_grad():
        h, _ = ctrl.cell(ctrl.start, (torch.zeros(1, H).double(), torch.zeros(1, H).double()))
        raw = ctrl.op_head(h)[0]
    logits = 1.5 * torch.tanh(raw / 5.0)
    p = torch.softmax(logits, 0)
    with torch.no_grad():
        s = ctrl(arch={"ops": ["maxpool3x3"], "skips": [[]]})
    assert float(s.log_prob) == pytest.approx(math.log(p[OPS.index("maxpool3x3")]), rel=1e-10)
    assert float(s.entropy) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-10)
    assert float(s.skip_penalty) == 0.0


def test_skip_penalty_is_kl_to_target():
    torch.manual_seed(5)
    ctrl = Controller(num_layers=2, hidden_size=H, norm="gn", num_groups=GROUPS, skip_target=0.3).double()
    arch = {"ops": ["conv3x3", "conv5x5"], "skips": [[], [1]]}
    s = ctrl(arch=arch)
    with torch.no_grad():
        p_skip = math.exp(float(s.log_prob - ctrl(arch={"ops": arch["ops"], "skips": [[], [0]]}).log_prob))
    q = p_skip / (1 + p_skip)  # p(skip) / (p(skip) + p(no skip)), op probabilities cancel
    kl = q * math.log(q / 0.3) + (1 - q) * math.log((1 - q) / 0.7)
    assert s.skip_penalty.item() == pytest.approx(kl, rel=1e-9)


# ---------------------------------------------------------------- REINFORCE


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_reinforce_step_moves_log_prob_with_the_advantage(advantage):
    torch.manual_seed(6)
    ctrl = Controller(num_layers=3, hidden_size=H, norm="sn", num_groups=GROUPS)
    s = ctrl(generator=torch.Generator().manual_seed(1))
    before = s.log_prob.item()
    loss = reinforce_loss(s, reward=0.5 + advantage, baseline=0.5, skip_weight=0.0)
    loss.backward()
    with torch.no_grad():
        for p in ctrl.parameters():
            p -= 0.01 * p.grad
        after = float(ctrl(arch=s.arch).log_prob)
    assert (after - before) * advantage > 0


def test_reinforce_learns_a_toy_reward():
    """Reward = fraction of max-pool layers: REINFORCE with the EMA baseline raises its probability."""
    torch.manual_seed(7)
    ctrl = Controller(num_layers=2, hidden_size=H, norm="ln", temperature=None)
    opt = torch.optim.Adam(ctrl.parameters(), lr=0.02)
    target = {"ops": ["maxpool3x3"] * 2, "skips": [[], [0]]}
    p_before = math.exp(ctrl(arch=target).log_prob.item())
    for _ in range(120):
        s = ctrl()
        reward = s.arch["ops"].count("maxpool3x3") / 2
        b = update_baseline(ctrl, reward, decay=0.9)
        opt.zero_grad()
        reinforce_loss(s, reward, b, skip_weight=0.0).backward()
        opt.step()
    p_after = math.exp(ctrl(arch=target).log_prob.item())
    assert p_after > 3 * p_before


def test_baseline_is_an_ema_starting_at_the_first_reward():
    ctrl = Controller(num_layers=1, hidden_size=H)
    assert update_baseline(ctrl, 0.5, 0.9) == 0.5
    assert update_baseline(ctrl, 1.5, 0.9) == pytest.approx(0.9 * 0.5 + 0.1 * 1.5)
    with pytest.raises(ValueError, match="decay"):
        update_baseline(ctrl, 1.0, 1.0)


# ---------------------------------------------------------------- child network


def test_child_uses_only_the_chosen_ops_and_the_skips():
    torch.manual_seed(8)
    child = ChildNet(num_layers=3, channels=4, dropout=0.0).eval()
    x = torch.randn(4, 1, 12, 12)
    arch = {"ops": ["conv3x3", "sepconv5x5", "maxpool3x3"], "skips": [[], [0], [1, 0]]}
    out = child(x, arch)
    with torch.no_grad():  # an op nobody chose does not matter ...
        for p in child.layers[1].ops["conv5x5"].parameters():
            p.add_(1.0)
    torch.testing.assert_close(child(x, arch), out)
    with torch.no_grad():  # ... the chosen one does
        for p in child.layers[1].ops["sepconv5x5"].parameters():
            p.mul_(2.0).add_(0.1)
    assert not torch.allclose(child(x, arch), out)
    no_skip = {"ops": arch["ops"], "skips": [[], [0], [0, 0]]}
    assert not torch.allclose(child(x, no_skip), child(x, arch))


def test_child_layer_is_op_plus_skips_then_batch_norm():
    torch.manual_seed(9)
    child = ChildNet(num_layers=2, channels=4, reduce_after=[], dropout=0.0, stem_stride=1)
    x = torch.randn(6, 1, 8, 8)
    arch = {"ops": ["avgpool3x3", "conv3x3"], "skips": [[], [1]]}
    stem = child.stem(x)
    l0 = child.layers[0]
    y0 = F.batch_norm(l0.ops["avgpool3x3"](stem), None, None, l0.bn.weight, l0.bn.bias, training=True)
    l1 = child.layers[1]
    y1 = F.batch_norm(l1.ops["conv3x3"](y0) + y0, None, None, l1.bn.weight, l1.bn.bias, training=True)
    ref = child.classifier(y1.mean((2, 3)))
    torch.testing.assert_close(child(x, arch), ref)


def test_child_trains_on_a_fixed_arch():
    torch.manual_seed(10)
    child = ChildNet(num_layers=2, channels=8, dropout=0.0)
    arch = {"ops": ["conv3x3", "maxpool3x3"], "skips": [[], [1]]}
    x = torch.randn(32, 1, 12, 12)
    y = (x.mean((1, 2, 3)) > 0).long()
    opt = torch.optim.SGD(child.parameters(), lr=0.1, momentum=0.9)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(child(x, arch), y).backward()
        opt.step()
    assert accuracy(child, arch, x, y) > 0.9
    assert child.training  # accuracy restores the mode


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "bn"}, "'bn'"),
    ({"norm": "sn", "sn_stats": ("ln", "bn")}, "bn"),
    ({"norm": "sn", "sn_stats": ("in",)}, "in"),
    ({"norm": "gn", "num_groups": 3}, "num_groups=3"),
    ({"num_layers": 0}, "num_layers"),
    ({"skip_target": 1.5}, "skip_target"),
    ({"temperature": 0.0}, "temperature"),
])
def test_controller_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Controller(**{"hidden_size": H, **kwargs})


@pytest.mark.parametrize("arch, match", [
    ({"ops": ["conv3x3", "conv7x7"], "skips": [[], [0]]}, "conv7x7"),
    ({"ops": ["conv3x3", "conv3x3"], "skips": [[], [2]]}, "skips"),
    ({"ops": ["conv3x3"], "skips": [[]]}, "2 layers"),
    (["conv3x3"], "dict"),
])
def test_bad_architectures_are_rejected(arch, match):
    with pytest.raises(ValueError, match=match):
        check_arch(arch, 2)
    with pytest.raises(ValueError, match=match):
        ChildNet(num_layers=2, channels=4)(torch.randn(2, 1, 8, 8), arch)


def test_arch_to_str():
    arch = {"ops": ["conv3x3", "maxpool3x3", "sepconv5x5"], "skips": [[], [1], [1, 1]]}
    assert arch_to_str(arch) == "conv3x3 | maxpool3x3 +0 | sepconv5x5 +0 +1"
