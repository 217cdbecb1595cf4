"""The grade command's report: one :class:`Item` per registered exercise, built from the run's data.

:func:`build_report` takes the exercises the notebook is graded on
(:class:`~course_lib.grading.grader.notebook.Target`), the scores the grader computed and the
run's :class:`~course_lib.grading.grader.kernel.KernelRun` (one outcome per cell); an exercise
that was not scored says why ("not reached: ..."). :meth:`Report.table` is what the command
prints, :meth:`Report.as_dict` its ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core import format_score
from .kernel import KernelRun
from .notebook import Target

__all__ = ["Item", "Report", "build_report", "not_reached"]

MAX_CELL_ERRORS = 50  # cell errors listed in a report (the rest counted)


@dataclass
class Item:
    """One registered exercise in the report: its score out of ``max_score`` and one line of feedback."""

    id: str
    score: float
    max_score: float
    feedback: str
    title: str = ""
    status: str = ""  # "passed", "failed", "not attempted" (the checks') or "not reached"
    checks: tuple = ()  # each check line: {"name", "status", "hint"}

    def as_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "max_score": self.max_score, "feedback": self.feedback}

    def as_record(self) -> dict:
        """:meth:`as_dict` with the title, the status and every check line (class grading's feedback)."""
        return {**self.as_dict(), "title": self.title, "status": self.status,
                "checks": [dict(line) for line in self.checks]}


@dataclass
class Report:
    """What a grade found: an :class:`Item` per exercise of the notebook's lessons, the cells that
    raised, why the run ended early, the sandbox it ran in and the limits it hit."""

    notebook: str
    items: list[Item]
    cell_errors: list[tuple[int, str]] = field(default_factory=list)  # (cell number, "Name: message")
    stopped: str = ""  # why the run ended early, if it did
    sandbox: str = ""  # "bubblewrap", or "none: why"
    lessons: list[str] = field(default_factory=list)
    limits: list[dict] = field(default_factory=list)  # each limit hit: {"limit": name, "reason": words}

    @property
    def score(self) -> float:
        return round(sum(item.score for item in self.items), 2)

    @property
    def max_score(self) -> float:
        return round(sum(item.max_score for item in self.items), 2)

    def as_dict(self) -> dict:
        return {"notebook": self.notebook, "lessons": self.lessons, "score": self.score,
                "max_score": self.max_score, "exercises": [item.as_dict() for item in self.items],
                "cell_errors": [{"cell": number, "error": error}
                                for number, error in self.cell_errors[:MAX_CELL_ERRORS]],
                "cell_errors_not_listed": max(len(self.cell_errors) - MAX_CELL_ERRORS, 0),
                "stopped": self.stopped, "sandbox": self.sandbox, "limits": self.limits}

    def as_record(self) -> dict:
        """:meth:`as_dict` with each exercise's title, status and check lines: what class grading
        (:mod:`course_lib.grading.grader.classroom`) sends back from a worker, JSON-able."""
        return {**self.as_dict(), "exercises": [item.as_record() for item in self.items]}

    def table(self) -> str:
        width = max([len("exercise"), *(len(item.id) for item in self.items)])
        scores = [f"{format_score(i.score)}/{format_score(i.max_score)}" for i in self.items]
        total = f"{format_score(self.score)}/{format_score(self.max_score)}"
        swidth = max([len("score"), len(total), *map(len, scores)])
        lines = [f"Grading {self.notebook}", f"{'exercise':<{width}}  {'score':>{swidth}}  feedback"]
        for item, score in zip(self.items, scores):
            lines.append(f"{item.id:<{width}}  {score:>{swidth}}  {item.feedback}")
        lines.append(f"{'total':<{width}}  {total:>{swidth}}")
        for number, error in self.cell_errors[:MAX_CELL_ERRORS]:
            lines.append(f"cell {number} raised {error}")
        if len(self.cell_errors) > MAX_CELL_ERRORS:
            lines.append(f"... and {len(self.cell_errors) - MAX_CELL_ERRORS} more cells raised")
        if self.stopped:
            lines.append(f"the run stopped early: {self.stopped}")
        for hit in self.limits:
            lines.append(f"limit hit ({hit['limit']}): {hit['reason']}")
        if self.sandbox.startswith("none"):
            lines.append(f"note: graded WITHOUT a sandbox ({self.sandbox[len('none: '):]})")
        return "\n".join(lines)



def not_reached(target: Target, run: KernelRun) -> str:
    """Why ``target``'s exercise was not scored, in the words of the report."""
    if target.cell is None:
        return "not reached: no cell calls check for this exercise"
    cell, number = run.cell(target.cell), target.cell + 1
    if cell.stopped_by:
        return f"not reached: the run stopped before cell {number} ({cell.stopped_by})"
    if cell.timed_out is not None:
        return f"not reached: cell {number} ran longer than {format_score(float(cell.timed_out))} s " \
               "and was interrupted"
    if cell.error:
        return f"not reached: cell {number} raised {cell.error} before check finished"
    if cell.ran and target.answer is None:
        return f"not reached: cell {number} calls check without an answer"
    if run.stopped:
        return f"not reached: {run.stopped}"
    return f"not reached: cell {number} ran but its answer was not checked"


def build_report(notebook: str, lessons: list[str], targets: dict[str, Target], scores: dict[str, tuple],
                 run: KernelRun, sandbox: str) -> Report:
    """The report of a grade: ``scores`` maps an exercise id to ``(score, feedback)`` for each
    exercise the grader checked (a score is kept within 0 and the exercise's points), optionally
    followed by the checks' status and their lines (:class:`~course_lib.grading.core.CheckLine`);
    ``sandbox`` is "bubblewrap" or "none: why"."""
    items = []
    for exercise_id, target in targets.items():
        points = float(target.exercise.points)
        title = str(getattr(target.exercise, "title", ""))
        if exercise_id in scores:
            score, feedback, *more = scores[exercise_id]
            status = more[0] if more else ""
            lines = tuple({"name": line.name, "status": line.status, "hint": line.hint}
                          for line in (more[1] if len(more) > 1 else ()))
            items.append(Item(exercise_id, min(max(float(score), 0.0), points), points, feedback, title,
                              status, lines))
        else:
            items.append(Item(exercise_id, 0.0, points, not_reached(target, run), title, "not reached"))
    errors = [(cell.index + 1, cell.error) for cell in run.cells if cell.error]
    return Report(notebook, items, errors, run.stopped, sandbox, list(lessons), list(run.limits))
