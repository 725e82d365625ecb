"""The dashboard's detection views under AppTest: weights per component (Fig. 1c), the AP table
(Tables 3-5), the predictions of a run; and their analysis functions on hand-made frames."""
from __future__ import annotations

import pandas as pd
import pytest
import runformat as rf

from analysis.detect import ap_markdown, ap_table, fig_component_weights
from fixture_runs import VERSIONS, summary, weight_rows, write_run
from test_app import charts, start

# final weights (in, ln, bn) of the SN run, per layer: backbone leans to BN, heads to LN
SN_MEAN = {"backbone.body.bn1": (.1, .2, .7), "backbone.body.layer1.0.bn1": (.1, .4, .5),
           "backbone.fpn.layer_blocks.0.1": (.2, .3, .5), "roi_heads.box_head.0.1": (.1, .8, .1),
           "roi_heads.box_head.1.1": (.3, .6, .1), "roi_heads.mask_head.0.1": (.2, .6, .2)}
SN_VAR = {layer: (.2, .3, .5) for layer in SN_MEAN}
FINALS = {  # run: (norm, head_norm, batch, box AP, mask AP)
    "bn-frozen_4x2_s0": ("bn-frozen", "none", "4x2", 0.20, 0.18), "gn_4x2_s0": ("gn", "gn", "4x2", 0.30, 0.28),
    "sn_4x2_s0": ("sn", "sn", "4x2", 0.34, 0.31), "sn_4x2_s1": ("sn", "sn", "4x2", 0.36, 0.33),
    "sn-inln_8x1_s0": ("sn-inln", "sn-inln", "8x1", 0.33, 0.30),
}


def write_detect_runs(root):
    exp = "det"
    for run, (norm, head, batch, box, mask) in FINALS.items():
        config = {"task": "detect", "experiment": exp, "run": run, "norm": norm, "head_norm": head, "batch": batch,
                  "seed": int(run[-1]), "versions": VERSIONS, "arch": "maskrcnn"}
        final = {"box_ap": box, "box_ap50": box + 0.3, "box_ap75": box - 0.05, "mask_ap": mask,
                 "mask_ap50": mask + 0.3, "mask_ap75": mask - 0.05, "steps": 768}
        metrics = [(768, 3, "val", name, value) for name, value in final.items() if name != "steps"]
        weights = weight_rows(768, 3, SN_MEAN, SN_VAR) if run == "sn_4x2_s0" else []
        run_dir = write_run(root, exp, run, config, summary("detect", exp, run, rf.FINISHED, final), metrics, weights)
        if run == "sn_4x2_s0":
            _png(run_dir / "predictions", ["val_000000.png", "val_000001.png"])
    return root


def _png(folder, names):
    from PIL import Image

    folder.mkdir(parents=True)
    for name in names:
        Image.new("RGB", (8, 4), (200, 10, 10)).save(folder / name)


def test_ap_table_per_norm_and_batch_setting(tmp_path):
    from analysis.load import load_runs

    runs = load_runs(write_detect_runs(tmp_path)).runs
    table = ap_table(runs)
    assert table[["backbone", "head", "batch", "runs"]].values.tolist() == [
        ["bn-frozen", "–", "4x2", 1], ["gn", "gn", "4x2", 1], ["sn", "sn", "4x2", 2], ["sn-inln", "sn-inln", "8x1", 1]]
    sn_row = table.iloc[2]
    assert sn_row["AP"] == pytest.approx(35.0) and sn_row["mask AP"] == pytest.approx(32.0)  # two seeds averaged
    assert sn_row["AP50"] == pytest.approx(65.0) and sn_row["mask AP75"] == pytest.approx(27.0)
    assert "| sn | sn | 4x2 | 35.0 | 65.0 | 30.0 | 32.0 | 62.0 | 27.0 | 2 |" in ap_markdown(table)
    failed = runs.assign(status="failed")
    assert ap_table(failed).empty and "No finished detection runs" in ap_markdown(ap_table(failed))


def test_component_figure_averages_layers_per_component():
    weights = pd.DataFrame([dict(run_id="det/sn", task="detect", step=s, epoch=e, layer=layer, stat=stat, op=op,
                                 weight=w) for s, e, layer, stat, op, w in weight_rows(768, 3, SN_MEAN, SN_VAR)])
    fig = fig_component_weights(weights).to_plotly_json()
    ln_mean = [t for t in fig["data"] if t["meta"] == {"stat": "mean", "op": "ln"}][0]
    assert dict(zip(ln_mean["x"], ln_mean["y"])) == pytest.approx(
        {"backbone": 0.3, "FPN": 0.3, "box head": 0.7, "mask head": 0.6})
    staged = fig_component_weights(weights, stages=True).to_plotly_json()
    assert list(staged["layout"]["xaxis"]["categoryarray"]) == [  # the network's order, bottom up
        "backbone stem", "backbone layer1", "FPN", "box head", "mask head"]


def test_dashboard_shows_the_detection_views(monkeypatch, tmp_path):
    at = start(monkeypatch, write_detect_runs(tmp_path / "runs"))
    figure = charts(at)["Importance weights per detection component (Fig. 1c)"]
    bn_mean = [t for t in figure["data"] if t["meta"] == {"stat": "mean", "op": "bn"}][0]
    assert dict(zip(bn_mean["x"], bn_mean["y"])) == pytest.approx(
        {"backbone": 0.6, "FPN": 0.5, "box head": 0.1, "mask head": 0.2})
    tables = [m.value for m in at.markdown if m.value.startswith("| backbone |")]
    assert "| bn-frozen | – | 4x2 | 20.0 | 50.0 | 15.0 | 18.0 | 48.0 | 13.0 | 1 |" in tables[0]
    assert "| sn | sn | 41.0 | 62.3 | 45.1 | 36.5 | 58.9 | 38.7 |" in tables[1]  # the paper's Table 5
    at.toggle(key="detect_stages").set_value(True).run()
    staged = charts(at)["Importance weights per detection component (Fig. 1c)"]
    assert "backbone layer1" in staged["data"][0]["x"]
    at.selectbox(key="single_run").set_value("det/sn_4x2_s0").run()
    assert not at.exception
    images = [img for el in at.get("image") for img in el.proto.imgs]
    assert [img.caption for img in images] == ["val_000000.png", "val_000001.png"]
    assert any("Predicted boxes and masks (2 validation images)" in h.value for h in at.subheader)


def test_ap_table_keeps_experiments_apart(tmp_path):
    """Two copies of the same runs under two experiments: each experiment keeps its own rows
    (the same values and run counts as alone), never one row averaging both."""
    import shutil

    from analysis.load import load_runs

    root = write_detect_runs(tmp_path / "runs")
    alone = ap_table(load_runs(root).runs)
    [name] = [p.name for p in root.iterdir() if p.is_dir()]
    shutil.copytree(root / name, root / "zz-copy")
    table = ap_table(load_runs(root).runs)
    assert list(table.columns) == ["experiment"] + list(alone.columns)
    assert table["experiment"].tolist() == [name] * len(alone) + ["zz-copy"] * len(alone)
    for exp in (name, "zz-copy"):
        part = table[table["experiment"].eq(exp)].drop(columns="experiment").reset_index(drop=True)
        pd.testing.assert_frame_equal(part, alone)
