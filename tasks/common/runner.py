"""Running tasks: the command line, grids of runs, and the Lightning Trainer they share.

A task module (``tasks/classify.py``, ...) defines ``TASK = Task(name, config_cls, train)``
where ``train(cfg, rundir, ckpt_path) -> dict`` trains one run (resuming from ``ckpt_path``
when given) and returns its final metrics, and ends with
``if __name__ == "__main__": sys.exit(main(TASK))``.

API:
    Task(name, config_cls, train, report_keys)   what a task module exports as TASK
    get_task(name) -> Task                        imports tasks.<name> and returns its TASK
    main(task, argv=None) -> int                  the command line (exit code)
    configs_from_args(task, argv) -> (Task, configs, options)
    run_grid(task, configs) -> list of RunResult  runs one after the other, skip/fail/report
    run_one(task, cfg) -> RunResult               one run with its run directory bookkeeping
    build_trainer(cfg, rundir, callbacks=(), monitor=None, **kw) -> pl.Trainer
    checkpoint_step(path) -> int                  the global step stored in a Lightning checkpoint
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch

from .config import (EXPERIMENT_META_KEYS, coerce_fields, config_dict, load_experiments, resolve_runs,
                     software_versions, split_known)
from .loggers import Heartbeat, KillAfterSteps, RunLogger, SwitchWeightsLogger, make_wandb_logger
from .rundir import RunDir

REPO_ROOT = Path(__file__).resolve().parents[2]
# command-line options that are not config keys
CLI_OPTIONS = ("experiment", "experiments_file", "dry_run", "list")
# keys that change how a run is executed, not what it computes (ignored when comparing configs)
EXECUTION_KEYS = ("resume", "overwrite", "kill_after_steps", "progress_bar", "num_workers", "threads",
                  "wandb", "wandb_project", "root")


@dataclasses.dataclass
class Task:
    """What a task module exports: its name, config class and training function."""

    name: str
    config_cls: type
    train: Callable  # train(cfg, rundir, ckpt_path) -> final metrics dict
    report_keys: Tuple[str, ...] = ()  # final metrics shown in the end-of-grid report


@dataclasses.dataclass
class RunResult:
    """The outcome of one run of a grid."""

    experiment: str
    run: str
    status: str  # finished / skipped / failed / interrupted
    final: Dict
    path: Path
    error: Optional[str] = None


def get_task(name: str) -> Task:
    """Import ``tasks.<name>`` and return its ``TASK``; ValueError for an unknown task."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"unknown task {name!r}")
    try:
        module = importlib.import_module(f"tasks.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"tasks.{name}":
            raise ValueError(f"unknown task {name!r}: no module tasks/{name}.py") from None
        raise
    task = getattr(module, "TASK", None)
    if not isinstance(task, Task):
        raise ValueError(f"unknown task {name!r}: tasks/{name}.py defines no TASK")
    return task


def default_experiments_file() -> Path:
    """``./experiments.yaml`` when present, else the one at the repository root."""
    local = Path("experiments.yaml")
    return local if local.exists() else REPO_ROOT / "experiments.yaml"


def config_help(cls) -> str:
    """``--key (default): comment`` lines for every field, from the dataclass sources."""
    comments = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+):[^=]+=.*?#\s*(.*)$", line)
            if m:
                comments[m.group(1)] = m.group(2)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name.replace('_', '-'):24s} {comments.get(f.name, '')} (default: {default!r})")
    return "\n".join(lines)


def usage(task: Task) -> str:
    return (f"usage: python -m tasks.{task.name} [--experiment NAME] [--experiments-file FILE] "
            f"[--dry-run] [--list] [--KEY VALUE ...]\n\n"
            f"Without --experiment: one run of the defaults below (experiment 'default').\n"
            f"--experiment NAME runs a named experiment of experiments.yaml (possibly a grid); options\n"
            f"override its values (an option for a key the grid varies replaces that axis).\n"
            f"--dry-run lists the runs without training; --list lists the experiments.\n\nconfig keys:\n"
            + config_help(task.config_cls))


