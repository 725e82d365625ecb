"""The dashboard in a real browser: `streamlit run app.py` on fixture runs, headless Chromium.

Needs the Debian package ``chromium`` (scripts/setup.sh installs it) and the Python package
``playwright`` (the ``dev`` extra); playwright drives the system Chromium, it never downloads a
browser. Skipped only when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fixture_runs import classify_config, summary, write_fixture_runs, write_run

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ERROR_SELECTORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


def svg_texts(page, selector: str) -> list[str]:
    """Text of SVG elements (which have no innerText)."""
    return page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")


@pytest.fixture(params=["yours"])  # "yours-root": as "yours", yielding (url, runs root)
def dashboard(request, tmp_path):
    """A running `streamlit run app.py`; yields its URL. ``"yours"``: fixture runs as the user's
    runs, no reference results; ``"reference"``: the fixture runs as reference results (the
    results/ folder) and no user runs."""
    yours = request.param.startswith("yours")
    fixture = write_fixture_runs(tmp_path / ("runs" if yours else "results"))
    root = fixture if yours else tmp_path / "runs"
    reference = fixture if request.param == "reference" else tmp_path / "no-reference-results"
    port = free_port()
    env = {**os.environ, "SN_RUNS_ROOT": str(root), "SN_REFERENCE_ROOT": str(reference),
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url if request.param != "yours-root" else (url, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def chromium_page(url: str, tmp_path: Path, height: int):
    """A page of headless Debian Chromium (through playwright) showing ``url``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": height})
        try:
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            yield page
        finally:
            browser.close()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (Debian package chromium)")
def test_dashboard_shows_charts_in_chromium(dashboard, tmp_path):
    with chromium_page(dashboard, tmp_path, 2400) as page:
        # the weights tab has Fig. 1(c), Fig. 4 and Fig. 3: three plotly charts with bars
        page.wait_for_function(
            "document.querySelectorAll('.js-plotly-plot g.trace.bars path').length >= 10",
            timeout=90_000)
        page.wait_for_timeout(1000)  # let the last chart finish its layout
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        titles = svg_texts(page, ".js-plotly-plot .gtitle")
        assert any("Fig. 1c" in t for t in titles), titles
        assert any("Fig. 4" in t for t in titles), titles
        legend = svg_texts(page, ".js-plotly-plot .legendtext")
        assert {"IN", "LN", "BN"} <= set(legend), legend

        page.get_by_role("tab", name="Results").click()
        page.get_by_text("SN-GN", exact=True).wait_for(timeout=30_000)
        page.wait_for_function(  # learning curves are scatter traces with drawn lines
            "document.querySelectorAll('.js-plotly-plot g.trace.scatter path.js-line').length >= 3",
            timeout=60_000)
        page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

        page.get_by_role("tab", name="Single run").click()
        page.wait_for_function(
            "[...document.querySelectorAll('.js-plotly-plot .gtitle')]"
            ".some(e => e.textContent === 'val metrics')", timeout=60_000)
        page.screenshot(path=str(tmp_path / "single_run.png"), full_page=True)

        assert page.locator(ERROR_SELECTORS).count() == 0
        body = page.inner_text("body")
        assert "Traceback" not in body and "Exception" not in body, body[:2000]
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (Debian package chromium)")
@pytest.mark.parametrize("dashboard", ["reference"], indirect=True)
def test_reference_results_without_user_runs_in_chromium(dashboard, tmp_path):
    with chromium_page(dashboard, tmp_path, 3200) as page:
        page.get_by_text("Showing the reference results", exact=False).wait_for(timeout=90_000)
        page.wait_for_function(  # Fig. 1c, 4, 3 bars and the per-layer heatmap
            "document.querySelectorAll('.js-plotly-plot g.trace.bars path').length >= 10"
            " && document.querySelectorAll('.js-plotly-plot g.hm').length >= 1", timeout=90_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "reference.png"), full_page=True)
        titles = svg_texts(page, ".js-plotly-plot .gtitle")
        assert any("Fig. 1c" in t for t in titles), titles
        assert any(t.startswith("Importance weights per layer") and "reference/" in t for t in titles), titles
        assert page.locator(ERROR_SELECTORS).count() == 0
        body = page.inner_text("body")
        assert "Traceback" not in body and "Exception" not in body, body[:2000]


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (Debian package chromium)")
@pytest.mark.parametrize("dashboard", ["yours-root"], indirect=True)
def test_new_runs_appear_without_a_manual_reload(dashboard, tmp_path):
    url, root = dashboard
    with chromium_page(url, tmp_path, 1600) as page:
        page.get_by_text("14 of 14 runs selected").wait_for(timeout=90_000)
        run = "gn-8x2"  # a run finishing while the page is open
        write_run(root, "sweep", run, classify_config("sweep", run, "gn", "8x2"),
                  summary("classify", "sweep", run, "finished", {"test_acc": 0.8}), [])
        page.get_by_text("15 of 15 runs selected").wait_for(timeout=60_000)  # no reload, no click
        assert page.locator(ERROR_SELECTORS).count() == 0
