"""Round trip: every task's real command line on tiny data, then ``analysis.load_runs`` on its files.

The three commands run without ``--experiment`` into one root, stylize first and ENAS second:
their default runs must not share a directory (ENAS once found the finished style-transfer run
there and reported it as its own). Then the loader must read every file they wrote with no
warning, and its frames must hold exactly what the files hold.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import runformat as rf
from analysis.load import load_runs, read_architectures

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--threads", "1", "--progress-bar", "false"]
TINY = {
    "stylize": ["--image-size", "32", "--epochs", "1", "--steps-per-epoch", "2", "--width", "4", "--res-blocks", "1",
                "--sample-size", "32", "--sample-every-n-steps", "0", "--weights-every-n-steps", "1",
                "--eval-crops", "2"],
    "enas": ["--dataset", "synthetic", "--val-size", "100", "--epochs", "1", "--num-layers", "2", "--channels", "4",
             "--child-steps", "2", "--child-batch", "8", "--controller-steps", "1", "--controller-samples", "1",
             "--reward-batch", "16", "--eval-archs", "2", "--eval-size", "16", "--controller-hidden", "8",
             "--controller-groups", "2", "--log-every-n-steps", "1", "--weights-every-n-steps", "1"],
    "classify": ["--dataset", "synthetic", "--train-subset", "64", "--val-size", "32", "--test-subset", "32",
                 "--depth", "8", "--width", "4", "--batch", "2x8", "--ref-batch", "16", "--epochs", "1",
                 "--update-stats-batches", "2", "--log-every-n-steps", "1", "--weights-every-n-steps", "2",
                 "--eval-batch-size", "32"],
}
RUNS = {"stylize": "stylize-default/sn_s0", "enas": "enas-default/sn_s0", "classify": "classify-default/sn_2x8_s0"}


def run_task(task, root):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(root.parent / "torch-home")}
    proc = subprocess.run([sys.executable, "-m", f"tasks.{task}", "--root", str(root), *TINY[task], *COMMON],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def data_lines(path):
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip") / "runs"
    outputs = {task: run_task(task, root).stdout for task in ("stylize", "enas", "classify")}
    # ENAS ran its own search; it did not find the style-transfer run and skip
    assert "skipping" not in outputs["enas"] and "best architecture" in outputs["enas"]
    return root


@pytest.mark.slow
def test_default_runs_of_the_tasks_have_their_own_directories(root):
    found = sorted(f"{exp}/{path.name}" for exp, path in rf.find_run_dirs(root))
    assert found == sorted(RUNS.values())
    for task, run in RUNS.items():
        config = rf.read_config(root / run / rf.CONFIG_FILE)
        summary = rf.read_summary(root / run / rf.SUMMARY_FILE)
        assert config["task"] == summary["task"] == task and summary["status"] == rf.FINISHED


@pytest.mark.slow
def test_analysis_reads_every_file_the_tasks_wrote_without_a_warning(root):
    data = load_runs(root)
    assert data.warnings == []
    runs = data.runs.set_index("run_id")
    assert sorted(runs.index) == sorted(RUNS.values())
    for task, run in RUNS.items():
        run_dir = root / run
        summary = rf.read_summary(run_dir / rf.SUMMARY_FILE)
        assert runs.loc[run, "task"] == task and runs.loc[run, "status"] == rf.FINISHED
        for name, value in summary["final"].items():
            got = runs.loc[run, f"final_{name}"]
            assert got == (pytest.approx(value) if isinstance(value, (int, float)) else value), name
        metrics = data.metrics[data.metrics["run_id"].eq(run)]
        weights = data.weights[data.weights["run_id"].eq(run)]
        assert len(metrics) == data_lines(run_dir / rf.METRICS_FILE) > 0
        assert len(weights) == data_lines(run_dir / rf.WEIGHTS_FILE) > 0  # every task here trains SN
        assert weights.groupby(["step", "layer", "stat"])["weight"].sum().round(6).eq(1.0).all()
    archs, warnings = read_architectures(root / RUNS["enas"])
    assert warnings == [] and len(archs) == 2
    best = json.loads((root / RUNS["enas"] / rf.SUMMARY_FILE).read_text())["final"]["best_val_acc"]
    assert archs["val_acc"].max() == pytest.approx(best)
