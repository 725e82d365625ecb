"""Load run directories into tidy pandas frames.

A root holds ``<experiment>/<run>/`` directories (the format: ``docs/run-format.md``, read
through :mod:`runformat`), each with ``config.yaml``, ``summary.json``, ``metrics.csv`` and
``weights.csv``. :func:`load_runs` reads all of them into three frames:

- ``runs``: one row per run: ``run_id`` ("experiment/run"), ``experiment``, ``run``, ``task``,
  ``norm``, ``batch``, ``label`` (a short legend name), ``status``, ``started``, ``ended``,
  ``wall_time_s``, ``error``, one ``final_<metric>`` column per final metric, ``path``, and every
  config key (nested keys joined with ".", e.g. ``versions.torch``).
- ``metrics``: ``step, epoch, split, name, value`` plus the run's identity columns.
- ``weights``: ``step, epoch, layer, stat, op, weight`` plus the run's identity columns.

A crash may leave a file cut mid-line, and runs may be running or failed: whatever cannot be
read is skipped and described in ``RunData.warnings``; loading itself does not fail.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import runformat as rf
import yaml
from runformat import UnsupportedFormatError, find_run_dirs

SIGNATURE_FILES = rf.RUN_FILES + (rf.ARCHITECTURES_FILE,)
ID_COLUMNS = ("run_id", "experiment", "run", "task", "norm", "batch", "label")
METRIC_COLUMNS = rf.METRICS_COLUMNS
WEIGHT_COLUMNS = rf.WEIGHTS_COLUMNS
ARCH_COLUMNS = ("epoch", "step", "arch", "val_acc")
SUMMARY_COLUMNS = ("status", "started", "ended", "wall_time_s", "error")  # of the runs frame


@dataclass
class RunData:
    """Everything :func:`load_runs` read: three tidy frames and what it had to skip."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    weights: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def load_runs(root: str | os.PathLike = "runs", experiment: str | list[str] | None = None) -> RunData:
    """Read every run under ``root`` (optionally only the named experiment(s)).

    A root that does not exist gives empty frames and one warning; a root that is a file is a
    ``ValueError``. ``root`` may also be a single experiment directory (runs directly below it).
    """
    root = _as_path(root, "root")
    wanted = _experiment_filter(experiment)
    if not root.exists():
        return RunData(_empty_runs(), _empty(ID_COLUMNS + METRIC_COLUMNS), _empty(ID_COLUMNS + WEIGHT_COLUMNS),
                       [f"no run directory {str(root)!r} yet"])
    if not root.is_dir():
        raise ValueError(f"root {str(root)!r} is not a directory")
    rows, metric_frames, weight_frames, warnings = [], [], [], []
    for exp_name, run_dir in find_run_dirs(root):
        if wanted is not None and exp_name not in wanted:
            continue
        row, metrics, weights = _load_one(root, exp_name, run_dir, warnings)
        if row is not None:
            rows.append(row)
            metric_frames.append(metrics)
            weight_frames.append(weights)
    runs = pd.DataFrame(rows) if rows else _empty_runs()
    runs["label"] = make_labels(runs)
    metrics = _attach_ids(metric_frames, runs, METRIC_COLUMNS)
    weights = _attach_ids(weight_frames, runs, WEIGHT_COLUMNS)
    return RunData(runs.reset_index(drop=True), metrics, weights, warnings)


def load_for_command(root: str | os.PathLike, experiment: str | list[str] | None = None) -> RunData | None:
    """:func:`load_runs` for the ``python -m analysis.*`` commands: the files it skipped are printed
    to stderr as warnings; a bad root prints ``error: ...`` there and gives None (exit status 2)."""
    try:
        data = load_runs(root, experiment=experiment)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    for warning in data.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return data


REFERENCE = "reference"  # the source of the committed reference results (results/)
YOURS = "yours"  # the source of the user's own runs (runs/)


