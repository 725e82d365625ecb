"""Datasets shared by the tasks, read from local files; nothing is downloaded unless asked.

API:
    DEBIAN_FASHION_MNIST                          where Debian's dataset-fashion-mnist puts its files
    fashion_mnist(root, download=False) -> (train, test)   torchvision datasets (uint8 .data, .targets)
    cifar10(root, download=False) -> (train, test)         torchvision datasets (uint8 HWC .data)
    image_folder(root) -> (train, val)            torchvision ImageFolder for root/train and root/val
    synthetic_images(n, shape, classes, seed) -> (images uint8 (N,C,H,W), labels)
    tensor_images(name, root, download, synthetic_seed) -> TensorImages
                                                  fashion-mnist, cifar10 or synthetic as uint8
                                                  tensors with their per-channel statistics
    train_val_datasets(images, labels, stats, val_size, seed, ...) -> (train, val)
                                                  a seeded validation split of training tensors
    TensorImageDataset(images, labels, mean, std, pad=0, flip=False)  normalised tensors, with
                                                  random-crop / flip augmentation when asked
    split_indices(n, sizes, seed) -> list of index tensors      disjoint random subsets
    DataMissing                                   the error for absent data (says how to get it)
    FASHION_MNIST_STATS, CIFAR10_STATS, SYNTHETIC_STATS, IMAGENET_STATS   (mean, std) per channel

Fashion-MNIST: the Debian package ships the idx ``.gz`` files; torchvision's reader only
finds uncompressed files in ``<root>/FashionMNIST/raw/``, so :func:`fashion_mnist`
decompresses them there once (``root`` is our cache, e.g. ``~/.cache/switchnorm/data``).
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

DEBIAN_FASHION_MNIST = Path(os.environ.get("SWITCHNORM_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# per-channel (mean, std) in the [0, 1] scale
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
SYNTHETIC_STATS = ((0.5,), (0.25,))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TENSOR_DATASETS = ("fashion-mnist", "cifar10", "synthetic")
SYNTHETIC_SIZES = (6000, 1000)  # train, test


class DataMissing(FileNotFoundError):
    """A dataset is not on this machine; the message says how to get it."""


def _extract_gz(src: Path, dst: Path) -> None:
    """Decompress ``src`` into ``dst`` through a temporary file (no half-written files)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=1 << 20)
    os.replace(tmp, dst)


def prepare_fashion_mnist(root, source: Path = None) -> bool:
    """Decompress the Debian package's files into ``root/FashionMNIST/raw``; True when ready."""
    source = Path(source or DEBIAN_FASHION_MNIST)
    raw = Path(root).expanduser() / "FashionMNIST" / "raw"
    if all((raw / name).exists() for name in FASHION_MNIST_FILES):
        return True
    if not all((source / f"{name}.gz").exists() for name in FASHION_MNIST_FILES):
        return False
    for name in FASHION_MNIST_FILES:
        if not (raw / name).exists():
            _extract_gz(source / f"{name}.gz", raw / name)
    return True


def fashion_mnist(root, download: bool = False):
    """Fashion-MNIST ``(train, test)`` as torchvision datasets (60000 / 10000 images, 28x28).

    Looks in ``root`` (our cache), then in the Debian package's folder (decompressed into
    ``root``), then downloads with torchvision only when ``download`` is true.

    Raises:
        DataMissing: none of those worked.
    """
    from torchvision.datasets import FashionMNIST

    root = Path(root).expanduser()
    if not prepare_fashion_mnist(root) and not download:
        raise DataMissing(
            f"Fashion-MNIST not found in {root / 'FashionMNIST' / 'raw'} nor in {DEBIAN_FASHION_MNIST}. "
            "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass "
            "--download to let torchvision fetch it, or --data-root DIR with DIR/FashionMNIST/raw/ in it.")
    return (FashionMNIST(str(root), train=True, download=download),
            FashionMNIST(str(root), train=False, download=download))


def cifar10(root, download: bool = False):
    """CIFAR-10 ``(train, test)`` as torchvision datasets, from ``root/cifar-10-batches-py``.

    Raises:
        DataMissing: not in ``root`` and ``download`` is false.
    """
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser()
    if not (root / "cifar-10-batches-py").is_dir() and not download:
        raise DataMissing(
            f"CIFAR-10 not found in {root / 'cifar-10-batches-py'}. Pass --download to let torchvision "
            "fetch it (needs internet), or --data-root DIR where DIR/cifar-10-batches-py/ holds the "
            "python version from https://www.cs.toronto.edu/~kriz/cifar.html")
    return CIFAR10(str(root), train=True, download=download), CIFAR10(str(root), train=False, download=download)


