"""Detection runs (``python -m tasks.detect``): weights per component, AP tables, predictions.

Pure functions on the frames of :mod:`analysis.load`:

- :func:`component`: the part of a detector a layer name belongs to: ``backbone`` (or its
  stage: ``backbone stem``, ``backbone layer1`` ... ``layer4``), ``FPN``, ``RPN``, ``box head``,
  ``mask head`` (torchvision's module names: ``backbone.body.*``, ``backbone.fpn.*``,
  ``rpn.*``, ``roi_heads.box_head.*``, ``roi_heads.mask_head.*``).
- :func:`component_weights` / :func:`fig_component_weights`: the detection group of Fig. 1(c),
  SN's average importance weights per component (the paper: BN weighs most in the backbone,
  LN in the box and mask heads).
- :func:`ap_table` / :func:`ap_markdown`: the Tables 3-5 analogue, COCO box and mask AP (%)
  per backbone norm, head norm and batch setting; :func:`paper_table5` the paper's Table 5.
- :func:`component_table`: the same weights as a table, one row per run (label) and component.
- :func:`list_predictions`: the drawings of predicted boxes and masks a run wrote.

    python -m analysis.detect --root runs --experiment detect-quick   # both tables as markdown
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from analysis.aggregate import average_weights, batch_sort_key, order_ops
from analysis.figures import fig_average_weights

TASK = "detect"
COMPONENTS = ("backbone", "FPN", "RPN", "box head", "mask head")
STAGES = ("backbone stem", "backbone layer1", "backbone layer2", "backbone layer3", "backbone layer4")
PREDICTIONS_DIR = "predictions"  # written by tasks.detect (its PREDICTIONS_DIR)
AP_COLUMNS = (("box_ap", "AP"), ("box_ap50", "AP50"), ("box_ap75", "AP75"),
              ("mask_ap", "mask AP"), ("mask_ap50", "mask AP50"), ("mask_ap75", "mask AP75"))
NORM_ORDER = ("bn-frozen", "bn", "gn", "sn", "sn-inln", "none")


def component(layer: str, stages: bool = False) -> str:
    """The component of a detector that the layer ``layer`` belongs to (``"other"`` if none).

    ``stages``: the backbone's stages apart (``backbone stem``, ``backbone layer1``, ...).

    >>> component("roi_heads.mask_head.2.1"), component("backbone.body.layer3.0.bn1", stages=True)
    ('mask head', 'backbone layer3')
    """
    parts = str(layer).split(".")
    if parts[:2] == ["backbone", "body"]:
        if not stages:
            return "backbone"
        return f"backbone {parts[2]}" if len(parts) > 2 and parts[2].startswith("layer") else "backbone stem"
    if parts[:2] == ["backbone", "fpn"]:
        return "FPN"
    if parts[0] == "rpn":
        return "RPN"
    if parts[:2] == ["roi_heads", "box_head"]:
        return "box head"
    if parts[:2] == ["roi_heads", "mask_head"]:
        return "mask head"
    return "other"


def detect_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of detection runs (all rows when the frame has no ``task`` column)."""
    return frame[frame["task"].eq(TASK)] if "task" in frame.columns else frame


def component_weights(weights: pd.DataFrame, stages: bool = False) -> pd.DataFrame:
    """The detection runs' weights with a ``component`` column (:func:`component`)."""
    data = detect_only(weights).copy()
    data["component"] = [component(layer, stages) for layer in data["layer"]]
    return data


def fig_component_weights(weights: pd.DataFrame, stages: bool = False) -> go.Figure:
    """Fig. 1(c), detection: SN's average weights per component (each run's last step, its layers
    averaged per component, then the runs)."""
    data = component_weights(weights, stages)
    order = [c for c in (STAGES + COMPONENTS[1:] if stages else COMPONENTS) + ("other",)
             if c in set(data["component"])]
    return fig_average_weights(data, "component", order=order,
                               title="Importance weights per detection component (Fig. 1c)")


def component_table(weights: pd.DataFrame, stages: bool = False) -> pd.DataFrame:
    """SN's final weights per run and component: rows (run label, component), columns
    ``(stat, op)`` (means, then variances), averaged over the component's layers."""
    data = component_weights(weights, stages)
    if data.empty:
        return pd.DataFrame()
    by = "label" if "label" in data.columns else "run_id"
    avg = average_weights(data, [by, "component"])
    order = STAGES + COMPONENTS[1:] + ("other",) if stages else COMPONENTS + ("other",)
    avg["rank"] = avg["component"].map(lambda c: order.index(c) if c in order else len(order))
    table = avg.pivot_table(index=[by, "rank", "component"], columns=["stat", "op"], values="weight")
    table = table.droplevel("rank")
    columns = [(stat, op) for stat in ("mean", "var") for op in order_ops(avg["op"]) if (stat, op) in table.columns]
    return table[columns]


