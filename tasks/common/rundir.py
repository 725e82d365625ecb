"""The run directory: the files a task writes and ``analysis/`` reads (see DESIGN.md).

Layout of ``<root>/<experiment>/<run>/``::

    config.yaml    the fully resolved config          (write_config)
    summary.json   status, final metrics, wall time   (start / finish / fail), written atomically
    metrics.csv    step,epoch,split,name,value        (metrics.append), one flushed line per row
    weights.csv    step,epoch,layer,stat,op,weight    (weights.append), one flushed line per row
    checkpoints/   Lightning checkpoints, last.ckpt among them

Crash safety: ``summary.json`` and ``config.yaml`` are replaced atomically (temp file +
``os.replace``); CSV rows are appended one line at a time and flushed, so a killed process
leaves at worst a cut last line, which :func:`read_rows` ignores and :class:`CsvLog` repairs
before appending again.

Resume: :meth:`RunDir.truncate_after` drops the rows logged after a checkpoint's step, and
:class:`CsvLog` skips a row whose key (e.g. ``step, split, name``) is already in the file, so
continuing a killed run never duplicates rows.

Only the process of global rank 0 writes (checked through Lightning's ``rank_zero_only.rank``).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import yaml

FORMAT_VERSION = 1
METRICS_HEADER = ("step", "epoch", "split", "name", "value")
METRICS_KEY = ("step", "split", "name")
WEIGHTS_HEADER = ("step", "epoch", "layer", "stat", "op", "weight")
WEIGHTS_KEY = ("step", "layer", "stat", "op")
STATUSES = ("running", "finished", "failed")


def is_rank_zero() -> bool:
    """True in the process that writes run files (global rank 0, or no distributed run)."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def now_iso() -> str:
    """The current time as an ISO 8601 string with time zone (seconds precision)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_rows(path: Path) -> List[Dict[str, str]]:
    """The rows of a run CSV as dicts of strings; tolerates a missing file and a cut last line.

    A last line without its newline, or any line with the wrong number of fields, is skipped.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last "\n" is empty or a cut line
    if not complete:
        return []
    header = next(csv.reader([complete[0]]))
    rows = []
    for fields in csv.reader(complete[1:]):
        if len(fields) == len(header):
            rows.append(dict(zip(header, fields)))
    return rows


def _row_key(row: Dict, key: Sequence[str]) -> tuple:
    # normalise numbers so that "3" read back and 3 logged compare equal
    return tuple(str(int(float(row[k]))) if k in ("step", "epoch") else str(row[k]) for k in key)


