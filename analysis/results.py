"""Print the Table 2 analogue (accuracy % per norm x batch setting) from run directories.

    python -m analysis.results --root runs --experiment table2-quick

This is the classification task's results command. Warnings about skipped files go to
stderr; the markdown table goes to stdout. Exit status 1 when there is nothing to tabulate.
"""

from __future__ import annotations

import argparse
import sys

from analysis.load import load_for_command
from analysis.sparse import sparse_markdown
from analysis.tables import (accuracy_table, comparison_markdown, epoch_weights_markdown, table_markdown, weights_by_batch,
                             weights_by_block, weights_by_epoch, weights_markdown)

CREATE_HINT = ("Create runs first, e.g.: python -m tasks.classify --experiment table2-quick "
               "(or bash scripts/run.sh for all quick experiments)")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="python -m analysis.results", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs", help="root of the run directories (default: runs)")
    parser.add_argument("--experiment", action="append", default=None,
                        help="only this experiment (repeatable; default: all)")
    parser.add_argument("--metric", default="test_acc",
                        help="final metric to tabulate, a fraction 0..1 (default: test_acc)")
    parser.add_argument("--eval-stats", choices=("batch_average", "moving_average"), default=None,
                        help="only runs evaluated with these statistics (default: all)")
    parser.add_argument("--digits", type=int, default=1, help="decimals shown (default: 1)")
    parser.add_argument("--paper", action="store_true",
                        help="also print our table beside the paper's Table 2, SN's weights per batch setting (Fig. 4) "
                             "and the normalizers Sparse SN's layers ended on")
    parser.add_argument("--by-epoch", action="store_true",
                        help="also print SN's average BN weights (means, variances) at the end of every epoch, "
                             "per batch setting, and how far they moved in each half of training")
    parser.add_argument("--by-block", type=int, metavar="DEPTH", default=None,
                        help="also print SN's final weights per block (Fig. 3): layers grouped by the first DEPTH "
                             "parts of their names (2: the stages of the CIFAR-style ResNet)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load, tabulate and print; returns the exit status.

    Experiments differ in recipe (epochs, data), so the runs of several experiments are never
    averaged together: with no ``--experiment`` each experiment gets its own section."""
    args = build_parser().parse_args(argv)
    data = load_for_command(args.root, args.experiment)
    if data is None:
        return 2
    experiments = classify_experiments(data.runs)
    try:
        sections = [(name, print_tables(_only(data, name), args)) for name in experiments]
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not experiments:
        where = f"{args.root}" + (f" (experiment {', '.join(args.experiment)})" if args.experiment else "")
        print(f"No finished classification runs under {where}.\n{CREATE_HINT}", file=sys.stderr)
        return 1
    for i, (name, text) in enumerate(sections):
        if len(sections) > 1:
            print(("\n" if i else "") + f"## {name}\n")
        print(text, end="")
    return 0


def classify_experiments(runs) -> list[str]:
    """The experiments that hold finished classification runs, in name order."""
    if runs.empty:
        return []
    done = runs[runs["task"].eq("classify") & runs["status"].eq("finished")]
    return sorted(done["experiment"].dropna().unique().tolist())


def _only(data, experiment: str):
    """The runs and weights of one experiment."""
    runs = data.runs[data.runs["experiment"].eq(experiment)]
    weights = data.weights[data.weights["experiment"].eq(experiment)] if not data.weights.empty else data.weights
    return runs, weights


def print_tables(selected, args) -> str:
    """The tables the options ask for, for one experiment's runs and weights."""
    runs, weights = selected
    table = accuracy_table(runs, metric=args.metric, eval_stats=args.eval_stats)
    out = table_markdown(table, digits=args.digits)
    if args.paper:
        out += "\n" + comparison_markdown(table, digits=args.digits)
        out += "\nSN's importance weights per batch setting (Fig. 4):\n\n" + weights_markdown(weights_by_batch(weights))
        sparse = sparse_markdown(weights)
        if sparse:
            out += ("\nSparse SN: the layers (of each run) that ended on each normalizer, and how many of its\n"
                    "mean and variance selections are exactly one-hot:\n\n" + sparse)
    if args.by_block is not None:
        out += (f"\nSN's importance weights per block (Fig. 3; blocks: the first {args.by_block} parts of the layer "
                "names):\n\n" + weights_by_block(weights, args.by_block))
    if args.by_epoch:
        out += ("\nSN's average BN weights at the end of each epoch (Fig. 4 over training):\n\n"
                + epoch_weights_markdown(weights_by_epoch(weights)))
    return out


if __name__ == "__main__":
    sys.exit(main())
