"""Lightning DDP for every task (gloo, CPU).

Two-process runs of tasks.classify, tasks.stylize and tasks.enas, as subprocesses of the test
(``strategy="ddp"`` relaunches the command line), each writing one valid run directory with
every row logged once; and the pieces ENAS adds for DDP, checked against its one-process
behaviour.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from runformat import read_records
from tasks.enas.config import EnasConfig, process_count
from tasks.enas.controller import Controller, reinforce_loss, update_baseline, walk_baseline
from tasks.enas.data import AlternatingBatches
from tasks.enas.task import ddp_strategy

REPO = Path(__file__).resolve().parents[1]


def run_task(task, args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(tmp_path / "torch-home")}
    cmd = [sys.executable, "-m", f"tasks.{task}", *args, "--progress-bar", "false"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check_run_directory(exp_dir, run_name, strategy="ddp"):
    """The one run directory of ``exp_dir``: finished, its config recording the strategy, rows once."""
    runs = sorted(p.name for p in exp_dir.iterdir())
    assert runs == [run_name]
    run = exp_dir / run_name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["strategy"] == strategy and str(config["devices"]) == "2"
    assert (run / "checkpoints" / "last.ckpt").exists()
    # rank zero logs alone: every (step, split, name) once, every (step, layer, stat, op) once
    rows = read_csv(run / "metrics.csv")
    keys = [(r["step"], r["split"], r["name"]) for r in rows]
    assert rows and len(keys) == len(set(keys))
    wrows = read_csv(run / "weights.csv")
    wkeys = [(r["step"], r["layer"], r["stat"], r["op"]) for r in wrows]
    assert wrows and len(wkeys) == len(set(wkeys))
    return run, summary, rows, wrows


@pytest.mark.slow
def test_two_process_ddp_classify_writes_one_valid_run_directory(tmp_path):
    run_task("classify", ["--experiment", "classify-smoke", "--norm", "sn", "--strategy", "ddp", "--devices", "2",
                          "--epochs", "1", "--root", str(tmp_path)], tmp_path)
    run, summary, _, wrows = check_run_directory(tmp_path / "classify-smoke", "sn_4x8_s0")
    assert 0.0 <= summary["final"]["test_acc"] <= 1.0
    assert yaml.safe_load((run / "config.yaml").read_text())["batch"] == "4x8"
    assert {r["op"] for r in wrows} == {"in", "ln", "bn"}


@pytest.mark.slow
def test_two_process_ddp_stylize_writes_one_valid_run_directory(tmp_path):
    # tests/test_stylize.py's tiny size; 2x2: each of the 2 processes holds one device of 2 crops
    tiny = ["--image-size=64", "--epochs=2", "--steps-per-epoch=5", "--width=8", "--res-blocks=2", "--lr=0.01",
            "--sample-size=32", "--sample-every-n-steps=5", "--weights-every-n-steps=5", "--eval-crops=4",
            "--threads=1"]
    proc = run_task("stylize", ["--norm", "sn", "--batch", "2x2", "--strategy", "ddp", "--devices", "2",
                                "--root", str(tmp_path / "runs"), *tiny], tmp_path)
    assert proc.stdout.count("final losses") == 1  # printed by rank zero only
    run, summary, rows, wrows = check_run_directory(tmp_path / "runs" / "stylize-default", "sn_s0")
    assert summary["final"]["steps"] == 10 and summary["final"]["perceptual_net"] == "random-multiscale"
    assert [int(r["step"]) for r in rows if r["name"] == "total_loss"] == list(range(1, 11))
    assert {r["name"] for r in rows} == {"content_loss", "style_loss", "tv_loss", "total_loss"}
    assert sorted({int(r["step"]) for r in wrows}) == [0, 5, 10]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000005.png", "step_000010_final.png"]


@pytest.mark.slow
def test_two_process_ddp_enas_writes_one_valid_run_directory(tmp_path):
    # tests/test_enas_cli.py's tiny size: 4 child + 2 controller steps per epoch
    tiny = ["--dataset", "synthetic", "--val-size", "300", "--epochs", "2", "--num-layers", "3", "--channels", "4",
            "--child-steps", "4", "--child-batch", "16", "--controller-steps", "2", "--controller-samples", "2",
            "--reward-batch", "32", "--eval-archs", "3", "--eval-size", "64", "--controller-hidden", "16",
            "--controller-groups", "4", "--log-every-n-steps", "2", "--weights-every-n-steps", "3",
            "--threads", "1"]
    proc = run_task("enas", ["--norm", "sn", "--strategy", "ddp", "--devices", "2", "--root", str(tmp_path / "runs"),
                             *tiny], tmp_path)
    assert proc.stdout.count("best architecture") == 1  # printed by rank zero only
    run, summary, rows, wrows = check_run_directory(tmp_path / "runs" / "enas-default", "sn_s0")
    archs = read_records(run / "architectures.jsonl").records
    assert [r["epoch"] for r in archs] == [0, 0, 0, 1, 1, 1]  # eval_archs records per epoch, written once
    # accuracies of 64 images summed over the two processes' halves
    assert all(0.0 <= r["val_acc"] <= 1.0 and (r["val_acc"] * 64) == pytest.approx(round(r["val_acc"] * 64))
               for r in archs)
    final = summary["final"]
    assert final["best_val_acc"] == max(r["val_acc"] for r in archs) and final["steps"] == 12
    assert {(r["split"], r["name"]) for r in rows} == {
        ("train", n) for n in ("child_loss", "child_acc", "controller_loss", "reward", "baseline", "entropy")
    } | {("val", "mean_acc"), ("val", "best_acc")}
    val = {(int(r["epoch"]), r["name"]): float(r["value"]) for r in rows if r["split"] == "val"}
    assert val[(1, "best_acc")] == max(r["val_acc"] for r in archs[3:])
    assert sorted({int(r["step"]) for r in wrows}) == [0, 3, 6, 9, 12]
    assert {r["op"] for r in wrows} == {"ln", "gn"}


# ---------------------------------------------------------------- ENAS's DDP pieces, one process


def test_alternating_batches_split_every_global_batch_over_processes():
    kw = dict(n_train=40, n_val=10, child_steps=5, child_batch=8, controller_steps=3, reward_batch=4, seed=3)
    for epoch in (0, 1):
        whole = AlternatingBatches(**kw)
        parts = [AlternatingBatches(**kw, rank=r, world_size=2) for r in (0, 1)]
        for s in (whole, *parts):
            s.set_epoch(epoch)
        whole_batches, rank0, rank1 = list(whole), list(parts[0]), list(parts[1])
        assert len(rank0) == len(rank1) == len(whole_batches) == len(parts[0]) == 8
        for b, b0, b1 in zip(whole_batches, rank0, rank1):
            assert len(b0) == len(b1) == len(b) // 2
            assert b0 + b1 == b  # disjoint contiguous halves of the world_size=1 batch
    # world_size=1 yields exactly what the sampler yielded before it knew about processes
    g = torch.Generator().manual_seed(3 * 100003)
    child = (torch.cat([torch.randperm(40, generator=g)])[:40].view(5, 8)).tolist()
    ctrl = (torch.cat([torch.randperm(10, generator=g) for _ in range(2)])[:12].view(3, 4) + 40).tolist()
    assert list(AlternatingBatches(**kw)) == child + ctrl


@pytest.mark.parametrize("batches, world_size, match", [
    ((16, 32), 3, "child_batch=16"), ((16, 30), 4, "reward_batch=30"), ((16, 32), 0, "world_size")])
def test_batches_that_do_not_split_over_the_processes_are_errors(batches, world_size, match):
    with pytest.raises(ValueError, match=match):
        AlternatingBatches(100, 50, 2, batches[0], 2, batches[1], world_size=world_size)
    with pytest.raises(ValueError, match="rank"):
        AlternatingBatches(100, 50, 2, 16, 2, 32, rank=2, world_size=2)
    if world_size > 1:  # and from the device options, before any run starts
        with pytest.raises(ValueError, match=match):
            EnasConfig(devices=str(world_size), child_batch=batches[0], reward_batch=batches[1]).validate()
    EnasConfig(devices=2, num_nodes=2, child_batch=16, reward_batch=32).validate()


def test_process_count_and_strategy_for_unused_parameters():
    assert [process_count(d, n) for d, n in ((1, 1), ("2", 1), (4, 2), ("0,1", 1), ("auto", 1), (-1, 1))] == [
        1, 2, 8, 2, None, None]
    assert ddp_strategy("ddp") == "ddp_find_unused_parameters_true"
    assert ddp_strategy("ddp_spawn") == "ddp_spawn_find_unused_parameters_true"
    assert ddp_strategy("auto") == "auto" and ddp_strategy("ddp_find_unused_parameters_false").endswith("false")


def test_baseline_walk_over_gathered_rewards_equals_sequential_updates():
    rewards = [[0.2, 0.5, 0.1], [0.9, 0.3, 0.4]]  # two processes x three samples, gathered rank-major
    seq, walked = Controller(3, 8, "ln"), Controller(3, 8, "ln")
    expected = [update_baseline(seq, r, 0.9) for rank in rewards for r in rank]
    got = walk_baseline(walked, torch.tensor(rewards, dtype=torch.float64).reshape(-1).tolist(), 0.9)
    assert got == expected and float(walked.baseline) == float(seq.baseline)
    b, by_hand = float("nan"), []  # the EMA by hand in float32, as the buffer keeps it
    for r in (r for rank in rewards for r in rank):
        b = r if by_hand == [] else float(torch.tensor(b) * 0.9 + (1 - 0.9) * r)
        by_hand.append(b)
    assert got == pytest.approx(by_hand, rel=1e-6)
    # a second step goes on from the same baseline on every process
    assert walk_baseline(walked, [0.7], 0.9) == [update_baseline(seq, 0.7, 0.9)]


def test_one_summed_backward_gives_the_per_sample_gradient():
    """The controller step's single backward equals one backward per sample (the former step)."""
    torch.manual_seed(0)
    ctrl = Controller(4, 16, "sn", num_groups=4)
    samples = [ctrl() for _ in range(3)]
    rewards = [0.3, 0.6, 0.45]
    old = Controller(4, 16, "sn", num_groups=4)
    old.load_state_dict(ctrl.state_dict())
    for s, r in zip(samples, rewards):  # one process, sample by sample
        b = update_baseline(old, r, 0.95)
        (reinforce_loss(old(s.arch), r, b, 0.8) / 3).backward()
    baselines = walk_baseline(ctrl, rewards, 0.95)
    torch.stack([reinforce_loss(s, r, b, 0.8) / 3 for s, r, b in zip(samples, rewards, baselines)]).sum().backward()
    assert float(ctrl.baseline) == float(old.baseline)
    for (name, p), q in zip(ctrl.named_parameters(), old.parameters()):
        assert p.grad is not None and torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-8), name
