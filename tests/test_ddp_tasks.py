"""A two-process DDP run of tasks.classify (gloo, CPU) writes one valid run directory."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_classify_writes_one_valid_run_directory(tmp_path):
    cmd = [sys.executable, "-m", "tasks.classify", "--experiment", "classify-smoke", "--norm", "sn",
           "--strategy", "ddp", "--devices", "2", "--epochs", "1", "--root", str(tmp_path),
           "--progress-bar", "false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "classify-smoke").iterdir())
    assert [r.name for r in runs] == ["sn_4x8_s0"]
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and 0.0 <= summary["final"]["test_acc"] <= 1.0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["strategy"] == "ddp" and config["batch"] == "4x8"
    # rank zero logs alone: every (step, split, name) once, every (step, layer, stat, op) once
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    keys = [(r["step"], r["split"], r["name"]) for r in rows]
    assert rows and len(keys) == len(set(keys))
    with open(run / "weights.csv") as f:
        wrows = list(csv.DictReader(f))
    wkeys = [(r["step"], r["layer"], r["stat"], r["op"]) for r in wrows]
    assert wrows and len(wkeys) == len(set(wkeys))
    assert {r["op"] for r in wrows} == {"in", "ln", "bn"}
