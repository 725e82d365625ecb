"""app.py under AppTest with reference results (a results/ folder) beside the user's runs, the
per-layer views, the paper's Table 2 beside ours, and the reload watcher."""

from __future__ import annotations


import pytest

from fixture_runs import write_fixture_runs
from test_app import charts, runs_table, start


@pytest.fixture
def reference(tmp_path):
    return write_fixture_runs(tmp_path / "results")


def test_reference_results_without_user_runs(monkeypatch, tmp_path, reference):
    at = start(monkeypatch, tmp_path / "runs", reference)
    assert "Showing the reference results" in at.info[0].value
    table = runs_table(at)
    assert len(table) == 14 and set(table["source"]) == {"reference"}
    assert all(r.startswith("reference/") for r in table["run_id"])
    # the figures are drawn from them: Fig. 1c's IN mean per task, as in test_app's hand average
    fig1c = charts(at)["Importance weights per task (Fig. 1c)"]
    in_mean = [t for t in fig1c["data"] if t["meta"] == {"stat": "mean", "op": "in"}][0]
    assert dict(zip(in_mean["x"], in_mean["y"])) == pytest.approx({"classify": 1.1 / 4, "stylize": 0.7})
    # experiments are labelled as reference results
    fig = charts(at)
    at.radio[0].set_value("experiment").run()
    by_exp = charts(at)["Importance weights per experiment (Fig. 1c)"]
    assert {"sweep (reference)", "style (reference)"} <= set(by_exp["data"][0]["x"])
    assert fig  # (the task view was there before)


def test_reference_results_can_be_hidden(monkeypatch, tmp_path, reference):
    at = start(monkeypatch, tmp_path / "runs", reference)
    at.sidebar.toggle(key="show_reference").set_value(False).run()
    assert not at.exception
    assert "No runs under" in at.info[0].value and not at.tabs


def test_reference_results_beside_user_runs_do_not_merge(monkeypatch, tmp_path, reference):
    yours = write_fixture_runs(tmp_path / "runs")
    at = start(monkeypatch, yours, reference)
    table = runs_table(at)
    assert len(table) == 28 and table["source"].value_counts().to_dict() == {"yours": 14, "reference": 14}
    assert "sweep/sn-8x4" in set(table["run_id"]) and "reference/sweep/sn-8x4" in set(table["run_id"])
    assert not [i for i in at.info if "Showing the reference results" in i.value]
    # Fig. 1c keeps the two sources apart by default: the same IN mean for each copy of the fixture
    fig1c = charts(at)["Importance weights per task (Fig. 1c)"]
    in_mean = [t for t in fig1c["data"] if t["meta"] == {"stat": "mean", "op": "in"}][0]
    assert dict(zip(in_mean["x"], in_mean["y"])) == pytest.approx(
        {"classify": 1.1 / 4, "stylize": 0.7, "classify (reference)": 1.1 / 4, "stylize (reference)": 0.7})


def test_layer_views_and_the_paper_beside_ours(monkeypatch, tmp_path):
    at = start(monkeypatch, write_fixture_runs(tmp_path / "runs"))
    at.selectbox(key="layer_run").set_value("sweep/sn-8x4").run()
    figs = charts(at)
    heat = figs["Importance weights per layer (colour: weight - uniform): sweep/sn-8x4"]
    mean = [t for t in heat["data"] if t["meta"]["stat"] == "mean"][0]
    assert mean["y"] == ["bn1", "layer1.0.bn1", "layer1.1.bn1", "layer2.0.bn1"]
    assert mean["z"][0] == pytest.approx([0.2 - 1 / 3, 0.3 - 1 / 3, 0.5 - 1 / 3])
    dev = figs["Distance from uniform weights per layer (0.5 sum |w - 1/K|)"]
    assert [t for t in dev["data"] if t["meta"]["stat"] == "mean"][0]["y"] == pytest.approx(
        [1 / 6, 4 / 15, 4 / 15, 1 / 6])
    assert "The whole network's importance weights during training" in figs
    at.toggle(key="beside_paper").set_value(True).run()
    assert any("8x4 ours / paper" in m.value and "| SN | 86.0 / 75.9 |" in m.value for m in at.markdown)




def test_fig4_shows_one_experiment_at_a_time(monkeypatch, tmp_path, reference):
    """Experiments differ in length, so Fig. 4 never averages two of them (nor the user's copy
    of an experiment with the reference one): a select box picks one, and its bars, with their
    run counts, are those of that experiment alone."""
    at = start(monkeypatch, write_fixture_runs(tmp_path / "alone"))
    assert not [b for b in at.selectbox if b.key == "fig4_experiment"]  # one experiment: no choice
    alone = charts(at)["Importance weights per batch setting (Fig. 4)"]
    assert {n for t in alone["data"] for n in t["customdata"]} == {1, 2}  # 8x4: 2 runs; 8x1, 8x2: 1
    at = start(monkeypatch, write_fixture_runs(tmp_path / "runs"), reference)
    assert list(at.selectbox(key="fig4_experiment").options) == ["sweep", "sweep (reference)"]
    for choice in ("sweep", "sweep (reference)"):
        at.selectbox(key="fig4_experiment").set_value(choice).run()
        assert not at.exception
        fig4 = charts(at)["Importance weights per batch setting (Fig. 4)"]
        assert [(t["meta"], t["x"], t["customdata"]) for t in fig4["data"]] == \
            [(t["meta"], t["x"], t["customdata"]) for t in alone["data"]]
        assert [t["y"] for t in fig4["data"]] == [pytest.approx(t["y"]) for t in alone["data"]]


def test_table2_shows_one_experiment_at_a_time(monkeypatch, tmp_path, reference):
    """The user's copy of an experiment and the reference one are not averaged as if they were
    more seeds: Table 2 shows one experiment at a time, each equal to the table of that
    experiment alone (same means, same spread over the same 2 seeds of SN 8x4)."""
    def table2(at):
        return [m.value for m in at.markdown if m.value.startswith("| norm |")]
    at = start(monkeypatch, write_fixture_runs(tmp_path / "alone"))
    assert not [b for b in at.selectbox if b.key == "table2_experiment"]
    [alone] = table2(at)
    assert "| SN | 86.0 ± 1.4 | 76.0* |" in alone  # sn-8x4 (85%) and sn-8x4-seed2 (87%)
    at = start(monkeypatch, write_fixture_runs(tmp_path / "runs"), reference)
    assert list(at.selectbox(key="table2_experiment").options) == ["sweep", "sweep (reference)"]
    for choice in ("sweep", "sweep (reference)"):
        at.selectbox(key="table2_experiment").set_value(choice).run()
        assert not at.exception
        assert table2(at) == [alone]
