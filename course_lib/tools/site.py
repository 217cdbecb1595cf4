"""The course as a static website: Jupyter Book 2 (mystmd) over the executed notebooks, nothing executed.

``make site`` (``python -m course_lib.tools.site``) lays out a staging folder ``_build/site/src``
that mirrors the repository (``notebooks/``, ``exercises/``, ``docs/``), writes its ``myst.yml``
with the table of contents read from the files on disk (every ``notebooks/NN_*.ipynb`` in lesson
order, then ``explore_memories``, then ``exercises/*_exercises.ipynb``; never ``solutions/``), and
runs ``jupyter book build --html`` there; the website lands in ``_build/site/html``. A lesson added
to ``notebooks/`` appears without an edit here.

The pages:

* ``index.md``: ``site/index.md`` with the lesson map (:mod:`course_lib.tools.lesson_map`) put in
  at ``{{ lesson_map }}``;
* ``running.md``: ``site/running.md`` (``make lab``, ``python -m course_lib grade``);
* ``grading.md``: ``docs/grading.md`` (class grading) when the repository has it.

The notebooks' stored outputs are the source of truth. An ipywidgets output has no saved widget
state (``make notebooks`` clears it), so on the site it becomes the explorer's screenshot from
``docs/`` (when there is one) and a sentence saying the live explorer needs a kernel.

The theme is MyST's book theme built from its source in ``site/vendor/myst-theme`` (mystmd would otherwise
download it from the internet on the first build): ``make site-theme`` installs its packages from
the npm registry (``npm ci``) and builds it once; it needs Node.js >= 18 and npm.

The build writes a fingerprint of its inputs (``_build/site/html/.inputs``); :func:`stale` says
whether a build is out of date, so ``tests/test_site.py`` reuses a fresh ``make site``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from course_lib.tools import lesson_map

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "site"
THEME = SITE / "vendor" / "myst-theme"  # third-party source, vendored: see its README.md and LICENSE
OUT = ROOT / "_build" / "site"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# a widget class named in a cell -> its screenshot in docs/ (python -m course_lib.tools.screenshots)
SCREENSHOTS = {"AttentionExplorer": "attention_explorer.png", "CostExplorer": "cost_explorer.png",
               "MemoryInspector": "memory_inspector.png", "CompressionPlayground": "compression_playground.png",
               "RetrievalExplorer": "retrieval_explorer.png"}
LIVE_NOTE = ("*This is a live explorer (ipywidgets): its controls need a running Python kernel, so the website "
             "shows {what}. Run the course locally (`make lab`, see [Running the course](#running)) and run "
             "this cell to move them.*")
FINGERPRINT = ".inputs"

__all__ = ["pages", "stage", "build", "stale", "fingerprint", "theme_ready", "main"]


def lessons(root: Path = ROOT) -> list[Path]:
    """The lesson notebooks ``notebooks/NN_*.ipynb``, in lesson order."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def exercises(root: Path = ROOT) -> list[Path]:
    """The exercise notebooks ``exercises/*_exercises.ipynb``, in lesson order (never solutions)."""
    return sorted((root / "exercises").glob("*_exercises.ipynb"))


def pages(root: Path = ROOT) -> dict[str, list[str]]:
    """The table of contents by part: each a list of paths relative to the repository."""
    rel = lambda paths: [p.relative_to(root).as_posix() for p in paths]  # noqa: E731
    extra = [p for p in [root / "docs" / "grading.md"] if p.is_file()]
    explore = [p for p in [root / "notebooks" / "explore_memories.ipynb"] if p.is_file()]
    return {"intro": ["index.md", "running.md"] + rel(extra), "lessons": rel(lessons(root)),
            "playground": rel(explore), "exercises": rel(exercises(root))}


def _inputs(root: Path) -> list[Path]:
    files = [root / p for part in pages(root).values() for p in part if p not in ("index.md", "running.md")]
    files += sorted(SITE.glob("*.md")) + [SITE / "myst.yml", SITE / "favicon.png"]
    files += sorted((root / "docs").glob("*.png"))
    files += [Path(lesson_map.__file__), Path(__file__), THEME / "build" / "index.js"]
    return files


