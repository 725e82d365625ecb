"""Run identity: a run directory belongs to the one resolved config recorded in its config.yaml.

A finished run is reused (skipped, its result reported) only when the requested config equals
the recorded one. Only keys that cannot change a result are left out of the comparison
(:data:`IGNORED_KEYS`), and the software versions recorded next to the config. When the
configs differ, the command refuses before it runs anything and names the differing keys;
``--overwrite`` replaces the old run, ``--run NAME`` gives the new config its own directory.
``--resume`` continues an unfinished run only under the same rule. ``docs/run-format.md``
("Run identity") says the same for users.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, List, Optional, Tuple

import yaml

# keys that cannot change a result: where runs go, how progress is shown, the extra W&B copy of
# the logs, the run-control flags themselves, and kill_after_steps, the crash simulation of the
# tests, which run directories of earlier versions record (a finished run was never killed)
IGNORED_KEYS = ("root", "progress_bar", "wandb", "wandb_project", "resume", "overwrite", "kill_after_steps")
# recorded in config.yaml next to the config, not part of it
RECORD_KEYS = ("versions", "provenance", "started_config")
MISSING = "(missing)"


def comparable(config: dict) -> dict:
    """The part of a config that identifies a run, as YAML reads it back (tuples as lists, ...)."""
    kept = {k: v for k, v in config.items() if k not in IGNORED_KEYS + RECORD_KEYS}
    return yaml.safe_load(yaml.safe_dump(kept))


def differences(recorded: dict, requested: dict) -> List[Tuple[str, Any, Any]]:
    """``(key, recorded value, requested value)`` for every identifying key that differs.

    A key present on one side only counts as a difference (its value on the other side is
    :data:`MISSING`).
    """
    old, new = comparable(recorded), comparable(requested)
    keys = list(new) + [k for k in old if k not in new]
    return [(k, old.get(k, MISSING), new.get(k, MISSING)) for k in keys
            if k not in old or k not in new or old[k] != new[k]]


@dataclasses.dataclass(eq=False)
class RunConflict(Exception):
    """A run directory that holds a run of another config (or of a config it cannot tell)."""

    path: Path
    status: Optional[str]
    diffs: List[Tuple[str, Any, Any]]  # empty: no readable config.yaml

    def __str__(self) -> str:
        what = f"a {self.status} run" if self.status else "a run"
        if self.diffs:
            lines = [f"{self.path} holds {what} of another configuration:"]
            lines += [f"  {k}: {old!r} there, {new!r} requested" for k, old, new in self.diffs]
        else:
            lines = [f"{self.path} holds {what} without a readable config.yaml, so it cannot be matched "
                     "to the requested configuration."]
        lines.append("Nothing was run. Pass --overwrite to replace that run, or --run NAME to give this "
                     "configuration its own run directory (NAME may be a template such as '{norm}_s{seed}_v2').")
        return "\n".join(lines)
