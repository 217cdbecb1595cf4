"""Experiments behind the lessons that take longer than a notebook may run.

Each ``lessonNN`` module runs with ``python -m course_lib.experiments.lessonNN ...``, writes a
small result file under ``docs/results/`` and exposes the functions the lesson calls to
re-run a reduced version live.
"""
