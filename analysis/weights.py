"""Print what SN learned in any task's runs: the importance weights averaged over each run's
network at the end and over training, and which normalizer leads each layer.

    python -m analysis.weights --root results --experiment stylize-quick
    python -m analysis.weights --root runs --task enas --points 8 --layers

Where ``analysis.results`` tabulates the classification grid by batch setting (Table 2, Fig. 4),
this command reads every run that logged weights (stylize, enas, detect and classify alike),
one run at a time. The averages are those of the dashboard (:mod:`analysis.aggregate`). Warnings
about skipped files go to stderr, the markdown to stdout; exit status 1 when no run under the
root logged weights, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys

import pandas as pd

from analysis.aggregate import (STAT_ORDER, average_weights, exclude_sparse, final_weights, layer_matrix,
                                network_trajectory, order_ops)
from analysis.load import load_for_command

CREATE_HINT = ("Runs log weights when their norm has SN layers, e.g.: python -m tasks.stylize --experiment "
               "stylize-quick (or bash scripts/run.sh for all quick experiments)")


def _columns(ops) -> list[tuple[str, str]]:
    """(stat, op) columns, means first, ops in IN/LN/BN/GN order."""
    ordered = order_ops(ops)
    return [(stat, op) for stat in STAT_ORDER for op in ordered]


def _cell(value, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def run_averages(weights: pd.DataFrame) -> pd.DataFrame:
    """Each run's final weights averaged over its SN layers: rows ``run_id`` (in the order the
    runs appear), columns ``(stat, op)`` plus ``("layers", "")`` and ``("step", "")`` (the last
    complete logged step)."""
    if weights.empty:
        return pd.DataFrame()
    final = final_weights(weights)
    avg = average_weights(final, "run_id", final=False)
    table = avg.pivot_table(index="run_id", columns=["stat", "op"], values="weight")
    cols = [c for c in _columns(avg["op"]) if c in table.columns]
    order = list(dict.fromkeys(weights["run_id"]))
    table = table.reindex(index=order, columns=pd.MultiIndex.from_tuples(cols))
    table[("layers", "")] = final.groupby("run_id")["layer"].nunique().reindex(order)
    table[("step", "")] = final.groupby("run_id")["step"].max().reindex(order)
    return table


def trajectory(weights: pd.DataFrame, run_id: str, points: int = 6) -> pd.DataFrame:
    """One run's network-average weights at ``points`` logged steps spread evenly over training
    (the first and the last complete steps always among them): rows the steps, columns
    ``(stat, op)`` then ``("tv", stat)``, the mean distance of the layers from uniform
    (:func:`analysis.aggregate.deviation_from_uniform`)."""
    if not isinstance(points, int) or isinstance(points, bool) or points < 2:
        raise ValueError(f"points must be an integer of at least 2, got {points!r}")
    one = weights[weights["run_id"].eq(run_id)]
    if one.empty:
        raise ValueError(f"no importance weights logged for run {run_id!r}")
    traj = network_trajectory(one)
    steps = sorted(traj["step"].unique())
    picks = sorted({steps[round(i * (len(steps) - 1) / (points - 1))] for i in range(points)})
    traj = traj[traj["step"].isin(picks)]
    table = traj.pivot_table(index="step", columns=["stat", "op"], values="weight")
    cols = [c for c in _columns(traj["op"]) if c in table.columns]
    table = table.reindex(columns=pd.MultiIndex.from_tuples(cols))
    tv = traj.groupby(["step", "stat"])["tv"].first().unstack("stat")
    for stat in STAT_ORDER:
        if stat in tv.columns:
            table[("tv", stat)] = tv[stat]
    return table


TIE = 1e-9  # top two weights of a layer closer than this: no op leads it


def layer_leaders(weights: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Which op has the largest final weight in each SN layer of one run: per statistic, how many
    layers each op leads (a layer whose top two weights are equal is a tie, led by none), and
    the layer where the lead over the runner-up is largest (the first such layer on equal leads).

    Returns rows per stat with columns ``leads`` (``{op: n_layers}``), ``ties``, ``n_layers``,
    ``top_layer``, ``top_op``, ``top_weight`` and ``margin``.
    """
    matrix = layer_matrix(weights[weights["run_id"].eq(run_id)])
    rows = []
    for stat in STAT_ORDER:
        cols = [c for c in matrix.columns if c[0] == stat]
        if not cols:
            continue
        part = matrix[cols].droplevel(0, axis=1).dropna(how="all")
        leader = part.idxmax(axis=1)
        margin = part.apply(lambda r: _margin(r.dropna().tolist()), axis=1)
        tied = margin.lt(TIE)
        top = margin.idxmax()
        rows.append({"stat": stat, "leads": {op: int((leader[~tied] == op).sum()) for op in part.columns},
                     "ties": int(tied.sum()), "n_layers": len(part), "top_layer": top, "top_op": leader[top],
                     "top_weight": float(part.loc[top, leader[top]]), "margin": float(margin[top])})
    return pd.DataFrame(rows).set_index("stat")


