"""``python -m course_lib grade``: a fresh kernel, a report whatever happens, the notebook untouched.

The scenarios use small synthetic notebooks: one that crashes halfway (an exception, then
a dead kernel) and one that loops forever. Items the run never reached score 0 with
feedback "not reached". The attacks on the grade (forged scores, escapes from the
sandbox) are in tests/test_grading_sandbox.py.
"""

from __future__ import annotations

import json
import os

import pytest
from nbformat.v4 import new_code_cell, new_notebook
from notebook_helpers import write_notebook

from course_lib.__main__ import main as course_main
from course_lib.grading import EXERCISES
from course_lib.grading.grader.cli import grade_notebook
from course_lib.grading.grader.notebook import CheckCall, check_calls, targets
from course_lib.grading.grader.report import Item, Report

LESSON_01 = [i for i in EXERCISES if i.startswith("01.")]
LESSON_02 = [i for i in EXERCISES if i.startswith("02.")]




def untouched(path):
    """The file's bytes and modification time, to compare before and after grading."""
    return path.read_bytes(), os.stat(path).st_mtime_ns


@pytest.mark.slow
def test_a_notebook_that_crashes_halfway_still_gets_a_full_report(tmp_path, capsys):
    path = write_notebook(
        tmp_path / "01_crashes.ipynb",
        "from course_lib.grading import check",
        'check("01.first_query", "B")',  # graded: 1/1
        '1 / 0\ncheck("01.window_scores", 1836032)',  # the cell raises before check runs
        'check("02.double_context", "A")',  # after the error the run goes on: graded 0/1 with a hint
        "import os\nos._exit(1)",  # the kernel dies
        'check("02.budget_context", 2**30)',  # never reached
    )
    before = untouched(path)
    assert course_main(["grade", str(path), "--json", "--timeout", "60"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert untouched(path) == before, "grading must never write to the notebook"

    assert set(report) == {"notebook", "lessons", "score", "max_score", "exercises", "cell_errors", "stopped",
                           "sandbox", "limits", "cell_errors_not_listed"}
    assert report["lessons"] == ["01", "02"]  # the file name's, and the one of the exercises it checks
    items = {item["id"]: item for item in report["exercises"]}
    assert list(items) == LESSON_01 + LESSON_02, "every registered exercise of both lessons, in order"
    assert all(set(item) == {"id", "score", "max_score", "feedback"} for item in items.values())
    assert items["01.first_query"] == {"id": "01.first_query", "score": 1.0, "max_score": 1.0,
                                      "feedback": "answer accepted; score 1/1"}
    assert items["01.window_scores"]["score"] == 0
    assert items["01.window_scores"]["feedback"] == \
        "not reached: cell 4 raised ZeroDivisionError: division by zero before check finished"
    assert items["02.double_context"]["score"] == 0
    assert "but the last query still reads every cached pair" in items["02.double_context"]["feedback"]
    assert items["02.budget_context"]["feedback"] == \
        "not reached: the run stopped before cell 7 (the kernel died in cell 6)"
    for exercise_id in ("01.scaled_attention", "01.causal_mask", "01.split_heads", "02.growing_cache"):
        assert items[exercise_id]["feedback"] == "not reached: no cell calls check for this exercise"
        assert items[exercise_id]["max_score"] == EXERCISES[exercise_id].points
    assert (report["score"], report["max_score"]) == (1.0, 16.0)
    assert report["cell_errors"] == [{"cell": 4, "error": "ZeroDivisionError: division by zero"}]
    assert report["stopped"] == "the kernel died in cell 6"


@pytest.mark.slow
def test_a_notebook_that_loops_forever_is_interrupted_and_still_reported(tmp_path):
    # no imports, so that every cell but the loops is quick; a 2 s limit per cell
    path = write_notebook(
        tmp_path / "01_loops.ipynb",
        'while True:\n    pass\ncheck("01.first_query", "B")',
        "after_the_loop = 1",
        "while True:\n    pass",
        "while True:\n    pass",  # a second timeout in a row: the run gives up
        'check("01.window_scores", 1)',
    )
    before = untouched(path)
    report = grade_notebook(path, cell_timeout=2)
    assert untouched(path) == before
    items = {item.id: item for item in report.items}
    assert items["01.first_query"].score == 0
    assert items["01.first_query"].feedback == "not reached: cell 2 ran longer than 2 s and was interrupted"
    assert items["01.window_scores"].feedback == \
        "not reached: the run stopped before cell 6 (two cells in a row ran past 2 s)"
    assert [number for number, _ in report.cell_errors] == [2, 4, 5]  # the cell after the first loop ran clean
    assert report.stopped == "two cells in a row ran past 2 s"


def test_a_missing_or_broken_notebook_exits_2_with_the_reason(tmp_path, capsys):
    assert course_main(["grade", str(tmp_path / "nowhere.ipynb")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    assert course_main(["grade", str(broken)]) == 2
    assert "cannot read" in capsys.readouterr().err


def first_check_cells(nb, path):
    """Exercise id -> index of the first cell that checks it (None: no cell does)."""
    return {exercise_id: target.cell for exercise_id, target in targets(nb, path)[1].items()}


def test_expected_items_are_every_exercise_of_the_lessons_named_by_metadata_file_name_and_checks(tmp_path):
    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("check( '02.double_context', f)")])
    found = first_check_cells(nb, tmp_path / "01_mine.ipynb")
    assert found == {**{i: None for i in LESSON_01}, **{i: None for i in LESSON_02}, "02.double_context": 1}
    assert first_check_cells(nb, tmp_path / "homework.ipynb") == \
        {**{i: None for i in LESSON_02}, "02.double_context": 1}
    nb.metadata["course"] = {"lesson": "01"}
    assert set(first_check_cells(nb, tmp_path / "homework.ipynb")) == set(LESSON_01 + LESSON_02)


def test_check_calls_are_read_as_code_not_as_text():
    cell = ('# check("01.first_query", "A") is only a comment\n'
            'print("check(\'01.causal_mask\', m)")\n'
            'grading.check("01.scaled_attention", scaled_attention, timeout=5)\n'
            'check("01.first_query",\n      answer="B")\n'
            'check("01.window_scores")\n'
            'check("not an id", x)')
    assert check_calls(cell) == [CheckCall("01.scaled_attention", "scaled_attention"),
                                 CheckCall("01.first_query", '"B"'), CheckCall("01.window_scores", None)]


def test_a_cell_that_does_not_parse_still_shows_the_check_calls_on_lines_of_their_own():
    # IPython's syntax, and a learner's typo: the run will say the cell raised, not that no cell checks
    assert check_calls('%%time\ncheck("01.first_query", "B")') == [CheckCall("01.first_query", '"B"')]
    assert check_calls('!ls\nx = (1 +\n    check("01.causal_mask", causal_mask)') == \
        [CheckCall("01.causal_mask", "causal_mask")]
    assert check_calls("def f(:\n    pass") == []


def test_the_table_lists_every_item_the_total_and_the_errors():
    report = Report("ex.ipynb", [Item("01.first_query", 1.0, 1.0, "answer accepted; score 1/1"),
                                 Item("01.scaled_attention", 0.67, 2.0, "3 of 9 extended checks passed")],
                    cell_errors=[(4, "ZeroDivisionError: division by zero")])
    assert report.table().splitlines() == [
        "Grading ex.ipynb",
        "exercise              score  feedback",
        "01.first_query          1/1  answer accepted; score 1/1",
        "01.scaled_attention  0.67/2  3 of 9 extended checks passed",
        "total                1.67/3",
        "cell 4 raised ZeroDivisionError: division by zero",
    ]


@pytest.mark.parametrize("timeout", [0, -1])
def test_a_timeout_must_be_positive(tmp_path, timeout, capsys):
    path = write_notebook(tmp_path / "x.ipynb", "x = 1")
    assert course_main(["grade", str(path), "--timeout", str(timeout)]) == 2
    assert "timeout must be a positive number" in capsys.readouterr().err
