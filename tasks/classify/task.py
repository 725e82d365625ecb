"""One classification run (train, validate each epoch, test) and the task object ``TASK``."""
from __future__ import annotations

from typing import Optional

from ..common.config import batch_layout
from ..common.runner import Task
from ..common.trainer import build_trainer, fit
from . import __doc__ as DESCRIPTION
from .config import ClassifyConfig
from .data import ClassifyData
from .module import ClassifyModule


def final_metrics(rundir, test_results) -> dict:
    """test_acc, test_loss (this run's test) and best/last val_acc, last train loss (metrics.csv)."""
    rows = rundir.metrics.rows()
    val = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == "val" and r["name"] == "acc"]
    train_loss = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == "train" and r["name"] == "loss"]
    final = {"test_acc": float(test_results["test/acc"]), "test_loss": float(test_results["test/loss"])}
    if val:
        final["best_val_acc"] = max(v for _, v in val)
        final["val_acc"] = max(val)[1]
    if train_loss:
        final["train_loss"] = max(train_loss)[1]
    return final


def train(cfg: ClassifyConfig, rundir, ckpt_path: Optional[str] = None) -> dict:
    """Train and test one run in ``rundir`` (resuming from ``ckpt_path``); return final metrics."""
    trainer = build_trainer(cfg, rundir, monitor="val/acc", mode="max")
    # with P processes (DDP), each holds G/P of the G virtual devices (and G*S/P images a step)
    _, devices = batch_layout(cfg.batch, trainer.world_size)
    data = ClassifyData(cfg)
    data.setup("fit")  # the network's classes and channels come from the data
    module = ClassifyModule(cfg, data.num_classes, data.in_channels, devices)
    fit(trainer, module, data, ckpt_path)
    (results,) = trainer.test(module, datamodule=data, verbose=False)
    final = final_metrics(rundir, results)
    final["steps"] = trainer.global_step
    if trainer.is_global_zero:
        print(f"test accuracy {final['test_acc']:.4f} (best val {final.get('best_val_acc', float('nan')):.4f}) "
              f"-- run directory: {rundir.path}", flush=True)
    return final


TASK = Task("classify", ClassifyConfig, train, report_keys=("test_acc", "best_val_acc"),
            description=DESCRIPTION.split("\n\n")[0])