def _margin(values: list[float]) -> float:
    """The largest value minus the second largest (inf for a single op: it leads by definition)."""
    ranked = sorted(values, reverse=True)
    return ranked[0] - ranked[1] if len(ranked) > 1 else float("inf")


def averages_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    cols = [c for c in table.columns if c[0] in STAT_ORDER]
    lines = ["| run | layers | step | " + " | ".join(f"{op.upper()} {stat}" for stat, op in cols) + " |",
             "|" + " --- |" * (len(cols) + 3)]
    for run_id, row in table.iterrows():
        cells = [_cell(row[c], digits) for c in cols]
        lines.append(f"| {run_id} | {int(row[('layers', '')])} | {int(row[('step', '')])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def trajectory_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    names = [f"{op.upper()} {stat}" if stat in STAT_ORDER else f"from uniform ({op})" for stat, op in table.columns]
    lines = ["| step | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for step, row in table.iterrows():
        lines.append(f"| {int(step)} | " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def leaders_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    lines = []
    for stat, row in table.iterrows():
        counts = ", ".join(f"{op.upper()} {n}" for op, n in row["leads"].items())
        counts += f", tied {row['ties']}" if row["ties"] else ""
        lines.append(f"- {stat}s: layers led by {counts} (of {row['n_layers']}); largest lead "
                     f"`{row['top_layer']}`: {row['top_op'].upper()} {row['top_weight']:.{digits}f}, "
                     f"{row['margin']:+.{digits}f} over the next op")
    return "\n".join(lines) + "\n"


def matrix_markdown(matrix: pd.DataFrame, digits: int = 2) -> str:
    names = [f"{op.upper()} {stat}" for stat, op in matrix.columns]
    lines = ["| layer | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for layer, row in matrix.iterrows():
        lines.append(f"| `{layer}` | " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="python -m analysis.weights", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs", help="root of the run directories (default: runs)")
    parser.add_argument("--experiment", action="append", default=None,
                        help="only this experiment (repeatable; default: all)")
    parser.add_argument("--task", action="append", default=None,
                        help="only this task: classify, stylize, enas, detect (repeatable; default: all)")
    parser.add_argument("--runs", default=None, metavar="PATTERN",
                        help="only runs whose name matches this shell pattern (e.g. 'sn*'; comma-separated for several)")
    parser.add_argument("--points", type=int, default=6,
                        help="logged steps shown per run over training, the first and the last among them (default: 6)")
    parser.add_argument("--layers", action="store_true", help="also print every layer's final weights")
    parser.add_argument("--digits", type=int, default=3, help="decimals of the averages (default: 3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load, tabulate and print; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.points < 2:
        parser.error(f"--points must be at least 2, got {args.points}")
    if not 0 <= args.digits <= 6:
        parser.error(f"--digits must be between 0 and 6, got {args.digits}")
    data = load_for_command(args.root, args.experiment)
    if data is None:
        return 2
    weights = exclude_sparse(data.weights)  # Sparse SN's one-hot choices: python -m analysis.results --paper
    if args.task and not weights.empty:
        weights = weights[weights["task"].isin(args.task)]
    if args.runs and not weights.empty:
        patterns = [p.strip() for p in args.runs.split(",") if p.strip()]
        weights = weights[[any(fnmatch.fnmatchcase(r, p) for p in patterns) for r in weights["run"]]]
    if weights.empty:
        print(f"No runs with importance weights under {args.root} for these filters.\n{CREATE_HINT}", file=sys.stderr)
        return 1
    print("SN's importance weights at the end of each run, averaged over its SN layers:\n")
    print(averages_markdown(run_averages(weights), args.digits), end="")
    for run_id in dict.fromkeys(weights["run_id"]):
        print(f"\n### {run_id}\n")
        print("Network averages over training (from uniform: the layers' mean distance 0.5 * sum |w - 1/K|):\n")
        print(trajectory_markdown(trajectory(weights, run_id, args.points), args.digits), end="")
        print("\nWhich op leads each layer at the end:\n")
        print(leaders_markdown(layer_leaders(weights, run_id)), end="")
        if args.layers:
            print("\nEvery layer's final weights:\n")
            print(matrix_markdown(layer_matrix(weights[weights["run_id"].eq(run_id)])), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
