"""Tests of the style-transfer task (tasks.stylize: model, perceptual losses, images, data, the commands).

Losses and Gram matrices against hand-computed values, the perceptual network against
torchvision's own VGG16, the command line end to end (tiny crops, a few steps) for in, bn and
sn, resume, ``apply``, and the errors users see for bad input.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import sn
import torch
import yaml

from tasks.common.loggers import KILL_ENV
from tasks.stylize.apply import load_network
from tasks.stylize.data import ContentCrops, EpochSampler
from tasks.stylize.images import load_style, read_image, save_png
from tasks.stylize.model import TransformerNet
from tasks.stylize.perceptual import (PerceptualLoss, content_loss, gram_matrix, load_perceptual_net, style_loss,
                                      tv_loss)

REPO = Path(__file__).resolve().parents[1]
NORMS = ("in", "bn", "sn")
# tiny runs: 64x64 crops, 2 epochs of 5 steps, a slim network
TINY = {"image_size": 64, "epochs": 2, "steps_per_epoch": 5, "width": 8, "res_blocks": 2, "lr": 0.01,
        "sample_size": 32, "sample_every_n_steps": 5, "weights_every_n_steps": 5, "eval_crops": 4,
        "progress_bar": False, "threads": 1}


@pytest.fixture(autouse=True)
def no_hub_cache(tmp_path, monkeypatch):
    """An empty torch hub dir, so 'auto' resolves to the random fallback network on every machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)


def random_vgg(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return load_perceptual_net(kind="vgg16-random-init", **kw)


# --- losses against hand-computed values ------------------------------------------------------
def test_gram_matrix_hand_computed():
    # one sample, C=2, 2x2: F = [[1, 2, 3, 4], [0, 1, 0, 1]]; G = F F^T / (C*H*W = 8)
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    expected = torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]) / 8
    torch.testing.assert_close(gram_matrix(f), expected)
    # a batch: each sample has its own Gram matrix
    g = gram_matrix(torch.cat([f, 2 * f]))
    torch.testing.assert_close(g[1], 4 * expected[0])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        gram_matrix(torch.zeros(2, 3))


def test_content_style_tv_losses_hand_computed():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    b = torch.tensor([[[[1.0, 0.0], [3.0, 0.0]]]])
    assert content_loss(a, b).item() == pytest.approx((4 + 16) / 4)
    # style: one layer, C=1, H*W=4: gram(a) = 30/4, gram(b) = 10/4; MSE = (5)^2
    # second layer: gram(2a) = 30, target 0 -> 900; the loss sums the layers
    feats = {"x": a, "y": 2 * a}
    grams = {"x": torch.tensor([[[2.5]]]), "y": torch.tensor([[[0.0]]])}
    assert style_loss(feats, grams).item() == pytest.approx(25.0 + 900.0)
    # tv: vertical differences (2, 2) -> mean 4, horizontal (1, 1) -> mean 1
    assert tv_loss(a).item() == pytest.approx(5.0)
    img = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # dh = (2, 3), dw = (1, 2)
    assert tv_loss(img).item() == pytest.approx((4 + 9) / 2 + (1 + 4) / 2)


def loss_inputs():
    """A seeded style image (1, 3, 32, 32), outputs and contents (2, 3, 32, 32)."""
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.rand(n, 3, 32, 32, generator=generator) for n in (1, 2, 2))


def gram(x):
    """The Gram matrices F F^T / (C H W), written out."""
    n, c, h, w = x.shape
    return torch.einsum("nchw,ndhw->ncd", x, x) / (c * h * w)


