"""The memory inspector in a real browser: JupyterLab in headless Chromium, a live kernel.

A fresh JupyterLab server (loopback, throw-away Jupyter folders) serves a copy of the demo
notebook with its outputs cleared, so nothing stored can fake a pass. The test runs all
cells, moves the inspector's step slider with the keyboard and checks that the readout and
the picture changed: only a live kernel can redraw them. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "notebooks" / "explore_memories.ipynb"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cleared_copy(src: Path, dst: Path) -> Path:
    """The notebook without outputs, widget state or execution counts, plus a cell that prints
    which Python the kernel runs (the test checks it is this environment's)."""
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint('kernel python:', sys.executable)"))
    nbformat.write(nb, dst)
    return dst


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on loopback serving a cleared copy of the demo notebook; yields its URL."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but playwright is not installed; `make env` installs it (dev extras)")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    root = tmp_path / "root"
    root.mkdir()
    cleared_copy(DEMO, root / DEMO.name)
    env = dict(os.environ, COURSE_DEVICE="cpu", COURSE_QUIET="1", PYTHONPATH=str(ROOT))
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR"):
        env[var] = str(tmp_path / var.lower())
    env.pop("MPLBACKEND", None)
    # no "get notified about Jupyter news?" pop-up over the outputs
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env["JUPYTERLAB_SETTINGS_DIR"] = str(tmp_path / "lab-settings")
    port = free_port()
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
         "--port", str(port), "--ServerApp.port_retries=0", "--ServerApp.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{(tmp_path / 'lab.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer in 60 s:\n{(tmp_path / 'lab.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started, nothing else
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_moving_the_step_slider_redraws_the_inspector_through_a_live_kernel(lab, chromium_path, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=60_000)  # a kernel start plus `import torch` takes seconds on a busy machine
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1400})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{lab}/lab/tree/{DEMO.name}?reset")
            panel = page.locator(".jp-NotebookPanel:visible")
            expect(panel).to_have_count(1)
            expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator('[data-command="runmenu:run-all"]').click()

            # the inspector is the first widget of the notebook: its step slider, picture and readout
            inspector = panel.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-slider")).first
            readout = inspector.locator(".widget-html")
            picture = inspector.locator(".widget-image")
            expect(readout).to_contain_text("step 8 of 8")
            expect(picture).to_be_visible()
            expect(panel.locator(".jp-OutputArea-output", has_text="kernel python:")).to_contain_text(sys.executable)
            expect(panel.locator(".jp-OutputArea-output", has_text="random keys")).to_be_visible()  # all ran
            expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")
            inspector.evaluate("node => node.scrollIntoView({block: 'start'})")
            before_text = readout.inner_text()
            before_picture = picture.screenshot()
            inspector.screenshot(path=str(ARTIFACTS / "browser_inspector_before.png"))

            step = inspector.locator(".widget-slider", has=page.locator(".widget-label", has_text="step"))
            step.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowLeft")
            page.keyboard.press("ArrowLeft")

            # the kernel recomputed the readout (it sends the new picture before the readout)
            expect(readout).to_contain_text("step 6 of 8")
            expect(step.locator(".widget-readout")).to_have_text("6")
            expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")
            after_text = readout.inner_text()
            assert after_text != before_text
            assert "positions 18..23 evicted from Mem and compressed" in after_text
            assert picture.screenshot() != before_picture, "the picture did not change after moving the slider"
            inspector.screenshot(path=str(ARTIFACTS / "browser_inspector_after.png"))
            page.screenshot(path=str(ARTIFACTS / "browser_page_after.png"))
        finally:
            browser.close()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
