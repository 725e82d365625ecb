"""One style-transfer run (train, sample grids, final losses) and the task object ``TASK``."""
from __future__ import annotations

from typing import Optional

import runformat as rf

from ..common.config import batch_layout
from ..common.runner import Task
from ..common.trainer import build_trainer, fit
from . import __doc__ as DESCRIPTION
from . import apply
from .config import StylizeConfig
from .data import StylizeData
from .module import StylizeModule


def train(cfg: StylizeConfig, rundir, ckpt_path: Optional[str] = None) -> dict:
    """Train one run in ``rundir`` (resuming from ``ckpt_path``); return its final metrics."""
    trainer = build_trainer(cfg, rundir, use_distributed_sampler=False)
    _, devices = batch_layout(cfg.batch, trainer.world_size)
    data = StylizeData(cfg)
    module = StylizeModule(cfg, devices, samples_dir=rundir.path / rf.SAMPLES_DIR)
    fit(trainer, module, data, ckpt_path)
    module.save_samples(f"step_{trainer.global_step:06d}_final.png")  # sorts after the others
    final = module.evaluate(data.eval_dataloader())
    final["steps"] = trainer.global_step
    final["perceptual_net"] = cfg.perceptual_net
    if trainer.is_global_zero:
        print(f"final losses (eval mode, {cfg.eval_crops} held-out crops): content {final['content_loss']:.5g}, "
              f"style {final['style_loss']:.5g}, total {final['total_loss']:.5g} [{cfg.perceptual_net}] "
              f"-- run directory: {rundir.path}", flush=True)
    return final


TASK = Task("stylize", StylizeConfig, train, report_keys=("content_loss", "style_loss", "total_loss"),
            commands={"apply": apply.main}, description=DESCRIPTION.split("\n\n")[0])
