"""Reading and writing run files so that a crash never leaves a file a reader cannot read.

Writers replace ``config.yaml`` and ``summary.json`` atomically (a temporary file in the same
folder, then ``os.replace``) and append CSV and JSONL rows one flushed line at a time, so a
killed process leaves at worst a last line without its newline. Readers leave such a cut line
out and report it (``cut``), and report lines that do not parse (``malformed``) instead of
failing. ``docs/run-format.md`` describes the files.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from .layout import FORMAT_VERSION


class UnsupportedFormatError(ValueError):
    """A run file written in a format version this code does not read."""


def atomic_write_text(path, text: str) -> None:
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


def complete_lines(path) -> Tuple[List[str], Optional[str]]:
    """The lines of a text file that end with a newline (without it), and the cut last line.

    The second value is the text after the last newline (a write cut by a crash), or None when
    the file ends with a newline. Undecodable bytes are replaced, never an error.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    cut = lines.pop()  # "" when the file ends with a newline
    return lines, cut or None


# ----------------------------------------------------------------------------------- CSV files


@dataclasses.dataclass
class TableFile:
    """A run CSV as read: the header, every complete data line, and a cut last line."""

    header: Tuple[str, ...]
    rows: List[Tuple[int, List[str]]]  # (line number, fields) of each complete, non-blank data line
    cut: Optional[str] = None  # a last line without its newline, left out

    def records(self) -> List[Dict[str, str]]:
        """The rows with as many fields as the header, as dicts of strings."""
        return [dict(zip(self.header, fields)) for _, fields in self.rows if len(fields) == len(self.header)]

    def malformed(self) -> List[int]:
        """Line numbers of the rows whose number of fields differs from the header's."""
        return [lineno for lineno, fields in self.rows if len(fields) != len(self.header)]


def read_table(path) -> TableFile:
    """Read a run CSV (a missing file reads as empty); never fails on damaged content."""
    path = Path(path)
    if not path.exists():
        return TableFile((), [])
    lines, cut = complete_lines(path)
    if not lines:
        return TableFile((), [], cut)
    header = tuple(next(csv.reader([lines[0]]), []))
    rows = [(lineno, fields) for lineno, fields in enumerate(csv.reader(lines[1:]), start=2) if fields]
    return TableFile(header, rows, cut)


def read_rows(path) -> List[Dict[str, str]]:
    """The well-formed rows of a run CSV as dicts of strings (a cut last line left out)."""
    return read_table(path).records()


def _row_key(row: Dict, key: Sequence[str]) -> tuple:
    # normalise numbers so that "3" read back and 3 logged compare equal
    return tuple(str(int(float(row[k]))) if k in ("step", "epoch") else str(row[k]) for k in key)


def _format(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class CsvLog:
    """An append-only run CSV with a fixed header, one flushed line per row.

    Args:
        path: the CSV file; created with ``header`` when missing.
        header: the column names.
        key: columns that identify a row; a row whose key is already in the file is skipped
            (:meth:`append` returns False). ``None`` disables the check.

    Raises:
        ValueError: the existing file has another header.
    """

    def __init__(self, path, header: Sequence[str], key: Optional[Sequence[str]] = None) -> None:
        self.path = Path(path)
        self.header = tuple(header)
        self.key = tuple(key) if key else None
        self._keys = set()
        self._file = None
        self._load()

    def _load(self) -> None:
        """Repair a cut last line or malformed rows, check the header, remember the keys written."""
        self._keys = set()
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        table = read_table(self.path)
        if table.header != self.header:
            raise ValueError(f"{self.path} has header {','.join(table.header)!r}, expected {','.join(self.header)!r}")
        rows = table.records()
        if table.cut is not None or table.malformed():
            self.rewrite(rows)
        if self.key:
            self._keys = {_row_key(r, self.key) for r in rows}

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

    def keep(self, predicate: Callable[[Dict[str, str]], bool]) -> int:
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


# --------------------------------------------------------------------------------- JSONL files


@dataclasses.dataclass
class RecordFile:
    """A JSONL file as read: one JSON object a line."""

    records: List[dict]
    malformed: List[int]  # line numbers of lines that are not a JSON object
    cut: Optional[str] = None  # a last line without its newline, left out


def read_records(path) -> RecordFile:
    """Read a JSONL file (a missing file reads as empty); never fails on damaged content."""
    path = Path(path)
    if not path.exists():
        return RecordFile([], [])
    lines, cut = complete_lines(path)
    records, bad = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(lineno)
    return RecordFile(records, bad, cut)


def append_record(path, record: dict) -> None:
    """Append one JSON object as one flushed line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def keep_records(path, predicate: Callable[[dict], bool]) -> int:
    """Keep the records for which ``predicate(record)`` is true (atomic); returns how many were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    records = read_records(path).records
    kept = [r for r in records if predicate(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)


# ------------------------------------------------------------------------ config and summary


# libyaml's safe loader when PyYAML was built with it (the same documents, several times faster)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def write_config(path, config: dict) -> None:
    """Write ``config.yaml`` atomically, keys in the given order."""
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def read_config(path) -> dict:
    """The run's config as a dict (an empty file reads as ``{}``).

    Raises:
        OSError, yaml.YAMLError: unreadable. ValueError: not a YAML mapping.
    """
    data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def write_summary(path, fields: dict) -> None:
    """Write ``summary.json`` atomically (``fields`` should start with ``format_version``)."""
    atomic_write_text(path, json.dumps(fields, indent=2) + "\n")


def read_summary(path) -> dict:
    """The run's summary.

    Raises:
        OSError: unreadable. ValueError: not a JSON object (``json.JSONDecodeError`` is one).
        UnsupportedFormatError: a ``format_version`` other than :data:`FORMAT_VERSION`.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{path}: summary format_version {version!r} is not supported (this code reads "
            f"format_version {FORMAT_VERSION}); use the suite version that wrote this run")
    return data
