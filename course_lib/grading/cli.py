"""``python -m course_lib grade NOTEBOOK.ipynb [--json] [--timeout S]``: score a notebook.

The notebook runs in a fresh kernel, in its own folder, cell after cell with a per-cell
timeout; a cell that raises does not stop the run (later items are still graded), a cell
that overstays is interrupted, and a kernel that dies ends the run with a report of what
was reached. Each ``check(...)`` call appends its result to a file whose path the kernel
gets in ``COURSE_GRADE_RECORD``; the last result per exercise counts. Items the run never
reached score 0 with feedback "not reached: ...". The notebook file is only read.

Exit status: 0 when grading worked (whatever the score), 2 when the notebook cannot be
read or no kernel starts.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .core import RECORD_ENV, format_score

__all__ = ["main", "grade_notebook", "Report", "Item"]

CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\w+)["']""")


@dataclass
class Item:
    id: str
    score: float
    max_score: float
    feedback: str

    def as_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "max_score": self.max_score, "feedback": self.feedback}


@dataclass
class Report:
    notebook: str
    items: list[Item]
    cell_errors: list[tuple[int, str]] = field(default_factory=list)  # (cell number, "Name: message")
    stopped: str = ""  # why the run ended early, if it did

    @property
    def score(self) -> float:
        return round(sum(item.score for item in self.items), 2)

    @property
    def max_score(self) -> float:
        return round(sum(item.max_score for item in self.items), 2)

    def as_dict(self) -> dict:
        return {"notebook": self.notebook, "score": self.score, "max_score": self.max_score,
                "exercises": [item.as_dict() for item in self.items]}

    def table(self) -> str:
        width = max([len("exercise"), *(len(item.id) for item in self.items)])
        scores = [f"{format_score(i.score)}/{format_score(i.max_score)}" for i in self.items]
        total = f"{format_score(self.score)}/{format_score(self.max_score)}"
        swidth = max([len("score"), len(total), *map(len, scores)])
        lines = [f"Grading {self.notebook}", f"{'exercise':<{width}}  {'score':>{swidth}}  feedback"]
        for item, score in zip(self.items, scores):
            lines.append(f"{item.id:<{width}}  {score:>{swidth}}  {item.feedback}")
        lines.append(f"{'total':<{width}}  {total:>{swidth}}")
        for number, error in self.cell_errors:
            lines.append(f"cell {number} raised {error}")
        if self.stopped:
            lines.append(f"the run stopped early: {self.stopped}")
        return "\n".join(lines)