def test_perceptual_loss_is_the_weighted_sum_of_float64_references():
    vgg = random_vgg()
    style, out, content = loss_inputs()
    loss = PerceptualLoss(vgg, style, content_weight=2.0, style_weight=300.0, tv_weight=0.5)
    got = loss(out, content)
    # reference: the same VGG in float64, Gram matrices and MSEs written out
    vgg64 = random_vgg().double()
    fo, fc, fs = vgg64(out.double()), vgg64(content.double()), vgg64(style.double())
    ref_content = ((fo["relu2_2"] - fc["relu2_2"]) ** 2).mean()
    ref_style = sum(((gram(fo[k]) - gram(fs[k])) ** 2).mean() for k in ("relu1_2", "relu2_2", "relu3_3", "relu4_3"))
    o = out.double()
    ref_tv = ((o[..., 1:, :] - o[..., :-1, :]) ** 2).mean() + ((o[..., 1:] - o[..., :-1]) ** 2).mean()
    for name, ref in (("content_loss", ref_content), ("style_loss", ref_style), ("tv_loss", ref_tv)):
        assert got[name].item() == pytest.approx(ref.item(), rel=1e-4), name
    assert got["total_loss"].item() == pytest.approx(
        (2 * ref_content + 300 * ref_style + 0.5 * ref_tv).item(), rel=1e-4)
    # zero when the output is the content image / the style image
    assert loss(content, content)["content_loss"].item() == 0.0
    assert loss(style.expand(2, -1, -1, -1), content)["style_loss"].item() < 1e-12
    with pytest.raises(ValueError, match="content_weight"):
        PerceptualLoss(vgg, style, content_weight=-1.0)


def multiscale(seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return load_perceptual_net(kind="random-multiscale", seed=seed)


def test_multiscale_net_is_seeded_unit_norm_filters_and_valid_relu_convolutions():
    net = multiscale(seed=4)
    assert net.label == "random-multiscale" and net.layers == ("k1", "k3", "k5", "k7", "k11", "k15", "k23")
    x = torch.rand(2, 3, 30, 27, dtype=torch.float64)
    got = net.double()(x)
    for name, conv in zip(net.layers, net.convs):
        k = int(name[1:])
        w = conv.weight.double()  # (64, 3, k, k)
        assert w.shape == (64, 3, k, k) and conv.bias is None
        torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(64, dtype=torch.float64))
        assert w.abs().max() <= 1 and w.min() < 0 < w.max()
        # reference: every k x k patch of (x - 0.5) dotted with every filter, then the ReLU
        patches = (x - 0.5).unfold(2, k, 1).unfold(3, k, 1)  # (N, 3, H-k+1, W-k+1, k, k)
        ref = torch.einsum("nchwij,ocij->nohw", patches, w).clamp_min(0)
        torch.testing.assert_close(got[name], ref)
    # seeded: the same seed the same filters, another seed others; the global RNG is untouched
    state = torch.random.get_rng_state()
    a, b = multiscale(seed=1), multiscale(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a.convs[3].weight, b.convs[3].weight)
    assert not torch.equal(a.convs[3].weight, net.convs[3].weight)
    # frozen, eval mode, gradients reach the input
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    x = torch.rand(1, 3, 24, 24, requires_grad=True)
    multiscale()(x)["k23"].sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 23x23"):
        multiscale()(torch.rand(1, 3, 22, 40))


def test_relative_losses_of_the_multiscale_net_against_float64():
    net = multiscale()
    style, out, content = loss_inputs()
    loss = PerceptualLoss(net, style, content_layer="k3,k5", content_weight=2.0, style_weight=3.0)
    assert loss.style_layers == net.layers  # the network's default: every filter size
    got = loss(out, content)
    net64 = multiscale().double()
    fo, fc, fs = net64(out.double()), net64(content.double()), net64(style.double())
    # each layer's squared error divided by its target's mean square
    ref_content = sum(((fo[k] - fc[k]) ** 2).mean() / (fc[k] ** 2).mean() for k in ("k3", "k5"))
    ref_style = sum(((gram(fo[k]) - gram(fs[k])) ** 2).mean() / (gram(fs[k]) ** 2).mean() for k in net.layers)
    assert got["content_loss"].item() == pytest.approx(ref_content.item(), rel=1e-4)
    assert got["style_loss"].item() == pytest.approx(ref_style.item(), rel=1e-4)
    assert got["total_loss"].item() == pytest.approx((2 * ref_content + 3 * ref_style).item(), rel=1e-4)
    with pytest.raises(ValueError, match="lacks layers"):
        PerceptualLoss(net, style, content_layer="relu2_2")


