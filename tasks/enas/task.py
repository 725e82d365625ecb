"""One ENAS search (child and controller steps, per-epoch scores) and the task object ``TASK``.

Besides the common run files, the run directory gets ``architectures.jsonl``: every scored
architecture as ``{"epoch", "step", "arch", "arch_str", "val_acc"}``, one flushed line each.
``--strategy ddp`` runs DDP with ``find_unused_parameters=True`` (:func:`ddp_strategy`);
``child_batch`` and ``reward_batch`` stay the global batch of a step, split evenly over the
processes (each must be a multiple of the process count).
"""
from __future__ import annotations

from typing import Dict, Optional

import pytorch_lightning as pl
import runformat as rf
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry

from ..common.rundir import is_rank_zero
from ..common.runner import Task
from ..common.trainer import build_trainer, checkpoint_step, fit
from . import __doc__ as DESCRIPTION
from .config import EnasConfig
from .data import EnasData, check_world_size
from .module import EnasModule


def ddp_strategy(strategy: str) -> str:
    """``strategy`` with DDP's ``find_unused_parameters=True`` when it names a DDP strategy.

    Every ENAS step leaves parameters without a gradient (the controller in child steps, the
    child in controller steps, the operations an architecture does not use), which plain DDP
    refuses; ``ddp`` becomes ``ddp_find_unused_parameters_true`` (``ddp_spawn``, ``ddp_fork``,
    ``ddp_notebook`` likewise). Other strategies are returned unchanged.
    """
    unused = f"{strategy}_find_unused_parameters_true"
    return unused if unused in StrategyRegistry else strategy


def truncate_architectures(path, step: int) -> None:
    """Keep the records logged at or before ``step`` (resume from a checkpoint at ``step``)."""
    if is_rank_zero():
        rf.keep_records(path, lambda r: r["step"] <= step)


def final_metrics(archive) -> Dict:
    """best_val_acc / best_arch (over the whole search), mean_val_acc (last epoch), best_epoch."""
    records = rf.read_records(archive).records
    if not records:
        return {}
    best = max(records, key=lambda r: r["val_acc"])
    last = max(r["epoch"] for r in records)
    last_accs = [r["val_acc"] for r in records if r["epoch"] == last]
    return {"best_val_acc": best["val_acc"], "mean_val_acc": sum(last_accs) / len(last_accs),
            "best_arch": best["arch_str"], "best_epoch": best["epoch"], "epochs_done": last + 1}


def _enas_trainer(cfg: EnasConfig, rundir, strategy) -> pl.Trainer:
    # the loader's batch sampler already yields each process's share: Lightning must not wrap it
    return build_trainer(cfg, rundir, weights_attr="controller", strategy=strategy, use_distributed_sampler=False)


def train(cfg: EnasConfig, rundir, ckpt_path: Optional[str] = None) -> dict:
    """Search in ``rundir`` (resuming from ``ckpt_path``); return the final metrics."""
    archive = rundir.path / rf.ARCHITECTURES_FILE
    if ckpt_path:
        truncate_architectures(archive, checkpoint_step(ckpt_path))
    trainer = _enas_trainer(cfg, rundir, ddp_strategy(cfg.strategy))
    if cfg.strategy == "auto" and isinstance(trainer.strategy, DDPStrategy):  # Lightning chose DDP itself
        trainer = _enas_trainer(cfg, rundir, ddp_strategy("ddp"))
    check_world_size(cfg.child_batch, cfg.reward_batch, trainer.world_size)  # the batches must split evenly
    data = EnasData(cfg)
    data.setup("fit")  # the child's channels and classes come from the data
    module = EnasModule(cfg, data.in_channels, data.num_classes, archive)
    fit(trainer, module, data, ckpt_path)
    final = final_metrics(archive)
    final["steps"] = trainer.global_step
    if trainer.is_global_zero and "best_arch" in final:
        print(f"best architecture (controller norm {cfg.norm}), validation accuracy {final['best_val_acc']:.4f} "
              f"at epoch {final['best_epoch']}:\n  {final['best_arch']}\n"
              f"mean validation accuracy of the last epoch's samples: {final['mean_val_acc']:.4f} "
              f"-- run directory: {rundir.path}", flush=True)
    return final


TASK = Task("enas", EnasConfig, train, report_keys=("best_val_acc", "mean_val_acc"),
            description=DESCRIPTION.split("\n\n")[0])
