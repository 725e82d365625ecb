"""Lightning pieces that fill a run directory: the metrics logger and the callbacks.

API:
    RunLogger(rundir)                  a Lightning Logger writing metrics.csv; ``self.log("val/acc", x)``
                                       in a LightningModule becomes the row (step, epoch, "val", "acc", x)
    SwitchWeightsLogger(rundir, every_n_steps, attr="net")
                                       a Callback writing sn.switch_weights() to weights.csv every N
                                       optimizer steps, at the start and at the end of training
    Heartbeat(rundir)                  a Callback updating summary.json's wall time every epoch
    KillAfterSteps(n)                  a Callback that SIGKILLs the process after n optimizer steps
                                       (a testing aid for resume: a crash that leaves files as they are)
    kill_callback()                    KillAfterSteps(n) when the tests set SN_TEST_KILL_AFTER_STEPS=n
    make_wandb_logger(cfg, rundir)     Lightning's WandbLogger, offline unless WANDB_MODE=online

Steps: every row's ``step`` is the number of optimizer steps done when it was logged
(``trainer.global_step``), and ``epoch`` the epoch index it was logged in. So the rows of a
checkpoint taken at step K are exactly those with ``step <= K``.
"""
from __future__ import annotations

import os
import signal
from typing import Dict, Optional

import pytorch_lightning as pl
import sn
from lightning_utilities.core.rank_zero import rank_zero_only
from pytorch_lightning.loggers.logger import Logger

from .rundir import RunDir


class RunLogger(Logger):
    """Write every metric Lightning logs as ``step,epoch,split,name,value`` rows of metrics.csv.

    A metric key ``"split/name"`` (``"train/loss"``, ``"val/acc"``) gives the split and the
    name; a key without a slash goes to split ``train``. Call :meth:`bind` with the trainer so
    rows carry ``trainer.global_step`` and ``trainer.current_epoch``; unbound, the step Lightning
    passes is used. Rows whose (step, split, name) was already logged are skipped (resume).
    """

    def __init__(self, rundir: RunDir) -> None:
        super().__init__()
        self.rundir = rundir
        self._trainer: Optional[pl.Trainer] = None

    def bind(self, trainer: pl.Trainer) -> "RunLogger":
        """Take steps and epochs from ``trainer`` from now on."""
        self._trainer = trainer
        return self

    @property
    def name(self) -> str:
        return self.rundir.experiment

    @property
    def version(self) -> str:
        return self.rundir.run

    @property
    def save_dir(self) -> str:
        return str(self.rundir.path)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing to do: the runner writes config.yaml itself."""

    @rank_zero_only
    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        epoch = metrics.get("epoch")
        if self._trainer is not None:
            step, epoch = self._trainer.global_step, self._trainer.current_epoch
        step = 0 if step is None else int(step)
        epoch = 0 if epoch is None else int(epoch)
        for key, value in metrics.items():
            if key == "epoch":
                continue
            split, _, name = key.rpartition("/")
            self.rundir.metrics.append({"step": step, "epoch": epoch, "split": split or "train",
                                        "name": name, "value": float(value)})

    def finalize(self, status: str) -> None:
        self.rundir.metrics.close()


class SwitchWeightsLogger(pl.Callback):
    """Log the post-softmax importance weights of every SN layer to weights.csv.

    Rows ``step,epoch,layer,stat,op,weight`` (one per SN layer x mean/var x op) at the start
    of training, every ``every_n_steps`` optimizer steps, and at the end. Layer names are
    relative to ``getattr(pl_module, attr)`` (the network) when the module has that attribute.
    The same numbers go to the trainer's other loggers (e.g. W&B) as
    ``weights/<layer>/<stat>/<op>``. Does nothing for a network without SN layers.
    """

    def __init__(self, rundir: RunDir, every_n_steps: int = 50, attr: str = "net") -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps!r}")
        self.rundir = rundir
        self.every_n_steps = every_n_steps
        self.attr = attr
        self._last_step = None

    def log_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the current weights (once per step)."""
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        records = sn.switch_weights(getattr(pl_module, self.attr, pl_module))
        if not records:
            return
        epoch = trainer.current_epoch
        for r in records:
            self.rundir.weights.append({"step": step, "epoch": epoch, **r})
        others = [lg for lg in trainer.loggers if not isinstance(lg, RunLogger)]
        if others:
            flat = {f"weights/{r['layer']}/{r['stat']}/{r['op']}": r["weight"] for r in records}
            for lg in others:
                lg.log_metrics(flat, step=step)

    def on_train_start(self, trainer, pl_module) -> None:
        self.log_now(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.log_now(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.log_now(trainer, pl_module)


class Heartbeat(pl.Callback):
    """Update the running run's ``summary.json`` (wall time so far) at the end of every epoch."""

    def __init__(self, rundir: RunDir) -> None:
        self.rundir = rundir

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.rundir.heartbeat()


class KillAfterSteps(pl.Callback):
    """Kill this process with SIGKILL once ``trainer.global_step`` reaches ``steps``.

    Simulates a crash (power cut, OOM killer) for resume tests: no handler runs, the run
    directory stays as the last flushed write left it, ``summary.json`` says ``running``.
    """

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"KillAfterSteps needs steps >= 1, got {steps!r}")
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            os.kill(os.getpid(), signal.SIGKILL)


KILL_ENV = "SN_TEST_KILL_AFTER_STEPS"  # a testing aid, not a config key: it never shows in --help


def kill_callback() -> Optional[KillAfterSteps]:
    """:class:`KillAfterSteps` when the environment variable ``SN_TEST_KILL_AFTER_STEPS`` is set."""
    value = os.environ.get(KILL_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"{KILL_ENV} must be a number of optimizer steps, got {value!r}")
    return KillAfterSteps(int(value))


def make_wandb_logger(cfg, rundir: RunDir, config: Dict):
    """A WandbLogger for the run: offline unless the user set ``WANDB_MODE=online``.

    Files go under the run directory (``<run>/wandb/``); sync an offline run later with
    ``wandb sync <run>/wandb/offline-run-*``.
    """
    from pytorch_lightning.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE", "offline").lower()
    return WandbLogger(project=cfg.wandb_project, name=f"{rundir.experiment}/{rundir.run}",
                       save_dir=str(rundir.path), offline=(mode == "offline"), config=config,
                       group=rundir.experiment)
