"""The run directory as a task writes it (the format: ``docs/run-format.md``, :mod:`runformat`).

:class:`RunDir` writes ``config.yaml``, ``summary.json`` (status running / finished / failed,
final metrics, wall time), ``metrics.csv`` and ``weights.csv`` of one run, and knows its
``checkpoints/``. Files are written through :mod:`runformat`: the config and the summary
atomically, CSV rows one flushed line at a time, so a killed process leaves at worst a cut
last line, which the readers leave out and :class:`runformat.CsvLog` repairs before it
appends again.

Resume: :meth:`RunDir.truncate_after` drops the rows logged after a checkpoint's step, and
the CSV logs skip a row whose key (``step, split, name`` for metrics) is already in the file,
so continuing a killed run never duplicates rows.

Only the process of global rank 0 writes (checked through Lightning's ``rank_zero_only.rank``).
"""
from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional

import runformat as rf
import yaml


def is_rank_zero() -> bool:
    """True in the process that writes run files (global rank 0, or no distributed run)."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def now_iso() -> str:
    """The current time as an ISO 8601 string with time zone (seconds precision)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


class RunDir:
    """One run's directory: config, summary, metrics and weights logs, checkpoints.

    Args:
        root: the runs root (e.g. ``runs``).
        experiment: experiment name (a folder under ``root``).
        run: run name (a folder under the experiment).

    Example::

        rd = RunDir("runs", "classify-default", "sn_8x16_s0")
        rd.write_config(cfg_dict); rd.start("classify")
        rd.metrics.append({"step": 1, "epoch": 0, "split": "train", "name": "loss", "value": 2.3})
        rd.finish({"test_acc": 0.9})
    """

    def __init__(self, root, experiment: str, run: str) -> None:
        self.path = rf.run_path(root, experiment, run)  # ValueError for a bad name
        self.root = Path(root).expanduser()
        self.experiment = experiment
        self.run = run
        self._metrics = None
        self._weights = None
        self._t0 = None

    # --- files -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / rf.CONFIG_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / rf.SUMMARY_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / rf.CHECKPOINTS_DIR

    @property
    def last_checkpoint(self) -> Optional[Path]:
        """``checkpoints/last.ckpt`` when it exists, else None."""
        p = self.checkpoint_dir / rf.LAST_CHECKPOINT
        return p if p.exists() else None

    @property
    def metrics(self) -> rf.CsvLog:
        """metrics.csv (``step,epoch,split,name,value``; key ``step, split, name``)."""
        if self._metrics is None:
            self._metrics = rf.CsvLog(self.path / rf.METRICS_FILE, rf.METRICS_COLUMNS, rf.METRICS_KEY)
        return self._metrics

    @property
    def weights(self) -> rf.CsvLog:
        """weights.csv (``step,epoch,layer,stat,op,weight``; key ``step, layer, stat, op``)."""
        if self._weights is None:
            self._weights = rf.CsvLog(self.path / rf.WEIGHTS_FILE, rf.WEIGHTS_COLUMNS, rf.WEIGHTS_KEY)
        return self._weights

    def exists(self) -> bool:
        return self.path.exists() and any(self.path.iterdir())

    def read_config(self) -> Optional[dict]:
        """The recorded config, or None when there is none or it cannot be read."""
        try:
            return rf.read_config(self.config_path)
        except (OSError, ValueError, yaml.YAMLError):  # a damaged file counts as none
            return None

    def read_summary(self) -> Optional[dict]:
        """The summary, or None when missing or unreadable."""
        try:
            return rf.read_summary(self.summary_path)
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
            rf.write_config(self.config_path, config)

    def _write_summary(self, status: str, wall: float, final: Dict, ended: Optional[str] = None,
                       error: Optional[str] = None) -> None:
        if not is_rank_zero():
            return
        fields = dict(format_version=rf.FORMAT_VERSION, status=status, task=self._task,
                      experiment=self.experiment, run=self.run, started=self._started,
                      ended=ended, wall_time_s=round(wall, 3), final=final)
        if error is not None:
            fields["error"] = error
        rf.write_summary(self.summary_path, fields)

    def start(self, task: str) -> None:
        """Mark the run ``running``; keeps ``started`` and the past wall time of a resumed run."""
        old = self.read_summary() or {}
        self._t0 = time.time()
        self._prior_wall = float(old.get("wall_time_s") or 0.0)
        self._started = old.get("started") or now_iso()
        self._task = task
        self._write_summary(rf.RUNNING, self._prior_wall, {})

    def _wall(self) -> float:
        return self._prior_wall + (time.time() - self._t0 if self._t0 else 0.0)

    def heartbeat(self) -> None:
        """Rewrite the ``running`` summary with the wall time so far (a killed run keeps it)."""
        if self._t0 is not None:
            self._write_summary(rf.RUNNING, self._wall(), {})

    def finish(self, final: Dict[str, object]) -> None:
        """Mark the run ``finished`` with its final metrics (numbers, or strings such as an arch)."""
        self._write_summary(rf.FINISHED, self._wall(), dict(final), ended=now_iso())
        self.close()

    def fail(self, error: str, final: Optional[Dict] = None) -> None:
        """Mark the run ``failed`` with an error message."""
        self._write_summary(rf.FAILED, self._wall(), dict(final or {}), ended=now_iso(), error=str(error))
        self.close()

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
