"""Architecture search with a normalized LSTM controller (SN paper Sec. 4.4, Fig. 6b).

    python -m tasks.enas                                  # a small real search on Fashion-MNIST
    python -m tasks.enas --controller-norm gn --epochs 5  # --controller-norm is --norm
    python -m tasks.enas --experiment enas-quick          # ln, gn and sn with identical seeds
    python -m tasks.enas --help                           # every config key
    python -m tasks.enas --experiment enas --accelerator gpu --devices 4 --strategy ddp  # 4 GPUs

ENAS (Pham et al. 2018), macro search space, scaled to a CPU: an LSTM controller whose cell is
normalized by ``none``, ``ln``, ``gn`` or ``sn`` (SN over LN and GN) samples CNN architectures,
and one shared-weight child network is trained on them. The guide: ``docs/enas.md``.

- ``config``: :class:`EnasConfig`.
- ``controller``: the normalized LSTM cell, the controller, REINFORCE.
- ``model``: the shared-weight child network.
- ``data``: :class:`EnasData`, the LightningDataModule (alternating child and controller batches).
- ``module``: :class:`EnasModule`, the LightningModule (manual optimization).
- ``task``: ``train`` (one search) and ``TASK``; ``__main__``: the command line.
"""
