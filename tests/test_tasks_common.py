"""tasks/common: configs and grids, the command line, run directories, task lookup, data.

Run identity and the grid runner: test_run_identity.py.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import pytest
import torch

from runformat import read_rows
from tasks.common import config as C
from tasks.common import data as D
from tasks.common.cli import configs_from_args, main
from tasks.common.rundir import RunDir
from tasks.common.runner import get_task
from toy_task import TOY, ToyConfig, row

REPO = Path(__file__).resolve().parents[1]



# --- batch settings ---------------------------------------------------------------------------
def test_batch_layout_splits_devices_over_processes():
    assert C.batch_layout("8x2") == (16, 8)
    assert C.batch_layout("8x2", world_size=2) == (8, 4)
    assert C.batch_layout("8x2", world_size=8) == (2, 1)
    with pytest.raises(ValueError, match="3 processes"):
        C.batch_layout("8x2", world_size=3)


# --- config values ----------------------------------------------------------------------------
def test_coerce_fields_converts_strings_and_yaml_values():
    out = C.coerce_fields(ToyConfig, {"lr": "0.5", "steps": "none", "milestones": "0.3,0.6", "fail": "yes",
                                      "seed": "3", "devices": "2", "epochs": 4}, "test")
    assert out == {"lr": 0.5, "steps": None, "milestones": (0.3, 0.6), "fail": True, "seed": 3, "devices": 2,
                   "epochs": 4}
    assert C.coerce_fields(ToyConfig, {"steps": 7, "devices": "auto", "milestones": [0.1]}, "t") == {
        "steps": 7, "devices": "auto", "milestones": (0.1,)}


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown config key 'lrr' in the command line \(did you mean 'lr'\?\)"):
        C.coerce_fields(ToyConfig, {"lrr": 1}, "the command line")


@pytest.mark.parametrize("key, value", [("seed", "three"), ("seed", 1.5), ("fail", "maybe"), ("lr", "fast"),
                                        ("seed", True)])
def test_bad_value_types_name_the_key(key, value):
    with pytest.raises(TypeError, match=f"config key '{key}'"):
        C.coerce_fields(ToyConfig, {key: value}, "t")


def test_command_line_takes_flags_equals_underscores_and_none():
    _, (cfg,), _ = configs_from_args(TOY, ["--max-steps", "-1", "--wandb", "--wandb_project=p_x", "--resume",
                                           "--steps", "none", "--milestones", "0.2,0.4", "--fail=false"])
    assert (cfg.max_steps, cfg.wandb, cfg.wandb_project, cfg.resume, cfg.steps, cfg.milestones, cfg.fail) == (
        -1, True, "p_x", True, None, (0.2, 0.4), False)
    assert cfg.experiment == "toy-default" and cfg.run == "sn_0.1"
    with pytest.raises(ValueError, match="given twice"):
        configs_from_args(TOY, ["--lr", "1", "--lr", "2"])
    with pytest.raises(ValueError, match="unexpected argument 'stray'"):
        configs_from_args(TOY, ["stray", "--lr", "1"])
    with pytest.raises(ValueError, match=r"unknown config key 'lrr' in the command line \(did you mean 'lr'\?\)"):
        configs_from_args(TOY, ["--lrr", "1"])
    with pytest.raises(ValueError, match="'task' cannot be set"):
        configs_from_args(TOY, ["--task", "classify"])


def test_help_comes_from_the_field_metadata_and_hides_test_aids(capsys):
    assert main(get_task("classify"), ["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the help is wrapped to the terminal's width
    assert "--epochs N training epochs (>= 1; default: 2)" in out
    assert "one of: fashion-mnist, cifar10, imagefolder, synthetic" in out
    assert "--train-subset N|none" in out and "(seeded random subset; none: all) (>= 1; default: none)" in out
    assert "kill" not in out  # the crash simulation of the tests is an environment variable
    assert main(get_task("enas"), ["--help"]) == 0
    assert "--norm TEXT, --controller-norm TEXT" in " ".join(capsys.readouterr().out.split())


BAD_INPUT = [  # (task, options, what the error message says)
    ("classify", ["--norm", "batchnorm"], "unknown norm 'batchnorm'"),
    ("classify", ["--dataset", "mnist"], "unknown dataset 'mnist'"),
    ("classify", ["--batch", "8by2"], "bad batch setting '8by2'"),
    ("classify", ["--batch", "0x2"], "bad batch setting '0x2'"),
    ("classify", ["--epoch", "3"], "unknown config key 'epoch'"),
    ("classify", ["--epochs", "three"], "config key 'epochs'"),
    ("classify", ["--experiment", "no-such-experiment"], "unknown experiment 'no-such-experiment'"),
    ("classify", ["--model", "vgg"], "unknown model 'vgg'"),
    ("classify", ["--eval-stats", "precise"], "unknown eval_stats 'precise'"),
    ("stylize", ["--norm", "xn"], "unknown norm 'xn'"),
    ("stylize", ["--image-size", "30"], "image_size must be a multiple of 4"),
    ("stylize", ["--image-size", "8"], "image_size must be a multiple of 4 and >= 16"),
    ("stylize", ["--style", "/no/such/style.jpg"], "/no/such/style.jpg"),
    ("stylize", ["--batch", "4"], "bad batch setting"),
    ("enas", ["--controller-norm", "bn"], "unknown controller norm 'bn'"),
    ("enas", ["--sn-stats", "ln,bn"], "bn"),
    ("enas", ["--controller-groups", "7"], "num_groups=7"),
    ("enas", ["--devices", "3"], "child_batch=64"),  # the global batch must split over the processes
    ("enas", ["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    ("enas", ["--eval-size", "9000"], "eval_size=9000"),
    ("enas", ["--child-lr", "0"], "child_lr"),
    ("enas", ["--controler-lr", "0.1"], "controler_lr"),
]


@pytest.mark.parametrize("task, args, message", BAD_INPUT)
def test_bad_input_gives_a_clear_error(task, args, message, capsys):
    assert main(get_task(task), [*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_bounds_from_metadata_are_checked():
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        C.resolve_runs(ToyConfig, {"epochs": 0})
    with pytest.raises(ValueError, match="threads must be >= 1 or none, got 0"):
        C.resolve_runs(ToyConfig, {"threads": 0})
    with pytest.raises(ValueError, match="lr must be > 0, got -1.0"):
        C.resolve_runs(ToyConfig, {"lr": -1})
    with pytest.raises(ValueError, match="unknown mode 'fast'; known: a, b"):
        C.resolve_runs(ToyConfig, {"mode": "fast"})
    assert C.resolve_runs(ToyConfig, {"threads": None, "mode": "b"})[0].mode == "b"


# --- grids ------------------------------------------------------------------------------------
def test_expand_grid_product_and_union():
    assert C.expand_grid(None) == [{}]
    assert C.expand_grid({"a": [1, 2], "b": ["x", "y", "z"]}) == [
        {"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    assert C.expand_grid([{"a": [1, 2], "b": "x"}, {"a": [3]}]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}, {"a": 3}]
    with pytest.raises(ValueError, match="grid must be"):
        C.expand_grid("a")


def test_resolve_runs_precedence_and_override_replaces_axis():
    runs = C.resolve_runs(ToyConfig, {"lr": 0.2, "epochs": 3}, {"norm": ["bn", "gn"], "lr": [0.1, 0.3]})
    assert [(r.norm, r.lr, r.epochs) for r in runs] == [("bn", 0.1, 3), ("bn", 0.3, 3), ("gn", 0.1, 3), ("gn", 0.3, 3)]
    assert [r.run for r in runs] == ["bn_0.1", "bn_0.3", "gn_0.1", "gn_0.3"]
    runs = C.resolve_runs(ToyConfig, {}, {"norm": ["bn", "gn"], "lr": [0.1, 0.3]}, {"norm": "sn", "epochs": 2})
    assert [(r.norm, r.lr, r.epochs) for r in runs] == [("sn", 0.1, 2), ("sn", 0.3, 2)]


def test_resolve_runs_rejects_colliding_run_names_and_unknown_grid_keys():
    with pytest.raises(ValueError, match="share the run name"):
        C.resolve_runs(ToyConfig, {}, {"seed": [0, 1]})
    with pytest.raises(ValueError, match="unknown config key 'nrom'"):
        C.resolve_runs(ToyConfig, {}, {"nrom": ["bn"]})
    with pytest.raises(ValueError, match="bad run name template"):
        C.resolve_runs(ToyConfig, {"run": "{nope}"})


def test_every_experiment_in_the_repo_resolves():
    exps = C.load_experiments(REPO / "experiments.yaml")
    assert {"table2-quick", "table2"} <= set(exps)
    for name, exp in exps.items():
        task = get_task(exp["task"])
        _, configs, _ = configs_from_args(task, ["--experiment", name, "--experiments-file",
                                                 str(REPO / "experiments.yaml")])
        assert configs and all(c.experiment == name and c.task == exp["task"] for c in configs)


def test_table2_quick_grid_matches_the_paper_settings():
    task = get_task("classify")
    _, configs, _ = configs_from_args(task, ["--experiment", "table2-quick"])
    got = {(c.norm, c.batch) for c in configs}
    want = {(n, b) for n in ("bn", "gn", "sn") for b in ("8x32", "8x8", "8x2", "1x16")}
    want |= {("bn", "8x1"), ("gn", "8x1"), ("sn-inln", "8x1")}
    assert got == want and len(configs) == 15


def test_load_experiments_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load_experiments(tmp_path / "missing.yaml")
    (tmp_path / "e.yaml").write_text("experiments:\n  x: {epochs: 1}\n")
    with pytest.raises(ValueError, match="'task'"):
        C.load_experiments(tmp_path / "e.yaml")


# --- CSV logs and run directories -------------------------------------------------------------
def test_rundir_summary_lifecycle_and_truncation(tmp_path):
    rd = RunDir(tmp_path, "exp", "r1")
    rd.write_config({"task": "toy", "b": [1, 2]})
    rd.start("toy")
    s = json.loads(rd.summary_path.read_text())
    assert s["status"] == "running" and s["format_version"] == 1 and s["final"] == {} and s["ended"] is None
    for step in (1, 2, 3, 4):
        rd.metrics.append(row(step))
        rd.weights.append({"step": step, "epoch": 0, "layer": "l", "stat": "mean", "op": "bn", "weight": 0.5})
    assert rd.truncate_after(2) == {"metrics": 2, "weights": 2}
    assert [r["step"] for r in read_rows(rd.path / "metrics.csv")] == ["1", "2"]
    assert rd.metrics.append(row(3, value=7.0))  # after truncation step 3 may be logged again
    rd.finish({"acc": 0.5})
    s = rd.read_summary()
    assert s["status"] == "finished" and s["final"] == {"acc": 0.5} and s["wall_time_s"] >= 0
    assert set(s) >= {"task", "experiment", "run", "started", "ended", "wall_time_s"}
    rd2 = RunDir(tmp_path, "exp", "r1")  # a resumed attempt keeps the start time
    rd2.start("toy")
    rd2.fail("boom")
    s2 = rd2.read_summary()
    assert s2["status"] == "failed" and s2["error"] == "boom" and s2["started"] == s["started"]
    assert [f for f in os.listdir(rd.path) if f.endswith(".tmp")] == []


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_rundir_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="bad run name"):
        RunDir(tmp_path, "exp", name)


# --- the grid runner --------------------------------------------------------------------------
def test_unknown_task_and_experiment(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nosuchtask'"):
        get_task("nosuchtask")
    (tmp_path / "e.yaml").write_text("experiments:\n  a: {task: classify}\n")
    with pytest.raises(ValueError, match="unknown experiment 'b'"):
        configs_from_args(get_task("classify"), ["--experiment", "b", "--experiments-file", str(tmp_path / "e.yaml")])


# --- data -------------------------------------------------------------------------------------
def test_split_indices_are_disjoint_and_seeded():
    a, b, rest = D.split_indices(100, [10, 20, None], seed=3)
    assert (len(a), len(b), len(rest)) == (10, 20, 70)
    assert sorted(torch.cat([a, b, rest]).tolist()) == list(range(100))
    assert torch.equal(D.split_indices(100, [10], seed=3)[0], a)
    assert not torch.equal(D.split_indices(100, [10], seed=4)[0], a)
    with pytest.raises(ValueError):
        D.split_indices(10, [8, 5])


def test_tensor_image_dataset_normalises_and_crops():
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4) * 17  # values 0..255
    ds = D.TensorImageDataset(img, torch.tensor([3]), mean=(0.5,), std=(0.25,))
    x, y = ds[0]
    assert y.item() == 3 and torch.allclose(x, (img[0].float() / 255 - 0.5) / 0.25)
    ds = D.TensorImageDataset(img, torch.tensor([3]), mean=(0.0,), std=(1.0,), pad=1)
    full = torch.nn.functional.pad(img[0].float() / 255, (1, 1, 1, 1))
    windows = [full[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
    for _ in range(10):  # every crop is one of the 9 shifted windows of the padded image
        x, _ = ds[0]
        assert x.shape == (1, 4, 4) and any(torch.equal(x, w) for w in windows)


def test_synthetic_images_are_deterministic_and_separable():
    x, y = D.synthetic_images(500, seed=1)
    x2, y2 = D.synthetic_images(500, seed=1)
    assert x.dtype == torch.uint8 and x.shape == (500, 1, 28, 28) and torch.equal(x, x2) and torch.equal(y, y2)
    assert set(y.tolist()) == set(range(10))
    # the power spectrum (phase-free) of each class is distinct: nearest class mean classifies
    xt, yt = D.synthetic_images(300, seed=2)
    spec = lambda t: torch.fft.rfft2(t.float().squeeze(1) / 255).abs().flatten(1)  # noqa: E731
    means = torch.stack([spec(x)[y == c].mean(0) for c in range(10)])
    acc = (torch.cdist(spec(xt), means).argmin(1) == yt).float().mean().item()
    assert acc > 0.9


def _idx(path, magic, dims, payload):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


def test_fashion_mnist_is_extracted_from_gz_files_into_our_cache(tmp_path, monkeypatch):
    src = tmp_path / "debian"
    src.mkdir()
    imgs = bytes((i * 7) % 256 for i in range(2 * 28 * 28))
    for prefix in ("train", "t10k"):
        _idx(src / f"{prefix}-images-idx3-ubyte.gz", 2051, (2, 28, 28), imgs)
        _idx(src / f"{prefix}-labels-idx1-ubyte.gz", 2049, (2,), bytes([9, 4]))
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", src)
    train, test = D.fashion_mnist(tmp_path / "cache")
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    assert train.targets.tolist() == [9, 4] and len(test) == 2
    assert torch.equal(train.data.flatten(), torch.tensor(list(imgs), dtype=torch.uint8))


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(D.DataMissing, match="apt-get install dataset-fashion-mnist.*--download"):
        D.fashion_mnist(tmp_path / "cache")
    with pytest.raises(D.DataMissing, match="CIFAR-10 not found.*--download"):
        D.cifar10(tmp_path / "cache")
    with pytest.raises(D.DataMissing, match="train/<class>"):
        D.image_folder(tmp_path)


@pytest.mark.skipif(not (D.DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_files(tmp_path):
    train, test = D.fashion_mnist(tmp_path)
    assert train.data.shape == (60000, 28, 28) and test.data.shape == (10000, 28, 28)
    # the first images of both splits are ankle boots (class 9), as in the dataset's README
    assert train.targets[0].item() == 9 and test.targets[0].item() == 9
    assert torch.bincount(train.targets).tolist() == [6000] * 10
