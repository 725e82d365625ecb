"""The data of ``python -m tasks.detect``: instance-segmentation sets and their LightningDataModule.

- ``synthetic`` (default): shapes with exact masks on textured backgrounds
  (:mod:`tasks.detect.shapes`), ``train_images`` and ``val_images`` scenes generated from the
  seed; nothing to download.
- ``coco``: a COCO-format folder, ``data_root/<split>/`` images and
  ``data_root/annotations/instances_<split>.json`` (COCO 2017's layout), read through
  torchvision's ``CocoDetection`` and ``wrap_dataset_for_transforms_v2``. Crowd regions and
  degenerate boxes are left out of the training targets, training images without objects
  are skipped (as Detectron does); the evaluation uses the annotation file itself.

Every item is ``(image, target)``: a float image ``(3, H, W)`` in [0, 1] and a dict with
``boxes`` ``(K, 4)`` (x0, y0, x1, y1 in pixels), ``labels`` ``(K,)`` (1..C, contiguous),
``masks`` ``(K, H, W)`` uint8 and ``image_id``. Each set knows its ground truth in COCO's
format (:meth:`coco_gt`) and the COCO category of each label (``label_to_category``).
Training batches hold each process's share of the ``GxS`` batch, always full, so that they
split into equal device chunks.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from ..common.mixins import BatchLoaders
from ..common.data import DataMissing, split_indices
from . import shapes
from .config import DetectConfig

COCO_HINT = ("COCO 2017 is at https://cocodataset.org/#download (train2017.zip, val2017.zip and "
             "annotations_trainval2017.zip, unzipped into one folder); pass it as --data-root")


def collate(batch):
    """A batch of detection items as ``(list of images, list of targets)`` (sizes may differ)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _flip(image: torch.Tensor, target: Dict) -> Tuple[torch.Tensor, Dict]:
    """Mirror an image and its boxes and masks left to right."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """The bounding box ``(x0, y0, x1, y1)`` of each mask ``(K, H, W)``, covering its pixels."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def coco_from_targets(items, categories: Dict[int, str]):
    """A pycocotools ``COCO`` ground truth from ``(image_id, height, width, masks, labels)`` items
    (labels are the category ids)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    images, annotations = [], []
    for image_id, height, width, masks, labels in items:
        images.append({"id": int(image_id), "height": int(height), "width": int(width), "file_name": f"{image_id}.png"})
        for mask, label in zip(masks, labels):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x0, y0, x1, y1 = mask_boxes(mask[None])[0]
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id), "category_id": int(label),
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                                "area": float(mask_utils.area(rle)), "bbox": [float(x0), float(y0), float(x1 - x0),
                                                                             float(y1 - y0)], "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": int(i), "name": n} for i, n in categories.items()]}
    _quiet(gt.createIndex)
    return gt


def _quiet(fn, *args, **kw):
    """Call ``fn`` with pycocotools' progress prints kept off stdout."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


class SyntheticShapes(Dataset):
    """``n`` generated scenes of ``split`` (:func:`tasks.detect.shapes.scene`)."""

    def __init__(self, n: int, size: int, max_objects: int, seed: int, split: str, flip: bool = False) -> None:
        self.n, self.size, self.max_objects, self.seed, self.split, self.flip = n, size, max_objects, seed, split, flip
        self.categories = {i + 1: name for i, name in enumerate(shapes.CLASSES)}
        self.label_to_category = {label: label for label in self.categories}

    def __len__(self) -> int:
        return self.n

    @property
    def image_ids(self) -> List[int]:
        return list(range(self.n))

    def raw(self, index: int):
        return shapes.scene(index, self.size, self.max_objects, self.seed, self.split)

    def __getitem__(self, index: int):
        image, masks, labels = self.raw(index)
        target = {"boxes": torch.from_numpy(mask_boxes(masks)), "labels": torch.from_numpy(labels),
                  "masks": torch.from_numpy(masks.astype(np.uint8)), "image_id": index}
        image = torch.from_numpy(image).permute(2, 0, 1).float().div(255)  # (H, W, 3) -> (3, H, W)
        if self.flip and torch.rand(1).item() < 0.5:
            image, target = _flip(image, target)
        return image, target

    def coco_gt(self):
        """This set's ground truth as a pycocotools ``COCO`` object (image ids = indices)."""
        items = []
        for i in range(self.n):
            _, masks, labels = self.raw(i)
            items.append((i, self.size, self.size, masks, labels))
        return coco_from_targets(items, self.categories)


