"""Apply a trained style network: ``python -m tasks.stylize apply IMAGE --checkpoint CKPT --out OUT.png``.

``CKPT`` is a checkpoint of ``tasks.stylize`` or a run directory (meaning its
``checkpoints/last.ckpt``). Images of any size of at least 16x16 work (reflection-padded to a
multiple of 4 and cropped back); the output PNG has the input's size. No VGG16 is needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import runformat as rf
import torch

from .images import read_image, save_png
from .model import TransformerNet


def load_network(checkpoint) -> TransformerNet:
    """The trained :class:`TransformerNet` of a checkpoint (or of a run directory's last.ckpt), in eval mode."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / rf.CHECKPOINTS_DIR / rf.LAST_CHECKPOINT
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
    net = load_network(checkpoint)
    picture = read_image(image, "image to stylize")[None]  # (1, 3, H, W)
    save_png(net.stylize(picture)[0], Path(out).expanduser())
    return Path(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.stylize apply",
                                     description="Apply a trained style network to an image file (writes a PNG "
                                                 "of the same size).",
                                     allow_abbrev=False)
    parser.add_argument("image", help="the image file to stylize")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a checkpoint of tasks.stylize, or a run directory (its checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, metavar="OUT.png", help="where to write the stylized PNG")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """The ``apply`` command; returns the exit code (0 written, 2 bad input)."""
    args = build_parser().parse_args(argv)  # bad options: usage and exit code 2
    try:
        out = stylize_file(args.image, args.checkpoint, args.out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
