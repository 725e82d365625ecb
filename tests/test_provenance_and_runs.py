"""config.yaml's provenance (commit, machine, command), the --runs selection of a grid, and the
importance logits' own learning rate and weight decay in the classification optimizer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sn
import torch
import yaml

from tasks.classify.config import ClassifyConfig
from tasks.classify.module import ClassifyModule, optimizer_groups
from tasks.common.cli import configs_from_args, main, select_runs
from tasks.common.identity import differences
from tasks.common.rundir import RunDir
from tasks.common.runner import get_task, resolved_config
from toy_task import TOY, toy_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fresh_provenance():
    """Provenance is taken once per process; let this test's process state count."""
    from tasks.common import config as C

    C._process_provenance.cache_clear()
    yield
    C._process_provenance.cache_clear()


def test_config_yaml_records_commit_machine_and_command(tmp_path, monkeypatch, fresh_provenance):
    monkeypatch.setattr(sys, "argv", ["whatever", "--root", str(tmp_path), "--lr", "0.3"])
    assert main(TOY, ["--root", str(tmp_path), "--lr", "0.3"]) == 0
    recorded = yaml.safe_load(RunDir(tmp_path, "toy-default", "sn_0.3").config_path.read_text())
    prov = recorded["provenance"]
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # in a git checkout: the commit this process started on
        assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool)
        assert all(isinstance(f, str) and not f.startswith(" ") for f in prov["changed_files"])
    assert prov["machine"]["cpu_count"] == os.cpu_count()
    assert prov["machine"]["hostname"] and "gpu" in prov["machine"]
    assert prov["command"].endswith("--root " + str(tmp_path) + " --lr 0.3")
    # provenance is a record, not part of the run's identity: the same config matches again
    assert differences(recorded, resolved_config(toy_configs(tmp_path, "--lr", "0.3")[0])) == []
    again = {**recorded, "provenance": {**prov, "commit": "0" * 40}}
    assert differences(again, recorded) == []


def test_runs_option_selects_grid_runs_by_pattern():
    task = get_task("classify")
    _, configs, _ = configs_from_args(task, ["--experiment", "table2-quick", "--runs", "*_8x2_*,sn-inln_*"])
    assert [c.run for c in configs] == ["bn_8x2_s0", "gn_8x2_s0", "sn_8x2_s0", "sn-inln_8x1_s0"]
    # the selected runs are the grid's own configs (same identity as when the whole grid runs)
    _, whole, _ = configs_from_args(task, ["--experiment", "table2-quick"])
    same = {c.run: c for c in whole}
    assert all(resolved_config(c)["epochs"] == resolved_config(same[c.run])["epochs"] for c in configs)
    assert all(differences(resolved_config(same[c.run]), resolved_config(c)) == [] for c in configs)


def test_runs_option_errors(capsys):
    task = get_task("classify")
    with pytest.raises(ValueError, match="matches none of the runs: bn_8x32_s0"):
        configs_from_args(task, ["--experiment", "table2-quick", "--runs", "nothing*"])
    with pytest.raises(ValueError, match="at least one pattern"):
        select_runs([], " , ")
    assert main(task, ["--experiment", "table2-quick", "--runs", "nope", "--dry-run"]) == 2
    assert "matches none" in capsys.readouterr().err


def test_logits_get_their_own_learning_rate_and_weight_decay():
    cfg = ClassifyConfig(norm="sn", depth=8, width=8, batch="8x16", base_lr=0.4, ref_batch=256,
                         weight_decay=1e-4, logit_lr_scale=10.0, logit_weight_decay=3e-5)
    module = ClassifyModule(cfg, 10, 1)
    groups = optimizer_groups(module.net, cfg)
    logits = {id(p) for _, m in sn.switch_norm_layers(module.net) for p in (m.mean_weight, m.var_weight)}
    assert len(groups) == 2 and {id(p) for p in groups[1]["params"]} == logits
    assert groups[0]["weight_decay"] == 1e-4 and "lr" not in groups[0]  # the optimizer's lr: 0.4 * 128 / 256
    assert groups[1]["lr"] == pytest.approx(0.2 * 10) and groups[1]["weight_decay"] == 3e-5
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 2.0])
    # one SGD step on a logit with zero gradient and no momentum yet: only weight decay moves it
    p = groups[1]["params"][0]
    before = p.detach().clone()
    p.grad = torch.zeros_like(p)
    for q in groups[0]["params"] + groups[1]["params"][1:]:
        q.grad = None
    opt.step()
    assert torch.allclose(p.detach(), before * (1 - 2.0 * 3e-5))


def test_bn_network_has_no_logit_group():
    cfg = ClassifyConfig(norm="bn", depth=8, width=8)
    groups = optimizer_groups(ClassifyModule(cfg, 10, 1).net, cfg)
    assert len(groups) == 1 and groups[0]["weight_decay"] == cfg.weight_decay


def test_bad_logit_settings_are_refused():
    with pytest.raises(ValueError, match="logit_lr_scale"):
        ClassifyConfig(logit_lr_scale=0).validate()
    with pytest.raises(ValueError, match="logit_weight_decay"):
        ClassifyConfig(logit_weight_decay=-1).validate()
