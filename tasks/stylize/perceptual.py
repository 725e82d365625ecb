"""The perceptual losses of feed-forward style transfer, measured by a frozen VGG16.

- :class:`PerceptualNet`: torchvision's VGG16 ``features`` up to relu4_3, frozen, fed with
  ImageNet-normalized images. :func:`load_perceptual_net` uses ImageNet weights whenever they
  are on disk (torch hub cache or a given file) and otherwise falls back, loudly, to a seeded
  random initialisation; the result's ``label`` is what the run records (``vgg16-imagenet`` or
  ``vgg16-random-init``).
- :class:`RandomMultiScaleNet` (``random-multiscale``): one layer of seeded random filters at
  seven sizes (1x1 to 23x23), each followed by a ReLU, after Ustyuzhaninov et al., "What does it
  take to generate natural textures?" (ICLR 2017): the fallback of ``auto`` when no ImageNet
  weights are on disk, because a random-init VGG16's Gram matrices do not describe a texture
  (matched to 1e-3 by pixel optimisation they still give noise), while these do.
- :data:`NET_DEFAULTS`: each network's content layers and loss weights.
- :func:`gram_matrix`, :func:`content_loss`, :func:`style_loss`, :func:`tv_loss` and
  :class:`PerceptualLoss`, which combines them with configurable weights.

Images are float tensors in [0, 1], shape ``(N, 3, H, W)``.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.data import IMAGENET_STATS
from .model import check_images

log = logging.getLogger(__name__)

# torchvision's file name for VGG16_Weights.IMAGENET1K_V1 in the torch hub cache
VGG16_IMAGENET_FILE = "vgg16-397923af.pth"
PERCEPTUAL_NETS = ("vgg16-imagenet", "vgg16-random-init", "random-multiscale")
# index of each ReLU in torchvision's vgg16().features
VGG16_RELU_INDEX = {
    "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
    "relu3_3": 15, "relu4_1": 18, "relu4_2": 20, "relu4_3": 22,
}
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
# the random multi-scale filter bank: filter sizes and filters per size
MULTISCALE_SIZES = (1, 3, 5, 7, 11, 15, 23)
MULTISCALE_CHANNELS = 64
MULTISCALE_LAYERS = tuple(f"k{k}" for k in MULTISCALE_SIZES)

# per network: the content layers (comma-separated), the style layers and the default loss
# weights (the network's ``relative_losses`` says whether its losses are relative).
# ImageNet VGG16: PyTorch's fast_neural_style example; random-init VGG16: the same 1e5 ratio at
# a unit content weight; random-multiscale: measured on the bundled photos and the ihc style
# (64x64 crops, 750 steps: style 3 is where the style's colours and strokes appear).
NET_DEFAULTS = {
    "vgg16-imagenet": {"content_layer": "relu2_2", "style_layers": STYLE_LAYERS,
                       "content_weight": 1e5, "style_weight": 1e10},
    "vgg16-random-init": {"content_layer": "relu2_2", "style_layers": STYLE_LAYERS,
                          "content_weight": 1.0, "style_weight": 1e5},
    "random-multiscale": {"content_layer": "k3,k5", "style_layers": MULTISCALE_LAYERS,
                          "content_weight": 1.0, "style_weight": 3.0},
}


def layers_of(kind: str) -> tuple:
    """The layer names a perceptual network offers (for content and style losses)."""
    if kind not in PERCEPTUAL_NETS:
        raise ValueError(f"unknown perceptual network {kind!r}; known: {', '.join(PERCEPTUAL_NETS)}")
    return MULTISCALE_LAYERS if kind == "random-multiscale" else tuple(VGG16_RELU_INDEX)


def content_layers(spec: str, kind: str) -> tuple:
    """The content layers of a comma-separated ``spec`` (e.g. ``"relu2_2"``, ``"k3,k5"``) for
    the network ``kind``; ValueError naming an unknown or empty one."""
    names = tuple(part.strip() for part in str(spec).split(","))
    known = layers_of(kind)
    bad = [name for name in names if name not in known]
    if not names or bad:
        raise ValueError(f"content_layer {spec!r}: {bad or 'empty'} not layers of {kind}; known: {', '.join(known)}")
    return names


# ----------------------------------------------------------------------------------------
# Perceptual network
# ----------------------------------------------------------------------------------------
class PerceptualNet(nn.Module):
    """Frozen VGG16 ``features`` up to the deepest requested ReLU.

    ``forward(images)`` ImageNet-normalizes images in [0, 1] and returns ``{layer name:
    activation}`` for ``layers`` (names of :data:`VGG16_RELU_INDEX`). The network stays in
    eval mode and has no trainable parameters; gradients still flow to the input.
    """

    relative_losses = False

    def __init__(self, features: nn.Sequential, layers: Sequence[str], label: str):
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_RELU_INDEX]
        if unknown:
            raise ValueError(f"unknown VGG16 layers {unknown}; known: {list(VGG16_RELU_INDEX)}")
        self.layers = tuple(sorted(set(layers), key=VGG16_RELU_INDEX.get))
        last = VGG16_RELU_INDEX[self.layers[-1]]
        # non-inplace ReLUs, so the activations we return are never overwritten
        self.features = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in features[: last + 1]])
        self.label = label
        self.register_buffer("mean", torch.tensor(IMAGENET_STATS[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STATS[1]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualNet":
        """Always eval mode: the perceptual network is a fixed measuring instrument."""
        return super().train(False)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        wanted = {VGG16_RELU_INDEX[name]: name for name in self.layers}
        h = (images - self.mean) / self.std
        out = {}
        for index, module in enumerate(self.features):
            h = module(h)
            if index in wanted:
                out[wanted[index]] = h
        return out


class RandomMultiScaleNet(nn.Module):
    """One layer of seeded random filters at several sizes, each followed by a ReLU.

    Each of ``channels`` filters per size ``k`` (``sizes``) has weights drawn uniformly from
    [-1, 1] and scaled to unit L2 norm; they see the image minus 0.5, without padding (so the
    statistics are never those of a border) and without bias. ``forward(images)`` returns
    ``{"k<size>": (N, channels, H - k + 1, W - k + 1)}``; images must be at least as large as
    the largest filter. The filters are not zero-mean, so the 1x1 and larger filters also see the
    image's colours. Frozen, always in eval mode; gradients flow to the input.
    """

    relative_losses = True

    def __init__(self, seed: int = 0, sizes: Sequence[int] = MULTISCALE_SIZES, channels: int = MULTISCALE_CHANNELS):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        for k in sizes:
            with torch.random.fork_rng(devices=[]):  # (nn.Conv2d's own init would draw from the global RNG)
                conv = nn.Conv2d(3, channels, k, bias=False)
            weight = torch.rand(channels, 3, k, k, generator=generator) * 2 - 1
            conv.weight.data.copy_(weight / weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            self.convs.append(conv)
        self.layers = tuple(f"k{k}" for k in sizes)
        self.min_size = max(sizes)
        self.label = "random-multiscale"
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "RandomMultiScaleNet":
        """Always eval mode: the perceptual network is a fixed measuring instrument."""
        return super().train(False)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(f"the random-multiscale perceptual network needs images of at least "
                             f"{self.min_size}x{self.min_size}, got {tuple(images.shape[-2:])}")
        h = images - 0.5
        return {name: F.relu(conv(h)) for name, conv in zip(self.layers, self.convs)}


# torchvision's VGG16 ("configuration D"): conv widths, "M" for 2x2 max pooling
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional part with torchvision's module layout (so its state-dict keys
    ``features.*`` load) and torchvision's initialisation (Kaiming normal, fan-out, zero bias),
    without building the 120M-parameter classifier."""
    layers, c_in = [], 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(c_in, item, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        c_in = item
    return nn.Sequential(*layers)


def find_vgg_weights(path: Optional[str] = None) -> Optional[Path]:
    """The VGG16 ImageNet weight file to use: ``path`` if given (it must exist), else the torch
    hub cache's ``checkpoints/vgg16-397923af.pth`` if present, else ``None``."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"--vgg-weights {str(path)!r} is not a file")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_IMAGENET_FILE
    return cached if cached.is_file() else None


def _features_state(state: dict, source: Path) -> dict:
    """The ``features.*`` part of a torchvision VGG16 state dict (or a features-only one)."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{str(source)!r} does not hold a VGG16 state dict")
    return state


