"""tasks.classify: batch-setting semantics, and the real command line end to end on tiny data."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sn
import torch
import yaml

from tasks.classify.config import ClassifyConfig
from tasks.classify.model import build_model
from tasks.classify.module import ClassifyModule, lr_factor
from tasks.classify.task import TASK
from tasks.common.cli import configs_from_args, main
from tasks.common.data import DEBIAN_FASHION_MNIST
from tasks.common.loggers import KILL_ENV

REPO = Path(__file__).resolve().parents[1]
HAVE_FMNIST = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()
# a few hundred real Fashion-MNIST images when the Debian package is here, synthetic otherwise
TINY_DATA = (["--dataset", "fashion-mnist", "--data-root", str(Path.home() / ".cache/switchnorm/data")]
             if HAVE_FMNIST else ["--dataset", "synthetic"])
TINY = TINY_DATA + ["--train-subset", "640", "--val-size", "256", "--test-subset", "512", "--depth", "8",
                    "--width", "8", "--batch", "4x8", "--ref-batch", "32", "--epochs", "3",
                    "--warmup-epochs", "0",
                    "--update-stats-batches", "8", "--log-every-n-steps", "4", "--weights-every-n-steps", "8",
                    "--eval-batch-size", "512", "--progress-bar", "false", "--threads", "1"]
STEPS_PER_EPOCH = 640 // 32


def run_cli(*args, check=True, env=None):
    """``python -m tasks.classify ARGS`` in a subprocess (as a user would run it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tasks.classify", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# --- batch settings GxS -------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["bn", "sn"])
def test_gxs_statistics_are_computed_per_device_chunk(norm):
    """With G devices, training on G*S images = G independent passes over S images each."""
    torch.manual_seed(0)
    cfg = ClassifyConfig(norm=norm, batch="4x2", depth=8, width=8)
    module = ClassifyModule(cfg, num_classes=10, in_channels=1)
    assert cfg.batch_size == 8 and cfg.num_devices == 4 and cfg.lr == pytest.approx(cfg.base_lr * 8 / 256)
    one = build_model("resnet", norm, 1, 10, 1, depth=8, width=8)  # same net, one device
    one.load_state_dict(module.net.state_dict())
    module.net.train(), one.train()
    x = torch.randn(8, 1, 28, 28)
    chunked = torch.cat([one(chunk) for chunk in x.split(2)])  # (4 chunks of 2) -> (8, 10)
    torch.testing.assert_close(module.net(x), chunked, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(one(x), chunked, atol=1e-3)  # whole-batch statistics would differ


def test_gxs_chunks_match_torch_batchnorm_per_chunk():
    torch.manual_seed(0)
    net = build_model("resnet", "bn", 4, 10, 1, depth=8, width=8).train()
    x = torch.randn(8, 1, 28, 28)
    h = net.stem[0](x)
    ref = torch.cat([torch.nn.functional.batch_norm(c.double(), None, None, training=True, eps=1e-5)
                     for c in h.split(2)]).float()  # gamma 1, beta 0 at init
    torch.testing.assert_close(net.stem[1](h), ref, rtol=1e-4, atol=1e-4)


def test_learning_rate_schedules():
    assert lr_factor(0, 100, 0, "cosine", ()) == 1.0
    assert lr_factor(50, 100, 0, "cosine", ()) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, "cosine", ()) == pytest.approx(0.0)
    assert [lr_factor(s, 100, 0, "step", (0.3, 0.6)) for s in (0, 29, 30, 60, 99)] == pytest.approx(
        [1, 1, 0.1, 0.01, 0.01])
    assert lr_factor(4, 100, 10, "cosine", ()) == pytest.approx(0.5)


def test_importance_logits_are_exempt_from_weight_decay():
    module = ClassifyModule(ClassifyConfig(norm="sn", depth=8, width=8), 10, 1)
    groups = sn.param_groups(module.net, 1e-4)
    exempt = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    logits = {id(m.mean_weight) for _, m in sn.switch_norm_layers(module.net)}
    assert logits and logits <= exempt


def test_no_argument_run_is_a_short_offline_fashion_mnist_run():
    _, (cfg,), _ = configs_from_args(TASK, [])
    assert (cfg.experiment, cfg.run, cfg.dataset, cfg.model, cfg.norm) == (
        "classify-default", "sn_8x16_s0", "fashion-mnist", "resnet", "sn")
    assert not cfg.download and cfg.accelerator == "cpu" and cfg.devices == 1
    assert cfg.eval_stats == "batch_average" and cfg.momentum == 0.9 and cfg.weight_decay == 1e-4


# --- errors (the table of bad options of every task is in test_tasks_common.py) --------------------
def test_bad_input_through_the_real_command_line():
    proc = run_cli("--norm", "nope", check=False)
    assert proc.returncode == 2 and "unknown norm 'nope'" in proc.stderr and "known norms" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_key_in_experiments_yaml(tmp_path):
    (tmp_path / "e.yaml").write_text("experiments:\n  x: {task: classify, lr_decay: 3}\n")
    assert main(TASK, ["--experiment", "x", "--experiments-file", str(tmp_path / "e.yaml")]) == 2


# --- end to end -----------------------------------------------------------------------------------
def _check_run_dir(path: Path, norm: str):
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    for key in ("task", "experiment", "run", "norm", "seed", "versions", "batch", "eval_stats", "dataset",
                "model", "epochs"):
        assert key in cfg, key
    assert (cfg["task"], cfg["experiment"], cfg["norm"], cfg["batch"]) == ("classify", "classify-default", norm, "4x8")
    assert set(cfg["versions"]) == {"torch", "torchvision", "lightning", "python"}
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["run"] == path.name
    final = summary["final"]
    metrics = rows(path / "metrics.csv")
    names = {(r["split"], r["name"]) for r in metrics}
    assert names == {("train", n) for n in ("loss", "acc", "lr", "throughput")} | {
        (s, n) for s in ("val", "test") for n in ("loss", "acc")}
    keys = Counter((r["step"], r["split"], r["name"]) for r in metrics)
    assert max(keys.values()) == 1  # no duplicate rows
    val_acc = [float(r["value"]) for r in metrics if (r["split"], r["name"]) == ("val", "acc")]
    assert len(val_acc) == 3 and final["best_val_acc"] == pytest.approx(max(val_acc))
    test_acc = [float(r["value"]) for r in metrics if (r["split"], r["name"]) == ("test", "acc")]
    assert test_acc == [pytest.approx(final["test_acc"])]
    assert final["test_acc"] > 0.3, final  # 10 classes: chance is 0.1
    lr = {int(r["step"]): float(r["value"]) for r in metrics if r["name"] == "lr"}
    total = 3 * STEPS_PER_EPOCH  # logged after step s, the lr used for step s (index s - 1)
    assert lr[4] == pytest.approx(0.1 * 32 / 8 * 0.5 * (1 + math.cos(math.pi * 3 / total)), rel=1e-5)
    assert (path / "checkpoints" / "last.ckpt").exists()
    return final, metrics


def _check_weights(path: Path, resumed_at=()):
    """weights.csv: every SN layer, softmax-normalised, ending at the checkpoint's logits."""
    weights = rows(path / "weights.csv")
    steps = sorted({int(r["step"]) for r in weights})
    # every 8 steps, at the start and the end of training (and where a resumed attempt started)
    assert steps == sorted({0, 8, 16, 24, 32, 40, 48, 56, 60, *resumed_at})
    assert max(Counter((r["step"], r["layer"], r["stat"], r["op"]) for r in weights).values()) == 1
    sums = Counter()
    for r in weights:
        sums[(r["step"], r["layer"], r["stat"])] += float(r["weight"])
    assert all(abs(v - 1) < 1e-6 for v in sums.values())
    state = torch.load(path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    layers = sorted({k[len("net."):-len(".mean_weight")] for k in state if k.endswith(".mean_weight")})
    assert sorted({r["layer"] for r in weights}) == layers and "stem.1" in layers
    for r in weights:
        if int(r["step"]) == 60 and r["layer"] == "layers.0.bn2":
            logits = state[f"net.layers.0.bn2.{r['stat']}_weight"]
            expected = torch.softmax(logits.double(), 0)[["in", "ln", "bn"].index(r["op"])].item()
            assert float(r["weight"]) == pytest.approx(expected, abs=1e-6)
    first = {(r["layer"], r["stat"], r["op"]): float(r["weight"]) for r in weights if r["step"] == "0"}
    assert all(w == pytest.approx(1 / 3) for w in first.values())  # logits initialised to 1


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["sn", "bn"])
def test_end_to_end_run(norm, tmp_path):
    proc = run_cli(*TINY, "--norm", norm, "--root", tmp_path)
    path = tmp_path / "classify-default" / f"{norm}_4x8_s0"
    assert f"run directory: {path}" in proc.stdout and "test accuracy" in proc.stdout
    final, _ = _check_run_dir(path, norm)
    assert final["steps"] == 3 * STEPS_PER_EPOCH
    if norm == "sn":
        _check_weights(path)
    else:  # no SN layer, no importance weights
        assert not (path / "weights.csv").exists()


@pytest.mark.slow
def test_a_changed_config_never_reports_the_old_result(tmp_path):
    """``python -m tasks.classify`` then ``... --epochs 2``: refused, naming epochs and the ways on."""
    base = [a for i, a in enumerate(TINY) if "--epochs" not in TINY[max(i - 1, 0):i + 1]] + ["--root", tmp_path]
    one_epoch = base + ["--epochs", "1"]
    first = run_cli(*one_epoch)
    path = tmp_path / "classify-default" / "sn_4x8_s0"
    stamp = (path / "summary.json").read_text()
    test_acc = json.loads(stamp)["final"]["test_acc"]
    proc = run_cli(*base, "--epochs", "2", check=False)
    assert proc.returncode == 2
    assert "epochs: 1 there, 2 requested" in proc.stderr
    assert "--overwrite" in proc.stderr and "--run NAME" in proc.stderr
    assert "test accuracy" not in proc.stdout and f"{test_acc:.4f}" not in proc.stdout + proc.stderr
    assert (path / "summary.json").read_text() == stamp  # the old run is untouched
    # a key that cannot change the result: the finished run is reused and its result reported
    proc = run_cli(*one_epoch, "--wandb-project", "elsewhere")
    assert "skipping finished run" in proc.stdout and f"{test_acc:12.4f}" in proc.stdout
    # --run NAME: the new config gets a directory of its own
    proc = run_cli(*one_epoch, "--base-lr", "0.2", "--run", "lr02")
    other = json.loads((tmp_path / "classify-default" / "lr02" / "summary.json").read_text())
    assert other["status"] == "finished" and "test accuracy" in proc.stdout
    assert yaml.safe_load((tmp_path / "classify-default" / "lr02" / "config.yaml").read_text())["base_lr"] == 0.2
    assert (path / "summary.json").read_text() == stamp and "test accuracy" in first.stdout


@pytest.mark.slow
def test_resume_after_a_crash_continues_without_duplicate_rows(tmp_path):
    args = [*TINY, "--norm", "sn", "--root", tmp_path]
    path = tmp_path / "classify-default" / "sn_4x8_s0"
    proc = run_cli(*args, check=False, env={KILL_ENV: "30"})  # dies in epoch 2, checkpoint at step 20
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert json.loads((path / "summary.json").read_text())["status"] == "running"
    before = rows(path / "metrics.csv")
    assert max(int(r["step"]) for r in before) == 28  # rows of steps 24 and 28 were logged after it
    killed = json.loads((path / "summary.json").read_text())
    started = killed["started"]
    assert killed["wall_time_s"] > 0  # the heartbeat at the end of epoch 1
    # resuming under another config is refused before anything is touched
    proc = run_cli(*args, "--resume", "--base-lr", "0.2", check=False)
    assert proc.returncode == 2 and "base_lr: 0.4 there, 0.2 requested" in proc.stderr
    assert rows(path / "metrics.csv") == before
    proc = run_cli(*args, "--resume")
    assert "resuming" in proc.stdout and "from step 20" in proc.stdout
    final, after = _check_run_dir(path, "sn")
    resumed = json.loads((path / "summary.json").read_text())
    assert resumed["started"] == started and resumed["wall_time_s"] > killed["wall_time_s"]
    assert final["steps"] == 3 * STEPS_PER_EPOCH  # continued from step 20, not from 0
    train_steps = sorted(int(r["step"]) for r in after if (r["split"], r["name"]) == ("train", "loss"))
    assert train_steps == list(range(4, 61, 4))  # every 4th step exactly once
    kept = [r for r in before if int(r["step"]) <= 20]
    assert after[:len(kept)] == kept  # rows up to the checkpoint are untouched
    _check_weights(path, resumed_at=[20])
    # finished now: running it again skips it
    proc = run_cli(*args, "--resume")
    assert "skipping finished run" in proc.stdout


@pytest.mark.slow
def test_grid_marks_failed_runs_and_skips_finished_ones(tmp_path):
    exp = {"experiments": {"mini": {"task": "classify", "run": "{dataset}_{norm}", "data_root": str(tmp_path / "no"),
                                    "grid": {"dataset": ["cifar10", "synthetic"]}}}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    tiny = [a for a in TINY if a not in TINY_DATA]
    args = ["--experiment", "mini", "--experiments-file", tmp_path / "e.yaml", "--root", tmp_path, *tiny]
    proc = run_cli(*args, check=False)
    assert proc.returncode == 1  # one run failed
    failed = json.loads((tmp_path / "mini" / "cifar10_sn" / "summary.json").read_text())
    assert failed["status"] == "failed" and "CIFAR-10 not found" in failed["error"]
    done = tmp_path / "mini" / "synthetic_sn" / "summary.json"
    assert json.loads(done.read_text())["status"] == "finished"
    assert "2 runs: 1 ok, 1 failed" in proc.stdout
    stamp = done.read_text()
    proc = run_cli(*args, check=False)
    assert "skipping finished run" in proc.stdout and done.read_text() == stamp
    assert "[1/2] mini/cifar10_sn" in proc.stdout and "CIFAR-10 not found" in proc.stderr  # retried


@pytest.mark.slow
def test_wandb_logging_is_offline_and_carries_metrics_and_weights(tmp_path):
    one_epoch = [a if TINY[i - 1] != "--epochs" else "1" for i, a in enumerate(TINY)]
    proc = run_cli(*one_epoch, "--root", tmp_path, "--wandb")  # run_cli sets WANDB_MODE=offline
    runs = list((tmp_path / "classify-default" / "sn_4x8_s0" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, proc.stdout[-2000:]
    data = runs[0].read_bytes()  # protobuf records keep the metric names as plain bytes
    for key in (b"train/loss", b"val/acc", b"test/acc", b"weights/stem.1/mean/in", b"weights/layers.0.bn1/var/bn"):
        assert key in data, key