def coco_paths(root, split: str) -> Tuple[Path, Path]:
    """The image folder and the annotation file of a COCO split; DataMissing when absent."""
    root = Path(root).expanduser()
    images, annotations = root / split, root / "annotations" / f"instances_{split}.json"
    missing = [str(p) for p in (images, annotations) if not p.exists()]
    if missing:
        raise DataMissing(f"COCO split {split!r} not found: missing {' and '.join(missing)}. {COCO_HINT}")
    return images, annotations


class CocoInstances(Dataset):
    """A COCO split (or a seeded subset of it) as detection items with contiguous labels.

    Args:
        root: the folder with ``<split>/`` and ``annotations/instances_<split>.json``.
        split: e.g. ``train2017``.
        subset: keep this many images (a seeded random subset; None: all).
        train: training set (images without objects skipped, crowd regions left out, flips).
    """

    def __init__(self, root, split: str, subset: Optional[int], seed: int, train: bool, flip: bool = False) -> None:
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

        images, annotations = coco_paths(root, split)
        try:
            base = _quiet(CocoDetection, str(images), str(annotations))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{annotations} is not a COCO instances file: {e!r}") from None
        self.coco = base.coco
        self.categories = {c["id"]: c["name"] for c in sorted(self.coco.dataset.get("categories", []),
                                                                key=lambda c: c["id"])}
        self.label_to_category = {i + 1: cat for i, cat in enumerate(self.categories)}
        self._cat_to_label = {cat: label for label, cat in self.label_to_category.items()}
        self.base = wrap_dataset_for_transforms_v2(base, target_keys=("boxes", "labels", "masks", "image_id",
                                                                      "iscrowd"))
        indices = list(range(len(base)))
        if train:  # Detectron trains on images with at least one non-crowd object
            indices = [i for i in indices if self.coco.getAnnIds(imgIds=base.ids[i], iscrowd=False)]
        if subset is not None and subset < len(indices):
            indices = [indices[i] for i in split_indices(len(indices), [subset], seed)[0].tolist()]
        self.indices, self.train, self.flip = indices, train, flip
        self.image_ids = [base.ids[i] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        from torchvision.transforms.v2 import functional as TF

        with warnings.catch_warnings():  # pycocotools' mask decoding under numpy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            image, target = self.base[self.indices[index]]
        image = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        h, w = image.shape[-2:]
        boxes = torch.as_tensor(target.get("boxes", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor([self._cat_to_label[int(c)] for c in target.get("labels", [])], dtype=torch.int64)
        masks = torch.as_tensor(target.get("masks", torch.zeros(0, h, w)), dtype=torch.uint8).reshape(-1, h, w)
        crowd = torch.as_tensor(target.get("iscrowd", [0] * len(labels)), dtype=torch.bool).reshape(-1)
        keep = ~crowd & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        target = {"boxes": boxes[keep], "labels": labels[keep], "masks": masks[keep],
                  "image_id": int(target["image_id"])}
        if self.train and self.flip and torch.rand(1).item() < 0.5:
            image, target = _flip(image, target)
        return image, target

    def coco_gt(self):
        """The annotation file's ground truth (the evaluation keeps to this set's image ids)."""
        return self.coco


class DetectData(BatchLoaders, pl.LightningDataModule):
    """The training and evaluation sets of ``cfg.dataset`` and their loaders.

    ``num_classes`` (with background) is known after :meth:`setup`. Training batches are
    shuffled and full; evaluation batches hold ``eval_batch_size`` images in order.
    """

    collate_fn = staticmethod(collate)

    def __init__(self, cfg: DetectConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set = self.val_set = None
        self.num_classes = None
        self._stats_loader = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.cfg
        if cfg.dataset == "synthetic":
            self.train_set = SyntheticShapes(cfg.train_images, cfg.image_size, cfg.max_objects, cfg.seed, "train",
                                             flip=cfg.flip)
            self.val_set = SyntheticShapes(cfg.val_images, cfg.image_size, cfg.max_objects, cfg.seed, "val")
        else:
            self.train_set = CocoInstances(cfg.data_root, cfg.train_split, cfg.train_images, cfg.seed, train=True,
                                           flip=cfg.flip)
            self.val_set = CocoInstances(cfg.data_root, cfg.val_split, cfg.val_images, cfg.seed, train=False)
        self.num_classes = len(self.train_set.categories) + 1
        if len(self.train_set) < cfg.batch_size:
            raise ValueError(f"train set of {len(self.train_set)} images is smaller than one batch of "
                             f"{cfg.batch_size} (batch {cfg.batch!r}); raise train_images or use a smaller batch")
        if len(self.val_set) == 0:
            raise ValueError("the evaluation set has no images")

    def sample_images(self, n: int) -> List:
        """The first ``n`` evaluation items (for the drawings of predictions)."""
        return [self.val_set[i] for i in range(min(n, len(self.val_set)))]