def load_perceptual_net(weights: Optional[str] = None, seed: int = 0,
                        layers: Iterable[str] = STYLE_LAYERS, kind: str = "auto"):
    """Build the frozen perceptual network.

    ``kind="auto"`` uses VGG16 with ImageNet weights from ``weights`` (a torchvision VGG16 state
    dict file) or from the torch hub cache when present; it never downloads. Otherwise it falls
    back, with a prominent warning, to :class:`RandomMultiScaleNet` from ``seed``.
    ``kind="vgg16-imagenet"`` requires the weights; ``"vgg16-random-init"`` is VGG16 initialised
    with torchvision's scheme (:func:`vgg16_features`) from ``seed``; ``"random-multiscale"`` the
    random filter bank. Both random networks warn, and leave the global RNG untouched.
    ``layers``: the VGG16 layers to return (the filter bank always returns all of its own).
    The result's ``label`` says which network it is.

    Raises:
        ValueError: unknown ``kind``; ``weights`` is not a file or not a VGG16 state dict;
            ImageNet weights required but not found.
    """
    if kind not in ("auto",) + PERCEPTUAL_NETS:
        raise ValueError(f"unknown perceptual network {kind!r}; known: auto, {', '.join(PERCEPTUAL_NETS)}")
    path = find_vgg_weights(weights) if kind in ("auto", "vgg16-imagenet") else None
    if path is None and kind == "vgg16-imagenet":
        raise ValueError("VGG16 ImageNet weights not found: pass --vgg-weights PATH or put "
                         f"{VGG16_IMAGENET_FILE} into {Path(torch.hub.get_dir()) / 'checkpoints'}")
    if path is not None:
        with torch.random.fork_rng(devices=[]):
            features = vgg16_features()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable or not a torch file
            raise ValueError(f"cannot read VGG16 weights from {str(path)!r}: {exc}") from exc
        try:
            features.load_state_dict(_features_state(state, path))
        except RuntimeError as exc:
            raise ValueError(f"{str(path)!r} does not match torchvision's VGG16: {exc}") from exc
        log.info("perceptual network: VGG16 with ImageNet weights from %s", path)
        return PerceptualNet(features, tuple(layers), "vgg16-imagenet")
    if kind == "vgg16-random-init":
        why, what = "a random-init VGG16 was requested", f"a RANDOMLY INITIALISED VGG16 (seed {seed})"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = PerceptualNet(vgg16_features(), tuple(layers), "vgg16-random-init")
    else:
        why = ("random multi-scale filters were requested" if kind == "random-multiscale" else
               "VGG16 ImageNet weights not found (looked for --vgg-weights and "
               f"{Path(torch.hub.get_dir()) / 'checkpoints' / VGG16_IMAGENET_FILE})")
        what = f"RANDOM MULTI-SCALE FILTERS (one layer, 1x1 to 23x23, seed {seed})"
        net = RandomMultiScaleNet(seed)
    message = (
        "\n" + "!" * 78 + "\n" + why + ".\n"
        f"Using {what} as the perceptual network.\n"
        "Losses and stylizations are NOT comparable to the paper's; the run is recorded as\n"
        f"perceptual_net: {net.label}. For ImageNet weights put torchvision's {VGG16_IMAGENET_FILE}\n"
        "into the torch hub cache's checkpoints/ folder or pass --vgg-weights PATH.\n"
        + "!" * 78
    )
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return net


