"""Images of the style-transfer task: bundled photos and styles, reading, crops, PNG output.

Everything works offline: the default content images are scikit-image's bundled photographs
and the default style image is one of its bundled pictures. ``--content-dir`` takes a folder
of images (COCO in the paper) and ``--style`` a bundled name or an image file.

Images are float tensors in [0, 1] of shape ``(3, H, W)`` (``(N, 3, H, W)`` in batches).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _motorcycle(side: int) -> Callable[[], np.ndarray]:
    def load():
        import skimage.data

        return skimage.data.stereo_motorcycle()[side]

    return load


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load():
        import skimage.data

        return getattr(skimage.data, name)()

    return load


# scikit-image's bundled colour photographs (inside its wheel; no download)
BUNDLED_CONTENT: Dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
}
# bundled pictures usable as a style (``--style NAME``); ihc is the default
BUNDLED_STYLES: Dict[str, Callable[[], np.ndarray]] = {
    "ihc": _skimage("immunohistochemistry"),
    "hubble": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
}


@functools.lru_cache(maxsize=1)
def bundled_photos() -> Tuple[Tensor, ...]:
    """The :data:`BUNDLED_CONTENT` photographs as ``(3, H, W)`` tensors (loaded once; do not modify)."""
    return tuple(to_tensor(load(), name) for name, load in BUNDLED_CONTENT.items())


def to_tensor(array: np.ndarray, what: str = "image") -> Tensor:
    """A ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` image array (any dtype) -> ``(3, H, W)`` in [0, 1]."""
    from skimage.util import img_as_float32

    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"{what} must be a grayscale, RGB or RGBA image, got an array of shape {array.shape}")
    array = img_as_float32(array[..., :3])
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).clamp(0, 1)  # (3, H, W)


def read_image(path, what: str = "image") -> Tensor:
    """Read an image file into a ``(3, H, W)`` tensor in [0, 1].

    Raises:
        ValueError: ``path`` does not exist or is not a readable image (the message names it).
    """
    import skimage.io

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    try:
        array = skimage.io.imread(p)
    except Exception as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc}") from exc
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        raise ValueError(f"cannot read {what} {str(path)!r}: unexpected array shape {array.shape}")
    return to_tensor(np.asarray(array), f"{what} {str(path)!r}")


def resize_short_side(image: Tensor, size: int) -> Tensor:
    """Resize ``(3, H, W)`` so that its shorter side is ``size`` pixels (antialiased bilinear)."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    if new == (h, w):
        return image
    return F.interpolate(image[None], size=new, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def load_style(spec: str, size: Optional[int]) -> Tensor:
    """The style image ``(1, 3, H, W)``: a name of :data:`BUNDLED_STYLES` or an image file,
    resized so that its shorter side is ``size`` (``None``: as is).

    Raises:
        ValueError: an unknown name that is not a file either, or an unreadable file.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"style must be a bundled style name or an image path, got {spec!r}")
    if spec in BUNDLED_STYLES:
        image = to_tensor(BUNDLED_STYLES[spec](), f"style {spec!r}")
    elif not Path(spec).expanduser().exists() and Path(spec).suffix == "" and "/" not in spec:
        raise ValueError(
            f"style {spec!r} is neither a bundled style ({', '.join(sorted(BUNDLED_STYLES))}) nor an image file"
        )
    else:
        image = read_image(spec, "style image")
    if size is not None:
        image = resize_short_side(image, size)
    return image[None]  # (1, 3, H, W)


def list_images(folder) -> List[Path]:
    """The image files directly or recursively under ``folder``, sorted.

    Raises:
        ValueError: ``folder`` is not a directory or holds no image file.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"content_dir {str(folder)!r} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"content_dir {str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def random_crop(image: Tensor, size: int, rng: np.random.Generator, max_zoom_out: bool = True) -> Tensor:
    """A random square crop of ``image`` resized to ``size`` x ``size``.

    The crop window's side is drawn between ``size`` and the image's shorter side (so crops
    range from full-resolution details to most of the picture) when ``max_zoom_out``, else it
    is ``size`` on an image first resized to a shorter side of ``size``.
    """
    if not max_zoom_out:
        image = resize_short_side(image, size)
    h, w = image.shape[-2:]
    short = min(h, w)
    side = int(rng.integers(min(size, short), short + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = image[:, top:top + side, left:left + side].clone()  # (3, side, side), never a view of the source
    if side != size:
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0].clamp(0, 1)
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return crop


def center_crop(image: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` crop of ``image`` after resizing its shorter side to ``size``."""
    image = resize_short_side(image, size)
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top:top + size, left:left + size]



def sample_contents(size: int, count: int, content_dir: Optional[str] = None) -> Tensor:
    """Fixed content images for the sample grids: centre crops of the first ``count`` bundled
    photos (or files of ``content_dir``), shape ``(count, 3, size, size)``."""
    if content_dir:
        images = [read_image(p, "content image") for p in list_images(content_dir)[:count]]
    else:
        images = list(bundled_photos()[:count])
    return torch.stack([center_crop(im, size) for im in images])


def save_png(image: Tensor, path) -> None:
    """Save a ``(3, H, W)`` or ``(1, 3, H, W)`` tensor in [0, 1] as an 8-bit PNG (atomically)."""
    from PIL import Image

    if image.dim() == 4:
        image = image[0]
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def sample_grid(contents: Tensor, style: Tensor, outputs: Tensor, pad: int = 2) -> Tensor:
    """A ``(3, H', W')`` grid: row 1 the style image then the content images, row 2 blank then
    their stylizations. ``contents`` and ``outputs`` are ``(K, 3, s, s)``; ``style`` ``(1, 3, h, w)``."""
    from torchvision.utils import make_grid

    size = contents.shape[-1]
    style_tile = center_crop(style[0], size)
    blank = torch.ones_like(style_tile)
    tiles = [style_tile, *contents, blank, *outputs.clamp(0, 1)]
    return make_grid(torch.stack(tiles), nrow=len(contents) + 1, padding=pad, pad_value=1.0)
