"""``python -m course_lib grade NOTEBOOK.ipynb [--json] [--timeout S] [--cell-timeout S]``: score a notebook.

The notebook runs in a fresh kernel inside a sandbox (:mod:`course_lib.grading.grader.sandbox`:
bubblewrap when the machine has it; memory, CPU, disk and time limits always) with a
throw-away copy of the notebook alone in its working folder, cell after cell with a
per-cell timeout, the whole grade under a wall-clock limit (``--timeout``, by default 3x the
lessons' expected time): :mod:`course_lib.grading.grader.kernel`. A cell that raises does not
stop the run, a cell that overstays is interrupted, a kernel that dies or passes a limit ends
the run with a report of what was reached and which limit was hit
(:mod:`course_lib.grading.grader.report`).

Scores come from this process, not from the notebook: right after the first cell that
calls ``check("NN.name", answer)`` has run (found by :func:`~course_lib.grading.grader.notebook.check_calls`),
the grader runs that exercise's checks here, calling ``answer`` in the kernel through
:mod:`course_lib.grading.grader.remote` (only data comes back). Inside the graded kernel
``check`` itself does nothing, so nothing the notebook does to ``course_lib.grading``, to
files, or by calling ``check`` again changes a score.

The notebook is graded for its lesson (``metadata.course.lesson``, the ``NN_`` of its file
name, and the lesson of every exercise it checks); the maximum is the sum of those
lessons' registered totals, so an exercise whose check cell was deleted still counts,
with 0 and "not reached". The notebook file is only read.

Exit status: 0 when grading worked (whatever the score), 2 when the notebook cannot be
read or no kernel starts.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..core import CheckTimeout, run_exercise
from . import GradingError
from . import sandbox as sb
from .kernel import run_cells
from .notebook import Target, read_notebook, targets
from .remote import KernelGone, RemoteError
from .report import Report, build_report

__all__ = ["main", "grade_notebook", "expected_seconds"]

EXPECTED_SECONDS = {"09": 150}  # a lesson's grade on a quiet 2-core CPU; the others take about 20 s
DEFAULT_EXPECTED = 20

NO_SANDBOX_NOTICE = ("grade: no sandbox: {reason}. The notebook's code ran with your user's rights: it could read "
                     "and write your files and use the network, and a process it started could outlive grading; "
                     "only the limits (memory, CPU, disk, time, output) and a minimal environment applied. "
                     "Grade only notebooks you trust this way.")


def main(notebook, as_json: bool = False, timeout: float | None = None, memory_gb: float | None = None,
         cpu_seconds: float | None = None, cell_timeout: float = 120.0, disk_gb: float | None = None) -> int:
    """Grade ``notebook`` and print a table (or JSON). Returns the exit status."""
    try:
        report = grade_notebook(notebook, timeout=timeout, cell_timeout=cell_timeout, memory_gb=memory_gb,
                                cpu_seconds=cpu_seconds, disk_gb=disk_gb)
    except GradingError as err:
        print(f"grade: {err}", file=sys.stderr)
        return 2
    if report.sandbox.startswith("none"):
        print(NO_SANDBOX_NOTICE.format(reason=report.sandbox[len("none: "):]), file=sys.stderr)
    print(json.dumps(report.as_dict(), indent=2) if as_json else report.table())
    return 0


def expected_seconds(lessons) -> float:
    """How long grading these lessons takes on a quiet 2-core CPU (the default limit is 3x that)."""
    return float(sum(EXPECTED_SECONDS.get(lesson, DEFAULT_EXPECTED) for lesson in lessons) or DEFAULT_EXPECTED)


def _positive(name: str, value, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise GradingError(f"{name} must be a positive number, got {value!r}")


def grade_notebook(notebook, *, timeout: float | None = None, cell_timeout: float = 120.0,
                   sandbox: bool | None = None, memory_gb: float | None = None, cpu_seconds: float | None = None,
                   disk_gb: float | None = None) -> Report:
    """Run ``notebook`` in a fresh sandboxed kernel and score every exercise of its lesson(s).

    ``timeout``: seconds for the whole grade (default 3x :func:`expected_seconds`);
    ``cell_timeout``: seconds per cell; ``sandbox``: None uses bubblewrap when it works here,
    False runs without it (limits only), True requires it."""
    path = Path(notebook)
    if not path.is_file():
        raise GradingError(f"notebook {str(path)!r} does not exist (expected a path to an .ipynb file)")
    _positive("timeout", timeout)
    _positive("cell_timeout", cell_timeout, optional=False)
    for name, value in (("memory_gb", memory_gb), ("cpu_seconds", cpu_seconds), ("disk_gb", disk_gb)):
        _positive(name, value)
    nb = read_notebook(path)

    lessons, graded = targets(nb, path)
    reason = sb.bwrap_reason() if sandbox in (None, True) else "the caller asked for no sandbox"
    if sandbox is True and reason:
        raise GradingError(f"a sandbox was required but {reason}")
    use_bwrap = not reason
    limits = sb.Limits(memory=int((memory_gb or sb.DEFAULT_MEMORY / 2**30) * 2**30),
                       cpu=int(cpu_seconds or sb.DEFAULT_CPU),
                       disk=int((disk_gb or sb.DEFAULT_DISK / 2**30) * 2**30))
    total = float(timeout) if timeout is not None else 3 * expected_seconds(lessons)
    scores: dict[str, tuple[float, str]] = {}
    by_cell: dict[int, list[Target]] = {}
    for target in graded.values():
        if target.cell is not None:
            by_cell.setdefault(target.cell, []).append(target)

    def after_cell(index: int, session) -> str:
        return _grade_cell(by_cell.get(index, []), session, scores)

    with tempfile.TemporaryDirectory(prefix="course_grade_", dir=_private_tmp()) as tmp:
        layout = sb.Layout.create(Path(tmp))
        shutil.copyfile(path, layout.source / _safe_file_name(path.name))
        run = run_cells(nb, layout, cell_timeout=float(cell_timeout), sandbox=use_bwrap, limits=limits,
                        deadline=time.monotonic() + total, total=total, after_cell=after_cell)
    return build_report(str(notebook), lessons, graded, scores, run, "bubblewrap" if use_bwrap else f"none: {reason}")


def _safe_file_name(name: str) -> str:
    cleaned = re.sub(r"[^\w.-]", "_", name)[:100]
    return cleaned if cleaned.endswith(".ipynb") else "notebook.ipynb"


def _private_tmp() -> str | None:
    """A temporary folder outside /tmp (which the sandbox replaces by its own) when there is one."""
    for candidate in (os.environ.get("COURSE_GRADE_TMPDIR"), "/var/tmp"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            return candidate
    return None


def _grade_cell(cell_targets: list[Target], session, scores: dict) -> str:
    """Run the checks of the exercises whose first check call is in the cell that just ran, each
    on the answer its call passes; returns the id of the exercise being checked when the kernel
    died, else "". An exercise whose call passes no answer is left unscored."""
    for target in cell_targets:
        exercise_id = target.exercise.id
        if not target.answer:
            continue
        try:
            answer = _literal(target.answer)
            if answer is _NOT_LITERAL:
                answer = session.answer(target.answer)
            result = run_exercise(target.exercise, answer)
            scores[exercise_id] = (result.score, result.feedback, result.status, list(result.lines))
        except KernelGone:
            return exercise_id
        except (RemoteError, CheckTimeout, NotImplementedError) as err:
            why = "ran out of time" if isinstance(err, CheckTimeout) else \
                f"raised {getattr(err, 'remote_type', type(err).__name__)}: {' '.join(str(err).split())[:160]}"
            scores[exercise_id] = (0.0, f"not reached: reading the answer `{target.answer}` {why}", "not reached")
    return ""


_NOT_LITERAL = object()


def _literal(expr: str):
    try:
        return ast.literal_eval(expr)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL
