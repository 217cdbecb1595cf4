"""The grade command, ``python -m course_lib grade NOTEBOOK.ipynb``: apart from the learner's runtime.

:mod:`course_lib.grading` is what an exercise notebook imports (``check``, the exercises and
their checks). This package is what grades a notebook from outside it:

* :mod:`~course_lib.grading.grader.notebook`: reading the notebook, and the one parser that finds
  its ``check("NN.name", answer)`` calls;
* :mod:`~course_lib.grading.grader.kernel`: running its cells in a fresh sandboxed kernel, one
  :class:`~course_lib.grading.grader.kernel.CellOutcome` per cell;
* :mod:`~course_lib.grading.grader.report`: the report built from those outcomes and the scores;
* :mod:`~course_lib.grading.grader.remote`: calling the learner's answer in the kernel, only data
  crossing back (``check`` uses it too, in-process, so that both give one verdict);
* :mod:`~course_lib.grading.grader.sandbox` and :mod:`~course_lib.grading.grader.probe`: the
  sandbox the kernel runs in, and the fresh interpreter that runs the probes;
* :mod:`~course_lib.grading.grader.cli`: the command itself, tying them together.

Importing this package imports none of them: ``check`` imports :mod:`.remote` alone.
"""


class GradingError(Exception):
    """The notebook could not be graded at all (unreadable file, no kernel)."""
