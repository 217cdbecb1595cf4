"""Generate ``exercises/`` from the solutions' text sources (``make exercises``).

Each ``solutions/src/NN_topic_solutions.md`` (or, for a solution without a text source yet,
``solutions/NN_topic_solutions.ipynb``) becomes ``exercises/NN_topic_exercises.ipynb``:

* every region between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers)
  in a code cell becomes ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the
  marker's indentation; in a markdown cell it becomes ``YOUR ANSWER HERE``;
* outputs, execution counts and cell metadata are cleared, except each cell's tags; the
  notebook keeps its kernelspec and gets ``metadata.course``: the lesson (what the grade
  command reads to know the lesson's registered total) and a fingerprint of the cells as
  generated.

A region must sit inside a function or class body (indented): at the top level of a cell
the ``raise`` would stop the exercise notebook, which must run from top to bottom.

A learner's work is never lost. An exercise notebook whose cells differ both from the
fingerprint it was generated with (what the course wrote last time) and from the fresh copy
(what it would write now) holds a learner's answers, committed to git or not: it is left as it
is, the command says so and exits 0 (keeping your work is a normal outcome, not an error).
``--force`` (``make exercises FORCE=1``) first moves it to ``exercises/backups/``, says where
and how to bring it back, and then writes the fresh copy. Git plays no part: a learner who
commits their answers is protected the same way.

    python -m course_lib.tools.make_exercises [--check] [--force] [SOLUTION ...]

``--check`` writes nothing and exits 1 when a file in exercises/ differs from what it would be.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_STUB = ("YOUR ANSWER HERE",)
BACKUPS = "backups"

__all__ = ["strip_solutions", "make_exercise", "render", "render_text", "exercise_path", "solution_paths",
           "holds_answers", "is_learners_work", "fingerprint", "main"]


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


def fingerprint(nb) -> str:
    """A hash of the cells' types and texts (not outputs, ids or metadata): what a learner edits."""
    h = hashlib.sha1()
    for cell in nb.cells:
        h.update(f"{cell.cell_type}\0{cell.source}\0\0".encode())
    return h.hexdigest()[:16]


def lesson_of(path: Path) -> str:
    match = re.match(r"(\d\d)_", Path(path).name)
    if not match:
        raise ValueError(f"a solution must be named NN_topic_solutions.md/.ipynb, got {Path(path).name!r}")
    return match.group(1)


def make_exercise(solution: nbformat.NotebookNode, name: str = "notebook", lesson: str | None = None):
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
    course = {"generated": fingerprint(nb)}
    if lesson is not None:
        course = {"lesson": lesson, **course}
    nb.metadata["course"] = course
    return nb


def read_solution_text(text: str, name: str):
    """A solution notebook from the text of its source (``.md``, MyST) or of an ``.ipynb``."""
    if name.endswith(".md"):
        from course_lib.tools.sources import from_text

        return from_text(text, where=name)
    return nbformat.reads(text, as_version=4)


def render_text(text: str, name: str) -> str:
    """The text of the exercise notebook generated from a solution's text (``name`` ends .md or .ipynb)."""
    solution = read_solution_text(text, name)
    out = nbformat.writes(make_exercise(solution, name=name, lesson=lesson_of(Path(name))))
    return out if out.endswith("\n") else out + "\n"


def render(solution_path: Path) -> str:
    """The text of the exercise notebook generated from ``solution_path`` (.md source or .ipynb)."""
    solution_path = Path(solution_path)
    return render_text(solution_path.read_text(encoding="utf-8"), str(solution_path))


def exercise_path(solution_path: Path) -> Path:
    """``solutions/[src/]NN_topic_solutions.(md|ipynb)`` -> ``exercises/NN_topic_exercises.ipynb``."""
    solution_path = Path(solution_path)
    name = solution_path.name
    match = re.fullmatch(r"(\d\d_\w+)_solutions\.(md|ipynb)", name)
    if not match:
        raise ValueError(f"solution_path must be named NN_topic_solutions.ipynb (or .md), got {name!r}")
    solutions = solution_path.parent.parent if solution_path.parent.name == "src" else solution_path.parent
    return solutions.parent / "exercises" / f"{match.group(1)}_exercises.ipynb"


