"""Registry, model conversion, batch-average statistics and weight read-out."""
import pytest
import torch
import torchvision
from torch import nn

import sn
from sn_reference import one_hot_logits, reference_switch_norm


# ---------------------------------------------------------------- registry

@pytest.mark.parametrize("name", sn.norm_names())
@pytest.mark.parametrize("dim,shape", [(1, (4, 8, 5)), (2, (4, 8, 5, 5)), (3, (4, 8, 2, 3, 3))])
def test_every_registered_norm_builds_and_normalizes(name, dim, shape):
    torch.manual_seed(0)
    norm = sn.make_norm(name, 8, dim=dim, devices=1 if name == "sn-sync" else 2)
    x = torch.randn(shape) * 3 + 5
    out = norm(x)
    assert out.shape == x.shape
    if name != "none":  # every normalizer removes the offset of 5 and the scale of 3 overall
        assert abs(out.mean().item()) < 0.5 and 0.5 < out.std().item() < 1.5


def test_registry_norms_are_the_torch_layers():
    torch.manual_seed(1)
    x = torch.randn(4, 8, 5, 5) + 2
    torch.testing.assert_close(sn.make_norm("gn", 8, num_groups=4)(x), nn.GroupNorm(4, 8)(x))
    torch.testing.assert_close(sn.make_norm("ln", 8)(x), nn.GroupNorm(1, 8)(x))
    torch.testing.assert_close(sn.make_norm("in", 8)(x), nn.InstanceNorm2d(8, affine=True)(x))
    torch.testing.assert_close(sn.make_norm("bn", 8)(x), nn.BatchNorm2d(8)(x))
    assert sn.make_norm("gn", 64).num_groups == 32 and sn.make_norm("gn", 24).num_groups == 24
    assert sn.make_norm("gn", 48).num_groups == 24


def test_registry_sn_variants_and_per_device_option():
    assert sn.make_norm("sn", 8).stats == ("in", "ln", "bn")
    assert sn.make_norm("sn-inln", 8).stats == ("in", "ln")
    assert sn.make_norm("sn-lngn", 8, dim=1).stats == ("ln", "gn")
    assert sn.make_norm("sn-all", 8).stats == ("in", "ln", "bn", "gn")
    assert isinstance(sn.make_norm("sn", 8, dim=1), sn.SwitchNorm1d)
    assert isinstance(sn.make_norm("sn", 8, dim=3), sn.SwitchNorm3d)
    assert sn.make_norm("bn", 8, devices=4).devices == 4
    assert sn.make_norm("sn", 8, devices=4).devices == 4
    assert sn.make_norm("SN", 8).stats == ("in", "ln", "bn")
    with pytest.raises(ValueError, match="batch size 6 is not divisible by devices=4"):
        sn.make_norm("bn", 8, devices=4)(torch.randn(6, 8, 2, 2))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown norm 'xn'.*bn, gn, in, ln, none, sn"):
        sn.make_norm("xn", 8)
    with pytest.raises(ValueError, match="dim"):
        sn.make_norm("sn", 8, dim=4)
    with pytest.raises(ValueError, match="devices"):
        sn.make_norm("gn", 8, devices=0)
    with pytest.raises(ValueError, match="sn-sync.*devices=4"):
        sn.make_norm("sn-sync", 8, devices=4)
    with pytest.raises(ValueError, match="no 'bn'"):
        sn.SwitchNorm2d(8, stats=("in", "ln"), sync=True)


# ---------------------------------------------------------------- convert

def _trained_resnet(arch, seed=0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    model.train()
    with torch.no_grad():  # give the BN layers non-trivial affine and running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32) * 2 + 1)
    return model


def _one_hot_all(model, op):
    with torch.no_grad():
        for _, layer in sn.switch_norm_layers(model):
            layer.mean_weight.copy_(one_hot_logits(layer.stats, op))
            layer.var_weight.copy_(one_hot_logits(layer.stats, op))


def test_convert_resnet18_keeps_outputs_with_one_hot_bn():
    original = _trained_resnet("resnet18")
    converted = _trained_resnet("resnet18")  # identical copy (same seed)
    converted = sn.convert(converted)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in original.modules())
    layers = sn.switch_norm_layers(converted)
    assert len(layers) == n_bn == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    _one_hot_all(converted, "bn")
    x = torch.randn(4, 3, 32, 32)
    original.eval(), converted.eval()
    torch.testing.assert_close(converted(x), original(x), atol=1e-4, rtol=1e-4)
    original.train(), converted.train()
    torch.testing.assert_close(converted(x), original(x), atol=1e-4, rtol=1e-4)


