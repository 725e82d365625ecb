"""The command line of every task: ``python -m tasks.<task> [--experiment NAME] [--KEY VALUE ...]``.

The options are the fields of the task's config dataclass, built into an ``argparse`` parser
from the fields' metadata (help text, default and bounds: :func:`tasks.common.config.key`).
``--data-root`` and ``--data_root`` are the same option, ``--key=value`` works too, booleans
are flags (``--wandb``) or take a value (``--wandb false``), and ``none`` sets an optional
key to None. Values are converted and checked by :mod:`tasks.common.config`, so the command
line, ``experiments.yaml`` and the Python API follow one set of rules; an unknown option is an
error naming the closest key. A task may add subcommands (``python -m tasks.stylize apply``).

Exit codes: 0 every run finished or was skipped, 1 a run failed, 2 bad input or a run
directory that holds another configuration (nothing was run).

API:
    main(task, argv=None) -> int                  the command line (exit code)
    configs_from_args(task, argv) -> (Task, configs, options)
    build_parser(task) -> argparse.ArgumentParser
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .config import (EXPERIMENT_META_KEYS, bounds_text, coerce_fields, load_experiments, resolve_runs,
                     unknown_key)
from .runner import Task, find_conflicts, get_task, run_grid

REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_OPTIONS = ("task", "experiment")  # config fields the command line does not set directly
GROUPS = {None: "options of this task", "run": "what to run", "devices": "devices (Lightning's Trainer)",
          "logging": "logging", "run control": "run control"}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ValueErrors for :func:`main` to report (exit 2)."""

    def error(self, message):
        raise ValueError(message)


