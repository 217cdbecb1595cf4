"""The engine behind :func:`course_lib.grading.check`: exercises, checks, timeouts, results.

An :class:`Exercise` is a list of :class:`Check` s. Each check calls the learner's answer on
inputs it builds itself, compares the result with the reference in ``course_lib`` and
raises :class:`Mistake` with a hint key when it differs. The hint text names the likely
mistake; it never contains the reference's values or the check's code.

Every check runs under a timeout: on the main thread a ``SIGALRM`` timer interrupts an
endless loop; elsewhere the check runs in a daemon thread that is abandoned when it
overstays. Either way the notebook moves on.
"""

from __future__ import annotations

import os
import re
import reprlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Mistake", "Check", "Exercise", "code_exercise", "CheckResult", "CheckLine", "run_exercise", "format_score",
           "TIMEOUT_ENV", "GRADING_ENV", "echo", "type_name", "error_name", "REQUIRED_SHARE"]

TIMEOUT_ENV = "COURSE_CHECK_TIMEOUT"  # seconds per check (default DEFAULT_TIMEOUT)
GRADING_ENV = "COURSE_GRADE_SESSION"  # set by the grade command in the kernel it grades: check() leaves it the checks
DEFAULT_TIMEOUT = 10.0
PASS, FAIL = "\u2713", "\u2717"  # check mark, ballot x
ECHO_CHARS = 40  # the most characters of a learner's value, or of a name it chose, that feedback repeats
DETAIL_CHARS = 200  # the most characters of a Mistake's detail in feedback
REQUIRED_SHARE = 0.2  # while a required check fails, the exercise keeps at most this share of its points

# hints shared by every exercise; an exercise's own hints take precedence
COMMON_HINTS = {
    "not_attempted": "not attempted yet: replace the `raise NotImplementedError()` line with your code.",
    "timed_out": "The check ran out of time: look for a loop that never ends (or one over every element "
                 "where a tensor operation would do).",
    "not_tensor": "Return a torch.Tensor.",
    "shape": "The result has the wrong shape.",
    "dtype": "Keep the input dtype: no .float()/.double() and no fixed dtype= inside your code.",
    "nonfinite": "The result holds inf or NaN: a softmax must subtract each row's max before exp "
                 "(torch.softmax does), and every query must be allowed at least one key.",
    "non_contiguous": ".view() fails on non-contiguous tensors (for example a transposed view): use "
                      ".reshape() instead, or transpose after reshaping.",
    "modified_input": "Your code changed an input tensor in place (such as q /= ... or x.mul_(...)): "
                      "compute new tensors and leave the inputs as they were.",
    "raised": "Read the error: it names the operation that failed on this input.",
    "stateful": "Called twice on the same inputs, your code gave another result the second time: it keeps "
                "state between calls (a global, a default argument, an attribute). Compute everything from "
                "the arguments of each call.",
    "rounded": "Do not round: give the exact value (leave the division as it is, such as 2 / 3 or "
               "8192 / 65, or write every digit).",
    "numpy": "Return Python values (an int, a float, a list) or torch tensors, not numpy arrays: convert "
             "with .tolist() for a list, or torch.from_numpy(...) for a tensor.",
}
COMMON_ERROR_HINTS = {r"view size is not compatible": "non_contiguous",
                      r"can only convert an array of size 1 to a Python scalar": "numpy"}


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ECHO = reprlib.Repr()
_ECHO.maxstring, _ECHO.maxother, _ECHO.maxlist, _ECHO.maxtuple, _ECHO.maxdict = ECHO_CHARS, ECHO_CHARS, 6, 6, 4
_ECHO.maxlevel = 2


def echo(value) -> str:
    """A learner's value as feedback may repeat it: its repr, at most :data:`ECHO_CHARS` characters
    (a string of 50 MiB is cut before it is copied; containers show their first elements)."""
    try:
        text = _ECHO.repr(value)
    except Exception:  # a repr that raises: its type is enough
        text = f"<{type_name(value)}>"
    return _shortened(" ".join(text.split()), ECHO_CHARS)


def type_name(value) -> str:
    """The name of ``value``'s type, as the learner's code made it, at most :data:`ECHO_CHARS` characters
    (for an object that stayed in the learner's kernel, its type there, not the grader's proxy)."""
    from .grader.remote import RemoteObject  # remote imports this module

    name = value._type if isinstance(value, RemoteObject) else type(value).__name__
    return _shortened(str(name), ECHO_CHARS)


def error_name(err: BaseException) -> str:
    """The name of the exception the learner's code raised (``AssertionError``, never the grader's
    ``RemoteAssertionError``), at most :data:`ECHO_CHARS` characters."""
    return _shortened(str(getattr(err, "remote_type", type(err).__name__)), ECHO_CHARS)


