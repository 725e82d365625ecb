"""tasks.detect: COCO AP on hand-made cases, synthetic scenes, the norms in the detector, per-device heads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sn
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from analysis.detect import component
from tasks.detect.config import DetectConfig
from tasks.detect.data import CocoInstances, SyntheticShapes, coco_from_targets, mask_boxes
from tasks.detect.evaluate import coco_metrics, to_coco_results
from tasks.detect.model import CountingRoIAlign, DeviceSplit, build_detector, load_backbone, resnet_body
from tasks.detect.module import lr_factor, optimizer_groups
from tasks.detect.shapes import MIN_AREA, scene

TINY = dict(backbone="resnet10", fpn_channels=16, head_channels=16, box_fc=32, box_convs=2, mask_convs=2)


# --- COCO AP on cases whose AP is known by hand -----------------------------------------------------
def square(size=32, x0=0, y0=0, side=10):
    m = np.zeros((size, size), dtype=bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def ground_truth(objects):
    """COCO ground truth of one 32x32 image (id 7) with ``objects``: [(mask, category)]."""
    masks = np.stack([m for m, _ in objects])
    return coco_from_targets([(7, 32, 32, masks, [c for _, c in objects])], {1: "a", 2: "b"})


def output(boxes, labels, scores, masks):
    """A torchvision detector's output for one image: masks as (K, 1, H, W) probabilities."""
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores), "masks": torch.from_numpy(np.stack(masks)).float()[:, None]}


def metrics_of(gt, out):
    boxes, masks = to_coco_results(out, 7, {1: 1, 2: 2})
    return coco_metrics(gt, boxes, masks, [7])


def test_perfect_predictions_have_ap_one():
    objects = [(square(x0=1, y0=1), 1), (square(x0=15, y0=12, side=12), 2), (square(x0=2, y0=20, side=8), 1)]
    gt = ground_truth(objects)
    boxes = mask_boxes(np.stack([m for m, _ in objects])).tolist()
    m = metrics_of(gt, output(boxes, [c for _, c in objects], [0.9, 0.8, 0.7], [mk for mk, _ in objects]))
    for name in ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75", "box_ap_small"):
        assert m[name] == pytest.approx(1.0), (name, m)
    assert "box_ap_large" not in m and "mask_ap_medium" not in m  # no ground truth of those sizes


def test_half_of_the_objects_found_gives_51_of_101():
    """Two objects, one found exactly: precision 1 up to recall 0.5, so 51 of COCO's 101 recall points."""
    objects = [(square(x0=0, y0=0), 1), (square(x0=16, y0=16), 1)]
    m = metrics_of(ground_truth(objects), output([[0, 0, 10, 10]], [1], [0.9], [objects[0][0]]))
    for name in ("box_ap", "box_ap50", "box_ap75", "mask_ap"):
        assert m[name] == pytest.approx(51 / 101), (name, m)


def test_a_better_scored_false_positive_halves_precision():
    objects = [(square(x0=0, y0=0), 1)]
    wrong = square(x0=20, y0=20)
    m = metrics_of(ground_truth(objects), output([[20, 20, 30, 30], [0, 0, 10, 10]], [1, 1], [0.9, 0.8],
                                                 [wrong, objects[0][0]]))
    assert m["box_ap"] == pytest.approx(0.5) and m["mask_ap"] == pytest.approx(0.5)
    # the wrong class is no match at all
    m = metrics_of(ground_truth(objects), output([[0, 0, 10, 10]], [2], [0.9], [objects[0][0]]))
    assert m["box_ap"] == 0.0 and m["mask_ap"] == 0.0


def test_ap_averages_over_iou_thresholds():
    """Box IoU 0.62 matches at 0.50, 0.55, 0.60 of the ten thresholds; mask IoU 0.72 at five."""
    objects = [(square(x0=0, y0=0), 1)]
    pred_mask = np.zeros((32, 32), dtype=bool)
    pred_mask[:7, :10] = True
    pred_mask[7, :2] = True  # 72 of the square's 100 pixels
    m = metrics_of(ground_truth(objects), output([[0, 0, 10, 6.2]], [1], [0.9], [pred_mask]))
    assert m["box_ap"] == pytest.approx(0.3) and m["box_ap50"] == pytest.approx(1) and m["box_ap75"] == 0.0
    assert m["mask_ap"] == pytest.approx(0.5) and m["mask_ap50"] == pytest.approx(1) and m["mask_ap75"] == 0.0


def test_no_detections_score_zero():
    gt = ground_truth([(square(), 1)])
    assert coco_metrics(gt, [], [], [7]) == {"box_ap": 0.0, "box_ap50": 0.0, "box_ap75": 0.0,
                                              "box_ap_small": 0.0, "mask_ap": 0.0, "mask_ap50": 0.0,
                                              "mask_ap75": 0.0, "mask_ap_small": 0.0}


