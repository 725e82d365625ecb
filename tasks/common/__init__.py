"""What every task shares: configs, run directories, Lightning loggers, data, the runner.

Writing a task (see ``tasks/classify.py``)::

    @dataclasses.dataclass
    class MyConfig(RunConfig):            # every field a config key, with a commented default
        task: str = "mytask"
        run: str = "{norm}_s{seed}"
        lr: float = 0.1                   # learning rate

    def train(cfg, rundir, ckpt_path):    # one run; resume from ckpt_path when not None
        trainer = build_trainer(cfg, rundir, monitor="val/acc")
        trainer.fit(MyModule(cfg), ..., ckpt_path=ckpt_path)   # self.log("train/loss", ...)
        return {"best_val_acc": ...}      # summary.json's "final"

    TASK = Task("mytask", MyConfig, train, report_keys=("best_val_acc",))
    if __name__ == "__main__":
        sys.exit(main(TASK))

The LightningModule keeps its network as ``self.net`` (layer names in weights.csv are
relative to it) and logs metrics as ``"split/name"`` (rows of metrics.csv).

Modules and their API (details in each module's docstring):

- ``config``: RunConfig (shared keys), parse_batch("GxS") -> (G, S), batch_layout,
  coerce_fields, load_experiments, expand_grid, resolve_runs, config_dict, software_versions.
- ``rundir``: RunDir (config.yaml, summary.json, metrics.csv, weights.csv, checkpoints/),
  CsvLog (flushed appends, key-based de-duplication), read_rows (tolerates a cut last line),
  atomic_write_text.
- ``loggers``: RunLogger (Lightning Logger -> metrics.csv), SwitchWeightsLogger (callback ->
  weights.csv), Heartbeat (summary wall time each epoch), KillAfterSteps (crash simulation for tests), make_wandb_logger.
- ``runner``: Task, get_task, main (the command line), configs_from_args, run_grid,
  run_one, build_trainer (Trainer with device options, checkpoints, loggers), checkpoint_step.
- ``data``: fashion_mnist (Debian files, extracted to our cache), cifar10, image_folder,
  synthetic_images, TensorImageDataset, split_indices, DataMissing.
"""
from .config import RunConfig, batch_layout, expand_grid, load_experiments, parse_batch, resolve_runs
from .loggers import Heartbeat, KillAfterSteps, RunLogger, SwitchWeightsLogger, make_wandb_logger
from .rundir import CsvLog, RunDir, read_rows
from .runner import Task, build_trainer, get_task, main, run_grid, run_one

__all__ = [
    "CsvLog", "Heartbeat", "KillAfterSteps", "RunConfig", "RunDir", "RunLogger", "SwitchWeightsLogger", "Task",
    "batch_layout", "build_trainer", "expand_grid", "get_task", "load_experiments", "main",
    "make_wandb_logger", "parse_batch", "read_rows", "resolve_runs", "run_grid", "run_one",
]
