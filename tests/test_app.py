"""app.py under streamlit.testing.v1.AppTest, on fixture runs and on none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fixture_runs import classify_config, summary, write_fixture_runs, write_run

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def root(tmp_path):
    return write_fixture_runs(tmp_path / "runs")


def start(monkeypatch, root, reference=None) -> AppTest:
    """The app on the runs under ``root`` and the reference results under ``reference`` (None:
    a folder that does not exist, so that the repository's own results/ stay out)."""
    monkeypatch.setenv("SN_RUNS_ROOT", str(root))
    monkeypatch.setenv("SN_REFERENCE_ROOT", str(reference or Path(root).parent / "no-reference-results"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at) -> dict:
    """{figure title: plotly spec} of every plotly chart on the page."""
    specs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    return {spec["layout"]["title"]["text"]: spec for spec in specs}


def widget(widgets, label):
    found = [w for w in widgets if w.label == label]
    assert len(found) == 1, [w.label for w in widgets]
    return found[0]


def frame_with(at, column):
    """The one st.dataframe on the page whose columns include ``column``."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


def runs_table(at):
    return frame_with(at, "status")


def test_renders_every_figure_with_runs(monkeypatch, root):
    at = start(monkeypatch, root)
    titles = set(charts(at))
    for fig in ("Fig. 1c", "Fig. 4", "Fig. 3", "Fig. 2", "Fig. 6a", "Fig. 6b"):
        assert any(fig in t for t in titles), (fig, titles)
    fig1c = charts(at)["Importance weights per task (Fig. 1c)"]
    in_mean = [t for t in fig1c["data"] if t["meta"] == {"stat": "mean", "op": "in"}][0]
    assert dict(zip(in_mean["x"], in_mean["y"])) == pytest.approx({"classify": 1.1 / 4, "stylize": 0.7})
    assert len(runs_table(at)) == 14
    table = [m.value for m in at.markdown if m.value.startswith("| norm |")]
    assert len(table) == 1 and "| SN | 86.0 \u00b1 1.4 | 76.0* |" in table[0]
    notes = at.sidebar.expander[0]
    assert "3 loading note(s)" in notes.label and any("format_version 2" in c.value for c in notes.caption)


def test_no_runs_shows_how_to_create_them(monkeypatch, tmp_path):
    for root in (tmp_path / "missing", tmp_path):
        at = start(monkeypatch, root)
        assert "No runs under" in at.info[0].value
        assert "python -m tasks.classify --experiment table2-quick" in at.code[0].value
        assert not at.get("plotly_chart") and not at.tabs


def test_root_that_is_a_file_is_an_error_message(monkeypatch, tmp_path):
    (tmp_path / "runs.txt").write_text("not a directory")
    at = start(monkeypatch, tmp_path / "runs.txt")
    assert "is not a directory" in at.error[0].value


def test_filters_change_what_is_shown(monkeypatch, root):
    at = start(monkeypatch, root)
    widget(at.sidebar.multiselect, "Tasks").set_value(["stylize"]).run()
    assert not at.exception
    assert sorted(runs_table(at)["run_id"]) == ["style/bn", "style/in", "style/sn"]
    titles = set(charts(at))
    assert not any("Fig. 2" in t or "Fig. 4" in t or "Fig. 6b" in t for t in titles), titles
    assert any("Fig. 6a" in t for t in titles)
    assert not [m for m in at.markdown if m.value.startswith("| norm |")]

    at = start(monkeypatch, root)
    widget(at.sidebar.multiselect, "Batch settings").set_value(["8x4"]).run()
    fig4 = charts(at)["Importance weights per batch setting (Fig. 4)"]
    assert {x for t in fig4["data"] for x in t["x"]} == {"8x4"}
    widget(at.sidebar.multiselect, "Norms").set_value(["bn", "gn"]).run()
    assert sorted(runs_table(at)["run_id"]) == ["sweep/bn-8x4", "sweep/gn-8x4"]
    assert any("None of the selected runs logged importance weights" in i.value for i in at.info)


def test_runs_filter_and_status_filter(monkeypatch, root):
    at = start(monkeypatch, root)
    widget(at.sidebar.multiselect, "Status").set_value(["failed", "running"]).run()
    assert sorted(runs_table(at)["run_id"]) == ["sweep/bn-8x1", "sweep/sn-8x2-running"]
    widget(at.sidebar.multiselect, "Runs").set_value(["sweep/sn-8x2-running"]).run()
    assert list(runs_table(at)["run_id"]) == ["sweep/sn-8x2-running"]
    assert "1 of 14 runs selected" in at.sidebar.caption[-1].value


def test_single_run_tab(monkeypatch, root):
    at = start(monkeypatch, root)
    at.selectbox(key="single_run").set_value("style/sn").run()
    assert not at.exception
    images = at.get("image")
    assert [img.caption for img in images[0].proto.imgs] == ["step000040_astronaut.png", "step000040_coffee.png"]
    weights = [d.value for d in at.dataframe if "enc.norm1" in d.value.index]
    assert len(weights) == 1 and weights[0].shape == (2, 6)  # layers x (stat, op)
    assert any("style/sn" in t for t in charts(at))  # the weight trajectories
    assert "perceptual_net: vgg16-random-init" in at.code[0].value

    at.selectbox(key="single_run").set_value("enas/sn-lngn").run()
    archs = frame_with(at, "arch")
    assert archs["val_acc"].tolist() == [0.55, 0.45, 0.35]
    at.selectbox(key="single_run").set_value("sweep/bn-8x1").run()
    assert any("This run failed: RuntimeError: loss is nan" in w.value for w in at.warning)
    # a filter that removes the chosen run falls back to one it keeps
    widget(at.sidebar.multiselect, "Tasks").set_value(["enas"]).run()
    assert not at.exception
    assert at.selectbox(key="single_run").value in {"enas/gn", "enas/ln", "enas/sn-lngn"}
    assert at.selectbox(key="block_run").value == "enas/sn-lngn"


def test_new_runs_appear_without_restart(monkeypatch, root):
    at = start(monkeypatch, root)
    assert len(runs_table(at)) == 14
    run = "gn-8x2"
    write_run(root, "sweep", run, classify_config("sweep", run, "gn", "8x2"),
              summary("classify", "sweep", run, "finished", {"test_acc": 0.8}), [])
    at.run()
    assert len(runs_table(at)) == 15  # the cache is keyed on the files, so it reloads
