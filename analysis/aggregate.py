"""Reductions of the tidy frames that the figures and tables share.

The paper's weight histograms (Fig. 1(c), 3, 4) are "computed by averaging the importance
weights of all SN layers in a network". Here: each run's weights at its last logged step,
averaged over its SN layers, then over the runs of a group (each run counts once). Within a
group, a layer without some op that other layers of the group have (e.g. ``sn-inln`` has no
BN) counts that op as 0, so the averages of a group still sum to 1 per statistic.
"""

from __future__ import annotations

from typing import Callable, Iterable

import pandas as pd
from runformat import parse_batch

OP_ORDER = ("in", "ln", "bn", "gn")
# Sparse SN's weights end one-hot by construction: averaged with SN's softmax weights they would
# distort Fig. 1(c) and Fig. 4, so those leave them out (analysis.sparse shows them)
SPARSE_NORMS = ("ssn", "ssn-inln")
STAT_ORDER = ("mean", "var")


def exclude_sparse(weights: pd.DataFrame) -> pd.DataFrame:
    """The weights of runs whose norm is not Sparse SN (:data:`SPARSE_NORMS`)."""
    if "norm" not in weights.columns:
        return weights
    return weights[~weights["norm"].isin(SPARSE_NORMS)]


def batch_sort_key(batch) -> tuple:
    """Order batch settings as the paper's tables do: more devices first, then larger minibatches."""
    try:
        devices, samples = parse_batch(batch)
    except ValueError:
        return (1, 0, 0, str(batch))
    return (0, -devices, -samples, "")


def order_batches(values: Iterable) -> list:
    """Distinct batch settings in :func:`batch_sort_key` order (missing values dropped)."""
    return sorted({v for v in values if isinstance(v, str)}, key=batch_sort_key)


def order_ops(values: Iterable[str]) -> list[str]:
    """Distinct op names: in, ln, bn, gn first, any others after in name order."""
    present = set(values)
    known = [op for op in OP_ORDER if op in present]
    return known + sorted(present - set(OP_ORDER))


def layer_prefix(layer: str, depth: int = 1) -> str:
    """The block a layer belongs to: its first ``depth`` dotted name parts.

    ``layer_prefix("layer2.0.bn1") == "layer2"`` (a ResNet stage); a top-level name such as
    ``"bn1"`` (the ResNet stem) is its own block.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    return ".".join(str(layer).split(".")[:depth])


def add_blocks(weights: pd.DataFrame, block_of: Callable[[str], str] | int = 1) -> tuple[pd.DataFrame, list[str]]:
    """Add a ``block`` column (``block_of(layer)``, or :func:`layer_prefix` at that depth).

    Returns the new frame and the blocks in the order their first layer appears.
    """
    if isinstance(block_of, int) and not isinstance(block_of, bool):
        depth = block_of
        layer_prefix("x", depth)  # validates depth

        def block_of(name: str) -> str:
            return layer_prefix(name, depth)
    elif not callable(block_of):
        raise TypeError(f"block_of must be a function of the layer name or a depth, got {block_of!r}")
    out = weights.copy()
    out["block"] = [str(block_of(name)) for name in out["layer"]]
    return out, list(dict.fromkeys(out["block"]))


def final_weights(weights: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last complete logged step (the learned weights at the end).

    A step counts as complete when it has as many rows as the run's fullest step, so a last
    step cut short by a crash falls back to the step before it.
    """
    if weights.empty:
        return weights.copy()
    counts = weights.groupby(["run_id", "step"]).size()  # rows per (run, step)
    full = counts.groupby(level="run_id").transform("max")
    last = counts[counts.eq(full)].reset_index().groupby("run_id")["step"].max()
    keep = weights["step"].eq(weights["run_id"].map(last))
    return weights[keep].reset_index(drop=True)


