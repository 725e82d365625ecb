"""ENAS task end to end: the real command line on tiny synthetic data, resume, bad options, data.

Split from ``test_enas.py`` (the controller, cell, REINFORCE and child tests) to keep files short.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import runformat as rf
from runformat import read_rows
from tasks.common.cli import main
from tasks.common.loggers import KILL_ENV
from tasks.enas.controller import arch_to_str, check_arch
from tasks.enas.data import AlternatingBatches
from tasks.enas.task import TASK, truncate_architectures

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--val-size", "300", "--epochs", "2", "--num-layers", "3", "--channels", "4",
        "--child-steps", "4", "--child-batch", "16", "--controller-steps", "2", "--controller-samples", "2",
        "--reward-batch", "32", "--eval-archs", "3", "--eval-size", "64", "--controller-hidden", "16",
        "--controller-groups", "4", "--log-every-n-steps", "2", "--weights-every-n-steps", "3", "--threads", "1",
        "--progress-bar", "false"]
STEPS_PER_EPOCH = 4 + 2


def read_architectures(path):
    return rf.read_records(path).records


def enas_main(argv):
    return main(TASK, argv)


def _run_cli(args, cwd, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "tasks.enas", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_cli_grid_of_controller_norms_writes_complete_run_directories(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"experiments": {"tiny": {
        "task": "enas", "description": "tiny", "grid": {"norm": ["ln", "gn", "sn"]}}}}))
    proc = _run_cli(["--experiment", "tiny", "--experiments-file", str(tmp_path / "exp.yaml"),
                     "--root", str(tmp_path / "runs"), *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best architecture") == 3
    for norm in ("ln", "gn", "sn"):
        run = tmp_path / "runs" / "tiny" / f"{norm}_s0"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["task"], config["experiment"], config["norm"], config["seed"]) == ("enas", "tiny", norm, 0)
        assert set(config["versions"]) >= {"torch", "torchvision", "lightning", "python"}
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["task"] == "enas"
        archs = read_architectures(run / "architectures.jsonl")
        assert [r["epoch"] for r in archs] == [0, 0, 0, 1, 1, 1]
        for r in archs:
            check_arch(r["arch"], 3)
            assert r["arch_str"] == arch_to_str(r["arch"]) and 0.0 <= r["val_acc"] <= 1.0
        final = summary["final"]
        best = max(archs, key=lambda r: r["val_acc"])
        assert final["best_val_acc"] == best["val_acc"] and final["best_arch"] == best["arch_str"]
        assert final["mean_val_acc"] == pytest.approx(sum(r["val_acc"] for r in archs[3:]) / 3)
        rows = read_rows(run / "metrics.csv")
        names = {(r["split"], r["name"]) for r in rows}
        assert names == {("train", n) for n in ("child_loss", "child_acc", "controller_loss", "reward", "baseline",
                                                "entropy")} | {("val", "mean_acc"), ("val", "best_acc")}
        val = {(int(r["epoch"]), r["name"]): float(r["value"]) for r in rows if r["split"] == "val"}
        assert val[(1, "best_acc")] == max(r["val_acc"] for r in archs[3:])
        assert int(max(rows, key=lambda r: int(r["step"]))["step"]) == 2 * STEPS_PER_EPOCH
        assert (run / "checkpoints" / "last.ckpt").exists()
        weights = read_rows(run / "weights.csv")
        if norm == "sn":  # two SN sites x mean/var x (ln, gn), at the start and later
            assert {(r["layer"], r["stat"], r["op"]) for r in weights} == {
                (site, stat, op) for site in ("cell.norm_gates", "cell.norm_cell")
                for stat in ("mean", "var") for op in ("ln", "gn")}
            steps = sorted({int(r["step"]) for r in weights})
            assert steps[0] == 0 and steps[-1] == 2 * STEPS_PER_EPOCH
            last = [float(r["weight"]) for r in weights if int(r["step"]) == steps[-1]]
            assert sum(last) == pytest.approx(4.0) and last != [0.5] * 8  # the controller learned
        else:
            assert weights == []


@pytest.mark.slow
def test_cli_resume_after_a_crash_keeps_rows_unique(tmp_path):
    args = ["--root", str(tmp_path / "runs"), "--norm", "sn", *TINY]
    killed = _run_cli(args, tmp_path, env={KILL_ENV: str(STEPS_PER_EPOCH + 2)})
    assert killed.returncode != 0
    run = tmp_path / "runs" / "enas-default" / "sn_s0"
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    resumed = _run_cli([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    rows = read_rows(run / "metrics.csv")
    keys = [(r["step"], r["split"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert [r["epoch"] for r in read_architectures(run / "architectures.jsonl")] == [0, 0, 0, 1, 1, 1]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_architecture_archive_tolerates_a_cut_line_and_truncates(tmp_path):
    path = tmp_path / "architectures.jsonl"
    recs = [{"epoch": e, "step": 6 * (e + 1), "val_acc": 0.1 * e} for e in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"epoch": 3, "st')
    assert read_architectures(path) == recs
    truncate_architectures(path, 12)
    assert read_architectures(path) == recs[:2]
    assert path.read_text().endswith("\n")


def test_controller_norm_alias_and_dry_run(capsys):
    assert enas_main(["--controller-norm", "gn", "--dry-run"]) == 0
    assert enas_main(["--controller-norm=ln", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["enas-default/gn_s0", "enas-default/ln_s0"]


def test_alternating_batches_child_then_controller_without_repeats():
    sampler = AlternatingBatches(n_train=40, n_val=10, child_steps=5, child_batch=8, controller_steps=3,
                                 reward_batch=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 8
    child, ctrl = batches[:5], batches[5:]
    assert sorted(i for b in child for i in b) == list(range(40))  # one pass over the training part
    assert all(len(b) == 4 and all(40 <= i < 50 for i in b) for b in ctrl)  # validation part, offset
    assert len(set(ctrl[0] + ctrl[1])) == 8  # no repeats until every validation image was used
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