def load_sources(root: str | os.PathLike = "runs", reference_root: str | os.PathLike | None = "results",
                 experiment: str | list[str] | None = None) -> RunData:
    """The user's runs under ``root`` and the reference results under ``reference_root``, in one
    :class:`RunData` with a ``source`` column (``"yours"`` / ``"reference"``) in all three frames.

    Reference runs get run ids ``reference/<experiment>/<run>``, experiment names
    ``<experiment> (reference)`` and labels ending in ``(reference)``, so that they never merge
    with a run of the same name of the user's and every table and legend tells them apart.
    ``reference_root=None`` (or the same folder as ``root``) reads the user's runs only; a
    missing reference folder adds no warning.
    """
    yours = load_runs(root, experiment)
    frames = {name: getattr(yours, name).assign(source=YOURS) for name in ("runs", "metrics", "weights")}
    warnings = list(yours.warnings)
    same = reference_root is not None and Path(reference_root).resolve() == Path(root).resolve()
    if reference_root is not None and not same and Path(reference_root).is_dir():
        ref = load_runs(reference_root, experiment)
        warnings += [f"reference results: {w}" for w in ref.warnings]
        for name in frames:
            extra = getattr(ref, name).copy()
            if extra.empty:
                continue
            extra["run_id"] = REFERENCE + "/" + extra["run_id"].astype(str)
            extra["experiment"] = extra["experiment"].astype(str) + f" ({REFERENCE})"
            extra["label"] = extra["label"].astype(str) + f" ({REFERENCE})"
            extra["source"] = REFERENCE
            frames[name] = pd.concat([frames[name], extra], ignore_index=True) if not frames[name].empty else extra
    return RunData(frames["runs"].reset_index(drop=True), frames["metrics"].reset_index(drop=True),
                   frames["weights"].reset_index(drop=True), warnings)


