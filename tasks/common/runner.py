"""Running tasks: grids of runs, each in its own run directory, with the bookkeeping around them.

A task package (``tasks/classify/``, ...) defines ``TASK = Task(name, config_cls, train)`` in
its ``task.py``, where ``train(cfg, rundir, ckpt_path) -> dict`` trains one run (resuming from
``ckpt_path`` when given) and returns its final metrics; its ``__main__.py`` runs
``sys.exit(main(TASK))`` (:mod:`tasks.common.cli`).

What happens to a run directory (:func:`prepare_rundir`; run identity: :mod:`tasks.common.identity`):

- it holds a run of another config: refused (:class:`RunConflict`), unless ``overwrite``;
- it holds a finished run of this config: skipped, unless ``overwrite``;
- ``resume`` and an unfinished run of this config with ``checkpoints/last.ckpt``: continued
  from that checkpoint, after dropping the rows logged after its step;
- otherwise: started over in an empty directory.

API:
    Task(name, config_cls, train, report_keys, commands, description)   what a task exports as TASK
    get_task(name) -> Task                        imports tasks.<name>.task and returns its TASK
    find_conflicts(configs) -> list of RunConflict   the runs that would be refused
    run_grid(task, configs) -> list of RunResult  runs one after the other, skip/fail/report
    run_one(task, cfg) -> RunResult               one run with its run directory bookkeeping
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import runformat as rf
import torch

from .config import config_dict, provenance, software_versions
from .identity import RunConflict, differences
from .rundir import RunDir
from .trainer import checkpoint_step


@dataclasses.dataclass
class Task:
    """What a task package exports: its name, config class and training function."""

    name: str
    config_cls: type
    train: Callable  # train(cfg, rundir, ckpt_path) -> final metrics dict
    report_keys: Tuple[str, ...] = ()  # final metrics shown in the end-of-grid report
    commands: Dict[str, Callable[[List[str]], int]] = dataclasses.field(default_factory=dict)  # subcommands
    description: str = ""  # the first lines of --help


@dataclasses.dataclass
class RunResult:
    """The outcome of one run of a grid."""

    experiment: str
    run: str
    status: str  # finished / skipped / failed / interrupted / refused
    final: Dict
    path: Path
    error: Optional[str] = None


def get_task(name: str) -> Task:
    """Import ``tasks.<name>.task`` and return its ``TASK``; ValueError for an unknown task."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"unknown task {name!r}")
    try:
        module = importlib.import_module(f"tasks.{name}.task")
    except ModuleNotFoundError as e:
        if e.name in (f"tasks.{name}", f"tasks.{name}.task"):
            raise ValueError(f"unknown task {name!r}: no module tasks/{name}/task.py") from None
        raise
    task = getattr(module, "TASK", None)
    if not isinstance(task, Task):
        raise ValueError(f"unknown task {name!r}: tasks/{name}/task.py defines no TASK")
    return task


def resolved_config(cfg) -> Dict:
    """What config.yaml records: every config key, then the software versions."""
    return {**config_dict(cfg), "versions": software_versions(), "provenance": provenance()}


def conflict(cfg) -> Optional[RunConflict]:
    """The :class:`RunConflict` that running ``cfg`` would meet in its directory, or None.

    None also when ``cfg.overwrite`` is set, or when the directory holds nothing that could be
    mistaken for a result (no config.yaml and no finished summary).
    """
    rd = RunDir(cfg.root, cfg.experiment, cfg.run)
    if cfg.overwrite or not rd.exists():
        return None
    recorded, status = rd.read_config(), rd.status()
    if recorded is None:
        return RunConflict(rd.path, status, []) if status == rf.FINISHED else None
    diffs = differences(recorded, config_dict(cfg))
    return RunConflict(rd.path, status, diffs) if diffs else None


def find_conflicts(configs: Sequence) -> List[RunConflict]:
    """The conflicts of every config, so that a grid can refuse before it runs anything."""
    return [c for c in map(conflict, configs) if c is not None]


