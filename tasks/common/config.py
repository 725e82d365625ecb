"""Configs: one dataclass per task, named experiments in ``experiments.yaml``, overrides.

A task's config is a dataclass deriving from :class:`RunConfig`. Every field is declared with
:func:`key`, which holds its default, its help text and its bounds (``min``, ``gt``, ``lt``,
``choices``) as field metadata: the command line (:mod:`tasks.common.cli`) builds ``--help``
from it and :meth:`RunConfig.validate` checks the bounds. Every field can be set from
``experiments.yaml`` or the command line; unknown keys are errors.

``experiments.yaml``::

    experiments:
      table2-quick:
        task: classify            # which task runs it (required)
        description: ...          # free text (optional)
        epochs: 4                 # any config key of that task
        grid:                     # optional: a mapping key -> list of values (their product),
          norm: [bn, gn, sn]      # or a list of such mappings (the union of their products)
          batch: [8x32, 8x2]

A command-line override of a key that a grid varies replaces that axis by the one value.
Run names come from the config's ``run`` template (e.g. ``"{norm}_{batch}_s{seed}"``). Runs
without ``--experiment`` go to the experiment ``<task>-default``; names ending in
``-default`` are therefore reserved.

API:
    key(default, help, min=, gt=, lt=, choices=, group=, aliases=)   a config field
    count(default, help, ...)                   a config field for a positive integer (min=1)
    parse_batch(text) -> (G, S)                 "GxS" batch setting (:func:`runformat.parse_batch`)
    field_names(cls) -> list of str             the config keys of a config class
    coerce_fields(cls, values, where) -> dict   check keys and convert values to the field types
    load_experiments(path) -> dict              name -> experiment mapping (validated lightly)
    expand_grid(grid) -> list of dicts          the runs of a grid (mapping or list of mappings)
    resolve_runs(cls, base, grid, overrides) -> list of configs
    config_dict(cfg) -> dict                    the config as a plain dict (for config.yaml)
    software_versions() -> dict                 torch, torchvision, lightning, python
    provenance() -> dict                        commit, machine and command of this process
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import platform
import re
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml
from runformat import parse_batch

EXPERIMENT_META_KEYS = ("task", "description", "grid")
DEFAULT_SUFFIX = "-default"  # runs without --experiment go to "<task>-default"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null", "~"}


def key(default, help: str, *, min=None, gt=None, lt=None, choices: Optional[Sequence[str]] = None,
        group: Optional[str] = None, aliases: Sequence[str] = ()):
    """A config field with its default, its help text and its bounds, kept as field metadata.

    Args:
        default: the default value (immutable: a tuple, not a list).
        help: one line for ``--help``.
        min, gt, lt: the value must be ``>= min``, ``> gt``, ``< lt`` (``None`` always passes
            for an optional field).
        choices: the allowed values.
        group: the ``--help`` section (default: the task's own keys).
        aliases: other option names on the command line (``controller-norm`` for ``--norm``).
    """
    meta = {"help": help, "min": min, "gt": gt, "lt": lt, "choices": tuple(choices) if choices else None,
            "group": group, "aliases": tuple(aliases)}
    return dataclasses.field(default=default, metadata=meta)


def count(default, help: str, **kw):
    """A key for a positive integer (a number of steps, images, layers...): :func:`key` with ``min=1``."""
    return key(default, help, min=1, **kw)


def bounds_text(meta) -> str:
    """The bounds of a field's metadata in words, e.g. ``">= 1"`` or ``"one of: a, b"``."""
    parts = [f"{op} {meta[name]}" for name, op in (("min", ">="), ("gt", ">"), ("lt", "<"))
             if meta.get(name) is not None]
    if meta.get("choices"):
        parts.append("one of: " + ", ".join(map(str, meta["choices"])))
    return " and ".join(parts)


def check_bounds(cfg) -> None:
    """Check every field of ``cfg`` against the bounds in its metadata; ValueError naming the key."""
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise ValueError(f"unknown {f.name} {value!r}; known: {', '.join(map(str, meta['choices']))}")
        low, above, below = meta.get("min"), meta.get("gt"), meta.get("lt")
        if ((low is not None and value < low) or (above is not None and not value > above)
                or (below is not None and not value < below)):
            optional = " or none" if type(None) in typing.get_args(typing.get_type_hints(type(cfg))[f.name]) else ""
            raise ValueError(f"{f.name} must be {bounds_text(meta)}{optional}, got {value!r}")


class ScaledBatch:
    """For a config with ``batch`` (``GxS``), ``base_lr`` and ``ref_batch`` fields: the images a
    step, the virtual devices and the linearly scaled learning rate (classify and detect)."""

    @property
    def batch_size(self) -> int:
        """Images per optimizer step, G*S."""
        g, s = parse_batch(self.batch)
        return g * s

    @property
    def num_devices(self) -> int:
        """G, the number of virtual devices of the batch setting."""
        return parse_batch(self.batch)[0]

    @property
    def lr(self) -> float:
        """The scaled learning rate, base_lr * G*S / ref_batch."""
        return self.base_lr * self.batch_size / self.ref_batch


@dataclasses.dataclass
class RunConfig:
    """Keys shared by every task (a task's config class derives from this one)."""

    task: str = key("", "the task (set by the task's config class)", group="run")
    experiment: str = key("", "experiment name: runs/<experiment>/ (empty: <task>-default)", group="run")
    run: str = key("{norm}_s{seed}", "run name, a template over config keys: runs/<experiment>/<run>/", group="run")
    norm: str = key("sn", "the normalizer under study (a name of sn.make_norm)")
    seed: int = key(0, "random seed (weights, data order, subsets)", group="run")
    root: str = key("runs", "where run directories go", group="run")
    epochs: int = count(1, "training epochs")
    max_steps: int = key(-1, "stop after this many optimizer steps (-1: no limit)", group="run")
    accelerator: str = key("cpu", "Lightning accelerator: cpu, gpu, cuda, mps, auto", group="devices")
    devices: Union[int, str] = key(1, "Lightning devices: a count, 'auto', or a list like '0,1'", group="devices")
    strategy: str = key("auto", "Lightning strategy: auto, ddp, ddp_spawn, ...", group="devices")
    num_nodes: int = count(1, "Lightning num_nodes", group="devices")
    precision: str = key("32-true", "Lightning precision: 32-true, 16-mixed, bf16-mixed", group="devices")
    threads: Optional[int] = count(None, "torch.set_num_threads (none: torch's default)", group="devices")
    num_workers: int = key(0, "DataLoader worker processes", min=0, group="devices")
    log_every_n_steps: int = count(10, "training metrics rows every N optimizer steps", group="logging")
    weights_every_n_steps: int = count(50, "importance-weight rows every N optimizer steps (and at the end)",
                                       group="logging")
    progress_bar: bool = key(True, "Lightning's progress bar", group="logging")
    wandb: bool = key(False, "also log to Weights & Biases (offline unless WANDB_MODE=online)", group="logging")
    wandb_project: str = key("switchnorm", "W&B project name", group="logging")
    resume: bool = key(False, "continue an unfinished run of the same config from checkpoints/last.ckpt",
                       group="run control")
    overwrite: bool = key(False, "start over even when the run directory holds a finished run or another config",
                          group="run control")

    def __post_init__(self) -> None:
        if not self.experiment:
            self.experiment = f"{self.task}{DEFAULT_SUFFIX}"

    def validate(self) -> None:
        """Check values beyond their types; raise ValueError naming the bad one."""
        check_bounds(self)
        if self.max_steps < -1 or self.max_steps == 0:
            raise ValueError(f"max_steps must be -1 (no limit) or positive, got {self.max_steps!r}")


def batch_layout(batch: str, world_size: int = 1) -> Tuple[int, int]:
    """``(samples per process, virtual devices per process)`` for a ``"GxS"`` setting.

    With ``world_size`` real processes (DDP), each holds ``G / world_size`` of the G devices.
    Raises ValueError when G is not a multiple of ``world_size``.
    """
    g, s = parse_batch(batch)
    if world_size < 1 or g % world_size:
        raise ValueError(f"batch {batch!r}: G={g} devices cannot be split over {world_size} processes")
    per = g // world_size
    return per * s, per


def field_names(cls) -> List[str]:
    """The config keys of a config dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def unknown_key(name: str, cls, where: str) -> ValueError:
    """The error for a key that is not a field of ``cls``, with the closest field as a hint."""
    known = field_names(cls)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown config key {name!r} in {where}{hint}; known keys: {', '.join(known)}")


def _coerce(name: str, typ, value):
    """Convert ``value`` (from YAML or a command-line string) to the field type ``typ``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is Union:
        if type(None) in args:
            if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
                return None
            rest = [a for a in args if a is not type(None)]
            return _coerce(name, rest[0] if len(rest) == 1 else Union[tuple(rest)], value)
        for a in args:  # e.g. Union[int, str]: the first type that accepts the value
            try:
                return _coerce(name, a, value)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"config key {name!r}: cannot read {value!r} as {typ}")
    if origin in (tuple, list):
        items = value
        if isinstance(value, str):
            items = [v for v in value.split(",") if v.strip()]
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"config key {name!r}: expected a list, got {value!r}")
        return tuple(_coerce(name, args[0], v) for v in items)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise TypeError(f"config key {name!r}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise TypeError(f"config key {name!r}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"config key {name!r}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"config key {name!r}: expected a string, got {value!r}")
    raise TypeError(f"config key {name!r}: unsupported field type {typ}")


def coerce_fields(cls, values: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Check that every key of ``values`` is a field of ``cls`` and convert the values.

    Raises:
        ValueError: an unknown key (the message names it and ``where`` it came from).
        TypeError: a value that cannot be read as its field's type.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in values.items():
        if name not in hints:
            raise unknown_key(name, cls, where)
        out[name] = _coerce(name, hints[name], value)
    return out


def load_experiments(path) -> Dict[str, Dict[str, Any]]:
    """Read ``experiments.yaml``: name -> {task, description?, grid?, config keys...}.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping under ``experiments:``, an experiment without ``task``, or a
            reserved name (ending in ``-default``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"experiments file {str(path)!r} not found")
    data = yaml.safe_load(path.read_text()) or {}
    exps = data.get("experiments") if isinstance(data, dict) else None
    if not isinstance(exps, dict):
        raise ValueError(f"{path}: expected a top-level mapping 'experiments:' of name -> settings")
    for name, exp in exps.items():
        if not isinstance(exp, dict) or not isinstance(exp.get("task"), str):
            raise ValueError(f"{path}: experiment {name!r} must be a mapping with a 'task' key")
        if str(name).endswith(DEFAULT_SUFFIX):
            raise ValueError(f"{path}: experiment name {name!r} is reserved: names ending in {DEFAULT_SUFFIX!r} "
                             "hold the runs made without --experiment")
    return exps


def expand_grid(grid) -> List[Dict[str, Any]]:
    """All combinations of a grid: ``{k: [v, ...]}`` (product) or a list of such (union).

    A scalar value counts as a one-value axis. ``None`` or ``{}`` gives one empty combination.
    """
    if not grid:
        return [{}]
    if isinstance(grid, dict):
        grids = [grid]
    elif isinstance(grid, list) and all(isinstance(g, dict) for g in grid):
        grids = grid
    else:
        raise ValueError(f"grid must be a mapping of key -> list of values, or a list of them; got {grid!r}")
    combos = []
    for g in grids:
        axes = [(k, v if isinstance(v, list) else [v]) for k, v in g.items()]
        for values in itertools.product(*(vals for _, vals in axes)):
            combos.append(dict(zip((k for k, _ in axes), values)))
    return combos


def format_run_name(template: str, values: Dict[str, Any]) -> str:
    """Fill a run-name template like ``"{norm}_{batch}_s{seed}"`` from the config values."""
    try:
        name = template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"bad run name template {template!r}: {e!r} (use config keys in braces)") from None
    if not name or "/" in name:
        raise ValueError(f"run name {name!r} (from template {template!r}) must be non-empty, without '/'")
    return name


def resolve_runs(cls, base: Dict[str, Any], grid=None, overrides: Optional[Dict[str, Any]] = None,
                 where: str = "experiments.yaml") -> List:
    """The configs of an experiment: defaults < ``base`` < grid values < ``overrides``.

    A key in ``overrides`` replaces that grid axis. Duplicate combinations are dropped; two
    runs that would share a run name are an error (put the varied keys in the ``run`` template).
    """
    overrides = dict(overrides or {})
    base = coerce_fields(cls, base, where)
    runs, seen = [], {}
    for combo in expand_grid(grid):
        combo = coerce_fields(cls, combo, f"{where} (grid)")
        values = {**base, **combo, **overrides}
        cfg = cls(**values)
        cfg.run = format_run_name(cfg.run, dataclasses.asdict(cfg))
        cfg.validate()
        values_of_run = dataclasses.astuple(cfg)
        if cfg.run in seen:
            if seen[cfg.run] == values_of_run:
                continue
            raise ValueError(f"two runs of the grid share the run name {cfg.run!r}; add the varied keys "
                             f"to the 'run' template (now {values.get('run', cls.run)!r})")
        seen[cfg.run] = values_of_run
        runs.append(cfg)
    return runs


def config_dict(cfg) -> Dict[str, Any]:
    """The config as a plain, YAML-safe dict (tuples become lists), in field order."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def software_versions() -> Dict[str, str]:
    """Versions of torch, torchvision, lightning and python, for ``config.yaml``."""
    import pytorch_lightning
    import torch

    try:
        import torchvision
        tv = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        tv = None
    return {"torch": str(torch.__version__), "torchvision": str(tv), "lightning": str(pytorch_lightning.__version__),
            "python": platform.python_version()}


def _git_commit(where: Path) -> Dict[str, Any]:
    """The git commit checked out at ``where`` and whether tracked files differ from it."""
    import subprocess

    def git(*args):
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.rstrip("\n") if out.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        commit = commit.strip() if commit else commit
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    changed = [line[3:] for line in dirty.splitlines()] if dirty else []
    return {"commit": commit, "dirty": None if dirty is None else bool(dirty), "changed_files": changed}


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.lru_cache(maxsize=1)
def _process_provenance() -> Dict[str, Any]:
    return _provenance()


def provenance() -> Dict[str, Any]:
    """Where a run came from, for ``config.yaml``: the code's git commit as this process first
    saw it (and the tracked files that differed from it: ``dirty``, ``changed_files``), the
    machine (host name, CPU model, cores, GPU if any) and the command line. Taken once per
    process, since the process runs the code it loaded then."""
    import copy

    return copy.deepcopy(_process_provenance())


def _provenance() -> Dict[str, Any]:
    import os
    import shlex
    import sys

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine = {"hostname": platform.node(), "platform": platform.platform(), "cpu": _cpu_model(),
               "cpu_count": os.cpu_count(), "gpu": gpu}
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name.removesuffix(".__main__") if spec is not None else None
    argv = [Path(sys.executable).name, *(["-m", module] if module else sys.argv[:1]), *sys.argv[1:]]
    return {**_git_commit(Path(__file__).resolve().parents[2]), "machine": machine,
            "command": " ".join(shlex.quote(a) for a in argv), "cwd": os.getcwd()}
