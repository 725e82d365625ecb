"""The ENAS LightningModule: the shared child, the controller and their alternating updates.

ENAS (Pham et al. 2018), macro search space: the controller (:mod:`tasks.enas.controller`, an
LSTM whose cell is normalized by ``none``, ``ln``, ``gn`` or ``sn`` = SN over LN and GN)
samples CNN architectures; one shared-weight child network (:mod:`tasks.enas.model`) is
trained on them. Every epoch alternates

1. ``child_steps`` child steps: sample an architecture, one SGD step of the child on a
   training batch;
2. ``controller_steps`` controller steps: sample ``controller_samples`` architectures, reward
   each by the child's accuracy on one validation batch (plus ``entropy_weight`` x the
   sample's entropy, as ENAS), REINFORCE with an EMA baseline and the skip-density penalty;
3. evaluation: ``eval_archs`` sampled architectures scored on ``eval_size`` fixed validation
   images: their mean and best accuracy are Fig. 6b's curves (split ``val``), and every
   scored architecture goes to ``architectures.jsonl``.

Both kinds of steps are Lightning training steps (the loader yields training batches, then
validation batches: :mod:`tasks.enas.data`), so every logged row has its own ``step``.

Several processes (Lightning DDP): child steps: rank 0 samples the architecture and every
process trains it on its share of the batch. Controller steps: every process samples its own
``controller_samples`` architectures (ranks draw from differently seeded generators) and
rewards them on its share of the validation batch; the EMA baseline walks through the rewards
of all processes (gathered, rank-major), so it stays identical everywhere, and DDP's gradient
averaging makes the update the mean over all ``world_size * controller_samples`` samples.
Evaluation: rank 0 samples the ``eval_archs`` architectures, every process scores them on its
share of the ``eval_size`` images, and the correct counts are summed. Rank zero alone writes.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import pytorch_lightning as pl
import runformat as rf
import torch
import torch.nn.functional as F

from ..common.rundir import is_rank_zero
from .config import EnasConfig
from .controller import Controller, arch_to_str, reinforce_loss, walk_baseline
from .model import ChildNet, accuracy


class EnasModule(pl.LightningModule):
    """The shared child, the controller, and their alternating updates (manual optimization)."""

    def __init__(self, cfg: EnasConfig, in_channels: int, num_classes: int, archive: Path) -> None:
        super().__init__()
        self.cfg = cfg
        self.automatic_optimization = False
        # the child first: identical seeds give identical child weights whatever the controller norm
        self.child = ChildNet(cfg.num_layers, cfg.channels, in_channels, num_classes,
                              dropout=cfg.child_dropout, stem_stride=cfg.stem_stride)
        self.controller = Controller(cfg.num_layers, cfg.controller_hidden, cfg.norm,
                                     num_groups=cfg.controller_groups, sn_stats=cfg.sn_stats,
                                     tanh_constant=cfg.tanh_constant, temperature=cfg.temperature,
                                     skip_target=cfg.skip_target)
        self.archive = archive  # architectures.jsonl
        self._pending: Dict[str, List[float]] = defaultdict(list)  # train metrics since the last row

    # --- optimizers ----------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.cfg
        child_opt = torch.optim.SGD(self.child.parameters(), lr=cfg.child_lr, momentum=cfg.child_momentum,
                                    nesterov=cfg.child_momentum > 0, weight_decay=cfg.child_weight_decay)
        ctrl_opt = torch.optim.Adam(self.controller.parameters(), lr=cfg.controller_lr, betas=(0.0, 0.999), eps=1e-3)
        total = cfg.epochs * cfg.child_steps
        low = cfg.child_lr_min / cfg.child_lr
        cosine = torch.optim.lr_scheduler.LambdaLR(
            child_opt, lambda s: low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
        return [child_opt, ctrl_opt], [cosine]

    def on_fit_start(self) -> None:
        """Under DDP, let every process draw its own controller samples (the weights are built already)."""
        if self.trainer.world_size > 1:
            torch.manual_seed(self.cfg.seed + 10007 * self.global_rank)

    # --- steps ---------------------------------------------------------------------------------
    # Train metrics (self._pending) are each process's own; only rank zero's reach metrics.csv.
    def training_step(self, batch, batch_idx):
        x, y, from_val = batch
        if bool(from_val[0]):
            self._controller_step(x, y)
        else:
            self._child_step(x, y)
        self._emit_if_due()

    def _child_step(self, x, y) -> None:
        child_opt, _ = self.optimizers()
        arch = None
        if self.global_rank == 0:  # one architecture for every process (broadcast: a no-op in one process)
            with torch.no_grad():
                arch = self.controller().arch
        arch = self.trainer.strategy.broadcast(arch, src=0)
        logits = self.child(x, arch)
        loss = F.cross_entropy(logits, y)
        child_opt.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(child_opt, gradient_clip_val=self.cfg.child_grad_clip, gradient_clip_algorithm="norm")
        child_opt.step()
        self.lr_schedulers().step()
        acc = (logits.argmax(1) == y).float().mean()
        self._pending["child_loss"].append(loss.item())
        self._pending["child_acc"].append(acc.item())
        self.log("child_loss", loss, prog_bar=True, logger=False)

    def _controller_step(self, x, y) -> None:
        """REINFORCE on ``controller_samples`` architectures, each rewarded on this validation batch.

        Under DDP each process samples its own and rewards them on its share of the batch.
        """
        cfg, n = self.cfg, self.cfg.controller_samples
        _, ctrl_opt = self.optimizers()
        ctrl_opt.zero_grad()
        samples, rewards, entropies = [], [], []
        for _ in range(n):
            sample = self.controller()
            entropies.append(sample.entropy.item())
            samples.append(sample)
            rewards.append(accuracy(self.child, sample.arch, x, y) + cfg.entropy_weight * entropies[-1])
        # the baseline walks through every process's rewards, rank-major (one process: its own, in
        # order), so it is identical everywhere (it is a buffer: DDP's broadcast of rank 0's buffers
        # changes nothing); each sample's loss takes the baseline after its reward
        everyone = self.all_gather(torch.tensor(rewards, dtype=torch.float64, device=self.device))  # (P, n) or (n,)
        baselines = walk_baseline(self.controller, everyone.reshape(-1).tolist(), cfg.baseline_decay)
        mine = baselines[self.global_rank * n:(self.global_rank + 1) * n]
        terms = [reinforce_loss(s, r, b, cfg.skip_weight) / n for s, r, b in zip(samples, rewards, mine)]
        # one backward per step, as DDP's reducer expects; DDP then averages the gradient over the
        # processes: the mean over all world_size * controller_samples samples
        self.manual_backward(torch.stack(terms).sum())
        ctrl_opt.step()
        self._pending["controller_loss"] += [t.item() * n for t in terms]
        self._pending["reward"] += rewards
        self._pending["entropy"] += entropies
        self._pending["baseline"] = [baselines[-1]]
        self.log("reward", rewards[-1], prog_bar=True, logger=False)

    def _emit_if_due(self) -> None:
        """Write the means of the train metrics gathered since the last row, every N steps."""
        if self.global_step % self.cfg.log_every_n_steps:
            return  # not due; the rest is written at the end of the epoch
        self._emit({f"train/{k}": sum(v) / len(v) for k, v in self._pending.items() if v})
        self._pending.clear()

    def _emit(self, metrics: Dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    # --- evaluation (Fig. 6b) ------------------------------------------------------------------
    def on_train_epoch_end(self) -> None:
        """Score ``eval_archs`` sampled architectures on the datamodule's fixed validation images."""
        if self._pending:  # what was gathered since the last row (or before max_steps stopped)
            self._emit({f"train/{k}": sum(v) / len(v) for k, v in self._pending.items() if v})
            self._pending.clear()
        world, rank = self.trainer.world_size, self.global_rank
        archs = None
        if rank == 0:  # the same architectures on every process
            with torch.no_grad():
                archs = [self.controller().arch for _ in range(self.cfg.eval_archs)]
        archs = self.trainer.strategy.broadcast(archs, src=0)
        # this process's share of the evaluation images; the correct counts are summed over processes
        data = self.trainer.datamodule
        images = data.eval_images.tensor_split(world)[rank].to(self.device)
        labels = data.eval_labels.tensor_split(world)[rank].to(self.device)
        with torch.no_grad():
            correct = [sum(accuracy(self.child, arch, xb, yb) * len(yb)
                           for xb, yb in zip(images.split(500), labels.split(500)) if len(yb))
                       for arch in archs]
        correct = self.trainer.strategy.reduce(torch.tensor(correct, dtype=torch.float64, device=self.device),
                                               reduce_op="sum")
        records = [{"epoch": self.current_epoch, "step": self.global_step, "arch": arch,
                    "arch_str": arch_to_str(arch), "val_acc": total / len(data.eval_labels)}
                   for arch, total in zip(archs, correct.tolist())]
        accs = [r["val_acc"] for r in records]
        self._emit({"val/mean_acc": sum(accs) / len(accs), "val/best_acc": max(accs)})
        self.log("val_mean", sum(accs) / len(accs), prog_bar=True, logger=False, sync_dist=True)  # equal everywhere
        if is_rank_zero():
            for r in records:
                rf.append_record(self.archive, r)
