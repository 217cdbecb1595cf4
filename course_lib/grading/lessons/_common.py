"""What the lessons' exercise modules share (not a lesson: :func:`~.lesson_modules` lists ``lessonNN`` only)."""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["check_factory"]


def check_factory(body: Callable) -> Callable[..., Callable]:
    """``body(answer, *case)`` as a factory of checks: ``factory(*case)`` is a
    :class:`~course_lib.grading.core.Check`'s ``run(answer)``, which calls ``body(answer, *case)``.

    A check's case (its seed, sizes, options) is fixed where the exercise lists its checks, and
    the answer comes when the check runs::

        @check_factory
        def _mask_check(fn, t_q, t_k, window=None):
            expect_mask(fn(t_q, t_k, window), ...)

        checks=[Check("square mask, T = 6", _mask_check(6, 6)), ...]
    """
    @functools.wraps(body)
    def factory(*case, **options) -> Callable:
        def run(answer):
            return body(answer, *case, **options)
        return run
    return factory
