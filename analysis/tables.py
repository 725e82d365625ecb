"""The Table 2 analogue: classification accuracy (%) per norm x batch setting.

Rows are the norms of the finished classification runs (BN, GN, IN, LN, SN, ...), then the
difference rows (SN-BN, SN-GN by default); columns are batch settings ("GxS") in the paper's
order. A cell is the mean over the runs (seeds) of that norm and setting. As in the paper, the
SN row takes the ``sn-inln`` runs (SN without BN) where each device holds one sample (``Gx1``),
marked with ``*`` and a footnote "(*) ..."; a missing cell (e.g. BN that did not converge) is NaN, shown
as "–".
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.aggregate import add_blocks, average_weights, exclude_sparse, order_batches, order_ops
from analysis.load import SUMMARY_COLUMNS
from runformat import parse_batch

NORM_ORDER = ("bn", "gn", "in", "ln", "sn", "sn-inln", "ssn", "ssn-inln", "sn-lngn", "sn-all", "none")
SN_WITHOUT_BN = "sn-inln"
# at Gx1 settings a row takes the runs of its variant without BN (marked *): SN and Sparse SN
WITHOUT_BN = {"sn": SN_WITHOUT_BN, "ssn": "ssn-inln"}
DEFAULT_DIFFS = (("sn", "bn"), ("sn", "gn"))
# config keys that do not change what a run computes (where it runs, how it logs, its name):
# the runs of one cell may differ in these; any other difference is a different recipe
NOT_RECIPE = frozenset({
    "run", "seed", "root", "task", "norm", "batch", "description", "accelerator", "devices", "strategy",
    "num_nodes", "threads", "num_workers", "log_every_n_steps", "weights_every_n_steps", "sample_every_n_steps",
    "progress_bar", "wandb", "wandb_project", "resume", "overwrite", "data_root", "download"})
NOT_CONFIG = frozenset({"run_id", "path", "label", "source"}) | frozenset(SUMMARY_COLUMNS)
NOT_RECIPE_PREFIXES = ("final_", "provenance.", "versions.")
FOOTNOTE = ("(*) For {cols}, SN is sn-inln (IN and LN, without BN), as BN is the same as IN "
            "when each device holds a single sample.")
SSN_FOOTNOTE = "(*) For {cols}, SSN is ssn-inln (sparse SN over IN and LN, without BN)."


def accuracy_table(runs: pd.DataFrame, metric: str = "test_acc", diffs=DEFAULT_DIFFS,
                   eval_stats: str | None = None) -> pd.DataFrame:
    """Accuracy in % per norm (rows) x batch setting (columns), with difference rows.

    ``runs``: the runs frame of :func:`analysis.load.load_runs`; only finished classify runs
    count. ``metric``: a final metric holding a fraction 0..1 ("test_acc" or "best_val_acc").
    ``diffs``: pairs (a, b) giving rows "A-B". ``eval_stats``: keep only runs evaluated that way.
    The result's ``attrs`` hold ``marked`` (cells (row, column) taken from sn-inln),
    ``counts`` (runs per cell) and ``footnotes``.
    """
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"metric must be a metric name, got {metric!r}")
    if any(not (isinstance(d, (tuple, list)) and len(d) == 2) for d in diffs):
        raise ValueError(f"diffs must be pairs of norm names, got {diffs!r}")
    column = f"final_{metric}"
    data = _classify_runs(runs, column, eval_stats)
    cells, counts, stds = {}, {}, {}
    for (norm, batch), group in data.groupby(["norm", "batch"]):
        values = pd.to_numeric(group[column], errors="coerce").dropna()
        if len(values):
            cells[(norm, batch)] = 100.0 * float(values.mean())
            counts[(norm, batch)] = int(len(values))
            stds[(norm, batch)] = 100.0 * float(values.std(ddof=1)) if len(values) > 1 else math.nan
    batches = order_batches(data["batch"])
    rows, marked = _norm_rows(cells, batches)
    table = pd.DataFrame(rows, index=batches).T if rows else pd.DataFrame(columns=batches, dtype=float)
    table = table.reindex(columns=batches).astype(float)
    std_rows, _ = _norm_rows(stds, batches)
    n_rows, _ = _norm_rows(counts, batches)
    std = pd.DataFrame(std_rows, index=batches).T.reindex(index=table.index, columns=batches).astype(float) \
        if std_rows else table * math.nan
    n = pd.DataFrame(n_rows, index=batches).T.reindex(index=table.index, columns=batches).astype(float) \
        if n_rows else table * math.nan
    diff_rows, noise = [], []
    for a, b in diffs:
        if a.upper() in rows and b.upper() in rows:
            name = f"{a.upper()}-{b.upper()}"
            diff_rows.append(name)
            table.loc[name] = table.loc[a.upper()] - table.loc[b.upper()]
            # the standard error of a difference of two means over seeds; NaN with one seed
            se = (std.loc[a.upper()] ** 2 / n.loc[a.upper()] + std.loc[b.upper()] ** 2 / n.loc[b.upper()]) ** 0.5
            std.loc[name] = se
            noise += [(name, c) for c in batches if pd.notna(se[c]) and abs(table.loc[name, c]) <= 2 * se[c]]
    table.index.name = "norm"
    table.attrs["marked"] = marked
    table.attrs["diff_rows"] = diff_rows
    table.attrs["counts"] = {f"{n} {b}": c for (n, b), c in counts.items()}
    table.attrs["std"] = std  # per cell: the std over seeds (difference rows: the difference's standard error)
    table.attrs["within_noise"] = noise  # difference cells within two standard errors of 0
    table.attrs["footnotes"] = [text.format(cols=", ".join(c for r, c in marked if r == row))
                                for row, text in (("SN", FOOTNOTE), ("SSN", SSN_FOOTNOTE))
                                if any(r == row for r, _ in marked)]
    if eval_stats is None and "eval_stats" in data.columns and data["eval_stats"].nunique() > 1:
        table.attrs["footnotes"].append(
            "Note: runs with different eval_stats are averaged together; filter with --eval-stats.")
    mixed = mixed_recipes(data)
    table.attrs["mixed"] = mixed
    table.attrs["footnotes"] += [f"Warning: {cell} averages runs that differ in {what}; tabulate one experiment "
                                 "or recipe at a time." for cell, what in mixed.items()]
    return table


def mixed_recipes(runs: pd.DataFrame) -> dict[str, str]:
    """The cells (norm x batch setting) whose runs differ in more than their seed: in the experiment
    or in a config key that changes what a run computes (every key but :data:`NOT_RECIPE`'s).
    Returns ``{"SN 8x8": "epochs (10, 20)", ...}`` ("experiment (a, b)" first where they differ)."""
    columns = [c for c in runs.columns if c not in NOT_RECIPE and c not in NOT_CONFIG
               and not c.startswith(NOT_RECIPE_PREFIXES)]
    out = {}
    for (norm, batch), group in runs.groupby(["norm", "batch"]):
        if len(group) < 2:
            continue
        keys = sorted((c for c in columns if group[c].map(repr).nunique() > 1),
                      key=lambda c: (c != "experiment", c))
        if keys:
            out[f"{str(norm).upper()} {batch}"] = "; ".join(
                f"{c} ({', '.join(sorted({str(v) for v in group[c]}))})" for c in keys)
    return out


def table_markdown(table: pd.DataFrame, digits: int = 1, spread: bool = True) -> str:
    """The table as GitHub markdown: "76.9", signed differences, "–" for missing, "*" marks.

    With ``spread`` and several seeds a cell reads "mean ± std" (difference rows: "± the
    standard error of the difference"), and a difference within two standard errors of 0 is
    marked "~" (within noise).
    """
    if not isinstance(digits, int) or digits < 0:
        raise ValueError(f"digits must be a non-negative integer, got {digits!r}")
    if table.empty:
        return "_No finished classification runs to tabulate._"
    marked = set(table.attrs.get("marked", []))
    diff_rows = set(table.attrs.get("diff_rows", []))
    header = "| norm | " + " | ".join(str(c) for c in table.columns) + " |"
    lines = [header, "|" + " --- |" * (len(table.columns) + 1)]
    std = table.attrs.get("std") if spread else None
    noise = set(table.attrs.get("within_noise", [])) if spread else set()
    for name, row in table.iterrows():
        cells = []
        for c, v in row.items():
            text = _format(v, digits, name in diff_rows)
            err = std.loc[name, c] if std is not None and name in std.index and c in std.columns else math.nan
            if pd.notna(err) and pd.notna(v):
                text += f" ± {err:.{digits}f}"
            cells.append(text + ("*" if (name, c) in marked else "") + (" ~" if (name, c) in noise else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = list(table.attrs.get("footnotes", []))
    if std is not None and std.notna().any().any():
        notes.append("Cells: mean ± standard deviation over seeds; difference rows: ± the standard error "
                     "of the difference." + (" \"~\": within two standard errors of 0 (noise)." if noise else ""))
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


# ----------------------------------------------------------------------------- helpers

def _classify_runs(runs: pd.DataFrame, column: str, eval_stats: str | None) -> pd.DataFrame:
    """Finished classification runs that have the metric and a valid batch setting."""
    if eval_stats is not None and eval_stats not in ("batch_average", "moving_average"):
        raise ValueError(f"eval_stats must be 'batch_average' or 'moving_average', got {eval_stats!r}")
    empty = pd.DataFrame(columns=["norm", "batch", column])
    if runs.empty:
        return empty
    data = runs[runs["task"].eq("classify") & runs["status"].eq("finished")]
    if data.empty:
        return empty
    if column not in data.columns:
        known = sorted(c[len("final_"):] for c in data.columns if c.startswith("final_"))
        raise ValueError(f"metric {column[len('final_'):]!r} is not a final metric of these runs; known: {known}")
    if eval_stats is not None and "eval_stats" in data.columns:
        data = data[data["eval_stats"].eq(eval_stats)]
    valid = pd.Series([_is_batch(b) for b in data["batch"]], index=data.index, dtype=bool)
    return data[valid]


def _norm_rows(cells: dict, batches: list[str]) -> tuple[dict, list]:
    """Rows {NORM: {batch: acc}} in NORM_ORDER; SN takes sn-inln at Gx1 settings (marked)."""
    def rank(norm):
        return (NORM_ORDER.index(norm) if norm in NORM_ORDER else 99, norm)
    norms = {n for n, _ in cells}
    one_sample = [b for b in batches if parse_batch(b)[1] == 1]
    for with_bn, without in WITHOUT_BN.items():
        if any(n == without and b in one_sample for n, b in cells):
            norms.add(with_bn)
        if without in norms and all(b in one_sample for n, b in cells if n == without):
            norms.discard(without)  # shown in the row with BN only
    rows, marked = {}, []
    for norm in sorted(norms, key=rank):
        row = {b: cells[(norm, b)] for b in batches if (norm, b) in cells}
        if norm in WITHOUT_BN:
            for batch in one_sample:
                if (WITHOUT_BN[norm], batch) in cells:
                    row[batch] = cells[(WITHOUT_BN[norm], batch)]
                    marked.append((norm.upper(), batch))
        rows[norm.upper()] = row
    return rows, marked


def _is_batch(value) -> bool:
    try:
        parse_batch(value)
        return True
    except ValueError:
        return False


def _format(value: float, digits: int, signed: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


# The paper's Table 2 (Luo et al., ICLR 2019): top-1 accuracy (%) on ImageNet, ResNet-50, 100
# epochs; None: BN did not converge at (8, 1). SN at (8, 1) is SN without BN (IN and LN).
PAPER_TABLE2 = {
    "BN": {"8x32": 76.4, "8x16": 76.3, "8x8": 75.2, "8x4": 72.7, "8x2": 65.3, "1x16": 76.2, "1x32": 76.5,
           "8x1": None, "1x8": 75.4},
    "GN": {"8x32": 75.9, "8x16": 75.8, "8x8": 76.0, "8x4": 75.8, "8x2": 75.9, "1x16": 75.9, "1x32": 75.8,
           "8x1": 75.5, "1x8": 75.5},
    "SN": {"8x32": 76.9, "8x16": 76.7, "8x8": 76.7, "8x4": 75.9, "8x2": 75.6, "1x16": 76.3, "1x32": 76.6,
           "8x1": 75.0, "1x8": 75.9},
}


def paper_table(columns=None) -> pd.DataFrame:
    """The paper's Table 2 (ImageNet, ResNet-50) as a frame like :func:`accuracy_table`'s, with
    its SN-BN and SN-GN rows; ``columns``: keep these batch settings (in this order)."""
    table = pd.DataFrame(PAPER_TABLE2).T.astype(float)
    table = table.reindex(columns=order_batches(table.columns))
    table.loc["SN-BN"] = table.loc["SN"] - table.loc["BN"]
    table.loc["SN-GN"] = table.loc["SN"] - table.loc["GN"]
    if columns is not None:
        table = table.reindex(columns=list(columns))
    table.index.name = "norm"
    table.attrs["diff_rows"] = ["SN-BN", "SN-GN"]
    table.attrs["marked"] = [("SN", "8x1")] if columns is None or "8x1" in list(columns) else []
    table.attrs["footnotes"] = ["The paper's Table 2: ImageNet top-1 (%), ResNet-50, 100 epochs; \u2013 at 8x1: "
                                "BN did not converge; (*) SN without BN."]
    return table


def comparison_markdown(ours: pd.DataFrame, digits: int = 1) -> str:
    """Our table beside the paper's for the batch settings we have: each cell "ours | paper"
    for the rows both have (the paper measured ImageNet with ResNet-50, so compare the pattern
    across settings and norms, not the levels)."""
    if ours.empty:
        return "_No finished classification runs to compare._"
    paper = paper_table(ours.columns)
    rows = [r for r in ours.index if r in paper.index]
    diff_rows = set(ours.attrs.get("diff_rows", []))
    lines = ["| norm | " + " | ".join(f"{c} ours / paper" for c in ours.columns) + " |",
             "|" + " --- |" * (len(ours.columns) + 1)]
    for name in rows:
        cells = [f"{_format(ours.loc[name, c], digits, name in diff_rows)} / "
                 f"{_format(paper.loc[name, c], digits, name in diff_rows)}" for c in ours.columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Ours: this suite's runs (mean over seeds). Paper: Table 2 of Luo et al. "
                                   "(ImageNet, ResNet-50, 100 epochs)."]) + "\n"


def _sn_classify_weights(weights: pd.DataFrame) -> pd.DataFrame:
    """The weights of the classification runs with softmax SN layers and a batch setting (Sparse
    SN's one-hot weights left out): what Fig. 3 and Fig. 4 average."""
    weights = exclude_sparse(weights)
    if "task" in weights.columns:
        weights = weights[weights["task"].eq("classify")]
    return weights[weights["batch"].notna()] if "batch" in weights.columns else weights.iloc[0:0]


def weights_by_batch(weights: pd.DataFrame) -> pd.DataFrame:
    """Fig. 4 as a table: the average importance weight of each op (columns ``(stat, op)``) per
    batch setting (rows, paper order) of the classification runs with SN layers, averaged as
    :func:`analysis.aggregate.average_weights` does (over each run's layers, then its runs).
    Sparse SN runs are left out (their weights are one-hot by construction)."""
    avg = average_weights(_sn_classify_weights(weights), "batch")
    if avg.empty:
        return pd.DataFrame()
    table = avg.pivot_table(index="batch", columns=["stat", "op"], values="weight")
    cols = [(s, o) for s in ("mean", "var") for o in order_ops(avg["op"]) if (s, o) in table.columns]
    table = table.reindex(index=order_batches(avg["batch"]), columns=pd.MultiIndex.from_tuples(cols))
    table[("runs", "")] = avg.groupby("batch")["n_runs"].max().reindex(table.index)
    return table


def weights_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """:func:`weights_by_batch` as markdown, with the Fig. 4 gap (mean BN weight at the largest
    per-device batch minus that at the smallest one that has a BN branch)."""
    if table.empty:
        return "_No SN classification runs with importance weights._"
    cols = [c for c in table.columns if c != ("runs", "")]
    lines = ["| batch | " + " | ".join(f"{op.upper()} {stat}" for stat, op in cols) + " | runs |",
             "|" + " --- |" * (len(cols) + 2)]
    for batch, row in table.iterrows():
        cells = [_format(row[c], digits, False) for c in cols]
        lines.append(f"| {batch} | " + " | ".join(cells) + f" | {int(row[('runs', '')])} |")
    if ("mean", "bn") in table.columns:
        bn = table[("mean", "bn")].dropna()
        bn = bn[[parse_batch(b)[1] > 1 for b in bn.index]]
        if len(bn) >= 2:
            big = max(bn.index, key=lambda b: (parse_batch(b)[1], parse_batch(b)[0]))
            small = min(bn.index, key=lambda b: (parse_batch(b)[1], parse_batch(b)[0]))
            lines += ["", f"Mean BN weight at {big} minus at {small}: {bn[big] - bn[small]:+.{digits}f} "
                          f"({bn[big]:.{digits}f} vs {bn[small]:.{digits}f})."]
    return "\n".join(lines) + "\n"


def weights_by_epoch(weights: pd.DataFrame, ops=(("mean", "bn"), ("var", "bn"))) -> pd.DataFrame:
    """Fig. 4 over training: for the classification runs with SN layers (Sparse SN left out), the
    network-average weight of each ``(stat, op)`` of ``ops`` at the last logged step of every
    epoch (rows: epoch 1, 2, ...; row 0 is the start), averaged over each run's layers, then over
    the runs of each batch setting. Columns ``(batch, "BN mean")``-style, batches in paper order."""
    weights = _sn_classify_weights(weights)
    if weights.empty or "epoch" not in weights.columns:
        return pd.DataFrame()
    start = weights[weights["step"].eq(0)].assign(at=0)
    # the rows written at the end of training carry Lightning's epoch count (one past the last
    # epoch): they belong to the last epoch trained
    final_step = weights.groupby("run_id")["step"].transform("max")
    before = weights["epoch"].where(weights["step"].lt(final_step)).groupby(weights["run_id"]).transform("max")
    weights = weights.assign(epoch=weights["epoch"].where(weights["step"].lt(final_step) | before.isna(),
                                                          weights["epoch"].clip(upper=before)))
    last = weights.groupby(["run_id", "epoch"])["step"].transform("max")
    ends = weights[weights["step"].eq(last) & weights["step"].gt(0)]
    ends = ends.assign(at=ends["epoch"].astype(int) + 1)
    avg = average_weights(pd.concat([start, ends]), ["batch", "at"], final=False)
    if avg.empty:
        return pd.DataFrame()
    columns = {}
    for batch in order_batches(avg["batch"]):
        for stat, op in ops:
            sel = avg[avg["batch"].eq(batch) & avg["stat"].eq(stat) & avg["op"].eq(op)]
            if not sel.empty:
                columns[(batch, f"{op.upper()} {stat}")] = sel.set_index("at")["weight"]
    table = pd.DataFrame(columns).sort_index()
    table.index.name = "epoch"
    return table


def epoch_weights_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """:func:`weights_by_epoch` as markdown, with how far each column moved over the second half
    of training against the first (a settled weight moves little late in training)."""
    if table.empty:
        return "_No SN classification runs with importance weights._"
    lines = ["| epoch | " + " | ".join(f"{b} {name}" for b, name in table.columns) + " |",
             "|" + " --- |" * (len(table.columns) + 1)]
    for epoch, row in table.iterrows():
        label = "start" if epoch == 0 else str(epoch)
        lines.append(f"| {label} | " + " | ".join("–" if pd.isna(v) else f"{v:.{digits}f}" for v in row) + " |")
    lines.append("")
    for (batch, name), col in table.items():
        col = col.dropna()
        if len(col) < 3:
            continue
        end = col.index.max()
        mid = col.index[col.index <= end / 2].max()
        first, second = col.loc[mid] - col.iloc[0], col.iloc[-1] - col.loc[mid]
        lines.append(f"- {batch} {name}: {col.iloc[0]:.{digits}f} -> {col.loc[mid]:.{digits}f} (epoch {mid}) -> "
                     f"{col.iloc[-1]:.{digits}f} (epoch {end}): {first:+.{digits}f} in the first half, "
                     f"{second:+.{digits}f} in the second")
    return "\n".join(lines) + "\n"


def weights_by_block(weights: pd.DataFrame, depth: int = 2) -> str:
    """Fig. 3 as markdown: per batch setting of the SN classification runs (Sparse SN left out),
    the final weights averaged per block (the layer name's first ``depth`` dotted parts, e.g.
    ``layers.1`` for a stage of the CIFAR-style ResNet), over its layers and then the runs."""
    weights = _sn_classify_weights(weights)
    if weights.empty:
        return "_No SN classification runs with importance weights._\n"
    with_blocks, blocks = add_blocks(weights, depth)
    avg = average_weights(with_blocks, ["batch", "block"])
    cols = [(s, o) for s in ("mean", "var") for o in order_ops(avg["op"])]
    lines = ["| batch | block | " + " | ".join(f"{op.upper()} {stat}" for stat, op in cols) + " |",
             "|" + " --- |" * (len(cols) + 2)]
    table = avg.pivot_table(index=["batch", "block"], columns=["stat", "op"], values="weight")
    for batch in order_batches(avg["batch"]):
        for block in blocks:
            if (batch, block) in table.index:
                row = table.loc[(batch, block)]
                cells = ["–" if (c not in row.index or pd.isna(row[c])) else f"{row[c]:.2f}" for c in cols]
                lines.append(f"| {batch} | {block} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
