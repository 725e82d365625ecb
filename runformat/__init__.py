"""The run-directory format, shared by the writers (``tasks``) and the readers (``analysis``).

A run directory ``<root>/<experiment>/<run>/`` holds ``config.yaml``, ``summary.json``,
``metrics.csv``, ``weights.csv`` and ``checkpoints/`` (tasks may add files such as
``architectures.jsonl`` or ``samples/``). The format is documented in ``docs/run-format.md``.
This package depends on PyYAML only: no Lightning, no pandas.

- :mod:`runformat.layout`: :data:`FORMAT_VERSION`, file names, columns and row keys,
  statuses, :func:`parse_batch` (``"GxS"``), :func:`run_path`, :func:`find_run_dirs`.
- :mod:`runformat.files`: atomic writes, :class:`CsvLog` (flushed appends), tolerant readers
  (:func:`read_table`, :func:`read_rows`, :func:`read_records` for JSONL), ``config.yaml`` and
  ``summary.json`` (:func:`read_summary` refuses other format versions).
"""
from .files import (CsvLog, RecordFile, TableFile, UnsupportedFormatError, append_record, atomic_write_text,
                    complete_lines, keep_records, read_config, read_records, read_rows, read_summary, read_table,
                    write_config, write_summary)
from .layout import (ARCHITECTURE_FIELDS, ARCHITECTURES_FILE, CHECKPOINTS_DIR, CONFIG_FILE, FAILED, FINISHED,
                     FORMAT_VERSION, LAST_CHECKPOINT, METRICS_COLUMNS, METRICS_FILE, METRICS_KEY, RUN_FILES,
                     RUNNING, SAMPLES_DIR, STATUSES, SUMMARY_FIELDS, SUMMARY_FILE, WEIGHTS_COLUMNS, WEIGHTS_FILE,
                     WEIGHTS_KEY, check_name, find_run_dirs, is_run_dir, parse_batch, run_path)

__all__ = [
    "ARCHITECTURE_FIELDS", "ARCHITECTURES_FILE", "CHECKPOINTS_DIR", "CONFIG_FILE", "FAILED", "FINISHED",
    "FORMAT_VERSION", "LAST_CHECKPOINT", "METRICS_COLUMNS", "METRICS_FILE", "METRICS_KEY", "RUN_FILES", "RUNNING",
    "SAMPLES_DIR", "STATUSES", "SUMMARY_FIELDS", "SUMMARY_FILE", "WEIGHTS_COLUMNS", "WEIGHTS_FILE", "WEIGHTS_KEY",
    "CsvLog", "RecordFile", "TableFile", "UnsupportedFormatError", "append_record", "atomic_write_text",
    "check_name", "complete_lines", "find_run_dirs", "is_run_dir", "keep_records", "parse_batch", "read_config",
    "read_records", "read_rows", "read_summary", "read_table", "run_path", "write_config", "write_summary",
]
