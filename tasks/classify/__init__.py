"""Image classification under the paper's batch settings (Table 2, Fig. 2, Fig. 4).

    python -m tasks.classify                              # a short real run on Fashion-MNIST
    python -m tasks.classify --norm gn --batch 8x2 --epochs 3
    python -m tasks.classify --experiment table2-quick    # a grid from experiments.yaml
    python -m tasks.classify --help                       # every config key

Batch setting ``GxS``: G virtual devices of S samples. The loader yields G*S images, the
gradient is the mean over all of them, and every batch statistic (the BN baseline's and SN's
BN branch) is computed within each device's S samples (``sn.make_norm(norm, C, devices=G)``).
The learning rate scales linearly: ``lr = base_lr * G*S / ref_batch``. The guide:
``docs/classify.md``.

- ``config``: :class:`ClassifyConfig`, every key with its default, help and bounds.
- ``model``: :class:`CifarResNet` (He et al.'s ResNet-(6n+2)) and torchvision's ResNet-50,
  with every norm from ``sn.make_norm``.
- ``data``: :class:`ClassifyData`, the LightningDataModule (train / validation / test).
- ``module``: :class:`ClassifyModule`, the LightningModule (SGD, schedules, batch average).
- ``task``: ``train`` (one run) and ``TASK``; ``__main__``: the command line.
"""
