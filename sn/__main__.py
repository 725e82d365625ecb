"""``python -m sn``: a one-minute demonstration of the library on synthetic data.

Trains the same small CNN with SN in two batch settings, (1 device x 32 samples) and
(16 devices x 2 samples), and prints what SN chose in each: the paper's Fig. 4 in miniature.
"""
import argparse
import time

import torch
from torch import nn

import sn


def small_cnn(devices: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), sn.SwitchNorm2d(16, devices=devices), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), sn.SwitchNorm2d(32, devices=devices), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), sn.SwitchNorm2d(32, devices=devices), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
    )


def synthetic_batch(n: int, generator: torch.Generator):
    """Four classes of 16x16 images: a bright square in one of the quadrants, plus noise."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    x = torch.randn(n, 1, 16, 16, generator=generator) * 0.5
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        x[i, 0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 2.0
    return x, labels


def run(devices: int, per_device: int, steps: int, seed: int):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = small_cnn(devices)
    opt = torch.optim.SGD(sn.param_groups(model, 1e-4), lr=0.05, momentum=0.9)
    for _ in range(steps):
        x, y = synthetic_batch(devices * per_device, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sn.update_stats(model, (synthetic_batch(devices * per_device, gen) for _ in range(10)), num_batches=10)
    model.eval()
    x, y = synthetic_batch(512, gen)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return model, acc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="training steps per setting (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for devices, per_device in [(1, 32), (16, 2)]:
        start = time.perf_counter()
        model, acc = run(devices, per_device, args.steps, args.seed)
        print(f"\nbatch setting ({devices}, {per_device}): test accuracy {acc:.1%} "
              f"({time.perf_counter() - start:.1f}s); average importance weights over the SN layers:")
        records = sn.switch_weights(model)
        for stat in ("mean", "var"):
            avg = {op: sum(r["weight"] for r in records if r["stat"] == stat and r["op"] == op)
                   / sum(1 for r in records if r["stat"] == stat and r["op"] == op) for op in ("in", "ln", "bn")}
            print(f"  {stat:4s}  " + "  ".join(f"{op}={w:.2f}" for op, w in avg.items()))


if __name__ == "__main__":
    main()
