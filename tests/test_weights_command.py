"""``python -m analysis.weights``: every task's SN runs, one run at a time, on the fixture runs of
tests/fixture_runs.py (expected numbers worked out from the fixture's literal weights) and on a
committed reference run (against a plain-csv recomputation)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest

from analysis import weights as W
from analysis.load import load_runs
from fixture_runs import LAYERS, SN_8X4_MEAN, SN_8X4_VAR, write_fixture_runs

REPO = Path(__file__).resolve().parents[1]
THIRD = 1 / 3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fixture_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def weights(root):
    return load_runs(root).weights


def column_mean(table: dict, i: int) -> float:
    return sum(v[i] for v in table.values()) / len(table)


def test_run_averages_are_each_runs_final_layer_means(weights):
    table = W.run_averages(weights)
    row = table.loc["sweep/sn-8x4"]
    for i, op in enumerate(("in", "ln", "bn")):  # step 300, not the uniform step 100
        assert row[("mean", op)] == pytest.approx(column_mean(SN_8X4_MEAN, i))
        assert row[("var", op)] == pytest.approx(column_mean(SN_8X4_VAR, i))
    assert row[("layers", "")] == len(LAYERS) and row[("step", "")] == 300
    inln = table.loc["sweep/sn-inln-8x1"]  # no BN branch: no BN weight, not a 0 of its own
    assert inln[("mean", "in")] == pytest.approx(0.4) and inln[("var", "ln")] == pytest.approx(0.7)
    assert inln[("mean", "bn")] != inln[("mean", "bn")]  # NaN
    # the running run's step 200 was cut short by the crash: step 100 is its last complete one
    running = table.loc["sweep/sn-8x2-running"]
    assert running[("step", "")] == 100 and running[("mean", "bn")] == pytest.approx(0.4)
    enas = table.loc["enas/sn-lngn"]
    assert enas[("mean", "ln")] == pytest.approx(0.7) and enas[("var", "gn")] == pytest.approx(0.4)


def test_trajectory_has_the_first_and_last_step_and_the_distance_from_uniform(weights):
    table = W.trajectory(weights, "sweep/sn-8x4", points=2)
    assert list(table.index) == [100, 300]
    assert table.loc[100, ("mean", "bn")] == pytest.approx(THIRD)
    assert table.loc[100, ("tv", "mean")] == pytest.approx(0.0)
    tv = [0.5 * sum(abs(w - THIRD) for w in ws) for ws in SN_8X4_MEAN.values()]
    assert table.loc[300, ("tv", "mean")] == pytest.approx(sum(tv) / len(tv))
    assert table.loc[300, ("mean", "ln")] == pytest.approx(column_mean(SN_8X4_MEAN, 1))
    with pytest.raises(ValueError, match="points must be an integer of at least 2"):
        W.trajectory(weights, "sweep/sn-8x4", points=1)
    with pytest.raises(ValueError, match="no importance weights logged for run 'sweep/bn-8x4'"):
        W.trajectory(weights, "sweep/bn-8x4")


def test_trajectory_spreads_its_points_over_the_logged_steps(weights, tmp_path):
    import fixture_runs as F
    rows = []
    for step in range(0, 1001, 100):  # 11 logged steps; BN mean weight = 0.2 + step / 2000
        bn = 0.2 + step / 2000
        rows += F.weight_rows(step, 0, {"a": ((1 - bn) / 2, (1 - bn) / 2, bn)}, {"a": (THIRD,) * 3})
    F.write_run(tmp_path, "long", "sn", F.classify_config("long", "sn", "sn", "8x4"),
                F.summary("classify", "long", "sn", "finished"), weights=rows)
    table = W.trajectory(load_runs(tmp_path).weights, "long/sn", points=3)
    assert list(table.index) == [0, 500, 1000]
    assert table[("mean", "bn")].tolist() == pytest.approx([0.2, 0.45, 0.7])


def test_layer_leaders_count_clear_leads_and_ties(weights):
    table = W.layer_leaders(weights, "sweep/sn-8x4")
    means, variances = table.loc["mean"], table.loc["var"]
    # means: bn1 BN .5, layer1.0 BN .6, layer1.1 BN .6, layer2.0 LN .5
    assert means["leads"] == {"in": 0, "ln": 1, "bn": 3} and means["ties"] == 0
    # the largest lead, .6 - .3, is shared by layer1.0.bn1 and layer1.1.bn1: the first is named
    assert means["top_layer"] == "layer1.0.bn1" and means["top_op"] == "bn"
    assert means["margin"] == pytest.approx(0.3)
    # variances: layer1.1.bn1 has LN .4 and BN .4, a tie that neither op is credited with
    assert variances["leads"] == {"in": 0, "ln": 0, "bn": 3} and variances["ties"] == 1
    assert variances["top_layer"] == "bn1" and variances["top_weight"] == pytest.approx(0.7)
    assert variances["margin"] == pytest.approx(0.5)


def test_command_prints_every_task_and_filters(root, capsys):
    assert W.main(["--root", str(root), "--layers"]) == 0
    out = capsys.readouterr().out
    for run in ("sweep/sn-8x4", "style/sn", "enas/sn-lngn"):
        assert f"### {run}" in out
    # style/sn: enc.norm1 (.8 .1 .1), enc.norm2 (.6 .2 .2): IN mean 0.700 over the two layers
    assert "| style/sn | 2 | 40 | 0.700 | 0.150 | 0.150 |" in out
    assert "| `enc.norm2` | 0.60 | 0.20 | 0.20 | 0.90 | 0.05 | 0.05 |" in out
    assert "- vars: layers led by IN 0, LN 0, BN 3, tied 1 (of 4)" in out

    assert W.main(["--root", str(root), "--task", "enas"]) == 0
    out = capsys.readouterr().out
    assert "### enas/sn-lngn" in out and "### style/sn" not in out
    assert "| LN mean | GN mean | LN var | GN var |" in out

    assert W.main(["--root", str(root), "--runs", "sn-8x4*,sn-inln*", "--digits", "2"]) == 0
    out = capsys.readouterr().out
    assert "### sweep/sn-8x4-seed2" in out and "### sweep/sn-inln-8x1" in out and "### style/sn" not in out
    assert "| sweep/sn-inln-8x1 | 4 | 300 | 0.40 | 0.60 | – | 0.30 | 0.70 | – |" in out


def test_command_errors(root, tmp_path, capsys):
    assert W.main(["--root", str(root), "--task", "detect"]) == 1
    assert "No runs with importance weights" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert W.main(["--root", str(empty)]) == 1
    with pytest.raises(SystemExit) as err:
        W.main(["--root", str(root), "--points", "1"])
    assert err.value.code == 2 and "--points must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        W.main(["--root", str(root), "--digits", "9"])
    assert "--digits must be between 0 and 6" in capsys.readouterr().err


def test_the_reference_stylize_run_against_its_csv(capsys):
    """The committed stylize-quick SN run: the command's final averages equal a plain-csv mean
    over the last step's layers."""
    path = REPO / "results" / "stylize-quick" / "sn_s0" / "weights.csv"
    by_step = defaultdict(lambda: defaultdict(list))
    with path.open() as f:
        for row in csv.DictReader(f):
            by_step[int(row["step"])][(row["stat"], row["op"])].append(float(row["weight"]))
    last = by_step[max(by_step)]
    assert W.main(["--root", str(REPO / "results"), "--experiment", "stylize-quick"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| stylize-quick/sn_s0 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert int(cells[1]) == len(last[("mean", "in")]) and int(cells[2]) == max(by_step)
    want = [sum(last[(s, o)]) / len(last[(s, o)]) for s in ("mean", "var") for o in ("in", "ln", "bn")]
    assert [float(c) for c in cells[3:]] == pytest.approx(want, abs=5e-4)
