"""The text source of each notebook: jupytext MyST Markdown, paired with the executed .ipynb.

Every ``notebooks/NN_topic.ipynb`` is built from ``notebooks/src/NN_topic.md`` and every
``solutions/NN_topic_solutions.ipynb`` from ``solutions/src/NN_topic_solutions.md`` (the
pairing ``jupytext.toml`` declares). The source holds the inputs: cells, their tags and the
kernelspec; the .ipynb adds the outputs of a real run (``make notebooks``).

Cell ids are not positional, so inserting or moving a cell leaves the others' ids alone:

* a cell whose metadata names an ``id`` (``+++ {"id": "goals"}`` before a markdown cell,
  ``:id: setup`` in a code cell's options) gets that id;
* any other cell gets a hash of its type and text; identical cells are told apart by a
  ``-2``, ``-3`` suffix in order of appearance.

Editing a cell's text changes that cell's derived id only; give a cell an explicit id when
something outside the notebook refers to it.

A built notebook carries ``metadata.course.built_from``: a fingerprint of the cells it was
built with (types and texts). :func:`manual_edits` uses it to tell a notebook the course wrote
from one somebody edited by hand (a note added in JupyterLab): a notebook whose cells match
neither that fingerprint, nor its source as it is now, nor its committed source (for notebooks
built before the fingerprint) holds manual edits, and ``make notebooks`` does not overwrite it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = "src"  # notebooks/src/X.md <-> notebooks/X.ipynb (same for solutions/)
PAIRED_DIRS = ("notebooks", "solutions")  # exercises/ is generated from solutions/, never paired
FORMAT = "md:myst"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

BUILT_FROM = "built_from"  # metadata.course.built_from: the fingerprint of the cells a notebook was built with

__all__ = ["source_for", "notebook_for", "all_sources", "read_source", "from_text", "assign_ids", "input_cells",
           "cells_fingerprint", "stamp", "built_from", "manual_edits"]


def source_for(notebook: Path) -> Path:
    """``notebooks/X.ipynb`` -> ``notebooks/src/X.md`` (and the same in solutions/)."""
    notebook = Path(notebook).resolve()
    if notebook.suffix != ".ipynb" or notebook.parent.name not in PAIRED_DIRS:
        raise ValueError(f"notebook must be notebooks/NN_topic.ipynb or solutions/NN_topic_solutions.ipynb, "
                         f"got {notebook}")
    return notebook.parent / SOURCE_DIR / (notebook.stem + ".md")


def notebook_for(source: Path) -> Path:
    """``notebooks/src/X.md`` -> ``notebooks/X.ipynb`` (and the same in solutions/)."""
    source = Path(source).resolve()
    if source.suffix != ".md" or source.parent.name != SOURCE_DIR or source.parent.parent.name not in PAIRED_DIRS:
        raise ValueError(f"source must be notebooks/src/NN_topic.md or solutions/src/NN_topic_solutions.md, "
                         f"got {source}")
    return source.parent.parent / (source.stem + ".ipynb")


def all_sources(root: Path = ROOT) -> list[Path]:
    """Every text source under notebooks/src/ and solutions/src/, sorted."""
    return sorted(p for d in PAIRED_DIRS for p in (Path(root) / d / SOURCE_DIR).glob("*.md"))


def _derived_id(cell) -> str:
    return hashlib.sha1(f"{cell.cell_type}\0{cell.source}".encode()).hexdigest()[:10]


def assign_ids(nb, where: str = "notebook"):
    """Give every cell its id (explicit ``id`` metadata, else a hash of its text); in place."""
    seen: dict[str, int] = {}
    explicit = set()
    for index, cell in enumerate(nb.cells):
        given = cell.metadata.pop("id", None)
        if given is not None:
            given = str(given)
            if not ID_PATTERN.match(given):
                raise ValueError(f"{where}, cell {index}: id must match {ID_PATTERN.pattern}, got {given!r}")
            if given in explicit:
                raise ValueError(f"{where}, cell {index}: id {given!r} is given to two cells; ids must be unique")
            explicit.add(given)
            cell.id = given
    for cell in nb.cells:
        if cell.id in explicit:
            continue
        base = _derived_id(cell)
        seen[base] = seen.get(base, 0) + 1
        cell.id = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return nb


def from_text(text: str, where: str = "notebook"):
    """A notebook (inputs only, ids assigned) from the text of a MyST source."""
    import jupytext

    nb = jupytext.reads(text, fmt=FORMAT)
    kernelspec = nb.metadata.get("kernelspec")
    if not kernelspec:
        raise ValueError(f"{where}: the front matter must declare a kernelspec (name: python3)")
    nb.metadata = nbformat.from_dict({"kernelspec": kernelspec})
    nb.nbformat, nb.nbformat_minor = 4, 5
    return assign_ids(nb, where=where)


def read_source(source: Path):
    """The notebook (inputs only) that ``source`` describes."""
    source = Path(source)
    return from_text(source.read_text(encoding="utf-8"), where=str(source))


def input_cells(nb) -> list[tuple]:
    """What a source determines about each cell: id, type, text and metadata (run timings left out)."""
    rows = []
    for cell in nb.cells:
        meta = {k: v for k, v in cell.metadata.items() if k not in ("execution", "collapsed", "scrolled")}
        rows.append((cell.get("id"), cell.cell_type, cell.source, meta))
    return rows


def cells_fingerprint(nb) -> str:
    """A hash of the cells' types and texts (not outputs, ids or metadata): what somebody edits by hand."""
    h = hashlib.sha1()
    for cell in nb.cells:
        h.update(f"{cell.cell_type}\0{cell.source}\0\0".encode())
    return h.hexdigest()[:16]