class _Once(argparse.Action):
    """Store the value; an option given twice is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        if hasattr(namespace, self.dest):
            raise argparse.ArgumentError(self, "given twice")
        setattr(namespace, self.dest, values)


def default_experiments_file() -> Path:
    """``./experiments.yaml`` when present, else the one at the repository root."""
    local = Path("experiments.yaml")
    return local if local.exists() else REPO_ROOT / "experiments.yaml"


def _metavar(typ) -> str:
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) in (tuple, list):
        return f"{_metavar(args[0])},..."
    if args and type(None) in typing.get_args(typ):
        return f"{_metavar(args[0]) if len(args) == 1 else 'VALUE'}|none"
    return {int: "N", float: "X", str: "TEXT"}.get(typ, "VALUE")


def shown(value) -> str:
    """A value as one would type it on the command line (``none``, ``true``, ``0.3,0.6``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(map(shown, value))
    return str(value) if value != "" else "''"


def _help(field: dataclasses.Field) -> str:
    meta = field.metadata
    bounds = bounds_text(meta)
    text = f"{meta.get('help', '')} ({bounds + '; ' if bounds else ''}default: {shown(field.default)})"
    return text.replace("%", "%%")  # argparse formats help strings with %


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument("--experiment", metavar="NAME", action=_Once, default=argparse.SUPPRESS,
                        help="run a named experiment of experiments.yaml (possibly a grid); options override "
                             "its values, an option for a key its grid varies replaces that axis")
    parser.add_argument("--experiments-file", metavar="FILE", action=_Once, default=argparse.SUPPRESS,
                        help="the experiments file (default: ./experiments.yaml, else the repository's)")
    parser.add_argument("--runs", metavar="PATTERNS", action=_Once, default=argparse.SUPPRESS,
                        help="run only the runs of the grid whose names match one of these comma-separated "
                             "shell patterns, e.g. '*_8x32_*,*_8x2_*' (to run parts of a grid side by side)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs (experiment/run) without training")
    parser.add_argument("--list", action="store_true", help="list the experiments of the experiments file")


def _epilog(task: Task) -> str:
    text = (f"Without --experiment: one run of the defaults above, in <root>/{task.name}-default/<run>/.\n"
            "A finished run of the same configuration is skipped (its result reported); a run directory\n"
            "that holds another configuration is refused, naming the keys that differ: pass --overwrite\n"
            "to replace it, or --run NAME for a directory of its own (docs/run-format.md).")
    commands = "".join(f"\n  python -m tasks.{task.name} {name} --help" for name in task.commands)
    return text + ("\n\nother commands:" + commands if commands else "")


def build_parser(task: Task) -> argparse.ArgumentParser:
    """The task's parser: the common options, then one option per config field, by group."""
    parser = _Parser(prog=f"python -m tasks.{task.name}", allow_abbrev=False, add_help=False,
                     usage="%(prog)s [--experiment NAME] [--dry-run] [--list] [--KEY VALUE ...]",
                     formatter_class=argparse.RawDescriptionHelpFormatter, description=task.description,
                     epilog=_epilog(task))
    _common_options(parser)
    hints = typing.get_type_hints(task.config_cls)
    fields = dataclasses.fields(task.config_cls)
    titles = dict(GROUPS)  # the common sections, then the task's own in the order they appear
    titles.update((f.metadata["group"], f.metadata["group"]) for f in fields
                  if f.metadata.get("group") and f.metadata["group"] not in titles)
    groups = {name: parser.add_argument_group(title) for name, title in titles.items()}
    for field in fields:
        if field.name in NOT_OPTIONS:
            continue
        names = [f"--{n.replace('_', '-')}" for n in (field.name, *field.metadata.get("aliases", ()))]
        kwargs = dict(dest=field.name, default=argparse.SUPPRESS, action=_Once, help=_help(field))
        if hints[field.name] is bool:
            kwargs.update(nargs="?", const="true", metavar="true|false")
        else:
            kwargs["metavar"] = _metavar(hints[field.name])
        groups[field.metadata.get("group")].add_argument(*names, **kwargs)
    return parser


def _normalized(argv: Sequence[str]) -> List[str]:
    """``--data_root=x`` -> ``--data-root=x``: option names with dashes only."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def _parse(task: Task, argv: List[str]) -> Tuple[Dict, Dict]:
    """(the CLI-only options, the config overrides) of ``argv`` for ``task``."""
    values, extra = build_parser(task).parse_known_args(argv)
    if extra:
        name = extra[0][2:].partition("=")[0].replace("-", "_")
        if not extra[0].startswith("--"):
            raise ValueError(f"unexpected argument {extra[0]!r}; options look like --key value")
        if name == "task":
            raise ValueError("config key 'task' cannot be set; run python -m tasks.<task> instead")
        raise unknown_key(name, task.config_cls, "the command line")
    values = vars(values)
    options = {k: values.pop(k) for k in ("experiment", "experiments_file", "runs", "dry_run", "list", "help")
               if k in values}
    return options, values


def configs_from_args(task: Task, argv: Sequence[str]) -> Tuple[Task, List, Dict]:
    """Parse the command line into (the task to run, its run configs, the CLI-only options).

    ``--experiment NAME`` may name an experiment of another task: that task then runs it.

    Raises ValueError/TypeError/FileNotFoundError for bad input (unknown key, experiment, ...).
    """
    argv = _normalized(argv)
    pre = _Parser(add_help=False, allow_abbrev=False)
    _common_options(pre)
    options = vars(pre.parse_known_args(argv)[0])
    base, grid = {}, None
    if options.get("experiment"):
        path = Path(options.get("experiments_file") or default_experiments_file())
        exps = load_experiments(path)
        name = options["experiment"]
        if name not in exps:
            raise ValueError(f"unknown experiment {name!r} in {path}; known: {', '.join(exps)}")
        if exps[name]["task"] != task.name:
            task = get_task(exps[name]["task"])  # dispatch: experiments.yaml says which task runs it
        base = {k: v for k, v in exps[name].items() if k not in EXPERIMENT_META_KEYS}
        base["experiment"] = name
        grid = exps[name].get("grid")
    options, values = _parse(task, argv)
    overrides = coerce_fields(task.config_cls, values, "the command line")
    configs = resolve_runs(task.config_cls, base, grid, overrides,
                           where=f"experiment {options.get('experiment') or task.name + '-default'!r}")
    if options.get("runs") is not None:
        configs = select_runs(configs, options["runs"])
    return task, configs, options


def select_runs(configs: Sequence, patterns: str) -> List:
    """The configs whose run name matches one of the comma-separated shell ``patterns``.

    Raises:
        ValueError: no pattern given, or no run matches (the message lists the grid's runs).
    """
    import fnmatch

    wanted = [p.strip() for p in str(patterns).split(",") if p.strip()]
    if not wanted:
        raise ValueError("--runs needs at least one pattern, e.g. --runs '*_8x32_*'")
    chosen = [c for c in configs if any(fnmatch.fnmatchcase(c.run, p) for p in wanted)]
    if not chosen:
        raise ValueError(f"--runs {patterns!r} matches none of the runs: {', '.join(c.run for c in configs)}")
    return chosen


def print_experiments(path: Path) -> None:
    """One line per experiment of the file: name, task, description."""
    for name, exp in load_experiments(path).items():
        print(f"{name:24s} {exp['task']:9s} {exp.get('description', '')}")


def main(task: Task, argv: Optional[Sequence[str]] = None) -> int:
    """The command line of a task; returns the exit code (0 ok, 1 a run failed, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in task.commands:
        return task.commands[argv[0]](argv[1:])
    if "-h" in argv or "--help" in argv:
        print(build_parser(task).format_help())
        return 0
    try:
        task, configs, options = configs_from_args(task, argv)
        if options.get("list"):
            print_experiments(Path(options.get("experiments_file") or default_experiments_file()))
            return 0
        if options.get("dry_run"):
            for cfg in configs:
                print(f"{cfg.experiment}/{cfg.run}")
            return 0
        conflicts = find_conflicts(configs)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if conflicts:
        for c in conflicts:
            print(f"error: {c}", file=sys.stderr)
        return 2
    results = run_grid(task, configs)
    return 0 if all(r.status in ("finished", "skipped") for r in results) else 1