def test_config_resolves_each_networks_defaults_and_checks_its_layers():
    from tasks.stylize.config import StylizeConfig

    cfg = StylizeConfig()  # no weights on disk (fixture): the random filter bank
    assert (cfg.perceptual_net, cfg.content_layer, cfg.content_weight, cfg.style_weight) == \
        ("random-multiscale", "k3,k5", 1.0, 3.0)
    cfg = StylizeConfig(perceptual_net="vgg16-random-init")
    assert (cfg.content_layer, cfg.content_weight, cfg.style_weight) == ("relu2_2", 1.0, 1e5)
    cfg = StylizeConfig(perceptual_net="vgg16-random-init", style_weight=7.0, content_layer="relu3_3")
    assert (cfg.content_layer, cfg.style_weight) == ("relu3_3", 7.0)  # given values are kept
    StylizeConfig(perceptual_net="vgg16-imagenet").validate()  # (the weights are checked when a run starts)
    assert StylizeConfig(perceptual_net="vgg16-imagenet").style_weight == 1e10
    with pytest.raises(ValueError, match="relu2_2.*random-multiscale"):
        StylizeConfig(content_layer="relu2_2").validate()
    with pytest.raises(ValueError, match="k3.*vgg16-random-init"):
        StylizeConfig(perceptual_net="vgg16-random-init", content_layer="k3").validate()
    with pytest.raises(ValueError, match="image_size must be >= 23"):
        StylizeConfig(image_size=20, sample_size=20).validate()
    StylizeConfig(perceptual_net="vgg16-random-init", image_size=20, sample_size=20).validate()


