"""A toy task for the tests of tasks/common: its config exercises every kind of key, and its
``train`` logs one row and returns ``{"acc": lr}`` (or fails when its lr is in ``FAILING``)."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from tasks.common import config as C
from tasks.common.cli import configs_from_args
from tasks.common.runner import Task


@dataclasses.dataclass
class ToyConfig(C.RunConfig):
    task: str = C.key("toy", "the task")
    run: str = C.key("{norm}_{lr}", "run name template")
    lr: float = C.key(0.1, "a float key", gt=0)
    steps: Optional[int] = C.key(None, "an optional int")
    milestones: Tuple[float, ...] = C.key((0.5,), "a tuple key")
    mode: str = C.key("a", "a key with choices", choices=("a", "b"))
    fail: bool = C.key(False, "a bool key")


def row(step, name="loss", value=1.0, split="train"):
    return {"step": step, "epoch": 0, "split": split, "name": name, "value": value}


FAILING = set()


def toy_train(cfg, rundir, ckpt_path):
    rundir.metrics.append(row(1, "acc", cfg.lr, split="val"))
    if cfg.lr in FAILING:  # a failure from outside the config (say, data not there yet)
        raise RuntimeError(f"toy failure for lr={cfg.lr}")
    return {"acc": cfg.lr}


TOY = Task("toy", ToyConfig, toy_train, report_keys=("acc",))


def toy_configs(root, *args):
    """The configs of ``python -m tasks.toy --root ROOT ARGS``."""
    _, configs, _ = configs_from_args(TOY, ["--root", str(root), *args])
    return configs
