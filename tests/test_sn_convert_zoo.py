"""sn.convert on the models people use: torchvision's classification zoo (the smallest member
of every family with norm layers) and timm's, built with random weights. With the importance
weights one-hot (``stats=("bn",)`` for BatchNorm models, ``("gn",)`` for GroupNorm ones) the
converted model must compute the original's output, in eval and in training (same dropout
draws, same running-statistic updates), in float64 so that any difference is a real one.
Models whose norm layers SN does not replace must say so."""
import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import sn

timm = pytest.importorskip("timm", reason="timm is a test dependency (pyproject dev extra)")

TORCHVISION = {  # name: (constructor options, input size)
    "resnet18": ({}, 64),
    "densenet121": ({}, 64),
    "mobilenet_v2": ({}, 64),
    "mobilenet_v3_small": ({}, 64),
    "efficientnet_b0": ({}, 64),
    "efficientnet_v2_s": ({}, 64),
    "regnet_y_400mf": ({}, 64),
    "shufflenet_v2_x0_5": ({}, 64),
    "mnasnet0_5": ({}, 64),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 64),
    "inception_v3": ({"aux_logits": False, "init_weights": False}, 80),
    "vgg11_bn": ({}, 32),
}
TIMM = {  # name: the statistic the converted layers keep
    "resnet50": "bn",
    "efficientnet_b0": "bn",
    "mobilenetv3_large_100": "bn",
    "regnety_008": "bn",
    "densenet121": "bn",
    "resnetv2_50x1_bit": "gn",
    "efficientnet_b0_gn": "gn",
    "resnet50_gn": "gn",
}
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.Dropout)


def _randomize_norms(model: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so that carrying them matters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, name, None)
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and isinstance(t, torch.Tensor):
                    values = torch.rand(t.shape, generator=g, dtype=t.dtype) * 0.5 + 0.75
                    t.copy_(values if name in ("weight", "running_var") else values - 1.0)


def _count(model, types):
    return sum(isinstance(m, types) for m in model.modules())


def _check_equivalent(original: nn.Module, stat: str, size: int) -> None:
    original = original.double()
    _randomize_norms(original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every norm layer of these models is converted
        converted = sn.convert(copy.deepcopy(original), stats=(stat,))
    assert _count(converted, sn.SwitchNorm) > 0
    assert _count(converted, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) == 0
    assert _count(converted, ACTIVATIONS) == _count(original, ACTIVATIONS)  # nothing dropped
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    original.eval(), converted.eval()
    with torch.no_grad():
        expected, got = original(x), converted(x)
    scale = expected.abs().max().item() + 1.0
    torch.testing.assert_close(got, expected, atol=1e-9 * scale, rtol=1e-9, msg="eval")
    original.train(), converted.train()
    torch.manual_seed(2)
    expected = original(x)
    torch.manual_seed(2)  # the same dropout / drop-path draws
    got = converted(x)
    torch.testing.assert_close(got, expected, atol=1e-8 * scale, rtol=1e-8, msg="train")
    before = {k: v for k, v in original.state_dict().items() if "running" in k}
    after = converted.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, atol=1e-10, rtol=1e-9, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_model_converted_one_hot_on_bn_computes_the_original(name):
    options, size = TORCHVISION[name]
    torch.manual_seed(0)
    _check_equivalent(torchvision.models.get_model(name, weights=None, **options), "bn", size)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TIMM))
def test_timm_model_converted_one_hot_computes_the_original(name):
    torch.manual_seed(0)
    _check_equivalent(timm.create_model(name, pretrained=False), TIMM[name], 64)


def test_timm_norm_act_layers_keep_their_activation_and_dropout():
    from timm.layers import BatchNormAct2d, GroupNormAct

    bn_act = BatchNormAct2d(8, act_layer=nn.SiLU, drop_layer=nn.Dropout)
    gn_act = GroupNormAct(8, num_groups=4, act_layer=nn.ReLU)
    new_bn, new_gn = sn.convert(bn_act, stats=("bn",)), sn.convert(gn_act, stats=("gn",))
    assert isinstance(new_bn, sn.SwitchNormAct2d) and isinstance(new_bn.act, nn.SiLU)
    assert isinstance(new_bn.drop, nn.Dropout) and isinstance(new_gn, sn.SwitchNormAct)
    assert isinstance(new_gn.act, nn.ReLU) and new_gn.num_groups == 4
    x = torch.randn(4, 8, 5, 5) * 3 - 1
    for old, new in ((bn_act, new_bn), (gn_act, new_gn)):
        old.eval(), new.eval()
        torch.testing.assert_close(new(x), old(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,expected", [
    ("convnext_tiny", "LayerNorm2d"), ("swin_t", "LayerNorm"), ("vit_b_16", "LayerNorm")])
def test_unconverted_norm_layers_are_reported_once_and_strict_raises(name, expected):
    model = torchvision.models.get_model(name, weights=None)
    n_layers = sum(type(m).__name__ == expected for m in model.modules())
    with pytest.warns(UserWarning, match=rf"left \d+ normalization layers unconverted.*{expected} x{n_layers}") as w:
        sn.convert(copy.deepcopy(model))
    assert len([r for r in w if "unconverted" in str(r.message)]) == 1
    with pytest.raises(ValueError, match=f"{expected} x{n_layers}"):
        sn.convert(model, strict=True)


def test_timm_layers_sn_does_not_replace_are_reported():
    from timm.layers import EvoNorm2dB0, LayerNorm2d

    model = nn.Sequential(nn.Conv2d(3, 8, 3), EvoNorm2dB0(8), LayerNorm2d(8), nn.BatchNorm2d(8))
    with pytest.warns(UserWarning, match="EvoNorm2dB0 x1, LayerNorm2d x1"):
        model = sn.convert(model)
    assert isinstance(model[3], sn.SwitchNorm2d)


def test_batchnorm_subclass_with_its_own_forward_is_left_alone_and_reported():
    class ScaledBN(nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(ScaledBN(4))
    with pytest.warns(UserWarning, match="ScaledBN x1"):
        assert isinstance(sn.convert(model)[0], ScaledBN)


def test_update_stats_on_a_model_without_batch_statistics_says_so():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), sn.SwitchNorm2d(4, stats=("in", "ln")))
    with pytest.warns(UserWarning, match="no layer with batch statistics"):
        sn.update_stats(model, [torch.randn(2, 3, 8, 8)], num_batches=1)