def stamp(nb):
    """Record in ``nb.metadata.course`` the fingerprint of the cells it is being built with; in place."""
    course = nb.metadata.get("course")
    course = dict(course) if isinstance(course, dict) else {}
    course[BUILT_FROM] = cells_fingerprint(nb)
    nb.metadata["course"] = nbformat.from_dict(course)
    return nb


def built_from(nb) -> str | None:
    """The fingerprint ``nb`` was built with (None for a notebook built before fingerprints)."""
    course = nb.metadata.get("course")
    value = course.get(BUILT_FROM) if isinstance(course, dict) else None
    return value if isinstance(value, str) else None


def _committed_text(path: Path) -> str | None:
    """``path`` as committed (``git show HEAD:./name`` in its folder); None without git or when not committed."""
    path = Path(path)
    try:
        out = subprocess.run(["git", "show", f"HEAD:./{path.name}"], cwd=path.parent, capture_output=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8") if out.returncode == 0 else None


def generated_fingerprints(notebook_nb, source: Path) -> set[str]:
    """The fingerprints of every version of the cells the course generated for a notebook: the one
    it was built with (its stamp), its source's as it is now, and its committed source's."""
    found = set()
    stamped = built_from(notebook_nb)
    if stamped:
        found.add(stamped)
    source = Path(source)
    texts = [source.read_text(encoding="utf-8")] if source.exists() else []
    committed = _committed_text(source)
    if committed is not None:
        texts.append(committed)
    for text in texts:
        try:
            found.add(cells_fingerprint(from_text(text, where=str(source))))
        except Exception:  # a source being edited may not parse; it then matches nothing
            pass
    return found


def manual_edits(notebook: Path, source: Path) -> bool:
    """Whether ``notebook`` holds cells nobody generated from ``source`` (edited by hand: keep it).

    Compared with what the course generated (the stamp written at build time, the source now, the
    committed source), never with the committed notebook: edits are somebody's work whether or
    not they were committed. Outputs are not compared (running a notebook is not editing it)."""
    notebook = Path(notebook)
    if not notebook.exists():
        return False
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception:
        return True  # unreadable: nothing tells it apart from somebody's work
    return cells_fingerprint(nb) not in generated_fingerprints(nb, source)
