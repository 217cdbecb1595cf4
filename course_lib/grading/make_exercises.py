"""Generate ``exercises/`` from the single source in ``solutions/`` (``make exercises``).

Each ``solutions/NN_topic_solutions.ipynb`` becomes ``exercises/NN_topic_exercises.ipynb``:

* every region between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers)
  in a code cell becomes ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the
  marker's indentation; in a markdown cell it becomes ``YOUR ANSWER HERE``;
* outputs, execution counts and metadata are cleared, except the notebook's kernelspec
  and each cell's tags.

A region must sit inside a function or class body (indented): at the top level of a cell
the ``raise`` would stop the exercise notebook, which must run from top to bottom.

    python -m course_lib.grading.make_exercises [--check]

``--check`` writes nothing and exits 1 when a file in exercises/ differs from what it would be.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_STUB = ("YOUR ANSWER HERE",)

__all__ = ["strip_solutions", "make_exercise", "render", "exercise_path", "main"]


def strip_solutions(source: str, *, cell_type: str = "code", where: str = "cell") -> str:
    """Replace every solution region of one cell's source by the stub."""
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.split("\n"), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN!r} inside another solution region")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if cell_type == "code" and not indent:
                raise ValueError(
                    f"{where}, line {number}: a solution region at the top level of a code cell would make "
                    "the exercise notebook raise NotImplementedError; put it inside a function or class body"
                )
            stub = CODE_STUB if cell_type == "code" else MARKDOWN_STUB
            out.extend(indent + text for text in stub)
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END!r} without a {BEGIN!r} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(out)


def make_exercise(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The exercise notebook for a solution notebook (the input is left unchanged)."""
    nb = copy.deepcopy(solution)
    nb.metadata = nbformat.from_dict({k: v for k, v in solution.metadata.items() if k == "kernelspec"})
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        if cell.cell_type in ("code", "markdown"):
            cell.source = strip_solutions(cell.source, cell_type=cell.cell_type, where=where)
        tags = cell.metadata.get("tags")
        cell.metadata = nbformat.from_dict({"tags": list(tags)} if tags else {})
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def render(solution_path: Path) -> str:
    """The text of the exercise notebook generated from ``solution_path``."""
    solution = nbformat.read(solution_path, as_version=4)
    text = nbformat.writes(make_exercise(solution, name=str(solution_path)))
    return text if text.endswith("\n") else text + "\n"


def exercise_path(solution_path: Path) -> Path:
    """``solutions/NN_topic_solutions.ipynb`` -> ``exercises/NN_topic_exercises.ipynb``."""
    name = solution_path.name
    if not name.endswith("_solutions.ipynb"):
        raise ValueError(f"solution_path must be named NN_topic_solutions.ipynb, got {name!r}")
    return solution_path.parent.parent / "exercises" / name.replace("_solutions.ipynb", "_exercises.ipynb")


def solution_paths(root: Path = ROOT) -> list[Path]:
    return sorted((root / "solutions").glob("*_solutions.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading.make_exercises", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if exercises/ is stale")
    parser.add_argument("solutions", nargs="*", type=Path, help="solution notebooks (default: all)")
    args = parser.parse_args(argv)
    stale = []
    for path in args.solutions or solution_paths():
        target = exercise_path(path.resolve())
        text = render(path)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        stale.append(target)
        if not args.check:
            target.parent.mkdir(exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
    if args.check and stale:
        print("stale (run `make exercises`): " + ", ".join(str(p) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
