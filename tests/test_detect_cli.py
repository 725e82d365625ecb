"""tasks.detect through its real command line on tiny synthetic data: a run the analysis reads, AP
above chance after a short run, resume after a crash, clear errors."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from analysis.detect import ap_table, component_weights, list_predictions
from analysis.load import load_runs
from tasks.common.cli import main
from tasks.common.loggers import KILL_ENV
from tasks.detect.task import TASK

REPO = Path(__file__).resolve().parents[1]
# 16 training images, 2x2 (4 a step): 4 steps an epoch
TINY = ["--batch", "2x2", "--epochs", "3", "--fpn-channels", "16",
        "--head-channels", "16", "--box-fc", "32", "--box-convs", "2", "--mask-convs", "2",
        "--rpn-post-nms-train", "100", "--rois-per-image", "32", "--detections-per-image", "20",
        "--log-every-n-steps", "1", "--weights-every-n-steps", "2", "--predictions", "2", "--warmup-steps", "2",
        "--progress-bar", "false", "--threads", "2"]
TINY_SYNTHETIC = ["--train-images", "16", "--val-images", "8"]
# a short run that learns: 480 training images seen (120 steps of 2x2, one shape an image), narrow heads;
# about half a minute on 2 cores. An untrained detector scores AP 0.0 here (measured with --max-steps 1).
LEARN = ["--train-images", "240", "--val-images", "32", "--batch", "2x2", "--epochs", "2", "--base-lr", "0.16",
         "--max-objects", "1", "--warmup-steps", "20", "--fpn-channels", "32", "--head-channels", "32",
         "--box-fc", "64", "--box-convs", "2", "--mask-convs", "2", "--rpn-post-nms-train", "100",
         "--rois-per-image", "32", "--detections-per-image", "20", "--progress-bar", "false", "--threads", "2",
         "--weights-every-n-steps", "40", "--predictions", "2"]


def run_cli(*args, check=True, env=None):
    """``python -m tasks.detect ARGS`` in a subprocess (as a user would run it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tasks.detect", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def without(args, *options):
    """``args`` without the given options and their values."""
    out = []
    for i, a in enumerate(args):
        if a not in options and (i == 0 or args[i - 1] not in options):
            out.append(a)
    return out


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_short_run_learns_and_the_analysis_reads_it(tmp_path):
    proc = run_cli(*LEARN, "--norm", "sn", "--root", tmp_path)
    path = tmp_path / "detect-default" / "sn_2x2_s0"
    assert f"run directory: {path}" in proc.stdout and "COCO AP (%)" in proc.stdout
    summary = json.loads((path / "summary.json").read_text())
    final = summary["final"]
    assert summary["status"] == "finished" and final["steps"] == 120
    # chance: an untrained detector scores 0.0 (its boxes come from random anchors and scores)
    assert final["box_ap50"] > 0.05 and final["mask_ap50"] > 0.05 and final["box_ap"] > 0.01, final
    assert 0 <= final["box_ap"] <= final["box_ap50"] <= 1 and final["mask_ap"] <= final["mask_ap50"]
    metrics = rows(path / "metrics.csv")
    val = {r["name"]: float(r["value"]) for r in metrics if r["split"] == "val"}
    assert {k: pytest.approx(v) for k, v in val.items()} == {k: v for k, v in final.items() if k in val}
    assert {"box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75"} <= set(val)
    losses = [float(r["value"]) for r in metrics if (r["split"], r["name"]) == ("train", "loss")]
    assert losses[-1] < losses[0]
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    assert (cfg["task"], cfg["norm"], cfg["head_norm"], cfg["batch"]) == ("detect", "sn", "sn", "2x2")
    # the analysis reads it without a warning: AP table, weights per component, the drawings
    data = load_runs(tmp_path)
    assert data.warnings == []
    table = ap_table(data.runs)
    assert table[["backbone", "head", "batch"]].values.tolist() == [["sn", "sn", "2x2"]]
    assert table["AP"][0] == pytest.approx(100 * final["box_ap"])
    weights = component_weights(data.weights)
    assert set(weights["component"]) == {"backbone", "FPN", "box head", "mask head"}
    sums = weights.groupby(["step", "layer", "stat"])["weight"].sum()
    assert sums.round(6).eq(1).all() and sorted(weights["step"].unique()) == [0, 40, 80, 120]
    assert [p.name for p in list_predictions(path)] == ["val_000000.png", "val_000001.png"]


@pytest.mark.slow
def test_resume_after_a_crash_continues_without_duplicate_rows(tmp_path):
    args = [*TINY, *TINY_SYNTHETIC, "--norm", "sn", "--root", tmp_path]
    path = tmp_path / "detect-default" / "sn_2x2_s0"
    proc = run_cli(*args, check=False, env={KILL_ENV: "6"})  # dies in epoch 2, checkpoint at step 4
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert json.loads((path / "summary.json").read_text())["status"] == "running"
    before = rows(path / "metrics.csv")
    assert max(int(r["step"]) for r in before) == 5  # rows logged after the checkpoint (step 6 died with it)
    assert not [r for r in before if r["split"] == "val"]
    proc = run_cli(*args, "--resume", "--norm-weight-decay", "1e-4", check=False)  # another config: refused
    assert proc.returncode == 2 and "norm_weight_decay: 0.0 there, 0.0001 requested" in proc.stderr
    proc = run_cli(*args, "--resume")
    assert "resuming" in proc.stdout and "from step 4" in proc.stdout
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final"]["steps"] == 12
    after = rows(path / "metrics.csv")
    assert max(Counter((r["step"], r["split"], r["name"]) for r in after).values()) == 1
    assert sorted(int(r["step"]) for r in after if r["name"] == "loss") == list(range(1, 13))
    assert {int(r["step"]) for r in after if r["split"] == "val"} == {12}
    kept = [r for r in before if int(r["step"]) <= 4]
    assert after[:len(kept)] == kept
    weights = rows(path / "weights.csv")
    assert sorted({int(r["step"]) for r in weights}) == [0, 2, 4, 6, 8, 10, 12]
    assert max(Counter((r["step"], r["layer"], r["stat"], r["op"]) for r in weights).values()) == 1
    assert "skipping finished run" in run_cli(*args, "--resume").stdout


def test_bad_options_are_refused_before_anything_runs(tmp_path, capsys):
    for argv, message in ((["--norm", "nope"], "unknown norm 'nope'; known: bn-frozen"),
                          (["--batch", "8"], "8"), (["--anchor-sizes", "8,16"], "anchor_sizes needs 5"),
                          (["--arch", "yolo"], "unknown arch 'yolo'"), (["--epoch", "2"], "did you mean 'epochs'"),
                          (["--head-norm", "bn-frozen"], "head_norm 'bn-frozen' would freeze")):
        assert main(TASK, [*argv, "--root", str(tmp_path)]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not any(tmp_path.iterdir())  # nothing was written
    proc = run_cli("--norm", "nope", "--root", tmp_path, check=False)
    assert proc.returncode == 2 and "unknown norm 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_coco_folder_fails_the_run_with_a_clear_message(tmp_path):
    proc = run_cli("--dataset", "coco", "--data-root", tmp_path / "nowhere", "--root", tmp_path, check=False)
    assert proc.returncode == 1
    summary = json.loads((tmp_path / "detect-default" / "sn_2x2_s0" / "summary.json").read_text())
    assert summary["status"] == "failed" and "COCO split 'train2017' not found" in summary["error"]
    assert "https://cocodataset.org" in summary["error"] and "--data-root" in summary["error"]


@pytest.mark.slow
def test_a_coco_folder_trains_and_evaluates(tmp_path):
    from test_detect import write_coco_folder

    write_coco_folder(tmp_path / "coco", "train", 8)
    write_coco_folder(tmp_path / "coco", "val", 4)
    args = [*without(TINY, "--epochs"), "--epochs", "1", "--dataset", "coco", "--data-root", tmp_path / "coco",
            "--train-split", "train", "--val-split", "val", "--train-images", "none", "--val-images", "none",
            "--norm", "gn", "--root", tmp_path]
    run_cli(*args)
    final = json.loads((tmp_path / "detect-default" / "gn_2x2_s0" / "summary.json").read_text())["final"]
    assert final["steps"] == 2 and {"box_ap", "mask_ap"} <= set(final)
    assert len(list_predictions(tmp_path / "detect-default" / "gn_2x2_s0")) == 2


def test_two_processes_evaluate_every_image_once(tmp_path):
    """DDP on CPU (gloo): each process evaluates its share of the validation set; the COCO metric
    is computed on the union, so the run reports AP over all 8 images (the module refuses a
    partial set, tested below) and finishes like a one-process run."""
    root = tmp_path / "runs"
    proc = run_cli("--root", root, *without(TINY, "--threads", "--epochs"), *TINY_SYNTHETIC, "--epochs", "1",
                   "--threads", "1", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr  # two processes did run
    (rundir,) = [p for p in (root / "detect-default").iterdir() if p.is_dir()]
    summary = json.loads((rundir / "summary.json").read_text())
    assert summary["status"] == "finished", summary
    assert 0.0 <= summary["final"]["box_ap"] <= 1.0 and summary["final"]["steps"] == 4
    val = [r for r in rows(rundir / "metrics.csv") if r["split"] == "val" and r["name"] == "box_ap"]
    assert len(val) == 1 and float(val[0]["value"]) == pytest.approx(summary["final"]["box_ap"])


def test_an_evaluation_missing_images_is_refused():
    """A union of per-process results that lacks an image (a sampler that dropped it) raises
    instead of reporting an AP over part of the validation set."""
    from types import SimpleNamespace

    from tasks.detect.module import DetectModule

    logged = []
    stub = SimpleNamespace(trainer=SimpleNamespace(datamodule=SimpleNamespace(val_set=SimpleNamespace(image_ids=[1, 2, 3])),
                                                   world_size=2),
                           _gt=object(), cfg=SimpleNamespace(arch="maskrcnn"),
                           gathered_results=lambda: {1: ([], []), 3: ([], [])}, log=lambda *a, **k: logged.append(a))
    with pytest.raises(RuntimeError, match=r"saw 2 of the 3 validation images \(missing ids \[2\]"):
        DetectModule.on_validation_epoch_end(stub)
    assert logged == []