def test_convert_resnet50_replaces_every_norm_and_trains():
    model = sn.convert(torchvision.models.resnet50(weights=None, num_classes=5), devices=2)
    assert len(sn.switch_norm_layers(model)) == 53
    assert all(layer.devices == 2 for _, layer in sn.switch_norm_layers(model))
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert model.bn1.mean_weight.grad is not None and torch.isfinite(model.bn1.mean_weight.grad).all()


def test_convert_root_groupnorm_frozenbn_syncbn():
    bn = nn.BatchNorm2d(6)
    bn.running_mean.fill_(0.5)
    root = sn.convert(bn)
    assert isinstance(root, sn.SwitchNorm2d) and torch.equal(root.running_mean, bn.running_mean)
    gn = nn.GroupNorm(3, 6)
    with torch.no_grad():
        gn.weight.uniform_(), gn.bias.uniform_()
    new = sn.convert(nn.Sequential(gn), stats=("ln", "gn"))[0]
    assert type(new) is sn.SwitchNorm and new.num_groups == 3 and torch.equal(new.weight, gn.weight)
    x = torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        new.mean_weight.copy_(one_hot_logits(new.stats, "gn")), new.var_weight.copy_(one_hot_logits(new.stats, "gn"))
    torch.testing.assert_close(new(x), gn(x), atol=1e-5, rtol=1e-5)
    frozen = torchvision.ops.FrozenBatchNorm2d(6)
    frozen.running_mean.fill_(1.0), frozen.running_var.fill_(4.0), frozen.weight.fill_(2.0)
    new = sn.convert(nn.Sequential(frozen))[0]
    _one_hot_all(new, "bn")
    new.eval()
    torch.testing.assert_close(new(x), frozen(x), atol=1e-5, rtol=1e-5)
    sync = sn.convert(nn.Sequential(nn.SyncBatchNorm(6)))[0]
    assert type(sync) is sn.SwitchNorm
    bn1 = sn.convert(nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6)))[1]
    assert isinstance(bn1, sn.SwitchNorm1d) and bn1.stats == ("ln", "bn")
    with pytest.raises(TypeError, match="nn.Module"):
        sn.convert("resnet")


def test_set_devices():
    model = nn.Sequential(sn.SwitchNorm2d(4), sn.make_norm("bn", 4), nn.GroupNorm(2, 4))
    sn.set_devices(model, 4)
    assert model[0].devices == 4 and model[1].devices == 4
    with pytest.raises(ValueError):
        sn.set_devices(model, -1)


# ---------------------------------------------------------------- update_stats

