"""JupyterLab in headless Chromium through Playwright: one path for the browser test and the README pictures.

A throw-away JupyterLab server (loopback, no token, its own Jupyter folders, no news pop-up)
serves one folder; :func:`open_notebook` opens a notebook in it, :func:`run_all` runs every
cell, and :func:`widget_output` finds the output of a widget cell. ``tests/test_browser.py``
drives the memory inspector with these; ``python -m course_lib.tools.screenshots`` takes the
README's explorer pictures with the same calls.

Needs the dev extra (``playwright``) and a Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import contextlib
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

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 1400}
TIMEOUT_MS = 60_000  # a kernel start plus `import torch` takes seconds on a busy machine

__all__ = ["find_chromium", "free_port", "cleared_copy", "jupyter_lab", "chromium", "open_notebook", "run_all",
           "wait_idle", "widget_output", "CHROMIUM_ARGS"]


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cleared_copy(src: Path, dst: Path, extra_cells: list[str] = ()) -> Path:
    """``src`` without outputs, widget state or execution counts (nothing stored can fake a live
    result), plus code cells ``extra_cells`` at the end; written to ``dst``."""
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nb.cells.extend(nbformat.v4.new_code_cell(code) for code in extra_cells)
    nbformat.write(nb, dst)
    return dst


@contextlib.contextmanager
def jupyter_lab(root_dir: Path, work_dir: Path, startup_s: float = 60):
    """A JupyterLab server on loopback serving ``root_dir``; yields its URL and stops it (and its
    kernels, nothing else) on exit. ``work_dir`` holds its Jupyter folders and ``lab.log``."""
    work_dir = Path(work_dir)
    env = dict(os.environ, COURSE_DEVICE="cpu", COURSE_QUIET="1", PYTHONPATH=str(ROOT))
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR"):
        env[var] = str(work_dir / var.lower())
    env.pop("MPLBACKEND", None)
    # no "get notified about Jupyter news?" pop-up over the outputs
    settings = work_dir / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env["JUPYTERLAB_SETTINGS_DIR"] = str(work_dir / "lab-settings")
    port = free_port()
    log_path = work_dir / "lab.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
         "--port", str(port), "--ServerApp.port_retries=0", "--ServerApp.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={root_dir}", f"--LabApp.workspaces_dir={work_dir / 'workspaces'}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer in {startup_s:.0f} s:\n{log_path.read_text()}")
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


@contextlib.contextmanager
def chromium(playwright, profile_dir: Path, executable: str | None = None, viewport: dict | None = None):
    """A headless Chromium context (``viewport``, default ``VIEWPORT``; ``CHROMIUM_ARGS``); yields its first page."""
    from playwright.sync_api import expect

    executable = executable or find_chromium()
    if executable is None:
        raise RuntimeError("no chromium on PATH (apt-get install chromium)")
    expect.set_options(timeout=TIMEOUT_MS)
    context = playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
        viewport=viewport or VIEWPORT)
    try:
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
    finally:
        context.close()
        shutil.rmtree(profile_dir, ignore_errors=True)


def wait_idle(page):
    from playwright.sync_api import expect

    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")


def open_notebook(page, url: str, name: str):
    """Open notebook ``name`` (relative to the server's root) in a fresh workspace; returns its panel."""
    from playwright.sync_api import expect

    page.goto(f"{url}/lab/tree/{name}?reset")
    panel = page.locator(".jp-NotebookPanel:visible")
    expect(panel).to_have_count(1)
    wait_idle(page)
    return panel


def run_all(page):
    """Run menu -> Run All Cells (returns at once; wait on what the cells show)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator('[data-command="runmenu:run-all"]').click()


def widget_output(page, panel, index: int = 0):
    """The output area of the ``index``-th widget (the ones that draw a picture) in ``panel``."""
    return panel.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-image")).nth(index)
