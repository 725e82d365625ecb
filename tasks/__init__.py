"""The paper's experiments as Lightning tasks: ``python -m tasks.<name>``.

- ``tasks.classify``: image classification under batch settings (Table 2, Fig. 2, Fig. 4).
- ``tasks.stylize``: feed-forward style transfer with VGG16 perceptual losses (Fig. 6a, Fig. 9).
- ``tasks.enas``: ENAS macro search with an LSTM controller normalized by LN, GN or SN (Fig. 6b).
- ``tasks.common``: what every task shares (configs, the command line, run directories and
  run identity, the Trainer, loggers, datasets).

Every task is a package of the same shape: ``config.py`` (the config dataclass; help and
bounds in field metadata), ``model.py``, ``data.py`` (a LightningDataModule), ``module.py``
(the LightningModule), ``task.py`` (``train`` for one run and ``TASK``, a
:class:`tasks.common.runner.Task`) and ``__main__.py`` (the command line). Layering: ``tasks``
imports ``sn`` and ``runformat``, never ``analysis``.
"""
import os as _os

# On a machine shared with other busy processes, OpenMP threads that spin while waiting make
# torch's CPU kernels tens of times slower; passive waiting costs little when the machine is
# idle. Must be set before torch loads its OpenMP runtime (``python -m tasks.X`` imports this
# package first). A value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
