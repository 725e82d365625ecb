"""One detection run (train, evaluate with COCO's metric, draw predictions) and the task object ``TASK``."""
from __future__ import annotations

from typing import Optional

from ..common.config import batch_layout
from ..common.runner import Task
from ..common.trainer import build_trainer, fit
from . import __doc__ as DESCRIPTION
from .config import DetectConfig
from .data import DetectData
from .module import DetectModule

PREDICTIONS_DIR = "predictions"  # val_NNNNNN.png: ground truth beside the predictions (read by analysis.detect)
REPORT_KEYS = ("box_ap", "box_ap50", "box_ap75", "mask_ap")


def final_metrics(rundir) -> dict:
    """The last evaluation's ``val`` metrics (box_ap, ..., mask_ap, ...) and the last train loss."""
    rows = rundir.metrics.rows()
    final = {}
    for split, names in (("val", None), ("train", ("loss",))):
        chosen = [r for r in rows if r["split"] == split and (names is None or r["name"] in names)]
        if chosen:
            last = max(int(r["step"]) for r in chosen)
            prefix = "" if split == "val" else "train_"
            final.update({prefix + r["name"]: float(r["value"]) for r in chosen if int(r["step"]) == last})
    return final


def last_eval_step(rundir) -> Optional[int]:
    steps = [int(r["step"]) for r in rundir.metrics.rows() if r["split"] == "val"]
    return max(steps) if steps else None


def train(cfg: DetectConfig, rundir, ckpt_path: Optional[str] = None) -> dict:
    """Train and evaluate one run in ``rundir`` (resuming from ``ckpt_path``); return final metrics."""
    every = cfg.val_every_n_epochs or cfg.epochs + 1  # 0: no evaluation during training
    # checkpoints every epoch, though evaluation runs only every val_every_n_epochs (or at the end)
    trainer = build_trainer(cfg, rundir, save_on_train_epoch_end=True, check_val_every_n_epoch=every,
                            gradient_clip_val=cfg.grad_clip)
    _, devices = batch_layout(cfg.batch, trainer.world_size)  # G/P virtual devices per process
    data = DetectData(cfg)
    data.setup("fit")  # the number of classes comes from the data
    names = {label: data.train_set.categories[cat] for label, cat in data.train_set.label_to_category.items()}
    module = DetectModule(cfg, data.num_classes, data.train_set.label_to_category, names, devices)
    fit(trainer, module, data, ckpt_path)
    if last_eval_step(rundir) != trainer.global_step:  # evaluate the final weights once
        trainer.validate(module, datamodule=data, verbose=False)
    module.save_predictions(data.sample_images(cfg.predictions), rundir.path / PREDICTIONS_DIR)
    final = final_metrics(rundir)
    final["steps"] = trainer.global_step
    if trainer.is_global_zero:
        shown = ", ".join(f"{k} {100 * final[k]:.1f}" for k in REPORT_KEYS if k in final)
        print(f"COCO AP (%): {shown} -- run directory: {rundir.path}", flush=True)
    return final


TASK = Task("detect", DetectConfig, train, report_keys=REPORT_KEYS, description=DESCRIPTION.split("\n\n")[0])