def average_weights(weights: pd.DataFrame, by: str | list[str], final: bool = True) -> pd.DataFrame:
    """Average importance weights per group: over each run's layers, then over the runs.

    ``by``: column(s) defining the groups (e.g. "task", "batch", "block"). With ``final``
    only each run's last logged step is used. Returns columns ``[*by, stat, op, weight,
    n_runs]``, one row per group x stat x op the group has.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise ValueError("by must name at least one column")
    missing = [c for c in by + ["run_id", "layer", "stat", "op", "weight"] if c not in weights.columns]
    if missing:
        raise ValueError(f"weights frame lacks column(s) {missing}")
    data = final_weights(weights) if final else weights
    out_columns = by + ["stat", "op", "weight", "n_runs"]
    if data.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in out_columns})
    index = list(dict.fromkeys(by + ["run_id", "layer", "stat"]))
    wide = data.pivot_table(index=index, columns="op", values="weight", aggfunc="mean")  # (rows, ops)
    # an op some layer of the group has, missing in another layer of it, counts as 0 there
    present = wide.notna().groupby(level=by).transform("any")
    wide = wide.mask(present & wide.isna(), 0.0)
    per_run = wide.groupby(level=list(dict.fromkeys(by + ["run_id", "stat"]))).mean()
    group_keys = by + ["stat"]
    means = per_run.groupby(level=group_keys).mean()
    counts = per_run.groupby(level=group_keys).size()
    long = means.stack().rename("weight").reset_index()
    long = long[long["weight"].notna()]  # an op no layer of the group has
    long["n_runs"] = [counts[tuple(k)] for k in long[group_keys].itertuples(index=False)]
    return _sorted(long[out_columns], by)


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows ordered by group (batch settings in paper order), stat, then op order."""
    def key(column: pd.Series) -> pd.Series:
        if column.name == "batch":
            return column.map(batch_sort_key)
        if column.name == "op":
            return column.map(lambda op: (OP_ORDER.index(op), "") if op in OP_ORDER else (9, op))
        if column.name == "stat":
            return column.map(lambda s: STAT_ORDER.index(s) if s in STAT_ORDER else 9)
        return column
    sort_cols = [c for c in by if c != "block"] + ["stat", "op"]
    out = frame.sort_values(sort_cols, key=key, kind="stable") if sort_cols else frame
    return out.reset_index(drop=True)


def layer_matrix(weights: pd.DataFrame, final: bool = True) -> pd.DataFrame:
    """One run's weights as a layer x (stat, op) table: rows the SN layers in network order,
    columns ``(stat, op)`` (means first, ops in IN/LN/BN/GN order), values the weights at the
    run's last complete step (``final=False``: averaged over every logged step).

    Raises:
        ValueError: the frame holds more than one run, or lacks a weights column.
    """
    _check_columns(weights, ["run_id", "layer", "stat", "op", "weight", "step"])
    if weights["run_id"].nunique() > 1:
        raise ValueError(f"layer_matrix takes the weights of one run, got {weights['run_id'].nunique()} runs")
    data = final_weights(weights) if final else weights
    layers = list(dict.fromkeys(data["layer"]))
    table = data.pivot_table(index="layer", columns=["stat", "op"], values="weight", aggfunc="mean")
    columns = [(s, o) for s in STAT_ORDER for o in order_ops(data["op"]) if (s, o) in table.columns]
    return table.reindex(index=layers, columns=pd.MultiIndex.from_tuples(columns, names=["stat", "op"]))