def read_csv_table(path: Path, columns: tuple[str, ...], ints=(), floats=()) -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV with a header naming at least ``columns``, tolerating damage.

    A last line without its newline (a write cut by a crash) and rows that do not parse are
    skipped and reported. ``ints`` columns must hold integers, ``floats`` columns numbers
    (``nan``/``inf`` allowed; an empty ``epoch`` reads as NaN). Returns (frame, warnings).
    """
    lines, cut = rf.complete_lines(path)
    fast = _fast_frame(lines, columns, ints, floats)
    if fast is not None:
        return fast, [_cut_warning(path, cut)] if cut is not None else []
    table = rf.read_table(path)
    warnings = [_cut_warning(path, table.cut)] if table.cut is not None else []
    if not table.header:
        return _empty(columns), warnings
    missing = [c for c in columns if c not in table.header]
    if missing:
        return _empty(columns), warnings + [f"{path}: header lacks {missing}, file skipped"]
    where = {c: table.header.index(c) for c in columns}
    records, bad = [], []
    for lineno, row in table.rows:
        try:
            if len(row) != len(table.header):
                raise ValueError(f"{len(row)} fields, header has {len(table.header)}")
            records.append(tuple(_convert(row[where[c]], c, ints, floats) for c in columns))
        except ValueError:
            bad.append(lineno)
    if bad:
        warnings.append(f"{path}: skipped {len(bad)} malformed line(s), first at line {bad[0]}")
    frame = pd.DataFrame.from_records(records, columns=list(columns)) if records else _empty(columns)
    return _typed(frame, ints, floats), warnings


def read_architectures(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """ENAS ``architectures.jsonl`` as a frame (epoch, step, arch, val_acc), tolerating damage."""
    path = _as_path(run_dir, "run_dir") / rf.ARCHITECTURES_FILE
    if not path.exists():
        return _empty(ARCH_COLUMNS), []
    content = rf.read_records(path)
    warnings = [_cut_warning(path, content.cut)] if content.cut is not None else []
    if content.malformed:
        warnings.append(f"{path}: skipped {len(content.malformed)} malformed line(s), "
                        f"first at line {content.malformed[0]}")
    records = [(r.get("epoch"), r.get("step"), _arch_text(r.get("arch")), r.get("val_acc")) for r in content.records]
    frame = pd.DataFrame.from_records(records, columns=list(ARCH_COLUMNS)) if records else _empty(ARCH_COLUMNS)
    frame["val_acc"] = pd.to_numeric(frame["val_acc"], errors="coerce")
    return frame, warnings


def list_samples(run_dir: str | os.PathLike) -> list[Path]:
    """The PNG files under the run's ``samples/`` folder, sorted by name."""
    folder = _as_path(run_dir, "run_dir") / rf.SAMPLES_DIR
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def files_signature(root: str | os.PathLike) -> tuple:
    """``(relative path, mtime_ns, size)`` of every run file under ``root``: a cache key."""
    root = _as_path(root, "root")
    if not root.is_dir():
        return ()
    entries = []
    for _, run_dir in find_run_dirs(root):
        for name in SIGNATURE_FILES:
            try:
                stat = (run_dir / name).stat()
            except OSError:
                continue
            entries.append((str((run_dir / name).relative_to(root)), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


def make_labels(runs: pd.DataFrame) -> pd.Series:
    """Short legend names: the norm, plus the batch setting for classify; run name if ambiguous."""
    if runs.empty:
        return pd.Series([], dtype=object, index=runs.index)
    show_batch = (runs["task"].eq("classify") & runs["batch"].notna()).tolist()
    base = [(f"{n} {b}" if s else str(n)) if isinstance(n, str) else r
            for n, b, s, r in zip(runs["norm"], runs["batch"], show_batch, runs["run"])]
    counts = pd.Series(base).value_counts()
    labels = [f"{b} ({r})" if counts[b] > 1 else b for b, r in zip(base, runs["run"])]
    return pd.Series(labels, index=runs.index, dtype=object)


def flatten(mapping: dict, prefix: str = "") -> dict:
    """Nested dict to one level with dotted keys; lists become JSON strings (hashable)."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value), default=str)
        else:
            flat[name] = value
    return flat


# ----------------------------------------------------------------------------- helpers


def _load_one(root: Path, exp_name: str, run_dir: Path, warnings: list[str]):
    """One run's (row, metrics, weights); row is None if the run must be skipped whole."""
    config, summary = {}, {}
    cfg_path, sum_path = run_dir / rf.CONFIG_FILE, run_dir / rf.SUMMARY_FILE
    if not cfg_path.exists():
        warnings.append(f"{cfg_path}: missing")
    else:
        try:
            config = rf.read_config(cfg_path)
        except (OSError, ValueError, yaml.YAMLError) as err:
            warnings.append(f"{cfg_path}: unreadable, config skipped ({_short(err)})")
    if not sum_path.exists():
        warnings.append(f"{sum_path}: missing, status unknown")
    else:
        try:
            summary = rf.read_summary(sum_path)
        except UnsupportedFormatError as err:
            warnings.append(f"{err}; run skipped")
            return None, None, None
        except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            warnings.append(f"{sum_path}: unreadable, status unknown ({_short(err)})")
    row = _run_row(root, exp_name, run_dir, config, summary, warnings)
    metrics = _read_optional(run_dir / rf.METRICS_FILE, METRIC_COLUMNS, ("step",), ("epoch", "value"), warnings)
    weights = _read_optional(run_dir / rf.WEIGHTS_FILE, WEIGHT_COLUMNS, ("step",), ("epoch", "weight"), warnings)
    metrics["run_id"] = row["run_id"]
    weights["run_id"] = row["run_id"]
    return row, metrics, weights


def _run_row(root, exp_name, run_dir, config, summary, warnings) -> dict:
    """The flattened row of the runs frame for one run."""
    row = {"run_id": f"{exp_name}/{run_dir.name}", "experiment": exp_name, "run": run_dir.name}
    for key in ("task", "norm", "batch"):
        value = config.get(key, summary.get(key))
        row[key] = None if value is None else str(value)
    status = summary.get("status", "unknown")
    if summary and status not in rf.STATUSES:
        warnings.append(f"{run_dir / rf.SUMMARY_FILE}: unknown status {status!r}")
    row.update({name: summary.get(name) for name in SUMMARY_COLUMNS})
    row["status"] = status
    finals = summary.get("final") or {}
    if isinstance(finals, dict):
        row.update({f"final_{name}": _number_or_text(v) for name, v in finals.items()})
    row["path"] = str(run_dir)
    for key, value in flatten(config).items():
        row.setdefault(key, value)
    return row


def _read_optional(path, columns, ints, floats, warnings) -> pd.DataFrame:
    """A run's CSV file if it is there (its problems appended to ``warnings``), else no rows."""
    if not path.exists():
        return _empty(columns)
    try:
        frame, file_warnings = read_csv_table(path, columns, ints, floats)
    except OSError as err:
        frame, file_warnings = _empty(columns), [f"{path}: unreadable, skipped ({_short(err)})"]
    warnings.extend(file_warnings)
    return frame


def _attach_ids(frames: list[pd.DataFrame], runs: pd.DataFrame, columns) -> pd.DataFrame:
    """Concatenate per-run frames and add the identity columns of their run."""
    frames = [f for f in frames if not f.empty]
    ids = list(ID_COLUMNS)
    if not frames:
        return _empty(ids + list(columns))
    data = pd.concat(frames, ignore_index=True)
    data = data.merge(runs[ids], on="run_id", how="left")
    return data[ids + list(columns)]


def _arch_text(arch) -> str:
    return arch if isinstance(arch, str) else json.dumps(arch)


def _cut_warning(path: Path, cut: str) -> str:
    return f"{path}: last line cut off (crash mid-write?), skipped: {cut[:60]!r}"


def _convert(text: str, column: str, ints, floats):
    text = text.strip()
    if column in ints:
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"{column} {text!r} is not an integer")
        return int(number)
    if column in floats:
        return math.nan if (text == "" and column == "epoch") else float(text)
    if not text:
        raise ValueError(f"empty {column}")
    return text


def _fast_frame(lines: list[str], columns, ints, floats) -> pd.DataFrame | None:
    """The typed frame of an undamaged table read by pandas' C parser (runs' CSV files are large:
    the row by row reading below is ten times slower); ``None`` for anything else: quotes, blank
    lines, a row of another width, a value that is not what its column needs, a header without
    ``columns``. The row by row reading then finds, skips and reports what is wrong."""
    if len(lines) < 2 or any('"' in line for line in lines):
        return None
    header = lines[0].split(",")
    if any(c not in header for c in columns) or any(line.count(",") != len(header) - 1 for line in lines[1:]):
        return None
    try:
        texts = pd.read_csv(io.StringIO("\n".join(lines)), usecols=list(columns), keep_default_na=False,
                            dtype=object, engine="c")
    except (ValueError, pd.errors.ParserError):
        return None
    if len(texts) != len(lines) - 1:
        return None
    frame = {}
    try:
        for c in columns:
            col = texts[c].to_numpy()
            if c in ints or c in floats:
                if c == "epoch" and c in floats:
                    col = np.where(col == "", "nan", col)
                values = col.astype(np.float64)  # float() of each text, as the row by row reading
                if c in ints:
                    if not (np.isfinite(values).all() and (values == np.round(values)).all()):
                        return None
                    values = values.astype(np.int64)
                frame[c] = values
            else:
                col = pd.Series(col, dtype="str")
                if col.eq("").any() or col.str.strip().ne(col).any():
                    return None
                frame[c] = col
    except ValueError:
        return None
    return pd.DataFrame(frame, columns=list(columns))


def _typed(frame: pd.DataFrame, ints, floats) -> pd.DataFrame:
    for c in ints:
        frame[c] = frame[c].astype("int64")
    for c in floats:
        frame[c] = frame[c].astype("float64")
    return frame


def _number_or_text(value):
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _experiment_filter(experiment) -> set[str] | None:
    if experiment is None:
        return None
    if isinstance(experiment, str):
        return {experiment}
    if isinstance(experiment, (list, tuple, set)) and all(isinstance(e, str) for e in experiment):
        return set(experiment)
    raise TypeError(f"experiment must be a name or a list of names, got {experiment!r}")


def _as_path(value, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, got {value!r}")
    return Path(value)


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def _empty(columns) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _empty_runs() -> pd.DataFrame:
    return _empty(("run_id", "experiment", "run", "task", "norm", "batch") + SUMMARY_COLUMNS + ("path",))
