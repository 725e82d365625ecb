"""What a run directory holds: format version, file names, columns, statuses, batch settings.

The contract is written up for users in ``docs/run-format.md``; this module is its code.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

FORMAT_VERSION = 1  # summary.json's "format_version"; readers refuse other versions

# files and folders of <root>/<experiment>/<run>/
CONFIG_FILE = "config.yaml"  # the resolved config (a YAML mapping), with software versions
SUMMARY_FILE = "summary.json"  # status, final metrics, wall time (a JSON object)
METRICS_FILE = "metrics.csv"  # METRICS_COLUMNS
WEIGHTS_FILE = "weights.csv"  # WEIGHTS_COLUMNS
ARCHITECTURES_FILE = "architectures.jsonl"  # ENAS: one ARCHITECTURE_FIELDS object a line
CHECKPOINTS_DIR = "checkpoints"  # Lightning checkpoints
LAST_CHECKPOINT = "last.ckpt"  # inside CHECKPOINTS_DIR: the one --resume continues from
SAMPLES_DIR = "samples"  # stylize: PNG sample grids
RUN_FILES = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, WEIGHTS_FILE)  # any of them marks a run directory

# CSV columns, and the columns that identify a row (a row is written once per key)
METRICS_COLUMNS = ("step", "epoch", "split", "name", "value")
METRICS_KEY = ("step", "split", "name")
WEIGHTS_COLUMNS = ("step", "epoch", "layer", "stat", "op", "weight")
WEIGHTS_KEY = ("step", "layer", "stat", "op")
ARCHITECTURE_FIELDS = ("epoch", "step", "arch", "arch_str", "val_acc")

# summary.json
RUNNING, FINISHED, FAILED = "running", "finished", "failed"
STATUSES = (RUNNING, FINISHED, FAILED)
SUMMARY_FIELDS = ("format_version", "status", "task", "experiment", "run", "started", "ended",
                  "wall_time_s", "final")  # plus "error" when the run failed

_BATCH = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def parse_batch(text: str) -> Tuple[int, int]:
    """Parse a batch setting ``"GxS"`` (G devices x S samples per device) into ``(G, S)``.

    >>> parse_batch("8x2")
    (8, 2)

    Raises:
        ValueError: not of the form ``<positive int>x<positive int>`` (``x`` or ``X``).
    """
    match = _BATCH.fullmatch(text) if isinstance(text, str) else None
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ValueError(f"bad batch setting {text!r}: expected 'GxS' with G devices and S samples "
                         "per device, both positive integers, e.g. '8x2'")
    return int(match.group(1)), int(match.group(2))


def check_name(what: str, name: str) -> str:
    """``name`` if it can be an experiment or run folder name, else ValueError naming ``what``."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"bad {what} name {name!r}: must be a non-empty folder name without slashes")
    return name


def run_path(root, experiment: str, run: str) -> Path:
    """``<root>/<experiment>/<run>`` (``~`` expanded), the names checked by :func:`check_name`."""
    return Path(root).expanduser() / check_name("experiment", experiment) / check_name("run", run)


def is_run_dir(path: Path) -> bool:
    """True when ``path`` holds at least one of :data:`RUN_FILES`."""
    return any((Path(path) / name).is_file() for name in RUN_FILES)


def find_run_dirs(root) -> List[Tuple[str, Path]]:
    """``(experiment name, run directory)`` of every run below ``root``, sorted by path.

    ``root`` is a runs root (``<root>/<experiment>/<run>/``) or one experiment's folder (runs
    directly below it). Folders whose name starts with ``.`` or ``_`` are passed over.
    """
    root = Path(root)
    found = []
    for child in _subdirs(root):
        if is_run_dir(child):  # root is itself one experiment's folder
            found.append((root.resolve().name, child))
            continue
        found.extend((child.name, run_dir) for run_dir in _subdirs(child) if is_run_dir(run_dir))
    return found


def _subdirs(path: Path) -> List[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
