"""Configs: one dataclass per task, named experiments in ``experiments.yaml``, overrides.

A task's config is a dataclass deriving from :class:`RunConfig`; every field has a default
and a comment, and every field can be set from ``experiments.yaml`` or the command line
(``--epochs 3`` or ``--epochs=3``; ``--data-root`` and ``--data_root`` alike; booleans as
``--wandb`` or ``--wandb false``; ``none`` for optional values). Unknown keys are errors.

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
Run names come from the config's ``run`` template (e.g. ``"{norm}_{batch}_s{seed}"``).

API:
    parse_batch(text) -> (G, S)                 "GxS" batch setting
    field_names(cls) -> list of str             the config keys of a config class
    coerce_fields(cls, values, where) -> dict   check keys and convert values to the field types
    load_experiments(path) -> dict              name -> experiment mapping (validated lightly)
    expand_grid(grid) -> list of dicts          the runs of a grid (mapping or list of mappings)
    resolve_runs(cls, base, grid, overrides) -> list of configs
    config_dict(cfg) -> dict                    the config as a plain dict (for config.yaml)
    software_versions() -> dict                 torch, torchvision, lightning, python
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import platform
import re
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

EXPERIMENT_META_KEYS = ("task", "description", "grid")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null", "~"}


@dataclasses.dataclass
class RunConfig:
    """Keys shared by every task (a task's config class derives from this one)."""

    task: str = ""                  # set by the task's config class
    experiment: str = "default"     # experiment name: runs/<experiment>/
    run: str = "{norm}_s{seed}"     # run name, a template over config keys: runs/<experiment>/<run>/
    norm: str = "sn"                # the normalizer under study (a name of sn.make_norm)
    seed: int = 0                   # random seed (weights, data order, subsets)
    root: str = "runs"              # where run directories go
    epochs: int = 1                 # training epochs
    max_steps: int = -1             # stop after this many optimizer steps (-1: no limit)
    # --- Lightning devices -----------------------------------------------------------------
    accelerator: str = "cpu"        # Lightning accelerator: cpu, gpu, cuda, mps, auto
    devices: Union[int, str] = 1    # Lightning devices: a count, "auto", or a list like "0,1"
    strategy: str = "auto"          # Lightning strategy: auto, ddp, ddp_spawn, ...
    num_nodes: int = 1              # Lightning num_nodes
    precision: str = "32-true"      # Lightning precision: 32-true, 16-mixed, bf16-mixed
    threads: Optional[int] = None   # torch.set_num_threads (None: torch's default)
    num_workers: int = 0            # DataLoader worker processes
    # --- logging -----------------------------------------------------------------------------
    log_every_n_steps: int = 10     # training metrics rows every N optimizer steps
    weights_every_n_steps: int = 50  # importance-weight rows every N optimizer steps (and at the end)
    progress_bar: bool = True       # Lightning's progress bar
    wandb: bool = False             # also log to Weights & Biases (offline unless WANDB_MODE=online)
    wandb_project: str = "switchnorm"  # W&B project name
    # --- run control -------------------------------------------------------------------------
    resume: bool = False            # continue an unfinished run from checkpoints/last.ckpt
    overwrite: bool = False         # start over even when the run is finished
    kill_after_steps: Optional[int] = None  # testing aid: SIGKILL ourselves after N optimizer steps

    def validate(self) -> None:
        """Check values beyond their types; raise ValueError naming the bad one."""
        for key in ("epochs", "num_nodes", "log_every_n_steps", "weights_every_n_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.max_steps < -1 or self.max_steps == 0:
            raise ValueError(f"max_steps must be -1 (no limit) or positive, got {self.max_steps!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or none, got {self.threads!r}")


def parse_batch(text: str) -> Tuple[int, int]:
    """Parse a batch setting ``"GxS"`` (G devices x S samples per device) into ``(G, S)``.

    >>> parse_batch("8x2")
    (8, 2)

    Raises:
        ValueError: not of the form ``<positive int>x<positive int>``.
    """
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"bad batch setting {text!r}: expected 'GxS' with G devices and S samples "
                         "per device, both positive integers, e.g. '8x2'")
    return int(m.group(1)), int(m.group(2))


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


def _unknown_key(key: str, cls, where: str) -> ValueError:
    known = field_names(cls)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown config key {key!r} in {where}{hint}; known keys: {', '.join(known)}")


def _coerce(key: str, typ, value):
    """Convert ``value`` (from YAML or a command-line string) to the field type ``typ``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is Union:
        if type(None) in args:
            if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
                return None
            rest = [a for a in args if a is not type(None)]
            return _coerce(key, rest[0] if len(rest) == 1 else Union[tuple(rest)], value)
        for a in args:  # e.g. Union[int, str]: the first type that accepts the value
            try:
                return _coerce(key, a, value)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"config key {key!r}: cannot read {value!r} as {typ}")
    if origin in (tuple, list):
        items = value
        if isinstance(value, str):
            items = [v for v in value.split(",") if v.strip()]
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"config key {key!r}: expected a list, got {value!r}")
        return tuple(_coerce(key, args[0], v) for v in items)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise TypeError(f"config key {key!r}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise TypeError(f"config key {key!r}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"config key {key!r}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"config key {key!r}: expected a string, got {value!r}")
    raise TypeError(f"config key {key!r}: unsupported field type {typ}")


def coerce_fields(cls, values: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Check that every key of ``values`` is a field of ``cls`` and convert the values.

    Raises:
        ValueError: an unknown key (the message names it and ``where`` it came from).
        TypeError: a value that cannot be read as its field's type.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown_key(key, cls, where)
        out[key] = _coerce(key, hints[key], value)
    return out


def load_experiments(path) -> Dict[str, Dict[str, Any]]:
    """Read ``experiments.yaml``: name -> {task, description?, grid?, config keys...}.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping under ``experiments:``, or an experiment without ``task``.
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
        key = dataclasses.astuple(cfg)
        if cfg.run in seen:
            if seen[cfg.run] == key:
                continue
            raise ValueError(f"two runs of the grid share the run name {cfg.run!r}; add the varied keys "
                             f"to the 'run' template (now {values.get('run', cls.run)!r})")
        seen[cfg.run] = key
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


def split_known(argv: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """Split ``--key value`` / ``--key=value`` / ``--flag`` pairs from ``argv`` into a dict.

    Dashes in keys become underscores. A ``--key`` followed by another ``--option`` or by
    nothing is a flag with value ``"true"``. Positional arguments are returned separately.
    """
    values, positional = {}, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    value = argv[i + 1]
                    i += 1
                else:
                    value = "true"
            if key in values:
                raise ValueError(f"option --{key.replace('_', '-')} given twice")
            values[key] = value
        else:
            positional.append(arg)
        i += 1
    return values, positional
