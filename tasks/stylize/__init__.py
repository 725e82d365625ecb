"""Feed-forward artistic style transfer with BN, IN or SN (Sec. 4.3, Fig. 6a, Fig. 9).

    python -m tasks.stylize                              # a small real run on bundled photos
    python -m tasks.stylize --norm in --style PATH --content-dir DIR
    python -m tasks.stylize --experiment stylize-quick   # in, bn and sn, same seeds and data
    python -m tasks.stylize apply IMAGE --checkpoint RUN_DIR --out OUT.png
    python -m tasks.stylize --help                       # every config key

Batch setting ``GxS`` as in the paper's (1, 4): G*S crops per step, batch statistics within
each of the G chunks. The run records which perceptual network it used (``perceptual_net``:
``vgg16-imagenet``; ``random-multiscale``, random filters, the loud fallback when no ImageNet
weights are on disk; or ``vgg16-random-init`` on request) in ``config.yaml`` and in
``summary.json``'s ``final``. The guide: ``docs/stylize.md``.

- ``config``: :class:`StylizeConfig`.
- ``model``: :class:`TransformerNet`, Johnson et al.'s transformation network.
- ``perceptual``: the frozen perceptual networks and the content, style and total-variation losses.
- ``images``: bundled photos and styles, image files, crops, sample grids, PNG output.
- ``data``: :class:`StylizeData`, the LightningDataModule of content crops in a fixed order.
- ``module``: :class:`StylizeModule`, the LightningModule.
- ``apply``: the ``apply`` command (a trained network on an image file).
- ``task``: ``train`` (one run) and ``TASK``; ``__main__``: the command line.
"""
