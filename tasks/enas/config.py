"""The ENAS task's config: every key with its default, help text and bounds."""
from __future__ import annotations

import dataclasses
import re
from typing import Optional, Tuple

from ..common.config import RunConfig, count, key
from ..common.data import TENSOR_DATASETS
from .controller import CONTROLLER_NORMS, Controller, check_sn_stats
from .data import check_world_size


CHILD, CONTROLLER, EVALUATION = "child network", "controller", "evaluation"  # sections of --help


@dataclasses.dataclass
class EnasConfig(RunConfig):
    """The ENAS task's config (keys of RunConfig plus these)."""

    task: str = key("enas", "the task", group="run")
    norm: str = key("sn", f"controller norm: {', '.join(CONTROLLER_NORMS)}", aliases=("controller-norm",))
    sn_stats: Tuple[str, ...] = key(("ln", "gn"), "what the controller's SN mixes (ln, gn)")
    controller_groups: int = count(8, "GN groups in the controller (divides the hidden size)")
    epochs: int = count(10, "search epochs")
    weights_every_n_steps: int = count(20, "controller importance weights every N steps", group="logging")
    dataset: str = key("fashion-mnist", "fashion-mnist, cifar10 (the paper's) or synthetic", choices=TENSOR_DATASETS)
    data_root: str = key("~/.cache/switchnorm/data", "dataset folder / cache")
    download: bool = key(False, "let torchvision download fashion-mnist / cifar10 when missing")
    augment: bool = key(False, "random crops (and flips for cifar10) of the child's images")
    val_size: int = count(5000, "training images held out for rewards and evaluation")
    num_layers: int = count(6, "searched layers", group=CHILD)
    channels: int = count(16, "channels of every child layer", group=CHILD)
    child_dropout: float = key(0.1, "dropout before the child's classifier", min=0, lt=1, group=CHILD)
    stem_stride: int = count(2, "stride of the child's stem (2: searched layers at 14x14)", group=CHILD)
    child_steps: int = count(100, "child SGD steps per epoch (one sampled architecture each)", group=CHILD)
    child_batch: int = count(64, "training images per child step (global: split over DDP processes)", group=CHILD)
    child_lr: float = key(0.05, "SGD learning rate, cosine to child_lr_min over the run", gt=0, group=CHILD)
    child_lr_min: float = key(0.001, "final learning rate", min=0, group=CHILD)
    child_momentum: float = key(0.9, "SGD (Nesterov) momentum", min=0, group=CHILD)
    child_weight_decay: float = key(1e-4, "child weight decay", min=0, group=CHILD)
    child_grad_clip: float = key(5.0, "gradient-norm bound (ENAS: 5)", gt=0, group=CHILD)
    controller_hidden: int = count(64, "LSTM hidden size", group=CONTROLLER)
    controller_steps: int = count(20, "controller steps per epoch", group=CONTROLLER)
    controller_samples: int = count(4, "architectures per controller step (ENAS's num_aggregate)", group=CONTROLLER)
    reward_batch: int = count(128, "validation images per controller step (global: split over processes)",
                              group=CONTROLLER)
    controller_lr: float = key(0.0035, "Adam learning rate (beta1 = 0, eps = 1e-3, as ENAS)", gt=0, group=CONTROLLER)
    tanh_constant: Optional[float] = key(1.5, "logits -> c * tanh(logits / temperature) (none: off)", group=CONTROLLER)
    temperature: Optional[float] = key(None, "logit temperature (none: off, as ENAS macro search)", group=CONTROLLER)
    skip_target: float = key(0.4, "target skip probability of the skip-density penalty", group=CONTROLLER)
    skip_weight: float = key(0.8, "weight of that KL penalty", min=0, group=CONTROLLER)
    entropy_weight: float = key(1e-4, "entropy bonus added to the reward", min=0, group=CONTROLLER)
    baseline_decay: float = key(0.95, "EMA decay of the reward baseline", min=0, lt=1, group=CONTROLLER)
    eval_archs: int = count(10, "architectures sampled and scored at the end of every epoch", group=EVALUATION)
    eval_size: int = count(1000, "fixed validation images they are scored on", group=EVALUATION)

    def validate(self) -> None:
        super().validate()
        if self.norm not in CONTROLLER_NORMS:
            raise ValueError(f"unknown controller norm {self.norm!r}; known: {', '.join(CONTROLLER_NORMS)}")
        check_sn_stats(self.sn_stats)
        if self.eval_size > self.val_size or self.reward_batch > self.val_size:
            raise ValueError(f"eval_size={self.eval_size} and reward_batch={self.reward_batch} must not "
                             f"exceed val_size={self.val_size}")
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