def image_folder(root, train_transform=None, val_transform=None):
    """``(train, val)`` ImageFolder datasets from ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Raises:
        DataMissing: either folder is missing.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataMissing(
                f"image folder dataset: {root / sub} not found. Pass --data-root DIR where DIR/train/<class>/ "
                "and DIR/val/<class>/ hold the images (ImageNet's layout after the usual val preparation).")
    return ImageFolder(str(root / "train"), train_transform), ImageFolder(str(root / "val"), val_transform)


def synthetic_images(n: int, shape: Sequence[int] = (1, 28, 28), classes: int = 10, seed: int = 0,
                     noise: float = 0.3) -> Tuple[torch.Tensor, torch.Tensor]:
    """A learnable stand-in for an image dataset: noisy gratings, as uint8.

    Class ``c`` is a sinusoidal grating with orientation ``(c % 5) * 36`` degrees and
    period 4 or 8 pixels (``c // 5``; more classes cycle through more periods), with a random
    phase per image, plus Gaussian noise of std ``noise`` (in units of the [0, 1] range),
    clipped and quantised. Local, translation-invariant features, as a CNN likes them.

    Returns:
        ``(images (n, C, H, W) uint8, labels (n,) int64)``
    """
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    angle = (labels % 5).float() * (torch.pi / 5)
    period = 4.0 * 2 ** (labels // 5).float()
    phase = 2 * torch.pi * torch.rand(n, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")  # (H, W)
    proj = xx * angle.cos().view(n, 1, 1) + yy * angle.sin().view(n, 1, 1)  # (n, H, W)
    images = 0.5 + 0.35 * torch.sin(2 * torch.pi * proj / period.view(n, 1, 1) + phase.view(n, 1, 1))
    images = images.unsqueeze(1).expand(n, c, h, w)  # (n, C, H, W)
    images = images + noise * torch.randn((n, c, h, w), generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


@dataclasses.dataclass
class TensorImages:
    """A dataset held as uint8 tensors: training and test images and labels, and statistics."""

    train_images: torch.Tensor  # (N, C, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    stats: Tuple[Tuple[float, ...], Tuple[float, ...]]  # per-channel (mean, std) in [0, 1]
    pad: int  # the random-crop padding used for augmentation (2 for 28x28, 4 for 32x32)
    num_classes: int = 10

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]


def tensor_images(name: str, root, download: bool = False, synthetic_seed: int = 1) -> TensorImages:
    """``fashion-mnist``, ``cifar10`` or ``synthetic`` as :class:`TensorImages`.

    ``synthetic`` is :func:`synthetic_images`: 6000 training images from ``synthetic_seed`` and
    1000 test images from ``synthetic_seed + 1``, Fashion-MNIST-shaped.

    Raises:
        ValueError: an unknown name. DataMissing: the data is not on this machine.
    """
    if name == "fashion-mnist":
        train, test = fashion_mnist(root, download)
        return TensorImages(train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets,
                            FASHION_MNIST_STATS, pad=2)
    if name == "cifar10":
        train, test = cifar10(root, download)
        # (N, H, W, C) uint8 numpy -> (N, C, H, W)
        return TensorImages(torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(train.targets),
                            torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(test.targets),
                            CIFAR10_STATS, pad=4)
    if name == "synthetic":
        train_x, train_y = synthetic_images(SYNTHETIC_SIZES[0], seed=synthetic_seed)
        test_x, test_y = synthetic_images(SYNTHETIC_SIZES[1], seed=synthetic_seed + 1)
        return TensorImages(train_x, train_y, test_x, test_y, SYNTHETIC_STATS, pad=2)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(TENSOR_DATASETS)}")


def train_val_datasets(images: torch.Tensor, labels: torch.Tensor, stats, val_size: int, seed: int,
                       train_subset: Optional[int] = None, pad: int = 0, flip: bool = False):
    """``(train, val)`` datasets (:class:`TensorImageDataset`), ``val_size`` images held out (seeded).

    The training part keeps ``train_subset`` of the rest (all when None) and is augmented with
    random crops from a ``pad``-pixel border (0: none) and horizontal flips (``flip``); the
    validation part is not augmented.

    Raises:
        ValueError: ``val_size`` leaves no training images.
    """
    if val_size >= len(labels):
        raise ValueError(f"val_size={val_size} leaves no training images out of {len(labels)}")
    val_idx, train_idx = split_indices(len(labels), [val_size, None], seed)
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    train = TensorImageDataset(images[train_idx], labels[train_idx], *stats, pad=pad, flip=flip)
    return train, TensorImageDataset(images[val_idx], labels[val_idx], *stats)


class TensorImageDataset(Dataset):
    """Images held as one uint8 tensor, normalised on access, with optional augmentation.

    Args:
        images: ``(N, C, H, W)`` uint8 (or ``(N, H, W)``, given one channel).
        labels: ``(N,)`` integer labels.
        mean, std: per-channel normalisation in the [0, 1] scale.
        pad: random crop of the original size from the image zero-padded by ``pad`` pixels
            (0: no crop).
        flip: random horizontal flips.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 pad: int = 0, flip: bool = False) -> None:
        if images.dim() == 3:
            images = images.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()
        self.size = images.shape[-2:]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.pad, self.flip = int(pad), bool(flip)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255)  # (C, H, W) in [0, 1]
        x = (x - self.mean) / self.std
        if self.pad:
            h, w = self.size
            x = torch.nn.functional.pad(x, (self.pad,) * 4)
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = x[:, dy:dy + h, dx:dx + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


def split_indices(n: int, sizes: Sequence[Optional[int]], seed: int = 0) -> List[torch.Tensor]:
    """Disjoint random subsets of ``range(n)`` with the given sizes (one None: all that is left).

    Raises:
        ValueError: the sizes add up to more than ``n``, or one is negative.
    """
    fixed = [s for s in sizes if s is not None]
    if len(sizes) - len(fixed) > 1:
        raise ValueError(f"at most one subset size may be None, got {list(sizes)}")
    if any(s < 0 for s in fixed) or sum(fixed) > n:
        raise ValueError(f"cannot take subsets of sizes {list(sizes)} from {n} items")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    rest = n - sum(fixed)
    for s in sizes:
        k = rest if s is None else s
        out.append(perm[start:start + k])
        start += k
    return out
