"""The reference results: analysis.collect on fixture runs, and the committed results/ folder
as the dashboard's loader reads it (every run finished, produced by the suite's own command,
recording its commit, machine and command; no checkpoints; final metrics that match the logs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import runformat as rf
import yaml

from analysis.collect import collect, main
from analysis.load import REFERENCE, load_runs, load_sources
from fixture_runs import classify_config, summary, write_fixture_runs, write_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
PROVENANCE = {"commit": "a" * 40, "dirty": False, "changed_files": [], "command": "python -m tasks.classify",
              "machine": {"hostname": "h", "cpu_count": 2}}


def test_collect_copies_finished_runs_with_provenance_and_no_checkpoints(tmp_path):
    source = write_fixture_runs(tmp_path / "runs")  # fixture runs record no provenance
    write_run(source, "sweep", "sn-prov", classify_config("sweep", "sn-prov", "sn", "8x4", provenance=PROVENANCE),
              summary("classify", "sweep", "sn-prov", rf.FINISHED, {"test_acc": 0.9}), [])
    (source / "sweep" / "sn-prov" / "checkpoints" / "last.ckpt").write_text("weights")
    report = dict(collect(source, tmp_path / "results"))
    assert report["sweep/sn-prov"] == "copied"
    assert report["sweep/sn-8x4"].startswith("left out: config.yaml records no provenance")
    assert report["sweep/sn-8x2-running"] == "left out: status 'running'"
    copied = tmp_path / "results" / "sweep" / "sn-prov"
    assert not (copied / "checkpoints").exists()
    for name in (rf.CONFIG_FILE, rf.SUMMARY_FILE, rf.METRICS_FILE):
        assert (copied / name).read_bytes() == (source / "sweep" / "sn-prov" / name).read_bytes()
    with pytest.raises(ValueError, match="same folder"):
        collect(source, source)
    assert main(["--from", str(tmp_path / "missing"), "--to", str(tmp_path / "x")]) == 2


def _reference_runs():
    if not RESULTS.is_dir():
        pytest.fail("results/ (the committed reference results) is missing")
    return load_runs(RESULTS)


def test_committed_reference_results_load_cleanly():
    data = _reference_runs()
    assert not data.runs.empty and data.warnings == []
    assert set(data.runs["status"]) == {"finished"}
    assert not list(RESULTS.rglob("*.ckpt")) and not list(RESULTS.rglob("checkpoints"))


def test_committed_reference_results_record_their_provenance():
    for _, run_dir in rf.find_run_dirs(RESULTS):
        config = yaml.safe_load((run_dir / rf.CONFIG_FILE).read_text())
        prov = config["provenance"]
        assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]), run_dir
        assert prov["machine"]["cpu_count"] >= 1 and prov["machine"]["hostname"]
        # made by the suite's own command for that experiment
        assert prov["command"].startswith(f"python -m tasks.{config['task']} --experiment {config['experiment']}"), \
            prov["command"]


def test_committed_reference_results_finals_match_their_logs():
    data = _reference_runs()
    for _, run in data.runs[data.runs["task"].eq("classify")].iterrows():
        metrics = data.metrics[data.metrics["run_id"].eq(run["run_id"])]
        test = metrics[(metrics["split"] == "test") & (metrics["name"] == "acc")]["value"]
        val = metrics[(metrics["split"] == "val") & (metrics["name"] == "acc")]["value"]
        assert len(test) == 1 and test.iloc[0] == pytest.approx(run["final_test_acc"])
        assert val.max() == pytest.approx(run["final_best_val_acc"])
        weights = data.weights[data.weights["run_id"].eq(run["run_id"])]
        if run["norm"].startswith("sn"):  # every SN run logged its weights, each step summing to 1
            sums = weights.groupby(["step", "layer", "stat"])["weight"].sum()
            assert len(sums) and sums.to_numpy() == pytest.approx(1.0, abs=1e-4)


def test_dashboard_loader_labels_the_committed_results_as_reference(tmp_path):
    data = load_sources(tmp_path / "no-runs", RESULTS)
    assert len(data.runs) == len(_reference_runs().runs)
    assert set(data.runs["source"]) == {REFERENCE}
    assert all(r.startswith("reference/") for r in data.runs["run_id"])
    assert all(e.endswith(" (reference)") for e in data.runs["experiment"])
