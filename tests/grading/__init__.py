"""Known-wrong answers (mutants) and reference answers for every graded exercise.

Lesson ``NN``'s live in ``tests/grading/mutants_NN.py``, found by :func:`load` (no list to
edit). Each such module registers:

* mutants, written the way a learner would write the mistake (not derived from the checks'
  own mistake models), each with the hint key the checks must answer it with::

      @mutant("01.scaled_attention", hint="no_scale")
      def no_scale(q, k, v, mask=None):
          ...

      value_mutant("01.why_sqrt_d", "causality", "chose_C", "C")  # a question's wrong answer
      choice_mutants("01.why_sqrt_d", causality="C")  # the same: a wrong letter gets chose_<letter>

* ``REFERENCES``: ``{exercise id: a correct answer}``, written another way than the solution
  notebook where that is natural (course_lib's own function, a lower-case letter, ...).
* more right answers, in the styles learners write them (a Python loop, ``hits / n``, a FIFO
  of lists), each of which must score full marks::

      @right("08.answer_accuracy")
      def python_division(logits, targets, ignore_index=-100):
          ...

      right_value("07.concat_weight", "a_fraction", 2 / 3)

tests/test_grading.py holds every exercise to: >= 3 mutants, each rejected with its hint,
the reference scoring full marks, a stub "not attempted yet".
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

__all__ = ["Mutant", "MUTANTS", "mutant", "value_mutant", "choice_mutants", "RIGHT", "right", "right_value", "load"]


@dataclass(frozen=True)
class Mutant:
    exercise_id: str
    name: str
    hint: str  # key of the hint the checks must give (Exercise.hint(key) is the text)
    answer: object


MUTANTS: list[Mutant] = []


def mutant(exercise_id: str, *, hint: str, name: str | None = None):
    """Register the decorated function or class as a mutant of ``exercise_id``."""
    def register(answer):
        MUTANTS.append(Mutant(exercise_id, name or answer.__name__, hint, answer))
        return answer
    return register


RIGHT: list[Mutant] = []  # right answers in other styles (hint unused: "")


def right(exercise_id: str, *, name: str | None = None):
    """Register the decorated function or class as a right answer to ``exercise_id`` (full marks)."""
    def register(answer):
        RIGHT.append(Mutant(exercise_id, name or answer.__name__, "", answer))
        return answer
    return register


def right_value(exercise_id: str, name: str, value) -> None:
    """Register a value (or a function of no arguments) as a right answer to a question."""
    RIGHT.append(Mutant(exercise_id, name, "", value))


def value_mutant(exercise_id: str, name: str, hint: str, value) -> None:
    """Register a value (or a function of no arguments) as a wrong answer to a question."""
    MUTANTS.append(Mutant(exercise_id, name, hint, value))


def choice_mutants(exercise_id: str, **wrong: str) -> None:
    """Register wrong letters of a multiple-choice question: ``name="C"`` must get the hint ``chose_C``."""
    for name, letter in wrong.items():
        value_mutant(exercise_id, name, f"chose_{letter}", letter)


def load() -> tuple[list[Mutant], dict]:
    """Import every ``mutants_NN`` module here; returns (all mutants, all reference answers)."""
    references: dict = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if re.fullmatch(r"mutants_\d\d", info.name):
            module = importlib.import_module(f"{__name__}.{info.name}")
            references.update(module.REFERENCES)
    return list(MUTANTS), references