# --- networks ------------------------------------------------------------------------------------
def test_perceptual_net_matches_torchvision_vgg16_and_is_frozen():
    import torchvision

    vgg = random_vgg(seed=3)
    # torchvision's own VGG16 with the same weights: the layer indices of relu1_2... must agree
    with torch.device("meta"):  # skip initialising the 120M-parameter classifier
        reference = torchvision.models.vgg16(weights=None).features
    reference = reference.to_empty(device="cpu").eval()
    missing, unexpected = reference.load_state_dict(vgg.features.state_dict(), strict=False)
    assert not unexpected and {k.split(".")[0] for k in missing} == {"24", "26", "28"}
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = vgg(x)
        for name, index in (("relu1_2", 3), ("relu2_2", 8), ("relu3_3", 15), ("relu4_3", 22)):
            torch.testing.assert_close(feats[name], reference[: index + 1]((x - mean) / std))
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    # gradients still reach the input
    x.requires_grad_(True)
    vgg(x)["relu1_2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_vgg_fallback_is_loud_and_labelled_and_weights_files_are_used(tmp_path):
    import torchvision

    with pytest.warns(RuntimeWarning, match="RANDOM MULTI-SCALE FILTERS"):
        net = load_perceptual_net()  # the hub cache is empty (fixture)
    assert net.label == "random-multiscale"
    with pytest.warns(RuntimeWarning, match="RANDOMLY INITIALISED VGG16"):
        assert load_perceptual_net(kind="vgg16-random-init").label == "vgg16-random-init"
    # a torchvision VGG16 state dict given as --vgg-weights is used as "ImageNet" weights
    with torch.device("meta"):  # torchvision's key names and shapes, without the memory
        layout = torchvision.models.vgg16(weights=None).state_dict()
    state = {k: torch.randn(v.shape) for k, v in layout.items() if k.startswith("features.")}
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    net = load_perceptual_net(str(path))
    assert net.label == "vgg16-imagenet"
    torch.testing.assert_close(net.features[21].weight, state["features.21.weight"])
    # a random init from a seed is reproducible, and another seed gives other weights
    a, b, c = random_vgg(seed=1), random_vgg(seed=1), random_vgg(seed=2)
    torch.testing.assert_close(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    with pytest.raises(ValueError, match="missing.pth"):
        load_perceptual_net(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_perceptual_net(str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="not found"):
        load_perceptual_net(kind="vgg16-imagenet")


@pytest.mark.parametrize("norm, norm_type", [("in", torch.nn.InstanceNorm2d), ("bn", None), ("sn", None)])
def test_transformer_net_architecture(norm, norm_type):
    import sn

    net = TransformerNet(norm)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    # 9x9 stem, two stride-2 3x3, 5 residual blocks of two 3x3, two upsample 3x3, 9x9 output
    assert [c.kernel_size[0] for c in convs] == [9, 3, 3] + [3] * 10 + [3, 3, 9]
    assert [c.stride[0] for c in convs] == [1, 2, 2] + [1] * 13
    assert [c.out_channels for c in convs] == [32, 64, 128] + [128] * 10 + [64, 32, 3]
    pads = [m for m in net.modules() if isinstance(m, torch.nn.ReflectionPad2d)]
    assert len(pads) == len(convs)
    expected = type(sn.make_norm(norm, 8)) if norm_type is None else norm_type
    norms = [m for m in net.modules() if isinstance(m, expected)]
    assert len(norms) == 15  # every conv but the last
    assert isinstance(net.up[-1].norm, torch.nn.Identity)
    x = torch.rand(2, 3, 24, 32)
    assert net(x).shape == x.shape
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="at least 16x16"):
        net.stylize(torch.rand(1, 3, 12, 40))


def test_stylize_any_size_equals_padded_forward():
    torch.manual_seed(0)
    net = TransformerNet("in", width=8, num_res_blocks=1).eval()
    x = torch.rand(1, 3, 37, 50)
    out = net.stylize(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="reflect")
    torch.testing.assert_close(out, net(padded)[..., :37, :50].clamp(0, 1))


# --- data --------------------------------------------------------------------------------------------
def test_content_crops_are_a_function_of_seed_and_index():
    a, b = ContentCrops(32, 10, seed=1), ContentCrops(32, 10, seed=1)
    torch.testing.assert_close(a[3], b[3])
    assert a[3].shape == (3, 32, 32) and 0 <= a[3].min() and a[3].max() <= 1
    assert not torch.equal(a[3], a[4])
    assert not torch.equal(a[3], ContentCrops(32, 10, seed=2)[3])
    assert not torch.equal(a[3], ContentCrops(32, 10, seed=1, stream=1)[3])


def test_content_dir_crops_visit_every_image_in_a_seeded_order(tmp_path):
    from tasks.stylize.images import list_images

    folder = tmp_path / "coco"
    (folder / "sub").mkdir(parents=True)
    colours = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    for i, c in enumerate(colours):  # flat images of distinct colours and sizes
        save_png(torch.tensor(c).view(3, 1, 1).expand(3, 20 + 10 * i, 40), folder / ("sub" if i else "") / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(folder)] == ["0.png", "1.png", "2.png"]
    crops = ContentCrops(16, 6, seed=0, content_dir=str(folder))
    seen = [tuple(round(v, 3) for v in crops[i][:, 0, 0].tolist()) for i in range(6)]
    assert sorted(seen[:3]) == sorted(colours) and sorted(seen[3:]) == sorted(colours)  # each once per pass
    assert crops[0].shape == (3, 16, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        list_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="is not a directory"):
        list_images(tmp_path / "nowhere")


def test_epoch_sampler_continues_the_stream_and_splits_it_over_processes():
    s = EpochSampler(4)
    s.set_epoch(2)
    assert list(s) == [8, 9, 10, 11]
    ranks = [EpochSampler(3, r, 2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    assert sorted(i for r in ranks for i in r) == list(range(6, 12))


def test_style_image_errors(tmp_path):
    with pytest.raises(ValueError, match="nope.png"):
        load_style(str(tmp_path / "nope.png"), 32)
    bad = tmp_path / "bad.png"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError, match="cannot read style image.*bad.png"):
        load_style(str(bad), 32)
    with pytest.raises(ValueError, match="neither a bundled style"):
        load_style("vangogh", 32)
    style = load_style("ihc", 40)
    assert style.shape[:2] == (1, 3) and min(style.shape[-2:]) == 40


# --- the command line -------------------------------------------------------------------------------
def run_cli(args, env_home, timeout=300, env=None):
    env = {**os.environ, "TORCH_HOME": str(env_home), "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "tasks.stylize", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def options(values):
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """in, bn and sn through the real command line, as an experiment of a temporary experiments file."""
    tmp = tmp_path_factory.mktemp("stylize")
    exp = {"experiments": {"tiny": {"task": "stylize", **TINY, "root": str(tmp / "runs"),
                                    "grid": {"norm": list(NORMS)}}}}
    (tmp / "experiments.yaml").write_text(yaml.safe_dump(exp))
    proc = run_cli(["--experiment", "tiny", "--experiments-file", str(tmp / "experiments.yaml")], tmp / "home")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RANDOM MULTI-SCALE FILTERS" in proc.stderr
    return tmp, tmp / "runs" / "tiny"


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_cli_trains_logs_and_records_the_perceptual_net(quick_runs, norm):
    _, exp_dir = quick_runs
    run = exp_dir / f"{norm}_s0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert config["task"] == "stylize" and config["norm"] == norm and config["batch"] == "1x4"
    assert config["perceptual_net"] == summary["final"]["perceptual_net"] == "random-multiscale"
    # the network's default layers and weights are resolved into the config
    assert (config["content_layer"], config["content_weight"], config["style_weight"]) == ("k3,k5", 1.0, 3.0)
    assert summary["status"] == "finished" and summary["final"]["steps"] == 10
    rows = read_csv(run / "metrics.csv")
    total = [float(r["value"]) for r in rows if r["name"] == "total_loss" and r["split"] == "train"]
    assert [int(r["step"]) for r in rows if r["name"] == "total_loss"] == list(range(1, 11))
    assert {r["name"] for r in rows} == {"content_loss", "style_loss", "tv_loss", "total_loss"}
    assert np.mean(total[-3:]) < 0.7 * np.mean(total[:3]), total
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["step_000005.png", "step_000010_final.png"]
    grid = read_image(run / "samples" / "step_000010_final.png")
    assert grid.shape == (3, 2 * (32 + 2) + 2, 5 * (32 + 2) + 2)  # style + 4 contents, 2 rows
    assert (run / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_cli_weights_of_sn_only(quick_runs):
    _, exp_dir = quick_runs
    for norm in ("in", "bn"):
        path = exp_dir / f"{norm}_s0" / "weights.csv"
        assert not path.exists() or not read_csv(path)
    rows = read_csv(exp_dir / "sn_s0" / "weights.csv")
    assert sorted({int(r["step"]) for r in rows}) == [0, 5, 10]
    assert {r["op"] for r in rows} == {"in", "ln", "bn"} and {r["stat"] for r in rows} == {"mean", "var"}
    layers = {r["layer"] for r in rows}
    assert len(layers) == 3 + 2 * 2 + 2  # down convs, residual convs, up convs
    at_end = [r for r in rows if r["step"] == "10"]
    for layer in layers:
        for stat in ("mean", "var"):
            ws = [float(r["weight"]) for r in at_end if r["layer"] == layer and r["stat"] == stat]
            assert sum(ws) == pytest.approx(1.0, abs=1e-6)
    # training moved the importance weights away from the uniform start
    assert any(abs(float(r["weight"]) - 1 / 3) > 1e-4 for r in at_end)


@pytest.mark.slow
def test_stylize_command_writes_an_image_of_the_input_size(quick_runs):
    tmp, exp_dir = quick_runs
    image = torch.rand(3, 45, 70)
    save_png(image, tmp / "input.png")
    out = tmp / "out.png"
    proc = run_cli(["apply", str(tmp / "input.png"), "--checkpoint", str(exp_dir / "sn_s0"),
                    "--out", str(out)], tmp / "home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_image(out)
    assert result.shape == (3, 45, 70)
    # the same as applying the checkpoint's network in this process
    net = load_network(exp_dir / "sn_s0" / "checkpoints" / "last.ckpt")
    expected = net.stylize(read_image(tmp / "input.png")[None])[0]
    assert (result - expected).abs().max() <= 1 / 255 + 1e-6
    bad = run_cli(["apply", str(tmp / "missing.png"), "--checkpoint", str(exp_dir / "sn_s0"),
                   "--out", str(out)], tmp / "home")
    assert bad.returncode == 2 and "missing.png" in bad.stderr
    no_out = run_cli(["apply", str(tmp / "input.png"), "--checkpoint", str(exp_dir / "sn_s0")], tmp / "home")
    assert no_out.returncode == 2 and "--out" in no_out.stderr


@pytest.mark.slow
def test_resume_after_a_crash_continues_the_same_run_without_duplicate_rows(quick_runs):
    tmp, exp_dir = quick_runs
    root = tmp / "resume"
    args = ["--norm", "sn", "--root", str(root), *options(TINY)]
    killed = run_cli(args, tmp / "home", env={KILL_ENV: "7"})
    assert killed.returncode != 0
    run = root / "stylize-default" / "sn_s0"
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    resumed = run_cli([*args, "--resume"], tmp / "home")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    rows = read_csv(run / "metrics.csv")
    keys = [(r["step"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys))
    # same crops in the same order and the same optimizer state: the uninterrupted run's curve
    got = {int(r["step"]): float(r["value"]) for r in rows if r["name"] == "total_loss"}
    want = {int(r["step"]): float(r["value"]) for r in read_csv(exp_dir / "sn_s0" / "metrics.csv")
            if r["name"] == "total_loss"}
    assert sorted(got) == list(range(1, 11))
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-4), step


def test_importance_logits_learn_at_their_own_rate():
    from tasks.stylize.config import StylizeConfig
    from tasks.stylize.module import StylizeModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the random-init VGG16 fallback's warning)
        module = StylizeModule(StylizeConfig(norm="sn", width=8, res_blocks=1, lr=2e-3, logit_lr_scale=25.0), 1)
    groups = module.configure_optimizers().param_groups
    logits = {id(m.mean_weight) for _, m in sn.switch_norm_layers(module.net)}
    (fast,) = [g for g in groups if {id(p) for p in g["params"]} & logits]
    assert fast["lr"] == pytest.approx(0.05) and {id(p) for p in fast["params"]} >= logits
    assert all(g["lr"] == pytest.approx(2e-3) for g in groups if g is not fast)


def test_texture_synthesis_matches_the_style_statistics_of_the_multiscale_net(tmp_path, capsys):
    from tasks.stylize.synthesize import main, synthesize

    style = load_style("ihc", 32)[..., :32, :32]
    image, first, last = synthesize(multiscale(), style, steps=80, lr=0.05, seed=0)
    assert image.shape == style.shape and 0 <= image.min() and image.max() <= 1
    assert last < 0.1 * first, (first, last)
    # the colours follow: the mean colour moves from the grey start (0.5) to the style's
    start_gap = (style.mean(dim=(0, 2, 3)) - 0.5).norm()
    end_gap = (style.mean(dim=(0, 2, 3)) - image.mean(dim=(0, 2, 3))).norm()
    assert end_gap < 0.5 * start_gap, (start_gap, end_gap)
    # the command: one PNG (the style, then one texture per network) and a table
    out = tmp_path / "t.png"
    main(["--size", "24", "--steps", "2", "--out", str(out)])
    assert read_image(out).shape == (3, 24, 3 * 24)
    printed = capsys.readouterr().out
    assert "vgg16-random-init" in printed and "random-multiscale" in printed
    with pytest.raises(SystemExit):
        main(["--size", "16"])