def _format(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


class CsvLog:
    """An append-only CSV file with a fixed header, one flushed line per row.

    Args:
        path: the CSV file; created with ``header`` when missing.
        header: the column names.
        key: columns that identify a row; a row whose key is already in the file is skipped
            (:meth:`append` returns False). ``None`` disables the check.
    """

    def __init__(self, path: Path, header: Sequence[str], key: Optional[Sequence[str]] = None) -> None:
        self.path = Path(path)
        self.header = tuple(header)
        self.key = tuple(key) if key else None
        self._keys = set()
        self._file = None
        self._load()

    def _load(self) -> None:
        """Repair a cut last line, check the header and remember the keys already written."""
        self._keys = set()
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        rows = read_rows(self.path)
        with open(self.path, encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
        if tuple(next(csv.reader([first]), [])) != self.header:
            raise ValueError(f"{self.path} has header {first!r}, expected {','.join(self.header)!r}")
        if not self.path.read_bytes().endswith(b"\n") or len(rows) != self._count_lines() - 1:
            self.rewrite(rows)
        if self.key:
            self._keys = {_row_key(r, self.key) for r in rows}

    def _count_lines(self) -> int:
        with open(self.path, "rb") as f:
            return sum(1 for _ in f)

    def rows(self) -> List[Dict[str, str]]:
        """Everything written so far (strings), as :func:`read_rows` reads it."""
        if self._file is not None:
            self._file.flush()
        return read_rows(self.path)

    def append(self, row: Dict) -> bool:
        """Write one row (a dict with every header column) and flush; False if its key exists."""
        missing = [c for c in self.header if c not in row]
        if missing:
            raise ValueError(f"row for {self.path.name} lacks columns {missing}: {row}")
        if self.key:
            k = _row_key(row, self.key)
            if k in self._keys:
                return False
            self._keys.add(k)
        if self._file is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", newline="")
            if new:
                self._file.write(",".join(self.header) + "\n")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_format(row[c]) for c in self.header])
        self._file.write(buf.getvalue())
        self._file.flush()
        return True

    def rewrite(self, rows: Iterable[Dict]) -> None:
        """Replace the file's rows atomically (used to repair and to truncate)."""
        self.close()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        for r in rows:
            writer.writerow([_format(r[c]) for c in self.header])
        atomic_write_text(self.path, buf.getvalue())

    def keep(self, predicate) -> int:
        """Keep only the rows for which ``predicate(row)`` is true; returns how many were dropped."""
        rows = self.rows()
        kept = [r for r in rows if predicate(r)]
        if len(kept) != len(rows):
            self.rewrite(kept)
            self._load()
        return len(rows) - len(kept)

    def close(self) -> None:
        """Close the file handle (appending reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class RunDir:
    """One run's directory: config, summary, metrics and weights logs, checkpoints.

    Args:
        root: the runs root (e.g. ``runs``).
        experiment: experiment name (a folder under ``root``).
        run: run name (a folder under the experiment).

    Example::

        rd = RunDir("runs", "default", "sn_8x16_s0")
        rd.write_config(cfg_dict); rd.start("classify")
        rd.metrics.append({"step": 1, "epoch": 0, "split": "train", "name": "loss", "value": 2.3})
        rd.finish({"test_acc": 0.9})
    """

    def __init__(self, root, experiment: str, run: str) -> None:
        for what, name in (("experiment", experiment), ("run", run)):
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(f"bad {what} name {name!r}: must be a non-empty folder name without slashes")
        self.root = Path(root).expanduser()
        self.experiment = experiment
        self.run = run
        self.path = self.root / experiment / run
        self._metrics = None
        self._weights = None
        self._t0 = None

    # --- files -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Optional[Path]:
        """``checkpoints/last.ckpt`` when it exists, else None."""
        p = self.checkpoint_dir / "last.ckpt"
        return p if p.exists() else None

    @property
    def metrics(self) -> CsvLog:
        """metrics.csv (``step,epoch,split,name,value``; key ``step, split, name``)."""
        if self._metrics is None:
            self._metrics = CsvLog(self.path / "metrics.csv", METRICS_HEADER, METRICS_KEY)
        return self._metrics

    @property
    def weights(self) -> CsvLog:
        """weights.csv (``step,epoch,layer,stat,op,weight``; key ``step, layer, stat, op``)."""
        if self._weights is None:
            self._weights = CsvLog(self.path / "weights.csv", WEIGHTS_HEADER, WEIGHTS_KEY)
        return self._weights

    def exists(self) -> bool:
        return self.path.exists() and any(self.path.iterdir())

    def read_config(self) -> Optional[dict]:
        return yaml.safe_load(self.config_path.read_text()) if self.config_path.exists() else None

    def read_summary(self) -> Optional[dict]:
        """The summary, or None when missing or unreadable."""
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return None

    def status(self) -> Optional[str]:
        """``running`` / ``finished`` / ``failed``, or None when there is no summary."""
        s = self.read_summary()
        return s.get("status") if s else None

    # --- writing -----------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        """Write ``config.yaml`` (atomic; keys in the given order)."""
        if is_rank_zero():
            atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def _write_summary(self, **fields) -> None:
        if is_rank_zero():
            atomic_write_text(self.summary_path, json.dumps(fields, indent=2) + "\n")

    def start(self, task: str) -> None:
        """Mark the run ``running``; keeps ``started`` and the past wall time of a resumed run."""
        old = self.read_summary() or {}
        self._t0 = time.time()
        self._prior_wall = float(old.get("wall_time_s") or 0.0)
        self._started = old.get("started") or now_iso()
        self._task = task
        self._write_summary(format_version=FORMAT_VERSION, status="running", task=task,
                            experiment=self.experiment, run=self.run, started=self._started,
                            ended=None, wall_time_s=self._prior_wall, final={})

    def heartbeat(self) -> None:
        """Rewrite the ``running`` summary with the wall time so far (a killed run keeps it)."""
        if self._t0 is None:
            return
        wall = self._prior_wall + time.time() - self._t0
        self._write_summary(format_version=FORMAT_VERSION, status="running", task=self._task,
                            experiment=self.experiment, run=self.run, started=self._started,
                            ended=None, wall_time_s=round(wall, 3), final={})

    def _end(self, status: str, final: Dict, error: Optional[str]) -> None:
        wall = self._prior_wall + (time.time() - self._t0 if self._t0 else 0.0)
        fields = dict(format_version=FORMAT_VERSION, status=status, task=self._task,
                      experiment=self.experiment, run=self.run, started=self._started,
                      ended=now_iso(), wall_time_s=round(wall, 3), final=final)
        if error is not None:
            fields["error"] = error
        self._write_summary(**fields)
        self.close()

    def finish(self, final: Dict[str, object]) -> None:
        """Mark the run ``finished`` with its final metrics (numbers, or strings such as an arch)."""
        self._end("finished", dict(final), None)

    def fail(self, error: str, final: Optional[Dict] = None) -> None:
        """Mark the run ``failed`` with an error message."""
        self._end("failed", dict(final or {}), str(error))

    def truncate_after(self, step: int) -> Dict[str, int]:
        """Drop CSV rows with ``step`` greater than ``step`` (resume from a checkpoint at ``step``)."""
        if not is_rank_zero():
            return {}
        keep = lambda r: int(float(r["step"])) <= step  # noqa: E731
        return {"metrics": self.metrics.keep(keep), "weights": self.weights.keep(keep)}

    def clear(self) -> None:
        """Remove everything in the run directory (to start a run over)."""
        self.close()
        if is_rank_zero() and self.path.exists():
            shutil.rmtree(self.path)
        self._metrics = self._weights = None

    def close(self) -> None:
        """Close the CSV files."""
        for log in (self._metrics, self._weights):
            if log is not None:
                log.close()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"
