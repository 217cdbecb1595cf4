"""Small notebooks written for the grade command's tests (``from notebook_helpers import write_notebook``;
``tests/`` has no ``__init__.py``, so pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write_notebook(path, *sources, metadata=None, title="a synthetic notebook"):
    """A notebook at ``path``: a markdown title, then one code cell per source; returns ``path``."""
    cells = [new_markdown_cell(f"# {title}")] + [new_code_cell(s) for s in sources]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC, **(metadata or {})}), path)
    return path
