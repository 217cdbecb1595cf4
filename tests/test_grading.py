"""The graders: every known-wrong answer is rejected with its own hint, the course_lib
references pass, a stub is "not attempted yet", and nothing can hang or leak the checks.

The mutants and references run twice: called directly (as ``check`` does in a notebook)
and through the proxy the grade command uses (:mod:`course_lib.grading.grader.remote`, served in
this process), so every check keeps to what crosses between grader and kernel: data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from grading import RIGHT, load

from course_lib import attention_reference
from course_lib.grading import EXERCISES, check, get_exercise, run_exercise
from course_lib.grading.core import PASS, CheckResult
from course_lib.grading.grader.remote import loopback_answer

MUTANTS, REFERENCES = load()  # tests/grading/mutants_NN.py


def mutants_for(exercise_id):
    return [m for m in MUTANTS if m.exercise_id == exercise_id]

# ---------------------------------------------------------------- the mutation registry


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_every_exercise_has_at_least_three_mutants_with_known_hints(exercise_id):
    mutants = mutants_for(exercise_id)
    assert len(mutants) >= 3, f"{exercise_id} has {len(mutants)} mutants; every exercise needs at least 3"
    for m in mutants:
        assert get_exercise(exercise_id).hint(m.hint)  # raises KeyError for an unknown hint key


def test_every_mutant_belongs_to_a_registered_exercise_and_has_a_unique_name():
    assert {m.exercise_id for m in MUTANTS} == set(EXERCISES)
    names = [(m.exercise_id, m.name) for m in MUTANTS]
    assert len(names) == len(set(names))


def _through_proxy(answer, tmp_path):
    """``answer`` as the grade command's checks see it (served in this process, same files)."""
    return loopback_answer(answer, tmp_path / "exchange")[1]


@pytest.mark.parametrize("m", MUTANTS, ids=[f"{m.exercise_id}-{m.name}" for m in MUTANTS])
def test_mutant_is_rejected_with_the_hint_for_its_mistake(m, capsys):
    result = check(m.exercise_id, m.answer, timeout=5)
    out = capsys.readouterr().out
    hint = get_exercise(m.exercise_id).hint(m.hint)
    assert result.score < result.max_score, f"{m.name} was not rejected:\n{out}"
    assert result.status == "failed"
    assert hint in out, f"{m.name} should get the hint {m.hint!r}, got:\n{out}"
    assert "extended checks passed (" not in out and "answer accepted" not in out


@pytest.mark.parametrize("m", MUTANTS, ids=[f"{m.exercise_id}-{m.name}" for m in MUTANTS])
def test_mutant_is_rejected_with_its_hint_through_the_grader_proxy(m, tmp_path):
    result = run_exercise(get_exercise(m.exercise_id), _through_proxy(m.answer, tmp_path), timeout=5)
    hint = get_exercise(m.exercise_id).hint(m.hint)
    assert result.score < result.max_score and hint in result.feedback, result.feedback


# ---------------------------------------------------------------- the references pass


def test_every_exercise_has_a_reference_here():
    assert set(REFERENCES) == set(EXERCISES)


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_course_lib_reference_scores_full_marks(exercise_id, capsys):
    result = check(exercise_id, REFERENCES[exercise_id])
    out = capsys.readouterr().out
    assert result.passed and result.score == result.max_score, out
    assert out.count(PASS) == len(EXERCISES[exercise_id].checks)
    wording = "answer accepted" if EXERCISES[exercise_id].kind == "question" else "extended checks passed"
    assert wording in out and "all correct" not in out


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_course_lib_reference_scores_full_marks_through_the_grader_proxy(exercise_id, tmp_path):
    result = run_exercise(EXERCISES[exercise_id], _through_proxy(REFERENCES[exercise_id], tmp_path))
    assert result.passed and result.score == result.max_score, result.feedback


@pytest.mark.parametrize("r", RIGHT, ids=[f"{r.exercise_id}-{r.name}" for r in RIGHT])
def test_a_right_answer_in_another_style_scores_full_marks(r, tmp_path):
    """The styles learners write right answers in (tests/grading/mutants_NN.py, ``@right``), in the
    notebook and under the grade command."""
    result = check(r.exercise_id, r.answer, quiet=True)
    assert result.passed and result.score == result.max_score, result.feedback
    graded = run_exercise(get_exercise(r.exercise_id), _through_proxy(r.answer, tmp_path))
    assert graded.passed and graded.score == graded.max_score, graded.feedback


# ---------------------------------------------------------------- check and grade agree