def fingerprint(root: Path = ROOT) -> str:
    """A hash of everything the site is built from (pages, pictures, the map, this module, the theme)."""
    digest = hashlib.sha256()
    for path in _inputs(root):
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()


def stale(out: Path = OUT, root: Path = ROOT) -> bool:
    """True when ``out/html`` is missing or was built from other inputs than the ones on disk now."""
    stamp = Path(out) / "html" / FINGERPRINT
    return not stamp.is_file() or stamp.read_text().strip() != fingerprint(root)


def theme_ready() -> bool:
    return (THEME / "build" / "index.js").is_file() and (THEME / "node_modules").is_dir()


def _widget_class(source: str) -> str | None:
    found = [name for name in SCREENSHOTS if re.search(rf"\b{name}\(", source)]
    return found[-1] if found else None


def _static_widgets(nb, root: Path) -> int:
    """Replace every widget output of ``nb`` by the explorer's screenshot (if any) and a note; returns how many."""
    replaced = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            if WIDGET_MIME not in output.get("data", {}):
                outputs.append(output)
                continue
            replaced += 1
            name = _widget_class(cell.source)
            picture = root / "docs" / SCREENSHOTS[name] if name else None
            if picture is not None and picture.is_file():
                png = base64.b64encode(picture.read_bytes()).decode()
                outputs.append(nbformat.v4.new_output("display_data", data={"image/png": png}))
                what = f"a picture of the {name} taken in JupyterLab"
            else:
                what = "no picture of it"
            outputs.append(nbformat.v4.new_output("display_data", data={"text/markdown": LIVE_NOTE.format(what=what)}))
        cell.outputs = outputs
    nb.metadata.pop("widgets", None)
    return replaced


def _markdown_outputs(nb) -> int:
    """Move each code cell's ``text/markdown`` outputs (sentences the lessons render from their runs) into a
    Markdown cell right after it; returns how many moved.

    The theme shows a Markdown output through Jupyter's renderer, which fetches MathJax from a CDN for a
    formula (offline: a failed request, a raw formula); as a Markdown cell mystmd renders it like the prose,
    formulas in KaTeX. Other outputs keep their place; a Markdown output between two of them moves below."""
    cells, moved = [], 0
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type != "code":
            continue
        texts = [o for o in cell.get("outputs", []) if "text/markdown" in o.get("data", {})]
        if texts:
            cell.outputs = [o for o in cell.outputs if "text/markdown" not in o.get("data", {})]
            body = "\n\n".join(o["data"]["text/markdown"] for o in texts)
            cells.append(nbformat.v4.new_markdown_cell(_dropdowns(body)))
            moved += len(texts)
    nb.cells = cells
    return moved


DETAILS = re.compile(r"(?P<indent>[ \t]*)<details>\s*<summary>(?P<title>.*?)</summary>(?P<body>.*?)[ \t]*</details>",
                     flags=re.DOTALL)


def _dropdowns(markdown: str) -> str:
    """Each ``<details><summary>T</summary> ... </details>`` as a MyST ``{dropdown}`` of title T.

    Raw HTML split over several Markdown blocks (an answer of several paragraphs inside a list item) renders
    as loose tags that React cannot hydrate (a console error on every such page), and Markdown inside raw
    HTML is not Markdown to mystmd (its formulas would stay raw); the directive is both."""
    def fence(m):
        indent, body = m["indent"], m["body"].strip("\n")
        return f"{indent}:::{{dropdown}} {m['title'].strip()}\n{body}\n{indent}:::"
    return DETAILS.sub(fence, markdown)


def _toc(parts: dict[str, list[str]]) -> list[dict]:
    toc = [{"file": p} for p in parts["intro"]]
    toc.append({"title": "Lessons", "children": [{"file": p} for p in parts["lessons"] + parts["playground"]]})
    if parts["exercises"]:
        toc.append({"title": "Exercises", "children": [{"file": p} for p in parts["exercises"]]})
    return toc


def myst_config(parts: dict[str, list[str]]) -> dict:
    """The staging folder's ``myst.yml`` (JSON is YAML): ``site/myst.yml``'s settings plus the toc."""
    return {"version": 1, "extends": [str(SITE / "myst.yml")],
            "project": {"toc": _toc(parts)},
            "site": {"template": str(THEME)}}


