"""Synthetic instance segmentation: shapes with exact masks on textured backgrounds.

Each scene is generated from ``(seed, split, index)`` alone, so a set of any size costs no
memory and the same seed always gives the same images. A scene is a random crop of one of
scikit-image's bundled textures (brick, grass, gravel), tinted, with 1 to ``max_objects``
filled shapes in random colours on top: disks, squares and triangles (the three classes),
rotated at random, 15-45% of the image side. Later shapes occlude earlier ones; each mask is
what stays visible, and a shape with fewer than ``MIN_AREA`` visible pixels is left out before
anything is painted, so no unlabelled fragment is left in an image. Boxes are the visible
masks' bounding boxes.

API:
    CLASSES                                 the class names (labels 1, 2, 3; 0 is background)
    scene(index, size, max_objects, seed, split) -> (image (H, W, 3) uint8, masks (K, H, W) bool, labels (K,))
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import numpy as np

CLASSES = ("disk", "square", "triangle")
TEXTURES = ("brick", "grass", "gravel")
MIN_AREA = 24  # visible pixels an object needs to be kept
SPLITS = {"train": 0, "val": 1}


@functools.lru_cache(maxsize=None)
def texture(name: str) -> np.ndarray:
    """A bundled scikit-image texture as float32 in [0, 1] (512 x 512)."""
    import skimage.data

    return getattr(skimage.data, name)().astype(np.float32) / 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A tinted random crop of a texture, (size, size, 3) float in [0, 1]."""
    tex = texture(TEXTURES[rng.integers(len(TEXTURES))])
    k = int(rng.integers(1, max(2, min(4, tex.shape[0] // size) + 1)))  # crop k*size, then k x k block means
    y, x = (int(rng.integers(0, tex.shape[i] - k * size + 1)) for i in (0, 1))
    crop = tex[y:y + k * size, x:x + k * size].reshape(size, k, size, k).mean((1, 3))  # (size, size)
    tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    return (0.15 + 0.7 * crop[..., None] * tint).clip(0, 1)


def _shape_mask(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """The pixels of one random shape of class ``label`` (1-based), (size, size) bool."""
    from skimage.draw import disk, polygon

    radius = rng.uniform(0.075, 0.225) * size  # half of 15-45% of the side
    cy, cx = rng.uniform(radius, size - radius, 2)
    mask = np.zeros((size, size), dtype=bool)
    if CLASSES[label - 1] == "disk":
        rr, cc = disk((cy, cx), radius, shape=mask.shape)
    else:
        corners = 4 if CLASSES[label - 1] == "square" else 3
        angle = rng.uniform(0, 2 * math.pi)
        angles = angle + 2 * math.pi * np.arange(corners) / corners
        rr, cc = polygon(cy + radius * np.sin(angles), cx + radius * np.cos(angles), shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _visible(shapes: list) -> list:
    """What stays visible of each shape when later ones are painted over it."""
    covered = np.zeros_like(shapes[0]) if shapes else None
    out = []
    for mask in reversed(shapes):
        out.append(mask & ~covered)
        covered = covered | mask
    return out[::-1]


def scene(index: int, size: int = 64, max_objects: int = 3, seed: int = 0,
          split: str = "train") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene ``index`` of ``split``: image (H, W, 3) uint8, masks (K, H, W) bool, labels (K,) int64 in 1..3.

    Every scene holds at least one object.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    image = _background(rng, size)
    while True:
        count = int(rng.integers(1, max_objects + 1))
        labels = [int(rng.integers(1, len(CLASSES) + 1)) for _ in range(count)]
        shapes = [_shape_mask(rng, label, size) for label in labels]
        masks = _visible(shapes)
        keep = [i for i, m in enumerate(masks) if m.sum() >= MIN_AREA]
        if len(keep) < len(masks):  # drop the hidden ones, then recompute what the others show
            labels, shapes = [labels[i] for i in keep], [shapes[i] for i in keep]
            masks = _visible(shapes)
        if masks and all(m.sum() >= MIN_AREA for m in masks):
            break
    for mask in shapes:  # painted in order: later shapes on top
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        noise = rng.normal(0, 0.04, (int(mask.sum()), 3)).astype(np.float32)
        image[mask] = (colour + noise).clip(0, 1)
    return ((image * 255).round().astype(np.uint8), np.stack(masks), np.asarray(labels, dtype=np.int64))