def main(notebook, as_json: bool = False, timeout: float = 120.0) -> int:
    """Grade ``notebook`` and print a table (or JSON). Returns the exit status."""
    try:
        report = grade_notebook(notebook, timeout=timeout)
    except GradingError as err:
        print(f"grade: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2) if as_json else report.table())
    return 0


class GradingError(Exception):
    """The notebook could not be graded at all (unreadable file, no kernel)."""


def grade_notebook(notebook, *, timeout: float = 120.0) -> Report:
    """Run ``notebook`` in a fresh kernel and score every graded item it contains."""
    import nbformat

    from . import EXERCISES

    path = Path(notebook)
    if not path.is_file():
        raise GradingError(f"notebook {str(path)!r} does not exist (expected a path to an .ipynb file)")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise GradingError(f"timeout must be a positive number of seconds, got {timeout!r}")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # not JSON, not a notebook
        raise GradingError(f"cannot read {str(path)!r} as a notebook: {err}") from None

    expected = _expected_items(nb, path, EXERCISES)
    with tempfile.TemporaryDirectory(prefix="course_grade_") as tmp:
        record_path = Path(tmp) / "records.jsonl"
        record_path.touch()
        ran, stopped = _run(copy.deepcopy(nb), path.resolve().parent, timeout, record_path)
        records = _read_records(record_path)

    items = []
    for exercise_id, cell_index in expected.items():
        ex = EXERCISES.get(exercise_id)
        if exercise_id in records:
            r = records[exercise_id]
            items.append(Item(exercise_id, float(r["score"]), float(r["max_score"]), str(r["feedback"])))
        else:
            max_score = float(ex.points) if ex is not None else 0.0
            items.append(Item(exercise_id, 0.0, max_score, _not_reached(cell_index, ran, stopped)))
    for exercise_id, r in records.items():  # items graded that the source scan did not find
        if exercise_id not in expected:
            items.append(Item(exercise_id, float(r["score"]), float(r["max_score"]), str(r["feedback"])))
    errors = [(index + 1, _error_text(cell)) for index, cell in enumerate(ran.cells)
              if cell.cell_type == "code" and _error_output(cell) is not None]
    return Report(str(notebook), items, errors, stopped)


def _expected_items(nb, path: Path, exercises) -> dict[str, int | None]:
    """Exercise ids the notebook should grade -> index of the cell that calls check for it.

    The ids are those its cells pass to ``check(...)``, plus every registered exercise of its
    lesson (``NN_`` in the file name), so a deleted check cell still shows up as not reached."""
    found: dict[str, int | None] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for exercise_id in CHECK_CALL.findall(cell.source):
                found.setdefault(exercise_id, index)
    lesson = re.match(r"(\d\d)_", path.name)
    if lesson:
        for exercise_id, ex in exercises.items():
            if ex.lesson == lesson.group(1):
                found.setdefault(exercise_id, None)
    return found


def _run(nb, cwd: Path, timeout: float, record_path: Path):
    """Execute ``nb`` in memory; returns (the executed notebook, why it stopped early or "")."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "CellTimeoutError", "evalue": f"the cell ran longer than {timeout:g} s "
                          "and was interrupted", "traceback": []},
        startup_timeout=120, resources={"metadata": {"path": str(cwd)}},
    )
    env = {**os.environ, RECORD_ENV: str(record_path), "PYTHONUNBUFFERED": "1"}
    stopped = ""
    try:
        with client.setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            timeouts_in_a_row = 0
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                start = time.monotonic()
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    stopped = f"the kernel died in cell {index + 1}"
                    _mark_unrun(nb, index)
                    break
                # interrupted (KeyboardInterrupt), or still running when the interrupt did not take
                if time.monotonic() - start >= timeout and _error_output(cell) in ("KeyboardInterrupt", None):
                    cell["metadata"]["course_timed_out"] = timeout
                    timeouts_in_a_row += 1
                else:
                    timeouts_in_a_row = 0
                if timeouts_in_a_row == 2:  # the interrupts do not take: give up rather than wait on
                    stopped = f"two cells in a row ran past {timeout:g} s"
                    _mark_unrun(nb, index + 1)
                    break
    except DeadKernelError:
        stopped = stopped or "the kernel died"
    except RuntimeError as err:  # no kernel could start
        if not stopped and not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
            raise GradingError(f"could not start a python3 kernel: {err}") from None
        stopped = stopped or f"the kernel failed: {err}"
    return nb, stopped


def _mark_unrun(nb, start: int) -> None:
    for cell in nb.cells[start:]:
        if cell.cell_type == "code":
            cell["metadata"]["course_unrun"] = True


def _error_output(cell):
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return output.get("ename", "Error")
    return None


def _error_text(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            text = " ".join(str(output.get("evalue", "")).split())
            return f"{output.get('ename', 'Error')}: {text[:200]}" if text else str(output.get("ename", "Error"))
    return ""


def _not_reached(cell_index: int | None, ran, stopped: str) -> str:
    if cell_index is None:
        return "not reached: no cell calls check for this exercise"
    cell = ran.cells[cell_index]
    number = cell_index + 1
    if cell.get("metadata", {}).get("course_unrun"):
        return f"not reached: the run stopped before cell {number} ({stopped})"
    if cell.get("metadata", {}).get("course_timed_out"):
        return f"not reached: cell {number} ran longer than {format_score(float(cell.metadata.course_timed_out))} s " \
               "and was interrupted"
    if _error_output(cell) is not None:
        return f"not reached: cell {number} raised {_error_text(cell)} before check finished"
    return f"not reached: cell {number} ran but its check call did not report a result"


def _read_records(path: Path) -> dict[str, dict]:
    """The last well-formed record per exercise id."""
    records: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            records[str(record["id"])] = {"score": float(record["score"]), "max_score": float(record["max_score"]),
                                          "feedback": str(record.get("feedback", ""))}
        except (ValueError, KeyError, TypeError):
            continue
    return records
