"""The learner's runtime: ``check(exercise_id, answer)`` runs an exercise's extended checks.

In an exercise notebook::

    from course_lib.grading import check
    check("01.scaled_attention", scaled_attention)

prints one line per check, with a mark and, when it fails, a hint that names the likely
mistake, then the score. The checks compare the answer with the tested reference in
``course_lib`` on random inputs and on edge cases (length 1, lengths that are not a
multiple of a window, batch > 1, float32 and float64, non-contiguous tensors). Passing
them is strong evidence, not a proof: the summary says "extended checks passed".

An answer that still raises ``NotImplementedError`` is reported as "not attempted yet",
so an untouched exercise notebook runs from top to bottom. Under ``python -m course_lib
grade`` (``COURSE_GRADE_SESSION`` set) ``check`` prints one line and leaves the checks to
the grader, which calls your answer from its own process (:mod:`course_lib.grading.grader.cli`).
Everywhere else ``check`` calls your answer the way the grader does, through
:mod:`course_lib.grading.grader.remote` (served in this process, through the same files): only data
crosses, strings arrive as new objects, a numpy array is not a list, an exception keeps its
own name. So the notebook shows the score the grade command gives.
Each check runs under a
timeout (``COURSE_CHECK_TIMEOUT`` seconds, default 10), so an endless loop cannot hang it.

Exercise ids are ``NN.name`` (``NN`` the lesson); lesson ``NN``'s exercises live in
:mod:`course_lib.grading.lessons.lessonNN` and :data:`EXERCISES` holds them all. The
known-wrong answers each must reject live beside the tests, in ``tests/grading/mutants_NN.py``.

This package is what a notebook imports: ``check`` (here), the checks' engine
(:mod:`~course_lib.grading.core`), their helpers (:mod:`~course_lib.grading.compare`,
:mod:`~course_lib.grading.questions`) and the lessons' exercises
(:mod:`~course_lib.grading.lessons`). The grade command lives apart, in
:mod:`course_lib.grading.grader`; of it, ``check`` imports the proxy
(:mod:`~course_lib.grading.grader.remote`) alone, never the kernel runner, the sandbox, the
notebook parser or the report.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .core import GRADING_ENV, CheckResult, Exercise, run_exercise
from .lessons import all_exercises, lesson_exercises, lesson_total

__all__ = ["check", "CheckResult", "Exercise", "EXERCISES", "get_exercise", "lesson_total"]


def __getattr__(name):
    if name == "EXERCISES":  # every lesson's exercises, imported when first asked for
        return all_exercises()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_exercise(exercise_id: str) -> Exercise:
    """The registered exercise ``exercise_id`` (``"NN.name"``); only lesson NN's module is imported."""
    if not isinstance(exercise_id, str):
        raise TypeError(f"exercise_id must be a str such as '01.scaled_attention', got {exercise_id!r}")
    lesson = exercise_id.split(".", 1)[0]
    exercises = {ex.id: ex for ex in lesson_exercises(lesson)} if re.fullmatch(r"\d\d", lesson) else {}
    if exercise_id in exercises:
        return exercises[exercise_id]
    known = ", ".join(exercises or all_exercises())
    raise ValueError(f"exercise_id {exercise_id!r} is not a known exercise; expected one of: {known}")


def check(exercise_id: str, answer, *, timeout: float | None = None, quiet: bool = False) -> CheckResult:
    """Run the extended checks of ``exercise_id`` on ``answer`` and print what they found.

    Args:
        exercise_id: ``"NN.name"``, as given in the exercise notebook.
        answer: your function or class (code exercises), or your answer to a question
            (a value, or a function of no arguments that returns it).
        timeout: seconds per check (default ``COURSE_CHECK_TIMEOUT`` or 10).
        quiet: print nothing (the result still holds every line).

    Returns:
        a :class:`CheckResult` with ``score``, ``max_score`` and one line per check.
    """
    exercise = get_exercise(exercise_id)
    if os.environ.get(GRADING_ENV):  # under `grade`: the grader runs the checks in its own process
        if not quiet:
            print(f"{exercise_id}: checked by the grade command")
        return CheckResult(exercise_id, 0.0, exercise.points, "not attempted", [], exercise.kind)
    result = run_as_graded(exercise, answer, timeout=timeout)
    if not quiet:
        print(result.render())
    return result


def _reading_key(err) -> str:
    from .core import COMMON_ERROR_HINTS

    return next((key for pattern, key in COMMON_ERROR_HINTS.items() if re.search(pattern, str(err))), "raised")


def run_as_graded(exercise: Exercise, answer, *, timeout: float | None = None) -> CheckResult:
    """:func:`~course_lib.grading.core.run_exercise` on ``answer`` as the grade command's checks see
    it: behind the proxy of :mod:`course_lib.grading.grader.remote`, served in this process through
    the same files, so that ``check`` and ``grade`` give the same verdict and the same feedback."""
    from .core import CheckLine, error_name
    from .grader import remote

    before = remote.handles()
    try:
        with tempfile.TemporaryDirectory(prefix="course_check_") as folder:
            try:
                _, proxied = remote.loopback_answer(answer, Path(folder) / "exchange")
            except remote.RemoteError as err:  # as the grade command: the answer cannot even be read
                line = CheckLine("reading your answer", "failed", f"raised {error_name(err)}: "
                                 f"{' '.join(str(err).split())[:160]}. {exercise.hint(_reading_key(err))}")
                return CheckResult(exercise.id, 0.0, exercise.points, "failed", [line], exercise.kind)
            return run_exercise(exercise, proxied, timeout=timeout)
    finally:  # the objects this check handed out stay alive no longer than the check
        remote.release(before)
