"""Architecture search with a normalized LSTM controller (SN paper Sec. 4.4, Fig. 6b).

    python -m tasks.enas                                  # a small real search on Fashion-MNIST
    python -m tasks.enas --controller-norm gn --epochs 5  # --controller-norm is --norm
    python -m tasks.enas --experiment enas-quick          # ln, gn and sn with identical seeds
    python -m tasks.enas --help                           # every config key
    python -m tasks.enas --experiment enas --accelerator gpu --devices 4 --strategy ddp  # 4 GPUs

ENAS (Pham et al. 2018), macro search space, scaled to a CPU: the controller
(:mod:`tasks.enas_controller`, an LSTM whose cell is normalized by ``none``, ``ln``, ``gn`` or
``sn`` = SN over LN and GN) samples CNN architectures; one shared-weight child network
(:mod:`tasks.enas_child`) is trained on them. Every epoch alternates

1. ``child_steps`` child steps: sample an architecture, one SGD step of the child on a
   training batch;
2. ``controller_steps`` controller steps: sample ``controller_samples`` architectures, reward
   each by the child's accuracy on one validation batch (plus ``entropy_weight`` x the
   sample's entropy, as ENAS), REINFORCE with an EMA baseline and the skip-density penalty;
3. evaluation: ``eval_archs`` sampled architectures scored on ``eval_size`` fixed validation
   images: their mean and best accuracy are Fig. 6b's curves (split ``val``).

Both kinds of steps are Lightning training steps (the loader yields training batches, then
validation batches), so every logged row has its own ``step``. Besides the run directory of
DESIGN.md, ``architectures.jsonl`` holds every evaluated architecture with its accuracy.

Several processes (Lightning DDP: ``--strategy ddp --devices N [--num-nodes M]``; ``ddp`` is
run with ``find_unused_parameters=True``, since every step leaves parameters without a
gradient). ``child_batch`` and ``reward_batch`` stay the global batch of a step, split evenly
over the processes (each must be a multiple of the process count). Child steps: rank 0
samples the architecture and every process trains it on its share. Controller steps: every
process samples its own ``controller_samples`` architectures (ranks draw from differently
seeded generators) and rewards them on its share of the validation batch; the EMA baseline
walks through the rewards of all processes (gathered, rank-major), so it stays identical
everywhere, and DDP's gradient averaging makes the update the mean over all
``world_size * controller_samples`` samples. Evaluation: rank 0 samples the ``eval_archs``
architectures, every process scores them on its share of the ``eval_size`` images, and the
correct counts are summed. Rank zero alone writes the run directory.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry

from .common.config import RunConfig
from .common.rundir import atomic_write_text, is_rank_zero
from .common.runner import Task, build_trainer, checkpoint_step, main
from .enas_child import ChildNet, accuracy
from .enas_controller import CONTROLLER_NORMS, Controller, arch_to_str, check_sn_stats, reinforce_loss, walk_baseline
from .enas_data import DATASETS, EnasData, build_data, check_world_size

ARCHITECTURES_FILE = "architectures.jsonl"


@dataclasses.dataclass
class EnasConfig(RunConfig):
    """The ENAS task's config (keys of RunConfig plus these)."""

    task: str = "enas"
    run: str = "{norm}_s{seed}"      # run name template
    norm: str = "sn"                 # controller norm: none, ln, gn, sn (alias --controller-norm)
    sn_stats: Tuple[str, ...] = ("ln", "gn")  # what the controller's SN mixes (ln, gn)
    controller_groups: int = 8       # GN groups in the controller (divides hidden size)
    epochs: int = 10                 # search epochs
    weights_every_n_steps: int = 20  # controller importance weights every N steps
    dataset: str = "fashion-mnist"   # fashion-mnist, cifar10 (the paper's) or synthetic
    data_root: str = "~/.cache/switchnorm/data"  # dataset folder / cache
    download: bool = False           # let torchvision download fashion-mnist / cifar10 when missing
    augment: bool = False            # random crops (and flips for cifar10) of the child's images
    val_size: int = 5000             # training images held out for rewards and evaluation
    # --- child network -----------------------------------------------------------------------
    num_layers: int = 6              # searched layers
    channels: int = 16               # channels of every child layer
    child_dropout: float = 0.1       # before the child's classifier
    stem_stride: int = 2             # stride of the child's stem (2: searched layers at 14x14)
    child_steps: int = 100           # child SGD steps per epoch (one sampled arch each)
    child_batch: int = 64            # training images per child step (global: split over DDP processes)
    child_lr: float = 0.05           # SGD learning rate, cosine to child_lr_min over the run
    child_lr_min: float = 0.001      # final learning rate
    child_momentum: float = 0.9      # SGD (Nesterov) momentum
    child_weight_decay: float = 1e-4  # child weight decay
    child_grad_clip: float = 5.0     # gradient-norm bound (ENAS: 5)
    # --- controller --------------------------------------------------------------------------
    controller_hidden: int = 64      # LSTM hidden size
    controller_steps: int = 20       # controller steps per epoch
    controller_samples: int = 4      # architectures per controller step (ENAS's num_aggregate)
    reward_batch: int = 128          # validation images per controller step (global: split over processes)
    controller_lr: float = 0.0035    # Adam (beta1 = 0, eps = 1e-3, as ENAS)
    tanh_constant: Optional[float] = 1.5  # logits -> c * tanh(logits / temperature) (none: off)
    temperature: Optional[float] = None   # logit temperature (none: off, as ENAS macro search)
    skip_target: float = 0.4         # target skip probability of the skip-density penalty
    skip_weight: float = 0.8         # weight of that KL penalty
    entropy_weight: float = 1e-4     # entropy bonus added to the reward
    baseline_decay: float = 0.95     # EMA decay of the reward baseline
    # --- evaluation --------------------------------------------------------------------------
    eval_archs: int = 10             # architectures sampled and scored at the end of every epoch
    eval_size: int = 1000            # fixed validation images they are scored on

    def validate(self) -> None:
        super().validate()
        if self.norm not in CONTROLLER_NORMS:
            raise ValueError(f"unknown controller norm {self.norm!r}; known: {', '.join(CONTROLLER_NORMS)}")
        check_sn_stats(self.sn_stats)
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        for key in ("controller_groups", "val_size", "num_layers", "channels", "stem_stride", "child_steps",
                    "child_batch", "controller_hidden", "controller_steps", "controller_samples", "reward_batch",
                    "eval_archs", "eval_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.eval_size > self.val_size or self.reward_batch > self.val_size:
            raise ValueError(f"eval_size={self.eval_size} and reward_batch={self.reward_batch} must not "
                             f"exceed val_size={self.val_size}")
        for key in ("child_lr", "controller_lr", "child_grad_clip"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("child_lr_min", "child_momentum", "child_weight_decay", "skip_weight", "entropy_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        if not 0 <= self.child_dropout < 1 or not 0 <= self.baseline_decay < 1:
            raise ValueError(f"child_dropout={self.child_dropout!r} and baseline_decay={self.baseline_decay!r} "
                             "must be in [0, 1)")
        processes = process_count(self.devices, self.num_nodes)
        if processes is not None:  # known from the options: check the batch split now (train() checks again)
            check_world_size(self.child_batch, self.reward_batch, processes)
        # builds the controller once: bad groups / stats / sampling options raise here
        Controller(self.num_layers, self.controller_hidden, self.norm, num_groups=self.controller_groups,
                   sn_stats=self.sn_stats, tanh_constant=self.tanh_constant, temperature=self.temperature,
                   skip_target=self.skip_target)


def process_count(devices, num_nodes: int) -> Optional[int]:
    """The number of processes the device options ask for, or None when Lightning decides (``auto``)."""
    text = str(devices).strip()
    if re.fullmatch(r"\d+", text):
        count = int(text)
    elif re.fullmatch(r"[\d,\s]+", text):
        count = len([d for d in text.split(",") if d.strip()])
    else:
        return None
    return count * num_nodes if count >= 1 else None


def ddp_strategy(strategy: str) -> str:
    """``strategy`` with DDP's ``find_unused_parameters=True`` when it names a DDP strategy.

    Every ENAS step leaves parameters without a gradient (the controller in child steps, the
    child in controller steps, the operations an architecture does not use), which plain DDP
    refuses; ``ddp`` becomes ``ddp_find_unused_parameters_true`` (``ddp_spawn``, ``ddp_fork``,
    ``ddp_notebook`` likewise). Other strategies are returned unchanged.
    """
    unused = f"{strategy}_find_unused_parameters_true"
    return unused if unused in StrategyRegistry else strategy


class EnasModule(pl.LightningModule):
    """The shared child, the controller, and their alternating updates (manual optimization)."""

    def __init__(self, cfg: EnasConfig, data: EnasData, archive: Path) -> None:
        super().__init__()
        self.cfg = cfg
        self.automatic_optimization = False
        # the child first: identical seeds give identical child weights whatever the controller norm
        self.child = ChildNet(cfg.num_layers, cfg.channels, data.in_channels, data.num_classes,
                              dropout=cfg.child_dropout, stem_stride=cfg.stem_stride)
        self.controller = Controller(cfg.num_layers, cfg.controller_hidden, cfg.norm,
                                     num_groups=cfg.controller_groups, sn_stats=cfg.sn_stats,
                                     tanh_constant=cfg.tanh_constant, temperature=cfg.temperature,
                                     skip_target=cfg.skip_target)
        self.eval_images, self.eval_labels = data.eval_images, data.eval_labels
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
        """Score ``eval_archs`` sampled architectures on the fixed validation images."""
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
        images = self.eval_images.tensor_split(world)[rank].to(self.device)
        labels = self.eval_labels.tensor_split(world)[rank].to(self.device)
        with torch.no_grad():
            correct = [sum(accuracy(self.child, arch, xb, yb) * len(yb)
                           for xb, yb in zip(images.split(500), labels.split(500)) if len(yb))
                       for arch in archs]
        correct = self.trainer.strategy.reduce(torch.tensor(correct, dtype=torch.float64, device=self.device),
                                               reduce_op="sum")
        records = [{"epoch": self.current_epoch, "step": self.global_step, "arch": arch,
                    "arch_str": arch_to_str(arch), "val_acc": total / len(self.eval_labels)}
                   for arch, total in zip(archs, correct.tolist())]
        accs = [r["val_acc"] for r in records]
        self._emit({"val/mean_acc": sum(accs) / len(accs), "val/best_acc": max(accs)})
        self.log("val_mean", sum(accs) / len(accs), prog_bar=True, logger=False, sync_dist=True)  # equal everywhere
        if is_rank_zero():
            with open(self.archive, "a", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
                    f.flush()


# ---------------------------------------------------------------- the archive of architectures


def read_architectures(path: Path) -> List[Dict]:
    """The records of ``architectures.jsonl``; a cut or unreadable line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_architectures(path: Path, step: int) -> None:
    """Keep the records logged at or before ``step`` (resume from a checkpoint at ``step``)."""
    records = read_architectures(path)
    kept = [r for r in records if r["step"] <= step]
    if Path(path).exists() and is_rank_zero():
        atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in kept))


def final_metrics(archive: Path) -> Dict:
    """best_val_acc / best_arch (over the whole search), mean_val_acc (last epoch), best_epoch."""
    records = read_architectures(archive)
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
    archive = rundir.path / ARCHITECTURES_FILE
    if ckpt_path:
        truncate_architectures(archive, checkpoint_step(ckpt_path))
    trainer = _enas_trainer(cfg, rundir, ddp_strategy(cfg.strategy))
    if cfg.strategy == "auto" and isinstance(trainer.strategy, DDPStrategy):  # Lightning chose DDP itself
        trainer = _enas_trainer(cfg, rundir, ddp_strategy("ddp"))
    data = build_data(cfg, trainer.global_rank, trainer.world_size)  # ValueError unless the batches split evenly
    module = EnasModule(cfg, data, archive)
    trainer.fit(module, data.loader, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted")
    final = final_metrics(archive)
    final["steps"] = trainer.global_step
    if trainer.is_global_zero and "best_arch" in final:
        print(f"best architecture (controller norm {cfg.norm}), validation accuracy {final['best_val_acc']:.4f} "
              f"at epoch {final['best_epoch']}:\n  {final['best_arch']}\n"
              f"mean validation accuracy of the last epoch's samples: {final['mean_val_acc']:.4f} "
              f"-- run directory: {rundir.path}", flush=True)
    return final


def enas_main(argv: Optional[List[str]] = None) -> int:
    """The command line; ``--controller-norm`` is another name for ``--norm``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for alias in ("--controller-norm", "--controller_norm"):
        argv = ["--norm" if a == alias else "--norm=" + a[len(alias) + 1:] if a.startswith(alias + "=") else a
                for a in argv]
    return main(TASK, argv)


TASK = Task("enas", EnasConfig, train, report_keys=("best_val_acc", "mean_val_acc"))

if __name__ == "__main__":
    sys.exit(enas_main())