def run_grid(task: Task, configs: Sequence) -> List[RunResult]:
    """Run ``configs`` one after the other and print a report at the end.

    A finished run of the same config is skipped (unless ``overwrite``); a directory holding
    another config is refused (status ``refused``, nothing written); a run that raises is
    marked failed and the grid goes on; Ctrl-C marks the current run failed ("interrupted")
    and stops the grid.
    """
    results = []
    try:
        for i, cfg in enumerate(configs, 1):
            print(f"[{i}/{len(configs)}] {cfg.experiment}/{cfg.run}", flush=True)
            results.append(run_one(task, cfg))
    except (KeyboardInterrupt, SystemExit):
        results.append(RunResult(cfg.experiment, cfg.run, "interrupted", {}, Path(cfg.root)))
        print_report(task, results)
        raise
    if len(configs) > 1 or any(r.status != "finished" for r in results):
        print_report(task, results)
    return results


def print_report(task: Task, results: Sequence[RunResult]) -> None:
    """One line per run: status, the task's report metrics, error if any."""
    print(f"\n{'run':40s} {'status':12s} " + " ".join(f"{k:>12s}" for k in task.report_keys))
    for r in results:
        vals = " ".join(f"{r.final[k]:12.4f}" if isinstance(r.final.get(k), (int, float)) else f"{'-':>12s}"
                        for k in task.report_keys)
        error = f"  {r.error.splitlines()[0]}" if r.error else ""
        print(f"{r.experiment + '/' + r.run:40s} {r.status:12s} {vals}{error}")
    bad = [r for r in results if r.status in ("failed", "interrupted", "refused")]
    print(f"{len(results)} runs: {len(results) - len(bad)} ok, {len(bad)} failed", flush=True)


def prepare_rundir(cfg) -> Tuple[Optional[RunDir], Optional[str]]:
    """Decide what to do with the run's directory: (rundir, ckpt), or (None, None) to skip.

    Raises:
        RunConflict: the directory holds another config's run (and ``overwrite`` is off).
    """
    found = conflict(cfg)
    if found is not None:
        raise found
    rd = RunDir(cfg.root, cfg.experiment, cfg.run)
    status = rd.status()
    if status == rf.FINISHED and not cfg.overwrite:
        return None, None
    if cfg.resume and status != rf.FINISHED and rd.last_checkpoint is not None and not cfg.overwrite:
        step = checkpoint_step(rd.last_checkpoint)
        dropped = rd.truncate_after(step)
        print(f"resuming {rd.path} from step {step} (dropped rows logged after it: {dropped})", flush=True)
        return rd, str(rd.last_checkpoint)
    if rd.exists():
        why = "overwrite" if cfg.overwrite else f"status {status or 'unknown'}, no --resume"
        print(f"starting {rd.path} over ({why})", flush=True)
        rd.clear()
    return rd, None


def run_one(task: Task, cfg) -> RunResult:
    """Run one config in its run directory: skip, resume or start; mark finished or failed."""
    try:
        rd, ckpt = prepare_rundir(cfg)
    except RunConflict as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return RunResult(cfg.experiment, cfg.run, "refused", {}, e.path, str(e))
    if rd is None:
        old = RunDir(cfg.root, cfg.experiment, cfg.run)
        print(f"skipping finished run {old.path} (same configuration; pass --overwrite to run it again)",
              flush=True)
        return RunResult(cfg.experiment, cfg.run, "skipped", (old.read_summary() or {}).get("final", {}), old.path)
    resolved = resolved_config(cfg)
    old_config = rd.read_config() if ckpt else None
    if old_config:  # keep the config the run was started with, but record this attempt's
        resolved["started_config"] = old_config.get("started_config", old_config)
    rd.write_config(resolved)
    rd.start(task.name)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        final = task.train(cfg, rd, ckpt)
    except (KeyboardInterrupt, SystemExit) as e:
        rd.fail(f"interrupted ({type(e).__name__})")
        raise
    except Exception as e:  # a failed run is recorded and the grid goes on
        traceback.print_exc()
        rd.fail(f"{type(e).__name__}: {e}")
        return RunResult(cfg.experiment, cfg.run, "failed", {}, rd.path, f"{type(e).__name__}: {e}")
    rd.finish(final)
    return RunResult(cfg.experiment, cfg.run, "finished", final, rd.path)
