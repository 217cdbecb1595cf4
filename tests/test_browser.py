"""The memory inspector in a real browser: JupyterLab in headless Chromium, a live kernel.

A fresh JupyterLab server (loopback, throw-away Jupyter folders) serves a copy of the demo
notebook with its outputs cleared, so nothing stored can fake a pass. The test runs all
cells, moves the inspector's step slider with the keyboard and checks that the readout and
the picture changed: only a live kernel can redraw them. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from course_lib.tools.browser import chromium, cleared_copy, jupyter_lab, open_notebook, run_all, wait_idle

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "notebooks" / "explore_memories.ipynb"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = pytest.mark.browser


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
    # plus a cell that prints which Python the kernel runs (the test checks it is this environment's)
    cleared_copy(DEMO, root / DEMO.name, extra_cells=["import sys\nprint('kernel python:', sys.executable)"])
    with jupyter_lab(root, tmp_path) as url:
        yield url


def test_moving_the_step_slider_redraws_the_inspector_through_a_live_kernel(lab, chromium_path, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p, chromium(p, tmp_path / "profile", chromium_path) as page:
        panel = open_notebook(page, lab, DEMO.name)
        run_all(page)

        # the inspector is the first widget of the notebook: its step slider, picture and readout
        inspector = panel.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-slider")).first
        readout = inspector.locator(".widget-html")
        picture = inspector.locator(".widget-image")
        expect(readout).to_contain_text("step 5 of 5")
        expect(picture).to_be_visible()
        # the last cell ran (so all did) in this environment's Python
        expect(panel.locator(".jp-OutputArea-output", has_text="kernel python:")).to_contain_text(sys.executable)
        wait_idle(page)
        inspector.evaluate("node => node.scrollIntoView({block: 'start'})")
        before_text = readout.inner_text()
        before_picture = picture.screenshot()
        inspector.screenshot(path=str(ARTIFACTS / "browser_inspector_before.png"))

        step = inspector.locator(".widget-slider", has=page.locator(".widget-label", has_text="step"))
        step.locator(".noUi-handle").focus()
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")

        # the kernel recomputed the readout (it sends the new picture before the readout)
        expect(readout).to_contain_text("step 3 of 5")
        expect(step.locator(".widget-readout")).to_have_text("3")
        wait_idle(page)
        after_text = readout.inner_text()
        assert after_text != before_text
        assert "positions 12..17 evicted from Mem and compressed" in after_text
        assert picture.screenshot() != before_picture, "the picture did not change after moving the slider"
        inspector.screenshot(path=str(ARTIFACTS / "browser_inspector_after.png"))
        page.screenshot(path=str(ARTIFACTS / "browser_page_after.png"))