class Mistake(Exception):
    """Raised by a check when the answer is wrong. ``key`` selects the exercise's hint;
    ``detail`` adds a short learner-safe fact (such as the shape it got)."""

    def __init__(self, key: str, detail: str = ""):
        super().__init__(key)
        self.key, self.detail = key, detail


class CheckTimeout(BaseException):
    """Raised inside the learner's code when a check overstays (a BaseException, so a bare
    ``except Exception`` in the learner's code cannot swallow it)."""


@dataclass(frozen=True)
class Check:
    """One extended check: ``name`` says what is checked, ``run(answer)`` raises on failure.

    ``timeout`` (seconds) is for a check that needs longer than the default (a training
    run); without it the check gets ``check(..., timeout=)``, ``COURSE_CHECK_TIMEOUT`` or 10 s.
    ``required`` marks what the exercise asks for (a capstone design's budget, its recall):
    while a required check fails, the exercise keeps at most :data:`REQUIRED_SHARE` of its points,
    whatever else passes.
    """

    name: str
    run: Callable
    timeout: float | None = None
    required: bool = False


@dataclass
class Exercise:
    """A graded item ``NN.name``: checks, the hints they may give, and the points it is worth.

    ``kind`` is ``"code"`` (the answer is a function or class, called by the checks) or
    ``"question"`` (the answer is a value, or a function of no arguments returning it).
    """

    id: str
    title: str
    kind: str
    checks: list[Check]
    hints: dict[str, str]
    points: float = 1.0
    error_hints: dict[str, str] = field(default_factory=dict)  # regex on an exception's message -> hint key
    options: dict[str, str] = field(default_factory=dict)  # multiple choice: letter -> text

    def hint(self, key: str) -> str:
        if key in self.hints:
            return self.hints[key]
        if key in COMMON_HINTS:
            return COMMON_HINTS[key]
        raise KeyError(f"exercise {self.id} has no hint {key!r}")

    @property
    def lesson(self) -> str:
        return self.id.split(".", 1)[0]


def code_exercise(id: str, title: str, hints: dict[str, str], checks: list[Check], *, points: float = 2,
                  error_hints: dict[str, str] | None = None) -> Exercise:
    """A code exercise (the answer is a function or class the checks call), worth 2 points unless said.

    The questions' counterparts are :func:`course_lib.grading.questions.choice_exercise` and
    :func:`~course_lib.grading.questions.number_exercise`."""
    return Exercise(id=id, title=title, kind="code", points=points, hints=hints, checks=checks,
                    error_hints=dict(error_hints or {}))


@dataclass
class CheckLine:
    name: str
    status: str  # "passed", "failed", "timed out", "skipped", "not implemented"
    hint: str = ""
    key: str = ""  # the hint without its detail: a mistake already named above is not repeated
    required: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def render(self) -> str:
        if self.passed:
            return f"  {PASS} {self.name}"
        return f"  {FAIL} {self.name}: {self.hint}"


@dataclass
class CheckResult:
    """What :func:`check` found: ``score`` out of ``max_score`` and one line per check."""

    exercise_id: str
    score: float
    max_score: float
    status: str  # "passed", "failed", "not attempted"
    lines: list[CheckLine] = field(default_factory=list)
    kind: str = "code"
    capped_by: str = ""  # the first required check that failed (the score is capped), else ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def n_passed(self) -> int:
        return sum(line.passed for line in self.lines)

    @property
    def summary(self) -> str:
        score = f"score {format_score(self.score)}/{format_score(self.max_score)}"
        if self.capped_by:
            score += f" (at most {REQUIRED_SHARE:.0%} of the points while a required check fails: {self.capped_by})"
        if self.status == "not attempted":
            return f"not attempted yet; {score}"
        if self.kind == "question":
            return f"answer accepted; {score}" if self.passed else f"answer not accepted yet; {score}"
        if self.passed:
            return f"extended checks passed ({len(self.lines)} of {len(self.lines)}); {score}"
        return f"{self.n_passed} of {len(self.lines)} extended checks passed; {score}"

    def _failed_lines(self):
        """``(line, first)`` for each failed line; ``first`` is False when its hint was given above."""
        seen = set()
        for line in self.lines:
            if line.status == "failed":
                key = line.key or line.hint
                yield line, key not in seen
                seen.add(key)

    @property
    def feedback(self) -> str:
        """One line for a report: the summary, then each distinct hint with the first check that gave it."""
        if self.status == "not attempted":
            return "not attempted yet"
        hints = [f"{line.name}: {line.hint}" for line, first in self._failed_lines() if first]
        hints += [f"{line.name}: {line.hint}" for line in self.lines if line.status in ("timed out", "not implemented")]
        return "; ".join([self.summary] + hints)

    def render(self) -> str:
        if self.status == "not attempted":
            return f"{self.exercise_id}: not attempted yet (your code still raises NotImplementedError); " \
                   f"score 0/{format_score(self.max_score)}"
        first = {id(line): is_first for line, is_first in self._failed_lines()}
        rows = [line.render() if first.get(id(line), True) else f"  {FAIL} {line.name}: same mistake as above"
                for line in self.lines]
        return "\n".join([self.exercise_id, *rows, f"  {self.summary}"])

    def record(self) -> dict:
        return {"id": self.exercise_id, "score": self.score, "max_score": self.max_score,
                "status": self.status, "feedback": self.feedback}

    def __repr__(self) -> str:
        score, max_score = format_score(self.score), format_score(self.max_score)
        return f"CheckResult({self.exercise_id!r}, score={score}, max_score={max_score})"

    def _ipython_display_(self):
        """Display nothing: check() has already printed its lines."""


