"""SN across processes (two gloo processes, run as a subprocess of the test)."""
import subprocess
import sys
from pathlib import Path

import torch

import sn
from sn.distributed import group_size


def test_two_processes_per_process_sync_and_update_stats():
    worker = Path(__file__).with_name("ddp_sn_worker.py")
    proc = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("all checks passed") == 2


def test_sync_is_a_no_op_without_a_process_group():
    torch.manual_seed(0)
    plain, synced = sn.SwitchNorm2d(4), sn.SwitchNorm2d(4, sync=True)
    x = torch.randn(6, 4, 3, 3)
    assert group_size() == 1
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.running_var, plain.running_var)
    assert "sync=True" in repr(synced)