def configs_from_args(task: Task, argv: Sequence[str]) -> Tuple[Task, List, Dict]:
    """Parse the command line into (the task to run, its run configs, the CLI-only options).

    Raises ValueError/TypeError/FileNotFoundError for bad input (unknown key, experiment, ...).
    """
    values, positional = split_known(list(argv))
    if positional:
        raise ValueError(f"unexpected argument {positional[0]!r}; options look like --key value")
    options = {k: values.pop(k) for k in CLI_OPTIONS if k in values}
    base, grid = {}, None
    if "experiment" in options:
        path = Path(options.get("experiments_file") or default_experiments_file())
        exps = load_experiments(path)
        name = options["experiment"]
        if name not in exps:
            raise ValueError(f"unknown experiment {name!r} in {path}; known: {', '.join(exps)}")
        exp = exps[name]
        if exp["task"] != task.name:
            task = get_task(exp["task"])  # dispatch: experiments.yaml says which task runs it
        base = {k: v for k, v in exp.items() if k not in EXPERIMENT_META_KEYS}
        base["experiment"] = name
        grid = exp.get("grid")
    if "task" in values:
        raise ValueError("config key 'task' cannot be set; run python -m tasks.<task> instead")
    overrides = coerce_fields(task.config_cls, values, "the command line")
    configs = resolve_runs(task.config_cls, base, grid, overrides,
                           where=f"experiment {options.get('experiment', 'default')!r}")
    return task, configs, options


def main(task: Task, argv: Optional[Sequence[str]] = None) -> int:
    """The command line of a task; returns the exit code (0 ok, 1 a run failed, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(usage(task))
        return 0
    try:
        task, configs, options = configs_from_args(task, argv)
        if "list" in options:
            path = Path(options.get("experiments_file") or default_experiments_file())
            for name, exp in load_experiments(path).items():
                print(f"{name:24s} {exp['task']:9s} {exp.get('description', '')}")
            return 0
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "dry_run" in options:
        for cfg in configs:
            print(f"{cfg.experiment}/{cfg.run}")
        return 0
    results = run_grid(task, configs)
    return 0 if all(r.status in ("finished", "skipped") for r in results) else 1


def run_grid(task: Task, configs: Sequence) -> List[RunResult]:
    """Run ``configs`` one after the other and print a report at the end.

    A finished run is skipped (unless ``overwrite``); a run that raises is marked failed and
    the grid goes on; Ctrl-C marks the current run failed ("interrupted") and stops the grid.
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
        print(f"{r.experiment + '/' + r.run:40s} {r.status:12s} {vals}" + (f"  {r.error}" if r.error else ""))
    failed = [r for r in results if r.status in ("failed", "interrupted")]
    print(f"{len(results)} runs: {len(results) - len(failed)} ok, {len(failed)} failed", flush=True)


