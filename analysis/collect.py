"""Copy finished run directories into the reference results (``results/``), without checkpoints.

    python -m analysis.collect --from runs --to results --experiment table2-quick

Only runs whose ``summary.json`` says ``finished`` and whose ``config.yaml`` records their
provenance (commit, machine, command: ``docs/run-format.md``) are copied; every file but
``checkpoints/`` (and W&B's offline folder) goes along, unchanged. A run already in the target
is replaced. Prints one line per run and what it left out.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import runformat as rf

SKIPPED_DIRS = (rf.CHECKPOINTS_DIR, "wandb")


def collect(source, target, experiments=None) -> list[tuple[str, str]]:
    """Copy the finished runs of ``experiments`` (None: all) from ``source`` to ``target``.

    Returns ``(experiment/run, what happened)`` per run found. Raises ValueError when
    ``source`` is not a directory or is ``target`` itself.
    """
    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise ValueError(f"no run directory {str(source)!r}")
    if source.resolve() == target.resolve():
        raise ValueError("source and target are the same folder")
    report = []
    for experiment, run_dir in rf.find_run_dirs(source):
        if experiments and experiment not in experiments:
            continue
        name = f"{experiment}/{run_dir.name}"
        try:
            summary = rf.read_summary(run_dir / rf.SUMMARY_FILE)
            config = rf.read_config(run_dir / rf.CONFIG_FILE)
        except (OSError, ValueError) as err:
            report.append((name, f"left out: unreadable ({err})"))
            continue
        if summary.get("status") != rf.FINISHED:
            report.append((name, f"left out: status {summary.get('status')!r}"))
            continue
        prov = config.get("provenance") or {}
        if not (prov.get("commit") and prov.get("machine") and prov.get("command")):
            report.append((name, "left out: config.yaml records no provenance (commit, machine, command)"))
            continue
        dest = target / experiment / run_dir.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns(*SKIPPED_DIRS, "*.ckpt"))
        report.append((name, "copied"))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.collect", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default="runs", help="root of your runs (default: runs)")
    parser.add_argument("--to", dest="target", default="results", help="the reference results (default: results)")
    parser.add_argument("--experiment", action="append", default=None, help="only this experiment (repeatable)")
    args = parser.parse_args(argv)
    try:
        report = collect(args.source, args.target, args.experiment)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, what in report:
        print(f"{name:40s} {what}")
    return 0 if any(what == "copied" for _, what in report) else 1


if __name__ == "__main__":
    sys.exit(main())
