"""Write realistic run directories (``docs/run-format.md``, through :mod:`runformat`) for the analysis/app tests.

:func:`write_fixture_runs` lays out, under a root:

- ``sweep/`` (classify): bn, gn, sn (2 seeds) at 8x4; bn (failed, diverged), gn and sn-inln at
  8x1; sn at 8x2 still running, its metrics.csv and weights.csv cut mid-line by a "crash";
  ``future-format`` whose summary has format_version 2.
- ``style/`` (stylize): in, bn, sn (with weights and ``samples/*.png``).
- ``enas/`` (enas): ln, gn, and run ``sn-lngn`` of controller norm ``sn`` (SN over LN and GN, as real
  runs record it: weights over ln/gn, ``architectures.jsonl`` cut mid-line).

The numbers are chosen so that the tests can average them by hand; see the comments there.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import runformat as rf

VERSIONS = {"torch": "2.14.1", "torchvision": "0.29.1", "lightning": "2.6.0", "python": "3.11.2"}

# final importance weights, (in, ln, bn) per layer, for the mean and the var logits
SN_8X4_MEAN = {"bn1": (.2, .3, .5), "layer1.0.bn1": (.1, .3, .6), "layer1.1.bn1": (.3, .1, .6),
               "layer2.0.bn1": (.2, .5, .3)}
SN_8X4_VAR = {"bn1": (.1, .2, .7), "layer1.0.bn1": (.2, .2, .6), "layer1.1.bn1": (.2, .4, .4),
              "layer2.0.bn1": (.3, .2, .5)}
LAYERS = list(SN_8X4_MEAN)


def write_run(root: Path, experiment: str, run: str, config: dict, summary: dict | None,
              metrics: list[tuple] = (), weights: list[tuple] = (), cut: dict | None = None) -> Path:
    """One run directory. ``cut`` maps a file name to a partial line appended without newline."""
    run_dir = rf.run_path(root, experiment, run)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / rf.CHECKPOINTS_DIR).mkdir(exist_ok=True)
    rf.write_config(run_dir / rf.CONFIG_FILE, config)
    if summary is not None:
        rf.write_summary(run_dir / rf.SUMMARY_FILE, summary)
    cut = cut or {}
    _write_csv(run_dir / rf.METRICS_FILE, rf.METRICS_COLUMNS, metrics, cut.get(rf.METRICS_FILE))
    if weights or rf.WEIGHTS_FILE in cut:
        _write_csv(run_dir / rf.WEIGHTS_FILE, rf.WEIGHTS_COLUMNS, weights, cut.get(rf.WEIGHTS_FILE))
    return run_dir


def classify_config(experiment, run, norm, batch, seed=0, **extra) -> dict:
    return {"task": "classify", "experiment": experiment, "run": run, "norm": norm, "seed": seed,
            "versions": VERSIONS, "batch": batch, "eval_stats": "batch_average",
            "dataset": "fashion-mnist", "model": "resnet-cifar", "epochs": 3, **extra}


def summary(task, experiment, run, status, final=None, error=None, version=rf.FORMAT_VERSION) -> dict:
    data = {"format_version": version, "status": status, "task": task, "experiment": experiment,
            "run": run, "started": "2025-01-01T10:00:00", "ended": None if status == rf.RUNNING
            else "2025-01-01T10:05:00", "wall_time_s": 300.0, "final": final or {}}
    if error:
        data["error"] = error
    return data


def weight_rows(step, epoch, mean: dict, var: dict, ops=("in", "ln", "bn")) -> list[tuple]:
    """weights.csv rows for one logging step: {layer: per-op weights} for mean and var."""
    rows = []
    for layer in mean:
        for stat, table in (("mean", mean), ("var", var)):
            rows += [(step, epoch, layer, stat, op, w) for op, w in zip(ops, table[layer])]
    return rows


def uniform(layers, value):
    return {layer: value for layer in layers}


def classify_metrics(val_accs, steps_per_epoch=100, test_acc=None) -> list[tuple]:
    rows = []
    for epoch, acc in enumerate(val_accs):
        step = (epoch + 1) * steps_per_epoch
        rows += [(step, epoch, "train", "loss", 2.0 - acc), (step, epoch, "train", "acc", acc - 0.05),
                 (step, epoch, "train", "lr", 0.1), (step, epoch, "train", "throughput", 500.0),
                 (step, epoch, "val", "loss", 1.5 - acc), (step, epoch, "val", "acc", acc)]
    if test_acc is not None:
        rows.append((len(val_accs) * steps_per_epoch, len(val_accs) - 1, "test", "acc", test_acc))
    return rows


def write_sweep(root: Path) -> None:
    """The classification runs of experiment ``sweep``."""
    exp = "sweep"
    finished = [  # run, norm, batch, seed, val accs, test acc
        ("bn-8x4", "bn", "8x4", 0, [0.5, 0.7, 0.8], 0.80), ("gn-8x4", "gn", "8x4", 0, [0.55, 0.72, 0.82], 0.82),
        ("sn-8x4", "sn", "8x4", 0, [0.6, 0.8, 0.85], 0.85), ("sn-8x4-seed2", "sn", "8x4", 2, [0.6, 0.8, 0.87], 0.87),
        ("gn-8x1", "gn", "8x1", 0, [0.5, 0.7, 0.78], 0.78), ("sn-inln-8x1", "sn-inln", "8x1", 0, [0.5, 0.7, 0.76], 0.76),
    ]
    weights = {
        "sn-8x4": weight_rows(100, 0, uniform(LAYERS, (1 / 3,) * 3), uniform(LAYERS, (1 / 3,) * 3))
        + weight_rows(300, 2, SN_8X4_MEAN, SN_8X4_VAR),
        "sn-8x4-seed2": weight_rows(300, 2, uniform(LAYERS, (.2, .2, .6)), uniform(LAYERS, (.2, .4, .4))),
        "sn-inln-8x1": weight_rows(300, 2, uniform(LAYERS, (.4, .6)), uniform(LAYERS, (.3, .7)), ops=("in", "ln")),
    }
    for run, norm, batch, seed, accs, test in finished:
        write_run(root, exp, run, classify_config(exp, run, norm, batch, seed),
                  summary("classify", exp, run, rf.FINISHED, {"test_acc": test, "best_val_acc": max(accs)}),
                  classify_metrics(accs, test_acc=test), weights.get(run, []))
    write_run(root, exp, "bn-8x1", classify_config(exp, "bn-8x1", "bn", "8x1"),
              summary("classify", exp, "bn-8x1", rf.FAILED, error="RuntimeError: loss is nan at step 120"),
              classify_metrics([0.1]))
    two = ["bn1", "layer1.0.bn1"]
    running_weights = weight_rows(100, 0, uniform(two, (.3, .3, .4)), uniform(two, (.4, .3, .3)))
    running_weights += weight_rows(200, 1, uniform(two, (.1, .1, .8)), uniform(two, (.1, .1, .8)))[:6]
    write_run(root, exp, "sn-8x2-running", classify_config(exp, "sn-8x2-running", "sn", "8x2"),
              summary("classify", exp, "sn-8x2-running", rf.RUNNING),
              classify_metrics([0.4, 0.6]), running_weights,
              cut={rf.METRICS_FILE: "300,2,val,ac", rf.WEIGHTS_FILE: "200,1,layer1.0.bn1,mean,in,0.1"})
    write_run(root, exp, "future-format", classify_config(exp, "future-format", "sn", "8x4"),
              summary("classify", exp, "future-format", rf.FINISHED, {"test_acc": 0.99}, version=rf.FORMAT_VERSION + 1),
              classify_metrics([0.99], test_acc=0.99))


def write_style(root: Path) -> None:
    """The stylization runs of experiment ``style``: losses fall faster with sn."""
    exp = "style"
    decay = {"in": 0.9, "bn": 0.95, "sn": 0.8}
    for norm in ("in", "bn", "sn"):
        config = {"task": "stylize", "experiment": exp, "run": norm, "norm": norm, "seed": 0,
                  "versions": VERSIONS, "perceptual_net": "vgg16-random-init", "batch": "1x4", "steps": 40}
        metrics = []
        for step in range(0, 50, 10):
            c, s = 10.0 * decay[norm] ** step, 5.0 * decay[norm] ** step
            metrics += [(step, 0, "train", "content_loss", c), (step, 0, "train", "style_loss", s),
                        (step, 0, "train", "tv_loss", 0.1), (step, 0, "train", "total_loss", c + s + 0.1)]
        final = {"content_loss": metrics[-4][4], "style_loss": metrics[-3][4], "total_loss": metrics[-1][4]}
        weights = []
        if norm == "sn":
            weights = weight_rows(40, 0, {"enc.norm1": (.8, .1, .1), "enc.norm2": (.6, .2, .2)},
                                  {"enc.norm1": (.7, .2, .1), "enc.norm2": (.9, .05, .05)})
        run_dir = write_run(root, exp, norm, config, summary("stylize", exp, norm, rf.FINISHED, final),
                            metrics, weights)
        if norm == "sn":
            _write_pngs(run_dir / rf.SAMPLES_DIR, ["step000040_astronaut.png", "step000040_coffee.png"])


def write_enas(root: Path) -> None:
    """The ENAS runs of experiment ``enas``: controller norms ln, gn and sn (run ``sn-lngn``)."""
    exp = "enas"
    for run, accs in (("ln", [0.3, 0.4, 0.5]), ("gn", [0.3, 0.38, 0.45]), ("sn-lngn", [0.35, 0.45, 0.55])):
        norm = run.split("-")[0]  # config.yaml records the controller norm "sn" (its sn_stats: ln, gn)
        config = {"task": "enas", "experiment": exp, "run": run, "norm": norm, "seed": 0,
                  "versions": VERSIONS, "epochs": 3}
        metrics = []
        for epoch, acc in enumerate(accs):
            step = (epoch + 1) * 50
            metrics += [(step, epoch, "train", "child_loss", 2 - acc), (step, epoch, "train", "reward", acc),
                        (step, epoch, "val", "mean_acc", acc), (step, epoch, "val", "best_acc", acc + 0.1)]
        final = {"best_val_acc": accs[-1] + 0.1, "mean_val_acc": accs[-1], "best_arch": "0 1 2 3"}
        weights = []
        if norm == "sn":
            weights = weight_rows(150, 2, {"controller.norm": (.7, .3)}, {"controller.norm": (.6, .4)},
                                  ops=("ln", "gn"))
        run_dir = write_run(root, exp, run, config, summary("enas", exp, run, rf.FINISHED, final),
                            metrics, weights)
        if norm == "sn":
            lines = [json.dumps({"epoch": e, "step": (e + 1) * 50, "arch": [e, 1, 0, 2], "val_acc": a})
                     for e, a in enumerate(accs)]
            (run_dir / rf.ARCHITECTURES_FILE).write_text("\n".join(lines) + '\n{"epoch": 3, "st')


def write_fixture_runs(root: str | Path) -> Path:
    """All of the above under ``root``; returns it as a Path."""
    root = Path(root)
    write_sweep(root)
    write_style(root)
    write_enas(root)
    return root


def _write_csv(path: Path, columns, rows, cut_line: str | None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    path.write_text(buffer.getvalue() + (cut_line or ""))


def _write_pngs(folder: Path, names: list[str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (16, 16), (40 * i, 120, 200)).save(folder / name)
