"""tasks/common: configs and grids, run-directory files, the grid runner, data helpers."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import struct
from pathlib import Path
from typing import Optional, Tuple

import pytest
import torch

from tasks.common import config as C
from tasks.common import data as D
from tasks.common.rundir import METRICS_HEADER, CsvLog, RunDir, read_rows
from tasks.common.runner import Task, configs_from_args, get_task, run_grid

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class ToyConfig(C.RunConfig):
    task: str = "toy"
    run: str = "{norm}_{lr}"
    lr: float = 0.1                 # a float key
    steps: Optional[int] = None     # an optional int
    milestones: Tuple[float, ...] = (0.5,)  # a tuple key
    fail: bool = False              # make the toy run raise


# --- batch settings ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [("8x32", (8, 32)), ("1x16", (1, 16)), ("8X1", (8, 1)), (" 2x3 ", (2, 3))])
def test_parse_batch(text, expected):
    assert C.parse_batch(text) == expected


@pytest.mark.parametrize("text", ["8*2", "0x4", "8x0", "x2", "8x", "abc", "8x2x1", "-1x2", "", "8.0x2"])
def test_parse_batch_rejects_bad_strings(text):
    with pytest.raises(ValueError, match="bad batch setting"):
        C.parse_batch(text)


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


def test_split_known_handles_flags_equals_and_dashes():
    values, pos = C.split_known(["--max-steps", "-1", "--wandb", "--data_root=/x", "--resume"])
    assert values == {"max_steps": "-1", "wandb": "true", "data_root": "/x", "resume": "true"} and pos == []
    values, pos = C.split_known(["stray", "--a", "1"])
    assert values == {"a": "1"} and pos == ["stray"]
    with pytest.raises(ValueError, match="given twice"):
        C.split_known(["--a", "1", "--a", "2"])


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
def _row(step, name="loss", value=1.0, split="train"):
    return {"step": step, "epoch": 0, "split": split, "name": name, "value": value}


def test_csvlog_appends_flushed_lines_and_skips_duplicate_keys(tmp_path):
    log = CsvLog(tmp_path / "m.csv", METRICS_HEADER, ("step", "split", "name"))
    assert log.append(_row(1, value=0.5)) and log.append(_row(1, "acc", 0.25))
    assert not log.append(_row(1, value=9.0))  # same (step, split, name)
    # flushed: another reader sees the rows before close
    assert (tmp_path / "m.csv").read_text() == "step,epoch,split,name,value\n1,0,train,loss,0.5\n1,0,train,acc,0.25\n"
    with pytest.raises(ValueError, match="lacks columns"):
        log.append({"step": 2})


def test_cut_last_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("step,epoch,split,name,value\n1,0,train,loss,0.5\n2,0,train,lo")  # killed mid-write
    assert read_rows(path) == [{"step": "1", "epoch": "0", "split": "train", "name": "loss", "value": "0.5"}]
    log = CsvLog(path, METRICS_HEADER, ("step", "split", "name"))
    log.append(_row(2, value=0.75))
    log.close()
    assert path.read_text() == "step,epoch,split,name,value\n1,0,train,loss,0.5\n2,0,train,loss,0.75\n"


def test_csvlog_rejects_a_foreign_header(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        CsvLog(tmp_path / "m.csv", METRICS_HEADER)


def test_rundir_summary_lifecycle_and_truncation(tmp_path):
    rd = RunDir(tmp_path, "exp", "r1")
    rd.write_config({"task": "toy", "b": [1, 2]})
    rd.start("toy")
    s = json.loads(rd.summary_path.read_text())
    assert s["status"] == "running" and s["format_version"] == 1 and s["final"] == {} and s["ended"] is None
    for step in (1, 2, 3, 4):
        rd.metrics.append(_row(step))
        rd.weights.append({"step": step, "epoch": 0, "layer": "l", "stat": "mean", "op": "bn", "weight": 0.5})
    assert rd.truncate_after(2) == {"metrics": 2, "weights": 2}
    assert [r["step"] for r in read_rows(rd.path / "metrics.csv")] == ["1", "2"]
    assert rd.metrics.append(_row(3, value=7.0))  # after truncation step 3 may be logged again
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
def _toy_train(cfg, rundir, ckpt_path):
    rundir.metrics.append(_row(1, "acc", cfg.lr, split="val"))
    if cfg.fail:
        raise RuntimeError(f"toy failure for lr={cfg.lr}")
    return {"acc": cfg.lr}


TOY = Task("toy", ToyConfig, _toy_train, report_keys=("acc",))


def test_run_grid_skips_finished_marks_failed_and_goes_on(tmp_path, capsys):
    grid = {"lr": [0.1, 0.2, 0.3]}
    configs = C.resolve_runs(ToyConfig, {"root": str(tmp_path), "experiment": "g"}, grid)
    configs[1].fail = True
    results = run_grid(TOY, configs)
    assert [r.status for r in results] == ["finished", "failed", "finished"]
    assert RunDir(tmp_path, "g", "sn_0.2").read_summary()["error"] == "RuntimeError: toy failure for lr=0.2"
    assert RunDir(tmp_path, "g", "sn_0.3").read_summary()["final"] == {"acc": 0.3}
    out = capsys.readouterr().out
    assert "3 runs: 2 ok, 1 failed" in out
    finished = RunDir(tmp_path, "g", "sn_0.1").summary_path.read_text()
    configs[1].fail = False
    results = run_grid(TOY, configs)  # rerun: finished runs skipped, the failed one retried
    assert [r.status for r in results] == ["skipped", "finished", "skipped"]
    assert RunDir(tmp_path, "g", "sn_0.1").summary_path.read_text() == finished
    assert read_rows(RunDir(tmp_path, "g", "sn_0.2").path / "metrics.csv")[0]["value"] == "0.2"
    assert "skipping finished run" in capsys.readouterr().out
    configs[2].milestones = (0.25,)  # a finished run with another config: skipped, with a warning
    assert run_grid(TOY, configs[2:])[0].status == "skipped"
    assert "finished with other values of: milestones" in capsys.readouterr().err
    configs[0].overwrite = True
    assert run_grid(TOY, configs[:1])[0].status == "finished"


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
