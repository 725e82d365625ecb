"""Feed-forward artistic style transfer with BN, IN or SN (Sec. 4.3, Fig. 6a, Fig. 9).

    python -m tasks.stylize                              # a small real run on bundled photos
    python -m tasks.stylize --norm in --style PATH --content-dir DIR
    python -m tasks.stylize --experiment stylize-quick   # in, bn and sn, same seeds and data
    python -m tasks.stylize --stylize IMAGE --checkpoint CKPT --out OUT.png
    python -m tasks.stylize --help                       # every config key

Johnson et al.'s transformation network (:mod:`tasks.stylize_model`) with the normalizer
``norm`` after every convolution but the last is trained with Adam to minimise
``content_weight * content + style_weight * style + tv_weight * tv`` measured by a frozen VGG16.
Batch setting ``GxS`` as in the paper's (1, 4): G*S crops per step, batch statistics within
each of the G chunks.

The run directory gets, besides the common files: ``metrics.csv`` rows content_loss,
style_loss, tv_loss and total_loss (split ``train``) every ``log_every_n_steps`` steps,
``weights.csv`` for SN, and sample grids ``samples/step_NNNNNN.png`` every
``sample_every_n_steps`` and ``samples/step_NNNNNN_final.png`` at the end (style and content
images on top, their stylizations by the network in eval mode below).
``summary.json``'s ``final`` holds the losses of the trained network in eval mode on
``eval_crops`` fixed held-out crops (the same for every run with the same seed) and
``perceptual_net``, which is also in ``config.yaml``: ``vgg16-imagenet`` or
``vgg16-random-init`` (the loud fallback when no ImageNet weights are on disk).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Dict, Optional

import pytorch_lightning as pl
import sn
import torch
from torch.utils.data import DataLoader

from .common.config import RunConfig, batch_layout, parse_batch
from .common.runner import Task, build_trainer, main
from .stylize_data import (ContentCrops, EpochSampler, list_images, load_style, read_image,
                           sample_contents, sample_grid, save_png)
from .stylize_model import (MIN_SIZE, PERCEPTUAL_NETS, SIZE_MULTIPLE, STYLE_LAYERS, VGG16_RELU_INDEX, PerceptualLoss,
                            TransformerNet, find_vgg_weights, load_perceptual_net)

LOSS_NAMES = ("content_loss", "style_loss", "tv_loss", "total_loss")


@dataclasses.dataclass
class StylizeConfig(RunConfig):
    """The style-transfer task's config (keys of RunConfig plus these)."""

    task: str = "stylize"
    run: str = "{norm}_s{seed}"      # run name template
    norm: str = "sn"                 # in, bn, sn, ... (sn.norm_names()) after every conv but the last
    batch: str = "1x4"               # GxS: G devices x S crops per device (the paper: 1x4)
    epochs: int = 5                  # training epochs of steps_per_epoch steps (checkpoint/resume unit)
    steps_per_epoch: int = 50        # optimizer steps per epoch (the paper: 40,000 steps in all)
    image_size: int = 64             # side of the square content crops (the paper: 256)
    content_dir: Optional[str] = None  # folder of content images (COCO in the paper); none: bundled photos
    style: str = "ihc"               # style image: a bundled name (ihc, hubble, retina, brick, grass, gravel) or a path
    style_size: Optional[int] = None  # shorter side of the style image (none: image_size)
    width: int = 32                  # channels of the network's stem (Johnson et al.: 32)
    res_blocks: int = 5              # residual blocks (Johnson et al.: 5)
    lr: float = 1e-3                 # Adam learning rate (no weight decay, as in the paper)
    content_layer: str = "relu2_2"   # VGG16 layer of the content loss (relu2_2 or relu3_3)
    content_weight: float = 1.0      # weight of the content loss
    style_weight: float = 1e5        # weight of the style loss (Gram MSE summed over relu1_2..relu4_3)
    tv_weight: float = 0.0           # weight of the total-variation loss
    perceptual_net: str = "auto"     # auto (ImageNet VGG16 if on disk, else random init), vgg16-imagenet, vgg16-random-init
    vgg_weights: Optional[str] = None  # torchvision VGG16 state-dict file (else the torch hub cache)
    vgg_seed: int = 0                # seed of the random-init VGG16 fallback
    log_every_n_steps: int = 1       # loss rows every N optimizer steps
    weights_every_n_steps: int = 25  # importance-weight rows every N optimizer steps (and at the end)
    sample_every_n_steps: int = 100  # sample grid every N optimizer steps (and at the end); 0: only at the end
    sample_size: int = 128           # side of the sample grid's images
    eval_crops: int = 16             # held-out crops for the final losses

    def __post_init__(self) -> None:
        # resolve "auto" now, so config.yaml records the perceptual network actually used
        if self.perceptual_net == "auto":
            found = find_vgg_weights(self.vgg_weights)
            self.perceptual_net = "vgg16-imagenet" if found is not None else "vgg16-random-init"

    def validate(self) -> None:
        super().validate()
        parse_batch(self.batch)
        sn.make_norm(self.norm, 8)  # unknown norm -> ValueError listing the known ones
        if self.perceptual_net not in PERCEPTUAL_NETS:
            raise ValueError(f"unknown perceptual_net {self.perceptual_net!r}; known: auto, {', '.join(PERCEPTUAL_NETS)}")
        for key in ("image_size", "sample_size"):
            value = getattr(self, key)
            if value < MIN_SIZE or value % SIZE_MULTIPLE:
                raise ValueError(f"{key} must be a multiple of {SIZE_MULTIPLE} and >= {MIN_SIZE}, got {value!r}")
        if self.style_size is not None and self.style_size < MIN_SIZE:
            raise ValueError(f"style_size must be >= {MIN_SIZE} or none, got {self.style_size!r}")
        for key in ("steps_per_epoch", "width", "res_blocks", "eval_crops"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.sample_every_n_steps < 0:
            raise ValueError(f"sample_every_n_steps must be >= 0, got {self.sample_every_n_steps!r}")
        if self.content_layer not in VGG16_RELU_INDEX:
            raise ValueError(f"unknown content_layer {self.content_layer!r}; known: {', '.join(VGG16_RELU_INDEX)}")
        if self.lr <= 0 or min(self.content_weight, self.style_weight, self.tv_weight) < 0:
            raise ValueError("lr must be > 0 and content_weight, style_weight, tv_weight >= 0")
        load_style(self.style, None)  # missing / unreadable -> ValueError naming it
        # content_dir and the VGG16 weights are checked when a run starts (StylizeModule), so
        # that experiments for other machines still resolve (--dry-run) here


class StylizeModule(pl.LightningModule):
    """The transformation network, its Adam optimizer, the perceptual loss and sample grids.

    Only the transformation network (``net``) is part of the state dict: the frozen VGG16 is
    rebuilt from ``perceptual_net``/``vgg_weights``/``vgg_seed`` and kept out of checkpoints.
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
        if kind == "vgg16-random-init" and find_vgg_weights(cfg.vgg_weights) is None:
            kind = "auto"  # the fallback: its warning then says that no weights were found
        vgg = load_perceptual_net(cfg.vgg_weights, seed=cfg.vgg_seed, layers=STYLE_LAYERS + (cfg.content_layer,),
                                  kind=kind)
        loss = PerceptualLoss(vgg, style, content_layer=cfg.content_layer, content_weight=cfg.content_weight,
                              style_weight=cfg.style_weight, tv_weight=cfg.tv_weight)
        # not registered as a submodule: the fixed VGG16 stays out of checkpoints
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
        return torch.optim.Adam(sn.param_groups(self.net, 0.0), lr=self.cfg.lr)

    def train_dataloader(self) -> DataLoader:
        per_process, _ = batch_layout(self.cfg.batch, self.trainer.world_size)
        crops = ContentCrops(self.cfg.image_size, self.cfg.steps_per_epoch * per_process, self.cfg.seed,
                             self.cfg.content_dir)
        sampler = EpochSampler(len(crops), self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(crops, batch_size=per_process, sampler=sampler, drop_last=True,
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)

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
    def evaluate(self) -> Dict[str, float]:
        """The mean losses of the network in eval mode on ``eval_crops`` fixed held-out crops."""
        per_process, _ = batch_layout(self.cfg.batch, 1)
        crops = ContentCrops(self.cfg.image_size, self.cfg.eval_crops, self.cfg.seed, self.cfg.content_dir, stream=1)
        was_training = self.net.training
        self.net.eval()
        self.perceptual.to(self.device)
        sums = dict.fromkeys(LOSS_NAMES, 0.0)
        try:
            for batch in DataLoader(crops, batch_size=per_process):
                batch = batch.to(self.device)
                for name, value in self.perceptual(self.net(batch), batch).items():
                    sums[name] += float(value) * batch.shape[0]
        finally:
            self.net.train(was_training)
        return {name: total / len(crops) for name, total in sums.items()}


def net_kwargs(cfg: StylizeConfig, devices: int) -> Dict:
    """The :class:`TransformerNet` arguments of a config (saved in checkpoints for --stylize)."""
    return {"norm": cfg.norm, "devices": devices, "width": cfg.width, "num_res_blocks": cfg.res_blocks}


def train(cfg: StylizeConfig, rundir, ckpt_path: Optional[str] = None) -> dict:
    """Train one run in ``rundir`` (resuming from ``ckpt_path``); return its final metrics."""
    trainer = build_trainer(cfg, rundir, use_distributed_sampler=False)
    _, devices = batch_layout(cfg.batch, trainer.world_size)
    module = StylizeModule(cfg, devices, samples_dir=rundir.path / "samples")
    trainer.fit(module, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted")
    module.save_samples(f"step_{trainer.global_step:06d}_final.png")  # sorts after the others
    final = module.evaluate()
    final["steps"] = trainer.global_step
    final["perceptual_net"] = cfg.perceptual_net
    if trainer.is_global_zero:
        print(f"final losses (eval mode, {cfg.eval_crops} held-out crops): content {final['content_loss']:.5g}, "
              f"style {final['style_loss']:.5g}, total {final['total_loss']:.5g} [{cfg.perceptual_net}] "
              f"-- run directory: {rundir.path}", flush=True)
    return final


# ----------------------------------------------------------------------------------------
# Applying a trained network: --stylize IMAGE --checkpoint CKPT --out OUT.png
# ----------------------------------------------------------------------------------------
def load_network(checkpoint) -> TransformerNet:
    """The trained :class:`TransformerNet` of a checkpoint (or of a run directory's last.ckpt), in eval mode."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not exist")
    try:
        # our own Lightning checkpoint (a trusted file): plain dicts of tensors and numbers
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        kwargs = ckpt["hyper_parameters"]["net"]
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    except Exception as exc:
        raise ValueError(f"{str(checkpoint)!r} is not a checkpoint of tasks.stylize: {exc}") from exc
    net = TransformerNet(**kwargs)
    net.load_state_dict(state)
    return net.eval()


def stylize_file(image, checkpoint, out) -> Path:
    """Stylize the image file ``image`` with the network of ``checkpoint``; write ``out`` (PNG)."""
    if not out:
        raise ValueError("--stylize needs --out OUT.png")
    net = load_network(checkpoint)
    picture = read_image(image, "image to stylize")[None]  # (1, 3, H, W)
    save_png(net.stylize(picture)[0], Path(out).expanduser())
    return Path(out)


def stylize_main(argv) -> int:
    """``--stylize IMAGE --checkpoint CKPT --out OUT.png``; returns the exit code."""
    from .common.config import split_known

    try:
        values, positional = split_known(argv)
        unknown = sorted(set(values) - {"stylize", "checkpoint", "out"}) + positional
        if unknown:
            raise ValueError(f"--stylize takes only --checkpoint and --out, got {unknown}")
        if "checkpoint" not in values:
            raise ValueError("--stylize needs --checkpoint CKPT (a .ckpt file or a run directory)")
        out = stylize_file(values["stylize"], values["checkpoint"], values.get("out"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


TASK = Task("stylize", StylizeConfig, train, report_keys=("content_loss", "style_loss", "total_loss"))

if __name__ == "__main__":
    args = sys.argv[1:]
    if any(a == "--stylize" or a.startswith("--stylize=") for a in args):
        sys.exit(stylize_main(args))
    if "-h" in args or "--help" in args:
        print("apply a trained network: python -m tasks.stylize --stylize IMAGE --checkpoint CKPT|RUN_DIR "
              "--out OUT.png\n")
    sys.exit(main(TASK))
