"""Sparse SN in the tasks: ``--norm ssn`` through the real command lines of classify and stylize,
with the radius schedule run by the trainer, weights that end one-hot in weights.csv, the Table 2
analogue's SSN row and the dashboard's sparse view."""
from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.sparse import sparse_choices

REPO = Path(__file__).resolve().parents[1]
CLASSIFY_TINY = ["--dataset", "synthetic", "--train-subset", "512", "--val-size", "128", "--test-subset", "256",
                 "--depth", "8", "--width", "8", "--batch", "4x8", "--ref-batch", "32", "--epochs", "3",
                 "--warmup-epochs", "0", "--update-stats-batches", "4", "--log-every-n-steps", "4",
                 "--weights-every-n-steps", "4", "--eval-batch-size", "256", "--progress-bar", "false",
                 "--threads", "1"]
STYLIZE_TINY = ["--image-size=64", "--epochs=2", "--steps-per-epoch=5", "--width=8", "--res-blocks=2", "--lr=0.01",
                "--sample-size=32", "--sample-every-n-steps=5", "--weights-every-n-steps=2", "--eval-crops=4",
                "--progress-bar=false", "--threads=1"]


def run(task, args, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", f"tasks.{task}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def values(data):
    """A plotly trace's numbers (plotly writes arrays as {'dtype', 'bdata'} base64)."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)


def weights(path):
    with open(path, newline="") as f:
        return pd.DataFrame(list(csv.DictReader(f))).astype({"step": int, "weight": float})


def check_one_hot_at_the_end(frame):
    steps = sorted(frame["step"].unique())
    first, last = frame[frame["step"] == steps[0]], frame[frame["step"] == steps[-1]]
    # sparsemax of equal logits at the start: uniform weights
    assert first["weight"].round(6).eq(round(1 / 3, 6)).all(), first
    for (_, _), group in last.groupby(["layer", "stat"]):
        assert sorted(group["weight"].tolist()) == [0.0, 0.0, 1.0], group
    # zeros appear along the way, before the schedule's end (sparsity, not only the final rounding)
    middle = frame[frame["step"] == steps[len(steps) // 2]]
    assert (middle["weight"] == 0.0).any()


@pytest.fixture(scope="module")
def ssn_root(tmp_path_factory):
    """One tiny classify run with --norm ssn through the real command line."""
    root = tmp_path_factory.mktemp("sparse") / "runs"
    run("classify", ["--norm", "ssn", "--root", str(root), *CLASSIFY_TINY])
    return root


def test_classify_with_sparse_sn_ends_one_hot(ssn_root):
    rundir = ssn_root / "classify-default" / "ssn_4x8_s0"
    summary = json.loads((rundir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["final"]["test_acc"] > 0.3  # synthetic data, ten classes: chance is 0.1
    frame = weights(rundir / "weights.csv")
    check_one_hot_at_the_end(frame)
    choices = sparse_choices(frame)
    assert set(choices["choice"]) <= {"in", "ln", "bn"}
    assert len(choices) == frame.groupby(["layer", "stat"]).ngroups
    assert choices["one_hot"].all()


def test_dashboard_shows_what_each_layer_ended_on(ssn_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SN_RUNS_ROOT", str(ssn_root))
    monkeypatch.setenv("SN_REFERENCE_ROOT", str(ssn_root.parent / "no-reference-results"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    specs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    shares = [s for s in specs if s["layout"]["title"]["text"].startswith("Which normalizer each layer ended on")]
    assert len(shares) == 1
    frame = weights(ssn_root / "classify-default" / "ssn_4x8_s0" / "weights.csv")
    want = sparse_choices(frame)
    for trace in shares[0]["data"]:  # one bar per op and statistic: the share of the run's layers
        stat = "mean" if trace["xaxis"] == "x" else "var"
        op = trace["legendgroup"]
        expected = (want[want["stat"].eq(stat)]["choice"] == op).mean()
        assert values(trace["y"]) == pytest.approx([expected]), (stat, op)
    matrix = [d.value for d in at.dataframe if list(d.value.columns) == ["mean", "var"]]
    assert len(matrix) == 1 and len(matrix[0]) == want["layer"].nunique()
    assert not matrix[0].stack().str.endswith("?").any()


def test_stylize_with_sparse_sn_ends_one_hot(tmp_path):
    root = tmp_path / "runs"
    run("stylize", ["--norm", "ssn", "--root", str(root), *STYLIZE_TINY], env={"TORCH_HOME": str(tmp_path / "th")})
    rundir = root / "stylize-default" / "ssn_s0"
    assert json.loads((rundir / "summary.json").read_text())["status"] == "finished"
    check_one_hot_at_the_end(weights(rundir / "weights.csv"))


def test_detect_with_sparse_sn_ends_one_hot_in_every_component(tmp_path):
    """--norm ssn in the detector (backbone, FPN, box and mask heads): the trainer's radius schedule
    ends every layer one-hot, and the analysis names each layer's component."""
    from analysis.detect import component

    root = tmp_path / "runs"
    run("detect", ["--norm", "ssn", "--root", str(root), "--train-images", "16", "--val-images", "4",
                   "--batch", "2x2", "--epochs", "2", "--fpn-channels", "16", "--head-channels", "16",
                   "--box-fc", "32", "--box-convs", "2", "--mask-convs", "2", "--rpn-post-nms-train", "50",
                   "--rois-per-image", "16", "--detections-per-image", "10", "--warmup-steps", "2",
                   "--weights-every-n-steps", "2", "--predictions", "0", "--progress-bar", "false", "--threads", "2"])
    rundir = root / "detect-default" / "ssn_2x2_s0"
    assert json.loads((rundir / "summary.json").read_text())["status"] == "finished"
    frame = weights(rundir / "weights.csv")
    check_one_hot_at_the_end(frame)
    parts = {component(layer) for layer in frame["layer"].unique()}
    assert {"backbone", "FPN", "box head", "mask head"} <= parts


def test_table2_analogue_has_an_ssn_row_taking_ssn_inln_at_one_sample():
    from analysis.tables import accuracy_table

    rows = []
    for norm, batch, acc in [("bn", "8x2", 0.80), ("sn", "8x2", 0.85), ("ssn", "8x2", 0.86), ("ssn-inln", "8x1", 0.84),
                             ("sn-inln", "8x1", 0.83), ("bn", "8x1", 0.3)]:
        rows.append({"task": "classify", "status": "finished", "norm": norm, "batch": batch,
                     "final_test_acc": acc, "seed": 0})
    table = accuracy_table(pd.DataFrame(rows))
    assert table.loc["SSN", "8x2"] == pytest.approx(86.0) and table.loc["SSN", "8x1"] == pytest.approx(84.0)
    assert table.loc["SN", "8x1"] == pytest.approx(83.0)
    assert ("SSN", "8x1") in table.attrs["marked"] and ("SN", "8x1") in table.attrs["marked"]
    assert "SSN-INLN" not in table.index
    assert any("ssn-inln" in text for text in table.attrs["footnotes"])


def test_fig4_and_fig1c_leave_sparse_sn_out():
    """Sparse SN's one-hot weights would distort SN's averages: Fig. 4 and Fig. 1(c) skip them."""
    from analysis.figures import fig_weights_by_task
    from analysis.tables import weights_by_batch

    rows = []
    for run_id, norm, w in [("a", "sn", (0.2, 0.3, 0.5)), ("b", "ssn", (0.0, 0.0, 1.0))]:
        for stat in ("mean", "var"):
            for op, value in zip(("in", "ln", "bn"), w):
                rows.append({"run_id": run_id, "task": "classify", "norm": norm, "batch": "8x2", "step": 10,
                             "layer": "l1", "stat": stat, "op": op, "weight": value, "experiment": "e"})
    frame = pd.DataFrame(rows)
    table = weights_by_batch(frame)
    assert table.loc["8x2", ("mean", "bn")] == pytest.approx(0.5) and table.loc["8x2", ("runs", "")] == 1
    fig = fig_weights_by_task(frame)
    bn_mean = [t for t in fig.to_dict()["data"] if t["meta"] == {"stat": "mean", "op": "bn"}][0]
    assert list(bn_mean["y"]) == pytest.approx([0.5])


def test_sparse_table_counts_the_layers_on_each_normalizer():
    """analysis.results' Sparse SN table: the last logged step decides, one-hot selections are
    counted, SN runs and earlier steps are ignored, runs come in the paper's batch order."""
    from analysis.sparse import sparse_markdown

    rows = []
    layers = {"l1": ((0, 0, 1), (0, 1, 0)), "l2": ((0, 0, 1), (1, 0, 0)), "l3": ((0.1, 0.2, 0.7), (0, 0, 1))}
    for run_id, norm, batch in [("e/ssn_8x2", "ssn", "8x2"), ("e/ssn_8x32", "ssn", "8x32"), ("e/sn", "sn", "8x2")]:
        for layer, (mean_w, var_w) in layers.items():
            for stat, ws in (("mean", mean_w), ("var", var_w)):
                for op, value in zip(("in", "ln", "bn"), ws):
                    rows.append({"run_id": run_id, "task": "classify", "norm": norm, "batch": batch, "step": 5,
                                 "layer": layer, "stat": stat, "op": op, "weight": 1 / 3, "experiment": "e"})
                    rows.append({"run_id": run_id, "task": "classify", "norm": norm, "batch": batch, "step": 9,
                                 "layer": layer, "stat": stat, "op": op, "weight": float(value), "experiment": "e"})
    lines = sparse_markdown(pd.DataFrame(rows)).splitlines()
    assert lines[0] == "| run | batch | IN mean | LN mean | BN mean | IN var | LN var | BN var | one-hot |"
    assert lines[2:] == ["| e/ssn_8x32 | 8x32 | 0/3 | 0/3 | 3/3 | 1/3 | 1/3 | 1/3 | 5/6 |",
                         "| e/ssn_8x2 | 8x2 | 0/3 | 0/3 | 3/3 | 1/3 | 1/3 | 1/3 | 5/6 |"]
    assert sparse_markdown(pd.DataFrame(rows)[lambda f: f["norm"].eq("sn")]) == ""


def test_results_command_reports_the_committed_sparse_runs():
    """On the reference results: each Sparse SN run's counts equal the argmax of its weights.csv's
    last step, read here with the csv module alone."""
    out = subprocess.run([sys.executable, "-m", "analysis.results", "--root", str(REPO / "results"),
                          "--experiment", "table2-quick", "--paper"], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    runs = sorted((REPO / "results" / "table2-quick").glob("ssn_*"))
    assert runs, "the reference results hold Sparse SN runs"
    for rundir in runs:
        with open(rundir / "weights.csv", newline="") as fh:
            table = list(csv.DictReader(fh))
        last = max(int(r["step"]) for r in table)
        final = {}
        for r in table:
            if int(r["step"]) == last:
                final.setdefault((r["layer"], r["stat"]), {})[r["op"]] = float(r["weight"])
        n_layers = len({layer for layer, _ in final})
        cells = []
        for stat in ("mean", "var"):
            for op in ("in", "ln", "bn"):
                count = sum(1 for (_, s), ws in final.items() if s == stat and max(ws, key=ws.get) == op)
                cells.append(f"{count}/{n_layers}")
        one_hot = sum(1 for ws in final.values() if sorted(ws.values()) == [0.0, 0.0, 1.0])
        row = f"| table2-quick/{rundir.name} | {rundir.name.split('_')[1]} | " + " | ".join(cells) \
            + f" | {one_hot}/{len(final)} |"
        assert row in out.splitlines(), (row, out)
