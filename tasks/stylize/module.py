"""The style-transfer LightningModule: the transformation network, Adam, the perceptual loss.

Johnson et al.'s transformation network (:mod:`tasks.stylize.model`) with the normalizer
``norm`` after every convolution but the last is trained with Adam to minimise
``content_weight * content + style_weight * style + tv_weight * tv`` measured by a frozen perceptual network
(:mod:`tasks.stylize.perceptual`). Sample grids ``samples/step_NNNNNN.png`` every
``sample_every_n_steps`` steps show the style and content images on top and their
stylizations by the network in eval mode below.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Optional

import pytorch_lightning as pl
import sn
import torch

from .config import StylizeConfig
from .images import list_images, load_style, sample_contents, sample_grid, save_png
from .model import TransformerNet
from .perceptual import STYLE_LAYERS, PerceptualLoss, content_layers, find_vgg_weights, load_perceptual_net

LOSS_NAMES = ("content_loss", "style_loss", "tv_loss", "total_loss")


class StylizeModule(pl.LightningModule):
    """The transformation network, its Adam optimizer, the perceptual loss and sample grids.

    Only the transformation network (``net``) is part of the state dict: the frozen perceptual
    network is rebuilt from ``perceptual_net``/``vgg_weights``/``vgg_seed`` and kept out of checkpoints.
    """

    def __init__(self, cfg: StylizeConfig, devices: int, samples_dir: Optional[Path] = None) -> None:
        super().__init__()
        if cfg.content_dir is not None:
            list_images(cfg.content_dir)  # not a folder / no images -> ValueError naming it
        self.cfg = cfg
        self.save_hyperparameters({"net": net_kwargs(cfg, devices), "config": dataclasses.asdict(cfg)})
        self.net = TransformerNet(**net_kwargs(cfg, devices))
        self.samples_dir = samples_dir
        style = load_style(cfg.style, cfg.style_size or cfg.image_size)
        kind = cfg.perceptual_net
        if kind == "random-multiscale" and find_vgg_weights(cfg.vgg_weights) is None:
            kind = "auto"  # the fallback: its warning then says that no weights were found
        layers = content_layers(cfg.content_layer, cfg.perceptual_net)
        net = load_perceptual_net(cfg.vgg_weights, seed=cfg.vgg_seed, layers=STYLE_LAYERS + layers, kind=kind)
        if net.label != cfg.perceptual_net:  # weights appeared or vanished since the config was resolved
            raise ValueError(f"the config says perceptual_net {cfg.perceptual_net} but {net.label} was loaded")
        loss = PerceptualLoss(net, style, content_layer=layers, content_weight=cfg.content_weight,
                              style_weight=cfg.style_weight, tv_weight=cfg.tv_weight)
        # not registered as a submodule: the fixed perceptual network stays out of checkpoints
        self.__dict__["perceptual"] = loss
        self.__dict__["style_image"] = style
        self.__dict__["sample_images"] = sample_contents(cfg.sample_size, 4, cfg.content_dir)

    def on_fit_start(self) -> None:
        self.perceptual.to(self.device)

    def training_step(self, batch, batch_idx):
        losses = self.perceptual(self.net(batch), batch)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "total_loss", batch_size=batch.shape[0])
        return losses["total_loss"]

    def configure_optimizers(self):
        groups = sn.param_groups(self.net, 0.0)
        for group in groups[1:]:  # the importance logits' group, present when the network has SN layers
            group["lr"] = self.cfg.lr * self.cfg.logit_lr_scale
        return torch.optim.Adam(groups, lr=self.cfg.lr)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        every, step = self.cfg.sample_every_n_steps, self.trainer.global_step
        if every and step % every == 0 and step < self.trainer.estimated_stepping_batches:
            self.save_samples(f"step_{step:06d}.png")  # the last step's grid is the final one

    @torch.no_grad()
    def save_samples(self, filename: str) -> Optional[Path]:
        """Write a grid (style + contents on top, stylizations below; eval mode) under samples/."""
        if self.samples_dir is None or not self.trainer.is_global_zero:
            return None
        was_training = self.net.training
        self.net.eval()
        try:
            outputs = self.net.stylize(self.sample_images.to(self.device)).cpu()
        finally:
            self.net.train(was_training)
        path = self.samples_dir / filename
        save_png(sample_grid(self.sample_images, self.style_image, outputs), path)
        return path

    @torch.no_grad()
    def evaluate(self, loader) -> Dict[str, float]:
        """The mean losses of the network in eval mode over the crops of ``loader``."""
        was_training = self.net.training
        self.net.eval()
        self.perceptual.to(self.device)
        sums, count = dict.fromkeys(LOSS_NAMES, 0.0), 0
        try:
            for batch in loader:
                batch = batch.to(self.device)
                for name, value in self.perceptual(self.net(batch), batch).items():
                    sums[name] += float(value) * batch.shape[0]
                count += batch.shape[0]
        finally:
            self.net.train(was_training)
        return {name: total / count for name, total in sums.items()}


def net_kwargs(cfg: StylizeConfig, devices: int) -> Dict:
    """The :class:`TransformerNet` arguments of a config (saved in checkpoints for the ``apply`` command)."""
    return {"norm": cfg.norm, "devices": devices, "width": cfg.width, "num_res_blocks": cfg.res_blocks}
