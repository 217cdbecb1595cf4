"""Conceptual questions, auto-graded: multiple choice and numeric answers.

The answer is a value (``"B"``, ``4198400``) or a function of no arguments that returns it,
so that an exercise notebook can leave ``raise NotImplementedError()`` in its body and
still run from top to bottom.
"""

from __future__ import annotations

from collections.abc import Mapping

from .compare import _rounded, expect_number
from .core import Check, Exercise, Mistake, echo

__all__ = ["choice_exercise", "number_exercise", "answer_value"]


def answer_value(answer):
    """The learner's answer: call it when it is a function (``NotImplementedError`` propagates)."""
    return answer() if callable(answer) else answer


def choice_exercise(id: str, title: str, options: Mapping[str, str], correct: str,
                    wrong_hints: Mapping[str, str], points: float = 1.0) -> Exercise:
    """A multiple-choice question: ``options`` maps letters to texts, ``wrong_hints`` maps each
    wrong letter to the misconception it shows (the hint key is ``chose_<letter>``)."""
    letters = ", ".join(repr(x) for x in options)
    hints = {f"chose_{letter}": text for letter, text in wrong_hints.items()}
    hints["invalid_choice"] = f"Answer with one letter: {letters}."
    missing = set(options) - set(wrong_hints) - {correct}
    if missing:
        raise ValueError(f"{id}: every wrong option needs a hint; missing {sorted(missing)}")

    def run(answer):
        value = answer_value(answer)
        letter = value.strip().upper() if isinstance(value, str) else None
        if letter not in options:
            raise Mistake("invalid_choice", f"got {echo(value)}")
        if letter != correct:
            raise Mistake(f"chose_{letter}")

    return Exercise(id=id, title=title, kind="question", points=points, hints=hints,
                    checks=[Check("your choice", run)], options=dict(options))


def number_exercise(id: str, title: str, correct: float, mistakes: Mapping[str, float],
                    hints: Mapping[str, str], *, unit: str, points: float = 1.0) -> Exercise:
    """A numeric question: ``mistakes`` maps hint keys to the numbers a known mistake gives."""
    hints = {"not_number": f"Answer with a number (in {unit}).",
             "not_int": f"Answer with a whole number of {unit}.", **hints}

    def run(answer):
        value = answer_value(answer)
        try:
            expect_number(value, correct, mistakes)
        except Mistake as m:
            if m.key == "wrong_number":  # a known mistake's number, rounded (66.7 for 66.666...): name it
                for key, candidate in mistakes.items():
                    if _rounded(float(value), candidate):
                        raise Mistake(key.split("#")[0], f"got {float(value):.10g}") from None
            raise

    return Exercise(id=id, title=title, kind="question", points=points, hints=hints,
                    checks=[Check("your number", run)])