def checkpoint_step(path) -> int:
    """The ``global_step`` saved in a Lightning checkpoint."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    return int(ckpt["global_step"])


def _config_changes(old: Optional[Dict], new: Dict) -> List[str]:
    if not old:
        return []
    return [k for k in new if k not in EXECUTION_KEYS and k != "versions" and old.get(k) != new.get(k)]


def prepare_rundir(task: Task, cfg) -> Tuple[Optional[RunDir], Optional[str]]:
    """Decide what to do with the run's directory: (rundir, ckpt) or (None, None) to skip.

    Finished: skip unless ``overwrite``. ``resume`` with a ``last.ckpt``: keep the directory,
    drop rows logged after the checkpoint's step. Otherwise: start over in an empty directory.
    """
    rd = RunDir(cfg.root, cfg.experiment, cfg.run)
    status = rd.status()
    if status == "finished" and not cfg.overwrite:
        return None, None
    resolved = {**config_dict(cfg), "versions": software_versions()}
    if cfg.resume and status != "finished" and rd.last_checkpoint is not None:
        changed = _config_changes(rd.read_config(), resolved)
        if changed:
            print(f"warning: resuming {rd.path} with changed config keys: {', '.join(changed)}", file=sys.stderr)
        step = checkpoint_step(rd.last_checkpoint)
        dropped = rd.truncate_after(step)
        print(f"resuming {rd.path} from step {step} (dropped rows logged after it: {dropped})", flush=True)
        return rd, str(rd.last_checkpoint)
    if rd.exists():
        why = "overwrite" if status == "finished" else f"status {status or 'unknown'}, no --resume"
        print(f"starting {rd.path} over ({why})", flush=True)
        rd.clear()
    return rd, None


def run_one(task: Task, cfg) -> RunResult:
    """Run one config in its run directory: skip, resume or start; mark finished or failed."""
    rd, ckpt = prepare_rundir(task, cfg)
    if rd is None:
        old = RunDir(cfg.root, cfg.experiment, cfg.run)
        print(f"skipping finished run {old.path} (pass --overwrite to run it again)", flush=True)
        changed = _config_changes(old.read_config(), config_dict(cfg))
        if changed:
            print(f"warning: {old.path} was finished with other values of: {', '.join(changed)}", file=sys.stderr)
        return RunResult(cfg.experiment, cfg.run, "skipped", (old.read_summary() or {}).get("final", {}), old.path)
    old_config = rd.read_config() if ckpt else None
    resolved = {**config_dict(cfg), "versions": software_versions()}
    if old_config and ckpt:  # keep the config the run was started with, but record this attempt's
        resolved = {**resolved, "started_config": old_config.get("started_config", old_config)}
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


def _devices(value):
    if isinstance(value, int) or value == "auto":
        return value
    if re.fullmatch(r"\d+", value):
        return int(value)
    if re.fullmatch(r"[\d,\s]+", value):
        return [int(v) for v in value.split(",") if v.strip()]
    raise ValueError(f"bad devices {value!r}: expected a count, 'auto' or a list like '0,1'")


def build_trainer(cfg, rundir: RunDir, callbacks: Sequence[pl.Callback] = (), monitor: Optional[str] = None,
                  mode: str = "max", weights_attr: str = "net", **trainer_kwargs) -> pl.Trainer:
    """A Lightning Trainer wired to the run directory and the config's device options.

    Loggers: :class:`RunLogger` (metrics.csv), plus W&B when ``cfg.wandb``. Callbacks:
    ModelCheckpoints saving every epoch into ``checkpoints/`` (``epochNNN.ckpt`` with
    ``last.ckpt`` linking to it, and ``best-epochNNN.ckpt`` when ``monitor`` is given),
    :class:`SwitchWeightsLogger`, :class:`Heartbeat`, :class:`KillAfterSteps` when
    ``cfg.kill_after_steps``, then ``callbacks``.
    ``trainer_kwargs`` override the Trainer arguments built here.
    """
    run_logger = RunLogger(rundir)
    loggers = [run_logger]
    if cfg.wandb:
        loggers.append(make_wandb_logger(cfg, rundir, config_dict(cfg)))
    # every epoch: epochNNN.ckpt (the previous one removed) and last.ckpt, a relative link to it
    cbs = [pl.callbacks.ModelCheckpoint(
        dirpath=str(rundir.checkpoint_dir), filename="epoch{epoch:03d}", auto_insert_metric_name=False,
        save_last="link", every_n_epochs=1, save_top_k=1)]
    if monitor:  # and the best epoch by `monitor`
        cbs.append(pl.callbacks.ModelCheckpoint(
            dirpath=str(rundir.checkpoint_dir), filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
            every_n_epochs=1, monitor=monitor, mode=mode, save_top_k=1))
    cbs += [SwitchWeightsLogger(rundir, cfg.weights_every_n_steps, attr=weights_attr), Heartbeat(rundir)]
    if cfg.kill_after_steps:
        cbs.append(KillAfterSteps(cfg.kill_after_steps))
    kwargs = dict(max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator,
                  devices=_devices(cfg.devices), strategy=cfg.strategy, num_nodes=cfg.num_nodes,
                  precision=cfg.precision, logger=loggers, callbacks=cbs + list(callbacks),
                  log_every_n_steps=cfg.log_every_n_steps, enable_progress_bar=cfg.progress_bar,
                  enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(rundir.path))
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(**kwargs)
    run_logger.bind(trainer)
    return trainer
