"""Each lesson's graded exercises, one module per lesson, found without a central list.

``lessonNN.py`` in this package holds lesson ``NN``'s exercises and exports them as
``EXERCISES`` (a list of :class:`~course_lib.grading.core.Exercise`, in the order the
notebook checks them). Adding a lesson's module is enough: :func:`lesson_modules` lists
every ``lessonNN`` module here (``pkgutil``), and a lesson is imported only when one of its
exercises is asked for, so one lesson's module cannot stop another lesson's notebook.

A lesson's registered total is the sum of its exercises' points (:func:`lesson_total`):
the grade command's maximum, whatever the graded notebook contains.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from ..core import Exercise

__all__ = ["lesson_modules", "lesson_exercises", "all_exercises", "lesson_total"]

MODULE = re.compile(r"^lesson(\d\d)$")
LESSON = re.compile(r"^\d\d$")


def lesson_modules() -> dict[str, str]:
    """``{"01": "course_lib.grading.lessons.lesson01", ...}`` for every lesson module here."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        match = MODULE.match(info.name)
        if match:
            found[match.group(1)] = f"{__name__}.{info.name}"
    return dict(sorted(found.items()))


def lesson_exercises(lesson: str) -> list[Exercise]:
    """The exercises of lesson ``lesson`` (``"01"``), in notebook order; [] for a lesson without any."""
    if not isinstance(lesson, str) or not LESSON.match(lesson):
        raise ValueError(f"lesson must be two digits such as '01', got {lesson!r}")
    module = lesson_modules().get(lesson)
    if module is None:
        return []
    exercises = list(importlib.import_module(module).EXERCISES)
    for ex in exercises:
        if ex.lesson != lesson:
            raise ValueError(f"{module} registers {ex.id!r}; its exercise ids must start with '{lesson}.'")
    return exercises


def all_exercises() -> dict[str, Exercise]:
    """Every registered exercise, by id, lesson after lesson."""
    out: dict[str, Exercise] = {}
    for lesson in lesson_modules():
        for ex in lesson_exercises(lesson):
            if ex.id in out:
                raise ValueError(f"exercise id {ex.id!r} is registered twice")
            out[ex.id] = ex
    return out


def lesson_total(lesson: str) -> float:
    """The points lesson ``lesson`` is worth: the sum of its registered exercises' points."""
    return float(sum(ex.points for ex in lesson_exercises(lesson)))
