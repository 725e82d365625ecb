"""What Sparse SN (``--norm ssn``) chose: the normalizer each layer ended on, and the shares.

With sparsestmax the importance weights end exactly one-hot (``sn.set_radius``'s schedule),
separately for the means and the variances, so the question "which normalizer did this layer
pick" has an exact answer. These reductions read the tidy weights frame of
:func:`analysis.load.load_runs` (or one run's ``weights.csv``).
"""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from analysis.aggregate import OP_ORDER, SPARSE_NORMS, STAT_ORDER, batch_sort_key, final_weights, order_ops

__all__ = ["SPARSE_NORMS", "choice_matrix", "choice_shares", "fig_choice_shares", "sparse_choices", "sparse_markdown"]


def sparse_choices(weights: pd.DataFrame) -> pd.DataFrame:
    """Per run, layer and statistic at the last logged step: the ``choice`` (the op of largest
    weight), its ``weight``, ``one_hot`` (that weight is exactly 1, the others exactly 0) and
    ``zeros`` (how many ops have weight exactly 0). A frame without ``run_id`` is one run."""
    if weights.empty:
        return pd.DataFrame(columns=["run_id", "layer", "stat", "choice", "weight", "one_hot", "zeros"])
    frame = weights if "run_id" in weights.columns else weights.assign(run_id="run")
    last = final_weights(frame)
    rows = []
    for (run_id, layer, stat), group in last.groupby(["run_id", "layer", "stat"], sort=False):
        top = group.loc[group["weight"].idxmax()]
        rest = group.drop(index=top.name)["weight"]
        rows.append({"run_id": run_id, "layer": layer, "stat": stat, "choice": top["op"],
                     "weight": float(top["weight"]), "one_hot": bool(top["weight"] == 1.0 and (rest == 0.0).all()),
                     "zeros": int((group["weight"] == 0.0).sum())})
    return pd.DataFrame(rows)


def choice_shares(choices: pd.DataFrame, by: str | list[str] = "run_id") -> pd.DataFrame:
    """The share of layers ending on each op, per group and statistic: columns ``[*by, stat,
    op, share, layers]`` (shares of a group and statistic sum to 1)."""
    by = [by] if isinstance(by, str) else list(by)
    if choices.empty:
        return pd.DataFrame(columns=[*by, "stat", "op", "share", "layers"])
    counts = choices.groupby([*by, "stat", "choice"]).size().rename("layers").reset_index()
    totals = counts.groupby([*by, "stat"])["layers"].transform("sum")
    counts["share"] = counts["layers"] / totals
    return counts.rename(columns={"choice": "op"})[[*by, "stat", "op", "share", "layers"]]


def fig_choice_shares(choices: pd.DataFrame, labels: dict | None = None) -> go.Figure:
    """Bars: for each run (x), the share of its layers that ended on each normalizer, means and
    variances side by side."""
    shares = choice_shares(choices)
    if shares.empty:
        fig = go.Figure()
        fig.update_layout(title="Which normalizer each layer ended on (no sparse SN runs)")
        return fig
    shares["run"] = shares["run_id"].map(lambda r: (labels or {}).get(r, r))
    ops = [op for op in order_ops(shares["op"]) if op in OP_ORDER] + \
        [op for op in order_ops(shares["op"]) if op not in OP_ORDER]
    fig = px.bar(shares, x="run", y="share", color="op", facet_col="stat", barmode="stack",
                 category_orders={"op": ops, "stat": list(STAT_ORDER)}, hover_data=["layers"],
                 title="Which normalizer each layer ended on (Sparse SN: one-hot weights)")
    fig.update_yaxes(range=[0, 1], title="share of layers")
    return fig


def choice_matrix(choices: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """One run's choices as a layer x statistic table of op names (``?`` where not one-hot)."""
    one = choices[choices["run_id"].eq(run_id)]
    if one.empty:
        return pd.DataFrame()
    shown = one.assign(choice=one["choice"].where(one["one_hot"], one["choice"] + "?"))
    table = shown.pivot(index="layer", columns="stat", values="choice")
    return table.reindex(index=list(dict.fromkeys(one["layer"])), columns=[s for s in STAT_ORDER if s in table])


def sparse_markdown(weights: pd.DataFrame) -> str:
    """Per Sparse SN classification run (norm in :data:`SPARSE_NORMS`, with a ``batch``): how many
    of its layers ended on each normalizer, means and variances, and how many of them are exactly
    one-hot, as a markdown table (an empty string when there are no such runs)."""
    if weights.empty or "norm" not in weights.columns:
        return ""
    weights = weights[weights["norm"].isin(SPARSE_NORMS)]
    if "task" in weights.columns:
        weights = weights[weights["task"].eq("classify")]
    if weights.empty:
        return ""
    choices = sparse_choices(weights)
    shares = choice_shares(choices)
    ops = order_ops(shares["op"]) if not shares.empty else []
    meta = weights.drop_duplicates("run_id").set_index("run_id")
    lines = ["| run | batch | " + " | ".join(f"{op.upper()} {stat}" for stat in STAT_ORDER for op in ops)
             + " | one-hot |", "|" + " --- |" * (3 + len(ops) * len(STAT_ORDER))]
    def order(run_id):
        return (batch_sort_key(meta.loc[run_id, "batch"]) if "batch" in meta.columns else (), run_id)

    for run_id in sorted(choices["run_id"].unique(), key=order):
        group = choices[choices["run_id"].eq(run_id)]
        n_layers = group["layer"].nunique()
        mine = shares[shares["run_id"].eq(run_id)].set_index(["stat", "op"])["layers"]
        cells = [f"{int(mine.get((stat, op), 0))}/{n_layers}" for stat in STAT_ORDER for op in ops]
        batch = meta.loc[run_id, "batch"] if "batch" in meta.columns else "–"
        lines.append(f"| {run_id} | {batch} | " + " | ".join(cells)
                     + f" | {int(group['one_hot'].sum())}/{len(group)} |")
    return "\n".join(lines) + "\n"