# ----------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------
def gram_matrix(features: Tensor) -> Tensor:
    """Gram matrices ``G[n, c, d] = sum_hw F[n, c, hw] F[n, d, hw] / (C * H * W)``.

    Shape: ``(N, C, H, W) -> (N, C, C)`` (Johnson et al.'s normalization).
    """
    if features.dim() != 4:
        raise ValueError(f"gram_matrix expects (N, C, H, W) features, got {tuple(features.shape)}")
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)  # (N, C, H*W)
    return flat @ flat.transpose(1, 2) / (c * h * w)  # (N, C, C)


def content_loss(features: Tensor, target: Tensor, relative: bool = False) -> Tensor:
    """Mean squared difference of two activations (the feature reconstruction loss); ``relative``
    divides it by the target's mean square."""
    loss = F.mse_loss(features, target)
    return loss / target.pow(2).mean().clamp_min(1e-12) if relative else loss


def style_loss(features: Dict[str, Tensor], style_grams: Dict[str, Tensor], relative: bool = False) -> Tensor:
    """Sum over layers of the mean squared difference of Gram matrices; ``relative`` divides
    each layer's by the mean square of its target Gram matrix.

    ``style_grams[layer]`` has shape ``(1, C, C)`` (one style image, broadcast over the batch)
    or ``(N, C, C)``.
    """
    total = 0.0
    for layer, target in style_grams.items():
        gram = gram_matrix(features[layer])
        loss = F.mse_loss(gram, target.expand_as(gram))
        total = total + (loss / target.pow(2).mean().clamp_min(1e-12) if relative else loss)
    return total


