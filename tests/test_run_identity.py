"""Run identity and the grid runner: a run directory holds one configuration, and a result is
never reported for another (tasks/common/identity.py, tasks/common/runner.py)."""
from __future__ import annotations

import pytest

from runformat import read_rows
from tasks.common import config as C
from tasks.common.cli import configs_from_args, main
from tasks.common.identity import IGNORED_KEYS, RunConflict, differences
from tasks.common.rundir import RunDir
from tasks.common.runner import find_conflicts, get_task, run_grid
from toy_task import FAILING, TOY, ToyConfig, toy_configs


def test_run_grid_skips_finished_marks_failed_and_goes_on(tmp_path, capsys):
    grid = {"lr": [0.1, 0.2, 0.3]}
    configs = C.resolve_runs(ToyConfig, {"root": str(tmp_path), "experiment": "g"}, grid)
    FAILING.add(0.2)
    results = run_grid(TOY, configs)
    assert [r.status for r in results] == ["finished", "failed", "finished"]
    assert RunDir(tmp_path, "g", "sn_0.2").read_summary()["error"] == "RuntimeError: toy failure for lr=0.2"
    assert RunDir(tmp_path, "g", "sn_0.3").read_summary()["final"] == {"acc": 0.3}
    out = capsys.readouterr().out
    assert "3 runs: 2 ok, 1 failed" in out
    finished = RunDir(tmp_path, "g", "sn_0.1").summary_path.read_text()
    FAILING.clear()
    results = run_grid(TOY, configs)  # rerun: finished runs skipped, the failed one retried
    assert [r.status for r in results] == ["skipped", "finished", "skipped"]
    assert RunDir(tmp_path, "g", "sn_0.1").summary_path.read_text() == finished
    assert read_rows(RunDir(tmp_path, "g", "sn_0.2").path / "metrics.csv")[0]["value"] == "0.2"
    assert "skipping finished run" in capsys.readouterr().out
    configs[0].overwrite = True
    assert run_grid(TOY, configs[:1])[0].status == "finished"


def test_a_finished_run_of_another_config_is_refused_and_never_reported(tmp_path, capsys):
    run_grid(TOY, toy_configs(tmp_path, "--milestones", "0.5"))
    stamp = RunDir(tmp_path, "toy-default", "sn_0.1").summary_path.read_text()
    assert main(TOY, ["--root", str(tmp_path), "--milestones", "0.25"]) == 2
    out, err = capsys.readouterr()
    assert "milestones: [0.5] there, [0.25] requested" in err and "--overwrite" in err and "--run NAME" in err
    assert "acc" not in out and "skipping" not in out
    assert RunDir(tmp_path, "toy-default", "sn_0.1").summary_path.read_text() == stamp
    # run_grid on its own refuses the same way, without touching the directory
    (result,) = run_grid(TOY, toy_configs(tmp_path, "--milestones", "0.25"))
    assert result.status == "refused" and result.final == {} and "milestones" in result.error
    assert RunDir(tmp_path, "toy-default", "sn_0.1").summary_path.read_text() == stamp
    # the ways on: --overwrite replaces it, --run gives the new config its own directory
    assert main(TOY, ["--root", str(tmp_path), "--milestones", "0.25", "--run", "other"]) == 0
    assert RunDir(tmp_path, "toy-default", "other").read_config()["milestones"] == [0.25]
    assert main(TOY, ["--root", str(tmp_path), "--milestones", "0.25", "--overwrite"]) == 0
    assert RunDir(tmp_path, "toy-default", "sn_0.1").read_config()["milestones"] == [0.25]


def test_keys_that_cannot_change_a_result_are_ignored(tmp_path, capsys):
    run_grid(TOY, toy_configs(tmp_path))
    capsys.readouterr()
    same = ["--progress-bar", "false", "--wandb-project", "other", "--overwrite", "false", "--resume"]
    (result,) = run_grid(TOY, toy_configs(tmp_path, *same))
    assert result.status == "skipped" and result.final == {"acc": 0.1}
    assert set(IGNORED_KEYS) == {"root", "progress_bar", "wandb", "wandb_project", "resume", "overwrite",
                                 "kill_after_steps"}
    recorded = RunDir(tmp_path, "toy-default", "sn_0.1").read_config()
    assert differences(recorded, {**recorded, "root": "/elsewhere", "versions": {"torch": "0"}}) == []
    assert differences(recorded, {**recorded, "seed": 3}) == [("seed", 0, 3)]
    assert differences({**recorded, "new_key": 1}, recorded) == [("new_key", 1, "(missing)")]


def test_resume_and_unfinished_runs_follow_the_same_rule(tmp_path):
    rd = RunDir(tmp_path, "toy-default", "sn_0.1")
    (cfg,) = toy_configs(tmp_path)
    rd.write_config(C.config_dict(cfg))
    rd.start("toy")  # a run killed while running
    (conflict,) = find_conflicts(toy_configs(tmp_path, "--resume", "--seed", "1"))
    assert isinstance(conflict, RunConflict) and conflict.status == "running"
    assert "seed: 0 there, 1 requested" in str(conflict)
    assert find_conflicts(toy_configs(tmp_path, "--resume")) == []
    rd.config_path.unlink()  # a finished run whose config cannot be read is never reused
    rd.finish({"acc": 0.9})
    (conflict,) = find_conflicts(toy_configs(tmp_path))
    assert "without a readable config.yaml" in str(conflict)


def test_default_runs_of_different_tasks_never_share_a_directory(tmp_path):
    dirs = set()
    for name in ("classify", "stylize", "enas"):
        _, (cfg,), _ = configs_from_args(get_task(name), ["--root", str(tmp_path)])
        dirs.add(RunDir(cfg.root, cfg.experiment, cfg.run).path)
        assert cfg.experiment == f"{name}-default"
    assert len(dirs) == 3
    (tmp_path / "e.yaml").write_text("experiments:\n  classify-default: {task: classify}\n")
    with pytest.raises(ValueError, match="reserved"):
        C.load_experiments(tmp_path / "e.yaml")