def test_update_stats_is_the_hand_computed_batch_average():
    torch.manual_seed(2)
    snl = sn.SwitchNorm2d(3, devices=2)
    with torch.no_grad():
        snl.mean_weight.copy_(torch.tensor([0.3, -0.2, 1.0])), snl.var_weight.copy_(torch.tensor([1.0, 0.0, 0.5]))
    conv = nn.Conv2d(3, 4, 1)
    model = nn.Sequential(snl, conv, nn.Dropout(0.5), nn.BatchNorm2d(4))
    model.train()
    model[2].eval()  # a module in another mode than its parent must get its mode back
    snl.momentum = 0.1
    batches = [(torch.randn(4, 3, 5, 5) * (i + 1) + i, torch.zeros(4)) for i in range(3)]
    # hand computation: average of per-batch (per-device for SN) means and unbiased variances
    sn_means, sn_vars, bn_means, bn_vars = [], [], [], []
    for x, _ in batches:
        chunks = x.double().split(2)
        sn_means.append(torch.stack([c.mean((0, 2, 3)) for c in chunks]).mean(0))
        sn_vars.append(torch.stack([c.var((0, 2, 3)) for c in chunks]).mean(0))
        h = reference_switch_norm(x, snl.mean_weight, snl.var_weight, snl.stats, snl.weight, snl.bias, devices=2)
        h = nn.functional.conv2d(h, conv.weight.double(), conv.bias.double())  # dropout off
        bn_means.append(h.mean((0, 2, 3)))
        bn_vars.append(h.var((0, 2, 3)))
    sn.update_stats(model, iter(batches * 2), num_batches=3)
    torch.testing.assert_close(snl.running_mean.double(), torch.stack(sn_means).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(snl.running_var.double(), torch.stack(sn_vars).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model[3].running_mean.double(), torch.stack(bn_means).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model[3].running_var.double(), torch.stack(bn_vars).mean(0), atol=1e-4, rtol=1e-4)
    assert model.training and snl.training and not model[2].training
    assert snl.momentum == 0.1 and model[3].momentum == 0.1


def test_update_stats_errors_restore_everything():
    model = nn.Sequential(sn.SwitchNorm2d(3), nn.BatchNorm2d(3))
    model.eval()
    with torch.no_grad():
        model[0].running_mean.fill_(7.0)
    with pytest.raises(ValueError, match="num_batches=5 .* only 2"):
        sn.update_stats(model, [torch.randn(2, 3, 4, 4)] * 2, num_batches=5)
    assert torch.all(model[0].running_mean == 7.0) and not model.training and not model[0].training
    assert model[0].momentum == 0.1
    with pytest.raises(ValueError, match="num_batches"):
        sn.update_stats(model, [], num_batches=0)
    with pytest.raises(TypeError, match="forward="):
        sn.update_stats(model, [{"x": 1}], num_batches=1)
    assert torch.all(model[0].running_mean == 7.0)


def test_update_stats_custom_forward():
    model = sn.SwitchNorm2d(2)
    batches = [{"image": torch.randn(3, 2, 2, 2) + 4} for _ in range(2)]
    sn.update_stats(model, batches, num_batches=2, forward=lambda m, b: m(b["image"]))
    expected = torch.stack([b["image"].mean((0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(model.running_mean, expected)


# ---------------------------------------------------------------- read-out and optimizer groups

def test_switch_weights_records():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), sn.SwitchNorm2d(4), nn.Sequential(sn.SwitchNorm1d(4, num_groups=2)))
    with torch.no_grad():
        model[1].mean_weight.copy_(torch.log(torch.tensor([0.2, 0.3, 0.5])))
    records = sn.switch_weights(model)
    assert len(records) == 3 * 2 + 2 * 2
    got = {(r["layer"], r["stat"], r["op"]): r["weight"] for r in records}
    assert got[("1", "mean", "in")] == pytest.approx(0.2) and got[("1", "mean", "bn")] == pytest.approx(0.5)
    assert got[("1", "var", "ln")] == pytest.approx(1 / 3)
    assert got[("2.0", "mean", "gn")] == pytest.approx(0.5)
    assert all(isinstance(r["weight"], float) for r in records)
    with pytest.raises(TypeError):
        sn.switch_weights([1, 2])


def test_param_groups_exempt_only_the_logits():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), sn.SwitchNorm2d(4), nn.Linear(4, 2))
    groups = sn.param_groups(model, weight_decay=1e-4)
    decay, exempt = groups
    assert decay["weight_decay"] == 1e-4 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in exempt["params"]} == {id(model[1].mean_weight), id(model[1].var_weight)}
    assert {id(p) for p in decay["params"]} | {id(p) for p in exempt["params"]} == {id(p) for p in model.parameters()}
    # with SGD weight decay and zero gradients, logits stay and gammas shrink
    opt = torch.optim.SGD(groups, lr=1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(model[1].mean_weight, torch.ones(3)) and torch.all(model[1].weight < 1)
    with pytest.raises(ValueError):
        sn.param_groups(model, -1.0)