# --- synthetic scenes and COCO folders -------------------------------------------------------------
def test_synthetic_scenes_are_seeded_with_exact_disjoint_masks():
    a, b = scene(3, 64, 3, seed=1), scene(3, 64, 3, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(scene(3, 64, 3, seed=2)[0], a[0])
    assert not np.array_equal(scene(3, 64, 3, seed=1, split="val")[0], a[0])
    for i in range(20):
        image, masks, labels = scene(i, 64, 3, seed=0)
        assert image.shape == (64, 64, 3) and 1 <= len(masks) <= 3 and set(labels) <= {1, 2, 3}
        assert masks.sum(0).max() == 1  # the visible parts never overlap
        assert all(m.sum() >= MIN_AREA for m in masks)
        for m in masks:  # a shape is painted in one colour (+ small noise), unlike its surroundings
            inside = image[m].astype(float)
            assert inside.std(0).max() < 25


def test_flipped_items_keep_boxes_and_masks_together():
    torch.manual_seed(0)
    ds = SyntheticShapes(8, 64, 3, seed=0, split="train", flip=True)
    plain = SyntheticShapes(8, 64, 3, seed=0, split="train")
    flipped = 0
    for i in range(8):
        image, target = ds[i]
        ref_image, ref = plain[i]
        boxes = torch.from_numpy(mask_boxes(target["masks"].numpy().astype(bool)))
        torch.testing.assert_close(target["boxes"], boxes)
        flipped += not torch.equal(image, ref_image)
        if not torch.equal(image, ref_image):
            torch.testing.assert_close(image, ref_image.flip(-1))
    assert 0 < flipped < 8


def write_coco_folder(root, split, n, crowd=False):
    """``n`` synthetic scenes as PNG files and an instances JSON, COCO's layout; returns the dataset dict."""
    from PIL import Image

    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    items = []
    for i in range(n):
        image, masks, labels = scene(i, 64, 3, seed=5)
        Image.fromarray(image).save(root / split / f"{i + 100:012d}.png")
        items.append((i + 100, 64, 64, masks, [int(lb) * 10 for lb in labels]))  # category ids 10, 20, 30
    data = coco_from_targets(items, {10: "disk", 20: "square", 30: "triangle"}).dataset
    for img in data["images"]:
        img["file_name"] = f"{img['id']:012d}.png"
    if crowd:
        crowd_ann = dict(data["annotations"][0], id=10_000, iscrowd=1)
        data["annotations"].append(crowd_ann)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return data


def test_coco_folder_through_torchvision_wrappers(tmp_path):
    data = write_coco_folder(tmp_path, "train", 4, crowd=True)
    ds = CocoInstances(tmp_path, "train", None, seed=0, train=True)
    assert ds.label_to_category == {1: 10, 2: 20, 3: 30} and len(ds) == 4
    image, target = ds[0]
    raw, masks, labels = scene(0, 64, 3, seed=5)
    torch.testing.assert_close(image, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    assert target["labels"].tolist() == labels.tolist()  # contiguous labels; the crowd region left out
    assert torch.equal(target["masks"].bool(), torch.from_numpy(masks))
    torch.testing.assert_close(target["boxes"], torch.from_numpy(mask_boxes(masks)))
    assert target["image_id"] == 100 and len(data["annotations"]) > sum(1 for _ in range(len(labels)))
    assert len(CocoInstances(tmp_path, "train", 2, seed=0, train=True)) == 2


# --- the detector: which norm goes where, per-device heads -------------------------------------------
def norms_by_component(net):
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm, sn.SwitchNorm)):
            out.setdefault(component(name), set()).add((type(m).__name__, getattr(m, "devices", None)))
    return out


def test_norms_of_backbone_and_heads():
    net = build_detector(DetectConfig(norm="sn", batch="4x2", **TINY), num_classes=4)
    assert norms_by_component(net) == {"backbone": {("SwitchNorm2d", 4)}, "FPN": {("SwitchNorm2d", 4)},
                                       "box head": {("SwitchNorm2d", 1)}, "mask head": {("SwitchNorm2d", 1)}}
    net = build_detector(DetectConfig(norm="bn-frozen", **TINY), num_classes=4)  # heads without norm
    assert norms_by_component(net) == {"backbone": {("FrozenBatchNorm2d", None)}}
    net = build_detector(DetectConfig(norm="bn-frozen", head_norm="gn", rpn_norm=True, arch="fasterrcnn", **TINY), 4)
    assert norms_by_component(net) == {"backbone": {("FrozenBatchNorm2d", None)}, "FPN": {("GroupNorm", None)},
                                       "RPN": {("GroupNorm", None)}, "box head": {("GroupNorm", None)}}


def test_heads_compute_batch_statistics_within_each_device():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), sn.make_norm("bn", 4), nn.ReLU(), nn.Flatten())
    pool = CountingRoIAlign(["0"], 7, 2)
    split = DeviceSplit(head, devices=2, pool=pool).train()
    pool.counts = [3, 1, 2, 2]  # 4 images, 2 per device: RoIs 0-3 on device 0, 4-7 on device 1
    x = torch.randn(8, 3, 5, 5)
    expected = torch.cat([head(x[:4]), head(x[4:])])
    torch.testing.assert_close(split(x), expected)
    assert not torch.allclose(head(x), expected, atol=1e-3)  # statistics over both devices differ
    pool.counts = [3, 2, 3]
    with pytest.raises(ValueError, match="3 images with 8 RoIs cannot be split over 2 devices"):
        split(x)
    split.eval()  # running statistics: one pass, whatever the counts
    torch.testing.assert_close(split(x), head.eval()(x))