def tv_loss(images: Tensor) -> Tensor:
    """Total variation: mean squared difference of vertically plus horizontally adjacent pixels."""
    dh = images[..., 1:, :] - images[..., :-1, :]
    dw = images[..., :, 1:] - images[..., :, :-1]
    return dh.pow(2).mean() + dw.pow(2).mean()


class PerceptualLoss(nn.Module):
    """Johnson et al.'s objective: ``content_weight * content + style_weight * style + tv_weight * tv``.

    Args:
        net: the :class:`PerceptualNet` or :class:`RandomMultiScaleNet`; its ``relative_losses``
            says whether each layer's error is divided by its target's mean square.
        style_image: ``(1, 3, H, W)`` style target in [0, 1]; its Gram matrices are computed once.
        content_layer: the layer (or a sequence of layers, or comma-separated names) of the
            content loss, summed over layers. Default: ``"relu2_2"``
        style_layers: layers of the style loss. Default: the network's (relu1_2, relu2_2,
            relu3_3, relu4_3 for VGG16; every filter size for the filter bank)
        content_weight, style_weight, tv_weight: the loss weights.

    ``forward(output, content)`` returns a dict of scalar tensors ``content_loss``,
    ``style_loss``, ``tv_loss`` (all unweighted) and ``total_loss`` (weighted sum).
    """

    def __init__(self, net: nn.Module, style_image: Tensor, *, content_layer="relu2_2",
                 style_layers: Optional[Sequence[str]] = None, content_weight: float = 1.0,
                 style_weight: float = 1.0, tv_weight: float = 0.0):
        super().__init__()
        if isinstance(content_layer, str):
            content_layer = [part.strip() for part in content_layer.split(",")]
        style_layers = tuple(style_layers) if style_layers is not None else NET_DEFAULTS[net.label]["style_layers"]
        missing = [name for name in (*content_layer, *style_layers) if name not in net.layers]
        if missing:
            raise ValueError(f"perceptual network {net.label} lacks layers {missing}; it has {net.layers}")
        for name, value in (("content_weight", content_weight), ("style_weight", style_weight),
                            ("tv_weight", tv_weight)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        check_images(style_image, "style image")
        self.net = net
        self.relative = bool(net.relative_losses)
        self.content_layers = tuple(content_layer)
        self.style_layers = style_layers
        self.weights = (float(content_weight), float(style_weight), float(tv_weight))
        with torch.no_grad():
            feats = net(style_image[:1])
        for layer in self.style_layers:
            self.register_buffer(f"gram_{layer}", gram_matrix(feats[layer]), persistent=False)

    def style_grams(self) -> Dict[str, Tensor]:
        return {layer: getattr(self, f"gram_{layer}") for layer in self.style_layers}

    def forward(self, output: Tensor, content: Tensor) -> Dict[str, Tensor]:
        with torch.no_grad():
            targets = self.net(content)
        feats = self.net(output)
        losses = {
            "content_loss": sum(content_loss(feats[layer], targets[layer], self.relative)
                                for layer in self.content_layers),
            "style_loss": style_loss(feats, self.style_grams(), self.relative),
            "tv_loss": tv_loss(output),
        }
        wc, ws, wt = self.weights
        losses["total_loss"] = wc * losses["content_loss"] + ws * losses["style_loss"] + wt * losses["tv_loss"]
        return losses
