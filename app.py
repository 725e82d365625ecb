"""Dashboard of Switchable Normalization runs: ``streamlit run app.py``.

What SN learned (importance weights per task, batch setting, block, layer and over training),
what it bought (the Table 2 analogue, learning curves), and each run on its own. Reads your run
directories under a root (default ``runs/``; the env var ``SN_RUNS_ROOT`` or the sidebar
override it) and, beside them, the reference results committed in ``results/`` (the env var
``SN_REFERENCE_ROOT`` moves them; a sidebar switch hides them). While runs train, the page
reloads itself when their files change. Only widgets, caching and layout live here; loading,
figures and tables are in ``analysis/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis import detect, figures, sparse, tables
from analysis.aggregate import exclude_sparse, final_weights, order_batches
from analysis.load import REFERENCE, RunData, files_signature, list_samples, load_sources, read_architectures

REFERENCE_ROOT = Path(__file__).resolve().parent / "results"
REFRESH_SECONDS = 15

CREATE_COMMANDS = """\
bash scripts/run.sh        # set up, run the quick experiments of all three tasks, open this dashboard
# or one task at a time:
python -m tasks.classify --experiment table2-quick
python -m tasks.stylize --experiment stylize-quick
python -m tasks.enas --experiment enas-quick"""
RUN_COLUMNS = ["run_id", "source", "task", "norm", "batch", "status", "wall_time_s"]


@st.cache_data(show_spinner="Loading runs...")
def load(root: str, reference_root: str | None, signature: tuple) -> RunData:
    """Your runs under ``root`` and the reference results under ``reference_root`` (None: none);
    ``signature`` (file paths, mtimes, sizes of both) keys the cache."""
    return load_sources(root, reference_root)


def signature_of(root: str, reference_root: str | None) -> tuple:
    return files_signature(root), files_signature(reference_root) if reference_root else ()


@st.fragment(run_every=REFRESH_SECONDS)
def watch(root: str, reference_root: str | None, seen: tuple) -> None:
    """Every few seconds: when a run file changed since this page was drawn, draw it again.

    The fragment also runs once as the page is drawn; that first run only starts the clock
    (files that changed while the page was being drawn are picked up at the next tick).
    """
    drawn = st.session_state.get("drawn_at", 0.0)
    if time.monotonic() - drawn >= REFRESH_SECONDS / 2 and signature_of(root, reference_root) != seen:
        st.rerun()


def pick(label: str, options: list, key: str, help_text: str | None = None) -> list:
    """A sidebar multiselect where an empty choice means all options."""
    chosen = st.sidebar.multiselect(label, options, placeholder="All", help=help_text, key=key)
    return [c for c in chosen if c in options] or list(options)


def options_of(column: pd.Series) -> list:
    """Distinct values of a column, missing values dropped, batch settings in paper order."""
    values = [v for v in column.dropna().unique().tolist()]
    return order_batches(values) if column.name == "batch" else sorted(values, key=str)


def sidebar_filters(runs: pd.DataFrame) -> pd.DataFrame:
    """Task, experiment, norm, batch, status and run filters; returns the selected runs.

    Each filter offers the values of all runs (not only of those the other filters leave), so
    that changing one filter never resets another.
    """
    st.sidebar.header("Filters")
    keep = pd.Series(True, index=runs.index)
    for column, label in (("task", "Tasks"), ("experiment", "Experiments"), ("norm", "Norms"),
                          ("batch", "Batch settings"), ("status", "Status")):
        options = options_of(runs[column])
        if not options:
            continue
        chosen = pick(label, options, f"filter_{column}",
                      "GxS: G devices with S samples each" if column == "batch" else None)
        if len(chosen) < len(options):  # runs without a value (e.g. no batch) only pass "All"
            keep &= runs[column].isin(chosen)
    chosen_ids = pick("Runs", runs["run_id"].tolist(), "filter_runs")
    return runs[keep & runs["run_id"].isin(chosen_ids)]


def show_warnings(warnings: list[str]) -> None:
    """Files skipped or cut off, in a collapsed sidebar box."""
    if warnings:
        with st.sidebar.expander(f"{len(warnings)} loading note(s)"):
            for warning in warnings:
                st.caption(warning)


def tab_weights(runs: pd.DataFrame, weights: pd.DataFrame) -> None:
    """Fig. 1(c), Fig. 4 and Fig. 3 analogues for the selected runs."""
    if weights.empty:
        st.info("None of the selected runs logged importance weights (only SN runs do).")
        return
    st.subheader("Which normalizer each task chose (Fig. 1c)")
    mixed = "source" in weights.columns and weights["source"].nunique() > 1
    options = (["task and source"] if mixed else []) + ["task", "experiment"]
    by = st.radio("Group by", options, horizontal=True)
    st.caption("A task's bars average all its selected runs, whatever their experiment and length; group by "
               "experiment to see experiments of different lengths apart.")
    if by == "task and source":  # your runs and the reference results apart
        softmax = exclude_sparse(weights)  # (Sparse SN's one-hot weights have their own view below)
        tagged = softmax.assign(task_source=softmax["task"].astype(str)
                                + softmax["source"].map({REFERENCE: " (reference)"}).fillna(""))
        st.plotly_chart(figures.fig_average_weights(tagged, "task_source", title="Importance weights per task (Fig. 1c)"),
                        key="fig1c")
    else:
        st.plotly_chart(figures.fig_weights_by_task(weights, by=by), key="fig1c")
    if weights["task"].eq("detect").any():
        detect_weights(weights)
    if weights["task"].eq("classify").any():
        st.subheader("How the choice depends on the batch setting (Fig. 4)")
        st.plotly_chart(figures.fig_weights_by_batch(one_experiment(weights[weights["task"].eq("classify")])),
                        key="fig4")
    sparse_views(runs, weights)
    st.subheader("Per block of the network (Fig. 3)")
    layers = weights.groupby("run_id")["layer"].nunique().sort_values(ascending=False, kind="stable")
    with_weights = layers.index.tolist()  # the deepest network first
    run_id = st.selectbox("Run", with_weights, key="block_run")
    depth = st.number_input("Block = first N parts of the layer name", 1, 6, 1, key="block_depth",
                            help="1: 'layer2.0.bn1' belongs to block 'layer2' (a ResNet stage)")
    st.plotly_chart(figures.fig_block_weights(weights[weights["run_id"].eq(run_id)], int(depth)), key="fig3")
    layer_views(weights, with_weights, int(depth))


def one_experiment(frame: pd.DataFrame, key: str = "fig4_experiment", what: str = "Fig. 4") -> pd.DataFrame:
    """The rows (weights or runs) of one experiment, picked in a select box when there are several:
    experiments train for different lengths and recipes, so they are not averaged together (the
    reference results' experiments are already labelled '(reference)')."""
    label = frame["experiment"].astype(str)
    choices = sorted(label.dropna().unique())
    if len(choices) <= 1:
        return frame
    choice = st.selectbox("Experiment", choices, key=key,
                          help=f"experiments differ in length and recipe, so {what} shows one at a time")
    return frame[label.eq(choice)]


def sparse_views(runs: pd.DataFrame, weights: pd.DataFrame) -> None:
    """Sparse SN runs: the share of layers that ended on each normalizer, and each layer's choice."""
    sparse_ids = runs.loc[runs["norm"].isin(sparse.SPARSE_NORMS), "run_id"].tolist()
    chosen = weights[weights["run_id"].isin(sparse_ids)]
    if chosen.empty:
        return
    st.subheader("Sparse SN: which normalizer each layer ended on")
    st.caption("Sparsestmax weights end exactly one-hot (separately for means and variances); a choice "
               "marked '?' is a layer not yet one-hot (a run still within its radius schedule).")
    choices = sparse.sparse_choices(chosen)
    labels = dict(zip(runs["run_id"], runs["label"])) if "label" in runs.columns else None
    st.plotly_chart(sparse.fig_choice_shares(choices, labels), key="sparse_shares")
    run_id = st.selectbox("Run", list(dict.fromkeys(choices["run_id"])), key="sparse_run")
    st.dataframe(sparse.choice_matrix(choices, run_id), key="sparse_matrix")


def layer_views(weights: pd.DataFrame, run_ids: list, depth: int = 1) -> None:
    """Small differences made visible: per-layer heatmap, distance from uniform, whole network."""
    st.subheader("Per layer: which layers moved away from uniform")
    st.caption("A network's average can stay near 1/K while its layers move apart: the heatmap colours each "
               "layer's weight minus the uniform 1/K (red above, blue below; the numbers are the weights), the "
               "bars give each layer's distance from uniform, 0.5 \u00b7 \u03a3|w - 1/K| (0: uniform).")
    run_id = st.selectbox("Run", run_ids, key="layer_run")
    relative = st.toggle("Colour the distance from uniform (off: the weights)", value=True, key="layer_relative")
    one = weights[weights["run_id"].eq(run_id)]
    st.plotly_chart(figures.fig_layer_heatmap(one, relative=relative), key="layer_heatmap")
    by = st.radio("Distance from uniform per", ["layer", "block"], horizontal=True, key="deviation_by")
    st.plotly_chart(figures.fig_deviation(one, by=by, block_of=depth), key="deviation")  # blocks as in Fig. 3
    chosen = st.multiselect("Runs over training", run_ids, default=[run_id], key="trajectory_runs")
    st.plotly_chart(figures.fig_network_trajectory(weights, run_ids=chosen or [run_id]), key="network_trajectory")


def tab_results(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    """Table 2 analogue, learning curves per task, and the runs table."""
    tasks = set(runs["task"].dropna())
    if "classify" in tasks:
        st.subheader("Accuracy (%) per norm and batch setting (Table 2)")
        left, right = st.columns(2)
        metric = left.selectbox("Metric", ["test_acc", "best_val_acc"])
        eval_stats = right.selectbox("Evaluation statistics", ["all", "batch_average", "moving_average"])
        beside = st.toggle("Beside the paper's Table 2 (ImageNet, ResNet-50)", value=False, key="beside_paper")
        classify = one_experiment(runs[runs["task"].eq("classify")], key="table2_experiment", what="Table 2")
        try:
            table = tables.accuracy_table(classify, metric=metric, eval_stats=None if eval_stats == "all" else eval_stats)
            st.markdown(tables.table_markdown(table))
            if beside and not table.empty:
                st.markdown(tables.comparison_markdown(table))
        except ValueError as err:
            st.warning(str(err))
        st.subheader("Learning curves (Fig. 2)")
        split = st.radio("Split", ["val", "train"], horizontal=True)
        st.plotly_chart(figures.fig_classify_curves(metrics, split=split), key="fig2")
    if "detect" in tasks:
        detect_results(runs)
    if "stylize" in tasks:
        st.subheader("Style and content losses (Fig. 6a)")
        st.plotly_chart(figures.fig_stylize_losses(metrics), key="fig6a")
    if "enas" in tasks:
        st.subheader("Architecture search: validation accuracy (Fig. 6b)")
        st.plotly_chart(figures.fig_enas_curves(metrics), key="fig6b")
    st.subheader("Runs")
    finals = [c for c in runs.columns if c.startswith("final_")]
    shown = runs[RUN_COLUMNS + finals].dropna(axis=1, how="all")
    st.dataframe(shown, hide_index=True, key="runs_table")


def tab_single_run(runs: pd.DataFrame, metrics: pd.DataFrame, weights: pd.DataFrame) -> None:
    """One run: status, config, curves, per-layer weights, samples, architectures."""
    run_id = st.selectbox("Run", runs["run_id"].tolist(), key="single_run")
    run = runs[runs["run_id"].eq(run_id)].iloc[0]
    run_dir = Path(run["path"])
    status = f"**{run_id}**: {run['task']} with `{run['norm']}`, status **{run['status']}**"
    seconds = pd.to_numeric(run["wall_time_s"], errors="coerce")
    st.markdown(status + (f", {seconds:.0f} s" if pd.notna(seconds) else ""))
    if run["status"] == "failed":
        st.warning(f"This run failed: {run['error']}")
    finals = {c[len('final_'):]: run[c] for c in runs.columns if c.startswith("final_") and pd.notna(run[c])}
    if finals:
        st.dataframe(pd.DataFrame([finals]), hide_index=True, key="single_finals")
    with st.expander("config.yaml"):
        config = run_dir / "config.yaml"
        st.code(config.read_text(encoding="utf-8") if config.exists() else "(missing)", language="yaml")
    run_metrics = metrics[metrics["run_id"].eq(run_id)]
    for split in [s for s in ("train", "val", "test") if s in set(run_metrics["split"])]:
        names = list(dict.fromkeys(run_metrics.loc[run_metrics["split"].eq(split), "name"]))
        if split == "test":
            st.dataframe(run_metrics[run_metrics["split"].eq("test")][["step", "name", "value"]],
                         hide_index=True, key="single_test")
            continue
        st.plotly_chart(figures.fig_learning_curves(run_metrics, names, split, title=f"{split} metrics"),
                        key=f"single_{split}")
    run_weights = weights[weights["run_id"].eq(run_id)]
    if not run_weights.empty:
        st.subheader("Importance weights per layer")
        last = final_weights(run_weights).pivot_table(index="layer", columns=["stat", "op"], values="weight",
                                                      sort=False)
        st.dataframe(last.round(3), key="single_weights")
        st.plotly_chart(figures.fig_weight_trajectories(run_weights), key="single_traj")
    show_samples(run_dir)
    show_architectures(run_dir)
    show_predictions(run_dir)


def show_samples(run_dir: Path, limit: int = 12) -> None:
    """Stylized sample images (stylize runs write them under samples/)."""
    samples = list_samples(run_dir)
    if samples:
        st.subheader(f"Stylized samples ({len(samples)})")
        latest = samples[-limit:]
        st.image([str(p) for p in latest], caption=[p.name for p in latest], width=256)


def show_architectures(run_dir: Path) -> None:
    """Architectures sampled by the ENAS controller (architectures.jsonl)."""
    archs, warnings = read_architectures(run_dir)
    if not archs.empty:
        st.subheader("Sampled architectures")
        st.dataframe(archs.sort_values("val_acc", ascending=False), hide_index=True, key="single_archs")
    for warning in warnings:
        st.caption(warning)


# --- detection (Sec. 4.2): the functions above call these for detect runs ------------------
def detect_weights(weights: pd.DataFrame) -> None:
    """Fig. 1(c)'s detection group: SN's weights per component of the detector."""
    st.subheader("Which normalizer each part of the detector chose (Fig. 1c, detection)")
    stages = st.toggle("Backbone stages apart", value=False, key="detect_stages")
    st.plotly_chart(detect.fig_component_weights(weights, stages=stages), key="detect_components")


def detect_results(runs: pd.DataFrame) -> None:
    """The Tables 3-5 analogue: COCO box and mask AP per norm and batch setting."""
    st.subheader("Box and mask AP (%) per norm and batch setting (Tables 3-5)")
    st.markdown(detect.ap_markdown(detect.ap_table(runs)))
    with st.expander("The paper's Table 5 (Mask R-CNN, ResNet-50 + FPN, COCO, 8x2)"):
        st.markdown(detect.ap_markdown(detect.paper_table5()))


def show_predictions(run_dir: Path, limit: int = 8) -> None:
    """A detection run's validation images: ground truth (left) beside the predictions (right)."""
    drawings = detect.list_predictions(run_dir)
    if drawings:
        st.subheader(f"Predicted boxes and masks ({len(drawings)} validation images)")
        st.caption("Left: ground truth; right: predictions scoring at least 0.5.")
        st.image([str(p) for p in drawings[:limit]], caption=[p.name for p in drawings[:limit]], width=384)


def main() -> None:
    """The page, top to bottom."""
    st.set_page_config(page_title="Switchable Normalization", layout="wide")
    st.title("Switchable Normalization: what it learned")
    root = st.sidebar.text_input("Runs root directory", os.environ.get("SN_RUNS_ROOT", "runs"))
    reference_root = os.environ.get("SN_REFERENCE_ROOT", str(REFERENCE_ROOT))
    have_reference = Path(reference_root).is_dir() and any(Path(reference_root).iterdir())
    show_reference = have_reference and st.sidebar.toggle(
        "Show reference results", value=True, key="show_reference",
        help=f"finished runs committed with the suite in {reference_root}, labelled '(reference)'")
    refresh = st.sidebar.toggle("Reload when runs change", value=True, key="auto_refresh",
                                help=f"checks the run files every {REFRESH_SECONDS} s")
    ref = reference_root if show_reference else None
    try:
        seen = signature_of(root, ref)
        data = load(root, ref, seen)
    except (ValueError, TypeError, OSError) as err:
        st.error(f"Cannot read runs from {root!r}: {err}")
        return
    if refresh:
        st.session_state["drawn_at"] = time.monotonic()
        watch(root, ref, seen)
    yours = data.runs[data.runs["source"].ne(REFERENCE)] if not data.runs.empty else data.runs
    if data.runs.empty:
        st.info(f"No runs under `{root}` yet. Create some (results land in `runs/`); they appear here as they train:")
        st.code(CREATE_COMMANDS, language="bash")
        return
    if yours.empty:
        st.info(f"Showing the reference results (labelled '(reference)'). Your runs under `{root}` appear "
                "beside them as they train; create some with:")
        st.code(CREATE_COMMANDS, language="bash")
    show_warnings(data.warnings)
    runs = sidebar_filters(data.runs)
    st.sidebar.caption(f"{len(runs)} of {len(data.runs)} runs selected"
                       + (f" ({int(data.runs['source'].eq(REFERENCE).sum())} reference)" if show_reference else ""))
    if runs.empty:
        st.info("No runs match the filters.")
        return
    ids = set(runs["run_id"])
    metrics = data.metrics[data.metrics["run_id"].isin(ids)]
    weights = data.weights[data.weights["run_id"].isin(ids)]
    weights_tab, results_tab, run_tab = st.tabs(["Importance weights", "Results", "Single run"])
    with weights_tab:
        tab_weights(runs, weights)
    with results_tab:
        tab_results(runs, metrics)
    with run_tab:
        tab_single_run(runs, metrics, weights)


main()