def _solution_answers():
    """(exercise id, the solution notebook's answer) for every check call of every solution notebook,
    its code cells run in this process with ``check`` recording instead of checking."""
    from course_lib import grading

    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "solutions").glob("*_solutions.ipynb")):
        namespace: dict = {"__name__": "__solution__"}
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                exec(compile(cell.source, path.name, "exec"), namespace)
                if namespace.get("check") is grading.check:
                    namespace["check"] = lambda exercise_id, answer, **kw: found.append((exercise_id, answer))
    return found


_AGREE = [(m.exercise_id, f"mutant-{m.name}", m.answer) for m in MUTANTS] + \
         [(r.exercise_id, f"right-{r.name}", r.answer) for r in RIGHT]


def _agree(exercise_id, answer, tmp_path):
    in_notebook = check(exercise_id, answer, timeout=5, quiet=True)
    graded = run_exercise(get_exercise(exercise_id), _through_proxy(answer, tmp_path), timeout=5)

    def measured(feedback):  # the capstone quotes timings, which differ from one run to the next
        return re.sub(r"\d+(\.\d+)?", "#", feedback) if exercise_id.startswith("09.") else feedback

    assert (in_notebook.score, measured(in_notebook.feedback)) == (graded.score, measured(graded.feedback))


@pytest.mark.parametrize("exercise_id,name,answer", _AGREE, ids=[f"{e}-{n}" for e, n, _ in _AGREE])
def test_check_and_grade_give_the_same_score_and_feedback(exercise_id, name, answer, tmp_path):
    _agree(exercise_id, answer, tmp_path)


def test_check_and_grade_agree_on_every_solution(tmp_path, capsys):
    answers = _solution_answers()
    assert {e for e, _ in answers} == set(EXERCISES)
    for exercise_id, answer in answers:
        _agree(exercise_id, answer, tmp_path)




def test_a_string_compared_with_is_fails_in_the_notebook_as_under_grade():
    """A.2.4: ``how is "mean"`` holds in the notebook (both literals interned) but not for a string that
    crossed from the grader (a new object): check calls the answer as the grader does."""
    from grading.mutants_06 import _namespace  # the learner's `how is "mean"`, compiled once there

    result = check("06.compress", _namespace["compress_is_mean"], quiet=True)
    assert result.score < result.max_score and get_exercise("06.compress").hint("ignores_how") in result.feedback


def test_an_exception_keeps_the_learners_name_not_the_proxys(tmp_path):
    def compress(x, c, how):
        assert x.shape[2] % c == 0
        return x.unflatten(2, (-1, c)).mean(3) if how == "mean" else x.unflatten(2, (-1, c)).amax(3)

    for result in (check("06.compress", compress, quiet=True),
                   run_exercise(get_exercise("06.compress"), _through_proxy(compress, tmp_path))):
        assert "got AssertionError" in result.feedback and "Remote" not in result.feedback


# ---------------------------------------------------------------- stubs and partial answers


def _stub(*args, **kwargs):
    raise NotImplementedError()


class _StubClass:
    def __init__(self):
        raise NotImplementedError()


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_a_stub_is_not_attempted_and_scores_zero(exercise_id, capsys):
    stub = _StubClass if exercise_id == "02.growing_cache" else _stub
    result = check(exercise_id, stub)
    out = capsys.readouterr().out
    assert (result.score, result.status) == (0, "not attempted")
    assert out.strip() == f"{exercise_id}: not attempted yet (your code still raises NotImplementedError); " \
                          f"score 0/{EXERCISES[exercise_id].points:g}"


def test_a_partial_answer_is_graded_and_its_missing_case_named(capsys):
    def no_mask_yet(q, k, v, mask=None):
        if mask is not None:
            raise NotImplementedError("the mask comes later")
        return attention_reference(q, k, v)

    result = check("01.scaled_attention", no_mask_yet)
    out = capsys.readouterr().out
    assert result.status == "failed" and 0 < result.score < result.max_score
    assert "not implemented yet (raises NotImplementedError)" in out
    assert "a causal mask [T, T] broadcast over B = 2, H = 2" in out


def test_an_error_in_the_learners_code_is_named_without_a_traceback(capsys):
    def broken(q, k, v, mask=None):
        raise ValueError("boom")

    check("01.scaled_attention", broken)
    out = capsys.readouterr().out
    assert "raised ValueError: boom." in out and "Traceback" not in out


def test_repeated_hints_are_printed_once(capsys):
    result = check("01.scaled_attention", mutants_for("01.scaled_attention")[0].answer)
    out = capsys.readouterr().out
    hint = get_exercise("01.scaled_attention").hint("no_scale")
    assert out.count(hint) == 1 and "same mistake as above" in out
    assert result.feedback.count(hint) == 1