def stage(src: Path, root: Path = ROOT) -> dict[str, list[str]]:
    """Lay out the staging folder ``src`` (emptied first); returns the table of contents by part."""
    src = Path(src)
    if src.exists():
        shutil.rmtree(src)
    (src / "docs").mkdir(parents=True)
    parts = pages(root)
    index = (SITE / "index.md").read_text(encoding="utf-8")
    if "{{ lesson_map }}" not in index:
        raise ValueError("site/index.md must hold '{{ lesson_map }}' where the lesson map goes")
    (src / "index.md").write_text(index.replace("{{ lesson_map }}", lesson_map.lesson_table(base="", root=root)),
                                  encoding="utf-8")
    shutil.copy(SITE / "running.md", src / "running.md")
    shutil.copy(SITE / "favicon.png", src / "favicon.png")  # site/myst.yml's favicon, resolved from the staging folder
    for part in ("lessons", "playground", "exercises"):
        for rel in parts[part]:
            nb = nbformat.read(root / rel, as_version=4)
            _static_widgets(nb, root)
            _markdown_outputs(nb)
            for cell in nb.cells:
                if cell.cell_type == "markdown":
                    cell.source = _dropdowns(cell.source)
            # exercise notebooks generated from one template share cell ids; mystmd wants them unique
            for i, cell in enumerate(nb.cells):
                cell.id = f"{Path(rel).stem[:40]}-{i}"
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, src / rel)
    for rel in parts["intro"]:
        if rel.startswith("docs/"):
            shutil.copy(root / rel, src / rel)
    for png in (root / "docs").glob("*.png"):
        shutil.copy(png, src / "docs" / png.name)
    (src / "myst.yml").write_text(json.dumps(myst_config(parts), indent=2) + "\n", encoding="utf-8")
    return parts


def _jupyter_book() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found is None:
        raise RuntimeError("jupyter-book is not installed: `make env` installs it (pip install -e '.[dev]')")
    return [found]


def build(out: Path = OUT, root: Path = ROOT, quiet: bool = False, timeout_s: float = 600) -> Path:
    """Stage and build the website into ``out/html``; returns that folder. Raises with mystmd's log on failure."""
    if shutil.which("node") is None:
        raise RuntimeError("Node.js >= 18 is not on PATH: Jupyter Book 2 runs on it (apt-get install nodejs npm)")
    if not theme_ready():
        raise RuntimeError("the site's theme is not built: run `make site-theme` "
                           "(npm ci + build in site/vendor/myst-theme)")
    out = Path(out)
    src, html = out / "src", out / "html"
    start = time.monotonic()
    stamp = fingerprint(root)
    stage(src, root)
    # no telemetry
    env = dict(os.environ, MYST_NO_TELEMETRY="1")
    # its own process group: mystmd starts the theme's server (npm, node) and leaves it running when a build
    # fails; the group is ended after the build either way
    run = subprocess.Popen([*_jupyter_book(), "build", "--html", "--ci"], cwd=src, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    log = ""
    try:
        log, _ = run.communicate(timeout=timeout_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGTERM)
        if run.poll() is None:
            run.kill()
            run.wait()
    (out / "build.log").write_text(log)
    built = src / "_build" / "html"
    if run.returncode != 0 or not (built / "index.html").is_file():
        raise RuntimeError(f"jupyter book build failed ({run.returncode}); log in {out / 'build.log'}:\n"
                           f"{log[-4000:]}")
    if html.exists():
        shutil.rmtree(html)
    shutil.move(str(built), str(html))
    (html / FINGERPRINT).write_text(stamp + "\n")
    if not quiet:
        print(f"built the site in {time.monotonic() - start:.0f} s: {html}")
        print(f"view it: python -m http.server -d {os.path.relpath(html)} 8000   (then open http://localhost:8000)")
    return html


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.tools.site", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="build folder (default _build/site)")
    parser.add_argument("--if-stale", action="store_true", help="build only when the inputs changed")
    args = parser.parse_args(argv)
    if args.if_stale and not stale(args.out):
        print(f"the site in {args.out / 'html'} is up to date")
        return 0
    build(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
