"""Per-layer views of the importance weights (analysis.aggregate / analysis.figures) on the
fixture runs of tests/fixture_runs.py: the layer x op matrix, the distance from uniform and the
whole network's trajectory. Expected numbers are worked out by hand from the fixture's literal
weights (the arithmetic is in the comments)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.aggregate import add_blocks, deviation_from_uniform, layer_matrix, network_trajectory
from analysis.figures import fig_deviation, fig_layer_heatmap, fig_network_trajectory
from analysis.load import load_runs
from fixture_runs import LAYERS, SN_8X4_MEAN, SN_8X4_VAR, write_fixture_runs

THIRD = 1 / 3


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return load_runs(write_fixture_runs(tmp_path_factory.mktemp("runs"))).weights


def one(weights, run):
    return weights[weights["run_id"].eq(f"sweep/{run}")]


def test_layer_matrix_is_the_final_weights_in_network_order(weights):
    table = layer_matrix(one(weights, "sn-8x4"))
    assert list(table.index) == LAYERS
    assert list(table.columns) == [(s, o) for s in ("mean", "var") for o in ("in", "ln", "bn")]
    for layer in LAYERS:  # the step-300 rows, not the uniform step-100 ones
        assert table.loc[layer, "mean"].tolist() == pytest.approx(list(SN_8X4_MEAN[layer]))
        assert table.loc[layer, "var"].tolist() == pytest.approx(list(SN_8X4_VAR[layer]))


def test_layer_matrix_over_all_steps_averages_them(weights):
    table = layer_matrix(one(weights, "sn-8x4"), final=False)
    # bn1 mean BN: (1/3 at step 100 + 0.5 at step 300) / 2
    assert table.loc["bn1", ("mean", "bn")] == pytest.approx((THIRD + 0.5) / 2)


def test_layer_matrix_refuses_several_runs_and_other_input(weights):
    with pytest.raises(ValueError, match="one run"):
        layer_matrix(weights)
    with pytest.raises(TypeError, match="DataFrame"):
        layer_matrix([1, 2])
    with pytest.raises(ValueError, match="lacks"):
        layer_matrix(one(weights, "sn-8x4").drop(columns=["weight"]))


def test_deviation_per_layer_by_hand(weights):
    dev = deviation_from_uniform(one(weights, "sn-8x4"), "layer").set_index(["layer", "stat"])
    # bn1 mean (.2, .3, .5): 0.5 * (2/15 + 1/30 + 1/6) = 1/6; largest gap 1/6 (BN)
    assert dev.loc[("bn1", "mean"), "tv"] == pytest.approx(1 / 6)
    assert dev.loc[("bn1", "mean"), "max_abs"] == pytest.approx(1 / 6)
    assert dev.loc[("bn1", "mean"), "top_op"] == "bn"
    # layer1.0.bn1 mean (.1, .3, .6): 0.5 * (7/30 + 1/30 + 8/30) = 4/15; layer2.0.bn1 (.2, .5, .3): 1/6, LN on top
    assert dev.loc[("layer1.0.bn1", "mean"), "tv"] == pytest.approx(4 / 15)
    assert dev.loc[("layer2.0.bn1", "mean"), "top_op"] == "ln"
    # bn1 var (.1, .2, .7): 0.5 * (7/30 + 4/30 + 11/30) = 11/30
    assert dev.loc[("bn1", "var"), "tv"] == pytest.approx(11 / 30)
    assert (dev["n_layers"] == 1).all()


def test_deviation_with_two_ops_uses_one_half(weights):
    # sn-inln at 8x1: every layer mean (.4, .6) -> 0.5 * (0.1 + 0.1) = 0.1; var (.3, .7) -> 0.2
    dev = deviation_from_uniform(one(weights, "sn-inln-8x1"), "run_id").set_index("stat")
    assert dev.loc["mean", "tv"] == pytest.approx(0.1)
    assert dev.loc["var", "tv"] == pytest.approx(0.2)
    assert dev.loc["mean", "n_layers"] == len(LAYERS)


def test_deviation_per_block_averages_its_layers(weights):
    blocks, _ = add_blocks(one(weights, "sn-8x4"), 1)
    dev = deviation_from_uniform(blocks, "block").set_index(["block", "stat"])
    # layer1: layer1.0.bn1 (4/15) and layer1.1.bn1 (.3, .1, .6): 0.5 * (1/30 + 7/30 + 8/30) = 4/15
    assert dev.loc[("layer1", "mean"), "tv"] == pytest.approx(4 / 15)
    assert dev.loc[("layer1", "mean"), "n_layers"] == 2
    assert dev.loc[("bn1", "mean"), "tv"] == pytest.approx(1 / 6)


def test_uniform_weights_are_at_distance_zero_even_when_the_average_is_not_informative(weights):
    # step 100 of sn-8x4 is uniform: distance 0; at step 300 the network's average BN weight
    # is (.5 + .6 + .6 + .3) / 4 = 0.5, IN (.2 + .1 + .3 + .2) / 4 = 0.2, LN 0.3
    traj = network_trajectory(one(weights, "sn-8x4")).set_index(["step", "stat", "op"])
    assert traj.loc[(100, "mean", "bn"), "weight"] == pytest.approx(THIRD)
    assert traj.loc[(100, "mean", "bn"), "tv"] == pytest.approx(0.0)
    assert traj.loc[(300, "mean", "bn"), "weight"] == pytest.approx(0.5)
    assert traj.loc[(300, "mean", "in"), "weight"] == pytest.approx(0.2)
    # mean distance of the four layers: (1/6 + 4/15 + 4/15 + 1/6) / 4 = 13/60
    assert traj.loc[(300, "mean", "in"), "tv"] == pytest.approx(13 / 60)


def test_trajectory_leaves_out_a_step_cut_short(weights):
    # the running run's step 200 has 6 of 12 rows (a crash cut weights.csv): only step 100 stays
    traj = network_trajectory(one(weights, "sn-8x2-running"))
    assert sorted(set(traj["step"])) == [100]
    row = traj[(traj["stat"] == "mean") & (traj["op"] == "bn")]
    assert row["weight"].tolist() == pytest.approx([0.4])


def test_layer_heatmap_colours_the_distance_and_writes_the_weights(weights):
    fig = fig_layer_heatmap(one(weights, "sn-8x4"))
    mean = next(t for t in fig.data if t.meta["stat"] == "mean")
    assert list(mean.y) == LAYERS and list(mean.x) == ["IN", "LN", "BN"]
    assert mean.z[0] == pytest.approx([0.2 - THIRD, 0.3 - THIRD, 0.5 - THIRD])
    assert mean.text[1] == pytest.approx([0.1, 0.3, 0.6])
    # the colour scale is symmetric around 0 and spans the largest gap: bn1 var BN 0.7 - 1/3
    assert mean.zmid == 0 and mean.zmax == pytest.approx(0.7 - THIRD) and mean.zmin == pytest.approx(THIRD - 0.7)
    raw = next(t for t in fig_layer_heatmap(one(weights, "sn-8x4"), relative=False).data if t.meta["stat"] == "var")
    assert raw.z[0] == pytest.approx([0.1, 0.2, 0.7]) and (raw.zmin, raw.zmax) == (0.0, 1.0)


def test_network_trajectory_figure(weights):
    fig = fig_network_trajectory(weights, run_ids=["sweep/sn-8x4"])
    bn = next(t for t in fig.data if t.meta.get("kind") == "weight" and t.meta["stat"] == "mean"
              and t.meta["op"] == "bn")
    assert list(bn.x) == [100, 300] and list(bn.y) == pytest.approx([THIRD, 0.5])
    tv = next(t for t in fig.data if t.meta.get("kind") == "tv" and t.meta["stat"] == "mean")
    assert list(tv.y) == pytest.approx([0.0, 13 / 60])


def test_deviation_figure_per_layer_and_block(weights):
    fig = fig_deviation(one(weights, "sn-8x4"))
    mean = next(t for t in fig.data if t.meta["stat"] == "mean")
    assert list(mean.x) == LAYERS
    assert list(mean.y) == pytest.approx([1 / 6, 4 / 15, 4 / 15, 1 / 6])
    assert list(mean.customdata) == ["BN", "BN", "BN", "LN"]
    blocks = next(t for t in fig_deviation(one(weights, "sn-8x4"), by="block").data if t.meta["stat"] == "mean")
    assert list(blocks.x) == ["bn1", "layer1", "layer2"]
    with pytest.raises(ValueError, match="layer' or 'block"):
        fig_deviation(weights, by="stage")


def test_empty_weights_give_figures_that_say_so():
    empty = pd.DataFrame(columns=["run_id", "step", "layer", "stat", "op", "weight"])
    for fig in (fig_layer_heatmap(empty), fig_network_trajectory(empty), fig_deviation(empty)):
        assert not fig.data and fig.layout.annotations


# ----------------------------------------------------------------------------- Table 2 spread, paper, Fig. 4


def _runs(cells):
    """A runs frame of finished classify runs: cells = [(norm, batch, [test accs over seeds])]."""
    rows = [{"run_id": f"e/{n}_{b}_s{i}", "task": "classify", "status": "finished", "norm": n, "batch": b,
             "final_test_acc": acc} for n, b, accs in cells for i, acc in enumerate(accs)]
    return pd.DataFrame(rows)


def test_difference_within_noise_is_marked():
    from analysis.tables import accuracy_table, table_markdown

    # SN (0.90, 0.92): mean 91, std sqrt(2); BN (0.89, 0.91): mean 90, std sqrt(2)
    # SN-BN = +1.0, standard error sqrt(2/2 + 2/2) = sqrt(2) = 1.41 -> within 2 SE: noise
    # at 8x2: SN (0.90, 0.90) std 0, BN (0.60, 0.62) std sqrt(2): +29.0, SE 1.0 -> not noise
    runs = _runs([("sn", "8x32", [0.90, 0.92]), ("bn", "8x32", [0.89, 0.91]),
                  ("sn", "8x2", [0.90, 0.90]), ("bn", "8x2", [0.60, 0.62])])
    table = accuracy_table(runs, diffs=(("sn", "bn"),))
    assert table.loc["SN-BN", "8x32"] == pytest.approx(1.0)
    assert table.attrs["std"].loc["SN", "8x32"] == pytest.approx(2 ** 0.5)
    assert table.attrs["std"].loc["SN-BN", "8x32"] == pytest.approx(2 ** 0.5)
    assert table.attrs["std"].loc["SN-BN", "8x2"] == pytest.approx(1.0)
    assert table.attrs["within_noise"] == [("SN-BN", "8x32")]
    text = table_markdown(table)
    assert "| SN-BN | +1.0 \u00b1 1.4 ~ | +29.0 \u00b1 1.0 |" in text and "within two standard errors" in text


def test_paper_table_holds_the_published_numbers():
    from analysis.tables import comparison_markdown, accuracy_table, paper_table

    paper = paper_table()
    # Table 2 of Luo et al.: BN 76.4 / GN 75.9 / SN 76.9 at (8, 32); BN 65.3 at (8, 2); SN-BN +10.3 there
    assert paper.loc["BN", "8x32"] == 76.4 and paper.loc["SN", "8x32"] == 76.9 and paper.loc["GN", "8x32"] == 75.9
    assert paper.loc["BN", "8x2"] == 65.3 and paper.loc["SN-BN", "8x2"] == pytest.approx(10.3)
    assert pd.isna(paper.loc["BN", "8x1"]) and paper.loc["SN", "8x1"] == 75.0
    assert list(paper.columns[:5]) == ["8x32", "8x16", "8x8", "8x4", "8x2"]
    ours = accuracy_table(_runs([("sn", "8x32", [0.9]), ("bn", "8x32", [0.8]), ("sn", "8x2", [0.85]),
                                 ("bn", "8x2", [0.5])]), diffs=(("sn", "bn"),))
    text = comparison_markdown(ours)
    assert "| SN | 90.0 / 76.9 | 85.0 / 75.6 |" in text and "| SN-BN | +10.0 / +0.5 | +35.0 / +10.3 |" in text


def test_weights_by_batch_and_the_fig4_gap(weights):
    from analysis.tables import weights_by_batch, weights_markdown

    table = weights_by_batch(weights)
    # 8x4: sn-8x4 final BN means (.5 .6 .6 .3) -> 0.5, sn-8x4-seed2 all 0.6 -> mean over runs 0.55
    assert table.loc["8x4", ("mean", "bn")] == pytest.approx(0.55)
    # 8x2: the running run's last complete step (100): BN mean 0.4 in both layers
    assert table.loc["8x2", ("mean", "bn")] == pytest.approx(0.4)
    # 8x1: sn-inln has no BN: BN absent, IN 0.4
    assert pd.isna(table.loc["8x1", ("mean", "bn")]) and table.loc["8x1", ("mean", "in")] == pytest.approx(0.4)
    text = weights_markdown(table)
    assert "Mean BN weight at 8x4 minus at 8x2: +0.150 (0.550 vs 0.400)." in text


def test_results_command_with_the_paper(tmp_path, capsys):
    from analysis import results

    root = write_fixture_runs(tmp_path / "runs")
    assert results.main(["--root", str(root), "--experiment", "sweep", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "8x4 ours / paper" in out and "| SN | 86.0 / 75.9 |" in out  # the paper's SN at (8, 4): 75.9
    assert "Mean BN weight at 8x4 minus at 8x2: +0.150" in out
