"""Object detection and instance segmentation with SN (Sec. 4.2, Tables 3-5, Fig. 1(c)).

    python -m tasks.detect                                # a short run on synthetic shapes (CPU)
    python -m tasks.detect --norm gn --batch 4x2
    python -m tasks.detect --experiment detect-quick      # a grid from experiments.yaml
    python -m tasks.detect --dataset coco --data-root ~/data/coco   # a COCO-format folder
    python -m tasks.detect --help                         # every config key

Mask R-CNN (or Faster R-CNN) with FPN from torchvision's parts, every norm layer from the
registry (``sn.make_norm``) or frozen BN (``bn-frozen``, the paper's BN-dagger): ``norm`` in
the ResNet backbone, ``head_norm`` in FPN, box head and mask head. Batch setting ``GxS``: G
virtual devices of S images; batch statistics stay within each device's images (in the
backbone and FPN by per-device chunks, in the heads by running each device's RoIs
separately). Evaluated with COCO's own metric (pycocotools): box and mask AP, AP50, AP75.
The guide: ``docs/detect.md``.

- ``config``: :class:`DetectConfig`, every key with its default, help and bounds.
- ``shapes``: the synthetic scenes (shapes with exact masks on scikit-image textures).
- ``data``: the synthetic and COCO-folder sets, :class:`DetectData` (the LightningDataModule).
- ``model``: :func:`build_detector`, :class:`DeviceSplit` (heads per device).
- ``evaluate``: COCO results, COCO AP, drawings of predictions.
- ``module``: :class:`DetectModule`, the LightningModule (SGD, warm-up and steps, evaluation).
- ``task``: ``train`` (one run) and ``TASK``; ``__main__``: the command line.
"""
