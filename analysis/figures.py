"""Plotly figure builders: each takes a tidy frame from :mod:`analysis.load`, returns a figure.

Weight figures put means (mu) and variances (sigma) side by side, one bar trace per op named
``IN``/``LN``/``BN``/``GN``; every trace carries ``meta`` (a dict: ``stat`` and ``op``, or
``run_id`` and ``name`` for curves) so a reader or a test can tell traces apart.

- Fig. 1(c): :func:`fig_weights_by_task` (per task, or per experiment)
- Fig. 3: :func:`fig_block_weights` (per block of a network, e.g. ResNet stage)
- Fig. 4: :func:`fig_weights_by_batch` (per batch setting of the classification sweep)
- :func:`fig_weight_trajectories`: the weights of every layer over training (not in the paper)
- small differences made visible (not in the paper): :func:`fig_layer_heatmap` (layer x op,
  means and variances, as deviation from uniform or raw weights), :func:`fig_network_trajectory`
  (the whole network's average weights and distance from uniform over training) and
  :func:`fig_deviation` (each layer's or block's distance from uniform)
- Fig. 2 / 6(a) / 6(b): :func:`fig_classify_curves`, :func:`fig_stylize_losses`,
  :func:`fig_enas_curves`, all built by :func:`fig_learning_curves`
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from analysis.aggregate import (STAT_ORDER, add_blocks, average_weights, deviation_from_uniform, exclude_sparse,
                                layer_matrix, network_trajectory, order_batches, order_ops)

OP_COLORS = {"in": "#1f77b4", "ln": "#ff7f0e", "bn": "#2ca02c", "gn": "#d62728"}
STAT_TITLES = {"mean": "means (\u03bc)", "var": "variances (\u03c3)"}
RUN_COLORS = qualitative.Plotly + qualitative.D3


def fig_average_weights(weights: pd.DataFrame, by: str, order: list | None = None,
                        title: str | None = None) -> go.Figure:
    """Bars of the average weight of each op per value of column ``by``, means and variances apart.

    ``order``: the x-axis order of the groups (default: as :func:`average_weights` sorts them).
    """
    title = title or f"Average importance weights per {by}"
    avg = average_weights(weights, by)
    if avg.empty:
        return _no_data(title, "no importance weights to show (no SN runs selected)")
    avg[by] = avg[by].astype(str)
    order = [str(o) for o in order] if order is not None else list(dict.fromkeys(avg[by]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[STAT_TITLES[s] for s in STAT_ORDER],
                        shared_yaxes=True)
    for col, stat in enumerate(STAT_ORDER, start=1):
        for op in order_ops(avg["op"]):
            part = avg[avg["stat"].eq(stat) & avg["op"].eq(op)]
            if part.empty:
                continue
            fig.add_trace(go.Bar(
                x=part[by].tolist(), y=part["weight"].tolist(), name=op.upper(), legendgroup=op,
                showlegend=col == 1, marker_color=OP_COLORS.get(op), meta={"stat": stat, "op": op},
                customdata=part["n_runs"].tolist(),
                hovertemplate=f"{op.upper()} {stat}: %{{y:.3f}}<br>{by} %{{x}}<br>%{{customdata}} run(s)"
                              "<extra></extra>"), row=1, col=col)
        fig.update_xaxes(categoryorder="array", categoryarray=order, title_text=by, row=1, col=col)
    fig.update_yaxes(title_text="importance weight", range=[0, 1], row=1, col=1)
    fig.update_layout(title=title, barmode="group", legend_title_text="op")
    return fig


def fig_weights_by_task(weights: pd.DataFrame, by: str = "task") -> go.Figure:
    """Fig. 1(c): average IN/LN/BN/GN weights per task (``by="experiment"``: per experiment)."""
    if by not in ("task", "experiment"):
        raise ValueError(f"by must be 'task' or 'experiment', got {by!r}")
    return fig_average_weights(exclude_sparse(weights), by, title=f"Importance weights per {by} (Fig. 1c)")


def fig_weights_by_batch(weights: pd.DataFrame) -> go.Figure:
    """Fig. 4: average weights per batch setting ("GxS") of the classification runs."""
    title = "Importance weights per batch setting (Fig. 4)"
    weights = exclude_sparse(weights)  # (Sparse SN's one-hot weights have their own view)
    if "task" in weights.columns:
        weights = weights[weights["task"].eq("classify")]
    weights = weights[weights["batch"].notna()]
    return fig_average_weights(weights, "batch", order=order_batches(weights["batch"]), title=title)


def fig_block_weights(weights: pd.DataFrame, block_of: Callable[[str], str] | int = 1) -> go.Figure:
    """Fig. 3: average weights per block of the network, means vs variances.

    ``block_of`` maps a layer name to its block; an int is a depth of dotted name parts
    (1: ``layer2.0.bn1`` -> ``layer2``, a ResNet stage). Several runs are averaged run by run.
    """
    title = "Importance weights per block (Fig. 3)"
    if weights.empty:
        return _no_data(title, "no importance weights to show (no SN runs selected)")
    with_blocks, blocks = add_blocks(weights, block_of)
    return fig_average_weights(with_blocks, "block", order=blocks, title=title)


def fig_weight_trajectories(weights: pd.DataFrame, run_id: str | None = None) -> go.Figure:
    """The weight of every (layer, op) over training steps of one run: rows stats, columns ops.

    ``run_id`` picks the run when the frame holds several (a ``ValueError`` otherwise).
    """
    title = "Importance weights during training"
    data = _one_run(weights, run_id)
    if data.empty:
        return _no_data(title, "no importance weights logged for this run")
    ops = order_ops(data["op"])
    layers = list(dict.fromkeys(data["layer"]))
    fig = make_subplots(rows=len(STAT_ORDER), cols=len(ops), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[f"{op.upper()} {STAT_TITLES[s]}" for s in STAT_ORDER for op in ops])
    for row, stat in enumerate(STAT_ORDER, start=1):
        for col, op in enumerate(ops, start=1):
            part = data[data["stat"].eq(stat) & data["op"].eq(op)]
            for i, layer in enumerate(layers):
                line = part[part["layer"].eq(layer)].sort_values("step")
                if line.empty:
                    continue
                fig.add_trace(go.Scatter(
                    x=line["step"].tolist(), y=line["weight"].tolist(), mode="lines", name=layer,
                    legendgroup=layer, showlegend=row == 1 and col == 1,
                    line_color=RUN_COLORS[i % len(RUN_COLORS)],
                    meta={"layer": layer, "stat": stat, "op": op}), row=row, col=col)
    fig.update_yaxes(range=[0, 1])
    fig.update_xaxes(title_text="step", row=len(STAT_ORDER))
    fig.update_layout(title=f"{title}: {data['run_id'].iloc[0]}", legend_title_text="layer",
                      height=260 * len(STAT_ORDER) + 80)
    return fig


def fig_learning_curves(metrics: pd.DataFrame, names: list[str], split: str, x: str = "step",
                        smooth: int = 1, title: str | None = None) -> go.Figure:
    """One line per run for each metric ``name`` of ``split`` (one subplot per name).

    ``x``: "step" or "epoch". ``smooth``: window of a trailing moving average (1: raw values).
    Lines are named by the run's ``label``; ``meta`` holds ``run_id`` and ``name``.
    """
    if x not in ("step", "epoch"):
        raise ValueError(f"x must be 'step' or 'epoch', got {x!r}")
    if not isinstance(smooth, int) or isinstance(smooth, bool) or smooth < 1:
        raise ValueError(f"smooth must be a positive integer, got {smooth!r}")
    names = [names] if isinstance(names, str) else list(names)
    title = title or f"{split} {', '.join(names)}"
    data = metrics[metrics["split"].eq(split) & metrics["name"].isin(names)]
    data = data[data[x].notna()]
    if data.empty:
        return _no_data(title, f"no {split} {' / '.join(names)} logged in the selected runs")
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    run_ids = list(dict.fromkeys(data["run_id"]))
    for col, name in enumerate(names, start=1):
        for i, run_id in enumerate(run_ids):
            line = data[data["run_id"].eq(run_id) & data["name"].eq(name)]
            line = line.groupby(x, as_index=False)["value"].mean().sort_values(x)  # one point per x
            if line.empty:
                continue
            values = line["value"].rolling(smooth, min_periods=1).mean()
            label = _run_label(data, run_id)
            fig.add_trace(go.Scatter(
                x=line[x].tolist(), y=values.tolist(), mode="lines+markers" if len(line) < 30 else "lines",
                name=label, legendgroup=run_id, showlegend=col == 1,
                line_color=RUN_COLORS[i % len(RUN_COLORS)], meta={"run_id": run_id, "name": name}),
                row=1, col=col)
        fig.update_xaxes(title_text=x, row=1, col=col)
    if x == "epoch" and data["epoch"].max() <= 20:
        fig.update_xaxes(dtick=1)  # whole epochs only
    fig.update_layout(title=title, legend_title_text="run")
    return fig


def fig_classify_curves(metrics: pd.DataFrame, split: str = "val", x: str = "epoch") -> go.Figure:
    """Fig. 2: classification accuracy per run (norm and batch setting) over training."""
    data = _task(metrics, "classify")
    return fig_learning_curves(data, ["acc"], split, x=x, title=f"Classification {split} accuracy (Fig. 2)")


def fig_stylize_losses(metrics: pd.DataFrame, smooth: int = 1) -> go.Figure:
    """Fig. 6(a): style and content losses of the stylization runs over training steps."""
    data = _task(metrics, "stylize")
    return fig_learning_curves(data, ["style_loss", "content_loss"], "train", x="step", smooth=smooth,
                               title="Stylization losses (Fig. 6a)")


def fig_enas_curves(metrics: pd.DataFrame, name: str = "mean_acc") -> go.Figure:
    """Fig. 6(b): validation accuracy of the sampled child models per controller norm."""
    if name not in ("mean_acc", "best_acc"):
        raise ValueError(f"name must be 'mean_acc' or 'best_acc', got {name!r}")
    data = _task(metrics, "enas")
    return fig_learning_curves(data, [name], "val", x="epoch",
                               title=f"ENAS validation accuracy, {name} (Fig. 6b)")


# ----------------------------------------------------------------------------- helpers


def fig_layer_heatmap(weights: pd.DataFrame, run_id: str | None = None, relative: bool = True) -> go.Figure:
    """One run's final weights as a heatmap, layers (rows, network order) x ops (columns), means
    and variances side by side. ``relative``: colour = weight - 1/K (K ops of the layer), on a
    diverging scale centred on 0, so that small moves away from uniform show; otherwise the
    weights themselves on [0, 1]. The cell text is always the weight.
    """
    title = "Importance weights per layer" + (" (colour: weight - uniform)" if relative else "")
    data = _one_run(weights, run_id)
    if data.empty:
        return _no_data(title, "no importance weights logged for this run")
    table = layer_matrix(data)
    ops = order_ops(data["op"])
    fig = make_subplots(rows=1, cols=len(STAT_ORDER), subplot_titles=[STAT_TITLES[s] for s in STAT_ORDER],
                        shared_yaxes=True, horizontal_spacing=0.06)
    spread = 0.0
    cells = {}
    for stat in STAT_ORDER:
        cols = [(stat, op) for op in ops if (stat, op) in table.columns]
        part = table[cols] if cols else pd.DataFrame(index=table.index)
        n_ops = part.notna().sum(axis=1).replace(0, 1)
        shown = part.sub(1.0 / n_ops, axis=0) if relative else part
        spread = max(spread, float(shown.abs().max().max()) if not shown.empty else 0.0)
        cells[stat] = (part, shown)
    spread = max(spread, 1e-3)
    for col, stat in enumerate(STAT_ORDER, start=1):
        part, shown = cells[stat]
        if part.empty:
            continue
        fig.add_trace(go.Heatmap(
            z=shown.to_numpy().tolist(), x=[op.upper() for _, op in part.columns], y=list(part.index),
            text=part.round(3).to_numpy().tolist(), texttemplate="%{text}",
            colorscale="RdBu" if relative else "Viridis", reversescale=relative,
            zmin=-spread if relative else 0.0, zmax=spread if relative else 1.0, zmid=0.0 if relative else None,
            showscale=col == 1, colorbar={"title": "w - 1/K" if relative else "weight"},
            meta={"stat": stat, "relative": relative},
            hovertemplate="layer %{y}<br>%{x} " + stat + ": %{text}<extra></extra>"), row=1, col=col)
    fig.update_yaxes(autorange="reversed", title_text="layer", row=1, col=1)
    fig.update_layout(title=f"{title}: {data['run_id'].iloc[0]}", height=max(300, 24 * len(table) + 160))
    return fig


def fig_network_trajectory(weights: pd.DataFrame, run_ids: list | None = None) -> go.Figure:
    """The whole network over training: per run, the average weight of each op over its SN
    layers at every logged step (top: means, bottom: variances), and the mean distance of
    the layers from uniform (total variation, dotted, right panel) - which can grow while
    the averages stay at 1/K, when layers move in different directions.
    """
    title = "The whole network's importance weights during training"
    data = weights if run_ids is None else weights[weights["run_id"].isin(run_ids)]
    traj = network_trajectory(data)
    if traj.empty:
        return _no_data(title, "no importance weights logged for these runs")
    runs = list(dict.fromkeys(traj["run_id"]))
    fig = make_subplots(rows=len(STAT_ORDER), cols=2, shared_xaxes=True, column_widths=[0.6, 0.4],
                        subplot_titles=[t for s in STAT_ORDER for t in (f"average weight, {STAT_TITLES[s]}",
                                                                         f"distance from uniform, {STAT_TITLES[s]}")])
    dashes = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
    for row, stat in enumerate(STAT_ORDER, start=1):
        for r, run in enumerate(runs):
            part = traj[traj["run_id"].eq(run) & traj["stat"].eq(stat)]
            label = _run_label(data, run)
            for op in order_ops(part["op"]):
                line = part[part["op"].eq(op)]
                fig.add_trace(go.Scatter(
                    x=line["step"].tolist(), y=line["weight"].tolist(), mode="lines",
                    name=f"{op.upper()} {label}" if len(runs) > 1 else op.upper(), legendgroup=f"{run}/{op}",
                    showlegend=row == 1, line={"color": OP_COLORS.get(op), "dash": dashes[r % len(dashes)]},
                    meta={"run_id": run, "stat": stat, "op": op, "kind": "weight"}), row=row, col=1)
            tv = part.drop_duplicates("step")
            fig.add_trace(go.Scatter(
                x=tv["step"].tolist(), y=tv["tv"].tolist(), mode="lines", name=f"distance {label}",
                legendgroup=f"{run}/tv", showlegend=row == 1,
                line={"color": RUN_COLORS[r % len(RUN_COLORS)], "dash": dashes[r % len(dashes)]},
                meta={"run_id": run, "stat": stat, "kind": "tv"}), row=row, col=2)
        fig.update_yaxes(range=[0, 1], title_text="weight", row=row, col=1)
        fig.update_yaxes(rangemode="tozero", title_text="0.5 sum |w - 1/K|", row=row, col=2)
    fig.update_xaxes(title_text="step", row=len(STAT_ORDER))
    fig.update_layout(title=title, height=280 * len(STAT_ORDER) + 80)
    return fig


def fig_deviation(weights: pd.DataFrame, by: str = "layer", block_of: Callable[[str], str] | int = 1) -> go.Figure:
    """Each layer's (``by="layer"``) or block's (``by="block"``, see :func:`fig_block_weights`)
    distance from uniform weights at the end of training, means and variances as two bar
    series; the hover names the op with the largest weight. Several runs are averaged.
    """
    if by not in ("layer", "block"):
        raise ValueError(f"by must be 'layer' or 'block', got {by!r}")
    title = f"Distance from uniform weights per {by} (0.5 sum |w - 1/K|)"
    if weights.empty:
        return _no_data(title, "no importance weights to show (no SN runs selected)")
    data, order = add_blocks(weights, block_of) if by == "block" else (weights, list(dict.fromkeys(weights["layer"])))
    dev = deviation_from_uniform(data, by)
    fig = go.Figure()
    for stat, color in zip(STAT_ORDER, ("#636efa", "#ef553b")):
        part = dev[dev["stat"].eq(stat)].set_index(by).reindex(order).dropna(subset=["tv"])
        fig.add_trace(go.Bar(
            x=part.index.tolist(), y=part["tv"].tolist(), name=STAT_TITLES[stat], marker_color=color,
            customdata=part["top_op"].str.upper().tolist(), meta={"stat": stat},
            hovertemplate=f"%{{x}} {stat}: %{{y:.3f}}<br>largest: %{{customdata}}<extra></extra>"))
    fig.update_xaxes(categoryorder="array", categoryarray=order, title_text=by)
    fig.update_yaxes(rangemode="tozero", title_text="distance from uniform")
    fig.update_layout(title=title, barmode="group")
    return fig


def _task(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[frame["task"].eq(task)] if "task" in frame.columns else frame


def _one_run(frame: pd.DataFrame, run_id: str | None) -> pd.DataFrame:
    if run_id is not None:
        return frame[frame["run_id"].eq(run_id)]
    runs = list(dict.fromkeys(frame["run_id"]))
    if len(runs) > 1:
        raise ValueError(f"the frame holds several runs {runs}; pass run_id to pick one")
    return frame


def _run_label(data: pd.DataFrame, run_id: str) -> str:
    if "label" not in data.columns:
        return run_id
    label = data.loc[data["run_id"].eq(run_id), "label"].iloc[0]
    return str(label) if isinstance(label, str) and label else run_id


def _no_data(title: str, message: str) -> go.Figure:
    """An empty figure that says why it is empty (no traces)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title)
    return fig
