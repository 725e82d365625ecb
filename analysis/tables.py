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

from analysis.aggregate import order_batches
from runformat import parse_batch

NORM_ORDER = ("bn", "gn", "in", "ln", "sn", "sn-inln", "sn-lngn", "sn-all", "none")
SN_WITHOUT_BN = "sn-inln"
DEFAULT_DIFFS = (("sn", "bn"), ("sn", "gn"))
FOOTNOTE = ("(*) For {cols}, SN is sn-inln (IN and LN, without BN), as BN is the same as IN "
            "when each device holds a single sample.")


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
    cells, counts = {}, {}
    for (norm, batch), group in data.groupby(["norm", "batch"]):
        values = pd.to_numeric(group[column], errors="coerce").dropna()
        if len(values):
            cells[(norm, batch)] = 100.0 * float(values.mean())
            counts[(norm, batch)] = int(len(values))
    batches = order_batches(data["batch"])
    rows, marked = _norm_rows(cells, batches)
    table = pd.DataFrame(rows, index=batches).T if rows else pd.DataFrame(columns=batches, dtype=float)
    table = table.reindex(columns=batches).astype(float)
    diff_rows = []
    for a, b in diffs:
        if a.upper() in rows and b.upper() in rows:
            diff_rows.append(f"{a.upper()}-{b.upper()}")
            table.loc[diff_rows[-1]] = table.loc[a.upper()] - table.loc[b.upper()]
    table.index.name = "norm"
    table.attrs["marked"] = marked
    table.attrs["diff_rows"] = diff_rows
    table.attrs["counts"] = {f"{n} {b}": c for (n, b), c in counts.items()}
    table.attrs["footnotes"] = [FOOTNOTE.format(cols=", ".join(c for _, c in marked))] if marked else []
    if eval_stats is None and "eval_stats" in data.columns and data["eval_stats"].nunique() > 1:
        table.attrs["footnotes"].append(
            "Note: runs with different eval_stats are averaged together; filter with --eval-stats.")
    return table


def table_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """The table as GitHub markdown: "76.9", signed differences, "–" for missing, "*" marks."""
    if not isinstance(digits, int) or digits < 0:
        raise ValueError(f"digits must be a non-negative integer, got {digits!r}")
    if table.empty:
        return "_No finished classification runs to tabulate._"
    marked = set(table.attrs.get("marked", []))
    diff_rows = set(table.attrs.get("diff_rows", []))
    header = "| norm | " + " | ".join(str(c) for c in table.columns) + " |"
    lines = [header, "|" + " --- |" * (len(table.columns) + 1)]
    for name, row in table.iterrows():
        cells = [_format(v, digits, name in diff_rows) + ("*" if (name, c) in marked else "")
                 for c, v in row.items()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = table.attrs.get("footnotes", [])
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
    if any(n == SN_WITHOUT_BN and b in one_sample for n, b in cells):
        norms.add("sn")
    if SN_WITHOUT_BN in norms:
        if all(b in one_sample for n, b in cells if n == SN_WITHOUT_BN):
            norms.discard(SN_WITHOUT_BN)  # shown in the SN row only
    rows, marked = {}, []
    for norm in sorted(norms, key=rank):
        row = {b: cells[(norm, b)] for b in batches if (norm, b) in cells}
        if norm == "sn":
            for batch in one_sample:
                if (SN_WITHOUT_BN, batch) in cells:
                    row[batch] = cells[(SN_WITHOUT_BN, batch)]
                    marked.append(("SN", batch))
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
