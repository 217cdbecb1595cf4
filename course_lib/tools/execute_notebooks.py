"""Build notebooks from their text sources and execute them in place, as ``make notebooks`` does.

Each notebook's inputs come from its jupytext MyST source (``notebooks/src/X.md`` ->
``notebooks/X.ipynb``, ``solutions/src/X.md`` -> ``solutions/X.ipynb``; see
:mod:`course_lib.tools.sources`). The stored outputs are what strict nbval compares later,
so they are produced here by a real run in the project's kernel, never pasted, with the
environment of ``make test`` (``COURSE_DEVICE=cpu``, ``COURSE_QUIET=1``, ``PYTHONHASHSEED=0``).

    python -m course_lib.tools.execute_notebooks [--no-execute] [PATH ...]

PATH is a notebook or its source; without paths, every source in notebooks/src/ and
solutions/src/. ``--no-execute`` writes the inputs only (outputs cleared). exercises/ is
generated from solutions/ by ``make exercises`` and is never written here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from course_lib.tools.sources import ROOT, all_sources, notebook_for, read_source, source_for

TEST_ENV = {"COURSE_DEVICE": "cpu", "COURSE_QUIET": "1", "PYTHONHASHSEED": "0"}


def resolve(path: Path) -> tuple[Path, Path]:
    """(source, notebook) for a path naming either one."""
    path = Path(path).resolve()
    if path.suffix == ".md":
        source, notebook = path, notebook_for(path)
    else:
        source, notebook = source_for(path), path
    if not source.exists():
        raise FileNotFoundError(f"{notebook.name} has no text source: expected {source}")
    return source, notebook


def build(source: Path, notebook: Path, execute: bool = True, timeout: int = 600) -> float:
    """Write ``notebook`` from ``source``; with ``execute``, run it first. Returns the run's seconds."""
    import nbformat

    nb = read_source(source)
    seconds = 0.0
    if execute:
        from nbclient import NotebookClient

        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(notebook.parent)}})
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
        nb.metadata.pop("widgets", None)  # widget state is not compared and only bloats diffs
    nbformat.validate(nb)
    nbformat.write(nb, notebook)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.tools.execute_notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks or their sources (default: all sources)")
    parser.add_argument("--no-execute", action="store_true", help="write the inputs only, without running")
    args = parser.parse_args(argv)
    os.environ.update(TEST_ENV)
    pairs = [resolve(p) for p in args.paths] if args.paths else [(s, notebook_for(s)) for s in all_sources()]
    for source, notebook in pairs:
        seconds = build(source, notebook, execute=not args.no_execute)
        shown = notebook.relative_to(ROOT) if notebook.is_relative_to(ROOT) else notebook
        print(f"{shown}: " + (f"executed in {seconds:.1f} s" if not args.no_execute else "inputs written"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
