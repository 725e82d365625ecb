"""COCO's own metric (pycocotools) on a detector's outputs, and drawings of its predictions.

API:
    to_coco_results(output, image_id, label_to_category) -> (box results, mask results)
                                     one image's torchvision detections as COCO result records
    coco_metrics(gt, box_results, mask_results, image_ids) -> dict
                                     box_ap, box_ap50, box_ap75, box_ap_small/medium/large and the
                                     same for mask_ (fractions in [0, 1]; size ranges without
                                     ground truth are left out, as pycocotools gives -1 there)
    draw_prediction(image, target, output, names, score_threshold) -> PIL.Image
                                     ground truth (left) and predictions (right), boxes and masks
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")  # COCOeval.stats[0:6]
MASK_THRESHOLD = 0.5  # torchvision's soft masks become binary at this probability


def to_coco_results(output: Dict[str, torch.Tensor], image_id: int,
                    label_to_category: Dict[int, int]) -> Tuple[List[dict], List[dict]]:
    """One image's detections (``boxes`` x0 y0 x1 y1, ``labels``, ``scores``, ``masks`` (K, 1, H, W)
    probabilities when present) as COCO box and mask result records."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().cpu().double()
    scores = output["scores"].detach().cpu().tolist()
    categories = [label_to_category[int(label)] for label in output["labels"].cpu()]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist() if len(boxes) else []
    box_results = [{"image_id": int(image_id), "category_id": c, "bbox": b, "score": float(s)}
                   for b, c, s in zip(xywh, categories, scores)]
    mask_results = []
    if "masks" in output:
        binary = (output["masks"].detach().cpu()[:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)  # (K, H, W)
        for m, c, s in zip(binary, categories, scores):
            rle = mask_utils.encode(np.asfortranarray(m))
            mask_results.append({"image_id": int(image_id), "category_id": c, "score": float(s),
                                 "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return box_results, mask_results


def _evaluate(gt, results: List[dict], iou_type: str, image_ids: Sequence[int]) -> List[float]:
    """COCOeval's first six stats (AP, AP50, AP75, AP small/medium/large) for one IoU type."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return [0.0] * 3 + [-1.0 if not _has_area(gt, image_ids, r) else 0.0 for r in ("small", "medium", "large")]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def _has_area(gt, image_ids, size: str) -> bool:
    low, high = {"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e10)}[size]
    anns = gt.loadAnns(gt.getAnnIds(imgIds=list(image_ids), iscrowd=False))
    return any(low <= a["area"] < high for a in anns)


def coco_metrics(gt, box_results: List[dict], mask_results: Optional[List[dict]],
                 image_ids: Iterable[int]) -> Dict[str, float]:
    """COCO AP of the results over ``image_ids`` of ``gt`` (a pycocotools ``COCO``).

    Returns ``box_<stat>`` and, when ``mask_results`` is not None, ``mask_<stat>`` for the stats
    of :data:`STAT_NAMES`, as fractions; a size range without ground truth is left out.
    """
    image_ids = list(image_ids)
    out = {}
    kinds = [("box", "bbox", box_results)] + ([("mask", "segm", mask_results)] if mask_results is not None else [])
    for prefix, iou_type, results in kinds:
        for name, value in zip(STAT_NAMES, _evaluate(gt, results, iou_type, image_ids)):
            if value >= 0:  # -1: no ground truth in that range
                out[f"{prefix}_{name}"] = value
    return out


def _palette(i: int) -> Tuple[int, int, int]:
    colours = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230))
    return colours[i % len(colours)]


def _panel(image: torch.Tensor, boxes, labels, masks, names: Dict[int, str], scores=None):
    from PIL import Image, ImageDraw

    base = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.float32)  # (H, W, 3)
    for i, m in enumerate(masks):
        colour = np.array(_palette(i), dtype=np.float32)
        base[m] = 0.5 * base[m] + 0.5 * colour
    picture = Image.fromarray(base.round().astype(np.uint8))
    scale = max(1, 256 // max(picture.size))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle((x0, y0, x1, y1), outline=_palette(i), width=2)
        text = names.get(int(label), str(int(label))) + (f" {scores[i]:.2f}" if scores is not None else "")
        draw.text((x0 + 2, y0 + 1), text, fill=(255, 255, 255))
    return picture


def draw_prediction(image: torch.Tensor, target: Dict, output: Dict, names: Dict[int, str],
                    score_threshold: float = 0.5):
    """The ground truth (left) beside the predictions scoring at least ``score_threshold`` (right):
    boxes with class names (and scores), masks tinted; small images are enlarged."""
    from PIL import Image

    gt_masks = [m.numpy().astype(bool) for m in target["masks"]] if "masks" in target else []
    keep = output["scores"] >= score_threshold
    pred_masks = ([m.numpy() > MASK_THRESHOLD for m in output["masks"][keep][:, 0]] if "masks" in output else [])
    left = _panel(image, target["boxes"], target["labels"], gt_masks, names)
    right = _panel(image, output["boxes"][keep], output["labels"][keep], pred_masks, names,
                   output["scores"][keep].tolist())
    both = Image.new("RGB", (left.width + right.width + 4, left.height), (255, 255, 255))
    both.paste(left, (0, 0))
    both.paste(right, (left.width + 4, 0))
    return both