def test_output_never_shows_tensors_reference_values_or_check_code(capsys):
    for m in mutants_for("01.scaled_attention") + mutants_for("02.cached_attention"):
        check(m.exercise_id, m.answer)
    out = capsys.readouterr().out
    for leak in ("tensor(", "Traceback", "def ", "lambda", "assert", "expect_close", "attention_reference("):
        assert leak not in out
    assert not re.search(r"\d\.\d{4}", out), "no long decimals (values) in the feedback"


# ---------------------------------------------------------------- timeouts


def test_an_endless_loop_times_out_and_skips_the_remaining_checks(capsys):
    def endless(q, k, v, mask=None):
        while True:
            pass

    start = time.monotonic()
    result = check("01.scaled_attention", endless, timeout=0.2)
    assert time.monotonic() - start < 5
    out = capsys.readouterr().out
    assert result.score == 0 and "timed out after 0.2 s" in out
    assert out.count("not run: an earlier check timed out") == len(EXERCISES["01.scaled_attention"].checks) - 1


def test_catching_every_exception_cannot_hide_a_timeout(capsys):
    def swallowing(q, k, v, mask=None):
        try:
            while True:
                pass
        except Exception:
            return q

    result = check("01.scaled_attention", swallowing, timeout=0.2)
    assert result.lines[0].status == "timed out"


def test_a_timer_that_was_already_running_is_restored():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        check("01.first_query", "B", quiet=True)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90 < remaining <= 100 and fired == []
        assert signal.getsignal(signal.SIGALRM) is not previous  # still our test handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_off_the_main_thread_a_loop_times_out_in_a_worker_thread():
    stop = threading.Event()

    def spins_until_stopped(q, k, v, mask=None):
        while not stop.is_set():
            time.sleep(0.01)

    box = {}
    caller = threading.Thread(target=lambda: box.update(r=check("01.scaled_attention", spins_until_stopped,
                                                                   timeout=0.2, quiet=True)))
    caller.start()
    caller.join(10)
    stop.set()
    assert not caller.is_alive()
    assert box["r"].lines[0].status == "timed out" and box["r"].score == 0


# ---------------------------------------------------------------- the result and its record


