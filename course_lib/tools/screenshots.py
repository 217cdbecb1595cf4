"""The README's pictures of the four explorers, taken from a live JupyterLab in headless Chromium.

    python -m course_lib.tools.screenshots [--out docs] [NAME ...]

NAME is one of attention_explorer, cost_explorer, memory_inspector, compression_playground
(default: all four); each is written to ``OUT/NAME.png``. Each picture is one notebook cell
that builds the explorer in the state below, run by a real kernel (``COURSE_DEVICE=cpu``)
through the same Playwright path as ``tests/test_browser.py`` (:mod:`course_lib.tools.browser`).
The cost explorer's "measure" button is pressed and the picture is taken once the measured
curves are drawn, so its right panel shows this machine's timings.

Needs the dev extra (playwright) and Chromium.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from course_lib.tools.browser import ROOT, chromium, jupyter_lab, open_notebook, run_all, wait_idle, widget_output

VIEWPORT = {"width": 1500, "height": 1400}  # outputs 1068 px wide beside JupyterLab's side bar


@dataclass(frozen=True)
class Shot:
    code: str  # the cell that shows the explorer
    ready: str  # text the readout shows once the explorer is drawn in this state
    press: str | None = None  # a button to press first (its label)
    pressed_ready: str | None = None  # text the readout shows once that button's work is done


SHOTS = {
    "attention_explorer": Shot(
        'from course_lib.widgets import AttentionExplorer\n\n'
        'AttentionExplorer("the cat sat on the mat and the dog sat on the cat", i=9, mask="sinks", window=4, sinks=1)',
        ready="q_9 ('sat')"),
    "cost_explorer": Shot(
        "from course_lib.widgets import CostExplorer\n\n"
        'CostExplorer(measure_up_to=4096, memory="window", size=1024)',
        ready="full KV cache: at m", press="measure", pressed_ready="measured full KV cache"),
    "memory_inspector": Shot(
        "from course_lib.widgets import MemoryInspector\n\n"
        'MemoryInspector(memory="compressive", mem_len=6, cmem_len=8, ratio=3, chunk=6, step=4)',
        ready="step 4 of 5"),
    "compression_playground": Shot(
        "from course_lib.widgets import CompressionPlayground\n\n"
        'CompressionPlayground(compress="mean", ratio=4, signal="smooth")',
        ready="relative error of the attention outputs"),
}


def write_notebook(path: Path, code: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    return path


def take(names: list[str], out: Path, measure_timeout_s: float = 600) -> list[Path]:
    """Write ``out/NAME.png`` for each name; returns the paths."""
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="course-shots-") as tmp:
        tmp = Path(tmp)
        root = tmp / "root"
        root.mkdir()
        for name in names:
            write_notebook(root / f"{name}.ipynb", SHOTS[name].code)
        with (jupyter_lab(root, tmp) as url, sync_playwright() as p,
              chromium(p, tmp / "profile", viewport=VIEWPORT) as page):
            for name in names:
                shot = SHOTS[name]
                panel = open_notebook(page, url, f"{name}.ipynb")
                run_all(page)
                output = widget_output(page, panel)
                readout = output.locator(".widget-html").first
                expect(readout).to_contain_text(shot.ready)
                wait_idle(page)
                if shot.press:
                    output.locator("button", has_text=shot.press).click()
                    expect(output).to_contain_text(shot.pressed_ready, timeout=measure_timeout_s * 1000)
                    wait_idle(page)
                time.sleep(0.5)  # the last picture update paints
                output.evaluate("node => node.scrollIntoView({block: 'start'})")
                path = out / f"{name}.png"
                output.screenshot(path=str(path))
                written.append(path)
                print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.tools.screenshots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help="any of " + ", ".join(SHOTS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the pictures (default docs/)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SHOTS]
    if unknown:
        parser.error(f"unknown picture {unknown[0]!r}; expected one of {', '.join(SHOTS)}")
    take(args.names or list(SHOTS), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