def ap_table(runs: pd.DataFrame) -> pd.DataFrame:
    """COCO AP (%) per (backbone norm, head norm, batch setting) of the finished detection runs.

    Columns: ``backbone``, ``head``, ``batch``, then ``AP``, ``AP50``, ``AP75``, ``mask AP``,
    ``mask AP50``, ``mask AP75`` (means over the runs of a row; a column no run has is left
    out) and ``runs`` (how many). Rows in the order bn-frozen, bn, gn, sn, sn-inln. Runs of
    different experiments are never averaged together: with several experiments an
    ``experiment`` column comes first and each experiment has its own rows.
    """
    data = detect_only(runs)
    if "status" in data.columns:
        data = data[data["status"].eq("finished")]
    present = [(c, name) for c, name in AP_COLUMNS if f"final_{c}" in data.columns]
    columns = ["backbone", "head", "batch"] + [name for _, name in present] + ["runs"]
    if data.empty or not present:
        return pd.DataFrame(columns=columns)
    data = data.assign(head=data["head_norm"] if "head_norm" in data.columns else data["norm"])
    several = data["experiment"].nunique() > 1
    columns = (["experiment"] if several else []) + columns
    rows = []
    for (experiment, norm, head, batch), group in data.groupby(["experiment", "norm", "head", "batch"], dropna=False):
        row = {"experiment": experiment} if several else {}
        row.update({"backbone": norm, "head": "–" if head == "none" else head, "batch": batch})
        for c, name in present:
            values = pd.to_numeric(group[f"final_{c}"], errors="coerce").dropna()
            row[name] = 100.0 * float(values.mean()) if len(values) else math.nan
        row["runs"] = len(group)
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns).dropna(axis=1, how="all")

    def rank(norm):
        return (NORM_ORDER.index(norm), "") if norm in NORM_ORDER else (len(NORM_ORDER), str(norm))
    order = sorted(range(len(table)), key=lambda i: (str(table["experiment"][i]) if several else "",
                                                     rank(table["backbone"][i]), rank(table["head"][i]),
                                                     batch_sort_key(table["batch"][i])))
    return table.iloc[order].reset_index(drop=True)


def ap_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """The AP table (or any flat frame) as GitHub markdown ("–" for a missing value)."""
    if table.empty:
        return "_No finished detection runs to tabulate._"
    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    for _, row in table.iterrows():
        cells = [("–" if pd.isna(v) else f"{v:.{digits}f}") if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_table5() -> pd.DataFrame:
    """The paper's Table 5: Mask R-CNN, ResNet-50 + FPN, 2x schedule, COCO val2017 (8x2; BN-dagger frozen)."""
    rows = [("bn-frozen", "–", 38.6, 59.5, 41.9, 34.2, 56.2, 36.1),
            ("bn-frozen", "gn", 39.5, 60.0, 43.2, 34.4, 56.4, 36.3),
            ("bn-frozen", "sn", 40.0, 61.0, 43.3, 34.8, 57.3, 36.3),
            ("gn", "gn", 40.2, 60.9, 43.8, 35.7, 57.8, 38.0),
            ("gn", "sn", 40.4, 61.4, 44.2, 36.0, 58.4, 38.1),
            ("sn", "sn", 41.0, 62.3, 45.1, 36.5, 58.9, 38.7)]
    return pd.DataFrame(rows, columns=["backbone", "head"] + [name for _, name in AP_COLUMNS])


def list_predictions(run_dir: str | os.PathLike) -> list[Path]:
    """The drawings of a detection run (``predictions/*.png``: ground truth beside predictions)."""
    folder = Path(run_dir) / PREDICTIONS_DIR
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def main(argv: list[str] | None = None) -> int:
    """``python -m analysis.detect``: the AP table and SN's weights per component, as markdown."""
    from analysis.load import load_for_command

    parser = argparse.ArgumentParser(prog="python -m analysis.detect", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs", help="root of the run directories (default: runs)")
    parser.add_argument("--experiment", action="append", default=None, help="only this experiment (repeatable)")
    args = parser.parse_args(argv)
    data = load_for_command(args.root, args.experiment)
    if data is None:
        return 2
    table = ap_table(data.runs)
    if table.empty:
        print(f"No finished detection runs under {args.root}. Create some, e.g.: "
              "python -m tasks.detect --experiment detect-quick", file=sys.stderr)
        return 1
    print("COCO AP (%) per norm and batch setting (Tables 3-5):\n\n" + ap_markdown(table))
    weights = component_table(data.weights)
    if not weights.empty:
        weights.columns = [f"{stat} {op.upper()}" for stat, op in weights.columns]
        print("SN's importance weights per component (Fig. 1c, detection):\n\n"
              + ap_markdown(weights.reset_index(), digits=3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