def format_score(x: float) -> str:
    return f"{x:g}" if float(x).is_integer() else f"{x:.2f}"


def run_exercise(exercise: Exercise, answer, *, timeout: float | None = None) -> CheckResult:
    """Run every check of ``exercise`` on ``answer``; never raises for a wrong answer.

    After a check times out the remaining ones are skipped, so an endless loop costs one
    timeout per exercise, not one per check."""
    timeout = default_timeout() if timeout is None else float(timeout)
    lines: list[CheckLine] = []
    for check in exercise.checks:
        if lines and lines[-1].status in ("timed out", "skipped"):
            lines.append(CheckLine(check.name, "skipped", "not run: an earlier check timed out"))
        else:
            lines.append(_run_check(exercise, check, answer, check.timeout or timeout))
    if all(line.status == "not implemented" for line in lines):
        return CheckResult(exercise.id, 0.0, exercise.points, "not attempted", lines, exercise.kind)
    passed = sum(line.passed for line in lines)
    score = round(exercise.points * passed / len(lines), 2)
    capped_by = next((line.name for line in lines if line.required and not line.passed), "")
    if capped_by:
        score = min(score, round(exercise.points * REQUIRED_SHARE, 2))
    status = "passed" if passed == len(lines) else "failed"
    return CheckResult(exercise.id, score, exercise.points, status, lines, exercise.kind, capped_by)


def default_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


def _run_check(exercise: Exercise, check: Check, answer, timeout: float) -> CheckLine:
    line = _run_check_line(exercise, check, answer, timeout)
    line.required = check.required
    return line


def _run_check_line(exercise: Exercise, check: Check, answer, timeout: float) -> CheckLine:
    from .grader.remote import KernelGone, RemoteObject  # remote imports this module

    session = answer._session if isinstance(answer, RemoteObject) else None
    try:
        if session is not None:  # the answer runs in the learner's kernel, which enforces the time limit
            session.deadline = time.monotonic() + timeout
            try:
                check.run(answer)
            finally:
                session.deadline = None
        else:
            call_with_timeout(lambda: check.run(answer), timeout)
    except Mistake as m:
        hint = exercise.hint(m.key)
        detail = _shortened(" ".join(str(m.detail).split()), DETAIL_CHARS) if m.detail else ""
        return CheckLine(check.name, "failed", f"{hint} ({detail})" if detail else hint, key=hint)
    except NotImplementedError:
        return CheckLine(check.name, "not implemented", "not implemented yet (raises NotImplementedError)")
    except CheckTimeout:
        return CheckLine(check.name, "timed out", f"timed out after {timeout:g} s. {exercise.hint('timed_out')}")
    except KernelGone:  # no answer can come any more: the grade command ends the run
        raise
    except Exception as err:  # the learner's code raised: name the error, hint when we recognise it
        message = _one_line(err).rstrip(".")
        name = error_name(err)
        return CheckLine(check.name, "failed", f"raised {name}: {message}. {exercise.hint(_error_key(exercise, err))}")
    return CheckLine(check.name, "passed")


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_key(exercise: Exercise, err: BaseException) -> str:
    text = str(err)
    for pattern, key in {**COMMON_ERROR_HINTS, **exercise.error_hints}.items():
        if re.search(pattern, text):
            return key
    return "raised"


def call_with_timeout(fn: Callable[[], object], timeout: float):
    """``fn()``, stopped with :class:`CheckTimeout` after ``timeout`` seconds.

    On the main thread of a POSIX process (a Jupyter kernel, pytest) an interval timer
    raises inside ``fn``, and any timer that was already running is re-armed afterwards.
    Elsewhere ``fn`` runs in a daemon thread that is abandoned if it overstays.
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _call_with_alarm(fn, timeout)
    return _call_in_thread(fn, timeout)


def _call_with_alarm(fn, timeout):
    def on_alarm(signum, frame):
        raise CheckTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.monotonic()
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if old_delay > 0:  # someone else's timer (pytest-timeout, say) keeps running
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


def _call_in_thread(fn, timeout):
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # handed back to the caller's thread
            box["error"] = err

    worker = threading.Thread(target=target, name="course_lib check", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CheckTimeout()
    if "error" in box:
        raise box["error"]
    return box.get("value")