def test_a_training_step_uses_every_part_and_learns_the_logits():
    torch.manual_seed(0)
    cfg = DetectConfig(norm="sn", batch="2x1", **TINY)
    net = build_detector(cfg, num_classes=4).train()
    ds = SyntheticShapes(2, 64, 3, seed=0, split="train")
    images, targets = zip(*(ds[i] for i in range(2)))
    losses = net(list(images), list(targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    for name, layer in sn.switch_norm_layers(net):
        assert layer.mean_weight.grad is not None and layer.mean_weight.grad.abs().sum() > 0, name


def test_backbone_from_a_classification_checkpoint(tmp_path):
    torch.manual_seed(0)
    trained = resnet_body("resnet10", lambda c: nn.BatchNorm2d(c))
    for m in trained.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.weight.data.uniform_(0.5, 2)
    torch.save({"state_dict": {f"net.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "last.ckpt")
    net = build_detector(DetectConfig(norm="bn-frozen", backbone_checkpoint=str(tmp_path / "last.ckpt"),
                                      **TINY), num_classes=4)
    torch.testing.assert_close(net.backbone.body.layer2[0].bn1.running_mean, trained.layer2[0].bn1.running_mean)
    torch.testing.assert_close(net.backbone.body.conv1.weight, trained.conv1.weight)
    with pytest.raises(ValueError, match="does not fit this backbone and norm"):
        load_backbone(resnet_body("resnet10", lambda c: sn.make_norm("sn", c)), str(tmp_path / "last.ckpt"))
    with pytest.raises(ValueError, match="not found"):
        load_backbone(trained, str(tmp_path / "missing.ckpt"))


# --- schedule, optimizer, config ---------------------------------------------------------------------
def test_warm_up_and_step_schedule():
    assert lr_factor(0, 1000, 100, 1 / 3, (0.667, 0.889)) == pytest.approx(1 / 3)
    assert lr_factor(50, 1000, 100, 1 / 3, (0.667, 0.889)) == pytest.approx(2 / 3)
    assert [lr_factor(s, 1000, 100, 1 / 3, (0.667, 0.889)) for s in (100, 666, 667, 888, 889, 999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_no_weight_decay_on_gammas_betas_and_logits():
    cfg = DetectConfig(norm="sn", logit_lr_scale=10, **TINY)
    net = build_detector(cfg, num_classes=4)
    groups = optimizer_groups(net, cfg)
    by_id = {id(p): g for g in groups for p in g["params"]}
    layer = net.roi_heads.mask_head[0][1]
    assert by_id[id(layer.weight)]["weight_decay"] == 0 and by_id[id(layer.bias)]["weight_decay"] == 0
    assert by_id[id(layer.mean_weight)]["weight_decay"] == 0 and by_id[id(layer.mean_weight)]["lr"] == cfg.lr * 10
    assert by_id[id(net.roi_heads.mask_head[0][0].weight)]["weight_decay"] == cfg.weight_decay
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("overrides, message", [
    (dict(norm="nope"), "unknown norm 'nope'; known: bn-frozen"),
    (dict(head_norm="bn-frozen"), "head_norm 'bn-frozen' would freeze"),
    (dict(anchor_sizes=(8, 16)), "anchor_sizes needs 5 positive sizes"),
    (dict(lr_milestones=(0.5, 1.5)), "lr_milestones are fractions"),
    (dict(min_size=128, max_size=64), "max_size (64) must be >= min_size (128)"),
    (dict(batch="8by2"), "8by2"),
    (dict(arch="yolo"), "unknown arch 'yolo'"),
    (dict(train_images=None), "synthetic data needs a number of train_images"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError) as err:
        DetectConfig(**overrides).validate()
    assert message in str(err.value)


def test_head_norm_auto_follows_the_backbone_but_not_frozen_bn():
    assert DetectConfig(norm="gn").head_norm == "gn"
    assert DetectConfig(norm="bn-frozen").head_norm == "none"
    assert DetectConfig(norm="bn-frozen", head_norm="sn").head_norm == "sn"


def test_components_of_layer_names():
    names = {"backbone.body.bn1": ("backbone", "backbone stem"),
             "backbone.body.layer3.0.downsample.1": ("backbone", "backbone layer3"),
             "backbone.fpn.inner_blocks.0.1": ("FPN", "FPN"), "rpn.head.conv.0.1": ("RPN", "RPN"),
             "roi_heads.box_head.2.1": ("box head", "box head"),
             "roi_heads.mask_head.0.1": ("mask head", "mask head"), "stem.1": ("other", "other")}
    for layer, (coarse, fine) in names.items():
        assert (component(layer), component(layer, stages=True)) == (coarse, fine), layer
