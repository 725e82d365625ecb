"""The Lightning Trainer every task trains with, wired to its run directory.

API:
    build_trainer(cfg, rundir, callbacks=(), monitor=None, **kw) -> pl.Trainer
    fit(trainer, module, data, ckpt_path)   trainer.fit on the task's LightningDataModule
    checkpoint_step(path) -> int     the global step stored in a Lightning checkpoint
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch

import sn

from .config import config_dict
from .loggers import Heartbeat, RunLogger, SwitchWeightsLogger, kill_callback, make_wandb_logger
from .rundir import RunDir


def checkpoint_step(path) -> int:
    """The ``global_step`` saved in a Lightning checkpoint."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    return int(ckpt["global_step"])


class RadiusSchedule(pl.Callback):
    """Sparse SN's radius schedule (:func:`sn.set_radius`): before every training step, each
    ``selector="sparsestmax"`` layer's radius follows the fraction of training done, 0 at the
    start, growing linearly to its largest value at 80% of the steps, so that every layer trains
    its last 20% on exactly one normalizer for the means and one for the variances. Nothing to do
    for models without such layers. (The radius is a buffer: checkpoints keep it.)"""

    def __init__(self, attr: Optional[str] = None):
        self.attr = attr
        self.active = True

    def _model(self, pl_module):
        return getattr(pl_module, self.attr) if self.attr and hasattr(pl_module, self.attr) else pl_module

    def on_fit_start(self, trainer, pl_module):
        self.active = any(getattr(m, "selector", None) == "sparsestmax" for m in self._model(pl_module).modules())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.active:
            return
        total = trainer.estimated_stepping_batches
        progress = min(trainer.global_step / total, 1.0) if total and total != float("inf") else 0.0
        sn.set_radius(self._model(pl_module), progress=progress)


def lightning_devices(value):
    """A ``devices`` config value as Lightning takes it: a count, ``"auto"`` or a list of ids."""
    if isinstance(value, int) or value == "auto":
        return value
    if re.fullmatch(r"\d+", value):
        return int(value)
    if re.fullmatch(r"[\d,\s]+", value):
        return [int(v) for v in value.split(",") if v.strip()]
    raise ValueError(f"bad devices {value!r}: expected a count, 'auto' or a list like '0,1'")


def build_trainer(cfg, rundir: RunDir, callbacks: Sequence[pl.Callback] = (), monitor: Optional[str] = None,
                  mode: str = "max", weights_attr: str = "net", save_on_train_epoch_end: Optional[bool] = None,
                  **trainer_kwargs) -> pl.Trainer:
    """A Lightning Trainer wired to the run directory and the config's device options.

    Loggers: :class:`RunLogger` (metrics.csv), plus W&B when ``cfg.wandb``. Callbacks:
    ModelCheckpoints saving every epoch into ``checkpoints/`` (``epochNNN.ckpt`` with
    ``last.ckpt`` linking to it, and ``best-epochNNN.ckpt`` when ``monitor`` is given),
    :class:`RadiusSchedule` (Sparse SN), :class:`SwitchWeightsLogger`, :class:`Heartbeat`, the crash simulation of the tests when
    its environment variable is set (:func:`kill_callback`), then ``callbacks``.
    ``save_on_train_epoch_end`` goes to the epoch checkpoints (None: Lightning's choice, after
    validation when there is one; True for a task that validates less often than every epoch).
    ``trainer_kwargs`` override the Trainer arguments built here.
    """
    run_logger = RunLogger(rundir)
    loggers = [run_logger]
    if cfg.wandb:
        loggers.append(make_wandb_logger(cfg, rundir, config_dict(cfg)))
    # every epoch: epochNNN.ckpt (the previous one removed) and last.ckpt, a relative link to it
    cbs = [pl.callbacks.ModelCheckpoint(
        dirpath=str(rundir.checkpoint_dir), filename="epoch{epoch:03d}", auto_insert_metric_name=False,
        save_last="link", every_n_epochs=1, save_top_k=1, save_on_train_epoch_end=save_on_train_epoch_end)]
    if monitor:  # and the best epoch by `monitor`
        cbs.append(pl.callbacks.ModelCheckpoint(
            dirpath=str(rundir.checkpoint_dir), filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
            every_n_epochs=1, monitor=monitor, mode=mode, save_top_k=1))
    cbs += [RadiusSchedule(weights_attr), SwitchWeightsLogger(rundir, cfg.weights_every_n_steps, attr=weights_attr),
            Heartbeat(rundir)]
    kill = kill_callback()
    if kill is not None:
        cbs.append(kill)
    kwargs = dict(max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator,
                  devices=lightning_devices(cfg.devices), strategy=cfg.strategy, num_nodes=cfg.num_nodes,
                  precision=cfg.precision, logger=loggers, callbacks=cbs + list(callbacks),
                  log_every_n_steps=cfg.log_every_n_steps, enable_progress_bar=cfg.progress_bar,
                  enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(rundir.path))
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(**kwargs)
    run_logger.bind(trainer)
    return trainer


def fit(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule,
        ckpt_path: Optional[str] = None) -> None:
    """Train ``module`` on the datamodule ``data`` (resuming from ``ckpt_path``), as every task does.

    Raises:
        KeyboardInterrupt: Lightning stopped the training on Ctrl-C (so the run is marked failed).
    """
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted")
