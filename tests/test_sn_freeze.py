"""sn.freeze: one-hot SN layers become the plain layers they compute, with the same eval output;
the frozen model folds BN into convolutions and exports like any model."""
import copy
import warnings

import pytest
import torch
from torch import nn

import sn
from sn_reference import one_hot_logits


def _net(ops, seed=0):
    """conv -> SN (one-hot on ``ops[i]``) -> ReLU, three times; random affine and running stats."""
    torch.manual_seed(seed)
    layers, cin = [], 3
    for op in ops:
        stats = ("in", "ln", "bn", "gn")
        norm = sn.SwitchNorm2d(8, stats=stats, num_groups=4)
        with torch.no_grad():
            if op is None:  # a mixture
                norm.mean_weight.normal_(), norm.var_weight.normal_()
            else:
                norm.mean_weight.copy_(one_hot_logits(stats, op)), norm.var_weight.copy_(one_hot_logits(stats, op))
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
            norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 2.0)
        layers += [nn.Conv2d(cin, 8, 3, padding=1), norm, nn.ReLU()]
        cin = 8
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_one_hot_layers_become_plain_layers_with_the_same_eval_output():
    model = _net(["bn", "in", "gn"]).double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64) * 2 + 1
    expected = model(x)
    frozen = sn.freeze(copy.deepcopy(model))
    assert [type(m).__name__ for m in frozen if not isinstance(m, (nn.Conv2d, nn.ReLU))][:3] == [
        "BatchNorm2d", "GroupNorm", "GroupNorm"]
    assert frozen[4].num_groups == 8 and frozen[7].num_groups == 4  # IN: one group per channel; GN's groups
    assert not sn.switch_norm_layers(frozen)
    torch.testing.assert_close(frozen(x), expected, atol=1e-10, rtol=1e-10)


def test_mixed_layers_stay_and_argmax_reports_what_it_changes():
    model = _net(["ln", None, "bn"])
    plan = sn.freeze_plan(model)
    assert [r["action"] for r in plan] == ["frozen", "kept", "frozen"]
    assert "argmax=True" in plan[1]["reason"]
    frozen = sn.freeze(copy.deepcopy(model))
    assert isinstance(frozen[4], sn.SwitchNorm) and isinstance(frozen[1], nn.GroupNorm)
    rounded = sn.freeze_plan(model, argmax=True)
    layer = model[4]
    weights = layer.importance()
    if max(weights["mean"], key=weights["mean"].get) == max(weights["var"], key=weights["var"].get):
        assert rounded[1]["action"] == "frozen" and rounded[1]["weight_change"] > 0.01
    else:
        assert rounded[1]["action"] == "kept" and "means choose" in rounded[1]["reason"]


def test_frozen_bn_folds_into_its_convolution():
    model = _net(["bn", "bn", "bn"])
    frozen = sn.freeze(copy.deepcopy(model))
    fused = torch.ao.quantization.fuse_modules(copy.deepcopy(frozen), [["0", "1"], ["3", "4"], ["6", "7"]])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)


def test_frozen_model_exports_to_onnx_and_torchscript(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pyproject dev extra)")
    model = _net(["bn", "in", "ln"])
    frozen = sn.freeze(copy.deepcopy(model))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(frozen)  # (SN itself refuses scripting; the frozen model has no SN left)
        torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(frozen, (x,), str(tmp_path / "frozen.onnx"), dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "frozen.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-5, rtol=1e-5)


def test_freeze_keeps_timm_activations_and_rejects_bad_input():
    layer = sn.SwitchNormAct2d(8, stats=("bn",), act=nn.ReLU()).eval()
    frozen = sn.freeze(layer)
    assert isinstance(frozen, nn.Sequential) and isinstance(frozen[0], nn.BatchNorm2d)
    assert isinstance(frozen[2], nn.ReLU)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(frozen(x), layer(x))
    with pytest.raises(TypeError, match="nn.Module"):
        sn.freeze("model")
    with pytest.raises(ValueError, match="tol"):
        sn.freeze(layer, tol=0.7)