def solution_paths(root: Path = ROOT) -> list[Path]:
    """Each lesson's solution: its text source where it has one, else its .ipynb."""
    root = Path(root)
    found: dict[str, Path] = {}
    for path in sorted((root / "solutions").glob("*_solutions.ipynb")):
        found[path.stem] = path
    for path in sorted((root / "solutions" / "src").glob("*_solutions.md")):
        found[path.stem] = path
    return [found[k] for k in sorted(found)]


def holds_answers(text: str) -> bool:
    """Whether an exercise notebook's text was changed since it was generated (a learner's work).

    A notebook without the generator's fingerprint (made before fingerprints, or its metadata
    removed) counts as holding answers: nothing is replaced that cannot be told apart from one."""
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception:
        return True
    stamp = nb.metadata.get("course", {}).get("generated")
    return stamp != fingerprint(nb)


def committed_text(path: Path, root: Path = ROOT) -> str | None:
    """The text of ``path`` as committed (``git show HEAD:path``); None without git or when not committed."""
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
        out = subprocess.run(["git", "show", f"HEAD:{rel.as_posix()}"], cwd=root, capture_output=True,
                             timeout=30, check=False)
    except (ValueError, OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8") if out.returncode == 0 else None


def backup(target: Path) -> Path:
    folder = target.parent / BACKUPS
    folder.mkdir(exist_ok=True)
    dest = folder / f"{target.stem}-{time.strftime('%Y%m%d-%H%M%S')}{target.suffix}"
    n = 1
    while dest.exists():
        n += 1
        dest = folder / f"{target.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{n}{target.suffix}"
    target.replace(dest)
    return dest


def _show(path: Path) -> str:
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def is_learners_work(current: str, fresh: str) -> bool:
    """Whether the exercise notebook ``current`` holds work the course did not generate.

    Compared with what the course generated (the fingerprint it stamped into the notebook last
    time) and with what it would generate now (``fresh``), never with git: a learner's answers are
    theirs whether or not they committed them. Outputs and execution counts are not work (running
    the notebook again recreates them)."""
    if not holds_answers(current):
        return False
    try:
        cells = fingerprint(nbformat.reads(current, as_version=4))
    except Exception:
        return True
    return cells != fingerprint(nbformat.reads(fresh, as_version=4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.tools.make_exercises",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if exercises/ is stale")
    parser.add_argument("--force", action="store_true",
                        help="replace exercise notebooks that hold answers, after moving them to exercises/backups/")
    parser.add_argument("solutions", nargs="*", type=Path,
                        help="solution sources or notebooks (default: every one in solutions/)")
    args = parser.parse_args(argv)
    stale, kept = [], []
    for path in args.solutions or solution_paths():
        target = exercise_path(path.resolve())
        text = render(path)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        stale.append(target)
        if args.check:
            continue
        if current is not None and is_learners_work(current, text):
            if not args.force:
                kept.append(target)
                continue
            saved = backup(target)
            print(f"moved {_show(target)} (it holds your answers) to {_show(saved)}; to bring it back: "
                  f"mv {shlex.quote(_show(saved))} {shlex.quote(_show(target))}")
        target.parent.mkdir(exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {_show(target)}")
    if args.check and stale:
        print("stale (run `make exercises`): " + ", ".join(_show(p) for p in stale))
        return 1
    for target in kept:
        print(f"left {_show(target)} as it is: it holds your answers (it was changed since it was generated). "
              f"Nothing was lost. To replace it with a fresh copy, run `make exercises FORCE=1`: your version is "
              f"first moved to exercises/{BACKUPS}/.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
