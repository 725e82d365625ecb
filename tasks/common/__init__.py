"""What every task shares: configs, the command line, run directories, loggers, data, the runner.

Writing a task ``mytask`` (see ``tasks/classify/``): a package ``tasks/mytask/`` with

- ``config.py``: ``MyConfig(RunConfig)``, a dataclass whose fields are declared with
  :func:`key` (default, help text and bounds in one place)::

      @dataclasses.dataclass
      class MyConfig(RunConfig):
          task: str = key("mytask", "the task")
          run: str = key("{norm}_s{seed}", "run name template")
          lr: float = key(0.1, "learning rate", gt=0)

- ``model.py`` (the network), ``data.py`` (a LightningDataModule built from the config),
  ``module.py`` (the LightningModule: the network as ``self.net``, so that weights.csv names
  layers relative to it; metrics logged as ``"split/name"``, the rows of metrics.csv);
- ``task.py``: one run, and the task object::

      def train(cfg, rundir, ckpt_path):    # resume from ckpt_path when not None
          trainer = build_trainer(cfg, rundir, monitor="val/acc")
          trainer.fit(MyModule(cfg), datamodule=MyData(cfg), ckpt_path=ckpt_path)
          return {"best_val_acc": ...}      # summary.json's "final"

      TASK = Task("mytask", MyConfig, train, report_keys=("best_val_acc",))

- ``__main__.py``: ``sys.exit(main(TASK))``, so that ``python -m tasks.mytask`` works.

Modules (details in each module's docstring):

- ``config``: RunConfig (shared keys), key, batch_layout, coerce_fields, load_experiments,
  expand_grid, resolve_runs, config_dict, software_versions.
- ``cli``: main (the command line), configs_from_args, build_parser.
- ``runner``: Task, get_task, run_grid, run_one, find_conflicts.
- ``identity``: which recorded runs count as the requested config (IGNORED_KEYS, RunConflict).
- ``trainer``: build_trainer (Trainer with device options, checkpoints, loggers), checkpoint_step.
- ``rundir``: RunDir (config.yaml, summary.json, metrics.csv, weights.csv, checkpoints/).
- ``loggers``: RunLogger (Lightning Logger -> metrics.csv), SwitchWeightsLogger (callback ->
  weights.csv), Heartbeat (summary wall time each epoch), KillAfterSteps, make_wandb_logger.
- ``data``: fashion_mnist (Debian files, extracted to our cache), cifar10, image_folder,
  synthetic_images, tensor_images (any of them as tensors, with their statistics),
  train_val_datasets, TensorImageDataset, split_indices, DataMissing.
"""
from .cli import main
from .config import RunConfig, batch_layout, expand_grid, key, load_experiments, parse_batch, resolve_runs
from .loggers import Heartbeat, KillAfterSteps, RunLogger, SwitchWeightsLogger, make_wandb_logger
from .rundir import RunDir
from .runner import Task, get_task, run_grid, run_one
from .trainer import build_trainer

__all__ = [
    "Heartbeat", "KillAfterSteps", "RunConfig", "RunDir", "RunLogger", "SwitchWeightsLogger", "Task",
    "batch_layout", "build_trainer", "expand_grid", "get_task", "key", "load_experiments", "main",
    "make_wandb_logger", "parse_batch", "resolve_runs", "run_grid", "run_one",
]
