"""What the grade command reads in a notebook: its cells, its lessons, and its ``check`` calls.

:func:`check_calls` is the one parser of ``check("NN.name", answer)`` calls: the grade command,
the exercise generator's tests and anything else that asks which exercises a cell checks use
it. It reads the cell with :mod:`ast` (a comment or a string that looks like a call is not
one); a cell that does not parse as a whole (a typo, IPython's ``%magic`` or ``!shell``
lines) is read line by line, each line that parses alone counting.

The notebook is graded for its lessons (:func:`lessons_of`): its metadata's
(``metadata.course.lesson``), its file name's ``NN_``, and that of every exercise it checks;
:func:`targets` lists every registered exercise of those lessons with its first check call.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..core import Exercise
from ..lessons import lesson_exercises
from . import GradingError

__all__ = ["CheckCall", "Target", "check_calls", "lessons_of", "targets", "read_notebook"]

EXERCISE_ID = re.compile(r"\d\d\.\w+")


@dataclass(frozen=True)
class CheckCall:
    """One ``check(exercise_id, answer)`` call: ``answer`` is the source of its answer argument
    (``None`` when the call passes none)."""

    exercise_id: str
    answer: str | None


@dataclass
class Target:
    """An exercise the notebook is graded on: the index of the first cell that checks it
    (``None``: no cell does) and the source of the answer that call passes."""

    exercise: Exercise
    cell: int | None = None
    answer: str | None = None


_UNPARSABLE = (SyntaxError, ValueError, RecursionError, MemoryError)  # ValueError: a null byte


def _trees(source: str):
    """``(tree, its source)``: the whole cell, or each line that parses alone when the cell does not."""
    try:
        yield ast.parse(source), source
        return
    except _UNPARSABLE:
        pass
    for line in source.splitlines():
        try:
            yield ast.parse(line.strip()), line.strip()
        except _UNPARSABLE:
            continue


def check_calls(source: str) -> list[CheckCall]:
    """Each ``check("NN.name", answer)`` call (or ``something.check(...)``) in a cell's source, in
    the order they appear; the answer may also be passed as ``answer=``."""
    found = []
    for position, (tree, text) in enumerate(_trees(source)):
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str) and EXERCISE_ID.fullmatch(node.args[0].value)):
                continue
            func = node.func
            if not ((isinstance(func, ast.Name) and func.id == "check")
                    or (isinstance(func, ast.Attribute) and func.attr == "check")):
                continue
            answer = node.args[1] if len(node.args) > 1 else \
                next((k.value for k in node.keywords if k.arg == "answer"), None)
            expr = None if answer is None else ast.get_source_segment(text, answer)
            found.append(((position, node.lineno, node.col_offset), CheckCall(node.args[0].value, expr)))
    return [call for _, call in sorted(found, key=lambda pair: pair[0])]


def lessons_of(nb, path: Path) -> list[str]:
    """The lessons a notebook is graded for: its metadata's, its file name's, and those it checks."""
    found = set()
    meta = nb.metadata.get("course", {}) if isinstance(nb.metadata.get("course"), dict) else {}
    if isinstance(meta.get("lesson"), str) and re.fullmatch(r"\d\d", meta["lesson"]):
        found.add(meta["lesson"])
    name = re.match(r"(\d\d)_", Path(path).name)
    if name:
        found.add(name.group(1))
    for cell in nb.cells:
        if cell.cell_type == "code":
            found.update(call.exercise_id.split(".")[0] for call in check_calls(cell.source))
    return sorted(found)


def targets(nb, path: Path) -> tuple[list[str], dict[str, Target]]:
    """The notebook's lessons, and every registered exercise of them, in order, with its first check call."""
    lessons = lessons_of(nb, path)
    found = {ex.id: Target(ex) for lesson in lessons for ex in lesson_exercises(lesson)}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for call in check_calls(cell.source):
            target = found.get(call.exercise_id)
            if target is not None and target.cell is None:
                target.cell, target.answer = index, call.answer
    return lessons, found


def read_notebook(path: Path):
    """The notebook at ``path`` (nbformat 4), every cell's source as one string; raises
    :class:`GradingError` naming the file and what is wrong when it is not a notebook."""
    import nbformat

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        _plain_sources(raw)
        return nbformat.reads(json.dumps(raw), as_version=4)
    except GradingError:
        raise
    except Exception as err:  # not JSON, not a notebook
        detail = " ".join(str(err).split())[:300]
        raise GradingError(f"cannot read {str(path)!r} as a notebook: {detail}") from None


def _plain_sources(nb) -> None:
    """Every cell's source as one string (a cell whose source is not text is refused by name)."""
    cells = nb.get("cells", []) if isinstance(nb, dict) else []
    for index, cell in enumerate(cells if isinstance(cells, list) else []):
        if not isinstance(cell, dict):
            raise GradingError(f"cell {index + 1} must be a JSON object, got {type(cell).__name__}")
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(part, str) for part in source):
            cell["source"] = "".join(source)
        elif not isinstance(source, str):
            raise GradingError(f"cell {index + 1}'s source must be text, got {type(source).__name__}")
