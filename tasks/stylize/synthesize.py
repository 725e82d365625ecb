"""Texture synthesis by pixel optimisation: what each perceptual network's style loss describes.

    python -m tasks.stylize.synthesize --out texture.png              # ihc, 64x64, every network
    python -m tasks.stylize.synthesize --style gravel --size 96 --steps 600

Starting from grey noise, Adam changes the pixels of one image (through a sigmoid, so they stay
in [0, 1]) to minimise the style loss of each perceptual network against the style image
alone, with no content and no transformation network. The loss is the relative one for every
network (each layer's Gram error divided by the mean square of the style's Gram matrix), so
that VGG16's layers, whose scales differ by orders of magnitude, all count. A network whose Gram matrices describe
the texture gives an image that looks like the style; one whose do not gives noise however
well its Gram matrices are matched. The PNG shows the style, then one synthesis per network;
the printed table gives each network's final style loss relative to its start.
ImageNet VGG16 joins when its weights are on disk (``--vgg-weights`` or the torch hub cache).
"""
from __future__ import annotations

import argparse
import time
import warnings
from typing import List, Optional

import torch

from .images import BUNDLED_STYLES, load_style, save_png
from .perceptual import NET_DEFAULTS, find_vgg_weights, gram_matrix, load_perceptual_net, style_loss


def synthesize(net, style: torch.Tensor, steps: int, lr: float, seed: int) -> tuple:
    """Pixels minimising ``net``'s style loss against ``style`` (1, 3, H, W); returns
    ``(image, first loss, last loss)``."""
    layers = NET_DEFAULTS[net.label]["style_layers"]
    with torch.no_grad():
        targets = {layer: gram_matrix(f) for layer, f in net(style).items() if layer in layers}
    generator = torch.Generator().manual_seed(seed)
    start = 0.4 + 0.2 * torch.rand(style.shape, generator=generator)  # grey noise
    logits = start.logit().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    first = last = None
    for _ in range(steps):
        image = torch.sigmoid(logits)
        loss = style_loss(net(image), targets, relative=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = float(loss.detach())
        first = last if first is None else first
    return torch.sigmoid(logits).detach(), first, last


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.stylize.synthesize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", default="ihc", help=f"a bundled style ({', '.join(BUNDLED_STYLES)}) or an image file")
    parser.add_argument("--size", type=int, default=64, help="side of the square texture (>= 23)")
    parser.add_argument("--steps", type=int, default=400, help="Adam steps on the pixels")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate on the pixels' logits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random networks and the start")
    parser.add_argument("--vgg-weights", default=None, help="torchvision VGG16 state-dict file (else the hub cache)")
    parser.add_argument("--out", default="texture-synthesis.png", help="the PNG to write")
    args = parser.parse_args(argv)
    if args.size < 23 or args.steps < 1 or args.lr <= 0:
        parser.error("--size must be >= 23, --steps >= 1 and --lr > 0")
    try:
        style = load_style(args.style, args.size)[..., : args.size, : args.size]
    except ValueError as exc:
        parser.error(str(exc))
    kinds = ["vgg16-random-init", "random-multiscale"]
    if find_vgg_weights(args.vgg_weights) is not None:
        kinds.insert(0, "vgg16-imagenet")
    images = [style[0]]
    print(f"style {args.style!r}, {args.size}x{args.size}, {args.steps} Adam steps on the pixels")
    print(f"{'perceptual network':<20} {'style loss, end / start':>24} {'seconds':>8}")
    for kind in kinds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (the random networks' banners)
            net = load_perceptual_net(args.vgg_weights, seed=args.seed, kind=kind)
        began = time.perf_counter()
        image, first, last = synthesize(net, style, args.steps, args.lr, args.seed)
        print(f"{kind:<20} {last / first:>24.2e} {time.perf_counter() - began:>8.1f}")
        images.append(image[0])
    save_png(torch.cat(images, dim=2), args.out)
    print(f"wrote {args.out}: the style, then " + ", ".join(kinds))


if __name__ == "__main__":
    main()
