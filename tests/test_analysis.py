"""analysis/ on fixture run directories (tests/fixture_runs.py): frames, figures, tables, CLI.

Expected numbers are averaged by hand from the fixture's literal weights and accuracies (the
arithmetic is in the comments), never by the code under test.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import runformat

from analysis import results
from analysis.aggregate import average_weights, final_weights, layer_prefix, order_batches
from analysis.figures import (fig_block_weights, fig_classify_curves, fig_enas_curves, fig_learning_curves,
                              fig_stylize_losses, fig_weight_trajectories, fig_weights_by_batch,
                              fig_weights_by_task)
from analysis.load import files_signature, list_samples, load_runs, read_architectures, read_csv_table
from analysis.tables import accuracy_table, table_markdown
from fixture_runs import classify_config, summary, weight_rows, write_fixture_runs, write_run
from runformat import UnsupportedFormatError, parse_batch, read_summary

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fixture_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def data(root):
    return load_runs(root)


def bars(fig, stat):
    """{op label: {x: y}} of the bar traces of one stat."""
    return {t.name: dict(zip(t.x, t.y)) for t in fig.data if t.meta["stat"] == stat}


def approx_dict(expected):
    return {k: pytest.approx(v, abs=1e-9) for k, v in expected.items()}


# ----------------------------------------------------------------------------- loading


def test_runs_frame_has_one_row_per_readable_run(data):
    runs = data.runs.set_index("run_id")
    assert sorted(runs.index) == sorted(
        ["enas/gn", "enas/ln", "enas/sn-lngn", "style/bn", "style/in", "style/sn", "sweep/bn-8x1",
         "sweep/bn-8x4", "sweep/gn-8x1", "sweep/gn-8x4", "sweep/sn-8x2-running", "sweep/sn-8x4",
         "sweep/sn-8x4-seed2", "sweep/sn-inln-8x1"])  # future-format skipped
    assert runs.loc["sweep/bn-8x1", "status"] == "failed"
    assert "loss is nan" in runs.loc["sweep/bn-8x1", "error"]
    assert runs.loc["sweep/sn-8x2-running", "status"] == "running"
    assert runs.loc["sweep/sn-8x4-seed2", "final_test_acc"] == pytest.approx(0.87)
    assert runs.loc["sweep/sn-8x4-seed2", "seed"] == 2
    assert runs.loc["style/sn", "perceptual_net"] == "vgg16-random-init"
    assert runs.loc["enas/sn-lngn", "final_best_arch"] == "0 1 2 3"
    assert runs.loc["sweep/gn-8x1", "versions.torch"] == "2.14.1"
    assert runs.loc["sweep/gn-8x1", "label"] == "gn 8x1"
    assert runs.loc["sweep/sn-8x4", "label"] == "sn 8x4 (sn-8x4)"  # two seeds: made unique
    assert runs.loc["style/in", "label"] == "in"  # the batch only labels classify runs


def test_warnings_report_what_was_skipped(data, root):
    text = "\n".join(data.warnings)
    assert len(data.warnings) == 3, data.warnings
    assert "future-format" in text and "format_version 2 is not supported" in text
    assert f"{root / 'sweep/sn-8x2-running/metrics.csv'}: last line cut off" in text
    assert "'300,2,val,ac'" in text
    assert f"{root / 'sweep/sn-8x2-running/weights.csv'}: last line cut off" in text


def test_metrics_keep_every_complete_row_of_a_cut_file(data):
    run = data.metrics[data.metrics["run_id"].eq("sweep/sn-8x2-running")]
    assert len(run) == 12  # 2 epochs x 6 rows; the cut 13th line is dropped
    val = run[run["split"].eq("val") & run["name"].eq("acc")]
    assert val["value"].tolist() == [0.4, 0.6]
    assert val["step"].tolist() == [100, 200] and val["epoch"].tolist() == [0.0, 1.0]
    assert set(run["norm"]) == {"sn"} and set(run["batch"]) == {"8x2"}
    stylize = data.metrics[data.metrics["run_id"].eq("style/sn") & data.metrics["name"].eq("style_loss")]
    assert stylize["value"].tolist() == pytest.approx([5.0 * 0.8 ** s for s in range(0, 50, 10)])


def test_weights_frame_and_last_complete_step(data):
    weights = data.weights
    assert len(weights[weights["run_id"].eq("sweep/sn-8x2-running")]) == 12 + 6
    sn = weights[weights["run_id"].eq("sweep/sn-8x4")]
    assert len(sn) == 2 * 4 * 2 * 3  # 2 steps x 4 layers x 2 stats x 3 ops
    row = sn[(sn["step"] == 300) & (sn["layer"] == "layer1.1.bn1") & (sn["stat"] == "var") & (sn["op"] == "ln")]
    assert row["weight"].tolist() == [0.4]
    last = final_weights(weights)
    steps = last.groupby("run_id")["step"].unique().map(list).to_dict()
    # the running run's step 200 holds 6 of 12 rows (crash): its last complete step is 100
    assert steps["sweep/sn-8x2-running"] == [100]
    assert steps["sweep/sn-8x4"] == [300] and steps["enas/sn-lngn"] == [150]


def test_csv_reader_skips_and_counts_malformed_lines(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,epoch,split,name,value\n1,0,train,loss,0.5\nx,0,train,loss,0.4\n"
                    "2,0,train,loss\n3,,train,loss,nan\n4.5,0,train,loss,1\n5,0,train,loss,abc\n"
                    "6,1,val,acc,0.25\n")
    frame, warnings = read_csv_table(path, ("step", "epoch", "split", "name", "value"),
                                     ints=("step",), floats=("epoch", "value"))
    assert frame["step"].tolist() == [1, 3, 6]
    assert math.isnan(frame["epoch"][1]) and math.isnan(frame["value"][1])  # empty epoch, nan loss
    assert frame["value"][2] == 0.25
    assert warnings == [f"{path}: skipped 4 malformed line(s), first at line 3"]


def test_csv_reader_header_problems(tmp_path):
    path = tmp_path / "weights.csv"
    path.write_text("step,layer,weight\n1,a,0.5\n")
    frame, warnings = read_csv_table(path, ("step", "epoch", "layer"))
    assert frame.empty and "lacks ['epoch']" in warnings[0]
    path.write_text("step,epo")  # crash while writing the header
    frame, warnings = read_csv_table(path, ("step", "epoch"))
    assert frame.empty and "last line cut off" in warnings[0]


def test_missing_and_broken_files(tmp_path):
    write_run(tmp_path, "e", "only-config", classify_config("e", "only-config", "sn", "8x2"), None)
    broken = write_run(tmp_path, "e", "bad-json", classify_config("e", "bad-json", "bn", "8x2"), None)
    (broken / "summary.json").write_text('{"format_version": 1, "status": "fin')
    bad_yaml = write_run(tmp_path, "e", "bad-yaml", {}, summary("classify", "e", "bad-yaml", "finished"))
    (bad_yaml / "config.yaml").write_text("task: [classify\n")
    (tmp_path / "e" / "not-a-run").mkdir()
    data = load_runs(tmp_path)
    assert data.runs.set_index("run_id")["status"].to_dict() == {
        "e/bad-json": "unknown", "e/bad-yaml": "finished", "e/only-config": "unknown"}
    assert data.runs.set_index("run_id")["task"]["e/bad-yaml"] == "classify"  # from the summary
    text = "\n".join(data.warnings)
    assert "bad-yaml/config.yaml: unreadable, config skipped" in text
    assert "only-config/summary.json: missing" in text
    assert "bad-json/summary.json: unreadable" in text
    assert data.metrics.empty and data.weights.empty


def test_unknown_format_version_is_a_clear_error(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"format_version": 7, "status": "finished"}')
    with pytest.raises(UnsupportedFormatError, match="format_version 7 is not supported.*reads format_version 1"):
        read_summary(path)
    path.write_text('{"status": "finished"}')
    with pytest.raises(UnsupportedFormatError, match="format_version None"):
        read_summary(path)


def test_root_arguments(tmp_path, root):
    empty = load_runs(tmp_path / "nothing-here")
    assert empty.runs.empty and empty.metrics.empty and "no run directory" in empty.warnings[0]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        load_runs(tmp_path / "file")
    with pytest.raises(TypeError, match="root must be a path"):
        load_runs(3)
    with pytest.raises(TypeError, match="experiment must be"):
        load_runs(root, experiment=5)
    only = load_runs(root, experiment="style")
    assert sorted(only.runs["run_id"]) == ["style/bn", "style/in", "style/sn"]
    assert set(only.metrics["experiment"]) == {"style"}
    direct = load_runs(root / "enas")  # an experiment directory as root
    assert sorted(direct.runs["run_id"]) == ["enas/gn", "enas/ln", "enas/sn-lngn"]


def test_samples_architectures_and_signature(root):
    assert [p.name for p in list_samples(root / "style/sn")] == ["step000040_astronaut.png",
                                                                 "step000040_coffee.png"]
    assert list_samples(root / "style/in") == []
    archs, warnings = read_architectures(root / "enas/sn-lngn")
    assert archs["val_acc"].tolist() == [0.35, 0.45, 0.55]
    assert archs["arch"][0] == "[0, 1, 0, 2]" and "last line cut off" in warnings[0]
    before = files_signature(root)
    assert ("style/sn/weights.csv" in {entry[0] for entry in before})
    with open(root / "style/in/metrics.csv", "a") as f:
        f.write("50,0,train,tv_loss,0.1\n")
    assert files_signature(root) != before


# ----------------------------------------------------------------------------- aggregation


def test_average_weights_per_task_by_hand(data):
    avg = average_weights(data.weights, "task").set_index(["task", "stat", "op"])["weight"]
    # classify, means: per run (in, ln, bn) = sn-8x4 (.2,.3,.5) [layer means of the 4 layers],
    # seed2 (.2,.2,.6), sn-inln (.4,.6,0: no BN), running run at step 100 (.3,.3,.4)
    assert avg["classify", "mean", "in"] == pytest.approx((.2 + .2 + .4 + .3) / 4)
    assert avg["classify", "mean", "ln"] == pytest.approx((.3 + .2 + .6 + .3) / 4)
    assert avg["classify", "mean", "bn"] == pytest.approx((.5 + .6 + 0 + .4) / 4)
    # variances: sn-8x4 (.2,.25,.55), seed2 (.2,.4,.4), sn-inln (.3,.7,0), running (.4,.3,.3)
    assert avg["classify", "var", "ln"] == pytest.approx((.25 + .4 + .7 + .3) / 4)
    assert avg["stylize", "var", "in"] == pytest.approx((.7 + .9) / 2)
    assert ("enas", "mean", "in") not in avg.index  # an op no layer of the group has: no bar
    sums = avg.groupby(level=["task", "stat"]).sum()
    assert sums.tolist() == pytest.approx([1.0] * len(sums))


def test_batch_helpers():
    assert parse_batch("8x32") == (8, 32)
    with pytest.raises(ValueError, match="'8by2'"):
        parse_batch("8by2")
    assert order_batches(["1x16", "8x2", "8x32", None, "8x1", "odd"]) == ["8x32", "8x2", "8x1", "1x16", "odd"]
    # the tasks' parser: 8X2 is a batch setting, 0x2 is not
    assert order_batches(["0x2", "8X2", "8x32"]) == ["8x32", "8X2", "0x2"]
    assert layer_prefix("layer2.0.bn1") == "layer2" and layer_prefix("layer2.0.bn1", 2) == "layer2.0"
    assert layer_prefix("bn1") == "bn1"
    with pytest.raises(ValueError, match="depth"):
        layer_prefix("a.b", 0)


# ----------------------------------------------------------------------------- figures


def test_fig1c_bars_are_the_hand_averages(data):
    fig = fig_weights_by_task(data.weights)
    assert [t.name for t in fig.data] == ["IN", "LN", "BN", "GN"] * 2
    assert [t.meta["stat"] for t in fig.data] == ["mean"] * 4 + ["var"] * 4
    assert [t.xaxis for t in fig.data] == ["x"] * 4 + ["x2"] * 4
    assert bars(fig, "mean") == {
        "IN": approx_dict({"classify": 1.1 / 4, "stylize": (.8 + .6) / 2}),
        "LN": approx_dict({"classify": 1.4 / 4, "enas": .7, "stylize": (.1 + .2) / 2}),
        "BN": approx_dict({"classify": 1.5 / 4, "stylize": (.1 + .2) / 2}),
        "GN": approx_dict({"enas": .3})}
    assert bars(fig, "var")["BN"] == approx_dict({"classify": (.55 + .4 + 0 + .3) / 4, "stylize": .075})
    by_exp = fig_weights_by_task(data.weights, by="experiment")
    assert set(by_exp.data[0].x) == {"sweep", "style"}
    with pytest.raises(ValueError, match="'norm'"):
        fig_weights_by_task(data.weights, by="norm")


def test_fig4_per_batch_setting(data):
    fig = fig_weights_by_batch(data.weights)
    assert list(fig.layout.xaxis.categoryarray) == ["8x4", "8x2", "8x1"]
    assert "1x4" not in fig.data[0].x  # stylize runs are not part of the sweep
    assert bars(fig, "mean") == {
        "IN": approx_dict({"8x4": .2, "8x2": .3, "8x1": .4}),
        "LN": approx_dict({"8x4": (.3 + .2) / 2, "8x2": .3, "8x1": .6}),
        "BN": approx_dict({"8x4": (.5 + .6) / 2, "8x2": .4})}  # SN at 8x1 has no BN
    assert bars(fig, "var")["LN"] == approx_dict({"8x4": (.25 + .4) / 2, "8x2": .3, "8x1": .7})


def test_fig3_per_block(data):
    weights = data.weights[data.weights["run_id"].eq("sweep/sn-8x4")]
    fig = fig_block_weights(weights)
    assert list(fig.layout.xaxis.categoryarray) == ["bn1", "layer1", "layer2"]
    # layer1 = layer1.0.bn1 (.1,.3,.6) and layer1.1.bn1 (.3,.1,.6)
    assert bars(fig, "mean") == {"IN": approx_dict({"bn1": .2, "layer1": .2, "layer2": .2}),
                                 "LN": approx_dict({"bn1": .3, "layer1": .2, "layer2": .5}),
                                 "BN": approx_dict({"bn1": .5, "layer1": .6, "layer2": .3})}
    assert bars(fig, "var")["LN"] == approx_dict({"bn1": .2, "layer1": .3, "layer2": .2})
    custom = fig_block_weights(weights, block_of=lambda name: "stem" if "." not in name else "body")
    assert bars(custom, "mean")["BN"] == approx_dict({"stem": .5, "body": (.6 + .6 + .3) / 3})
    with pytest.raises(TypeError, match="block_of"):
        fig_block_weights(weights, block_of="layer")


def test_weight_trajectories(data):
    with pytest.raises(ValueError, match="several runs"):
        fig_weight_trajectories(data.weights)
    fig = fig_weight_trajectories(data.weights, run_id="sweep/sn-8x4")
    assert len(fig.data) == 4 * 3 * 2
    line = [t for t in fig.data if t.meta == {"layer": "layer2.0.bn1", "stat": "var", "op": "bn"}]
    assert list(line[0].x) == [100, 300] and list(line[0].y) == pytest.approx([1 / 3, .5])
    assert len(fig_weight_trajectories(data.weights, run_id="style/in").data) == 0


def test_learning_curves(data):
    fig = fig_classify_curves(data.metrics)
    traces = {t.name: list(t.y) for t in fig.data}
    assert traces["bn 8x4"] == [0.5, 0.7, 0.8] and traces["sn 8x2"] == [0.4, 0.6]
    assert len(fig.data) == 8 and "Fig. 2" in fig.layout.title.text
    train = fig_classify_curves(data.metrics, split="train")
    assert {t.name: list(t.y) for t in train.data}["gn 8x1"] == pytest.approx([0.45, 0.65, 0.73])
    style = fig_stylize_losses(data.metrics, smooth=2)
    sn_style = [t for t in style.data if t.meta == {"run_id": "style/sn", "name": "style_loss"}][0]
    raw = [5.0 * 0.8 ** s for s in range(0, 50, 10)]
    assert list(sn_style.y) == pytest.approx([raw[0]] + [(a + b) / 2 for a, b in zip(raw, raw[1:])])
    assert [t.xaxis for t in style.data] == ["x"] * 3 + ["x2"] * 3
    enas = fig_enas_curves(data.metrics)
    # the ENAS sn run records norm "sn", as style/sn does: labels add the run name to tell them apart
    assert {t.name: list(t.y) for t in enas.data}["sn (sn-lngn)"] == [0.35, 0.45, 0.55]
    assert list(fig_enas_curves(data.metrics, "best_acc").data[0].y) == pytest.approx([0.4, 0.48, 0.55])
    empty = fig_learning_curves(data.metrics, ["no_such_metric"], "train")
    assert len(empty.data) == 0 and "no train no_such_metric" in empty.layout.annotations[0].text
    with pytest.raises(ValueError, match="'time'"):
        fig_learning_curves(data.metrics, ["acc"], "val", x="time")
    with pytest.raises(ValueError, match="smooth"):
        fig_learning_curves(data.metrics, ["acc"], "val", smooth=0)


def test_figures_on_no_runs_say_so(tmp_path):
    for data in (load_runs(tmp_path / "missing"), load_runs(tmp_path)):
        assert list(data.weights.columns[:3]) == ["run_id", "experiment", "run"]
        for build in (fig_weights_by_task, fig_weights_by_batch, fig_block_weights, fig_weight_trajectories):
            fig = build(data.weights)
            assert len(fig.data) == 0 and "no importance weights" in fig.layout.annotations[0].text
        for build in (fig_classify_curves, fig_stylize_losses, fig_enas_curves):
            fig = build(data.metrics)
            assert len(fig.data) == 0 and fig.layout.annotations[0].text.startswith("no ")


# ----------------------------------------------------------------------------- tables


def test_table2_by_hand(data):
    table = accuracy_table(data.runs)
    assert list(table.columns) == ["8x4", "8x1"]  # 8x2 only has a running run
    assert list(table.index) == ["BN", "GN", "SN", "SN-BN", "SN-GN"]
    assert table.loc["SN", "8x4"] == pytest.approx((85 + 87) / 2)  # two seeds
    assert table.loc["SN", "8x1"] == pytest.approx(76.0)  # from sn-inln
    assert math.isnan(table.loc["BN", "8x1"])  # BN failed at 8x1
    assert table.loc["SN-GN", "8x1"] == pytest.approx(-2.0)
    assert table.attrs["marked"] == [("SN", "8x1")]
    assert table_markdown(table, spread=False) == (
        "| norm | 8x4 | 8x1 |\n| --- | --- | --- |\n| BN | 80.0 | \u2013 |\n| GN | 82.0 | 78.0 |\n"
        "| SN | 86.0 | 76.0* |\n| SN-BN | +6.0 | \u2013 |\n| SN-GN | +4.0 | -2.0 |\n\n"
        "(*) For 8x1, SN is sn-inln (IN and LN, without BN), as BN is the same as IN when each "
        "device holds a single sample.\n")
    # with the spread over seeds: SN at 8x4 has seeds 85 and 87, std sqrt(2) = 1.4; one seed shows none
    text = table_markdown(table)
    assert "| SN | 86.0 \u00b1 1.4 | 76.0* |" in text and "| BN | 80.0 | \u2013 |" in text
    assert "mean \u00b1 standard deviation over seeds" in text


def test_table2_options(data, tmp_path):
    best = accuracy_table(data.runs, metric="best_val_acc")
    assert best.loc["GN", "8x4"] == pytest.approx(82.0) and best.loc["SN", "8x4"] == pytest.approx(86.0)
    with pytest.raises(ValueError, match="'top5'.*known"):
        accuracy_table(data.runs, metric="top5")
    assert accuracy_table(data.runs, eval_stats="moving_average").empty
    with pytest.raises(ValueError, match="'ema'"):
        accuracy_table(data.runs, eval_stats="ema")
    # sn-inln at a setting with more than one sample per device keeps its own row
    run = "sn-inln-8x4"
    write_run(tmp_path, "e", run, classify_config("e", run, "sn-inln", "8x4"),
              summary("classify", "e", run, "finished", {"test_acc": 0.5}), [],
              weight_rows(1, 0, {"a": (.5, .5)}, {"a": (.5, .5)}, ops=("in", "ln")))
    table = accuracy_table(load_runs(tmp_path).runs)
    assert list(table.index) == ["SN-INLN"] and table.loc["SN-INLN", "8x4"] == 50.0
    assert table_markdown(accuracy_table(pd.DataFrame())).startswith("_No finished")


def test_results_command_prints_the_table(root, tmp_path, capsys):
    assert results.main(["--root", str(root), "--experiment", "sweep"]) == 0
    out, err = capsys.readouterr()
    assert out == table_markdown(accuracy_table(load_runs(root, "sweep").runs))
    assert "| SN | 86.0 \u00b1 1.4 | 76.0* |" in out and "format_version 2" in err
    assert results.main(["--root", str(tmp_path / "none")]) == 1
    assert "python -m tasks.classify --experiment table2-quick" in capsys.readouterr().err
    assert results.main(["--root", str(root), "--metric", "nope"]) == 2


def test_table2_warns_when_a_cell_mixes_recipes(tmp_path):
    """Runs of one norm and batch setting that differ in more than their seed (here epochs, and
    in the second case the experiment) are flagged in the table's notes; differences that do not
    change the result (threads, logging, provenance) are not."""
    def add(exp, run, seed, acc, **extra):
        write_run(tmp_path, exp, run, classify_config(exp, run, "sn", "8x4", seed, **extra),
                  summary("classify", exp, run, "finished", {"test_acc": acc}))
    add("a", "s0", 0, 0.80, threads=1, weights_every_n_steps=10, provenance={"commit": "x", "dirty": False})
    add("a", "s1", 1, 0.82, threads=2, weights_every_n_steps=40, provenance={"commit": "y", "dirty": True})
    table = accuracy_table(load_runs(tmp_path).runs)
    assert table.attrs["mixed"] == {} and "Warning" not in table_markdown(table)
    add("a", "long", 2, 0.90, epochs=10)
    table = accuracy_table(load_runs(tmp_path).runs)
    assert table.attrs["mixed"] == {"SN 8x4": "epochs (10, 3)"}
    assert "Warning: SN 8x4 averages runs that differ in epochs (10, 3)" in table_markdown(table)
    add("b", "s0", 0, 0.70)
    assert accuracy_table(load_runs(tmp_path).runs).attrs["mixed"] == {"SN 8x4": "experiment (a, b); epochs (10, 3)"}


def test_results_command_tabulates_each_experiment_apart(tmp_path, capsys):
    """Without --experiment the runs of several experiments get one section each: never one
    table averaging them as if they were seeds."""
    for exp, accs in (("quick", (0.80, 0.82)), ("long", (0.90,))):
        for seed, acc in enumerate(accs):
            run = f"sn_s{seed}"
            write_run(tmp_path, exp, run, classify_config(exp, run, "sn", "8x4", seed),
                      summary("classify", exp, run, "finished", {"test_acc": acc}))
    assert results.main(["--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    long_part, quick_part = out.split("## quick")
    assert long_part.startswith("## long") and "| SN | 90.0 |" in long_part
    assert "| SN | 81.0 \u00b1 1.4 |" in quick_part and "Warning" not in out
    assert results.main(["--root", str(tmp_path), "--experiment", "quick"]) == 0
    assert not capsys.readouterr().out.startswith("##")


def test_results_module_runs_as_a_command(root):
    proc = subprocess.run([sys.executable, "-m", "analysis.results", "--root", str(root), "--experiment", "sweep",
                           "--digits", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| SN-GN | +4.00 | -2.00 |" in proc.stdout


def test_weights_by_epoch_reads_each_epochs_last_row_and_the_final_one():
    """Fig. 4 over training: per epoch the last logged step, averaged over layers then runs; the
    rows written at the end (Lightning's epoch count, one past the last) count for the last epoch."""
    from analysis.tables import epoch_weights_markdown, weights_by_epoch

    rows = []

    def add(run_id, step, epoch, layer, bn_mean, norm="sn"):
        for stat, bn in (("mean", bn_mean), ("var", 0.5)):
            rest = (1 - bn) / 2
            for op, w in (("in", rest), ("ln", rest), ("bn", bn)):
                rows.append({"run_id": run_id, "task": "classify", "norm": norm, "batch": "8x2", "step": step,
                             "epoch": epoch, "layer": layer, "stat": stat, "op": op, "weight": w})

    for run_id, shift in (("a", 0.0), ("b", 0.1)):
        for layer, off in (("l1", 0.0), ("l2", 0.2)):
            add(run_id, 0, 0, layer, 1 / 3)
            add(run_id, 5, 0, layer, 0.9)        # superseded by step 10 of the same epoch
            add(run_id, 10, 0, layer, 0.2 + off + shift)
            add(run_id, 20, 1, layer, 0.1 + off + shift)
            add(run_id, 25, 2, layer, 0.0 + off + shift)  # the end of training, epoch count 2
    add("s", 25, 1, "l1", 1.0, norm="ssn")  # Sparse SN is left out
    table = weights_by_epoch(pd.DataFrame(rows))
    assert list(table.index) == [0, 1, 2]
    assert table[("8x2", "BN mean")].tolist() == pytest.approx([1 / 3, 0.35, 0.15])  # epoch 2: step 25 (0.1, 0.2), not step 20
    assert table[("8x2", "BN var")].tolist() == pytest.approx([0.5, 0.5, 0.5])
    text = epoch_weights_markdown(table)
    assert "| 2 | 0.150 | 0.500 |" in text
    assert "- 8x2 BN mean: 0.333 -> 0.350 (epoch 1) -> 0.150 (epoch 2): +0.017 in the first half, -0.200 in the second" \
        in text


@pytest.mark.parametrize("body,clean", [
    ("0,0,l1,mean,in,0.25\n10,,l1,mean,ln,nan\n20,1,l1,var,bn,inf\n30,1,l1,var,bn,-inf\n", True),  # empty epoch
    ("0,0,l1,mean,in,0.25\n10,0,l1,mean\n20,1,l1,var,bn,0.5\n", False),          # a short row
    ("0,0,l1,mean,in,0.25\n1.5,0,l1,mean,ln,0.5\n", False),                       # a step that is no integer
    ("0,0,\"l,1\",mean,in,0.25\n5,0,l2,var,bn,x\n", False),                       # quoting, a bad number
    ("0,0,l1,mean,in,0.25\n5,0,,var,bn,0.1\n\n7,0,l1 ,var,bn,0.1\n", False),     # empty text, blank line, space
    ("0,0,l1,mean,in,0.25\n5,0,l1,var,bn,0.5", True),                            # the last line cut (left out)
])
def test_fast_csv_reading_equals_the_row_by_row_reading(tmp_path, body, clean, monkeypatch):
    """Run CSVs are read by pandas' C parser when undamaged; whatever the file, the frame and the
    warnings equal those of the row by row reading."""
    from analysis import load

    path = tmp_path / "weights.csv"
    path.write_text("step,epoch,layer,stat,op,weight\n" + body)
    args = (path, ("step", "epoch", "layer", "stat", "op", "weight"), ("step",), ("epoch", "weight"))
    fast = load.read_csv_table(*args)
    lines, _ = runformat.complete_lines(path)
    assert (load._fast_frame(lines, *args[1:]) is not None) == clean  # the C parser reads only clean files
    monkeypatch.setattr(load, "_fast_frame", lambda *a: None)
    slow = load.read_csv_table(*args)
    pd.testing.assert_frame_equal(fast[0], slow[0])
    assert fast[1] == slow[1]
    if body.startswith("0,0,l1,mean,in,0.25\n10,,"):
        assert len(fast[0]) == 4 and math.isnan(fast[0]["epoch"][1]) and math.isnan(fast[0]["weight"][1])
        assert fast[0]["weight"][3] == -math.inf and fast[0]["step"].dtype == "int64"


def test_weights_by_block_averages_each_stage_at_the_end():
    """Fig. 3 as a table: the last step's weights, per block (the name's first 2 parts), over the
    block's layers; earlier steps and Sparse SN runs do not count."""
    from analysis.tables import weights_by_block

    rows = []
    for run_id, norm, step, layers in [("a", "sn", 9, {"layers.0.bn1": 0.2, "layers.0.bn2": 0.4, "layers.1.bn1": 0.9}),
                                       ("a", "sn", 1, {"layers.0.bn1": 0.9, "layers.0.bn2": 0.9, "layers.1.bn1": 0.1}),
                                       ("s", "ssn", 9, {"layers.0.bn1": 1.0, "layers.0.bn2": 1.0, "layers.1.bn1": 1.0})]:
        for layer, bn in layers.items():
            for stat in ("mean", "var"):
                for op, w in (("in", (1 - bn) / 2), ("ln", (1 - bn) / 2), ("bn", bn)):
                    rows.append({"run_id": run_id, "task": "classify", "norm": norm, "batch": "8x2", "step": step,
                                 "layer": layer, "stat": stat, "op": op, "weight": w})
    lines = weights_by_block(pd.DataFrame(rows), 2).splitlines()
    assert lines[2] == "| 8x2 | layers.0 | 0.35 | 0.35 | 0.30 | 0.35 | 0.35 | 0.30 |"
    assert lines[3] == "| 8x2 | layers.1 | 0.05 | 0.05 | 0.90 | 0.05 | 0.05 | 0.90 |"
    assert len(lines) == 4