def deviation_from_uniform(weights: pd.DataFrame, by: str | list[str] = "layer", final: bool = True) -> pd.DataFrame:
    """How far each group's weights are from the uniform 1/K of its K ops, per statistic.

    For each run, layer and statistic the distance is the total variation
    ``0.5 * sum_k |w_k - 1/K|`` (0: uniform; at most ``1 - 1/K``: one op takes everything);
    a group's value is the mean over its runs' layers (each layer counts once per run).
    Also reported: ``max_abs``, the largest ``|w_k - 1/K|``, and ``top_op``, the op with the
    largest mean weight in the group. ``by``: the grouping column(s), e.g. ``"layer"``,
    ``"block"`` (after :func:`add_blocks`), ``"run_id"`` or ``"batch"``.

    Returns columns ``[*by, stat, tv, max_abs, top_op, n_layers]``.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise ValueError("by must name at least one column")
    _check_columns(weights, by + ["run_id", "layer", "stat", "op", "weight", "step"])
    data = final_weights(weights) if final else weights
    out_columns = by + ["stat", "tv", "max_abs", "top_op", "n_layers"]
    if data.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in out_columns})
    index = list(dict.fromkeys(by + ["run_id", "layer", "stat"]))
    wide = data.pivot_table(index=index, columns="op", values="weight", aggfunc="mean")
    k = wide.notna().sum(axis=1)
    gap = wide.sub(1.0 / k, axis=0).abs()
    per_layer = pd.DataFrame({"tv": 0.5 * gap.sum(axis=1), "max_abs": gap.max(axis=1)})
    keys = by + ["stat"]
    grouped = per_layer.groupby(level=keys)
    out = grouped.mean()
    out["n_layers"] = grouped.size()
    out["top_op"] = wide.groupby(level=keys).mean().idxmax(axis=1)
    out = out.reset_index()[out_columns]
    return _in_order(out, data, by)


def network_trajectory(weights: pd.DataFrame) -> pd.DataFrame:
    """The whole network's weights over training: per run, logged step, stat and op, the mean
    over the run's SN layers (an op a layer lacks counts as 0 there, as in
    :func:`average_weights`), with ``tv``, the mean over layers of the distance from uniform
    (:func:`deviation_from_uniform`) at that step.

    Returns columns ``[run_id, step, stat, op, weight, tv]``.
    """
    _check_columns(weights, ["run_id", "layer", "stat", "op", "weight", "step"])
    columns = ["run_id", "step", "stat", "op", "weight", "tv"]
    if weights.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    counts = weights.groupby(["run_id", "step"]).size()
    full = counts.groupby(level="run_id").transform("max")
    complete = counts[counts.eq(full)].index  # a step cut short by a crash is left out
    keep = pd.MultiIndex.from_frame(weights[["run_id", "step"]]).isin(complete)
    data = weights[keep]
    wide = data.pivot_table(index=["run_id", "step", "layer", "stat"], columns="op", values="weight", aggfunc="mean")
    k = wide.notna().sum(axis=1)
    tv = (0.5 * wide.sub(1.0 / k, axis=0).abs().sum(axis=1)).groupby(level=["run_id", "step", "stat"]).mean()
    present = wide.notna().groupby(level="run_id").transform("any")
    means = wide.mask(present & wide.isna(), 0.0).groupby(level=["run_id", "step", "stat"]).mean()
    long = means.stack().rename("weight").reset_index()
    long["tv"] = [tv[(r, s, st)] for r, s, st in long[["run_id", "step", "stat"]].itertuples(index=False)]
    return _sorted(long[columns], ["run_id", "step"])


def _in_order(frame: pd.DataFrame, data: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows in the order the groups first appear in ``data`` (network order for layers and
    blocks; batch settings in paper order), then means before variances."""
    def key(column: pd.Series) -> pd.Series:
        if column.name == "batch":
            return column.map(batch_sort_key)
        if column.name == "stat":
            return column.map(lambda s: STAT_ORDER.index(s) if s in STAT_ORDER else 9)
        first = {v: i for i, v in enumerate(dict.fromkeys(data[column.name]))}
        return column.map(first)
    return frame.sort_values(by + ["stat"], key=key, kind="stable").reset_index(drop=True)


def _check_columns(frame: pd.DataFrame, needed: list[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame of weights, got {type(frame).__name__}")
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        raise ValueError(f"weights frame lacks column(s) {missing}")
