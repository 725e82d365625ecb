"""scripts/run.sh serves the dashboard before any experiment and prints where it is."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from fixture_runs import write_fixture_runs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_sh_serves_the_dashboard_first_and_prints_its_address(tmp_path):
    port = free_port()
    reference = write_fixture_runs(tmp_path / "results")
    env = {**os.environ, "SN_SKIP_SETUP": "1", "SN_SKIP_EXPERIMENTS": "1", "SN_PORT": str(port),
           "SN_RUNS_ROOT": str(tmp_path / "runs"), "SN_REFERENCE_ROOT": str(reference),
           "SN_LOG_DIR": str(tmp_path / "logs"), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    out = open(tmp_path / "run.log", "w+")
    proc = subprocess.Popen(["bash", "scripts/run.sh"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, text = time.monotonic() + 120, ""
        while time.monotonic() < deadline and f"dashboard: http://localhost:{port}" not in text:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
            text = (tmp_path / "run.log").read_text()
        assert f"dashboard: http://localhost:{port}" in text, text
        # the address is printed once the dashboard answers, and before the demonstration starts
        assert text.index("dashboard: http://") < text.index("python -m sn")
        with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=5) as response:
            assert response.status == 200
        assert (tmp_path / "logs" / "dashboard.log").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
    # the dashboard went with it
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2).close()
        except OSError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the dashboard still answers after the main job ended")