def test_under_the_grade_command_check_leaves_the_checks_to_the_grader(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_GRADE_SESSION", "1")
    calls = []
    result = check("01.scaled_attention", lambda *a: calls.append(a))
    assert calls == [] and result.score == 0
    assert capsys.readouterr().out.strip() == "01.scaled_attention: checked by the grade command"


def test_a_check_may_give_the_answer_data_only(tmp_path):
    """A check that passes the answer something other than data fails loudly (in the tests)."""

    session, answer = loopback_answer(lambda x: x, tmp_path)
    with pytest.raises(TypeError, match="data only"):
        answer(object())
    assert answer([1, "a", None]) == [1, "a", None]


def test_only_data_crosses_back_and_objects_stay_behind_handles(tmp_path):
    class Box:
        size = 3

        def grow(self, t):
            t.mul_(2)  # changes its input in place
            return {"t": t, "n": self.size}

    _, answer = loopback_answer(Box, tmp_path)
    box = answer()
    assert "in the learner's kernel" in repr(box)
    t = __import__("torch").ones(2)
    out = box.grow(t)
    assert out["n"] == 3 and out["t"].tolist() == [2.0, 2.0]
    assert t.tolist() == [2.0, 2.0], "an in-place change of an argument is seen by the check, as locally"
    with pytest.raises(AttributeError):
        box.size = 4


def test_the_result_displays_nothing_in_a_notebook_but_has_a_short_repr():
    result = check("01.window_scores", 1836032, quiet=True)
    assert isinstance(result, CheckResult)
    assert result._ipython_display_() is None
    assert repr(result) == "CheckResult('01.window_scores', score=1, max_score=1)"


def test_an_unknown_exercise_id_names_the_known_ones():
    with pytest.raises(ValueError, match=r"'01.nope' is not a known exercise; expected one of: 01.scaled_attention"):
        check("01.nope", None)
    with pytest.raises(TypeError, match="exercise_id must be a str"):
        check(1, None)


def test_a_question_answer_must_be_a_letter_or_a_number(capsys):
    assert check("02.double_context", 2).score == 0
    assert "Answer with one letter: 'A', 'B', 'C', 'D'. (got 2)" in capsys.readouterr().out
    assert check("02.budget_context", "1 GiB").score == 0
    assert "Answer with a number (in tokens). (got str)" in capsys.readouterr().out


def test_a_hint_with_its_details_is_given_once(capsys):
    """A.3: 04.moving_average summed over D got the shape hint 7 times, each with another detail."""
    result = check("04.moving_average", next(m.answer for m in MUTANTS if m.name == "sums_over_d"))
    out = capsys.readouterr().out
    hint = get_exercise("04.moving_average").hint("shape")
    assert out.count(hint) == 1 and result.feedback.count(hint) == 1


@pytest.mark.parametrize("exercise_id,name", [("09.chatbot_design", "window_too_small"),
                                              ("09.chatbot_design", "full_kv_cache"),
                                              ("09.chatbot_design", "over_budget"),
                                              ("09.summarisation_design", "summary_window"),
                                              ("09.summarisation_design", "summary_full")])
def test_a_capstone_design_that_fails_what_is_asked_keeps_a_small_share(exercise_id, name):
    """A.2.5: the budget and recall (or reach) are required: a window of 32 that recalls 18 % kept 2.5/3,
    a full KV cache 1/2 of the summarisation points."""
    from course_lib.grading.core import REQUIRED_SHARE

    answer = next(m.answer for m in MUTANTS if m.exercise_id == exercise_id and m.name == name)
    result = check(exercise_id, answer, quiet=True)
    assert result.score <= REQUIRED_SHARE * result.max_score, result.feedback
    assert "required check fails" in result.feedback


def test_a_justification_is_graded_on_content_not_length():
    """A.2.3: its own numbers, a constraint, a risk; 20 copies of one word score 0 on that check."""
    ex = get_exercise("09.chatbot_design")
    check_ = next(c for c in ex.checks if c.run.__name__ == "_check_justification")
    design = {"memory": {"name": "window", "window": 16}}
    result = run_exercise(type(ex)(ex.id, ex.title, ex.kind, [check_], ex.hints, ex.points),
                          {**design, "justification": " ".join(["memory"] * 20)})
    assert result.score == 0 and ex.hint("no_justification") in result.feedback
    assert "only 1 different words" in result.feedback
    good = ("A window of 16 tokens keeps the recent turn exact within the budget, in 16 KiB, but it still "
            "forgets every fact older than its 16 tokens.")
    assert run_exercise(type(ex)(ex.id, ex.title, ex.kind, [check_], ex.hints, ex.points),
                        {**design, "justification": good}).passed


def test_an_invalid_design_name_is_not_cut_mid_word():
    result = check("09.chatbot_design", {"memory": {"name": "multi", "combine": "gate", "memories": [
        {"name": "windo", "window": 16}, {"name": "delta"}]}, "justification": "x"}, quiet=True)
    assert "got 'windo'" in result.feedback


def test_a_front_sorted_the_wrong_way_is_told_to_sort_ascending():
    """A.3: 08.pareto_front sorted descending was told 'not by accuracy' / 'not by index'."""
    result = check("08.pareto_front", next(m.answer for m in MUTANTS if m.name == "pareto_sorted_descending"),
                   quiet=True)
    assert "ASCENDING" in result.feedback and "not by index" not in result.feedback


def test_feedback_never_echoes_unbounded_learner_text():
    """Point 9 (B01, B04): a huge answer, a huge exception name or message: the report stays short."""
    huge = "A" * (5 * 2**20)
    for exercise_id in ("01.first_query", "04.is_update_form"):
        result = check(exercise_id, huge + " B", quiet=True)
        assert result.score == 0 and len(result.feedback) < 600, len(result.feedback)
    long_name = type("E" * 10_000, (Exception,), {})

    def raises(x, c, how):
        raise long_name("m" * 10_000)

    result = check("06.compress", raises, quiet=True)
    assert len(result.feedback) < 3000 and "E" * 41 not in result.feedback


GRADE_COMMAND_MODULES = {f"course_lib.grading.grader.{name}" for name in
                         ("cli", "kernel", "report", "notebook", "sandbox", "probe")} | {"nbclient", "jupyter_client"}


def test_a_notebooks_check_loads_none_of_the_grade_commands_machinery():
    # what an exercise notebook does, in a fresh interpreter: import check, then check an answer
    # (through the proxy, the one piece of the grade command the runtime uses)
    code = ("import sys, json\n"
            "import course_lib.grading\n"
            "imported = set(sys.modules)\n"
            "from course_lib.grading import check\n"
            "result = check('01.first_query', 'B', quiet=True)\n"
            "print(json.dumps({'imported': sorted(imported), 'checked': sorted(sys.modules), 'score': result.score}))")
    env = {k: v for k, v in os.environ.items() if k != "COURSE_GRADE_SESSION"}  # checked here, not deferred
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env=env)
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["score"] == 1.0
    assert not {m for m in seen["imported"] if m.startswith("course_lib.grading.grader")}, \
        "importing course_lib.grading must import nothing of the grade command"
    assert GRADE_COMMAND_MODULES & set(seen["checked"]) == set(), \
        "check() may use the proxy (grader.remote), never the kernel runner, sandbox, parser or report"
    assert "course_lib.grading.grader.remote" in seen["checked"], "check() calls the answer as the grader does"
